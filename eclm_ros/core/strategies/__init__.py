"""Interchangeable cloud strategies, one per module: ``distil`` (CEMA), ``compose`` (+ ECLM) and ``eclm_ros``
(+ gated ECAvg merges, the default)."""
from __future__ import annotations

from ..checkpoint import Checkpoint
from .base import Cause, MergeDecision, ModulesRefused, Strategy, Update
from .compose import Compose
from .compose_merge import ComposeMerge
from .distil import Distil, default_budget

STRATEGIES: dict[str, type[Distil]] = {"distil": Distil, "compose": Compose, "eclm_ros": ComposeMerge}

__all__ = ["STRATEGIES", "Cause", "Compose", "ComposeMerge", "Distil", "MergeDecision", "ModulesRefused",
           "Strategy", "Update", "default_budget", "make_strategy"]


def make_strategy(name: str, cloud: Checkpoint, **kwargs) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return STRATEGIES[name](cloud, **kwargs)
