"""cls_flower, the kernel side: the flow key, its validation and the lookup.

Kernel: net/sched/cls_flower.c (Linux 6.18): fl_set_key and fl_validate_ct_state
with their extack messages, filters grouped by mask (fl_check_assign_mask; a
lookup tries the masks in creation order and takes the first filter whose masked
key equals the packet's, skipping skip_sw filters), duplicate keys refused
(fl_ht_insert_unique: EEXIST), handles from 1 (idr).

The packet side of the key comes from the flow dissector: addresses, ports,
ICMP, TCP flags, fragment flags, and the ct view of node.tc.skb.ct_key().
The iproute2 side is node/tc/f_flower.py (parse) and f_flower_show.py (print).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from node.packet import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Icmp, Tcp, Udp
from node.tc.args import ETH_P_ALL, ETH_P_IP, ETH_P_IPV6
from node.tc.errors import KernelError
from node.tc.skb import CT_ESTABLISHED, CT_INVALID, CT_NEW, CT_REPLY, CT_TRACKED

if TYPE_CHECKING:
    from node.tc.skb import Skb

IPPROTO_SCTP = 132
# TCA_CLS_FLAGS_* (include/uapi/linux/pkt_cls.h)
CLS_FLAGS_SKIP_HW = 1 << 0
CLS_FLAGS_SKIP_SW = 1 << 1
CLS_FLAGS_IN_HW = 1 << 2
CLS_FLAGS_NOT_IN_HW = 1 << 3
CLS_FLAGS_VERBOSE = 1 << 4
# TCA_FLOWER_KEY_FLAGS_*
KEY_FLAGS_IS_FRAGMENT = 1 << 0
KEY_FLAGS_FRAG_IS_FIRST = 1 << 1

Masked = tuple[int, int]  # (value, mask)


@dataclass(frozen=True, slots=True)
class FlowerKey:
    """The attributes of one flower filter (unmasked values, as dumped)."""

    indev: str | None = None
    eth_dst: tuple[bytes, bytes] | None = None
    eth_src: tuple[bytes, bytes] | None = None
    vlan_id: int | None = None
    vlan_prio: int | None = None
    vlan_ethtype: int | None = None
    eth_type: int | None = None
    ip_proto: int | None = None
    ip_tos: Masked | None = None
    ip_ttl: Masked | None = None
    dst_ip: tuple[int, bytes, bytes] | None = None  # (family, address, mask)
    src_ip: tuple[int, bytes, bytes] | None = None
    dst_port: Masked | None = None
    src_port: Masked | None = None
    dst_port_range: tuple[int, int] | None = None
    src_port_range: tuple[int, int] | None = None
    tcp_flags: Masked | None = None
    icmp_type: Masked | None = None
    icmp_code: Masked | None = None
    ip_flags: Masked | None = None
    ct_state: Masked | None = None
    ct_zone: Masked | None = None
    ct_mark: Masked | None = None
    ct_label: tuple[bytes, bytes] | None = None

    def mask_signature(self) -> tuple[Any, ...]:
        """What identifies the filter's fl_flow_mask: which keys, under which masks."""
        sig: list[Any] = []
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if f.name in ("dst_ip", "src_ip"):
                sig.append((f.name, v[0], v[2]))
            elif f.name in ("dst_port_range", "src_port_range", "indev", "vlan_id",
                            "vlan_prio", "vlan_ethtype", "eth_type", "ip_proto"):
                sig.append(f.name)
            else:
                sig.append((f.name, v[1]))
        return tuple(sig)

    def masked(self) -> tuple[Any, ...]:
        """The masked key (fl_set_masked_key), for duplicate detection."""
        out: list[Any] = []
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None or f.name.endswith("_range") or not isinstance(v, tuple):
                out.append(v)
            elif f.name in ("dst_ip", "src_ip"):
                out.append(bytes(a & m for a, m in zip(v[1], v[2], strict=True)))
            elif isinstance(v[0], bytes):
                out.append(bytes(a & m for a, m in zip(v[0], v[1], strict=True)))
            else:
                out.append(v[0] & v[1])
        return tuple(out)


def validate_ct_state(state: int) -> None:
    """fl_validate_ct_state on key & mask: only the positively set flags count."""
    if state and not state & CT_TRACKED:
        raise KernelError(errno.EINVAL, "no trk, so no other flag can be set")
    if state & CT_NEW and state & CT_ESTABLISHED:
        raise KernelError(errno.EINVAL, "new and est are mutually exclusive")
    if state & CT_INVALID and state & ~(CT_TRACKED | CT_INVALID):
        raise KernelError(errno.EINVAL, "when inv is set, only trk may be set")
    if state & CT_NEW and state & CT_REPLY:
        raise KernelError(errno.EINVAL, "new and rpl are mutually exclusive")


