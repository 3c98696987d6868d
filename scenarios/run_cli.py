"""`ctlab run` and `ctlab chaos`: argument parsing and exit codes around
scenarios.runner (DESIGN.md section 5).

    ctlab run SCENARIO.yaml [--backend local|netns|docker] [--broker URL] [--seed N]
              [--out DIR] [--json] [--quiet]
    ctlab chaos [--duration S] [--seed N] [--base SCENARIO.yaml] [--kinds k1,k2 | --mix N]
                [--interval S] [--runs N] [--shrink [--shrink-runs N] [--shrink-tries K]]
                [--backend ...] [--broker URL] [--out DIR] [--json] [--quiet]

Exit status: 0 when the run met its expectation (a scenario passes; a
negative control fails as it must; a chaos run has no failing invariant —
those its schedule did not exercise are unknown), 1 when it did not, 2 for
bad input (a bad scenario file, an unknown backend) or a run that could not
start, 130 after Ctrl-C and 143 after SIGTERM. Both stop the run the same
way: its processes are stopped and everything the backend made (namespaces,
links, containers) is removed before the command exits. A second SIGTERM
during that teardown kills the command at once. A campaign (`ctlab chaos
--runs N`) exits 1 if any of its runs did not meet its expectation; a run
that cannot start or is stopped ends it, with that run's status. With
--shrink, a campaign shrinks its first failed run, in that run's directory.
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

from scenarios import faults
from scenarios.faults import CHAOS_MIX, CHAOS_MIXES, FaultStep
from scenarios.model import BROKER_KINDS, Broker, Fault, Scenario, ScenarioError, load

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
                            + "; ".join(f"{v}: {m.describe()}" for v, m in CHAOS_MIXES.items()))
    chaos.add_argument("--interval", type=float, default=5.0, metavar="S",
                       help="mean seconds between two faults (default 5)")
    chaos.add_argument("--shrink", action="store_true",
                       help="if the run fails, run it again with parts of its schedule left "
                            "out, and write the smallest schedule that still fails as "
                            "OUT/shrunk.yaml, a scenario `ctlab run` replays (its runs' "
                            "reports go in OUT/shrink/); with --runs, the campaign's first "
                            "failed run is shrunk, in OUT/seed-<n>/")
    chaos.add_argument("--shrink-runs", type=_positive, default=30, metavar="N",
                       help="at most N runs to shrink with, retries included (default 30)")
    chaos.add_argument("--shrink-tries", type=_positive, default=1, metavar="K",
                       help="run each shrinking candidate up to K times; it fails if any "
                            "run fails (for a failure that shows only sometimes; default 1)")
    chaos.add_argument("--runs", type=_positive, default=1, metavar="N",
                       help="a campaign: N runs, seeds SEED to SEED+N-1, each report in "
                            "OUT/seed-<n>/ and an index of them in OUT/index.html and "
                            "index.json (exit 1 if any run fails)")
    _common(chaos)


def _common(p: argparse.ArgumentParser) -> None:
    p.epilog = ("Exit status: 0 expectation met, 1 not met, 2 bad input or a run that could "
                "not start. Ctrl-C (130) and SIGTERM (143) stop the run after its teardown: "
                "processes stopped, namespaces, links and containers removed.")
    p.add_argument("--backend", default="local", choices=["local", "netns", "docker"],
                   help="where the cluster runs (default local: processes on loopback)")
    p.add_argument("--broker", default=None, metavar="URL|embedded|mosquitto|bridged",
                   help="override the scenario's broker (bridged: two Mosquittos, bridged, "
                        "one per site; local backend)")
    p.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    p.add_argument("--out", default="ctlab-report", metavar="DIR",
                   help="where report.json and report.html go (default ./ctlab-report)")
    p.add_argument("--json", action="store_true", help="print the report JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return n


def _broker(text: str) -> Broker:
    if text in BROKER_KINDS:
        return Broker(text)
    if text.startswith(("mqtt://", "mqtts://")):
        return Broker("url", text)
    raise ScenarioError("--broker", 1, 1, f"{text!r} is not embedded, mosquitto, bridged or "
                        "an mqtt:// or mqtts:// URL")


def main(args: argparse.Namespace) -> int:
    from scenarios.backends import BackendError, make

    runs = getattr(args, "runs", 1)
    try:
        base = load(args.base if args.command == "chaos" else args.scenario)
        if args.broker:
            base = replace(base, cluster=replace(base.cluster, broker=_broker(args.broker)))
        if args.seed is not None:
            base = base.with_seed(args.seed)
        prepared = [_prepare(args, base.with_seed(base.seed + i)) for i in range(runs)]
        # (a bad backend is bad input; each run gets a backend of its own)
        make(args.backend).check_broker(base.cluster.broker.kind)
    except (ScenarioError, OSError, ValueError, BackendError) as exc:
        print(f"ctlab {args.command}: {exc}", file=sys.stderr)
        return 2
    if runs == 1:
        rep = _run_one(args, *prepared[0], Path(args.out))
        if isinstance(rep, int):
            return rep
        _summary(rep, *_write(args, rep, Path(args.out)))
        if getattr(args, "shrink", False) and rep["verdict"] == "fail":
            got = _shrink(args, prepared[0], Path(args.out))
            return got if isinstance(got, int) else 1
        return 0 if rep["expectation_met"] else 1
    return _campaign(args, prepared)


Prepared = tuple[Scenario, tuple[FaultStep, ...] | None, dict[str, Any] | None]


def _shrink(args: argparse.Namespace, prepared: Prepared, out: Path) -> dict[str, Any] | int:
    """`ctlab chaos --shrink` after a failed run (its report in `out`):
    scenarios.shrink over its schedule, each run's report in
    out/shrink/run-<k>/, the result in out/shrunk.yaml and out/shrink.json.
    Returns what shrink.json holds, or the exit status of a shrinking run
    that could not start or was stopped."""
    from scenarios import invariants, report
    from scenarios.shrink import scenario_text, shrink, write_scenario

    sc, _schedule, chaos = prepared
    made: list[dict[str, Any]] = []

    class _Stop(Exception):
        def __init__(self, status: int) -> None:
            self.status = status

    def fails(candidate: tuple[Fault, ...]) -> bool:
        sub = out / "shrink" / f"run-{len(made) + 1}"
        trial = sc.with_faults(candidate)
        rep = _run_one(args, trial, faults.plan(trial.faults, trial.duration),
                       None, sub)  # (not the seed's schedule: no replay command)
        if isinstance(rep, int):
            raise _Stop(rep)
        report.write(sub, rep)
        failing = report.invariants_with(rep, "fail")
        made.append({"faults": len(candidate), "verdict": rep["verdict"], "failing": failing,
                     "report": str(sub.relative_to(out) / "report.html")})
        sys.stderr.write(f"  shrink run {len(made)}: {len(candidate)} of {len(sc.faults)} "
                         f"faults: {rep['verdict'].upper()}"
                         + (f" ({', '.join(failing)})" if failing else "") + "\n")
        return bool(rep["verdict"] == "fail")

    try:
        got = shrink(sc.faults, fails, args.shrink_runs, args.shrink_tries)
    except _Stop as stop:
        return stop.status
    replay = (chaos or {}).get("replay", "")
    how = "1-minimal" if got.minimal else "the run budget ran out"
    note = (f"Shrunk by ctlab chaos --shrink from {len(sc.faults)} faults to "
            f"{len(got.faults)} in {got.runs} runs ({how}); the original run: {replay}")
    path = write_scenario(out / "shrunk.yaml", scenario_text(
        Path(args.base), sc, got.faults, list(invariants.INVARIANTS), note, args.broker))
    result = {
        "from": len(sc.faults), "to": len(got.faults), "runs": got.runs,
        "minimal": got.minimal, "scenario": path.name,
        "faults": [{"at": f.at, "kind": f.kind, "target": f.target, "duration": f.duration,
                    "params": dict(f.params)} for f in got.faults],
        "attempts": made}
    (out / "shrink.json").write_text(report.to_json(result), encoding="utf-8")
    sys.stderr.write(f"shrunk: {len(sc.faults)} faults -> {len(got.faults)} in {got.runs} "
                     f"runs{'' if got.minimal else ' (budget spent: not 1-minimal)'}: "
                     + (", ".join(f"{f.kind}->{f.target} at {f.at:g}s" for f in got.faults)
                        or "no fault (the run fails without any)")
                     + f"\n  replay: ctlab run {path}\n")
    return result


def _prepare(args: argparse.Namespace, base: Scenario) -> Prepared:
    """The scenario to run, its schedule and, for chaos, the record of its draw."""
    if args.command != "chaos":
        return base, None, None
    kinds = args.kinds.split(",") if args.kinds else None
    mix = CHAOS_MIX if args.mix is None else args.mix
    bridged = base.cluster.broker.kind == "bridged"
    chaos = _chaos_record(args, base.seed, faults.chaos_kinds(kinds, mix, bridged),
                          None if kinds else mix)
    drawn = faults.chaos_faults(base.seed, args.duration, base.cluster.node_names, kinds,
                                faults.ChaosOptions(interval=args.interval), mix,
                                bridged=bridged)
    base = replace(base.with_faults(drawn), duration=args.duration, name=f"chaos-{base.seed}")
    return base, faults.plan(base.faults, base.duration), chaos


def _run_one(args: argparse.Namespace, sc: Scenario,
             schedule: tuple[FaultStep, ...] | None, chaos: dict[str, Any] | None,
             out: Path) -> dict[str, Any] | int:
    """One run, on a backend of its own (a backend holds one run's ports,
    broker and processes): its report, or the exit status it ended the
    command with."""
    from scenarios.backends import BackendError, make
    from scenarios.runner import RunOptions, StartupError, run

    opts = RunOptions(out=out, progress=not args.quiet, chaos=args.command == "chaos")
    try:
        rep = asyncio.run(_terminable(run(sc, make(args.backend), opts, schedule)))
    except (BackendError, StartupError) as exc:
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
    if chaos is not None:
        rep["chaos"] = chaos
    return rep


def _write(args: argparse.Namespace, rep: dict[str, Any], out: Path) -> tuple[Path, Path]:
    from scenarios import report

    js, page = report.write(out, rep)
    if args.json:
        print(json.dumps(rep, indent=1))
    return js, page


def _campaign(args: argparse.Namespace, prepared: list[Prepared]) -> int:
    """`ctlab chaos --runs N`: the seeds in turn, each report in OUT/seed-<n>/,
    and OUT/index.json and index.html over them (--json prints the index).
    With --shrink, the first failed run is then shrunk in its directory, and
    the index names the schedule found. Exit 1 if any run did not meet its
    expectation; a run that cannot start or is stopped ends the campaign (its
    index then covers the runs done)."""
    from scenarios import report

    out = Path(args.out)
    rows: list[dict[str, Any]] = []
    status = 0
    for i, (sc, schedule, chaos) in enumerate(prepared, 1):
        sub = out / f"seed-{sc.seed}"
        rep = _run_one(args, sc, schedule, chaos, sub)
        if isinstance(rep, int):
            status = rep
            break
        report.write(sub, rep)
        row = report.campaign_row(rep, f"seed-{sc.seed}/report.html")
        rows.append(row)
        sys.stderr.write(f"[{i}/{len(prepared)}] {report.campaign_line(row)}\n")
        if not rep["expectation_met"]:
            status = 1
    js, page = report.write_index(out, rows)
    first = next((i for i, r in enumerate(rows) if r["verdict"] == "fail"), None)
    if getattr(args, "shrink", False) and first is not None and status < 2:
        name = f"seed-{rows[first]['seed']}"
        sys.stderr.write(f"shrinking {name}, the first failed run:\n")
        got = _shrink(args, prepared[first], out / name)
        if isinstance(got, int):
            return got
        rows[first]["shrunk"] = {"scenario": f"{name}/{got['scenario']}", "to": got["to"],
                                 "minimal": got["minimal"], "faults": got["faults"]}
        js, page = report.write_index(out, rows)
    if args.json:  # one JSON document: the index
        print(js.read_text(encoding="utf-8"), end="")
    failed = [r for r in rows if not r["expectation_met"]]
    sys.stderr.write(f"{len(rows)} runs: "
                     + ", ".join(f"{n} {v}"
                                 for v, n in sorted(report.verdict_counts(rows).items()))
                     + f"\n  coverage: {report.coverage_line(report.campaign_coverage(rows))}"
                     + "".join(f"\n  failed: {r['replay']}" for r in failed)
                     + "".join(f"\n  shrunk to {r['shrunk']['to']} faults: ctlab run "
                               f"{out / r['shrunk']['scenario']}" for r in rows if "shrunk" in r)
                     + f"\n  index: {js} {page}\n")
    return status


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
