"""A user's own classifier (an ONNX file or a TorchScript file) as a model the product serves, adapts and teaches.

The file becomes a torch module (onnx2torch; TorchScript goes through ONNX first, so both formats take one
path) whose BatchNorm layers are the adaptable part exactly as for the default models: the edge exports it to
the adaptive ONNX Runtime graph (``onnx_export``), the cloud distils into its affine parameters. Every check a
deployment needs runs here, before anything serves: the file reads, is a classifier over one static image
input, its labels fit its outputs, the conversion answers as the original does (ONNX Runtime on the file itself)
and in batches, and it has normalisation layers to adapt. Each refusal names the file and the fix.

The input description comes from the model's metadata where it carries it (ONNX ``metadata_props`` key
``eclm_ros``, TorchScript extra file ``eclm_ros.json``: a JSON object with any of ``labels``, ``mean``,
``std``, ``input_size`` [H, W], ``channels``), parameters otherwise; explicit parameters win.
"""
from __future__ import annotations

import hashlib
import json
import sys
import types
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from .checkpoint import Checkpoint, ModelFileError
from .checkpoint import load as load_checkpoint
from .description import DescriptionError, ModelDescription
from .norm import affine_state, norm_layers
from .onnx_export import drop_initializer_inputs, torch_to_onnx
from .tensor_codec import ENCODINGS, pack

METADATA_KEY = "eclm_ros"
TORCHSCRIPT_METADATA = "eclm_ros.json"
KEEP_NORM_EXPORT = ("torch.onnx.export(model.eval(), x, 'model.onnx', do_constant_folding=False, "
                    "dynamic_axes={'input': {0: 'n'}}) keeps BatchNorm as BatchNormalization nodes")


class ModelImportError(ModelFileError):
    """A model file that cannot serve as it is; the message names the file and the fix."""


@dataclass(frozen=True)
class InputSpec:
    """What the caller knows about the model beyond the file (node parameters); empty fields defer to the
    model's metadata. ``allow_unadaptable`` serves a model without normalisation layers (nothing to adapt)."""

    labels_path: str = ""
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    input_size: tuple[int, ...] = ()
    channels: int = 0
    allow_unadaptable: bool = False


def is_user_model(path: Path | str) -> bool:
    """An ONNX or TorchScript file (anything else is taken for an eclm_ros checkpoint)."""
    path = Path(path)
    return path.suffix.lower() == ".onnx" or _is_torchscript(path)


def load_model(path: Path | str, spec: InputSpec = InputSpec(), fix: str = "") -> Checkpoint:
    """Any model file the product serves: an eclm_ros checkpoint, an ONNX file or a TorchScript file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no model file at {path}{': ' + fix if fix else ''}")
    if not is_user_model(path):
        return load_checkpoint(path, fix)
    return import_model(path, spec)


def import_model(path: Path | str, spec: InputSpec = InputSpec()) -> Checkpoint:
    """An ONNX or TorchScript classifier as a checkpoint (no architecture: an opaque graph, served and taught as
    it is; ``manifest`` says where it came from)."""
    path = Path(path)
    if not path.is_file():
        raise ModelImportError(f"no model file at {path}")
    if _is_torchscript(path):
        proto, metadata, fmt = *_torchscript_to_onnx(path, spec), "torchscript"
    else:
        proto, fmt = _read_onnx(path), "onnx"
        metadata = _onnx_metadata(path, proto)
        drop_initializer_inputs(proto)  # older exporters list the weights as inputs too
    original = proto.SerializeToString()
    channels, size = _image_input(path, proto)
    classes = _classifier_output(path, proto)
    had_softmax = _strip_softmax(proto)
    _own_norm_inputs(proto)
    _dynamic_batch(proto)
    model = _convert(path, proto)
    description = _description(path, metadata, spec, channels, size, classes)
    _check_faithful(path, original, model, description, had_softmax)
    norms = norm_layers(model)
    if not norms and not spec.allow_unadaptable:
        raise ModelImportError(
            f"{path} has no normalisation layers to adapt (BatchNorm folded into the convolutions by the "
            f"exporter?): {KEEP_NORM_EXPORT}; or set allow_unadaptable to serve it without adaptation")
    manifest = {"source": str(path), "format": fmt, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "outputs_probabilities": had_softmax, "norm_layers": len(norms)}
    return Checkpoint(model, description, None, manifest)


def adaptable_summary(model: nn.Module) -> dict[str, Any]:
    """The adaptable part of a model: normalisation layers, affine parameters, and the bytes one affine update
    takes on the wire at each encoding (the coordinator's own packing)."""
    params = sum(p.numel() for p in model.parameters())
    affine = affine_state(model)
    return {"norm_layers": len(norm_layers(model)), "params": params,
            "affine_params": sum(t.numel() for t in affine.values()),
            "update_bytes": {e: len(pack(affine, encoding=e).payload) if affine else 0 for e in ENCODINGS},
            "model_bytes": 4 * params}


# -- reading ----------------------------------------------------------------------------------------------
def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold compiled code; torch.save archives (checkpoints) hold only data.pkl."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.split("/", 1)[-1].startswith("code/") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _read_onnx(path: Path) -> onnx.ModelProto:
    try:
        proto = onnx.load_from_string(path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelImportError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc}); is it "
                               f"truncated? export it again") from exc
    if not proto.graph.node:
        raise ModelImportError(f"{path} is not an ONNX model (no graph); export it again")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ModelImportError(f"{path} is not valid ONNX ({str(exc).splitlines()[0]}); export it again") from exc
    return proto


