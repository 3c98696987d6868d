"""The `ctlab` command: one entry point, one subcommand per job.

    ctlab ct replay CASE... [--json] [--compare]   conntrack engine vs kernel-oracle cases
    ctlab tc [-s] [-j] [-p] -batch FILE            iproute2 tc against an in-memory model
    ctlab bench [ct|datapath|sync|failover|all] [--json]   performance figures (DESIGN.md section 6)
    ctlab node --config FILE                       run a node (node/daemon)
    ctlab broker [--host H] [--port P]             the embedded amqtt broker
    ctlab conntrack -L|-E [--node URL]             conntrack-tools output from a running node
    ctlab run SCENARIO.yaml [--backend B] ...      a scenario end to end (scenarios/run_cli.py)
    ctlab chaos [--duration S] [--seed N] ...      random fault schedules, every invariant
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO


def _sizes(text: str) -> tuple[int, ...]:
    """--entries: a comma-separated list of positive table sizes."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not sizes or min(sizes) < 1 or max(sizes) > 2_000_000:
        raise argparse.ArgumentTypeError(f"sizes must be 1..2000000: {text!r}")
    return sizes


def _grace(text: str) -> float:
    """--will-grace: seconds, within the bench nodes' dead_after (the default)."""
    from node.daemon.config import RoleConfig

    try:
        grace = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= grace <= RoleConfig.dead_after:
        raise argparse.ArgumentTypeError(
            f"must be 0..{RoleConfig.dead_after} (the nodes' dead_after): {text!r}")
    return grace


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ctlab",
        description="A testbed for highly available connection tracking: Linux TC with "
                    "conntrack (act_ct) on an emulated offload card, replicated over MQTT.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    ct = sub.add_parser("ct", help="the conntrack engine")
    ct_sub = ct.add_subparsers(dest="ct_command", metavar="CT_COMMAND", required=True)
    rp = ct_sub.add_parser(
        "replay",
        help="replay kernel-oracle packet cases through the engine",
        description="Replay packet cases in the kernel oracle's case format through the "
                    "conntrack engine with `ct commit` semantics on a virtual clock (sleep "
                    "steps advance it). Prints, per packet, the keys the oracle records "
                    "under \"kernel\". Oracle results files are accepted as cases; with "
                    "--compare the engine's answers are checked against the recorded "
                    "kernel answers.")
    rp.add_argument("cases", nargs="+", metavar="CASE",
                    help="case file, results file, or directory of them")
    rp.add_argument("--json", action="store_true", help="print JSON (the contract shape)")
    rp.add_argument("--compare", action="store_true",
                    help="compare with the kernel answers in results files; exit 1 on any "
                         "difference in ctstate, ctdir or proto_state")
    rp.add_argument("--case", metavar="GLOB", help="only cases whose name matches GLOB")
    rp.add_argument("--packet-gap", type=float, default=None, metavar="SECONDS",
                    help="virtual time between two packets (default 0.05, about what the "
                         "kernel oracle spends per packet)")

    sub.add_parser("tc", add_help=False, help="iproute2 tc against an in-memory model "
                                              "(`ctlab tc -batch FILE`)")

    bench = sub.add_parser("bench", help="measure the performance figures",
                           description="Measure ctlab's performance figures (DESIGN.md §6).")
    bench.add_argument("what", nargs="?", default="all",
                       choices=["ct", "datapath", "sync", "failover", "all"])
    bench.add_argument("--json", action="store_true",
                       help="last line of stdout is one JSON object with the figures")
    bench.add_argument("--seconds", type=float, default=2.0,
                       help="measuring time per figure (default 2)")
    bench.add_argument("--entries", type=_sizes, default=None, metavar="N[,N...]",
                       help="failover: the table sizes to fail over with "
                            "(default 1000,20000,200000)")
    bench.add_argument("--will-grace", type=_grace, default=0.0, metavar="S",
                       help="failover: both nodes' role.will_grace, 0 to dead_after 0.35 "
                            "(default 0: b acts on a's MQTT will at once)")
    from scenarios import run_cli

    run_cli.add_parsers(sub)
    _daemon_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] and args_list[0] in DAEMON_COMMANDS:
        return _daemon_main(args_list)
    if args_list[:1] == ["tc"]:
        from node.tc.cli import main as tc_main

        return tc_main(args_list[1:])
    args = _parser().parse_args(args_list)
    try:
        if args.command == "ct":
            return _ct_replay(args, sys.stdout)
        if args.command in ("run", "chaos"):
            from scenarios import run_cli

            return run_cli.main(args)
        if args.command == "bench":
            from scenarios.bench import run_bench

            return run_bench(args.what, as_json=args.json, seconds=args.seconds,
                             will_grace=args.will_grace,
                             **({"entries": args.entries} if args.entries else {}))
    except BrokenPipeError:
        return 1
    return 2


