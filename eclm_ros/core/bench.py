"""`eclm-ros bench`: every adaptation method on the same shifting stream, side by side, in one run.

A method sees only pixels, batch after batch, and must predict each batch with its edge model as it is at
that moment before it learns from it. Edge-cloud traffic is counted from the bytes the codec and the image
encoder actually produce. Results: DIR/results.json, DIR/results.md and DIR/accuracy.png.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from .adapt import bn, eata, source, tent
from .collab import METHODS as COLLAB_METHODS
from .data import load_fashion_mnist
from .evaluation import Evaluator
from .models import count_macs, count_params
from .norm import affine_param_fraction
from .preprocess import batch_to_tensor
from .tensor_codec import pack
from .training import accuracy, calibration_images, edge_budget, load_checkpoint, load_edge_model
from .world import Schedule, WorldStream, default_schedule, parse_schedule

NUM_CLASSES = 10


@dataclass
class Traffic:
    """Edge-cloud traffic of a method, in real encoded bytes."""

    uplink_bytes: int = 0
    downlink_bytes: int = 0
    uploaded_frames: int = 0
    updates: int = 0


class Method(Protocol):
    name: str
    traffic: Traffic

    def step(self, images: np.ndarray) -> np.ndarray:
        """Predict uint8 frames [B,H,W] with the current edge model, then learn from them."""


@dataclass
class BenchContext:
    """What a method may start from: trained models (fresh copies per method) and clean training data."""

    quick: bool
    seed: int
    cache_dir: Path | None = None
    num_classes: int = NUM_CLASSES
    _cache: dict = field(default_factory=dict)

    def _get(self, key: str, make: Callable[[], nn.Module]) -> nn.Module:
        if key not in self._cache:
            self._cache[key] = make()
        return copy.deepcopy(self._cache[key])

    def cloud_model(self) -> nn.Module:
        return self._get("cloud", lambda: load_checkpoint("cloud", self.quick, self.cache_dir))

    def edge_model(self) -> nn.Module:
        """The default edge model: the sub-model of the cloud model the default edge budget affords."""
        return self._get("edge", lambda: load_edge_model(self.quick, self.cache_dir))

    def edge_small(self) -> nn.Module:
        return self._get("edge_small", lambda: load_checkpoint("edge_small", self.quick, self.cache_dir))

    def clean_holdout(self) -> torch.Tensor:
        """Clean TRAIN-split images (never test images), e.g. for EATA's Fisher information."""
        return calibration_images(self.quick)


