"""NAT as act_ct does it: `ct [commit] nat [src|dst addr A[-B] [port P[-Q]]]`.

Transcribed from Linux 6.18:
  setup_info()     nf_nat_setup_info() with get_unique_tuple(): keep the current
                   tuple when it is in range and unused (source mappings only),
                   reuse another connection's mapping of the same source
                   (find_appropriate_src), pick the address with the kernel's
                   jhash (find_best_ips_proto), then the port
                   (nf_nat_l4proto_unique_tuple) avoiding tuples whose reply
                   another entry of the zone already has (nf_nat_used_tuple,
                   _new, _harder); the reply tuple is rewritten and
                   IPS_{SRC,DST}_NAT (only if the tuple changed) and
                   IPS_{SRC,DST}_NAT_DONE set                 (nf_nat_core.c)
  null_binding()   __nf_nat_alloc_null_binding(): "this manip is done" with the
                   current address (the port may still move to avoid a clash)
  nat_packet()     nf_nat_packet() / nf_nat_manip_pkt(): rewrite a packet to
                   look like the inverse of the other direction's tuple
                   (nf_nat_core.c, nf_nat_proto.c)
  icmp_reply_translation()
                   nf_nat_icmp_reply_translation() and the ICMPv6 twin: an
                   ICMP error RELATED to a NATed connection has its quoted
                   packet rewritten with the opposite manip, then its outer header
  act_nat()        nf_ct_nat() and nf_ct_nat_execute() (nf_nat_ovs.c) as act_ct's
                   tcf_ct_act_nat() calls them: which manip runs for which
                   packet, setup on NEW (and RELATED), replay of the bindings
                   on later packets by a bare `nat`
  mangle()         both manips a connection's status asks for, in one call (what
                   the netfilter NAT hooks do to a packet of the connection)

Checksums: an unset checksum (None) stays unset, since build() computes the
right one; an explicit one (a bad checksum, a quoted packet's) is updated
incrementally as the kernel does (RFC 1624), so wrong stays wrong.

Randomness: the kernel starts its search for a free source port (and, with
`random`, any port) at get_random_u16(); here the start is a hash of the
original tuple, so runs are reproducible. Everything else is the kernel's
arithmetic, including the address choice (jhash2 with no secret).
Not modelled: NF_NAT_RANGE_PROTO_OFFSET / NETMAP (no act_ct syntax for them),
masquerade, the TCP timestamp offset of locally originated SYNs.
"""

from __future__ import annotations

import struct
import weakref
import zlib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from node.conntrack.entry import (
    IP_CT_ESTABLISHED,
    IP_CT_ESTABLISHED_REPLY,
    IP_CT_NEW,
    IP_CT_RELATED,
    IP_CT_RELATED_REPLY,
    IPS_CONFIRMED,
    IPS_DST_NAT,
    IPS_DST_NAT_DONE,
    IPS_DYING,
    IPS_FIXED_TIMEOUT,
    IPS_HW_OFFLOAD,
    IPS_OFFLOAD,
    IPS_SEQ_ADJUST,
    IPS_SRC_NAT,
    IPS_SRC_NAT_DONE,
    ORIGINAL,
    REPLY,
    Entry,
)
from node.conntrack.l4proto import ACCEPT, DROP
from node.conntrack.sctp import crc32c
from node.conntrack.tcp import TcpConn, conn_of
from node.conntrack.tcp_table import sSS, sTW
from node.conntrack.tuple import IPPROTO_DCCP, IPPROTO_SCTP, IPPROTO_UDPLITE, Tuple
from node.frozen import replacer
from node.packet import (
    IPPROTO_GRE,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Gre,
    Icmp,
    Packet,
    PacketError,
    Tcp,
    Udp,
    build,
    ip_bytes,
    ip_str,
    parse,
)

if TYPE_CHECKING:
    from node.conntrack.table import Conntrack

# enum nf_nat_manip_type
NF_NAT_MANIP_SRC = 0
NF_NAT_MANIP_DST = 1
SRC = NF_NAT_MANIP_SRC
DST = NF_NAT_MANIP_DST

# include/uapi/linux/netfilter/nf_nat.h
NF_NAT_RANGE_MAP_IPS = 1 << 0
NF_NAT_RANGE_PROTO_SPECIFIED = 1 << 1
NF_NAT_RANGE_PROTO_RANDOM = 1 << 2
NF_NAT_RANGE_PERSISTENT = 1 << 3
NF_NAT_RANGE_PROTO_RANDOM_FULLY = 1 << 4
NF_NAT_RANGE_PROTO_OFFSET = 1 << 5
NF_NAT_RANGE_NETMAP = 1 << 6
NF_NAT_RANGE_PROTO_RANDOM_ALL = NF_NAT_RANGE_PROTO_RANDOM | NF_NAT_RANGE_PROTO_RANDOM_FULLY

IPS_NAT_MASK = IPS_SRC_NAT | IPS_DST_NAT
IPS_NAT_DONE_MASK = IPS_SRC_NAT_DONE | IPS_DST_NAT_DONE

NF_NAT_MAX_ATTEMPTS = 128
NF_NAT_HARDER_THRESH = NF_NAT_MAX_ATTEMPTS // 4

# l4protos with .allow_clash (nf_nat_used_tuple_new()'s reverse-collision check)
ALLOW_CLASH = frozenset((IPPROTO_UDP, IPPROTO_UDPLITE, IPPROTO_ICMP, IPPROTO_ICMPV6,
                         IPPROTO_GRE, IPPROTO_DCCP))
