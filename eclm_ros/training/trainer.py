"""Offline training of the cloud model and the edge models: the defaults shipped with the package, and a cache.

The full defaults are trained once and shipped (``eclm_ros/weights``, ``--ship``) so a fresh install serves at
once; ``eclm-ros train --force`` reproduces them into the cache and prints how close it came. Quick models
(tests, CI) and whatever a user trains live in the cache.

The cloud ModularNet trains by the sandwich rule: on every batch the full model, a random module subset and
the smallest sub-model (its trunk), the sub-models distilled in place from the full model (as in slimmable /
once-for-all networks), so every sub-model, down to a tiny robot's, works without retraining. Every recipe
adds generic augmentation (flips, affine, autocontrast, posterize, solarize, blended: AugMix's op set), never
one of the 15 test corruptions: robustness must come from adaptation, as in the ImageNet-C protocol. On the
harsh world it is worth +3.5 points after adaptation (harsh severity 5, 300 frames per corruption, the small
edge with EATA: 66.5 % for the plain-trained default of before, 70.0 % for the augmented one), more than
capacity: the whole cloud model (13x the tiny edge's MACs) adapts only 0.4 points above its small sub-model.
Checkpoints carry a manifest (data, seed, command, epochs, accuracy, cost, code hash) so a stale cache is
retrained and every number can be traced to how it was made. ``--data DIR`` trains the same recipes on a
user's image folder (``sim.data.image_folder``); those models live in the cache under the folder's contents
hash, beside the defaults.
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..core import checkpoint
from ..core.compose import calibrated_submodel
from ..core.description import ModelDescription
from ..core.models import ModularNet, SubModelSpec, count_macs, count_params, create_model, derive_spec
from ..core.norm import recalibrate
from ..core.preprocess import Preprocessor
from ..core.strategies import default_budget
from ..sim.data import DataFormatError, DataNotFoundError, Dataset, fashion_mnist, image_folder, parse_size


@dataclass(frozen=True)
class Recipe:
    arch: str  # a registered architecture (models.create_model)
    config: dict
    epochs: int
    train_samples: int  # 0 = the whole train split
    lr: float = 0.2
    batch_size: int = 256
    augment: bool = True  # generic augmentation (see _augment); False = the standard recipe, images as they are
    min_steps: int = 0  # at least this many batches: a small data set gets more epochs, not a useless model


RECIPES = {
    "full": {
        "cloud": Recipe("modular_net", {"widths": [16, 48, 96, 192], "modules_per_stage": 4, "stem_stride": 2,
                                        "min_modules": 0}, epochs=7, train_samples=0, min_steps=1000),
        "edge_small": Recipe("small_cnn", {"widths": [22, 44, 88]}, epochs=4, train_samples=0, min_steps=800),
        "edge_tiny": Recipe("small_cnn", {"widths": [18, 36, 72], "stem_stride": 2}, epochs=5, train_samples=0,
                            min_steps=800),
    },
    "quick": {
        "cloud": Recipe("modular_net", {"widths": [8, 16, 32, 64], "modules_per_stage": 3, "stem_stride": 2,
                                        "min_modules": 0}, epochs=2, train_samples=6000, min_steps=40),
        "edge_small": Recipe("small_cnn", {"widths": [10, 20, 40]}, epochs=2, train_samples=6000, min_steps=40),
        "edge_tiny": Recipe("small_cnn", {"widths": [6, 12, 24], "stem_stride": 2}, epochs=2, train_samples=6000,
                            min_steps=40),
    },
}


def code_hash(dataset: Dataset | None = None) -> str:
    """Hash of the data and the code that decide what a checkpoint holds (architecture, preprocessing, training
    loop), so edits elsewhere do not force a retrain but edits here do."""
    from ..core import models, norm, preprocess

    parts = [models.ResidualModule, models.Stage, models.ModularNet, models.SmallCNN, models._conv_bn,
             norm.recalibrate, preprocess.Preprocessor, checkpoint.save, _augment, _random_spec, train_model,
             calibration_views, write_defaults]
    dataset = dataset or fashion_mnist()
    h = hashlib.sha256((dataset.description.to_json() + dataset.key).encode())
    for obj in parts:
        h.update(inspect.getsource(obj).encode())
    return h.hexdigest()[:16]


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Generic augmentation of a normalised batch [N,C,H,W], vectorised (AugMix's op set, no corruptions)."""
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


