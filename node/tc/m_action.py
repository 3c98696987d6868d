"""iproute2's tc/m_action.c: the `action KIND ...` list a filter carries
(parse_action with its cookie/hw_stats/no_percpu/skip_sw|skip_hw tail) and the
`tc actions get|delete` index references (tc_action_gd).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from node.tc.action import (
    ACT_FLAGS_NO_PERCPU_STATS,
    ACT_FLAGS_SKIP_HW,
    ACT_FLAGS_SKIP_SW,
    ACT_FLAGS_YES_PERCPU,
    HW_STATS_ITEMS,
    ActSpec,
)
from node.tc.args import Args, get_u32, hex2mem, matches
from node.tc.errors import CmdFailed
from node.tc.verdict import action_a2n

TC_COOKIE_MAX_SIZE = 16
ACT_USAGE = (
    "usage: tc actions <ACTSPECOP>*\n"
    "Where: \tACTSPECOP := ACR | GD | FL\n"
    "\tACR := add | change | replace <ACTSPEC>*\n"
    "\tGD := get | delete | <ACTISPEC>*\n"
    "\tFL := ls | list | flush | <ACTNAMESPEC>\n"
    "\tACTNAMESPEC :=  action <ACTNAME>\n"
    "\tACTISPEC := <ACTNAMESPEC> <INDEXSPEC>\n"
    "\tACTSPEC := action <ACTDETAIL> [INDEXSPEC] [HWSTATSSPEC] [SKIPSPEC]\n"
    "\tINDEXSPEC := index <32 bit indexvalue>\n"
    "\tHWSTATSSPEC := hw_stats [ immediate | delayed | disabled ]\n"
    "\tSKIPSPEC := [ skip_sw | skip_hw ]\n"
    "\tACTDETAIL := <ACTNAME> <ACTPARAMS>\n"
    "\t\tExample ACTNAME is gact, mirred, bpf, etc\n"
    "\t\tEach action has its own parameters (ACTPARAMS)\n\n")


def parse_actions(args: Args, kinds: Mapping[str, Any]) -> list[ActSpec]:
    """m_action.c parse_action: ``action KIND ... [cookie C] [hw_stats T]
    [no_percpu] [skip_sw|skip_hw]``, repeated. Unknown kinds fall back to gact,
    as iproute2's get_action_kind does."""
    if not args:
        raise CmdFailed(-1)
    out: list[ActSpec] = []
    eap = False
    while args:
        w = args.cur
        if w == "action":
            args.fwd()
            eap = True
            continue
        if w in ("flowid", "classid"):
            break
        if w == "help":
            raise CmdFailed(-1)
        if any(matches(w, c) for c in ("change", "replace", "delete", "get", "add")):
            break
        name = "gact" if action_a2n(w) is not None else w
        kind = kinds.get(name) or kinds["gact"]
        eap = False
        if len(out) >= 32:
            args.err("Too many actions\n")
            _bad(args)
        try:
            spec = kind.parse(args)
        except CmdFailed:
            args.err("bad action parsing\n")
            _bad(args)
        out.append(_act_tail(args, kind.kind, spec))
    if eap:
        args.err(f"bad action empty {int(eap)}\n")
        _bad(args)
    return out


def _bad(args: Args) -> None:
    args.err(f"parse_action: bad value ({args.argc}:{args.cur or '(null)'})!\n")
    raise CmdFailed(-1)


def _act_tail(args: Args, kind: str, spec: Any) -> ActSpec:
    cookie = None
    hw_stats = None
    flags = 0
    if args.is_("cookie"):
        text = args.next_arg()
        if len(text) > TC_COOKIE_MAX_SIZE * 2:
            raise args.invarg(f"{len(text)} Max allowed size {TC_COOKIE_MAX_SIZE * 2}", text)
        cookie = hex2mem(text, len(text) // 2) if len(text) % 2 == 0 else None
        if cookie is None:
            raise args.invarg("cookie must be a hex string\n", text)
        args.fwd()
    if args and args.m("hw_stats"):
        text = args.next_arg()
        hw_stats = next((v for n, v in HW_STATS_ITEMS if matches(text, n)), None)
        if hw_stats is None:
            raise args.invarg("value is invalid\n", text)
        args.fwd()
    if args.is_("no_percpu"):
        flags |= ACT_FLAGS_NO_PERCPU_STATS
        args.fwd()
    elif args.is_("yes_percpu"):
        # Not an iproute2 word (tc would take it for a gact verb and fail): the
        # kernel's tdc corpus (ct.json 3991 in the commit kept here) uses it, so the
        # model accepts it as the explicit "per-cpu stats" flag and prints it back.
        flags |= ACT_FLAGS_YES_PERCPU
        args.fwd()
    for _ in range(2):
        if args.is_("skip_sw"):
            flags |= ACT_FLAGS_SKIP_SW
            args.fwd()
        elif args.is_("skip_hw"):
            flags |= ACT_FLAGS_SKIP_HW
            args.fwd()
    return ActSpec(kind, spec, cookie, hw_stats, flags)


def parse_action_ref(args: Args, kinds: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    """tc_action_gd's loop: (action) KIND index N, repeated."""
    refs: list[tuple[str, int]] = []
    while args:
        if args.cur == "action":
            args.fwd()
            continue
        if args.cur == "help":
            raise CmdFailed(-1)
        k = args.cur[:15]
        if k not in kinds:
            k = "gact"
        args.fwd()
        if not args:
            args.err(f"Error: no index specified action: {k}\n")
            raise CmdFailed(-1)
        if not args.m("index"):
            args.err(f"Error: no index specified action: {k}\n")
            raise CmdFailed(-1)
        index = get_u32(args.next_arg(), 10)
        if index is None:
            args.err('Illegal "index"\n')
            raise CmdFailed(-1)
        args.fwd()
        refs.append((k, index))
    return tuple(refs)
