"""`ctlab run` and `ctlab chaos`: argument parsing and exit codes around
scenarios.runner (DESIGN.md section 5).

    ctlab run SCENARIO.yaml [--backend local|netns|docker] [--broker URL] [--seed N]
              [--out DIR] [--json] [--quiet]
    ctlab chaos [--duration S] [--seed N] [--base SCENARIO.yaml] [--kinds k1,k2 | --mix N]
                [--interval S] [--backend ...] [--broker URL] [--out DIR] [--json] [--quiet]

Exit status: 0 when the run met its expectation (a scenario passes; a
negative control fails as it must; a chaos run has no failing invariant —
those its schedule did not exercise are unknown), 1 when it did not, 2 for
bad input (a bad scenario file, an unknown backend) or a run that could not
start, 130 after Ctrl-C and 143 after SIGTERM. Both stop the run the same
way: its processes are stopped and everything the backend made (namespaces,
links, containers) is removed before the command exits. A second SIGTERM
during that teardown kills the command at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import signal
import sys
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

from scenarios.faults import CHAOS_MIX, CHAOS_MIXES
from scenarios.model import Broker, ScenarioError, load

CHAOS_BASE = Path(__file__).parent / "examples" / "chaos-base.yaml"


def add_parsers(sub: Any) -> None:
    run = sub.add_parser(
        "run", help="run a scenario on a cluster and check its invariants",
        description="Start a cluster (broker and nodes), drive the scenario's traffic "
                    "through it, inject its faults, then check its invariants. Writes "
                    "OUT/report.json and OUT/report.html. Exit 0 iff the run met its "
                    "expectation (pass, or the failure a negative control expects).")
    run.add_argument("scenario", metavar="SCENARIO.yaml")
    _common(run)
    chaos = sub.add_parser(
        "chaos", help="random fault schedules from a seed, every invariant checked",
        description="Run a base scenario with a random fault schedule drawn from --seed "
                    "and check every invariant. The report holds the seed, the schedule "
                    "and the command that replays it (the same seed, duration, base, "
                    "interval and kinds or mix give the same schedule).")
    chaos.add_argument("--duration", type=float, default=30.0, metavar="S",
                       help="seconds of traffic and faults (default 30)")
    chaos.add_argument("--base", default=str(CHAOS_BASE), metavar="SCENARIO.yaml",
                       help="the cluster, traffic and tc to use (default: the shipped "
                            "chaos base, three nodes)")
    kinds = chaos.add_mutually_exclusive_group()
    kinds.add_argument("--kinds", default=None, metavar="K1,K2",
                       help="fault kinds to draw from, in this order (default: the chaos mix)")
    kinds.add_argument("--mix", type=int, default=None, metavar="N",
                       help=f"the chaos mix to draw from (default {CHAOS_MIX}, the newest): a "
                            "new default mix is a new version, so a seed recorded with an "
                            "older one replays with its --mix. Mixes: "
                            + "; ".join(f"{v}: {', '.join(k)}" for v, k in CHAOS_MIXES.items()))
    chaos.add_argument("--interval", type=float, default=5.0, metavar="S",
                       help="mean seconds between two faults (default 5)")
    _common(chaos)


def _common(p: argparse.ArgumentParser) -> None:
    p.epilog = ("Exit status: 0 expectation met, 1 not met, 2 bad input or a run that could "
                "not start. Ctrl-C (130) and SIGTERM (143) stop the run after its teardown: "
                "processes stopped, namespaces, links and containers removed.")
    p.add_argument("--backend", default="local", choices=["local", "netns", "docker"],
                   help="where the cluster runs (default local: processes on loopback)")
    p.add_argument("--broker", default=None, metavar="URL|embedded|mosquitto",
                   help="override the scenario's broker")
    p.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    p.add_argument("--out", default="ctlab-report", metavar="DIR",
                   help="where report.json and report.html go (default ./ctlab-report)")
    p.add_argument("--json", action="store_true", help="print the report JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _broker(text: str) -> Broker:
    if text in ("embedded", "mosquitto"):
        return Broker(text)
    if text.startswith(("mqtt://", "mqtts://")):
        return Broker("url", text)
    raise ScenarioError("--broker", 1, 1, f"{text!r} is not embedded, mosquitto or an "
                        "mqtt:// or mqtts:// URL")


def main(args: argparse.Namespace) -> int:
    from scenarios import faults
    from scenarios.backends import BackendError, make
    from scenarios.runner import RunOptions, run

    try:
        base = load(args.base if args.command == "chaos" else args.scenario)
        if args.broker:
            base = replace(base, cluster=replace(base.cluster, broker=_broker(args.broker)))
        if args.seed is not None:
            base = base.with_seed(args.seed)
        schedule = chaos = None
        if args.command == "chaos":
            kinds = args.kinds.split(",") if args.kinds else None
            mix = CHAOS_MIX if args.mix is None else args.mix
            chaos = _chaos_record(args, base.seed, faults.chaos_kinds(kinds, mix),
                                  None if kinds else mix)
            drawn = faults.chaos_faults(base.seed, args.duration, base.cluster.node_names,
                                        kinds, faults.ChaosOptions(interval=args.interval),
                                        mix)
            base = replace(base.with_faults(drawn), duration=args.duration,
                           name=f"chaos-{base.seed}")
            schedule = faults.plan(base.faults, base.duration)
        backend = make(args.backend)
    except (ScenarioError, OSError, ValueError, BackendError) as exc:
        print(f"ctlab {args.command}: {exc}", file=sys.stderr)
        return 2
    opts = RunOptions(out=Path(args.out), progress=not args.quiet,
                      chaos=args.command == "chaos")
    try:
        rep = asyncio.run(_terminable(run(base, backend, opts, schedule)))
    except BackendError as exc:
        print(f"ctlab {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ctlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"ctlab {args.command}: terminated (SIGTERM), cleaned up", file=sys.stderr)
        if callable(signal.getsignal(signal.SIGTERM)):  # a program that runs us has its own
            signal.raise_signal(signal.SIGTERM)  # handler (the tests' conftest): it decides
        return 128 + signal.SIGTERM
    from scenarios import report

    if chaos is not None:
        rep["chaos"] = chaos
    js, page = report.write(args.out, rep)
    if args.json:
        print(json.dumps(rep, indent=1))
    _summary(rep, js, page)
    return 0 if rep["expectation_met"] else 1


class _Terminated(Exception):
    """The run was cancelled by SIGTERM (and has torn down)."""


async def _terminable(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run `coro` as this task; SIGTERM cancels it, as asyncio.run() does for
    Ctrl-C, so that the backend's teardown runs (a CI job's timeout, `kill`,
    `docker stop` send SIGTERM). The handler is one-shot: a second SIGTERM
    during the teardown finds the default action. The handler SIGTERM had
    before is put back when the run ends."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    previous = signal.getsignal(signal.SIGTERM)  # (put back after: an embedding program's)
    fired = False

    def on_sigterm() -> None:
        nonlocal fired
        fired = True
        loop.remove_signal_handler(signal.SIGTERM)
        task.cancel()
    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await coro
    except asyncio.CancelledError:
        if fired:
            raise _Terminated from None
        raise
    finally:
        if not fired:
            loop.remove_signal_handler(signal.SIGTERM)
        if previous is not None:  # (None: one set from C, which Python cannot put back)
            signal.signal(signal.SIGTERM, previous)


def _chaos_record(args: argparse.Namespace, seed: int, kinds: list[str],
                  mix: int | None) -> dict[str, Any]:
    """What drew a chaos run's schedule, and the command that draws it again
    (report.json "chaos")."""
    argv = ["ctlab", "chaos", "--seed", str(seed), "--duration", f"{args.duration:g}"]
    if args.base != str(CHAOS_BASE):
        argv += ["--base", args.base]
    if args.interval != 5.0:
        argv += ["--interval", f"{args.interval:g}"]
    argv += ["--mix", str(mix)] if mix is not None else ["--kinds", ",".join(kinds)]
    if args.backend != "local":
        argv += ["--backend", args.backend]
    if args.broker:
        argv += ["--broker", args.broker]
    return {"seed": seed, "duration": args.duration, "interval": args.interval,
            "mix": mix, "kinds": kinds, "base": args.base, "replay": shlex.join(argv)}


def _summary(rep: dict[str, Any], js: Path, page: Path) -> None:
    out = sys.stderr
    out.write(f"{rep['scenario']} (seed {rep['seed']}, {rep['backend']}): "
              f"{rep['verdict'].upper()}")
    if rep["expect"]["verdict"] != "pass":
        out.write(f" — expected {rep['expect']['verdict']}: "
                  f"{'met' if rep['expectation_met'] else 'NOT met'}")
    out.write("\n")
    for inv in rep["invariants"]:
        out.write(f"  {inv['verdict']:<8} {inv['name']:<22} {inv['detail']}\n")
    for f in rep["faults"]:
        out.write(f"  fault {f['at']:>7.3f}s {f['kind']} -> {f['target']}: "
                  f"{'applied' if f['applied'] else 'NOT applied'}\n")
    if "chaos" in rep:
        out.write(f"  replay: {rep['chaos']['replay']}\n")
    out.write(f"  report: {js} {page}\n")


__all__ = ["add_parsers", "main"]
