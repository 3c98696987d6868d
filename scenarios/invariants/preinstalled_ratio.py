"""At failover, the new active already holds in its card most of the
connections that can be offloaded (the pre-installed ratio).

The runner records one F_PREINSTALL per failover: what the new active's card
held at the moment it took the role (the node records it then: /state
"promotions"), against the larger of its own offloadable count and the old
active's, so a node that promotes itself half-empty (no readiness gate) is
measured against the cluster's table, not its own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scenarios.invariants.faulted import card_faulted
from scenarios.invariants.result import FAIL, PASS, UNKNOWN, Result, examples
from scenarios.model import F_PREINSTALL, History, Param, Snapshot

NAME = "preinstalled_ratio"
PARAMS = {"min": Param("ratio", 0.99, "share of offloadable entries already in hardware")}


def ratios(history: History) -> list[tuple[str, float, int, int]]:
    """(node, time, installed, eligible) per failover that reported it."""
    out = []
    for op in history.by_f(F_PREINSTALL):
        v = op.value if isinstance(op.value, Mapping) else {}
        if "installed" in v and "eligible" in v:
            out.append((op.process, op.time, int(v["installed"]), int(v["eligible"])))
    return out


def check(history: History, snapshots: Sequence[Snapshot], params: Mapping[str, Any]) -> Result:
    need = float(params.get("min", 0.99))
    measured = [r for r in ratios(history) if r[3] > 0]
    excused = [r for r in measured if card_faulted(history, r[0], r[1])]
    seen = [r for r in measured if r not in excused]
    note = (f" ({len(excused)} excused: a card fault was in effect on "
            f"{', '.join(sorted({r[0] for r in excused}))})" if excused else "")
    if not seen:
        return Result(NAME, UNKNOWN, "no failover reported offloadable entries to measure"
                      + note)
    low = [f"{n} at {t:.3f}s: {i}/{e} = {i / e:.1%}" for n, t, i, e in seen if i / e < need]
    if low:
        return Result(NAME, FAIL, f"below {need:.1%}: {examples(low)}{note}")
    return Result(NAME, PASS, examples(f"{n} at {t:.3f}s: {i}/{e} = {i / e:.1%}"
                                       for n, t, i, e in seen) + note)
