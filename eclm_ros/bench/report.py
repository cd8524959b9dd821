"""What a benchmark run says: the goals with their gaps, the tables, the plots, latency statistics."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..sim.evaluation import Evaluator


def latency_stats(ms) -> dict[str, float]:
    """p50 / p95 / p99 / max / mean of latencies in ms (NaN when there are none)."""
    v = np.asarray(list(ms), dtype=np.float64)
    if not len(v):
        return {k: float("nan") for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms")}
    return {"p50_ms": float(np.percentile(v, 50)), "p95_ms": float(np.percentile(v, 95)),
            "p99_ms": float(np.percentile(v, 99)), "max_ms": float(v.max()), "mean_ms": float(v.mean())}


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


def plot_rolling(path: Path, panels: list[tuple[str, dict[str, Evaluator]]], window: int) -> None:
    """Rolling accuracy of several methods on the same frames, one panel per stream, environment changes
    marked: the benchmark's and the demo's plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 3.6 * len(panels)), squeeze=False)
    for ax, (title, curves) in zip(axes[:, 0], panels):
        starts = None
        for label, ev in curves.items():
            x, acc = ev.rolling(window)
            ax.plot(x, acc, label=label, lw=1.2)
            starts = starts or ev.segment_starts()
        for frame, env in starts or []:
            ax.axvline(frame, color="grey", lw=0.5, ls=":")
            ax.text(frame, 1.01, env.replace("_", " "), rotation=60, fontsize=6, va="bottom")
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"accuracy (rolling {window})")
        ax.set_title(title, loc="left", fontsize=9)
        ax.legend(loc="lower left", fontsize=7, ncol=4)
    axes[-1, 0].set_xlabel("frame")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(results: dict, path: Path, window: int) -> None:
    panels = [(key.replace("_", " "), {name: results["_evaluators"][(key, name)] for name in results["config"]["methods"]})
              for key in results["config"]["streams"]]
    plot_rolling(path, panels, window)


def write_results(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    public = {k: v for k, v in results.items() if not k.startswith("_")}
    (out / "results.json").write_text(json.dumps(public, indent=2))
    (out / "results.md").write_text(to_markdown(results))
    frames = max(r["frames"] for run in results["runs"].values() for r in run["methods"].values())
    plot(results, out / "accuracy.png", window=max(16, frames // 30))


Tables = list[tuple[str, list[str], list[list[str]]]]  # (title, header, rows) of a report


def markdown_tables(tables: Tables) -> list[str]:
    """A report's tables as markdown lines (results.md)."""
    lines: list[str] = []
    for title, header, rows in tables:
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    return lines


def print_tables(tables: Tables, console) -> None:
    """A report's tables on a rich console, first column left-aligned, figures right."""
    from rich.table import Table

    for title, header, rows in tables:
        table = Table(title=title, title_justify="left")
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
