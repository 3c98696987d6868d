"""skbedit: set skb metadata (mark[/mask], priority, queue_mapping, ptype).

Kernel: net/sched/act_skbedit.c (tcf_skbedit_act: mark = (mark & ~mask) |
(value & mask), mask default all ones). iproute2: tc/m_skbedit.c.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING

from node.tc.action import Action, InitEnv, KindSpec
from node.tc.args import Args, get_u32, get_unsigned
from node.tc.errors import CliExit, CmdFailed, KernelError
from node.tc.stats import print_tm
from node.tc.verdict import TC_ACT_PIPE, TC_ACT_SHOT, parse_control_dflt, print_control

if TYPE_CHECKING:
    from node.tc.out import Out
    from node.tc.skb import Env, Skb

PTYPES = (("host", 0), ("broadcast", 1), ("multicast", 2), ("otherhost", 3))
USAGE = ("Usage: skbedit [queue_mapping QUEUE_MAPPING] [priority PRIORITY] [mark MARK[/MASK]]\n"
         "\t[ptype PTYPE] [inheritdsfield]\n"
         "QUEUE_MAPPING = device transmit queue to use\n"
         "PRIORITY = classID to assign to priority field\n"
         "MARK = firewall mark to set\n"
         "MASK = mask applied to firewall mark (0xffffffff by default)\n"
         "PTYPE = packet type to set\n"
         "note: inheritdsfield maps DS field to skb->priority\n")


@dataclass(frozen=True, slots=True)
class SkbeditParams:
    mark: int | None = None
    mask: int | None = None
    priority: int | None = None
    queue_mapping: int | None = None
    ptype: int | None = None
    inheritdsfield: bool = False


def get_tc_classid(text: str) -> int | None:
    """tc_util.c get_tc_classid (MAJ:MIN in hex, "root", "none")."""
    if text == "root":
        return 0xFFFFFFFF
    if text == "none":
        return 0
    maj_s, colon, min_s = text.partition(":")
    try:
        maj = int(maj_s, 16) if maj_s else 0
        mnr = int(min_s, 16) if min_s else 0
    except ValueError:
        return None
    if (not colon and not maj_s) or maj >= 1 << 16 or mnr >= 1 << 16:
        return None
    return (maj << 16) | mnr if colon else maj


def classid_str(h: int) -> str:
    if h == 0xFFFFFFFF:
        return "root"
    if h == 0:
        return "none"
    if not h >> 16:
        return f":{h & 0xFFFF:x}"
    if not h & 0xFFFF:
        return f"{h >> 16:x}:"
    return f"{h >> 16:x}:{h & 0xFFFF:x}"


class SkbeditKind:
    kind = "skbedit"

    def parse(self, args: Args) -> KindSpec:
        if not args.m("skbedit"):
            raise CmdFailed(-1)
        args.next_arg()
        ok = 0
        p: dict[str, object] = {}
        while args:
            if args.m("queue_mapping"):
                v = get_unsigned(args.next_arg(), 10, 0xFFFFFFFF)
                if v is None or v > 65535:
                    args.err("Illegal queue_mapping\n")
                    raise CmdFailed(-1)
                p["queue_mapping"] = v
            elif args.m("priority"):
                c = get_tc_classid(args.next_arg())
                if c is None:
                    args.err("Illegal priority\n")
                    raise CmdFailed(-1)
                p["priority"] = c
            elif args.m("mark"):
                value, slash, mask = args.next_arg().partition("/")
                mark = get_u32(value, 0)
                if mark is None:
                    args.err("Illegal mark\n")
                    raise CmdFailed(-1)
                p["mark"] = mark
                if slash:
                    m = get_u32(mask, 0)
                    if m is None:
                        args.err("Illegal mask\n")
                        raise CmdFailed(-1)
                    p["mask"] = m
            elif args.m("ptype"):
                args.next_arg()
                for name, num in PTYPES:
                    if args.m(name):
                        p["ptype"] = num
                        break
                else:
                    args.err(f"Illegal ptype ({args.cur})\n")
                    raise CmdFailed(-1)
            elif args.m("inheritdsfield"):
                p["inheritdsfield"] = True
            elif args.m("help"):
                args.err(USAGE)
                raise CliExit(255)
            else:
                break
            ok += 1
            args.fwd()
        control = parse_control_dflt(args, TC_ACT_PIPE)
        index = 0
        if args and args.m("index"):
            got = get_u32(args.next_arg(), 10)
            if got is None:
                args.err('Pedit: Illegal "index"\n')
                raise CmdFailed(-1)
            index = got
            args.fwd()
            ok += 1
        if not ok:
            args.err(USAGE)
            raise CmdFailed(-1)
        return KindSpec(SkbeditParams(**p), index, control)  # type: ignore[arg-type]

    def init(self, spec: KindSpec, env: InitEnv) -> SkbeditParams:
        p: SkbeditParams = spec.params
        if (p.mark is None and p.priority is None and p.queue_mapping is None
                and p.ptype is None and not p.inheritdsfield) and not env.bind:
            raise KernelError(errno.EINVAL)
        return p

    def print(self, out: Out, action: Action | None, now: float, stats: bool) -> None:
        out.string("kind", "skbedit ", "skbedit")
        if action is None:
            return
        p: SkbeditParams = action.params
        if p.queue_mapping is not None:
            out.uint("queue_mapping", f"queue_mapping {p.queue_mapping}", p.queue_mapping)
        if p.priority is not None:
            out.string("priority", f" priority {classid_str(p.priority)}",
                       classid_str(p.priority))
        if p.mark is not None:
            out.uint("mark", f" mark {p.mark}", p.mark)
        if p.mask is not None:
            out.hex("mask", f"/{p.mask:#x}" if p.mask else "/0", p.mask)
        if p.ptype is not None:
            name = next((n for n, v in PTYPES if v == p.ptype), str(p.ptype))
            out.string("ptype", f" ptype {name}", name)
        if p.inheritdsfield:
            out.bool("inheritdsfield", " inheritdsfield", True)
        print_control(out, " ", action.control, "")
        out.nl()
        out.uint("index", f"\t index {action.index}", action.index)
        out.uint("ref", f" ref {action.refcnt}", action.refcnt)
        out.uint("bind", f" bind {action.bindcnt}", action.bindcnt)
        if stats:
            print_tm(out, action.stats, now)
        out.nl()

    def act(self, action: Action, skb: Skb, env: Env) -> int:
        p: SkbeditParams = action.params
        action.stats.use(skb.len, env.now)
        if p.mark is not None:
            mask = 0xFFFFFFFF if p.mask is None else p.mask
            skb.mark = (skb.mark & ~mask & 0xFFFFFFFF) | (p.mark & mask)
        if p.priority is not None:
            skb.priority = p.priority
        verdict = action.control
        if verdict == TC_ACT_SHOT:
            action.stats.drops += 1
        return verdict


KIND = SkbeditKind()
