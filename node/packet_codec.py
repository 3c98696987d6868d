"""The wire codec behind node.packet: `parse(bytes) -> Packet`, `build(Packet) -> bytes`.

Lean by design (the conntrack engine parses hundreds of thousands of packets a
second): fixed headers come out of one `struct.unpack_from` each, and checksums
use the identity "a big-endian integer is congruent to the sum of its 16-bit
words modulo 0xffff" (2**16 = 1 mod 0xffff), so summing a whole segment is one
`int.from_bytes`.

L4 headers are decoded in one of three modes:
  _FULL   a normal packet: lengths validated, checksums verified;
  _FRAG   the first fragment of a datagram: the header is decoded if it is all
          there (else the packet is left as an opaque payload), nothing is
          validated against lengths or checksums that cover the whole datagram;
  _QUOTE  the packet quoted in an ICMP error: never raises, takes what is there.
"""

from __future__ import annotations

import struct

from node.frozen import fast_constructor
from node.packet import (
    GRE_ACK,
    GRE_CSUM,
    GRE_KEY,
    GRE_ROUTING,
    GRE_SEQ,
    GRE_VERSION,
    ICMP_ERROR_TYPES,
    ICMP_QUERY_TYPES,
    ICMPV6_ERROR_TYPES,
    ICMPV6_QUERY_TYPES,
    IPV6_AH,
    IPV6_EXT_HEADERS,
    IPV6_FRAGMENT,
    L4,
    NO_OPTIONS,
    Gre,
    Icmp,
    Packet,
    PacketError,
    Tcp,
    TcpOptions,
    Udp,
)

_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")
_ICMP = struct.Struct("!BBHHH")
_H = struct.Struct("!H")
_HH = struct.Struct("!HH")
_I = struct.Struct("!I")
_II = struct.Struct("!II")
_MSS = struct.Struct("!BBH")
_TS = struct.Struct("!BBII")

_FULL, _FRAG, _QUOTE = 0, 1, 2
_Packet = fast_constructor(Packet)
_Tcp = fast_constructor(Tcp)
_TcpOptions = fast_constructor(TcpOptions)
_Udp = fast_constructor(Udp)
_Icmp = fast_constructor(Icmp)
_Gre = fast_constructor(Gre)
_Decoded = tuple[L4, bytes, bool, int | None]  # (l4, payload, l4_csum_ok, explicit l4_csum)


# ------------------------------------------------------------------ checksums

def _words(b: bytes) -> int:
    """An integer congruent (mod 0xffff) to the sum of b's 16-bit words, b zero-padded."""
    n = int.from_bytes(b, "big")
    return n << 8 if len(b) & 1 else n


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> int:
    # IPv4 and IPv6 pseudo-headers alike: the addresses, the protocol, the L4 length.
    return int.from_bytes(src, "big") + int.from_bytes(dst, "big") + proto + length


def pseudo_checksum_ok(src: bytes, dst: bytes, proto: int, length: int, data: bytes) -> bool:
    """Whether `data` (checksum field included) verifies under the pseudo-header
    (src, dst, proto, length), IPv4 and IPv6 alike."""
    return not (_pseudo(src, dst, proto, length) + _words(data)) % 0xFFFF


def _checksum(total: int) -> int:
    """The Internet checksum (RFC 1071) of words whose plain sum is `total`."""
    folded = total % 0xFFFF
    if not folded and total:
        folded = 0xFFFF
    return 0xFFFF - folded


def _explicit(total: int, csum: int) -> tuple[bool, int | None]:
    """(verified, value to keep) for a received checksum whose data, pseudo-header
    and checksum field included, sum to `total` (the data being nonzero). The
    value is kept only when build() would write another one: when wrong, or when
    it is 0xffff where build() computes the equivalent 0."""
    if total % 0xFFFF:
        return False, csum
    return True, (csum if csum == 0xFFFF else None)


# ------------------------------------------------------------------ parse