def check_key(key: FlowerKey, flags: int) -> None:
    """fl_change's checks before the key is installed (tc_flags_valid, fl_set_key)."""
    if flags & CLS_FLAGS_SKIP_HW and flags & CLS_FLAGS_SKIP_SW:
        raise KernelError(errno.EINVAL)
    for rng, name in ((key.dst_port_range, "destination"), (key.src_port_range, "source")):
        if rng is not None and rng[1] <= rng[0]:
            raise KernelError(
                errno.EINVAL,
                f"Invalid {name} port range (min must be strictly smaller than max)")
    if key.ct_state is not None:
        validate_ct_state(key.ct_state[0] & key.ct_state[1])


# ---------------------------------------------------------------- matching
Pred = Callable[["Skb"], bool]


def match_source(key: FlowerKey, ipv4: bool = False) -> tuple[str, dict[str, Any]]:
    """The key as one Python expression over `skb` (and `pkt` = skb.pkt), with the
    names it uses (the dissector + fl_mask_lookup). `ipv4`: the expression runs
    only for IPv4 packets (behind the proto's protocol check), so an eth_type ip
    key needs no test of its own.

    The common keys (family, ip_proto, exact addresses, ports, ct_state, tos/ttl)
    become `and`-ed comparisons with the key's constants bound in; the rarer ones
    are predicates it calls. All terms are pure and total, so their order does not
    change the answer. The names are `_k<N>`."""
    terms: list[str] = []
    names: dict[str, Any] = {}

    def bind(value: Any) -> str:
        name = f"_k{len(names)}"
        names[name] = value
        return name

    def call(pred: Pred) -> None:
        terms.append(f"{bind(pred)}(skb)")

    family = {ETH_P_IP: 4, ETH_P_IPV6: 6}.get(key.eth_type or 0)
    if key.eth_type is not None and key.eth_type != ETH_P_ALL:
        if family is None:
            return "False", names  # no VLAN/ARP/MPLS frames in this datapath
        if not (ipv4 and family == 4):
            terms.append(f"pkt.family == {family}")
    if key.vlan_id is not None or key.vlan_prio is not None or key.vlan_ethtype is not None:
        return "False", names
    if key.ct_state is not None:
        sv, sm = key.ct_state
        terms.append(f"skb.ct_state & {sm} == {sv & sm}")
    if key.indev is not None:
        terms.append(f"skb.dev == {bind(key.indev)}")
    for attr, name in (("dst_mac", key.eth_dst), ("src_mac", key.eth_src)):
        if name is not None:
            call(_mac_pred(attr, name[0], name[1]))
    if key.ip_proto is not None:
        terms.append(f"pkt.proto == {key.ip_proto}")
    if key.ip_tos is not None:
        tv, tm = key.ip_tos
        terms.append(f"pkt.tos & {tm} == {tv & tm}")
    if key.ip_ttl is not None:
        lv, lm = key.ip_ttl
        terms.append(f"pkt.ttl & {lm} == {lv & lm}")
    for attr, ip in (("dst", key.dst_ip), ("src", key.src_ip)):
        if ip is not None:
            if int.from_bytes(ip[2], "big") == (1 << len(ip[1]) * 8) - 1:
                terms.append(f"pkt.{attr} == {bind(ip[1])}")
            else:
                call(_ip_pred(attr, ip[1], ip[2]))
    ports: list[str] = []
    for index, single, rng in ((1, key.dst_port, key.dst_port_range),
                               (0, key.src_port, key.src_port_range)):
        attr = "dport" if index else "sport"
        if single is not None:
            ports.append(f"l4.{attr} & {single[1]} == {single[0] & single[1]}")
        if rng is not None:
            ports.append(f"{rng[0]} <= l4.{attr} <= {rng[1]}")
    if ports:  # _l4_ports(): TCP/UDP header, not a non-first fragment
        terms.append(f"not pkt.frag_offset and isinstance(l4 := pkt.l4, {bind(_PORT_L4)})")
        terms.extend(ports)
    if key.tcp_flags is not None:
        fv, fm = key.tcp_flags
        call(lambda skb: isinstance(skb.pkt.l4, Tcp)
             and skb.pkt.l4.flags & 0xFFF & fm == fv & fm)
    if key.icmp_type is not None or key.icmp_code is not None:
        call(_icmp_pred(key.icmp_type, key.icmp_code))
    if key.ip_flags is not None:
        gv, gm = key.ip_flags
        call(lambda skb: _frag_flags(skb) & gm == gv & gm)
    for pred in _ct_preds(key, with_state=False):
        call(pred)
    return " and ".join(terms) if terms else "True", names


def compile_key(key: FlowerKey) -> Pred:
    """The key as one predicate over a packet: match_source() as a generated
    function (one call per lookup)."""
    expr, names = match_source(key)
    if expr == "True":
        return _match_all
    if expr == "False":
        return _match_none
    source = f"def match(skb):\n{PKT_LINE if uses_pkt(expr) else ''}    return {expr}\n"
    exec(compile(source, f"<flower {key.mask_signature()!r}>", "exec"), names)
    match: Pred = names["match"]
    return match


