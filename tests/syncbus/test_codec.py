"""The wire format: round trips, authentication, limits, and fuzzing.

Whatever bytes arrive, decode() either returns an Envelope or raises CodecError:
random, truncated, bit-flipped, forged and oversized frames never raise
anything else."""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import struct

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.conntrack import Conntrack
from node.conntrack.table import TRACKERS
from node.conntrack.tcp import PACKED, freeze, thaw
from node.conntrack.tcp_table import IP_CT_TCP_FLAG_BE_LIBERAL
from node.conntrack.tuple import PORT_INTS, Tuple
from syncbus import codec, ctstate
from syncbus.errors import CodecError
from syncbus.messages import (
    OFFLOAD_HW,
    ConnId,
    CtAck,
    CtBatch,
    CtDelete,
    CtFrame,
    CtUpsert,
    Envelope,
    ExpectInfo,
    Heartbeat,
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
from tests.syncbus.helpers import KEY, open_snat, open_tcp, open_udp

V4 = Tuple(4, 6, b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02", 1234, 80)
V6 = Tuple(6, 17, bytes(range(16)), bytes(range(16, 32)), 5353, 53)
TCP = TcpInfo(3, 1, 2, 3, 4, 7, 0x23, 5, 6, 7, 8, 0, 0x08, 1, 3, 9, 10, 11, 65535, 7, 0x40, 2)


def env(body: object, origin: str = "a", epoch: int = 7, seq: int = 1) -> Envelope:
    return Envelope(1, "c1", origin, epoch, seq, 1000.5, body)  # type: ignore[arg-type]


def upsert(**kw: object) -> CtUpsert:
    base = dict(conn=ConnId("a", 7, 42), orig=V4, reply=V4.invert(), zone=3, status=0x3E,
                timeout=119.5, period=120.0, age=2.25, mark=0xDEADBEEF, labels=0, helper=None,
                master=None, tcp=TCP, nat=None, offload=OFFLOAD_HW)
    base.update(kw)
    return CtUpsert(**base)  # type: ignore[arg-type]


# FTP's data connection (any source port) and a SIP-like one (any source, a helper)
EXP4 = ExpectInfo(Tuple(4, 6, b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02", 0, 50001), False,
                  True, None, 299.5, 300.0, 0, 0, None)
EXP6 = ExpectInfo(Tuple(6, 17, bytes(16), bytes(range(16)), 0, 5060), True, True, "sip", 1.25,
                  180.0, 0x5, 3, "nat-follow-master")

ITEMS = [
    upsert(),
    upsert(helper="ftp", expects=(EXP4,)),
    upsert(orig=V6, reply=V6.invert(), tcp=None, helper="sip", expects=(EXP6, EXP6)),
    upsert(conn=ConnId("b", 3, 9), expects=(EXP4,)),  # adopted, no helper named
    upsert(conn=ConnId("b", 3, 9)),  # adopted from another creator
    upsert(labels=(1 << 127) | 5, helper="ftp", master=V4, mark=0),
    upsert(orig=V6, reply=V6.invert(), tcp=None),
    upsert(orig=V6, reply=Tuple(6, 17, bytes(range(16, 32)), bytes(16), 53, 4000), tcp=None,
           nat=NatInfo(NatRangeInfo(0, bytes(16), bytes(16), 4000, 4100, 0), None)),
    upsert(reply=Tuple(4, 6, b"\x0a\x00\x00\x02", b"\xcb\x00\x71\x01", 80, 61000),
           nat=NatInfo(NatRangeInfo(0, b"\xcb\x00\x71\x01", b"\xcb\x00\x71\x01", None, None, 0),
                       None), status=0x3E | 0x90),
    CtDelete(ConnId("a", 7, 42), V4, V4.invert(), 3),
    CtDelete(ConnId("z", 1, 2), V6, V6.invert(), 0),
]


@pytest.mark.parametrize("key", [None, KEY])
def test_every_body_round_trips(key: bytes | None) -> None:
    bodies = [
        CtBatch(tuple(ITEMS)),
        CtBatch(()),
        TouchDigest((Touch(0, V4, 0.25), Touch(65535, V6, 3600.0))),
        Heartbeat("a", "active", 200, 5, True, 123456, 99, 3),
        Heartbeat("a", "offline", 0, 0, False, 0, 0),
        ResyncRequest("b", 7, 12, False),
        ResyncRequest("b", 0, None, True),
        SnapshotStart(4, "b", True, 77, 1000),
        SnapshotChunk(4, 0, tuple(ITEMS)),
        SnapshotEnd(4, 1, len(ITEMS)),
        CtAck("b", 7, 12),
    ]
    for body in bodies:
        e = env(body)
        assert codec.decode(codec.encode(e, key), key) == e


def test_items_keep_every_field_exactly() -> None:
    got = codec.decode(codec.encode(env(CtBatch(tuple(ITEMS)))))
    assert isinstance(got.body, CtBatch)
    for want, have in zip(ITEMS, got.body.items, strict=True):
        assert type(want) is type(have)
        assert want == have


def test_engine_entries_round_trip_through_the_wire() -> None:
    """TCP windows, NAT, status: a standby rebuilds what TcpTracker.export() says."""
    ct = Conntrack()
    entries = [open_tcp(ct, 1, 10.0), open_tcp(ct, 2, 10.0, v6=True), open_udp(ct, 3, 10.0),
               open_snat(ct, 4, 10.0)]
    ups = [ctstate.upsert_of(e, ConnId("a", 7, e.id), 11.0) for e in entries]
    got = codec.decode(codec.encode(env(CtBatch(tuple(ups))), KEY), KEY)
    assert isinstance(got.body, CtBatch)
    other = Conntrack()
    for e, up in zip(entries, got.body.items, strict=True):
        assert isinstance(up, CtUpsert)
        rebuilt = ctstate.new_entry(up, other, 11.0)
        tracker = TRACKERS.get(e.orig.proto)
        if tracker is not None:
            if up.tcp is not None:  # the wire is exact; the injected entry is liberal
                assert ctstate.tcp_info(ctstate.tcp_conn(up.tcp)) == ctstate.tcp_info(e.proto)
                liberal = IP_CT_TCP_FLAG_BE_LIBERAL
                assert type(rebuilt.proto) is bytes  # stored packed, as it came
                conn = thaw(rebuilt)
                assert conn is not None and conn.flags0 & conn.flags1 & liberal
                conn.flags0 ^= liberal & ~e.proto.flags0
                conn.flags1 ^= liberal & ~e.proto.flags1
            assert tracker.export(rebuilt) == tracker.export(e)
        assert (rebuilt.orig, rebuilt.reply, rebuilt.status, rebuilt.mark) == \
            (e.orig, e.reply, e.status, e.mark)
        assert rebuilt.expires_at == pytest.approx(e.expires_at, abs=1e-3)
        assert rebuilt.created == pytest.approx(e.created, abs=1e-3)
        assert rebuilt.nat == e.nat


def test_bytes_on_the_wire_per_event_are_small() -> None:
    ct = Conntrack()
    tcp4, udp4 = open_tcp(ct, 1, 10.0), open_udp(ct, 2, 10.0)
    tcp6 = open_tcp(ct, 3, 10.0, v6=True)
    size = {name: len(codec.pack_item(ctstate.upsert_of(e, ConnId("a", 1, e.id), 10.0), "a", 1))
            for name, e in (("tcp4", tcp4), ("udp4", udp4), ("tcp6", tcp6))}
    delete = len(codec.pack_item(CtDelete(ConnId("a", 1, 1), V4, V4.invert(), 0), "a", 1))
    assert size == {"tcp4": 103, "udp4": 45, "tcp6": 127}
    assert delete == 26
    frame = codec.encode(env(CtBatch(tuple(ctstate.upsert_of(tcp4, ConnId("a", 7, i), 10.0)
                                           for i in range(500)))), KEY)
    assert len(frame) / 500 < 104  # the envelope and HMAC are amortised


# ------------------------------------------------------------------ authentication
def test_with_a_key_unauthenticated_frames_are_refused() -> None:
    frame = codec.encode(env(CtBatch(tuple(ITEMS))), None)
    with pytest.raises(CodecError, match="unauthenticated"):
        codec.decode(frame, KEY)


def test_a_wrong_key_or_a_forged_frame_does_not_verify() -> None:
    frame = codec.encode(env(CtBatch(tuple(ITEMS))), KEY)
    with pytest.raises(CodecError, match="HMAC"):
        codec.decode(frame, b"x" * 32)
    forged = bytearray(frame)
    forged[20] ^= 1
    with pytest.raises(CodecError, match="HMAC"):
        codec.decode(bytes(forged), KEY)
    # re-signed with the attacker's key: still refused
    body = bytes(forged[:-32])
    with pytest.raises(CodecError):
        codec.decode(body + hmac.digest(b"evil" * 8, body, "sha256"), KEY)


def test_without_a_key_authenticated_frames_are_refused_too() -> None:
    with pytest.raises(CodecError, match="no cluster key"):
        codec.decode(codec.encode(env(CtBatch(())), KEY), None)


def test_keys_must_be_long_enough() -> None:
    with pytest.raises(ValueError):
        codec.check_key(b"short")


# ------------------------------------------------------------------ validation
def test_truncations_of_a_valid_frame_all_raise_codec_error() -> None:
    frame = codec.encode(env(CtBatch(tuple(ITEMS))))
    for n in range(len(frame)):
        with pytest.raises(CodecError):
            codec.decode(frame[:n])


def test_oversized_and_over_limit_frames_are_refused() -> None:
    with pytest.raises(CodecError, match="exceeds"):
        codec.decode(b"\x01" + b"\x00" * codec.MAX_MESSAGE_BYTES)
    too_many = CtBatch(tuple(CtDelete(ConnId("a", 7, i), V4, V4.invert(), 0)
                             for i in range(codec.MAX_ITEMS + 1)))
    with pytest.raises(CodecError, match="exceed"):
        codec.encode(env(too_many))


def _raw(typ: int, body: object, origin: str = "a") -> bytes:
    return b"\x01" + msgpack.packb([typ, "c1", origin, 7, 1, 1.0, body], use_bin_type=True)


@pytest.mark.parametrize("frame, why", [
    (b"\x02" + b"\x90", "version"),
    (_raw(99, []), "unknown message type"),
    (b"\x01" + msgpack.packb([1, "c1", "a/b", 7, 1, 1.0, []]), "name"),
    (b"\x01" + msgpack.packb([1, "c1", "a", -1, 1, 1.0, []]), "epoch"),
    (b"\x01" + msgpack.packb([1, "c1", "a", 7, 1, 1, []]), "sent_at"),
    (b"\x01" + msgpack.packb([1, "c1", "a", 7, 1, float("nan"), []]), "sent_at"),
    (b"\x01" + msgpack.packb({"a": 1}), "msgpack|array"),
    (_raw(1, [b"\x7f" + bytes(40)]), "flags"),
    (_raw(1, [b"\x21" + bytes(10)]), "bytes, expected"),
    (_raw(1, ["text"]), "array of 7"),
    (_raw(1, [[b"\x21", "b", 1, None, None, None, None]]), "creator"),
    (_raw(1, [[b"\x21", None, None, None, None, None, None, None, None]]), "array of 7"),
    (_raw(3, ["b", "active", 1, 1, True, 1, 1, 1]), "heartbeat"),
    (_raw(3, ["a", "king", 1, 1, True, 1, 1, 1]), "heartbeat"),
    (_raw(3, ["a", "active", 256, 1, True, 1, 1, 1]), "range"),
    (_raw(3, ["a", "active", 1, 1, 1, 1, 1, 1]), "heartbeat"),
    (_raw(4, ["b", 1, None, False]), "from_seq or full"),
    (_raw(2, [2, b"\x00" * 20]), "touch"),
    (_raw(2, [1, b"\x00" * 21]), "trailing"),
    (_raw(8, ["b", 7]), "an ack"),
    (_raw(8, ["b/c", 7, 1]), "ack origin"),
    (_raw(8, ["b", 7, -1]), "range"),
])
def test_malformed_frames_name_the_problem(frame: bytes, why: str) -> None:
    with pytest.raises(CodecError, match=why):
        codec.decode(frame)


def _with_expects(expects: object, item: object = None) -> bytes:
    """A CtBatch frame whose one (extended) item carries `expects` as its 8th element."""
    obj = list(codec.item_object(item or upsert(helper="ftp"), "a", 7))
    return _raw(1, [[*obj[:7], expects]])


def _exp_record(**kw: object) -> bytes:
    obj = codec.item_object(upsert(helper="ftp", expects=(EXP4._replace(**kw),)), "a", 7)
    return bytes(obj[7][0][0])


@pytest.mark.parametrize("expects, why", [
    ([], "non-empty"),
    ("x", "non-empty"),
    ([[b"\x02" + bytes(23), None]], "array of 3"),
    ([[b"", None, None]], "record must be bytes"),
    ([["rec", None, None]], "record must be bytes"),
    ([[b"\x80" + bytes(23), None, None]], "unknown expectation flags"),
    ([[b"\x02" + bytes(22), None, None]], "expected 24"),
    ([[b"\x06" + bytes(47), None, None]], "master's address family"),
    ([[b"\x02" + bytes(23), "f/p", None]], "helper or fn"),
    ([[b"\x02" + bytes(23), None, 7]], "helper or fn"),
    ([[b"\x02\x06\x04" + bytes(21), None, None]], "flags or class"),
    ([[b"\x02\x06\x00\x08" + bytes(20), None, None]], "flags or class"),
    ([[b"\x02" + bytes(23), None, None]] * 256, "exceed"),
])
def test_malformed_expectations_name_the_problem(expects: object, why: str) -> None:
    with pytest.raises(CodecError, match=why):
        codec.decode(_with_expects(expects))


def test_expectations_travel_only_on_upserts() -> None:
    delete = list(codec.item_object(CtDelete(ConnId("z", 1, 2), V4, V4.invert(), 0), "a", 7))
    with pytest.raises(CodecError, match="delete"):
        codec.decode(_raw(1, [[*delete, [[_exp_record(), None, None]]]]))
    ok = codec.decode(_with_expects([[_exp_record(), None, None]]))
    assert isinstance(ok.body, CtBatch) and ok.body.items[0].expects == (EXP4,)  # type: ignore


def test_out_of_range_fields_in_records_are_refused() -> None:
    good = codec.item_record(upsert(), "a", 7)[0]
    hdr = struct.calcsize("!" + codec.UPSERT_HDR)
    tcp_off = hdr + 12
    bad_state = bytearray(good)
    bad_state[tcp_off] = 10  # sIV is never a connection's state
    bad_scale = bytearray(good)
    bad_scale[tcp_off + 17] = 15  # td_scale > 14
    bad_offload = bytearray(good)
    bad_offload[hdr - 1] = 3
    for rec in (bad_state, bad_scale, bad_offload):
        with pytest.raises(CodecError):
            codec.decode(_raw(1, [bytes(rec)]))


def test_encode_refuses_what_it_could_not_decode() -> None:
    for item in (upsert(zone=70000), upsert(mark=1 << 32), upsert(labels=1 << 128),
                 upsert(helper="x" * 16), upsert(helper="f/p"), upsert(tcp=None),
                 upsert(orig=Tuple(4, 6, b"\x00" * 16, b"\x00" * 4, 1, 2)),
                 upsert(orig=V4._replace(sport=70000)),
                 upsert(expects=(EXP6,)),  # another family than its master
                 upsert(expects=(EXP4._replace(cls=4),)), upsert(expects=(EXP4._replace(flags=8),)),
                 upsert(expects=(EXP4._replace(helper="x" * 16),)),
                 upsert(expects=(EXP4._replace(fn="a b"),)),
                 upsert(expects=(EXP4._replace(fn="x" * 32),)),
                 upsert(expects=(EXP4._replace(tuple=V4._replace(dport=1 << 16)),)),
                 upsert(expects=(EXP4,) * 256)):
        with pytest.raises(CodecError):
            codec.encode(env(CtBatch((item,))))
    with pytest.raises(CodecError):
        codec.encode(env(Heartbeat("b", "active", 1, 1, True, 1, 1)))  # node != origin


def test_times_are_clamped_not_wrapped() -> None:
    got = codec.decode(codec.encode(env(CtBatch((upsert(timeout=1e12, age=-5.0),)))))
    assert isinstance(got.body, CtBatch)
    item = got.body.items[0]
    assert isinstance(item, CtUpsert)
    assert item.timeout == pytest.approx(0xFFFFFFFF / 1000)
    assert item.age == 0.0


# ------------------------------------------------------------------ fuzzing
FRAMES = [codec.encode(env(b), k) for k in (None, KEY) for b in (
    CtBatch(tuple(ITEMS)), TouchDigest((Touch(1, V4, 1.0),)),
    Heartbeat("a", "standby", 1, 1, True, 1, 1), ResyncRequest("b", 1, 1, False),
    SnapshotChunk(1, 0, tuple(ITEMS)), CtAck("b", 1, 1))]


def _decodes_or_codec_error(data: bytes, key: bytes | None) -> None:
    """decode() returns or raises CodecError; decode(lazy=True) refuses exactly
    the same frames, and its CtFrame holds the same items."""
    full = lazy = None
    with contextlib.suppress(CodecError):
        full = codec.decode(data, key)
    with contextlib.suppress(CodecError):
        lazy = codec.decode(data, key, lazy=True)
    assert (full is None) == (lazy is None)
    if full is not None and lazy is not None:
        if isinstance(full.body, CtBatch):
            assert isinstance(lazy.body, CtFrame)
            assert _expanded(lazy) == full.body.items
            assert lazy == dataclasses.replace(full, body=lazy.body)
        else:
            assert lazy == full


def _expanded(env: Envelope) -> tuple[object, ...]:
    """A CtFrame's items, each plain record also checked against plain_upsert()
    and plain_reply()."""
    assert isinstance(env.body, CtFrame)
    out: list[object] = []
    for rec in env.body.records:
        if type(rec) is not bytes:
            out.append(rec)
            continue
        item = codec.record_item(rec, env.origin, env.epoch)
        assert isinstance(item, CtUpsert) and item.conn[:2] == (env.origin, env.epoch)
        assert not item.labels and item.helper is None and item.nat is None \
            and item.master is None and not item.expects and item.orig.proto not in (1, 58)
        zone, orig, status, mark, ident, timeout, period, age, tcp = codec.plain_upsert(rec)
        assert (zone, orig, status, mark, ident, timeout, period, age) == (
            item.zone, item.orig, item.status, item.mark, item.conn.id, item.timeout,
            item.period, item.age)
        assert codec.plain_reply(rec, orig) == item.reply
        assert tcp == (PACKED.pack(*item.tcp) if item.tcp is not None else None)
        out.append(item)
    return tuple(out)


def test_the_lazy_decoder_keeps_plain_upserts_as_records() -> None:
    """Own upserts without extensions stay bytes (v4 and v6, TCP and not,
    reply tuple inverse or rewritten); deletes, ICMP, other creators and
    anything with an extension are decoded."""
    icmp = Tuple(4, 1, b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02", 8, 0x1234)
    plain = [upsert(), upsert(orig=V6, reply=V6.invert(), tcp=None),
             upsert(reply=V4._replace(src=V4.dst, dst=b"\xc6\x12\x00\x09", sport=80,
                                      dport=61000))]
    decoded = [ITEMS[1], ITEMS[4], ITEMS[8], ITEMS[9], ITEMS[10],
               upsert(orig=icmp, reply=icmp.invert(), tcp=None)]
    e = env(CtBatch(tuple(plain + decoded)))
    lazy = codec.decode(codec.encode(e, KEY), KEY, lazy=True)
    assert isinstance(lazy.body, CtFrame)
    assert [type(r) is bytes for r in lazy.body.records] == [True] * 3 + [False] * 6
    assert _expanded(lazy) == e.body.items  # type: ignore[attr-defined]


def test_each_checked_byte_of_a_plain_record_is_checked_lazily_too() -> None:
    """Every byte the fast check reads, at its largest accepted value and one
    above: both decoders accept the first and refuse the second."""
    good = codec.item_record(upsert(), "a", 7)[0]
    hdr = struct.calcsize("!" + codec.UPSERT_HDR)
    tcp_off = hdr + 12
    limits = [(hdr - 1, OFFLOAD_HW), (tcp_off, 9), (tcp_off + 17, 14), (tcp_off + 35, 14),
              (tcp_off + 37, 1), (tcp_off + 38, 5), (tcp_off + 55, 14)]
    for at, hi in limits:
        ok, bad = bytearray(good), bytearray(good)
        ok[at], bad[at] = hi, hi + 1
        lazy = codec.decode(_raw(1, [bytes(ok)]), lazy=True)
        assert [type(r) for r in lazy.body.records] == [bytes]  # type: ignore[attr-defined]
        with pytest.raises(CodecError):
            codec.decode(_raw(1, [bytes(bad)]), lazy=True)
        for rec in (ok, bad):
            _decodes_or_codec_error(_raw(1, [bytes(rec)]), None)
    for rec in (good[:-1], good + b"\x00", bytes([good[0] | 0x40]) + good[1:],
                bytes([good[0] & ~codec.F_TCP]) + good[1:]):  # size, flags, TCP block
        with pytest.raises(CodecError):
            codec.decode(_raw(1, [rec]), lazy=True)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512), st.sampled_from([None, KEY]))
def test_random_bytes_never_crash_the_decoder(data: bytes, key: bytes | None) -> None:
    _decodes_or_codec_error(data, key)
    _decodes_or_codec_error(b"\x01" + data, key)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FRAMES), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                          min_size=1, max_size=6), st.sampled_from([None, KEY]))
