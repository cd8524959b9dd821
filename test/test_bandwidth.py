"""Link estimates from probes, and the budgets and encodings that follow from them."""
import math

import pytest

from eclm_ros.core.bandwidth import LinkEstimator, choose_encoding, link_encoding, upload_budget_bps


def test_estimate_is_robust_and_a_dead_link_is_reported_down():
    est = LinkEstimator(window=10)
    for rtt in (0.010, 0.011, 0.009, 0.500, 0.010):  # one slow outlier
        est.add_probe(rtt, up_bytes=125_000, down_bytes=250_000)
    e = est.estimate()
    assert e.link_up and e.loss == 0
    assert e.rtt_ms == pytest.approx(10.0)  # the median ignores the outlier
    assert e.uplink_bps == pytest.approx(8 * 125_000 / 0.010)
    assert e.downlink_bps == pytest.approx(2 * e.uplink_bps)
    for _ in range(3):
        est.add_probe(None)  # three probes lost in a row: the link is down
    e = est.estimate()
    assert not e.link_up and e.loss == pytest.approx(3 / 8)
    assert upload_budget_bps(e) == 0.0
    est.add_probe(0.010, 125_000, 250_000)  # it comes back
    assert est.estimate().link_up
    with pytest.raises(ValueError):
        est.add_probe(-1.0)


def test_upload_budget_is_a_share_of_the_uplink_less_loss():
    est = LinkEstimator(window=4)
    for rtt in (0.01, None, 0.01, 0.01):
        est.add_probe(rtt, 100_000, 0)
    e = est.estimate()
    assert upload_budget_bps(e, share=0.5) == pytest.approx(e.uplink_bps * 0.5 * 0.75)
    with pytest.raises(ValueError):
        upload_budget_bps(e, share=0)
    assert math.isinf(LinkEstimator().estimate().rtt_ms)


def test_update_encoding_shrinks_to_fit_the_downlink():
    mb = 1_000_000
    assert choose_encoding(mb, downlink_bps=100e6) == "raw"  # 80 ms
    assert choose_encoding(mb, downlink_bps=5e6) == "fp16"  # raw 1.6 s, fp16 0.8 s
    assert choose_encoding(mb, downlink_bps=1e6) == "int8"  # even int8 misses: the smallest there is
    assert link_encoding("fp16", mb, 100e6) == "fp16"  # never larger than configured
    assert link_encoding("raw", mb, 3e6) == "int8"
    assert link_encoding("fp16", mb, 0.0) == "fp16"  # not measured yet
    with pytest.raises(ValueError):
        link_encoding("bf16", mb, 1e6)
    with pytest.raises(ValueError, match="finite"):
        link_encoding("fp16", mb, math.nan)
