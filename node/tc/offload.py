"""The offload card's tc driver: which filters the card takes into its rule table,
running them in hardware, and their hardware counters.

Kernel seams it stands for (Linux 6.18):
  replace()/destroy()  the flow_block_cb that cls_api.c tc_setup_cb_add()/_destroy()
                       call for a filter without skip_hw (mlx5e_configure_flower): the
                       number of devices that took it is in_hw_count; 0 leaves it
                       in software (not_in_hw); a skip_sw filter no device takes is
                       refused with the driver's extack
  classify()           the card's rule pipeline (mlx5 en/tc_ct.c §11 of act_ct.md): the
                       offloaded filters of a block in chain order, a ct action looked
                       up in the card's CT table (Card.lookup); a hit continues in
                       hardware (goto chain, mirred, ...), a miss says where software
                       resumes: the chain (mlx5 restores the chain) or, for a ct miss,
                       the filter and action index (act_miss, cls_api.c
                       tcf_exts_miss_cookie): "restore the CT action's miss cookie ...
                       which will instruct tc to continue from this specific CT action
                       instance on the relevant filter's action list" (Paul Blakey,
                       "net/mlx5e: TC, Set CT miss to the specific ct action instance",
                       netdev 2023-01-25). Software runs that ct action (act_ct: flow
                       table, conntrack) and what follows it; what came before it ran
                       in the card and is not run again
  sync_stats()         the bulk counter read (mlx5 fs_counters.c, delayed stats) pushed
                       into the filters' and actions' hardware statistics
                       (tcf_exts_hw_stats_update with per-action stats), which `tc -s`
                       prints as "Sent hardware"
  sw_lookup()/offer()  act_ct's flow table calls (the card's software side); a ct action
                       in a zone no hardware filter serves keeps its flows software-only
                       (no driver callback on that zone's flow table)

What the card takes (its capabilities, mlx5-like, declared in unsupported()):
  flower keys except indev; ct_state without +rel/+inv (mlx5 -EOPNOTSUPP); matchall;
  ct (zone, nat, commit, clear) without helper, force, or commit mark/label (the card
  cannot write conntrack); gact pass/drop/pipe/continue/goto chain without a
  random fallback; mirred to a port; skbedit mark/priority. No reclassify, jump,
  repeat or trap verbs, no skip_hw actions. The rule table holds `rule_capacity` filters.

Counting: a packet is counted once per filter it matched and once per action that
ran, in hardware or in software. A ct action whose lookup missed is counted by the
software act_ct that resumes there, not by the card.
"""

from __future__ import annotations

import errno
from collections import Counter
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from node.conntrack import l4proto
from node.conntrack import nat as ct_nat
from node.conntrack.entry import IP_CT_UNTRACKED
from node.offload.outcomes import HwMiss, MissReason
from node.tc.act_ct import CT_ACT_CLEAR, CT_ACT_COMMIT, CT_ACT_FORCE, CT_ACT_NAT, NO_LABELS
from node.tc.act_gact import PGACT_NONE
from node.tc.act_mirred import (
    MIRRED_NEST_LIMIT,
    TCA_EGRESS_MIRROR,
    TCA_EGRESS_REDIR,
    TCA_INGRESS_REDIR,
)
from node.tc.action import ACT_FLAGS_SKIP_HW, HW_STATS_DELAYED
from node.tc.args import ETH_P_ALL, ETH_P_IP, ETH_P_IPV6
from node.tc.cls_flower import CLS_FLAGS_SKIP_SW, FlowerKey
from node.tc.cls_matchall import MatchallKey
from node.tc.errors import KernelError
from node.tc.skb import CT_INVALID, CT_RELATED, PATH_HW_CT
from node.tc.verdict import (
    MAX_RECLASSIFY_LOOP,
    TC_ACT_EXT_VAL_MASK,
    TC_ACT_GOTO_CHAIN,
    TC_ACT_OK,
    TC_ACT_PIPE,
    TC_ACT_RECLASSIFY,
    TC_ACT_SHOT,
    TC_ACT_STOLEN,
    TC_ACT_UNSPEC,
)

if TYPE_CHECKING:
    from node.conntrack.entry import Entry
    from node.conntrack.table import Conntrack
    from node.offload.card import Card
    from node.packet import Packet
    from node.tc.action import Action
    from node.tc.block import Block
    from node.tc.chain import Chain, Filter
    from node.tc.skb import Skb

