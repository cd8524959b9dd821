"""`eclm-ros bench`: every adaptation method on the same shifting stream, side by side, in one run.

A method sees only pixels, batch after batch, and must predict each batch with its edge model as it is at
that moment before it learns from it. Edge-cloud traffic is counted from the bytes the codec and the image
encoder actually produce. The frames are Fashion-MNIST's test split, or with ``--data DIR`` a user's test images
(the models trained on ``DIR/train`` first, once). Results: DIR/results.json, DIR/results.md and
DIR/accuracy.png.
"""
from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..core.models import count_macs, count_params
from ..core.norm import affine_param_fraction
from ..core.strategies import BUDGET_SHARES
from ..core.tensor_codec import pack
from ..sim.corruptions import CORRUPTIONS, WORLDS
from ..sim.data import Dataset, fashion_mnist
from ..sim.evaluation import Evaluator
from ..sim.world import Schedule, WorldStream, default_schedule, parse_schedule
from ..training.trainer import accuracy, data_arguments, dataset_from_arguments, ensure
from .baselines import METHODS as BASELINES
from .collab import METHODS as COLLAB_METHODS
from .method import FIXED_MODELS, BenchContext, Method
from .report import goals, over_seeds, summary_markdown, to_markdown, write_results

METHODS: dict[str, Callable[[BenchContext], Method]] = {**BASELINES, **COLLAB_METHODS}


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


def default_streams(severities: list[int], frames_per_segment: int, mixed: bool = False) -> dict[str, Schedule]:
    """The default benchmark: all 15 corruptions in a row, continual, once per severity; with ``mixed`` also a
    mixed-domain stream of the same length per severity (every frame its own corruption)."""
    streams = {f"severity_{sev}": default_schedule(sev, frames_per_segment) for sev in severities}
    if mixed:
        streams.update({f"mixed_{sev}": parse_schedule(f"mixed@{sev}:{len(CORRUPTIONS) * frames_per_segment}")
                        for sev in severities})
    return streams


def run_bench(methods: list[str], streams: dict[str, Schedule], batch_size: int, seed: int,
              quick: bool, cache_dir: Path | None = None, console: Console | None = None,
              world: str = "mild", dataset: Dataset | None = None, budget: str = "small") -> dict:
    console = console or Console()
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    dataset = dataset or fashion_mnist()
    ctx = BenchContext(quick, seed, cache_dir, dataset, budget)
    test_x, test_y = dataset.split("test")
    cloud, edge, fixed = ctx.cloud_model(), ctx.edge_model(), ctx.edge_fixed()
    models = {name: {"params": count_params(m), "macs": count_macs(m),
                     "clean_accuracy": round(accuracy(m, test_x, test_y, dataset.description), 4)}
              for name, m in (("cloud", cloud), ("edge", edge), ("edge_fixed", fixed))}
    models["edge"]["spec"] = [list(s) for s in edge.spec.stages]
    models["edge"]["affine_fraction"] = round(affine_param_fraction(edge), 4)
    models["edge"]["weights_bytes"] = pack(edge.state_dict(), compress=False).wire_size
    models["edge"]["budget"] = budget
    models["edge"]["budget_macs"] = ctx.edge_budget().max_macs
    models["edge_fixed"]["name"] = FIXED_MODELS[budget]
    results = {"config": {"methods": methods, "streams": {k: s.to_string() for k, s in streams.items()},
                          "batch_size": batch_size, "seed": seed, "quick": quick, "continual": True, "world": world,
                          "budget": budget, "data": dataset.source, "labels": list(dataset.description.labels),
                          "torch_threads": torch.get_num_threads()},
               "models": models, "runs": {}}
    evaluators = {}
    for key, schedule in streams.items():
        stream = WorldStream(test_x, test_y, schedule, seed, world)
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
    results["goals"] = {key: goals(run["methods"], models, world, key.startswith("mixed"))
                        for key, run in results["runs"].items()}
    return results


def run_cell(methods: list[str], streams: dict[str, Schedule], batch_size: int, seeds: list[int], quick: bool,
             cache_dir: Path | None, console: Console, world: str, dataset: Dataset | None, budget: str,
             out: Path) -> dict:
    """One world and robot size over the seeds (merged to mean and spread), written to ``out``."""
    runs = [run_bench(methods, streams, batch_size, seed, quick, cache_dir, console, world, dataset, budget)
            for seed in seeds]
    results = over_seeds(runs) if len(seeds) > 1 else runs[0]
    write_results(results, out)
    return results


