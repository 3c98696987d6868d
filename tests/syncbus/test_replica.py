"""The receiving side: gaps and resyncs, duplicates, epochs, tombstones, merges,
snapshots and pre-installation in the card."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from node.conntrack import Conntrack
from node.conntrack.entry import IPS_HW_OFFLOAD, IPS_OFFLOAD, Entry
from node.conntrack.events import DESTROY
from node.conntrack.tcp import TcpConn, state_of, thaw
from node.conntrack.tcp_table import IP_CT_TCP_FLAG_BE_LIBERAL, sES, sFW, sSS
from node.offload import Card, Faults
from syncbus import codec, ctstate
from syncbus.messages import (
    ConnId,
    CtBatch,
    CtDelete,
    CtUpsert,
    Envelope,
    Heartbeat,
    Item,
    NatInfo,
    NatRangeInfo,
    ResyncRequest,
    SnapshotChunk,
    SnapshotEnd,
    SnapshotStart,
)
from syncbus.replica import Replica, RequestResync, SnapshotComplete
from tests.syncbus.helpers import KEY, open_tcp, open_udp

NOW = 1000.0


@pytest.fixture(autouse=True, params=["objects", "wire"])
def _path(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test runs twice: with the envelopes as built, and as a member
    receives them (encoded, then decoded lazily: a CtFrame whose plain records
    take the replica's fast lane)."""
    Origin.wire = request.param == "wire"
    yield
    Origin.wire = False


class Origin:
    """A real engine on the sending side, producing records of its entries."""

    wire = False

    def __init__(self, name: str = "a", epoch: int = 7) -> None:
        self.name, self.epoch = name, epoch
        self.ct = Conntrack()
        self.seq = 0

    def up(self, entry: object, now: float = NOW) -> CtUpsert:
        return ctstate.upsert_of(entry, ConnId(self.name, self.epoch, entry.id), now)  # type: ignore[arg-type]

    def dead(self, entry: object) -> CtDelete:
        e = entry
        return CtDelete(ConnId(self.name, self.epoch, e.id), e.orig, e.reply, e.zone)  # type: ignore[attr-defined]

    def env(self, *items: Item, seq: int | None = None, sent_at: float = NOW,
            epoch: int | None = None) -> Envelope:
        if seq is None:
            self.seq += 1
            seq = self.seq
        env = Envelope(1, "c1", self.name, self.epoch if epoch is None else epoch, seq, sent_at,
                       CtBatch(tuple(items)))
        return codec.decode(codec.encode(env, KEY), KEY, lazy=True) if self.wire else env


def standby(card: bool = True, **kw: object) -> tuple[Replica, Conntrack, Card]:
    ct = Conntrack()
    c = Card(ct, Faults(insert_latency=0.0))
    return Replica("b", 3, ct, c if card else None, **kw), ct, c  # type: ignore[arg-type]


def snapshot_of(ct: Conntrack) -> list[tuple[object, ...]]:
    return sorted((e.orig, e.reply, e.status, e.mark, round(e.expires_at, 3))
                  for e in ct.entries())


# ------------------------------------------------------------------ apply + install
def test_a_create_is_inserted_and_preinstalled_in_the_card() -> None:
    a = Origin()
    e = open_tcp(a.ct, 1, NOW - 0.004)  # created 4 ms before it is sent
    r, ct, card = standby()
    assert r.apply(a.env(a.up(e)), NOW + 0.002) == []
    mine = ct.find(e.orig)
    assert mine is not None and mine.status & IPS_OFFLOAD
    got, want = ctstate.tcp_info(mine.proto), ctstate.tcp_info(e.proto)
    liberal = IP_CT_TCP_FLAG_BE_LIBERAL  # set by the card when it offloads, as in the kernel
    assert got == want._replace(flags0=want.flags0 | liberal, flags1=want.flags1 | liberal)
    assert got.state == sES
    card.poll(NOW + 0.002)
    assert mine.status & IPS_HW_OFFLOAD
    assert card.inspect(mine) is not None
    assert list(r.install_latency) == [pytest.approx(0.006)]
    assert r.identity(mine) == ConnId("a", 7, e.id)