def test_mutated_frames_never_crash_the_decoder(frame: bytes, edits: list[tuple[int, int]],
                                                key: bytes | None) -> None:
    data = bytearray(frame)
    for pos, value in edits:
        data[pos % len(data)] = value
    _decodes_or_codec_error(bytes(data), key)


def _msgpack_values() -> st.SearchStrategy[object]:
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 64), 1 << 64),
                     st.floats(allow_nan=True), st.text(max_size=20), st.binary(max_size=80))
    return st.recursive(leaf, lambda inner: st.lists(inner, max_size=8), max_leaves=40)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10), _msgpack_values())
def test_well_formed_msgpack_of_any_shape_is_validated(typ: int, body: object) -> None:
    try:
        frame = b"\x01" + msgpack.packb([typ, "c1", "a", 1, 1, 1.0, body], use_bin_type=True)
    except (OverflowError, TypeError):
        return
    _decodes_or_codec_error(frame, None)


@settings(max_examples=300)
@given(st.lists(st.sampled_from(ITEMS), max_size=40), st.integers(0, (1 << 63) - 1),
       st.integers(0, (1 << 63) - 1))
def test_round_trip_any_batch(items: list[object], epoch: int, seq: int) -> None:
    e = Envelope(1, "c1", "a", epoch, seq, 5.0, CtBatch(tuple(items)))  # type: ignore[arg-type]
    assert codec.decode(codec.encode(e, KEY), KEY) == e


