"""The fault vocabulary and the chaos schedule: deterministic from the seed,
every inject healed before the end, never more than one node down at once."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scenarios.faults import (
    CHAOS_MIX,
    CHAOS_MIXES,
    FAILOVER_KINDS,
    FAULTS,
    ChaosMix,
    ChaosOptions,
    FaultKind,
    FaultStep,
    chaos_faults,
    chaos_kinds,
    chaos_schedule,
    plan,
)
from scenarios.model import ROLE_TARGETS, Fault, loads

VERBS = {"signal", "stop", "start", "broker-stop", "broker-start", "broker-signal", "cut",
         "restore", "impair", "card", "card-reset", "clock"}
ISSUE_FAULTS = {"kill", "pause", "restart", "broker_stop", "partition_broker", "partition_data",
                "sync_loss", "sync_dup", "sync_delay", "card_capacity", "card_insert_fail",
                "clock_skew"}


def test_the_registry_covers_the_issues_fault_list() -> None:
    # beyond the list: a stalled broker, and a cut between the brokers of a bridged pair
    assert set(FAULTS) == ISSUE_FAULTS | {"broker_pause", "bridge_cut"}
    for kind in FAULTS.values():
        assert kind.inject.verb in VERBS and kind.heal.verb in VERBS, kind.name
        assert kind.target in ("node", "broker") and kind.doc
        for _, value in kind.inject.args + kind.heal.args:
            if isinstance(value, str) and value.startswith("$"):
                assert value[1:] in kind.params, (kind.name, value)


def test_kill_pause_and_restart_are_the_signals_they_say() -> None:
    assert (FAULTS["kill"].inject.verb, dict(FAULTS["kill"].inject.args)) == \
        ("signal", {"signal": "SIGKILL"})
    assert dict(FAULTS["pause"].inject.args) == {"signal": "SIGSTOP"}
    assert dict(FAULTS["pause"].heal.args) == {"signal": "SIGCONT"}
    assert FAULTS["restart"].inject.verb == "stop" and FAULTS["restart"].heal.verb == "start"
    assert (FAULTS["broker_pause"].inject.verb, dict(FAULTS["broker_pause"].inject.args)) == \
        ("broker-signal", {"signal": "SIGSTOP"})
    assert dict(FAULTS["broker_pause"].heal.args) == {"signal": "SIGCONT"}


def test_plan_orders_steps_and_fills_in_parameters() -> None:
    faults = [Fault(2.0, "sync_loss", "b", 3.0, (("rate", 0.2),)),
              Fault(5.0, "kill", "active", None)]
    steps = plan(faults, 10.0)
    assert [(s.at, s.action, s.kind) for s in steps] == [
        (2.0, "inject", "sync_loss"), (5.0, "heal", "sync_loss"), (5.0, "inject", "kill"),
        (10.0, "heal", "kill")]
    assert steps[0].args == (("link", "sync"), ("loss", 0.2))
    assert steps[0].fault == steps[1].fault == 0 and steps[3].fault == 1


def test_scenario_faults_plan_with_their_defaults() -> None:
    s = loads("""duration: 10s
cluster: {nodes: {a: {}, b: {}}}
tc: "qdisc add dev inside ingress"
faults:
  - {at: 1s, kind: card_insert_fail, target: b, duration: 2s}
  - {at: 4s, kind: clock_skew, target: a, duration: 2s, params: {offset: -5s}}
