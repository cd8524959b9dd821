"""Offline training of the cloud model and the edge models, with a checkpoint cache.

The cloud ModularNet trains with a random module subset beside the full model on every batch (in-place
distillation from the full model, as in slimmable / once-for-all networks), so every sub-model works without
retraining. A recipe may add generic augmentation (shifts, flips, affine, autocontrast, posterize, solarize:
AugMix's op set), never one of the 15 test corruptions: robustness must come from adaptation, as in the
ImageNet-C protocol. The full recipes train without it: measured on the benchmark stream, it cost 1-1.7 points
of clean accuracy and bought no robustness (on the same severity-3 frames, a plain 4-epoch small CNN: source
67.8 / Tent 85.0 %; the augmented 8-epoch edge sub-model: 63.6 / 84.0 %), and it took the training set past
its 25-minute budget.
Checkpoints carry a manifest (data, seed, command, epochs, accuracy, cost, code hash) so a stale cache is
retrained and every number can be traced to how it was made.
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .data import load_fashion_mnist
from .models import (Budget, ModularNet, SubModelSpec, build_submodel, count_macs, count_params,
                     derive_spec, make_model, recalibrate_bn, spec_cost)
from .preprocess import batch_to_tensor

EDGE_BUDGET_FRACTION = 0.45  # the default edge device affords this share of the cloud model's MACs


@dataclass(frozen=True)
class Recipe:
    kind: str
    config: dict
    epochs: int
    train_samples: int  # 0 = the whole train split
    lr: float = 0.2
    batch_size: int = 256
    augment: bool = True  # generic augmentation (see _augment); False = the standard recipe, images as they are


RECIPES = {
    "full": {
        "cloud": Recipe("modular", {"widths": [16, 32, 64], "modules_per_stage": 3}, epochs=5, train_samples=0,
                        augment=False),
        "edge_small": Recipe("small_cnn", {"widths": [22, 44, 88]}, epochs=4, train_samples=0, augment=False),
    },
    "quick": {
        "cloud": Recipe("modular", {"widths": [8, 16, 32], "modules_per_stage": 3}, epochs=2, train_samples=6000),
        "edge_small": Recipe("small_cnn", {"widths": [10, 20, 40]}, epochs=2, train_samples=6000),
    },
}


def cache_root(cache_dir: Path | str | None = None) -> Path:
    return Path(cache_dir or os.environ.get("ECLM_ROS_CACHE", Path.home() / ".cache" / "eclm_ros"))


def code_hash() -> str:
    """Hash of the code that decides what a checkpoint holds (architecture, preprocessing, training loop), so
    edits elsewhere do not force a retrain but edits here do."""
    from . import models, preprocess

    parts = [models.ResidualModule, models.Stage, models.ModularNet, models.SmallCNN, models._conv_bn,
             models.recalibrate_bn, _augment, _random_spec, train_model, calibration_images]
    h = hashlib.sha256(repr((preprocess.MEAN, preprocess.STD, preprocess.SIZE)).encode())
    for obj in parts:
        h.update(inspect.getsource(obj).encode())
    return h.hexdigest()[:16]


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Generic augmentation of a normalised batch [N,1,28,28], vectorised (AugMix's op set, no corruptions)."""
    n = x.shape[0]
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    unit = (x - lo) / (hi - lo).clamp_min(1e-6)  # 0..1 per image
    flip = torch.rand(n, generator=gen) < 0.5
    unit = torch.where(flip[:, None, None, None], unit.flip(3), unit)
    # random affine: rotation +-15 deg, shear +-0.15, scale 0.9..1.1, shift +-3 px
    ang = (torch.rand(n, generator=gen) - 0.5) * np.deg2rad(30)
    shear = (torch.rand(n, generator=gen) - 0.5) * 0.3
    scale = 0.9 + 0.2 * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * (6 / 14)
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin + shear, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(unit.shape), align_corners=False)
    unit = F.grid_sample(unit, grid, padding_mode="zeros", align_corners=False)
    op = torch.randint(0, 4, (n,), generator=gen)
    posterized = torch.floor(unit * 8) / 8  # 3 bits
    solarized = torch.where(unit > 0.7, 1 - unit, unit)
    u_lo = unit.amin(dim=(1, 2, 3), keepdim=True)
    u_hi = unit.amax(dim=(1, 2, 3), keepdim=True)
    autocontrast = (unit - u_lo) / (u_hi - u_lo).clamp_min(1e-6)
    choices = torch.stack([unit, posterized, solarized, autocontrast])
    augmented = choices[op, torch.arange(n)]
    mix = torch.rand(n, 1, 1, 1, generator=gen) * 0.5 + 0.5  # AugMix-style blend with the un-op'd image
    unit = mix * augmented + (1 - mix) * unit
    return unit * (hi - lo) + lo


