"""`eclm-ros bench-edge`: does the edge keep up with a robot's camera, take updates between two frames and
receive multi-MB updates over DDS? Every figure stands beside the obvious alternative, measured in the same run.

- Per-frame inference (batch 1, the 28x28 model input, one thread): torch eager (TorchEdgeRuntime), ONNX Runtime
  as first used (default session options, ``session.run`` with a feed dict) and the tuned OrtEdgeRuntime, each
  with and without selection. Blocks of frames are interleaved so background load hits every runtime alike.
- Updates, applied as the edge node applies them (``updates.apply_update`` on a bundle): affine, modules (a
  re-composition) and full (a new structure), cold (first time) and warm; frames dropped while a 30 Hz camera
  (640x480 rgb8 through preprocessing, inference and selection) runs and another thread keeps applying updates.
- Transport, real processes over DDS (``eclm_ros.bench.dds``, started per Fast DDS configuration):
  camera -> edge_learner -> Prediction latency and delivery at 640x480 rgb8, 30 Hz; 20 MB ModelUpdates, with the
  shipped profile and with Fast DDS's defaults.
Results: DIR/results.json and DIR/results.md.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch
from rich.console import Console

from ..core.compose import modules_update
from ..core.description import architecture_json
from ..core.edge_runtime import OrtEdgeRuntime, TorchEdgeRuntime, make_runtime
from ..core.messages import KIND_FULL, KIND_MODULES, KIND_NORM_AFFINE
from ..core.models import ModularNet, SubModelSpec, architecture, build_submodel, count_macs, count_params
from ..core.norm import EMA_MOMENTUM, affine_state
from ..core.onnx_export import export_adaptive, state_vectors
from ..core.preprocess import Preprocessor
from ..core.selection import Selector, entropy_one
from ..core.tensor_codec import pack
from ..core.updates import apply_update
from ..sim.camera import camera_frames
from ..sim.data import load_fashion_mnist
from ..training import trainer
from .report import latency_stats, markdown_tables, print_tables

RUNTIMES = ("torch", "ort_default", "ort_tuned")
CAMERA_HZ = 30.0


class OrtDefault:
    """ONNX Runtime as one would first use it on the same adaptive graph: default session options (threads
    pinned to one for the one-core comparison, unless ``threads=0``), ``session.run`` with a feed dict."""

    def __init__(self, model: torch.nn.Module, momentum: float = EMA_MOMENTUM, threads: int = 1) -> None:
        graph = export_adaptive(model)
        self.momentum = np.full(1, momentum, np.float32)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(graph.to_bytes(), options, providers=["CPUExecutionProvider"])
        self.state, self.affine = state_vectors(model, graph.layout)

    def infer(self, x: np.ndarray) -> np.ndarray:
        probs, self.state, _ = self.session.run(None, {"x": x, "bn_state": self.state, "affine": self.affine,
                                                       "bn_momentum": self.momentum})
        return probs


def _stats(seconds: list[float]) -> dict[str, float]:
    stats = latency_stats(np.asarray(seconds) * 1000)
    return {"fps": 1000 / stats["mean_ms"], **stats}


def measure_runtimes(model: torch.nn.Module, frames: np.ndarray, rounds: int, block: int,
                     extra_allcores: bool = True) -> dict:
    """Per-frame latency of each runtime with and without selection: runtimes take turns block by block, and
    within a block frames alternate with and without selection, so background load hits every figure alike.
    The selection overhead compares medians (robust to the bursts a shared CPU has)."""
    runners: dict[str, object] = {"torch": TorchEdgeRuntime(copy.deepcopy(model)),
                                  "ort_default": OrtDefault(copy.deepcopy(model)),
                                  "ort_tuned": OrtEdgeRuntime(copy.deepcopy(model))}
    if extra_allcores:
        runners["ort_default_allcores"] = OrtDefault(copy.deepcopy(model), threads=0)
    selectors = {name: Selector(model.num_classes) for name in runners}
    times: dict[tuple[str, bool], list[float]] = {(n, s): [] for n in runners for s in (False, True)}
    for runner in runners.values():
        for x in frames[:50]:
            runner.infer(x)
    i = 0
    for _ in range(rounds):
        for name, runner in runners.items():
            selector = selectors[name]
            for _ in range(2 * block):
                x, selecting = frames[i % len(frames)], bool(i % 2)
                i += 1
                t0 = time.perf_counter()
                probs = runner.infer(x)[0]
                if selecting:
                    selector.select_one(probs, entropy_one(probs))
                times[(name, selecting)].append(time.perf_counter() - t0)
    torch_fps = _stats(times[("torch", False)])["fps"]
    out = {}
    for name in runners:
        plain, selected = _stats(times[(name, False)]), _stats(times[(name, True)])
        out[name] = {**plain, "with_selection": selected, "speedup_vs_torch": plain["fps"] / torch_fps,
                     "selection_overhead": selected["p50_ms"] / plain["p50_ms"] - 1}
    return out


class UpdatePlan:
    """Updates as the cloud sends them, between three structures of the cloud's modules: A (the default edge
    sub-model) -> B (one module swapped: a re-composition, KIND_MODULES) -> C (a larger sub-model: KIND_FULL)
    -> A (KIND_FULL), and per structure an affine update (KIND_NORM_AFFINE)."""

    def __init__(self, edge: ModularNet, cloud: ModularNet) -> None:
        a = edge.spec
        b = SubModelSpec(tuple((next(m for m in cloud.stages[0].module_ids if m not in a.stages[0]),)
                               if s == 0 else ids for s, ids in enumerate(a.stages)))
        c = SubModelSpec(tuple(tuple(cloud.stages[s].module_ids[:2]) for s in range(len(a.stages))))
        if c == a:
            c = cloud.spec
        self.models = {"A": edge, "B": build_submodel(cloud, b), "C": build_submodel(cloud, c)}
        self.specs = {k: architecture_json(architecture(m)) for k, m in self.models.items()}
        self.affine = {k: [pack({n: (v.numpy() * scale).astype(np.float32) for n, v in affine_state(m).items()},
                                encoding="fp16") for scale in (0.9, 1.1)] for k, m in self.models.items()}
        full = {k: pack({n: v.numpy() for n, v in m.state_dict().items()}) for k, m in self.models.items()}
        self.transitions = {"A": ("B", KIND_MODULES, pack(modules_update(self.models["B"], a), encoding="fp16")),
                            "B": ("C", KIND_FULL, full["C"]), "C": ("A", KIND_FULL, full["A"])}
        self.serving = "A"

    def affine_update(self, runtime, i: int) -> float:
        spec = self.specs[self.serving]
        t0 = time.perf_counter()
        apply_update(runtime, KIND_NORM_AFFINE, spec, spec, self.affine[self.serving][i % 2])
        return time.perf_counter() - t0

    def transition(self, runtime) -> tuple[str, float]:
        target, kind, bundle = self.transitions[self.serving]
        t0 = time.perf_counter()
        apply_update(runtime, kind, self.specs[target], self.specs[self.serving], bundle)
        self.serving = target
        return ("modules" if kind == KIND_MODULES else "full"), time.perf_counter() - t0


def measure_update_latency(edge: ModularNet, cloud: ModularNet, kind: str, affine_repeats: int,
                           cycles: int) -> dict:
    """Time to apply each kind of update; the first modules/full update of a structure is 'cold'."""
    runtime = make_runtime(kind, copy.deepcopy(edge))
    plan = UpdatePlan(edge, cloud)
    x = np.zeros(edge.input_shape, np.float32)
    affine = [plan.affine_update(runtime, i) for i in range(affine_repeats)]
    swaps: dict[str, list[float]] = {"modules": [], "full": []}
    for _ in range(cycles):
        for _ in range(3):
            name, seconds = plan.transition(runtime)
            swaps[name].append(seconds)
            runtime.infer(x)
    modules, full = np.asarray(swaps["modules"]) * 1000, np.asarray(swaps["full"]) * 1000
    return {"affine_apply_ms": float(np.median(affine) * 1000), "affine_apply_max_ms": float(max(affine) * 1000),
            "module_apply_cold_ms": float(modules[0]), "module_apply_ms": float(np.median(modules[1:])),
            "full_apply_cold_ms": float(full[0]), "full_apply_ms": float(np.median(full[1:]))}


def measure_drops(edge: ModularNet, cloud: ModularNet, kind: str, seconds: float, preprocess: Preprocessor) -> dict:
    """A 30 Hz camera thread does the node's per-frame work (640x480 rgb8 -> preprocessing -> inference ->
    selection) while another thread applies an update every 100 ms (a modules or full update every second);
    a frame is dropped when its answer is not ready before the next frame is due."""
    runtime = make_runtime(kind, copy.deepcopy(edge))
    plan = UpdatePlan(edge, cloud)
    frames, selector = camera_frames(), Selector(edge.num_classes)
    x = np.empty(edge.input_shape, np.float32)
    stop = threading.Event()
    applied = {"affine": 0, "modules": 0, "full": 0, "failed": 0}

    def updater() -> None:
        i = 0
        while not stop.wait(0.1):
            i += 1
            try:
                if i % 10 == 0:
                    applied[plan.transition(runtime)[0]] += 1
                else:
                    plan.affine_update(runtime, i)
                    applied["affine"] += 1
            except ValueError:
                applied["failed"] += 1

    period, count = 1.0 / CAMERA_HZ, int(seconds * CAMERA_HZ)
    thread = threading.Thread(target=updater, daemon=True)
    latencies, dropped = [], 0
    start = time.perf_counter() + 0.2
    thread.start()
    for k in range(count):
        due = start + k * period
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        preprocess.frame_input(frames[k % len(frames)], out=x[0])
        probs = runtime.infer(x)[0]
        selector.select_one(probs, entropy_one(probs))
        done = time.perf_counter()
        latencies.append(done - due)
        dropped += done > due + period
    stop.set()
    thread.join()
    return {"frames": count, "dropped": int(dropped), "updates": applied, **{
        k: v for k, v in _stats(latencies).items() if k != "fps"}}


def run_transport(mode: str, profile: str, out_dir: Path, args: list[str], timeout: float) -> dict:
    """One transport measurement in its own process (Fast DDS reads its profile once per process)."""
    out = out_dir / f"{mode}-{profile}.json"
    cmd = [sys.executable, "-m", "eclm_ros.bench.dds", mode, "--profile", profile, "--out", str(out), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0 or not out.exists():
        return {"error": (proc.stderr or proc.stdout)[-1500:]}
    return json.loads(out.read_text())


def goals(r: dict) -> list[tuple[str, str, str, bool | None]]:
    """(goal, target, measured, met) for the issue's goals."""
    def check(value, ok: Callable[[float], bool]) -> bool | None:
        return None if value is None else bool(ok(value))

    speed = r["fps"]["ort_tuned"] / r["fps"]["torch"]
    e2e_p99, ratio, delivered = r["e2e_p99_ms"], r["e2e_delivery_ratio"], r["update_20mb_delivered"]
    return [
        ("tuned runtime vs torch eager, frames/s (1 core)", ">= 2x", f"{speed:.2f}x", speed >= 2),
        ("selection overhead per frame (tuned)", "<= 10 %", f"{100 * r['selection_overhead']:.1f} %",
         r["selection_overhead"] <= 0.10),
        ("apply an affine update (max of all)", "<= 5 ms", f"{r['affine_apply_max_ms']:.2f} ms",
         r["affine_apply_max_ms"] <= 5),
        ("frames dropped during updates at 30 Hz", "0", str(r["frames_dropped_during_updates"]),
         r["frames_dropped_during_updates"] == 0),
        ("camera -> Prediction p99, 640x480 at 30 Hz", "<= 15 ms", _f(e2e_p99, "{:.1f} ms"),
         check(e2e_p99, lambda v: v <= 15)),
        ("best-effort frames delivered (shipped profile)", "100 %", _f(ratio, "{:.1%}"),
         check(ratio, lambda v: v >= 1.0)),
        (f"{r['update_megabytes']:.0f} MB updates delivered (shipped profile)", "all (10 / 10)",
         _f(delivered, "{} / " + str(r["update_count"])), check(delivered, lambda v: v == r["update_count"])),
    ]