ICMP_QUERY_TYPES = frozenset((0, 8, 13, 14, 15, 16, 17, 18))  # icmp_manip_pkt()
ICMPV6_QUERY_TYPES = frozenset((128, 129))  # icmpv6_manip_pkt()
ICMP_REDIRECT = 5
_IPV6_EXT = frozenset((0, 43, 44, 51, 59, 60))  # ipv6_ext_hdr(): hop, routing, frag, AH, none, dst

_M = 0xFFFFFFFF


class NatError(ValueError):
    """A NAT range that cannot be built (act_ct / iproute2 would refuse it)."""


@dataclass(frozen=True, slots=True)
class NatRange:
    """struct nf_nat_range2 plus the manip type of the action that carries it.

    `min_addr`/`max_addr` None: no address mapping (a null binding's range has
    both set to the current address); `min_port`/`max_port` None: the port is
    chosen freely (NF_NAT_RANGE_PROTO_SPECIFIED unset). `flags` adds
    NF_NAT_RANGE_PROTO_RANDOM[_FULLY] / NF_NAT_RANGE_PERSISTENT."""

    kind: int  # SRC or DST
    min_addr: bytes | None = None
    max_addr: bytes | None = None
    min_port: int | None = None
    max_port: int | None = None
    flags: int = 0

    def __post_init__(self) -> None:
        if self.kind not in (SRC, DST):
            raise NatError(f"NAT kind {self.kind!r} is neither SRC (0) nor DST (1)")
        if self.max_addr is None:
            object.__setattr__(self, "max_addr", self.min_addr)
        if self.max_port is None:
            object.__setattr__(self, "max_port", self.min_port)
        lo, hi = self.min_addr, self.max_addr
        if (lo is None) != (hi is None) or (lo is not None and hi is not None and (
                len(lo) not in (4, 16) or len(lo) != len(hi))):
            raise NatError("NAT range addresses must both be IPv4 or both IPv6")
        for p in (self.min_port, self.max_port):
            if p is not None and not 0 <= p <= 0xFFFF:
                raise NatError(f"NAT port {p} is out of range")

    @property
    def range_flags(self) -> int:
        """The nf_nat_range2 flags act_ct builds (tcf_ct_fill_params_nat())."""
        flags = self.flags
        if self.min_addr is not None:
            flags |= NF_NAT_RANGE_MAP_IPS
        if self.min_port is not None:
            flags |= NF_NAT_RANGE_PROTO_SPECIFIED
        return flags

    @classmethod
    def parse(cls, kind: str, addr: str, port: str | None = None, flags: int = 0) -> NatRange:
        """From tc's words: kind "src"/"dst", addr "A[-B]", port "P[-Q]"."""
        if kind not in ("src", "dst"):
            raise NatError(f"NAT kind must be src or dst, not {kind!r}")
        lo_text, _, hi_text = addr.partition("-")
        try:
            lo = ip_bytes(lo_text)
            hi = ip_bytes(hi_text) if hi_text else lo
        except PacketError as exc:
            raise NatError(str(exc)) from None
        pmin = pmax = None
        if port is not None:
            plo, _, phi = port.partition("-")
            try:
                pmin = int(plo, 10)
                pmax = int(phi, 10) if phi else pmin
            except ValueError:
                raise NatError(f"bad NAT port range {port!r}") from None
        return cls(SRC if kind == "src" else DST, lo, hi, pmin, pmax, flags)

    def __str__(self) -> str:
        out = "src" if self.kind == SRC else "dst"
        if self.min_addr is not None and self.max_addr is not None:
            out += f" addr {ip_str(self.min_addr)}"
            if self.max_addr != self.min_addr:
                out += f"-{ip_str(self.max_addr)}"
        if self.min_port is not None:
            out += f" port {self.min_port}"
            if self.max_port != self.min_port:
                out += f"-{self.max_port}"
        return out


@dataclass(frozen=True, slots=True)
class NatBinding:
    """`entry.nat`: the NAT extension and the ranges each manip was set up
    from (None: not set up). What packets get is decided by the status bits
    and the tuples, as in the kernel."""

    src: NatRange | None = None
    dst: NatRange | None = None


@dataclass(frozen=True, slots=True)
class NatOutcome:
    """What act_nat() did: the verdict, the (possibly rewritten) packet, and the
    manip types applied (act_ct's post_ct_snat / post_ct_dnat)."""

    verdict: int
    packet: Packet
    manips: int = 0  # bit (1 << SRC) and/or (1 << DST)

    @property
    def snat(self) -> bool:
        return bool(self.manips & (1 << SRC))

    @property
    def dnat(self) -> bool:
        return bool(self.manips & (1 << DST))


# ------------------------------------------------------------------ jhash