def test_the_senders_offload_bits_do_not_fool_the_local_card() -> None:
    a = Origin()
    e = open_udp(a.ct, 1, NOW)
    e.status |= IPS_OFFLOAD | IPS_HW_OFFLOAD  # offloaded on the sender
    r, _ct, _ = standby()
    r.apply(a.env(a.up(e)), NOW)
    assert r.stats["installed"] == 1  # still installed here


def test_an_update_replaces_the_state_of_the_same_writer() -> None:
    a = Origin()
    e = open_tcp(a.ct, 1, NOW)
    r, ct, _ = standby(card=False)
    r.apply(a.env(a.up(e)), NOW)
    e.proto.state = sFW
    e.mark = 5
    a.ct.refresh(e, 120.0, NOW + 1)
    r.apply(a.env(a.up(e, NOW + 1)), NOW + 1)
    mine = ct.find(e.orig)
    assert mine is not None and state_of(mine) == sFW and mine.mark == 5
    assert mine.expires_at == pytest.approx(NOW + 121)  # type: ignore[union-attr]
    assert r.stats["updated"] == 1


def test_a_replica_stores_the_tcp_state_packed_as_it_came() -> None:
    """Without a card too, a new replicated connection's TCP state is the
    record's block packed (91 bytes, no TcpConn); it reads as the injected state
    (BE_LIBERAL both ways), and the first writer unpacks it to exactly that."""
    a = Origin()
    e = open_tcp(a.ct, 1, NOW)
    r, ct, _ = standby(card=False)
    record = a.up(e)
    r.apply(a.env(record), NOW)
    mine = ct.find(e.orig)
    assert mine is not None and type(mine.proto) is bytes and record.tcp is not None
    injected = ctstate.tcp_info(ctstate.injected_tcp(record.tcp))
    assert ctstate.tcp_info(mine.proto) == injected and state_of(mine) == sES
    conn = thaw(mine)
    assert conn is mine.proto and ctstate.tcp_info(conn) == injected


def test_a_record_beyond_the_kernels_widths_is_kept_unpacked() -> None:
    """packed_tcp() for a state the packed layout cannot hold (the codec refuses
    such a record; a caller building its own may not): the injected TcpConn,
    the same state, nothing lost to a wrapped field."""
    a = Origin()
    record = a.up(open_tcp(a.ct, 1, NOW))
    assert record.tcp is not None
    wide = record.tcp._replace(td_end0=1 << 32, retrans=300)
    got = ctstate.packed_tcp(wide)
    assert type(got) is TcpConn
    assert ctstate.tcp_info(got) == ctstate.tcp_info(ctstate.injected_tcp(wide))
    assert got.td_end0 == 1 << 32 and got.retrans == 300
    assert type(ctstate.packed_tcp(record.tcp)) is bytes


def test_an_update_rewrites_the_tcp_state_in_place_with_be_liberal() -> None:
    """A standby's TcpConn (unpacked by a packet or a merge) is written, not
    replaced (no new object per update to promote into the collector's old
    generation), to exactly the record's state with BE_LIBERAL in both
    directions, as a fresh injected one."""
    a = Origin()
    e = open_tcp(a.ct, 1, NOW)
    r, ct, _ = standby(card=False)
    r.apply(a.env(a.up(e)), NOW)
    mine = ct.find(e.orig)
    assert mine is not None
    conn = thaw(mine)  # as the first packet that writes it does
    e.proto.state, e.proto.td_end0, e.proto.retrans = sFW, 123456, 2
    record = a.up(e, NOW + 1)
    r.apply(a.env(record), NOW + 1)
    assert mine.proto is conn
    assert record.tcp is not None
    assert conn is not None
    assert ctstate.tcp_info(conn) == ctstate.tcp_info(ctstate.injected_tcp(record.tcp))
    liberal = IP_CT_TCP_FLAG_BE_LIBERAL
    assert conn.flags0 & liberal and conn.flags1 & liberal and conn.td_end0 == 123456


