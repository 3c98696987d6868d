"""Right after a failover, the new active forwards the established traffic in
hardware: hardware hits / all packets it forwarded in the measured window.

The runner counts the packets of flows established `hw_settle` (2 s) before
the failover, in the directions the old active last forwarded in hardware:
the new active must do what the old one did (a direction act_ct keeps in
software, a young UDP flow's replies say, is software on any node)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scenarios.invariants.faulted import card_faulted
from scenarios.invariants.result import FAIL, PASS, UNKNOWN, Result, examples
from scenarios.model import F_HW_HITS, History, Param, Snapshot

NAME = "hw_hit_ratio"
PARAMS = {"min": Param("ratio", 0.99, "share of packets hitting hardware after failover")}


def hits(history: History) -> list[tuple[str, float, int, int]]:
    """(node, time, hardware packets, software packets) per measurement."""
    out = []
    for op in history.by_f(F_HW_HITS):
        v = op.value if isinstance(op.value, Mapping) else {}
        if "hw" in v and "sw" in v:
            out.append((op.process, op.time, int(v["hw"]), int(v["sw"])))
    return out


def check(history: History, snapshots: Sequence[Snapshot], params: Mapping[str, Any]) -> Result:
    need = float(params.get("min", 0.99))
    measured = [h for h in hits(history) if h[2] + h[3] > 0]
    excused = [h for h in measured if card_faulted(history, h[0], h[1])]
    seen = [h for h in measured if h not in excused]
    note = (f" ({len(excused)} excused: a card fault was in effect on "
            f"{', '.join(sorted({h[0] for h in excused}))})" if excused else "")
    if not seen:
        return Result(NAME, UNKNOWN, "no packets were measured after a failover" + note)

    def line(n: str, t: float, hw: int, sw: int) -> str:
        return f"{n} at {t:.3f}s: {hw}/{hw + sw} = {hw / (hw + sw):.1%}"

    low = [line(*h) for h in seen if h[2] / (h[2] + h[3]) < need]
    if low:
        return Result(NAME, FAIL, f"below {need:.1%}: {examples(low)}{note}")
    return Result(NAME, PASS, examples(line(*h) for h in seen) + note)
