"""The per-packet state TC works on (the parts of struct sk_buff and tc_skb_cb
that classifiers and actions read and write), and the environment actions run in.

`ct_key()` is the flow dissector's ct view (net/core/flow_dissector.c
skb_flow_dissect_ct with cls_flower.c fl_ct_info_to_flower_map): what a flower
lookup sees as ct_state, ct_zone, ct_mark and ct_label.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from node.conntrack.entry import (
    IP_CT_ESTABLISHED,
    IP_CT_ESTABLISHED_REPLY,
    IP_CT_NEW,
    IP_CT_RELATED,
    IP_CT_RELATED_REPLY,
)

if TYPE_CHECKING:
    from node.conntrack.entry import Entry
    from node.conntrack.table import Conntrack
    from node.packet import Packet

ETH_HLEN = 14

# TCA_FLOWER_KEY_CT_FLAGS_* (include/uapi/linux/pkt_cls.h)
CT_NEW = 1 << 0
CT_ESTABLISHED = 1 << 1
CT_RELATED = 1 << 2
CT_TRACKED = 1 << 3
CT_INVALID = 1 << 4
CT_REPLY = 1 << 5
CT_FLAGS_MASK = (1 << 6) - 1

# fl_ct_info_to_flower_map[ctinfo]
CTINFO_TO_FLOWER = {
    IP_CT_ESTABLISHED: CT_TRACKED | CT_ESTABLISHED,
    IP_CT_RELATED: CT_TRACKED | CT_RELATED,
    IP_CT_ESTABLISHED_REPLY: CT_TRACKED | CT_ESTABLISHED | CT_REPLY,
    IP_CT_RELATED_REPLY: CT_TRACKED | CT_RELATED | CT_REPLY,
    IP_CT_NEW: CT_TRACKED | CT_NEW,
}
# Skb.path bits: how the packet's tc run was carried out (the datapath's Outcome.path)
PATH_FLOWTABLE = 1 << 0  # a software ct action was answered by act_ct's flow table
PATH_CONNTRACK = 1 << 1  # a software ct action ran conntrack (nf_conntrack_in)
PATH_SOFTWARE = 1 << 2  # software tc ran (classification or actions)
PATH_HW_CT = 1 << 3  # a ct action was answered by the card's CT table
CT_STATE_NAMES = (("trk", CT_TRACKED), ("new", CT_NEW), ("est", CT_ESTABLISHED),
                  ("rel", CT_RELATED), ("inv", CT_INVALID), ("rpl", CT_REPLY))


def ct_state_str(state: int) -> str:
    """"+trk+est" style rendering of a ct_state value (all named bits shown)."""
    return "".join(("+" if state & bit else "-") + name for name, bit in CT_STATE_NAMES) \
        if state else "-trk"


class Skb:
    """One packet in flight through tc."""

    __slots__ = (
        "__dict__",
        "ct",
        "ct_state",
        "ctinfo",
        "dev",
        "len",
        "mark",
        "path",
        "pkt",
        "post_ct",
        "trace",
        "zone",
    )
    # Fields few packets write: read from the class until one does (the instance's
    # __dict__ then holds it), so that a new Skb sets only the slots above.
    priority: int = 0
    post_ct_snat: bool = False  # tc_skb_cb: NAT done by a ct action in this pass
    post_ct_dnat: bool = False
    src_mac: bytes | None = None
    dst_mac: bytes | None = None
    mirred_depth: int = 0
    drop_reason: str = ""  # why tc dropped it (SKB_DROP_REASON_TC_*), when it did

    def __init__(self, pkt: Packet, dev: str, mark: int = 0) -> None:
        self.pkt = pkt
        self.len = pkt.length + ETH_HLEN  # qdisc_pkt_len: the frame, as tc counts bytes
        self.dev = dev  # the device the packet is on (skb->dev; indev at ingress)
        self.mark = mark
        self.ct: Entry | None = None  # skb->_nfct: the attached conntrack entry
        self.ctinfo: int | None = None  # None: no nfct at all; IP_CT_UNTRACKED after clear
        self.ct_state = 0  # what flower's ct_state key sees (kept in step by set_ct ...)
        self.post_ct = False  # tc_skb_cb: a ct action ran in this tc pass
        self.zone = 0  # tc_skb_cb zone (the last ct action's zone)
        self.trace: tuple[tuple[int, int, int], ...] = ()  # (chain, prio, handle) of matches
        self.path = 0  # PATH_* bits

    def clone(self) -> Skb:
        """skb_clone: same packet and metadata (the ct reference is shared)."""
        other = Skb(self.pkt, self.dev, self.mark)
        other.len = self.len
        other.priority = self.priority
        other.ct, other.ctinfo, other.ct_state = self.ct, self.ctinfo, self.ct_state
        other.post_ct, other.zone = self.post_ct, self.zone
        other.src_mac, other.dst_mac = self.src_mac, self.dst_mac
        other.mirred_depth = self.mirred_depth
        other.path = self.path
        return other

    def reset_tc(self) -> None:
        """The start of a tc run (tc_run / sch_handle_ingress): post_ct is per pass."""
        self.post_ct = self.post_ct_snat = self.post_ct_dnat = False
        self.zone = 0
        if self.ct is None:
            self.ct_state = 0

    def set_ct(self, entry: Entry | None, ctinfo: int | None) -> None:
        """nf_ct_set: attach `entry` (None with IP_CT_UNTRACKED: detach)."""
        self.ct = entry
        self.ctinfo = ctinfo
        if entry is not None:
            self.ct_state = CTINFO_TO_FLOWER.get(ctinfo if ctinfo is not None else -1, 0)
        else:
            self.ct_state = CT_TRACKED | CT_INVALID if self.post_ct else 0

    def set_post_ct(self, post_ct: bool, zone: int) -> None:
        """tc_skb_cb post_ct/zone: after a ct action (or a clear)."""
        self.post_ct = post_ct
        self.zone = zone
        if self.ct is None:
            self.ct_state = CT_TRACKED | CT_INVALID if post_ct else 0

    def ct_key(self) -> tuple[int, int, int, int]:
        """(ct_state, ct_zone, ct_mark, ct_labels) as skb_flow_dissect_ct fills them."""
        entry = self.ct
        if entry is None:
            if self.post_ct:
                return CT_TRACKED | CT_INVALID, self.zone, 0, 0
            return 0, 0, 0, 0
        state = CTINFO_TO_FLOWER.get(self.ctinfo if self.ctinfo is not None else -1, 0)
        return state, entry.zone, entry.mark, entry.labels


class Env(Protocol):
    """What actions need from the node while a packet runs (time, conntrack, ports,
    and act_ct's flow tables when an offload card provides them)."""

    now: float

    @property
    def flowtable(self) -> FlowTable | None: ...

    @property
    def conntrack(self) -> Conntrack | None: ...

    def mirred(self, skb: Skb, dev: str, egress: bool, redirect: bool) -> bool:
        """Send `skb` out of `dev` (egress) or into it (ingress): a copy when the
        target's tc must see it (the kernel hands a redirected skb over, and clones
        a mirrored one; here `skb` keeps its ingress view for the Outcome). Returns
        True when that failed (no such device, or it is down)."""
        ...


class FlowTable(Protocol):
    """act_ct's flow tables (node.offload.Card, through the tc offload driver):
    the software fast path before conntrack and the offload decision after it."""

    def sw_lookup(self, pkt: Packet, zone: int, now: float) -> Any: ...

    def offer(self, entry: Entry, ctinfo: int, now: float) -> Any: ...