def test_a_preinstalled_connection_stays_packed_through_its_updates() -> None:
    """The card holds a pre-installed connection, so its TCP state is packed
    (tcp.freeze()); the active's updates replace the packed state with the
    record's, BE_LIBERAL included, without unpacking it."""
    a = Origin()
    e = open_tcp(a.ct, 1, NOW)
    r, ct, _ = standby()
    r.apply(a.env(a.up(e)), NOW)
    mine = ct.find(e.orig)
    assert mine is not None and mine.status & IPS_OFFLOAD and type(mine.proto) is bytes
    e.proto.td_end0, e.proto.retrans = 123456, 2  # (still ESTABLISHED: a FIN would tear down)
    record = a.up(e, NOW + 1)
    r.apply(a.env(record), NOW + 1)
    assert type(mine.proto) is bytes and record.tcp is not None
    assert ctstate.tcp_info(mine.proto) == ctstate.tcp_info(ctstate.injected_tcp(record.tcp))


# ------------------------------------------------------------------ seqs
def test_duplicates_and_replays_are_dropped_without_touching_state() -> None:
    a = Origin()
    e = open_udp(a.ct, 1, NOW)
    r, ct, _ = standby()
    first = a.env(a.up(e))
    r.apply(first, NOW)
    before = snapshot_of(ct)
    e.mark = 9
    r.apply(Envelope(1, "c1", "a", 7, first.seq, NOW, CtBatch((a.up(e),))), NOW + 1)
    assert snapshot_of(ct) == before
    assert r.stats["duplicates"] == 1


def test_a_gap_asks_for_a_resync_from_the_first_missing_seq() -> None:
    a = Origin()
    r, ct, _ = standby()
    r.apply(a.env(a.up(open_udp(a.ct, 1, NOW))), NOW)
    lost = a.env(a.up(open_udp(a.ct, 2, NOW)))
    actions = r.apply(a.env(a.up(open_udp(a.ct, 3, NOW))), NOW)
    assert actions == [RequestResync("a", ResyncRequest("b", 7, 2, False))]
    assert len(ct) == 2  # what arrived is applied anyway
    assert r.apply(a.env(a.up(open_udp(a.ct, 4, NOW))), NOW) == []  # one request at a time
    assert r.tick(NOW + 0.5) == []
    assert r.tick(NOW + 1.0) == actions  # retried while the gap stays open
    assert r.apply(lost, NOW + 1.1) == []  # the replay closes it
    assert r.origin_state("a") == (7, 5) and not r.gap_open("a")
    assert r.tick(NOW + 3) == []


def test_the_first_frame_from_an_origin_asks_for_what_came_before() -> None:
    a = Origin()
    a.seq = 41
    r, _, _ = standby()
    (act,) = r.apply(a.env(a.up(open_udp(a.ct, 1, NOW))), NOW)
    assert isinstance(act, RequestResync) and act.request.from_seq == 1


def test_an_older_frame_does_not_undo_a_newer_one() -> None:
    a = Origin()
    e = open_udp(a.ct, 1, NOW)
    r, ct, _ = standby()
    r.apply(a.env(a.up(e)), NOW)
    e.mark = 1
    old = a.env(a.up(e))  # seq 2, delayed
    e.mark = 2
    r.apply(a.env(a.up(e)), NOW)  # seq 3 first: a gap
    r.apply(old, NOW)  # the replay of seq 2 arrives later
    assert ct.find(e.orig).mark == 2  # type: ignore[union-attr]
    assert r.stats["stale"] == 1


def test_a_new_epoch_restarts_the_seq_and_fences_the_old_one() -> None:
    a = Origin()
    r, ct, _ = standby()
    for i in range(3):
        r.apply(a.env(a.up(open_udp(a.ct, i, NOW))), NOW)
    reborn = Origin("a", 8)
    e = open_udp(reborn.ct, 10, NOW)
    assert r.apply(reborn.env(reborn.up(e)), NOW) == []  # seq 1 of epoch 8: no gap
    assert r.origin_state("a") == (8, 2)
    before = snapshot_of(ct)
    late = a.env(a.up(open_udp(a.ct, 20, NOW)))  # epoch 7, arriving late
    assert r.apply(late, NOW) == []
    assert snapshot_of(ct) == before and r.stats["fenced"] == 1


def test_a_lost_frame_on_an_idle_stream_is_seen_through_heartbeats() -> None:
    a = Origin()
    r, _, _ = standby()
    r.apply(a.env(a.up(open_udp(a.ct, 1, NOW))), NOW)
    a.seq += 1  # frame 2 is lost, and nothing follows it

    def hb(seq: int) -> Envelope:
        return Envelope(1, "c1", "a", 7, seq, NOW, Heartbeat("a", "active", 1, 1, True, 2, 2))
    assert r.apply(hb(1), NOW) == []  # it may just be in flight
    (act,) = r.apply(hb(2), NOW + 0.1)  # still missing a heartbeat later
    assert isinstance(act, RequestResync) and act.request.from_seq == 2


