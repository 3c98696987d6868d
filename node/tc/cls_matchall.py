"""cls_matchall: one filter that matches every packet (tc-matchall(8)).

Kernel: net/sched/cls_matchall.c (mall_change: no options -> EINVAL, a second
filter in the same proto -> EEXIST, replace included; mall_classify: a skip_sw
head matches nothing in software; the per-filter "rule hit" counter).
iproute2: tc/f_matchall.c (matchall_parse_opt, matchall_print_opt), kept here
because both sides are small.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from node.tc.act_skbedit import classid_str, get_tc_classid
from node.tc.cls_flower import (
    CLS_FLAGS_IN_HW,
    CLS_FLAGS_NOT_IN_HW,
    CLS_FLAGS_SKIP_HW,
    CLS_FLAGS_SKIP_SW,
)
from node.tc.errors import CmdFailed, KernelError

if TYPE_CHECKING:
    from collections.abc import Callable

    from node.tc.args import Args
    from node.tc.chain import Proto
    from node.tc.skb import Skb

EXPLAIN = ("Usage: ... matchall [skip_sw | skip_hw]\n"
           "                 [ action ACTION_SPEC ] [ classid CLASSID ]\n"
           "\n"
           "Where: SELECTOR := SAMPLE SAMPLE ...\n"
           "       FILTERID := X:Y:Z\n"
           "       ACTION_SPEC := ... look at individual actions\n"
           "\nNOTE: CLASSID is parsed as hexadecimal input.\n")
LONG_MAX = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class MatchallKey:
    """matchall has no key: every filter of a proto has the same (empty) mask."""

    def masked(self) -> tuple[()]:
        return ()

    def mask_signature(self) -> tuple[()]:
        return ()


def _match_all(skb: Skb) -> bool:
    return True


def strtol(text: str) -> int:
    """strtol(text, NULL, 0) clamped as C does (garbage after the digits ignored)."""
    s = text.lstrip(" \t\n\v\f\r")
    sign = 1
    if s[:1] in ("+", "-"):
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    base = 10
    if s[:2].lower() == "0x" and s[2:3] and s[2].lower() in "0123456789abcdef":
        base, s = 16, s[2:]
    elif s[:1] == "0":
        base = 8
    digits = "0123456789abcdef"[:base]
    n = 0
    for ch in s.lower():
        if ch not in digits:
            break
        n = n * base + digits.index(ch)
    n *= sign
    return max(-LONG_MAX - 1, min(LONG_MAX, n))


class MatchallKind:
    """The classifier kind "matchall" (cls_mall_ops + matchall_filter_util)."""

    kind = "matchall"

    # ------------------------------------------------------------ iproute2
    def parse_handle(self, args: Args, text: str) -> int:
        h = strtol(text)
        if h in (LONG_MAX, -LONG_MAX - 1):
            args.err(f'Illegal handle "{text}", must be numeric.\n')
            raise CmdFailed(-1)
        return h & 0xFFFFFFFF

    def parse(self, args: Args, protocol: int, parse_actions: Any) -> dict[str, Any]:
        """matchall_parse_opt; no words at all sends no TCA_OPTIONS (key None)."""
        if not args:
            return {"key": None, "flags": 0, "classid": None, "actions": ()}
        flags = 0
        classid = None
        actions: Any = ()
        while args:
            w = args.cur
            if args.m("classid") or w == "flowid":
                classid = get_tc_classid(args.next_arg())
                if classid is None:
                    args.err('Illegal "classid"\n')
                    raise CmdFailed(-1)
            elif args.m("action"):
                args.next_arg()
                try:
                    actions = parse_actions(args)
                except CmdFailed:
                    args.err('Illegal "action"\n')
                    raise
                continue
            elif w in ("skip_hw", "skip_sw"):
                args.next_arg()
                flags |= CLS_FLAGS_SKIP_HW if w == "skip_hw" else CLS_FLAGS_SKIP_SW
                continue
            elif w == "help":
                args.err(EXPLAIN)
                raise CmdFailed(-1)
            else:
                args.err(f'What is "{w}"?\n')
                args.err(EXPLAIN)
                raise CmdFailed(-1)
            args.fwd()
        if flags == CLS_FLAGS_SKIP_HW | CLS_FLAGS_SKIP_SW:
            args.err("skip_hw and skip_sw are mutually exclusive\n")
            raise CmdFailed(-1)
        return {"key": MatchallKey(), "flags": flags, "classid": classid, "actions": actions}

    # ------------------------------------------------------------ kernel
    def pre_change(self, tp: Proto, key: Any) -> None:
        """mall_change's first checks, before the actions are initialised."""
        if key is None:
            raise KernelError(errno.EINVAL)
        if tp.filters:
            raise KernelError(errno.EEXIST)

    def change(self, key: MatchallKey, flags: int) -> None:
        return None

    def compile(self, key: MatchallKey) -> Callable[[Skb], bool]:
        return _match_all

    # ------------------------------------------------------------ iproute2 print
    def print(self, out: Any, flt: Any, opts: Any, now: float) -> None:
        """matchall_print_opt (the kernel has no terse dump for matchall)."""
        from node.tc import show

        if flt.handle:
            out.uint("handle", f"handle 0x{flt.handle:x} ", flt.handle)
        if flt.classid is not None:
            text = classid_str(flt.classid)
            out.string("flowid", f"flowid {text} ", text)
        flags = flt.flags
        if flags & CLS_FLAGS_SKIP_HW:
            out.bool("skip_hw", "\n  skip_hw", True)
        if flags & CLS_FLAGS_SKIP_SW:
            out.bool("skip_sw", "\n  skip_sw", True)
        if flags & CLS_FLAGS_IN_HW:
            out.bool("in_hw", "\n  in_hw", True)
        elif flags & CLS_FLAGS_NOT_IN_HW:
            out.bool("not_in_hw", "\n  not_in_hw", True)
        if opts.stats:
            hits = flt.stats.packets - flt.stats.packets_hw
            out.uint("rule_hit", f" (rule hit {hits})", hits)
        if flt.actions:
            show.print_actions(out, flt.actions, opts, now)


KIND = MatchallKind()
