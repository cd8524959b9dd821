"""Edge inference runtimes: serve a model frame by frame and take updates between two frames atomically.

An update is validated completely (names, shapes, finite values) before it replaces anything, and the swap
happens under the same lock as inference, so a frame is always answered by one whole model version: the old one
or the new one, never a mix. A failed update leaves the last good model serving.

Two runtimes with one interface (the edge node picks one by a parameter):
- ``TorchEdgeRuntime``: the torch model with forward-only BatchNorm adaptation hooks (trainable devices);
- ``OrtEdgeRuntime``: the same computation as an ONNX Runtime session (``onnx_export``), tuned for a small CPU.
  An affine update is a copy into the buffer the session reads (no rebuild); a new structure or new weights
  build a new session off the inference path, which is swapped in only once it has answered a test frame.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Mapping

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from .norm import EMA_MOMENTUM, affine_state, check_affine, load_affine, use_ema_stats
from .shift import SHIFT_THRESHOLD, ShiftMomentum
from .onnx_export import AdaptiveGraph, Layout, export_adaptive, load_state_vectors, state_vectors, structure_key


class UpdateError(ValueError):
    """An update that cannot be applied to the model being served."""


def _check_state(model: nn.Module, state: Mapping[str, np.ndarray]) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(np.shape(v)) for k, v in state.items()}
    if expected != got:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        bad = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        raise UpdateError(f"weights do not fit the model: missing {missing[:3]}, unexpected {extra[:3]}, "
                          f"wrong shape {bad[:3]}")


def _load_state(model: nn.Module, state: Mapping[str, np.ndarray] | None) -> nn.Module:
    if state is not None:
        _check_state(model, state)
        model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()})
    return model.eval().requires_grad_(False)


class _Swapper:
    """Structure swaps on one background thread, in order: the caller's thread (often the inference thread)
    never waits for an export or a session build unless it asks to."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="eclm-edge-swap")  # no thread until used

    def swap(self, model: nn.Module, state: Mapping[str, np.ndarray] | None = None) -> None:
        """Serve a new model (a new sub-model structure or full weights); returns once it serves."""
        self.swap_async(model, state).result()

    def swap_async(self, model: nn.Module, state: Mapping[str, np.ndarray] | None = None) -> Future:
        """Like ``swap`` but returns at once; the future raises UpdateError if the new model could not be
        built (the old one keeps serving). Weights that do not fit raise here, before anything is queued."""
        model = _load_state(model, state)
        return self._executor.submit(self._swap_now, model)

    def _swap_now(self, model: nn.Module) -> None:
        raise NotImplementedError


