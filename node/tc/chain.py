"""Chains of classifier instances (tcf_chain, tcf_proto) and the filters in them.

Kernel: net/sched/cls_api.c. A chain holds tcf_protos sorted by priority
(tcf_chain_tp_find: one proto per (prio, protocol), a second protocol at a
taken prio is refused); a proto holds the filters of one classifier kind. A
chain lives while it has protos, was created explicitly (``tc chain add``) or
is the target of a ``goto chain`` verb (then it is hidden from ``tc chain show``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from node.tc.action import ActSpec, exec_actions
from node.tc.cls_flower import CLS_FLAGS_SKIP_SW
from node.tc.compiled import ChainProgram, FilterRun, compile_chain, compile_filter
from node.tc.stats import Stats

if TYPE_CHECKING:
    from node.tc.action import Action
    from node.tc.skb import Env, Skb

TC_H_ROOT = 0xFFFFFFFF
TC_H_INGRESS = 0xFFFFFFF1
TC_H_CLSACT = TC_H_INGRESS
TC_H_MIN_INGRESS = 0xFFF2
TC_H_MIN_EGRESS = 0xFFF3
PARENT_INGRESS = 0xFFFF0000 | TC_H_MIN_INGRESS  # "ingress" as a filter parent
PARENT_EGRESS = 0xFFFF0000 | TC_H_MIN_EGRESS


@dataclass(frozen=True, slots=True)
class FilterSpec:
    """A parsed ``tc filter add|replace|change|del|get`` (the RTM_*TFILTER request)."""

    kind: str | None
    handle: int | None  # tcm_handle (None = 0)
    key: Any  # the classifier's key (cls_flower.FlowerKey)
    flags: int
    classid: int | None
    actions: tuple[ActSpec, ...]


class Filter:
    """One installed filter (struct cls_fl_filter)."""

    __slots__ = ("actions", "classid", "flags", "handle", "hw", "in_hw_count", "key", "masked",
                 "match", "proto", "run", "stats", "where")

    def __init__(self, proto: Proto, handle: int, key: Any, flags: int, classid: int | None,
                 actions: list[Action], match: Callable[[Skb], bool], now: float) -> None:
        self.proto = proto
        self.handle = handle
        self.key = key
        self.flags = flags
        self.classid = classid
        self.actions = actions
        self.in_hw_count = 0
        self.match = match
        self.masked = key.masked()
        self.stats = Stats.created(now)  # per-filter hits (software and hardware)
        self.where = (proto.chain.index, proto.prio, handle)  # what a match records
        self.hw: Any = None  # the card's rule for this filter while it is in hardware
        # run(skb, env): the software lookup and actions of this filter in one call
        # (NOMATCH, or the verdict exec_actions would give)
        self.run: FilterRun = compile_filter(self)

    @property
    def skip_sw(self) -> bool:
        return bool(self.flags & CLS_FLAGS_SKIP_SW)


class Proto:
    """struct tcf_proto: the filters of one kind at one (prio, protocol)."""

    __slots__ = ("chain", "filters", "flat", "groups", "kind", "masks", "prio", "protocol")

    def __init__(self, chain: Chain, prio: int, protocol: int, kind: Any) -> None:
        self.chain = chain
        self.prio = prio
        self.protocol = protocol
        self.kind = kind
        self.filters: dict[int, Filter] = {}
        self.masks: dict[tuple[Any, ...], list[Filter]] = {}  # in creation order
        self.groups: list[list[Filter]] = []  # self.masks.values(), for the lookup
        # The groups' filters in lookup order when none is skip_sw: then the first
        # match in this order is fl_classify's answer (None: use the groups).
        self.flat: tuple[Filter, ...] | None = ()

    def alloc_handle(self) -> int:
        handle = 1
        while handle in self.filters:
            handle += 1
        return handle

    def add(self, flt: Filter) -> None:
        self.filters[flt.handle] = flt
        self.masks.setdefault(flt.key.mask_signature(), []).append(flt)
        self._regroup()

    def remove(self, flt: Filter) -> None:
        self.filters.pop(flt.handle, None)
        sig = flt.key.mask_signature()
        group = self.masks.get(sig)
        if group is not None:
            group[:] = [f for f in group if f is not flt]
            if not group:
                del self.masks[sig]
        self._regroup()

    def _regroup(self) -> None:
        self.chain.invalidate()
        self.groups = list(self.masks.values())
        flat = tuple(f for group in self.groups for f in group)
        self.flat = None if any(f.flags & CLS_FLAGS_SKIP_SW for f in flat) else flat

    def duplicate(self, flt_key: Any, replacing: Filter | None) -> bool:
        """fl_ht_insert_unique: same mask and same masked key (EEXIST)."""
        masked = flt_key.masked()
        for other in self.masks.get(flt_key.mask_signature(), ()):
            if other is not replacing and other.masked == masked:
                return True
        return False

    def sorted_filters(self) -> list[Filter]:
        return [self.filters[h] for h in sorted(self.filters)]

    def classify(self, skb: Skb, env: Env) -> int:
        """fl_classify: the first mask with a matching filter decides."""
        for group in self.groups:
            for flt in group:
                if flt.match(skb):
                    if flt.flags & CLS_FLAGS_SKIP_SW:
                        break  # this mask's filter is hardware-only: next mask
                    st = flt.stats  # Stats.use(), inline
                    now = env.now
                    st.bytes += skb.len
                    st.packets += 1
                    st.lastuse = now
                    if st.firstuse is None:
                        st.firstuse = now
                    skb.trace += (flt.where,)
                    return exec_actions(flt.actions, skb, env)
        return -1


class Chain:
    """struct tcf_chain."""

    __slots__ = ("act_refs", "block", "explicitly_created", "index", "program", "protos")

    def __init__(self, block: Any, index: int) -> None:
        self.block = block
        self.index = index
        self.protos: list[Proto] = []
        self.explicitly_created = False
        self.act_refs = 0
        # The chain as one generated function (node.tc.compiled), made on first use
        # and dropped whenever its protos or their filters change.
        self.program: ChainProgram | None = None

    def compile(self) -> ChainProgram:
        program = self.program = compile_chain(self)
        return program

    def invalidate(self) -> None:
        """Drop the chain's program, and its block's (both are made again on use)."""
        self.program = None
        self.block.program = None

    def find(self, prio: int) -> Proto | None:
        """The proto at `prio` (tcf_chain_tp_find; see cls_api.find_proto)."""
        for tp in self.protos:
            if tp.prio == prio:
                return tp
        return None

    def auto_prio(self) -> int:
        """tcf_auto_prio: one below the first proto at or above 0x8000, else 0xC000."""
        for tp in self.protos:
            if tp.prio >= 0x8000:
                return tp.prio - 1
        return 0xC000

    def insert(self, tp: Proto) -> None:
        self.protos.append(tp)
        self.protos.sort(key=lambda p: p.prio)
        self.invalidate()

    def remove(self, tp: Proto) -> None:
        if tp in self.protos:
            self.protos.remove(tp)
        self.invalidate()

    def held_by_acts_only(self) -> bool:
        return not self.protos and not self.explicitly_created and self.act_refs > 0

    def alive(self) -> bool:
        return bool(self.protos) or self.explicitly_created or self.act_refs > 0
