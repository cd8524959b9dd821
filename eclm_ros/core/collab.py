"""Edge-cloud methods for the benchmark harness: the three papers, their combination, and the references.

Each simulates one edge (ECAvg: several) and the cloud in one process, exactly as the ROS nodes split them:
the edge predicts a batch with the model it has, uploads what it selects as real PNG bytes, the cloud learns,
and an update (real codec bytes) is applied before the edge's next batch. Traffic counts those bytes.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from .adapt import tent
from .compose import compose, integrate, keep_shared_affine, module_weights, new_modules
from .distill import Distiller
from .edge_runtime import TorchEdgeRuntime
from .merge import average, finetune
from .models import ModularNet, build_submodel, submodel_module_state
from .norm import affine_state, load_affine, use_batch_stats
from .preprocess import batch_to_tensor, to_model_input
from .selection import Selector, decode_frames, encode_frames
from .strategies import Profile, make_strategy
from .tensor_codec import Bundle, pack, unpack
from .training import edge_budget
from .updates import apply_update

UPLOAD_META_BYTES = 4 + 4 + 8  # per frame in a SampleBatch: class id, entropy, stamp (probabilities below)
UPDATE_META_BYTES = 256  # ModelUpdate's ids, versions, spec string and Ed25519 signature


class Link:
    """Counts what crosses the edge-cloud link, in the bytes the encoders produce, and delivers it decoded."""

    def __init__(self, traffic, num_classes: int) -> None:
        self.traffic, self.num_classes = traffic, num_classes

    def upload(self, images: np.ndarray) -> np.ndarray:
        blobs = encode_frames(images)
        self.traffic.uplink_bytes += sum(len(b) for b in blobs) + len(blobs) * (UPLOAD_META_BYTES + 4 * self.num_classes)
        self.traffic.uploaded_frames += len(blobs)
        return decode_frames(blobs)

    def upload_tensors(self, tensors: dict, encoding: str = "raw") -> dict[str, np.ndarray]:
        bundle = pack(tensors, encoding=encoding)
        self.traffic.uplink_bytes += bundle.wire_size
        return unpack(bundle)

    def send_update(self, tensors: dict, encoding: str) -> Bundle:
        """An update as the coordinator publishes it: the bundle and ModelUpdate's fixed fields."""
        bundle = pack(tensors, encoding=encoding)
        self.traffic.downlink_bytes += bundle.wire_size + UPDATE_META_BYTES
        self.traffic.updates += 1
        return bundle

    def download(self, tensors: dict, encoding: str = "fp16") -> dict[str, np.ndarray]:
        bundle = pack(tensors, encoding=encoding)
        self.traffic.downlink_bytes += bundle.wire_size
        self.traffic.updates += 1
        return unpack(bundle)


def _traffic():
    from .bench import Traffic

    return Traffic()