def _random_spec(model: ModularNet, rng: np.random.Generator) -> SubModelSpec:
    stages = []
    for stage in model.stages:
        k = int(rng.integers(1, len(stage.module_ids) + 1))
        stages.append(tuple(sorted(rng.choice(stage.module_ids, size=k, replace=False).tolist())))
    return SubModelSpec(tuple(stages))


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        pred = model(batch_to_tensor(images[i:i + batch_size])).argmax(1).numpy()
        correct += int((pred == labels[i:i + batch_size]).sum())
    return correct / len(images)


def calibration_images(quick: bool = False, count: int = 2048) -> torch.Tensor:
    """Clean train-split images for re-estimating BatchNorm statistics of a sub-model (fixed, seeded)."""
    images, _ = load_fashion_mnist("train")
    idx = np.random.default_rng(1234).choice(len(images), size=count // (4 if quick else 1), replace=False)
    return batch_to_tensor(images[np.sort(idx)])


def train_model(recipe: Recipe, seed: int, progress: bool = True, desc: str = "") -> nn.Module:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    images, labels = load_fashion_mnist("train")
    if recipe.train_samples:
        keep = np.sort(rng.choice(len(images), recipe.train_samples, replace=False))
        images, labels = images[keep], labels[keep]
    x_all, y_all = batch_to_tensor(images), torch.from_numpy(labels.copy())
    model = make_model(recipe.kind, recipe.config).to(memory_format=torch.channels_last)
    steps = recipe.epochs * (len(x_all) // recipe.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps, pct_start=0.25)
    modular = isinstance(model, ModularNet)
    bar = tqdm(total=steps, desc=desc, disable=not progress, unit="batch", dynamic_ncols=True)
    for _ in range(recipe.epochs):
        order = torch.randperm(len(x_all), generator=gen)
        model.train()
        for i in range(len(x_all) // recipe.batch_size):
            idx = order[i * recipe.batch_size:(i + 1) * recipe.batch_size]
            x = (_augment(x_all[idx], gen) if recipe.augment else x_all[idx]).contiguous(
                memory_format=torch.channels_last)
            y = y_all[idx]
            if modular:
                model.set_active(None)
                full_logits = model(x)
                loss = F.cross_entropy(full_logits, y)
                model.set_active(_random_spec(model, rng))
                sub_logits = model(x)
                soft = F.softmax(full_logits.detach(), 1)
                loss = loss + 0.5 * F.cross_entropy(sub_logits, y) + 0.5 * F.cross_entropy(sub_logits, soft)
                model.set_active(None)
            else:
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    model = model.to(memory_format=torch.contiguous_format)
    if modular:
        recalibrate_bn(model, calibration_images(quick=recipe.train_samples > 0))
    return model.eval()


def _paths(name: str, quick: bool, cache_dir: Path | str | None) -> tuple[Path, Path]:
    folder = cache_root(cache_dir) / ("quick" if quick else "full")
    return folder / f"{name}.pt", folder / f"{name}.json"


def _manifest_ok(path: Path, recipe: Recipe) -> bool:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("code_hash") == code_hash() and manifest.get("recipe") == recipe.__dict__


def train_all(quick: bool = False, cache_dir: Path | str | None = None, force: bool = False,
              progress: bool = True, seed: int = 0) -> dict[str, dict]:
    """Train whatever is missing or stale in the cache; returns each model's manifest."""
    manifests = {}
    test_x, test_y = load_fashion_mnist("test")
    for name, recipe in RECIPES["quick" if quick else "full"].items():
        ckpt, mpath = _paths(name, quick, cache_dir)
        if not force and ckpt.exists() and _manifest_ok(mpath, recipe):
            manifests[name] = json.loads(mpath.read_text())
            continue
        t0 = time.time()
        model = train_model(recipe, seed, progress, desc=f"train {name}{' (quick)' if quick else ''}")
        manifest = {
            "name": name, "recipe": recipe.__dict__, "seed": seed, "code_hash": code_hash(),
            "data": "Fashion-MNIST train split (Debian dataset-fashion-mnist), "
                    + ("generic augmentation only" if recipe.augment else "no augmentation"),
            "command": " ".join(["eclm-ros", *sys.argv[1:]]) if sys.argv else "", "train_seconds": round(
                time.time() - t0, 1), "clean_test_accuracy": round(accuracy(model, test_x, test_y), 4),
            "params": count_params(model), "macs": count_macs(model), "torch": torch.__version__,
        }
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"kind": recipe.kind, "config": model.config(), "state_dict": model.state_dict()}, tmp)
        tmp.replace(ckpt)
        mpath.write_text(json.dumps(manifest, indent=2))
        manifests[name] = manifest
    return manifests


def load_checkpoint(name: str, quick: bool = False, cache_dir: Path | str | None = None,
                    train_if_missing: bool = True) -> nn.Module:
    """A trained model from the cache, in eval mode; trains the cache first if it is missing or stale."""
    recipe = RECIPES["quick" if quick else "full"].get(name)
    if recipe is None:
        raise KeyError(f"unknown model {name!r} (known: {', '.join(RECIPES['full'])})")
    ckpt, mpath = _paths(name, quick, cache_dir)
    if not (ckpt.exists() and _manifest_ok(mpath, recipe)):
        if not train_if_missing:
            raise FileNotFoundError(f"no up-to-date checkpoint {ckpt}: run 'eclm-ros train{' --quick' * quick}'")
        train_all(quick=quick, cache_dir=cache_dir)
    blob = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = make_model(blob["kind"], blob["config"])
    model.load_state_dict(blob["state_dict"])
    return model.eval()


def edge_budget(cloud: ModularNet, fraction: float = EDGE_BUDGET_FRACTION) -> Budget:
    """The default edge device's budget: a share of the cloud model's MACs per frame."""
    return Budget(max_macs=int(spec_cost(cloud, cloud.spec)[1] * fraction))


def edge_submodel(cloud: ModularNet, spec: SubModelSpec, quick: bool = False) -> ModularNet:
    """A sub-model ready to serve: modules copied from the cloud model, BatchNorm statistics re-estimated."""
    return recalibrate_bn(build_submodel(cloud, spec), calibration_images(quick))


def load_edge_model(quick: bool = False, cache_dir: Path | str | None = None) -> ModularNet:
    """The default edge model: the sub-model the default edge budget affords, before any adaptation."""
    cloud = load_checkpoint("cloud", quick, cache_dir)
    return edge_submodel(cloud, derive_spec(cloud, edge_budget(cloud)), quick)


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="eclm-ros train", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models in about a minute (tests, CI)")
    parser.add_argument("--cache", type=Path, default=None, help="checkpoint cache (default $ECLM_ROS_CACHE "
                                                                  "or ~/.cache/eclm_ros)")
    parser.add_argument("--force", action="store_true", help="retrain even when the cache is up to date")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    manifests = train_all(quick=args.quick, cache_dir=args.cache, force=args.force)
    cloud = load_checkpoint("cloud", args.quick, args.cache)
    edge = load_edge_model(args.quick, args.cache)
    test_x, test_y = load_fashion_mnist("test")
    print(f"{'model':<12} {'params':>9} {'MACs':>11} {'clean acc':>9} {'train s':>8}")
    for name, m in manifests.items():
        print(f"{name:<12} {m['params']:>9} {m['macs']:>11} {m['clean_test_accuracy']:>9.4f} {m['train_seconds']:>8}")
    print(f"{'edge (sub)':<12} {count_params(edge):>9} {count_macs(edge):>11} "
          f"{accuracy(edge, test_x, test_y):>9.4f}   spec {edge.spec.to_json()} of cloud {cloud.spec.to_json()}")
    return 0
