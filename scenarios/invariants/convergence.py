"""Convergence after heal: once every fault is healed and the cluster has
quiesced, all live members hold the same conntrack table (the same keys and,
with `states`, the same protocol states)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scenarios.invariants.result import FAIL, PASS, UNKNOWN, Result, examples
from scenarios.model import History, Param, Snapshot

NAME = "convergence"
PARAMS = {"states": Param("bool", True, "compare protocol states, not just keys")}


def check(history: History, snapshots: Sequence[Snapshot], params: Mapping[str, Any]) -> Result:
    live = sorted((s for s in snapshots if s.alive), key=lambda s: s.node)
    if len(live) < 2:
        return Result(NAME, UNKNOWN, f"{len(live)} live member(s) at the end: nothing to compare")
    heals = [r.at for r in history.faults if r.action == "heal"]
    last_heal = max(heals, default=None)
    early = [s.node for s in live if last_heal is not None and s.at < last_heal]
    if early:
        return Result(NAME, UNKNOWN, f"snapshots of {', '.join(early)} were taken before the "
                      f"last heal at {last_heal:.3f}s")
    ref = live[0]
    diffs = []
    for other in live[1:]:
        missing = sorted(set(ref.entries) - set(other.entries))
        extra = sorted(set(other.entries) - set(ref.entries))
        states = sorted(k for k in set(ref.entries) & set(other.entries)
                        if params.get("states", True) and ref.entries[k] != other.entries[k])
        changed = [f"{k}: {ref.entries[k]} vs {other.entries[k]}" for k in states]
        parts = [f"{len(missing)} missing ({examples(missing, 2)})" if missing else "",
                 f"{len(extra)} extra ({examples(extra, 2)})" if extra else "",
                 f"{len(states)} in another state ({examples(changed, 2)})" if states else ""]
        if any(parts):
            diffs.append(f"{other.node} vs {ref.node}: " + "; ".join(p for p in parts if p))
    if diffs:
        return Result(NAME, FAIL, " | ".join(diffs))
    return Result(NAME, PASS, f"{len(live)} members agree on {len(ref.entries)} entries")
