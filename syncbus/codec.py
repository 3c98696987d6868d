"""Envelopes to bytes and back: the only module that imports msgpack.

Frame (all integers big-endian):

    byte 0        format: PROTOCOL_VERSION (low 7 bits) | 0x80 when authenticated
    bytes 1..     msgpack array [type, cluster, origin, epoch, seq, sent_at, body]
    last 32       HMAC-SHA256(cluster key, every byte before it), when authenticated

With a cluster key configured, decode() accepts only authenticated frames whose
tag verifies; without one it accepts only unauthenticated frames (a mismatch in
configuration is an error, not a silent downgrade). Anything else that is wrong
(a truncated or oversized frame, an unknown version or type, a wrong type or an
out-of-range value anywhere) raises CodecError: the receiver counts and drops it.

Bodies (msgpack arrays; no maps anywhere):

    CtBatch        [item, ...]
    TouchDigest    [count, blob]  blob = count records of TOUCH_HDR + tuple
    Heartbeat      [node, role, priority, term, ready, table_size, ct_seq, session]
    ResyncRequest  [requester, epoch, from_seq | nil, full]
    SnapshotStart  [snapshot_id, requester, full, as_of_seq, entries]
    SnapshotChunk  [snapshot_id, index, [item, ...]]
    SnapshotEnd    [snapshot_id, chunks, items]
    CtAck          [origin, epoch, seq]

An item is a bin: one fixed-layout record, struct-packed (conntrackd's TLVs and
pfsync's records are fixed binary layouts too). The layout follows from the
record's first byte (kind, address family, whether the reply tuple and the TCP
block are present), so a record is parsed with one struct call and its length
is checked exactly; unsigned fields of a fixed width are their own range check.
An item that needs more (a creator other than the envelope's origin, labels, a
helper, a master tuple or NAT ranges) is the array [record, creator, creator
epoch, labels(16 bytes), helper, master record, nat] with nil for absent parts;
an upsert of a connection with expectations (a helper's master) has an eighth
element, [expectation, ...] (1..MAX_EXPECTS), each [record, helper, fn]:

    expectation    EXPECT_HDR (flags: family, wildcard source address / port;
                   proto, class, NF_CT_EXPECT_* flags, timeout, period), tuple

    upsert record  UPSERT_HDR, orig tuple, [reply tuple], [TCP block]
    delete record  DELETE_HDR, orig tuple, [reply tuple]
    tuple          v4: src(4) dst(4) sport dport      v6: src(16) dst(16) sport dport

The reply tuple is left out when it is the inverse of the original (no NAT).
Times travel as whole milliseconds (u32: up to 49.7 days; longer is clamped).
"""

from __future__ import annotations

import hmac
import math
import struct
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import numpy as np

from node.conntrack.tuple import PORT_INTS, Tuple
from syncbus.errors import CodecError
from syncbus.messages import (
    OFFLOAD_HW,
    PROTOCOL_VERSION,
    ROLES,
    Body,
    ConnId,
    CtAck,
    CtBatch,
    CtDelete,
    CtFrame,
    CtUpsert,
    Envelope,
    ExpectInfo,
    Heartbeat,
    Item,
    NatInfo,
    NatRangeInfo,
    ResyncRequest,
    SnapshotChunk,
    SnapshotEnd,
    SnapshotStart,
    TcpInfo,
    Touch,
    TouchDigest,
)
from syncbus.topics import valid_name

# ---------------------------------------------------------------- limits
MAX_MESSAGE_BYTES = 1 << 20  # well under Mosquitto's 2 MB max_packet_size
MAX_ITEMS = 16384  # per CtBatch / SnapshotChunk
MAX_TOUCHES = 65536  # per TouchDigest
MAX_HELPER_LEN = 15  # NF_CT_HELPER_NAME_LEN - 1
MAX_EXPECTS = 255  # per master (NF_CT_EXPECT_MAX_CNT)
MAX_FN_LEN = 31  # an expectfn's name
MAX_EXPECT_CLASS = 3  # NF_CT_MAX_EXPECT_CLASSES - 1
EXPECT_FLAGS = 0x07  # NF_CT_EXPECT_PERMANENT | _INACTIVE | _USERSPACE
TAG_BYTES = 32
FORMAT_AUTH = 0x80
U16, U32, U64 = 0xFFFF, 0xFFFFFFFF, (1 << 64) - 1
MAX_INT = (1 << 63) - 1  # epochs, seqs, counts
MS_MAX = U32
TCP_MAX_WSCALE = 14
TCP_MAX_STATE = 9  # sS2; sIV (10) and above are never a connection's state
TCP_MAX_INDEX = 5  # NONE_SET

# body type tags
T_CT, T_TOUCH, T_HB, T_RESYNC, T_SNAP_START, T_SNAP_CHUNK, T_SNAP_END, T_ACK = range(1, 9)

# record flags (first byte)
K_UPSERT = 1
K_DELETE = 2
KIND_MASK = 0x03
F_V6 = 0x04
F_REPLY_INV = 0x08  # reply tuple omitted: it is orig.invert()
F_TCP = 0x10  # TCP block present (upserts)
F_OWN = 0x20  # the connection's creator is the envelope's (origin, epoch)
_LAYOUT = F_V6 | F_REPLY_INV | F_TCP
_KNOWN_FLAGS = KIND_MASK | _LAYOUT | F_OWN

