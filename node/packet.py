"""Packets and their wire format: IPv4/IPv6 with TCP, UDP, ICMP, ICMPv6, GRE or any
other protocol. Pure: no I/O, no clock.

Addresses are packed bytes (4 or 16), exactly as on the wire, so they hash fast
and need no conversion on the hot path; `ip_str()` renders them.

`parse(data)` raises `PacketError` for malformed bytes. Checksums are *verified*,
not enforced: a packet with a bad L4 checksum parses, with `l4_csum_ok=False`,
because conntrack (not the parser) decides what a bad checksum means.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

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


class PacketError(ValueError):
    """Malformed packet bytes (or an impossible packet to build)."""


@dataclass(frozen=True, slots=True)
class TcpOptions:
    mss: int | None = None
    wscale: int | None = None
    sackok: bool = False
    sack: tuple[tuple[int, int], ...] = ()
    ts: tuple[int, int] | None = None  # (tsval, tsecr)


@dataclass(frozen=True, slots=True)
class Tcp:
    sport: int
    dport: int
    seq: int = 0
    ack: int = 0
    flags: int = 0
    window: int = 65535
    urg: int = 0
    options: TcpOptions = field(default_factory=TcpOptions)
    raw_options: bytes = b""  # the option bytes as on the wire (built from `options` if empty)


@dataclass(frozen=True, slots=True)
class Udp:
    sport: int
    dport: int


@dataclass(frozen=True, slots=True)
class Icmp:
    """ICMP or ICMPv6 (the packet's proto says which)."""

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
    ip_id: int = 0
    df: bool = False
    flowlabel: int = 0
    frag_offset: int = 0  # in bytes; nonzero or `more_frags` means a fragment
    more_frags: bool = False
    l4_csum_ok: bool = True
    ip_csum_ok: bool = True
    truncated: bool = False  # only for packets quoted inside ICMP errors
    length: int = 0  # L3 length on the wire; parse() sets it, build() computes it


def ip_str(addr: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


def ip_bytes(text: str) -> bytes:
    try:
        return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    except OSError as exc:
        raise PacketError(f"bad IP address {text!r}") from exc
