"""`ctlab run` and `ctlab chaos` end to end: real node processes, a real
broker, real namespaces (the netns backend needs root: CI is root). Every
library scenario (but those in NOT_YET) runs on both backends and must pass,
with every fault really fired; each negative control must fail on the invariant its switched-off
mechanism protects (proof that the checker can fail). The lists are read from
scenarios/library/, so a new scenario cannot be left out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from scenarios.cli import main
from scenarios.faults import chaos_schedule
from scenarios.model import Broker, load
from tests.procs import alive, descendants, netns_names, netns_of_run, sigterm_when

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "scenarios" / "library"
BACKENDS = ["local", "netns"]
# A scenario that is not reliable yet goes here (not run in CI, rather than run
# and excused), with the reason. Empty: ftp-related-failover, the last one, lost
# a data connection opened in the milliseconds before the kill (asynchronous
# replication's window) until it used defer (cluster.defer).
NOT_YET: set[str] = set()
SCENARIOS = sorted(p.stem for p in LIBRARY.glob("*.yaml")
                   if p.stem != "failover-basic" and p.stem not in NOT_YET)
NEGATIVE = sorted(p.stem for p in (LIBRARY / "negative").glob("*.yaml"))

pytestmark = pytest.mark.scenario


def run(args: list[str], out: Path) -> tuple[int, dict[str, Any]]:
    rc = main([*args, "--out", str(out), "--quiet"])
    rep = json.loads((out / "report.json").read_text())
    assert (out / "report.html").stat().st_size > 1000
    return rc, rep


def summary(rep: dict[str, Any]) -> str:
    lines = [f"{rep['scenario']} on {rep['backend']}: {rep['verdict']}"]
    lines += [f"  {i['verdict']:<8} {i['name']}: {i['detail']}" for i in rep["invariants"]]
    lines += [f"  fault {f}" for f in rep["faults"]]
    lines.append(f"  traffic {rep.get('traffic')}")
    return "\n".join(lines)


@pytest.mark.parametrize("backend", BACKENDS)
def test_failover_basic(backend: str, tmp_path: Path) -> None:
    """The issue's bar: every established flow survives the kill, the standby
    takes over in under a second with its card already filled, and at least
    99% of the packets right after the failover hit hardware; in under a
    minute on the local backend."""
    handler = signal.getsignal(signal.SIGTERM)
    rc, rep = run(["run", str(LIBRARY / "failover-basic.yaml"), "--backend", backend], tmp_path)
    assert signal.getsignal(signal.SIGTERM) is handler  # the run's own SIGTERM handler is gone
    m = rep["metrics"]
    assert rc == 0 and rep["verdict"] == "pass", summary(rep)
    assert [(f["kind"], f["applied"], f["healed"]) for f in rep["faults"]] == \
        [("kill", True, True)]  # kill -9, then the node restarted
    assert m["flows_established_before"] == m["flows_survived"] == 1000
    assert m["hw_hit_ratio_after_failover"] >= 0.99
    assert m["preinstalled_ratio_at_failover"] >= 0.99
    assert 0 < m["failover_ms"] < 1000
    # a died with its role (the role logs' times on the run's clock are good to a
    # millisecond or two: the start of each process is read within half a round trip)
    assert m["split_brain"]["total_ms"] < 5, m["split_brain"]
    # and nobody held it from the kill to b's takeover (a will: at once)
    assert len(m["no_active"]["windows"]) == 1 and 0 < m["no_active"]["total_ms"] < 1000, m
    if backend == "local":
        assert rep["duration"] < 60, rep["duration"]
    # the wall time of each phase, in order: the run phase is the scenario's 22 s
    phases = rep["phases"]
    assert list(phases) == ["setup", "run", "final", "quiesce", "check", "teardown", "report"]
    assert 22.0 <= phases["run"] < 23.0, phases
    assert abs(sum(phases.values()) - phases["report"] - rep["duration"]) < 0.5, phases


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cut_between_the_sites_brokers_splits_a_bridged_pair(backend: str,
                                                               tmp_path: Path) -> None:
    """scenarios/examples/bridge-cut.yaml (`broker: bridged`: a on one Mosquitto, b
    on another bridged to it): the bridge cut for 3 s, both brokers and both
    nodes up. b takes over on a's silence, a keeps the role until the bridge is
    back: single_active measures the split brain, stable_roles takes the site
    partition as the move's reason, and every flow survives the move to b.
    Local: the relay closes the bridge's connection, and Mosquitto reconnects it
    seconds after the heal. Netns: the bridge's packets are dropped silently, its
    connection lives through the cut, and its next retransmission (within a
    second) ends the split brain."""
    rc, rep = run(["run", str(ROOT / "scenarios" / "examples" / "bridge-cut.yaml"),
                   "--backend", backend], tmp_path)
    m = rep["metrics"]
    assert rc == 0 and rep["verdict"] == "pass", summary(rep)
    assert rep["cluster"]["broker"] == "bridged"
    assert {n: v["site"] for n, v in rep["cluster"]["nodes"].items()} == {"a": 1, "b": 2}
    urls = {n: (tmp_path / "work" / "nodes" / f"{n}.yaml").read_text().split("url: ")[1]
            .split()[0] for n in ("a", "b")}
    assert urls["a"] != urls["b"], urls  # a broker each
    assert [(f["kind"], f["applied"], f["healed"]) for f in rep["faults"]] == \
        [("bridge_cut", True, True)]
    stable = next(i for i in rep["invariants"] if i["name"] == "stable_roles")
    assert "1 explained by a fault" in stable["detail"], stable
    [w] = m["split_brain"]["windows"]  # from b's takeover until a sees b's term
    assert w["nodes"] == ["a", "b"] and 5.0 < w["from"] < 7.0, w
    if backend == "local":
        assert w["to"] > 8.0, w
    else:  # (the heal at 8 s; the window ends when a hears b)
        assert 7.9 < w["to"] < 9.0, w
    assert m["flows_established_before"] == m["flows_survived"] == 600
    assert m["preinstalled_ratio_at_failover"] >= 0.99


def test_a_long_silent_bridge_cut_ends_its_split_brain_soon_after_the_heal(
        tmp_path: Path) -> None:
    """scenarios/examples/bridge-cut-long.yaml on netns: 20 s of silent
    partition between the sites, long enough for the bridge's connection to
    time out and for Mosquitto's in-flight quota for it to fill. The split
    brain must end within seconds of the heal: it lasted to the end of the run
    without bridge_config()'s max_inflight_messages 0 (Mosquitto 2.0.11), and
    8.6 s past the heal without the brokers' retransmission cap."""
    rc, rep = run(["run", str(ROOT / "scenarios" / "examples" / "bridge-cut-long.yaml"),
                   "--backend", "netns"], tmp_path)
    m = rep["metrics"]
    assert rc == 0 and rep["verdict"] == "pass", summary(rep)
    [f] = rep["faults"]
    assert (f["kind"], f["applied"], f["healed"]) == ("bridge_cut", True, True), f
    [w] = m["split_brain"]["windows"]
    assert 5.0 < w["from"] < 7.0 and f["heal_at"] < w["to"] < f["heal_at"] + 3.0, (w, f)
    assert m["flows_established_before"] == m["flows_survived"] == 600


