"""Scenario files: the library validates, and bad files get errors that point
at FILE:LINE:COLUMN. The history is append-only and in time order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scenarios.model import (
    Broker,
    Fault,
    FaultRecord,
    History,
    Op,
    Param,
    ScenarioError,
    Snapshot,
    load,
    loads,
    parse_seconds,
)

LIBRARY = Path(__file__).resolve().parents[2] / "scenarios" / "library"
POSITIVE = sorted(LIBRARY.glob("*.yaml"))
NEGATIVE = sorted((LIBRARY / "negative").glob("*.yaml"))
ISSUE_LIBRARY = {"failover-basic", "failover-under-load", "failback-preempt", "broker-restart",
                 "node-broker-partition", "standby-rejoin-under-load", "standby-card-full",
                 "active-active-asymmetric", "aging-active-only", "ftp-related-failover",
                 "nat-failover", "rolling-restart"}
BEYOND_THE_ISSUE = {
    "data-link-failover",  # found by chaos (seed 14, netns): FAULT
    "active-hang",  # a hung active fenced when it wakes; a stall nobody takes over (seed 405)
    "active-broker-cut",  # the active's data path forwards through its broker cut
    "active-broker-flap",  # short broker flaps of the active ridden out (cluster.will_grace)
}

TC = """tc: |
  qdisc add dev inside ingress
  filter add dev inside ingress pref 1 protocol ip flower action drop
"""
BASE = """name: t
duration: 10s
cluster:
  nodes:
    a: {priority: 200}
    b: {}
""" + TC + """traffic:
  web: {proto: tcp, count: 10}
faults:
  - {at: 2s, kind: kill, target: active, duration: 3s}
invariants:
  no_broken_flows: {}