def parse(data: bytes | bytearray | memoryview) -> Packet:
    """Decode a raw IPv4 or IPv6 packet (no link layer). Raises PacketError only."""
    if type(data) is not bytes:
        if not isinstance(data, bytearray | memoryview):
            raise PacketError(f"cannot parse a {type(data).__name__}; expected bytes")
        data = bytes(data)
    if not data:
        raise PacketError("empty packet: no IP header")
    version = data[0] >> 4
    try:
        if version == 4:
            return _parse_ip4(data)
        if version == 6:
            return _parse_ip6(data)
    except (struct.error, IndexError) as exc:  # a bounds check we missed: still typed
        raise PacketError(f"malformed IPv{version} packet: {exc}") from exc
    raise PacketError(f"IP version {version} in the first byte (0x{data[0]:02x}); "
                      "expected 4 or 6")


def _parse_ip4(data: bytes) -> Packet:
    n = len(data)
    if n < 20:
        raise PacketError(f"IPv4 header needs 20 bytes, only {n} received")
    vihl, tos, total, ip_id, frag, ttl, proto, csum, src, dst = _IP4.unpack_from(data)
    hl = (vihl & 0xF) << 2
    if hl < 20:
        raise PacketError(f"IPv4 header length {hl} (IHL {vihl & 0xF}) is below the minimum 20")
    if total < hl:
        raise PacketError(f"IPv4 total length {total} is shorter than its {hl}-byte header")
    if total > n:
        raise PacketError(f"IPv4 total length {total} exceeds the {n} bytes received")
    ip_ok = not int.from_bytes(data[:hl], "big") % 0xFFFF
    offset = (frag & 0x1FFF) << 3
    seg = data[hl:total]
    if offset:  # not the first fragment: no L4 header here
        l4, payload, l4_ok, l4_csum = None, seg, True, None
    else:
        l4, payload, l4_ok, l4_csum = _parse_l4(
            4, proto, src, dst, seg, _FRAG if frag & 0x2000 else _FULL)
    # Positional, in Packet's field order (every packet a node receives comes
    # here; CPython matches keywords one by one: 19 of them were 1 us a packet).
    return _Packet(
        4, src, dst, proto, l4, payload, ttl, tos, ip_id,
        frag & 0x4000 != 0,  # df
        0,  # flowlabel
        offset, frag & 0x2000 != 0,  # frag_offset, more_frags
        l4_ok, ip_ok, False, total,  # l4_csum_ok, ip_csum_ok, truncated, length
        data[20:hl], (),  # ip_options, ext_headers
        frag & 0x8000 != 0,  # reserved_flag
        None if ip_ok and csum != 0xFFFF else csum, l4_csum)  # ip_csum, l4_csum


def _parse_ip6(data: bytes) -> Packet:
    n = len(data)
    if n < 40:
        raise PacketError(f"IPv6 header needs 40 bytes, only {n} received")
    first, plen, nh, hlim, src, dst = _IP6.unpack_from(data)
    end = 40 + plen
    if end > n:
        raise PacketError(f"IPv6 payload length {plen} exceeds the {n - 40} bytes received "
                          "after the header")
    exts: tuple[tuple[int, bytes], ...] = ()
    pos, offset, more, ident = 40, 0, False, 0
    if nh in IPV6_EXT_HEADERS:
        pos, nh, exts, offset, more, ident = _walk_ext(data, 40, nh, end, strict=True)
    seg = data[pos:end]
    if offset:
        l4, payload, l4_ok, l4_csum = None, seg, True, None
    else:
        l4, payload, l4_ok, l4_csum = _parse_l4(6, nh, src, dst, seg, _FRAG if more else _FULL)
    return _Packet(  # positional, in Packet's field order (as _parse_ip4)
        6, src, dst, nh, l4, payload, hlim,
        (first >> 20) & 0xFF, ident, False,  # tos, ip_id, df
        first & 0xFFFFF, offset, more,  # flowlabel, frag_offset, more_frags
        l4_ok, True, False, end,  # l4_csum_ok, ip_csum_ok, truncated, length
        b"", exts, False, None, l4_csum)  # ip_options, ext_headers, reserved_flag, csums


