"""gact, the generic action: a control verb (ok, drop, pipe, continue,
reclassify, jump N, goto chain N, trap), optionally with a probabilistic
fallback verb ("random determ|netrand VERB VAL").

Kernel: net/sched/act_gact.c (tcf_gact_act, gact_determ, gact_net_rand).
iproute2: tc/m_gact.c (parse_gact, print_gact; CONFIG_GACT_PROB is on).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from node.tc.action import Action, InitEnv, KindSpec
from node.tc.args import Args, get_u16, get_u32
from node.tc.errors import CliExit, CmdFailed, KernelError
from node.tc.stats import print_tm
from node.tc.verdict import TC_ACT_OK, TC_ACT_SHOT, is_goto, parse_control, print_control

if TYPE_CHECKING:
    from node.tc.out import Out
    from node.tc.skb import Env, Skb

PGACT_NONE, PGACT_NETRAND, PGACT_DETERM = 0, 1, 2
PROB_NAMES = {PGACT_NONE: "none", PGACT_NETRAND: "netrand", PGACT_DETERM: "determ"}

USAGE = ("Usage: ... gact <ACTION> [RAND] [INDEX]\n"
         "Where: \tACTION := reclassify | drop | continue | pass | pipe |\n"
         "       \t          goto chain <CHAIN_INDEX> | jump <JUMP_COUNT>\n"
         "\tRAND := random <RANDTYPE> <ACTION> <VAL>\n"
         "\tRANDTYPE := netrand | determ\n"
         "\tVAL : = value not exceeding 10000\n"
         "\tJUMP_COUNT := Absolute jump from start of action list\n"
         "\tINDEX := index value used\n\n")


@dataclass(frozen=True, slots=True)
class GactParams:
    ptype: int = PGACT_NONE  # struct tc_gact_p
    paction: int = TC_ACT_OK
    pval: int = 0


class GactKind:
    kind = "gact"

    def _usage(self, args: Args) -> CliExit:
        args.err(USAGE)
        return CliExit(255)

    def parse(self, args: Args) -> KindSpec:
        if args.m("gact"):
            args.next_arg()
        control = TC_ACT_OK
        prob = GactParams()
        if not args.m("index"):
            got = parse_control(args)
            if got is None:
                raise self._usage(args)
            control = got
            if args and args.m("random"):
                args.next_arg()
                if args.m("netrand"):
                    ptype = PGACT_NETRAND
                elif args.m("determ"):
                    ptype = PGACT_DETERM
                else:
                    args.err('Illegal "random type"\n')
                    raise CmdFailed(-1)
                args.next_arg()
                paction = parse_control(args)
                if paction is None:
                    raise self._usage(args)
                pval = get_u16(args.cur, 10)
                if pval is None:
                    args.err("Illegal probability val 0x0\n")
                    raise CmdFailed(-1)
                if pval > 10000:
                    args.err(f"Illegal probability val  0x{pval:x}\n")
                    raise CmdFailed(-1)
                args.fwd()
                prob = GactParams(ptype, paction, pval)
            elif args and args.m("help"):
                raise self._usage(args)
        index = 0
        if args:
            if args.m("index"):
                index_s = args.next_arg()
                got_index = get_u32(index_s, 10)
                if got_index is None:
                    args.err('Illegal "index"\n')
                    raise CmdFailed(-1)
                index = got_index
                args.fwd()
            elif args.m("help"):
                raise self._usage(args)
        return KindSpec(prob, index, control)

    def init(self, spec: KindSpec, env: InitEnv) -> GactParams:
        p: GactParams = spec.params
        if p.ptype != PGACT_NONE:
            if is_goto(p.paction):
                raise KernelError(errno.EINVAL, "goto chain not allowed on fallback")
            if not p.pval:
                raise KernelError(errno.EINVAL)
        return p

    def print(self, out: Out, action: Action | None, now: float, stats: bool) -> None:
        out.string("kind", "gact ", "gact")
        if action is None:
            return
        p: GactParams = action.params
        print_control(out, "action ", action.control, "")
        out.open_object("prob")
        out.string("random_type", f"\n\t random type {PROB_NAMES.get(p.ptype, 'none')}",
                   PROB_NAMES.get(p.ptype, "none"))
        print_control(out, " ", p.paction, " ")
        out.uint("val", f"val {p.pval}", p.pval)
        out.close_object()
        out.nl()
        out.uint("index", f"\t index {action.index}", action.index)
        out.uint("ref", f" ref {action.refcnt}", action.refcnt)
        out.uint("bind", f" bind {action.bindcnt}", action.bindcnt)
        if stats:
            print_tm(out, action.stats, now)
        out.nl()

    def inline(self, action: Action, an: str, names: dict[str, Any],
               ipv4: bool = False) -> list[str]:
        """act() without a random fallback, as source for a generated chain
        (node.tc.compiled): a guard, then statements leaving the verdict in `ret`."""
        names[f"{an}s"] = action.stats  # (an action keeps its Stats object)
        return [f"if {an}.params.ptype == {PGACT_NONE}:",
                f"    st = {an}s",
                "    st.bytes += ln",
                "    st.packets += 1",
                "    st.lastuse = now",
                "    if st.firstuse is None:",
                "        st.firstuse = now",
                f"    ret = {an}.control",
                f"    if ret == {TC_ACT_SHOT}:",
                "        st.drops += 1"]

    def act(self, action: Action, skb: Skb, env: Env) -> int:
        verdict = action.control
        p: GactParams = action.params
        if p.ptype == PGACT_DETERM:
            action.state = (action.state or 0) + 1
            if not action.state % p.pval:
                verdict = p.paction
        elif p.ptype == PGACT_NETRAND:
            # get_random_u32_below(pval) == 0, from a per-action LCG (the core is pure)
            seed = ((action.state or action.index) * 1103515245 + 12345) & 0x7FFFFFFF
            action.state = seed
            if not seed % p.pval:
                verdict = p.paction
        stats = action.stats  # Stats.use(), inline
        now = env.now
        stats.bytes += skb.len
        stats.packets += 1
        stats.lastuse = now
        if stats.firstuse is None:
            stats.firstuse = now
        if verdict == TC_ACT_SHOT:
            stats.drops += 1
        return verdict


KIND = GactKind()