_names = st.one_of(st.none(), st.sampled_from(["ftp", "sip", "x" * 15, "x" * 16, "a/b", ""]))


@st.composite
def _expect_infos(draw: st.DrawFn) -> ExpectInfo:
    v6 = draw(st.booleans())
    n = 16 if v6 else 4
    addr = st.binary(min_size=n, max_size=n)
    t = Tuple(6 if v6 else 4, draw(st.integers(0, 255)), draw(addr), draw(addr),
              draw(st.integers(0, 70000)), draw(st.integers(0, 65535)))
    return ExpectInfo(t, draw(st.booleans()), draw(st.booleans()), draw(_names),
                      draw(st.floats(0, 5e6)), draw(st.floats(0, 5e6)),
                      draw(st.integers(0, 9)), draw(st.integers(0, 5)), draw(_names))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_expect_infos(), min_size=1, max_size=4), st.booleans())
def test_any_expectations_round_trip_or_are_refused_on_encode(
        expects: list[ExpectInfo], v6: bool) -> None:
    master = upsert(orig=V6, reply=V6.invert(), tcp=None) if v6 else upsert()
    item = master._replace(helper="ftp", expects=tuple(expects))
    try:
        frame = codec.encode(env(CtBatch((item,))), KEY)
    except CodecError:
        return
    got = codec.decode(frame, KEY)
    assert isinstance(got.body, CtBatch)
    (back,) = got.body.items
    assert isinstance(back, CtUpsert)
    assert back._replace(expects=()) == item._replace(expects=())
    for want, have in zip(expects, back.expects, strict=True):
        assert have._replace(timeout=0.0, period=0.0) == want._replace(timeout=0.0, period=0.0)
        assert have.timeout == pytest.approx(min(want.timeout, 0xFFFFFFFF / 1000), abs=1e-3)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_msgpack_values())
