"""What tc prints: the formats of reference/act_ct.md §8.4 (text) and §8.5
(JSON), qdisc/chain/filter/actions listings, stats with the software/hardware
split, and the offload seam's in_hw flags."""

from __future__ import annotations

import json

from node.tc.action import HW_STATS_DELAYED
from node.tc.block import Block
from node.tc.chain import Filter
from node.tc.model import TcModel

from .conftest import Tc


class Card:
    """The smallest offload card: takes every filter into hardware on one device
    and reports delayed counters (a real implementation of block.BlockOffload)."""

    def __init__(self) -> None:
        self.filters: list[Filter] = []

    def replace(self, block: Block, flt: Filter) -> int:
        self.filters.append(flt)
        for action in flt.actions:
            action.used_hw_stats = HW_STATS_DELAYED
            action.in_hw_count = 1
        return 1

    def destroy(self, block: Block, flt: Filter) -> None:
        self.filters.remove(flt)


def test_text_of_act_ct_md_8_4_first_example() -> None:
    t = Tc()
    t.ok("qdisc add dev eth0 ingress")
    t.ok("filter add dev eth0 ingress protocol ip pref 2 flower ip_proto tcp ct_state -trk "
         "ct_zone 4 ct_mark 255 ct_label 00000000000000000000000000000000 skip_hw "
         "action ct zone 5")
    t.model.now = 287.0
    assert t.ok("-s filter show dev eth0 ingress") == (
        "filter protocol ip pref 2 flower chain 0 \n"
        "filter protocol ip pref 2 flower chain 0 handle 0x1 \n"
        "  eth_type ipv4\n"
        "  ip_proto tcp\n"
        "  ct_state -trk\n"
        "  ct_zone 4\n"
        "  ct_mark 255\n"
        "  ct_label 00000000000000000000000000000000\n"
        "  skip_hw\n"
        "  not_in_hw\n"
        "\taction order 1: ct zone 5 pipe\n"
        "\t index 1 ref 1 bind 1 installed 287 sec used 287 sec\n"
        "\tAction statistics:\n"
        "\tSent 0 bytes 0 pkt (dropped 0, overlimits 0 requeues 0) \n"
        "\tbacklog 0b 0p requeues 0\n"
        "\n")


def test_text_of_act_ct_md_8_4_second_example_shared_block_in_hw() -> None:
    model = TcModel()
    t = Tc(model)
    model.add_device("eth0").offload = Card()
    t.ok("qdisc add dev eth0 ingress_block 22 ingress")
    t.ok("filter add block 22 protocol ip flower ip_proto tcp dst_port 21 ct_state -trk "
         "skip_sw action ct helper ipv4-tcp-ftp")
    assert t.ok("filter show block 22") == (
        "filter protocol ip pref 49152 flower chain 0 \n"
        "filter protocol ip pref 49152 flower chain 0 handle 0x1 \n"
        "  eth_type ipv4\n"
        "  ip_proto tcp\n"
        "  dst_port 21\n"
        "  ct_state -trk\n"
        "  skip_sw\n"
        "  in_hw in_hw_count 1\n"
        "\taction order 1: ct zone 0 helper ipv4-tcp-ftp pipe\n"
        "\t index 1 ref 1 bind 1\n"
        "\tused_hw_stats delayed\n"
        "\n")
    # through the device, the shared block is named by its index
    assert t.ok("filter show dev eth0 ingress").startswith(
        "filter block 22 protocol ip pref 49152 flower chain 0 \n")
    res = t("filter add dev eth0 ingress protocol ip pref 1 flower action pass")
    assert res.err.startswith("Error: This filter block is shared. Please use the block index "
                              "to manipulate the filters.\n")


