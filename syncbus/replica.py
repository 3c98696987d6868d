"""The receiving side of a node, pure: apply what peers send to the local table.

Replica.apply(envelope, now) merges the connection records into the local
Conntrack (insert_synced() for new ones, in-place updates for known ones),
pre-installs offloadable connections in the local card, and returns actions
for the shell: resync requests when a gap is seen, snapshot completions. It
never produces events to publish: a node never republishes what it received
(conntrackd's origin tags). The DESTROY events the engine emits when the
replica removes an entry are recognisable through destroyed().

Per origin it tracks the ct stream (epoch, next expected seq, seqs received
ahead of a gap):
  - a duplicate or replayed seq is dropped; an older epoch is fenced (dropped);
    a newer epoch is a new incarnation and restarts its seq;
  - a gap is applied anyway (records are idempotent states) and answered with a
    ResyncRequest(from_seq=first missing); the origin replays the missing frames
    or sends a full snapshot; requests are retried while the gap stays open;
  - the first message from an origin counts from seq 1, so a late joiner asks
    for what came before; a heartbeat announcing a ct seq that stays missing
    for two heartbeats is a gap too (a lost frame on an otherwise idle stream).

Per connection it keeps who created it (ConnId), who last wrote it and with
which seq, so that
  - a frame older than the one that last wrote an entry does not undo it (a
    replay or a snapshot crossing live traffic);
  - one writer's states replace each other (the standby follows its active);
    two writers (active-active, an adopted entry, identity conflicts) merge
    with "most advanced wins" (ctstate.merge_state);
  - a delete leaves a tombstone (for tombstone_ttl seconds) that refuses any
    later-arriving record of the same connection or of an older one from the
    same creator, while a new connection on the same tuple (another identity)
    is accepted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from node.conntrack.entry import Entry
from node.conntrack.table import Conntrack
from syncbus import codec, ctstate
from syncbus.messages import (
    ConnId,
    ConnKey,
    CtBatch,
    CtDelete,
    CtFrame,
    CtUpsert,
    Envelope,
    Heartbeat,
    Item,
    ResyncRequest,
    SnapshotChunk,
    SnapshotEnd,
    SnapshotStart,
)

_new = tuple.__new__  # builds a NamedTuple in C, without its Python __new__
TOMBSTONE_TTL = 60.0  # > the longest a stale record can be in flight (replays, snapshots)
RESYNC_RETRY = 1.0  # re-ask when a requested range has not arrived
SNAPSHOT_STALL = 5.0  # a snapshot without progress for this long is asked again
MAX_AHEAD = 65536  # seqs held above a gap before giving up and asking for everything
SAMPLES = 100_000  # latency samples kept (a ring)


class InstallHook(Protocol):
    """The card's side (node.offload.Card): pre-install a replicated connection
    already in the local conntrack, or bring an offloaded one up to date with
    its new state; returns a truthy value when a new flow was queued for
    hardware, None otherwise (not offloadable, or already offloaded)."""

    def install_synced(self, entry: Entry, now: float) -> object: ...

    def install_synced_many(self, entries: Sequence[Entry], now: float) -> Sequence[object]:
        """install_synced() of each entry in turn (the card takes them together
        when it can), one result per entry."""
        ...


class RequestResync(NamedTuple):
    """Publish `request` to resync/<origin>/req."""

    origin: str
    request: ResyncRequest


class SnapshotComplete(NamedTuple):
    origin: str
    snapshot_id: int
    items: int


Action = RequestResync | SnapshotComplete


class Meta:
    """What the replica knows of one local entry it wrote."""

    __slots__ = ("adopted", "aliases", "conn", "epoch", "origin", "seq")

    def __init__(self, conn: ConnId, origin: str, epoch: int, seq: int) -> None:
        self.conn = conn  # the connection's cluster identity
        self.aliases: tuple[ConnId, ...] = ()  # other identities merged into it
        self.origin = origin  # the last writer, its epoch and the seq it wrote with
        self.epoch = epoch
        self.seq = seq
        self.adopted = False  # the local datapath has updated it (it publishes it too)

    def names(self, conn: ConnId) -> bool:
        return conn == self.conn or conn in self.aliases


@dataclass
class _Stream:
    epoch: int
    next_seq: int = 1  # lowest seq not received yet
    ahead: set[int] | None = None  # seqs received above the gap
    asked_at: float | None = None  # an outstanding resync request
    want_full: bool = False  # a full snapshot is wanted until one completes
    hb_seq: int = 0  # last heartbeat seq (replays of heartbeats are dropped)
    hb_ct_seq: int = 0  # ct seq announced by the previous heartbeat
    resp_seq: int = 0  # last snapshot frame seq (replays are dropped)


@dataclass
class _Snapshot:
    snapshot_id: int
    as_of: int
    next_index: int
    touched_at: float
    items: int = 0


class _Tomb(NamedTuple):
    conns: tuple[ConnId, ...]
    until: float


class Replica:
    def __init__(self, node: str, epoch: int, ct: Conntrack, card: InstallHook | None = None,
                 *, tombstone_ttl: float = TOMBSTONE_TTL, resync_retry: float = RESYNC_RETRY,
                 last_seen: dict[ConnKey, float] | None = None) -> None:
        self.node = node
        self.epoch = epoch
        self.ct = ct
        self.card = card
        self.tombstone_ttl = tombstone_ttl
        self.resync_retry = resync_retry
        # newest last-seen per connection across members (aging.Aging's map):
        # an entry written here never expires before that + its timeout
        self.last_seen = last_seen if last_seen is not None else {}
        self.meta: dict[int, Meta] = {}  # local entry id -> Meta
        self.streams: dict[str, _Stream] = {}
        self.snapshots: dict[str, _Snapshot] = {}
        self._tombs: dict[ConnKey, _Tomb] = {}
        self._tomb_order: deque[tuple[float, ConnKey]] = deque()
        self._removed: set[int] = set()
        # A run of plain creates whose card installs wait for the run's end,
        # to go to the card together: (entry, sent_at, age).
        self._creates: list[tuple[Entry, float | None, float]] = []
        self.install_latency: deque[float] = deque(maxlen=SAMPLES)
        self.sync_lag: deque[float] = deque(maxlen=SAMPLES)
        self.stats = dict.fromkeys((
            "messages", "items", "created", "updated", "merged", "deleted", "stale",
            "tombstoned", "duplicates", "fenced", "gaps", "resync_requests", "clashes",
            "bad_items", "installed", "delete_unknown", "snapshots", "snapshot_errors",
            "own", "ignored", "fast"), 0)  # fast: records applied from their fields

    # ------------------------------------------------------------ identity
    def identity(self, entry: Entry) -> ConnId:
        """The cluster identity of a local entry (for the outbox)."""
        m = self.meta.get(entry.id)
        return m.conn if m is not None else _new(ConnId, (self.node, self.epoch, entry.id))

    def adopt(self, entry: Entry) -> bool:
        """The local datapath changed `entry`; True if it was a replicated one.
        From now on this node publishes it too (with its creator's identity)."""
        m = self.meta.get(entry.id)
        if m is None:
            return False
        m.adopted = True
        return True

    def destroyed(self, entry_id: int) -> ConnId | None:
        """A local entry is gone (a DESTROY event): the identity to publish its
        destroy under, or None when it is not this node's to publish: the replica
        removed it itself, or it was a replicated entry this node never adopted
        (its expiry here mirrors the origin's). Call it once per DESTROY event."""
        if entry_id in self._removed:
            self._removed.discard(entry_id)
            self.meta.pop(entry_id, None)
            return None
        m = self.meta.pop(entry_id, None)
        if m is None:
            return ConnId(self.node, self.epoch, entry_id)
        return m.conn if m.adopted else None

    def was_removed(self, entry_id: int) -> bool:
        return entry_id in self._removed

    # ------------------------------------------------------------ entry point
    def apply(self, env: Envelope, now: float) -> list[Action]:
        """Apply one decoded envelope (already authenticated by the codec)."""
        self.stats["messages"] += 1
        if env.origin == self.node:
            self.stats["own"] += 1
            return []
        body = env.body
        if isinstance(body, CtFrame):
            return self._ct(env, body.records, now)
        if isinstance(body, CtBatch):
            return self._ct(env, body.items, now)
        if isinstance(body, Heartbeat):
            return self._heartbeat(env, body, now)
        if isinstance(body, SnapshotStart | SnapshotChunk | SnapshotEnd):
            return self._snapshot(env, body, now)
        self.stats["ignored"] += 1  # touches and requests are not the replica's
        return []

    def tick(self, now: float) -> list[Action]:
        """Retries of unanswered resync requests and stalled snapshots, and
        tombstone expiry. Call it every few hundred ms."""
        order = self._tomb_order
        while order and order[0][0] <= now:
            _, key = order.popleft()
            tomb = self._tombs.get(key)
            if tomb is not None and tomb.until <= now:
                del self._tombs[key]
        out: list[Action] = []
        for origin, st in self.streams.items():
            if not st.want_full and st.ahead is None:
                continue  # nothing missing
            if st.asked_at is not None and now - st.asked_at < self.resync_retry:
                continue  # asked recently
            snap = self.snapshots.get(origin)
            if snap is not None and now - snap.touched_at < SNAPSHOT_STALL:
                continue  # a snapshot is arriving
            if snap is not None:
                self.stats["snapshot_errors"] += 1
                del self.snapshots[origin]
            out.append(self._ask(origin, st, now, st.want_full))
        return out

    # ------------------------------------------------------------ streams
    def _stream(self, env: Envelope) -> _Stream | None:
        st = self.streams.get(env.origin)
        if st is None or env.epoch > st.epoch:
            st = self.streams[env.origin] = _Stream(env.epoch)
            self.snapshots.pop(env.origin, None)
        elif env.epoch < st.epoch:
            self.stats["fenced"] += 1
            return None
        return st

    def _ask(self, origin: str, st: _Stream, now: float, full: bool) -> RequestResync:
        st.asked_at = now
        st.want_full = st.want_full or full
        self.stats["resync_requests"] += 1
        req = ResyncRequest(self.node, 0 if full else st.epoch,
                            None if full else st.next_seq, full)
        return RequestResync(origin, req)

    def request_full(self, origin: str, epoch: int, now: float) -> RequestResync:
        """Ask `origin` for everything (a joining node's bulk sync)."""
        st = self.streams.get(origin)
        if st is None or epoch > st.epoch:
            st = self.streams[origin] = _Stream(epoch)
        return self._ask(origin, st, now, True)

    def _ct(self, env: Envelope, items: tuple[bytes | Item, ...], now: float) -> list[Action]:
        st = self._stream(env)
        if st is None:
            return []
        seq = env.seq
        out: list[Action] = []
        if seq < st.next_seq or (st.ahead is not None and seq in st.ahead):
            self.stats["duplicates"] += 1
            return out
        if seq == st.next_seq:
            st.next_seq += 1
            ahead = st.ahead
            if ahead:
                while st.next_seq in ahead:
                    ahead.discard(st.next_seq)
                    st.next_seq += 1
            if not ahead:
                st.ahead = None
                if not st.want_full:
                    st.asked_at = None
        else:
            if st.ahead is None:
                st.ahead = set()
            st.ahead.add(seq)
            if len(st.ahead) > MAX_AHEAD:
                self.stats["gaps"] += 1
                st.ahead = None
                st.next_seq = seq + 1
                out.append(self._ask(env.origin, st, now, True))
            elif st.asked_at is None:
                self.stats["gaps"] += 1
                out.append(self._ask(env.origin, st, now, False))
        self.sync_lag.append(now - env.sent_at)
        self._items(items, env.origin, env.epoch, seq, now, env.sent_at)
        return out

    def _heartbeat(self, env: Envelope, hb: Heartbeat, now: float) -> list[Action]:
        st = self._stream(env)
        if st is None:
            return []
        if env.seq != 0:  # seq 0 is the will
            if env.seq <= st.hb_seq:
                self.stats["duplicates"] += 1
                return []
            st.hb_seq = env.seq
        announced, st.hb_ct_seq = st.hb_ct_seq, hb.ct_seq
        if announced >= st.next_seq and (st.asked_at is None
                                         or now - st.asked_at >= self.resync_retry):
            # a frame announced a heartbeat ago is still missing: lost on an idle stream
            self.stats["gaps"] += 1
            return [self._ask(env.origin, st, now, False)]
        return []

    # ------------------------------------------------------------ snapshots
    def _snapshot(self, env: Envelope, body: SnapshotStart | SnapshotChunk | SnapshotEnd,
                  now: float) -> list[Action]:
        st = self._stream(env)
        if st is None:
            return []
        if env.seq <= st.resp_seq:  # snapshot frames are numbered on the resp stream
            self.stats["duplicates"] += 1
            return []
        st.resp_seq = env.seq
        origin = env.origin
        if isinstance(body, SnapshotStart):
            if body.requester != self.node:
                self.stats["ignored"] += 1
                return []
            self.snapshots[origin] = _Snapshot(body.snapshot_id, body.as_of_seq, 0, now)
            return []
        snap = self.snapshots.get(origin)
        if snap is None or snap.snapshot_id != body.snapshot_id:
            self.stats["ignored"] += 1
            return []
        if isinstance(body, SnapshotChunk):
            if body.index != snap.next_index:
                return self._snapshot_failed(origin, st, now)
            snap.next_index += 1
            snap.items += len(body.items)
            snap.touched_at = now
            self._items(body.items, origin, env.epoch, snap.as_of, now, None)
            return []
        del self.snapshots[origin]
        if body.chunks != snap.next_index or body.items != snap.items:
            return self._snapshot_failed(origin, st, now)
        self._sweep(origin, env.epoch, snap, now)
        if snap.as_of >= st.next_seq:
            st.next_seq = snap.as_of + 1
            if st.ahead:
                st.ahead = {s for s in st.ahead if s > snap.as_of}
                while st.next_seq in st.ahead:
                    st.ahead.discard(st.next_seq)
                    st.next_seq += 1
        st.want_full = False
        if not st.ahead:
            st.ahead = None
            st.asked_at = None
        self.stats["snapshots"] += 1
        return [SnapshotComplete(origin, body.snapshot_id, snap.items)]

    def _snapshot_failed(self, origin: str, st: _Stream, now: float) -> list[Action]:
        self.stats["snapshot_errors"] += 1
        self.snapshots.pop(origin, None)
        return [self._ask(origin, st, now, True)]

    def _sweep(self, origin: str, epoch: int, snap: _Snapshot, now: float) -> None:
        """After a full snapshot from `origin`: entries it last wrote (in this
        epoch, before the snapshot) and did not list any more are gone. (Every
        entry the snapshot listed was written with seq = as_of.)"""
        doomed = {eid for eid, m in self.meta.items()
                  if m.origin == origin and m.epoch == epoch and m.seq < snap.as_of
                  and not m.adopted}
        if not doomed:
            return
        for entry in self.ct.entries():
            if entry.id in doomed:
                self._remove(entry, now)

    # ------------------------------------------------------------ items
    def _items(self, items: Iterable[bytes | Item], origin: str, epoch: int, seq: int,
               now: float, sent_at: float | None) -> None:
        done = fast = 0  # (counted here, per frame: a dict update per record costs)
        try:
            for item in items:
                try:
                    if type(item) is bytes:
                        fast += self._plain(item, origin, epoch, seq, now, sent_at)
                    else:
                        if self._creates:  # (the card takes the creates before it first)
                            self._install_creates(now)
                        if type(item) is CtUpsert:
                            self._upsert(item, origin, epoch, seq, now, sent_at)
                        else:
                            self._delete(item, now)  # type: ignore[arg-type]
                except ValueError:  # a NAT range the engine refuses: nothing was changed
                    self.stats["bad_items"] += 1
                else:
                    done += 1
        finally:
            self.stats["items"] += done
            self.stats["fast"] += fast
            if self._creates:
                self._install_creates(now)

    def _upsert(self, up: CtUpsert, origin: str, epoch: int, seq: int, now: float,
                sent_at: float | None) -> None:
        key = (up.zone, up.orig)
        if self._tombs:
            tomb = self._tombs.get(key)
            if tomb is not None and _buried(tomb, up.conn):
                self.stats["tombstoned"] += 1
                return
        ct = self.ct
        entry = ct.find(up.orig, up.zone)
        if entry is None:
            entry = ctstate.new_entry(up, ct, now)
            if not ct.insert_synced(entry, now):
                self.stats["clashes"] += 1
                return
            ctstate.after_insert(ct, entry, up, now)
            self.meta[entry.id] = Meta(up.conn, origin, epoch, seq)
            self.stats["created"] += 1
        else:
            m = self.meta.get(entry.id)
            if m is None:
                # This node's own connection. A record of it from a peer (under this
                # node's identity: the peer adopted it, or under another one) is what
                # that peer's datapath saw: on asymmetric paths (active-active) the
                # other direction's packets, after a failover the peer's traffic.
                # Merged, never replaced: nothing moves backwards.
                if up.conn == ConnId(self.node, self.epoch, entry.id):
                    self.stats["own"] += 1
                ctstate.merge_state(entry, up, ct, now)
                self.stats["merged"] += 1
            elif not m.names(up.conn):  # same tuple, another identity: merge, remember it
                m.aliases = (*m.aliases, up.conn)[-4:]
                ctstate.merge_state(entry, up, ct, now)
                m.origin, m.epoch, m.seq = origin, epoch, seq
                self.stats["merged"] += 1
            elif m.origin == origin and m.epoch == epoch and not m.adopted:
                if seq < m.seq:
                    self.stats["stale"] += 1
                    return
                ctstate.replace_state(entry, up, ct, now)
                m.seq = seq
                self.stats["updated"] += 1
            else:  # another writer: most advanced wins
                ctstate.merge_state(entry, up, ct, now)
                m.origin, m.epoch, m.seq = origin, epoch, seq
                self.stats["merged"] += 1
        self._written(entry, key, now, sent_at, up.age)

    def _written(self, entry: Entry, key: ConnKey, now: float, sent_at: float | None,
                 age: float) -> None:
        """After a record wrote `entry`: another member's newer touch keeps it,
        and the card follows."""
        if self.last_seen:
            self._kept(entry, key, now)
        card = self.card
        # Also for an entry already in the card: the card follows its new state
        # (install_synced() returns None for those, they are not installs).
        if card is not None and card.install_synced(entry, now):
            self._installed(sent_at, age, now)

    def _kept(self, entry: Entry, key: ConnKey, now: float) -> None:
        """Another member's newer touch keeps the entry a record just wrote."""
        seen = self.last_seen.get(key)
        if seen is not None and seen + entry.timeout > entry.expires_at:
            period = entry.timeout
            self.ct.refresh(entry, seen + period - now, now)
            entry.timeout = period

    def _install_creates(self, now: float) -> None:
        """The card takes the run of new connections applied since the last
        record of another kind, together (Card.install_synced_many())."""
        creates, self._creates = self._creates, []
        assert self.card is not None
        done = self.card.install_synced_many([c[0] for c in creates], now)
        for (_entry, sent_at, age), installed in zip(creates, done, strict=True):
            if installed:
                self._installed(sent_at, age, now)

    def _installed(self, sent_at: float | None, age: float, now: float) -> None:
        """A record's connection went into the card: counted, and timed from its
        creation on its origin (`age` before the frame was sent)."""
        self.stats["installed"] += 1
        if sent_at is not None:
            self.install_latency.append(now - (sent_at - age))

    def _plain(self, rec: bytes, origin: str, epoch: int, seq: int, now: float,
               sent_at: float | None) -> bool:
        """A plain upsert record (CtFrame). The usual one, the next state of a
        connection this replica follows from the same writer, is applied from
        the record's fields, as _upsert() would apply its CtUpsert; anything
        else (a tombstone, another writer, an adopted entry, an entry with
        extensions: labels, helper, NAT, expectations) is decoded and goes
        through _upsert(). A new connection is built from the fields too; its
        card install waits for the end of its run of creates (_creates).
        Returns True if the record was applied from its fields (the fast lane)."""
        zone, orig, status, mark, ident, timeout, period, age, tcp = codec.plain_upsert(rec)
        ct = self.ct
        key = (zone, orig)
        entry = ct.find(orig, zone)
        tombstoned = bool(self._tombs) and key in self._tombs  # (_upsert() decides)
        if entry is None and not tombstoned:  # a new connection
            entry = ctstate.new_plain(orig, codec.plain_reply(rec, orig), zone, now, status,
                                      timeout, period, age, mark, tcp)
            if not ct.insert_synced(entry, now):
                self.stats["clashes"] += 1
                return False
            ctstate.after_insert(ct, entry)
            self.meta[entry.id] = Meta(_new(ConnId, (origin, epoch, ident)), origin, epoch, seq)
            self.stats["created"] += 1
            if self.last_seen:
                self._kept(entry, key, now)
            if self.card is not None:
                self._creates.append((entry, sent_at, age))
            return True
        if self._creates:  # (the card takes the creates before this record first)
            self._install_creates(now)
        if entry is not None and not tombstoned:
            m = self.meta.get(entry.id) if entry.ext is None else None
            if m is not None and m.origin == origin and m.epoch == epoch and not m.adopted \
                    and m.conn[2] == ident and m.conn[0] == origin and m.conn[1] == epoch:
                # the next state from the writer it follows (_upsert()'s replace case)
                if seq < m.seq:
                    self.stats["stale"] += 1
                    return False
                ctstate.replace_plain(entry, ct, now, status, timeout, period, mark, tcp)
                m.seq = seq
                self.stats["updated"] += 1
                self._written(entry, key, now, sent_at, age)
                return True
        up = codec.record_item(rec, origin, epoch)
        assert type(up) is CtUpsert
        self._upsert(up, origin, epoch, seq, now, sent_at)
        return False

    def _delete(self, d: CtDelete, now: float) -> None:
        key = (d.zone, d.orig)
        entry = self.ct.find(d.orig, d.zone)
        conns: tuple[ConnId, ...] = (d.conn,)
        if entry is not None:
            m = self.meta.get(entry.id)
            if m is not None and m.names(d.conn):
                conns = (m.conn, *m.aliases)
                if d.conn not in conns:
                    conns += (d.conn,)
                self._remove(entry, now)
            elif m is None and d.conn == ConnId(self.node, self.epoch, entry.id):
                self._remove(entry, now)  # a peer that adopted our connection ended it
            else:
                self.stats["delete_unknown"] += 1
        else:
            self.stats["delete_unknown"] += 1
        old = self._tombs.get(key)
        if old is not None:
            conns = tuple(dict.fromkeys(old.conns + conns))[-8:]
        until = now + self.tombstone_ttl
        self._tombs[key] = _Tomb(conns, until)
        self._tomb_order.append((until, key))

    def _remove(self, entry: Entry, now: float) -> None:
        self.meta.pop(entry.id, None)
        if self.ct.emit_events:  # its DESTROY event will come through destroyed()
            self._removed.add(entry.id)
        self.ct.kill(entry, now, "synced")
        self.stats["deleted"] += 1

    # ------------------------------------------------------------ inspection
    def tombstoned(self, key: ConnKey) -> bool:
        return key in self._tombs

    def origin_state(self, origin: str) -> tuple[int, int] | None:
        """(epoch, next expected seq) of an origin's ct stream."""
        st = self.streams.get(origin)
        return None if st is None else (st.epoch, st.next_seq)

    def forget_origin(self, origin: str) -> None:
        """`origin` is gone (offline, dead): stop asking it for resyncs. Its
        entries stay, and its epoch keeps fencing its old frames."""
        st = self.streams.get(origin)
        if st is not None:
            st.asked_at = None
            st.ahead = None
            st.want_full = False
        self.snapshots.pop(origin, None)

    def gap_open(self, origin: str) -> bool:
        st = self.streams.get(origin)
        return st is not None and (st.ahead is not None or origin in self.snapshots)


def _buried(tomb: _Tomb, conn: ConnId) -> bool:
    """A tombstone refuses the connection it names and older ones of the same
    creator (ids grow within an epoch, epochs grow across restarts)."""
    for dead in tomb.conns:
        if conn.creator == dead.creator and (conn.epoch, conn.id) <= (dead.epoch, dead.id):
            return True
    return False


__all__ = ["Action", "InstallHook", "Meta", "Replica", "RequestResync", "SnapshotComplete"]