def test_expectations_of_any_shape_are_validated(expects: object) -> None:
    try:
        frame = _with_expects(expects)
    except (OverflowError, TypeError):
        return
    _decodes_or_codec_error(frame, None)


def test_the_send_paths_fast_lane_gives_the_same_bytes() -> None:
    ct = Conntrack()
    entries = [open_tcp(ct, 1, 10.0), open_tcp(ct, 2, 10.0, v6=True), open_udp(ct, 3, 10.0),
               open_snat(ct, 4, 10.0)]
    entries[0].mark = 7
    for conn in (ConnId("a", 7, 5), ConnId("z", 7, 5), ConnId("a", 6, 5)):
        for e in entries:
            slow = codec.pack_item(ctstate.upsert_of(e, conn, 12.5), "a", 7)
            assert ctstate.pack_entry(e, conn, 12.5, "a", 7) == slow


def test_the_tcp_block_reads_the_slots_in_the_records_order() -> None:
    assert TcpInfo._fields == ctstate.TCP_FIELDS


def test_decoded_tuples_carry_the_shared_port_objects() -> None:
    """A replica's new entry keeps the decoded tuples: their ports are the
    shared int objects that conntrack's own entries use (tuple.interned())."""
    ct = Conntrack()
    entries = [open_tcp(ct, 1, 10.0), open_tcp(ct, 2, 10.0, v6=True), open_snat(ct, 4, 10.0)]
    ups = [ctstate.upsert_of(e, ConnId("a", 7, e.id), 11.0) for e in entries]
    got = codec.decode(codec.encode(env(CtBatch(tuple(ups))), KEY), KEY)
    assert isinstance(got.body, CtBatch)
    for up in got.body.items:
        assert isinstance(up, CtUpsert)
        for t in (up.orig, up.reply):
            assert t.sport is PORT_INTS[t.sport] and t.dport is PORT_INTS[t.dport]


