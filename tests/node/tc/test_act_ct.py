"""act_ct: iproute2's option checks (m_ct.c), the kernel's (act_ct.c
tcf_ct_init), how the action prints, and what it does to packets and entries
(act_ct.md §4): commit, mark/labels only with commit and the mark rule, force,
clear, zones, helpers, NAT."""

from __future__ import annotations

import json

import pytest

from node.conntrack.entry import IPS_CONFIRMED, IPS_DST_NAT
from node.datapath import Datapath
from node.packet import ip_str, tcp, udp
from node.tc.skb import CT_ESTABLISHED, CT_INVALID, CT_NEW, CT_REPLY, CT_TRACKED

from .conftest import Tc

NEW = CT_TRACKED | CT_NEW


# ------------------------------------------------------------------ iproute2
@pytest.mark.parametrize("words, message", [
    ("clear commit", "ct: clear can only be used alone\n"),
    ("commit nat src addr 1.1.1.1 nat dst addr 2.2.2.2 pipe",
     "ct: src and dst nat can't be used together\n"),
    ("commit nat pipe", "ct: commit and nat must set src or dst\n"),
    ("nat src addr 1.1.1.1 pipe", "ct: src or dst is only valid if commit is set\n"),
    ("zone 70000", 'ct: Illegal "zone"\n'),
    ("zone 1/1", 'ct: Illegal "zone"\n'),
    ("mark 0x100000000", 'ct: Illegal "mark"\n'),
    ("commit nat src addr 1.1.1.x pipe", "ct: Illegal nat address range\n"),
    ("commit nat src addr 1.1.1.1-2001::1 pipe", "ct: Illegal nat address range\n"),
    ("commit nat src addr 1.1.1.1 port 70000 pipe", "ct: Illegal nat port range\n"),
    ("commit helper ftp", 'ct: Illegal "helper"\n'),
    ("commit helper ipv5-tcp-ftp", 'ct: Illegal "helper"\n'),
    ("commit helper ipv4-xyz-ftp", 'ct: Illegal "helper"\n'),
])
def test_iproute2_refuses(tc: Tc, words: str, message: str) -> None:
    res = tc(f"actions add action ct {words}")
    assert res.code == 255
    assert res.err.startswith(message)
    assert "bad action parsing\n" in res.err and res.err.endswith('Illegal "action"\n')
    assert tc.ok("actions list action ct") == ""


@pytest.mark.parametrize("words, message", [
    ("label zz", 'Error: argument "zz" is wrong: ct: labels must be a hex string\n\n'),
    ("label 11/zz", 'Error: argument "zz" is wrong: ct: labels mask must be a hex string\n\n'),
    ("nat src addr 1.1.1.1", 'Command line is not complete. Try option "help"\n'),
    ("nat", 'Command line is not complete. Try option "help"\n'),
])
def test_iproute2_exits(tc: Tc, words: str, message: str) -> None:
    """invarg() and NEXT_ARG() end the tc process (exit 255)."""
    res = tc(f"actions add action ct {words}")
    assert res.code == 255
    assert res.err == message


def test_clear_in_a_filter_is_refused_with_its_exit_code(tci: Tc) -> None:
    res = tci("filter add dev eth0 ingress protocol ip pref 1 flower action ct clear commit")
    assert res.code == 1
    assert res.err.startswith("ct: clear can only be used alone\nbad action parsing\n")
    assert res.err.endswith('Illegal "action"\n')


@pytest.mark.parametrize("words, message, code", [
    ("commit helper ipv4-udp-ftp", "Error: act_ct: Failed to add helper.\n", 255),
    ("commit helper ipv4-tcp-nosuchhelper", "Error: act_ct: Failed to add helper.\n", 255),
    ("commit helper ipv4-tcp-averyveryverylongname",
     "Error: act_ct: Failed to parse helper name.\n", 255),
    ("zone 1 goto chain 1", "Error: can't goto NULL proto/chain.\n", 255),
])
def test_kernel_refuses(tc: Tc, words: str, message: str, code: int) -> None:
    res = tc(f"actions add action ct {words}")
    assert res.code == code
    assert res.err == message + "We have an error talking to the kernel\n"


