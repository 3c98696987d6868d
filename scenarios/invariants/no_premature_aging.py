"""No premature aging: an entry never expires on a member while any member saw
traffic on it within its timeout (distributed aging: the newest last-seen
across the cluster counts, not the member's own).

Uses the expire records ({key, timeout} per node) and the sightings ({key}
per node). Sightings may be thinned (say the first per key, node and second):
that can only hide a premature expiry, never invent one."""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import Any

from scenarios.invariants.result import FAIL, PASS, UNKNOWN, Result, examples
from scenarios.model import F_EXPIRE, F_SEEN, History, Param, Snapshot

NAME = "no_premature_aging"
PARAMS = {"slack": Param("seconds", 0.0, "tolerance for clock granularity", lo=0.0, hi=3600.0)}


def check(history: History, snapshots: Sequence[Snapshot], params: Mapping[str, Any]) -> Result:
    slack = float(params.get("slack", 0.0))
    seen: dict[str, list[tuple[float, str]]] = {}
    expiries = []
    for op in history.by_f(F_SEEN, F_EXPIRE):
        v = op.value if isinstance(op.value, Mapping) else {}
        if "key" not in v:
            continue
        if op.f == F_SEEN:
            seen.setdefault(v["key"], []).append((op.time, op.process))
        else:
            expiries.append((op.time, op.process, v["key"], v.get("timeout")))
    if not seen:
        return Result(NAME, UNKNOWN, "no traffic sightings recorded: aging cannot be judged")
    bad, unsure = [], []
    for t, node, key, timeout in expiries:
        if not isinstance(timeout, int | float):
            unsure.append(f"{key} on {node}")
            continue
        times = seen.get(key, [])
        i = bisect.bisect_right(times, (t, "\uffff"))
        if i == 0:
            continue
        last, where = times[i - 1]
        if t < last + float(timeout) - slack - 1e-9:
            bad.append(f"{key} expired on {node} at {t:.3f}s, {t - last:.3f}s after {where} "
                       f"saw it (timeout {timeout:g}s)")
    if bad:
        return Result(NAME, FAIL, f"{len(bad)} premature expiries: {examples(bad, 3)}")
    if unsure:
        return Result(NAME, UNKNOWN, f"{len(unsure)} expiries without their timeout: "
                      f"{examples(unsure)}")
    return Result(NAME, PASS, f"{len(expiries)} expiries, none premature "
                  f"({len(seen)} flows seen)")