def test_a_packed_connection_publishes_the_same_bytes() -> None:
    """The state a flow table packed (tcp.freeze()) has the wire's TCP block
    layout, and the records of a packed and an unpacked entry are the same."""
    assert PACKED.format == "!" + codec.TCP_BLOCK
    ct = Conntrack()
    for v6 in (False, True):
        e = open_tcp(ct, 1 + v6, 10.0, v6=v6)
        conn = ConnId("a", 7, 5)
        TRACKERS[6].set_be_liberal(e)  # as tcf_ct_flow_table_add() does before freeze()
        before = ctstate.pack_entry(e, conn, 12.5, "a", 7), ctstate.upsert_of(e, conn, 12.5)
        freeze(e)
        assert type(e.proto) is bytes
        assert (ctstate.pack_entry(e, conn, 12.5, "a", 7), ctstate.upsert_of(e, conn, 12.5)) \
            == before


_addrs = st.sampled_from([b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02", bytes(range(16)),
                          bytes(16), b"\x01\x02\x03"])
_tuples = st.builds(Tuple, st.sampled_from([4, 6, 5]), st.sampled_from([6, 17, 1, 58, 132]),
                    _addrs, _addrs, st.integers(0, 70000), st.integers(-1, 65535))
_times = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 10**12))


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(_tuples, st.one_of(st.none(), _tuples), _times, _times, _times, st.booleans(),
       st.integers(0, 1 << 33))