def test_a_taken_index_is_file_exists_and_replace_updates(tc: Tc) -> None:
    tc.ok("actions add action ct zone 1 index 7")
    res = tc("actions add action ct zone 2 index 7")
    assert res.code == 255
    assert res.err == "RTNETLINK answers: File exists\nWe have an error talking to the kernel\n"
    tc.ok("actions replace action ct zone 2 index 7")
    assert "ct zone 2 pipe" in tc.ok("actions list action ct")


# ------------------------------------------------------------------ printing
@pytest.mark.parametrize("words, printed", [
    ("", "ct zone 0 pipe"),
    ("clear", "ct clear pipe"),
    ("clear zone 1", "ct clear pipe"),  # zone sets no ct_action bit: accepted, ignored
    ("commit force zone 3", "ct commit force zone 3 pipe"),
    ("commit mark 0x42/0xf0 zone 404", "ct commit mark 66/0xf0 zone 404 pipe"),
    ("commit mark 0x42/0", "ct commit zone 0 pipe"),  # a zero mask is not dumped
    ("label 123123", "ct zone 0 label 12312300000000000000000000000000 pipe"),
    ("label 123123/00", "ct zone 0 pipe"),
    ("commit helper ipv4-tcp-ftp", "ct commit zone 0 helper ipv4-tcp-ftp pipe"),
    ("commit helper ipv6-tcp-ftp", "ct commit zone 0 helper ipv6-tcp-ftp pipe"),
    ("commit nat dst addr 198.18.0.1 port 80 goto chain 1", None),
    ("zone 2 nat continue", "ct zone 2 nat continue"),
    ("commit nat src addr 5.5.5.7-5.5.6.0 port 1000-2000 drop",
     "ct commit zone 0 nat src addr 5.5.5.7-5.5.6.0 port 1000-2000 drop"),
    ("commit nat src addr 2001::1-2001::10 jump 2",
     "ct commit zone 0 nat src addr 2001::1-2001::10 jump 2"),
])
def test_print_ct(tci: Tc, words: str, printed: str | None) -> None:
    tci.ok(f"filter add dev eth0 ingress protocol ip pref 1 flower action ct {words} "
           "action pass")
    out = tci.ok("filter show dev eth0 ingress")
    if printed is None:
        printed = "ct commit zone 0 nat dst addr 198.18.0.1 port 80 goto chain 1"
    assert f"\taction order 1: {printed}\n\t index 1 ref 1 bind 1\n" in out


def test_json_of_a_ct_action(tci: Tc) -> None:
    tci.ok("filter add dev eth0 ingress protocol ip pref 1 chain 2 flower ct_zone 2 "
           "ct_mark 0xbb ct_state +trk+est action ct commit mark 0xbb/0xf0 zone 2 "
           "label 11/ff helper ipv4-tcp-ftp nat src addr 5.5.5.7 port 1000-2000 goto chain 3")
    (_, flt) = json.loads(tci.ok("-j filter show dev eth0 ingress"))
    assert flt["chain"] == 2
    (act,) = flt["options"]["actions"]
    assert act == {"order": 1, "kind": "ct", "action": "commit", "mark": 187,
                   "mark_mask": "f0", "zone": 2,
                   "label": "11000000000000000000000000000000/ff000000000000000000000000000000",
                   "helper": "ipv4-tcp-ftp", "nat": "src addr 5.5.5.7 port 1000-2000",
                   "control_action": {"type": "goto", "chain": 3},
                   "index": 1, "ref": 1, "bind": 1}


def test_bare_nat_json_is_an_empty_string(tc: Tc) -> None:
    tc.ok("actions add action ct zone 1 nat pipe index 3")
    (_, acts) = json.loads(tc.ok("-j actions list action ct"))
    assert acts["actions"][0]["nat"] == ""
    assert "action" not in acts["actions"][0]


# ------------------------------------------------------------------ behaviour
def datapath(rules: str) -> tuple[Datapath, Tc]:
    dp = Datapath(["eth0", "eth1"])
    t = Tc(dp.tc)
    res = t.batch(rules)
    assert res.code == 0, res.err
    return dp, t


