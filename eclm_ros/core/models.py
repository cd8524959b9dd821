"""The modular cloud model (ECLM), the sub-models derived from it, and plain edge models to compare with.

ECLM decomposes the cloud model into combinable modules. Here each stage holds several parallel residual
modules whose outputs are averaged into the residual stream, so *any* subset of a stage's modules (the empty
one too when ``min_modules`` is 0: the stage then runs its transition alone) is a working network: a sub-model
is a choice of modules per stage, picked for a device's compute budget and for the environment it currently
sees. Training with random subsets and the smallest one (``training/trainer.py``) keeps every choice
accurate; a sub-model only needs its BatchNorm statistics re-estimated (``norm.recalibrate``).
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Class decorator: the model becomes buildable by name from its config (``create_model``), as in timm."""
    def wrap(cls):
        cls.arch_name = name
        _REGISTRY[name] = cls
        return cls
    return wrap


def create_model(name: str, **config: Any) -> nn.Module:
    """A (untrained) model of a registered architecture."""
    if name not in _REGISTRY:
        raise SpecError(f"unknown architecture {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    try:
        return _REGISTRY[name](**config)
    except (TypeError, ValueError, IndexError) as exc:
        raise SpecError(f"cannot build {name} from {config}: {exc}") from exc


def architecture(model: nn.Module) -> dict[str, Any]:
    """``{"name", "config"}`` that rebuilds ``model``'s structure (the description's ``architecture``)."""
    name = getattr(model, "arch_name", None)
    if name is None:
        raise SpecError(f"{type(model).__name__} is not a registered architecture")
    return {"name": name, "config": model.config()}


def model_from_architecture(arch: dict[str, Any] | str) -> nn.Module:
    """Build the structure an architecture dict (or its JSON, as updates carry it) names; SpecError if none."""
    try:
        arch = json.loads(arch) if isinstance(arch, str) else arch
        name, config = arch["name"], arch["config"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SpecError(f"not an architecture: {str(arch)[:80]!r} ({exc})") from exc
    if not isinstance(config, dict):
        raise SpecError(f"architecture config must be an object, got {type(config).__name__}")
    return create_model(name, **config)


class BudgetError(ValueError):
    """No sub-model fits the requested compute budget."""


class SpecError(ValueError):
    """A sub-model spec does not fit the model it is applied to."""


@dataclass(frozen=True)
class SubModelSpec:
    """Which modules of each stage a sub-model keeps (original module ids, ascending)."""

    stages: tuple[tuple[int, ...], ...]

    @property
    def num_modules(self) -> int:
        return sum(len(s) for s in self.stages)


@dataclass(frozen=True)
class Budget:
    """A device's compute budget; 0 means unlimited."""

    max_params: int = 0
    max_macs: int = 0
    max_latency_ms: float = 0.0


class ResidualModule(nn.Module):
    """One combinable module: conv-BN-ReLU-conv-BN, a residual branch."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Stage(nn.Module):
    """A transition (when the stage downsamples or widens) and a set of parallel combinable modules. A model
    trained with empty module sets (``min_modules`` 0) also runs a stage on its transition alone: the
    cheapest sub-models are then the model's trunk (stem and transitions)."""

    def __init__(self, cin: int, cout: int, stride: int, module_ids: Sequence[int]) -> None:
        super().__init__()
        self.transition = _conv_bn(cin, cout, stride) if stride != 1 or cin != cout else nn.Identity()
        self.blocks = nn.ModuleList(ResidualModule(cout) for _ in module_ids)
        self.module_ids = list(module_ids)
        self.active: list[int] | None = None  # indices into blocks used by forward; None = all

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.transition(x)
        idx = range(len(self.blocks)) if self.active is None else self.active
        if not idx:
            return x
        branch = sum(self.blocks[i](x) for i in idx) / len(idx)
        return torch.relu(x + branch)


class _SizedModel(nn.Module):
    """A registered model that knows the input it was designed for (channels, size): MACs depend on it."""

    in_channels: int
    input_size: tuple[int, int]

    def _set_input(self, in_channels: int, input_size: Sequence[int], num_classes: int) -> None:
        if in_channels not in (1, 3) or len(input_size) != 2 or min(input_size) < 1 or num_classes < 2:
            raise ValueError(f"in_channels 1 or 3, input_size [h, w] and >= 2 classes, got {in_channels}, "
                             f"{list(input_size)}, {num_classes}")
        self.in_channels, self.input_size, self.num_classes = int(in_channels), tuple(int(v) for v in input_size), \
            int(num_classes)

    def _input_config(self) -> dict:
        return {"num_classes": self.num_classes, "in_channels": self.in_channels, "input_size": list(self.input_size)}

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.in_channels, *self.input_size)


@register_model("modular_net")
class ModularNet(_SizedModel):
    """Stem, stages of combinable modules, head. ``module_ids`` per stage name the cloud modules it holds. The
    stem may downsample (``stem_stride``); every stage after the first halves the resolution. ``min_modules``
    is the fewest modules a stage of a sub-model may keep (0: a stage may run on its transition alone)."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64), modules_per_stage: int = 4,
                 module_ids: Sequence[Sequence[int]] | None = None, num_classes: int = 10, in_channels: int = 1,
                 input_size: Sequence[int] = (28, 28), stem_stride: int = 1, min_modules: int = 1) -> None:
        super().__init__()
        self._set_input(in_channels, input_size, num_classes)
        if module_ids is None:
            module_ids = [list(range(modules_per_stage)) for _ in widths]
        if len(module_ids) != len(widths):
            raise ValueError(f"{len(module_ids)} stages of module ids for {len(widths)} widths")
        if stem_stride not in (1, 2) or min_modules not in (0, 1):
            raise ValueError(f"stem_stride 1 or 2 and min_modules 0 or 1, got {stem_stride}, {min_modules}")
        if any(len(ids) < min_modules for ids in module_ids):
            raise ValueError(f"every stage holds at least {min_modules} module(s), got {list(module_ids)}")
        self.widths = tuple(widths)
        self.modules_per_stage, self.stem_stride, self.min_modules = modules_per_stage, stem_stride, min_modules
        self.stem = _conv_bn(in_channels, widths[0], stem_stride)
        self.stages = nn.ModuleList(
            Stage(widths[max(i - 1, 0)], w, 1 if i == 0 else 2, module_ids[i]) for i, w in enumerate(widths))
        self.head = nn.Linear(widths[-1], num_classes)

    @property
    def spec(self) -> SubModelSpec:
        return SubModelSpec(tuple(tuple(s.module_ids) for s in self.stages))

    def config(self) -> dict:
        """Constructor arguments that rebuild this structure (saved with checkpoints)."""
        return {"widths": list(self.widths), "modules_per_stage": self.modules_per_stage,
                "module_ids": [list(s.module_ids) for s in self.stages], "stem_stride": self.stem_stride,
                "min_modules": self.min_modules, **self._input_config()}

    def set_active(self, spec: SubModelSpec | None) -> None:
        """Run only ``spec``'s modules (training with random subsets); None runs all."""
        for stage, ids in zip(self.stages, spec.stages if spec else [None] * len(self.stages)):
            stage.active = None if ids is None else [stage.module_ids.index(m) for m in ids]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("small_cnn")
class SmallCNN(_SizedModel):
    """A fixed small edge model trained on its own: the baseline a composed sub-model must beat at the same
    budget. ``stem_stride`` 2 halves the resolution at once (the tiny budget)."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64), num_classes: int = 10, in_channels: int = 1,
                 input_size: Sequence[int] = (28, 28), stem_stride: int = 1) -> None:
        super().__init__()
        self._set_input(in_channels, input_size, num_classes)
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride 1 or 2, got {stem_stride}")
        layers, cin = [], in_channels
        for i, w in enumerate(widths):
            layers += [_conv_bn(cin, w, stem_stride if i == 0 else 2), _conv_bn(w, w, 1)]
            cin = w
        self.features_ = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)
        self.widths, self.stem_stride = tuple(widths), stem_stride

    def config(self) -> dict:
        return {"widths": list(self.widths), "stem_stride": self.stem_stride, **self._input_config()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features_(x), 1), 1))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> int:
    """Multiply-accumulates of one forward pass, counted on the real layers with hooks (on the model's own
    input shape unless one is given)."""
    input_shape = input_shape or model.input_shape
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal total
        total += out.numel() // out.shape[0] * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, _inp, out):
        nonlocal total
        total += m.in_features * m.out_features

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(input_shape))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return total


def with_shared_parts(model: ModularNet, spec: SubModelSpec) -> ModularNet:
    """A model of structure ``spec`` whose stem, transitions and head (the parts every composition shares) are
    copied from ``model``; its modules are still to be filled."""
    new = ModularNet(**{**model.config(), "module_ids": [list(s) for s in spec.stages]})
    new.stem.load_state_dict(model.stem.state_dict())
    new.head.load_state_dict(model.head.state_dict())
    for new_stage, old_stage in zip(new.stages, model.stages):
        new_stage.transition.load_state_dict(old_stage.transition.state_dict())
    return new


def build_submodel(cloud: ModularNet, spec: SubModelSpec) -> ModularNet:
    """A standalone copy of ``cloud`` holding only ``spec``'s modules, weights copied."""
    check_spec(cloud, spec)
    sub = with_shared_parts(cloud, spec)
    for sub_stage, cloud_stage in zip(sub.stages, cloud.stages):
        for block, mid in zip(sub_stage.blocks, sub_stage.module_ids):
            block.load_state_dict(cloud_stage.blocks[cloud_stage.module_ids.index(mid)].state_dict())
    return sub.eval()


def check_spec(cloud: ModularNet, spec: SubModelSpec) -> None:
    if len(spec.stages) != len(cloud.stages):
        raise SpecError(f"spec has {len(spec.stages)} stages, the model {len(cloud.stages)}")
    for i, (ids, stage) in enumerate(zip(spec.stages, cloud.stages)):
        if len(ids) < cloud.min_modules or not set(ids) <= set(stage.module_ids):
            raise SpecError(f"stage {i}: modules {list(ids)} not a subset of {stage.module_ids} with at least "
                            f"{cloud.min_modules} module(s)")


def module_key(stage: int, module_id: int) -> str:
    return f"stages.{stage}.module{module_id}"


def module_names(model: ModularNet) -> dict[str, str]:
    """The model's own state-dict name of every module tensor, keyed by *cloud* module id
    ("stages.1.module3.body.0.weight" -> "stages.1.blocks.0.body.0.weight"): the one place that maps blocks to
    cloud module ids."""
    return {f"{module_key(s, mid)}.{name}": f"stages.{s}.blocks.{i}.{name}"
            for s, stage in enumerate(model.stages)
            for i, (block, mid) in enumerate(zip(stage.blocks, stage.module_ids)) for name in block.state_dict()}


def module_tensors(model: ModularNet) -> dict[str, torch.Tensor]:
    """The live module tensors of a cloud model or sub-model, keyed by cloud module id."""
    state = model.state_dict()
    return {key: state[name] for key, name in module_names(model).items()}


def submodel_module_state(sub: ModularNet) -> dict[str, torch.Tensor]:
    """A copy of the sub-model's module weights keyed by cloud module ids."""
    return {k: v.detach().clone() for k, v in module_tensors(sub).items()}


def load_module_state(model: ModularNet, state: dict[str, torch.Tensor]) -> list[str]:
    """Load module weights keyed by cloud module ids into ``model`` (cloud or sub-model); all or nothing.

    Returns the module keys that changed, so integration can report exactly what it touched.
    """
    targets = module_tensors(model)
    unknown = sorted(set(state) - set(targets))
    if unknown:
        raise SpecError(f"module state names unknown to this model: {unknown[:5]}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(targets[key].shape):
            raise SpecError(f"{key}: shape {tuple(value.shape)} != {tuple(targets[key].shape)}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise SpecError(f"{key}: NaN or Inf")
    with torch.no_grad():
        for key, value in state.items():
            targets[key].copy_(value)
    return sorted({k.rsplit(".body.", 1)[0] for k in state})


@lru_cache(maxsize=8)
def _module_costs(config_json: str) -> tuple[int, int, list[tuple[int, int]]]:
    """(base params, base MACs, per-stage (params, MACs) of one module): sub-model costs add up exactly."""
    config = {k: v for k, v in json.loads(config_json).items() if k not in ("module_ids", "modules_per_stage")}
    stages = len(config["widths"])
    one = ModularNet(**config, modules_per_stage=1, module_ids=[[0]] * stages)
    p1, m1 = count_params(one), count_macs(one)
    per_stage = []
    for s in range(stages):
        ids = [[0] for _ in range(stages)]
        ids[s] = [0, 1]
        two = ModularNet(**config, modules_per_stage=2, module_ids=ids)
        per_stage.append((count_params(two) - p1, count_macs(two) - m1))
    return p1 - sum(p for p, _ in per_stage), m1 - sum(m for _, m in per_stage), per_stage


def _costs(cloud: ModularNet) -> tuple[int, int, list[tuple[int, int]]]:
    return _module_costs(json.dumps(cloud.config(), sort_keys=True))


def spec_cost(cloud: ModularNet, spec: SubModelSpec) -> tuple[int, int]:
    """(params, MACs) of a sub-model without building it."""
    base_p, base_m, per_stage = _costs(cloud)
    return (base_p + sum(len(ids) * per_stage[s][0] for s, ids in enumerate(spec.stages)),
            base_m + sum(len(ids) * per_stage[s][1] for s, ids in enumerate(spec.stages)))


def measure_latency_ms(model: nn.Module, runs: int = 20) -> float:
    """Median single-frame latency of a torch model on this machine (for latency budgets)."""
    import time

    x = torch.zeros(model.input_shape)
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def derive_spec(cloud: ModularNet, budget: Budget,
                module_scores: Sequence[Sequence[float]] | None = None) -> SubModelSpec:
    """The sub-model that fits ``budget`` with the highest total module score.

    With no scores (no knowledge of the environment yet) modules are spread over the stages (each further
    module of a stage is worth less) and the most valuable sub-model that fits wins, ties towards low module
    ids. Latency budgets scale the full model's measured latency by MACs.
    """
    base_p, base_m, per_stage = _costs(cloud)
    ids = [stage.module_ids for stage in cloud.stages]
    if module_scores is None:  # each further module of a stage is worth less: spread modules over the stages
        module_scores = [[1.0 / (1 + j) for j in range(len(s))] for s in ids]
    ms_per_mac = 0.0
    if budget.max_latency_ms:
        ms_per_mac = measure_latency_ms(cloud) / max(count_macs(cloud), 1)
    best, best_key = None, None
    for counts in itertools.product(*[range(cloud.min_modules, len(s) + 1) for s in ids]):
        params = base_p + sum(k * per_stage[s][0] for s, k in enumerate(counts))
        macs = base_m + sum(k * per_stage[s][1] for s, k in enumerate(counts))
        if (budget.max_params and params > budget.max_params) or (budget.max_macs and macs > budget.max_macs) \
                or (budget.max_latency_ms and macs * ms_per_mac > budget.max_latency_ms):
            continue
        chosen = []
        score = 0.0
        for s, k in enumerate(counts):
            order = np.argsort(-np.asarray(module_scores[s], dtype=float), kind="stable")[:k]
            chosen.append(tuple(sorted(ids[s][j] for j in order)))
            score += float(np.sum(np.asarray(module_scores[s])[order]))
        key = (score, macs)
        if best_key is None or key > best_key:
            best, best_key = SubModelSpec(tuple(chosen)), key
    if best is None:
        smallest = (base_p + cloud.min_modules * sum(p for p, _ in per_stage),
                    base_m + cloud.min_modules * sum(m for _, m in per_stage))
        raise BudgetError(f"no sub-model fits {budget}: the smallest one needs {smallest[0]} params and "
                          f"{smallest[1]} MACs per frame")
    return best
