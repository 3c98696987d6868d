"""Conntrack tuples (include/net/netfilter/nf_conntrack_tuple.h).

A tuple is a NamedTuple so that hashing and comparison run in C: the table is a
dict keyed by tuples, and lookups are the hot path.

Layer-4 identity per protocol, as the kernel's pkt_to_tuple/invert_tuple do:
  TCP, UDP, UDP-Lite, SCTP, DCCP: sport/dport are the ports.
  ICMP/ICMPv6 queries: sport is the identifier, dport is (type << 8) | code;
    inverting maps the request type to its reply type (nf_conntrack_proto_icmp.c
    invmap, nf_conntrack_proto_icmpv6.c invmap).
  GRE v1 (PPTP): sport/dport are the keys (call ids); GRE v0 and every other
    protocol: 0, 0 (nf_conntrack_proto_gre.c gre_pkt_to_tuple, generic).
"""

from __future__ import annotations

from typing import NamedTuple

from node.packet import (
    IPPROTO_GRE,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Gre,
    Icmp,
    Packet,
    ip_str,
)

IPPROTO_SCTP = 132
IPPROTO_UDPLITE = 136
IPPROTO_DCCP = 33
PORT_PROTOS = frozenset((IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE, IPPROTO_SCTP, IPPROTO_DCCP))

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 58: "icmpv6", 132: "sctp",
               136: "udplite", 33: "dccp"}

# ICMP request -> reply types that create conntrack entries
# (nf_conntrack_proto_icmp.c: invmap, valid_new).
ICMP_INVMAP = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 17: 18, 18: 17}
ICMP_VALID_NEW = frozenset((8, 13, 15, 17))  # echo, timestamp, info, address mask requests
# nf_conntrack_proto_icmpv6.c: invmap (requests -> replies, offset-free) and valid_new.
ICMPV6_INVMAP = {128: 129, 129: 128, 139: 140, 140: 139}
ICMPV6_VALID_NEW = frozenset((128, 139))  # echo request, node information query


class Tuple(NamedTuple):
    family: int
    proto: int
    src: bytes
    dst: bytes
    sport: int = 0
    dport: int = 0

    def invert(self) -> Tuple | None:
        """The tuple of the other direction, or None when the protocol has no
        inverse for it (an ICMP type that is not a query/reply)."""
        if self.proto == IPPROTO_ICMP or self.proto == IPPROTO_ICMPV6:
            invmap = ICMP_INVMAP if self.proto == IPPROTO_ICMP else ICMPV6_INVMAP
            rtype = invmap.get(self.dport >> 8)
            if rtype is None:
                return None
            return Tuple(self.family, self.proto, self.dst, self.src, self.sport,
                         (rtype << 8) | (self.dport & 0xFF))
        return Tuple(self.family, self.proto, self.dst, self.src, self.dport, self.sport)

    def to_dict(self) -> dict[str, object]:
        """The oracle's (and ctnetlink's) tuple rendering."""
        out: dict[str, object] = {"src": ip_str(self.src), "dst": ip_str(self.dst),
                                  "proto": PROTO_NAMES.get(self.proto, self.proto)}
        if self.proto in PORT_PROTOS:
            out["sport"] = self.sport
            out["dport"] = self.dport
        elif self.proto == IPPROTO_ICMP or self.proto == IPPROTO_ICMPV6:
            out["type"] = self.dport >> 8
            out["code"] = self.dport & 0xFF
            out["id"] = self.sport
        return out

    def __str__(self) -> str:
        d = self.to_dict()
        return " ".join(f"{k}={v}" for k, v in d.items() if k != "proto")


# One int object for each 16-bit value (ports, ICMP ids and type/code), as
# CPython keeps one for each small int. A packet's ports are objects of their
# own (28 bytes each beyond 256); the tuples an entry keeps share these instead:
# 56 bytes less per connection, for 2.4 MB per process.
PORT_INTS = tuple(range(1 << 16))


def interned(t: tuple[int, int, bytes, bytes, int, int]) -> Tuple:
    """`t` (a Tuple or a plain tuple of its fields) as a Tuple whose ports are
    the shared int objects: for the tuples a conntrack entry keeps."""
    family, proto, src, dst, sport, dport = t
    if sport.__class__ is int and 0 <= sport <= 0xFFFF:
        sport = PORT_INTS[sport]
    if dport.__class__ is int and 0 <= dport <= 0xFFFF:
        dport = PORT_INTS[dport]
    return _new_tuple(Tuple, (family, proto, src, dst, sport, dport))


_new_tuple = tuple.__new__


def tuple_of(pkt: Packet) -> Tuple:
    """The tuple of a packet as it travels (nf_ct_get_tuple)."""
    proto = pkt.proto
    l4 = pkt.l4
    if proto in PORT_PROTOS:
        if l4 is not None:
            return Tuple(pkt.family, proto, pkt.src, pkt.dst, l4.sport, l4.dport)  # type: ignore[union-attr]
        pl = pkt.payload  # SCTP/DCCP/UDP-Lite: ports are the first four bytes
        if len(pl) >= 4:
            return Tuple(pkt.family, proto, pkt.src, pkt.dst, (pl[0] << 8) | pl[1],
                         (pl[2] << 8) | pl[3])
        return Tuple(pkt.family, proto, pkt.src, pkt.dst)
    if isinstance(l4, Icmp):
        return Tuple(pkt.family, proto, pkt.src, pkt.dst, l4.id, (l4.type << 8) | l4.code)
    if isinstance(l4, Gre) and l4.version == 1:
        return Tuple(pkt.family, proto, pkt.src, pkt.dst, 0, l4.call_id)
    return Tuple(pkt.family, proto, pkt.src, pkt.dst)


__all__ = ["IPPROTO_GRE", "PROTO_NAMES", "Tuple", "tuple_of"]
