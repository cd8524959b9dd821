"""Export an edge model to an ONNX graph that adapts its BatchNorm statistics frame by frame, as the torch edge
runtime does (``norm.use_ema_stats``), with the adaptable state outside the weights.

The torch exporter gives the structure and the weights (BatchNorm kept as BatchNormalization nodes). One graph
pass then rewires every BatchNorm layer:
- its running mean/var come from one input vector ``bn_state`` and its affine weight/bias from one input vector
  ``affine`` (one Split each), so an affine update is a copy into a buffer the session reads, never a rebuild;
- a training-mode BatchNormalization (momentum 0, on constant statistics) gives the frame's per-channel mean
  and (biased) variance, nine elementwise ops on [C] vectors fold them into the running statistics with the
  momentum the graph is given per frame (input ``bn_momentum``: ``shift.ShiftMomentum`` raises it after a
  change of environment), the variance taken about the updated mean (``norm.use_ema_stats``), and an
  inference-mode BatchNormalization normalises with the updated statistics;
- the updated statistics leave as one output ``bn_state_out`` (fed back as the next frame's ``bn_state``), and
  the first layer's surprise (mean squared z-distance of the frame's mean to the running statistics) as
  ``surprise``.
Few, fused ops per BatchNorm layer: on a small CPU the per-op overhead costs as much as the convolutions.

Conv and Linear weights stay initializers (constants ORT pre-packs and lays out for its NCHWc kernels), keyed
by their state-dict names, so a model of the same structure with other weights is a patch of the template
(``AdaptiveGraph.with_weights``) instead of a new export.
"""
from __future__ import annotations

import copy
import io
import json
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from .norm import BATCH_NORM_TYPES, norm_layers

OPSET = 17
INPUTS = ("x", "bn_state", "affine", "bn_momentum")
OUTPUTS = ("probs", "bn_state_out", "surprise")
_PREFIX = "model."  # the exported wrapper's attribute name: initializers are named "model.<state-dict name>"


class ExportError(ValueError):
    """A model this exporter cannot turn into an adaptive ONNX graph."""


class _Probs(nn.Module):
    """Class probabilities, so the session answers what the node publishes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).softmax(1)


@dataclass(frozen=True)
class Layout:
    """Where each BatchNorm layer's state lives in the ``bn_state`` / ``affine`` vectors: per layer, in order,
    [mean, var] and [weight, bias], each ``size`` long."""

    norm_names: tuple[str, ...]
    sizes: tuple[int, ...]

    @property
    def length(self) -> int:
        return 2 * sum(self.sizes)

    def affine_keys(self) -> list[str]:
        return [f"{n}.{p}" for n in self.norm_names for p in ("weight", "bias")]


def norm_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The BatchNorm layers the graph adapts; any other normalisation layer is refused."""
    out = []
    for name, m in norm_layers(model):
        if not isinstance(m, BATCH_NORM_TYPES):
            raise ExportError(f"{name}: {type(m).__name__} is not supported by the ONNX edge runtime")
        if m.running_mean is None or not isinstance(m.weight, nn.Parameter):
            raise ExportError(f"{name}: BatchNorm without running statistics or affine parameters")
        out.append((name, m))
    return out


def layout_of(model: nn.Module) -> Layout:
    layers = norm_modules(model)
    return Layout(tuple(n for n, _ in layers), tuple(m.num_features for _, m in layers))


