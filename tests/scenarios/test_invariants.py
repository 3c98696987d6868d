"""Each invariant on histories where it must pass, fail, and be unknown."""

from __future__ import annotations

from typing import Any

import pytest

from scenarios import report
from scenarios.invariants import (
    FAIL,
    INVARIANTS,
    PASS,
    UNKNOWN,
    Result,
    check,
    check_all,
    compose,
    single_active,
)
from scenarios.model import (
    CLUSTER_PROCESS,
    F_CLOSE,
    F_CT,
    F_EXPIRE,
    F_FAILOVER,
    F_HW_HITS,
    F_OPEN,
    F_PREINSTALL,
    F_ROLES,
    F_SEEN,
    F_SITES,
    F_STALL,
    F_TRANSFER,
    FaultRecord,
    History,
    InvariantSpec,
    Snapshot,
)


def run(name: str, history: History, snapshots: tuple[Snapshot, ...] = (),
        **params: Any) -> Result:
    inv = INVARIANTS[name]
    result = inv.check(history, snapshots, {**inv.defaults(), **params})
    assert result.name == name
    return result


def flows(h: History, n: int, at: float = 1.0) -> None:
    for i in range(n):
        h.invoke(f"f{i}", at, F_OPEN, {"key": f"k{i}"})
    for i in range(n):
        h.ok(f"f{i}", at + 0.1, F_OPEN, {"key": f"k{i}"})


def failover(h: History, start: float, took: float | None, result: str = "ok") -> None:
    h.invoke(CLUSTER_PROCESS, start, F_FAILOVER, {"from": "a"})
    if took is not None:
        getattr(h, result)(CLUSTER_PROCESS, start + took, F_FAILOVER, {"from": "a", "to": "b"})


def closes(h: History, n: int, at: float, broken: frozenset[int] = frozenset()) -> None:
    for i in range(n):
        h.invoke(f"f{i}", at, F_CLOSE, {"key": f"k{i}"})
    for i in sorted(range(n), key=lambda i: i in broken):
        if i in broken:
            h.fail(f"f{i}", at + 5, F_CLOSE, {"key": f"k{i}", "reason": "no ACK"})
        else:
            h.ok(f"f{i}", at + 0.2, F_CLOSE, {"key": f"k{i}"})


def test_registry_names_modules_and_params() -> None:
    assert list(INVARIANTS) == ["no_broken_flows", "failover_time", "preinstalled_ratio",
                                "hw_hit_ratio", "no_premature_aging", "no_resurrected_flows",
                                "convergence", "card_subset", "stable_roles", "single_active"]
    for inv in INVARIANTS.values():
        assert inv.doc and all(p.default is not None for p in inv.params.values())


def test_compose_is_jepsens_priority() -> None:
    assert compose([PASS, PASS]) == PASS
    assert compose([PASS, UNKNOWN]) == UNKNOWN
    assert compose([UNKNOWN, FAIL, PASS]) == FAIL
    assert compose([]) == UNKNOWN
    with pytest.raises(ValueError):
        Result("x", "maybe", "")


# ---------------------------------------------------------------- no_broken_flows
def test_flows_surviving_a_failover_pass() -> None:
    h = History()
    flows(h, 3)
    failover(h, 5.0, 0.3)
    closes(h, 3, 9.0)
    r = run("no_broken_flows", h)
    assert r.verdict == PASS and "3/3 flows" in r.detail and "5.000s" in r.detail


def test_a_flow_broken_after_the_failover_fails() -> None:
    h = History()
    flows(h, 3)
    failover(h, 5.0, 0.3)
    h.info("f1", 5.4, F_STALL, {"key": "k1", "retries": 1})
    h.fail("f1", 16.0, F_TRANSFER, {"key": "k1", "reason": "no ACK after 12 retransmissions"})
    closes(h, 1, 17.0)
    r = run("no_broken_flows", h)
    assert r.verdict == FAIL
    assert "1 broke: f1 (transfer failed at 16.000s: no ACK after 12" in r.detail
    assert run("no_broken_flows", h, min_survival=0.6).verdict == PASS


