"""act_ct: send the packet through conntrack in a zone, optionally commit it,
set mark/labels, NAT it, attach a helper; or clear the packet's conntrack.

Kernel: net/sched/act_ct.c (Linux 6.18; tcf_ct_act's order of operations is
reference/act_ct.md §4, the quirks §2). The iproute2 side (tc/m_ct.c parse_ct,
print_ct) is node/tc/m_ct.py.
The action decides nothing itself: it returns its verb (pipe by default) and a
later flower lookup matches on the ct state it left on the packet.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from node.conntrack import l4proto
from node.conntrack import nat as ct_nat
from node.conntrack.entry import IP_CT_ESTABLISHED_REPLY, IP_CT_UNTRACKED, IPS_CONFIRMED
from node.conntrack.table import DEFAULT_TEMPLATE, CtResult, Template
from node.tc.action import Action, InitEnv, KindSpec
from node.tc.args import Args
from node.tc.errors import KernelError
from node.tc.skb import (
    CT_INVALID,
    CT_TRACKED,
    CTINFO_TO_FLOWER,
    PATH_CONNTRACK,
    PATH_FLOWTABLE,
)
from node.tc.verdict import TC_ACT_SHOT

ACCEPT = l4proto.ACCEPT
# CTINFO_TO_FLOWER.get(ctinfo, 0) as a tuple, for the ctinfo values conntrack
# gives with an entry (and INVALID_CTINFO, -1: the last item)
_CTINFO_FLOWER = tuple(CTINFO_TO_FLOWER.get(i, 0) for i in range(IP_CT_UNTRACKED + 1))

if TYPE_CHECKING:
    from node.conntrack.entry import Entry
    from node.tc.out import Out
    from node.tc.skb import Env, Skb

# TCA_CT_ACT_* (include/uapi/linux/tc_act/tc_ct.h)
CT_ACT_COMMIT = 1 << 0
CT_ACT_FORCE = 1 << 1
CT_ACT_CLEAR = 1 << 2
CT_ACT_NAT = 1 << 3
CT_ACT_NAT_SRC = 1 << 4
CT_ACT_NAT_DST = 1 << 5
AF_INET, AF_INET6 = 2, 10
PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "ipv6-icmp", 47: "gre", 132: "sctp",
               33: "dccp", 136: "udplite"}
LABELS_SIZE = 16
NO_LABELS = bytes(LABELS_SIZE)
ALL_ONES_128 = (1 << 128) - 1


@dataclass(frozen=True, slots=True)
class NatSpec:
    """nf_nat_range2 as act_ct keeps it: addresses (packed) and optional ports."""

    src: bool  # SNAT (else DNAT)
    min_addr: bytes | None = None
    max_addr: bytes | None = None
    min_port: int | None = None
    max_port: int | None = None


@dataclass(frozen=True, slots=True)
class CtParams:
    """tcf_ct_params after tcf_ct_fill_params (mask 0 = not set, as dumped)."""

    ct_action: int = 0
    zone: int = 0
    mark: int = 0
    mark_mask: int = 0
    labels: bytes = bytes(LABELS_SIZE)
    labels_mask: bytes = bytes(LABELS_SIZE)
    nat: NatSpec | None = None
    helper: tuple[int, int, str] | None = None  # (family, proto, name)
    nat_range: ct_nat.NatRange | None = None  # `nat` as conntrack's NAT takes it
    template: Template = DEFAULT_TEMPLATE  # the zone template conntrack runs with
    # Derived (not an attribute of the action): whether tcf_ct_act has anything to
    # do after the lookup besides what every entry may need (events, helper, flow
    # table): commit, NAT or a helper to attach. False for a plain "ct zone N".
    after_lookup: bool = field(default=False, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "after_lookup", bool(
            self.ct_action & (CT_ACT_COMMIT | CT_ACT_NAT) or self.helper is not None))

    @property
    def commit(self) -> bool:
        return bool(self.ct_action & CT_ACT_COMMIT)

    @property
    def labels_value(self) -> int:
        """The labels as conntrack's bitmap (bit N = label N: memory order)."""
        return int.from_bytes(self.labels, "little")

    @property
    def labels_mask_value(self) -> int:
        return int.from_bytes(self.labels_mask, "little")