invariants: {card_subset: {}}
""", "s.yaml")
    steps = plan(s.faults, s.duration)
    assert steps[0].verb == "card" and dict(steps[0].args) == {"fail_next": 0, "fail_all": True}
    assert dict(steps[2].args) == {"offset": -5.0}
    assert dict(steps[3].args) == {"offset": 0.0}


def test_chaos_is_deterministic_from_the_seed() -> None:
    a = chaos_schedule(7, 120.0, ["a", "b", "c"])
    assert a == chaos_schedule(7, 120.0, ["a", "b", "c"])
    assert a != chaos_schedule(8, 120.0, ["a", "b", "c"])
    assert len(a) >= 10 and len({s.kind for s in a}) >= 5


# Schedules `ctlab chaos` drew before its mixes were versioned (2026-11-28):
# the seeds the notes, the README and CI name. (at, kind, target, duration, params)
RECORDED = {
    (5, 20.0): [(6.876, "partition_data", "standby", 0.631, ()),
                (10.01, "kill", "a", 4.554, ())],
    (7, 25.0): [(4.457, "card_insert_fail", "b", 3.429, (("count", 0), ("all", True))),
                (8.295, "partition_data", "standby", 0.761, ()),
                (11.835, "broker_stop", "broker", 2.451, ())],
    (14, 30.0): [(3.565, "sync_loss", "c", 4.732, (("rate", 0.118),)),
                 (5.042, "card_capacity", "c", 2.524, (("capacity", 100),)),
                 (10.806, "pause", "active", 3.999, ()),
                 (16.917, "sync_loss", "c", 4.488, (("rate", 0.195),)),
                 (21.99, "partition_data", "b", 2.01, ())],
}


@pytest.mark.parametrize(("seed", "duration"), sorted(RECORDED))
def test_mix_1_replays_the_seeds_recorded_before_the_mixes(seed: int, duration: float) -> None:
    drawn = chaos_faults(seed, duration, ["a", "b", "c"], mix=1)
    assert [(f.at, f.kind, f.target, f.duration, f.params) for f in drawn] == \
        RECORDED[(seed, duration)]
    # the kinds of mix 1, given in its order, are the same draw
    assert chaos_faults(seed, duration, ["a", "b", "c"], CHAOS_MIXES[1].kinds) == drawn


def test_each_node_outage_says_what_it_does_to_the_node_and_its_role() -> None:
    """The runner and mix 3 read these: which node is down, which outage the
    active lives through (a short one "resumed"), which one fails over, and
    which leaves the active's data path forwarding."""
    table = {name: (k.outage.process, k.outage.survivable, k.outage.fails_over,
                    k.outage.forwards)
             for name, k in FAULTS.items() if k.outage is not None}
    assert table == {"kill": (True, False, True, False), "restart": (True, False, True, False),
                     "pause": (True, True, True, False),
                     "partition_broker": (False, True, True, True),
                     "partition_data": (False, True, False, False)}
    assert FAILOVER_KINDS == ("kill", "partition_broker", "pause", "restart")
    for kind in FAULTS.values():  # an outage is a disruptive node fault
        assert kind.outage is None or (kind.disruptive and kind.target == "node")
    broker = FAULTS["broker_stop"]
    with pytest.raises(ValueError, match="broker_stop: an outage is a disruptive node fault"):
        FaultKind(broker.name, broker.target, broker.resource, broker.inject, broker.heal,
                  broker.doc, {}, True, FAULTS["kill"].outage)
    kill = FAULTS["kill"]  # and a disruptive node fault says which outage it is
    with pytest.raises(ValueError, match="kill: a disruptive node fault needs its outage"):
        FaultKind(kill.name, kill.target, kill.resource, kill.inject, kill.heal, kill.doc, {},
                  True, None)


