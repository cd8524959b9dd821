"""ECLM's composition and integration: sub-models chosen per device and per environment, and what edges
learn flowing back into the cloud model module by module.

Modules are scored on the frames an edge recently uploaded: a module scores high when the network using only
it in its stage (the rest of the cloud model intact) agrees with the full cloud model's predictions on those
frames. The best-scoring sub-model that fits the device's budget is its composition; when the environment
changes, so do the scores and the composition.
"""
from __future__ import annotations

import copy
from typing import Mapping

import numpy as np
import torch

from .models import (Budget, ModularNet, SpecError, SubModelSpec, build_submodel, derive_spec, load_module_state,
                     module_key, module_tensors, submodel_module_state, with_shared_parts)
from .norm import affine_state, load_affine, recalibrate, use_batch_stats


@torch.no_grad()
def score_modules(cloud: ModularNet, x: torch.Tensor) -> list[list[float]]:
    """Per stage, per module: mean probability the single-module network gives the full model's class on
    recent model inputs ``x``."""
    model = use_batch_stats(copy.deepcopy(cloud))  # shifted frames: normalise with their own statistics
    model.set_active(None)
    target = model(x).argmax(1)
    scores = []
    for s, stage in enumerate(model.stages):
        row = []
        for mid in stage.module_ids:
            active = [tuple(st.module_ids) for st in model.stages]
            active[s] = (mid,)
            model.set_active(SubModelSpec(tuple(active)))
            probs = model(x).softmax(1)
            row.append(float(probs.gather(1, target[:, None]).mean()))
        scores.append(row)
    model.set_active(None)
    return scores


def compose(cloud: ModularNet, budget: Budget, recent: torch.Tensor | None) -> SubModelSpec:
    """The sub-model for a device's budget and the environment its recent uploads (model inputs) show."""
    scores = score_modules(cloud, recent) if recent is not None and len(recent) > 1 else None
    return derive_spec(cloud, budget, scores)


def calibrated_submodel(cloud: ModularNet, spec: SubModelSpec, calibration: torch.Tensor) -> ModularNet:
    """A sub-model ready to serve: modules copied from the cloud model, BatchNorm statistics re-estimated on
    clean calibration inputs (the checkpoint's)."""
    return recalibrate(build_submodel(cloud, spec), calibration)


def spec_score(scores: list[list[float]], cloud: ModularNet, spec: SubModelSpec) -> float:
    """Mean module score of a composition (how well its modules agree with the full model on recent frames)."""
    values = [scores[s][cloud.stages[s].module_ids.index(m)] for s, ids in enumerate(spec.stages) for m in ids]
    return float(np.mean(values))


def new_modules(current: SubModelSpec, proposed: SubModelSpec) -> list[tuple[int, int]]:
    """(stage, module id) the edge does not hold yet: the only modules a re-composition must send."""
    return [(s, m) for s, (old, new) in enumerate(zip(current.stages, proposed.stages)) for m in new if m not in old]


def integrate(cloud: ModularNet, module_state: Mapping[str, torch.Tensor], weight: float) -> list[str]:
    """Blend an edge's module weights into the cloud's same modules: cloud = (1 - w) cloud + w edge.

    Only the modules named in ``module_state`` change; returns their keys."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"integration weight must be in [0, 1], got {weight}")
    current = module_tensors(cloud)
    blended = {k: ((1 - weight) * current[k] + weight * v.to(current[k].dtype)) if v.is_floating_point() else v
               for k, v in module_state.items() if k in current}
    if len(blended) != len(module_state):
        unknown = sorted(set(module_state) - set(current))
        raise ValueError(f"module state names unknown to the cloud model: {unknown[:5]}")
    return load_module_state(cloud, blended)


def module_weights(model: ModularNet, modules: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """The weights of the given (stage, module id) of a cloud model, keyed by cloud module ids."""
    wanted = {module_key(s, mid) for s, mid in modules}
    return {k: v.detach().clone() for k, v in module_tensors(model).items() if k.split(".body.", 1)[0] in wanted}


def keep_shared_affine(target: ModularNet, learned: Mapping[str, torch.Tensor]) -> None:
    """A re-composed sub-model keeps what the edge learned in the parts every composition shares (stem,
    transitions, head); its modules keep their own affine parameters."""
    shared = {k: v for k, v in learned.items() if k.startswith(("stem.", "head.")) or ".transition." in k}
    load_affine(target, {**affine_state(target), **shared})


MODULE_PREFIX, AFFINE_PREFIX = "module/", "affine/"


def modules_update(target: ModularNet, current: SubModelSpec) -> dict[str, torch.Tensor]:
    """What an edge serving ``current`` needs to become ``target``: the weights of the modules it lacks (keyed
    by cloud module id) and every affine parameter of the new structure. Modules it keeps never travel."""
    missing = {module_key(s, m) for s, m in new_modules(current, target.spec)}
    out = {f"{MODULE_PREFIX}{k}": v for k, v in submodel_module_state(target).items()
           if k.split(".body.", 1)[0] in missing}
    out.update({f"{AFFINE_PREFIX}{k}": v for k, v in affine_state(target).items()})
    return out


def assemble(current: ModularNet, spec: SubModelSpec, update: Mapping[str, torch.Tensor]) -> ModularNet:
    """The edge side of a modules update: a new sub-model of structure ``spec`` built from the modules the edge
    already holds plus the ones in ``update``, with the update's affine parameters. ``current`` is untouched;
    any missing module, unknown name or bad shape raises before anything is served."""
    if len(spec.stages) != len(current.stages):
        raise SpecError(f"spec has {len(spec.stages)} stages, the edge model {len(current.stages)}")
    modules = {k[len(MODULE_PREFIX):]: v for k, v in update.items() if k.startswith(MODULE_PREFIX)}
    affine = {k[len(AFFINE_PREFIX):]: v for k, v in update.items() if k.startswith(AFFINE_PREFIX)}
    if len(modules) + len(affine) != len(update):
        raise SpecError(f"a modules update holds only {MODULE_PREFIX}* and {AFFINE_PREFIX}* tensors")
    new = with_shared_parts(current, spec)
    needed = set(submodel_module_state(new))
    state = {k: v for k, v in submodel_module_state(current).items() if k in needed}
    state.update({k: torch.as_tensor(v) for k, v in modules.items()})
    if set(state) != needed:
        lacking = sorted({k.split(".body.", 1)[0] for k in needed - set(state)})
        raise SpecError(f"modules {lacking[:4]} are neither held by the edge nor in the update")
    load_module_state(new, state)
    load_affine(new, affine)
    return new.eval()
