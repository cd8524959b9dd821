"""Interchangeable cloud strategies, one per module: ``distil`` (CEMA), ``compose`` (+ ECLM) and ``eclm_ros``
(+ gated ECAvg merges, the default)."""
from __future__ import annotations

from ..checkpoint import Checkpoint
from ..models import ModularNet
from .base import Cause, MergeDecision, ModulesRefused, Strategy, Update
from .compose import Compose
from .compose_merge import ComposeMerge
from .distil import BUDGET_SHARES, Distil, default_budget

STRATEGIES: dict[str, type[Distil]] = {"distil": Distil, "compose": Compose, "eclm_ros": ComposeMerge}

__all__ = ["BUDGET_SHARES", "STRATEGIES", "Cause", "Compose", "ComposeMerge", "Distil", "MergeDecision", "ModulesRefused",
           "Strategy", "Update", "default_budget", "make_strategy"]


def make_strategy(name: str, cloud: Checkpoint, student: Checkpoint | None = None, *, ray_workers: int = 0,
                  ray_address: str = "", **kwargs) -> Strategy:
    """The named strategy over the modular cloud model; with a user's edge model (``student``) or a teacher
    that is not modular, CEMA distillation into that model (the one strategy that applies), saying so in its
    ``summary``. With ``ray_workers``, the same strategy spread over that many Ray workers (``ray_address``: a
    cluster to join, '' = local ones)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    if ray_workers:
        from ..ray_strategy import RayStrategy  # Ray is optional: imported only when asked for

        return RayStrategy(name, cloud, student, build=local_strategy, workers=ray_workers, address=ray_address,
                           **kwargs)
    return local_strategy(name, cloud, student, **kwargs)


def local_strategy(name: str, cloud: Checkpoint, student: Checkpoint | None = None, **kwargs) -> Strategy:
    """``make_strategy`` in this process: what each Ray worker builds for its edges."""
    if student is None and isinstance(cloud.model, ModularNet):
        return STRATEGIES[name](cloud, **kwargs)
    strategy = Distil(cloud, student=student, **kwargs)
    if name != "distil":
        strategy.summary += f" ({name!r} needs the modular cloud model as teacher and edge model)"
    return strategy