def test_the_chaos_mixes_are_an_explicit_versioned_registry() -> None:
    assert CHAOS_MIX == max(CHAOS_MIXES) == 4
    for version, mix in CHAOS_MIXES.items():
        assert mix.kinds and set(mix.kinds) <= set(FAULTS), version
        assert "clock_skew" not in mix.kinds  # only on request: it ages entries early
    assert set(CHAOS_MIXES[2].kinds) == {*CHAOS_MIXES[1].kinds, "broker_pause"}
    assert CHAOS_MIXES[3].kinds == CHAOS_MIXES[2].kinds  # the same kinds, other odds
    assert {k: CHAOS_MIXES[3].weight(k) for k in CHAOS_MIXES[3].kinds if
            CHAOS_MIXES[3].weight(k) != 1} == dict.fromkeys(FAILOVER_KINDS, 2)
    assert CHAOS_MIXES[3].active == 0.5
    assert CHAOS_MIXES[1].active is CHAOS_MIXES[2].active is None and not CHAOS_MIXES[2].weights
    assert chaos_kinds() == list(CHAOS_MIXES[CHAOS_MIX].kinds)
    with pytest.raises(ValueError, match="unknown chaos mix 9; known: 1, 2, 3, 4"):
        chaos_faults(3, 60.0, ["a", "b"], mix=9)
    # the default mix takes the active down (seed 159, 25 s: the chaos run in CI until
    # the library's active-hang took over its pauses)
    drawn = chaos_faults(159, 25.0, ["a", "b", "c"])
    assert drawn == chaos_faults(159, 25.0, ["a", "b", "c"], mix=3) == \
        chaos_faults(159, 25.0, ["a", "b", "c"], mix=4)
    assert [(f.at, f.kind, f.target, f.duration) for f in drawn] == \
        [(5.009, "pause", "active", 4.285), (11.804, "pause", "active", 0.619),
         (16.122, "card_insert_fail", "b", 2.628)]
    # mix 2 still draws what it drew (seed 1, 25 s: the CI run before mix 3)
    assert [(f.at, f.kind, f.target) for f in chaos_faults(1, 25.0, ["a", "b", "c"], mix=2)] == \
        [(3.221, "broker_stop", "broker"), (10.377, "pause", "active"),
         (18.053, "broker_pause", "broker")]


@pytest.mark.parametrize("fields", [
    {"kinds": ()}, {"kinds": ("kill", "kill")}, {"kinds": ("nuke",)},
    {"kinds": ("kill",), "weights": (("pause", 2),)},
    {"kinds": ("kill",), "weights": (("kill", 0),)},
    {"kinds": ("kill",), "active": 1.0}, {"kinds": ("kill",), "active": 0.0}],
    ids=["empty", "twice", "unknown", "weight-outside", "weight-0", "always", "never"])
def test_a_malformed_chaos_mix_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="malformed chaos mix"):
        ChaosMix(**fields)  # type: ignore[arg-type]


def test_mix_4_is_mix_3_on_one_broker_and_adds_the_site_partitions_on_a_bridged_pair() -> None:
    """Mix 4 draws, on one broker, exactly what mix 3 draws (the same seeds
    replay the same schedules); on a bridged pair it also cuts the bridge and
    stops or stalls the second broker, within the same safety rules."""
    assert CHAOS_MIXES[4].kinds == CHAOS_MIXES[3].kinds
    assert CHAOS_MIXES[4].weights == CHAOS_MIXES[3].weights
    assert chaos_kinds(mix=4) == chaos_kinds(mix=3)
    assert chaos_kinds(mix=4, bridged=True) == [*chaos_kinds(mix=3), "bridge_cut"]
    assert chaos_kinds(mix=3, bridged=True) == chaos_kinds(mix=3)  # older mixes: unchanged
    nodes = ["a", "b", "c"]
    for seed in range(300):
        assert chaos_faults(seed, 30.0, nodes, mix=4) == chaos_faults(seed, 30.0, nodes, mix=3)
        assert chaos_faults(seed, 30.0, nodes, mix=3, bridged=True) == \
            chaos_faults(seed, 30.0, nodes, mix=3)
    bridged = [f for s in range(300) for f in chaos_faults(s, 30.0, nodes, bridged=True)]
    hit = {(f.kind, f.target) for f in bridged if FAULTS[f.kind].target == "broker"}
    assert hit == {("broker_stop", "broker"), ("broker_stop", "broker2"),
                   ("broker_pause", "broker"), ("broker_pause", "broker2"),
                   ("bridge_cut", "broker")}, hit
    # --kinds draws the broker outages on the first broker, bridged or not
    assert {f.target for s in range(100)
            for f in chaos_faults(s, 30.0, nodes, ["broker_stop", "kill"], bridged=True)
            if f.kind == "broker_stop"} == {"broker"}
    assert "on a bridged pair also bridge_cut, broker outages on either broker" in \
        CHAOS_MIXES[4].describe()
    with pytest.raises(ValueError, match="malformed chaos mix"):
        ChaosMix(("kill",), site_kinds=("kill",))


