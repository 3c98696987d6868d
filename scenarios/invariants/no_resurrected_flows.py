"""No resurrected flows: once an entry is destroyed on a member, it does not
reappear there (a ct new/update event, or in the final table) unless a new
connection with that key was opened (a new SYN) after the destroy. This is
what tombstones are for: a late update must not bring a flow back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scenarios.invariants.result import FAIL, PASS, UNKNOWN, Result, examples
from scenarios.model import F_CT, F_OPEN, History, Snapshot

NAME = "no_resurrected_flows"
PARAMS: dict[str, Any] = {}


def check(history: History, snapshots: Sequence[Snapshot], params: Mapping[str, Any]) -> Result:
    opened: dict[str, list[float]] = {}
    for op in history.by_f(F_OPEN):
        if op.type == "invoke" and isinstance(op.value, Mapping) and "key" in op.value:
            opened.setdefault(op.value["key"], []).append(op.time)
    destroyed: dict[tuple[str, str], float] = {}  # (node, key) -> time of the destroy
    events = destroys = 0
    bad = []

    def reopened(key: str, since: float, until: float) -> bool:
        return any(since < t <= until for t in opened.get(key, ()))

    for op in history.by_f(F_CT):
        v = op.value if isinstance(op.value, Mapping) else {}
        key, event = v.get("key"), v.get("event")
        if not isinstance(key, str):
            continue
        events += 1
        if event == "destroy":
            destroys += 1
            destroyed[(op.process, key)] = op.time
        elif (op.process, key) in destroyed:
            gone = destroyed.pop((op.process, key))
            if not reopened(key, gone, op.time):
                bad.append(f"{key} on {op.process}: {event} at {op.time:.3f}s after its "
                           f"destroy at {gone:.3f}s")
    if not events:
        return Result(NAME, UNKNOWN, "no conntrack events recorded")
    for snap in snapshots:
        for key in snap.entries:
            gone_at = destroyed.get((snap.node, key))
            if gone_at is not None and not reopened(key, gone_at, snap.at):
                bad.append(f"{key} in {snap.node}'s final table after its destroy at "
                           f"{gone_at:.3f}s")
    if bad:
        return Result(NAME, FAIL, f"{len(bad)} resurrected: {examples(bad, 3)}")
    return Result(NAME, PASS, f"{destroys} destroys, none came back")