@pytest.mark.parametrize("backend", BACKENDS)
def test_with_a_witness_and_a_quorum_a_bridge_cut_moves_no_role(backend: str,
                                                                 tmp_path: Path) -> None:
    """scenarios/examples/bridge-cut-witness.yaml: bridge-cut.yaml with a witness
    on a's site and quorum 2. b, cut off with one vote of two, may not take the
    role: no split brain, no move, no moment without an active, where the same
    cut without the witness makes two actives (the test above). b's quorum
    history says it lost the quorum for about the cut's 3 s."""
    rc, rep = run(["run", str(ROOT / "scenarios" / "examples" / "bridge-cut-witness.yaml"),
                   "--backend", backend], tmp_path)
    m = rep["metrics"]
    assert rc == 0 and rep["verdict"] == "pass", summary(rep)
    cl = rep["cluster"]
    assert cl["quorum"] == 2 and cl["nodes"]["w"]["witness"] is True
    assert {n: v["site"] for n, v in cl["nodes"].items()} == {"a": 1, "b": 2, "w": 1}
    assert [(f["kind"], f["applied"], f["healed"]) for f in rep["faults"]] == \
        [("bridge_cut", True, True)]
    assert m["split_brain"]["total_ms"] == 0 and m["no_active"]["total_ms"] == 0, m
    stable = next(i for i in rep["invariants"] if i["name"] == "stable_roles")
    assert stable["detail"] == "the active role never moved", stable
    assert rep["nodes"]["w"]["role"] == "witness" and rep["nodes"]["b"]["role"] == "standby"
    history = rep["nodes"]["b"]["quorum"]["history"]
    up = next(i for i, (_, quorate, _) in enumerate(history) if quorate)  # (b started alone)
    assert [h[1:] for h in history[up:]] == [
        [True, "2 heard, 2 needed"], [False, "no quorum: 1 heard, 2 needed"],
        [True, "2 heard, 2 needed"]], history  # lost once, at the cut, and regained
    (t_lost, _, _), (t_back, _, _) = history[up + 1:]
    # the cut's 3 s, less dead_after; on local until Mosquitto remakes the bridge
    assert 2.0 < t_back - t_lost < (7.0 if backend == "local" else 4.0), history
    assert m["flows_established_before"] == m["flows_survived"] == 600


