"""The cloud coordinator's state: its strategy, each edge's model version, its signing key; saved atomically
and restored on restart so edges keep their versions and what the cloud learned for them."""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import torch

from .signing import SignatureError, load_private_key
from .strategies import Profile, Update, make_strategy
from .training import load_checkpoint

log = logging.getLogger(__name__)
STATE_FILE = "coordinator_state.pt"


class CoordinatorState:
    def __init__(self, quick: bool = False, cache_dir: str | None = None, state_dir: str | None = None,
                 private_key_path: str | None = None, strategy: str = "eclm_ros") -> None:
        self.strategy = make_strategy(strategy, load_checkpoint("cloud", quick, cache_dir), quick)
        self.lock = threading.RLock()  # the ROS callbacks and the learning thread share the strategy
        self.versions: dict[str, int] = {}
        self.last_status: dict[str, dict] = {}
        self.state_dir = Path(state_dir) if state_dir else None
        self.private_key = load_private_key(private_key_path) if private_key_path else None
        if self.state_dir is not None and (self.state_dir / STATE_FILE).exists():
            self.restore()

    def register(self, edge_id: str, profile: Profile, current_version: int) -> Update | None:
        """A registration doubles as the edge's heartbeat: an edge already in sync (same profile, the version
        the cloud last sent) gets nothing; a new, returning or out-of-sync edge gets its full model, at a
        version above the one it serves (it would refuse a lower one as stale)."""
        if not edge_id:
            raise ValueError("edge_id must not be empty")
        with self.lock:
            session = self.strategy.sessions.get(edge_id)
            if session is not None and session.registered == profile and self.versions.get(edge_id) == current_version:
                return None
            update = self.strategy.register(edge_id, profile)
            self.versions[edge_id] = max(self.versions.get(edge_id, 0), int(current_version))
            return update

    def save(self) -> None:
        if self.state_dir is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / (STATE_FILE + ".tmp")
        with self.lock:
            torch.save({"versions": dict(self.versions), "strategy": self.strategy.state_dict()}, tmp)
        os.replace(tmp, self.state_dir / STATE_FILE)

    def restore(self) -> None:
        path = self.state_dir / STATE_FILE
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            self.strategy.load_state_dict(blob["strategy"])
            self.versions = {str(k): int(v) for k, v in blob["versions"].items()}
        except (OSError, RuntimeError, KeyError, ValueError, SignatureError) as exc:
            log.error("cannot restore %s (%s): starting without saved state", path, exc)
            self.versions = {}
