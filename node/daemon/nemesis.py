"""The node's nemesis hooks: faults a scenario runner sets at run time through
the control API (GET/POST /nemesis), validated first, then applied together.

    {"sync": {"loss": 0..1, "duplicate": 0..1, "delay": S, "jitter": S, "seed": N}
             | null,                       impair the sync frames both ways (null: stop);
                                           replaces the whole impairment, missing
                                           fields are 0; "seed" restarts the draws
     "seed": N,                            the same, outside "sync"
     "broker_link": "cut" | "up",          drop the MQTT connection (no DISCONNECT:
                                           the will fires) and stay off / reconnect
     "data": "cut" | "up",                 every port drops what it receives and sends
     "clock_offset": S}                    the node's clock offset, |S| <= 86400

Any subset; a bad field is a NemesisError naming it, and nothing is applied.
Every answer is state(): the settings and the counters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from node.daemon.errors import DaemonError
from syncbus.service import MAX_DELAY, Impairment

if TYPE_CHECKING:
    from node.daemon.service import Daemon

LINK_STATES = ("cut", "up")
MAX_OFFSET = 86400.0
FIELDS = ("sync", "seed", "broker_link", "data", "clock_offset")
SYNC_FIELDS = ("loss", "duplicate", "delay", "jitter", "seed")
_UNSET: Any = object()


class NemesisError(DaemonError):
    """A nemesis request the node refuses; str() names the field."""


@dataclass(frozen=True)
class Change:
    """A validated request: what to set (_UNSET: leave as it is)."""

    sync: Impairment | None = _UNSET
    seed: int | None = None
    broker_link: str | None = None
    data: str | None = None
    clock_offset: float | None = None


def parse(body: object) -> Change:
    """Validate a POST /nemesis body; NemesisError for the first bad field."""
    if not isinstance(body, Mapping):
        raise NemesisError(f"expected a JSON object with any of {', '.join(FIELDS)}")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise NemesisError(f"{unknown[0]}: unknown field (known: {', '.join(FIELDS)})")
    sync: Impairment | None = _UNSET
    seed = _seed(body["seed"], "seed") if "seed" in body else None
    if "sync" in body:
        raw = body["sync"]
        if raw is None:
            sync = None
        elif not isinstance(raw, Mapping):
            raise NemesisError('sync: expected {"loss", "duplicate", "delay", "jitter", '
                               f'"seed"}} or null, got {raw!r}')
        else:
            bad = sorted(set(raw) - set(SYNC_FIELDS))
            if bad:
                raise NemesisError(f"sync.{bad[0]}: unknown field (known: "
                                   f"{', '.join(SYNC_FIELDS)})")
            values = {k: _number(raw[k], f"sync.{k}", 0.0, 1.0 if k in ("loss", "duplicate")
                                 else MAX_DELAY) for k in SYNC_FIELDS[:4] if k in raw}
            sync = Impairment(**values)
            if "seed" in raw:
                inner = _seed(raw["seed"], "sync.seed")
                if seed is not None and inner != seed:
                    raise NemesisError(f"seed: {seed} differs from sync.seed {inner}")
                seed = inner
    link = _link(body["broker_link"], "broker_link") if "broker_link" in body else None
    data = _link(body["data"], "data") if "data" in body else None
    offset = None
    if "clock_offset" in body:
        offset = _number(body["clock_offset"], "clock_offset", -MAX_OFFSET, MAX_OFFSET)
    return Change(sync, seed, link, data, offset)


def _number(value: object, where: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise NemesisError(f"{where}: expected a number, got {value!r}")
    if not lo <= value <= hi:
        raise NemesisError(f"{where}: {value!r} is out of range [{lo:g}, {hi:g}]")
    return float(value)


def _seed(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise NemesisError(f"{where}: expected an integer, got {value!r}")
    return value


def _link(value: object, where: str) -> str:
    if value not in LINK_STATES:
        raise NemesisError(f'{where}: expected "cut" or "up", got {value!r}')
    assert isinstance(value, str)
    return value


# ================================================================ applying
def apply(d: Daemon, change: Change) -> None:
    """Apply a validated change to the running node (nothing here can fail)."""
    member = d.member
    if change.sync is not _UNSET or change.seed is not None:
        sync = member.impairment if change.sync is _UNSET else change.sync
        member.impair(sync, change.seed)
    if change.broker_link == "cut":
        d.bus.hold()
    elif change.broker_link == "up":
        d.bus.release()
    if change.data is not None:
        for port in d.ports.values():
            port.cut = change.data == "cut"
    if change.clock_offset is not None:
        d.clock.offset = change.clock_offset
        d.wake.set()  # deadlines moved
        member.wake()


def state(d: Daemon) -> dict[str, Any]:
    """The current nemesis settings and counters (GET /nemesis, /state["nemesis"])."""
    member = d.member
    imp = member.impairment
    return {
        "sync": None if imp is None else {**imp.as_dict(), "seed": member.seed},
        "broker_link": "cut" if d.bus.held else "up",
        "data": "cut" if any(p.cut for p in d.ports.values()) else "up",
        "clock_offset": d.clock.offset,
        "stats": {
            "sync_out": dict(member.impair_stats["out"]),
            "sync_in": dict(member.impair_stats["in"]),
            "sync_pending": member.pending,
            "data_drops": {name: p.stats.get("nemesis_drops", 0)
                           for name, p in d.ports.items()},
            "broker_holds": d.bus.stats.get("holds", 0),
        },
    }


__all__ = ["Change", "NemesisError", "apply", "parse", "state"]