def test_flows_opened_or_closed_around_the_failover_do_not_count() -> None:
    h = History()
    flows(h, 2)
    closes(h, 1, 2.0)  # f0 closed before the failover
    failover(h, 5.0, 0.3)
    h.invoke("late", 6.0, F_OPEN, {"key": "late"})
    h.fail("late", 9.0, F_OPEN, {"key": "late", "reason": "no answer"})
    r = run("no_broken_flows", h)
    assert r.verdict == PASS and "1/1 flows" in r.detail


def test_a_flow_left_stalled_is_indeterminate() -> None:
    h = History()
    flows(h, 2)
    failover(h, 5.0, 0.3)
    h.info("f1", 5.5, F_STALL, {"key": "k1", "retries": 1})
    r = run("no_broken_flows", h)
    assert r.verdict == UNKNOWN and "1 indeterminate: f1" in r.detail


def test_a_fault_without_failover_is_the_disruption_too() -> None:
    h = History()
    flows(h, 2)
    h.record_fault(FaultRecord(4.0, "broker_stop", "broker", True))
    closes(h, 2, 9.0, broken=frozenset({0}))
    r = run("no_broken_flows", h)
    assert r.verdict == FAIL and "4.000s" in r.detail


@pytest.mark.parametrize("build", ["nothing", "no_disruption", "no_flows_before"])
def test_no_broken_flows_unknown(build: str) -> None:
    h = History()
    if build == "no_disruption":
        flows(h, 2)
    elif build == "no_flows_before":
        failover(h, 0.5, 0.3)
        flows(h, 2)
    assert run("no_broken_flows", h).verdict == UNKNOWN


# ---------------------------------------------------------------- failover_time
def test_failover_within_the_bound_passes() -> None:
    h = History()
    failover(h, 5.0, 0.25)
    r = run("failover_time", h)
    assert r.verdict == PASS and "a→b in 250 ms" in r.detail


def test_slow_failed_or_never_completed_failovers_fail() -> None:
    h = History()
    failover(h, 5.0, 1.5)
    assert run("failover_time", h).verdict == FAIL
    assert run("failover_time", h, max_ms=2000).verdict == PASS
    h = History()
    failover(h, 5.0, 0.2, "fail")
    assert run("failover_time", h).verdict == FAIL
    h = History()
    failover(h, 5.0, None)
    h.info("b", 9.0, F_SEEN, {"key": "k"})  # the run went on for 4 s: it did not complete
    assert run("failover_time", h).verdict == FAIL


def test_an_outage_the_active_came_back_from_is_held_to_the_bound() -> None:
    """A pause of the active that healed before anyone took over: the old
    active forwards again ("resumed"). failover_time holds the outage to its
    bound; it is no failover for the report's failover_ms or stable_roles."""
    h = History()
    h.invoke(CLUSTER_PROCESS, 5.0, F_FAILOVER, {"from": "a"})
    h.ok(CLUSTER_PROCESS, 5.6, F_FAILOVER, {"from": "a", "to": "a", "resumed": True})
    r = run("failover_time", h)
    assert r.verdict == PASS and r.detail == "a resumed in 600 ms (bound 1000 ms)"
    assert run("stable_roles", h).detail == "the active role never moved"
    assert report.metrics(h)["failover_ms"] is None
    failover(h, 9.0, 0.25)
    assert run("failover_time", h).detail == \
        "a resumed in 600 ms, a→b in 250 ms (bound 1000 ms)"
    assert run("stable_roles", h).detail.startswith("1 moves of the active role, 1 begun")
    assert report.metrics(h)["failover_ms"] == 250.0
    h = History()  # a 1.5 s stall nobody took over from: the outage was too long
    h.invoke(CLUSTER_PROCESS, 5.0, F_FAILOVER, {"from": "a"})
    h.ok(CLUSTER_PROCESS, 6.5, F_FAILOVER, {"from": "a", "to": "a", "resumed": True})
    r = run("failover_time", h)
    assert r.verdict == FAIL and r.detail.endswith("a resumed at 5.000s took 1500 ms"), r


