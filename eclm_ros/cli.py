"""`eclm-ros`: one command for training, benchmarks and the demo.

Subcommands are resolved lazily by module path, so `eclm-ros train` does not import ROS and a part that is
not installed yields a clear message instead of an import crash at start-up.
"""
from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "train": ("eclm_ros.training.trainer", "train the cloud and edge models into the checkpoint cache"),
    "bench": ("eclm_ros.bench.run", "run every adaptation method on the same shifting stream, side by side"),
    "bench-edge": ("eclm_ros.bench.edge", "edge runtime speed, update latency and DDS transport figures"),
    "bench-link": ("eclm_ros.bench.link", "the system across a real link (network namespaces, tc-shaped, cut): "
                   "estimates, budgets, encodings, outage, accuracy per phase"),
    "bench-faults": ("eclm_ros.bench.faults", "faults on the node processes (kills, full disk, clock jumps, floods) "
                     "and fuzzing of every network decoder"),
    "bench-fleet": ("eclm_ros.bench.fleet", "one cloud and a growing fleet: cost and memory per edge, update latency, "
                    "updates and accuracy per edge (edge processes over DDS, simulated edges in memory)"),
    "demo": ("eclm_ros.bench.demo", "the whole edge-cloud loop as ROS 2 processes, with a report"),
    "keys": ("eclm_ros.keys", "make this machine's key ring and enrol edges (signed updates and uploads)"),
    "check-model": ("eclm_ros.bench.check_model", "what a model file gives a robot: input, labels, adaptable "
                    "part, update size, speed, and what will not work"),
}


def usage() -> str:
    lines = ["usage: eclm-ros <command> [options]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"eclm-ros: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name = SUBCOMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(f"eclm-ros {name}: not available in this version ({module_name} is missing)", file=sys.stderr)
            return 2
        raise
    return int(module.cli(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
