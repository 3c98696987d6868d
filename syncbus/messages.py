"""What nodes say to each other: the envelope and its bodies.

Pure values with no encoding methods; codec.py turns them into bytes and back
and is the only place that validates what comes off the wire.

  Envelope        version, cluster, origin node, epoch (process incarnation),
                  seq (per origin, epoch and stream, no gaps on the ct stream),
                  sent_at (the origin's clock), body
  CtBatch         coalesced connection states: CtUpsert | CtDelete items (an
                  upsert carries its connection's expectations: ExpectInfo)
  CtFrame         a CtBatch as a receiver takes it (codec.decode(lazy=True)):
                  its plain upserts still as their validated wire records, the
                  rest as Items (the replica's fast lane reads the records)
  TouchDigest     distributed aging: connections seen this poll cycle, "seconds ago"
  Heartbeat       membership and roles (retained; the MQTT will says "offline")
  ResyncRequest   "send me what I missed from seq N" or "send me everything"
  CtAck           "I applied your ct stream up to seq N" (only with defer: a node
                  holds a packet that changed a connection until a peer has it)
  SnapshotStart / SnapshotChunk / SnapshotEnd
                  a bulk transfer between explicit markers (pfsync's BUS start/end)

Envelopes and bodies are frozen dataclasses. The per-connection records
(CtUpsert, CtDelete, TcpInfo, ExpectInfo ...) are NamedTuples instead, for the reason the
engine's Tuple is one: they are built and read hundreds of thousands of times
a second on the replication path, and a NamedTuple is built in C (a frozen
dataclass sets each field through object.__setattr__, ~10x slower measured
here). They are just as immutable and typed.

Identity of a connection across the cluster is pfsync's (creatorid, id): a
ConnId names the node that created it, that node's epoch and its local entry
id. A node that republishes a connection it adopted (after a failover) keeps
the creator's identity, so every member agrees on which connection a delete
or a late update is about.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from node.conntrack.tuple import Tuple

PROTOCOL_VERSION = 1

# Offload state of a connection on the node that sent it.
OFFLOAD_NONE = 0
OFFLOAD_SW = 1  # in the software flow table (IPS_OFFLOAD)
OFFLOAD_HW = 2  # in hardware (IPS_HW_OFFLOAD)

# Roles a heartbeat announces.
ROLE_JOINING = "joining"  # connected, snapshot not complete: not eligible
ROLE_STANDBY = "standby"
ROLE_ACTIVE = "active"
ROLE_OFFLINE = "offline"  # the MQTT will: the node's connection died
ROLE_FAULT = "fault"  # a tracked data link is down: not a candidate (VRRP's FAULT state)
ROLE_WITNESS = "witness"  # a vote in the quorum, never a candidate
ROLES = (ROLE_JOINING, ROLE_STANDBY, ROLE_ACTIVE, ROLE_OFFLINE, ROLE_FAULT, ROLE_WITNESS)


class ConnId(NamedTuple):
    """Cluster-wide identity of one connection (pfsync's creatorid + id)."""

    creator: str  # node that created the entry
    epoch: int  # that node's epoch (process incarnation) at creation
    id: int  # its conntrack entry id there


class TcpDir(NamedTuple):
    """One direction's struct ip_ct_tcp_state (a view: TcpInfo.orig / .reply)."""

    td_end: int
    td_maxend: int
    td_maxwin: int
    td_maxack: int
    td_scale: int
    flags: int


class TcpInfo(NamedTuple):
    """struct ip_ct_tcp: the state, both directions' windows and the
    last-packet fields, everything TcpTracker.export() reports, as numbers. Flat,
    with the engine's TcpConn slot names (suffix 0: original direction, 1:
    reply), so that it is built and applied in one step."""

    state: int  # TcpState value (sNO .. sS2)
    td_end0: int
    td_maxend0: int
    td_maxwin0: int
    td_maxack0: int
    td_scale0: int
    flags0: int
    td_end1: int
    td_maxend1: int
    td_maxwin1: int
    td_maxack1: int
    td_scale1: int
    flags1: int
    last_dir: int
    last_index: int
    last_seq: int
    last_ack: int
    last_end: int
    last_win: int
    last_wscale: int
    last_flags: int
    retrans: int

    @property
    def orig(self) -> TcpDir:
        return TcpDir(*self[1:7])

    @property
    def reply(self) -> TcpDir:
        return TcpDir(*self[7:13])

    def direction(self, d: int) -> TcpDir:
        return self.reply if d else self.orig


class NatRangeInfo(NamedTuple):
    """A NAT range a manip was set up from (node.conntrack.nat.NatRange)."""

    kind: int  # 0 SRC, 1 DST
    min_addr: bytes | None
    max_addr: bytes | None
    min_port: int | None
    max_port: int | None
    flags: int


class NatInfo(NamedTuple):
    """The NAT binding: the ranges of the source and destination manips. The
    mapping itself is in the reply tuple and the IPS_*NAT* status bits."""

    src: NatRangeInfo | None
    dst: NatRangeInfo | None


class ExpectInfo(NamedTuple):
    """One expectation of the connection whose record carries it (its master;
    node.conntrack.expect.Expectation): what the expected connection's original
    tuple looks like (wildcard fields 0) and which fields are wildcards, the
    helper the expected connection gets, and its timer (conntrackd's
    ExpectationSync: a standby must know it for the expected connection to be
    RELATED after a failover)."""

    tuple: Tuple
    src_any_addr: bool
    src_any_port: bool
    helper: str | None  # the helper the expected connection gets (None for FTP data)
    timeout: float  # seconds left on the sender when sent
    period: float  # the expectation's full timeout, seconds
    flags: int  # NF_CT_EXPECT_* bits
    cls: int  # expectation class (helper policy index)
    fn: str | None  # expectfn by name


class CtUpsert(NamedTuple):
    """Everything a standby needs to take a connection over without re-learning it."""

    conn: ConnId
    orig: Tuple
    reply: Tuple
    zone: int
    status: int  # IPS_* bits as on the sender
    timeout: float  # seconds left on the sender when sent
    period: float  # the timeout last set (the state's full timeout), seconds
    age: float  # seconds since the creator created it (skew-free, chained)
    mark: int
    labels: int  # 128-bit bitmap
    helper: str | None
    master: Tuple | None  # the master's original tuple (expected connections)
    tcp: TcpInfo | None
    nat: NatInfo | None
    offload: int  # OFFLOAD_NONE / _SW / _HW on the sender
    expects: tuple[ExpectInfo, ...] = ()  # its expectations (a helper's master), oldest first

    @property
    def key(self) -> tuple[int, Tuple]:
        return (self.zone, self.orig)


class CtDelete(NamedTuple):
    """A destroyed connection: a tombstone wherever it arrives."""

    conn: ConnId
    orig: Tuple
    reply: Tuple
    zone: int

    @property
    def key(self) -> tuple[int, Tuple]:
        return (self.zone, self.orig)


Item = CtUpsert | CtDelete
ConnKey = tuple[int, Tuple]  # (zone, original tuple)


class Touch(NamedTuple):
    """The sender saw traffic on (zone, orig) `seconds_ago` seconds before sending."""

    zone: int
    orig: Tuple
    seconds_ago: float


@dataclass(frozen=True, slots=True)
class CtBatch:
    items: tuple[Item, ...]


@dataclass(frozen=True, slots=True)
class CtFrame:
    """A CtBatch whose plain upserts (the origin's own connection, no labels,
    helper, master, NAT ranges or expectations; not ICMP) are kept as the
    codec validated them: bytes, read with codec.plain_upsert() or turned into
    their CtUpsert with codec.record_item(). Every other item is decoded."""

    records: tuple[bytes | Item, ...]


@dataclass(frozen=True, slots=True)
class TouchDigest:
    touches: tuple[Touch, ...]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    node: str
    role: str  # one of ROLES
    priority: int  # 0..255, higher wins
    term: int  # election epoch: the term this role belongs to (fences an old active)
    ready: bool  # snapshot complete: eligible for the active role
    table_size: int  # entries in the node's conntrack
    ct_seq: int  # last seq published on the node's ct stream (gap detection when idle)
    session: int = 0  # the bus connection it went out on; the will of session k
    # declares the node dead only if nothing came from a later session (a will
    # can overtake or trail the next session's heartbeats: MQTT orders per publisher)


@dataclass(frozen=True, slots=True)
class ResyncRequest:
    """Sent to `resync/<origin>/req`: from_seq (of the origin's `epoch`) onward,
    or everything (full)."""

    requester: str
    epoch: int  # the origin epoch from_seq refers to (0 with full)
    from_seq: int | None
    full: bool


@dataclass(frozen=True, slots=True)
class CtAck:
    """Sent by a member that defers (pfsync's INS_ACK): it has applied
    `origin`'s ct frames of `epoch` up to and including `seq`, without a gap."""

    origin: str  # whose ct stream
    epoch: int
    seq: int


@dataclass(frozen=True, slots=True)
class SnapshotStart:
    snapshot_id: int
    requester: str
    full: bool  # the whole table (else: a targeted resync answer)
    as_of_seq: int  # the sender's ct seq when the snapshot started
    entries: int  # items that will follow


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    snapshot_id: int
    index: int  # 0, 1, ... in order
    items: tuple[Item, ...]


@dataclass(frozen=True, slots=True)
class SnapshotEnd:
    snapshot_id: int
    chunks: int
    items: int


Body = (CtBatch | CtFrame | TouchDigest | Heartbeat | ResyncRequest | SnapshotStart
        | SnapshotChunk | SnapshotEnd | CtAck)


@dataclass(frozen=True, slots=True)
class Envelope:
    version: int
    cluster: str
    origin: str
    epoch: int  # the origin's process incarnation (increases across restarts)
    seq: int  # per (origin, epoch, stream): ct batches have no gaps
    sent_at: float  # the origin's clock
    body: Body


__all__ = ["OFFLOAD_HW", "OFFLOAD_NONE", "OFFLOAD_SW", "PROTOCOL_VERSION", "ROLES",
           "ROLE_ACTIVE", "ROLE_FAULT", "ROLE_JOINING", "ROLE_OFFLINE", "ROLE_STANDBY",
           "ROLE_WITNESS", "Body",
           "ConnId", "ConnKey", "CtAck", "CtBatch", "CtDelete", "CtFrame", "CtUpsert", "Envelope",
           "ExpectInfo", "Heartbeat", "Item", "NatInfo", "NatRangeInfo", "ResyncRequest",
           "SnapshotChunk", "SnapshotEnd", "SnapshotStart", "TcpDir", "TcpInfo", "Touch",
           "TouchDigest"]
