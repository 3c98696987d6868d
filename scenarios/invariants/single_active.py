"""At most one member holds the active role (active-standby), except while a
fault keeps them apart: the split brain. Two actives are what a failover
design must keep short: each forwards whatever reaches it and answers for the
virtual address, and their tables drift apart until the old one is fenced.

The members' own role logs say when each held the role (read from /state; a
process's log ends at its death: kill, restart, or a stop by SIGSTOP, during
which it acts on nothing). Where two or more held it at once:
- with a fault in effect (a broker link cut, a pause, a stopped broker ...;
  card faults do not keep members apart), the overlap must end within
  `fence_within` of that fault's heal: the old active hears the new term
  and steps down (the last fault in effect during the overlap, or healed at
  most `fence_within` before it began, counts);
- with no fault, it must end within `handover`: a preemption's, while the
  member it takes the role from hears of it.

The detail gives the whole time with two actives, fault or not: the figure a
failover design is judged by. A node's role times come from its own clock,
counted from its start: a clock_skew step moves the ones after it."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from scenarios.invariants.faulted import CARD_FAULTS, fault_windows
from scenarios.invariants.result import FAIL, PASS, UNKNOWN, Result, examples, ms
from scenarios.model import F_ROLES, History, Param, Snapshot

NAME = "single_active"
PARAMS = {
    "handover": Param("seconds", 0.5, "two actives with no fault behind them: the longest "
                                      "allowed (the old one hears the new term)",
                      lo=0.0, hi=3600.0),
    # A broker link cut by dropping packets (netns, docker) heals for the member
    # only when its MQTT connection's TCP retransmits, whose timer backs off
    # (0.2, 0.4, 0.8, 1.6, 3.2 s): after a 5 s cut, the old active heard the new
    # term 1.5 and 1.8 s after the heal; up to 3.2 s can be the transport's.
    "fence_within": Param("seconds", 5.0, "two actives during a fault: how soon after its "
                                          "heal the old one must step down",
                          lo=0.0, hi=3600.0),
}
ACTIVE, JOINING = "active", "joining"
DOWN = ("kill", "restart", "pause")  # the target's process acts on nothing meanwhile
Span = tuple[float, float]
Window = tuple[float, float, tuple[str, ...]]  # when, and who held the role
FaultWindow = tuple[str, str, float, float]  # fault_windows(): kind, target, at, healed
_ROLE_CHANGED = re.compile(r"^RoleChanged\(old='[a-z]+', new='([a-z]+)'")


def role_timeline(log: Iterable[Sequence[Any]], started: Iterable[float]
                  ) -> list[tuple[float, str]]:
    """A node's roles in time order, from its role log ([seconds, repr of the
    event], every process's) and its processes' starts: a process begins as
    joining; RoleChanged gives the role it moved to."""
    out = [(float(t), JOINING) for t in started]
    for entry in log:
        if len(entry) >= 2 and isinstance(entry[1], str):
            m = _ROLE_CHANGED.match(entry[1])
            if m:
                out.append((float(entry[0]), m.group(1)))
    return sorted(out, key=lambda e: e[0])  # (stable: a start before its own changes)


def active_spans(timeline: Sequence[tuple[float, str]], end: float,
                 down: Iterable[Span]) -> list[Span]:
    """When the node held the active role: from each move to active to its
    next change of role (or `end`), less the times its process was down."""
    spans: list[Span] = []
    since: float | None = None
    for t, role in timeline:
        if role == ACTIVE and since is None:
            since = t
        elif role != ACTIVE and since is not None:
            spans.append((since, t))
            since = None
    if since is not None and since < end:
        spans.append((since, end))
    for lo, hi in sorted(down):
        spans = [part for s, e in spans for part in ((s, min(e, lo)), (max(s, hi), e))
                 if part[1] > part[0]]
    return spans


def down_windows(node: str, faults: Iterable[FaultWindow],
                 timeline: Sequence[tuple[float, str]], end: float) -> list[Span]:
    """When the node's process could not act: a pause until its heal; a kill
    or a restart until its next process started (a process says when it
    started, once its interpreter is up: after the heal, which is the spawn)."""
    starts = [t for t, role in timeline if role == JOINING]
    out = []
    for kind, target, at, healed in faults:
        if target != node or kind not in DOWN:
            continue
        if kind == "pause":
            out.append((at, healed))
        else:
            out.append((at, min((t for t in starts if t >= at), default=end)))
    return out


def overlaps(spans: Mapping[str, Sequence[Span]]) -> list[Window]:
    """The windows in which two or more nodes held the role, each with who."""
    edges = sorted((t, kind, node) for node, ss in spans.items()
                   for s, e in ss for t, kind in ((s, 1), (e, 0)))  # (an end before a start)
    held: set[str] = set()
    out: list[Window] = []
    start, who = 0.0, set[str]()
    for t, kind, node in edges:
        if kind:
            held.add(node)
        else:
            held.discard(node)
        if len(held) >= 2 and not who:
            start, who = t, set(held)
        elif len(held) >= 2:
            who |= held
        elif who:
            if t > start:
                out.append((start, t, tuple(sorted(who))))
            who = set()
    return out


def held(history: History) -> tuple[dict[str, list[Span]], list[FaultWindow], float] | str:
    """When each node held the active role (its spans), the faults that may
    explain two actives (every applied one but the card's), and the end of
    the run; or why there is no answer."""
    seen = history.by_f(F_ROLES)
    if not seen or not isinstance(seen[-1].value, Mapping):
        return "no role logs were read"
    roles = seen[-1].value
    if roles.get("mode") == "active-active":
        return "active-active: every ready member is active by design"
    end = float(roles.get("end", seen[-1].time))
    faults = [w for w in fault_windows(history) if w[0] not in CARD_FAULTS]
    spans = {}
    for node, timeline in (roles.get("nodes") or {}).items():
        roles_of = [(float(t), str(r)) for t, r in timeline]
        spans[node] = active_spans(roles_of, end, down_windows(node, faults, roles_of, end))
    if not any(spans.values()):
        return "no member's role log shows the active role"
    return spans, faults, end


def gaps(spans: Mapping[str, Sequence[Span]], end: float) -> list[Span]:
    """The windows in which no node held the role, from the first time one
    did to `end`: a failover's detection and election, or a role given up."""
    merged: list[Span] = []
    for s, e in sorted(span for ss in spans.values() for span in ss):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    out = [(a[1], b[0]) for a, b in itertools.pairwise(merged)]
    if merged and merged[-1][1] < end:
        out.append((merged[-1][1], end))
    return out


def summary(history: History) -> dict[str, dict[str, Any] | None]:
    """report.json's metrics "split_brain" (the windows with two actives, and
    who) and "no_active" (those with none), each with its total in ms; both
    None in active-active or without role logs."""
    found = held(history)
    if isinstance(found, str):
        return {"split_brain": None, "no_active": None}
    spans, _, end = found
    two, none = overlaps(spans), gaps(spans, end)
    return {"split_brain": {"total_ms": _total_ms((s, e) for s, e, _ in two),
                            "windows": [{"from": round(s, 3), "to": round(e, 3),
                                         "nodes": list(who)} for s, e, who in two]},
            "no_active": {"total_ms": _total_ms(none),
                          "windows": [{"from": round(s, 3), "to": round(e, 3)}
                                      for s, e in none]}}


def _total_ms(windows: Iterable[Span]) -> float:
    return round(1000.0 * sum(e - s for s, e in windows), 1)


def check(history: History, snapshots: Sequence[Snapshot], params: Mapping[str, Any]) -> Result:
    handover = float(params.get("handover", 0.5))
    fence = float(params.get("fence_within", 5.0))
    found = held(history)
    if isinstance(found, str):
        return Result(NAME, UNKNOWN, found)
    spans, faults, _ = found
    windows = overlaps(spans)
    total = sum(e - s for s, e, _ in windows)
    late: list[str] = []
    lines: list[str] = []
    for s, e, who in windows:
        behind = [(kind, target, healed) for kind, target, at, healed in faults
                  if at <= e and healed >= s - fence]
        if behind:
            kind, target, healed = max(behind, key=lambda b: b[2])
            allowed, why = healed + fence, f"{kind}→{target}"
            note = (f"{why}, ended {ms(e - healed)} after its heal" if healed < e
                    else f"during {why}")
        else:
            allowed, note = s + handover, "no fault: a handover"
        line = f"{'+'.join(who)} {s:.3f}-{e:.3f} s ({ms(e - s)}, {note})"
        lines.append(line)
        if e > allowed + 1e-9:
            late.append(line)
    if late:
        return Result(NAME, FAIL, f"{len(late)} of {len(windows)} windows with two actives "
                      f"outlasted their bound (handover {ms(handover)}, fenced within "
                      f"{ms(fence)} of a fault's heal): {examples(late)}; two actives "
                      f"for {ms(total)} in all")
    if not windows:
        return Result(NAME, PASS, "never two actives at once")
    return Result(NAME, PASS, f"two actives for {ms(total)} in all, each window within its "
                  f"bound: {examples(lines)}")


__all__ = ["NAME", "PARAMS", "active_spans", "check", "down_windows", "gaps", "held",
           "overlaps", "role_timeline", "summary"]