DEFAULT_RULE_CAPACITY = 4096
_OPCODE = 0xFFFFFFFF & ~TC_ACT_EXT_VAL_MASK
_HW_VERBS = frozenset((TC_ACT_OK, TC_ACT_SHOT, TC_ACT_PIPE, TC_ACT_UNSPEC, TC_ACT_STOLEN))
# Why a packet left the card for software (Outcome.why of the datapath).
NO_RULE = "no_rule"  # the card has no rule for what software would match first
CT_MISS = {r: r.name.lower() for r in MissReason}  # no_entry, fin_rst, unsupported, table_full
MISS_REASONS = (NO_RULE, *CT_MISS.values())


class Miss(NamedTuple):
    """Where software resumes a packet the card gave up on (tc_skb_ext): in `chain`
    at its proto `pos`; with `flt`, that filter's actions from `act_index` (the ct
    action that missed), then the protos after `pos`."""

    reason: str
    chain: Chain | None
    pos: int = 0
    flt: Filter | None = None
    act_index: int = 0


def _first_match(groups: list[list[Filter]], skb: Skb) -> Filter | None:
    """fl_classify's lookup as the card does it: the first mask with a matching
    filter (a skip_sw filter is in the card, so it counts)."""
    for group in groups:
        for flt in group:
            if flt.match(skb):
                return flt
    return None


class HwEnv(Protocol):
    """What the card's pipeline needs from the node: time, conntrack (the NAT
    rewrite rule) and its ports."""

    now: float

    @property
    def conntrack(self) -> Conntrack: ...

    def hw_mirred(self, skb: Skb, dev: str, egress: bool, redirect: bool) -> bool: ...


class HwRule:
    """The card's copy of one filter: what it counts (a filter counter, then
    packets/bytes/drops per action) and what it reported last."""

    __slots__ = ("block", "counts", "devices", "reported", "zones")

    def __init__(self, nactions: int, devices: int, zones: tuple[int, ...],
                 block: Block) -> None:
        self.counts = [0] * (2 + 3 * nactions)
        self.reported = [0] * (2 + 3 * nactions)
        self.devices = devices
        self.zones = zones
        self.block = block