def test_mark_is_value_or_old_and_not_mask_and_only_with_commit() -> None:
    dp, _ = datapath("""
qdisc add dev eth0 ingress
qdisc add dev eth1 ingress
filter add dev eth0 ingress pref 1 protocol ip flower ct_state -trk \
    action ct zone 1 mark 0x5 pipe action goto chain 1
filter add dev eth0 ingress pref 1 chain 1 protocol ip flower ct_state +trk+new \
    action ct zone 1 commit mark 0x0f pass
filter add dev eth0 ingress pref 2 chain 1 protocol ip flower ct_state +trk+est \
    action ct zone 1 commit mark 0x42/0xf0 pass
filter add dev eth1 ingress pref 1 protocol ip flower action ct zone 1 pass
""")
    pkt = udp("198.18.0.1", "198.18.0.2", 1, 2, b"a")
    dp.receive("eth0", pkt, 1.0)
    (entry,) = list(dp.conntrack.entries())
    assert entry.mark == 0x0F  # the uncommitted "mark 0x5" did nothing
    dp.receive("eth1", udp("198.18.0.2", "198.18.0.1", 2, 1, b"b"), 1.1)
    assert entry.mark == 0x0F
    out = dp.receive("eth0", pkt, 1.2)
    assert out.ct_state == CT_TRACKED | CT_ESTABLISHED
    assert entry.mark == 0x42 | (0x0F & ~0xF0)  # 0x4f: the value is not masked


def test_labels_replace_under_the_mask() -> None:
    dp, _ = datapath("""
qdisc add dev eth0 ingress
filter add dev eth0 ingress pref 1 protocol ip flower action ct zone 1 commit label 03 pass
""")
    dp.receive("eth0", udp("198.18.0.1", "198.18.0.2", 1, 2, b"a"), 1.0)
    (entry,) = list(dp.conntrack.entries())
    assert entry.labels == 0b11


def test_without_commit_nothing_is_remembered() -> None:
    dp, _ = datapath("""
qdisc add dev eth0 ingress
filter add dev eth0 ingress pref 1 protocol ip flower action ct zone 1 pass
""")
    for i in range(3):
        out = dp.receive("eth0", udp("198.18.0.1", "198.18.0.2", 1, 2, b"a"), 1.0 + i)
        assert out.ct_state == NEW and out.zone == 1
    assert not list(dp.conntrack.entries())


def test_clear_makes_the_next_lookup_untracked() -> None:
    dp, _ = datapath("""
qdisc add dev eth0 ingress
filter add dev eth0 ingress pref 1 protocol ip flower ct_state -trk \
    action ct zone 1 commit pipe action ct clear pipe action goto chain 1
filter add dev eth0 ingress pref 1 chain 1 protocol ip flower ct_state -trk action drop
filter add dev eth0 ingress pref 2 chain 1 protocol ip flower ct_state +trk action pass
""")
    out = dp.receive("eth0", udp("198.18.0.1", "198.18.0.2", 1, 2, b"a"), 1.0)
    assert out.verdict == "drop" and out.chains[-1] == (1, 1, 1) and out.ct_state == 0
    assert len(list(dp.conntrack.entries())) == 1  # committed before the clear


def test_an_invalid_packet_is_trk_inv_in_the_action_zone() -> None:
    dp, _ = datapath("""
qdisc add dev eth0 ingress
filter add dev eth0 ingress pref 1 protocol ip flower ct_state -trk \
    action ct zone 9 pipe action goto chain 1
filter add dev eth0 ingress pref 1 chain 1 protocol ip flower ct_zone 9 ct_state +trk+inv \
    action drop
""")
    out = dp.receive("eth0", tcp("198.18.0.1", "198.18.0.2", 1, 2, "SA", seq=5, ack=6), 1.0)
    assert out.verdict == "drop" and out.ct_state == CT_TRACKED | CT_INVALID
    assert out.zone == 9


def test_a_second_ct_in_another_zone_tracks_again() -> None:
    dp, _ = datapath("""
qdisc add dev eth0 ingress
filter add dev eth0 ingress pref 1 protocol ip flower \
    action ct zone 1 commit pipe action ct zone 2 commit pass
""")
    dp.receive("eth0", udp("198.18.0.1", "198.18.0.2", 1, 2, b"a"), 1.0)
    assert sorted(e.zone for e in dp.conntrack.entries()) == [1, 2]