_T4, _T6 = "4s4sHH", "16s16sHH"
UPSERT_HDR = "BBHHIQIIIB"  # flags proto zone status mark id timeout period age offload
DELETE_HDR = "BBHQ"  # flags proto zone id
TCP_BLOCK = "B" + "IIIIBB" * 2 + "BBIIIIBBB"
TOUCH_HDR = "BBHI"  # flags(F_V6) proto zone ms_ago
EXPECT_HDR = "BBBBII"  # flags(F_V6, X_ANY_*) proto class exp_flags timeout period
X_ANY_ADDR = 0x01  # expectation record flags: the source address is a wildcard
X_ANY_PORT = 0x02  # the source port is a wildcard
_X_KNOWN = F_V6 | X_ANY_ADDR | X_ANY_PORT


def _struct(head: str, v6: bool, reply: bool, tcp: bool = False) -> struct.Struct:
    t = _T6 if v6 else _T4
    return struct.Struct("!" + head + t + (t if reply else "") + (TCP_BLOCK if tcp else ""))


_UPSERT = {f: _struct(UPSERT_HDR, bool(f & F_V6), not f & F_REPLY_INV, bool(f & F_TCP))
           for f in range(_LAYOUT + 1) if not f & ~_LAYOUT}
_DELETE = {f: _struct(DELETE_HDR, bool(f & F_V6), not f & F_REPLY_INV)
           for f in (0, F_V6, F_REPLY_INV, F_V6 | F_REPLY_INV)}
_TUPLE = {0: struct.Struct("!B" + "B" + _T4), F_V6: struct.Struct("!B" + "B" + _T6)}
_TOUCH = {0: struct.Struct("!" + TOUCH_HDR + _T4), F_V6: struct.Struct("!" + TOUCH_HDR + _T6)}
_EXPECT = {0: struct.Struct("!" + EXPECT_HDR + _T4), F_V6: struct.Struct("!" + EXPECT_HDR + _T6)}
_UPSERT_FIXED = struct.calcsize("!" + UPSERT_HDR)

# The plain upsert (receive fast lane, CtFrame): F_OWN, any layout. The byte
# offsets of the fields its check reads, from the layouts above.
_PLAIN_SIZE = {K_UPSERT | F_OWN | f: st.size for f, st in _UPSERT.items()}
_UPSERT_HEAD = {0: struct.Struct("!" + UPSERT_HDR + _T4),
                F_V6: struct.Struct("!" + UPSERT_HDR + _T6)}
_REPLY = {0: struct.Struct("!" + _T4), F_V6: struct.Struct("!" + _T6)}  # after the head
_AT_OFFLOAD = _UPSERT_FIXED - 1
TCP_BLOCK_BYTES = struct.calcsize("!" + TCP_BLOCK)


def _at(n: int) -> int:
    """The byte offset of the TCP block's field n (0: state)."""
    return struct.calcsize("!" + TCP_BLOCK[:n])


# The TCP block's fields narrower than their width (field index, largest value):
# state, td_scale of each direction, last_dir, last_index, last_wscale. _tcp()
# checks them on the unpacked record, _plain_ok() on its bytes (offset from the
# block's end).
_TCP_FIELD_LIMITS = ((0, TCP_MAX_STATE), (5, TCP_MAX_WSCALE), (11, TCP_MAX_WSCALE), (13, 1),
                     (14, TCP_MAX_INDEX), (19, TCP_MAX_WSCALE))
_TCP_LIMITS = tuple((TCP_BLOCK_BYTES - _at(n), hi) for n, hi in _TCP_FIELD_LIMITS)

_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack
_new = tuple.__new__  # builds a NamedTuple in C, without its Python __new__


def _fail(msg: str) -> CodecError:
    return CodecError(msg)