def _random_spec(model: ModularNet, rng: np.random.Generator, smallest: bool = False) -> SubModelSpec:
    """A random sub-model (``smallest``: one with the fewest modules a stage may keep)."""
    stages = []
    for stage in model.stages:
        k = model.min_modules if smallest else int(rng.integers(model.min_modules, len(stage.module_ids) + 1))
        stages.append(tuple(sorted(rng.choice(stage.module_ids, size=k, replace=False).tolist())))
    return SubModelSpec(tuple(stages))


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, description: ModelDescription | None = None,
             batch_size: int = 1000) -> float:
    """Accuracy on uint8 views (Fashion-MNIST's description unless another is given)."""
    to_tensor = Preprocessor(description or fashion_mnist().description).tensor
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        pred = model(to_tensor(images[i:i + batch_size])).argmax(1).numpy()
        correct += int((pred == labels[i:i + batch_size]).sum())
    return correct / len(images)


def calibration_views(dataset: Dataset, quick: bool = False, count: int = 2048) -> np.ndarray:
    """Clean train-split views for re-estimating a sub-model's BatchNorm statistics (fixed, seeded); the cloud
    checkpoint carries them, so the cloud never needs the data set."""
    images, _ = dataset.split("train")
    idx = np.random.default_rng(1234).choice(len(images), size=min(count // (4 if quick else 1), len(images)),
                                             replace=False)
    return np.ascontiguousarray(images[np.sort(idx)])


def train_model(recipe: Recipe, dataset: Dataset, seed: int, progress: bool = True, desc: str = "") -> nn.Module:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    images, labels = dataset.split("train")
    if recipe.train_samples and recipe.train_samples < len(images):
        keep = np.sort(rng.choice(len(images), recipe.train_samples, replace=False))
        images, labels = images[keep], labels[keep]
    description = dataset.description
    preprocess = Preprocessor(description)
    x_all, y_all = preprocess.tensor(images), torch.from_numpy(labels.copy())
    model = create_model(recipe.arch, **recipe.config, num_classes=description.num_classes,
                         in_channels=description.channels, input_size=description.input_size)
    model = model.to(memory_format=torch.channels_last)
    batch_size = min(recipe.batch_size, len(x_all))
    batches = len(x_all) // batch_size
    epochs = max(recipe.epochs, math.ceil(recipe.min_steps / batches))
    steps = epochs * batches
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps, pct_start=0.25)
    modular = isinstance(model, ModularNet)
    bar = tqdm(total=steps, desc=desc, disable=not progress, unit="batch", dynamic_ncols=True)
    for _ in range(epochs):
        order = torch.randperm(len(x_all), generator=gen)
        model.train()
        for i in range(batches):
            idx = order[i * batch_size:(i + 1) * batch_size]
            x = (_augment(x_all[idx], gen) if recipe.augment else x_all[idx]).contiguous(
                memory_format=torch.channels_last)
            y = y_all[idx]
            if modular:  # the sandwich rule: the full model, a random sub-model and the smallest one
                model.set_active(None)
                full_logits = model(x)
                loss = F.cross_entropy(full_logits, y)
                soft = F.softmax(full_logits.detach(), 1)
                for smallest in (False, True):
                    model.set_active(_random_spec(model, rng, smallest))
                    sub_logits = model(x)
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
        recalibrate(model, preprocess.tensor(calibration_views(dataset, quick=recipe.train_samples > 0)))
    return model.eval()


def data_cache(dataset: Dataset | None, cache_dir: Path | str | None = None) -> Path | str | None:
    """The cache of models trained on ``dataset``: a user folder's under its contents hash, so two data sets
    never share a model; the defaults' data (None) keeps ``cache_dir`` (None = shipped, else the cache)."""
    return checkpoint.cache_root(cache_dir) / "data" / dataset.key if dataset and dataset.key else cache_dir


def _manifest_path(name: str, quick: bool, cache_dir: Path | str | None) -> Path:
    return checkpoint.cache_path(name, quick, cache_dir).with_suffix(".json")


def _manifest_ok(path: Path, recipe: Recipe | None, dataset: Dataset) -> bool:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("code_hash") == code_hash(dataset) and (
        recipe is None or manifest.get("recipe") == recipe.__dict__)


def _write(name: str, dataset: Dataset, quick: bool, cache_dir, model: nn.Module, manifest: dict,
           calibration: np.ndarray | None = None) -> dict:
    test_x, test_y = dataset.split("test")
    manifest = {**manifest, "name": name, "code_hash": code_hash(dataset), "torch": str(torch.__version__),
                "clean_test_accuracy": round(accuracy(model, test_x, test_y, dataset.description), 4),
                "params": count_params(model), "macs": count_macs(model)}
    checkpoint.save(checkpoint.cache_path(name, quick, cache_dir), model, dataset.description, calibration, manifest)
    _manifest_path(name, quick, cache_dir).write_text(json.dumps(manifest, indent=2))
    return manifest