class TorchEdgeRuntime(_Swapper):
    """A torch model served frame by frame, BatchNorm statistics following the stream (forward-only EMA)."""

    def __init__(self, model: nn.Module, bn_momentum: float = EMA_MOMENTUM,
                 shift_threshold: float = SHIFT_THRESHOLD) -> None:
        super().__init__()
        self.shift = ShiftMomentum(bn_momentum, shift_threshold)
        self._lock = threading.Lock()
        self._install(_load_state(model, None))

    def _install(self, model: nn.Module) -> None:
        use_ema_stats(model, self.shift)
        self.model = model

    @torch.no_grad()
    def infer(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities [N,classes] for model input float32 [N,C,H,W]."""
        with self._lock:
            probs = self.model(torch.from_numpy(x)).softmax(1).numpy()
            self.shift.observe(self.shift.last_surprise)
            return probs

    def affine_templates(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in affine_state(self.model).items()}

    def state_templates(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.model.state_dict().items()}

    def apply_affine(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Replace the normalisation affine parameters (CEMA's update), all or nothing: ``load_affine`` checks
        every tensor before it changes one."""
        with self._lock:
            try:
                load_affine(self.model, tensors)
            except ValueError as exc:
                raise UpdateError(str(exc)) from exc

    def _swap_now(self, model: nn.Module) -> None:
        with self._lock:
            self._install(model)
            self.shift.reset()


class _Session:
    """One ORT session with everything a frame needs bound once: the input frame, the affine vector, the
    BatchNorm state (double-buffered: this frame's output is the next frame's input) and the output."""

    def __init__(self, graph_bytes: bytes, layout: Layout, model: nn.Module, options: ort.SessionOptions,
                 x: np.ndarray, momentum: np.ndarray) -> None:
        self.layout = layout
        self.session = ort.InferenceSession(graph_bytes, options, providers=["CPUExecutionProvider"])
        state, self.affine = state_vectors(model, layout)
        self.states = (state, state.copy())
        self.momentum = momentum  # [1], written by the runtime before each frame
        self.surprise = np.zeros(1, np.float32)
        num_classes = self.session.get_outputs()[0].shape[1]
        self.probs = np.zeros((x.shape[0], num_classes), np.float32)
        self.bindings = (self._bind(x, self.states[0], self.states[1]), self._bind(x, self.states[1], self.states[0]))
        self.turn = 0
        self.session.run(None, self._feeds(np.zeros_like(x), state.copy()))  # warm up

    def _feeds(self, x: np.ndarray, state: np.ndarray) -> dict[str, np.ndarray]:
        return {"x": x, "bn_state": state, "affine": self.affine, "bn_momentum": self.momentum}

    def _bind(self, x: np.ndarray, state_in: np.ndarray, state_out: np.ndarray) -> ort.IOBinding:
        b = self.session.io_binding()
        for name, arr in self._feeds(x, state_in).items():
            b.bind_input(name, "cpu", 0, np.float32, arr.shape, arr.ctypes.data)
        for name, arr in (("probs", self.probs), ("bn_state_out", state_out), ("surprise", self.surprise)):
            b.bind_output(name, "cpu", 0, np.float32, arr.shape, arr.ctypes.data)
        return b

    @property
    def state(self) -> np.ndarray:
        return self.states[self.turn]

    def run_bound(self) -> np.ndarray:
        self.session.run_with_iobinding(self.bindings[self.turn])
        self.turn ^= 1
        return self.probs.copy()

    def run_batch(self, x: np.ndarray) -> np.ndarray:
        probs, state, surprise = self.session.run(None, self._feeds(x, self.state))
        np.copyto(self.state, state)
        np.copyto(self.surprise, surprise)
        return probs


def session_options(threads: int = 1) -> ort.SessionOptions:
    """ORT settings for a small CPU shared with the rest of the robot: few threads that do not spin, sequential
    execution, every graph optimisation (NCHWc layouts, pre-packed weights)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class OrtEdgeRuntime(_Swapper):
    """The edge model in ONNX Runtime: same answers as TorchEdgeRuntime (forward-only BatchNorm EMA in the
    graph), a fraction of the per-frame cost, affine updates without a rebuild."""

    def __init__(self, model: nn.Module, bn_momentum: float = EMA_MOMENTUM, threads: int = 1,
                 cache_size: int = 4, input_shape: tuple[int, ...] | None = None,
                 shift_threshold: float = SHIFT_THRESHOLD) -> None:
        super().__init__()
        self.shift = ShiftMomentum(bn_momentum, shift_threshold)
        self._momentum = np.full(1, bn_momentum, np.float32)
        self.options = session_options(threads)
        self._lock = threading.Lock()
        self.input_shape = tuple(input_shape or model.input_shape)
        self._x = np.zeros(self.input_shape, np.float32)
        self._graphs: OrderedDict[str, AdaptiveGraph] = OrderedDict()  # structure -> exported template
        self._cache_size = cache_size
        model = _load_state(model, None)
        self._mirror = model
        self._current = self._build(model)

    def _graph_bytes(self, model: nn.Module) -> tuple[bytes, Layout]:
        """Export once per structure; a model of a known structure only patches its weights into the graph."""
        key = structure_key(model, self.input_shape)
        graph = self._graphs.get(key) if key is not None else None
        if graph is None:
            graph = export_adaptive(model, self.input_shape)
            if key is not None:
                self._graphs[key] = graph
                while len(self._graphs) > self._cache_size:
                    self._graphs.popitem(last=False)
            return graph.to_bytes(), graph.layout
        self._graphs.move_to_end(key)
        return graph.with_weights(model), graph.layout

    def _build(self, model: nn.Module) -> _Session:
        graph_bytes, layout = self._graph_bytes(model)
        return _Session(graph_bytes, layout, model, self.options, self._x, self._momentum)

    @property
    def model(self) -> nn.Module:
        """The torch model being served, its BatchNorm statistics and affine parameters as the stream left them."""
        with self._lock:
            s = self._current
            load_state_vectors(self._mirror, s.layout, s.state, s.affine)
        return self._mirror

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities [N,classes] for model input float32 [N,C,H,W]; one frame runs on the bound
        buffers."""
        with self._lock:
            self._momentum[0] = self.shift.momentum
            if x.shape == self._x.shape:
                np.copyto(self._x, x)
                probs = self._current.run_bound()
            else:
                probs = self._current.run_batch(np.ascontiguousarray(x, np.float32))
            self.shift.observe(float(self._current.surprise[0]))
            return probs

    def affine_templates(self) -> dict[str, tuple[int, ...]]:
        layout = self._current.layout
        return {k: (size,) for k, size in zip(layout.affine_keys(), [s for s in layout.sizes for _ in (0, 1)])}

    def state_templates(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self._mirror.state_dict().items()}

    def apply_affine(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Replace the normalisation affine parameters (CEMA's update), all or nothing: one buffer copy."""
        current = self._current
        try:
            arrays = check_affine(self.affine_templates(), tensors)
        except ValueError as exc:
            raise UpdateError(str(exc)) from exc
        staged = np.concatenate([arrays[key] for key in current.layout.affine_keys()])
        with self._lock:
            if self._current is not current:
                raise UpdateError("the served structure changed while the affine update was being checked")
            np.copyto(current.affine, staged)

    def _swap_now(self, model: nn.Module) -> None:
        try:
            session = self._build(model)
        except Exception as exc:  # export, ONNX checker and ORT errors have no common type
            raise UpdateError(f"could not build the new model's session, still serving the previous model: "
                              f"{type(exc).__name__}: {exc}") from exc
        with self._lock:
            self._current, self._mirror = session, model
            self.shift.reset()


def make_runtime(kind: str, model: nn.Module, bn_momentum: float = EMA_MOMENTUM, threads: int = 1,
                 input_shape: tuple[int, ...] | None = None, shift_threshold: float = SHIFT_THRESHOLD):
    """``onnx`` (ONNX Runtime, forward-only devices) or ``torch``."""
    if kind == "onnx":
        return OrtEdgeRuntime(model, bn_momentum, threads, input_shape=input_shape, shift_threshold=shift_threshold)
    if kind == "torch":
        return TorchEdgeRuntime(model, bn_momentum, shift_threshold)
    raise ValueError(f"unknown edge runtime {kind!r} (onnx, torch)")