class TcOffload:
    """One card's tc driver (block.BlockOffload), shared by the node's ports."""

    def __init__(self, card: Card, rule_capacity: int = DEFAULT_RULE_CAPACITY) -> None:
        self.card = card
        self.rule_capacity = rule_capacity
        self.rules_used = 0
        self.rules: dict[Filter, HwRule] = {}
        self.hw_zones: Counter[int] = Counter()  # zones of the ct actions in hardware
        self.block_rules: Counter[Block] = Counter()  # rules in hardware, per block
        self.refused: dict[str, int] = {}  # filters left in software, by reason
        self.last_refusal = ""
        self._dirty: set[Filter] = set()

    # ================================================================ rule offload
    def unsupported(self, flt: Filter) -> str | None:
        """Why the card cannot take `flt` (its keys or actions), or None."""
        key = flt.key
        if isinstance(key, FlowerKey):
            if key.indev is not None:
                return "matching on indev is not supported"
            if key.ct_state is not None:
                state = key.ct_state[0] & key.ct_state[1]
                if state & CT_RELATED:
                    return "matching on ct_state +rel isn't supported"
                if state & CT_INVALID:
                    return "matching on ct_state +inv isn't supported"
        elif not isinstance(key, MatchallKey):
            return f"{type(key).__name__} is not supported"
        for action in flt.actions:
            why = self._action_unsupported(action)
            if why is not None:
                return why
        return None

    @staticmethod
    def _action_unsupported(a: Action) -> str | None:
        if a.flags & ACT_FLAGS_SKIP_HW:
            return "an action is skip_hw"
        control = a.control
        if control not in _HW_VERBS and control & _OPCODE != TC_ACT_GOTO_CHAIN:
            return "control verb not supported in hardware"
        kind = a.name
        p = a.params
        if kind == "ct":
            if p.helper is not None:
                return "ct action with helper is not supported"  # act_ct.c:1600-1612
            if p.ct_action & CT_ACT_FORCE:
                return "ct force is not supported"
            if p.ct_action & CT_ACT_COMMIT and (p.mark_mask or p.labels_mask != NO_LABELS):
                return "ct commit with mark or label is not supported"
            return None
        if kind == "gact":
            return None if p.ptype == PGACT_NONE else "gact random is not supported"
        if kind == "mirred":
            return None
        if kind == "skbedit":
            if p.queue_mapping is not None or p.ptype is not None or p.inheritdsfield:
                return "skbedit: only mark and priority are supported"
            return None
        return f"action {kind} is not supported"

    def replace(self, block: Block, flt: Filter) -> int:
        """tc_setup_cb_add: take `flt` into hardware; the devices that did (0: none)."""
        why = self.unsupported(flt)
        devices = max(1, block.users) if block.shared else 1
        if why is None and self.rules_used + devices > self.rule_capacity:
            why = "rule table full"
        if why is not None:
            self.refused[why] = self.refused.get(why, 0) + 1
            self.last_refusal = why
            if flt.flags & CLS_FLAGS_SKIP_SW:
                code = errno.ENOSPC if why == "rule table full" else errno.EOPNOTSUPP
                raise KernelError(code, f"ctlab_card: {why}")
            return 0
        zones = tuple(a.params.zone for a in flt.actions
                      if a.name == "ct" and not a.params.ct_action & CT_ACT_CLEAR)
        rule = HwRule(len(flt.actions), devices, zones, block)
        self.rules[flt] = rule
        self.block_rules[block] += 1
        flt.hw = rule
        self.rules_used += devices
        sw_only = self.card.sw_only_zones
        for zone in zones:
            self.hw_zones[zone] += 1
            sw_only.discard(zone)
        for action in flt.actions:
            action.in_hw_count += devices
            action.used_hw_stats = HW_STATS_DELAYED
        return devices

    def destroy(self, block: Block, flt: Filter) -> None:
        """tc_setup_cb_destroy."""
        rule = self.rules.pop(flt, None)
        if rule is None:
            return
        flt.hw = None
        self._dirty.discard(flt)
        self.rules_used -= rule.devices
        self.block_rules[rule.block] -= 1
        if self.block_rules[rule.block] <= 0:
            del self.block_rules[rule.block]
        for zone in rule.zones:
            self.hw_zones[zone] -= 1
            if self.hw_zones[zone] <= 0:
                del self.hw_zones[zone]
                self.card.sw_only_zones.add(zone)
        for action in flt.actions:
            action.in_hw_count = max(0, action.in_hw_count - rule.devices)
            if not action.in_hw_count:
                action.used_hw_stats = None

    # ================================================================ act_ct's side
    def sw_lookup(self, pkt: Packet, zone: int, now: float) -> Any:
        return self.card.sw_lookup(pkt, zone, now)

    def offer(self, entry: Entry, ctinfo: int, now: float) -> Any:
        zone = entry.zone
        if zone not in self.hw_zones:  # no hardware ct action serves this zone
            self.card.sw_only_zones.add(zone)
        return self.card.offer(entry, ctinfo, now)

    # ================================================================ hardware
    def classify(self, block: Block, skb: Skb, env: HwEnv) -> int | Miss:
        """The card's pipeline for a packet entering `block`: a TC_ACT_* verdict
        when it was handled entirely in hardware, else where software resumes."""
        chain = block.chains.get(0)
        if block not in self.block_rules:  # nothing of this block is in the card
            return Miss(NO_RULE, chain)
        eth = ETH_P_IP if skb.pkt.family == 4 else ETH_P_IPV6
        resets = 0
        while True:
            if chain is None:
                return Miss(NO_RULE, None)
            protos = chain.protos
            for pos, tp in enumerate(protos):
                if tp.protocol != eth and tp.protocol != ETH_P_ALL:
                    continue
                flt = _first_match(tp.groups, skb)
                if flt is None:
                    continue
                rule = flt.hw
                if rule is None:  # software would take a filter the card lacks
                    return Miss(NO_RULE, chain, pos)
                err = self._exec(flt, rule, skb, env)
                if type(err) is tuple:
                    return Miss(err[0], chain, pos, flt, err[1])
                if err >= 0:  # type: ignore[operator]
                    break
            else:
                return Miss(NO_RULE, chain, len(protos))
            if err == TC_ACT_RECLASSIFY:
                chain = block.chains.get(0)
            elif err & _OPCODE == TC_ACT_GOTO_CHAIN:  # type: ignore[operator]
                chain = block.chains.get(err & TC_ACT_EXT_VAL_MASK)  # type: ignore[operator]
            else:
                return err  # type: ignore[return-value]
            if resets >= MAX_RECLASSIFY_LOOP:
                skb.drop_reason = "TC_RECLASSIFY_LOOP"
                return TC_ACT_SHOT
            resets += 1

    def _exec(self, flt: Filter, rule: HwRule, skb: Skb,
              env: HwEnv) -> int | tuple[str, int]:
        """The filter's actions in hardware: the verdict, or (miss reason, index of
        the action where software resumes)."""
        counts = rule.counts
        length = skb.len
        counts[0] += 1
        counts[1] += length
        self._dirty.add(flt)
        skb.trace += (flt.where,)
        ret = TC_ACT_OK
        base = 2
        for i, a in enumerate(flt.actions):
            kind = a.name
            if kind == "ct":
                got = self._ct(a, skb, env)
                if type(got) is str:
                    return got, i
                ret = got  # type: ignore[assignment]
            elif kind == "mirred":
                ret = self._mirred(a, skb, env)
            elif kind == "skbedit":
                p = a.params
                if p.mark is not None:
                    mask = 0xFFFFFFFF if p.mask is None else p.mask
                    skb.mark = (skb.mark & ~mask & 0xFFFFFFFF) | (p.mark & mask)
                if p.priority is not None:
                    skb.priority = p.priority
                ret = a.control
            else:  # gact
                ret = a.control
            counts[base] += 1
            counts[base + 1] += length
            if ret == TC_ACT_SHOT:
                counts[base + 2] += 1
            base += 3
            if ret == TC_ACT_PIPE:
                continue
            if ret & _OPCODE == TC_ACT_GOTO_CHAIN and a.goto_chain is None:
                return TC_ACT_SHOT
            return ret
        return ret

    def _ct(self, a: Action, skb: Skb, env: HwEnv) -> int | str:
        """A ct action in hardware: the CT table lookup (mlx5 pre_ct -> CT/CT_NAT
        table), the ct state it restores, the NAT rewrite act_ct's rule gives."""
        p = a.params
        ct_action = p.ct_action
        if ct_action & CT_ACT_CLEAR:
            skb.set_post_ct(False, skb.zone)
            if skb.ct is not None:
                skb.set_ct(None, IP_CT_UNTRACKED)
            return a.control
        entry = skb.ct
        if entry is None or entry.zone != p.zone:
            if entry is not None:
                skb.set_ct(None, IP_CT_UNTRACKED)
            hit = self.card.lookup(skb.pkt, p.zone, env.now)
            if isinstance(hit, HwMiss):
                return CT_MISS[hit.reason]
            entry = hit.entry
            skb.set_ct(entry, hit.ctinfo)
            skb.path |= PATH_HW_CT
        if ct_action & CT_ACT_NAT:
            ctinfo = skb.ctinfo if skb.ctinfo is not None else IP_CT_UNTRACKED
            # The rewrite act_ct's NAT rule gives this packet (nf_ct_nat): the CT_NAT
            # table's mangle actions. A confirmed entry's bindings are not changed.
            done = ct_nat.act_nat(env.conntrack, entry, ctinfo, skb.pkt, p.nat_range,
                                  bool(ct_action & CT_ACT_COMMIT), env.now)
            if done.verdict != l4proto.ACCEPT:
                return CT_MISS[MissReason.UNSUPPORTED]
            skb.pkt = done.packet
            skb.post_ct_snat |= done.snat
            skb.post_ct_dnat |= done.dnat
        skb.set_post_ct(True, p.zone)
        return a.control

    @staticmethod
    def _mirred(a: Action, skb: Skb, env: HwEnv) -> int:
        p = a.params
        if skb.mirred_depth >= MIRRED_NEST_LIMIT:
            return TC_ACT_SHOT
        eaction = p.eaction
        redirect = eaction in (TCA_EGRESS_REDIR, TCA_INGRESS_REDIR)
        egress = eaction in (TCA_EGRESS_REDIR, TCA_EGRESS_MIRROR)
        if env.hw_mirred(skb, p.dev or "", egress, redirect) and redirect:
            return TC_ACT_SHOT
        return int(a.control)

    # ================================================================ counters
    def sync_stats(self, now: float) -> int:
        """The bulk read of the rule counters: what moved since the last read goes
        into the filters' and actions' statistics as hardware counts (lastuse: this
        read, as mlx5's fs_counters.c sets it). Returns the rules that moved."""
        moved = 0
        for flt in self._dirty:
            rule = self.rules.get(flt)
            if rule is None:
                continue
            counts, reported = rule.counts, rule.reported
            dp, db = counts[0] - reported[0], counts[1] - reported[1]
            if dp or db:
                flt.stats.add_hw(db, dp, 0, now)
                moved += 1
            base = 2
            for action in flt.actions:
                dp = counts[base] - reported[base]
                db = counts[base + 1] - reported[base + 1]
                dd = counts[base + 2] - reported[base + 2]
                if dp or db or dd:
                    action.stats.add_hw(db, dp, dd, now)
                base += 3
            rule.reported = list(counts)
        self._dirty.clear()
        return moved

    @property
    def stats(self) -> dict[str, Any]:
        return {"rules": len(self.rules), "rule_capacity": self.rule_capacity,
                "rules_used": self.rules_used, "refused": dict(self.refused),
                "hw_zones": sorted(self.hw_zones)}


__all__ = ["DEFAULT_RULE_CAPACITY", "MISS_REASONS", "NO_RULE", "HwEnv", "HwRule", "Miss",
           "TcOffload"]
