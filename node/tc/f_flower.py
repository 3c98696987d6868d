"""cls_flower, the iproute2 parsing side: tc/f_flower.c flower_parse_opt.

Parses the match list of ``tc filter ... flower`` into a FlowerKey (with the
checks and messages of f_flower.c: "Illegal \\"dst_ip\\"", "What is ...").
Printing (flower_print_opt) is node/tc/f_flower_show.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from node.tc.args import (
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_ALL,
    ETH_P_IP,
    ETH_P_IPV6,
    Args,
    get_prefix,
    get_u8,
    get_u16,
    get_unsigned,
    hex2mem,
    ll_proto_a2n,
    mac_parse,
)
from node.tc.cls_flower import (
    CLS_FLAGS_SKIP_HW,
    CLS_FLAGS_SKIP_SW,
    CLS_FLAGS_VERBOSE,
    IPPROTO_SCTP,
    KEY_FLAGS_FRAG_IS_FIRST,
    KEY_FLAGS_IS_FRAGMENT,
    FlowerKey,
)
from node.tc.errors import CmdFailed
from node.tc.skb import CT_STATE_NAMES

if TYPE_CHECKING:
    pass

EXPLAIN = (
    "Usage: ... flower\t[ MATCH-LIST ] [ verbose ]\n"
    "\t\t\t[ skip_sw | skip_hw ]\n"
    "\t\t\t[ action ACTION-SPEC ] [ classid CLASSID ]\n"
    "\n"
    "Where: MATCH-LIST := [ MATCH-LIST ] MATCH\n"
    "       MATCH      := {\tindev DEV-NAME |\n"
    "\t\t\tvlan_id VID |\n\t\t\tvlan_prio PRIORITY |\n"
    "\t\t\tvlan_ethtype [ ipv4 | ipv6 | ETH-TYPE ] |\n"
    "\t\t\tdst_mac MASKED-LLADDR |\n\t\t\tsrc_mac MASKED-LLADDR |\n"
    "\t\t\tip_proto [tcp | udp | sctp | icmp | icmpv6 | IP-PROTO ] |\n"
    "\t\t\tip_tos MASKED-IP_TOS |\n\t\t\tip_ttl MASKED-IP_TTL |\n"
    "\t\t\tdst_ip PREFIX |\n\t\t\tsrc_ip PREFIX |\n"
    "\t\t\tdst_port PORT-NUMBER |\n\t\t\tsrc_port PORT-NUMBER |\n"
    "\t\t\ttcp_flags MASKED-TCP_FLAGS |\n"
    "\t\t\ttype MASKED-ICMP-TYPE |\n\t\t\tcode MASKED-ICMP-CODE |\n"
    "\t\t\tip_flags IP-FLAGS |\n"
    "\t\t\tct_state MASKED_CT_STATE |\n\t\t\tct_label MASKED_CT_LABEL |\n"
    "\t\t\tct_mark MASKED_CT_MARK |\n\t\t\tct_zone MASKED_CT_ZONE }\n"
    "\tFILTERID := X:Y:Z\n"
    "\tMASKED_LLADDR := { LLADDR | LLADDR/MASK | LLADDR/BITS }\n"
    "\tMASKED_CT_STATE := combination of {+|-} and flags trk,est,new,rel,inv,rpl\n"
    "\tACTION-SPEC := ... look at individual actions\n"
    "\n"
    "NOTE:\tCLASSID, IP-PROTO are parsed as hexadecimal input.\n"
    "NOTE:\tThere can be only used one mask per one prio. If user needs\n"
    "\tto specify different mask, he has to use different prio.\n")
MATCHING_FLAGS = (("frag", KEY_FLAGS_IS_FRAGMENT), ("firstfrag", KEY_FLAGS_FRAG_IS_FIRST))
ParseActions = Callable[[Args], Any]


class Bad(Exception):
    """A flower_parse_* helper failed; the caller prints Illegal "<key>"."""


def _fail(args: Args, key: str) -> CmdFailed:
    args.err(f'Illegal "{key}"\n')
    return CmdFailed(-1)


def parse(args: Args, protocol: int, parse_actions: ParseActions) -> dict[str, Any]:
    """flower_parse_opt: the words after "flower" (and its handle) into a key,
    flags, classid and the action list. Raises CmdFailed (exit 1 from tc)."""
    k: dict[str, Any] = {}
    flags = 0
    classid = None
    actions: Any = ()
    eth_type = protocol
    vlan_ethtype = 0
    ip_proto = 0xFF
    mtf = mtf_mask = 0
    while args:
        w = args.cur
        if args.m("classid") or args.m("flowid"):
            from node.tc.act_skbedit import get_tc_classid

            classid = get_tc_classid(args.next_arg())
            if classid is None:
                raise _fail(args, "classid")
        elif args.m("ip_flags"):
            got = _matching_flags(args.next_arg(), mtf, mtf_mask)
            if got is None:
                raise _fail(args, "ip_flags")
            mtf, mtf_mask = got
        elif args.m("verbose"):
            flags |= CLS_FLAGS_VERBOSE
        elif args.m("skip_hw"):
            flags |= CLS_FLAGS_SKIP_HW
        elif args.m("skip_sw"):
            flags |= CLS_FLAGS_SKIP_SW
        elif args.m("ct_state"):
            state = _ct_state(args.next_arg())
            if state is None:
                raise _fail(args, "ct_state")
            k["ct_state"] = state
        elif args.m("ct_zone"):
            k["ct_zone"] = _masked(args, 0xFFFF, "ct_zone")
        elif args.m("ct_mark"):
            k["ct_mark"] = _masked(args, 0xFFFFFFFF, "ct_mark")
        elif args.m("ct_label"):
            k["ct_label"] = _labels(args, args.next_arg())
        elif args.m("indev"):
            name = args.next_arg()
            if not name or len(name) >= 16 or "/" in name or any(c.isspace() for c in name):
                raise args.invarg('"indev" not a valid ifname', name)
            k["indev"] = name
        elif args.m("vlan_id") or args.m("vlan_prio"):
            is_id = args.m("vlan_id")
            value = args.next_arg()
            key = "vlan_id" if is_id else "vlan_prio"
            if protocol not in (ETH_P_8021Q, ETH_P_8021AD):
                args.err(f'Can\'t set "{key}" if ethertype isn\'t 802.1Q or 802.1AD\n')
                raise CmdFailed(-1)
            got_v = get_u16(value, 10) if is_id else get_u8(value, 10)
            if got_v is None or got_v & (~0xFFF if is_id else ~0x7):
                raise _fail(args, key)
            k[key] = got_v
        elif args.m("vlan_ethtype"):
            value = args.next_arg()
            if eth_type not in (ETH_P_8021Q, ETH_P_8021AD):
                args.err('Can\'t set "vlan_ethtype" if ethertype isn\'t 802.1Q or 802.1AD\n')
                raise CmdFailed(-1)
            got_e = ll_proto_a2n(value)
            if got_e is None:
                raise args.invarg("invalid vlan_ethtype", value)
            k["vlan_ethtype"] = vlan_ethtype = eth_type = got_e
        elif args.m("dst_mac") or args.m("src_mac"):
            key = "dst_mac" if args.m("dst_mac") else "src_mac"
            mac = _eth_addr(args.next_arg())
            if mac is None:
                raise _fail(args, key)
            k["eth_dst" if key == "dst_mac" else "eth_src"] = mac
        elif args.m("ip_proto"):
            proto = _ip_proto(args, args.next_arg(), eth_type)
            if proto is None:
                raise _fail(args, "ip_proto")
            k["ip_proto"] = ip_proto = proto
        elif args.m("ip_tos") or args.m("ip_ttl"):
            key = "ip_tos" if args.m("ip_tos") else "ip_ttl"
            got_t = _tos_ttl(args.next_arg())
            if got_t is None:
                raise _fail(args, key)
            k[key] = got_t
        elif args.m("dst_ip") or args.m("src_ip"):
            key = "dst_ip" if args.m("dst_ip") else "src_ip"
            ip = _ip_addr(args, args.next_arg(), eth_type)
            if ip is None:
                raise _fail(args, key)
            k[key] = ip
        elif args.m("dst_port") or args.m("src_port"):
            key = "dst_port" if args.m("dst_port") else "src_port"
            port = _port(args, args.next_arg(), ip_proto)
            if port is None:
                raise _fail(args, key)
            k[key + ("_range" if port[0] == "range" else "")] = port[1]
        elif args.m("tcp_flags"):
            tf = _tcp_flags(args.next_arg())
            if tf is None:
                raise _fail(args, "tcp_flags")
            k["tcp_flags"] = tf
        elif args.m("type") or args.m("code"):
            field = "type" if args.m("type") else "code"
            value = args.next_arg()
            icmp_ok = (eth_type == ETH_P_IP and ip_proto == 1) or \
                (eth_type == ETH_P_IPV6 and ip_proto == 58)
            got_i = _masked_u8(value) if icmp_ok else None
            if got_i is None:
                raise _fail(args, f"icmp {field}")
            k[f"icmp_{field}"] = got_i
        elif args.m("action"):
            args.next_arg()
            try:
                actions = parse_actions(args)
            except CmdFailed:
                args.err('Illegal "action"\n')
                raise
            continue
        elif w == "help":
            args.err(EXPLAIN)
            raise CmdFailed(-1)
        else:
            args.err(f'What is "{w}"?\n')
            args.err(EXPLAIN)
            raise CmdFailed(-1)
        args.fwd()
    if mtf_mask:
        k["ip_flags"] = (mtf, mtf_mask)
    if protocol != ETH_P_ALL:
        k["eth_type"] = vlan_ethtype or protocol
    return {"key": FlowerKey(**k), "flags": flags, "classid": classid, "actions": actions}


# ---------------------------------------------------------------- helpers
def _masked(args: Args, limit: int, key: str) -> tuple[int, int]:
    """flower_parse_u16/u32: VALUE[/MASK], base 0."""
    value_s, slash, mask_s = args.next_arg().partition("/")
    value = get_unsigned(value_s, 0, limit)
    mask = get_unsigned(mask_s, 0, limit) if slash else limit
    if value is None or mask is None:
        raise _fail(args, key)
    return value, mask


def _masked_u8(text: str) -> tuple[int, int] | None:
    """flower_parse_u8 (base 10 value and mask)."""
    value_s, slash, mask_s = text.partition("/")
    value = get_u8(value_s, 10)
    mask = get_u8(mask_s, 10) if slash else 0xFF
    return None if value is None or mask is None else (value, mask)


def _ct_state(text: str) -> tuple[int, int] | None:
    """flower_parse_ct_state: {+|-}flag... with strncmp prefix names."""
    flags = mask = 0
    i = 0
    while i < len(text):
        if text[i] not in "+-":
            return None
        for name, bit in CT_STATE_NAMES:
            if text.startswith(name, i + 1):
                if text[i] == "+":
                    flags |= bit
                mask |= bit
                i += len(name) + 1
                break
        else:
            return None
    return flags, mask


def _labels(args: Args, text: str) -> tuple[bytes, bytes]:
    value_s, slash, mask_s = text.partition("/")
    if len(value_s) > 32 or len(mask_s) > 32:
        raise args.invarg(f"{len(value_s)} Max allowed size 32", value_s)
    value = hex2mem(value_s, len(value_s) // 2)
    if value is None:
        raise args.invarg("labels must be a hex string\n", value_s)
    mask = hex2mem(mask_s, len(mask_s) // 2) if slash else b"\xff" * 16
    if mask is None:
        raise args.invarg("labels mask must be a hex string\n", mask_s)
    return value.ljust(16, b"\0")[:16], mask.ljust(16, b"\0")[:16]


def _matching_flags(text: str, mtf: int, mask: int) -> tuple[int, int] | None:
    for token in (t for t in text.split("/") if t):
        no = token.startswith("no")
        name = token[2:] if no else token
        for flag_name, bit in MATCHING_FLAGS:
            if name == flag_name:
                mtf = mtf & ~bit if no else mtf | bit
                mask |= bit
                break
        else:
            return None
    return mtf, mask


def _eth_addr(text: str) -> tuple[bytes, bytes] | None:
    addr_s, slash, mask_s = text.partition("/")
    addr = mac_parse(addr_s)
    if addr is None:
        return None
    if not slash:
        return addr, b"\xff" * 6
    bits = get_unsigned(mask_s, 10, 0xFFFFFFFF)
    if bits is not None:
        value = ((1 << 48) - 1) ^ ((1 << max(0, 48 - bits)) - 1) if bits <= 48 else 0
        return addr, value.to_bytes(6, "big")
    mask = mac_parse(mask_s)
    return None if mask is None else (addr, mask)


def _ip_proto(args: Args, text: str, eth_type: int) -> int | None:
    if eth_type not in (ETH_P_IP, ETH_P_IPV6):
        args.err('Illegal "eth_type" for ip proto\n')
        return None
    for name, num, fam in (("tcp", 6, 0), ("udp", 17, 0), ("sctp", IPPROTO_SCTP, 0),
                           ("icmp", 1, ETH_P_IP), ("icmpv6", 58, ETH_P_IPV6)):
        if text and name.startswith(text):
            if fam and eth_type != fam:
                args.err('Illegal "eth_type" for ip proto\n')
                return None
            return num
    return get_u8(text, 16)


def _tos_ttl(text: str) -> tuple[int, int] | None:
    value_s, slash, mask_s = text.partition("/")
    value = get_u8(value_s, 10)
    if value is None:
        value = get_u8(value_s, 16)
    mask = get_u8(mask_s, 16) if slash else 0xFF
    return None if value is None or mask is None else (value, mask)


def _ip_addr(args: Args, text: str, eth_type: int) -> tuple[int, bytes, bytes] | None:
    family = {ETH_P_IP: 4, ETH_P_IPV6: 6, 0: 0}.get(eth_type)
    if family is None:
        return None
    prefix = get_prefix(text, family)
    if prefix is None:
        return None
    width = 32 if prefix.family == 4 else 128
    mask = (((1 << width) - 1) ^ ((1 << (width - prefix.bitlen)) - 1)).to_bytes(width // 8,
                                                                              "big")
    return prefix.family, prefix.addr, mask


def _port(args: Args, text: str, ip_proto: int) -> tuple[str, Any] | None:
    """flower_parse_port: N, MIN-MAX or N/MASK (0 is no port)."""
    lo_s, dash, hi_s = text.partition("-")
    lo = get_u16(lo_s, 10)
    hi = get_u16(hi_s, 10) if dash else 0
    if lo is None or hi is None:
        if "/" not in text:
            return None
        if ip_proto not in (6, 17, IPPROTO_SCTP):
            return None
        value_s, _, mask_s = text.partition("/")
        value = get_u16(value_s, 0)
        mask = get_u16(mask_s, 0)
        return None if value is None or mask is None else ("single", (value, mask))
    if lo and hi:
        if hi <= lo:
            args.err("max value should be greater than min value\n")
            return None
        if ip_proto not in (6, 17, IPPROTO_SCTP):
            return None
        return "range", (lo, hi)
    if lo and not hi:
        if ip_proto not in (6, 17, IPPROTO_SCTP):
            return None
        return "single", (lo, 0xFFFF)
    return None


def _tcp_flags(text: str) -> tuple[int, int] | None:
    value_s, slash, mask_s = text.partition("/")
    value = get_u16(value_s, 16)
    if value is None or value & ~0xFFF:
        return None
    mask = get_u16(mask_s, 16) if slash else 0xFFF
    if mask is None or mask & ~0xFFF:
        return None
    return value, mask