@pytest.mark.parametrize("backend", BACKENDS)
def test_with_a_witness_and_a_quorum_an_active_cut_off_the_broker_steps_down_first(
        backend: str, tmp_path: Path) -> None:
    """scenarios/examples/active-broker-cut-witness.yaml: active-broker-cut with
    a witness and quorum 2. a, cut off the broker, has no quorum and gives the
    role up before b, hearing w, takes over: no split brain (active-broker-cut
    has seconds of it), and no active for a heartbeat interval and a few
    milliseconds (a takeover waits that long after the death)."""
    rc, rep = run(["run", str(ROOT / "scenarios" / "examples" /
                              "active-broker-cut-witness.yaml"), "--backend", backend], tmp_path)
    m = rep["metrics"]
    assert rc == 0 and rep["verdict"] == "pass", summary(rep)
    assert m["split_brain"]["total_ms"] == 0, m["split_brain"]
    [gap] = m["no_active"]["windows"]
    assert 5.0 < gap["from"] < 6.0 and 0.1 <= gap["to"] - gap["from"] < 0.2, gap
    [(_, down)] = [r for r in rep["nodes"]["a"]["roles"] if r[0] > 0 and "new='standby'" in r[1]]
    why = ("not connected to the broker" if backend == "local"  # (the relay closes it)
           else "none of our heartbeats came back for 0.80 s")  # (its packets dropped)
    assert f"reason='no quorum: {why}'" in down, down
    assert rep["nodes"]["b"]["role"] == "active" and rep["nodes"]["w"]["role"] == "witness"
    assert m["flows_established_before"] == m["flows_survived"] == 600
    assert m["preinstalled_ratio_at_failover"] >= 0.99


def test_the_standby_sites_broker_going_down_moves_no_role(tmp_path: Path) -> None:
    """scenarios/examples/standby-site-broker.yaml: on a bridged pair, broker2
    (b's site) stopped for 4 s, then stalled for 2 s. a hears b's will through
    the bridge and keeps the role; b, cut off from everything, takes none;
    afterwards b has caught up, every flow in its card."""
    rc, rep = run(["run", str(ROOT / "scenarios" / "examples" / "standby-site-broker.yaml")],
                  tmp_path)
    assert rc == 0 and rep["verdict"] == "pass", summary(rep)
    assert [(f["kind"], f["target"], f["applied"], f["healed"]) for f in rep["faults"]] == \
        [("broker_stop", "broker2", True, True), ("broker_pause", "broker2", True, True)]
    assert all("second site's mosquitto" in f["detail"] for f in rep["faults"]), rep["faults"]
    a_log = [line for _, line in rep["nodes"]["a"]["roles"]]
    assert "PeerDown(node='b', reason='will', was_active=False)" in a_log, a_log
    assert not any("new='active'" in line for _, line in rep["nodes"]["b"]["roles"])
    assert rep["metrics"]["split_brain"]["total_ms"] == 0
    b = rep["nodes"]["b"]["tables"]
    assert b["conntrack"] == b["card_flows"] == 600, b