PKT_LINE = "    pkt = skb.pkt\n"


def uses_pkt(expr: str) -> bool:
    """Whether a match_source() expression reads the local `pkt`."""
    return "pkt." in expr or "pkt)" in expr


def _match_all(skb: Skb) -> bool:
    return True


def _match_none(skb: Skb) -> bool:
    return False


_PORT_L4 = (Tcp, Udp)


def _mac_pred(attr: str, value: bytes, mask: bytes) -> Pred:
    want = bytes(v & m for v, m in zip(value, mask, strict=True))

    def pred(skb: Skb) -> bool:
        got = getattr(skb, attr) or bytes(6)
        return bytes(g & m for g, m in zip(got, mask, strict=True)) == want
    return pred


def _ip_pred(attr: str, addr: bytes, mask: bytes) -> Pred:
    width = len(addr) * 8
    m = int.from_bytes(mask, "big")
    want = int.from_bytes(addr, "big") & m
    if m == (1 << width) - 1:
        if attr == "dst":
            return lambda skb: skb.pkt.dst == addr
        return lambda skb: skb.pkt.src == addr

    def pred(skb: Skb) -> bool:
        raw = skb.pkt.dst if attr == "dst" else skb.pkt.src
        return len(raw) == len(addr) and int.from_bytes(raw, "big") & m == want
    return pred


def _icmp_pred(typ: Masked | None, code: Masked | None) -> Pred:
    tv, tm = typ if typ is not None else (0, 0)
    cv, cm = code if code is not None else (0, 0)

    def pred(skb: Skb) -> bool:
        l4 = skb.pkt.l4
        if not isinstance(l4, Icmp) or skb.pkt.proto not in (IPPROTO_ICMP, IPPROTO_ICMPV6):
            return False
        return l4.type & tm == tv & tm and l4.code & cm == cv & cm
    return pred


def _frag_flags(skb: Skb) -> int:
    pkt = skb.pkt
    if not pkt.is_fragment:
        return 0
    return KEY_FLAGS_IS_FRAGMENT | (KEY_FLAGS_FRAG_IS_FIRST if not pkt.frag_offset else 0)


def _ct_preds(key: FlowerKey, with_state: bool = True) -> list[Pred]:
    preds: list[Pred] = []
    if with_state and key.ct_state is not None:
        sv, sm = key.ct_state
        want = sv & sm
        preds.append(lambda skb: skb.ct_state & sm == want)
    if key.ct_zone is not None or key.ct_mark is not None or key.ct_label is not None:
        zv, zm = key.ct_zone if key.ct_zone is not None else (0, 0)
        mv, mm = key.ct_mark if key.ct_mark is not None else (0, 0)
        if key.ct_label is not None:
            lv = int.from_bytes(key.ct_label[0], "little")
            lm = int.from_bytes(key.ct_label[1], "little")
        else:
            lv = lm = 0

        def pred(skb: Skb) -> bool:
            _, zone, mark, labels = skb.ct_key()
            return (zone & zm == zv & zm and mark & mm == mv & mm
                    and labels & lm == lv & lm)
        preds.append(pred)
    return preds


PORT_PROTOS = frozenset({IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP})


class FlowerKind:
    """The classifier kind "flower" (tcf_proto_ops cls_fl_ops + iproute2's
    flower_filter_util)."""

    kind = "flower"

    def parse(self, args: Any, protocol: int, parse_actions: Any) -> dict[str, Any]:
        from node.tc import f_flower

        return f_flower.parse(args, protocol, parse_actions)

    def pre_change(self, tp: Any, key: FlowerKey | None) -> None:
        """fl_change without TCA_OPTIONS."""
        if key is None:
            raise KernelError(errno.EINVAL)

    def change(self, key: FlowerKey, flags: int) -> None:
        check_key(key, flags)

    def compile(self, key: FlowerKey) -> Pred:
        return compile_key(key)

    def match_source(self, key: FlowerKey, ipv4: bool = False) -> tuple[str, dict[str, Any]]:
        return match_source(key, ipv4)

    def print(self, out: Any, flt: Any, opts: Any, now: float) -> None:
        """flower_print_opt (terse when opts.brief: handle, flags, action kinds)."""
        from node.tc import f_flower_show, show

        if flt.handle:
            out.uint("handle", f"handle 0x{flt.handle:x} ", flt.handle)
        if flt.classid is not None:
            from node.tc.act_skbedit import classid_str

            text = classid_str(flt.classid)
            out.string("classid", f"classid {text} ", text)
        if opts.brief:  # a terse dump carries no keys
            f_flower_show.print_key(out, FlowerKey(), flt.flags, flt.in_hw_count)
        else:
            f_flower_show.print_key(out, flt.key, flt.flags, flt.in_hw_count)
        if flt.actions:
            show.print_actions(out, flt.actions, opts, now, terse=opts.brief)


KIND = FlowerKind()
