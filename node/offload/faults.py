"""The card's knobs, netdevsim style: capacity, insertion rate, latency, and
injected insert failures.

netdevsim exposes such knobs in debugfs (fib/fail_route_offload, max_fib_entries
as a devlink resource, bpf_bind_accept ...): a test writes a value and the
device misbehaves accordingly. Here they are one mutable object per card, and
an explicit registry (KNOBS) maps each knob's name to its parser, so a control
API can set them by name: `set_knob(faults, "fail_next_inserts", "3")`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import NamedTuple

# mlx5 with hardware steering inserts ~600K ct entries/s (commit 066d49c199a6);
# 2M entries hold 1M bidirectional connections.
DEFAULT_CAPACITY = 2 * 1024 * 1024
DEFAULT_INSERT_RATE = 600_000.0
DEFAULT_INSERT_LATENCY = 0.001


class FaultError(ValueError):
    """An unknown knob or a value it refuses."""


@dataclass
class Faults:
    """Mutable knobs of one card.

    capacity        hardware CT entries (one per offloaded direction)
    insert_rate     inserts/s the card sustains (token bucket refill rate)
    insert_burst    inserts the bucket holds (the burst done without waiting)
    insert_latency  seconds from an insert (or delete) command to its effect
    max_insert_wait an insert that would wait longer than this for a token fails (busy)
    fail_next       the next N inserts fail
    fail_all        every insert fails
    """

    capacity: int = DEFAULT_CAPACITY
    insert_rate: float = DEFAULT_INSERT_RATE
    insert_burst: float = DEFAULT_INSERT_RATE / 10
    insert_latency: float = DEFAULT_INSERT_LATENCY
    max_insert_wait: float = 1.0
    fail_next: int = 0
    fail_all: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            KNOBS[f.name].parse(getattr(self, f.name))  # validate

    def fail_next_inserts(self, n: int) -> None:
        self.fail_next = _count(n)

    def set_capacity(self, n: int) -> None:
        self.capacity = _count(n)

    def take_insert_fault(self) -> bool:
        """Whether the insert being attempted now fails (consumes one fail_next)."""
        if self.fail_all:
            return True
        if self.fail_next > 0:
            self.fail_next -= 1
            return True
        return False


def _count(value: object) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise FaultError(f"{value!r} is not an integer") from None
    if n < 0:
        raise FaultError(f"{n} is negative")
    return n


def _seconds(value: object) -> float:
    try:
        x = float(str(value).strip())
    except ValueError:
        raise FaultError(f"{value!r} is not a number") from None
    if not x >= 0 or x == float("inf"):
        raise FaultError(f"{value!r} is not a finite non-negative number")
    return x


def _rate(value: object) -> float:
    x = _seconds(value)
    if x <= 0:
        raise FaultError("a rate must be positive")
    return x


def _bool(value: object) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "y", "yes", "on"):
        return True
    if text in ("0", "false", "n", "no", "off"):
        return False
    raise FaultError(f"{value!r} is not a boolean (0/1)")


class Knob(NamedTuple):
    field: str
    parse: Callable[[object], object]
    doc: str


KNOBS: dict[str, Knob] = {
    "capacity": Knob("capacity", _count, "hardware CT entries"),
    "insert_rate": Knob("insert_rate", _rate, "inserts per second"),
    "insert_burst": Knob("insert_burst", _rate, "inserts done without waiting"),
    "insert_latency": Knob("insert_latency", _seconds, "seconds until an insert/delete is done"),
    "max_insert_wait": Knob("max_insert_wait", _seconds, "longest wait for a token, else busy"),
    "fail_next": Knob("fail_next", _count, "the next N inserts fail"),
    "fail_all": Knob("fail_all", _bool, "every insert fails"),
}
ALIASES = {"fail_next_inserts": "fail_next", "fail_all_inserts": "fail_all"}


def set_knob(faults: Faults, name: str, value: object) -> None:
    """Set a knob by name (debugfs style); FaultError for bad names or values."""
    knob = KNOBS.get(ALIASES.get(name, name))
    if knob is None:
        raise FaultError(f"unknown knob {name!r} (known: {', '.join(sorted(KNOBS))})")
    setattr(faults, knob.field, knob.parse(value))


def read_knobs(faults: Faults) -> dict[str, object]:
    return {name: getattr(faults, knob.field) for name, knob in KNOBS.items()}