def _parse_metadata(path: Path, text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ModelImportError(f"{path}: its '{METADATA_KEY}' metadata is not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelImportError(f"{path}: its '{METADATA_KEY}' metadata must be a JSON object")
    return data


def _onnx_metadata(path: Path, proto: onnx.ModelProto) -> dict[str, Any]:
    entry = next((p.value for p in proto.metadata_props if p.key == METADATA_KEY), None)
    return {} if entry is None else _parse_metadata(path, entry)


def _torchscript_to_onnx(path: Path, spec: InputSpec) -> tuple[onnx.ModelProto, dict[str, Any]]:
    extra = {TORCHSCRIPT_METADATA: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra).eval()
    except Exception as exc:  # torch's loader raises RuntimeError, ValueError, zip errors
        raise ModelImportError(f"{path} is not a readable TorchScript model ({type(exc).__name__}: "
                               f"{str(exc).strip().splitlines()[0][:200]}); save it again with torch.jit.save") from exc
    metadata = _parse_metadata(path, extra[TORCHSCRIPT_METADATA]) if extra[TORCHSCRIPT_METADATA] else {}
    size = tuple(spec.input_size or metadata.get("input_size", ()))
    channels = int(spec.channels or metadata.get("channels", 0))
    if len(size) != 2 or channels not in (1, 3):
        raise ModelImportError(f"{path}: a TorchScript file does not say its input: set input_size [H, W] and "
                               f"input_channels (1 or 3), or save it with _extra_files={{'{TORCHSCRIPT_METADATA}': "
                               f"json.dumps({{'input_size': [H, W], 'channels': C}})}}")
    try:
        proto = torch_to_onnx(module, (1, channels, *size), "input", "output")
    except Exception as exc:  # the exporter's failures have no common type
        raise ModelImportError(f"{path}: TorchScript model does not run on a {channels}x{size[0]}x{size[1]} "
                               f"image ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
    return proto, metadata


def _dims(value_info) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value_info.type.tensor_type.shape.dim]


def _image_input(path: Path, proto: onnx.ModelProto) -> tuple[int, tuple[int, int]]:
    inputs = list(proto.graph.input)
    if len(inputs) != 1:
        raise ModelImportError(f"{path} has {len(inputs)} inputs ({[i.name for i in inputs]}); an edge model "
                               f"takes one image")
    dims = _dims(inputs[0])
    if len(dims) != 4:
        raise ModelImportError(f"{path}: input {inputs[0].name!r} has shape {dims}; an edge model takes one "
                               f"NCHW image")
    c, h, w = dims[1:]
    if not all(isinstance(d, int) and d > 0 for d in (c, h, w)):
        raise ModelImportError(f"{path}: input {inputs[0].name!r} has dynamic shape {dims}, which it cannot serve "
                               f"(the camera's frames are resized to one size): export it with a fixed "
                               f"channels x height x width (only the batch axis dynamic)")
    if c not in (1, 3):
        raise ModelImportError(f"{path}: input {inputs[0].name!r} takes {c} channels; a camera gives 1 (grey) or "
                               f"3 (RGB)")
    return c, (h, w)


def _classifier_output(path: Path, proto: onnx.ModelProto) -> int:
    outputs = list(proto.graph.output)
    dims = _dims(outputs[0]) if len(outputs) == 1 else []
    if len(dims) != 2 or not isinstance(dims[1], int) or dims[1] < 2:
        shapes = {o.name: _dims(o) for o in outputs}
        raise ModelImportError(f"{path} is not a classifier: outputs {shapes}; an edge model has one output "
                               f"[N, classes] (logits or probabilities)")
    return dims[1]


def _strip_softmax(proto: onnx.ModelProto) -> bool:
    """A model that ends in Softmax answers with its input instead: the runtime and the distiller want logits."""
    graph = proto.graph
    out = graph.output[0].name
    last = next((n for n in graph.node if out in n.output), None)
    if last is None or last.op_type != "Softmax":
        return False
    axis = next((a.i for a in last.attribute if a.name == "axis"), -1)
    if axis not in (1, -1):
        return False
    logits = last.input[0]
    graph.node.remove(last)
    for node in graph.node:  # whatever read the logits keeps reading them under the output's name
        for i, name in enumerate(node.input):
            if name == logits:
                node.input[i] = out
        for i, name in enumerate(node.output):
            if name == logits:
                node.output[i] = out
    return True


def _own_norm_inputs(proto: onnx.ModelProto) -> None:
    """Every BatchNormalization reads initializers of its own: exporters share equal tensors between layers
    (fresh weights, deduplicated), sometimes through Identity nodes, and a shared one is not adaptable per
    layer."""
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    identity = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in inits}
    for k, node in enumerate(n for n in graph.node if n.op_type == "BatchNormalization"):
        for j in range(1, 5):
            source = identity.get(node.input[j], node.input[j])
            if source not in inits:
                continue
            name = f"eclm_bn{k}.{('scale', 'bias', 'mean', 'var')[j - 1]}"
            graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[source]), name))
            node.input[j] = name
    _prune(graph)


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nothing reads and initializers no node reads (left by ``_own_norm_inputs``)."""
    while True:
        used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _dynamic_batch(proto: onnx.ModelProto) -> None:
    """The cloud trains on batches: the batch axis of the input and output becomes symbolic."""
    for value in (*proto.graph.input, *proto.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = "n"


def _onnx2torch():
    """onnx2torch's ``convert``. It imports torchvision for two detection operators (NonMaxSuppression,
    RoiAlign) that no classifier has, and PyPI's torchvision is a CUDA build that fails to import beside a CPU
    torch: without a working torchvision those two operators are stood in for by functions that raise, only
    while onnx2torch is imported (sys.modules is left as it was)."""
    try:
        import onnx2torch
    except Exception as exc:  # torchvision missing (ImportError) or broken (RuntimeError from its operators)
        if isinstance(exc, ImportError) and exc.name == "onnx2torch":
            raise ModelImportError("importing an ONNX model needs onnx2torch: pip install --no-deps "
                                   "onnx2torch==1.5.15") from exc
        saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in ("torchvision", "onnx2torch")}
        stub, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")

        def unavailable(*_args, **_kwargs):
            raise NotImplementedError("this detection operator needs torchvision, which is not installed")

        ops.nms = ops.box_convert = ops.roi_align = unavailable
        stub.ops = ops
        sys.modules.update({"torchvision": stub, "torchvision.ops": ops})
        try:
            import onnx2torch
        finally:
            for name in ("torchvision", "torchvision.ops"):
                sys.modules.pop(name, None)
            sys.modules.update({k: v for k, v in saved.items() if k.startswith("torchvision")})
    return onnx2torch.convert


def _convert(path: Path, proto: onnx.ModelProto) -> nn.Module:
    convert = _onnx2torch()
    try:
        proto = onnx.shape_inference.infer_shapes(proto)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return convert(proto).eval()
    except Exception as exc:  # NotImplementedError for an unsupported op, and whatever else a converter raises
        raise ModelImportError(f"{path}: cannot turn the graph into a trainable model ({type(exc).__name__}: "
                               f"{str(exc)[:300]}); operators onnx2torch supports are listed at "
                               f"https://github.com/ENOT-AutoDL/onnx2torch/blob/main/operators.md") from exc


def _labels(path: Path, metadata: dict[str, Any], spec: InputSpec, classes: int) -> tuple[str, ...]:
    if spec.labels_path:
        source = Path(spec.labels_path)
        try:
            text = source.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelImportError(f"labels file {source} cannot be read ({exc}); set labels_path to a text file "
                                   f"with one label per line") from exc
        try:
            labels = [str(v) for v in json.loads(text)] if text.lstrip().startswith("[") else None
        except ValueError:
            labels = None
        labels = labels if labels is not None else [line.strip() for line in text.splitlines() if line.strip()]
        where = f"labels file {source}"
    elif "labels" in metadata:
        labels, where = [str(v) for v in metadata["labels"]], f"{path}'s metadata"
    else:
        return tuple(str(i) for i in range(classes))  # class indices, as vision_msgs class_id carries them
    if len(labels) != classes:
        raise ModelImportError(f"{where} has {len(labels)} labels, {path} scores {classes} classes: give one "
                               f"label per output")
    if len(set(labels)) != len(labels):
        raise ModelImportError(f"{where} repeats a label; labels must be distinct")
    return tuple(labels)


def _per_channel(values: Sequence[float], channels: int, name: str, path: Path) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        values *= channels
    if len(values) != channels:
        raise ModelImportError(f"{path}: {name} {list(values)} needs 1 or {channels} values (one per channel)")
    return values


def _description(path: Path, metadata: dict[str, Any], spec: InputSpec, channels: int, size: tuple[int, int],
                 classes: int) -> ModelDescription:
    mean = _per_channel(spec.mean or metadata.get("mean", (0.0,)), channels, "mean", path)
    std = _per_channel(spec.std or metadata.get("std", (1.0,)), channels, "std", path)
    try:
        return ModelDescription(size, channels, mean, std, _labels(path, metadata, spec, classes))
    except DescriptionError as exc:
        raise ModelImportError(f"{path}: {exc}") from exc


# -- checking ---------------------------------------------------------------------------------------------
def _check_faithful(path: Path, original: bytes, model: nn.Module, description: ModelDescription,
                    had_softmax: bool) -> None:
    """The converted model answers as ONNX Runtime does on the original graph, and a batch as its frames do."""
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal(description.input_shape(2)).astype(np.float32)
    try:
        session = ort.InferenceSession(original, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        expected = np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(2)])
    except Exception as exc:  # ORT's own errors (invalid graph, unsupported op) have no common base class
        raise ModelImportError(f"{path}: ONNX Runtime cannot run it ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:200]})") from exc
    try:
        with torch.no_grad():
            got = model(torch.from_numpy(x))
    except Exception as exc:  # a graph with a hard-coded batch of 1 fails here
        raise ModelImportError(f"{path}: the model does not take a batch of frames ({type(exc).__name__}: "
                               f"{str(exc)[:200]}); export it with a dynamic batch axis "
                               f"(dynamic_axes={{'input': {{0: 'n'}}}})") from exc
    got = (got.softmax(1) if had_softmax else got).numpy()
    scale = max(1.0, float(np.abs(expected).max()))
    gap = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
    if gap > 1e-3 * scale:
        raise ModelImportError(f"{path}: converted to torch it answers differently from ONNX Runtime (largest "
                               f"difference {gap:.3g}, output {got.shape} vs {expected.shape}); report the model's "
                               f"operators to eclm_ros")


def describe_input(description: ModelDescription) -> str:
    channels = "RGB" if description.channels == 3 else "grey"
    return (f"{description.input_size[0]}x{description.input_size[1]} {channels}, mean {list(description.mean)}, "
            f"std {list(description.std)}")


def with_metadata(proto: onnx.ModelProto, **fields: Any) -> onnx.ModelProto:
    """``proto`` carrying an eclm_ros description (labels, mean, std) in its metadata: how a user ships one file."""
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.append(onnx.StringStringEntryProto(key=METADATA_KEY, value=json.dumps(fields)))
    return proto