def test_failover_time_unknown() -> None:
    assert run("failover_time", History()).verdict == UNKNOWN
    h = History()
    failover(h, 5.0, None)  # the history ends right there: too early to tell
    assert run("failover_time", h).verdict == UNKNOWN


# ---------------------------------------------------------------- ratios
@pytest.mark.parametrize(("name", "f", "value", "verdict"), [
    ("preinstalled_ratio", F_PREINSTALL, {"installed": 995, "eligible": 1000}, PASS),
    ("preinstalled_ratio", F_PREINSTALL, {"installed": 900, "eligible": 1000}, FAIL),
    ("preinstalled_ratio", F_PREINSTALL, {"installed": 0, "eligible": 0}, UNKNOWN),
    ("preinstalled_ratio", F_PREINSTALL, {"installed": 5}, UNKNOWN),
    ("hw_hit_ratio", F_HW_HITS, {"hw": 9950, "sw": 50}, PASS),
    ("hw_hit_ratio", F_HW_HITS, {"hw": 10, "sw": 9990}, FAIL),
    ("hw_hit_ratio", F_HW_HITS, {"hw": 0, "sw": 0}, UNKNOWN),
])
def test_ratios(name: str, f: str, value: dict[str, int], verdict: str) -> None:
    h = History()
    h.info("b", 6.0, f, value)
    assert run(name, h).verdict == verdict
    assert run(name, History()).verdict == UNKNOWN


def test_ratio_threshold_is_a_parameter() -> None:
    h = History()
    h.info("b", 6.0, F_HW_HITS, {"hw": 30, "sw": 70})
    assert run("hw_hit_ratio", h, min=0.25).verdict == PASS


# ---------------------------------------------------------------- no_premature_aging
def aging(expire_at: float, timeout: float | None = 10.0) -> History:
    h = History()
    h.info("a", 1.0, F_SEEN, {"key": "k"})
    h.info("a", 20.0, F_SEEN, {"key": "k"})  # only the active sees traffic
    value: dict[str, Any] = {"key": "k"}
    if timeout is not None:
        value["timeout"] = timeout
    h.info("b", expire_at, F_EXPIRE, value)
    return h


def test_expiry_after_the_cluster_wide_timeout_passes() -> None:
    r = run("no_premature_aging", aging(30.0))
    assert r.verdict == PASS and "1 expiries, none premature" in r.detail


def test_expiry_while_another_member_saw_traffic_fails() -> None:
    r = run("no_premature_aging", aging(25.0))
    assert r.verdict == FAIL and "k expired on b at 25.000s, 5.000s after a saw it" in r.detail
    assert run("no_premature_aging", aging(25.0), slack=6.0).verdict == PASS


def test_no_premature_aging_unknown() -> None:
    assert run("no_premature_aging", History()).verdict == UNKNOWN
    assert run("no_premature_aging", aging(30.0, timeout=None)).verdict == UNKNOWN


# ---------------------------------------------------------------- no_resurrected_flows
def ct(h: History, node: str, t: float, event: str, key: str = "k") -> None:
    h.info(node, t, F_CT, {"event": event, "key": key})


def test_a_destroyed_flow_that_stays_dead_passes() -> None:
    h = History()
    h.invoke("f0", 1.0, F_OPEN, {"key": "k"})
    ct(h, "a", 1.0, "new")
    ct(h, "b", 1.1, "new")
    ct(h, "a", 9.0, "destroy")
    ct(h, "b", 9.1, "destroy")
    h.invoke("f9", 12.0, F_OPEN, {"key": "k"})  # a new SYN with the same tuple
    ct(h, "a", 12.0, "new")
    r = run("no_resurrected_flows", h, (Snapshot("a", 20.0, {"k": "ESTABLISHED"}),))
    assert r.verdict == PASS and "2 destroys" in r.detail


