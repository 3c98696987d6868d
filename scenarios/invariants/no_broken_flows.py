"""No established flow is broken by a failover (or any other fault).

The flows that count are those established (open ok) before the first
disruption (the first failover invocation or the first applied fault
injection) and not closed before it. Each must come through: no fail
operation of the flow after the disruption. A flow whose last word is an
unanswered invocation or a retransmission stall is indeterminate.
Verdict: fail when the survivors are fewer than `min_survival` of the flows,
even counting every indeterminate one as a survivor; unknown when only the
indeterminate ones decide it, or when there was no disruption or no flow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scenarios.invariants.result import FAIL, PASS, UNKNOWN, Result, examples
from scenarios.model import (
    F_CLOSE,
    F_FAILOVER,
    F_OPEN,
    F_STALL,
    F_TRANSFER,
    History,
    Param,
    Snapshot,
)

NAME = "no_broken_flows"
PARAMS = {"min_survival": Param("ratio", 1.0, "share of established flows that must survive")}
_FLOW_FS = (F_OPEN, F_CLOSE, F_TRANSFER, F_STALL)


@dataclass
class Survival:
    disruption: float | None  # the first failover or fault, None if none
    before: list[str] = field(default_factory=list)  # flows established before it
    survived: list[str] = field(default_factory=list)
    broken: dict[str, str] = field(default_factory=dict)  # flow -> why
    unresolved: list[str] = field(default_factory=list)


def disruption_time(history: History) -> float | None:
    times = [op.time for op in history.by_f(F_FAILOVER) if op.type == "invoke"]
    times += [r.at for r in history.faults if r.action == "inject" and r.applied]
    return min(times) if times else None


def analyse(history: History) -> Survival:
    t0 = disruption_time(history)
    out = Survival(t0)
    if t0 is None:
        return out
    ops_of: dict[str, list[Any]] = {}
    for op in history.by_f(*_FLOW_FS):
        ops_of.setdefault(op.process, []).append(op)
    for flow, ops in ops_of.items():
        est = next((op.time for op in ops if op.f == F_OPEN and op.type == "ok"), None)
        if est is None or est > t0:
            continue
        if any(op.time <= t0 and (op.type == "fail" or (op.f == F_CLOSE and op.type == "ok"))
               for op in ops):
            continue  # closed or broken before the disruption
        out.before.append(flow)
        failed = next((op for op in ops if op.time > t0 and op.type == "fail"), None)
        if failed is not None:
            reason = failed.value.get("reason", "") if isinstance(failed.value, Mapping) else ""
            out.broken[flow] = f"{flow} ({failed.f} failed at {failed.time:.3f}s" + \
                (f": {reason})" if reason else ")")
        elif ops[-1].type == "invoke" or ops[-1].f == F_STALL:
            out.unresolved.append(flow)
        else:
            out.survived.append(flow)
    return out


def check(history: History, snapshots: Sequence[Snapshot], params: Mapping[str, Any]) -> Result:
    s = analyse(history)
    need = float(params.get("min_survival", 1.0))
    if s.disruption is None:
        return Result(NAME, UNKNOWN, "no failover or fault in the history: nothing to survive")
    n = len(s.before)
    at = f"the first disruption at {s.disruption:.3f}s"
    if n == 0:
        return Result(NAME, UNKNOWN, f"no flow was established before {at}")
    ok, maybe = len(s.survived), len(s.unresolved)
    head = f"{ok}/{n} flows established before {at} survived"
    tail = ""
    if s.broken:
        tail += f"; {len(s.broken)} broke: {examples(s.broken.values())}"
    if maybe:
        tail += f"; {maybe} indeterminate: {examples(s.unresolved)}"
    if (ok + maybe) / n < need - 1e-12:
        return Result(NAME, FAIL, head + tail + f" (need {need:.0%})")
    if ok / n < need - 1e-12:
        return Result(NAME, UNKNOWN, head + tail + f" (need {need:.0%})")
    return Result(NAME, PASS, head + tail)
