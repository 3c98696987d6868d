"""flower's ct keys: ct_state validated as cls_flower.c fl_validate_ct_state does
(only the positively set flags count), ct_zone/ct_mark/ct_label parsing and
printing, and what each key matches on a packet after act_ct."""

from __future__ import annotations

import itertools
import json

import pytest

from node.conntrack.entry import IP_CT_ESTABLISHED, IP_CT_ESTABLISHED_REPLY, IP_CT_NEW
from node.conntrack.table import Conntrack, Template
from node.packet import tcp
from node.tc.args import Args
from node.tc.cls_flower import compile_key
from node.tc.f_flower import parse as flower_parse
from node.tc.skb import CT_STATE_NAMES, Skb

from .conftest import Tc

FLAGS = [name for name, _ in CT_STATE_NAMES]  # trk new est rel inv rpl, iproute2's order
NO_TRK = "no trk, so no other flag can be set"
NEW_EST = "new and est are mutually exclusive"
INV_ONLY_TRK = "when inv is set, only trk may be set"
NEW_RPL = "new and rpl are mutually exclusive"

# The sets of positively matched flags the kernel accepts: nothing, or trk with
# any of new/est/rel/rpl except new+est and new+rpl, or exactly trk+inv.
ACCEPTED = {frozenset(s) for s in (
    (), ("trk",), ("trk", "new"), ("trk", "est"), ("trk", "rel"), ("trk", "rpl"),
    ("trk", "new", "rel"), ("trk", "est", "rel"), ("trk", "est", "rpl"), ("trk", "rel", "rpl"),
    ("trk", "est", "rel", "rpl"), ("trk", "inv"))}


def first_rule_broken(flags: frozenset[str]) -> str:
    """The kernel's checks in their order."""
    if flags and "trk" not in flags:
        return NO_TRK
    if {"new", "est"} <= flags:
        return NEW_EST
    if "inv" in flags and flags - {"trk", "inv"}:
        return INV_ONLY_TRK
    if {"new", "rpl"} <= flags:
        return NEW_RPL
    return ""


ALL_SETS = [frozenset(c) for n in range(7) for c in itertools.combinations(FLAGS, n)]


def test_the_rule_table_agrees_with_the_accepted_sets() -> None:
    assert len(ALL_SETS) == 64
    assert {s for s in ALL_SETS if not first_rule_broken(s)} == ACCEPTED


@pytest.mark.parametrize("flags", ALL_SETS, ids=lambda s: "+".join(sorted(s)) or "none")
@pytest.mark.parametrize("negatives", [False, True], ids=["plus-only", "full-mask"])
def test_every_ct_state_combination(tci: Tc, flags: frozenset[str], negatives: bool) -> None:
    """All 64 sets of +flags, alone and with every other flag negated: the -flags
    never change the verdict, the +flags give the kernel's message."""
    text = "".join(("+" + f) if f in flags else ("-" + f if negatives else "") for f in FLAGS)
    if not text:
        text = "-trk" if negatives else ""
    res = tci(f"filter add dev eth0 ingress protocol ip pref 1 flower ct_state '{text}' "
              "action drop")
    broken = first_rule_broken(flags)
    if broken:
        assert res.code == 2
        assert res.err == f"Error: {broken}.\nWe have an error talking to the kernel\n"
        assert tci("filter show dev eth0 ingress").out == ""
    else:
        assert res.code == 0, res.err
        shown = tci.ok("filter show dev eth0 ingress")
        if text:
            assert f"\n  ct_state {text}\n" in shown
        else:
            assert "ct_state" not in shown  # an empty mask is not dumped


@pytest.mark.parametrize("text", ["trk", "+trkx", "+foo", "+", "+trk+", "-", "+trk new"])
def test_ct_state_syntax_errors_are_iproute2s(tci: Tc, text: str) -> None:
    res = tci(f"filter add dev eth0 ingress protocol ip pref 1 flower ct_state '{text}' "
              "action drop")
    assert res.code == 1
    assert res.err.startswith('Illegal "ct_state"\n')


def test_ct_state_prints_in_iproute2s_flag_order(tci: Tc) -> None:
    tci.ok("filter add dev eth0 ingress protocol ip pref 1 flower ct_state -rpl+est+trk "
           "action pass")
    out = tci.ok("filter show dev eth0 ingress")
    assert "\n  ct_state +trk+est-rpl\n" in out
    js = json.loads(tci.ok("-j filter show dev eth0 ingress"))
    assert js[1]["options"]["keys"]["ct_state"] == "+trk+est-rpl"