def test_the_fast_lane_packs_or_refuses_whatever_the_record_path_does(
        orig: Tuple, reply: Tuple | None, timeout: float, period: float, age: float,
        with_tcp: bool, mark: int) -> None:
    """pack_own_upsert() against pack_item() on any tuple pair and times: the
    same bytes, or a CodecError from both."""
    reply = orig.invert() or orig if reply is None else reply
    tcp = TCP if with_tcp else None
    item = upsert(orig=orig, reply=reply, timeout=timeout, period=period, age=age, mark=mark,
                  tcp=tcp, conn=ConnId("a", 7, 42))
    try:
        want: bytes | None = codec.pack_item(item, "a", 7)
    except CodecError:
        want = None
    try:
        got: bytes | None = codec.pack_own_upsert(
            42, orig, reply, item.zone, item.status, timeout, period, age, mark,
            item.offload, tuple(tcp) if tcp is not None else None)
    except CodecError:
        got = None
    assert got == want


# A busy origin's frame: COLUMNS_FROM or more plain records of one layout, checked
# by columns (codec._plain_columns()). Layouts: TCP over IPv4 and IPv6, UDP with
# the reply tuple omitted and with it carried (NAT).
_LAYOUTS = [upsert(conn=ConnId("a", 7, 1), labels=0, mark=5),
            upsert(conn=ConnId("a", 7, 1), orig=Tuple(6, 6, bytes(range(16)), bytes(16), 9, 80),
                   reply=Tuple(6, 6, bytes(16), bytes(range(16)), 80, 9)),
            upsert(conn=ConnId("a", 7, 1), orig=Tuple(4, 17, V4.src, V4.dst, 5000, 53),
                   reply=Tuple(4, 17, V4.dst, V4.src, 53, 5000), tcp=None),
            upsert(conn=ConnId("a", 7, 1), orig=Tuple(4, 17, V4.src, V4.dst, 5000, 53),
                   reply=Tuple(4, 17, V4.dst, b"\xc6\x12\x00\x09", 53, 61000), tcp=None)]