def test_json_of_act_ct_md_8_5() -> None:
    model = TcModel()
    t = Tc(model)
    model.add_device("eth0").offload = Card()
    t.ok("qdisc add dev eth0 ingress")
    t.ok("filter add dev eth0 ingress protocol ip pref 1 chain 2 flower ct_zone 2 "
         "ct_mark 0xbb/0xff ct_state +trk+est action ct commit mark 0xbb/0xf0 zone 2 "
         "nat src addr 5.5.5.7 port 1000-2000")
    flt = model.devices["eth0"].ingress.chains[2].protos[0].filters[1]  # type: ignore[union-attr]
    flt.actions[0].stats.add_hw(1000, 10, 0, 5.0)
    flt.actions[0].stats.use(60, 6.0)
    model.now = 9.0
    header, entry = json.loads(t.ok("-j -s filter show dev eth0 ingress"))
    assert header == {"protocol": "ip", "pref": 1, "kind": "flower", "chain": 2}
    assert list(entry) == ["protocol", "pref", "kind", "chain", "options"]
    opts = entry["options"]
    assert list(opts) == ["handle", "keys", "in_hw", "in_hw_count", "actions"]
    assert opts["keys"] == {"eth_type": "ipv4", "ct_state": "+trk+est", "ct_zone": 2,
                            "ct_mark": 187, "ct_mark_mask": "ff"}
    (act,) = opts["actions"]
    assert list(act) == ["order", "kind", "action", "mark", "mark_mask", "zone", "nat",
                         "control_action", "index", "ref", "bind", "installed", "last_used",
                         "first_used", "stats", "used_hw_stats"]
    assert act["installed"] == 900 and act["last_used"] == 300 and act["first_used"] == 400
    assert act["stats"] == {"bytes": 1060, "packets": 11, "drops": 0, "overlimits": 0,
                            "requeues": 0, "sw_bytes": 60, "sw_packets": 1, "hw_bytes": 1000,
                            "hw_packets": 10, "backlog": 0, "qlen": 0}
    assert act["used_hw_stats"] == ["delayed"]
    text = t.ok("-s filter show dev eth0 ingress")
    assert ("\tSent 1060 bytes 11 pkt (dropped 0, overlimits 0 requeues 0) \n"
            "\tSent software 60 bytes 1 pkt\n"
            "\tSent hardware 1000 bytes 10 pkt\n"
            "\tbacklog 0b 0p requeues 0\n") in text


def test_pretty_json_is_json_writer_layout(tci: Tc) -> None:
    tci.ok("filter add dev eth0 ingress protocol ip pref 1 flower action drop")
    out = tci.ok("-j -p filter show dev eth0 ingress")
    assert out.startswith('[{\n        "protocol": "ip",\n        "pref": 1,\n')
    assert out.endswith("    }\n]\n")
    assert json.loads(out)[1]["options"]["actions"][0]["control_action"] == {"type": "drop"}


def test_qdisc_show(tc: Tc) -> None:
    tc.ok("qdisc add dev eth0 ingress")
    tc.ok("qdisc add dev eth1 clsact")
    assert tc.ok("qdisc show") == ("qdisc ingress ffff: dev eth0 parent ffff:fff1 "
                                   "---------------- \n"
                                   "qdisc clsact ffff: dev eth1 parent ffff:fff1 \n")
    assert tc.ok("qdisc show dev eth1") == "qdisc clsact ffff: parent ffff:fff1 \n"
    assert json.loads(tc.ok("-j qdisc show dev eth0")) == [
        {"kind": "ingress", "handle": "ffff:", "parent": "ffff:fff1", "options": {}}]


def test_qdisc_errors(tc: Tc) -> None:
    tc.ok("qdisc add dev eth0 ingress")
    res = tc("qdisc add dev eth0 ingress")
    assert (res.code, res.err) == (2, "Error: Exclusivity flag on, cannot modify.\n")
    res = tc("qdisc add dev eth0 clsact")
    assert (res.code, res.err) == (2, "Error: Exclusivity flag on, cannot modify.\n")
    res = tc("qdisc del dev eth0 clsact")
    assert (res.code, res.err) == (2, "Error: Invalid qdisc name.\n")
    tc.ok("qdisc del dev eth0 ingress")
    res = tc("qdisc del dev eth0 ingress")
    assert (res.code, res.err) == (2, "Error: Cannot find specified qdisc on specified "
                                      "device.\n")