class TorchMethod:
    """An on-device method: a torch model and one function that predicts (and maybe adapts) a batch."""

    def __init__(self, name: str, model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.name, self.model, self.forward = name, model, forward
        self.traffic = Traffic()

    def step(self, images: np.ndarray) -> np.ndarray:
        return self.forward(batch_to_tensor(images)).argmax(1).numpy()


def _source(name: str, model: nn.Module) -> Method:
    model = source.configure_model(model)
    return TorchMethod(name, model, lambda x: source.forward(x, model))


def _tent(name: str, model: nn.Module) -> Method:
    model = tent.configure_model(model)
    opt = tent.make_optimizer(tent.collect_params(model))
    return TorchMethod(name, model, lambda x: tent.forward_and_adapt(x, model, opt))


def make_source(ctx: BenchContext) -> Method:
    return _source("source", ctx.edge_model())


def make_bn(ctx: BenchContext) -> Method:
    model = bn.configure_model(ctx.edge_model())
    return TorchMethod("bn", model, lambda x: bn.forward(x, model))


def make_tent(ctx: BenchContext) -> Method:
    return _tent("tent", ctx.edge_model())


def make_eata(ctx: BenchContext) -> Method:
    model = eata.configure_model(ctx.edge_model())
    params = eata.collect_params(model)
    state = eata.EataState(ctx.num_classes)
    state.fishers = eata.compute_fisher(model, ctx.clean_holdout())
    opt = tent.make_optimizer(params)
    return TorchMethod("eata", model, lambda x: eata.forward_and_adapt(x, model, opt, state))


def make_source_small(ctx: BenchContext) -> Method:
    return _source("source_small", ctx.edge_small())


def make_tent_small(ctx: BenchContext) -> Method:
    """Tent on the fixed small model trained alone: what the composed sub-model must beat at equal compute."""
    return _tent("tent_small", ctx.edge_small())


METHODS: dict[str, Callable[[BenchContext], Method]] = {
    "source": make_source, "bn": make_bn, "tent": make_tent, "eata": make_eata, "source_small": make_source_small,
    "tent_small": make_tent_small, **COLLAB_METHODS,
}


def run_method(method: Method, batches: list[tuple[np.ndarray, list]], progress=None, task=None) -> dict:
    ev = Evaluator()
    t0 = time.perf_counter()
    frames = 0
    for images, truths in batches:
        pred = method.step(images)
        ev.add_predictions([t.index for t in truths], pred)
        frames += len(images)
        if progress is not None:
            progress.advance(task, len(images))
    wall = time.perf_counter() - t0
    for _, truths in batches:
        for t in truths:
            ev.add_truth(t.index, t.label, t.segment_index, t.environment)
    tr = method.traffic
    return {"accuracy": ev.accuracy(), "per_segment": ev.per_segment(), "frames": frames,
            "upload_ratio": tr.uploaded_frames / max(frames, 1), "uplink_bytes": tr.uplink_bytes,
            "downlink_bytes": tr.downlink_bytes, "updates": tr.updates, "wall_s": round(wall, 2),
            "_evaluator": ev}


def default_streams(severities: list[int], frames_per_segment: int) -> dict[str, Schedule]:
    """The default benchmark: all 15 corruptions in a row, continual, once per severity."""
    return {f"severity_{sev}": default_schedule(sev, frames_per_segment) for sev in severities}


def run_bench(methods: list[str], streams: dict[str, Schedule], batch_size: int, seed: int,
              quick: bool, cache_dir: Path | None = None, console: Console | None = None) -> dict:
    console = console or Console()
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    ctx = BenchContext(quick, seed, cache_dir)
    test_x, test_y = load_fashion_mnist("test")
    cloud, edge, small = ctx.cloud_model(), ctx.edge_model(), ctx.edge_small()
    models = {name: {"params": count_params(m), "macs": count_macs(m),
                     "clean_accuracy": round(accuracy(m, test_x, test_y), 4)}
              for name, m in (("cloud", cloud), ("edge", edge), ("edge_small", small))}
    models["edge"]["spec"] = edge.spec.to_json()
    models["edge"]["affine_fraction"] = round(affine_param_fraction(edge), 4)
    models["edge"]["weights_bytes"] = pack(edge.state_dict(), compress=False).wire_size
    models["edge"]["budget_macs"] = edge_budget(cloud).max_macs
    results = {"config": {"methods": methods, "streams": {k: s.to_string() for k, s in streams.items()},
                          "batch_size": batch_size, "seed": seed, "quick": quick, "continual": True,
                          "torch_threads": torch.get_num_threads()},
               "models": models, "runs": {}}
    evaluators = {}
    for key, schedule in streams.items():
        stream = WorldStream(test_x, test_y, schedule, seed)
        batches = list(stream.batches(batch_size))  # generated once: every method sees identical frames
        run = {}
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=True) as progress:
            for name in methods:
                torch.manual_seed(seed)
                method = METHODS[name](ctx)
                task = progress.add_task(f"{key}: {name}", total=len(stream))
                res = run_method(method, batches, progress, task)
                evaluators[(key, name)] = res.pop("_evaluator")
                run[name] = res
                console.print(f"{key} {name:<16} accuracy {res['accuracy']:.4f}  "
                              f"upload {res['upload_ratio']:.3f}  {res['wall_s']:.1f} s")
        results["runs"][key] = {"schedule": schedule.to_string(), "methods": run}
    results["_evaluators"] = evaluators
    results["goals"] = {key: goals(run["methods"], models) for key, run in results["runs"].items()}
    return results


