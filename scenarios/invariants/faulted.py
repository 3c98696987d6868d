"""When a measurement says nothing about the mechanism under test: the
hardware ratios at a failover are not judged on a node whose card was told to
refuse entries (card_capacity, card_insert_fail) shortly before or during the
failover, because refusing them is what the fault does. Such measurements are
reported as excused, never silently dropped."""

from __future__ import annotations

from collections.abc import Iterable

from scenarios.model import History

CARD_FAULTS = ("card_capacity", "card_insert_fail")
LOOKBACK = 30.0  # seconds: entries refused this long before still miss (idle flows)


def fault_windows(history: History, kinds: Iterable[str] | None = None
                  ) -> list[tuple[str, str, float, float]]:
    """(kind, target, injected at, healed at or +inf) of every applied fault
    (of `kinds` only, when given). A heal that did not apply leaves the fault
    in effect."""
    wanted = None if kinds is None else set(kinds)
    open_: dict[tuple[str, str], float] = {}
    out: list[tuple[str, str, float, float]] = []
    for r in sorted(history.faults, key=lambda r: r.at):
        if not r.applied or (wanted is not None and r.kind not in wanted):
            continue
        key = (r.kind, r.target)
        if r.action == "inject":
            open_[key] = r.at
        elif key in open_:
            out.append((r.kind, r.target, open_.pop(key), r.at))
    out += [(kind, target, at, float("inf")) for (kind, target), at in open_.items()]
    return out


def card_faulted(history: History, node: str, at: float, lookback: float = LOOKBACK) -> bool:
    """Was a card fault in effect on `node` at any time in [at - lookback, at]?"""
    return any(target == node and start <= at and healed >= at - lookback
               for _, target, start, healed in fault_windows(history, CARD_FAULTS))


__all__ = ["CARD_FAULTS", "card_faulted", "fault_windows"]