def state_vectors(model: nn.Module, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """(bn_state, affine) float32 vectors of a model, in the graph's layout."""
    mods = dict(model.named_modules())
    state = [t for n in layout.norm_names for t in (mods[n].running_mean, mods[n].running_var)]
    affine = [t for n in layout.norm_names for t in (mods[n].weight, mods[n].bias)]
    if not state:  # nothing to adapt
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return (torch.cat(state).detach().float().numpy().copy(), torch.cat(affine).detach().float().numpy().copy())


def load_state_vectors(model: nn.Module, layout: Layout, bn_state: np.ndarray, affine: np.ndarray) -> None:
    """Write the vectors back into the torch model (the runtime's mirror of what it serves)."""
    mods = dict(model.named_modules())
    offset = 0
    with torch.no_grad():
        for name, size in zip(layout.norm_names, layout.sizes):
            m = mods[name]
            m.running_mean.copy_(torch.from_numpy(bn_state[offset:offset + size]))
            m.running_var.copy_(torch.from_numpy(bn_state[offset + size:offset + 2 * size]))
            m.weight.copy_(torch.from_numpy(affine[offset:offset + size]))
            m.bias.copy_(torch.from_numpy(affine[offset + size:offset + 2 * size]))
            offset += 2 * size


def structure_key(model: nn.Module, input_shape: tuple[int, ...]) -> str | None:
    """Two models with equal keys export to the same graph up to weights; None when that cannot be known."""
    config = getattr(model, "config", None)
    if not callable(config):
        return None
    shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    return json.dumps([type(model).__qualname__, config(), shapes, list(input_shape)], sort_keys=True,
                      default=str)


@dataclass
class AdaptiveGraph:
    """An exported adaptive graph and the names a same-structure model's weights patch into."""

    proto: onnx.ModelProto
    layout: Layout
    weight_names: tuple[str, ...]  # state-dict names held as initializers

    def to_bytes(self) -> bytes:
        return self.proto.SerializeToString()

    def with_weights(self, model: nn.Module) -> bytes:
        """The serialised graph with ``model``'s Conv/Linear weights (same structure as the exported one)."""
        params = model.state_dict()
        patched = onnx.ModelProto()
        patched.CopyFrom(self.proto)
        by_name = {init.name: init for init in patched.graph.initializer}
        for name in self.weight_names:
            value = params[name].detach().cpu().numpy()
            by_name[_PREFIX + name].CopyFrom(numpy_helper.from_array(value, _PREFIX + name))
        return patched.SerializeToString()


def torch_to_onnx(module: nn.Module, input_shape: tuple[int, ...], input_name: str = "x",
                  output_name: str = "probs") -> onnx.ModelProto:
    """``module`` (an nn.Module or TorchScript) as ONNX with BatchNorm kept as BatchNormalization nodes (no
    constant folding, the module's own mode), each layer's tensors its own (no deduplication of equal
    initializers) and the batch axis dynamic."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, tracer notes
        torch.onnx.export(module, (torch.zeros(input_shape),), buf, input_names=[input_name],
                          output_names=[output_name], dynamic_axes={input_name: {0: "n"}, output_name: {0: "n"}},
                          dynamo=False, opset_version=OPSET, training=torch.onnx.TrainingMode.PRESERVE,
                          do_constant_folding=False, keep_initializers_as_inputs=True)
    proto = onnx.load_from_string(buf.getvalue())
    drop_initializer_inputs(proto)
    return proto


def drop_initializer_inputs(proto: onnx.ModelProto) -> None:
    """Initializers listed as graph inputs become constants again (ONNX Runtime pre-packs constants)."""
    held = {init.name for init in proto.graph.initializer}
    kept = [i for i in proto.graph.input if i.name not in held]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)


def export_adaptive(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> AdaptiveGraph:
    """The adaptive graph of ``model`` (left untouched): inputs x [N,C,H,W] (``input_shape``, default the
    model's own), bn_state, affine, bn_momentum [1]; outputs probs [N,classes], bn_state_out, surprise [1].
    Raises ExportError for a model it cannot express."""
    model = copy.deepcopy(model).eval().requires_grad_(False)
    layout = layout_of(model)
    input_shape = input_shape or getattr(model, "input_shape", None)
    if input_shape is None:
        raise ExportError(f"{type(model).__name__} has no input_shape: pass input_shape=(C, H, W)")
    input_shape = tuple(input_shape)
    try:
        proto = torch_to_onnx(_Probs(model), input_shape)
    except Exception as exc:  # the tracer's failures have no common type
        raise ExportError(f"torch.onnx.export failed: {exc}") from exc
    graph = proto.graph
    index = {f"{_PREFIX}{n}.weight": i for i, n in enumerate(layout.norm_names)}
    stats = [f"bn{i}.{k}" for i in range(len(layout.sizes)) for k in ("mean", "var")]
    affine = [f"bn{i}.{k}" for i in range(len(layout.sizes)) for k in ("weight", "bias")]
    nodes = [helper.make_node("Split", ["bn_state", "bn_split"], stats, axis=0),
             helper.make_node("Split", ["affine", "bn_split"], affine, axis=0),
             helper.make_node("Sub", ["bn_one", "bn_momentum"], ["bn_keep"]),
             helper.make_node("Mul", ["bn_keep", "bn_keep"], ["bn_keep2"])] if layout.sizes else []
    replaced: set[str] = set()
    seen: set[int] = set()
    constants: set[int] = set()
    for node in graph.node:
        if node.op_type != "BatchNormalization":
            nodes.append(node)
            continue
        i = index.get(node.input[1])
        if i is None or i in seen:
            raise ExportError(f"BatchNormalization node {node.name!r} reads {node.input[1]!r}, not a BatchNorm layer")
        seen.add(i)
        replaced.update(node.input[1:])
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        size = layout.sizes[i]
        constants.add(size)
        ins, b = [f"bn{i}.weight", f"bn{i}.bias"], f"bn{i}."
        nodes.append(helper.make_node(  # the frame's own statistics (momentum 0 on constant running ones)
            "BatchNormalization", [node.input[0], *ins, f"bn_zeros{size}", f"bn_ones{size}"],
            [b + "batch_y", b + "frame_mean", b + "frame_var"], epsilon=eps, momentum=0.0, training_mode=1,
            name=b + "frame"))
        # mean_out = mean + m d and var_out = var + m (frame_var - var + (1 - m)^2 d^2), d = frame mean - mean:
        # the variance about the updated mean, as norm.use_ema_stats takes it
        nodes += [helper.make_node("Sub", [b + "frame_mean", b + "mean"], [b + "d"]),
                  helper.make_node("Mul", [b + "d", "bn_momentum"], [b + "md"]),
                  helper.make_node("Add", [b + "mean", b + "md"], [b + "mean_out"]),
                  helper.make_node("Sub", [b + "frame_var", b + "var"], [b + "e"]),
                  helper.make_node("Mul", [b + "d", b + "d"], [b + "dd"]),
                  helper.make_node("Mul", [b + "dd", "bn_keep2"], [b + "dd2"]),
                  helper.make_node("Add", [b + "e", b + "dd2"], [b + "u"]),
                  helper.make_node("Mul", [b + "u", "bn_momentum"], [b + "mu"]),
                  helper.make_node("Add", [b + "var", b + "mu"], [b + "var_out"])]
        if i == 0:
            nodes += [helper.make_node("Add", [b + "var", "bn_eps"], [b + "var_eps"]),
                      helper.make_node("Div", [b + "dd", b + "var_eps"], [b + "z2"]),
                      helper.make_node("ReduceMean", [b + "z2"], ["surprise"], axes=[0], keepdims=1)]
        nodes.append(helper.make_node(  # normalises with the updated statistics
            "BatchNormalization", [node.input[0], *ins, b + "mean_out", b + "var_out"], list(node.output),
            epsilon=eps, name=b + "norm"))
    if len(seen) != len(layout.sizes):
        raise ExportError(f"{len(layout.sizes)} BatchNorm layers, {len(seen)} in the exported graph "
                          "(a layer that is not run, or one the exporter fused)")
    if layout.sizes:
        nodes.append(helper.make_node("Concat", [f"{s}_out" for s in stats], ["bn_state_out"], axis=0))
    else:  # a model with nothing to adapt (served as it is): the state vectors are empty, nothing surprises
        nodes += [helper.make_node("Identity", ["bn_state"], ["bn_state_out"]),
                  helper.make_node("Mul", ["bn_momentum", "bn_nan"], ["surprise"])]
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [init for init in graph.initializer if init.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    graph.initializer.append(numpy_helper.from_array(np.repeat(np.asarray(layout.sizes, np.int64), 2), "bn_split"))
    for size in sorted(constants):
        graph.initializer.extend([numpy_helper.from_array(np.zeros(size, np.float32), f"bn_zeros{size}"),
                                  numpy_helper.from_array(np.ones(size, np.float32), f"bn_ones{size}")])
    graph.initializer.extend([numpy_helper.from_array(np.ones(1, np.float32), "bn_one"),
                              numpy_helper.from_array(np.full(1, 1e-5, np.float32), "bn_eps"),
                              numpy_helper.from_array(np.full(1, np.nan, np.float32), "bn_nan")])
    graph.input.extend([helper.make_tensor_value_info("bn_state", TensorProto.FLOAT, [layout.length]),
                        helper.make_tensor_value_info("affine", TensorProto.FLOAT, [layout.length]),
                        helper.make_tensor_value_info("bn_momentum", TensorProto.FLOAT, [1])])
    graph.output.extend([helper.make_tensor_value_info("bn_state_out", TensorProto.FLOAT, [layout.length]),
                         helper.make_tensor_value_info("surprise", TensorProto.FLOAT, [1])])
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the adaptive graph is not valid ONNX: {exc}") from exc
    held = {init.name for init in graph.initializer}
    norm_params = {f"{n}.{p}" for n in layout.norm_names
                   for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    weights = tuple(k for k in model.state_dict() if k not in norm_params and _PREFIX + k in held)
    missing = [k for k, _ in model.named_parameters() if k not in norm_params and _PREFIX + k not in held]
    if missing:  # a buffer may become a constant (an imported graph's shapes); a parameter must stay patchable
        raise ExportError(f"weights the exporter renamed or folded: {missing[:4]}")
    return AdaptiveGraph(proto, layout, weights)