def test_deleting_the_qdisc_deletes_its_filters_and_actions(tci: Tc) -> None:
    tci.ok("filter add dev eth0 ingress protocol ip pref 1 flower action ct index 5")
    tci.ok("qdisc del dev eth0 ingress")
    assert tci.ok("actions list action ct") == ""
    res = tci("filter add dev eth0 ingress protocol ip pref 1 flower action drop")
    assert res.err == ("Error: Parent Qdisc doesn't exists.\n"
                       "We have an error talking to the kernel\n")


def test_clsact_ingress_and_egress_blocks_are_separate(tc: Tc) -> None:
    tc.ok("qdisc add dev eth0 clsact")
    tc.ok("filter add dev eth0 egress protocol ip pref 1 flower action drop")
    assert tc.ok("filter show dev eth0 ingress") == ""
    assert "action order 1: gact action drop" in tc.ok("filter show dev eth0 egress")
    res = tc("filter add dev eth0 parent ffff: protocol ip pref 1 flower action drop")
    assert res.err == "RTNETLINK answers: Invalid argument\n" \
                      "We have an error talking to the kernel\n"


def test_chain_show_get_and_json(tci: Tc) -> None:
    tci.ok("chain add dev eth0 ingress chain 3")
    tci.ok("filter add dev eth0 ingress protocol ip pref 1 chain 1 flower action drop")
    assert tci.ok("chain show dev eth0 ingress") == ("chain parent ffff: chain 3 \n"
                                                     "chain parent ffff: chain 1 \n")
    assert tci.ok("chain get dev eth0 ingress chain 1") == "chain parent ffff: chain 1 \n"
    assert json.loads(tci.ok("-j chain show dev eth0 ingress chain 3")) == [
        {"parent": "ffff:"}]
    res = tci("chain get dev eth0 ingress chain 9")
    assert res.err == ("Error: Cannot find specified filter chain.\n"
                       "We have an error talking to the kernel\n")
    tci.ok("chain del dev eth0 ingress chain 1")  # flushes it
    assert tci.ok("filter show dev eth0 ingress") == ""


def test_filter_get_prints_the_parent(tci: Tc) -> None:
    tci.ok("filter add dev eth0 ingress protocol ip pref 1 handle 7 flower ip_proto udp "
           "action pass")
    assert tci.ok("filter get dev eth0 ingress protocol ip pref 1 handle 7 flower") == (
        "filter ingress protocol ip pref 1 flower chain 0 handle 0x7 \n"
        "  eth_type ipv4\n  ip_proto udp\n  not_in_hw\n"
        "\taction order 1: gact action pass\n\t random type none pass val 0\n"
        "\t index 1 ref 1 bind 1\n\n")
    assert tci("filter get dev eth0 ingress protocol ip handle 7 flower").err == \
        "Must specify filter priority\n"
    assert tci("filter get dev eth0 ingress protocol ip pref 1 flower").err == \
        'Must specify filter "handle"\n'


def test_replace_change_and_delete(tci: Tc) -> None:
    tci.ok("filter add dev eth0 ingress protocol ip pref 1 handle 1 flower ip_proto tcp "
           "action drop")
    res = tci("filter add dev eth0 ingress protocol ip pref 1 handle 1 flower action drop")
    assert res.err == "Error: Filter already exists.\nWe have an error talking to the kernel\n"
    tci.ok("filter replace dev eth0 ingress protocol ip pref 1 handle 1 flower ip_proto udp "
           "action pass")
    out = tci.ok("filter show dev eth0 ingress")
    assert "ip_proto udp" in out and "ip_proto tcp" not in out
    tci.ok("filter change dev eth0 ingress protocol ip pref 1 handle 1 flower ip_proto icmp "
           "action pass")
    res = tci("filter change dev eth0 ingress protocol ip pref 1 handle 2 flower action pass")
    assert res.err == ("Error: Need both RTM_NEWTFILTER and NLM_F_CREATE to create a new "
                       "filter.\nWe have an error talking to the kernel\n")
    res = tci("filter del dev eth0 ingress protocol ip handle 1 flower")
    assert res.err == ("Error: Cannot flush filters with protocol, handle or kind set.\n"
                       "We have an error talking to the kernel\n")
    tci.ok("filter del dev eth0 ingress pref 1 handle 1 flower")
    assert tci.ok("filter show dev eth0 ingress") == ""


