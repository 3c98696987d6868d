"""The sending side of a node, pure: sequence numbers, the dirty set, frames.

The daemon tells the outbox what its own datapath did (upsert(entry) for a
NEW/UPDATE event, delete(record) for a DESTROY) and asks it, when the flush
timer or the byte budget says so, for the frames to publish. Everything that
leaves is a Publish(topic, payload, retain) value; the outbox never does I/O.

Streams, each with its own counter in the node's epoch:
  ct       CtBatch frames, seq 1, 2, ... without gaps (receivers detect loss)
  touch    TouchDigest frames
  hb       Heartbeat frames (retained); the will is a heartbeat with seq 0
  resp     snapshot frames (SnapshotStart / Chunk / End) to one requester
  ack      CtAck frames (defer)

The last ct frames are kept (bounded by bytes) so that a targeted resync
replays exactly what a peer missed, byte for byte; a request from further back
than the history, or for everything, is answered with a full snapshot.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from node.conntrack.entry import IPS_DYING, Entry
from syncbus import codec, topics
from syncbus.coalesce import Coalescer
from syncbus.ctstate import pack_entry
from syncbus.messages import (
    PROTOCOL_VERSION,
    ROLE_OFFLINE,
    Body,
    ConnId,
    CtAck,
    CtDelete,
    Envelope,
    Heartbeat,
    ResyncRequest,
    SnapshotEnd,
    SnapshotStart,
    Touch,
    TouchDigest,
)

_new = tuple.__new__  # builds a NamedTuple in C, without its Python __new__
DEFAULT_BUDGET = 64 * 1024  # bytes per ct frame (pfsync/conntrackd fill an MTU; MQTT allows more)
DEFAULT_DELAY = 0.005  # seconds a change may wait for company
DEFAULT_HISTORY = 32 * 1024 * 1024  # bytes of recent ct frames kept for replays
TOUCHES_PER_DIGEST = 20000  # 20000 IPv6 touches are 880 kB


class Publish(NamedTuple):
    topic: str
    payload: bytes
    retain: bool = False


class Outbox:
    def __init__(self, cluster: str, node: str, epoch: int, key: bytes | None = None, *,
                 budget: int = DEFAULT_BUDGET, delay: float = DEFAULT_DELAY,
                 history_bytes: int = DEFAULT_HISTORY,
                 identity: Callable[[Entry], ConnId] | None = None) -> None:
        self.cluster = topics.check_name(cluster, "cluster")
        self.node = topics.check_name(node)
        self.epoch = epoch
        self.key = codec.check_key(key)
        overhead = codec.packed_overhead(cluster, node)
        if budget <= overhead + 256 or budget > codec.MAX_MESSAGE_BYTES:
            raise ValueError(f"byte budget must be in {overhead + 256}..{codec.MAX_MESSAGE_BYTES}")
        self.budget = budget
        self.identity = identity if identity is not None else self.own_identity
        self.dirty: Coalescer[Entry, CtDelete] = Coalescer(budget, delay)
        self.ct_seq = 0
        self._seqs = {"touch": 0, "hb": 0, "resp": 0, "ack": 0}
        self._snapshot_id = 0
        self._history: deque[tuple[int, bytes]] = deque()
        self._history_bytes = 0
        self.history_limit = history_bytes
        self.topic_ct = topics.ct(cluster, node)
        self.stats = {"frames": 0, "items": 0, "bytes": 0, "replayed": 0, "snapshots": 0}

    def own_identity(self, entry: Entry) -> ConnId:
        return _new(ConnId, (self.node, self.epoch, entry.id))

    # ------------------------------------------------------------ ct stream
    def upsert(self, entry: Entry, now: float) -> bool:
        """The local datapath created or changed `entry`. True: budget reached,
        flush now."""
        return self.dirty.upsert((entry.zone, entry.orig), entry, now)

    def delete(self, record: CtDelete, now: float) -> bool:
        return self.dirty.delete((record.zone, record.orig), record, now)

    def next_deadline(self) -> float | None:
        return self.dirty.next_deadline()

    def poll(self, now: float) -> list[Publish]:
        """The frames to publish now (none unless the timer or budget says so)."""
        return self.flush(now) if self.dirty.due(now) else []

    def flush(self, now: float) -> list[Publish]:
        """Everything pending, as ct frames of at most `budget` bytes."""
        out: list[Publish] = []
        packed: list[bytes] = []
        overhead = codec.packed_overhead(self.cluster, self.node)
        size = overhead
        node, epoch, identity = self.node, self.epoch, self.identity
        items: list[bytes] = []
        for deletes, source in self.dirty.drain():
            if deletes:
                items.extend([codec.pack_item(d, node, epoch) for d in deletes])
            if source is not None and not source.status & IPS_DYING:
                items.append(pack_entry(source, identity(source), now, node, epoch))
        budget, most = self.budget, codec.MAX_ITEMS
        for p in items:
            if packed and (size + len(p) > budget or len(packed) >= most):
                out.append(self._ct_frame(packed, now))
                packed, size = [], overhead
            packed.append(p)
            size += len(p)
        if packed:
            out.append(self._ct_frame(packed, now))
        return out

    def _ct_frame(self, packed: Sequence[bytes], now: float) -> Publish:
        self.ct_seq += 1
        frame = codec.encode_packed(self.cluster, self.node, self.epoch, self.ct_seq, now,
                                    packed, self.key)
        self._history.append((self.ct_seq, frame))
        self._history_bytes += len(frame)
        while self._history_bytes > self.history_limit and len(self._history) > 1:
            self._history_bytes -= len(self._history.popleft()[1])
        self.stats["frames"] += 1
        self.stats["items"] += len(packed)
        self.stats["bytes"] += len(frame)
        return Publish(self.topic_ct, frame)

    # ------------------------------------------------------------ other streams
    def _frame(self, stream: str, body: Body, now: float, seq: int | None = None) -> bytes:
        if seq is None:
            self._seqs[stream] += 1
            seq = self._seqs[stream]
        return codec.encode(Envelope(PROTOCOL_VERSION, self.cluster, self.node, self.epoch,
                                     seq, now, body), self.key)

    def heartbeat(self, hb: Heartbeat, now: float) -> Publish:
        return Publish(topics.hb(self.cluster, self.node), self._frame("hb", hb, now), True)

    def will(self, hb: Heartbeat, session: int, now: float) -> Publish:
        """The MQTT will to register for bus connection `session`: `hb` with role
        offline and seq 0 (the broker may publish it at any later time; receivers
        take seq 0 as a will, never as a replay)."""
        body = Heartbeat(self.node, ROLE_OFFLINE, hb.priority, hb.term, False, 0, self.ct_seq,
                         session)
        return Publish(topics.hb(self.cluster, self.node), self._frame("hb", body, now, 0), True)

    def ack(self, body: CtAck, now: float) -> Publish:
        return Publish(topics.ack(self.cluster, self.node), self._frame("ack", body, now))

    def touches(self, touches: Sequence[Touch], now: float) -> list[Publish]:
        topic = topics.touch(self.cluster, self.node)
        return [Publish(topic, self._frame("touch", TouchDigest(tuple(
            touches[i:i + TOUCHES_PER_DIGEST])), now))
            for i in range(0, len(touches), TOUCHES_PER_DIGEST)]

    # ------------------------------------------------------------ resync answers
    def replay(self, req: ResyncRequest) -> list[Publish] | None:
        """The kept ct frames from req.from_seq on, for the requester; None when
        they are not all kept (answer with a snapshot instead)."""
        if req.full or req.from_seq is None or req.epoch != self.epoch:
            return None
        if req.from_seq > self.ct_seq:
            return []  # nothing newer than what it has
        if not self._history or self._history[0][0] > req.from_seq:
            return None
        topic = topics.resync_resp(self.cluster, self.node, req.requester)
        start = req.from_seq - self._history[0][0]  # seqs in the history are contiguous
        frames = [Publish(topic, f) for _, f in list(self._history)[start:]]
        self.stats["replayed"] += len(frames)
        return frames

    def snapshot(self, requester: str, entries: Iterable[Entry]) -> SnapshotWriter:
        """A full snapshot of `entries` (the whole local table) for `requester`."""
        self._snapshot_id += 1
        self.stats["snapshots"] += 1
        return SnapshotWriter(self, self._snapshot_id, requester, entries)


class SnapshotWriter:
    """One bulk transfer: SnapshotStart, chunks of at most `budget` bytes,
    SnapshotEnd. Pure and incremental: the daemon calls next(now) and publishes
    each frame (yielding to its loop between them) until it returns None.
    Masters go before the connections they expect (conntrackd's two-phase
    commit order); entries are read when their chunk is built."""

    def __init__(self, outbox: Outbox, snapshot_id: int, requester: str,
                 entries: Iterable[Entry]) -> None:
        topics.check_name(requester, "requester")
        listed = list(entries)
        self._entries = [e for e in listed if e.master is None] + \
            [e for e in listed if e.master is not None]
        self._outbox = outbox
        self.snapshot_id = snapshot_id
        self.requester = requester
        self.topic = topics.resync_resp(outbox.cluster, outbox.node, requester)
        self._pos = -1  # -1: start not sent
        self._chunks = 0
        self._items = 0
        self._done = False

    def __len__(self) -> int:
        return len(self._entries)

    def next(self, now: float) -> Publish | None:
        ob = self._outbox
        if self._done:
            return None
        if self._pos < 0:
            self._pos = 0
            return Publish(self.topic, ob._frame("resp", SnapshotStart(
                self.snapshot_id, self.requester, True, ob.ct_seq, len(self._entries)), now))
        if self._pos >= len(self._entries):
            self._done = True
            return Publish(self.topic, ob._frame("resp", SnapshotEnd(
                self.snapshot_id, self._chunks, self._items), now))
        overhead = codec.packed_overhead(ob.cluster, ob.node)
        size = overhead
        packed: list[bytes] = []
        entries = self._entries
        while self._pos < len(entries) and len(packed) < codec.MAX_ITEMS:
            entry = entries[self._pos]
            if entry.status & IPS_DYING:  # gone since the snapshot was taken
                self._pos += 1
                continue
            p = pack_entry(entry, ob.identity(entry), now, ob.node, ob.epoch)
            if packed and size + len(p) > ob.budget:
                break
            packed.append(p)
            size += len(p)
            self._pos += 1
        if not packed:
            return self.next(now)
        ob._seqs["resp"] += 1
        frame = codec.encode_packed(ob.cluster, ob.node, ob.epoch, ob._seqs["resp"], now,
                                    packed, ob.key, chunk=(self.snapshot_id, self._chunks))
        self._chunks += 1
        self._items += len(packed)
        return Publish(self.topic, frame)


__all__ = ["DEFAULT_BUDGET", "DEFAULT_DELAY", "Outbox", "Publish", "SnapshotWriter"]
