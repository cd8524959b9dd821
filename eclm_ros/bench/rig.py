"""Node processes of one system on this machine's DDS domain (the fault and fleet benchmarks): their parameters,
a key ring (secure by default), a recorder of what they publish, and each process's resident memory."""
from __future__ import annotations

import threading
from pathlib import Path

import yaml

from ..core.checkpoint import default_path
from ..core.signing import KeyRing
from ..ros.launcher import NodeProcess, Recorder, node_executable
from ..ros.links import edge_id_from

STATE_FILE = "coordinator_state.pt"


class Rig:
    """Node processes of one system on this machine's DDS domain, their parameters, a key ring (secure by
    default), a recorder for what they publish, and the resident memory of each process, sampled."""

    def __init__(self, out: Path, cache: Path | None, robots: int = 4, quick: bool = True, truth: bool = False,
                 **cloud_params) -> None:
        """``cache``: the checkpoint cache whose quick models the nodes serve (faults need learning, not accuracy;
        with ``quick`` off, the full ones: the shipped defaults when ``cache`` is None). The recorder keeps the
        predictions of robot1 ... robot<robots> (and their cameras' ground truth with ``truth``)."""
        from diagnostic_msgs.msg import DiagnosticArray

        from ..msg import GroundTruth, Prediction
        from ..ros.ros_io import RELIABLE_QOS

        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.ring = KeyRing(out / "keys")
        self.ring.init_cloud()
        keys = {"keys_dir": str(self.ring.root)}
        models = {n: str(default_path(n, quick, cache)) for n in ("cloud", "edge")}
        self.state_dir = Path(cloud_params.pop("state_dir", out / "state"))
        self.params: dict[str, dict] = {
            "cloud_coordinator": {"model_path": models["cloud"], **keys, "state_dir": str(self.state_dir),
                                  "save_period_s": 1.0, **cloud_params},
            "edge_learner": {"model_path": models["edge"], **keys, "upload_batch": 8, "upload_ratio": 0.3,
                             "register_period_s": 2.0},
            "camera_stream": {"schedule": "contrast@5:100000", "seed": 3, "rate_hz": 30.0}}
        self.procs: dict[str, NodeProcess] = {}
        self.killed: set[int] = set()
        self.rss_mb: dict[str, float] = {}
        self.topics = {"/diagnostics": (DiagnosticArray, 100)}
        self.topics.update({f"/robot{i}/predictions": (Prediction, RELIABLE_QOS) for i in range(1, robots + 1)})
        if truth:
            self.topics.update({f"/robot{i}/ground_truth": (GroundTruth, RELIABLE_QOS) for i in range(1, robots + 1)})
        self.recorder = Recorder(self.topics)
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample_rss, daemon=True)
        self._sampler.start()

    # -- processes --------------------------------------------------------------------------------------------
    def start(self, name: str, namespace: str, **params) -> NodeProcess:
        """Start (or restart) the node ``name`` in ``namespace``; an edge is enrolled under its namespace's id."""
        if name == "edge_learner":
            self.ring.enrol(edge_id_from(namespace))
        key = f"{namespace}/{name}"
        n = sum(k.startswith(key) for k in self.procs)
        path = self.out / f"{name}{namespace.replace('/', '-')}-{n}.yaml"
        path.write_text(yaml.safe_dump({f"/**/{name}": {"ros__parameters": {**self.params[name], **params}}}))
        proc = NodeProcess([*node_executable(name), "--ros-args", "-r", f"__ns:={namespace}", "--params-file",
                            str(path)], path.with_suffix(".log"))
        self.procs[key if n == 0 else f"{key}#{n}"] = proc
        return proc

    def kill(self, proc: NodeProcess) -> None:
        """SIGKILL (a crashed machine); not counted as a crash."""
        self.killed.add(proc.proc.pid)
        proc.kill()

    def crashes(self) -> int:
        """Node processes that ended without the rig killing them."""
        return sum(1 for p in self.procs.values() if not p.alive() and p.proc.pid not in self.killed)

    def _sample_rss(self) -> None:
        import psutil

        while not self._stop.wait(0.25):
            for key, proc in list(self.procs.items()):
                try:
                    rss = psutil.Process(proc.proc.pid).memory_info().rss / 2**20
                except psutil.Error:
                    continue
                self.rss_mb[key.split("#")[0]] = max(self.rss_mb.get(key.split("#")[0], 0.0), rss)

    def rss_now(self, proc: NodeProcess) -> float:
        import psutil

        return psutil.Process(proc.proc.pid).memory_info().rss / 2**20

    # -- what the system says ---------------------------------------------------------------------------------
    def predictions(self, edge: str) -> list:
        return self.recorder.received[f"/{edge}/predictions"]

    def version(self, edge: str) -> int:
        preds = self.predictions(edge)
        return preds[-1].model_version if preds else -1

    def diagnostics(self, node: str, concern: str, namespace: str = "") -> tuple[int, str, dict[str, str]] | None:
        """The newest (level, message, values) ``node`` (in ``namespace``, when given) reported for ``concern`` on
        /diagnostics."""
        for arr in reversed(self.recorder.received["/diagnostics"][-200:]):
            for s in arr.status:
                if s.name.endswith(f"{node}: {concern}") and (s.hardware_id == f"{namespace}/{node}" if namespace
                                                               else f"/{node}" in s.hardware_id):
                    return s.level[0] if isinstance(s.level, bytes) else s.level, s.message, \
                        {kv.key: kv.value for kv in s.values}
        return None

    def value(self, node: str, concern: str, key: str, default: float = 0.0, namespace: str = "") -> float:
        found = self.diagnostics(node, concern, namespace)
        return float(found[2].get(key, default)) if found else default

    def load_state(self) -> dict | None:
        """The cloud's state file as a restarted cloud reads it; None when it does not load."""
        import torch

        try:
            return torch.load(self.state_dir / STATE_FILE, map_location="cpu", weights_only=True)
        except Exception:
            return None

    def logs(self) -> str:
        return "\n".join(f"--- {k}\n{p.output()[-2500:]}" for k, p in self.procs.items())

    def close(self) -> None:
        self._stop.set()
        for proc in reversed(list(self.procs.values())):
            proc.stop()
        self.recorder.close()