def test_ct_zone_mark_label_print_with_masks(tci: Tc) -> None:
    tci.ok("filter add dev eth0 ingress protocol ip pref 2 flower ip_proto tcp ct_state -trk "
           "ct_zone 4 ct_mark 255 ct_label 00000000000000000000000000000000 skip_hw "
           "action ct zone 5")
    tci.ok("filter add dev eth0 ingress protocol ip pref 3 flower ct_zone 4/0xff "
           "ct_mark 0xbb/0xf0 ct_label 01/ff action pass")
    out = tci.ok("filter show dev eth0 ingress")
    assert ("filter protocol ip pref 2 flower chain 0 handle 0x1 \n"
            "  eth_type ipv4\n  ip_proto tcp\n  ct_state -trk\n  ct_zone 4\n  ct_mark 255\n"
            "  ct_label 00000000000000000000000000000000\n  skip_hw\n  not_in_hw\n"
            "\taction order 1: ct zone 5 pipe\n\t index 1 ref 1 bind 1\n\n") in out
    assert ("  ct_zone 4/0xff\n  ct_mark 187/0xf0\n"
            "  ct_label 01000000000000000000000000000000/ff000000000000000000000000000000\n"
            ) in out
    keys = json.loads(tci.ok("-j filter show dev eth0 ingress pref 3"))[1]["options"]["keys"]
    assert keys == {"eth_type": "ipv4", "ct_zone": 4, "ct_zone_mask": "ff", "ct_mark": 187,
                    "ct_mark_mask": "f0",
                    "ct_label": "01000000000000000000000000000000/"
                                "ff000000000000000000000000000000"}


@pytest.mark.parametrize("line, code, err", [
    ("ct_zone 70000", 1, 'Illegal "ct_zone"\n'),
    ("ct_zone 1/x", 1, 'Illegal "ct_zone"\n'),
    ("ct_mark 0x1ffffffff", 1, 'Illegal "ct_mark"\n'),
    ("ct_label zz", 255, 'Error: argument "zz" is wrong: labels must be a hex string\n\n'),
    ("ct_label " + "0" * 33, 255, f'Error: argument "{"0" * 33}" is wrong: 33 Max allowed '
                                 'size 32\n'),
])
def test_ct_key_syntax_errors(tci: Tc, line: str, code: int, err: str) -> None:
    res = tci(f"filter add dev eth0 ingress protocol ip pref 1 flower {line} action pass")
    assert res.code == code
    assert res.err == err


# ------------------------------------------------------------------ matching
def _key(words: str):  # type: ignore[no-untyped-def]
    got = flower_parse(Args(words.split(), lambda s: None), 0x0800, lambda a: ())
    return compile_key(got["key"])


def _skb_after_ct(replies: int = 0) -> tuple[Skb, Skb]:
    """A packet of each direction of a connection, as act_ct leaves them."""
    ct = Conntrack()
    tmpl = Template(zone=7)
    syn = tcp("198.18.0.1", "198.18.0.2", 1000, 80, "S", seq=1)
    res = ct.track(syn, 1.0, tmpl)
    ct.confirm(res, 1.0)
    res.entry.mark = 0xBB  # type: ignore[union-attr]
    orig = Skb(syn, "eth0")
    orig.set_ct(res.entry, res.ctinfo)
    orig.set_post_ct(True, 7)
    synack = tcp("198.18.0.2", "198.18.0.1", 80, 1000, "SA", seq=100, ack=2)
    back = ct.track(synack, 1.1, tmpl)
    reply = Skb(synack, "eth1")
    reply.set_ct(back.entry, back.ctinfo)
    reply.set_post_ct(True, 7)
    return orig, reply


def test_ct_state_of_a_packet_follows_ctinfo() -> None:
    orig, reply = _skb_after_ct()
    assert orig.ctinfo == IP_CT_NEW and reply.ctinfo == IP_CT_ESTABLISHED_REPLY
    assert _key("ct_state +trk+new")(orig)
    assert not _key("ct_state +trk+est")(orig)
    assert _key("ct_state +trk+est")(reply)
    assert _key("ct_state +trk+est+rpl")(reply)
    assert not _key("ct_state +trk+est-rpl")(reply)
    assert not _key("ct_state -trk")(orig)
    # the same connection's original direction after the reply: +est, not +rpl
    ct_entry = reply.ct
    assert ct_entry is not None
    orig.set_ct(ct_entry, IP_CT_ESTABLISHED)
    assert _key("ct_state +trk+est-rpl")(orig)


def test_untracked_invalid_and_cleared_packets() -> None:
    pkt = tcp("198.18.0.1", "198.18.0.2", 1, 2, "S")
    skb = Skb(pkt, "eth0")
    assert _key("ct_state -trk")(skb) and skb.ct_state == 0
    skb.set_post_ct(True, 3)  # a ct action ran and found the packet invalid
    assert _key("ct_state +trk+inv")(skb)
    assert _key("ct_zone 3")(skb)
    assert not _key("ct_state -trk")(skb)
    skb.set_post_ct(False, 3)  # ct clear
    assert _key("ct_state -trk")(skb)


def test_ct_zone_mark_label_come_from_the_entry() -> None:
    orig, _ = _skb_after_ct()
    assert orig.ct is not None
    orig.ct.labels = 1 << 0 | 1 << 127
    assert _key("ct_zone 7")(orig) and not _key("ct_zone 8")(orig)
    assert _key("ct_mark 0xbb")(orig) and _key("ct_mark 0xb0/0xf0")(orig)
    assert not _key("ct_mark 0xbc")(orig)
    assert _key("ct_label 01/01")(orig)
    assert _key("ct_label 00000000000000000000000000000080/00000000000000000000000000000080")(
        orig)
    assert not _key("ct_label 02/02")(orig)
