import pytest
import torch

from eclm_ros.core.models import (Budget, BudgetError, ModularNet, SpecError, SubModelSpec, build_submodel,
                                  count_macs, count_params, derive_spec, load_module_state, spec_cost,
                                  submodel_module_state)
from eclm_ros.core.norm import AffineStateError, affine_param_fraction, affine_state, load_affine


@pytest.fixture
def cloud():
    torch.manual_seed(0)
    return ModularNet((8, 16, 32), 3).eval()


def test_spec_cost_matches_built_submodel(cloud):
    for stages in [((0,), (0,), (0,)), ((0, 2), (1,), (0, 1, 2)), ((0, 1, 2),) * 3]:
        spec = SubModelSpec(stages)
        sub = build_submodel(cloud, spec)
        assert spec_cost(cloud, spec) == (count_params(sub), count_macs(sub))


@pytest.mark.parametrize("budget", [Budget(max_params=50_000), Budget(max_macs=6_000_000),
                                    Budget(max_params=60_000, max_macs=7_000_000)])
def test_submodel_respects_budget(cloud, budget):
    sub = build_submodel(cloud, derive_spec(cloud, budget))
    if budget.max_params:
        assert count_params(sub) <= budget.max_params
    if budget.max_macs:
        assert count_macs(sub) <= budget.max_macs
    bigger = derive_spec(cloud, Budget())
    assert bigger == cloud.spec  # unlimited: the whole model


def test_budget_nothing_fits(cloud):
    with pytest.raises(BudgetError, match="smallest one needs"):
        derive_spec(cloud, Budget(max_params=1000))


def test_scores_choose_modules(cloud):
    smallest = spec_cost(cloud, SubModelSpec(((0,), (0,), (0,))))
    spec = derive_spec(cloud, Budget(max_macs=smallest[1]), module_scores=[[0, 0, 1], [0, 1, 0], [1, 0, 0]])
    assert spec.stages == ((2,), (1,), (0,))


def test_submodel_equals_cloud_with_same_modules_active(cloud):
    spec = SubModelSpec(((0, 2), (1,), (0, 1)))
    sub = build_submodel(cloud, spec)
    x = torch.randn(4, 1, 28, 28)
    cloud.set_active(spec)
    with torch.no_grad():
        torch.testing.assert_close(sub(x), cloud(x))
    cloud.set_active(None)


def test_module_state_round_trip_changes_only_those_modules(cloud):
    spec = SubModelSpec(((1,), (2,), (0,)))
    sub = build_submodel(cloud, spec)
    with torch.no_grad():
        for p in sub.stages[1].blocks[0].parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in cloud.state_dict().items()}
    changed = load_module_state(cloud, {k: v for k, v in submodel_module_state(sub).items()
                                        if k.startswith("stages.1.module2")})
    assert changed == ["stages.1.module2"]
    after = cloud.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("stages.1.blocks.2.") for k in moved)


def test_module_state_rejects_bad_input(cloud):
    state = submodel_module_state(build_submodel(cloud, SubModelSpec(((0,), (0,), (0,)))))
    key = next(iter(state))
    before = {k: v.clone() for k, v in cloud.state_dict().items()}
    for bad in ({**state, "stages.9.module0.x": torch.zeros(1)}, {key: torch.zeros(3)},
                {**state, key: torch.full_like(state[key], float("nan"))}):
        with pytest.raises(SpecError):
            load_module_state(cloud, bad)
    assert all(torch.equal(before[k], v) for k, v in cloud.state_dict().items())


def test_spec_validation(cloud):
    with pytest.raises(SpecError, match="subset"):
        build_submodel(cloud, SubModelSpec(((0,), (5,), (0,))))


def test_affine_state_all_or_nothing(cloud):
    state = affine_state(cloud)
    assert all(k.endswith((".weight", ".bias")) for k in state)
    assert 0 < affine_param_fraction(cloud) < 0.05
    before = {k: v.clone() for k, v in state.items()}
    key = next(iter(state))
    for bad in ({**state, key: torch.zeros(999)}, {k: v for k, v in state.items() if k != key},
                {**state, key: torch.full_like(state[key], float("inf"))}):
        with pytest.raises(AffineStateError):
            load_affine(cloud, {k: v + 1 for k, v in bad.items()})
    assert all(torch.equal(before[k], v) for k, v in affine_state(cloud).items())
    load_affine(cloud, {k: v + 1 for k, v in state.items()})
    assert torch.equal(affine_state(cloud)[key], before[key] + 1)


def test_onnx_export(cloud, tmp_path):
    sub = build_submodel(cloud, SubModelSpec(((0,), (1,), (2,))))
    torch.onnx.export(sub, torch.zeros(1, 1, 28, 28), tmp_path / "m.onnx", dynamo=False)
    assert (tmp_path / "m.onnx").stat().st_size > 10_000