def _walk_ext(data: bytes, pos: int, nh: int, end: int, strict: bool
              ) -> tuple[int, int, tuple[tuple[int, bytes], ...], int, bool, int]:
    """Skip IPv6 extension headers: (upper offset, upper protocol, headers, fragment
    offset, more fragments, fragment id). Lenient mode stops where bytes run out."""
    exts: list[tuple[int, bytes]] = []
    offset, more, ident, seen_frag = 0, False, 0, False
    while nh in IPV6_EXT_HEADERS:
        if nh == IPV6_FRAGMENT:
            size = 8
        elif pos + 2 <= end:
            size = (data[pos + 1] + 2) << 2 if nh == IPV6_AH else (data[pos + 1] + 1) << 3
        else:
            size = 2
        if pos + size > end:
            if strict:
                raise PacketError(f"IPv6 extension header {nh} at offset {pos} needs {size} "
                                  f"bytes, only {end - pos} left")
            break
        hdr = data[pos:pos + size]
        exts.append((nh, hdr))
        if nh == IPV6_FRAGMENT:
            if seen_frag and strict:
                raise PacketError(f"a second IPv6 fragment header at offset {pos}")
            seen_frag = True
            word, ident = _H.unpack_from(hdr, 2)[0], _I.unpack_from(hdr, 4)[0]
            offset, more = word & 0xFFF8, bool(word & 1)
        pos += size
        nh = hdr[0]
        if offset:  # a later fragment: what follows belongs to the fragmentable part
            break
    return pos, nh, tuple(exts), offset, more, ident


def _parse_l4(family: int, proto: int, src: bytes, dst: bytes, seg: bytes,
              mode: int) -> _Decoded:
    if proto == 6:
        return _parse_tcp(src, dst, seg, mode)
    if proto == 17:
        return _parse_udp(src, dst, seg, mode)
    if proto == (1 if family == 4 else 58):
        return _parse_icmp(family, src, dst, seg, mode)
    if proto == 47:
        return _parse_gre(seg, mode)
    return None, seg, True, None


def _short(what: str, need: int, seg: bytes, mode: int) -> _Decoded:
    if mode == _FULL:
        raise PacketError(f"{what} header needs {need} bytes, only {len(seg)} follow the "
                          "IP header")
    return None, seg, True, None  # a fragment or quote too short to decode: opaque


def _parse_tcp(src: bytes, dst: bytes, seg: bytes, mode: int) -> _Decoded:
    n = len(seg)
    if n < 20:
        if mode != _QUOTE or n < 4:  # a quote needs just the ports, as conntrack does
            return _short("TCP", 20, seg, mode)
        sport, dport, seq, ack, offb, flags, win, csum, urg = _TCP.unpack_from(
            seg + bytes(20 - n))
    else:
        sport, dport, seq, ack, offb, flags, win, csum, urg = _TCP.unpack_from(seg)
    doff = (offb >> 4) << 2
    if doff < 20 or doff > n:
        if mode == _FULL:
            if doff < 20:
                raise PacketError(f"TCP data offset {doff} is below the minimum 20")
            raise PacketError(f"TCP data offset {doff} exceeds the {n}-byte segment")
        if mode == _FRAG:
            return None, seg, True, None
        doff = min(max(doff, 20), n)
    raw = seg[20:doff]
    hdr = _Tcp(sport, dport, seq, ack, flags | (offb & 0xF) << 8, win, urg,
              _tcp_options(raw) if raw else NO_OPTIONS, raw)
    if mode != _FULL:
        return hdr, seg[doff:], True, csum
    total = int.from_bytes(src + dst, "big") + 6 + n + _words(seg)
    if total % 0xFFFF:
        return hdr, seg[doff:], False, csum
    return hdr, seg[doff:], True, (csum if csum == 0xFFFF else None)


