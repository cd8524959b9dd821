import math

import pytest
import torch

from eclm_ros.core.adapt import bn, eata, source, tent
from eclm_ros.core.models import ModularNet
from eclm_ros.core.norm import affine_params


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = ModularNet((8, 16, 16), 2).eval()
    with torch.no_grad():
        m(torch.randn(64, 1, 28, 28))
    return m


def _snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _changed(before, m):
    after = m.state_dict()
    return {k for k in before if k not in after or not torch.equal(before[k], after[k])}


def test_source_changes_nothing(model):
    before = _snapshot(model)
    source.forward(torch.randn(16, 1, 28, 28), source.configure_model(model))
    assert not _changed(before, model)


def test_bn_uses_batch_stats_and_trains_no_parameter(model):
    before = {k: v.clone() for k, v in model.named_parameters()}
    x = torch.randn(16, 1, 28, 28) * 3 + 2
    eval_out = model(x)
    out = bn.forward(x, bn.configure_model(model))
    assert not torch.allclose(out, eval_out)
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())


@pytest.mark.parametrize("method", ["tent", "eata"])
def test_adaptation_changes_only_norm_affine(model, method):
    affine = set(affine_params(model))
    before = {k: v.clone() for k, v in model.named_parameters()}
    m = tent.configure_model(model)
    opt = tent.make_optimizer(tent.collect_params(m), lr=1e-2)
    state = eata.EataState(10, e_margin_factor=1.0, d_margin=1.01)
    for _ in range(3):
        x = torch.randn(32, 1, 28, 28)
        tent.forward_and_adapt(x, m, opt) if method == "tent" else eata.forward_and_adapt(x, m, opt, state)
    changed = {k for k, v in m.named_parameters() if not torch.equal(before[k], v)}
    assert changed and changed <= affine


def test_tent_outputs_precede_the_update(model):
    m = tent.configure_model(model)
    opt = tent.make_optimizer(tent.collect_params(m), lr=0.1)
    x = torch.randn(32, 1, 28, 28)
    with torch.no_grad():
        expected = m(x)
    torch.testing.assert_close(tent.forward_and_adapt(x, m, opt), expected)


def test_eata_filters_unreliable_and_redundant(model):
    m = tent.configure_model(model)
    opt = tent.make_optimizer(tent.collect_params(m))
    never = eata.EataState(10, e_margin_factor=0.0)  # E < 0: nothing is reliable
    before = {k: v.clone() for k, v in m.named_parameters()}
    eata.forward_and_adapt(torch.randn(32, 1, 28, 28), m, opt, never)
    assert never.selected == 0 and all(torch.equal(before[k], v) for k, v in m.named_parameters())
    redundant = eata.EataState(10, e_margin_factor=1.01, d_margin=0.0)  # |cos| < 0 never holds
    x = torch.randn(32, 1, 28, 28)
    eata.forward_and_adapt(x, m, opt, redundant)  # first batch: no history, all reliable pass
    first = redundant.selected
    eata.forward_and_adapt(x, m, opt, redundant)
    assert first == 32 and redundant.selected == first
    assert math.isclose(redundant.e_margin, 1.01 * math.log(10))


def test_eata_fisher_penalty_holds_weights(model):
    x = torch.randn(32, 1, 28, 28)
    drift = {}
    for alpha in (0.0, 2000.0):
        torch.manual_seed(0)
        m = tent.configure_model(ModularNet((8, 16, 16), 2))
        m.load_state_dict(model.state_dict(), strict=False)
        state = eata.EataState(10, e_margin_factor=1.01, d_margin=1.01, fisher_alpha=alpha)
        state.fishers = eata.compute_fisher(m, torch.randn(64, 1, 28, 28))
        opt = torch.optim.SGD(tent.collect_params(m), lr=1e-2)
        for _ in range(10):
            eata.forward_and_adapt(x, m, opt, state)
        drift[alpha] = sum((p - state.fishers[n][1]).abs().sum().item() for n, p in m.named_parameters()
                           if n in state.fishers)
    assert drift[2000.0] < 0.9 * drift[0.0]