@torch.no_grad()
def _predict(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    return model(batch_to_tensor(images)).softmax(1).numpy()


class Cema:
    """CEMA: a forward-only edge (test-batch BN statistics, no backward pass) uploads selected frames; the
    cloud distils its adapted model into a copy of the edge model and sends back the affine parameters."""

    def __init__(self, ctx, select: bool = True, name: str = "cema", target_ratio: float = 0.2) -> None:
        self.name, self.traffic = name, _traffic()
        self.link = Link(self.traffic, ctx.num_classes)
        self.edge = use_batch_stats(ctx.edge_model().eval())
        self.selector = Selector(ctx.num_classes, target_ratio=target_ratio) if select else None
        self.distiller = Distiller(ctx.cloud_model(), ctx.edge_model(), ctx.num_classes, seed=ctx.seed)

    def select(self, probs: np.ndarray) -> np.ndarray:
        return self.selector.select(probs) if self.selector else np.ones(len(probs), bool)

    def step(self, images: np.ndarray) -> np.ndarray:
        probs = _predict(self.edge, images)
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

    def __init__(self, ctx) -> None:
        self.traffic = _traffic()
        self.link = Link(self.traffic, ctx.num_classes)
        self.cloud = tent.configure_model(ctx.cloud_model())
        self.opt = tent.make_optimizer(tent.collect_params(self.cloud))

    def step(self, images: np.ndarray) -> np.ndarray:
        frames = self.link.upload(images)
        pred = tent.forward_and_adapt(batch_to_tensor(frames), self.cloud, self.opt).argmax(1).numpy()
        self.traffic.downlink_bytes += pack({"class_id": pred.astype(np.int8)}, compress=False).wire_size
        return pred


class EcAvg:
    """ECAvg: several edges adapt local copies (Tent); each round they send their full models and their
    frames up, the cloud averages the models (weighted by frames), fine-tunes on the combined frames with
    its own model's pseudo-labels, and sends the full model back to every edge. No gate, as in the paper."""

    name = "ecavg"

    def __init__(self, ctx, edges: int = 3, round_batches: int = 12) -> None:
        self.traffic = _traffic()
        self.link = Link(self.traffic, ctx.num_classes)
        self.edges = [tent.configure_model(ctx.edge_model()) for _ in range(edges)]
        self.opts = [tent.make_optimizer(tent.collect_params(m)) for m in self.edges]
        self.teacher = use_batch_stats(ctx.cloud_model().eval())
        self.frames: list[list[np.ndarray]] = [[] for _ in range(edges)]
        self.round_batches, self.t = round_batches, 0

    def step(self, images: np.ndarray) -> np.ndarray:
        k = self.t % len(self.edges)  # robots take turns: each batch is one robot's view
        pred = tent.forward_and_adapt(batch_to_tensor(images), self.edges[k], self.opts[k]).argmax(1).numpy()
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
        combined = np.concatenate(data)
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

    def __init__(self, ctx, round_batches: int = 24, weight: float = 0.5) -> None:
        self.traffic = _traffic()
        self.link = Link(self.traffic, ctx.num_classes)
        self.cloud: ModularNet = ctx.cloud_model()
        self.budget = edge_budget(self.cloud)
        self.edge = tent.configure_model(ctx.edge_model())
        self.opt = tent.make_optimizer(tent.collect_params(self.edge))
        self.selector = Selector(ctx.num_classes, target_ratio=0.2)
        self.recent: list[np.ndarray] = []
        self.round_batches, self.weight, self.t = round_batches, weight, 0

    def step(self, images: np.ndarray) -> np.ndarray:
        logits = tent.forward_and_adapt(batch_to_tensor(images), self.edge, self.opt)
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
        proposed = compose(self.cloud, self.budget, np.concatenate(self.recent))
        missing = new_modules(spec, proposed)
        if not missing:
            return
        self.link.download(module_weights(self.cloud, missing), encoding="fp16")
        edge = tent.configure_model(build_submodel(self.cloud, proposed))
        keep_shared_affine(edge, affine_state(self.edge))
        self.edge, self.opt = edge, tent.make_optimizer(tent.collect_params(edge))


class EclmRos:
    """The system itself, in-process: the edge learner's runtime (frame by frame, BatchNorm statistics following
    the stream), selector and update path, and the cloud coordinator's strategy, exchanging the real codec
    bytes. Only DDS and its timing are left out, so the ROS demo and this method agree on the same stream."""

    def __init__(self, ctx, strategy: str = "eclm_ros", upload_ratio: float = 0.2, upload_batch: int = 16,
                 encoding: str = "fp16", name: str = "eclm_ros") -> None:
        self.name, self.traffic = name, _traffic()
        self.link = Link(self.traffic, ctx.num_classes)
        self.strategy = make_strategy(strategy, ctx.cloud_model(), ctx.quick, seed=ctx.seed)
        self.runtime = TorchEdgeRuntime(ctx.edge_model())
        self.selector = Selector(ctx.num_classes, target_ratio=upload_ratio)
        self.upload_batch, self.encoding = upload_batch, encoding
        self.pending: list[np.ndarray] = []
        self.input = np.empty((1, 1, 28, 28), np.float32)
        self.version, self.spec = 0, ""
        self._apply(self.strategy.register(self.name, Profile()), "raw")

    def _apply(self, update, encoding: str) -> None:
        if update is None:
            return
        bundle = self.link.send_update(update.tensors, encoding)
        apply_update(self.runtime, update.kind, update.submodel_spec, self.spec, bundle)
        self.version, self.spec = self.version + 1, update.submodel_spec

    def step(self, images: np.ndarray) -> np.ndarray:
        preds = np.empty(len(images), np.int64)
        for i, img in enumerate(images):
            probs = self.runtime.infer(to_model_input(img, out=self.input[0])[None])[0]
            preds[i] = probs.argmax()
            if self.selector.select_one(probs):
                self.pending.append(img)
                if len(self.pending) >= self.upload_batch:
                    frames = self.link.upload(np.stack(self.pending))
                    self.pending = []
                    self._apply(self.strategy.on_samples(self.name, frames), self.encoding)
        return preds


METHODS = {
    "cema": lambda ctx: Cema(ctx),
    "cema_all": lambda ctx: Cema(ctx, select=False, name="cema_all"),
    "eclm": Eclm,
    "ecavg": EcAvg,
    "eclm_ros_distil": lambda ctx: EclmRos(ctx, strategy="distil", name="eclm_ros_distil"),
    "eclm_ros": EclmRos,
    "cloud_only": CloudOnly,
}
