"""The coordinator's strategies: what they send, that the edge can apply it, and that merges are gated."""
import copy
import json

import numpy as np
import pytest
import torch

from eclm_ros.core.compose import AFFINE_PREFIX, MODULE_PREFIX, assemble
from eclm_ros.core.edge_runtime import TorchEdgeRuntime
from eclm_ros.core.messages import KIND_FULL, KIND_MODULES, KIND_NORM_AFFINE, Profile
from eclm_ros.core.models import BudgetError, SpecError, SubModelSpec, module_key, spec_cost
from eclm_ros.core.norm import affine_params, affine_state
from eclm_ros.core.strategies import Cause, Compose, ComposeMerge, Distil, ModulesRefused, make_strategy
from eclm_ros.core.tensor_codec import pack
from eclm_ros.core.updates import UpdateRejected, apply_update, model_from_spec
from eclm_ros.sim.corruptions import corrupt
from eclm_ros.sim.data import load_fashion_mnist

X, Y = load_fashion_mnist("test")


def _frames(name: str, n: int, start: int = 0) -> np.ndarray:
    rng = np.random.default_rng(start)
    return np.stack([corrupt(img, name, 5, rng) for img in X[start:start + n]])


@pytest.fixture
def ckpt(quick_model):
    """The quick cloud checkpoint (a strategy is built from it)."""
    return quick_model("cloud")


@pytest.fixture
def cloud(ckpt):
    return ckpt.model


def _edge(strategy, edge_id="robot1", profile=Profile()):
    """A TorchEdgeRuntime that has applied the registration update, as the edge node does."""
    update = strategy.register(edge_id, profile)
    assert update.kind == KIND_FULL
    runtime = TorchEdgeRuntime(model_from_spec(update.submodel_spec))
    apply_update(runtime, KIND_FULL, update.submodel_spec, "", pack(update.tensors))
    return runtime, update.submodel_spec


def test_distil_sends_affine_updates_only(ckpt):
    strategy = Distil(ckpt, min_step_frames=16)
    runtime, spec = _edge(strategy)
    frames = _frames("contrast", 64)
    updates = [strategy.on_samples("robot1", frames[i:i + 16]) for i in range(0, 64, 16)]
    affine = [u for u in updates if u is not None]
    assert affine and all(u.kind == KIND_NORM_AFFINE for u in affine)
    assert set(affine[-1].tensors) == set(affine_params(runtime.model))
    apply_update(runtime, KIND_NORM_AFFINE, affine[-1].submodel_spec, spec, pack(affine[-1].tensors, encoding="fp16"))
    with pytest.raises(UpdateRejected, match="another sub-model structure"):
        apply_update(runtime, KIND_NORM_AFFINE, "{}", spec, pack(affine[-1].tensors))
    with pytest.raises(KeyError, match="not registered"):
        strategy.on_samples("stranger", frames[:16])


def test_recomposition_sends_only_missing_modules_and_the_edge_rebuilds_it(ckpt, cloud):
    smallest = spec_cost(cloud, SubModelSpec(tuple((s.module_ids[0],) for s in cloud.stages)))
    profile = Profile(max_macs=smallest[1])  # one module per stage: the choice of module is all that varies
    strategy = Compose(ckpt, compose_every=64, min_step_frames=16, compose_margin=0.0)
    runtime, spec = _edge(strategy, profile=profile)
    session = strategy.sessions["robot1"]
    recomposed = None
    for name in ("contrast", "gaussian_noise", "fog", "pixelate", "glass_blur", "snow"):
        frames = _frames(name, 128)
        for i in range(0, 128, 32):
            update = strategy.on_samples("robot1", frames[i:i + 32])
            if update is not None and update.kind == KIND_MODULES:
                recomposed, old_spec = update, spec
            if update is not None:
                apply_update(runtime, update.kind, update.submodel_spec, spec, pack(update.tensors, encoding="raw"))
                spec = update.submodel_spec
        if recomposed:
            break
    assert recomposed is not None, "no environment changed the composition"
    assert recomposed.cause is Cause.RECOMPOSED
    modules = {k.split(".body.", 1)[0][len(MODULE_PREFIX):] for k in recomposed.tensors if k.startswith(MODULE_PREFIX)}
    new = {module_key(s, m) for s, ids in enumerate(session.spec.stages) for m in ids}
    assert modules and modules <= new  # only modules of the new composition...
    old = {module_key(s, m) for s, ids in enumerate(json.loads(old_spec)["config"]["module_ids"]) for m in ids}
    assert not modules & old  # ...that the edge did not hold
    assert all(k.startswith((MODULE_PREFIX, AFFINE_PREFIX)) for k in recomposed.tensors)
    assert runtime.model.spec == session.spec
    edge_params = dict(runtime.model.named_parameters())
    student_params = dict(session.learner.student_net.materialise(session.learner.student.params).named_parameters())
    assert set(edge_params) == set(student_params)
    for name, value in student_params.items():  # the edge now holds exactly the cloud's student
        torch.testing.assert_close(edge_params[name], value.detach(), msg=name)


def test_assemble_refuses_what_it_cannot_build(ckpt, cloud):
    strategy = Distil(ckpt)
    runtime, _ = _edge(strategy)
    current = runtime.model
    other = SubModelSpec(tuple(tuple(m for m in s.module_ids if m not in own)[:1] or own
                               for s, own in zip(cloud.stages, current.spec.stages)))
    affine = {f"{AFFINE_PREFIX}{k}": v for k, v in affine_state(current).items()}
    if other != current.spec:
        with pytest.raises(SpecError, match="neither held"):
            assemble(current, other, affine)
    with pytest.raises(SpecError, match="only"):
        assemble(current, current.spec, {"junk": torch.zeros(1)})