def _busy_body(layout: int, n: int) -> list[bytes]:
    """n plain records of one layout, each its own connection (id and source port)."""
    base = _LAYOUTS[layout]
    out = []
    for i in range(n):
        o = base.orig._replace(sport=1024 + i)
        r = base.reply._replace(dport=1024 + i) if base.reply == base.orig.invert() \
            else base.reply
        rec = codec.item_record(base._replace(conn=ConnId("a", 7, 100 + i), orig=o, reply=r),
                                "a", 7)[0]
        out.append(rec)
    return out


def _both_ways(body: tuple[object, ...]) -> tuple[object, object]:
    """_frame_records() (by columns when it can) and _each_record(): each one's
    CtFrame, or the CodecError's message."""
    got = []
    for decode in (codec._frame_records, codec._each_record):
        try:
            got.append(decode(body, "a", 7))
        except CodecError as exc:
            got.append(f"CodecError: {exc}")
    return got[0], got[1]


def test_a_busy_frame_is_checked_by_columns() -> None:
    """A busy frame is kept as it came (the same records, not one rebuilt), and
    decodes as record by record does; every field the check reads, one above its
    limit in one record in the middle, is refused as record by record refuses it."""
    for layout in range(len(_LAYOUTS)):
        body = tuple(_busy_body(layout, codec.COLUMNS_FROM + 5))
        assert codec._plain_columns(body)
        frame = codec._frame_records(body, "a", 7)
        assert frame.records is body
        assert frame == codec._each_record(body, "a", 7)
    good = _busy_body(0, codec.COLUMNS_FROM)
    hdr = struct.calcsize("!" + codec.UPSERT_HDR)
    tcp_off = hdr + 12
    for at, hi in [(hdr - 1, OFFLOAD_HW), (tcp_off, 9), (tcp_off + 17, 14), (tcp_off + 35, 14),
                   (tcp_off + 37, 1), (tcp_off + 38, 5), (tcp_off + 55, 14), (1, 16), (0, 0)]:
        bad = bytearray(good[60])
        bad[at] = hi + 1 if at else good[60][0] | 0x40
        body = tuple([*good[:60], bytes(bad), *good[61:]])
        assert not codec._plain_columns(body)
        by_columns, each = _both_ways(body)
        assert isinstance(by_columns, str) and by_columns == each
    udp = _busy_body(2, codec.COLUMNS_FROM)  # a UDP record saying ICMP, ICMPv6 or TCP
    for proto in (1, 58, 6):
        body = tuple([*udp[:9], udp[9][:1] + bytes((proto,)) + udp[9][2:], *udp[10:]])
        assert not codec._plain_columns(body)
        assert _both_ways(body)[0] == _both_ways(body)[1]
    for body in (tuple(r[:-1] for r in good), tuple(r + b"\x00" for r in good),  # all of a
                 tuple(r + b"\x00" for r in udp), tuple(r[:-1] for r in udp),  # wrong size
                 tuple([*good[:5], "x" * len(good[0]), *good[6:]])):  # text of their size
        assert not codec._plain_columns(body)
        by_columns, each = _both_ways(body)
        assert isinstance(by_columns, str) and by_columns == each