def test_force_replaces_a_reply_direction_connection() -> None:
    dp, _ = datapath("""
qdisc add dev eth0 ingress
qdisc add dev eth1 ingress
filter add dev eth0 ingress pref 1 protocol ip flower action ct zone 1 commit pass
filter add dev eth1 ingress pref 1 protocol ip flower ct_state -trk \
    action ct zone 1 pipe action ct zone 1 commit force pass
""")
    dp.receive("eth0", udp("198.18.0.1", "198.18.0.2", 1, 2, b"a"), 1.0)
    (old,) = list(dp.conntrack.entries())
    out = dp.receive("eth1", udp("198.18.0.2", "198.18.0.1", 2, 1, b"b"), 1.1)
    (new,) = list(dp.conntrack.entries())
    assert new is not old and new.status & IPS_CONFIRMED
    assert ip_str(new.orig.src) == "198.18.0.2"  # the reply direction became the original
    assert out.ct_state == NEW


def test_commit_of_a_reply_keeps_the_connection() -> None:
    dp, _ = datapath("""
qdisc add dev eth0 ingress
qdisc add dev eth1 ingress
filter add dev eth0 ingress pref 1 protocol ip flower action ct zone 1 commit pass
filter add dev eth1 ingress pref 1 protocol ip flower action ct zone 1 commit pass
""")
    dp.receive("eth0", udp("198.18.0.1", "198.18.0.2", 1, 2, b"a"), 1.0)
    out = dp.receive("eth1", udp("198.18.0.2", "198.18.0.1", 2, 1, b"b"), 1.1)
    assert out.ct_state == CT_TRACKED | CT_ESTABLISHED | CT_REPLY
    assert len(list(dp.conntrack.entries())) == 1


def test_dnat_to_a_server_and_back() -> None:
    dp, _ = datapath("""
qdisc add dev eth0 ingress
qdisc add dev eth1 ingress
filter add dev eth0 ingress pref 1 protocol ip flower \
    action ct zone 3 commit nat dst addr 198.19.1.1 port 8080 pipe \
    action mirred egress redirect dev eth1
filter add dev eth1 ingress pref 1 protocol ip flower \
    action ct zone 3 nat pipe action mirred egress redirect dev eth0
""")
    out = dp.receive("eth0", tcp("203.0.113.9", "198.19.100.1", 5000, 80, "S", seq=1), 1.0)
    sent = out.egress[0].pkt
    assert ip_str(sent.dst) == "198.19.1.1" and sent.l4.dport == 8080  # type: ignore[union-attr]
    (entry,) = list(dp.conntrack.entries())
    assert entry.status & IPS_DST_NAT
    back = dp.receive("eth1", tcp("198.19.1.1", "203.0.113.9", 8080, 5000, "SA", seq=9, ack=2),
                      1.1)
    reply = back.egress[0].pkt
    assert ip_str(reply.src) == "198.19.100.1" and reply.l4.sport == 80  # type: ignore[union-attr]


def test_action_stats_count_every_packet_and_drops(tci: Tc) -> None:
    dp = Datapath(["eth0"])
    t = Tc(dp.tc)
    t.batch("qdisc add dev eth0 ingress\n"
            "filter add dev eth0 ingress pref 1 protocol ip flower action ct zone 1 drop\n")
    pkt = udp("198.18.0.1", "198.18.0.2", 1, 2, b"abc")
    for i in range(3):
        assert dp.receive("eth0", pkt, 1.0 + i).verdict == "drop"
    out = t.ok("-s filter show dev eth0 ingress")
    size = (pkt.length + 14) * 3
    assert (f"\tSent {size} bytes 3 pkt (dropped 0, overlimits 0 requeues 0) \n"
            "\tbacklog 0b 0p requeues 0\n") in out
    # installed at 0, used last at 3 (age 0: not printed), first used at 1
    assert "\t index 1 ref 1 bind 1 installed 3 sec firstused 2 sec\n" in out
    dp.tc.now = 4.5
    shown = t.ok("-s filter show dev eth0 ingress")
    assert " installed 4 sec used 1 sec firstused 3 sec\n" in shown