"""


def error(text: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        loads(text, "s.yaml")
    return info.value


def position(text: str, needle: str) -> tuple[int, int]:
    """1-based line and column of `needle` ("context|needle": of what follows the bar)."""
    context, _, needle = needle.rpartition("|")
    offset = text.index(context + needle) + len(context)
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


# ---------------------------------------------------------------- the library
def test_the_library_holds_every_scenario_of_the_issue() -> None:
    assert {p.stem for p in POSITIVE} == ISSUE_LIBRARY | BEYOND_THE_ISSUE
    assert {p.stem for p in NEGATIVE} == {"replication-off", "preinstall-off",
                                          "distributed-aging-off", "readiness-gate-off"}


@pytest.mark.parametrize("path", POSITIVE, ids=lambda p: p.stem)
def test_library_scenario_parses_and_expects_to_pass(path: Path) -> None:
    s = load(path)
    assert s.name == path.stem
    assert s.expect.verdict == "pass" and not s.expect.failing
    assert all(vars(s.mechanisms).values())  # every mechanism on
    assert s.invariants and s.traffic and s.faults and s.description
    assert all(f.heal_at(s.duration) <= s.duration for f in s.faults)


@pytest.mark.parametrize("path", NEGATIVE, ids=lambda p: p.stem)
def test_negative_control_switches_one_mechanism_off_and_expects_its_invariant_to_fail(
        path: Path) -> None:
    s = load(path)
    off = [name for name, on in vars(s.mechanisms).items() if not on]
    assert off == [path.stem.removesuffix("-off").replace("-", "_")]
    assert s.expect.verdict == "fail" and s.expect.failing
    assert set(s.expect.failing) <= {i.name for i in s.invariants}


def test_failover_basic_reads_as_written() -> None:
    s = load(LIBRARY / "failover-basic.yaml")
    assert s.cluster.node_names == ("a", "b")
    assert s.cluster.mode == "active-standby" and s.cluster.cluster_key
    assert s.cluster.broker.kind == "embedded"
    (web,) = s.traffic
    assert (web.proto, web.count, web.open_rate, web.packet_rate) == ("tcp", 1000, 200, 0.2)
    assert web.clients == "198.18.0.0/24" and web.server == "198.19.0.1"
    (kill,) = s.faults
    assert (kill.at, kill.kind, kill.target, kill.duration) == (10.0, "kill", "active", 6.0)
    assert {i.name: dict(i.params) for i in s.invariants}["hw_hit_ratio"] == {"min": 0.99}
    assert s.card_of("b").capacity == 2 * 1024 * 1024
    assert "qdisc add dev inside ingress" in s.tc


def test_defaults_are_filled_in() -> None:
    s = loads(BASE, "s.yaml")
    assert s.seed == 0 and s.cluster.name == "ctlab" and not s.cluster.preempt
    assert s.cluster.nodes[1].priority == 100 and s.cluster.nodes[1].card == "default"
    assert s.traffic[0].port == 80 and s.traffic[0].payload == (64, 512)
    assert s.traffic[0].duration is None
    assert s.faults[0].params == ()
    assert s.with_seed(9).seed == 9


def test_fault_params_get_their_defaults_and_units() -> None:
    s = loads(BASE.replace("{at: 2s, kind: kill, target: active, duration: 3s}",
                           "{at: 1.5s, kind: sync_delay, target: b, heal: 4s, "
                           "params: {delay: 250ms}}"), "s.yaml")
    (f,) = s.faults
    assert (f.at, f.duration) == (1.5, 2.5)
    assert f.param("delay") == 0.25 and f.param("jitter") == 0.0


def test_broker_faults_target_the_broker_by_default() -> None:
    s = loads(BASE.replace("kind: kill, target: active", "kind: broker_stop"), "s.yaml")
    assert s.faults[0].target == "broker"


def test_a_bridged_broker_pair() -> None:
    s = loads(BASE.replace("cluster:\n", "cluster:\n  broker: bridged\n"), "s.yaml")
    assert s.cluster.broker == Broker("bridged")


@pytest.mark.parametrize("kind", ["broker_stop", "broker_pause"])
def test_a_broker_outage_may_hit_the_second_broker_of_a_pair(kind: str) -> None:
    """target broker2: the second broker of a bridged pair (which broker a
    scenario runs on is known only at run time: --broker may override it, and a
    backend without a second broker records the fault as not applied)."""
    s = loads(BASE.replace("kind: kill, target: active", f"kind: {kind}, target: broker2"),
              "s.yaml")
    assert s.faults[0].target == "broker2"


def test_broker_url_and_tc_file(tmp_path: Path) -> None:
    (tmp_path / "fw.tc").write_text("qdisc add dev inside ingress\n")
    text = BASE.replace(TC, "tc_file: fw.tc\n").replace(
        "cluster:\n", "cluster:\n  broker: mqtt://lab:secret@198.18.0.1:1883\n")
    (tmp_path / "s.yaml").write_text(text)
    s = load(tmp_path / "s.yaml")
    assert s.cluster.broker.kind == "url" and s.cluster.broker.url.endswith(":1883")
    assert s.tc == "qdisc add dev inside ingress\n"


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(("old", "new", "needle", "message"), [
    ("kind: kill", "kind: kil", "kil,",
     "unknown fault kind 'kil'; known: kill, pause, restart, broker_stop"),
    ("name: t\n", "name: t\nseeed: 3\n", "seeed",
     "unknown key 'seeed' in the scenario; known: name, description, seed"),
    ("    b: {}\n", "    b: {card: big}\n", "big", "unknown card profile 'big'; known: default"),
    ("target: active", "target: c", "c,", "kill: unknown target 'c'; known: a, b, active, standby"),
    ("duration: 3s}", "duration: 9s}", "9s", "heals at 11s, after the run ends at 10s"),
    ("duration: 10s", "duration: ten", "ten", "expected a duration (e.g. 5s, 500ms, 1.5m)"),
    ("{proto: tcp, count: 10}", "{proto: tcp, count: 10, payload: [10, 5]}", "[10, 5]",
     "payload: [10, 5] is an empty range"),
    ("{proto: tcp, count: 10}", "{proto: tcp, count: 10, server: 10.0.0.1}", "10.0.0.1",
     "server: 10.0.0.1 is outside 198.18.0.0/15"),
    ("{proto: tcp, count: 10}", "{proto: tcp, count: 10, asymmetric: true}", "true",
     "asymmetric paths need cluster mode active-active"),
    ("{proto: tcp, count: 10}", "{proto: tcpp, count: 10}", "tcpp",
     "unknown traffic protocol 'tcpp'; known: tcp, udp, icmp, ftp (did you mean 'tcp'?)"),
    ("{proto: tcp, count: 10}", "{proto: tcp, count: 0}", "count: |0",
     "count: 0 is below the minimum 1"),
    ("{proto: tcp, count: 10}", "{proto: icmp, count: 10, port: 7}", "7}",
     "port: ICMP has no ports"),
    ("no_broken_flows: {}", "no_broken_flow: {}", "no_broken_flow",
     "unknown invariant 'no_broken_flow'; known: no_broken_flows"),
    ("no_broken_flows: {}", "hw_hit_ratio: {min: 1.5}", "1.5", "hw_hit_ratio: min: 1.5 is above"),
    ("no_broken_flows: {}", "hw_hit_ratio: {minimum: 0.5}", "minimum",
     "unknown key 'minimum' in hw_hit_ratio; known: min"),
    ("    a: {priority: 200}\n", "    a: {priority: 200}\n    a: {}\n", "a: {}",
     "nodes: duplicate key 'a' (first on line 5)"),
    ("    a: {priority: 200}\n", "    active: {priority: 200}\n", "active:",
     "'active' is reserved"),
    ("    a: {priority: 200}\n", "    broker2: {priority: 200}\n", "broker2:",
     "'broker2' is reserved"),
    ("kind: kill, target: active", "kind: bridge_cut, target: broker2", "broker2",
     "bridge_cut: unknown target 'broker2'; known: broker"),
    ("kind: kill, target: active", "kind: kill, target: broker2", "broker2",
     "kill: unknown target 'broker2'; known: a, b, active, standby"),
    ("name: t\n", "name: t\nsysctl: {nf_conntrack_tcp_timeout_bogus: 3}\n", "3}",
     "sysctl: unknown sysctl net.netfilter.nf_conntrack_tcp_timeout_bogus"),
    ("name: t\n", "name: t\nexpect: {verdict: fail, failing: [convergence]}\n", "convergence",
     "expect: 'convergence' is not among this scenario's invariants"),
    ("{proto: tcp, count: 10}", "{proto: ftp, count: 1, mode: active, nat: true}", "active,",
     "active-mode FTP through NAT needs nf_nat_ftp"),
    ("cluster:\n", "cluster:\n  broker: amqp://x\n", "amqp",
     "broker: expected embedded, mosquitto, bridged or an mqtt:// or mqtts:// URL"),
    ("cluster:\n", "cluster:\n  defer: 5s\n", "5s", "defer: "),
    ("cluster:\n", "cluster:\n  will_grace: 1s\n", "1s", "will_grace: "),
    ("cluster:\n", "cluster:\n  step_down_isolated: 500ms\n", "500ms",
     "step_down_isolated: 0 (never) or at least the nodes' dead_after (0.8 s)"),
    ("cluster:\n", "cluster:\n  quorum: 3\n", "3\n", "quorum: 3 is above the maximum 2"),
    ("    b: {}\n", "    b: {}\n    w: {witness: true}\n", "witness: |true",
     "a witness is a vote in the quorum: set cluster.quorum"),
    ("    a: {priority: 200}\n    b: {}\n", "    a: {witness: true}\n", "    |a: {w",
     "a cluster needs a node that is no witness"),
    ("    b: {}\n", "    b: {witness: yes please}\n", "yes please", "witness: "),
])
def test_errors_point_at_the_offending_value(old: str, new: str, needle: str,
                                             message: str) -> None:
    text = BASE.replace(old, new, 1)
    assert text != BASE
    exc = error(text)
    line, column = position(text, needle)
    assert str(exc).startswith(f"s.yaml:{line}:{column}: "), (str(exc), line, column)
    assert message in exc.message, exc.message


def test_overlapping_faults_on_one_node_are_rejected() -> None:
    text = BASE.replace("invariants:", "  - {at: 3s, kind: pause, target: active}\ninvariants:")
    exc = error(text)
    line, _ = position(text, "{at: 3s")
    assert exc.line == line
    assert "pause of active at 3s overlaps the kill at 2s (line 13)" in exc.message


def test_a_tc_error_points_at_its_line_in_the_scenario_file() -> None:
    text = BASE.replace("pref 1 protocol ip flower action drop",
                        "pref 1 protocol ip flower action dorp")
    exc = error(text)
    line, column = position(text, "filter add")
    assert (exc.line, exc.column) == (line, column)
    assert exc.message.startswith("tc: ")


def test_a_tc_file_error_points_into_the_tc_file(tmp_path: Path) -> None:
    (tmp_path / "fw.tc").write_text("# rules\nqdisc add dev inside ingress\nfilter bogus\n")
    (tmp_path / "s.yaml").write_text(BASE.replace(TC, "tc_file: fw.tc\n"))
    with pytest.raises(ScenarioError) as info:
        load(tmp_path / "s.yaml")
    assert str(info.value).startswith(f"{tmp_path / 'fw.tc'}:3:1: tc: ")


def test_yaml_syntax_errors_have_a_position() -> None:
    exc = error("name: t\ncluster: {nodes: [\n")
    assert re.match(r"s\.yaml:\d+:\d+: not YAML: ", str(exc))


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty file"),
    ("- 1\n", "the scenario: expected a mapping"),
    (BASE.replace("duration: 10s\n", ""), "the scenario: missing duration"),
    (BASE.split("invariants:")[0], "invariants: a scenario checks at least one"),
    (BASE.replace(TC, ""), "missing tc"),
])
def test_missing_or_misshapen_sections(text: str, message: str) -> None:
    assert message in error(text).message


def test_unknown_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load(tmp_path / "nope.yaml")


@pytest.mark.parametrize(("raw", "seconds"), [
    (5, 5.0), (0.5, 0.5), ("250ms", 0.25), ("2s", 2.0), ("1.5m", 90.0), ("1h", 3600.0),
    ("-30s", -30.0), ("7", 7.0)])
def test_durations(raw: object, seconds: float) -> None:
    assert parse_seconds(raw) == seconds


@pytest.mark.parametrize("raw", ["5 parsecs", True, None, [1], "nan"])
def test_bad_durations(raw: object) -> None:
    with pytest.raises(ValueError):
        parse_seconds(raw)


def test_params_check_types_and_ranges() -> None:
    assert Param("ratio").parse(0.5) == 0.5
    assert Param("int", lo=0, hi=3).parse(3) == 3
    assert Param("choice", choices=("x", "y")).parse("y") == "y"
    for p, raw in [(Param("ratio"), 2), (Param("int"), 1.5), (Param("bool"), "yes"),
                   (Param("choice", choices=("x",)), "z"), (Param("number"), True)]:
        with pytest.raises(ValueError):
            p.parse(raw)


# ---------------------------------------------------------------- history
def test_history_is_append_only_in_time_order() -> None:
    h = History()
    a = h.invoke("f1", 1.0, "open", {"key": "k"})
    b = h.ok("f1", 1.5, "open")
    assert (a.index, b.index) == (0, 1) and len(h) == 2
    with pytest.raises(ValueError, match="time order"):
        h.info("n", 1.2, "seen")
    with pytest.raises(ValueError):
        Op("maybe", "p", 2.0, "open")
    assert h.ops == (a, b)
    assert [op.index for op in h] == [0, 1]


def test_history_pairs_invocations_with_their_completions() -> None:
    h = History()
    h.invoke("f1", 1.0, "open")
    h.invoke("f2", 1.1, "open")
    h.fail("f2", 2.0, "open")
    h.ok("f1", 2.5, "open")
    h.invoke("f3", 3.0, "open")
    pairs = [(i.process, c.type if c else None) for i, c in h.pairs("open")]
    assert pairs == [("f1", "ok"), ("f2", "fail"), ("f3", None)]


def test_history_round_trips_through_records() -> None:
    h = History()
    h.invoke("f1", 1.0, "open", {"key": "k"})
    h.record_fault(FaultRecord(2.0, "kill", "a", True))
    h.record_fault(FaultRecord(4.0, "kill", "a", False, "heal", "start failed"))
    h.sample(1.0, "a", "hw_pps", 3)
    again = History.from_records(h.to_records())
    assert again.ops == h.ops and again.faults == h.faults and again.samples == h.samples


def test_snapshot_entries_are_read_only() -> None:
    s = Snapshot("a", 9.0, {"k": "ESTABLISHED"})
    with pytest.raises(TypeError):
        s.entries["x"] = "CLOSE"  # type: ignore[index]


def test_fault_heals_at_the_end_without_a_duration() -> None:
    assert Fault(2.0, "kill", "a").heal_at(10.0) == 10.0
    assert Fault(2.0, "kill", "a", 3.0).heal_at(10.0) == 5.0


def test_the_core_modules_are_pure() -> None:
    """No processes, sockets, event loops or clocks in the scenario core."""
    import ast

    forbidden = {"asyncio", "subprocess", "time", "socket", "threading", "aiomqtt"}
    root = LIBRARY.parent
    modules = [root / f"{m}.py" for m in ("model", "traffic", "faults", "report")]
    modules += sorted((root / "invariants").glob("*.py"))
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"


def test_the_documented_example_is_a_valid_scenario() -> None:
    import scenarios.model as model

    doc = model.__doc__ or ""
    block = doc[doc.index("    name: failover-basic"):doc.index("Unknown keys")]
    s = loads("\n".join(line[4:] for line in block.splitlines()), "doc.yaml")
    assert s.card_of("b").capacity == 1000 and s.card("small").insert_latency == 0.001
    assert dict(s.sysctl) == {"nf_conntrack_tcp_timeout_established": 600}
    assert s.sysctl_values().nf_conntrack_tcp_timeout_established == 600


def test_a_witness_is_a_node_that_is_no_candidate() -> None:
    text = BASE.replace("cluster:\n", "cluster:\n  quorum: 2\n").replace(
        "    b: {}\n", "    b: {}\n    w: {witness: true}\n")
    sc = loads(text, "s.yaml")
    assert sc.cluster.quorum == 2 and sc.cluster.node_names == ("a", "b", "w")
    assert sc.cluster.candidates == ("a", "b")
    assert [n.witness for n in sc.cluster.nodes] == [False, False, True]