def _cell_in_process(cell: dict, threads: int) -> dict:
    """A cell in a worker process (``--jobs``): its progress goes to OUT/bench.log, its results come back without
    the evaluators (the plots are written already)."""
    torch.set_num_threads(threads)
    cell["out"].mkdir(parents=True, exist_ok=True)
    with (cell["out"] / "bench.log").open("w") as log:
        results = run_cell(**cell, console=Console(file=log, width=120))
    return {k: v for k, v in results.items() if not k.startswith("_")}


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="eclm-ros bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and a short stream (CI, < 5 min)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="output directory")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {','.join(METHODS)}")
    parser.add_argument("--severity", default="3,5", help="comma-separated severities (1..5)")
    parser.add_argument("--frames-per-segment", type=int, default=0, help="0 = 1000 (quick: 64)")
    parser.add_argument("--schedule", default="", help="one stream of your own instead of the severities, e.g. "
                        "the demo's: 'clean:450,fog@3:900,...' (see world.parse_schedule)")
    parser.add_argument("--world", default="mild", help="corruption strengths, comma-separated: mild "
                        "(CIFAR-10-C's) and/or harsh (ImageNet-C's, spatial parameters scaled from 224 px to the frame)")
    parser.add_argument("--budget", default="small", help=f"the robot, comma-separated from "
                        f"{','.join(BUDGET_SHARES)}: the sub-model its MACs afford and the fixed model of that "
                        "budget trained alone")
    parser.add_argument("--matrix", action="store_true", help="every world and every budget (one folder each, "
                        "and summary.md over them)")
    parser.add_argument("--mixed", action="store_true", help="also a mixed-domain stream per severity (each frame "
                        "its own corruption)")
    parser.add_argument("--batch", type=int, default=64, help="frames per step")
    parser.add_argument("--seed", default="0", help="stream seed, or comma-separated seeds: accuracies are then "
                        "reported as mean and standard deviation over them")
    parser.add_argument("--cache", type=Path, default=None, help="checkpoint cache directory")
    data_arguments(parser)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores; with --jobs, the "
                        "cores shared out)")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at once, each in its own process (the "
                        "matrix on 2 cores: --jobs 2); their progress goes to each cell's bench.log")
    args = parser.parse_args(argv)
    dataset = dataset_from_arguments(parser, args)
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        severities = [int(s) for s in args.severity.split(",")]
        if not all(1 <= s <= 5 for s in severities):
            raise ValueError
    except ValueError:
        parser.error(f"--severity takes comma-separated integers 1..5, got {args.severity!r}")
    try:
        seeds = [int(s) for s in args.seed.split(",")]
    except ValueError:
        parser.error(f"--seed takes comma-separated integers, got {args.seed!r}")
    worlds = list(WORLDS) if args.matrix else args.world.split(",")
    budgets = list(BUDGET_SHARES) if args.matrix else args.budget.split(",")
    for flag, values, known in (("--world", worlds, WORLDS), ("--budget", budgets, BUDGET_SHARES)):
        if not values or any(v not in known for v in values):
            parser.error(f"{flag} takes comma-separated values from {', '.join(known)}, got {','.join(values)!r}")
    if args.batch < 1:
        parser.error("--batch must be >= 1")
    fps = args.frames_per_segment or (64 if args.quick else 1000)
    try:
        streams = ({"custom": parse_schedule(args.schedule)} if args.schedule
                   else default_streams(severities, fps, args.mixed))
    except ValueError as exc:
        parser.error(str(exc))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"--methods takes comma-separated names from {','.join(METHODS)}, got {args.methods!r}")
    console = Console()
    grid = list(itertools.product(worlds, budgets))
    todo = {f"{world}-{budget}": dict(methods=methods, streams=streams, batch_size=args.batch, seeds=seeds,
                                      quick=args.quick, cache_dir=args.cache, world=world, dataset=dataset,
                                      budget=budget, out=args.out if len(grid) == 1 else args.out / f"{world}-{budget}")
            for world, budget in grid}
    cells = {}
    t0 = time.perf_counter()

    def done(name: str, results: dict) -> None:
        cells[name] = results
        console.print(to_markdown(results))
        console.print(f"wrote {todo[name]['out']}/results.json, results.md, accuracy.png "
                      f"({(time.perf_counter() - t0) / 60:.1f} min)")

    if args.jobs > 1 and len(todo) > 1:
        ensure(args.quick, args.cache, dataset)  # trained once here, not by every worker at once
        threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
        console.print(f"{len(todo)} cells, {args.jobs} at once with {threads} torch thread(s) each; progress in "
                      f"each cell's bench.log")
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_cell_in_process, cell, threads): name for name, cell in todo.items()}
            for future in as_completed(futures):
                done(futures[future], future.result())
        cells = {name: cells[name] for name in todo}
    else:
        for name, cell in todo.items():
            done(name, run_cell(**cell, console=console))
    if len(cells) > 1:
        (args.out / "summary.md").write_text(summary_markdown(cells, time.perf_counter() - t0))
        console.print((args.out / "summary.md").read_text())
        console.print(f"wrote {args.out}/summary.md")
    return 0