class CtKind:
    kind = "ct"

    # ------------------------------------------------------------ iproute2
    def parse(self, args: Args) -> KindSpec:
        from node.tc import m_ct

        return m_ct.parse_ct(args)

    def print(self, out: Out, action: Action | None, now: float, stats: bool) -> None:
        from node.tc import m_ct

        m_ct.print_ct(out, action, now, stats)

    # ------------------------------------------------------------ kernel init
    def init(self, spec: KindSpec, env: InitEnv) -> CtParams:
        """tcf_ct_fill_params (+ _nat): attributes to parameters, or the extack."""
        a: dict[str, Any] = spec.params
        ct_action = a["ct_action"]
        if ct_action & CT_ACT_CLEAR:
            return CtParams(ct_action=ct_action)
        nat = None
        nat_range = None
        if ct_action & CT_ACT_NAT:
            if ct_action & CT_ACT_NAT_SRC and ct_action & CT_ACT_NAT_DST:
                raise KernelError(errno.EOPNOTSUPP,
                                  "act_ct: dnat and snat can't be enabled at the same time")
            if ct_action & (CT_ACT_NAT_SRC | CT_ACT_NAT_DST):
                lo, hi = a.get("addr", (None, None))
                ports = a.get("ports", (None, None))
                nat = NatSpec(bool(ct_action & CT_ACT_NAT_SRC), lo, hi, ports[0], ports[1])
                nat_range = ct_nat.NatRange(ct_nat.SRC if nat.src else ct_nat.DST, lo, hi,
                                            ports[0], ports[1])
        mark, mark_mask = a.get("mark", (0, 0))
        labels, labels_mask = bytes(LABELS_SIZE), bytes(LABELS_SIZE)
        if "labels" in a:
            value, mask = a["labels"]
            labels = value[:LABELS_SIZE].ljust(LABELS_SIZE, b"\0")
            labels_mask = mask[:LABELS_SIZE].ljust(LABELS_SIZE, b"\0")
        helper = a.get("helper")
        if helper is not None:
            _family, proto, name = helper
            if len(name) + 1 > 16:
                raise KernelError(errno.EINVAL, "act_ct: Failed to parse helper name.")
            found = env.helpers.get(name)
            if found is None or getattr(found, "proto", proto) != proto:
                raise KernelError(errno.EOPNOTSUPP, "act_ct: Failed to add helper")
        zone = a.get("zone", 0)
        template = Template(zone=zone, helper=helper[2] if helper is not None else None)
        return CtParams(ct_action, zone, mark, mark_mask, labels, labels_mask, nat, helper,
                        nat_range, template)

    # ------------------------------------------------------------ datapath
    def inline(self, action: Action, an: str, names: dict[str, Any],
               ipv4: bool = False) -> list[str] | None:
        """act() as source for a generated chain (node.tc.compiled), for the
        action's present parameters, a packet without a ct and no flow table
        (conntrack runs): a guard, then statements leaving the verdict in `ret`.
        What follows the lookup for an entry with events or extensions, or for a
        commit, NAT or helper, is finish(). None for "ct clear". `ipv4`: only
        IPv4 packets reach the code (no family check then)."""
        p: CtParams = action.params
        if p.ct_action & CT_ACT_CLEAR:
            return None
        names[f"{an}p"], names[f"{an}t"] = p, p.template
        names[f"{an}f"], names[f"{an}c"] = self.finish, _CTINFO_FLOWER
        names[f"{an}s"] = action.stats  # (an action keeps its Stats object)
        lines = [f"if {an}.params is {an}p and skb.ct is None and env.flowtable is None:",
                 f"    st = {an}s",
                 "    st.bytes += ln",
                 "    st.packets += 1",
                 "    st.lastuse = now",
                 "    if st.firstuse is None:",
                 "        st.firstuse = now",
                 "    ct_ = env.conntrack",
                 "    p_ = skb.pkt",
                 "    if ct_ is None:" if ipv4 else
                 "    if ct_ is None or (p_.family != 4 and p_.family != 6):",
                 "        st.drops += 1",
                 f"        ret = {TC_ACT_SHOT}",
                 "    else:",
                 f"        e_, ci_, v_, _ = ct_.track_raw(p_, now, {an}t)",
                 f"        skb.path |= {PATH_CONNTRACK}",
                 f"        if v_ != {ACCEPT}:",
                 "            st.drops += 1",
                 f"            ret = {TC_ACT_SHOT}",
                 "        elif e_ is None:",
                 "            skb.ctinfo = None",
                 "            skb.post_ct = True",
                 f"            skb.zone = {p.zone}",
                 f"            skb.ct_state = {CT_TRACKED | CT_INVALID}",
                 f"            ret = {an}.control",
                 "        else:",
                 "            skb.ct = e_",
                 "            skb.ctinfo = ci_",
                 f"            skb.ct_state = {an}c[ci_]"]
        if p.after_lookup:
            return [*lines, f"            ret = {an}f({an}, skb, env, e_, False, False)"]
        return [*lines, "            if e_.events or e_.ext is not None:",
                f"                ret = {an}f({an}, skb, env, e_, False, False)",
                "            else:",
                "                skb.post_ct = True",
                f"                skb.zone = {p.zone}",
                f"                ret = {an}.control"]

    def act(self, action: Action, skb: Skb, env: Env) -> int:
        """tcf_ct_act (reference/act_ct.md §4), with act_ct's flow table (the
        software fast path, tcf_ct_flow_table_lookup()) before conntrack and the
        offload decision (tcf_ct_flow_table_process_conn()) after it, when the
        datapath has a card (env.flowtable)."""
        p: CtParams = action.params
        retval = action.control
        stats = action.stats  # Stats.use(), inline
        now = env.now
        stats.bytes += skb.len
        stats.packets += 1
        stats.lastuse = now
        if stats.firstuse is None:
            stats.firstuse = now
        ct_action = p.ct_action
        if ct_action & CT_ACT_CLEAR:
            skb.set_post_ct(False, skb.zone)
            if skb.ct is not None:
                skb.set_ct(None, IP_CT_UNTRACKED)
            return retval
        ct = env.conntrack
        pkt = skb.pkt
        family = pkt.family
        if ct is None or (family != 4 and family != 6):
            stats.drops += 1
            return TC_ACT_SHOT
        ft = env.flowtable
        entry = skb.ct
        cached = skip_add = False
        if entry is not None:
            cached = self._cached(skb, p, ct, now)
        if not cached:
            hit = ft.sw_lookup(pkt, p.zone, now) if ft is not None else None
            if hit is not None:  # flow table hit: conntrack is skipped
                entry = hit.entry
                skb.set_ct(entry, hit.ctinfo)
                skb.path |= PATH_FLOWTABLE
                skip_add = True
            else:
                entry, ctinfo, verdict, _ = ct.track_raw(pkt, now, p.template)
                skb.path |= PATH_CONNTRACK
                if verdict != ACCEPT:
                    stats.drops += 1
                    return TC_ACT_SHOT
                if entry is not None:  # skb.set_ct(), inline
                    skb.ct = entry
                    skb.ctinfo = ctinfo
                    skb.ct_state = CTINFO_TO_FLOWER.get(ctinfo, 0)
                else:
                    skb.set_ct(None, None)
        # What follows the lookup; none of it applies to a plain "ct zone N" on an
        # entry without pending events or extensions, when there is no flow table.
        if entry is not None and (p.after_lookup or entry.events or entry.ext is not None
                                  or ft is not None):
            return self.finish(action, skb, env, entry, cached, skip_add)
        skb.post_ct = True  # skb.set_post_ct(True, zone), inline
        skb.zone = p.zone
        if skb.ct is None:
            skb.ct_state = CT_TRACKED | CT_INVALID
        return retval

    def finish(self, action: Action, skb: Skb, env: Env, entry: Entry, cached: bool,
               skip_add: bool) -> int:
        """tcf_ct_act after the lookup gave `entry` (`cached`: the packet's own;
        `skip_add`: a flow table hit): deliver its events, NAT, the helper,
        commit (mark, labels, confirm), the flow table offer; then post_ct."""
        p: CtParams = action.params
        ct = env.conntrack
        assert ct is not None
        ft = env.flowtable
        now = env.now
        ct_action = p.ct_action
        ctinfo = skb.ctinfo
        if ctinfo is None:
            ctinfo = IP_CT_UNTRACKED
        commit = bool(ct_action & CT_ACT_COMMIT)
        if entry.events:
            ct.deliver(entry, now)
        if ct_action & CT_ACT_NAT:
            done = ct_nat.act_nat(ct, entry, ctinfo, skb.pkt, p.nat_range, commit, now)
            if done.verdict != l4proto.ACCEPT:
                action.stats.drops += 1
                return TC_ACT_SHOT
            skb.pkt = done.packet
            skb.post_ct_snat |= done.snat
            skb.post_ct_dnat |= done.dnat
        confirmed = entry.status & IPS_CONFIRMED
        add_helper = False
        if not confirmed and commit and p.helper is not None and entry.helper is None:
            name = p.helper[2]
            helper = ct.helpers.get(name)
            if helper is not None and getattr(helper, "proto", None) == entry.orig.proto:
                entry.helper = name  # __nf_ct_try_assign_helper from the template
                add_helper = True
        ext = entry.ext  # entry.helper without the property, when there is none
        if ext is not None and ext.helper is not None and \
                (((not cached and not skip_add) or add_helper) if confirmed else commit) \
                and ct.help(CtResult(entry, ctinfo), skb.pkt, now) != l4proto.ACCEPT:
            action.stats.drops += 1
            return TC_ACT_SHOT
        if commit:
            if p.mark_mask:
                ct.set_mark(entry, p.mark, p.mark_mask)
            if p.labels_mask != NO_LABELS:
                ct.set_labels(entry, p.labels_value, p.labels_mask_value)
            res = ct.confirm(CtResult(entry, ctinfo), now)
            if res.verdict != l4proto.ACCEPT or res.entry is None:
                action.stats.drops += 1
                return TC_ACT_SHOT
            if res.entry is not entry:
                entry = res.entry
                skb.set_ct(entry, ctinfo)
        if not skip_add and ft is not None:
            ft.offer(entry, ctinfo, now)
        skb.post_ct = True  # skb.set_post_ct(True, zone), inline
        skb.zone = p.zone
        if skb.ct is None:
            skb.ct_state = CT_TRACKED | CT_INVALID
        return action.control

    @staticmethod
    def _cached(skb: Skb, p: CtParams, ct: Any, now: float) -> bool:
        """tcf_ct_skb_nfct_cached: keep the packet's ct only for the same zone
        (and helper); `force` throws away a reply-direction one."""
        entry = skb.ct
        if entry is None:
            return False
        keep = entry.zone == p.zone
        if keep and p.helper is not None and entry.helper is not None \
                and entry.helper != p.helper[2]:
            keep = False
        if keep and p.ct_action & CT_ACT_FORCE and (skb.ctinfo or 0) >= IP_CT_ESTABLISHED_REPLY:
            if entry.confirmed:
                ct.kill(entry, now)
            keep = False
        if not keep:
            skb.set_ct(None, IP_CT_UNTRACKED)
        return keep



KIND = CtKind()