def write_defaults(cloud: ModularNet, dataset: Dataset, quick: bool, cache_dir, manifest: dict) -> dict:
    """The default edge model: the sub-model the default budget affords, its statistics calibrated."""
    calibration = calibration_views(dataset, quick)
    spec = derive_spec(cloud, default_budget(cloud))
    edge = calibrated_submodel(cloud, spec, Preprocessor(dataset.description).tensor(calibration))
    return _write("edge", dataset, quick, cache_dir, edge, {**manifest, "derived_from": "cloud", "recipe": None,
                                                           "budget_macs": default_budget(cloud).max_macs})


def train_all(quick: bool = False, cache_dir: Path | str | None = None, force: bool = False,
              progress: bool = True, seed: int = 0, dataset: Dataset | None = None) -> dict[str, dict]:
    """Train whatever is missing or stale in the cache; returns each model's manifest."""
    dataset = dataset or fashion_mnist()
    cache_dir = data_cache(dataset, cache_dir)
    manifests, retrained = {}, set()
    for name, recipe in RECIPES["quick" if quick else "full"].items():
        path = _manifest_path(name, quick, cache_dir)
        if not force and checkpoint.cache_path(name, quick, cache_dir).exists() and _manifest_ok(path, recipe,
                                                                                                  dataset):
            manifests[name] = json.loads(path.read_text())
            continue
        t0 = time.time()
        model = train_model(recipe, dataset, seed, progress, desc=f"train {name}{' (quick)' if quick else ''}")
        manifest = {
            "recipe": recipe.__dict__, "seed": seed,
            "data": f"{dataset.source}, " + ("generic augmentation only" if recipe.augment else "no augmentation"),
            "command": " ".join(["eclm-ros", *sys.argv[1:]]) if sys.argv else "",
            "train_seconds": round(time.time() - t0, 1)}
        manifests[name] = _write(name, dataset, quick, cache_dir, model, manifest,
                                 calibration_views(dataset, quick) if name == "cloud" else None)
        retrained.add(name)
    edge_path = _manifest_path("edge", quick, cache_dir)  # derived from the cloud model: redone with it
    if "cloud" in retrained or not checkpoint.cache_path("edge", quick, cache_dir).exists() \
            or not _manifest_ok(edge_path, None, dataset):
        cloud = checkpoint.load(checkpoint.cache_path("cloud", quick, cache_dir)).model
        manifests["edge"] = write_defaults(cloud, dataset, quick, cache_dir, {k: manifests["cloud"][k] for k in (
            "seed", "data", "command")})
    else:
        manifests["edge"] = json.loads(edge_path.read_text())
    return manifests


DEFAULTS = ("cloud", "edge", "edge_small", "edge_tiny")
SHIPPED_WEIGHTS = "int8"


def ensure(quick: bool = False, cache_dir: Path | str | None = None, dataset: Dataset | None = None) -> None:
    """Make the default models a command will use available: the shipped ones as they are, a cache's trained
    when missing or stale (for commands; nodes never train)."""
    if not all(checkpoint.is_shipped(checkpoint.default_path(n, quick, data_cache(dataset, cache_dir)))
               for n in DEFAULTS):
        train_all(quick=quick, cache_dir=cache_dir, progress=True, dataset=dataset)


def load(name: str, quick: bool = False, cache_dir: Path | str | None = None,
         dataset: Dataset | None = None) -> checkpoint.Checkpoint:
    """A default model's checkpoint, trained on ``dataset`` (Fashion-MNIST unless given; see ``ensure``)."""
    ensure(quick, cache_dir, dataset)
    return checkpoint.load(checkpoint.default_path(name, quick, data_cache(dataset, cache_dir)))