def _tcp_options(raw: bytes) -> TcpOptions:
    """Decode like nf_conntrack's tcp_options()/tcp_sack(): wrong sizes are skipped,
    EOL or a length running past the end stops decoding. Never raises."""
    if raw[:4] == b"\x01\x01\x08\x0a" and len(raw) == 12:  # NOP NOP TS: most segments
        return _TcpOptions(ts=_II.unpack_from(raw, 4))
    mss = wscale = None
    sackok = False
    sack: tuple[tuple[int, int], ...] = ()
    ts = None
    i, n = 0, len(raw)
    while i < n:
        kind = raw[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= n:
            break
        size = raw[i + 1]
        if size < 2 or i + size > n:
            break
        if kind == 8 and size == 10:
            tsval, tsecr = _II.unpack_from(raw, i + 2)
            ts = (tsval, tsecr)
        elif kind == 2 and size == 4:
            mss = _H.unpack_from(raw, i + 2)[0]
        elif kind == 3 and size == 3:
            wscale = raw[i + 2]
        elif kind == 4 and size == 2:
            sackok = True
        elif kind == 5 and size >= 10 and (size - 2) % 8 == 0:
            sack = tuple(_II.unpack_from(raw, j) for j in range(i + 2, i + size, 8))
        i += size
    if mss is None and wscale is None and ts is None and not sackok and not sack:
        return NO_OPTIONS
    return _TcpOptions(mss, wscale, sackok, sack, ts)


def _parse_udp(src: bytes, dst: bytes, seg: bytes, mode: int) -> _Decoded:
    n = len(seg)
    if n < 8:
        if mode != _QUOTE or n < 4:
            return _short("UDP", 8, seg, mode)
        sport, dport = _HH.unpack_from(seg)  # a quote cut after the ports
        return _Udp(sport, dport), b"", True, None
    sport, dport, ulen, csum = _UDP.unpack_from(seg)
    hdr = _Udp(sport, dport, None if ulen == n else ulen)
    if mode != _FULL:
        return hdr, seg[8:], True, csum
    if ulen < 8:
        raise PacketError(f"UDP length field {ulen} is below the 8-byte header")
    if ulen > n:
        raise PacketError(f"UDP length field {ulen} exceeds the {n} bytes after the IP header")
    if csum == 0:  # no checksum (allowed over IPv6 too, as the kernel does)
        return hdr, seg[8:], True, 0
    if (_pseudo(src, dst, 17, n) + _words(seg)) % 0xFFFF:
        return hdr, seg[8:], False, csum
    return hdr, seg[8:], True, None  # 0xffff is the canonical form of a computed 0


def _parse_icmp(family: int, src: bytes, dst: bytes, seg: bytes, mode: int) -> _Decoded:
    n = len(seg)
    if n < 8:
        return _short("ICMP" if family == 4 else "ICMPv6", 8, seg, mode)
    typ, code, csum, w1, w2 = _ICMP.unpack_from(seg)
    payload = seg[8:]
    if typ in (ICMP_QUERY_TYPES if family == 4 else ICMPV6_QUERY_TYPES):
        hdr = _Icmp(typ, code, w1, w2)
    else:
        inner = None
        if mode != _QUOTE and payload and typ in (
                ICMP_ERROR_TYPES if family == 4 else ICMPV6_ERROR_TYPES):
            inner = _parse_quoted(payload, family)
        hdr = _Icmp(typ, code, rest=seg[4:8], inner=inner)
    if mode != _FULL:
        return hdr, payload, True, csum
    total = _words(seg) + (_pseudo(src, dst, 58, n) if family == 6 else 0)
    if not total:
        return hdr, payload, False, csum
    ok, explicit = _explicit(total, csum)
    if explicit == 0xFFFF and family == 4 and not any(seg[4:]) and seg[:2] == b"\0\0":
        explicit = None  # all-zero data: 0xffff is the computed checksum
    return hdr, payload, ok, explicit


def _parse_gre(seg: bytes, mode: int) -> _Decoded:
    n = len(seg)
    if n < 4:
        return _short("GRE", 4, seg, mode)
    flags, proto = _HH.unpack_from(seg)
    version = flags & GRE_VERSION
    if version == 1:
        if not flags & GRE_KEY:
            if mode == _FULL:
                raise PacketError("GRE version 1 (PPTP) header without the key bit")
            return None, seg, True, None
        need = 8 + (4 if flags & GRE_SEQ else 0) + (4 if flags & GRE_ACK else 0)
    else:
        need = (4 + (4 if flags & (GRE_CSUM | GRE_ROUTING) else 0)
                + (4 if flags & GRE_KEY else 0) + (4 if flags & GRE_SEQ else 0))
    if n < need:
        if mode != _QUOTE:
            return _short(f"GRE version {version}", need, seg, mode)
        seg = seg + bytes(need - n)
    pos, csum, offset, key, plen, call_id, seq, ack = 4, 0, 0, None, 0, 0, None, None
    if version == 1:
        plen, call_id = _HH.unpack_from(seg, 4)
        pos = 8
    else:
        if flags & (GRE_CSUM | GRE_ROUTING):
            csum, offset = _HH.unpack_from(seg, 4)
            pos = 8
        if flags & GRE_KEY:
            key = _I.unpack_from(seg, pos)[0]
            pos += 4
    if flags & GRE_SEQ:
        seq = _I.unpack_from(seg, pos)[0]
        pos += 4
    if version == 1 and flags & GRE_ACK:
        ack = _I.unpack_from(seg, pos)[0]
        pos += 4
    payload = seg[pos:n] if n >= pos else b""
    hdr = _Gre(version, proto, key, call_id, flags, seq, ack, offset,
              None if version != 1 or plen == len(payload) else plen)
    if version == 1 or not flags & (GRE_CSUM | GRE_ROUTING):
        return hdr, payload, True, None
    if mode != _FULL or not flags & GRE_CSUM:  # R without C: the field is no checksum
        return hdr, payload, True, csum or None
    ok, explicit = _explicit(_words(seg), csum)
    return hdr, payload, ok, explicit


def _parse_quoted(data: bytes, family: int) -> Packet | None:
    """The packet inside an ICMP error, decoded leniently (None if not even its IP
    header is there). Its checksums are kept as on the wire, not verified."""
    n = len(data)
    if family == 4:
        if n < 20 or data[0] >> 4 != 4:
            return None
        vihl, tos, total, ip_id, frag, ttl, proto, csum, src, dst = _IP4.unpack_from(data)
        hl = (vihl & 0xF) << 2
        if hl < 20 or hl > n or total < hl:
            return None
        offset = (frag & 0x1FFF) << 3
        seg = data[hl:total]
        l4, payload, _, l4_csum = ((None, seg, True, None) if offset
                                   else _parse_l4(4, proto, src, dst, seg, _QUOTE))
        return _Packet(  # positional, in Packet's field order
            4, src, dst, proto, l4, payload, ttl, tos, ip_id,
            frag & 0x4000 != 0, 0, offset, frag & 0x2000 != 0,  # df, flowlabel, frag
            True, True, total > n, total,  # l4_csum_ok, ip_csum_ok, truncated, length
            data[20:hl], (), frag & 0x8000 != 0,  # ip_options, ext_headers, reserved_flag
            csum, l4_csum)
    if n < 40 or data[0] >> 4 != 6:
        return None
    first, plen, nh, hlim, src, dst = _IP6.unpack_from(data)
    end = min(40 + plen, n)
    pos, nh, exts, offset, more, ident = _walk_ext(data, 40, nh, end, strict=False)
    seg = data[pos:end]
    l4, payload, _, l4_csum = ((None, seg, True, None) if offset or nh in IPV6_EXT_HEADERS
                               else _parse_l4(6, nh, src, dst, seg, _QUOTE))
    return _Packet(  # positional, in Packet's field order
        6, src, dst, nh, l4, payload, hlim,
        (first >> 20) & 0xFF, ident, False,  # tos, ip_id, df
        first & 0xFFFFF, offset, more,  # flowlabel, frag_offset, more_frags
        True, True, 40 + plen > n, 40 + plen,  # l4_csum_ok, ip_csum_ok, truncated, length
        b"", exts, False, None, l4_csum)  # ip_options, ext_headers, reserved_flag, csums


# ------------------------------------------------------------------ build

def build(pkt: Packet) -> bytes:
    """Encode `pkt`: lengths computed, checksums correct unless `pkt.ip_csum` /
    `pkt.l4_csum` say otherwise. Raises PacketError for impossible packets."""
    try:
        seg = _segment(pkt, pkt.l4_csum)
        if pkt.family == 4:
            return _ip4_header(pkt, len(seg), pkt.ip_csum) + seg
        if pkt.family == 6:
            return _ip6_header(pkt, len(seg)) + seg
    except PacketError:
        raise
    except (struct.error, ValueError, OverflowError, TypeError) as exc:
        raise PacketError(f"cannot build IPv{pkt.family} proto {pkt.proto} packet: a field is "
                          f"out of range or of the wrong type ({exc})") from exc
    raise PacketError(f"family must be 4 or 6, not {pkt.family!r}")


def l4_checksum(pkt: Packet) -> int:
    """The correct L4 checksum of `pkt` (whatever `pkt.l4_csum` says)."""
    l4 = pkt.l4
    pos = {Tcp: 16, Udp: 6, Icmp: 2, Gre: 4}.get(type(l4))
    if pos is None or (isinstance(l4, Gre) and (l4.version == 1 or not l4.flags & GRE_CSUM)):
        raise PacketError(f"a {type(l4).__name__} header (proto {pkt.proto}) has no checksum")
    try:
        return int(_H.unpack_from(_segment(pkt, None), pos)[0])
    except PacketError:
        raise
    except (struct.error, ValueError, OverflowError, TypeError) as exc:
        raise PacketError(f"cannot build the L4 header: {exc}") from exc


def ip_checksum(pkt: Packet) -> int:
    """The correct IPv4 header checksum of `pkt` (whatever `pkt.ip_csum` says)."""
    if pkt.family != 4:
        raise PacketError("only IPv4 headers have a checksum")
    try:
        return int(_H.unpack_from(_ip4_header(pkt, len(_segment(pkt, 0)), None), 10)[0])
    except PacketError:
        raise
    except (struct.error, ValueError, OverflowError, TypeError) as exc:
        raise PacketError(f"cannot build the IPv4 header: {exc}") from exc


def _with_csum(hdr: bytes, pos: int, csum: int) -> bytes:
    return hdr[:pos] + _H.pack(csum) + hdr[pos + 2:]


def _segment(pkt: Packet, csum: int | None) -> bytes:
    """The L4 part: header + payload, with `csum` or the correct checksum."""
    l4, proto = pkt.l4, pkt.proto
    if l4 is None:
        return pkt.payload
    if isinstance(l4, Tcp):
        _expect(proto, (6,), l4)
        opts = l4.raw_options or _encode_options(l4.options)
        if len(opts) & 3:
            opts += bytes(-len(opts) & 3)
        if len(opts) > 40:
            raise PacketError(f"TCP options of {len(opts)} bytes exceed the maximum 40")
        flags = l4.flags
        hdr = _TCP.pack(l4.sport, l4.dport, l4.seq, l4.ack, (20 + len(opts)) << 2 | flags >> 8 & 15,
                        flags & 0xFF, l4.window, 0, l4.urg) + opts
        if csum is None:
            csum = _checksum(_pseudo(pkt.src, pkt.dst, 6, len(hdr) + len(pkt.payload))
                             + int.from_bytes(hdr, "big") + _words(pkt.payload))
        return _with_csum(hdr, 16, csum) + pkt.payload
    if isinstance(l4, Udp):
        _expect(proto, (17,), l4)
        size = 8 + len(pkt.payload)
        hdr = _UDP.pack(l4.sport, l4.dport, size if l4.length is None else l4.length, 0)
        if csum is None:
            csum = _checksum(_pseudo(pkt.src, pkt.dst, 17, size) + int.from_bytes(hdr, "big")
                             + _words(pkt.payload)) or 0xFFFF  # 0 would mean "none"
        return _with_csum(hdr, 6, csum) + pkt.payload
    if isinstance(l4, Icmp):
        _expect(proto, (1, 58), l4)
        data = pkt.payload or (build(l4.inner) if l4.inner is not None else b"")
        if l4.type in (ICMP_QUERY_TYPES if proto == 1 else ICMPV6_QUERY_TYPES):
            word = _HH.pack(l4.id, l4.seq)
        elif len(l4.rest) in (0, 4):
            word = l4.rest or b"\0\0\0\0"
        else:
            raise PacketError(f"ICMP rest must be 4 bytes, not {len(l4.rest)}")
        hdr = bytes((l4.type, l4.code, 0, 0)) + word
        if csum is None:
            total = int.from_bytes(hdr, "big") + _words(data)
            if proto == 58:
                total += _pseudo(pkt.src, pkt.dst, 58, 8 + len(data))
            csum = _checksum(total)
        return _with_csum(hdr, 2, csum) + data
    _expect(proto, (47,), l4)
    return _gre(l4, pkt.payload, csum)


def _expect(proto: int, allowed: tuple[int, ...], l4: object) -> None:
    if proto not in allowed:
        raise PacketError(f"a {type(l4).__name__} header needs proto {allowed[0]}, not {proto}")


def _encode_options(o: TcpOptions) -> bytes:
    """TcpOptions in Linux's SYN layout: mss, sackok+ts, nop wscale, nop nop sack."""
    if o == NO_OPTIONS:
        return b""
    out = b"" if o.mss is None else _MSS.pack(2, 4, o.mss)
    if o.ts is not None:
        out += (b"\x04\x02" if o.sackok else b"\x01\x01") + _TS.pack(8, 10, *o.ts)
    elif o.sackok:
        out += b"\x01\x01\x04\x02"
    if o.wscale is not None:
        out += bytes((1, 3, 3, o.wscale))
    if o.sack:
        out += bytes((1, 1, 5, 2 + 8 * len(o.sack)))
        out += b"".join(_II.pack(left, right) for left, right in o.sack)
    return out


def _gre(g: Gre, payload: bytes, csum: int | None) -> bytes:
    if g.version == 1:
        flags = (g.flags & ~(GRE_KEY | GRE_SEQ | GRE_ACK | GRE_VERSION) | GRE_KEY | 1
                 | (GRE_SEQ if g.seq is not None else 0) | (GRE_ACK if g.ack is not None else 0))
        plen = len(payload) if g.payload_len is None else g.payload_len
        out = _HH.pack(flags, g.proto) + _HH.pack(plen, g.call_id)
        if g.seq is not None:
            out += _I.pack(g.seq)
        if g.ack is not None:
            out += _I.pack(g.ack)
        return out + payload
    if not 0 <= g.version <= 7:
        raise PacketError(f"GRE version {g.version} does not fit in 3 bits")
    flags = (g.flags & ~(GRE_KEY | GRE_SEQ | GRE_VERSION) | g.version
             | (GRE_KEY if g.key is not None else 0) | (GRE_SEQ if g.seq is not None else 0))
    out = _HH.pack(flags, g.proto)
    has_csum = flags & (GRE_CSUM | GRE_ROUTING)
    if has_csum:
        out += _HH.pack(0, g.offset)
    if g.key is not None:
        out += _I.pack(g.key)
    if g.seq is not None:
        out += _I.pack(g.seq)
    if not has_csum:
        return out + payload
    if csum is None:
        csum = _checksum(int.from_bytes(out, "big") + _words(payload)) if flags & GRE_CSUM else 0
    return _with_csum(out, 4, csum) + payload


def _ip4_header(pkt: Packet, seg_len: int, csum: int | None) -> bytes:
    opts = pkt.ip_options
    if len(opts) & 3 or len(opts) > 40:
        raise PacketError(f"IPv4 options must be a multiple of 4 bytes up to 40, "
                          f"not {len(opts)}")
    if len(pkt.src) != 4 or len(pkt.dst) != 4:
        raise PacketError("IPv4 addresses must be 4 bytes")
    hl = 20 + len(opts)
    total = hl + seg_len
    if total > 0xFFFF:
        raise PacketError(f"IPv4 packet of {total} bytes exceeds 65535")
    off = pkt.frag_offset
    if off & 7 or not 0 <= off <= 0xFFF8:
        raise PacketError(f"IPv4 fragment offset {off} must be a multiple of 8 below 65536")
    word = (off >> 3 | (0x2000 if pkt.more_frags else 0) | (0x4000 if pkt.df else 0)
            | (0x8000 if pkt.reserved_flag else 0))
    hdr = _IP4.pack(0x40 | hl >> 2, pkt.tos, total, pkt.ip_id, word, pkt.ttl, pkt.proto, 0,
                    pkt.src, pkt.dst) + opts
    return _with_csum(hdr, 10, _checksum(int.from_bytes(hdr, "big")) if csum is None else csum)


def _ip6_header(pkt: Packet, seg_len: int) -> bytes:
    if len(pkt.src) != 16 or len(pkt.dst) != 16:
        raise PacketError("IPv6 addresses must be 16 bytes")
    if not 0 <= pkt.tos <= 0xFF or not 0 <= pkt.flowlabel <= 0xFFFFF:
        raise PacketError(f"IPv6 traffic class {pkt.tos} / flow label {pkt.flowlabel} "
                          "out of range (8 / 20 bits)")
    exts = pkt.ext_headers
    if pkt.is_fragment and all(t != IPV6_FRAGMENT for t, _ in exts):
        exts = (*exts, (IPV6_FRAGMENT, bytes(8)))
    parts = []
    for i, (typ, raw) in enumerate(exts):
        nxt = exts[i + 1][0] if i + 1 < len(exts) else pkt.proto
        parts.append(_ext_header(pkt, typ, raw, nxt))
    ext = b"".join(parts)
    plen = len(ext) + seg_len
    if plen > 0xFFFF:
        raise PacketError(f"IPv6 payload of {plen} bytes exceeds 65535 (no jumbograms)")
    first = 0x60000000 | pkt.tos << 20 | pkt.flowlabel
    return _IP6.pack(first, plen, exts[0][0] if exts else pkt.proto, pkt.ttl,
                     pkt.src, pkt.dst) + ext


def _ext_header(pkt: Packet, typ: int, raw: bytes, nxt: int) -> bytes:
    """One extension header with its next-header byte (and length byte or, for
    the fragment header, offset/M/id from the packet's fields) filled in."""
    if typ == IPV6_FRAGMENT:
        off = pkt.frag_offset
        if len(raw) != 8 or off & 7 or not 0 <= off <= 0xFFF8:
            raise PacketError(f"IPv6 fragment header of {len(raw)} bytes / offset {off}: "
                              "must be 8 bytes, offset a multiple of 8 below 65536")
        word = off | (_H.unpack_from(raw, 2)[0] & 6) | (1 if pkt.more_frags else 0)
        return bytes((nxt, raw[1])) + _H.pack(word) + _I.pack(pkt.ip_id)
    unit = 4 if typ == IPV6_AH else 8
    if typ not in IPV6_EXT_HEADERS or len(raw) < 8 or len(raw) % unit or len(raw) > 2040:
        raise PacketError(f"IPv6 extension header {typ} of {len(raw)} bytes: the type must be "
                          f"one of {sorted(IPV6_EXT_HEADERS)}, the size a multiple of {unit}")
    return bytes((nxt, len(raw) // 4 - 2 if typ == IPV6_AH else len(raw) // 8 - 1)) + raw[2:]
