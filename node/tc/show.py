"""What ``tc ... show`` prints: tc_filter.c print_filter, m_action.c
tc_print_action/print_action, tc_qdisc.c print_qdisc, in text and JSON.

A filter dump prints one header line per proto ("filter protocol ip pref 1
flower chain 0 ") and then one entry per filter, as the kernel's
tcf_chain_dump sends them. Parts equal to what the show command asked for
(dev, parent, protocol, pref, chain) are left out, as iproute2 does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from node.tc.action import (
    ACT_FLAGS_NO_PERCPU_STATS,
    ACT_FLAGS_SKIP_HW,
    ACT_FLAGS_SKIP_SW,
    ACT_FLAGS_YES_PERCPU,
    HW_STATS_ITEMS,
    Action,
)
from node.tc.args import ll_proto_n2a
from node.tc.chain import PARENT_EGRESS, PARENT_INGRESS, TC_H_ROOT
from node.tc.out import PRINT_ANY, PRINT_JSON, Out
from node.tc.stats import print_stats2

if TYPE_CHECKING:
    from node.tc.chain import Filter, Proto


@dataclass(frozen=True, slots=True)
class Shown:
    """The filter_* statics of tc_filter.c: what the show command fixed."""

    dev: str | None = None
    parent: int | None = None
    prio: int = 0
    protocol: int = 0
    chain: int | None = None
    block: int = 0


@dataclass(frozen=True, slots=True)
class ShowOpts:
    stats: bool = False
    brief: bool = False
    action_hw: bool = False  # print the 5.17+ per-action in_hw/not_in_hw line


def parent_str(h: int) -> str:
    """print_tc_classid."""
    if h == TC_H_ROOT:
        return "root"
    if h == 0:
        return "none"
    if not h >> 16:
        return f":{h & 0xFFFF:x}"
    if not h & 0xFFFF:
        return f"{h >> 16:x}:"
    return f"{h >> 16:x}:{h & 0xFFFF:x}"


def print_where(out: Out, shown: Shown, dev: str | None, block: int, parent: int) -> None:
    """The "dev X ingress " / "block N " part of a filter or chain line."""
    if dev is None:
        if not shown.block or shown.block != block:
            out.uint("block", f"block {block} ", block)
        return
    if shown.dev is None or shown.dev != dev:
        out.fp("dev ")
        out.string("dev", f"{dev} ", dev)
    if shown.parent is None or shown.parent != parent:
        if parent == TC_H_ROOT:
            out.bool("root", "root ", True)
        elif parent == PARENT_INGRESS:
            out.bool("ingress", "ingress ", True)
        elif parent == PARENT_EGRESS:
            out.bool("egress", "egress ", True)
        else:
            out.string("parent", f"parent {parent_str(parent)} ", parent_str(parent))


def print_filter(out: Out, shown: Shown, where: tuple[str | None, int, int], tp: Proto,
                 flt: Filter | None, opts: ShowOpts, now: float,
                 event: str | None = None) -> None:
    """print_filter for one RTM_NEWTFILTER message (flt None: the proto header)."""
    out.open_object()
    if event == "deleted":
        out.bool("deleted", "deleted ", True)
    out.fp("filter ")
    print_where(out, shown, *where)
    if not shown.protocol or shown.protocol != tp.protocol:
        name = ll_proto_n2a(tp.protocol)
        out.string("protocol", f"protocol {name} ", name)
    if not shown.prio or shown.prio != tp.prio:
        out.uint("pref", f"pref {tp.prio} ", tp.prio)
    kind = tp.kind.kind
    out.string("kind", f"{kind} ", kind)
    if shown.chain is None or shown.chain != tp.chain.index:
        out.uint("chain", f"chain {tp.chain.index} ", tp.chain.index)
    if flt is not None:
        out.open_object("options")
        tp.kind.print(out, flt, opts, now)
        out.close_object()
    out.nl()
    out.close_object()


def print_actions(out: Out, actions: Iterable[Action], opts: ShowOpts, now: float,
                  first: int = 1, terse: bool = False) -> None:
    """tc_print_action: numbered "action order N: ..." entries."""
    out.open_array(PRINT_JSON, "actions")
    for order, action in enumerate(actions, start=first):
        out.open_object()
        out.nl()
        out.uint("order", f"\taction order {order}: ", order)
        print_one_action(out, action, opts, now, terse)
        out.close_object()
    out.close_array(PRINT_JSON)


def print_one_action(out: Out, a: Action, opts: ShowOpts, now: float, terse: bool,
                     with_index: bool = False) -> None:
    """tc_print_one_action."""
    a.kind.print(out, None if terse else a, now, opts.stats)
    if opts.brief and with_index:
        out.uint("index", f"\t index {a.index}", a.index)
        out.nl()
    if opts.stats:
        out.fp("\tAction statistics:")
        out.nl()
        out.open_object("stats")
        print_stats2(out, a.stats, "\t")
        out.close_object()
        out.nl()
    if a.cookie is not None:
        out.string("cookie", f"\tcookie {a.cookie.hex()}", a.cookie.hex())
        out.nl()
    if terse:
        return
    user_flags = a.flags & (ACT_FLAGS_NO_PERCPU_STATS | ACT_FLAGS_SKIP_HW | ACT_FLAGS_SKIP_SW)
    yes_percpu = bool(a.flags & ACT_FLAGS_YES_PERCPU)
    if user_flags or yes_percpu or opts.action_hw:
        skip_hw = False
        if a.flags & ACT_FLAGS_NO_PERCPU_STATS:
            out.bool("no_percpu", "\tno_percpu", True)
        if yes_percpu:
            out.bool("yes_percpu", "\tyes_percpu", True)
        if a.flags & ACT_FLAGS_SKIP_HW:
            out.bool("skip_hw", "\tskip_hw", True)
            skip_hw = True
        if a.flags & ACT_FLAGS_SKIP_SW:
            out.bool("skip_sw", "\tskip_sw", True)
        if opts.action_hw and not skip_hw:
            if a.in_hw_count:
                out.bool("in_hw", "\tin_hw", True)
                out.uint("in_hw_count", f" in_hw_count {a.in_hw_count}", a.in_hw_count)
            else:
                out.bool("not_in_hw", "\tnot_in_hw", True)
        out.nl()
    for key, value in (("hw_stats", a.hw_stats), ("used_hw_stats", a.used_hw_stats)):
        if value is None:
            continue
        out.fp("\t")
        out.open_array(PRINT_ANY, key)
        for name, bit in HW_STATS_ITEMS:
            if (not value and not bit) or value & bit:
                out.string(None, f" {name}", name)
        out.close_array(PRINT_JSON)
        out.nl()


def print_action_dump(out: Out, actions: list[Action], opts: ShowOpts, now: float,
                      total: int, first: int = 0) -> None:
    """print_action for one RTM_GETACTION message ("total acts N" then the list)."""
    out.open_object()
    out.uint("total acts", f"total acts {total}", total)
    out.nl()
    out.close_object()
    out.open_object()
    out.open_array(PRINT_JSON, "actions")
    for order, action in enumerate(actions, start=first):
        out.open_object()
        out.nl()
        out.uint("order", f"\taction order {order}: ", order)
        print_one_action(out, action, opts, now, terse=False, with_index=True)
        out.close_object()
    out.close_array(PRINT_JSON)
    out.close_object()


def print_chain(out: Out, shown: Shown, dev: str | None, block: int, qdisc_handle: int,
                index: int) -> None:
    """print_filter for an RTM_NEWCHAIN message (tcm_parent is the qdisc handle)."""
    out.open_object()
    out.fp("chain ")
    print_where(out, shown, dev, block, qdisc_handle)
    if shown.chain is None or shown.chain != index:
        out.uint("chain", f"chain {index} ", index)
    out.nl()
    out.close_object()


def print_qdisc(out: Out, dev: str, kind: str, show_dev: bool, ingress_block: int,
                egress_block: int) -> None:
    """print_qdisc for ingress/clsact."""
    out.open_object()
    out.string("kind", f"qdisc {kind}", kind)
    out.string("handle", " ffff:", "ffff:")
    out.fp(" ")
    if show_dev:
        out.fp("dev ")
        out.string("dev", f"{dev} ", dev)
    out.string("parent", "parent ffff:fff1 ", "ffff:fff1")
    if ingress_block:
        out.uint("ingress_block", f"ingress_block {ingress_block} ", ingress_block)
    if egress_block:
        out.uint("egress_block", f"egress_block {egress_block} ", egress_block)
    if kind == "ingress":
        out.open_object("options")
        out.fp("---------------- ")
        out.close_object()
    else:
        out.open_object("options")
        out.close_object()
    out.nl()
    out.close_object()