def _rol(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = ((a - c) & _M) ^ _rol(c, 4)
    c = (c + b) & _M
    b = ((b - a) & _M) ^ _rol(a, 6)
    a = (a + c) & _M
    c = ((c - b) & _M) ^ _rol(b, 8)
    b = (b + a) & _M
    a = ((a - c) & _M) ^ _rol(c, 16)
    c = (c + b) & _M
    b = ((b - a) & _M) ^ _rol(a, 19)
    a = (a + c) & _M
    c = ((c - b) & _M) ^ _rol(b, 4)
    b = (b + a) & _M
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    c = ((c ^ b) - _rol(b, 14)) & _M
    a = ((a ^ c) - _rol(c, 11)) & _M
    b = ((b ^ a) - _rol(a, 25)) & _M
    c = ((c ^ b) - _rol(b, 16)) & _M
    a = ((a ^ c) - _rol(c, 4)) & _M
    b = ((b ^ a) - _rol(a, 14)) & _M
    return ((c ^ b) - _rol(b, 24)) & _M


def jhash2(words: list[int], initval: int) -> int:
    """include/linux/jhash.h jhash2(): Bob Jenkins' lookup3 over u32 words."""
    n = len(words)
    a = b = c = (0xDEADBEEF + (n << 2) + initval) & _M
    i = 0
    while n > 3:
        a, b, c = _mix((a + words[i]) & _M, (b + words[i + 1]) & _M, (c + words[i + 2]) & _M)
        n -= 3
        i += 3
    if n == 0:
        return c
    if n == 3:
        c = (c + words[i + 2]) & _M
    if n >= 2:
        b = (b + words[i + 1]) & _M
    return _final((a + words[i]) & _M, b, c)


def jhash(data: bytes, initval: int) -> int:
    """include/linux/jhash.h jhash() (bytes, little-endian words)."""
    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & _M
    i = 0
    while n > 12:
        a, b, c = _mix((a + int.from_bytes(data[i:i + 4], "little")) & _M,
                       (b + int.from_bytes(data[i + 4:i + 8], "little")) & _M,
                       (c + int.from_bytes(data[i + 8:i + 12], "little")) & _M)
        n -= 12
        i += 12
    if n == 0:
        return c
    tail = data[i:i + n].ljust(12, b"\0")
    a = (a + int.from_bytes(tail[0:4], "little")) & _M
    b = (b + int.from_bytes(tail[4:8], "little")) & _M
    c = (c + int.from_bytes(tail[8:12], "little")) & _M
    return _final(a, b, c)


def _le_words(addr: bytes) -> list[int]:
    """union nf_inet_addr as the u32 words a little-endian CPU reads."""
    raw = addr.ljust(16, b"\0")
    return [int.from_bytes(raw[i:i + 4], "little") for i in range(0, 16, 4)]


# ------------------------------------------------------------------ tuple checks

def _addr_for(family: int, addr: bytes) -> bytes:
    """A range address as the kernel's union reads it for `family`."""
    width = 4 if family == 4 else 16
    return addr[:width].ljust(width, b"\0")


def _l4_in_range(t: Tuple, manip: int, rng: NatRange) -> bool:
    """l4proto_in_range()"""
    proto = t.proto
    if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        port = t.sport  # the id, the same in both directions
    elif proto in (IPPROTO_GRE, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP):
        port = t.sport if manip == SRC else t.dport
    else:
        return True
    lo, hi = rng.min_port, rng.max_port
    return lo is not None and hi is not None and lo <= port <= hi


def _in_range(t: Tuple, rng: NatRange) -> bool:
    """nf_in_range(): would this source mapping satisfy the range?"""
    if rng.min_addr is not None and rng.max_addr is not None and not (
            _addr_for(t.family, rng.min_addr) <= t.src <= _addr_for(t.family, rng.max_addr)):
        return False
    if rng.min_port is None:
        return True
    return _l4_in_range(t, SRC, rng)


def _alive(other: Entry | None, now: float) -> Entry | None:
    if other is None or other.expires_at <= now:
        return None  # nf_ct_is_expired(): as good as gone
    return other


def _taken(ct: Conntrack, entry: Entry, t: Tuple, now: float) -> bool:
    """nf_nat_used_tuple(): another live entry of the zone already has the reply
    tuple `t` would get (identical original tuples excepted: the same flow,
    left to clash resolution)."""
    reply = t.invert()
    if reply is None:
        return False
    other = _alive(ct.find(reply, entry.zone), now)
    return other is not None and other is not entry and other.orig != entry.orig


_USES_NAT = IPS_NAT_MASK | IPS_SEQ_ADJUST


def _taken_new(ct: Conntrack, entry: Entry, t: Tuple, now: float) -> bool:
    """nf_nat_used_tuple_new(): as _taken(), but a clash with an entry of the
    reverse flow (both sides opened at once) that involves no NAT is left to
    clash resolution."""
    if not _taken(ct, entry, t, now):
        return False
    if t.proto not in ALLOW_CLASH or entry.status & _USES_NAT:
        return True
    other = _alive(ct.find(t, entry.zone), now)
    if other is None:
        reply = t.invert()
        other = _alive(ct.find(reply, entry.zone), now) if reply is not None else None
        if other is None:
            return False  # the clashing entry went away
    if other.status & _USES_NAT:
        return True
    return other.orig != entry.reply


def _taken_harder(ct: Conntrack, entry: Entry, t: Tuple, attempts_left: int,
                  now: float) -> bool:
    """nf_nat_used_tuple_harder(): in the last attempts for a TCP SYN, a clashing
    source-NATed entry in TIME_WAIT (or later) whose sequence numbers the new
    connection has passed is killed and its tuple reused."""
    conn = entry.proto
    if attempts_left > NF_NAT_HARDER_THRESH or t.proto != IPPROTO_TCP \
            or not isinstance(conn, TcpConn) or conn.state != sSS:
        return _taken(ct, entry, t, now)
    reply = t.invert()
    assert reply is not None
    other = _alive(ct.find(reply, entry.zone), now)
    if other is None:
        return False
    if other.orig == reply or other is entry:
        return True  # the clash is with its original direction
    flags = other.status
    old = conn_of(other)
    if not isinstance(old, TcpConn) or old.state < sTW \
            or flags & (IPS_FIXED_TIMEOUT | IPS_DYING) or not flags & IPS_SRC_NAT:
        return True  # nf_nat_may_kill()
    advanced = (conn.seen[0].td_end - old.seen[0].td_end) & _M
    if advanced == 0 or advanced >= 0x80000000:
        return True  # nf_seq_has_advanced()
    ct.kill(other, now)
    return bool(flags & (IPS_OFFLOAD | IPS_HW_OFFLOAD))  # never reuse an offloaded one


def _live(entry: Entry) -> bool:
    """Inserted and not destroyed (an unconfirmed entry dies with its packet)."""
    return bool(entry.status & IPS_CONFIRMED) and not entry.status & IPS_DYING


_SourceKey = tuple[int, int, bytes, int]  # zone, protocol, source address, source port


class _BySource:
    """nf_nat_bysource: the connections with a source manip, by original source,
    newest last. Destroyed entries are dropped lazily: a chain when looked up,
    everything when the index has grown past twice the table (amortised O(1))."""

    __slots__ = ("chains", "size")

    def __init__(self) -> None:
        self.chains: dict[_SourceKey, list[Entry]] = {}
        self.size = 0

    def add(self, ct: Conntrack, entry: Entry) -> None:
        if self.size >= 2 * len(ct) + 64:
            self.purge()
        o = entry.orig
        self.chains.setdefault((entry.zone, o.proto, o.src, o.sport), []).append(entry)
        self.size += 1

    def purge(self) -> None:
        chains = {}
        for key, chain in self.chains.items():
            live = [e for e in chain if _live(e)]
            if live:
                chains[key] = live
        self.chains = chains
        self.size = sum(len(c) for c in chains.values())

    def chain(self, key: _SourceKey) -> list[Entry]:
        chain = self.chains.get(key)
        if not chain:
            return []
        live = [e for e in chain if _live(e)]
        self.size -= len(chain) - len(live)
        if live:
            self.chains[key] = live
        else:
            del self.chains[key]
        return live


_BYSOURCE: weakref.WeakKeyDictionary[Conntrack, _BySource] = weakref.WeakKeyDictionary()


def register(ct: Conntrack, entry: Entry) -> None:
    """Make an entry that arrived with its source manip already done (e.g. by
    replication) known to find_appropriate_src(), as ctnetlink's NAT setup does."""
    if entry.status & IPS_SRC_NAT_DONE:
        index = _BYSOURCE.get(ct)
        if index is None:
            index = _BYSOURCE[ct] = _BySource()
        index.add(ct, entry)


def _find_appropriate_src(ct: Conntrack, entry: Entry, t: Tuple,
                          rng: NatRange) -> Tuple | None:
    """find_appropriate_src(): the mapping another connection from the same
    source got, if it is in this range."""
    index = _BYSOURCE.get(ct)
    if index is None:
        return None
    for other in reversed(index.chain((entry.zone, t.proto, t.src, t.sport))):
        mapped = other.reply.invert()
        if mapped is None:
            continue
        result = Tuple(t.family, t.proto, mapped.src, t.dst, mapped.sport, t.dport)
        if _in_range(result, rng):
            return result
    return None


def _best_ips(t: Tuple, rng: NatRange, manip: int, zone: int) -> Tuple:
    """find_best_ips_proto(): the address, by a hash of the source address
    seeded with the destination (and zone) unless `persistent`."""
    if rng.min_addr is None or rng.max_addr is None:
        return t
    family = t.family
    lo, hi = _addr_for(family, rng.min_addr), _addr_for(family, rng.max_addr)
    if lo == hi:
        return t._replace(src=lo) if manip == SRC else t._replace(dst=lo)
    width = 4 if family == 4 else 16
    last = width // 4 - 1
    persistent = rng.range_flags & NF_NAT_RANGE_PERSISTENT
    dst = bytearray(t.dst.ljust(16, b"\0"))
    var = bytearray(t.src.ljust(16, b"\0")) if manip == SRC else dst
    j = jhash2(_le_words(t.src), 0 if persistent else
               (int.from_bytes(dst[4 * last:4 * last + 4], "little") ^ zone))
    full_range = False
    for i in range(last + 1):
        if not full_range:
            minip = int.from_bytes(lo[4 * i:4 * i + 4], "big")
            maxip = int.from_bytes(hi[4 * i:4 * i + 4], "big")
            dist = (maxip - minip + 1) & _M
        else:
            minip, dist = 0, _M
        var[4 * i:4 * i + 4] = ((minip + ((j * dist) >> 32)) & _M).to_bytes(4, "big")
        if var[4 * i:4 * i + 4] != hi[4 * i:4 * i + 4]:
            full_range = True
        if not persistent:
            j ^= int.from_bytes(dst[4 * i:4 * i + 4], "little")
    new = bytes(var[:width])
    return t._replace(src=new) if manip == SRC else t._replace(dst=new)


_PORTS = struct.Struct("!HHBB")


def _start(t: Tuple, salt: int) -> int:
    """Where the port search starts: a hash of the tuple (the kernel: a random u16)."""
    return zlib.crc32(t.src + t.dst + _PORTS.pack(t.sport, t.dport, t.proto, salt & 0xFF)) \
        & 0xFFFF


def _unique_l4(ct: Conntrack, entry: Entry, t: Tuple, rng: NatRange, manip: int,
               now: float) -> Tuple:
    """nf_nat_l4proto_unique_tuple(): move the port (ICMP id, PPTP key) inside
    its range until the tuple is unused; 128 attempts at most, then rounds of
    half as many from new starting points while more than 16 are left."""
    proto = t.proto
    flags = rng.range_flags
    specified = flags & NF_NAT_RANGE_PROTO_SPECIFIED
    # A reversed range is taken the right way round (the kernel does so for
    # ports; for ICMP ids and GRE keys it would wrap around).
    pmin = min(rng.min_port or 0, rng.max_port or 0)
    given = (pmin, max(rng.min_port or 0, rng.max_port or 0) - pmin + 1)
    field = "sport"
    if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        lo, size = given if specified else (0, 65536)
    elif proto == IPPROTO_GRE:
        if entry.master is None:
            return t  # not PPTP: GRE keys are not changed
        field = "sport" if manip == SRC else "dport"
        lo, size = given if specified else (1, 65535)
    elif proto in (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP):
        field = "sport" if manip == SRC else "dport"
        if specified:
            lo, size = given
        elif manip == DST:
            return t  # a destination port is only changed when asked to
        elif t.sport < 1024:  # loose convention: below 512 is credential passing
            lo, size = (1, 511) if t.sport < 512 else (600, 1023 - 600 + 1)
        else:
            lo, size = 1024, 65535 - 1024 + 1
    else:
        return t
    salt = 0
    if flags & NF_NAT_RANGE_PROTO_RANDOM_ALL or manip != DST:
        off = _start(entry.orig, salt)
    else:
        off = 0
    attempts = min(size, NF_NAT_MAX_ATTEMPTS)
    cand = t
    while True:
        for i in range(attempts):
            if field == "sport":
                cand = t._replace(sport=lo + off % size)
            else:
                cand = t._replace(dport=lo + off % size)
            if not _taken_harder(ct, entry, cand, attempts - i, now):
                return cand
            off = (off + 1) & 0xFFFF
        if attempts >= size or attempts < 16:
            return cand
        attempts //= 2
        salt += 1
        off = _start(entry.orig, salt)


def _unique_tuple(ct: Conntrack, entry: Entry, curr: Tuple, rng: NatRange, manip: int,
                  now: float) -> Tuple:
    """get_unique_tuple(): the new original-direction tuple. It may still be
    taken (range exhausted, or a single port asked for): the kernel goes on, and
    its confirmation drops the packet unless a later manip moves it."""
    flags = rng.range_flags
    if manip == SRC and not flags & NF_NAT_RANGE_PROTO_RANDOM_ALL:
        if _in_range(curr, rng):  # 1) try the original tuple first
            if not _taken_new(ct, entry, curr, now):
                return curr
        else:  # ... or the mapping of this source that is already in use
            mapped = _find_appropriate_src(ct, entry, curr, rng)
            if mapped is not None and not _taken(ct, entry, mapped, now):
                return mapped
    t = _best_ips(curr, rng, manip, entry.zone)  # 2) the address
    if not flags & NF_NAT_RANGE_PROTO_RANDOM_ALL:  # 3) the port, if it must change
        if flags & NF_NAT_RANGE_PROTO_SPECIFIED:
            if _l4_in_range(t, manip, rng) and (rng.min_port == rng.max_port
                                                or not _taken(ct, entry, t, now)):
                return t
        elif not _taken(ct, entry, t, now):
            return t
    return _unique_l4(ct, entry, t, rng, manip, now)


# ------------------------------------------------------------------ bindings

def initialized(entry: Entry, manip: int) -> bool:
    """nf_nat_initialized()"""
    return bool(entry.status & (IPS_SRC_NAT_DONE if manip == SRC else IPS_DST_NAT_DONE))


def setup_info(ct: Conntrack, entry: Entry, rng: NatRange, manip: int, now: float) -> bool:
    """nf_nat_setup_info() for an unconfirmed entry (a confirmed one is left
    alone). False (NF_DROP) only if the manip was already set up; a tuple left
    taken is the confirmation's business, as in the kernel (see clashes())."""
    if entry.status & IPS_CONFIRMED:
        return True
    if initialized(entry, manip):
        return False  # WARN_ON(nf_nat_initialized()) -> NF_DROP
    curr = entry.reply.invert()
    if curr is None:
        return False
    new = _unique_tuple(ct, entry, curr, rng, manip, now)
    if new != curr:
        reply = new.invert()
        if reply is None:
            return False
        entry.reply = reply  # nf_conntrack_alter_reply()
        entry.status |= IPS_SRC_NAT if manip == SRC else IPS_DST_NAT
    binding = entry.nat if isinstance(entry.nat, NatBinding) else NatBinding()
    if manip == SRC:
        entry.nat = replace(binding, src=rng)
        entry.status |= IPS_SRC_NAT_DONE
        register(ct, entry)
    else:
        entry.nat = replace(binding, dst=rng)
        entry.status |= IPS_DST_NAT_DONE
    return True


def clashes(ct: Conntrack, entry: Entry, now: float) -> bool:
    """The unconfirmed entry's reply tuple already belongs to another live
    entry of its zone: confirming it will fail (the packet is dropped)."""
    t = entry.reply.invert()
    return t is not None and _taken(ct, entry, t, now)


def setup(ct: Conntrack, entry: Entry, rng: NatRange, now: float) -> bool:
    """nf_nat_setup_info() for the range's own manip type; False when it could
    not be done or the range is exhausted (no free tuple: the kernel drops the
    packet when it confirms the entry)."""
    return setup_info(ct, entry, rng, rng.kind, now) and not clashes(ct, entry, now)


def null_binding(ct: Conntrack, entry: Entry, manip: int, now: float) -> bool:
    """__nf_nat_alloc_null_binding(): mark `manip` done, keeping the address the
    packet has (the reply tuple's, in case it was already mangled). The port
    still moves if the tuple clashes."""
    addr = entry.reply.dst if manip == SRC else entry.reply.src
    return setup_info(ct, entry, NatRange(manip, addr, addr), manip, now)


# ------------------------------------------------------------------ packets

_pkt_src = replacer(Packet, "src", "l4", "payload", "l4_csum", "ip_csum")
_pkt_dst = replacer(Packet, "dst", "l4", "payload", "l4_csum", "ip_csum")
_tcp_sport = replacer(Tcp, "sport")
_tcp_dport = replacer(Tcp, "dport")
_udp_sport = replacer(Udp, "sport")
_udp_dport = replacer(Udp, "dport")
_icmp_id = replacer(Icmp, "id")

def _sum16(data: bytes) -> int:
    return sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))