_EDITS = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 200), st.integers(0, 255)),
                  max_size=3)
_SHAPES = st.sampled_from(["same", "short", "long", "other_layout", "delete", "extended",
                           "text", "icmp"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(_LAYOUTS) - 1), st.integers(0, 40), _EDITS, _SHAPES,
       st.integers(0, 10_000))
def test_checking_by_columns_decodes_what_record_by_record_decodes(
        layout: int, extra: int, edits: list[tuple[int, int, int]], shape: str,
        where: int) -> None:
    """Any busy frame, any bytes changed in any records, one record of another
    size, layout, kind or type anywhere: the columns decide exactly as the
    record-by-record check does (the same CtFrame, or the same refusal)."""
    body: list[object] = list(_busy_body(layout, codec.COLUMNS_FROM + extra))
    for which, at, value in edits:
        rec = bytearray(body[which % len(body)])  # type: ignore[arg-type]
        rec[at % len(rec)] = value
        body[which % len(body)] = bytes(rec)
    i = where % len(body)
    odd = {"short": body[i][:-1], "long": body[i] + b"\x00",  # type: ignore[index,operator]
           "other_layout": _busy_body((layout + 1) % len(_LAYOUTS), 1)[0],
           "delete": codec.item_record(CtDelete(ConnId("a", 7, 5), V4, V4.invert(), 0),
                                       "a", 7)[0],
           "extended": [codec.item_record(upsert(conn=ConnId("b", 3, 9)), "a", 7)[0], "b", 3,
                        None, None, None, None],
           "text": "a record",
           "icmp": codec.item_record(upsert(orig=Tuple(4, 1, V4.src, V4.dst, 8, 7),
                                            reply=Tuple(4, 1, V4.dst, V4.src, 0, 7),
                                            tcp=None), "a", 7)[0]}.get(shape)
    if odd is not None:
        body[i] = odd
    if shape == "extended":  # (as msgpack gives it back: an array is a tuple)
        body[i] = tuple(body[i])  # type: ignore[arg-type]
    by_columns, each = _both_ways(tuple(body))
    assert by_columns == each
    _decodes_or_codec_error(_raw(1, body), None)
