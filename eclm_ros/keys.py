"""`eclm-ros keys`: make this machine's key ring and enrol edges, the one step a secure fleet needs.

``init robot1 robot2`` on the cloud machine makes the cloud's key pair and one key pair per edge, each public
half where the other side reads it (``signing.KeyRing``); then copy ``cloud.pub`` and ``edge-<id>.pem`` to
each robot's key ring. Existing keys are kept (run it again to enrol more edges); ``revoke`` stops trusting one.
"""
from __future__ import annotations

import argparse

from .core.signing import KeyRing, SignatureError, key_id, load_public_key


def _listing(ring: KeyRing) -> list[str]:
    lines = [f"key ring {ring.root}"]
    if ring.cloud_public.is_file():
        lines.append(f"  cloud      {ring.cloud_public.name} (key {key_id(load_public_key(ring.cloud_public))}): "
                     f"copy to every robot's key ring; cloud.pem stays here")
    edges = sorted(p.stem for p in ring.edges.glob("*.pem")) if ring.edges.is_dir() else []
    for edge_id in edges:
        here = ring.edge_private(edge_id)
        lines.append(f"  edge {edge_id:<8} enrolled (key {key_id(load_public_key(ring.edge_public(edge_id)))})"
                     + (f"; copy {here.name} to {edge_id}'s key ring" if here.is_file() else ""))
    if len(lines) == 1:
        lines.append("  empty: run 'eclm-ros keys init <edge id> ...'")
    return lines


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="eclm-ros keys", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="", help="the key ring ('' = $ECLM_ROS_KEYS, else ~/.config/eclm_ros/keys"
                        "; the nodes' keys_dir parameter)")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="the cloud's key pair, and enrol the edges named")
    init.add_argument("edge_ids", nargs="*", help="edge ids (a robot's namespace: /robot1 -> robot1)")
    enrol = sub.add_parser("enrol", help="one key pair per edge, its public half trusted by the cloud")
    enrol.add_argument("edge_ids", nargs="+")
    revoke = sub.add_parser("revoke", help="stop trusting an edge's uploads")
    revoke.add_argument("edge_ids", nargs="+")
    sub.add_parser("list", help="what the key ring holds and where each file goes")
    args = parser.parse_args(argv)
    ring = KeyRing.at(args.dir)
    try:
        if args.command == "init":
            print(f"cloud key {'made' if ring.init_cloud() else 'kept'}")
        if args.command in ("init", "enrol"):
            for edge_id in args.edge_ids:
                print(f"edge {edge_id} {'enrolled' if ring.enrol(edge_id) else 'already enrolled'}")
        if args.command == "revoke":
            missing = [e for e in args.edge_ids if not ring.revoke(e)]
            if missing:
                parser.exit(1, f"eclm-ros keys: not enrolled: {', '.join(missing)}\n")
        print("\n".join(_listing(ring)))
    except (SignatureError, OSError) as exc:  # e.g. a damaged key file in the ring
        parser.exit(1, f"eclm-ros keys: {exc}\n")
    return 0