def goals(run: dict, models: dict) -> list[dict]:
    """Issue 4's goals, checked on one stream's results: each with the measured figure, the target, and the gap."""
    out = []

    def check(name: str, value: float, target: float, ok: bool, unit: str = "") -> None:
        out.append({"goal": name, "value": round(value, 4), "target": round(target, 4), "met": bool(ok),
                    "unit": unit})

    acc = {m: r["accuracy"] for m, r in run.items()}
    if "eclm_ros" in run:
        ours = run["eclm_ros"]
        for ref, margin in (("tent", 0.05), ("source", 0.30)):
            if ref in acc:
                check(f"eclm_ros accuracy >= {ref} + {margin:.2f}", acc["eclm_ros"], acc[ref] + margin,
                      acc["eclm_ros"] >= acc[ref] + margin)
        if "cloud_only" in acc:
            check("eclm_ros accuracy within 0.05 of cloud_only", acc["eclm_ros"], acc["cloud_only"] - 0.05,
                  acc["eclm_ros"] >= acc["cloud_only"] - 0.05)
        check("eclm_ros upload ratio <= 0.25", ours["upload_ratio"], 0.25, ours["upload_ratio"] <= 0.25)
        per_update = ours["downlink_bytes"] / max(ours["updates"], 1) / models["edge"]["weights_bytes"]
        check("eclm_ros downlink per update <= 2 % of the edge weights", per_update, 0.02, per_update <= 0.02)
        if "ecavg" in run:
            ratio = (run["ecavg"]["uplink_bytes"] + run["ecavg"]["downlink_bytes"]) / max(
                ours["uplink_bytes"] + ours["downlink_bytes"], 1)
            check("ecavg traffic / eclm_ros traffic >= 7.12 at >= accuracy", ratio, 7.12,
                  ratio >= 7.12 and acc["eclm_ros"] >= acc["ecavg"], "x")
    if "cema" in acc and "cema_all" in acc:
        check("cema (selected uploads) accuracy >= cema_all (every frame) - 0.005", acc["cema"],
              acc["cema_all"] - 0.005, acc["cema"] >= acc["cema_all"] - 0.005)
    if "tent" in acc and "tent_small" in acc:
        budget = models["edge"]["budget_macs"]
        fair = models["edge"]["macs"] <= budget and models["edge_small"]["macs"] <= budget
        check(f"composed sub-model (tent) > fixed small model (tent_small), both within the edge budget "
              f"({models['edge']['macs'] / 1e6:.1f}M / {models['edge_small']['macs'] / 1e6:.1f}M <= "
              f"{budget / 1e6:.1f}M MACs)", acc["tent"], acc["tent_small"], fair and acc["tent"] > acc["tent_small"])
    return out


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def to_markdown(results: dict) -> str:
    lines = ["# eclm-ros bench", ""]
    cfg = results["config"]
    lines.append(f"Continual streams (no reset between environments), batch {cfg['batch_size']}, seed {cfg['seed']}"
                 f"{', quick models' if cfg['quick'] else ''}:")
    lines += [f"- {key}: `{text}`" for key, text in cfg["streams"].items()]
    lines += ["", "| model | params | MACs/frame | clean test accuracy |", "|---|---:|---:|---:|"]
    for name, m in results["models"].items():
        lines.append(f"| {name} | {m['params']:,} | {m['macs']:,} | {m['clean_accuracy']:.4f} |")
    for key, run in results["runs"].items():
        lines += ["", f"## {key.replace('_', ' ')}", "",
                  "| method | accuracy | upload ratio | uplink | downlink | updates | frames | wall s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in run["methods"].items():
            lines.append(f"| {name} | {r['accuracy']:.4f} | {r['upload_ratio']:.3f} | {_fmt_bytes(r['uplink_bytes'])}"
                         f" | {_fmt_bytes(r['downlink_bytes'])} | {r['updates']} | {r['frames']} | {r['wall_s']} |")
        names = list(run["methods"])
        segs = list(next(iter(run["methods"].values()))["per_segment"])
        lines += ["", "| segment | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for seg in segs:
            lines.append(f"| {seg.split(':', 1)[1]} | " + " | ".join(
                f"{run['methods'][n]['per_segment'][seg]:.3f}" for n in names) + " |")
    for key, checks in results.get("goals", {}).items():
        if checks:
            lines += ["", f"### goals on {key.replace('_', ' ')}", "", "| goal | measured | target | met |",
                      "|---|---:|---:|:---:|"]
            lines += [f"| {g['goal']} | {g['value']}{g['unit']} | {g['target']}{g['unit']} | "
                      f"{'yes' if g['met'] else 'NO'} |" for g in checks]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path, window: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results["config"]["streams"])
    fig, axes = plt.subplots(len(keys), 1, figsize=(12, 3.6 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        starts = None
        for name in results["config"]["methods"]:
            ev = results["_evaluators"][(key, name)]
            x, acc = ev.rolling(window)
            ax.plot(x, acc, label=name, lw=1.2)
            starts = starts or ev.segment_starts()
        for frame, env in starts or []:
            ax.axvline(frame, color="grey", lw=0.5, ls=":")
            ax.text(frame, 1.01, env.split("@")[0].replace("_", " "), rotation=60, fontsize=6, va="bottom")
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"accuracy (rolling {window})")
        ax.set_title(key.replace("_", " "), loc="left", fontsize=9)
        ax.legend(loc="lower left", fontsize=7, ncol=4)
    axes[-1, 0].set_xlabel("frame")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    public = {k: v for k, v in results.items() if not k.startswith("_")}
    (out / "results.json").write_text(json.dumps(public, indent=2))
    (out / "results.md").write_text(to_markdown(results))
    frames = max(r["frames"] for run in results["runs"].values() for r in run["methods"].values())
    plot(results, out / "accuracy.png", window=max(16, frames // 30))


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="eclm-ros bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and a short stream (CI, < 5 min)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="output directory")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {','.join(METHODS)}")
    parser.add_argument("--severity", default="3,5", help="comma-separated severities (1..5)")
    parser.add_argument("--frames-per-segment", type=int, default=0, help="0 = 1000 (quick: 64)")
    parser.add_argument("--schedule", default="", help="one stream of your own instead of the severities, e.g. "
                        "the demo's: 'clean:450,fog@3:900,...' (see world.parse_schedule)")
    parser.add_argument("--batch", type=int, default=64, help="frames per step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None, help="checkpoint cache directory")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        severities = [int(s) for s in args.severity.split(",")]
        if not all(1 <= s <= 5 for s in severities):
            raise ValueError
    except ValueError:
        parser.error(f"--severity takes comma-separated integers 1..5, got {args.severity!r}")
    if args.batch < 1:
        parser.error("--batch must be >= 1")
    fps = args.frames_per_segment or (64 if args.quick else 1000)
    try:
        streams = {"custom": parse_schedule(args.schedule)} if args.schedule else default_streams(severities, fps)
    except ValueError as exc:
        parser.error(str(exc))
    console = Console()
    try:
        results = run_bench([m.strip() for m in args.methods.split(",") if m.strip()], streams, args.batch,
                            args.seed, args.quick, args.cache, console)
    except ValueError as exc:
        parser.error(str(exc))
    write_results(results, args.out)
    console.print(to_markdown(results))
    console.print(f"wrote {args.out}/results.json, results.md, accuracy.png")
    return 0
