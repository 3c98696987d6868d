"""When a measurement says nothing about the mechanism under test: the
hardware ratios at a failover are not judged on a node whose card was told to
refuse entries (card_capacity, card_insert_fail) shortly before or during the
failover, because refusing them is what the fault does. Such measurements are
reported as excused, never silently dropped."""

from __future__ import annotations

from scenarios.model import History

CARD_FAULTS = ("card_capacity", "card_insert_fail")
LOOKBACK = 30.0  # seconds: entries refused this long before still miss (idle flows)


def card_faulted(history: History, node: str, at: float, lookback: float = LOOKBACK) -> bool:
    """Was a card fault in effect on `node` at any time in [at - lookback, at]?"""
    start: float | None = None
    for r in sorted(history.faults, key=lambda r: r.at):
        if r.kind not in CARD_FAULTS or r.target != node or not r.applied:
            continue
        if r.action == "inject":
            start = r.at
        elif start is not None:
            if start <= at and r.at >= at - lookback:
                return True
            start = None
    return start is not None and start <= at


__all__ = ["CARD_FAULTS", "card_faulted"]
