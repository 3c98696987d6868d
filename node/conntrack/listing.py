"""`conntrack -L` lines, as conntrack-tools prints them.

conntrack-tools prints with libnetfilter_conntrack's default format
(src/conntrack/snprintf_default.c __snprintf_conntrack_default()), and that shows
exactly the attributes the kernel dumped (net/netfilter/nf_conntrack_netlink.c
ctnetlink_fill_info() / ctnetlink_dump_info(), Linux 6.18). Field by field:

  "%-8s %u "       protocol name (proto2str[], else "unknown") and number
  "%u "            timeout, whole seconds left: omitted for IPS_OFFLOAD entries
                   (ctnetlink_dump_info() skips CTA_TIMEOUT and CTA_PROTOINFO)
  "%s "            TCP state: omitted for IPS_OFFLOAD entries, as above
  orig tuple       src= dst= then sport= dport= (TCP, UDP, UDP-Lite, SCTP, DCCP),
                   type= code= id= (ICMP/ICMPv6), srckey=0x dstkey=0x (GRE)
  packets= bytes=  original direction, only with accounting (nf_conntrack_acct=1)
  [UNREPLIED]      no IPS_SEEN_REPLY
  reply tuple      as above, then its counters
  [HW_OFFLOAD] | [OFFLOAD] | [ASSURED]   the first that applies
  mark=%u          always (ctnetlink_dump_mark(..., dump=true))
  zone=%u          only for a zone other than 0 (ctnetlink_dump_zone_id())
  helper=%s        with a helper
  use=%u           the reference count (1 here)

/proc/net/nf_conntrack (nf_conntrack_standalone.c ct_seq_show()) follows the same
rule for offloaded entries: no timer and no TCP state. Labels need a connlabel.conf
name map and are not printed; timestamps (nf_conntrack_timestamp) are not modelled.
"""

from __future__ import annotations

import math

from node.conntrack.entry import IPS_ASSURED, IPS_HW_OFFLOAD, IPS_OFFLOAD, IPS_SEEN_REPLY
from node.conntrack.events import CtView
from node.conntrack.table import Conntrack
from node.conntrack.tuple import PORT_PROTOS, PROTO_NAMES, Tuple
from node.packet import IPPROTO_GRE, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, ip_str

L3_NAMES = {4: ("ipv4", 2), 6: ("ipv6", 10)}  # l3proto2str[], AF_INET / AF_INET6


def _tuple(t: Tuple) -> str:
    """__snprintf_address() + __snprintf_proto()."""
    out = f"src={ip_str(t.src)} dst={ip_str(t.dst)} "
    if t.proto in PORT_PROTOS:
        out += f"sport={t.sport} dport={t.dport} "
    elif t.proto == IPPROTO_GRE:
        out += f"srckey=0x{t.sport:x} dstkey=0x{t.dport:x} "
    elif t.proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        out += f"type={t.dport >> 8} code={t.dport & 0xFF} id={t.sport} "
    return out


def format_entry(view: CtView, *, counters: bool = False, extended: bool = False) -> str:
    """One `conntrack -L` line (`extended`: `-o extended`, with the L3 protocol first)."""
    status = view.status
    proto = view.orig.proto
    out = ""
    if extended:
        name, num = L3_NAMES.get(view.orig.family, ("unknown", view.orig.family))
        out += f"{name:<8s} {num} "
    out += f"{PROTO_NAMES.get(proto, 'unknown'):<8s} {proto} "
    if not status & IPS_OFFLOAD:
        out += f"{max(0, math.floor(view.timeout))} "
        if proto == IPPROTO_TCP and view.proto_state is not None:
            out += f"{view.proto_state} "
    out += _tuple(view.orig)
    if counters:
        out += f"packets={view.packets[0]} bytes={view.bytes[0]} "
    if not status & IPS_SEEN_REPLY:
        out += "[UNREPLIED] "
    out += _tuple(view.reply)
    if counters:
        out += f"packets={view.packets[1]} bytes={view.bytes[1]} "
    if status & IPS_HW_OFFLOAD:
        out += "[HW_OFFLOAD] "
    elif status & IPS_OFFLOAD:
        out += "[OFFLOAD] "
    elif status & IPS_ASSURED:
        out += "[ASSURED] "
    out += f"mark={view.mark} "
    if view.zone:
        out += f"zone={view.zone} "
    if view.helper:
        out += f"helper={view.helper} "
    return out + "use=1"


def listing(ct: Conntrack, now: float, *, zone: int | None = None,
            extended: bool = False) -> list[str]:
    """`conntrack -L [-w ZONE]`: every confirmed entry, with counters when
    nf_conntrack_acct is on."""
    counters = bool(ct.sysctl.nf_conntrack_acct)
    return [format_entry(view, counters=counters, extended=extended)
            for view in ct.dump(now) if zone is None or view.zone == zone]
