"""Packets and their wire format: IPv4/IPv6 with TCP, UDP, ICMP, ICMPv6, GRE or any
other protocol. Pure: no I/O, no clock.

Addresses are packed bytes (4 or 16), exactly as on the wire, so they hash fast
and need no conversion on the hot path; `ip_str()` renders them.

`parse(data)` raises `PacketError` for malformed bytes (and nothing else, for any
input). Checksums are *verified*, not enforced: a packet with a bad L4 checksum
parses, with `l4_csum_ok=False`, because conntrack (not the parser) decides what
a bad checksum means.

`build(pkt)` is the inverse. Parsing is lossless: for every `data` that parses,
`build(parse(data)) == data[:parse(data).length]` (bytes beyond the IP length are
ignored). To make that hold, parse() fills the "explicit" fields (`ip_csum`,
`l4_csum`, `Udp.length`, `Gre.payload_len`) only when the wire value differs from
the one build() would compute, and keeps TCP options and IPv6 extension headers
as raw bytes. Leave them None/empty when constructing packets and build()
computes correct values.

The wire code is in `node.packet_codec` (parse/build re-exported here); this module
holds the data model and the
convenience constructors (`tcp()`, `udp()`, `icmp_echo()`, `icmp_error()`, `gre()`,
`ip_packet()`), which return packets in their parsed form (`length` set, options
as on the wire), so `parse(build(p)) == p` for them.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field, replace
from typing import TypedDict, Unpack

# IP protocol numbers (include/uapi/linux/in.h, in6.h)
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_GRE = 47
IPPROTO_ICMPV6 = 58

# TCP flag bits, as in the TCP header byte 13 (and CWR/ECE)
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80
# Bits 8-11 of Tcp.flags carry the low nibble of header byte 12 (AE, formerly NS,
# and 3 reserved bits), so that parsing is lossless. Conntrack looks at `flags & 0xFF`.
TCP_AE = 0x100
TCP_FLAG_LETTERS = {"F": TCP_FIN, "S": TCP_SYN, "R": TCP_RST, "P": TCP_PSH,
                    "A": TCP_ACK, "U": TCP_URG, "E": TCP_ECE, "C": TCP_CWR}

# ICMP types whose second word is (identifier, sequence): conntrack's "query" types.
ICMP_QUERY_TYPES = frozenset({0, 8, 13, 14, 15, 16, 17, 18})
ICMPV6_QUERY_TYPES = frozenset({128, 129, 139, 140})
# ICMP types that quote the offending packet: icmp_is_err() for ICMP; for ICMPv6 every
# type below 128 (RFC 4443 2.1; nf_conntrack_icmpv6_error() treats them all as errors).
ICMP_ERROR_TYPES = frozenset({3, 4, 5, 11, 12})
ICMPV6_ERROR_TYPES = frozenset(range(128))
ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY, ICMP_DEST_UNREACH = 8, 0, 3
ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY, ICMPV6_DEST_UNREACH = 128, 129, 1

# IPv6 extension headers that parse() walks to find the upper-layer protocol.
IPV6_HOPOPTS, IPV6_ROUTING, IPV6_FRAGMENT, IPV6_AH, IPV6_DSTOPTS = 0, 43, 44, 51, 60
IPV6_EXT_HEADERS = frozenset({IPV6_HOPOPTS, IPV6_ROUTING, IPV6_FRAGMENT, IPV6_AH, IPV6_DSTOPTS})

# GRE header bits (RFC 1701/2784/2890; PPTP: RFC 2637)
GRE_CSUM = 0x8000
GRE_ROUTING = 0x4000
GRE_KEY = 0x2000
GRE_SEQ = 0x1000
GRE_ACK = 0x0080  # version 1 only
GRE_VERSION = 0x0007
GRE_PROTO_PPP = 0x880B


class PacketError(ValueError):
    """Malformed packet bytes (or an impossible packet to build)."""


@dataclass(frozen=True, slots=True)
class TcpOptions:
    """The options conntrack cares about, decoded as the kernel does: an option
    with the wrong size is ignored, and decoding stops at EOL or at a length that
    runs past the header. `wscale` is the raw value (the kernel clamps it to 14)."""

    mss: int | None = None
    wscale: int | None = None
    sackok: bool = False
    sack: tuple[tuple[int, int], ...] = ()
    ts: tuple[int, int] | None = None  # (tsval, tsecr)


NO_OPTIONS = TcpOptions()


@dataclass(frozen=True, slots=True)
class Tcp:
    sport: int
    dport: int
    seq: int = 0
    ack: int = 0
    flags: int = 0  # TCP_* bits; bits 8-11: the low nibble of byte 12 (TCP_AE ...)
    window: int = 65535
    urg: int = 0
    options: TcpOptions = field(default_factory=TcpOptions)
    raw_options: bytes = b""  # the option bytes as on the wire (built from `options` if empty)


@dataclass(frozen=True, slots=True)
class Udp:
    sport: int
    dport: int
    length: int | None = None  # the length field if not 8 + payload (fragments, quotes)


@dataclass(frozen=True, slots=True)
class Icmp:
    """ICMP or ICMPv6 (the packet's proto says which).

    For error types the packet's `payload` holds the quoted bytes exactly as on
    the wire, and `inner` is their lenient decoding: None unless the quoted IP
    header is complete; `inner.l4` set from 4 bytes on for TCP/UDP (the ports,
    all conntrack reads), 8 for ICMP, the rest zero; `inner.truncated` if bytes
    are missing; inner checksums kept as on the wire, not verified. build()
    writes `payload`, or `build(inner)` when the payload is empty.
    """

    type: int
    code: int = 0
    id: int = 0  # query types (echo, timestamp, ...): identifier
    seq: int = 0  # query types: sequence number
    rest: bytes = b""  # the 4 bytes after the checksum when not id/seq (mtu, pointer, gateway)
    inner: Packet | None = None  # error types: the quoted packet, possibly truncated


@dataclass(frozen=True, slots=True)
class Gre:
    version: int = 0
    proto: int = 0x0800
    key: int | None = None  # v0: optional key
    call_id: int = 0  # v1 (PPTP): call id
    flags: int = 0  # the first 16 bits of the header (C, K, S, version ...)
    seq: int | None = None  # optional sequence number (S bit)
    ack: int | None = None  # v1: optional acknowledgment number (A bit)
    offset: int = 0  # v0 with C or R bit: the 16 bits after the checksum
    payload_len: int | None = None  # v1: the payload length field if not len(payload)


L4 = Tcp | Udp | Icmp | Gre | None


@dataclass(frozen=True, slots=True)
class Packet:
    family: int  # 4 or 6
    src: bytes
    dst: bytes
    proto: int
    l4: L4 = None
    payload: bytes = b""  # L4 payload (after the L4 header); whole L4 part for other protos
    ttl: int = 64
    tos: int = 0  # IPv4 TOS / IPv6 traffic class
    ip_id: int = 0  # IPv4 identification / IPv6 fragment header identification
    df: bool = False
    flowlabel: int = 0
    frag_offset: int = 0  # in bytes; nonzero or `more_frags` means a fragment
    more_frags: bool = False
    l4_csum_ok: bool = True
    ip_csum_ok: bool = True
    truncated: bool = False  # only for packets quoted inside ICMP errors
    length: int = 0  # L3 length on the wire; parse() sets it, build() computes it
    # Wire details, for lossless parsing and for crafting broken packets.
    ip_options: bytes = b""  # IPv4 options (a multiple of 4 bytes, at most 40)
    ext_headers: tuple[tuple[int, bytes], ...] = ()  # IPv6: (header type, its bytes)
    reserved_flag: bool = False  # the IPv4 reserved flag bit
    ip_csum: int | None = None  # IPv4 header checksum to write; None = the correct one
    l4_csum: int | None = None  # L4 checksum to write; None = the correct one

    @property
    def is_fragment(self) -> bool:
        return self.more_frags or self.frag_offset != 0


def ip_str(addr: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


def ip_bytes(text: str) -> bytes:
    try:
        return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    except (OSError, TypeError, ValueError) as exc:
        raise PacketError(f"bad IP address {text!r}") from exc


def tcp_flags(value: str | int) -> int:
    """TCP flag bits from letters ("SA", "FPA"; any of FSRPAUEC) or an int."""
    if isinstance(value, int):
        return value
    bits = 0
    for ch in value.upper():
        if ch not in TCP_FLAG_LETTERS:
            raise PacketError(f"unknown TCP flag {ch!r} in {value!r} (use FSRPAUEC)")
        bits |= TCP_FLAG_LETTERS[ch]
    return bits


# ------------------------------------------------------------------ constructors
#
# They return the parsed form of what they build (`parse(build(p))`): `length`
# set, TCP options as on the wire, the inner packet of ICMP errors decoded. So
# they raise PacketError for what would not parse; craft such bytes with
# `build(Packet(...))`.


class IpFields(TypedDict, total=False):
    """Optional IP-level fields accepted by the constructors."""

    ttl: int
    tos: int
    ip_id: int
    df: bool
    flowlabel: int
    frag_offset: int
    more_frags: bool
    ip_options: bytes
    ext_headers: tuple[tuple[int, bytes], ...]
    reserved_flag: bool
    ip_csum: int | None
    l4_csum: int | None


def _addr(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        if len(value) not in (4, 16):
            raise PacketError(f"an address is 4 or 16 bytes, not {len(value)}")
        return value
    return ip_bytes(value)


def ip_packet(src: str | bytes, dst: str | bytes, proto: int, l4: L4 = None,
              payload: bytes = b"", **ip: Unpack[IpFields]) -> Packet:
    """Any IP packet; the family follows from the addresses (text or packed)."""
    s, d = _addr(src), _addr(dst)
    if len(s) != len(d):
        raise PacketError(f"src {ip_str(s)} and dst {ip_str(d)} are of different families")
    pkt = Packet(family=4 if len(s) == 4 else 6, src=s, dst=d, proto=proto, l4=l4,
                 payload=payload, **ip)
    return parse(build(pkt))


def tcp(src: str | bytes, dst: str | bytes, sport: int, dport: int, flags: str | int = "S",
        seq: int = 0, ack: int = 0, win: int = 65535,
        options: TcpOptions | bytes = NO_OPTIONS, payload: bytes = b"", urg: int = 0,
        **ip: Unpack[IpFields]) -> Packet:
    """A TCP segment; `options` decoded (TcpOptions) or raw wire bytes."""
    raw = options if isinstance(options, bytes) else b""
    opts = NO_OPTIONS if isinstance(options, bytes) else options
    seg = Tcp(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, tcp_flags(flags), win, urg,
              opts, raw)
    return ip_packet(src, dst, IPPROTO_TCP, seg, payload, **ip)


def udp(src: str | bytes, dst: str | bytes, sport: int, dport: int, payload: bytes = b"",
        **ip: Unpack[IpFields]) -> Packet:
    return ip_packet(src, dst, IPPROTO_UDP, Udp(sport, dport), payload, **ip)


def icmp_echo(src: str | bytes, dst: str | bytes, id: int = 0, seq: int = 0,
              payload: bytes = b"", reply: bool = False, **ip: Unpack[IpFields]) -> Packet:
    """ICMP echo request (or reply); ICMPv6 for IPv6 addresses."""
    v6 = len(_addr(src)) == 16
    if v6:
        typ, proto = (ICMPV6_ECHO_REPLY if reply else ICMPV6_ECHO_REQUEST), IPPROTO_ICMPV6
    else:
        typ, proto = (ICMP_ECHO_REPLY if reply else ICMP_ECHO_REQUEST), IPPROTO_ICMP
    return ip_packet(src, dst, proto, Icmp(typ, 0, id, seq), payload, **ip)


def icmp_error(src: str | bytes, dst: str | bytes, inner: Packet | bytes,
               type: int | None = None, code: int = 0, rest: bytes = b"\0\0\0\0",
               inner_len: int | None = None, **ip: Unpack[IpFields]) -> Packet:
    """An ICMP(v6) error quoting `inner` (a packet or its bytes), cut to
    `inner_len` bytes if given. `type` defaults to destination unreachable."""
    v6 = len(_addr(src)) == 16
    quoted = inner if isinstance(inner, bytes) else build(inner)
    if inner_len is not None:
        quoted = quoted[:inner_len]
    if type is None:
        type = ICMPV6_DEST_UNREACH if v6 else ICMP_DEST_UNREACH
    proto = IPPROTO_ICMPV6 if v6 else IPPROTO_ICMP
    return ip_packet(src, dst, proto, Icmp(type, code, rest=rest), quoted, **ip)


def gre(src: str | bytes, dst: str | bytes, payload: bytes = b"", key: int | None = None,
        version: int = 0, call_id: int = 0, proto: int | None = None, seq: int | None = None,
        ack: int | None = None, **ip: Unpack[IpFields]) -> Packet:
    """GRE version 0 (optional key) or version 1 (PPTP: call_id, proto PPP)."""
    if proto is None:
        proto = GRE_PROTO_PPP if version == 1 else 0x0800
    hdr = Gre(version=version, proto=proto, key=key, call_id=call_id, seq=seq, ack=ack)
    return ip_packet(src, dst, IPPROTO_GRE, hdr, payload, **ip)


def with_bad_l4_csum(pkt: Packet) -> Packet:
    """`pkt` with a wrong L4 checksum (the correct one xor 0x5a5a, as the oracle does)."""
    return replace(pkt, l4_csum=l4_checksum(pkt) ^ 0x5A5A, l4_csum_ok=False)


def with_bad_ip_csum(pkt: Packet) -> Packet:
    """`pkt` (IPv4) with a wrong header checksum (the correct one xor 0x5a5a)."""
    return replace(pkt, ip_csum=ip_checksum(pkt) ^ 0x5A5A, ip_csum_ok=False)


# ------------------------------------------------------------------ the codec
#
# Defined in node.packet_codec, which needs the classes above (hence the import
# down here); these wrappers keep `node.packet` the one import for users.

from node import packet_codec as _codec  # noqa: E402


def parse(data: bytes | bytearray | memoryview) -> Packet:
    """Decode a raw IPv4/IPv6 packet (see node.packet_codec.parse)."""
    return _codec.parse(data)


def build(pkt: Packet) -> bytes:
    """Encode a packet, computing lengths and checksums (see node.packet_codec.build)."""
    return _codec.build(pkt)


def l4_checksum(pkt: Packet) -> int:
    """The correct L4 checksum of `pkt` (whatever `pkt.l4_csum` says)."""
    return _codec.l4_checksum(pkt)


def ip_checksum(pkt: Packet) -> int:
    """The correct IPv4 header checksum of `pkt` (whatever `pkt.ip_csum` says)."""
    return _codec.ip_checksum(pkt)