# ------------------------------------------------------------------ tombstones
def test_a_delete_wins_over_a_later_arriving_update_of_the_connection() -> None:
    a = Origin()
    e = open_tcp(a.ct, 1, NOW)
    r, ct, _ = standby()
    r.apply(a.env(a.up(e)), NOW)
    late_update = a.env(a.up(e))
    r.apply(a.env(a.dead(e)), NOW)
    assert ct.find(e.orig) is None and r.tombstoned((0, e.orig))
    r.apply(late_update, NOW)  # arrives after the delete (a replay, a snapshot ...)
    assert ct.find(e.orig) is None
    assert r.stats["tombstoned"] == 1


def test_a_delete_before_the_create_still_wins() -> None:
    a = Origin()
    e = open_udp(a.ct, 1, NOW)
    r, ct, _ = standby()
    create = a.env(a.up(e))
    r.apply(a.env(a.dead(e)), NOW)  # seq 2 before seq 1
    r.apply(create, NOW)
    assert ct.find(e.orig) is None and len(ct) == 0


def test_a_new_connection_on_a_tombstoned_tuple_is_accepted() -> None:
    a = Origin()
    e = open_udp(a.ct, 1, NOW)
    r, ct, _ = standby()
    r.apply(a.env(a.up(e)), NOW)
    r.apply(a.env(a.dead(e)), NOW)
    a.ct.kill(e, NOW)
    e2 = open_udp(a.ct, 1, NOW + 1)  # same tuple, a new entry id
    assert e2.id != e.id
    r.apply(a.env(a.up(e2)), NOW + 1)
    mine = ct.find(e2.orig)
    assert mine is not None and r.identity(mine) == ConnId("a", 7, e2.id)
    old = ctstate.upsert_of(e, ConnId("a", 7, e.id), NOW)
    r.apply(a.env(old._replace(mark=99)), NOW + 1)  # the old one again: still dead
    assert ct.find(e.orig).mark == 0  # type: ignore[union-attr]


def test_tombstones_expire_after_a_bounded_time() -> None:
    a = Origin()
    e = open_udp(a.ct, 1, NOW)
    r, _ct, _ = standby(tombstone_ttl=30.0)
    r.apply(a.env(a.dead(e)), NOW)
    r.tick(NOW + 29)
    assert r.tombstoned((0, e.orig))
    r.tick(NOW + 30)
    assert not r.tombstoned((0, e.orig))


def test_the_replicas_own_removals_are_not_republished() -> None:
    a = Origin()
    e = open_udp(a.ct, 1, NOW)
    r, ct, _ = standby()
    r.apply(a.env(a.up(e)), NOW)
    mine = ct.find(e.orig)
    r.apply(a.env(a.dead(e)), NOW)
    (ev,) = ct.take_events()
    assert ev.type == DESTROY and r.destroyed(mine.id) is None  # type: ignore[union-attr]


def test_expiry_of_a_replicated_entry_is_not_published_unless_adopted() -> None:
    a = Origin()
    e1, e2 = open_udp(a.ct, 1, NOW), open_udp(a.ct, 2, NOW)
    r, ct, _ = standby(card=False)
    r.apply(a.env(a.up(e1), a.up(e2)), NOW)
    m1, m2 = ct.find(e1.orig), ct.find(e2.orig)
    r.adopt(m2)  # type: ignore[arg-type]  # this node's traffic updated it (after a failover)
    ct.expire(NOW + 1000)
    gone = {ev.entry.id: r.destroyed(ev.entry.id) for ev in ct.take_events()}
    assert gone == {m1.id: None, m2.id: ConnId("a", 7, e2.id)}  # type: ignore[union-attr]


