"""eclm-ros check-model FILE: what a model file gives a robot before it is deployed.

Loads the file exactly as the edge learner does (an eclm_ros checkpoint, an ONNX or a TorchScript file), then
prints its input, labels, the adaptable parameters (count, and bytes per update at each encoding), its speed
with ONNX Runtime (the adaptive graph the edge serves: BatchNorm statistics per frame) and torch eager beside it,
the time to apply an affine update, and what will not work and why. Exits 1 with the reason when the file
cannot serve.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..core.edge_runtime import make_runtime
from ..core.model_import import InputSpec, ModelImportError, adaptable_summary, describe_input, load_model
from ..core.models import ModularNet, count_macs
from ..core.norm import affine_state
from .report import latency_stats


def _latencies(runtime, x: np.ndarray, frames: int) -> np.ndarray:
    for _ in range(min(10, frames)):
        runtime.infer(x)
    out = np.empty(frames)
    for i in range(frames):
        t0 = time.perf_counter()
        runtime.infer(x)
        out[i] = time.perf_counter() - t0
    return out * 1000


def check(path: Path, spec: InputSpec, threads: int, frames: int) -> dict:
    """Every figure of the report (raises ModelFileError when the file cannot serve)."""
    t0 = time.perf_counter()
    model = load_model(path, spec)
    load_s = time.perf_counter() - t0
    d = model.description
    summary = adaptable_summary(model.model)
    report = {"file": str(path), "format": model.manifest.get("format", "eclm_ros checkpoint"), "load_s": load_s,
              "input": describe_input(d), "input_shape": list(d.input_shape()), "classes": d.num_classes,
              "labels": list(d.labels[:5]) + (["..."] if d.num_classes > 5 else []),
              "outputs_probabilities": bool(model.manifest.get("outputs_probabilities", False)), **summary,
              "update_share": {k: v / summary["model_bytes"] for k, v in summary["update_bytes"].items()},
              "macs": count_macs(model.model, d.input_shape()), "warnings": []}
    x = np.random.default_rng(0).integers(0, 255, d.input_shape(), dtype=np.uint8).astype(np.float32) / 255
    for kind in ("onnx", "torch"):
        t0 = time.perf_counter()
        runtime = make_runtime(kind, model.model, threads=threads, input_shape=d.input_shape())
        build_s = time.perf_counter() - t0
        ms = _latencies(runtime, x, frames)
        stats = latency_stats(ms)
        report[kind] = {"build_s": build_s, "fps": 1000 / stats["mean_ms"], **stats}
        if kind == "onnx" and summary["affine_params"]:
            affine = {k: v.numpy() * 1.01 for k, v in affine_state(model.model).items()}
            t0 = time.perf_counter()
            runtime.apply_affine(affine)
            report[kind]["apply_affine_ms"] = (time.perf_counter() - t0) * 1000
    warnings = report["warnings"]
    if not summary["norm_layers"]:
        warnings.append("no normalisation layers: it serves as it is, nothing adapts, no cloud update applies")
    if not isinstance(model.model, ModularNet):
        warnings.append("not the modular cloud model: the cloud distils into it (CEMA) but composes no sub-models "
                        "(ECLM) and merges no modules; give the cloud this file as edge_model_path")
    if model.manifest.get("format") and d.labels == tuple(str(i) for i in range(d.num_classes)):
        warnings.append("no labels: predictions carry class indices (set labels_path)")
    if model.manifest.get("format") and d.mean == (0.0,) * d.channels and d.std == (1.0,) * d.channels:
        warnings.append("no input normalisation given: pixels reach it scaled to 0..1 (set input_mean/input_std "
                        "if it was trained otherwise)")
    return report


def table(r: dict) -> str:
    rows = [("file", f"{r['file']} ({r['format']}, loaded and checked in {r['load_s']:.1f} s)"),
            ("input", f"{'x'.join(map(str, r['input_shape'][1:]))}: {r['input']}"),
            ("labels", f"{r['classes']}: {', '.join(r['labels'])}"
             + (" (ends in softmax: served as logits)" if r["outputs_probabilities"] else "")),
            ("size", f"{r['params']:,} parameters ({r['model_bytes'] / 1e6:.2f} MB fp32), "
                     f"{r['macs'] / 1e6:.1f}M MACs per frame"),
            ("adaptable", f"{r['norm_layers']} normalisation layers, {r['affine_params']:,} affine parameters"),
            ("update bytes", ", ".join(f"{k} {v:,} ({100 * r['update_share'][k]:.2f} % of the model)"
                                       for k, v in r["update_bytes"].items()))]
    for kind, name in (("onnx", "ONNX Runtime (adaptive)"), ("torch", "torch eager")):
        k = r[kind]
        rows.append((name, f"{k['fps']:.1f} frames/s, p50 {k['p50_ms']:.2f} ms, p99 {k['p99_ms']:.2f} ms"
                           + (f"; affine update applied in {k['apply_affine_ms']:.2f} ms" if "apply_affine_ms" in k
                              else "")))
    rows += [("will not work", w) for w in r["warnings"]] or [("will not work", "nothing found")]
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="eclm-ros check-model", description=__doc__.split("\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--labels", default="", help="labels file, one per line (the edge's labels_path)")
    parser.add_argument("--mean", type=float, nargs="+", default=(), help="input mean per channel (0..1 scale)")
    parser.add_argument("--std", type=float, nargs="+", default=(), help="input std per channel")
    parser.add_argument("--input-shape", type=int, nargs=3, default=(), metavar=("C", "H", "W"),
                        help="a TorchScript model's input")
    parser.add_argument("--allow-unadaptable", action="store_true", help="accept a model without normalisation")
    parser.add_argument("--threads", type=int, default=1, help="inference threads, as the robot sets them")
    parser.add_argument("--frames", type=int, default=200, help="frames timed per runtime")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = InputSpec(args.labels, tuple(args.mean), tuple(args.std), tuple(args.input_shape[1:]),
                     args.input_shape[0] if args.input_shape else 0, args.allow_unadaptable)
    try:
        report = check(args.file, spec, args.threads, args.frames)
    except (ModelImportError, OSError) as exc:
        print(f"eclm-ros check-model: {exc}", file=sys.stderr)
        return 1
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0
