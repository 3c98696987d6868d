"""The checker: invariants as pure functions over the recorded History and the
members' final Snapshots, each returning a Result (pass, fail or unknown).

One module per invariant, each with NAME, PARAMS (its thresholds, as
scenario files spell them) and check(history, snapshots, params). INVARIANTS
is the explicit registry; nothing registers itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scenarios.invariants import (
    card_subset,
    convergence,
    failover_time,
    hw_hit_ratio,
    no_broken_flows,
    no_premature_aging,
    no_resurrected_flows,
    preinstalled_ratio,
    single_active,
    stable_roles,
)
from scenarios.invariants.result import FAIL, PASS, UNKNOWN, Result, compose
from scenarios.model import History, InvariantSpec, Param, Snapshot

Check = Callable[[History, Sequence[Snapshot], Mapping[str, Any]], Result]


@dataclass(frozen=True)
class Invariant:
    name: str
    check: Check
    params: Mapping[str, Param]
    doc: str

    def defaults(self) -> dict[str, Any]:
        return {name: p.default for name, p in self.params.items()}


INVARIANTS: dict[str, Invariant] = {
    m.NAME: Invariant(m.NAME, m.check, m.PARAMS, (m.__doc__ or "").strip())
    for m in (no_broken_flows, failover_time, preinstalled_ratio, hw_hit_ratio,
              no_premature_aging, no_resurrected_flows, convergence, card_subset, stable_roles,
              single_active)
}


def check(specs: Iterable[InvariantSpec], history: History,
          snapshots: Sequence[Snapshot]) -> tuple[Result, ...]:
    """Each listed invariant with its thresholds (unlisted ones use defaults)."""
    out = []
    for spec in specs:
        inv = INVARIANTS[spec.name]
        out.append(inv.check(history, snapshots, {**inv.defaults(), **dict(spec.params)}))
    return tuple(out)


def check_all(history: History, snapshots: Sequence[Snapshot]) -> tuple[Result, ...]:
    """Every invariant with its default thresholds (what `ctlab chaos` checks)."""
    return check((InvariantSpec(name) for name in INVARIANTS), history, snapshots)


__all__ = ["FAIL", "INVARIANTS", "PASS", "UNKNOWN", "Invariant", "Result", "check",
           "check_all", "compose"]
