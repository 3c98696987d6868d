"""cls_matchall (tc-matchall(8)): iproute2's f_matchall.c words and print, the
kernel's mall_change refusals, and the datapath (every packet matches)."""

from __future__ import annotations

import json

from node.datapath import Datapath
from node.packet import udp

from .conftest import Tc

PKT = udp("198.18.0.1", "198.18.0.2", 1000, 53, b"query")
FILE_EXISTS = "RTNETLINK answers: File exists\nWe have an error talking to the kernel\n"


def test_print_text_and_json(tci: Tc) -> None:
    tci.ok("filter add dev eth0 ingress pref 2 handle 0x10 matchall skip_hw classid 1:2 "
           "action drop")
    assert tci.ok("filter show dev eth0 ingress") == (
        "filter protocol all pref 2 matchall chain 0 \n"
        "filter protocol all pref 2 matchall chain 0 handle 0x10 flowid 1:2 \n"
        "  skip_hw\n"
        "  not_in_hw\n"
        "\taction order 1: gact action drop\n"
        "\t random type none pass val 0\n"
        "\t index 1 ref 1 bind 1\n"
        "\n")
    stats = tci.ok("-s filter show dev eth0 ingress")
    assert "  not_in_hw (rule hit 0)\n\taction order 1: gact action drop\n" in stats
    (_, flt) = json.loads(tci.ok("-s -j filter show dev eth0 ingress"))
    assert flt["kind"] == "matchall" and flt["protocol"] == "all"
    opts = flt["options"]
    assert list(opts)[:5] == ["handle", "flowid", "skip_hw", "not_in_hw", "rule_hit"]
    assert opts["flowid"] == "1:2" and opts["rule_hit"] == 0
    assert opts["actions"][0]["control_action"]["type"] == "drop"


def test_one_filter_per_proto_even_for_replace(tci: Tc) -> None:
    tci.ok("filter add dev eth0 ingress pref 1 matchall action drop")
    for line in ("filter add dev eth0 ingress pref 1 matchall action pass",
                 "filter replace dev eth0 ingress pref 1 handle 1 matchall action pass"):
        res = tci(line)
        assert (res.code, res.err) == (2, FILE_EXISTS)
    res = tci("filter add dev eth0 ingress pref 1 handle 1 matchall action pass")
    assert res.err == "Error: Filter already exists.\nWe have an error talking to the kernel\n"
    # the refused lines took no action index
    tci.ok("filter add dev eth0 ingress pref 5 matchall action pass")
    assert "index 2 ref 1 bind 1" in tci.ok("filter show dev eth0 ingress pref 5")


def test_iproute2_refusals(tci: Tc) -> None:
    res = tci("filter add dev eth0 ingress pref 2 matchall")
    assert res.err == "RTNETLINK answers: Invalid argument\n" \
                      "We have an error talking to the kernel\n"
    res = tci("filter add dev eth0 ingress pref 2 matchall skip_sw")
    assert (res.code, res.err) == (255, 'Command line is not complete. Try option "help"\n')
    res = tci("filter add dev eth0 ingress pref 2 matchall skip_sw skip_hw action drop")
    assert res.err == "skip_hw and skip_sw are mutually exclusive\n" and res.code == 1
    res = tci("filter add dev eth0 ingress pref 2 matchall foo")
    assert res.err.startswith('What is "foo"?\nUsage: ... matchall [skip_sw | skip_hw]\n')
    res = tci("filter add dev eth0 ingress pref 2 matchall classid zz action drop")
    assert res.err == 'Illegal "classid"\n'
    res = tci("filter add dev eth0 ingress pref 2 matchall action bogus_kind_xyz")
    assert res.code != 0
    res = tci("filter add dev eth0 ingress pref 2 handle 99999999999999999999 matchall "
              "action drop")
    assert res.err == 'Illegal handle "99999999999999999999", must be numeric.\n'
    # strtol: garbage is handle 0, and the kernel picks 1
    tci.ok("filter add dev eth0 ingress pref 3 handle zz matchall action drop")
    assert "handle 0x1 " in tci.ok("filter show dev eth0 ingress pref 3")


def test_skip_sw_without_offload_is_refused(tci: Tc) -> None:
    res = tci("filter add dev eth0 ingress pref 2 matchall skip_sw action drop")
    assert res.err == "RTNETLINK answers: Operation not supported\n" \
                      "We have an error talking to the kernel\n"


def test_delete_and_get(tci: Tc) -> None:
    tci.ok("filter add dev eth0 ingress pref 1 matchall action drop")
    got = tci.ok("filter get dev eth0 ingress pref 1 protocol all handle 1 matchall")
    assert got.startswith("filter ingress protocol all pref 1 matchall chain 0 handle 0x1")
    tci.ok("filter del dev eth0 ingress pref 1 protocol all handle 1 matchall")
    assert tci.ok("filter show dev eth0 ingress") == ""


def test_datapath_mirror_and_counters() -> None:
    dp = Datapath(["eth0", "eth1"])
    t = Tc(dp.tc)
    t.ok("qdisc add dev eth0 ingress")
    t.ok("filter add dev eth0 ingress matchall action mirred egress mirror dev eth1 continue")
    t.ok("filter add dev eth0 ingress pref 50000 protocol ip flower action drop")
    out = dp.receive("eth0", PKT, 1.0)
    assert out.verdict == "drop" and out.chains == ((0, 49152, 1), (0, 50000, 1))
    assert [(e.port, e.how, e.sent) for e in out.egress] == [("eth1", "mirror", True)]
    assert "(rule hit 1)" in t.ok("-s filter show dev eth0 ingress pref 49152")
