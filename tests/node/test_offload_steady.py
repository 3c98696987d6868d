"""Card._steady(): install_synced()'s one-call decision for the usual record a
standby's card follows (an established, assured TCP connection already in the
card both ways) leaves exactly what _update_synced() leaves, whatever the
entry's state (TCP state, status bits, helper) and whatever its flow and
hardware entries hold (torn down, pending, one way only, not established, an
insert failed or in flight, a delete in flight, a software-only zone, a retry
waiting)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from node.conntrack import Conntrack, Sysctl
from node.conntrack.entry import (
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_HELPER,
    IPS_OFFLOAD,
    IPS_SEEN_REPLY,
    IPS_SEQ_ADJUST,
    Entry,
)
from node.conntrack.tcp_table import sES, sFW, sTW
from node.offload import Card, Faults
from node.offload import flowtable as ft
from node.offload.hwtable import ABSENT, DYING, FAILED, IN_HW, PENDING

from .test_offload_many import NOW, _install, _origin_entry, _synced

KINDS = ("tcp", "tcp", "tcp", "udp_assured", "udp")
# What may have changed between two records of a connection, on the entry (a
# new record's state) or in the card (its GC, its faults, its commands).
CHANGES = ("none", "fin", "time_wait", "not_assured", "seq_adjust", "helper_bit",
           "helper", "teardown", "one_way", "not_established", "hw_pending_flag",
           "orig_failed", "reply_failed", "orig_absent", "reply_pending", "orig_dying",
           "sw_only", "retry_waiting", "not_seen_reply", "reply_bit_only", "unconfirmed")

# ... of which these leave the connection steady: nothing to send to the card (a
# command in flight for the flow, an insert still queued, a zone made software-only
# after its flow went in), a waiting retry forgotten
STILL_STEADY = ("hw_pending_flag", "reply_pending", "sw_only", "retry_waiting")


def _tcp_state(entry: Entry, state: int) -> None:
    conn = entry.proto
    if conn is None:  # (not TCP)
        return
    if conn.__class__ is bytes:
        entry.proto = bytes((state,)) + conn[1:]
    else:
        conn.state = state


def _change(card: Card, entry: Entry, change: str, now: float) -> None:
    flows, state = card.flows, card.hw.state
    fid = flows.fid_of(entry)
    if change == "fin":
        _tcp_state(entry, sFW)
    elif change == "time_wait":
        _tcp_state(entry, sTW)
    elif change == "not_assured":
        entry.status &= ~IPS_ASSURED
    elif change == "not_seen_reply":
        entry.status &= ~(IPS_SEEN_REPLY | IPS_ASSURED)
    elif change == "reply_bit_only":  # (states no connection reaches: each bit checked)
        entry.status &= ~IPS_SEEN_REPLY
    elif change == "unconfirmed":
        entry.status &= ~IPS_CONFIRMED
    elif change == "seq_adjust":
        entry.status |= IPS_SEQ_ADJUST
    elif change == "helper_bit":
        entry.status |= IPS_HELPER
    elif change == "helper":
        entry.helper = "ftp"
    elif change == "sw_only":
        card.sw_only_zones.add(entry.zone)
    elif change == "retry_waiting":
        card._later(entry, now)
    elif fid >= 0:
        if change == "teardown":
            flows.flags[fid] |= ft.NF_FLOW_TEARDOWN
        elif change == "one_way":
            flows.flags[fid] &= ~ft.NF_FLOW_HW_BIDIRECTIONAL
        elif change == "not_established":
            flows.flags[fid] &= ~ft.NF_FLOW_HW_ESTABLISHED
        elif change == "hw_pending_flag":
            flows.flags[fid] |= ft.NF_FLOW_HW_PENDING
        elif change == "orig_failed":
            state[2 * fid] = FAILED
        elif change == "reply_failed":
            state[2 * fid + 1] = FAILED
        elif change == "orig_absent":
            state[2 * fid] = ABSENT
        elif change == "reply_pending":
            state[2 * fid + 1] = PENDING
        elif change == "orig_dying":
            state[2 * fid] = DYING


def _world(spec: dict[str, Any], steady: bool) -> tuple[Any, ...]:
    """Pre-install the connections, change what `spec` says, then let the card
    follow a record of each (as a replica does after writing it), with or
    without _steady(); return everything the card and the entries hold."""
    origin = Conntrack(Sysctl(), events=False)
    ct = Conntrack(Sysctl(), events=False)
    card = Card(ct, Faults(insert_latency=spec["latency"]))
    if not steady:
        card._steady = lambda entry, status: False  # type: ignore[method-assign]
    card.poll(NOW)
    entries = [_synced(ct, _origin_entry(origin, kind, 20000 + i), 0, 0, 0)
               for i, (kind, _) in enumerate(spec["conns"])]
    for e in entries:
        card.install_synced(e, NOW)
    if spec["settle"]:
        card.poll(NOW + 0.5)  # inserts completed: IN_HW
    now = NOW + 0.6
    for e, (_, change) in zip(entries, spec["conns"], strict=True):
        _change(card, e, change, now)
    state = [_install(card, entries, now, many=False)]
    later = card.poll(now + 1.0)
    state.append(([(d.entry.id, d.direction, d.at) for d in later.completed],
                  [(f.entry.id, f.direction, f.reason) for f in later.failed],
                  [(t.entry.id, t.reason) for t in later.teardowns], later.freed))
    state.append(_install(card, entries, now + 1.5, many=False))  # and the next record
    return tuple(state)


_specs = st.fixed_dictionaries({
    "latency": st.sampled_from((0.0, 0.002)),
    "settle": st.booleans(),
    "conns": st.lists(st.tuples(st.sampled_from(KINDS), st.sampled_from(CHANGES)),
                      min_size=1, max_size=6)})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_specs)
@example({"latency": 0.0, "settle": True, "conns": [("tcp", c) for c in CHANGES]})
@example({"latency": 0.002, "settle": False, "conns": [("tcp", c) for c in CHANGES]})
@example({"latency": 0.0, "settle": True, "conns": [("udp_assured", "none"), ("udp", "none")]})
def test_steady_leaves_what_update_synced_leaves(spec: dict[str, Any]) -> None:
    assert _world(spec, steady=True) == _world(spec, steady=False)


def test_the_steady_case_is_decided_in_one_call() -> None:
    """The shortcut itself is taken: an established TCP connection whose flow is in
    the card both ways, and nothing else of those above."""
    ct = Conntrack(Sysctl(), events=False)
    card = Card(ct, Faults(insert_latency=0.0))
    origin = Conntrack(Sysctl(), events=False)
    entries = {kind: _synced(ct, _origin_entry(origin, kind, 20000 + i), 0, 0, 0)
               for i, kind in enumerate(("tcp", "udp_assured"))}
    for e in entries.values():
        card.install_synced(e, NOW)
    card.poll(NOW + 0.5)
    tcp, udp = entries["tcp"], entries["udp_assured"]
    assert tcp.status & IPS_OFFLOAD and card.hw.state[2 * card.flows.fid_of(tcp)] == IN_HW
    assert card._steady(tcp, tcp.status)
    assert not card._steady(udp, udp.status)  # (UDP: _update_synced() decides)
    for change in CHANGES[1:]:
        ct2 = Conntrack(Sysctl(), events=False)
        card2 = Card(ct2, Faults(insert_latency=0.0))
        e = _synced(ct2, _origin_entry(Conntrack(Sysctl(), events=False), "tcp", 20000), 0, 0, 0)
        card2.install_synced(e, NOW)
        card2.poll(NOW + 0.5)
        _change(card2, e, change, NOW + 0.6)
        assert card2._steady(e, e.status) == (change in STILL_STEADY), change
    assert tcp.proto is not None and (tcp.proto[0] if type(tcp.proto) is bytes
                                      else tcp.proto.state) == sES
