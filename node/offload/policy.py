"""act_ct's two offload rules: which connections enter the flow table, and which
packets may be looked up in it.

Transcribed from Linux 6.18 net/sched/act_ct.c:
  should_offload()   tcf_ct_flow_table_process_conn() (act_ct.c:460-507)
  unsupported()      tcf_ct_flow_table_fill_tuple_ipv4/_ipv6() (act_ct.c:512-650), which
                     decide whether a packet can use the flow table (software fast path).
                     The emulated card applies the same rule to its hardware CT table
                     (mlx5 offloads IPv4/IPv6 x TCP/UDP/GRE exact tuples only,
                     en/tc_ct.c:2466-2535).
"""

from __future__ import annotations

from enum import IntFlag

from node.conntrack.entry import (
    IP_CT_ESTABLISHED,
    IP_CT_ESTABLISHED_REPLY,
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_DST_NAT,
    IPS_HELPER,
    IPS_SEQ_ADJUST,
    IPS_SRC_NAT,
    Entry,
)
from node.conntrack.tcp import state_of
from node.conntrack.tcp_table import sES
from node.conntrack.tuple import Tuple, tuple_of
from node.packet import IPPROTO_GRE, IPPROTO_TCP, IPPROTO_UDP, Gre, Packet, Tcp, Udp

IPS_NAT_MASK = IPS_SRC_NAT | IPS_DST_NAT


class Direction(IntFlag):
    """Which directions of a connection the flow table offloads."""

    ORIGINAL = 1
    REPLY = 2
    BOTH = 3


BOTH, ORIGINAL_ONLY = Direction.BOTH, Direction.ORIGINAL  # (read per offer: no class lookup)


def tcp_state(entry: Entry) -> int:
    """ct->proto.tcp.state (TcpState value; the tracker keeps a TcpConn in entry.proto)."""
    return int(state_of(entry))


def should_offload(entry: Entry, ctinfo: int) -> Direction | None:
    """tcf_ct_flow_table_process_conn(): the directions to add to the flow table
    for a packet that just passed act_ct with `ctinfo`, or None.

    TCP: ctinfo ESTABLISHED/ESTABLISHED_REPLY, ASSURED and state ESTABLISHED -> both.
    UDP: confirmed -> both once ASSURED, else the original direction only.
    GRE: ESTABLISHED/ESTABLISHED_REPLY, ASSURED, no NAT, version 0 (keys 0) -> both.
    Never: any other protocol (ICMP ...), a helper, or IPS_SEQ_ADJUST.
    """
    status = entry.status
    proto = entry.orig.proto
    established = ctinfo in (IP_CT_ESTABLISHED, IP_CT_ESTABLISHED_REPLY)
    if proto == IPPROTO_TCP:
        if not established or not status & IPS_ASSURED or state_of(entry) != sES:
            return None
        direction = BOTH
    elif proto == IPPROTO_UDP:
        if not status & IPS_CONFIRMED:
            return None
        direction = BOTH if status & IPS_ASSURED else ORIGINAL_ONLY
    elif proto == IPPROTO_GRE:
        if not established or not status & IPS_ASSURED or status & IPS_NAT_MASK:
            return None
        if entry.orig.sport or entry.orig.dport:  # "No support for GRE v1"
            return None
        direction = BOTH
    else:
        return None
    # nf_ct_ext_exist(ct, NF_CT_EXT_HELPER) || ct->status & IPS_SEQ_ADJUST
    if entry.helper is not None or status & (IPS_HELPER | IPS_SEQ_ADJUST):
        return None
    if not status & IPS_CONFIRMED:  # only a committed (confirmed) entry can be added
        return None
    return direction


def unsupported(pkt: Packet) -> str | None:
    """Why `pkt` cannot be looked up in a flow table (software or hardware), or None.

    IPv4: header with options (IHL != 5), a fragment, TTL <= 1.
    IPv6: an extension header before L4, hop limit <= 1.
    Both: L4 other than TCP, UDP or GRE version 0; a truncated L4 header."""
    if pkt.family == 4:
        if pkt.ip_options:
            return "ipv4 options"
        if pkt.is_fragment:
            return "fragment"
    elif pkt.ext_headers:
        return "ipv6 extension header"
    proto = pkt.proto
    l4 = pkt.l4
    if proto in (IPPROTO_TCP, IPPROTO_UDP):
        if l4 is None:
            return "truncated l4 header"
    elif proto == IPPROTO_GRE:
        if not isinstance(l4, Gre) or l4.version != 0:
            return "gre version 1"
    else:
        return "l4 protocol"
    if pkt.ttl <= 1:
        return "ttl"
    return None


_new_tuple = tuple.__new__


def flow_key(pkt: Packet) -> Tuple | None:
    """The packet's flow table key (its conntrack tuple), or None when unsupported()
    says it cannot use a flow table. The common TCP/UDP case is built inline."""
    l4 = pkt.l4
    kind = type(l4)
    if kind is Tcp or kind is Udp:
        if pkt.ttl <= 1:
            return None
        if pkt.family == 4:
            if pkt.ip_options or pkt.frag_offset or pkt.more_frags:
                return None
        elif pkt.ext_headers:
            return None
        return _new_tuple(Tuple, (pkt.family, pkt.proto, pkt.src, pkt.dst,
                                  l4.sport, l4.dport))  # type: ignore[union-attr]
    if unsupported(pkt) is not None:
        return None
    return tuple_of(pkt)
