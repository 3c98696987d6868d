"""The failover time stays within its bound: from the loss of the active (the
failover invocation) to traffic flowing through the new active (its ok). An
outage the active lived through and that healed before anyone took over (a
SIGSTOP shorter than dead_after) is no failover: it is held to the same bound,
from its start to the old active forwarding again ("resumed")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scenarios.invariants.result import FAIL, PASS, UNKNOWN, Result, examples, ms
from scenarios.model import F_FAILOVER, History, Op, Param, Snapshot

NAME = "failover_time"
PARAMS = {"max_ms": Param("number", 1000.0, "bound in milliseconds", lo=0.0, hi=3.6e6)}


@dataclass(frozen=True)
class Outage:
    """One loss of the active: when it began, how long until traffic flowed
    through an active again (None if it never did), who, and whether the old
    active itself came back (resumed: no failover)."""

    start: float
    took: float | None
    who: str
    resumed: bool = False


def resumed(done: Op | None) -> bool:
    """Whether a failover's completion says the old active came back."""
    return done is not None and isinstance(done.value, Mapping) and bool(done.value.get("resumed"))


def durations(history: History) -> list[Outage]:
    """Each failover, and each outage of the active that healed before one."""
    out: list[Outage] = []
    for inv, done in history.pairs(F_FAILOVER):
        value = done.value if done is not None and isinstance(done.value, Mapping) else {}
        who = f"{value.get('from', '?')}→{value.get('to', '?')}"
        if done is not None and resumed(done):
            out.append(Outage(inv.time, done.time - inv.time, f"{value.get('from')} resumed",
                              True))
        elif done is not None and done.type == "ok":
            out.append(Outage(inv.time, done.time - inv.time, who))
        else:
            state = "failed" if done is not None and done.type == "fail" else "incomplete"
            out.append(Outage(inv.time, None, f"{who} {state}"))
    return out


def check(history: History, snapshots: Sequence[Snapshot], params: Mapping[str, Any]) -> Result:
    bound = float(params.get("max_ms", 1000.0)) / 1000
    runs = durations(history)
    if not runs:
        return Result(NAME, UNKNOWN, "no failover happened")
    last = history.ops[-1].time if len(history) else 0.0
    slow, unsure, fine = [], [], []
    for o in runs:
        if o.took is None:
            if "failed" in o.who or last - o.start > bound:
                slow.append(f"{o.who} at {o.start:.3f}s")
            else:
                unsure.append(f"{o.who} at {o.start:.3f}s")
        elif o.took > bound:
            slow.append(f"{o.who} at {o.start:.3f}s took {ms(o.took)}")
        else:
            fine.append(f"{o.who} in {ms(o.took)}")
    limit = f"(bound {ms(bound)})"
    if slow:
        return Result(NAME, FAIL, f"{len(slow)} of {len(runs)} failovers over {limit}: "
                      f"{examples(slow)}")
    if unsure:
        return Result(NAME, UNKNOWN, f"{len(unsure)} failovers had not completed when the "
                      f"history ends: {examples(unsure)}")
    return Result(NAME, PASS, f"{examples(fine)} {limit}")
