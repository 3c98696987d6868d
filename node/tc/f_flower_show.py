"""cls_flower, iproute2's printing side: tc/f_flower.c flower_print_opt and
its print_masked_* helpers, text and JSON, key order as ``tc filter show``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node.tc.args import ETH_P_IP, ETH_P_IPV6, addr_str, ll_proto_n2a, mac_str
from node.tc.cls_flower import (
    CLS_FLAGS_IN_HW,
    CLS_FLAGS_NOT_IN_HW,
    CLS_FLAGS_SKIP_HW,
    CLS_FLAGS_SKIP_SW,
    FlowerKey,
)
from node.tc.f_flower import MATCHING_FLAGS
from node.tc.skb import CT_STATE_NAMES

if TYPE_CHECKING:
    from node.tc.out import Out

IP_PROTOS = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "icmpv6"}


def _mask_bits(mask: bytes) -> int:
    """__mask_bits: prefix length of a contiguous mask, -1 otherwise."""
    value = int.from_bytes(mask, "big")
    width = len(mask) * 8
    bits = bin(value).count("1")
    return bits if value == ((1 << width) - 1) ^ ((1 << (width - bits)) - 1) else -1


def _key_line(out: Out, name: str, text: str, value: Any) -> None:
    out.nl()
    out.any(name, f"  {name} {text}", value)


def _masked_line(out: Out, name: str, value: int, mask: int, full: int) -> None:
    """print_masked_u8/u16/u32(..., newline=true)."""
    out.fp(out.sl + "  ")
    out.fp(f"{name} ")
    out.uint(name, str(value), value)
    if mask != full:
        out.hex(f"{name}_mask", f"/0x{mask:x}", mask)


def print_key(out: Out, key: FlowerKey, flags: int, in_hw_count: int) -> None:
    """flower_print_opt after the handle: indev, keys, flags (actions are printed
    by the caller)."""
    if key.indev is not None:
        _key_line(out, "indev", key.indev, key.indev)
    out.open_object("keys")
    if key.vlan_id is not None:
        _key_line(out, "vlan_id", str(key.vlan_id), key.vlan_id)
    if key.vlan_prio is not None:
        _key_line(out, "vlan_prio", str(key.vlan_prio), key.vlan_prio)
    if key.vlan_ethtype is not None:
        name = ll_proto_n2a(key.vlan_ethtype)
        _key_line(out, "vlan_ethtype", name, name)
    for label, mac in (("dst_mac", key.eth_dst), ("src_mac", key.eth_src)):
        if mac is not None:
            text = mac_str(mac[0])
            bits = _mask_bits(mac[1])
            if bits < 0:
                text += "/" + mac_str(mac[1])
            elif bits < 48:
                text += f"/{bits}"
            _key_line(out, label, text, text)
    if key.eth_type is not None:
        et = {ETH_P_IP: "ipv4", ETH_P_IPV6: "ipv6", 0x0806: "arp", 0x8035: "rarp"}.get(
            key.eth_type, f"{key.eth_type:04x}")
        _key_line(out, "eth_type", et, et)
    if key.ip_proto is not None:
        pn = IP_PROTOS.get(key.ip_proto, f"{key.ip_proto:02x}")
        _key_line(out, "ip_proto", pn, pn)
    if key.ip_tos is not None:
        _masked_line(out, "ip_tos", key.ip_tos[0], key.ip_tos[1], 0xFF)
    if key.ip_ttl is not None:
        _masked_line(out, "ip_ttl", key.ip_ttl[0], key.ip_ttl[1], 0xFF)
    for label, ip in (("dst_ip", key.dst_ip), ("src_ip", key.src_ip)):
        if ip is not None:
            text = addr_str(ip[1])
            bits = _mask_bits(ip[2])
            if bits < 0:
                text += "/" + addr_str(ip[2])
            elif bits < len(ip[2]) * 8:
                text += f"/{bits}"
            _key_line(out, label, text, text)
    for label, port in (("dst_port", key.dst_port), ("src_port", key.src_port)):
        if port is not None:
            _masked_line(out, label, port[0], port[1], 0xFFFF)
    for label, rng in (("dst_port", key.dst_port_range), ("src_port", key.src_port_range)):
        if rng is not None:
            out.nl()
            out.fp(f"  {label} {rng[0]}-{rng[1]}")
            out.open_object(label)
            out.uint("start", "", rng[0], 2)
            out.uint("end", "", rng[1], 2)
            out.close_object()
    if key.tcp_flags is not None:
        text = f"0x{key.tcp_flags[0]:x}/{key.tcp_flags[1]:x}"
        _key_line(out, "tcp_flags", text, text)
    for label, icmp in (("icmp_type", key.icmp_type), ("icmp_code", key.icmp_code)):
        if icmp is not None:
            text = str(icmp[0]) + (f"/{icmp[1]}" if icmp[1] != 0xFF else "")
            _key_line(out, label, text, text)
    if key.ip_flags is not None:
        _print_matching_flags(out, key.ip_flags)
    _print_ct(out, key)
    out.close_object()
    if flags & CLS_FLAGS_SKIP_HW:
        out.nl()
        out.bool("skip_hw", "  skip_hw", True)
    if flags & CLS_FLAGS_SKIP_SW:
        out.nl()
        out.bool("skip_sw", "  skip_sw", True)
    if flags & CLS_FLAGS_IN_HW:
        out.nl()
        out.bool("in_hw", "  in_hw", True)
        out.uint("in_hw_count", f" in_hw_count {in_hw_count}", in_hw_count)
    elif flags & CLS_FLAGS_NOT_IN_HW:
        out.nl()
        out.bool("not_in_hw", "  not_in_hw", True)


def _print_matching_flags(out: Out, flags: tuple[int, int]) -> None:
    value, mask = flags
    count = 0
    for name, bit in MATCHING_FLAGS:
        if not mask & bit:
            continue
        count += 1
        if count == 1:
            out.nl()
            out.fp("  ip_flags ")
            out.open_object("ip_flags")
        else:
            out.fp("/")
        out.bool(name, "", bool(value & bit), 2)
        out.fp(name if value & bit else f"no{name}")
    if count:
        out.close_object()


def _print_ct(out: Out, key: FlowerKey) -> None:
    if key.ct_state is not None and key.ct_state[1]:
        value, mask = key.ct_state
        text = "".join(("+" if value & bit else "-") + name
                       for name, bit in CT_STATE_NAMES if mask & bit)
        _key_line(out, "ct_state", text, text)
    if key.ct_zone is not None and key.ct_zone[1]:
        _masked_line(out, "ct_zone", key.ct_zone[0], key.ct_zone[1], 0xFFFF)
    if key.ct_mark is not None and key.ct_mark[1]:
        _masked_line(out, "ct_mark", key.ct_mark[0], key.ct_mark[1], 0xFFFFFFFF)
    if key.ct_label is not None and any(key.ct_label[1]):
        text = key.ct_label[0].hex()
        if key.ct_label[1] != b"\xff" * 16:
            text += "/" + key.ct_label[1].hex()
        _key_line(out, "ct_label", text, text)