def test_auto_priorities_count_down_from_49152(tci: Tc) -> None:
    tci.ok("filter add dev eth0 ingress protocol ip flower action pass")
    tci.ok("filter add dev eth0 ingress protocol ip flower action drop")
    out = tci.ok("filter show dev eth0 ingress")
    assert out.index("pref 49151") < out.index("pref 49152")


def test_actions_get_delete_and_flush(tc: Tc) -> None:
    tc.ok("actions add action gact drop index 3")
    tc.ok("actions add action gact pass index 1")
    out = tc.ok("actions get action gact index 3")
    assert out == ("total acts 0\n\n\taction order 1: gact action drop\n"
                   "\t random type none pass val 0\n\t index 3 ref 1 bind 0\n")
    listed = tc.ok("actions list action gact")
    assert listed.startswith("total acts 2\n\n\taction order 0: gact action pass\n")
    res = tc("actions get action gact index 9")
    assert (res.code, res.err) == (1, "Error: TC action with specified index not found.\n"
                                      "We have an error talking to the kernel\n")
    tc.ok("actions del action gact index 3")
    tc.ok("actions flush action gact")
    assert tc.ok("actions list action gact") == ""


def test_bound_actions_are_shared_and_cannot_be_deleted(tci: Tc) -> None:
    tci.ok("actions add action ct zone 4 index 8")
    tci.ok("filter add dev eth0 ingress protocol ip pref 1 flower action ct index 8")
    assert "ct zone 4 pipe\n\t index 8 ref 2 bind 1" in tci.ok("actions list action ct")
    res = tci("actions del action ct index 8")
    assert res.err == ("RTNETLINK answers: Operation not permitted\n"
                       "We have an error talking to the kernel\n")
    tci.ok("filter del dev eth0 ingress pref 1")
    assert "index 8 ref 1 bind 0" in tci.ok("actions list action ct")


def test_brief_filter_show_has_no_keys(tci: Tc) -> None:
    tci.ok("filter add dev eth0 ingress protocol ip pref 1 flower dst_ip 10.0.0.0/8 "
           "action ct zone 1 pipe action drop")
    assert tci.ok("-br filter show dev eth0 ingress") == (
        "filter protocol ip pref 1 flower chain 0 \n"
        "filter protocol ip pref 1 flower chain 0 handle 0x1 \n"
        "  not_in_hw\n"
        "\taction order 1: ct\n"
        "\taction order 2: gact \n")


def test_flower_keys_print(tci: Tc) -> None:
    tci.ok("filter add dev eth0 ingress protocol ip pref 1 flower indev eth1 "
           "dst_mac 02:00:00:00:00:01/ff:ff:ff:00:00:00 ip_proto tcp ip_tos 0x10/0xf0 "
           "dst_ip 10.1.2.3/255.255.0.0 src_ip 192.0.2.0/24 dst_port 1000-2000 "
           "src_port 0x50/0xfff0 tcp_flags 0x2/0x12 ip_flags nofrag action pass")
    out = tci.ok("filter show dev eth0 ingress")
    assert ("handle 0x1 \n  indev eth1\n  dst_mac 02:00:00:00:00:01/24\n  eth_type ipv4\n"
            "  ip_proto tcp\n  ip_tos 16/0xf0\n  dst_ip 10.1.2.3/16\n"
            "  src_ip 192.0.2.0/24\n  src_port 80/0xfff0\n  dst_port 1000-2000\n"
            "  tcp_flags 0x2/12\n  ip_flags nofrag\n  not_in_hw\n") in out
    keys = json.loads(tci.ok("-j filter show dev eth0 ingress"))[1]["options"]["keys"]
    assert keys["dst_port"] == {"start": 1000, "end": 2000}
    assert keys["ip_flags"] == {"frag": False}
