import copy

import numpy as np
import pytest
import torch

from eclm_ros.core.compose import compose, integrate, module_weights, new_modules, score_modules
from eclm_ros.core.merge import average
from eclm_ros.core.models import Budget, ModularNet, SubModelSpec, build_submodel, spec_cost, submodel_module_state
from eclm_ros.sim.corruptions import corrupt
from eclm_ros.sim.data import load_fashion_mnist

X, Y = load_fashion_mnist("test")


@pytest.fixture
def cloud():
    torch.manual_seed(0)
    return ModularNet((8, 16, 16), 3).eval()


def test_merge_of_identical_models_is_identity(cloud):
    state = cloud.state_dict()
    merged = average([state, copy.deepcopy(state), copy.deepcopy(state)], [1, 2, 3])
    for k, v in state.items():
        torch.testing.assert_close(merged[k], v)


def test_average_is_weighted_and_refuses_mismatch(cloud):
    a = {"w": torch.zeros(3)}
    b = {"w": torch.ones(3)}
    torch.testing.assert_close(average([a, b], [1, 3])["w"], torch.full((3,), 0.75))
    with pytest.raises(ValueError, match="different parameter names"):
        average([a, {"v": torch.ones(3)}], [1, 1])
    with pytest.raises(ValueError, match="weights"):
        average([a, b], [0, 0])


def test_integration_changes_only_that_module(cloud):
    spec = SubModelSpec(((1,), (0,), (2,)))
    sub = build_submodel(cloud, spec)
    with torch.no_grad():
        for p in sub.parameters():
            p.add_(1.0)
    update = {k: v for k, v in submodel_module_state(sub).items() if k.startswith("stages.2.module2")}
    before = {k: v.clone() for k, v in cloud.state_dict().items()}
    assert integrate(cloud, update, 0.5) == ["stages.2.module2"]
    moved = {k for k, v in cloud.state_dict().items() if not torch.equal(before[k], v)}
    assert moved and all(k.startswith("stages.2.blocks.2.") for k in moved)
    k = "stages.2.blocks.2.body.0.weight"
    torch.testing.assert_close(cloud.state_dict()[k], before[k] + 0.5)
    with pytest.raises(ValueError):
        integrate(cloud, update, 1.5)


def test_composition_respects_budget_and_follows_the_environment(quick_model, to_tensor):
    cloud = quick_model("cloud").model
    budget = Budget(max_macs=spec_cost(cloud, SubModelSpec(((0,), (0,), (0,))))[1])
    rng = np.random.default_rng(0)
    envs = {name: to_tensor(np.stack([corrupt(i, name, 5, rng) for i in X[:128]])) for name in
            ("contrast", "gaussian_noise", "fog", "pixelate")}
    specs = {name: compose(cloud, budget, imgs) for name, imgs in envs.items()}
    for spec in specs.values():
        assert spec_cost(cloud, spec)[1] <= budget.max_macs
    scores = {name: score_modules(cloud, imgs) for name, imgs in envs.items()}
    assert all(len(row) == 3 for s in scores.values() for row in s)
    assert len(set(specs.values())) > 1  # different environments, different compositions
    a, b = next((x, y) for x in specs.values() for y in specs.values() if x != y)
    missing = new_modules(a, b)
    assert missing and set(module_weights(cloud, missing)) and all(m not in a.stages[s] for s, m in missing)
