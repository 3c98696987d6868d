"""act_ct, the iproute2 side: tc/m_ct.c (parse_ct, print_ct, ct_print_nat).

The kernel side (tcf_ct_init's checks, tcf_ct_act) is node/tc/act_ct.py; this
module turns `ct ...` words into the TCA_CT_* attributes and prints a dumped
action back the way `tc actions show` / `tc filter show` do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node.tc.act_ct import (
    AF_INET,
    AF_INET6,
    CT_ACT_CLEAR,
    CT_ACT_COMMIT,
    CT_ACT_FORCE,
    CT_ACT_NAT,
    CT_ACT_NAT_DST,
    CT_ACT_NAT_SRC,
    LABELS_SIZE,
    NO_LABELS,
    PROTO_NAMES,
    CtParams,
)
from node.tc.action import Action, KindSpec
from node.tc.args import Args, addr_str, get_addr, get_u16, get_u32, hex2mem
from node.tc.errors import CliExit, CmdFailed
from node.tc.stats import print_tm
from node.tc.verdict import TC_ACT_PIPE, parse_control_dflt, print_control

if TYPE_CHECKING:
    from node.tc.out import Out

USAGE = ("Usage: ct clear\n"
         "\tct commit [force] [zone ZONE] [mark MASKED_MARK] [label MASKED_LABEL] "
         "[nat NAT_SPEC] [helper HELPER]\n"
         "\tct [nat] [zone ZONE]\n"
         "Where: ZONE is the conntrack zone table number\n"
         "\tNAT_SPEC is {src|dst} addr addr1[-addr2] [port port1[-port2]]\n"
         "\tHELPER is family-proto-name such as ipv4-tcp-ftp\n\n")


def parse_ct(args: Args) -> KindSpec:
    """parse_ct: the words after `action ct` up to the control verb."""
    attrs: dict[str, Any] = {}
    ct_action = 0
    index = 0
    if args and args.m("ct"):
        args.fwd()
    while args:
        if args.m("zone"):
            zone = get_u16(args.next_arg(), 0)
            if zone is None:
                args.err('ct: Illegal "zone"\n')
                raise CmdFailed(-1)
            attrs["zone"] = zone
        elif args.m("nat"):
            ct_action |= CT_ACT_NAT
            args.next_arg()
            if args.m("src"):
                ct_action |= CT_ACT_NAT_SRC
            elif args.m("dst"):
                ct_action |= CT_ACT_NAT_DST
            else:
                continue
            args.next_arg()
            if not args.m("addr"):
                args.err(USAGE)
                raise CliExit(255)
            rng = _addr_range(args.next_arg())
            if rng is None:
                args.err("ct: Illegal nat address range\n")
                raise CmdFailed(-1)
            attrs["addr"] = rng
            args.next_arg()
            if not args.m("port"):
                continue
            ports = _port_range(args.next_arg())
            if ports is None:
                args.err("ct: Illegal nat port range\n")
                raise CmdFailed(-1)
            attrs["ports"] = ports
        elif args.m("clear"):
            ct_action |= CT_ACT_CLEAR
        elif args.m("commit"):
            ct_action |= CT_ACT_COMMIT
        elif args.m("force"):
            ct_action |= CT_ACT_FORCE
        elif args.m("index"):
            got = get_u32(args.next_arg(), 10)
            if got is None:
                args.err('ct: Illegal "index"\n')
                raise CmdFailed(-1)
            index = got
        elif args.m("mark"):
            mark = _masked_u32(args.next_arg())
            if mark is None:
                args.err('ct: Illegal "mark"\n')
                raise CmdFailed(-1)
            attrs["mark"] = mark
        elif args.m("label"):
            attrs["labels"] = _labels(args, args.next_arg())
        elif args.m("help"):
            args.err(USAGE)
            raise CliExit(255)
        elif args.m("helper"):
            helper = _helper(args.next_arg())
            if helper is None:
                args.err('ct: Illegal "helper"\n')
                raise CmdFailed(-1)
            attrs["helper"] = helper
        else:
            break
        args.fwd()
    if ct_action & CT_ACT_CLEAR and ct_action & ~CT_ACT_CLEAR:
        args.err("ct: clear can only be used alone\n")
        raise CmdFailed(-1)
    if ct_action & CT_ACT_NAT_SRC and ct_action & CT_ACT_NAT_DST:
        args.err("ct: src and dst nat can't be used together\n")
        raise CmdFailed(-1)
    if ct_action & CT_ACT_COMMIT and ct_action & CT_ACT_NAT \
            and not ct_action & (CT_ACT_NAT_SRC | CT_ACT_NAT_DST):
        args.err("ct: commit and nat must set src or dst\n")
        raise CmdFailed(-1)
    if not ct_action & CT_ACT_COMMIT and ct_action & (CT_ACT_NAT_SRC | CT_ACT_NAT_DST):
        args.err("ct: src or dst is only valid if commit is set\n")
        raise CmdFailed(-1)
    control = parse_control_dflt(args, TC_ACT_PIPE)
    attrs["ct_action"] = ct_action
    return KindSpec(attrs, index, control)


def print_ct(out: Out, action: Action | None, now: float, stats: bool) -> None:
    """print_ct: kind, ct verb, mark/zone/label/helper/nat, control, index line."""
    out.string("kind", "ct", "ct")
    if action is None:
        return
    p: CtParams = action.params
    if p.ct_action & CT_ACT_COMMIT:
        word = "commit force" if p.ct_action & CT_ACT_FORCE else "commit"
        out.string("action", f" {word}", word)
    elif p.ct_action & CT_ACT_CLEAR:
        out.string("action", " clear", "clear")
    if not p.ct_action & CT_ACT_CLEAR:
        if p.mark_mask:
            out.fp(" mark ")
            out.uint("mark", str(p.mark), p.mark)
            if p.mark_mask != 0xFFFFFFFF:
                out.hex("mark_mask", f"/0x{p.mark_mask:x}", p.mark_mask)
        out.fp(" zone ")
        out.uint("zone", str(p.zone), p.zone)
        if p.labels_mask != NO_LABELS:
            text = p.labels.hex()
            if p.labels_mask != b"\xff" * LABELS_SIZE:
                text += "/" + p.labels_mask.hex()
            out.string("label", f" label {text}", text)
        if p.helper is not None:
            family, proto, name = p.helper
            fam = "ipv4" if family == AF_INET else "ipv6"
            helper = f"{fam}-{PROTO_NAMES.get(proto, str(proto))}-{name}"
            out.string("helper", f" helper {helper}", helper)
        if p.ct_action & CT_ACT_NAT:
            text = _nat_text(p)
            out.string("nat", f" nat {text}" if text else " nat", text)
    print_control(out, " ", action.control, "")
    out.nl()
    out.uint("index", f"\t index {action.index}", action.index)
    out.uint("ref", f" ref {action.refcnt}", action.refcnt)
    out.uint("bind", f" bind {action.bindcnt}", action.bindcnt)
    if stats:
        print_tm(out, action.stats, now)
    out.nl()


def _masked_u32(text: str) -> tuple[int, int] | None:
    value_s, slash, mask_s = text.partition("/")
    value = get_u32(value_s, 0)
    mask = get_u32(mask_s, 0) if slash else 0xFFFFFFFF
    return None if value is None or mask is None else (value, mask)


def _labels(args: Args, text: str) -> tuple[bytes, bytes]:
    """ct_parse_labels: HEX[/HEX], at most 32 digits each, value left-aligned."""
    value_s, slash, mask_s = text.partition("/")
    if len(value_s) > LABELS_SIZE * 2 or len(mask_s) > LABELS_SIZE * 2:
        raise args.invarg(f"{len(value_s)} Max allowed size {LABELS_SIZE * 2}", value_s)
    value = hex2mem(value_s, len(value_s) // 2)
    if value is None:
        raise args.invarg("ct: labels must be a hex string\n", value_s)
    if slash:
        mask = hex2mem(mask_s, len(mask_s) // 2)
        if mask is None:
            raise args.invarg("ct: labels mask must be a hex string\n", mask_s)
    else:
        mask = b"\xff" * LABELS_SIZE
    return value, mask


def _helper(text: str) -> tuple[int, int, str] | None:
    """ct_parse_helper: family-proto-name (sscanf "%[^-]-%[^-]-%[^-]")."""
    if len(text) >= 32:
        return None
    parts = text.split("-")
    if len(parts) < 3 or not all(parts[:3]):
        return None
    fam, proto_s, name = parts[0], parts[1], parts[2]
    family = {"ipv4": AF_INET, "ipv6": AF_INET6}.get(fam)
    if family is None:
        return None
    by_name = {v: k for k, v in PROTO_NAMES.items()} | {"ipv6-icmp": 58, "icmpv6": 58}
    proto = by_name.get(proto_s)
    if proto is None:
        proto = get_u8_proto(proto_s)
    return None if proto is None else (family, proto, name)


def get_u8_proto(text: str) -> int | None:
    value = get_u32(text, 10)
    return value if value is not None and value <= 255 else None


def _addr_range(text: str) -> tuple[bytes, bytes] | None:
    lo_s, dash, hi_s = text.partition("-")
    lo = get_addr(lo_s, 0)
    if lo is None:
        return None
    if not dash:
        return lo.addr, lo.addr
    hi = get_addr(hi_s, lo.family)
    return None if hi is None else (lo.addr, hi.addr)


def _port_range(text: str) -> tuple[int, int] | None:
    lo_s, dash, hi_s = text.partition("-")
    lo = get_u16(lo_s, 10)
    hi = get_u16(hi_s, 10) if dash else lo
    return None if lo is None or hi is None else (lo, hi)


def _nat_text(p: CtParams) -> str:
    """ct_print_nat's buffer: "" for a bare nat."""
    n = p.nat
    if n is None:
        return ""
    out = "src" if n.src else "dst"
    if n.min_addr is not None:
        out += f" addr {addr_str(n.min_addr)}"
        if n.max_addr is not None and n.max_addr != n.min_addr:
            out += f"-{addr_str(n.max_addr)}"
    if n.min_port is not None:
        out += f" port {n.min_port}"
        if n.max_port is not None and n.max_port != n.min_port:
            out += f"-{n.max_port}"
    return out
