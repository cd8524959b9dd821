"""Edge-cloud methods for the benchmark harness: the three papers, the references, and the system itself.

The papers' methods (CEMA, ECLM, ECAvg) and cloud-only simulate their edge(s) and cloud in one process: the
edge predicts a batch with the model it has, uploads what it selects as real PNG bytes, the cloud learns, and
an update (real codec bytes) is applied before the edge's next batch. ``EclmRos`` is not a simulation of the
system but the system: the ROS nodes' own edge agent and cloud coordinator, over the in-memory transport.
Traffic counts the bytes that cross.
"""
from __future__ import annotations

import copy
import logging

import numpy as np
import torch

from ..core.adapt import tent
from ..core.compose import compose, integrate, keep_shared_affine, module_weights, new_modules
from ..core.checkpoint import Checkpoint
from ..core.coordinator import Coordinator
from ..core.distill import Distiller
from ..core.edge_agent import EdgeAgent, EdgeConfig
from ..core.edge_runtime import make_runtime
from ..core.merge import average, finetune
from ..core.messages import FRAME_META_BYTES, UPDATE_META_BYTES, Profile
from ..core.models import ModularNet, build_submodel, submodel_module_state
from ..core.norm import affine_state, load_affine, use_batch_stats
from ..core.selection import Selector, decode_frames, encode_frames
from ..core.shift import SHIFT_THRESHOLD
from ..core.strategies import make_strategy
from ..core.tensor_codec import pack, unpack
from ..core.transport import InMemoryNetwork, SimClock
from .method import FIXED_MODELS, BenchContext, Traffic

CAMERA_HZ = 30.0  # the simulated camera: the system's clocks (heartbeat, budget, status) advance with frames


class Link:
    """Counts what crosses the edge-cloud link, in the bytes the encoders produce, and delivers it decoded."""

    def __init__(self, traffic: Traffic, num_classes: int, channels: int = 1) -> None:
        self.traffic, self.num_classes, self.channels = traffic, num_classes, channels

    def upload(self, images: np.ndarray) -> np.ndarray:
        blobs = encode_frames(images)
        self.traffic.uplink_bytes += sum(len(b) for b in blobs) + len(blobs) * (FRAME_META_BYTES + 4 * self.num_classes)
        self.traffic.uploaded_frames += len(blobs)
        return np.stack(decode_frames(blobs, self.channels))

    def upload_tensors(self, tensors: dict, encoding: str = "raw") -> dict[str, np.ndarray]:
        bundle = pack(tensors, encoding=encoding)
        self.traffic.uplink_bytes += bundle.wire_size
        return unpack(bundle)

    def download(self, tensors: dict, encoding: str = "fp16") -> dict[str, np.ndarray]:
        """An update as a coordinator would send it: the bundle and ModelUpdate's fixed fields."""
        bundle = pack(tensors, encoding=encoding)
        self.traffic.downlink_bytes += bundle.wire_size + UPDATE_META_BYTES
        self.traffic.updates += 1
        return unpack(bundle)


def _link(ctx: BenchContext) -> Link:
    return Link(Traffic(), ctx.num_classes, ctx.description.channels)