def _takes_the_active_down(faults: tuple[Fault, ...]) -> bool:  # ("a": the first active)
    return any(f.kind in FAILOVER_KINDS and f.target in ("active", "a") for f in faults)


def test_mix_3_takes_the_active_down_in_most_runs() -> None:
    """The point of mix 3: a run that fails over, so that its failover
    invariants are checked. Over 400 seeds of the shipped chaos base's shape
    (three nodes, 30 s, a fault every 5 s; "a" the first active), mix 2 took the
    active down in under a third of the runs, mix 3 in over half, with broker,
    card and sync faults still in about a third each."""
    def runs(mix: int, pred: Callable[[tuple[Fault, ...]], bool]) -> float:
        drawn = [chaos_faults(s, 30.0, ["a", "b", "c"], mix=mix) for s in range(400)]
        return sum(1 for d in drawn if pred(d)) / len(drawn)
    assert runs(2, _takes_the_active_down) < 0.32 < 0.52 < runs(3, _takes_the_active_down)
    for prefix in ("broker_", "card_", "sync_"):
        share = runs(3, lambda d, p=prefix: any(f.kind.startswith(p) for f in d))
        assert share > 0.2, prefix
    # node outages aim at the active about half the time; other faults never do
    faults = [f for s in range(400) for f in chaos_faults(s, 30.0, ["a", "b", "c"])]
    outages = [f for f in faults if FAULTS[f.kind].disruptive and FAULTS[f.kind].target == "node"]
    assert 0.4 < sum(f.target == "active" for f in outages) / len(outages) < 0.6
    assert all(f.target in ("a", "b", "c") for f in faults
               if not FAULTS[f.kind].disruptive and FAULTS[f.kind].target == "node")
    # the weights: each failover kind drawn about twice as often as another kind
    count = {k: sum(f.kind == k for f in faults) for k in CHAOS_MIXES[3].kinds}
    assert min(count[k] for k in FAILOVER_KINDS) > max(
        count[k] for k in ("sync_loss", "card_capacity", "broker_stop"))


def test_chosen_kinds_draw_as_they_did_whatever_the_default_mix() -> None:
    """--kinds has no weights and no aim, so the schedules recorded with it
    (the README's seed 86, the campaign tests) replay under any default mix."""
    kinds = ["broker_pause", "pause", "kill", "sync_delay"]
    drawn = chaos_faults(86, 30.0, ["a", "b", "c"], kinds)
    uniform = ChaosMix(tuple(kinds))
    assert uniform.active is None and not uniform.weights
    assert drawn == chaos_faults(86, 30.0, ["a", "b", "c"], kinds, mix=1)
    assert [(f.at, f.kind, f.target) for f in drawn] == \
        [(10.84, "broker_pause", "broker"), (18.159, "kill", "active")]  # as before mix 3


def test_chaos_with_chosen_kinds_uses_only_them() -> None:
    faults = chaos_faults(3, 200.0, ["a", "b"], ["kill", "sync_delay"])
    assert {f.kind for f in faults} == {"kill", "sync_delay"}
    with pytest.raises(ValueError, match="unknown fault kind 'nuke'"):
        chaos_faults(3, 60.0, ["a"], ["nuke"])
    with pytest.raises(ValueError):
        chaos_faults(3, 60.0, [])