def test_a_late_update_after_a_destroy_fails() -> None:
    h = History()
    ct(h, "b", 1.0, "new")
    ct(h, "b", 9.0, "destroy")
    ct(h, "b", 9.2, "update")
    r = run("no_resurrected_flows", h)
    assert r.verdict == FAIL and "k on b: update at 9.200s after its destroy at 9.000s" \
        in r.detail


def test_a_destroyed_flow_in_a_final_table_fails() -> None:
    h = History()
    ct(h, "b", 1.0, "new")
    ct(h, "b", 9.0, "destroy")
    r = run("no_resurrected_flows", h, (Snapshot("b", 20.0, {"k": "ESTABLISHED"}),))
    assert r.verdict == FAIL and "final table" in r.detail


def test_no_resurrected_flows_unknown_without_events() -> None:
    assert run("no_resurrected_flows", History()).verdict == UNKNOWN


# ---------------------------------------------------------------- convergence
def healed() -> History:
    h = History()
    h.record_fault(FaultRecord(5.0, "kill", "a", True))
    h.record_fault(FaultRecord(10.0, "kill", "a", True, "heal"))
    return h


def test_equal_tables_converge() -> None:
    t = {"k1": "ESTABLISHED", "k2": "TIME_WAIT"}
    r = run("convergence", healed(), (Snapshot("a", 15.0, t), Snapshot("b", 15.0, t),
                                      Snapshot("c", 15.0, {}, alive=False)))
    assert r.verdict == PASS and "2 members agree on 2 entries" in r.detail


def test_different_tables_fail() -> None:
    a = Snapshot("a", 15.0, {"k1": "ESTABLISHED", "k2": "ESTABLISHED"})
    b = Snapshot("b", 15.0, {"k1": "CLOSE", "k3": "ESTABLISHED"})
    r = run("convergence", healed(), (a, b))
    assert r.verdict == FAIL
    assert "1 missing (k2)" in r.detail and "1 extra (k3)" in r.detail
    assert "k1: ESTABLISHED vs CLOSE" in r.detail
    b = Snapshot("b", 15.0, {"k1": "CLOSE", "k2": "ESTABLISHED"})
    assert run("convergence", healed(), (a, b), states=False).verdict == PASS


def test_convergence_unknown() -> None:
    assert run("convergence", History(), (Snapshot("a", 1.0, {}),)).verdict == UNKNOWN
    early = (Snapshot("a", 8.0, {}), Snapshot("b", 15.0, {}))
    r = run("convergence", healed(), early)
    assert r.verdict == UNKNOWN and "before the last heal" in r.detail


# ---------------------------------------------------------------- card_subset
def test_card_entries_inside_conntrack_pass() -> None:
    s = Snapshot("a", 15.0, {"k1": "ESTABLISHED", "k2": "ESTABLISHED"}, frozenset({"k1"}))
    assert run("card_subset", History(), (s,)).verdict == PASS


def test_a_stale_card_entry_fails() -> None:
    s = Snapshot("b", 15.0, {"k1": "ESTABLISHED"}, frozenset({"k1", "k9"}))
    r = run("card_subset", History(), (s,))
    assert r.verdict == FAIL and "b: 1 stale (k9)" in r.detail


def test_card_subset_unknown_without_card_data() -> None:
    assert run("card_subset", History(), (Snapshot("a", 1.0, {}),)).verdict == UNKNOWN
    dead = Snapshot("a", 1.0, {}, frozenset({"k"}), alive=False)
    assert run("card_subset", History(), (dead,)).verdict == UNKNOWN


