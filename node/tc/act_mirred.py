"""mirred: redirect or mirror the packet to a device's egress (or ingress).

Kernel: net/sched/act_mirred.c (tcf_mirred_act: redirect returns STOLEN and a
failed redirect SHOT; mirror sends a clone and returns the configured verb,
PIPE by default; at most MIRRED_NEST_LIMIT nested redirections).
iproute2: tc/m_mirred.c (parse_direction, print_mirred).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from node.tc.action import Action, InitEnv, KindSpec
from node.tc.args import Args, get_u32
from node.tc.errors import CliExit, CmdFailed, KernelError
from node.tc.stats import print_tm
from node.tc.verdict import TC_ACT_PIPE, TC_ACT_SHOT, TC_ACT_STOLEN, parse_control, print_control

if TYPE_CHECKING:
    from node.tc.out import Out
    from node.tc.skb import Env, Skb

TCA_EGRESS_REDIR, TCA_EGRESS_MIRROR, TCA_INGRESS_REDIR, TCA_INGRESS_MIRROR = 1, 2, 3, 4
EACTION_TEXT = {TCA_EGRESS_REDIR: "Egress Redirect", TCA_INGRESS_REDIR: "Ingress Redirect",
                TCA_EGRESS_MIRROR: "Egress Mirror", TCA_INGRESS_MIRROR: "Ingress Mirror"}
MIRRED_NEST_LIMIT = 4
USAGE = ("Usage: mirred <DIRECTION> <ACTION> [index INDEX] <dev DEVICENAME>\n"
         "where:\n\tDIRECTION := <ingress | egress>\n\tACTION := <mirror | redirect>\n"
         "\tINDEX  is the specific policy instance id\n\tDEVICENAME is the devicename\n")


@dataclass(frozen=True, slots=True)
class MirredParams:
    eaction: int = 0
    dev: str | None = None

    @property
    def redirect(self) -> bool:
        return self.eaction in (TCA_EGRESS_REDIR, TCA_INGRESS_REDIR)

    @property
    def egress(self) -> bool:
        return self.eaction in (TCA_EGRESS_REDIR, TCA_EGRESS_MIRROR)


class MirredKind:
    kind = "mirred"

    def parse(self, args: Args) -> KindSpec:
        if not args.m("mirred"):
            args.err(f"mirred bad argument {args.cur}\n")
            raise CmdFailed(-1)
        args.next_arg()
        if args.m("egress") or args.m("ingress") or args.m("index"):
            return self._direction(args)
        if args.m("help"):
            args.err(USAGE)
            raise CliExit(255)
        args.err(f"mirred option not supported {args.cur}\n")
        raise CmdFailed(-1)

    def _direction(self, args: Args) -> KindSpec:
        ok = iok = 0
        mirror = redir = ingress = egress = False
        eaction, control, index, dev = 0, TC_ACT_PIPE, 0, ""
        while args:
            if args.m("action"):
                break
            if not egress and args.m("egress"):
                egress = True
                if ingress:
                    args.err("Can't have both egress and ingress\n")
                    raise CmdFailed(-1)
                args.next_arg()
                ok += 1
                continue
            if not ingress and args.m("ingress"):
                ingress = True
                if egress:
                    args.err("Can't have both ingress and egress\n")
                    raise CmdFailed(-1)
                args.next_arg()
                ok += 1
                continue
            if args.m("index"):
                got = get_u32(args.next_arg(), 10)
                if got is None:
                    args.err('Illegal "index"\n')
                    raise CmdFailed(-1)
                index = got
                iok += 1
                if not ok:
                    args.fwd()
                    break
            elif not ok:
                args.err(f"was expecting egress or ingress ({args.cur})\n")
                break
            elif not mirror and args.m("mirror"):
                mirror = True
                if redir:
                    args.err("Can't have both mirror and redir\n")
                    raise CmdFailed(-1)
                eaction = TCA_EGRESS_MIRROR if egress else TCA_INGRESS_MIRROR
                control = TC_ACT_PIPE
                ok += 1
            elif not redir and args.m("redirect"):
                redir = True
                if mirror:
                    args.err("Can't have both mirror and redir\n")
                    raise CmdFailed(-1)
                eaction = TCA_EGRESS_REDIR if egress else TCA_INGRESS_REDIR
                control = TC_ACT_STOLEN
                ok += 1
            elif (redir or mirror) and args.m("dev"):
                name = args.next_arg()
                if dev:
                    raise args.duparg("dev", name)
                dev = name[:15]
                args.fwd()
                break
            args.next_arg()
        if not ok and not iok:
            raise CmdFailed(-1)
        if dev and not args_dev_exists(args, dev):
            args.err(f'Cannot find device "{dev}"\n')
            raise CmdFailed(-1)
        if eaction in (TCA_EGRESS_MIRROR, TCA_INGRESS_MIRROR):
            got = parse_control(args, quiet=True)
            if got is not None:
                control = got
        if args:
            if iok and args.m("index"):
                args.err("mirred: Illegal double index\n")
                raise CmdFailed(-1)
            if args.m("index"):
                got = get_u32(args.next_arg(), 10)
                if got is None:
                    args.err('mirred: Illegal "index"\n')
                    raise CmdFailed(-1)
                index = got
                args.fwd()
        return KindSpec(MirredParams(eaction, dev or None), index, control)

    def init(self, spec: KindSpec, env: InitEnv) -> MirredParams:
        p: MirredParams = spec.params
        if p.eaction not in EACTION_TEXT:
            raise KernelError(errno.EINVAL, "act_mirred: Unknown mirred option")
        if p.dev is None:
            raise KernelError(errno.EINVAL, "act_mirred: Must specify device or block")
        if not env.dev_exists(p.dev):
            raise KernelError(errno.ENODEV, "act_mirred: Specified device does not exist")
        return p

    def print(self, out: Out, action: Action | None, now: float, stats: bool) -> None:
        out.string("kind", "mirred ", "mirred")
        if action is None:
            return
        p: MirredParams = action.params
        out.fp(f"({EACTION_TEXT.get(p.eaction, 'unknown')}")
        out.string("mirred_action", "", "redirect" if p.redirect else "mirror", 2)
        out.string("direction", "", "egress" if p.egress else "ingress", 2)
        out.string("to_dev", f" to device {p.dev})", p.dev or "")
        print_control(out, " ", action.control, "")
        out.nl()
        out.uint("index", f"\tindex {action.index}", action.index)
        out.uint("ref", f" ref {action.refcnt}", action.refcnt)
        out.uint("bind", f" bind {action.bindcnt}", action.bindcnt)
        if stats:
            print_tm(out, action.stats, now)
        out.nl()

    def inline(self, action: Action, an: str, names: dict[str, Any],
               ipv4: bool = False) -> list[str]:
        """act() as source for a generated chain (node.tc.compiled), for the
        action's present parameters below the nesting limit: a guard, then
        statements leaving the verdict in `ret`."""
        p: MirredParams = action.params
        names[f"{an}p"], names[f"{an}d"] = p, p.dev or ""
        names[f"{an}s"] = action.stats  # (an action keeps its Stats object)
        redirect = p.eaction in (TCA_EGRESS_REDIR, TCA_INGRESS_REDIR)
        egress = p.eaction in (TCA_EGRESS_REDIR, TCA_EGRESS_MIRROR)
        lines = [f"if {an}.params is {an}p and skb.mirred_depth < {MIRRED_NEST_LIMIT}:",
                 f"    st = {an}s",
                 "    st.bytes += ln",
                 "    st.packets += 1",
                 "    st.lastuse = now",
                 "    if st.firstuse is None:",
                 "        st.firstuse = now",
                 f"    if env.mirred(skb, {an}d, {egress}, {redirect}):",
                 "        st.overlimits += 1"]
        if redirect:
            lines += ["        st.drops += 1", f"        ret = {TC_ACT_SHOT}"]
        else:
            lines += [f"        ret = {an}.control"]
        return [*lines, "    else:", f"        ret = {an}.control"]

    def act(self, action: Action, skb: Skb, env: Env) -> int:
        p: MirredParams = action.params
        stats = action.stats  # Stats.use(), inline
        now = env.now
        stats.bytes += skb.len
        stats.packets += 1
        stats.lastuse = now
        if stats.firstuse is None:
            stats.firstuse = now
        if skb.mirred_depth >= MIRRED_NEST_LIMIT:
            stats.overlimits += 1
            return TC_ACT_SHOT  # "Packet exceeded mirred recursion limit"
        eaction = p.eaction
        redirect = eaction in (TCA_EGRESS_REDIR, TCA_INGRESS_REDIR)
        egress = eaction in (TCA_EGRESS_REDIR, TCA_EGRESS_MIRROR)
        # env.mirred copies the skb when the target's tc must see it (the kernel
        # hands a redirected skb over); `skb` keeps its ingress view for the Outcome.
        if env.mirred(skb, p.dev or "", egress, redirect):
            stats.overlimits += 1
            if redirect:
                stats.drops += 1
                return TC_ACT_SHOT
        return action.control


def args_dev_exists(args: Args, dev: str) -> bool:
    """ll_name_to_index() through the model that owns `args`."""
    return True if args.dev_exists is None else args.dev_exists(dev)


KIND = MirredKind()
