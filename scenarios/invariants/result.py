"""The checker's answer: a Result per invariant, and Jepsen's composition of
verdicts by priority (fail over unknown over pass)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

PASS, FAIL, UNKNOWN = "pass", "fail", "unknown"
_PRIORITY = {PASS: 0, UNKNOWN: 1, FAIL: 2}  # jepsen.checker valid-priorities


@dataclass(frozen=True)
class Result:
    name: str
    verdict: str  # pass | fail | unknown
    detail: str

    def __post_init__(self) -> None:
        if self.verdict not in _PRIORITY:
            raise ValueError(f"verdict {self.verdict!r} is not pass, fail or unknown")


def compose(verdicts: Iterable[str]) -> str:
    """The run's verdict: fail if any failed, else unknown if any is unknown,
    else pass. Nothing checked is unknown, not a vacuous pass."""
    worst = None
    for v in verdicts:
        if worst is None or _PRIORITY[v] > _PRIORITY[worst]:
            worst = v
    return UNKNOWN if worst is None else worst


def examples(items: Iterable[str], limit: int = 5) -> str:
    """A few items for a detail line: "a, b, c and 7 more"."""
    items = list(items)
    shown = ", ".join(items[:limit])
    return f"{shown} and {len(items) - limit} more" if len(items) > limit else shown


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"