# ---------------------------------------------------------------- the checker
def test_check_uses_the_scenarios_thresholds_and_defaults() -> None:
    h = History()
    h.info("b", 6.0, F_HW_HITS, {"hw": 90, "sw": 10})
    strict, lax = check([InvariantSpec("hw_hit_ratio"),
                         InvariantSpec("hw_hit_ratio", (("min", 0.8),))], h, ())
    assert (strict.verdict, lax.verdict) == (FAIL, PASS)
    results = check_all(h, ())
    assert [r.name for r in results] == list(INVARIANTS)
    assert compose(r.verdict for r in results) == FAIL


def test_hardware_ratios_are_excused_on_a_node_whose_card_was_faulted() -> None:
    from scenarios.invariants import hw_hit_ratio, preinstalled_ratio
    from scenarios.invariants.faulted import card_faulted
    from scenarios.model import FaultRecord, History

    h = History()
    h.record_fault(FaultRecord(2.0, "card_capacity", "b", True, "inject"))
    h.record_fault(FaultRecord(5.0, "card_capacity", "b", True, "heal"))
    h.info("b", 10.0, "preinstall", {"installed": 0, "eligible": 100})
    h.info("b", 11.0, "hw_hits", {"hw": 1, "sw": 99})
    assert card_faulted(h, "b", 10.0) and not card_faulted(h, "a", 10.0)
    assert not card_faulted(h, "b", 1.0)  # before the fault
    assert not card_faulted(h, "b", 40.0)  # long after its heal
    for inv in (hw_hit_ratio, preinstalled_ratio):
        r = inv.check(h, [], {"min": 0.99})
        assert r.verdict == "unknown" and "excused" in r.detail and "b" in r.detail
    h.info("a", 30.0, "preinstall", {"installed": 10, "eligible": 100})
    r = preinstalled_ratio.check(h, [], {"min": 0.99})
    assert r.verdict == "fail" and "1 excused" in r.detail  # a's low ratio still counts


# ---------------------------------------------------------------- stable_roles
def move(h: History, at: float, old: str, new: str, reason: str) -> None:
    """A change of active that no fault on the active began (the runner's mark)."""
    h.invoke(CLUSTER_PROCESS, at, F_FAILOVER,
             {"from": old, "unprompted": True, "to": new, "reason": reason})
    h.ok(CLUSTER_PROCESS, at + 0.05, F_FAILOVER, {"from": old, "to": new})


def fault(h: History, kind: str, target: str, at: float, healed: float | None) -> None:
    h.record_fault(FaultRecord(at, kind, target, True))
    if healed is not None:
        h.record_fault(FaultRecord(healed, kind, target, True, "heal"))


def test_stable_roles_passes_when_the_role_never_moves() -> None:
    h = History()
    fault(h, "broker_pause", "broker", 5.0, 7.0)
    r = run("stable_roles", h)
    assert r.verdict == PASS and "never moved" in r.detail


def test_stable_roles_accepts_faults_on_the_active_and_preemptions() -> None:
    h = History()
    failover(h, 3.0, 0.1)  # begun by a kill of the active: explained by the runner
    fault(h, "sync_loss", "b", 9.0, 10.0)
    move(h, 11.5, "b", "c", "no live active")  # 1.5 s after the loss on b healed
    move(h, 20.0, "c", "a", "preempting c (priority 200 > 100)")
    r = run("stable_roles", h)
    assert r.verdict == PASS, r
    assert r.detail == ("3 moves of the active role, 1 begun by a fault on the active, "
                        "2 explained by a fault or a preemption")


@pytest.mark.parametrize("kind", ["broker_pause", "broker_stop", "card_insert_fail"])
def test_stable_roles_fails_a_move_that_only_a_broker_or_card_fault_preceded(
        kind: str) -> None:
    h = History()
    fault(h, kind, "broker" if kind.startswith("broker") else "a", 5.0, 7.0)
    move(h, 5.4, "a", "b", "no live active")
    r = run("stable_roles", h)
    assert r.verdict == FAIL
    assert r.detail == ("1 of 1 moves of the active role had no fault or preemption behind "
                        "them: a→b at 5.400s (no live active)")