def _f(v, spec: str = "{:.2f}") -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else spec.format(v)


def tables(r: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report as (title, header, rows), rendered by rich on the console and as markdown in results.md."""
    inference = [[name, _f(v["fps"], "{:.0f}"), _f(v["p50_ms"], "{:.3f}"), _f(v["p99_ms"], "{:.3f}"),
                  _f(v["with_selection"]["fps"], "{:.0f}"), _f(v["with_selection"]["p99_ms"], "{:.3f}"),
                  _f(100 * v["selection_overhead"], "{:+.1f} %"), _f(v["speedup_vs_torch"], "{:.2f}x")]
                 for name, v in r["runtimes"].items()]
    updates = []
    for kind, u in r["update_latency"].items():
        d = r["drops"][kind]
        updates.append([kind, f"{_f(u['affine_apply_ms'], '{:.3f}')} / {_f(u['affine_apply_max_ms'], '{:.3f}')}",
                        f"{_f(u['module_apply_ms'], '{:.1f}')} ({_f(u['module_apply_cold_ms'], '{:.1f}')} cold)",
                        f"{_f(u['full_apply_ms'], '{:.1f}')} ({_f(u['full_apply_cold_ms'], '{:.1f}')} cold)",
                        f"{d['dropped']} / {d['frames']}", _f(d["p99_ms"], "{:.2f}"),
                        " ".join(f"{k}={v}" for k, v in d["updates"].items() if v)])
    transport = []
    for profile in ("shipped", "none"):
        e, u = r["e2e"].get(profile, {}), r["update_20mb"].get(profile, {})
        transport.append([profile, _f(e.get("delivery_ratio"), "{:.1%}"), _f(e.get("p50_ms"), "{:.1f}"),
                          _f(e.get("p95_ms"), "{:.1f}"), _f(e.get("p99_ms"), "{:.1f}"),
                          f"{u.get('delivered', 'n/a')} / {u.get('count', 'n/a')}" if "error" not in u else "error",
                          _f(u.get("p50_ms"), "{:.0f}"), _f(u.get("max_ms"), "{:.0f}")])
    goal_rows = [[g, t, m, {True: "met", False: "NOT met", None: "not measured"}[ok]] for g, t, m, ok in goals(r)]
    return [
        ("Per-frame inference (batch 1, 28x28 input, 1 thread)",
         ["runtime", "frames/s", "p50 ms", "p99 ms", "frames/s +sel", "p99 ms +sel", "selection", "vs torch"],
         inference),
        (f"Updates (apply_update on a bundle) and a {CAMERA_HZ:.0f} Hz camera while they keep coming",
         ["runtime", "affine ms p50 / max", "modules ms", "full ms", "dropped", "frame p99 ms", "updates applied"],
         updates),
        ("Transport over DDS between processes: camera -> edge_learner -> Prediction (640x480 rgb8, 30 Hz); "
         f"{r['update_megabytes']:.0f} MB ModelUpdates",
         ["Fast DDS profile", "frames delivered", "e2e p50 ms", "p95 ms", "p99 ms", "updates delivered",
          "update p50 ms", "update max ms"], transport),
        ("Goals (issue 6)", ["goal", "target", "measured", ""], goal_rows),
    ]


def to_markdown(r: dict) -> str:
    cfg = r["config"]
    lines = ["# eclm-ros bench-edge", "", f"Command: `{cfg['command']}`  ", f"Edge model: {cfg['model']}  ",
             f"torch {torch.__version__}, onnxruntime {ort.__version__}, {os.cpu_count()} CPUs (shared)", ""]
    return "\n".join(lines + markdown_tables(tables(r)))


def run(args, console: Console) -> dict:
    torch.set_num_threads(1)
    edge_ckpt = trainer.load("edge", args.quick, args.cache)
    edge, cloud = edge_ckpt.model, trainer.load("cloud", args.quick, args.cache).model
    preprocess = Preprocessor(edge_ckpt.description)
    images, _ = load_fashion_mnist("test")
    frames = preprocess.batch(images[:2000])[:, None]
    quick = args.quick
    r: dict = {"config": {"command": " ".join(["eclm-ros bench-edge", *args.argv]), "quick": quick,
                          "model": f"{type(edge).__name__} {edge.spec.stages}, {count_params(edge):,} params, "
                                   f"{count_macs(edge):,} MACs/frame{' (quick)' if quick else ''}"}}
    console.print(f"[bold]bench-edge[/] {r['config']['model']}")
    with console.status("per-frame inference"):
        r["runtimes"] = measure_runtimes(edge, frames, rounds=4 if quick else 10, block=60 if quick else 200,
                                         extra_allcores=not quick)
    with console.status("update latency"):
        r["update_latency"] = {k: measure_update_latency(edge, cloud, k, 20 if quick else 100, 2 if quick else 4)
                               for k in ("onnx", "torch")}
    with console.status(f"frames dropped during updates ({args.seconds:.0f} s per runtime)"):
        r["drops"] = {k: measure_drops(edge, cloud, k, args.seconds, preprocess) for k in ("onnx", "torch")}
    r["e2e"], r["update_20mb"] = {}, {}
    if not args.no_transport:
        tmp = Path(tempfile.mkdtemp(prefix="eclm-bench-edge-"))
        e2e_args = ["--frames", str(args.e2e_frames), "--warmup", "30" if quick else "60"]
        e2e_args += ["--quick", "--cache", str(args.cache or "")] if quick else \
            (["--cache", str(args.cache)] if args.cache else [])
        for profile in ("shipped", "none"):
            with console.status(f"camera -> edge_learner -> Prediction over DDS, profile {profile}"):
                r["e2e"][profile] = run_transport("e2e", profile, tmp, e2e_args, 300)
            with console.status(f"{args.update_megabytes:.0f} MB ModelUpdates over DDS, profile {profile}"):
                r["update_20mb"][profile] = run_transport(
                    "updates", profile, tmp, ["--count", str(args.update_count), "--megabytes",
                                              str(args.update_megabytes)], 300)
    e2e, upd = r["e2e"].get("shipped", {}), r["update_20mb"].get("shipped", {})
    tuned = r["runtimes"]["ort_tuned"]
    r.update({
        "fps": {k: r["runtimes"][k]["fps"] for k in RUNTIMES},
        "p50_ms": {k: r["runtimes"][k]["p50_ms"] for k in RUNTIMES},
        "p99_ms": {k: r["runtimes"][k]["p99_ms"] for k in RUNTIMES},
        "selection_overhead": tuned["selection_overhead"],
        "affine_apply_ms": r["update_latency"]["onnx"]["affine_apply_ms"],
        "affine_apply_max_ms": r["update_latency"]["onnx"]["affine_apply_max_ms"],
        "module_apply_ms": r["update_latency"]["onnx"]["module_apply_ms"],
        "frames_dropped_during_updates": r["drops"]["onnx"]["dropped"],
        "e2e_p99_ms": e2e.get("p99_ms"), "e2e_delivery_ratio": e2e.get("delivery_ratio"),
        "e2e_initial_model_served": e2e.get("served_versions") == [0] if e2e and "error" not in e2e else None,
        "update_20mb_delivered": upd.get("delivered"), "update_count": args.update_count,
        "update_megabytes": args.update_megabytes,
    })
    r["goals"] = [{"goal": g, "target": t, "measured": m, "met": ok} for g, t, m, ok in goals(r)]
    return r


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="eclm-ros bench-edge", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, short runs (CI)")
    parser.add_argument("--cache", type=Path, default=None, help="checkpoint cache (default $ECLM_ROS_CACHE "
                                                                  "or ~/.cache/eclm_ros)")
    parser.add_argument("--out", type=Path, default=None, help="write DIR/results.json and DIR/results.md")
    parser.add_argument("--seconds", type=float, default=None, help="camera seconds per runtime while updates "
                                                                     "keep coming (default 10, quick 3)")
    parser.add_argument("--e2e-frames", type=int, default=None, help="measured camera frames per profile "
                                                                      "(default 300, quick 60)")
    parser.add_argument("--update-count", type=int, default=None, help="updates per profile (default 10, quick 3)")
    parser.add_argument("--update-megabytes", type=float, default=20.0)
    parser.add_argument("--no-transport", action="store_true", help="skip the DDS measurements (no ROS needed)")
    args = parser.parse_args(argv)
    args.argv = argv
    args.seconds = args.seconds or (3.0 if args.quick else 10.0)
    args.e2e_frames = args.e2e_frames or (60 if args.quick else 300)
    args.update_count = args.update_count or (3 if args.quick else 10)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    results = run(args, console)
    print_tables(tables(results), console)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
        (args.out / "results.md").write_text(to_markdown(results))
        console.print(f"wrote {args.out}/results.json, results.md")
    return 0
