"""The active role moves only for a reason. Every change of active that the
switch follows and that no fault on the active began must be explained: by a
fault on the member that had the role or on the one that took it (in effect
then, or healed at most `slack` seconds before), or by a preemption (a
member of higher priority, preempt on, taking the role back). A broker that
stops, restarts or stalls, or a card fault, explains nothing: the active keeps
its role through them. A standby that takes over from a healthy active is a
spurious failover: its flows move, its card is reprogrammed, and two members
may forward at once until the old one is fenced.

On a bridged pair of brokers, one per site (the history's F_SITES says which
member uses which), either broker's outage and a cut of the bridge
(bridge_cut) are partitions between the sites: each explains a move from a
member of one site to a member of the other, which is what any member does
when a whole site falls silent (without a witness nothing tells that from the
site's death). single_active measures the two actives such a partition gives."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scenarios.invariants.failover_time import resumed
from scenarios.invariants.faulted import fault_windows
from scenarios.invariants.result import FAIL, PASS, Result, examples
from scenarios.model import F_FAILOVER, F_SITES, History, Param, Snapshot

NAME = "stable_roles"
PARAMS = {"slack": Param("seconds", 2.0, "a fault healed this long before a move still "
                                         "explains it", lo=0.0, hi=3600.0)}
# Faults that are no reason for the active role to move.
NO_REASON = ("broker_stop", "broker_pause", "card_capacity", "card_insert_fail")
# ... but on a bridged pair these are partitions between the sites
SITE_PARTITIONS = ("broker_stop", "broker_pause", "bridge_cut")
PREEMPT = "preempting"  # the reason a member gives when it takes the role back


def check(history: History, snapshots: Sequence[Snapshot], params: Mapping[str, Any]) -> Result:
    slack = float(params.get("slack", 2.0))
    faults = [w for w in fault_windows(history) if w[0] not in NO_REASON]
    seen = history.by_f(F_SITES)
    sites: Mapping[str, Any] = seen[-1].value if seen and isinstance(seen[-1].value, Mapping) \
        else {}
    partitions = fault_windows(history, SITE_PARTITIONS) if sites else []
    # (an outage the active came back from before anyone took over moved nothing)
    moves = [op for op, done in history.pairs(F_FAILOVER)
             if isinstance(op.value, Mapping) and not resumed(done)]
    unprompted = [op for op in moves if op.value.get("unprompted")]
    spurious, explained = [], 0
    for op in unprompted:
        v = op.value
        old, new, why = str(v.get("from", "?")), str(v.get("to", "?")), str(v.get("reason", ""))
        if why.startswith(PREEMPT) or any(
                target in (old, new) and at <= op.time <= healed + slack
                for _, target, at, healed in faults) or (
                sites.get(old) != sites.get(new) and any(
                    at <= op.time <= healed + slack for _, _, at, healed in partitions)):
            explained += 1
            continue
        spurious.append(f"{old}→{new} at {op.time:.3f}s ({why or 'no reason given'})")
    if spurious:
        return Result(NAME, FAIL, f"{len(spurious)} of {len(moves)} moves of the active role "
                      f"had no fault or preemption behind them: {examples(spurious)}")
    if not moves:
        return Result(NAME, PASS, "the active role never moved")
    return Result(NAME, PASS, f"{len(moves)} moves of the active role, "
                  f"{len(moves) - len(unprompted)} begun by a fault on the active, "
                  f"{explained} explained by a fault or a preemption")
