"""The edge runtimes: ONNX Runtime answers as torch does (BatchNorm statistics following the stream), updates
land between two frames and change the very next answer, a failed rebuild leaves the old model serving; the
per-frame selection path decides as the batch path does."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from eclm_ros.core import edge_runtime
from eclm_ros.core.edge_runtime import OrtEdgeRuntime, TorchEdgeRuntime, UpdateError, make_runtime
from eclm_ros.core.models import ModularNet, SubModelSpec, build_submodel
from eclm_ros.core.norm import affine_state
from eclm_ros.core.onnx_export import ExportError, export_adaptive
from eclm_ros.core.selection import Selector, entropy, entropy_one
from eclm_ros.core import checkpoint

TOL = 1e-4
RUNTIMES = {"onnx": OrtEdgeRuntime, "torch": TorchEdgeRuntime}


@pytest.fixture(scope="module")
def edge_model(quick_cache):
    return checkpoint.load(checkpoint.default_path("edge", True, quick_cache)).model


@pytest.fixture(scope="module")
def cloud(quick_cache):
    return checkpoint.load(checkpoint.default_path("cloud", True, quick_cache)).model


def _frames(n: int, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    """A drifting stream: per-frame statistics change, so the BatchNorm EMA matters."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 1, 1, 28, 28)) * 1.3 + shift).astype(np.float32)


def _scaled_affine(model: nn.Module, scale: float) -> dict[str, np.ndarray]:
    return {k: (v.numpy() * scale + 0.05).astype(np.float32) for k, v in affine_state(model).items()}


def _run(runtime, frames) -> np.ndarray:
    return np.concatenate([runtime.infer(f) for f in frames])


def test_onnx_matches_torch_frame_by_frame_and_after_an_affine_update(edge_model):
    ort_rt, torch_rt = OrtEdgeRuntime(copy.deepcopy(edge_model)), TorchEdgeRuntime(copy.deepcopy(edge_model))
    frames = _frames(60, shift=0.8)
    np.testing.assert_allclose(_run(ort_rt, frames[:30]), _run(torch_rt, frames[:30]), atol=TOL)
    update = _scaled_affine(edge_model, 1.7)
    ort_rt.apply_affine(update)
    torch_rt.apply_affine(update)
    np.testing.assert_allclose(_run(ort_rt, frames[30:]), _run(torch_rt, frames[30:]), atol=TOL)
    batch = _frames(8, seed=5)[:, 0]
    np.testing.assert_allclose(ort_rt.infer(batch), torch_rt.infer(batch), atol=TOL)
    for name, value in torch_rt.model.state_dict().items():  # the statistics followed the stream alike
        np.testing.assert_allclose(ort_rt.model.state_dict()[name].numpy(), value.numpy(), rtol=1e-5, atol=1e-4,
                                   err_msg=name)


def test_onnx_graph_adapts_its_statistics_like_the_ema_hooks(edge_model):
    """Without the in-graph EMA the answers to a shifted stream would not move; with it they follow torch's."""
    ort_rt, frozen = OrtEdgeRuntime(copy.deepcopy(edge_model)), copy.deepcopy(edge_model).eval()
    frames = _frames(40, seed=2, shift=2.0)
    adapted = _run(ort_rt, frames)
    with torch.no_grad():
        static = np.concatenate([frozen(torch.from_numpy(f)).softmax(1).numpy() for f in frames])
    assert np.abs(adapted[-10:] - static[-10:]).max() > 1e-2


@pytest.mark.parametrize("kind", RUNTIMES)
def test_affine_update_mid_stream_changes_the_next_frame(edge_model, kind):
    updated, untouched = make_runtime(kind, copy.deepcopy(edge_model)), make_runtime(kind, copy.deepcopy(edge_model))
    reference = TorchEdgeRuntime(copy.deepcopy(edge_model))
    frames = _frames(20, seed=3)
    update = _scaled_affine(edge_model, 0.4)
    for i, frame in enumerate(frames):
        if i == 10:
            updated.apply_affine(update)
            reference.apply_affine(update)
        a, b, ref = updated.infer(frame), untouched.infer(frame), reference.infer(frame)
        np.testing.assert_allclose(a, ref, atol=TOL)
        if i < 10:
            np.testing.assert_allclose(a, b, atol=TOL)
        else:
            assert np.abs(a - b).max() > 1e-3, f"frame {i} was not answered by the updated model"


@pytest.mark.parametrize("kind", RUNTIMES)
def test_swap_mid_stream_serves_the_new_model_from_the_next_frame(edge_model, cloud, kind):
    runtime = make_runtime(kind, copy.deepcopy(edge_model))
    same_structure = copy.deepcopy(edge_model)  # a modules update: other weights, same modules
    with torch.no_grad():
        for p in same_structure.parameters():
            p.mul_(0.9)
    new_structure = build_submodel(cloud, SubModelSpec(((0, 2), (1,), (0, 1, 2), (0,))))
    frames = _frames(30, seed=4)
    _run(runtime, frames[:10])
    for new_model, stream in ((same_structure, frames[10:20]), (new_structure, frames[20:])):
        fresh = make_runtime(kind, copy.deepcopy(new_model))
        runtime.swap(copy.deepcopy(new_model))
        np.testing.assert_allclose(_run(runtime, stream), _run(fresh, stream), atol=TOL)
    assert runtime.model.spec == new_structure.spec