# ------------------------------------------------------------------ merging
def test_a_local_connection_keeps_its_more_advanced_tcp_state() -> None:
    r, ct, _ = standby(card=False)
    mine = open_tcp(ct, 1, NOW)  # this node's own traffic: ESTABLISHED
    a = Origin()
    theirs = open_tcp(a.ct, 1, NOW)
    theirs.proto.state = sSS
    theirs.proto.seen[0].td_end = 500  # behind
    r.apply(a.env(a.up(theirs)), NOW)
    assert mine.proto.state == sES and mine.proto.seen[0].td_end == 1011
    theirs.proto.state = sFW  # more advanced: wins
    theirs.proto.seen[0].td_end = 1500
    r.apply(a.env(a.up(theirs)), NOW)
    assert mine.proto.state == sFW and mine.proto.seen[0].td_end == 1500
    assert r.stats["merged"] == 2


def test_tcp_merge_is_monotonic_in_sequence_space() -> None:
    ct = Conntrack()
    e = open_tcp(ct, 1, NOW)
    info = ctstate.tcp_info(e.proto)
    wrapped = info._replace(td_end0=(info.td_end0 - 10) & 0xFFFFFFFF)
    assert not ctstate.merge_tcp(e.proto, wrapped)  # behind: nothing moves
    ahead = info._replace(td_end0=(info.td_end0 + 2**31 - 1) & 0xFFFFFFFF)
    assert ctstate.merge_tcp(e.proto, ahead)
    assert e.proto.seen[0].td_end == ahead.td_end0 == ahead.orig.td_end


def test_two_writers_merge_instead_of_overwriting() -> None:
    """After a failover the new active publishes the old active's connections; a
    stale frame from the old active (back from SIGSTOP) must not roll them back."""
    a, b = Origin("a", 7), Origin("c", 2)
    e = open_tcp(a.ct, 1, NOW)
    r, ct, _ = standby(card=False)
    r.apply(a.env(a.up(e)), NOW)
    advanced = a.up(e)._replace(tcp=a.up(e).tcp._replace(state=sFW))  # type: ignore[union-attr]
    r.apply(b.env(advanced), NOW + 1)  # c adopted it: same identity, another writer
    r.apply(a.env(a.up(e)), NOW + 2)  # a's stale view
    assert state_of(ct.find(e.orig)) == sFW  # type: ignore[arg-type]