# ================================================================ frames
def _frame(payload: bytes, key: bytes | None) -> bytes:
    if key is None:
        out = bytes((PROTOCOL_VERSION,)) + payload
    else:
        head = bytes((PROTOCOL_VERSION | FORMAT_AUTH,)) + payload
        out = head + hmac.digest(key, head, "sha256")
    if len(out) > MAX_MESSAGE_BYTES:
        raise _fail(f"message of {len(out)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return out


def _unframe(data: bytes, key: bytes | None) -> bytes | memoryview:
    if not isinstance(data, bytes | bytearray):
        raise _fail(f"payload must be bytes, not {type(data).__name__}")
    n = len(data)
    if n > MAX_MESSAGE_BYTES:
        raise _fail(f"message of {n} bytes exceeds {MAX_MESSAGE_BYTES}")
    if n < 2:
        raise _fail("truncated message")
    fmt = data[0]
    if fmt & ~FORMAT_AUTH != PROTOCOL_VERSION:
        raise _fail(f"unsupported protocol version {fmt & ~FORMAT_AUTH}")
    if key is None:
        if fmt & FORMAT_AUTH:
            raise _fail("authenticated message, but no cluster key is configured")
        return memoryview(data)[1:]
    if not fmt & FORMAT_AUTH:
        raise _fail("unauthenticated message rejected: a cluster key is configured")
    if n < TAG_BYTES + 2:
        raise _fail("truncated message")
    head = memoryview(data)[:-TAG_BYTES]
    if not hmac.compare_digest(hmac.digest(key, head, "sha256"), bytes(data[-TAG_BYTES:])):
        raise _fail("HMAC does not verify: forged, corrupted or wrong cluster key")
    return head[1:]


def check_key(key: bytes | None) -> bytes | None:
    """A cluster key must be at least 16 bytes (HMAC-SHA256 wants 32)."""
    if key is not None and (not isinstance(key, bytes) or len(key) < 16):
        raise ValueError("the cluster key must be at least 16 bytes")
    return key


# ================================================================ encode
def encode(env: Envelope, key: bytes | None = None) -> bytes:
    """The frame for `env`; CodecError if any field is out of range."""
    typ, body = _encode_body(env.body, env.origin, env.epoch)
    _check_header(env.cluster, env.origin, env.epoch, env.seq, env.sent_at)
    try:
        payload = _packb([typ, env.cluster, env.origin, env.epoch, env.seq,
                          float(env.sent_at), body])
    except (TypeError, ValueError, OverflowError) as exc:
        raise _fail(f"cannot encode {type(env.body).__name__}: {exc}") from None
    return _frame(payload, key)


def _check_header(cluster: str, origin: str, epoch: int, seq: int, sent_at: float) -> None:
    if not valid_name(cluster) or not valid_name(origin):
        raise _fail(f"bad cluster or origin name {cluster!r} / {origin!r}")
    if not (_is_int(epoch, MAX_INT) and _is_int(seq, MAX_INT)):
        raise _fail("epoch and seq must be integers in 0..2**63-1")
    if not isinstance(sent_at, int | float) or not math.isfinite(sent_at):
        raise _fail("sent_at must be a finite number")


def _encode_body(body: Body, origin: str, epoch: int) -> tuple[int, Any]:
    if isinstance(body, CtBatch):
        _check_count(len(body.items), MAX_ITEMS, "items")
        return T_CT, [item_object(it, origin, epoch) for it in body.items]
    if isinstance(body, TouchDigest):
        _check_count(len(body.touches), MAX_TOUCHES, "touches")
        return T_TOUCH, [len(body.touches), b"".join(map(_touch_record, body.touches))]
    if isinstance(body, Heartbeat):
        if body.role not in ROLES or not valid_name(body.node):
            raise _fail(f"bad heartbeat role/node {body.role!r} {body.node!r}")
        if body.node != origin:
            raise _fail("a heartbeat's node must be its envelope's origin")
        _ints((body.priority, 255), (body.term, MAX_INT), (body.table_size, MAX_INT),
              (body.ct_seq, MAX_INT), (body.session, MAX_INT))
        return T_HB, [body.node, body.role, body.priority, body.term, bool(body.ready),
                      body.table_size, body.ct_seq, body.session]
    if isinstance(body, ResyncRequest):
        _check_resync(body.requester, body.epoch, body.from_seq, body.full)
        return T_RESYNC, [body.requester, body.epoch, body.from_seq, bool(body.full)]
    if isinstance(body, SnapshotStart):
        if not valid_name(body.requester):
            raise _fail(f"bad requester {body.requester!r}")
        _ints((body.snapshot_id, MAX_INT), (body.as_of_seq, MAX_INT), (body.entries, MAX_INT))
        return T_SNAP_START, [body.snapshot_id, body.requester, bool(body.full),
                              body.as_of_seq, body.entries]
    if isinstance(body, SnapshotChunk):
        _ints((body.snapshot_id, MAX_INT), (body.index, MAX_INT))
        _check_count(len(body.items), MAX_ITEMS, "items")
        return T_SNAP_CHUNK, [body.snapshot_id, body.index,
                              [item_object(it, origin, epoch) for it in body.items]]
    if isinstance(body, SnapshotEnd):
        _ints((body.snapshot_id, MAX_INT), (body.chunks, MAX_INT), (body.items, MAX_INT))
        return T_SNAP_END, [body.snapshot_id, body.chunks, body.items]
    if isinstance(body, CtAck):
        if not valid_name(body.origin):
            raise _fail(f"bad ack origin {body.origin!r}")
        _ints((body.epoch, MAX_INT), (body.seq, MAX_INT))
        return T_ACK, [body.origin, body.epoch, body.seq]
    raise _fail(f"not a message body: {type(body).__name__}")


def _is_int(x: object, hi: int) -> bool:
    return type(x) is int and 0 <= x <= hi


def _ints(*pairs: tuple[int, int]) -> None:
    for value, hi in pairs:
        if not _is_int(value, hi):
            raise _fail(f"integer {value!r} out of range 0..{hi}")


def _check_count(n: int, limit: int, what: str) -> None:
    if n > limit:
        raise _fail(f"{n} {what} exceed the limit of {limit}")


def _check_resync(requester: object, epoch: object, from_seq: object, full: object) -> None:
    if not valid_name(requester):
        raise _fail(f"bad requester {requester!r}")
    if not _is_int(epoch, MAX_INT) or type(full) is not bool:
        raise _fail("bad resync request")
    if from_seq is None:
        if not full:
            raise _fail("a resync request needs from_seq or full")
    elif not _is_int(from_seq, MAX_INT):
        raise _fail(f"bad from_seq {from_seq!r}")


def _ms(seconds: float) -> int:
    if 0 < seconds < _MS_MAX_S:
        return int(seconds * 1000.0 + 0.5)
    if seconds != seconds:  # NaN
        raise _fail("time is NaN")
    return 0 if seconds <= 0 else MS_MAX


_MS_MAX_S = MS_MAX / 1000.0


def _fam(t: Tuple) -> int:
    family, _, src, dst = t[:4]
    if family == 4 and len(src) == 4 and len(dst) == 4:
        return 0
    if family == 6 and len(src) == 16 and len(dst) == 16:
        return F_V6
    raise _fail(f"bad tuple addresses for family {family!r}")


def item_record(item: Item, origin: str, epoch: int) -> tuple[bytes, bool]:
    """The fixed record of an item, and whether it needs the array form."""
    conn = item.conn
    orig, reply = item.orig, item.reply
    fam = _fam(orig)
    proto = orig[1]
    if _fam(reply) != fam or reply[1] != proto:
        raise _fail("orig and reply tuples differ in family or protocol")
    flags = fam
    own = conn.creator == origin and conn.epoch == epoch
    if own:
        flags |= F_OWN
    if proto == 1 or proto == 58:  # ICMP: the reply's type is mapped
        inv = reply == orig.invert()
    else:
        inv = (reply[2] == orig[3] and reply[3] == orig[2] and reply[4] == orig[5]
               and reply[5] == orig[4])
    if inv:
        flags |= F_REPLY_INV
    tail: tuple[Any, ...] = orig[2:] if inv else orig[2:] + reply[2:]
    try:
        if isinstance(item, CtDelete):
            flags |= K_DELETE
            return _DELETE[flags & _LAYOUT].pack(
                flags, orig.proto, item.zone, conn.id, *tail), not own
        flags |= K_UPSERT
        tcp = item.tcp
        if (tcp is not None) != (orig.proto == 6):
            raise _fail("a TCP connection carries its TCP state, and only a TCP one")
        if tcp is not None:
            flags |= F_TCP
            tail += tcp
        rec = _UPSERT[flags & _LAYOUT].pack(
            flags, proto, item.zone, item.status, item.mark, conn.id, _ms(item.timeout),
            _ms(item.period), _ms(item.age), item.offload, *tail)
    except struct.error as exc:
        raise _fail(f"cannot encode item: {exc}") from None
    extra = (not own or item.labels != 0 or item.helper is not None
             or item.master is not None or item.nat is not None or bool(item.expects))
    return rec, extra


def item_object(item: Item, origin: str, epoch: int) -> Any:
    """The msgpack object for one item (a bin, or the array form)."""
    rec, extra = item_record(item, origin, epoch)
    if not extra:
        return rec
    conn = item.conn
    own = conn.creator == origin and conn.epoch == epoch
    if not own and (not valid_name(conn.creator) or not _is_int(conn.epoch, MAX_INT)):
        raise _fail(f"bad connection creator {conn.creator!r}/{conn.epoch!r}")
    creator = None if own else conn.creator
    cepoch = None if own else conn.epoch
    if isinstance(item, CtDelete):
        return [rec, creator, cepoch, None, None, None, None]
    labels = item.labels
    if type(labels) is not int or not 0 <= labels < 1 << 128:
        raise _fail("labels must be a 128-bit unsigned integer")
    helper = item.helper
    if helper is not None and not _valid_helper(helper):
        raise _fail(f"bad helper name {helper!r}")
    out = [rec, creator, cepoch, labels.to_bytes(16, "big") if labels else None, helper,
           _tuple_record(item.master) if item.master is not None else None,
           _nat_object(item.nat) if item.nat is not None else None]
    if item.expects:
        out.append(_expects_object(item.expects, item.orig))
    return out


def pack_item(item: Item, origin: str, epoch: int) -> bytes:
    """One item as msgpack bytes, to be assembled by encode_packed()."""
    rec, extra = item_record(item, origin, epoch)
    if not extra and len(rec) < 256:
        return _BIN8[len(rec)] + rec  # msgpack bin 8, without a call into msgpack
    return _packb(item_object(item, origin, epoch))


_BIN8 = [bytes((0xC4, n)) for n in range(256)]


def pack_own_upsert(entry_id: int, orig: Tuple, reply: Tuple, zone: int, status: int,
                    timeout: float, period: float, age: float, mark: int, offload: int,
                    tcp: tuple[int, ...] | None) -> bytes:
    """pack_item() of a CtUpsert created by the envelope's origin and epoch,
    without labels, helper, master or NAT ranges (the common case), from plain
    values: `tcp` is the TCP block flat (state, the six fields of each
    direction, the nine last-packet fields). The send path's fast lane: the
    bytes are those pack_item() gives for the same record."""
    family, proto, src, dst, sport, dport = orig
    rfamily, rproto, rsrc, rdst, rsport, rdport = reply
    n = len(src)
    if not ((family == 4 and n == 4) or (family == 6 and n == 16)) or len(dst) != n \
            or rfamily != family or rproto != proto or len(rsrc) != n or len(rdst) != n:
        _fam(orig)  # raises the precise error
        _fam(reply)
        raise _fail("orig and reply tuples differ in family or protocol")
    if (tcp is not None) != (proto == 6):
        raise _fail("a TCP connection carries its TCP state, and only a TCP one")
    flags = (F_V6 if family == 6 else 0) | F_OWN | K_UPSERT
    if proto == 1 or proto == 58:
        inv = reply == orig.invert()
    else:
        inv = rsrc == dst and rdst == src and rsport == dport and rdport == sport
    if inv:
        flags |= F_REPLY_INV
        tail: tuple[Any, ...] = (src, dst, sport, dport)
    else:
        tail = (src, dst, sport, dport, rsrc, rdst, rsport, rdport)
    if tcp is not None:
        flags |= F_TCP
        tail += tcp
    try:
        rec = _UPSERT[flags & _LAYOUT].pack(
            flags, proto, zone, status, mark, entry_id, _ms(timeout), _ms(period), _ms(age),
            offload, *tail)
    except struct.error as exc:
        raise _fail(f"cannot encode item: {exc}") from None
    return _BIN8[len(rec)] + rec


def _valid_helper(name: object, limit: int = MAX_HELPER_LEN) -> bool:
    return (isinstance(name, str) and 0 < len(name) <= limit
            and name.isascii() and all(c.isalnum() or c in "-_" for c in name))


def _valid_fn(name: object) -> bool:
    """An expectfn's name (struct nf_ct_helper_expectfn.name: "nat-follow-master")."""
    return _valid_helper(name, MAX_FN_LEN)


def _tuple_record(t: Tuple) -> bytes:
    fam = _fam(t)
    try:
        return _TUPLE[fam].pack(fam, t.proto, t.src, t.dst, t.sport, t.dport)
    except struct.error as exc:
        raise _fail(f"cannot encode tuple: {exc}") from None


def _expects_object(expects: Sequence[ExpectInfo], master: Tuple) -> list[Any]:
    _check_count(len(expects), MAX_EXPECTS, "expectations")
    out = []
    for x in expects:
        t = x.tuple
        fam = _fam(t)
        if t.family != master.family:
            raise _fail("an expectation is in its master's address family")
        if x.helper is not None and not _valid_helper(x.helper):
            raise _fail(f"bad expectation helper {x.helper!r}")
        if x.fn is not None and not _valid_fn(x.fn):
            raise _fail(f"bad expectation fn {x.fn!r}")
        if not (_is_int(x.flags, EXPECT_FLAGS) and _is_int(x.cls, MAX_EXPECT_CLASS)):
            raise _fail("bad expectation flags or class")
        flags = fam | (X_ANY_ADDR if x.src_any_addr else 0) | (X_ANY_PORT if x.src_any_port else 0)
        try:
            rec = _EXPECT[fam].pack(flags, t.proto, x.cls, x.flags, _ms(x.timeout),
                                    _ms(x.period), t.src, t.dst, t.sport, t.dport)
        except struct.error as exc:
            raise _fail(f"cannot encode expectation: {exc}") from None
        out.append([rec, x.helper, x.fn])
    return out


def _nat_object(nat: NatInfo) -> list[Any]:
    out: list[Any] = []
    for rng in (nat.src, nat.dst):
        if rng is None:
            out.append(None)
            continue
        _check_range(rng.min_addr, rng.max_addr, rng.min_port, rng.max_port)
        if rng.kind not in (0, 1) or not _is_int(rng.flags, 0xFF):
            raise _fail("bad NAT range kind or flags")
        out.append([rng.kind, rng.min_addr, rng.max_addr, rng.min_port, rng.max_port,
                    rng.flags])
    return out


def _touch_record(t: Touch) -> bytes:
    fam = _fam(t.orig)
    try:
        return _TOUCH[fam].pack(fam, t.orig.proto, t.zone, _ms(t.seconds_ago), t.orig.src,
                                t.orig.dst, t.orig.sport, t.orig.dport)
    except struct.error as exc:
        raise _fail(f"cannot encode touch: {exc}") from None


def packed_overhead(cluster: str, origin: str) -> int:
    """An upper bound on a CtBatch/SnapshotChunk frame's bytes besides its items."""
    return 1 + 1 + 1 + (len(cluster) + 2) + (len(origin) + 2) + 3 * 9 + 2 * 9 + 1 + 5 \
        + TAG_BYTES


def encode_packed(cluster: str, origin: str, epoch: int, seq: int, sent_at: float,
                  packed: Sequence[bytes], key: bytes | None,
                  chunk: tuple[int, int] | None = None) -> bytes:
    """A CtBatch (or, with chunk=(snapshot_id, index), a SnapshotChunk) frame
    from items already packed with pack_item(): each item is encoded once."""
    _check_header(cluster, origin, epoch, seq, sent_at)
    _check_count(len(packed), MAX_ITEMS, "items")
    p = msgpack.Packer(use_bin_type=True)
    parts = [p.pack_array_header(7), p.pack(T_SNAP_CHUNK if chunk else T_CT), p.pack(cluster),
             p.pack(origin), p.pack(epoch), p.pack(seq), p.pack(float(sent_at))]
    if chunk is not None:
        _ints((chunk[0], MAX_INT), (chunk[1], MAX_INT))
        parts += [p.pack_array_header(3), p.pack(chunk[0]), p.pack(chunk[1])]
    parts.append(p.pack_array_header(len(packed)))
    parts.extend(packed)
    return _frame(b"".join(parts), key)


# ================================================================ decode
def decode(data: bytes, key: bytes | None = None, *, lazy: bool = False) -> Envelope:
    """The envelope in `data`; CodecError for anything malformed or unauthentic.
    With lazy=True a CtBatch comes as a CtFrame: its plain upserts stay wire
    records, checked here as completely as decoding them would (the same frames
    are refused), and are read later by plain_upsert()."""
    payload = _unframe(data, key)
    try:
        obj = msgpack.unpackb(payload, use_list=False, raw=False, strict_map_key=True,
                              max_str_len=MAX_MESSAGE_BYTES, max_bin_len=MAX_MESSAGE_BYTES,
                              max_array_len=MAX_TOUCHES, max_map_len=0, max_ext_len=0)
    except Exception as exc:  # msgpack raises many types for bad input
        raise _fail(f"malformed msgpack: {type(exc).__name__}: {exc}") from None
    if type(obj) is not tuple or len(obj) != 7:
        raise _fail("an envelope is an array of 7")
    typ, cluster, origin, epoch, seq, sent_at, body = obj
    if type(sent_at) is not float or not math.isfinite(sent_at):
        raise _fail("sent_at must be a finite float")
    _check_header(cluster, origin, epoch, seq, sent_at)
    decoder = (_LAZY if lazy else _BODY).get(typ) if type(typ) is int else None
    if decoder is None:
        raise _fail(f"unknown message type {typ!r}")
    return Envelope(PROTOCOL_VERSION, cluster, origin, epoch, seq, sent_at,
                    decoder(body, origin, epoch))


def _array(x: object, n: int, what: str) -> tuple[Any, ...]:
    if type(x) is not tuple or len(x) != n:
        raise _fail(f"{what} must be an array of {n}")
    return x


def _items(body: object, origin: str, epoch: int) -> tuple[Item, ...]:
    if type(body) is not tuple:
        raise _fail("items must be an array")
    _check_count(len(body), MAX_ITEMS, "items")
    out = []
    for it in body:
        if type(it) is bytes:
            out.append(_record(it, origin, epoch, None))
        else:
            out.append(_extended(it, origin, epoch))
    return tuple(out)


def _frame_records(body: object, origin: str, epoch: int) -> CtFrame:
    if type(body) is not tuple:
        raise _fail("items must be an array")
    _check_count(len(body), MAX_ITEMS, "items")
    if len(body) >= COLUMNS_FROM and _plain_columns(body):
        return CtFrame(body)
    return _each_record(body, origin, epoch)


def _each_record(body: tuple[Any, ...], origin: str, epoch: int) -> CtFrame:
    """_frame_records() one record at a time."""
    out: list[bytes | Item] = []
    keep = out.append
    sizes = _PLAIN_SIZE
    for it in body:
        if type(it) is bytes:
            if it and sizes.get(it[0]) == len(it) and _plain_ok(it):
                keep(it)
            else:  # anything else is decoded now (or refused, with the reason)
                keep(_record(it, origin, epoch, None))
        else:
            keep(_extended(it, origin, epoch))
    return CtFrame(tuple(out))


# A frame of at least this many records, all plain ones of one layout (a busy
# origin's usual frame: hundreds of TCP upserts), is checked by columns: one
# NumPy comparison per field instead of _plain_ok() per record. Below it, or
# when any column fails, each record is looked at in turn.
COLUMNS_FROM = 128
_BYTES_ONLY = {bytes}


def _plain_columns(body: tuple[Any, ...]) -> bool:
    """_plain_ok() of every record of `body`, for a body of records of one size
    and one plain layout: its records as the rows of a byte matrix, each
    field's limit checked on its column. False if any record is not bytes,
    not of that size and layout, or not plain (the caller then looks at each)."""
    if set(map(type, body)) != _BYTES_ONLY or len(set(map(len, body))) != 1:
        return False
    size = len(body[0])
    rows = np.frombuffer(b"".join(body), np.uint8).reshape(len(body), size)
    flags = rows[:, 0]
    first = int(flags[0])
    if _PLAIN_SIZE.get(first) != size or (flags != first).any() \
            or (rows[:, _AT_OFFLOAD] > OFFLOAD_HW).any():
        return False
    proto = rows[:, 1]
    if first & F_TCP:
        if (proto != 6).any():
            return False
        return not any((rows[:, size - back] > hi).any() for back, hi in _TCP_LIMITS)
    return not ((proto == 6) | (proto == 1) | (proto == 58)).any()


def _plain_ok(rec: bytes) -> bool:
    """A plain upsert record of the right size that _record() would accept,
    and not ICMP (whose omitted reply tuple needs a check of its own)."""
    proto = rec[1]
    if proto == 1 or proto == 58 or bool(rec[0] & F_TCP) != (proto == 6) \
            or rec[_AT_OFFLOAD] > OFFLOAD_HW:
        return False
    if proto == 6:
        end = len(rec)
        for back, hi in _TCP_LIMITS:
            if rec[end - back] > hi:
                return False
    return True


def record_item(rec: bytes, origin: str, epoch: int) -> Item:
    """The CtUpsert of a CtFrame's plain record."""
    return _record(rec, origin, epoch, None)


PlainUpsert = tuple[int, Tuple, int, int, int, float, float, float, bytes | None]


def plain_upsert(rec: bytes) -> PlainUpsert:
    """A CtFrame's plain record, read without building its CtUpsert: (zone,
    orig, status, mark, id, timeout, period, age, TCP block). The TCP block is
    the record's own bytes, in node.conntrack.tcp.PACKED's layout, or None."""
    flags = rec[0]
    v6 = flags & F_V6
    (_, proto, zone, status, mark, ident, timeout, period, age, _, src, dst, sport,
     dport) = _UPSERT_HEAD[v6].unpack_from(rec)
    orig = _new(Tuple, (6 if v6 else 4, proto, src, dst, PORT_INTS[sport], PORT_INTS[dport]))
    return (zone, orig, status, mark, ident, timeout / 1000.0, period / 1000.0, age / 1000.0,
            rec[-TCP_BLOCK_BYTES:] if flags & F_TCP else None)


def plain_reply(rec: bytes, orig: Tuple) -> Tuple:
    """The reply tuple of a CtFrame's plain record whose original is `orig`."""
    fam, proto, src, dst, sport, dport = orig
    if rec[0] & F_REPLY_INV:
        return _new(Tuple, (fam, proto, dst, src, dport, sport))
    v6 = rec[0] & F_V6
    rsrc, rdst, rsport, rdport = _REPLY[v6].unpack_from(rec, _UPSERT_HEAD[v6].size)
    return _new(Tuple, (fam, proto, rsrc, rdst, PORT_INTS[rsport], PORT_INTS[rdport]))


_ABSENT = object()


def _extended(it: object, origin: str, epoch: int) -> Item:
    expects: object = _ABSENT
    if type(it) is tuple and len(it) == 8:  # an upsert with expectations
        expects = it[7]
        it = it[:7]
    rec, creator, cepoch, labels, helper, master, nat = _array(it, 7, "an extended item")
    if type(rec) is not bytes or not rec:
        raise _fail("an item record must be bytes")
    if creator is None and cepoch is None:
        if not rec[0] & F_OWN:
            raise _fail("an item without F_OWN needs its creator")
        ident = None
    elif valid_name(creator) and _is_int(cepoch, MAX_INT) and not rec[0] & F_OWN:
        ident = (creator, cepoch)
    else:
        raise _fail("bad item creator")
    extras = None
    if rec[0] & KIND_MASK == K_UPSERT:
        if labels is not None and (type(labels) is not bytes or len(labels) != 16):
            raise _fail("labels must be 16 bytes")
        if helper is not None and not _valid_helper(helper):
            raise _fail(f"bad helper name {helper!r}")
        extras = (int.from_bytes(labels, "big") if labels is not None else 0, helper,
                  _decode_tuple(master) if master is not None else None,
                  _decode_nat(nat) if nat is not None else None)
    elif not (labels is None and helper is None and master is None and nat is None
              and expects is _ABSENT):
        raise _fail("a delete has no labels, helper, master, NAT or expectations")
    item = _record(rec, origin, epoch, ident, extras)
    if expects is _ABSENT:
        return item
    if type(item) is not CtUpsert:
        raise _fail("only an upsert carries expectations")
    return item._replace(expects=_decode_expects(expects, item.orig.family))


def _record(rec: bytes, origin: str, epoch: int, ident: tuple[str, int] | None,
            extras: tuple[int, str | None, Tuple | None, NatInfo | None] | None = None) -> Item:
    flags = rec[0] if rec else 0
    if flags & ~_KNOWN_FLAGS:
        raise _fail(f"unknown item flags {flags:#x}")
    if ident is None:
        if not flags & F_OWN:
            raise _fail("an item without F_OWN needs its creator")
        creator, cepoch = origin, epoch
    else:
        creator, cepoch = ident
    kind = flags & KIND_MASK
    if kind == K_UPSERT:
        st = _UPSERT[flags & _LAYOUT]
    elif kind == K_DELETE and not flags & F_TCP:
        st = _DELETE[flags & _LAYOUT]
    else:
        raise _fail(f"bad item kind in flags {flags:#x}")
    if len(rec) != st.size:
        raise _fail(f"item record of {len(rec)} bytes, expected {st.size}")
    f = st.unpack(rec)
    fam = 6 if flags & F_V6 else 4
    proto = f[1]
    i = 4 if kind == K_DELETE else 10
    src, dst, sport, dport = f[i:i + 4]
    sport, dport = PORT_INTS[sport], PORT_INTS[dport]  # (shared: see tuple.interned())
    orig = _new(Tuple, (fam, proto, src, dst, sport, dport))
    i += 4
    if flags & F_REPLY_INV:
        if proto == 1 or proto == 58:
            inverse = orig.invert()
            if inverse is None:
                raise _fail("the reply tuple is omitted but the original has no inverse")
            reply = inverse
        else:
            reply = _new(Tuple, (fam, proto, dst, src, dport, sport))
    else:
        rsrc, rdst, rsport, rdport = f[i:i + 4]
        reply = _new(Tuple, (fam, proto, rsrc, rdst, PORT_INTS[rsport], PORT_INTS[rdport]))
        i += 4
    if kind == K_DELETE:
        return _new(CtDelete, (_new(ConnId, (creator, cepoch, f[3])), orig, reply, f[2]))
    tcp = None
    if bool(flags & F_TCP) != (proto == 6):
        raise _fail("a TCP connection carries its TCP state, and only a TCP one")
    if flags & F_TCP:
        tcp = _tcp(f, i)
    offload = f[9]
    if offload > OFFLOAD_HW:
        raise _fail(f"bad offload state {offload}")
    labels, helper, master, nat = extras if extras is not None else (0, None, None, None)
    return _new(CtUpsert, (_new(ConnId, (creator, cepoch, f[5])), orig, reply, f[2], f[3],
                           f[6] / 1000.0, f[7] / 1000.0, f[8] / 1000.0, f[4], labels, helper,
                           master, tcp, nat, offload, ()))


def _tcp(f: tuple[Any, ...], i: int) -> TcpInfo:
    for n, hi in _TCP_FIELD_LIMITS:
        if f[i + n] > hi:
            raise _fail("TCP state, direction, index or window scale out of range")
    return _new(TcpInfo, f[i:i + 22])


def _decode_tuple(rec: object) -> Tuple:
    if type(rec) is not bytes or not rec:
        raise _fail("a tuple record must be bytes")
    fam = rec[0]
    st = _TUPLE.get(fam)
    if st is None or len(rec) != st.size:
        raise _fail("bad tuple record")
    _, proto, src, dst, sport, dport = st.unpack(rec)
    return Tuple(6 if fam else 4, proto, src, dst, sport, dport)


def _decode_expects(obj: object, family: int) -> tuple[ExpectInfo, ...]:
    if type(obj) is not tuple or not obj:
        raise _fail("expectations must be a non-empty array")
    _check_count(len(obj), MAX_EXPECTS, "expectations")
    out = []
    for x in obj:
        rec, helper, fn = _array(x, 3, "an expectation")
        if type(rec) is not bytes or not rec:
            raise _fail("an expectation record must be bytes")
        flags = rec[0]
        if flags & ~_X_KNOWN:
            raise _fail(f"unknown expectation flags {flags:#x}")
        st = _EXPECT[flags & F_V6]
        if len(rec) != st.size:
            raise _fail(f"expectation record of {len(rec)} bytes, expected {st.size}")
        _, proto, cls, xflags, timeout, period, src, dst, sport, dport = st.unpack(rec)
        fam = 6 if flags & F_V6 else 4
        if fam != family:
            raise _fail("an expectation is in its master's address family")
        if cls > MAX_EXPECT_CLASS or xflags & ~EXPECT_FLAGS:
            raise _fail("bad expectation flags or class")
        if (helper is not None and not _valid_helper(helper)) \
                or (fn is not None and not _valid_fn(fn)):
            raise _fail(f"bad expectation helper or fn {helper!r} / {fn!r}")
        out.append(ExpectInfo(_new(Tuple, (fam, proto, src, dst, sport, dport)),
                              bool(flags & X_ANY_ADDR), bool(flags & X_ANY_PORT), helper,
                              timeout / 1000.0, period / 1000.0, xflags, cls, fn))
    return tuple(out)


def _decode_nat(obj: object) -> NatInfo:
    src, dst = _array(obj, 2, "NAT")
    return NatInfo(_decode_range(src, 0), _decode_range(dst, 1))


def _decode_range(obj: object, kind: int) -> NatRangeInfo | None:
    if obj is None:
        return None
    k, lo, hi, plo, phi, flags = _array(obj, 6, "a NAT range")
    if k != kind or type(k) is not int or not _is_int(flags, 0xFF):
        raise _fail("bad NAT range kind or flags")
    _check_range(lo, hi, plo, phi)
    return NatRangeInfo(k, lo, hi, plo, phi, flags)


def _check_range(lo: object, hi: object, plo: object, phi: object) -> None:
    if (lo is None) != (hi is None) or (plo is None) != (phi is None):
        raise _fail("a NAT range has both bounds or neither")
    if lo is not None and (type(lo) is not bytes or type(hi) is not bytes
                           or len(lo) not in (4, 16) or len(lo) != len(hi)):
        raise _fail("NAT range addresses must both be 4 or both 16 bytes")
    for p in (plo, phi):
        if p is not None and not _is_int(p, U16):
            raise _fail("NAT range ports must be 0..65535")


def _touches(body: object, origin: str, epoch: int) -> TouchDigest:
    count, blob = _array(body, 2, "a touch digest")
    if not _is_int(count, MAX_TOUCHES) or type(blob) is not bytes:
        raise _fail("bad touch digest")
    out = []
    off, end = 0, len(blob)
    for _ in range(count):
        if off >= end:
            raise _fail("touch digest shorter than its count")
        fam = blob[off]
        st = _TOUCH.get(fam)
        if st is None or off + st.size > end:
            raise _fail("bad touch record")
        _, proto, zone, ms, src, dst, sport, dport = st.unpack_from(blob, off)
        off += st.size
        out.append(Touch(zone, Tuple(6 if fam else 4, proto, src, dst, sport, dport),
                         ms / 1000.0))
    if off != end:
        raise _fail("trailing bytes in touch digest")
    return TouchDigest(tuple(out))


def _heartbeat(body: object, origin: str, epoch: int) -> Heartbeat:
    node, role, priority, term, ready, size, ct_seq, session = _array(body, 8, "a heartbeat")
    if node != origin or role not in ROLES or type(ready) is not bool:
        raise _fail("bad heartbeat")
    _ints((priority, 255), (term, MAX_INT), (size, MAX_INT), (ct_seq, MAX_INT),
          (session, MAX_INT))
    return Heartbeat(node, role, priority, term, ready, size, ct_seq, session)


def _resync(body: object, origin: str, epoch: int) -> ResyncRequest:
    requester, rq_epoch, from_seq, full = _array(body, 4, "a resync request")
    _check_resync(requester, rq_epoch, from_seq, full)
    return ResyncRequest(requester, rq_epoch, from_seq, full)


def _snap_start(body: object, origin: str, epoch: int) -> SnapshotStart:
    sid, requester, full, as_of, entries = _array(body, 5, "a snapshot start")
    if not valid_name(requester) or type(full) is not bool:
        raise _fail("bad snapshot start")
    _ints((sid, MAX_INT), (as_of, MAX_INT), (entries, MAX_INT))
    return SnapshotStart(sid, requester, full, as_of, entries)


def _snap_chunk(body: object, origin: str, epoch: int) -> SnapshotChunk:
    sid, index, items = _array(body, 3, "a snapshot chunk")
    _ints((sid, MAX_INT), (index, MAX_INT))
    return SnapshotChunk(sid, index, _items(items, origin, epoch))


def _snap_end(body: object, origin: str, epoch: int) -> SnapshotEnd:
    sid, chunks, items = _array(body, 3, "a snapshot end")
    _ints((sid, MAX_INT), (chunks, MAX_INT), (items, MAX_INT))
    return SnapshotEnd(sid, chunks, items)


def _ack(body: object, origin: str, epoch: int) -> CtAck:
    acked, ack_epoch, seq = _array(body, 3, "an ack")
    if not valid_name(acked):
        raise _fail("bad ack origin")
    _ints((ack_epoch, MAX_INT), (seq, MAX_INT))
    return CtAck(acked, ack_epoch, seq)


def _ct(body: object, origin: str, epoch: int) -> CtBatch:
    return CtBatch(_items(body, origin, epoch))


_BODY: dict[int, Callable[[object, str, int], Body]] = {
    T_CT: _ct, T_TOUCH: _touches, T_HB: _heartbeat, T_RESYNC: _resync,
    T_SNAP_START: _snap_start, T_SNAP_CHUNK: _snap_chunk, T_SNAP_END: _snap_end, T_ACK: _ack,
}
_LAZY = {**_BODY, T_CT: _frame_records}

__all__ = ["MAX_EXPECTS", "MAX_ITEMS", "MAX_MESSAGE_BYTES", "MAX_TOUCHES", "TCP_BLOCK_BYTES",
           "PlainUpsert", "check_key", "decode", "encode", "encode_packed", "item_object",
           "item_record", "pack_item", "pack_own_upsert", "packed_overhead", "plain_reply",
           "plain_upsert", "record_item"]
