"""scenarios.shrink: ddmin over a fault schedule (pure: the predicate here is a
rule over the schedule, where `ctlab chaos --shrink` runs the cluster), and
the shrunk schedule written as a scenario file that loads back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scenarios import invariants
from scenarios.faults import chaos_faults
from scenarios.model import Broker, Fault, load, loads
from scenarios.shrink import scenario_text, shrink

ROOT = Path(__file__).resolve().parents[2]
CHAOS_BASE = ROOT / "scenarios" / "examples" / "chaos-base.yaml"


def schedule(n: int) -> tuple[Fault, ...]:
    return tuple(Fault(1.0 + i, "kill" if i % 2 else "sync_loss", "a", 0.5) for i in range(n))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), n=st.integers(1, 14))
def test_shrink_finds_exactly_the_faults_a_failure_needs(data: st.DataObject, n: int) -> None:
    """A failure that needs every fault of a culprit set (and no other) is
    shrunk to that set, in schedule order; every run is of a sub-schedule."""
    faults = schedule(n)
    culprits = data.draw(st.sets(st.sampled_from(faults), min_size=1))
    seen: list[tuple[Fault, ...]] = []

    def fails(candidate: tuple[Fault, ...]) -> bool:
        assert list(candidate) == [f for f in faults if f in candidate]  # order kept
        seen.append(candidate)
        return culprits <= set(candidate)
    got = shrink(faults, fails, max_runs=1000)
    assert got.faults == tuple(f for f in faults if f in culprits)
    assert got.minimal and got.runs == len(seen)
    assert got.runs <= n * n + n  # ddmin's worst case, complements only


def test_any_one_of_several_causes_is_enough() -> None:
    faults = schedule(9)
    causes = {faults[2], faults[6]}
    got = shrink(faults, lambda c: bool(causes & set(c)))
    assert len(got.faults) == 1 and got.faults[0] in causes and got.minimal


def test_a_failure_without_any_fault_shrinks_to_none() -> None:
    got = shrink(schedule(6), lambda c: True)
    assert got.faults == () and got.minimal and got.runs == 3  # 6 faults, 3, 1, none


def test_the_run_budget_bounds_the_search_and_says_so() -> None:
    faults = schedule(12)
    calls: list[int] = []

    def fails(candidate: tuple[Fault, ...]) -> bool:
        calls.append(len(candidate))
        return faults[11] in candidate and faults[0] in candidate
    got = shrink(faults, fails, max_runs=3)
    assert len(calls) == got.runs == 3 and not got.minimal
    assert faults[0] in got.faults and faults[11] in got.faults  # still a failing schedule
    assert shrink(faults, fails, max_runs=0) == type(got)(faults, 0, False)


def test_tries_shrink_a_failure_that_shows_only_every_other_run() -> None:
    """A race: a schedule with the culprit fails on every second run of it.
    One try per candidate keeps everything (each removal seems to pass); two
    find the culprit."""
    faults = schedule(6)
    calls: dict[tuple[Fault, ...], int] = {}

    def fails(candidate: tuple[Fault, ...]) -> bool:
        calls[candidate] = calls.get(candidate, 0) + 1
        return faults[3] in candidate and calls[candidate] % 2 == 0
    once = shrink(faults, fails, tries=1)
    assert once.faults == faults and once.minimal
    calls.clear()
    twice = shrink(faults, fails, tries=2, max_runs=100)
    assert twice.faults == (faults[3],) and twice.minimal
    assert twice.runs == sum(calls.values())  # every try is a run
    with pytest.raises(ValueError, match="tries must be at least 1"):
        shrink(faults, fails, tries=0)
    calls.clear()
    short = shrink(faults, fails, tries=2, max_runs=3)  # the budget counts tries
    assert short.runs == 3 and not short.minimal and sum(calls.values()) == 3


def test_a_single_needed_fault_costs_one_run() -> None:
    faults = schedule(1)
    got = shrink(faults, lambda c: bool(c))
    assert got.faults == faults and got.runs == 1 and got.minimal


@pytest.mark.parametrize("broker", [None, "mosquitto"])
def test_the_shrunk_schedule_is_a_scenario_that_loads_back(tmp_path: Path,
                                                           broker: str | None) -> None:
    """Written from the base file with the run's seed, duration and faults,
    every invariant chaos checks, and tc_file made absolute: loaded from
    anywhere, it is the run chaos made, with those faults."""
    base = load(CHAOS_BASE).with_seed(86)
    drawn = chaos_faults(86, 40.0, base.cluster.node_names)
    kept = drawn[1::2]
    sc = replace(base.with_faults(drawn), duration=40.0)
    text = scenario_text(CHAOS_BASE, sc, kept, list(invariants.INVARIANTS),
                         "shrunk from ctlab chaos --seed 86", broker)
    (tmp_path / "elsewhere").mkdir()
    again = loads(text, "shrunk.yaml", base=tmp_path / "elsewhere")
    assert again.faults == kept and again.seed == 86 and again.duration == 40.0
    assert again.tc == base.tc and again.traffic == base.traffic
    assert [i.name for i in again.invariants][:len(base.invariants)] == \
        [i.name for i in base.invariants]
    assert {i.name for i in again.invariants} == set(invariants.INVARIANTS)
    assert again.cluster.broker == (Broker("mosquitto") if broker else base.cluster.broker)
    assert again.cluster.nodes == base.cluster.nodes and again.mechanisms == base.mechanisms
    assert again.description.startswith("shrunk from")