def _set_student(session, state):
    session.learner.student.params.copy_(session.learner.student_net.flat(state))


def test_merge_is_accepted_when_it_helps_every_edge_and_refused_otherwise(ckpt):
    strategy = ComposeMerge(ckpt, compose_every=10**9, min_step_frames=10**9, min_holdout=16)
    for edge in ("a", "b"):
        strategy.register(edge, Profile())
        strategy.on_samples(edge, _frames("contrast", 256, start=0 if edge == "a" else 256))
    a, b = strategy.sessions["a"], strategy.sessions["b"]
    good = a.learner.student_state()
    noise = {k: torch.randn_like(v, generator=torch.Generator().manual_seed(1)) * 0.6 for k, v in good.items()}
    _set_student(a, {k: v + noise[k] for k, v in good.items()})
    _set_student(b, {k: v - noise[k] for k, v in good.items()})
    updates, decisions = strategy.aggregate()  # the average is the good model: both edges gain
    assert set(updates) == {"a", "b"} and decisions[0].accepted and "accepted" in str(decisions[0])
    torch.testing.assert_close(updates["a"].tensors, updates["b"].tensors)

    _set_student(b, {k: v + 3 * noise[k] for k, v in good.items()})  # b is broken, a is good
    updates, decisions = strategy.aggregate()
    assert updates == {} and not decisions[0].accepted
    torch.testing.assert_close(a.learner.student_state(), good)  # a refused merge changes nothing


def test_reassemble_follows_the_budget_and_refuses_the_impossible(ckpt, cloud):
    strategy = make_strategy("eclm_ros", ckpt)
    strategy.register("robot1", Profile())
    small = Profile(max_macs=spec_cost(cloud, SubModelSpec(tuple((s.module_ids[0],) for s in cloud.stages)))[1])
    update = strategy.reassemble("robot1", small, "budget")
    assert update.kind == KIND_FULL and strategy.sessions["robot1"].spec.num_modules == len(cloud.stages)
    with pytest.raises(BudgetError):
        strategy.reassemble("robot1", Profile(max_params=10), "budget")


def test_state_survives_a_restart(ckpt):
    strategy = make_strategy("eclm_ros", ckpt, min_step_frames=16)
    strategy.register("robot1", Profile())
    strategy.on_samples("robot1", _frames("fog", 64))
    restored = make_strategy("eclm_ros", ckpt)
    restored.load_state_dict(copy.deepcopy(strategy.state_dict()))
    before, after = strategy.sessions["robot1"], restored.sessions["robot1"]
    assert after.spec == before.spec and after.frames == before.frames
    torch.testing.assert_close(after.learner.student_state(), before.learner.student_state())
    assert restored.register("robot1", Profile()).cause is Cause.RESYNC


def test_local_adapter_learns_affine_only_and_its_modules_integrate(ckpt, cloud, quick_model, to_tensor):
    from eclm_ros.core.local_adapt import LocalAdapter

    edge = quick_model("edge").model
    adapter = LocalAdapter(edge, batch_size=8)
    before = {k: v.clone() for k, v in adapter.model.named_parameters()}
    x = to_tensor(_frames("fog", 24)).numpy()
    states = [adapter.add(frame) for frame in x]
    assert [s is not None for s in states].count(True) == 3 and adapter.steps == 3
    changed = {k for k, v in adapter.model.named_parameters() if not torch.equal(before[k], v)}
    assert changed and changed <= set(affine_params(adapter.model))
    torch.testing.assert_close(dict(edge.named_parameters())["stem.0.weight"], before["stem.0.weight"])  # untouched

    strategy = Compose(ckpt, integrate_weight=1.0)
    update = strategy.register("robot1", Profile(trainable=True))
    modules = adapter.module_state()
    key = next(k for k in modules if k.endswith("body.1.weight"))
    stage, module = int(key.split(".")[1]), int(key.split(".")[2][len("module"):])
    cloud_block = cloud.stages[stage].blocks[cloud.stages[stage].module_ids.index(module)]
    strategy.on_modules("robot1", update.submodel_spec, modules, 24)
    torch.testing.assert_close(cloud_block.body[1].weight, modules[key])  # weight 1: the cloud takes the edge's
    with pytest.raises(ModulesRefused, match="no longer serves"):
        strategy.on_modules("robot1", "{}", modules, 24)
    assert strategy.on_samples("robot1", _frames("fog", 64)) is None  # no distilled affine over local learning


def test_the_edge_heartbeat_does_not_undo_a_reassembly(ckpt, cloud):
    strategy = make_strategy("eclm_ros", ckpt)
    strategy.register("robot1", Profile())
    whole = Profile(max_macs=spec_cost(cloud, cloud.spec)[1])
    strategy.reassemble("robot1", whole, "operator")
    again = strategy.register("robot1", Profile())  # the edge's heartbeat still carries its own profile
    assert again.cause is Cause.RESYNC and strategy.sessions["robot1"].spec == cloud.spec
    assert strategy.register("robot1", Profile(max_params=10**9)).cause is Cause.REGISTERED  # a real change