# ------------------------------------------------------------------ snapshots
def _snapshot(a: Origin, entries: list[object], as_of: int, sid: int = 1,
              index_shift: int = 0) -> list[Envelope]:
    ups = [a.up(e) for e in entries]
    body = [SnapshotStart(sid, "b", True, as_of, len(ups)),
            SnapshotChunk(sid, 0 + index_shift, tuple(ups[: len(ups) // 2])),
            SnapshotChunk(sid, 1 + index_shift, tuple(ups[len(ups) // 2:])),
            SnapshotEnd(sid, 2, len(ups))]
    return [Envelope(1, "c1", a.name, a.epoch, i + 1, NOW, b) for i, b in enumerate(body)]


def test_a_full_snapshot_completes_and_sweeps_what_the_origin_no_longer_has() -> None:
    a = Origin()
    entries = [open_udp(a.ct, i, NOW) for i in range(6)]
    r, ct, _ = standby()
    for e in entries:
        r.apply(a.env(a.up(e)), NOW)
    a.seq += 3  # three frames lost, one of them deleting entries[0]
    out: list[object] = []
    for env in _snapshot(a, entries[1:], as_of=a.seq):
        out += r.apply(env, NOW)
    assert out == [SnapshotComplete("a", 1, 5)]
    assert ct.find(entries[0].orig) is None and len(ct) == 5
    assert r.origin_state("a") == (7, a.seq + 1)


def test_a_broken_snapshot_is_asked_for_again() -> None:
    a = Origin()
    r, _ct, _ = standby()
    start, c0, _c1, end = _snapshot(a, [open_udp(a.ct, i, NOW) for i in range(4)], 0)
    r.apply(start, NOW)
    r.apply(c0, NOW)
    (act,) = r.apply(end, NOW)  # chunk 1 was lost
    assert isinstance(act, RequestResync) and act.request.full


def test_a_snapshot_for_someone_else_is_ignored() -> None:
    a = Origin()
    r, ct, _ = standby()
    _start, *rest = _snapshot(a, [open_udp(a.ct, 1, NOW)], 0)
    other = Envelope(1, "c1", "a", 7, 1, NOW, SnapshotStart(1, "c", True, 0, 1))
    for env in (other, *rest):
        assert r.apply(env, NOW) == []
    assert len(ct) == 0


# ------------------------------------------------------------------ robustness
def test_a_nat_range_the_engine_refuses_is_counted_and_skipped() -> None:
    Origin.wire = False  # the codec refuses to encode such a range (test_codec)
    a = Origin()
    e = open_udp(a.ct, 1, NOW)
    mixed = NatRangeInfo(0, b"\x01\x02\x03\x04", bytes(16), None, None, 0)  # v4 to v6
    bad = a.up(e)._replace(nat=NatInfo(mixed, None))
    r, ct, _ = standby()
    r.apply(a.env(bad, a.up(open_udp(a.ct, 2, NOW))), NOW)
    assert r.stats["bad_items"] == 1 and len(ct) == 1


def test_own_frames_are_ignored() -> None:
    r, ct, _ = standby()
    me = Origin("b", 3)
    assert r.apply(me.env(me.up(open_udp(me.ct, 1, NOW))), NOW) == []
    assert len(ct) == 0


def test_a_wanted_snapshot_is_asked_again_until_one_completes() -> None:
    a = Origin()
    r, _, _ = standby()
    first = r.request_full("a", 7, NOW)
    assert first.request.full
    r.apply(a.env(a.up(open_udp(a.ct, 1, NOW))), NOW)  # live traffic from seq 1: no gap
    assert r.tick(NOW + 0.5) == []
    assert r.tick(NOW + 1.0) == [first]  # the request (or its answer) was lost
    for env in _snapshot(a, [open_udp(a.ct, 2, NOW)], as_of=a.seq):
        r.apply(env, NOW + 1.1)
    assert r.tick(NOW + 5) == []


def test_a_heartbeat_detected_gap_is_asked_again_if_the_answer_is_lost() -> None:
    a = Origin()
    r, _, _ = standby()
    r.apply(a.env(a.up(open_udp(a.ct, 1, NOW))), NOW)

    def hb(seq: int) -> Envelope:
        return Envelope(1, "c1", "a", 7, seq, NOW, Heartbeat("a", "active", 1, 1, True, 2, 2))
    r.apply(hb(1), NOW)
    assert len(r.apply(hb(2), NOW + 0.1)) == 1  # frame 2 is missing: asked
    assert r.apply(hb(3), NOW + 0.2) == []  # asked recently
    assert len(r.apply(hb(20), NOW + 1.2)) == 1  # still missing a second later: asked again


# ------------------------------------------------------------------ the fast lane
_OPS = ("open", "advance", "fin", "delete", "other", "adopt", "replay", "touch", "tick")


def _everything(r: Replica, ct: Conntrack, card: Card, now: float) -> object:
    """All that a replica's work leaves: entries field by field, what it knows
    of them, its counters and latency samples, and the card."""
    entries = sorted(
        (e.zone, e.orig, e.id, e.reply, e.status, e.mark, e.expires_at, e.timeout,
         e.created, e.labels, type(e.proto).__name__,
         ctstate.tcp_block(e.proto) if e.orig.proto == 6 else None) for e in ct.entries())
    meta = sorted((eid, m.conn, m.aliases, m.origin, m.epoch, m.seq, m.adopted)
                  for eid, m in r.meta.items())
    flows = sorted((e.id, str(card.inspect(e))) for e in ct.entries())
    stats = {k: v for k, v in r.stats.items() if k != "fast"}  # (which lane it took)
    return entries, meta, stats, list(r.install_latency), card.stats, flows, \
        sorted(r._tombs.items(), key=repr), [(s, st.next_seq) for s, st in r.streams.items()], \
        r.tick(now)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_OPS), st.integers(0, 3), st.booleans()),
                max_size=30))
@example([("open", 0, False), ("advance", 0, True), ("advance", 0, False),
          ("replay", 0, True)])  # an overtaken update is stale
@example([("open", 0, False), ("delete", 0, False), ("open", 0, False), ("advance", 0, False),
          ("replay", 1, False), ("replay", 0, False)])  # a tombstone, a new connection
@example([("open", 2, False), ("advance", 2, True), ("delete", 2, False),
          ("replay", 0, True)])  # an update overtaken by the delete: refused
@example([("open", 1, False), ("adopt", 1, False), ("advance", 1, False), ("other", 1, True),
          ("advance", 1, False), ("touch", 1, True), ("advance", 1, False), ("fin", 1, False)])
@example([("open", 0, True), ("open", 1, True), ("open", 2, True),
          ("advance", 1, False)])  # three creates and an update of one in one frame
@example([("open", 0, True), ("open", 1, True), ("delete", 0, False),
          ("open", 2, False)])  # creates, then a delete of one of them, in one frame
def test_the_fast_lane_leaves_exactly_what_the_item_path_leaves(
        ops: list[tuple[str, int, bool]]) -> None:
    """The same frames, applied as built (CtBatch: every item through _upsert(),
    each create installed in the card on its own) and as a member receives them
    (CtFrame: plain records through _plain(), a run of creates installed
    together), leave two replicas in the same state, whatever the mix of
    creates, updates, teardowns, deletes, tombstones, other writers, adopted
    entries, duplicates, frames overtaken by later ones, other members'
    touches, and frames carrying several of a's records."""
    Origin.wire = False
    a, c = Origin("a", 7), Origin("c", 2)
    last_seen: tuple[dict[object, float], dict[object, float]] = ({}, {})
    built = standby(last_seen=last_seen[0])
    wired = standby(last_seen=last_seen[1])
    live: dict[int, Entry] = {}
    sent: list[Envelope] = []
    held: list[Envelope] = []
    group: list[Item] = []  # a's records waiting to go out together (one frame)
    applied: list[Envelope] = []  # the frames applied, in order
    now = NOW

    def deliver(env: Envelope, hold: bool = False) -> None:
        sent.append(env)
        if hold:
            held.append(env)  # overtaken by the next ones (a gap, filled later)
            return
        applied.append(env)
        built[0].apply(env, now)
        wired[0].apply(codec.decode(codec.encode(env, KEY), KEY, lazy=True), now)

    def of_a(item: Item) -> Envelope:  # a's next frame: what waited, then `item`
        env = a.env(*group, item, sent_at=now)
        group.clear()
        return env
    for op, i, flag in ops:
        now += 0.25
        e = live.get(i)
        if op == "open" and e is None:
            e = live[i] = (open_tcp if i % 2 == 0 else open_udp)(a.ct, i, now)
            if flag:  # goes out with a's next frame: several creates in one frame,
                group.append(a.up(e, now))  # then maybe an update or a delete
                continue
            env = of_a(a.up(e, now))
        elif op in ("advance", "fin") and e is not None:
            e.mark = (e.mark + 1) & 0xFFFFFFFF
            a.ct.refresh(e, 100.0 + i, now)
            if type(e.proto) is TcpConn:
                e.proto.td_end0 = (e.proto.td_end0 + 1000) & 0xFFFFFFFF
                if op == "fin":
                    e.proto.state = sFW
            env = of_a(a.up(e, now))
        elif op == "delete" and e is not None:
            env = of_a(a.dead(e))
            a.ct.kill(e, now, "test")
            del live[i]
        elif op == "other" and e is not None:  # another writer: c, or c under a's identity
            up = a.up(e, now)
            env = c.env(up if flag else up._replace(conn=ConnId("c", 2, e.id)), sent_at=now)
        elif op == "replay" and flag and held:  # a frame held back arrives late
            env = held.pop(0)
        elif op == "replay" and sent:  # a duplicate
            env = sent[i % len(sent)]
        else:
            for (r, rct, _), seen in zip((built, wired), last_seen, strict=True):
                if op == "adopt" and e is not None:
                    mine = rct.find(e.orig, e.zone)
                    if mine is not None:
                        r.adopt(mine)
                elif op == "touch" and e is not None:
                    seen[(e.zone, e.orig)] = now + (30.0 if flag else -30.0)
                elif op == "tick":
                    r.tick(now)
            continue
        deliver(env, op in ("advance", "fin") and flag)
    if group:
        deliver(a.env(*group, sent_at=now))
    assert _everything(*built, now) == _everything(*wired, now)
    assert built[0].stats["fast"] == 0  # (CtBatch: every item through _upsert())
    if applied and applied[0].origin == "a" and applied[0].seq == 1:  # a's first frame first:
        assert wired[0].stats["fast"] >= 1  # its create is a plain record