# ---------------------------------------------------------------- node daemon commands
# `ctlab node | broker | conntrack` live in node/daemon/cli.py (their own argument
# parsing); this block only lists them in `ctlab --help` and hands them their argv.
DAEMON_COMMANDS = {
    "node": "run a node: ctlab node --config FILE",
    "broker": "the embedded amqtt MQTT broker: ctlab broker [--host H] [--port P]",
    "conntrack": "conntrack-tools style -L / -E from a running node's control API",
}


def _daemon_parsers(sub: Any) -> None:
    for name, text in DAEMON_COMMANDS.items():
        sub.add_parser(name, add_help=False, help=text)


def _daemon_main(args_list: list[str]) -> int:
    from node.daemon import cli as daemon_cli

    run = {"node": daemon_cli.node_main, "broker": daemon_cli.broker_main,
           "conntrack": daemon_cli.conntrack_main}[args_list[0]]
    return run(args_list[1:])
# ---------------------------------------------------------------- end of node daemon commands


def _ct_replay(args: argparse.Namespace, out: TextIO) -> int:
    import fnmatch

    from scenarios.casefile import CaseError, load_cases
    from scenarios.replay import differences, replay

    try:
        cases = load_cases(args.cases)
    except (CaseError, OSError) as exc:
        print(f"ctlab ct replay: {exc}", file=sys.stderr)
        return 2
    if args.case:
        cases = [c for c in cases if fnmatch.fnmatch(c.name, args.case)]
    if not cases:
        print("ctlab ct replay: no cases", file=sys.stderr)
        return 2
    from scenarios.replay import PACKET_GAP

    gap = PACKET_GAP if args.packet_gap is None else args.packet_gap
    if gap < 0 or gap > 30:
        print("ctlab ct replay: --packet-gap must be between 0 and 30 seconds", file=sys.stderr)
        return 2
    result = replay(cases, gap)
    if args.json:
        json.dump(result, out, indent=1)
        out.write("\n")
    else:
        for case in result["cases"]:
            out.write(f"{case['name']}\n")
            for pkt in case["packets"]:
                out.write(f"  {_packet_line(pkt)}\n")
    if not args.compare:
        return 0
    return _compare_summary(result, differences, sys.stderr if args.json else out)


def _packet_line(pkt: dict[str, Any]) -> str:
    if "sleep" in pkt:
        return f"sleep {pkt['sleep']}s"
    c = pkt["ctlab"]
    what = f"{pkt.get('from', pkt.get('dir', '?'))} {pkt.get('proto', '')} " \
           f"{pkt.get('flags', pkt.get('type', ''))}".strip()
    state = c["ctstate"] + (f"/{c['ctdir']}" if c["ctdir"] else "")
    extra = " ".join(str(x) for x in (c.get("proto_state"), c.get("timeout")) if x is not None)
    line = f"{what:<16} {state:<22} {extra}"
    if "kernel" in pkt:
        k = pkt["kernel"]
        kstate = k["ctstate"] + (f"/{k['ctdir']}" if k.get("ctdir") else "")
        same = (kstate, k.get("proto_state")) == (state, c.get("proto_state"))
        line += "" if same else f"   kernel: {kstate} {k.get('proto_state') or ''}"
    return line


def _compare_summary(result: dict[str, Any], differences: Any, out: TextIO) -> int:
    total = agree = full = 0
    for case in result["cases"]:
        for i, pkt in enumerate(case["packets"]):
            if "kernel" not in pkt or "ctlab" not in pkt:
                continue
            total += 1
            core = differences(pkt["kernel"], pkt["ctlab"], ("ctstate", "ctdir", "proto_state"))
            rest = differences(pkt["kernel"], pkt["ctlab"])
            agree += not core
            full += not rest
            if rest:
                out.write(f"{case['name']} packet {i}: " + "; ".join(rest) + "\n")
    if not total:
        out.write("no recorded kernel answers to compare with (pass oracle results files)\n")
        return 2
    out.write(f"{total} packets: ctstate/ctdir/proto_state agree on {agree} "
              f"({100 * agree / total:.1f}%), all compared keys on {full} "
              f"({100 * full / total:.1f}%)\n")
    return 0 if agree == total else 1


if __name__ == "__main__":
    raise SystemExit(main())