def test_a_single_node_is_never_taken_down() -> None:
    faults = chaos_faults(1, 300.0, ["a"])
    assert faults
    assert not any(FAULTS[f.kind].disruptive and FAULTS[f.kind].target == "node"
                   for f in faults)


def test_too_short_a_run_gets_no_faults() -> None:
    assert chaos_faults(1, 2.0, ["a", "b"]) == ()


def _check_safety(faults: tuple[Fault, ...], steps: tuple[FaultStep, ...], duration: float,
                  nodes: list[str], opts: ChaosOptions) -> None:
    settle = max(2.0, 0.2 * duration)
    warmup = max(1.0, 0.1 * duration)
    # every inject has exactly one heal, later, before the quiet end
    for i, f in enumerate(faults):
        mine = [s for s in steps if s.fault == i]
        assert [s.action for s in mine] == ["inject", "heal"]
        assert warmup <= mine[0].at < mine[1].at <= duration - settle + 0.002
        assert f.target in (*nodes, *ROLE_TARGETS, "broker")
    # disruptive faults never overlap, with a recovery gap between them
    down = sorted((f.at, f.at + (f.duration or 0)) for f in faults if FAULTS[f.kind].disruptive)
    for (_, end), (start, _) in itertools.pairwise(down):
        assert start >= end + opts.recover - 0.002
    # one resource of one target carries one fault at a time
    for i, f in enumerate(faults):
        for g in faults[i + 1:]:
            if FAULTS[f.kind].resource == FAULTS[g.kind].resource and f.target == g.target:
                assert g.at >= f.at + (f.duration or 0) - 0.002
        if not FAULTS[f.kind].disruptive:
            assert f.target not in ROLE_TARGETS


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), duration=st.floats(5.0, 600.0),
       n=st.integers(1, 4), interval=st.floats(0.5, 20.0))
def test_chaos_schedules_are_always_safe(seed: int, duration: float, n: int,
                                         interval: float) -> None:
    nodes = ["a", "b", "c", "d"][:n]
    opts = ChaosOptions(interval=interval)
    faults = chaos_faults(seed, duration, nodes, options=opts)
    steps = chaos_schedule(seed, duration, nodes, options=opts)
    assert steps == plan(faults, duration)
    assert [s.at for s in steps] == sorted(s.at for s in steps)
    _check_safety(faults, steps, duration, nodes, opts)


def test_chaos_faults_validate_as_a_scenario() -> None:
    """A chaos schedule written into a scenario file loads back unchanged
    (which is how a report's schedule replays a run)."""
    faults = chaos_faults(11, 90.0, ["a", "b"])
    lines = []
    for f in faults:
        params = ", ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}"
                           for k, v in f.params)
        lines.append(f"  - {{at: {f.at}, kind: {f.kind}, target: {f.target}, "
                     f"duration: {f.duration}, params: {{{params}}}}}")
    text = ("duration: 90s\ncluster: {nodes: {a: {}, b: {}}}\n"
            "tc: \"qdisc add dev inside ingress\"\nfaults:\n" + "\n".join(lines)
            + "\ninvariants: {convergence: {}}\n")
    assert loads(text, "chaos.yaml").faults == faults


def test_chaos_never_mixes_a_disruptive_fault_with_another() -> None:
    from scenarios.faults import FAULTS, ChaosOptions, chaos_faults

    opts = ChaosOptions()
    for seed in range(60):
        drawn = chaos_faults(seed, 60.0, ["a", "b", "c"], options=opts)
        for f in drawn:
            if not FAULTS[f.kind].disruptive:
                continue
            end = f.at + (f.duration or 0.0) + opts.recover
            others = [g for g in drawn if g is not f
                      and g.at <= end and f.at <= g.at + (g.duration or 0.0)]
            assert not others, (seed, f, others)
        assert all(f.kind in CHAOS_MIXES[CHAOS_MIX].kinds for f in drawn)  # clock_skew on request