@pytest.mark.parametrize("kind", ["broker_pause", "broker_stop", "bridge_cut"])
def test_on_a_bridged_pair_a_site_partition_explains_a_move_between_the_sites(
        kind: str) -> None:
    """F_SITES (the runner's, on --broker bridged): a on the first broker, b on
    the second, c on the first. The first broker's outage or a bridge cut is a
    partition between the sites: it explains a→b, not a→c (the same site, the
    same broker: as on one broker); without F_SITES it explains nothing."""
    def history(to: str, sites: bool) -> History:
        h = History()
        fault(h, kind, "broker", 5.0, 8.0)
        move(h, 5.8, "a", to, "no live active")
        if sites:
            h.info(CLUSTER_PROCESS, 20.0, F_SITES, {"a": 1, "b": 2, "c": 1})
        return h
    assert run("stable_roles", history("b", True)).verdict == PASS
    assert run("stable_roles", history("c", True)).verdict == FAIL
    assert run("stable_roles", history("b", False)).verdict == FAIL


def test_stable_roles_slack_bounds_how_long_a_healed_fault_explains() -> None:
    h = History()
    fault(h, "pause", "a", 5.0, 7.0)
    move(h, 9.5, "a", "b", "no live active")
    assert run("stable_roles", h).verdict == FAIL  # 2.5 s after the heal
    assert run("stable_roles", h, slack=3.0).verdict == PASS


# ---------------------------------------------------------------- single_active
def roles(h: History, end: float, mode: str = "active-standby",
          **nodes: list[tuple[float, str]]) -> None:
    """The runner's last op: every node's role timeline (starts are "joining")."""
    h.info(CLUSTER_PROCESS, end, F_ROLES, {"mode": mode, "end": end, "nodes": nodes})


def test_single_active_passes_when_one_member_holds_the_role_at_a_time() -> None:
    h = History()
    fault(h, "kill", "a", 5.0, 6.0)  # a's process dies at 5: its role with it
    roles(h, 20.0, a=[(0.0, "joining"), (0.1, "active"), (6.4, "joining"), (6.9, "standby")],
          b=[(0.0, "joining"), (0.3, "standby"), (5.05, "active")])
    r = run("single_active", h)
    assert r.verdict == PASS and r.detail == "never two actives at once"


def test_single_active_allows_a_split_brain_while_a_fault_keeps_the_members_apart() -> None:
    """a's broker link is cut from 5 s to 8 s: b takes over at 5.8 s, a hears
    b's term 10 ms after the heal. Fenced later than fence_within: a failure."""
    h = History()
    fault(h, "partition_broker", "a", 5.0, 8.0)
    roles(h, 20.0, a=[(0.0, "joining"), (0.1, "active"), (8.01, "standby")],
          b=[(0.0, "joining"), (0.3, "standby"), (5.8, "active")])
    r = run("single_active", h)
    assert r.verdict == PASS, r
    assert r.detail == ("two actives for 2210 ms in all, each window within its bound: "
                        "a+b 5.800-8.010 s (2210 ms, partition_broker→a, ended 10 ms after "
                        "its heal)")
    h = History()
    fault(h, "partition_broker", "a", 5.0, 8.0)
    roles(h, 20.0, a=[(0.0, "joining"), (0.1, "active"), (9.5, "standby")],
          b=[(0.0, "joining"), (0.3, "standby"), (5.8, "active")])
    r = run("single_active", h, fence_within=1.0)
    assert r.verdict == FAIL
    assert r.detail == ("1 of 1 windows with two actives outlasted their bound (handover "
                        "500 ms, fenced within 1000 ms of a fault's heal): a+b 5.800-9.500 s "
                        "(3700 ms, partition_broker→a, ended 1500 ms after its heal); two "
                        "actives for 3700 ms in all")
    assert run("single_active", h).verdict == PASS  # (5 s: a TCP retransmission's backoff)


