"""The small trackers: UDP (and UDP-Lite), ICMP/ICMPv6 queries, GRE and generic.

Transcribed from Linux 6.18:
  nf_conntrack_proto_udp.c    nf_conntrack_udp_packet()
  nf_conntrack_proto_icmp.c   nf_conntrack_icmp_packet()
  nf_conntrack_proto_icmpv6.c nf_conntrack_icmpv6_packet()
  nf_conntrack_proto_gre.c    nf_conntrack_gre_packet()
  nf_conntrack_proto_generic.c
ICMP *errors* never reach these trackers: the core resolves them to the
connection they quote (see table.py, nf_conntrack_inet_error()).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node.conntrack.entry import IPCT_ASSURED, IPS_ASSURED, IPS_NAT_CLASH, IPS_SEEN_REPLY
from node.conntrack.l4proto import ACCEPT, INVALID
from node.conntrack.tuple import ICMP_VALID_NEW, ICMPV6_VALID_NEW
from node.packet_codec import pseudo_checksum_ok

if TYPE_CHECKING:
    from node.conntrack.entry import Entry
    from node.conntrack.table import Conntrack
    from node.packet import Packet

UDP_STREAM_AFTER = 2.0  # udp_new(): ct->proto.udp.stream_ts = 2 * HZ + jiffies


class _Stateless:
    def state_name(self, entry: Entry) -> str | None:
        return None

    def export(self, entry: Entry) -> dict[str, Any] | None:
        return None

    def capture(self, entry: Entry) -> object:
        return None

    def expand(self, captured: Any) -> dict[str, Any] | None:
        return None


class UdpTracker(_Stateless):
    """Unreplied (30 s) until a reply; a packet more than 2 s after creation on a
    replied entry makes it a stream: ASSURED with the 120 s timeout."""

    def packet(self, ct: Conntrack, entry: Entry, pkt: Packet, direction: int, ctinfo: int,
               now: float) -> int:
        if not pkt.l4_csum_ok and ct.sysctl.nf_conntrack_checksum:
            return INVALID  # udp_error(): "bad checksum"
        status = entry.status
        if status & IPS_SEEN_REPLY:
            if now > entry.created + UDP_STREAM_AFTER:
                ct.refresh(entry, ct.sysctl.nf_conntrack_udp_timeout_stream, now)
                if status & IPS_NAT_CLASH:
                    return ACCEPT
                if not status & IPS_ASSURED:
                    entry.status = status | IPS_ASSURED
                    entry.events |= IPCT_ASSURED
            else:
                ct.refresh(entry, ct.sysctl.nf_conntrack_udp_timeout, now)
        else:
            ct.refresh(entry, ct.sysctl.nf_conntrack_udp_timeout, now)
        return ACCEPT


class UdpLiteTracker(UdpTracker):
    """UDP-Lite: udplite_error() then the UDP rules. The kernel checks the
    checksum over the coverage with protocol 17 in the pseudo-header
    (nf_checksum_partial(..., IPPROTO_UDP, ...)), so a checksum computed as RFC 3828
    says (protocol 136) fails while nf_conntrack_checksum=1: we do the same."""

    def packet(self, ct: Conntrack, entry: Entry, pkt: Packet, direction: int, ctinfo: int,
               now: float) -> int:
        seg = pkt.payload
        if len(seg) < 8:
            return INVALID  # "short packet"
        cscov = int.from_bytes(seg[4:6], "big") or len(seg)
        if cscov < 8 or cscov > len(seg):
            return INVALID  # "invalid checksum coverage"
        if not seg[6] and not seg[7]:
            return INVALID  # "checksum missing": UDP-Lite mandates checksums
        if ct.sysctl.nf_conntrack_checksum and \
                not pseudo_checksum_ok(pkt.src, pkt.dst, 17, len(seg), seg[:cscov]):
            return INVALID  # "bad checksum"
        return UdpTracker.packet(self, ct, entry, pkt, direction, ctinfo, now)


class IcmpTracker(_Stateless):
    """Echo, timestamp, information and address-mask queries; 30 s."""

    def __init__(self, v6: bool) -> None:
        self.valid_new = ICMPV6_VALID_NEW if v6 else ICMP_VALID_NEW
        self.v6 = v6

    def packet(self, ct: Conntrack, entry: Entry, pkt: Packet, direction: int, ctinfo: int,
               now: float) -> int:
        if (entry.orig.dport >> 8) not in self.valid_new:
            return INVALID  # "Can't create a new ICMP `conn' with this."
        timeout = (ct.sysctl.nf_conntrack_icmpv6_timeout if self.v6
                   else ct.sysctl.nf_conntrack_icmp_timeout)
        ct.refresh(entry, timeout, now)
        return ACCEPT


class GreTracker(_Stateless):
    """GRE: 30 s until a reply, then the 180 s stream timeout and ASSURED."""

    def packet(self, ct: Conntrack, entry: Entry, pkt: Packet, direction: int, ctinfo: int,
               now: float) -> int:
        status = entry.status
        if status & IPS_SEEN_REPLY:
            ct.refresh(entry, ct.sysctl.nf_conntrack_gre_timeout_stream, now)
            if status & IPS_NAT_CLASH:
                return ACCEPT
            if not status & IPS_ASSURED:
                entry.status = status | IPS_ASSURED
                entry.events |= IPCT_ASSURED
        else:
            ct.refresh(entry, ct.sysctl.nf_conntrack_gre_timeout, now)
        return ACCEPT


class GenericTracker(_Stateless):
    """Any other protocol: one timeout (600 s), never ASSURED."""

    def packet(self, ct: Conntrack, entry: Entry, pkt: Packet, direction: int, ctinfo: int,
               now: float) -> int:
        ct.refresh(entry, ct.sysctl.nf_conntrack_generic_timeout, now)
        return ACCEPT
