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
from .compose import compose, integrate, module_weights, new_modules
from .distill import Distiller
from .merge import average, finetune
from .models import ModularNet, build_submodel, submodel_module_state
from .norm import affine_state, load_affine, use_batch_stats
from .preprocess import batch_to_tensor
from .selection import Selector, decode_frames, encode_frames
from .tensor_codec import pack, unpack
from .training import edge_budget

UPLOAD_META_BYTES = 4 + 4 + 8  # per frame in a SampleBatch: class id, entropy, stamp (probabilities below)


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
        kept_affine = affine_state(self.edge)
        edge = tent.configure_model(build_submodel(self.cloud, proposed))
        shared = {k: v for k, v in kept_affine.items() if k.startswith(("stem.", "head.")) or ".transition." in k}
        load_affine(edge, {**affine_state(edge), **shared})
        self.edge, self.opt = edge, tent.make_optimizer(tent.collect_params(edge))


class EclmRos(Cema):
    """The recommended default: CEMA's select + distil on an ECLM sub-model that is re-composed for the
    environment the uploads show. Forward-only edge; only affine parameters travel, plus the modules a
    re-composition adds."""

    name = "eclm_ros"

    def __init__(self, ctx, round_batches: int = 24, target_ratio: float = 0.2) -> None:
        super().__init__(ctx, select=True, name="eclm_ros", target_ratio=target_ratio)
        self.budget = edge_budget(self.distiller.teacher)
        self.recent: list[np.ndarray] = []
        self.round_batches, self.t = round_batches, 0

    def step(self, images: np.ndarray) -> np.ndarray:
        probs = _predict(self.edge, images)
        mask = self.select(probs)
        if mask.any():
            frames = self.link.upload(images[mask])
            self.distiller.add(frames)
            self.recent = (self.recent + [frames])[-8:]
        state = self.distiller.step()
        if state is not None:
            load_affine(self.edge, self.link.download(state))
        self.t += 1
        if self.t % self.round_batches == 0 and self.recent:
            self._recompose()
        return probs.argmax(1)

    def _recompose(self) -> None:
        teacher: ModularNet = self.distiller.teacher
        spec = self.distiller.student.spec
        proposed = compose(teacher, self.budget, np.concatenate(self.recent))
        missing = new_modules(spec, proposed)
        if not missing:
            return
        self.link.download(module_weights(teacher, missing), encoding="fp16")
        student = build_submodel(teacher, proposed)
        student_affine = affine_state(self.distiller.student)
        load_affine(student, {**affine_state(student),
                              **{k: v for k, v in student_affine.items()
                                 if k.startswith(("stem.", "head.")) or ".transition." in k}})
        edge = use_batch_stats(copy.deepcopy(student).eval())
        self.distiller = _restart(self.distiller, student)
        self.edge = edge


def _restart(old: Distiller, student: torch.nn.Module) -> Distiller:
    """A distiller for a new student structure that keeps the teacher, its optimiser and the replay buffer."""
    fresh = Distiller.__new__(Distiller)
    fresh.__dict__.update(old.__dict__)
    fresh.student = tent.configure_model(student)
    fresh.opt_student = torch.optim.SGD(tent.collect_params(fresh.student), lr=old.cfg.student_lr,
                                        momentum=old.cfg.momentum)
    return fresh


METHODS = {
    "cema": lambda ctx: Cema(ctx),
    "cema_all": lambda ctx: Cema(ctx, select=False, name="cema_all"),
    "eclm": Eclm,
    "ecavg": EcAvg,
    "eclm_ros": EclmRos,
    "cloud_only": CloudOnly,
}