@torch.no_grad()
def _predict(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    return model(x).softmax(1).numpy()


class Cema:
    """CEMA: a forward-only edge (test-batch BN statistics, no backward pass) uploads selected frames; the
    cloud distils its adapted model into a copy of the edge model and sends back the affine parameters."""

    def __init__(self, ctx, select: bool = True, name: str = "cema", target_ratio: float = 0.2) -> None:
        self.name, self.link, self.to_tensor = name, _link(ctx), ctx.to_tensor
        self.traffic = self.link.traffic
        self.edge = use_batch_stats(ctx.edge_model().eval())
        self.selector = Selector(ctx.num_classes, target_ratio=target_ratio) if select else None
        self.distiller = Distiller(ctx.cloud_model(), ctx.edge_model(), ctx.num_classes, ctx.to_tensor, seed=ctx.seed)

    def select(self, probs: np.ndarray) -> np.ndarray:
        return self.selector.select(probs) if self.selector else np.ones(len(probs), bool)

    def step(self, images: np.ndarray) -> np.ndarray:
        probs = _predict(self.edge, self.to_tensor(images))
        mask = self.select(probs)
        if mask.any():
            self.distiller.add(self.link.upload(images[mask]))
        state = self.distiller.step()
        if state is not None:
            load_affine(self.edge, self.link.download(state))
        return probs.argmax(1)


class CloudOnly:
    """Every frame goes up; the cloud model (adapting with Tent) answers. The accuracy reference and the
    traffic worst case."""

    name = "cloud_only"

    def __init__(self, ctx: BenchContext) -> None:
        self.link, self.to_tensor = _link(ctx), ctx.to_tensor
        self.traffic = self.link.traffic
        self.cloud = tent.configure_model(ctx.cloud_model())
        self.opt = tent.make_optimizer(tent.collect_params(self.cloud))

    def step(self, images: np.ndarray) -> np.ndarray:
        frames = self.link.upload(images)
        pred = tent.forward_and_adapt(self.to_tensor(frames), self.cloud, self.opt).argmax(1).numpy()
        self.traffic.downlink_bytes += pack({"class_id": pred.astype(np.int8)}, compress=False).wire_size
        return pred


class EcAvg:
    """ECAvg: several edges adapt local copies (Tent); each round they send their full models and their
    frames up, the cloud averages the models (weighted by frames), fine-tunes on the combined frames with
    its own model's pseudo-labels, and sends the full model back to every edge. No gate, as in the paper."""

    name = "ecavg"

    def __init__(self, ctx: BenchContext, edges: int = 3, round_batches: int = 12) -> None:
        self.link, self.to_tensor = _link(ctx), ctx.to_tensor
        self.traffic = self.link.traffic
        self.edges = [tent.configure_model(ctx.edge_model()) for _ in range(edges)]
        self.opts = [tent.make_optimizer(tent.collect_params(m)) for m in self.edges]
        self.teacher = use_batch_stats(ctx.cloud_model().eval())
        self.frames: list[list[np.ndarray]] = [[] for _ in range(edges)]
        self.round_batches, self.t = round_batches, 0

    def step(self, images: np.ndarray) -> np.ndarray:
        k = self.t % len(self.edges)  # robots take turns: each batch is one robot's view
        pred = tent.forward_and_adapt(self.to_tensor(images), self.edges[k], self.opts[k]).argmax(1).numpy()
        self.frames[k].append(images)
        self.t += 1
        if self.t % self.round_batches == 0:
            self._round()
        return pred

    def _round(self) -> None:
        states, weights, data = [], [], []
        for model, frames in zip(self.edges, self.frames):
            if not frames:
                continue
            states.append({k: torch.from_numpy(v) for k, v in self.link.upload_tensors(model.state_dict()).items()})
            weights.append(sum(len(f) for f in frames))
            data.append(self.link.upload(np.concatenate(frames)))
        self.frames = [[] for _ in self.edges]
        merged = copy.deepcopy(self.edges[0])
        merged.load_state_dict(average(states, weights))
        combined = self.to_tensor(np.concatenate(data))
        finetune(merged, combined, _predict(self.teacher, combined).argmax(1), steps=5)
        tent.configure_model(merged)
        for i, model in enumerate(self.edges):
            model.load_state_dict({k: torch.from_numpy(v) for k, v in self.link.download(
                merged.state_dict(), encoding="raw").items()})
            self.opts[i] = tent.make_optimizer(tent.collect_params(model))


class Eclm:
    """ECLM: a trainable edge adapts its sub-model's modules locally (Tent) and uploads selected frames;
    periodically it sends its module updates up, the cloud integrates them module by module, re-composes
    the sub-model for the environment the uploads show, and sends only the modules the edge lacks."""

    name = "eclm"

    def __init__(self, ctx: BenchContext, round_batches: int = 24, weight: float = 0.5) -> None:
        self.link, self.to_tensor = _link(ctx), ctx.to_tensor
        self.traffic = self.link.traffic
        self.cloud: ModularNet = ctx.cloud_model()
        self.budget = ctx.edge_budget()
        self.edge = tent.configure_model(ctx.edge_model())
        self.opt = tent.make_optimizer(tent.collect_params(self.edge))
        self.selector = Selector(ctx.num_classes, target_ratio=0.2)
        self.recent: list[np.ndarray] = []
        self.round_batches, self.weight, self.t = round_batches, weight, 0

    def step(self, images: np.ndarray) -> np.ndarray:
        logits = tent.forward_and_adapt(self.to_tensor(images), self.edge, self.opt)
        mask = self.selector.select(logits.softmax(1).numpy())
        if mask.any():
            self.recent = (self.recent + [self.link.upload(images[mask])])[-8:]
        self.t += 1
        if self.t % self.round_batches == 0 and self.recent:
            self._round()
        return logits.argmax(1).numpy()

    def _round(self) -> None:
        spec = self.edge.spec
        learned = {k: torch.from_numpy(v) for k, v in self.link.upload_tensors(
            submodel_module_state(self.edge)).items()}
        integrate(self.cloud, learned, self.weight)
        proposed = compose(self.cloud, self.budget, self.to_tensor(np.concatenate(self.recent)))
        missing = new_modules(spec, proposed)
        if not missing:
            return
        self.link.download(module_weights(self.cloud, missing), encoding="fp16")
        edge = tent.configure_model(build_submodel(self.cloud, proposed))
        keep_shared_affine(edge, affine_state(self.edge))
        self.edge, self.opt = edge, tent.make_optimizer(tent.collect_params(edge))


class EclmRos:
    """The system: the edge node's ``EdgeAgent`` (ONNX Runtime, frame by frame, BatchNorm statistics following
    the stream) and the cloud node's ``Coordinator`` with its strategy, exchanging the real messages over
    ``InMemoryNetwork`` on a clock that advances with the camera's frames. Only DDS is left out, so the ROS
    demo and this method agree on the same stream."""

    def __init__(self, ctx: BenchContext, strategy: str = "eclm_ros", upload_ratio: float = 0.2,
                 upload_batch: int = 16, encoding: str = "fp16", name: str = "eclm_ros",
                 models: tuple[Checkpoint, Checkpoint] | None = None, profile: Profile | None = None,
                 shift_threshold: float = SHIFT_THRESHOLD, **strategy_options) -> None:
        """``models`` (cloud, edge) replace the defaults (e.g. a user's teacher and edge model, with
        ``student=edge`` among the ``strategy_options`` of ``make_strategy``); ``profile`` is the device the
        edge registers as (its budget decides the sub-model; default: the context's budget)."""
        self.name = name
        self.clock = SimClock()
        self.network = InMemoryNetwork(self.clock, seed=ctx.seed)
        quiet = logging.getLogger(f"eclm_ros.bench.{name}")
        quiet.setLevel(logging.ERROR)
        cloud, edge = models or (ctx.checkpoint("cloud"), ctx.checkpoint("edge"))
        self.coordinator = Coordinator(make_strategy(strategy, cloud, seed=ctx.seed, **strategy_options),
                                       self.network.cloud_link(), clock=self.clock, log=quiet)
        self.coordinator.configure(update_encoding=encoding)
        self.network.serve(self.coordinator)
        self.agent = EdgeAgent(make_runtime("onnx", edge.model, input_shape=edge.description.input_shape(),
                                            shift_threshold=shift_threshold),
                               edge.description, self.network.connect(name),
                               EdgeConfig(edge_id=name, upload_ratio=upload_ratio, upload_batch=upload_batch,
                                          profile=profile or ctx.profile()),
                               clock=self.clock, log=quiet, threaded=False)
        self.network.attach(name, self.agent)
        self._exchange()  # registration: the edge serves the cloud's version 1 from the first frame
        self._exchange()

    def _exchange(self) -> None:
        self.agent.tick()
        self.network.deliver()
        self.coordinator.process()
        self.network.deliver()

    @property
    def traffic(self) -> Traffic:
        up, down = self.network.up[self.name].counters, self.network.down[self.name].counters
        return Traffic(up.bytes, down.bytes, up.frames, down.updates)

    def step(self, images: np.ndarray) -> np.ndarray:
        preds = np.empty(len(images), np.int64)
        for i, img in enumerate(images):
            self.clock.advance(1.0 / CAMERA_HZ)
            preds[i] = self.agent.on_frame(img).class_id
            self._exchange()
        return preds


def eclm_ros_fixed(ctx: BenchContext) -> EclmRos:
    """The system on the fixed model of the budget (trained alone), the cloud model teaching it as it teaches a
    user's own model: what composition adds when both edges learn from the cloud."""
    edge = ctx.checkpoint(FIXED_MODELS[ctx.budget])
    return EclmRos(ctx, strategy="distil", name="eclm_ros_fixed", models=(ctx.checkpoint("cloud"), edge),
                   student=edge)


METHODS = {
    "cema": lambda ctx: Cema(ctx),
    "cema_all": lambda ctx: Cema(ctx, select=False, name="cema_all"),
    "eclm": Eclm,
    "ecavg": EcAvg,
    "eclm_ros_distil": lambda ctx: EclmRos(ctx, strategy="distil", name="eclm_ros_distil"),
    "eclm_ros": EclmRos,
    "eclm_ros_fixed": eclm_ros_fixed,
    "cloud_only": CloudOnly,
}