def csum_replace(csum: int, old: bytes, new: bytes) -> int:
    """RFC 1624 incremental update: the checksum once `old` became `new`
    (both an even number of bytes)."""
    total = (~csum & 0xFFFF) + (len(old) // 2) * 0xFFFF - _sum16(old) + _sum16(new)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _port(p: int) -> bytes:
    return p.to_bytes(2, "big")


def _manip(pkt: Packet, target: Tuple, manip: int) -> Packet:
    """nf_nat_ipv4/ipv6_manip_pkt() on a packet object: the L4 part
    (l4proto_manip_pkt(), by the target's protocol), then the address."""
    if manip == SRC:
        old_addr, new_addr = pkt.src, target.src
    else:
        old_addr, new_addr = pkt.dst, target.dst
    l4 = pkt.l4
    l4_csum = pkt.l4_csum
    payload = pkt.payload
    proto = target.proto
    pseudo = (old_addr, new_addr)
    if isinstance(l4, Tcp | Udp) and proto in (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE):
        old_p = l4.sport if manip == SRC else l4.dport
        new_p = target.sport if manip == SRC else target.dport
        if isinstance(l4, Tcp):
            l4 = _tcp_sport(l4, new_p) if manip == SRC else _tcp_dport(l4, new_p)
        else:
            l4 = _udp_sport(l4, new_p) if manip == SRC else _udp_dport(l4, new_p)
        if l4_csum is not None and not (isinstance(l4, Udp) and l4_csum == 0):
            l4_csum = csum_replace(l4_csum, old_addr + _port(old_p), new_addr + _port(new_p))
            if isinstance(l4, Udp) and l4_csum == 0:
                l4_csum = 0xFFFF  # CSUM_MANGLED_0
    elif isinstance(l4, Icmp) and proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        v6 = proto == IPPROTO_ICMPV6
        old_b, new_b = (old_addr, new_addr) if v6 else (b"", b"")
        if l4.type in (ICMPV6_QUERY_TYPES if v6 else ICMP_QUERY_TYPES):
            old_b += _port(l4.id)
            new_b += _port(target.sport)
            l4 = _icmp_id(l4, target.sport)
        if l4_csum is not None and old_b:
            l4_csum = csum_replace(l4_csum, old_b, new_b)
    elif isinstance(l4, Gre) and proto == IPPROTO_GRE:
        if l4.version == 1 and manip == DST:  # PPTP: the call id is the key
            l4 = replace(l4, call_id=target.dport)
    elif l4 is None and proto in (IPPROTO_SCTP, IPPROTO_DCCP, IPPROTO_UDPLITE) \
            and len(payload) >= 4 and not pkt.is_fragment:
        payload = _manip_payload_ports(payload, proto, target, manip, pseudo)
    ip_csum = pkt.ip_csum
    if pkt.family == 4 and ip_csum is not None:
        ip_csum = csum_replace(ip_csum, old_addr, new_addr)
    if manip == SRC:
        return _pkt_src(pkt, new_addr, l4, payload, l4_csum, ip_csum)
    return _pkt_dst(pkt, new_addr, l4, payload, l4_csum, ip_csum)


def _manip_payload_ports(data: bytes, proto: int, target: Tuple, manip: int,
                         pseudo: tuple[bytes, bytes]) -> bytes:
    """Ports of SCTP, DCCP and UDP-Lite, which this packet model keeps in the payload."""
    b = bytearray(data)
    at = 0 if manip == SRC else 2
    old_p = bytes(b[at:at + 2])
    new_p = _port(target.sport if manip == SRC else target.dport)
    b[at:at + 2] = new_p
    if proto == IPPROTO_SCTP:
        if len(b) >= 12:  # sctp_manip_pkt(): the CRC32c is computed again
            b[8:12] = b"\0\0\0\0"
            b[8:12] = crc32c(bytes(b)).to_bytes(4, "little")
    elif len(b) >= 8:  # DCCP and UDP-Lite: 16-bit checksum at offset 6, pseudo-header
        csum = int.from_bytes(b[6:8], "big")
        b[6:8] = csum_replace(csum, pseudo[0] + old_p, pseudo[1] + new_p).to_bytes(2, "big")
    return bytes(b)


def _ipv6_l4_offset(b: bytes) -> int:
    """ipv6_skip_exthdr(): the offset of the L4 header, -1 if there is none (or
    the packet is a non-first fragment)."""
    nexthdr, off = b[6], 40
    while nexthdr in _IPV6_EXT:
        if nexthdr == 59 or off + 8 > len(b):
            return -1
        if nexthdr == 44:
            if int.from_bytes(b[off + 2:off + 4], "big") & ~7:
                return -1
            size = 8
        elif nexthdr == 51:
            size = (b[off + 1] + 2) << 2
        else:
            size = (b[off + 1] + 1) << 3
        nexthdr = b[off]
        off += size
    return off


def _manip_quoted(q: bytes, family: int, target: Tuple, manip: int) -> bytes | None:
    """nf_nat_ipv4/ipv6_manip_pkt() on the raw packet quoted in an ICMP error
    (possibly cut short). None when the kernel cannot write what it must."""
    b = bytearray(q)
    n = len(b)
    if family == 4:
        if n < 20:
            return None
        hdroff = (b[0] & 0xF) * 4
        at = 12 if manip == SRC else 16
    else:
        if n < 40:
            return None
        hdroff = _ipv6_l4_offset(bytes(b))
        at = 8 if manip == SRC else 24
    width = 4 if family == 4 else 16
    old_addr = bytes(b[at:at + width])
    new_addr = target.src if manip == SRC else target.dst
    if hdroff >= 0 and not _manip_quoted_l4(b, hdroff, family, target, manip, old_addr,
                                            new_addr):
        return None
    b[at:at + width] = new_addr
    if family == 4:
        csum = int.from_bytes(b[10:12], "big")
        b[10:12] = csum_replace(csum, old_addr, new_addr).to_bytes(2, "big")
    return bytes(b)


def _manip_quoted_l4(b: bytearray, off: int, family: int, target: Tuple, manip: int,
                     old_addr: bytes, new_addr: bytes) -> bool:
    n = len(b)
    proto = target.proto
    if proto in (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE, IPPROTO_SCTP, IPPROTO_DCCP):
        if n < off + 8:
            return False  # 8 bytes are guaranteed by conntrack; less cannot be written
        at = off if manip == SRC else off + 2
        old_p = bytes(b[at:at + 2])
        new_p = _port(target.sport if manip == SRC else target.dport)
        b[at:at + 2] = new_p
        if proto == IPPROTO_TCP:
            csum_at = off + 16 if n >= off + 20 else -1  # the checksum is beyond 8 bytes
        elif proto == IPPROTO_UDP:
            csum_at = off + 6 if b[off + 6:off + 8] != b"\0\0" else -1
        elif proto in (IPPROTO_UDPLITE, IPPROTO_DCCP):
            csum_at = off + 6
        else:
            csum_at = -1  # SCTP: the CRC covers the whole (missing) packet
        if csum_at >= 0:
            csum = csum_replace(int.from_bytes(b[csum_at:csum_at + 2], "big"),
                                old_addr + old_p, new_addr + new_p)
            if proto == IPPROTO_UDP and csum == 0:
                csum = 0xFFFF
            b[csum_at:csum_at + 2] = csum.to_bytes(2, "big")
        return True
    if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        if n < off + 8:
            return False
        v6 = proto == IPPROTO_ICMPV6
        old_b, new_b = (old_addr, new_addr) if v6 else (b"", b"")
        if b[off] in (ICMPV6_QUERY_TYPES if v6 else ICMP_QUERY_TYPES):
            old_b += bytes(b[off + 4:off + 6])
            new_b += _port(target.sport)
            b[off + 4:off + 6] = _port(target.sport)
        if old_b:
            csum = int.from_bytes(b[off + 2:off + 4], "big")
            b[off + 2:off + 4] = csum_replace(csum, old_b, new_b).to_bytes(2, "big")
        return True
    if proto == IPPROTO_GRE:
        if n < off + 8:
            return False
        if b[off + 1] & 0x7 == 1 and manip == DST:  # PPTP
            b[off + 6:off + 8] = _port(target.dport)
        return True
    return True  # unknown protocol: addresses only


def _statusbit(manip: int, direction: int) -> int:
    bit = IPS_SRC_NAT if manip == SRC else IPS_DST_NAT
    return bit ^ IPS_NAT_MASK if direction == REPLY else bit


def nat_packet(pkt: Packet, entry: Entry, direction: int, manip: int) -> Packet:
    """nf_nat_packet(): apply `manip` to a packet of `direction` if the
    connection's bindings call for it (SRC_NAT: source in the original
    direction, destination in the reply direction; DST_NAT the other way)."""
    if not entry.status & _statusbit(manip, direction):
        return pkt
    target = entry.tuple(1 - direction).invert()  # look like the other direction's inverse
    if target is None:
        return pkt
    return _manip(pkt, target, manip)


def is_icmp_error(pkt: Packet) -> bool:
    l4 = pkt.l4
    if not isinstance(l4, Icmp) or (l4.inner is None and not pkt.payload):
        return False
    if pkt.proto == IPPROTO_ICMP:
        return l4.type in (3, 4, 5, 11, 12)
    return pkt.proto == IPPROTO_ICMPV6 and l4.type < 128


def icmp_reply_translation(pkt: Packet, entry: Entry, direction: int,
                           manip: int) -> Packet | None:
    """nf_nat_icmp_reply_translation() (and the ICMPv6 one) for an ICMP error of
    `direction` RELATED to `entry`: the quoted packet (of the other direction)
    gets the opposite manip towards the other direction's tuple, the ICMP
    checksum is computed again, then the outer header gets `manip` so it looks
    like a reply to the quoted packet. None: the kernel drops the packet."""
    icmp = pkt.l4
    if not isinstance(icmp, Icmp) or not pkt.l4_csum_ok:
        return None  # nf_ip_checksum() failed
    status = entry.status
    if pkt.family == 4 and icmp.type == ICMP_REDIRECT and (
            status & IPS_NAT_DONE_MASK != IPS_NAT_DONE_MASK or status & IPS_NAT_MASK):
        return None  # redirects only for connections without NAT
    if not status & _statusbit(manip, direction):
        return pkt
    other = entry.tuple(1 - direction)
    quoted = pkt.payload or (build(icmp.inner) if icmp.inner is not None else b"")
    new_quoted = _manip_quoted(quoted, pkt.family, other, 1 - manip)
    if new_quoted is None:
        return None
    target = other.invert()
    if target is None:
        return None
    target = target._replace(proto=pkt.proto)  # target.dst.protonum = IPPROTO_ICMP[V6]
    outer = replace(pkt, payload=new_quoted, l4=replace(icmp, inner=None), l4_csum=None)
    outer = _manip(outer, target, manip)
    try:
        return parse(build(outer))
    except PacketError:
        return None


def mangle(pkt: Packet, entry: Entry, direction: int) -> Packet:
    """Every rewrite the connection's bindings call for on a packet of
    `direction` (destination then source, as PREROUTING then POSTROUTING do);
    ICMP errors RELATED to the connection are translated inside and out. A
    packet the kernel would drop (an ICMP error it cannot translate) comes back
    unchanged: act_nat() is the path with the kernel's verdicts."""
    for manip in (DST, SRC):
        if is_icmp_error(pkt):
            out = icmp_reply_translation(pkt, entry, direction, manip)
            if out is None:
                return pkt
            pkt = out
        else:
            pkt = nat_packet(pkt, entry, direction, manip)
    return pkt


# ------------------------------------------------------------------ act_ct

def _execute(ct: Conntrack, entry: Entry, ctinfo: int, pkt: Packet, rng: NatRange | None,
             manip: int, now: float) -> tuple[int, Packet]:
    """nf_ct_nat_execute()"""
    direction = REPLY if ctinfo >= IP_CT_ESTABLISHED_REPLY else ORIGINAL
    if ctinfo in (IP_CT_RELATED, IP_CT_RELATED_REPLY) \
            and pkt.proto == (IPPROTO_ICMP if pkt.family == 4 else IPPROTO_ICMPV6):
        out = icmp_reply_translation(pkt, entry, direction, manip)
        return (DROP, pkt) if out is None else (ACCEPT, out)
    if ctinfo in (IP_CT_NEW, IP_CT_RELATED, IP_CT_RELATED_REPLY):
        if not initialized(entry, manip):
            if rng is not None and rng.range_flags & NF_NAT_RANGE_MAP_IPS:
                ok = setup_info(ct, entry, rng, manip, now)
            else:
                ok = null_binding(ct, entry, manip, now)
            if not ok:
                return DROP, pkt
    elif ctinfo != IP_CT_ESTABLISHED and ctinfo != IP_CT_ESTABLISHED_REPLY:
        return DROP, pkt
    return ACCEPT, nat_packet(pkt, entry, direction, manip)


def act_nat(ct: Conntrack, entry: Entry | None, ctinfo: int, pkt: Packet,
            rng: NatRange | None, commit: bool, now: float) -> NatOutcome:
    """act_ct's NAT step (nf_ct_nat()): `rng` is the action's `nat src|dst ...`
    range, None for a bare `nat`.

    A packet of a connection that has NAT (other than its first, and other than
    a RELATED one unless committing) replays the bindings for its direction.
    Otherwise the action's manip type is set up (on NEW or RELATED packets of
    an unconfirmed entry) and applied; a bare `nat` does nothing. After a
    destination mapping, the source manip is applied too, and on a new
    connection a null source binding is set up so that a clash with another
    connection's reply moves the source port. A tuple that stays taken (an
    exhausted range) is not refused here: confirming the entry fails and drops
    the packet, as in the kernel (clashes() tells beforehand)."""
    if entry is None:
        return NatOutcome(ACCEPT, pkt)
    if not entry.status & IPS_CONFIRMED and entry.nat is None:
        entry.nat = NatBinding()  # nf_ct_nat_ext_add()
    status = entry.status
    direction = REPLY if ctinfo >= IP_CT_ESTABLISHED_REPLY else ORIGINAL
    if ctinfo != IP_CT_NEW and status & IPS_NAT_MASK and (ctinfo != IP_CT_RELATED or commit):
        if direction == REPLY:
            manip = DST if status & IPS_SRC_NAT else SRC
        else:
            manip = SRC if status & IPS_SRC_NAT else DST
    elif rng is not None:
        manip = rng.kind
    else:
        return NatOutcome(ACCEPT, pkt)
    done = 0
    verdict, pkt = _execute(ct, entry, ctinfo, pkt, rng, manip, now)
    if verdict == ACCEPT:
        done |= 1 << manip
        if entry.status & IPS_DST_NAT:
            if entry.status & IPS_SRC_NAT:
                other = DST if manip == SRC else SRC
                verdict, pkt = _execute(ct, entry, ctinfo, pkt, rng, other, now)
                if verdict == ACCEPT:
                    done |= 1 << other
            elif direction == ORIGINAL:
                verdict, pkt = _execute(ct, entry, ctinfo, pkt, None, SRC, now)
                if verdict == ACCEPT:
                    done |= 1 << SRC
    return NatOutcome(verdict, pkt, done)