def data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data DIR`` and ``--input-size``, the same for every command that trains or streams a data set."""
    parser.add_argument("--data", type=Path, default=None, help="your image folder (DIR/train/<class>/*, "
                        "DIR/test/<class>/*) instead of Fashion-MNIST")
    parser.add_argument("--input-size", default="", help="with --data: resize every image to H,W (needed when "
                        "the images differ in size)")


def dataset_from_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Dataset | None:
    """The data set ``--data`` names (None = Fashion-MNIST); a bad folder ends the command with its message."""
    if args.data is None:
        if args.input_size:
            parser.error("--input-size applies to --data DIR")
        return None
    try:
        return image_folder(args.data, parse_size(args.input_size) if args.input_size else None)
    except (DataNotFoundError, DataFormatError, ValueError) as exc:
        parser.error(str(exc))


def ship(manifests: dict[str, dict], cache_dir: Path | str | None = None) -> Path:
    """Write the full defaults from the cache into the package, their weights as int8 (``checkpoint.WEIGHTS``: a
    quarter of the bytes; they load as float32), with their manifest, clean accuracy as shipped and digests
    (maintainers: the files a fresh install serves with)."""
    checkpoint.SHIPPED_DIR.mkdir(parents=True, exist_ok=True)
    test_x, test_y = fashion_mnist().split("test")
    shipped = {}
    for name in DEFAULTS:
        target = checkpoint.SHIPPED_DIR / f"{name}.pt"
        trained = checkpoint.load(checkpoint.cache_path(name, False, cache_dir))
        as_shipped = checkpoint.as_stored(trained.model, SHIPPED_WEIGHTS)
        manifest = {**manifests[name], "weights": SHIPPED_WEIGHTS,
                    "clean_test_accuracy": round(accuracy(as_shipped, test_x, test_y, trained.description), 4)}
        checkpoint.save(target, trained.model, trained.description, trained.calibration, manifest, SHIPPED_WEIGHTS)
        shipped[name] = {**manifest, "file": target.name, "bytes": target.stat().st_size,
                         "sha256": checkpoint.file_digest(target)}
    checkpoint.SHIPPED_MANIFEST.write_text(json.dumps(shipped, indent=2) + "\n")
    return checkpoint.SHIPPED_DIR


def _compare_with_shipped(manifests: dict[str, dict]) -> None:
    """After a retrain: how close the reproduction came to the shipped defaults (digests differ across CPUs and
    torch builds; clean accuracy should agree within a few tenths of a point)."""
    try:
        shipped = checkpoint.shipped_manifest()
    except checkpoint.ModelFileError:
        return
    print(f"{'vs shipped':<12} {'shipped acc':>11} {'this acc':>9} {'same code':>9}")
    for name, m in manifests.items():
        if name in shipped:
            print(f"{name:<12} {shipped[name]['clean_test_accuracy']:>11.4f} {m['clean_test_accuracy']:>9.4f} "
                  f"{'yes' if shipped[name]['code_hash'] == m['code_hash'] else 'no':>9}")


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="eclm-ros train", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models in about a minute (tests, CI)")
    parser.add_argument("--cache", type=Path, default=None, help="checkpoint cache (default $ECLM_ROS_CACHE "
                                                                  "or ~/.cache/eclm_ros)")
    data_arguments(parser)
    parser.add_argument("--force", action="store_true", help="retrain even when the cache is up to date")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    parser.add_argument("--ship", action="store_true", help="maintainers: copy the full models into the package "
                        "(eclm_ros/weights) with their manifest, as the defaults a fresh install serves with")
    args = parser.parse_args(argv)
    if args.ship and (args.quick or args.data):
        parser.error("--ship ships the full Fashion-MNIST models; drop --quick and --data")
    dataset = dataset_from_arguments(parser, args)
    if args.threads:
        torch.set_num_threads(args.threads)
    manifests = train_all(quick=args.quick, cache_dir=args.cache, force=args.force, dataset=dataset)
    print(f"{'model':<12} {'params':>9} {'MACs':>11} {'clean acc':>9} {'train s':>8}")
    for name, m in manifests.items():
        print(f"{name:<12} {m['params']:>9} {m['macs']:>11} {m['clean_test_accuracy']:>9.4f} "
              f"{m.get('train_seconds', '-'):>8}")
    where = checkpoint.cache_path("cloud", args.quick, data_cache(dataset, args.cache)).parent
    print(f"written to {where}")
    if dataset is not None:
        print(f"serve them with the nodes' model_path: {where / 'edge.pt'} (edge), {where / 'cloud.pt'} (cloud); "
              f"bench them with: eclm-ros bench --data {args.data}" + (" --quick" if args.quick else ""))
    elif not args.quick:
        _compare_with_shipped(manifests)
    if args.ship:
        print(f"shipped to {ship(manifests, args.cache)}")
    elif not args.quick and dataset is None:
        print(f"the commands and nodes use the shipped defaults unless told otherwise: pass --cache "
              f"{where.parent} (or set ECLM_ROS_CACHE={where.parent}, or a node's model_path)")
    return 0
