"""Card entries ⊆ conntrack entries: every connection a member's offload card
holds is in that member's conntrack table (no stale hardware flows)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scenarios.invariants.result import FAIL, PASS, UNKNOWN, Result, examples
from scenarios.model import History, Snapshot

NAME = "card_subset"
PARAMS: dict[str, Any] = {}


def check(history: History, snapshots: Sequence[Snapshot], params: Mapping[str, Any]) -> Result:
    read = [s for s in snapshots if s.alive and s.card is not None]
    if not read:
        return Result(NAME, UNKNOWN, "no member's card table was read")
    bad = []
    for s in read:
        assert s.card is not None
        stale = sorted(s.card - set(s.entries))
        if stale:
            bad.append(f"{s.node}: {len(stale)} stale ({examples(stale, 2)})")
    if bad:
        return Result(NAME, FAIL, "hardware entries without a conntrack entry: " + "; ".join(bad))
    total = sum(len(s.card or ()) for s in read)
    return Result(NAME, PASS, f"{total} hardware entries on {len(read)} members, all in "
                  "conntrack")