def test_single_active_leaves_out_the_time_a_paused_member_acts_on_nothing() -> None:
    h = History()
    fault(h, "pause", "a", 5.0, 8.0)
    roles(h, 20.0, a=[(0.0, "joining"), (0.1, "active"), (8.05, "standby")],
          b=[(0.0, "joining"), (0.3, "standby"), (5.8, "active")])
    r = run("single_active", h)
    assert r.verdict == PASS
    assert r.detail.startswith("two actives for 50 ms in all") and "a+b 8.000-8.050 s" in r.detail


def test_single_active_bounds_a_handover_with_no_fault_behind_it() -> None:
    """A preemption: a takes the role back, b steps down when it hears the new
    term. A card fault keeps nobody apart: it explains nothing."""
    h = History()
    roles(h, 20.0, a=[(0.0, "joining"), (0.5, "standby"), (10.0, "active")],
          b=[(0.0, "joining"), (0.2, "active"), (10.2, "standby")])
    r = run("single_active", h)
    assert r.verdict == PASS and "(200 ms, no fault: a handover)" in r.detail
    h = History()
    fault(h, "card_insert_fail", "b", 9.0, 12.0)
    roles(h, 20.0, a=[(0.0, "joining"), (0.5, "standby"), (10.0, "active")],
          b=[(0.0, "joining"), (0.2, "active"), (10.7, "standby")])
    r = run("single_active", h)
    assert r.verdict == FAIL and "(700 ms, no fault: a handover)" in r.detail
    assert run("single_active", h, handover=1.0).verdict == PASS


def test_single_active_a_member_that_never_steps_down_holds_until_the_end() -> None:
    h = History()
    roles(h, 20.0, a=[(0.0, "joining"), (0.1, "active")],
          b=[(0.0, "joining"), (0.3, "standby"), (12.0, "active")])
    r = run("single_active", h)
    assert r.verdict == FAIL and "a+b 12.000-20.000 s (8000 ms" in r.detail


def test_single_active_is_unknown_without_role_logs_or_in_active_active() -> None:
    assert run("single_active", History()).verdict == UNKNOWN
    h = History()
    roles(h, 20.0, mode="active-active", a=[(0.1, "active")], b=[(0.1, "active")])
    r = run("single_active", h)
    assert r.verdict == UNKNOWN and "active-active" in r.detail
    h = History()
    roles(h, 20.0, a=[(0.0, "joining"), (0.1, "standby")])
    assert run("single_active", h).verdict == UNKNOWN


def test_the_windows_with_no_active_run_from_the_first_active_to_the_end() -> None:
    spans = {"a": [(0.1, 6.0), (6.2, 6.5)], "b": [(6.3, 9.0), (12.0, 20.0)], "c": []}
    assert single_active.gaps(spans, 20.0) == [(6.0, 6.2), (9.0, 12.0)]
    assert single_active.gaps(spans, 25.0)[-1] == (20.0, 25.0)
    assert single_active.gaps({"a": []}, 5.0) == []


def test_single_active_reads_a_nodes_role_log_as_the_runner_reports_it() -> None:
    """/state's role log (its repr lines) and the processes' starts."""
    log = [[-0.827, "GateChanged(state='ready', reason='no peer holds state', timed_out=False)"],
           [-0.827, "RoleChanged(old='joining', new='active', term=1, reason='no live active')"],
           [-0.347, "PeerUp(node='c')"],
           [12.305, "RoleChanged(old='joining', new='standby', term=0, reason='b is active')"],
           [13.907, "RoleChanged(old='standby', new='active', term=3, reason='no live active')"],
           [16.9, "RoleChanged(old='active', new='fault', term=3, reason='data port down')"]]
    assert single_active.role_timeline(log, [-1.155, 11.921]) == [
        (-1.155, "joining"), (-0.827, "active"), (11.921, "joining"), (12.305, "standby"),
        (13.907, "active"), (16.9, "fault")]
