"""Two real node processes over DDS: a >= 5 MB ModelUpdate and a SampleBatch arrive intact and decode."""
import json
from pathlib import Path

import pytest
import yaml

from node_processes import NodeProcess, ros_available, wait_for

pytestmark = pytest.mark.skipif(ros_available() is not None, reason=str(ros_available()))

NODES = Path(__file__).parent / "wire_nodes"


def test_model_update_and_samples_cross_dds(tmp_path):
    from wire_payloads import frames, sha, update_tensors

    sender_cfg = yaml.safe_load((NODES / "sender.yaml").read_text())["wire_sender"]["ros__parameters"]
    result = tmp_path / "received.json"
    receiver_yaml = tmp_path / "receiver.yaml"
    receiver_yaml.write_text(yaml.safe_dump({"wire_receiver": {"ros__parameters": {"result_file": str(result)}}}))
    receiver = NodeProcess.python(NODES / "update_receiver.py", receiver_yaml, tmp_path / "receiver.log")
    sender = NodeProcess.python(NODES / "update_sender.py", NODES / "sender.yaml", tmp_path / "sender.log")
    try:
        wait_for(lambda: result.exists() or not (receiver.alive() and sender.alive()), 60, "the receiver's result")
        assert result.exists(), f"receiver:\n{receiver.output()}\nsender:\n{sender.output()}"
        got = json.loads(result.read_text())
    finally:
        sender.stop()
        receiver.stop()

    expected = update_tensors(sender_cfg["seed"], sender_cfg["payload_mb"])
    assert got["update"]["bytes"] >= 5 * 1024 * 1024
    assert got["update"]["version"] == 2
    assert got["update"]["tensors"] == {k: sha(v) for k, v in expected.items()}
    imgs = frames(sender_cfg["seed"], sender_cfg["frames"])
    assert got["samples"]["frames"] == [sha(i) for i in imgs]
    assert got["samples"]["edge_id"] == "edge_1"