def test_swap_with_weights_that_do_not_fit_is_refused_before_anything_changes(edge_model):
    runtime = OrtEdgeRuntime(copy.deepcopy(edge_model))
    state = {k: v.numpy() for k, v in edge_model.state_dict().items()}
    state.pop(next(iter(state)))
    with pytest.raises(UpdateError, match="missing"):
        runtime.swap(copy.deepcopy(edge_model), state)


def _broken_model() -> nn.Module:
    """A model the exporter refuses (GroupNorm has no running statistics to adapt)."""
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))


@pytest.mark.parametrize("failure", ["export", "ort"])
def test_failing_rebuild_leaves_the_old_model_serving(edge_model, cloud, monkeypatch, failure):
    runtime, reference = OrtEdgeRuntime(copy.deepcopy(edge_model)), OrtEdgeRuntime(copy.deepcopy(edge_model))
    frames = _frames(20, seed=6)
    np.testing.assert_allclose(_run(runtime, frames[:10]), _run(reference, frames[:10]), atol=TOL)
    if failure == "export":
        bad = _broken_model()
    else:  # a graph ONNX Runtime cannot load: the session build fails after a successful export
        bad = build_submodel(cloud, SubModelSpec(((1,), (2,), (0,), (1,))))
        monkeypatch.setattr(edge_runtime.OrtEdgeRuntime, "_graph_bytes",
                            lambda self, model: (b"not an onnx graph", None))
    with pytest.raises(UpdateError, match="still serving the previous model"):
        runtime.swap(bad)
    future = runtime.swap_async(bad)
    assert isinstance(future.exception(timeout=60), UpdateError)
    np.testing.assert_allclose(_run(runtime, frames[10:]), _run(reference, frames[10:]), atol=TOL)
    assert runtime.model.spec == edge_model.spec


def test_exporter_refuses_models_it_cannot_express():
    with pytest.raises(ExportError, match="GroupNorm"):
        export_adaptive(_broken_model())
    with pytest.raises(ValueError, match="momentum"):
        make_runtime("onnx", ModularNet((4, 8), 1), bn_momentum=0.0)


@pytest.mark.parametrize("kind", RUNTIMES)
def test_a_change_of_environment_raises_the_momentum_until_the_statistics_caught_up(edge_model, kind):
    """Steady frames keep the base momentum; a jump in the frames' statistics is detected once and the
    statistics then average the frames since the change (momentum 1/(n + warmup)), back to the base after."""
    runtime = make_runtime(kind, copy.deepcopy(edge_model))
    off = make_runtime(kind, copy.deepcopy(edge_model), shift_threshold=0)
    steady, shifted = _frames(200, seed=1), _frames(200, seed=2, shift=3.0)
    for rt in (runtime, off):
        _run(rt, steady)
    assert runtime.shift.shifts == 0 and runtime.shift.momentum == pytest.approx(0.01)
    _run(runtime, shifted[:5])
    assert runtime.shift.shifts == 1 and runtime.shift.momentum > 0.02
    _run(runtime, shifted[5:])
    _run(off, shifted)
    assert runtime.shift.shifts == 1 and runtime.shift.momentum == pytest.approx(0.01) and off.shift.shifts == 0


@pytest.mark.parametrize("kind", RUNTIMES)
def test_bad_affine_updates_are_refused_and_serving_goes_on(edge_model, kind):
    runtime, reference = make_runtime(kind, copy.deepcopy(edge_model)), make_runtime(kind, copy.deepcopy(edge_model))
    good = _scaled_affine(edge_model, 1.0)
    name = next(iter(good))
    bad_updates = [{k: v for k, v in good.items() if k != name},
                   {**good, name: np.zeros(good[name].size + 1, np.float32)},
                   {**good, name: np.full_like(good[name], np.nan)}]
    for bad in bad_updates:
        with pytest.raises(UpdateError):
            runtime.apply_affine(bad)
    frames = _frames(5, seed=7)
    np.testing.assert_allclose(_run(runtime, frames), _run(reference, frames), atol=TOL)


def test_runtimes_share_one_interface(edge_model):
    ort_rt, torch_rt = OrtEdgeRuntime(copy.deepcopy(edge_model)), TorchEdgeRuntime(copy.deepcopy(edge_model))
    assert ort_rt.affine_templates() == torch_rt.affine_templates()
    assert ort_rt.state_templates() == torch_rt.state_templates()
    assert ort_rt.model.spec == torch_rt.model.spec
    with pytest.raises(ValueError, match="unknown edge runtime"):
        make_runtime("tensorrt", edge_model)


def test_per_frame_selection_decides_as_the_batch_path():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3000, 10)) * rng.uniform(0.3, 4.0, (3000, 1))
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    batch, single = Selector(10, warmup_frames=200), Selector(10, warmup_frames=200)
    by_batch = [bool(batch.select(p[None])[0]) for p in probs]
    by_frame = [single.select_one(p, entropy_one(p)) for p in probs]
    assert by_batch == by_frame
    assert 0 < sum(by_frame) < len(by_frame)
    assert single.e_min == pytest.approx(batch.e_min) and single.tokens == pytest.approx(batch.tokens)
    np.testing.assert_allclose(single.mean_probs, batch.mean_probs)
    assert (single.seen, single.uploaded) == (batch.seen, batch.uploaded)
    assert entropy_one(probs[0]) == pytest.approx(float(entropy(probs[:1].astype(np.float64))[0]))
    with pytest.raises(ValueError):
        single.select_one(np.ones(3, np.float32) / 3)
