"""The sending side: the dirty set, frames within the byte budget, replays and
snapshots."""

from __future__ import annotations

import pytest

from node.conntrack import Conntrack
from syncbus import codec
from syncbus.coalesce import Coalescer
from syncbus.messages import (
    ConnId,
    CtBatch,
    CtDelete,
    CtUpsert,
    ResyncRequest,
    SnapshotChunk,
    SnapshotEnd,
    SnapshotStart,
)
from syncbus.outbox import Outbox
from tests.syncbus.helpers import KEY, open_tcp, open_udp


def items_of(frames: list[object]) -> list[object]:
    out: list[object] = []
    for f in frames:
        body = codec.decode(f.payload, KEY).body  # type: ignore[attr-defined]
        assert isinstance(body, CtBatch)
        out += body.items
    return out


# ------------------------------------------------------------------ the dirty set
def test_a_connection_is_queued_once_and_leaves_with_its_latest_state() -> None:
    c: Coalescer[str, str] = Coalescer(budget=10_000, delay=0.005)
    c.upsert("k1", "v1", 1.0)
    c.upsert("k2", "w1", 1.001)
    c.upsert("k1", "v2", 1.002)
    assert len(c) == 2 and c.coalesced == 1
    assert c.drain() == [((), "v2"), ((), "w1")]  # k1 keeps its place, with its last state
    assert len(c) == 0 and c.next_deadline() is None


def test_a_destroy_replaces_a_pending_upsert() -> None:
    c: Coalescer[str, str] = Coalescer()
    c.upsert("k", "state", 1.0)
    c.delete("k", "gone", 1.0)
    assert c.drain() == [(("gone",), None)]


def test_a_destroy_then_a_new_connection_on_the_tuple_keeps_both_in_order() -> None:
    c: Coalescer[str, str] = Coalescer()
    c.delete("k", "old-gone", 1.0)
    c.upsert("k", "new", 1.0)
    c.delete("k", "new-gone", 1.0)
    c.upsert("k", "newer", 1.0)
    assert c.drain() == [(("old-gone", "new-gone"), "newer")]


def test_flush_timer_and_byte_budget() -> None:
    c: Coalescer[int, int] = Coalescer(budget=1000, delay=0.005)
    assert not c.due(1.0)
    assert c.upsert(1, 1, 1.0) is False
    assert c.next_deadline() == pytest.approx(1.005)
    assert not c.due(1.004) and c.due(1.005)
    full = [c.upsert(i, i, 1.001) for i in range(2, 20)]
    assert full[-1] is True and c.due(1.001)  # the budget is reached before the timer


# ------------------------------------------------------------------ frames
def test_frames_stay_within_the_budget_and_seqs_have_no_gaps() -> None:
    ct = Conntrack()
    entries = [open_tcp(ct, i, 10.0) for i in range(300)]
    ob = Outbox("c1", "a", 7, KEY, budget=4096)
    for e in entries:
        ob.upsert(e, 10.0)
    frames = ob.flush(10.0)
    assert all(len(f.payload) <= 4096 for f in frames)
    envs = [codec.decode(f.payload, KEY) for f in frames]
    assert [e.seq for e in envs] == list(range(1, len(frames) + 1))
    got = items_of(frames)
    assert [i.conn.id for i in got] == [e.id for e in entries]  # type: ignore[attr-defined]
    assert ob.flush(10.0) == []


def test_the_batch_carries_the_state_at_flush_time() -> None:
    ct = Conntrack()
    e = open_udp(ct, 1, 10.0)
    ob = Outbox("c1", "a", 7, KEY)
    ob.upsert(e, 10.0)
    e.mark = 77
    (item,) = items_of(ob.poll(10.01))
    assert isinstance(item, CtUpsert) and item.mark == 77


def test_poll_waits_for_the_timer() -> None:
    ct = Conntrack()
    ob = Outbox("c1", "a", 7, KEY, delay=0.005)
    ob.upsert(open_udp(ct, 1, 10.0), 10.0)
    assert ob.poll(10.001) == []
    assert len(ob.poll(10.005)) == 1


def test_replay_returns_the_kept_frames_byte_for_byte() -> None:
    ct = Conntrack()
    ob = Outbox("c1", "a", 7, KEY)
    sent = []
    for i in range(5):
        ob.upsert(open_udp(ct, i, 10.0), 10.0)
        sent += ob.flush(10.0)
    again = ob.replay(ResyncRequest("b", 7, 3, False))
    assert again is not None
    assert [f.payload for f in again] == [f.payload for f in sent[2:]]
    assert all(f.topic == "ctlab/c1/resync/a/resp/b" for f in again)
    assert ob.replay(ResyncRequest("b", 7, 6, False)) == []  # nothing newer
    assert ob.replay(ResyncRequest("b", 6, 1, False)) is None  # another epoch: snapshot
    assert ob.replay(ResyncRequest("b", 0, None, True)) is None


def test_history_is_bounded_and_then_a_snapshot_is_needed() -> None:
    ct = Conntrack()
    ob = Outbox("c1", "a", 7, KEY, history_bytes=600)
    for i in range(20):
        ob.upsert(open_udp(ct, i, 10.0), 10.0)
        ob.flush(10.0)
    assert ob.replay(ResyncRequest("b", 7, 1, False)) is None
    assert ob.replay(ResyncRequest("b", 7, 20, False)) is not None


def test_snapshot_has_markers_masters_first_and_chunks_within_budget() -> None:
    ct = Conntrack()
    entries = [open_tcp(ct, i, 10.0) for i in range(100)]
    entries[0].master = entries[1]  # an expected connection of entries[1]
    ob = Outbox("c1", "a", 7, KEY, budget=2048)
    ob.upsert(entries[5], 10.0)
    ob.flush(10.0)
    w = ob.snapshot("b", ct.entries())
    frames = []
    while (f := w.next(10.0)) is not None:
        frames.append(f)
    bodies = [codec.decode(f.payload, KEY).body for f in frames]
    start, *chunks, end = bodies
    assert isinstance(start, SnapshotStart) and start.as_of_seq == 1 and start.entries == 100
    assert isinstance(end, SnapshotEnd) and end.chunks == len(chunks) and end.items == 100
    assert all(isinstance(c, SnapshotChunk) for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))  # type: ignore[union-attr]
    assert all(len(f.payload) <= 2048 for f in frames)
    ids = [i.conn.id for c in chunks for i in c.items]  # type: ignore[union-attr]
    assert ids[-1] == entries[0].id  # the expected connection comes after its master


def test_deletes_carry_the_creator_identity_and_go_in_order() -> None:
    ct = Conntrack()
    e = open_udp(ct, 1, 10.0)
    ob = Outbox("c1", "b", 3, KEY, identity=lambda entry: ConnId("a", 7, 99))
    ob.upsert(e, 10.0)
    ob.delete(CtDelete(ConnId("a", 7, 99), e.orig, e.reply, 0), 10.0)
    (item,) = items_of(ob.flush(10.0))
    assert item == CtDelete(ConnId("a", 7, 99), e.orig, e.reply, 0)