def became_active(rep: dict[str, Any]) -> list[tuple[str, str]]:
    """(node, role log line) of every move into the active role, node by node."""
    return [(n, r[1]) for n, v in rep["nodes"].items() for r in v["roles"]
            if "new='active'" in r[1]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", SCENARIOS)
def test_library_scenario_passes(name: str, backend: str, tmp_path: Path) -> None:
    rc, rep = run(["run", str(LIBRARY / f"{name}.yaml"), "--backend", backend], tmp_path)
    assert rep["faults"] and all(f["applied"] and f["healed"] for f in rep["faults"]), \
        summary(rep)
    assert rc == 0 and rep["verdict"] == "pass", summary(rep)
    if name == "broker-restart":  # nobody took over, not even during the stall (SIGSTOP)
        into = became_active(rep)
        assert [n for n, _ in into] == ["a"], into  # a's start only
    if name == "active-hang":  # b took over once; a, woken, was fenced; b's stall absorbed
        assert [n for n, _ in became_active(rep)] == ["a", "b"], summary(rep)
        assert any("new='standby'" in r[1] and "fenced by b" in r[1]
                   for r in rep["nodes"]["a"]["roles"]), rep["nodes"]["a"]["roles"]
        took = next(i["detail"] for i in rep["invariants"] if i["name"] == "failover_time")
        assert took.startswith("a→b in ") and ", b resumed in " in took, took
        # two actives only from a's wake-up (9 s) to its fencing: while stopped it did nothing
        split = rep["metrics"]["split_brain"]
        assert [w["nodes"] for w in split["windows"]] == [["a", "b"]], split
        assert split["windows"][0]["from"] >= 8.95 and split["total_ms"] < 500, split
    if name == "active-broker-cut":  # b took over during the cut; a, back, was fenced
        assert [n for n, _ in became_active(rep)] == ["a", "b"], summary(rep)
        took = next(r[0] for r in rep["nodes"]["b"]["roles"] if "new='active'" in r[1])
        fenced = next(r[0] for r in rep["nodes"]["a"]["roles"] if "fenced by b" in r[1])
        # on the run's clock, the faults' (the cut from 5 s to 8 s): b within
        # dead_after of the cut, a once the cut healed (a reconnect's backoff later)
        assert 4.95 <= took < 6.5 and 7.95 <= fenced < 11.0, (took, fenced)
        split = rep["metrics"]["split_brain"]  # the split brain: b's takeover to a's fencing
        assert split["windows"] == [{"from": took, "to": fenced, "nodes": ["a", "b"]}], split
        took_ms = next(i["detail"] for i in rep["invariants"] if i["name"] == "failover_time")
        assert took_ms.startswith("a→b in "), took_ms  # the switch's move, not the detection
    if name == "active-broker-flap":  # two flaps within will_grace: nobody took over
        assert rep["cluster"]["will_grace"] == 0.6, rep["cluster"]
        assert [n for n, _ in became_active(rep)] == ["a"], summary(rep)
        assert not any(r[1].startswith("PeerDown") for r in rep["nodes"]["b"]["roles"]), \
            rep["nodes"]["b"]["roles"]
        assert [f["target"] for f in rep["faults"]] == ["a", "a"], rep["faults"]
    if name == "ftp-related-failover":  # defer was on and acknowledged (by a, rejoined)
        held = [n["defer"] for n in rep["nodes"].values() if n.get("defer")]
        assert held and any(d["deferred"] > 0 and d["released_acked"] > 0 for d in held), \
            held


# Each negative control runs on one backend, the backends taking turns (two
# each): what it proves, that the checker fails when a mechanism is switched
# off, does not depend on the backend, and every backend's faults and
# mechanisms are run by the library scenarios above. All four on both
# backends took 5.5 minutes of CI; these four runs take under 3.
NEGATIVE_RUNS = [(name, BACKENDS[i % len(BACKENDS)]) for i, name in enumerate(NEGATIVE)]


@pytest.mark.parametrize(("name", "backend"), NEGATIVE_RUNS)
def test_negative_control_fails(name: str, backend: str, tmp_path: Path) -> None:
    rc, rep = run(["run", str(LIBRARY / "negative" / f"{name}.yaml"), "--backend", backend],
                  tmp_path)
    failing = {i["name"] for i in rep["invariants"] if i["verdict"] == "fail"}
    assert rep["verdict"] == "fail", summary(rep)
    assert rep["expect"]["failing"] and set(rep["expect"]["failing"]) <= failing, summary(rep)
    assert all(f["applied"] and f["healed"] for f in rep["faults"]), summary(rep)
    assert rc == 0  # the expectation (this failure) was met


def test_every_library_scenario_is_run() -> None:
    assert len(SCENARIOS) + len(NOT_YET) >= 11 and len(NEGATIVE) == 4
    assert {b for _, b in NEGATIVE_RUNS} == set(BACKENDS)  # each backend fails some
    assert {"replication-off", "preinstall-off", "distributed-aging-off",
            "readiness-gate-off"} == set(NEGATIVE)


def test_chaos_replays_its_schedule_and_breaks_nothing(tmp_path: Path) -> None:
    """Seed 120 of the default mix (4: on one broker, mix 3's draws), 15 s: c's
    card refuses inserts for 3.8 s, then kill -9 of the active (a failover to
    b). Every invariant is
    checked, none left unknown. (A hung active, and a stall shorter than
    dead_after, are the library's active-hang.)"""
    rc, rep = run(["chaos", "--duration", "15", "--seed", "120"], tmp_path)
    nodes = ["a", "b", "c"]
    expected = chaos_schedule(120, 15.0, nodes)
    assert [(s["at"], s["action"], s["kind"]) for s in rep["schedule"]] == \
        [(s.at, s.action, s.kind) for s in expected]  # the seed replays the schedule
    assert [(f.kind, f.target) for f in expected if f.action == "inject"] == \
        [("card_insert_fail", "c"), ("kill", "active")]
    assert rep["chaos"]["mix"] == 4 and rep["chaos"]["replay"] == \
        "ctlab chaos --seed 120 --duration 15 --mix 4"
    assert rep["seed"] == 120 and len(rep["invariants"]) == 10  # every invariant checked
    took = next(i for i in rep["invariants"] if i["name"] == "failover_time")
    assert took["detail"].startswith("a→b in "), summary(rep)
    assert not [i["name"] for i in rep["invariants"] if i["verdict"] == "unknown"], summary(rep)
    assert rep["faults"] and all(f["applied"] and f["healed"] for f in rep["faults"]), summary(rep)
    assert rep["verdict"] != "fail" and rc == 0, summary(rep)


def preinstall_off_base(tmp_path: Path, seconds: int) -> Path:
    """A small chaos base (two nodes, 100 TCP flows) whose standby's card
    pre-install is off: a run that kills the active fails preinstalled_ratio."""
    base = tmp_path / "base.yaml"
    base.write_text(f"""
duration: {seconds}s
cluster:
  nodes: {{a: {{priority: 200}}, b: {{priority: 100}}}}
tc_file: {LIBRARY / "firewall.tc"}
traffic:
  web: {{proto: tcp, count: 100, open_rate: 200, packet_rate: 1, payload: [64, 256]}}
invariants: {{preinstalled_ratio: {{min: 0.99}}}}
mechanisms: {{preinstall: off}}
""")
    return base


def test_a_chaos_campaign_runs_each_seed_and_indexes_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`ctlab chaos --runs 2`: seeds 1 and 2, each report in OUT/seed-<n>/, an
    index of both, each run on a backend and a Mosquitto of its own (the
    second run's broker once listened on the first run's port, and its nodes
    never found it). The base has the standby's card pre-install switched off:
    seed 1's kill of the active finds b's card empty (the campaign fails, and
    says how to replay that run); seed 2 draws no fault and passes. With
    --shrink, seed 1 is then shrunk in its directory: its one fault stays (the
    run without it passes), and the index names OUT/seed-1/shrunk.yaml."""
    base = preinstall_off_base(tmp_path, 10)
    out = tmp_path / "out"
    kinds = "kill,sync_loss,broker_pause"
    rc = main(["chaos", "--runs", "2", "--seed", "1", "--duration", "10", "--base", str(base),
               "--kinds", kinds, "--broker", "mosquitto", "--out", str(out), "--quiet",
               "--json", "--shrink"])
    std = capsys.readouterr()
    err = std.err
    index = json.loads((out / "index.json").read_text())
    assert json.loads(std.out) == index  # --json: one document, the index
    rows = {r["seed"]: r for r in index["runs"]}
    assert list(rows) == [1, 2], err
    assert rows[1]["verdict"] == "fail" and "preinstalled_ratio" in rows[1]["failing"], err
    assert [(f["kind"], f["target"], f["applied"]) for f in rows[1]["faults"]] == \
        [("kill", "a", True)]  # drawn on the role "active", fired on the node that had it
    assert rows[2]["faults"] == [] and rows[2]["expectation_met"], err
    assert index["verdicts"]["fail"] == 1 and rc == 1
    cov = index["coverage"]  # seed 1's kill is the campaign's one failover
    assert (cov["runs"], cov["failovers"], cov["faults_applied"]) == (2, 1, {"kill": 1}), err
    assert "coverage: failovers in 1 of 2 runs" in err
    replay = f"ctlab chaos --seed 1 --duration 10 --base {base} --kinds {kinds} " \
        "--broker mosquitto"
    assert rows[1]["replay"] == replay and f"failed: {replay}" in err
    for seed in (1, 2):
        rep = json.loads((out / f"seed-{seed}" / "report.json").read_text())
        assert rep["seed"] == seed and rep["chaos"]["replay"] == rows[seed]["replay"]
        assert rows[seed]["report"] == f"seed-{seed}/report.html"
    page = (out / "index.html").read_text()
    assert '<a href="seed-1/report.html">1</a>' in page and "2 runs, 1 failed" in page
    assert "[1/2] seed 1: FAIL (kill->a" in err and "[2/2] seed 2: " in err
    shrunk = json.loads((out / "seed-1" / "shrink.json").read_text())
    assert (shrunk["from"], shrunk["to"], shrunk["runs"], shrunk["minimal"]) == \
        (1, 1, 1, True), err
    assert shrunk["attempts"][0]["faults"] == 0 and shrunk["attempts"][0]["verdict"] != "fail"
    assert rows[1]["shrunk"] == {"scenario": "seed-1/shrunk.yaml", "to": 1, "minimal": True,
                                 "faults": shrunk["faults"]} and "shrunk" not in rows[2]
    assert [(f.kind, f.target) for f in load(out / "seed-1" / "shrunk.yaml").faults] == \
        [("kill", "active")]
    assert (out / "seed-1" / "shrink" / "run-1" / "report.html").exists()
    assert 'shrunk to 1 of 1 faults: <a href="seed-1/shrunk.yaml">' in page
    assert "shrinking seed-1, the first failed run:" in err
    assert f"shrunk to 1 faults: ctlab run {out / 'seed-1' / 'shrunk.yaml'}" in err


def test_chaos_shrinks_a_failing_schedule_to_the_fault_that_matters(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`ctlab chaos --shrink`: seed 17 draws a sync delay on b, duplicated sync
    messages from a, then kill -9 of the active. With the standby's card
    pre-install off, the failover finds b's card empty. Shrinking leaves the
    kill alone (runs: without the first two faults it still fails; without the
    kill it passes), and OUT/shrunk.yaml replays it with `ctlab run`."""
    base = preinstall_off_base(tmp_path, 9)
    out = tmp_path / "out"
    rc = main(["chaos", "--seed", "17", "--duration", "9", "--interval", "1", "--base", str(base),
               "--kinds", "sync_dup,kill,sync_delay,card_capacity", "--shrink",
               "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    assert [f["kind"] for f in rep["faults"]] == ["sync_delay", "sync_dup", "kill"], err
    assert rc == 1 and rep["verdict"] == "fail", err
    shrunk = json.loads((out / "shrink.json").read_text())
    assert (shrunk["from"], shrunk["to"], shrunk["runs"], shrunk["minimal"]) == \
        (3, 1, 2, True), err
    assert [(f["kind"], f["target"]) for f in shrunk["faults"]] == [("kill", "active")]
    assert [(a["faults"], a["verdict"]) for a in shrunk["attempts"]] == \
        [(1, "fail"), (0, shrunk["attempts"][1]["verdict"])] and \
        shrunk["attempts"][1]["verdict"] != "fail", err
    assert "preinstalled_ratio" in shrunk["attempts"][0]["failing"]
    for k in (1, 2):
        assert (out / "shrink" / f"run-{k}" / "report.html").exists()
    assert "shrunk: 3 faults -> 1 in 2 runs: kill->active at 5.389s" in err
    assert f"replay: ctlab run {out / 'shrunk.yaml'}" in err
    sc = load(out / "shrunk.yaml")
    assert [(f.kind, f.target, f.at) for f in sc.faults] == [("kill", "active", 5.389)]
    assert sc.seed == 17 and sc.duration == 9.0 and not sc.mechanisms.preinstall


def test_a_cluster_that_does_not_come_up_is_a_clear_startup_error(tmp_path: Path) -> None:
    """A broker URL where nothing listens: a never becomes active. The run
    ends with StartupError (`ctlab run` and `chaos`: exit 2 and the message,
    not a traceback), naming the node logs, and leaves no process behind."""
    import asyncio
    import socket

    from scenarios.backends import make
    from scenarios.runner import RunOptions, StartupError
    from scenarios.runner import run as run_scenario

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sc = load(LIBRARY / "failover-basic.yaml").with_faults(())
    sc = replace(sc, cluster=replace(sc.cluster, broker=Broker("url", f"mqtt://127.0.0.1:{port}")))
    before = descendants(os.getpid())
    with pytest.raises(StartupError, match=r"a did not become active in 1.5s \(node logs: "):
        asyncio.run(run_scenario(sc, make("local"), RunOptions(out=tmp_path, startup=1.5,
                                                               progress=False)))
    assert (tmp_path / "work" / "logs" / "a.log").exists()
    assert descendants(os.getpid()) - before == set()  # a (started: its log) is gone


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_stops_the_run_and_removes_what_it_made(backend: str, tmp_path: Path) -> None:
    """`ctlab run` killed with SIGTERM (a CI timeout, `kill`) in the middle of
    its run: it exits 143 within seconds, having stopped its broker and nodes
    and removed its namespaces and links."""
    logs = tmp_path / "work" / "logs"

    def ready(pid: int) -> set[str] | bool:  # both nodes started (the namespaces made)
        up = (logs / "a.log").exists() and (logs / "b.log").exists()
        return up and (netns_of_run(pid) if backend == "netns" else True)
    t = sigterm_when([sys.executable, "-m", "scenarios.cli", "run",
                      str(LIBRARY / "failover-basic.yaml"), "--backend", backend,
                      "--out", str(tmp_path), "--quiet"], ready)
    assert t.returncode == 128 + signal.SIGTERM, t.output
    assert "terminated (SIGTERM), cleaned up" in t.output
    assert len(t.processes) >= 3  # the broker and both nodes (and their wrappers)
    assert not alive(t.processes), alive(t.processes)
    if backend == "netns":
        made: set[str] = t.ready
        assert not made & netns_names()
        hosts = {name.split("-")[0] + "h" for name in made}  # the host end of the sync veth
        links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
        assert not [ln for ln in links.splitlines() if ln.split("@")[0] in hosts], links


def test_sigterm_to_the_test_run_cleans_up_an_in_process_run(tmp_path: Path) -> None:
    """pytest itself killed with SIGTERM (CI's timeout) while a test runs a
    scenario in-process: the run tears down, hands the signal on to the tests'
    conftest, and the session stops as after Ctrl-C, leaving nothing behind."""
    t = sigterm_when(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "--basetemp",
         str(tmp_path / "inner"), f"{Path(__file__)}::test_failover_basic[netns]"],
        lambda pid: len(descendants(pid)) >= 3 and netns_of_run(pid), cwd=ROOT)
    assert "KeyboardInterrupt" in t.output and "signal 15" in t.output, t.output
    assert "terminated (SIGTERM), cleaned up" in t.output, t.output
    assert t.returncode == pytest.ExitCode.INTERRUPTED, t.output
    assert not alive(t.processes), alive(t.processes)
    assert t.ready and not t.ready & netns_names()
