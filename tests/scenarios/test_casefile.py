"""Reading the kernel oracle's case files: defaults, bytes, settings, rules, errors."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.conntrack import Conntrack, Template
from node.packet import (
    IPPROTO_GRE,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    TCP_ACK,
    TCP_SYN,
    Gre,
    Icmp,
    Packet,
    Tcp,
    TcpOptions,
    Udp,
    icmp_echo,
    icmp_error,
    ip_bytes,
    ip_str,
    tcp,
    udp,
)
from scenarios.casefile import (
    HELPER_PORTS,
    Accept,
    Case,
    CaseError,
    Connmark,
    Ct,
    Helper,
    IptRule,
    Mark,
    Notrack,
    Return,
    Send,
    Sleep,
    cases_from_json,
    load_cases,
    prepare_case,
)

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "tests" / "fixtures" / "oracle" / "results"
EXAMPLE_RESULTS = REPO / "scenarios" / "examples" / "lifecycle.kernel.json"
PORTS = {"client_port": 40000, "server_port": 80}


def case(*packets: dict[str, Any], settings: dict[str, Any] | None = None,
         defaults: dict[str, Any] | None = None, name: str = "t") -> Case:
    doc: dict[str, Any] = {"name": name, "defaults": PORTS if defaults is None else defaults,
                           "packets": list(packets)}
    if settings is not None:
        doc["settings"] = settings
    return prepare_case(doc, "t.json")


def sends(c: Case) -> list[Send]:
    return [s for s in c.steps if isinstance(s, Send)]


def only(c: Case) -> Send:
    [s] = sends(c)
    return s


def error_of(*packets: dict[str, Any], **kw: Any) -> str:
    with pytest.raises(CaseError) as exc:
        case(*packets, **kw)
    return str(exc.value)


# ------------------------------------------------------------------ byte-exactness

def result_files() -> list[Path]:
    return sorted(RESULTS.glob("*.json"))


def assert_bytes_match_the_oracle(path: Path) -> int:
    doc = json.loads(path.read_text())
    cases = load_cases([str(path)])
    assert [c.name for c in cases] == [c["name"] for c in doc["cases"]]
    checked = 0
    for c in cases:
        for step in sends(c):
            assert step.data.hex() == step.raw["ip_hex"], (c.name, step.raw)
            checked += 1
    return checked


def test_every_recorded_packet_is_built_byte_for_byte() -> None:
    files = result_files()
    assert files, f"no oracle results in {RESULTS}"
    assert sum(assert_bytes_match_the_oracle(f) for f in files) > 0


def test_example_results_file_is_built_byte_for_byte() -> None:
    assert assert_bytes_match_the_oracle(EXAMPLE_RESULTS) == 11


# Built by the oracle's own packets.py from the case below (throwaway script).
KNOWN_CASE = {
    "name": "known_bytes",
    "settings": {"zone": 5},
    "defaults": {"client_port": 40000, "server_port": 21},
    "packets": [
        {"from": "A", "flags": "S", "seq": 1000, "win": 64240,
         "options": [["mss", 1460], "sackok", ["ts", 1, 0], "nop", ["wscale", 7],
                     ["raw", "fe04abcd"]]},
        {"dir": "reply", "family": 6, "flags": "SA", "seq": 5000, "ack": 1001, "zone": 7},
        {"sleep": 1.5},
        {"from": "B", "proto": "icmp", "type": "dest-unreach", "code": 4, "mtu": 1400,
         "src": "198.19.5.1", "inner": {"flags": "PA", "payload": "hello"}, "inner_len": 28},
        {"from": "A", "proto": "udp", "family": 6, "checksum": 0, "payload_hex": "00 01 02"},
        {"from": "A", "proto": "udp", "bad_checksum": True, "ip_bad_checksum": True,
         "payload_len": 3},
        {"from": "A", "proto": "gre", "gre_version": 1, "call_id": 9, "payload": "ppp"},
        {"from": "B", "proto": 253, "payload_hex": "c0ffee", "ttl": 9, "tos": 16, "df": True},
        {"from": "A", "proto": "icmpv6", "family": 6, "type": "echo-request", "id": 7, "seq": 2,
         "flowlabel": 74565, "zone": 0},
    ]}
KNOWN_HEX = [
    "45000040000100004006ec8dc6120102c61301029c400015000003e800000000b002faf064d00000020405b4"
    "0402080a000000010000000001030307fe04abcd",
    "604000000014064020010db800020000000000000000000220010db800010000000000000000000200159c40"
    "00001388000003e95012ffffa0930000",
    "45000038000400004001e898c6130501c612010203045b2e000005784500002d000000004006eca1c6120102"
    "c61301029c40001500000000",
    "60000000000b114020010db800010000000000000000000220010db80002000000000000000000029c400015"
    "000b0000000102",
    "4500001f000600004011b6c4c6120102c61301029c400015000bbe85787878",
    "4500001f00070000402fec7fc6120102c61301022001880b00030009707070",
    "451000170008400009fde2a8c6130102c6120102c0ffee",
    "6081234500083a4020010db800010000000000000000000220010db80002000000000000000000028000243b"
    "00070002",
]


def test_bytes_equal_the_oracle_builders_output() -> None:
    c = prepare_case(copy.deepcopy(KNOWN_CASE), "known.json")
    assert [s.data.hex() for s in sends(c)] == KNOWN_HEX
    assert isinstance(c.steps[2], Sleep) and c.steps[2].seconds == 1.5


# ------------------------------------------------------------------ defaults

def test_tcp_defaults() -> None:
    s = only(case({"from": "A", "flags": "S"}))
    p = s.packet
    assert s.side == "A" and s.zone == 0
    assert (ip_str(p.src), ip_str(p.dst), p.ttl, p.ip_id, p.tos, p.df) == (
        "198.18.1.2", "198.19.1.2", 64, 1, 0, False)
    assert p.l4 == Tcp(40000, 80, 0, 0, TCP_SYN, 65535, 0, TcpOptions(), b"")
    assert p.l4_csum_ok and p.ip_csum_ok


def test_side_b_swaps_addresses_and_ports_and_flags_default_to_none() -> None:
    s = only(case({"from": "B"}))
    assert s.side == "B"
    assert (ip_str(s.packet.src), ip_str(s.packet.dst)) == ("198.19.1.2", "198.18.1.2")
    assert s.packet.l4 == Tcp(80, 40000, flags=0)


def test_ip_id_is_the_packet_index_plus_one_counting_sleeps() -> None:
    c = case({"from": "A"}, {"sleep": 0.5}, {"from": "B"}, {"from": "A", "ip_id": 99})
    assert [s.packet.ip_id for s in sends(c)] == [1, 3, 99]


@pytest.mark.parametrize("alias,side", [("orig", "A"), ("reply", "B")])
def test_dir_is_an_alias_of_from(alias: str, side: str) -> None:
    assert only(case({"dir": alias})).side == side


def test_ipv6_hosts_and_case_family() -> None:
    s = only(case({"from": "B", "proto": "udp"}, settings={"family": 6}))
    assert (ip_str(s.packet.src), ip_str(s.packet.dst)) == ("2001:db8:2::2", "2001:db8:1::2")
    assert s.packet.l4 == Udp(80, 40000)


def test_defaults_apply_only_to_keys_valid_for_the_protocol() -> None:
    c = case({"from": "A"}, {"from": "A", "proto": "udp"}, {"from": "A", "proto": "icmp"},
             defaults={**PORTS, "win": 502, "ttl": 9, "payload": "x"})
    t, u, i = (s.packet for s in sends(c))
    assert isinstance(t.l4, Tcp) and t.l4.window == 502 and t.payload == b"x"
    assert u.l4 == Udp(40000, 80) and u.ttl == 9 and u.payload == b"x"
    assert isinstance(i.l4, Icmp) and i.l4.type == 8 and i.payload == b"x"


def test_default_proto() -> None:
    s = only(case({"from": "A", "id": 3}, defaults={"proto": "icmp"}))
    assert s.packet.proto == IPPROTO_ICMP and s.packet.l4 == Icmp(8, 0, 3, 0)


def test_explicit_ports_and_addresses() -> None:
    s = only(case({"from": "A", "sport": 1, "dport": 2, "src": "198.18.7.7",
                   "dst": "198.19.8.8"}, defaults={}))
    assert (ip_str(s.packet.src), ip_str(s.packet.dst)) == ("198.18.7.7", "198.19.8.8")
    assert isinstance(s.packet.l4, Tcp) and (s.packet.l4.sport, s.packet.l4.dport) == (1, 2)


def test_tcp_fields_options_and_payloads() -> None:
    s = only(case({"from": "A", "flags": "fpa", "seq": -1, "ack": 2**32 + 5, "win": 7, "urg": 3,
                   "options": ["nop", ["mss", 1000], ["sack", [[1, 2]]], ["raw", "1e02"]],
                   "payload_hex": "de ad"}))
    assert isinstance(s.packet.l4, Tcp)
    assert (s.packet.l4.seq, s.packet.l4.ack, s.packet.l4.flags, s.packet.l4.window,
            s.packet.l4.urg) == (0xFFFFFFFF, 5, 0x19, 7, 3)
    assert s.packet.l4.raw_options.hex() == "01020403e8050a00000001000000021e02000000"
    assert s.packet.l4.options == TcpOptions(mss=1000, sack=((1, 2),))
    assert s.packet.payload == b"\xde\xad"
    assert only(case({"from": "A", "payload_len": 5})).packet.payload == b"xxxxx"
    assert only(case({"from": "A", "payload": "é"})).packet.payload == "é".encode()


def test_sleep_is_capped_at_30_seconds() -> None:
    c = case({"sleep": 99, "note": "expire"}, {"from": "A"})
    assert c.steps[0] == Sleep(30.0, {"sleep": 99, "note": "expire"})


# ------------------------------------------------------------------ checksums

def test_forced_and_corrupted_checksums() -> None:
    good = only(case({"from": "A", "proto": "udp"})).packet
    assert good.l4_csum_ok and good.l4_csum is None
    bad = only(case({"from": "A", "proto": "udp", "bad_checksum": True})).packet
    assert not bad.l4_csum_ok
    none = only(case({"from": "A", "proto": "udp", "family": 6, "checksum": 0})).packet
    assert none.l4_csum_ok and none.l4_csum == 0
    forced = only(case({"from": "A", "checksum": 0x1234, "bad_checksum": True})).packet
    assert forced.l4_csum == 0x1234
    iphdr = only(case({"from": "A", "ip_bad_checksum": True})).packet
    assert not iphdr.ip_csum_ok and iphdr.l4_csum_ok


def test_checksum_keys_are_ignored_for_gre_and_other_protocols() -> None:
    g = only(case({"from": "A", "proto": "gre", "bad_checksum": True})).packet
    assert g.l4_csum_ok and g.l4 == Gre(flags=0)
    other = only(case({"from": "A", "proto": 253, "checksum": 5, "payload": "z"})).packet
    assert other.l4 is None and other.payload == b"z"


# ------------------------------------------------------------------ zones

def test_packets_in_other_zones_get_a_dscp_selector_in_the_tos_byte() -> None:
    c = case({"from": "A"}, {"from": "A", "zone": 7}, {"from": "A", "zone": 9},
             {"from": "B", "zone": 7}, {"from": "A", "zone": 5}, {"from": "A", "zone": 0},
             settings={"zone": 5})
    assert [(s.zone, s.packet.tos) for s in sends(c)] == [
        (5, 0), (7, 4), (9, 8), (7, 4), (5, 0), (0, 12)]
    assert c.zone_dscp == {7: 1, 9: 2, 0: 3}


def test_zone_selector_in_the_ipv6_traffic_class() -> None:
    s = only(case({"from": "A", "family": 6, "zone": 3}))
    assert s.zone == 3 and s.packet.tos == 4 and s.data[:2] == b"\x60\x40"


def test_a_packet_with_its_own_zone_cannot_set_tos() -> None:
    assert "cannot also set tos" in error_of({"from": "A", "zone": 1, "tos": 8})
    assert "cannot also set tos" in error_of({"from": "A", "zone": 1}, defaults={**PORTS,
                                                                                  "tos": 8})


def test_raw_table_mirrors_the_oracle() -> None:
    c = case({"from": "A"}, {"from": "A", "zone": 7}, {"from": "A", "zone": 0},
             settings={"zone": 5, "helper": "ftp", "raw_rules": ["-p udp -j NOTRACK"]},
             defaults={"client_port": 40000, "server_port": 21})
    assert [r.text for r in c.raw_table] == [
        "-p udp -j NOTRACK",
        "-p tcp --dport 21 -m dscp --dscp 1 -j CT --helper ftp --zone 7",
        "-m dscp --dscp 1 -j CT --zone 7",
        "-p tcp --dport 21 -m dscp --dscp 2 -j CT --helper ftp --zone 0",
        "-m dscp --dscp 2 -j CT --zone 0",
        "-p tcp --dport 21 -j CT --helper ftp --zone 5",
        "-j CT --zone 5",
    ]
    zone0 = sends(c)[2].packet
    first = next(r for r in c.raw_table if r.is_ct_target() and r.matches(zone0))
    assert first.template() == Template(zone=0, helper="ftp")


def test_default_zone_0_adds_no_zone_rule() -> None:
    c = case({"from": "A"}, settings={"helper": "tftp"})
    assert [r.text for r in c.raw_table] == ["-p udp --dport 69 -j CT --helper tftp"]


def test_mangle_table_mirrors_the_oracle() -> None:
    c = case({"from": "A"}, settings={"connmark": 9, "connlabel": 2,
                                      "mangle_rules": ["-p tcp -j MARK --set-mark 1"]})
    assert [r.text for r in c.mangle_table] == [
        "-m conntrack --ctstate NEW -j CONNMARK --set-xmark 0x9/0xffffffff",
        "-m conntrack --ctstate NEW -m connlabel --label 2 --set",
        "-p tcp -j MARK --set-mark 1",
    ]


# ------------------------------------------------------------------ ICMP errors

def test_inner_packet_defaults_to_the_other_side_and_the_outer_family() -> None:
    c = case({"from": "B", "proto": "icmpv6", "type": "dest-unreach", "code": 4,
              "inner": {"proto": "udp", "payload": "q"}}, settings={"family": 6})
    s = only(c)
    assert isinstance(s.packet.l4, Icmp) and s.packet.l4.type == 1
    quoted = udp("2001:db8:1::2", "2001:db8:2::2", 40000, 80, b"q")  # from A, ip_id 0
    assert s.packet.payload == bytes.fromhex(s.data.hex())[48:]
    assert s.quoted == quoted
    assert s.packet.l4.inner is not None and s.packet.l4.inner.l4 == Udp(40000, 80)


def test_inner_len_truncates_the_quote() -> None:
    s = only(case({"from": "B", "proto": "icmp", "type": 3, "code": 3,
                   "inner": {"flags": "S", "options": [["mss", 1460]]}, "inner_len": 24}))
    assert len(s.packet.payload) == 24
    assert s.quoted == tcp("198.18.1.2", "198.19.1.2", 40000, 80,
                           options=TcpOptions(mss=1460))
    inner = s.packet.l4.inner  # type: ignore[union-attr]
    assert inner is not None and inner.truncated
    assert isinstance(inner.l4, Tcp) and (inner.l4.sport, inner.l4.dport) == (40000, 80)


def test_icmp_rest_word_variants() -> None:
    def rest(**kw: Any) -> bytes:
        s = only(case({"from": "B", "proto": "icmp", "type": 3, "inner": {}, **kw}))
        assert isinstance(s.packet.l4, Icmp)
        return s.packet.l4.rest

    assert rest() == bytes(4)
    assert rest(mtu=1400) == b"\0\0\x05\x78"
    assert rest(pointer=9) == b"\x09\0\0\0"
    assert rest(rest_hex="01020304") == b"\1\2\3\4"
    redirect = only(case({"from": "B", "proto": "icmp", "type": "redirect", "inner": {},
                          "gateway": "198.19.5.1"})).packet
    assert redirect.l4.rest == ip_bytes("198.19.5.1")  # type: ignore[union-attr]
    echo = only(case({"from": "A", "proto": "icmp", "rest_hex": "00070009"})).packet
    assert echo.l4 == Icmp(8, 0, 7, 9)


def test_quoted_is_none_without_inner() -> None:
    assert only(case({"from": "A", "proto": "icmp"})).quoted is None


# ------------------------------------------------------------------ GRE and others

def test_gre_versions() -> None:
    v0 = only(case({"from": "A", "proto": "gre", "key": 5, "payload": "ip"})).packet
    assert v0.proto == IPPROTO_GRE and isinstance(v0.l4, Gre)
    assert (v0.l4.version, v0.l4.key, v0.l4.proto, v0.payload) == (0, 5, 0x0800, b"ip")
    v1 = only(case({"from": "A", "proto": "gre", "gre_version": 1, "call_id": 9})).packet
    assert isinstance(v1.l4, Gre) and (v1.l4.version, v1.l4.call_id, v1.l4.proto) == (
        1, 9, 0x880B)


def test_raw_protocol_numbers_carry_the_payload_as_l4() -> None:
    p = only(case({"from": "A", "proto": 132, "payload_hex": "0001"})).packet
    assert p.proto == 132 and p.l4 is None and p.payload == b"\0\1"


# ------------------------------------------------------------------ settings

def test_settings_are_typed() -> None:
    c = case({"from": "A"}, settings={
        "family": 4, "zone": 3, "connmark": 16, "connlabel": 5,
        "sysctl": {"nf_conntrack_tcp_loose": 0, "net.netfilter.nf_conntrack_checksum": "1",
                   "net.ipv4.ip_forward": 1},
        "helpers": ["ftp", {"name": "tftp", "proto": "udp", "port": 6969}],
        "raw_rules": [{"rule": "-p icmp --icmp-type echo-request -j NOTRACK", "family": 4}],
        "mangle_rules": ["-p tcp --dport 80 -j CONNMARK --set-mark 0x5/0xf"]})
    s = c.settings
    assert (s.family, s.zone, s.connmark, s.connlabel) == (4, 3, 16, 5)
    assert s.sysctl == {"nf_conntrack_tcp_loose": "0", "nf_conntrack_checksum": "1",
                        "net.ipv4.ip_forward": "1"}
    assert s.helpers == (Helper("ftp", "tcp", 21), Helper("tftp", "udp", 6969))
    [raw] = s.raw_rules
    assert (raw.family, raw.proto, raw.icmp_type, raw.target) == (4, IPPROTO_ICMP, 8, Notrack())
    [mangle] = s.mangle_rules
    assert mangle.target == Connmark(5, 0xF) and mangle.dport == (80, 80)


def test_well_known_helper_ports() -> None:
    assert HELPER_PORTS["ftp"] == ("tcp", 21) and HELPER_PORTS["tftp"] == ("udp", 69)
    c = case({"from": "A"}, settings={"helper": "sip"})
    assert c.settings.helpers == (Helper("sip", "udp", 5060),)


@pytest.mark.parametrize("settings,message", [
    ({"helper": "nope"}, "no default port for helper 'nope'"),
    ({"helpers": [{"name": "ftp", "port": 21}]}, "needs exactly name, proto and port"),
    ({"family": 5}, "family must be 4 or 6"),
    ({"sysctl": {"kernel.panic": 1}}, "only net.* sysctls"),
    ({"sysctl": {"x": 1, "net.netfilter.x": 2}}, "sysctl x is given twice"),
    ({"zone": 70000}, r"zone 70000 is out of range"),
    ({"raw_rules": "-j NOTRACK"}, "raw_rules must be a list"),
    ({"raw_rules": [{"rule": "-j NOTRACK"}]}, "a rule is a string or"),
    ({"mangle_rules": ["-j NOTRACK"]}, "CT/NOTRACK work only in the raw table"),
    ({"raw_rules": ["-j DROP"]}, "target 'DROP' is not supported"),
    ({"bogus": 1}, r"unknown field\(s\) \['bogus'\]"),
])
def test_bad_settings(settings: dict[str, Any], message: str) -> None:
    msg = error_of({"from": "A"}, settings=settings)
    assert msg.startswith("case t (t.json): settings: ")
    assert re.search(message, msg), msg


# ------------------------------------------------------------------ iptables rules

@pytest.mark.parametrize("text,fields", [
    ("-p udp --dport 53 -j NOTRACK", {"proto": 17, "dport": (53, 53), "target": Notrack()}),
    ("-p tcp --dport 80 -j CT --notrack", {"proto": 6, "target": Notrack()}),
    ("-p tcp --sport 1024: -j ACCEPT", {"sport": (1024, 65535), "target": Accept()}),
    ("-p udp -m udp --dport :1023 -j RETURN", {"dport": (0, 1023), "target": Return()}),
    ("-p tcp --dport 21:22 -j CT --helper ftp --zone 4",
     {"dport": (21, 22), "target": Ct(4, "ftp")}),
    ("-j CT --zone 0x10", {"target": Ct(16, None)}),
    ("-j CT", {"target": Ct(None, None)}),
    ("-s 198.18.0.0/16 -d 198.19.1.2 -i eth0 -j NOTRACK", {"family": 4}),
    ("-p 47 -j NOTRACK", {"proto": 47}),
    ("-p all -j NOTRACK", {"proto": None}),
    ("-p icmp --icmp-type port-unreachable -j NOTRACK", {"icmp_type": 3, "icmp_code": 3}),
    ("-p icmp -m icmp --icmp-type 8 -j NOTRACK", {"icmp_type": 8, "icmp_code": None}),
    ("-p ipv6-icmp --icmpv6-type 1/4 -j NOTRACK", {"family": 6, "icmp_type": 1, "icmp_code": 4}),
    ("-p icmpv6 --icmpv6-type neighbour-solicitation -j NOTRACK", {"icmp_type": 135}),
    ("-j MARK --set-mark 5", {"target": Mark(5, 0xFFFFFFFF)}),
    ("-j MARK --set-mark 0x5/0xf", {"target": Mark(5, 0xF)}),
    ("-j MARK --set-xmark 5/0", {"target": Mark(5, 0)}),
    ("-j CONNMARK --set-xmark 0xf0/0x0", {"target": Connmark(0xF0, 0)}),
    ("-j CONNMARK --set-mark 1/0xf0", {"target": Connmark(1, 0xF1)}),
    ("-j CONNMARK --or-mark 4", {"target": Connmark(4, 4)}),
    ("-m dscp --dscp 3 -j CT --zone 7", {"dscp": 3}),
    ("-m conntrack --ctstate NEW,ESTABLISHED --ctdir REPLY -j CONNMARK --set-mark 1",
     {"ctstate": frozenset({"NEW", "ESTABLISHED"}), "ctdir": "REPLY"}),
    ("-m conntrack --ctstate NEW -m connlabel --label 64 --set", {"set_label": 64,
                                                                   "target": None}),
    ('-p tcp -m comment --comment "a b" -j ACCEPT', {"proto": 6}),
])
def test_rule_parsing(text: str, fields: dict[str, Any]) -> None:
    rule = IptRule.parse(text)
    assert rule.text == text
    for key, value in fields.items():
        assert getattr(rule, key) == value, key


@pytest.mark.parametrize("text,message", [
    ("-p tcp ! --dport 80 -j ACCEPT", r"negation \('!'\) is not supported"),
    ("-m state2 -j ACCEPT", "match module 'state2' is not supported"),
    ("--dport 80 -j ACCEPT", "--dport needs -p tcp or -p udp before it"),
    ("-p icmp --dport 80 -j ACCEPT", "--dport needs -p tcp or -p udp"),
    ("-p tcp --dport http -j ACCEPT", "port 'http' is not a number"),
    ("-p tcp --dport 90:80 -j ACCEPT", "port range '90:80' is empty"),
    ("-p tcp --dport 70000 -j ACCEPT", "port 70000 is out of range"),
    ("--dscp 3 -j ACCEPT", "--dscp needs -m dscp before it"),
    ("-p udp --icmp-type 8 -j ACCEPT", "--icmp-type needs -p icmp"),
    ("-p icmp --icmp-type nope -j ACCEPT", "ICMP type 'nope' is not a number"),
    ("-s 198.18.0.0/16 -d 2001:db8::1 -j ACCEPT", "address 2001:db8::1 is IPv6 but the rule"),
    ("-s nowhere -j ACCEPT", "bad address 'nowhere'"),
    ("-j CT --zone 1 --timeout x", "unsupported option '--timeout' for -j CT"),
    ("-j CONNMARK --restore-mark", "-j CONNMARK takes one of"),
    ("-j CONNMARK --save-mark x", "unsupported option '--save-mark'"),
    ("-j MARK --or-mark 1/2", "--or-mark takes no mask"),
    ("-j NOTRACK --zone 1", "unsupported option '--zone' for -j NOTRACK"),
    ("-j REJECT", "target 'REJECT' is not supported"),
    ("-m conntrack --ctstate SNAT -j ACCEPT", r"conntrack state\(s\) \['SNAT'\]"),
    ("-m connlabel --label 3 -j ACCEPT", "supported only with --set"),
    ("-p", "-p needs an argument"),
    ("-p tcp --dport", "--dport needs an argument"),
    ("-j ACCEPT 'unterminated", "cannot split it into words"),
    ("-x", "unsupported option '-x'"),
])
def test_unsupported_rules_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(CaseError, match=message):
        IptRule.parse(text)


def test_a_rule_error_names_the_case() -> None:
    msg = error_of({"from": "A"}, settings={"raw_rules": ["-j LOG"]})
    assert msg == "case t (t.json): settings: rule '-j LOG': target 'LOG' is not supported"


A, B = "198.18.1.2", "198.19.1.2"


def test_rule_matching() -> None:
    syn = tcp(A, B, 40000, 80)
    assert IptRule.parse("-p tcp --dport 80 -j NOTRACK").matches(syn)
    assert not IptRule.parse("-p tcp --dport 81:90 -j NOTRACK").matches(syn)
    assert IptRule.parse("-p tcp --sport 40000: -j NOTRACK").matches(syn)
    assert not IptRule.parse("-p udp -j NOTRACK").matches(syn)
    assert IptRule.parse("-s 198.18.0.0/16 -j NOTRACK").matches(syn)
    assert not IptRule.parse("-d 198.18.0.0/16 -j NOTRACK").matches(syn)
    assert not IptRule.parse("-s 2001:db8:1::/48 -j NOTRACK").matches(syn)
    assert not IptRule.parse("-j NOTRACK", family=6).matches(syn)
    echo = icmp_echo(A, B, 1, 1)
    assert IptRule.parse("-p icmp --icmp-type echo-request -j NOTRACK").matches(echo)
    assert not IptRule.parse("-p icmp --icmp-type 0 -j NOTRACK").matches(echo)
    err = icmp_error(B, A, syn, code=3)
    assert IptRule.parse("-p icmp --icmp-type port-unreachable -j NOTRACK").matches(err)
    assert not IptRule.parse("-p icmp --icmp-type host-unreachable -j NOTRACK").matches(err)
    dscp = tcp(A, B, 1, 2, tos=8)
    assert IptRule.parse("-m dscp --dscp 2 -j CT --zone 3").matches(dscp)
    assert not IptRule.parse("-m dscp --dscp 2 -j CT --zone 3").matches(syn)


def test_rule_matching_on_conntrack_state_and_direction() -> None:
    rule = IptRule.parse("-m conntrack --ctstate ESTABLISHED --ctdir REPLY -j CONNMARK "
                         "--set-mark 1")
    syn = tcp(A, B, 1, 2)
    assert rule.matches(syn, ctstate="ESTABLISHED", ctdir="REPLY")
    assert not rule.matches(syn, ctstate="ESTABLISHED", ctdir="ORIGINAL")
    assert not rule.matches(syn, ctstate="NEW", ctdir="REPLY")
    invalid = IptRule.parse("-m conntrack --ctstate INVALID -j ACCEPT")
    assert invalid.matches(syn) and not invalid.matches(syn, ctstate="NEW")


def test_later_fragments_have_no_ports_to_match() -> None:
    frag = Packet(4, ip_bytes(A), ip_bytes(B), IPPROTO_TCP, None, b"x" * 8, frag_offset=8)
    assert not IptRule.parse("-p tcp --dport 80 -j NOTRACK").matches(frag)
    assert IptRule.parse("-p tcp -j NOTRACK").matches(frag)


def test_generated_helper_and_zone_rules_for_replay() -> None:
    helper = IptRule.ct_helper("tftp", "udp", 69, 5, only_zone=5)
    assert helper.template() == Template(zone=5, helper="tftp")
    query = udp(A, B, 1000, 69)
    assert helper.matches(query, zone=5) and not helper.matches(query, zone=0)
    assert not helper.matches(udp(A, B, 1000, 70), zone=5)
    zone = IptRule.ct_zone(7)
    assert zone.is_ct_target() and zone.template() == Template(zone=7)
    assert IptRule.parse("-j NOTRACK").template() == Template(notrack=True)
    assert IptRule.parse("-j ACCEPT").terminal
    with pytest.raises(CaseError, match="has no CT target"):
        IptRule.parse("-j ACCEPT").template()


def test_apply_to_entry_sets_connmark_and_labels() -> None:
    ct = Conntrack()
    res = ct.commit(udp(A, B, 1, 2), 0.0)
    assert res.entry is not None
    entry = res.entry
    IptRule.parse("-j CONNMARK --set-xmark 0xff/0xffffffff").apply_to_entry(ct, entry)
    assert entry.mark == 0xFF
    IptRule.parse("-j CONNMARK --set-xmark 0x0f/0x0").apply_to_entry(ct, entry)  # xor
    assert entry.mark == 0xF0
    IptRule.parse("-j CONNMARK --set-mark 0x1/0xf").apply_to_entry(ct, entry)
    assert entry.mark == 0xF1
    IptRule.parse("-j MARK --set-mark 7").apply_to_entry(ct, entry)  # the packet's mark
    assert entry.mark == 0xF1
    IptRule.parse("-m connlabel --label 64 --set").apply_to_entry(ct, entry)
    assert entry.labels == 1 << 64


# ------------------------------------------------------------------ errors

@pytest.mark.parametrize("packet,message", [
    ({"flags": "S"}, 'packet 0: every packet needs "from": "A" or "B"'),
    ({"from": "C"}, 'packet 0: "from" must be A or B'),
    ({"from": "A", "type": 8}, r"packet 0: unknown packet field\(s\) \['type'\] for protocol tcp"),
    ({"from": "A", "proto": "udp", "flags": "S"}, r"field\(s\) \['flags'\] for protocol udp"),
    ({"from": "A", "proto": "sctp"}, "unknown protocol 'sctp'"),
    ({"from": "A", "proto": 300}, "protocol number out of range: 300"),
    ({"from": "A", "flags": "SX"}, "unknown TCP flag 'X'"),
    ({"from": "A", "options": [["mss"]]}, r"bad TCP option \['mss'\]"),
    ({"from": "A", "options": ["bogus"]}, "unknown TCP option 'bogus'"),
    ({"from": "A", "options": [["raw", "00" * 41]]}, "TCP options too long"),
    ({"from": "A", "payload": "a", "payload_len": 2}, "use only one of payload"),
    ({"from": "A", "win": 70000}, r"win 70000 is out of range"),
    ({"from": "A", "seq": "x"}, "seq must be a number"),
    ({"from": "A", "family": 5}, "family must be 4 or 6"),
    ({"from": "A", "src": "10.0.0.1"}, "address 10.0.0.1 is outside"),
    ({"from": "A", "src": "198.18.1.1"}, "on a link network"),
    ({"from": "A", "dst": "198.18.9.9"}, "dst 198.18.9.9 is on the sending side A"),
    ({"from": "A", "src": "2001:db8:1::2"}, "address 2001:db8:1::2 is not IPv4"),
    ({"from": "A", "src": "nowhere"}, "bad address 'nowhere'"),
    ({"from": "A", "family": 6, "proto": "icmp"}, "use proto 'icmpv6' in IPv6 packets"),
    ({"from": "A", "proto": "icmp", "inner": {}}, "ICMP type 8 is not an error type"),
    ({"from": "A", "proto": "icmp", "type": 3, "inner": {}, "payload": "x"},
     "an ICMP error takes 'inner', not a payload"),
    ({"from": "A", "proto": "icmp", "type": 3, "inner": {"family": 6}},
     "inner packet family differs"),
    ({"from": "A", "proto": "icmp", "type": 3, "inner": {"flags": "Z"}},
     "packet 0: inner: unknown TCP flag 'Z'"),
    ({"from": "A", "proto": "icmp", "type": "nope"}, "unknown ICMP type 'nope'"),
    ({"from": "A", "proto": "icmp", "type": 3, "rest_hex": "01"}, "rest_hex must be exactly 4"),
    ({"from": "A", "proto": "gre", "gre_version": 2}, "unsupported GRE version 2"),
    ({"from": "A", "proto": "udp", "checksum": 70000}, "checksum 70000 is out of range"),
    ({"sleep": 1, "from": "A"}, "a sleep step takes only 'sleep' and 'note'"),
    ({"sleep": -1}, "sleep must be seconds >= 0"),
    ("A", "a packet is an object, not str"),
])
def test_packet_errors_name_case_file_and_packet(packet: Any, message: str) -> None:
    msg = error_of(packet)
    assert msg.startswith("case t (t.json): packet 0: "), msg
    assert re.search(message, msg), msg


def test_missing_ports_is_an_error() -> None:
    assert "without sport/dport" in error_of({"from": "A"}, defaults={})


def test_case_level_errors() -> None:
    with pytest.raises(CaseError, match=r"t.json: case without a name"):
        prepare_case({"packets": []}, "t.json")
    with pytest.raises(CaseError, match=r"case x \(t.json\): unknown case field\(s\) \['pakets'\]"):
        prepare_case({"name": "x", "pakets": []}, "t.json")
    with pytest.raises(CaseError, match=r"case x \(t.json\): no packets"):
        prepare_case({"name": "x", "packets": []}, "t.json")
    with pytest.raises(CaseError, match=r"unknown defaults field\(s\) \['colour'\]"):
        prepare_case({"name": "x", "defaults": {"colour": 1}, "packets": [{"from": "A"}]})
    with pytest.raises(CaseError, match="ip_hex"):  # results keys only in results files
        prepare_case({"name": "x", "defaults": PORTS, "packets": [{"from": "A", "ip_hex": "45"}]},
                     "t.json")


# ------------------------------------------------------------------ files

def write(path: Path, doc: Any) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def one(name: str) -> dict[str, Any]:
    return {"name": name, "defaults": PORTS, "packets": [{"from": "A"}]}


def test_file_shapes_and_directories(tmp_path: Path) -> None:
    write(tmp_path / "a.json", one("a"))
    write(tmp_path / "b.json", [one("b1"), one("b2")])
    write(tmp_path / "c.json", {"cases": [one("c")]})
    write(tmp_path / "_skipped.json", one("skipped"))
    write(tmp_path / "results_x.json", one("skipped2"))
    (tmp_path / "notes.txt").write_text("not a case")
    cases = load_cases([str(tmp_path)])
    assert [c.name for c in cases] == ["a", "b1", "b2", "c"]
    assert cases[0].file == str(tmp_path / "a.json")


def test_results_files_are_cases_with_kernel_answers(tmp_path: Path) -> None:
    doc = json.loads(EXAMPLE_RESULTS.read_text())
    doc["cases"].append({"name": "broken", "file": "x.json", "error": "lab error"})
    cases = load_cases([write(tmp_path / "results.json", doc)])
    assert [c.name for c in cases] == ["example_tcp_lifecycle", "example_udp_and_icmp_error",
                                       "broken"]
    first = sends(cases[0])[0]
    assert first.kernel is not None and first.kernel["ctstate"] == "NEW"
    assert first.raw["ip_hex"] == first.data.hex()
    assert cases[2].error == "lab error" and cases[2].steps == ()


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(CaseError, match="cannot read"):
        load_cases([str(tmp_path / "missing.json")])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(CaseError, match=r"bad\.json: not JSON"):
        load_cases([str(tmp_path / "bad.json")])
    with pytest.raises(CaseError, match=r"case #0 is a int"):
        load_cases([write(tmp_path / "ints.json", [1])])
    with pytest.raises(CaseError, match=r"unknown top-level key\(s\) \['comment'\]"):
        load_cases([write(tmp_path / "top.json", {"cases": [], "comment": "x"})])
    with pytest.raises(CaseError, match="expected a case, a list"):
        load_cases([write(tmp_path / "num.json", 5)])
    write(tmp_path / "d1.json", one("same"))
    with pytest.raises(CaseError, match="duplicate case name 'same'"):
        load_cases([str(tmp_path / "d1.json"), str(tmp_path / "d1.json")])


def test_cases_from_json_takes_parsed_documents() -> None:
    [c] = cases_from_json(one("x"))
    assert c.name == "x" and c.description == "" and c.settings.family == 4
    s = only(c)
    assert s.packet.l4 == Tcp(40000, 80, flags=0) and s.raw == {"from": "A"}
    assert isinstance(s.packet.l4, Tcp) and s.packet.l4.flags & TCP_ACK == 0


# ------------------------------------------------------------------ never a crash

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=6)
packet_keys = st.sampled_from(sorted(
    {"from", "dir", "family", "src", "dst", "proto", "zone", "tos", "ttl", "ip_id", "df",
     "flowlabel", "ip_bad_checksum", "payload", "payload_hex", "payload_len", "checksum",
     "bad_checksum", "sport", "dport", "flags", "seq", "ack", "win", "urg", "options", "type",
     "code", "id", "inner", "inner_len", "mtu", "pointer", "gateway", "rest_hex", "gre_version",
     "gre_proto", "key", "call_id", "sleep"}))
settings_keys = st.sampled_from(["family", "sysctl", "zone", "helper", "helpers", "connmark",
                                 "connlabel", "raw_rules", "mangle_rules"])
ICMP_ERROR = {"from": "A", "proto": "icmp", "type": 3, "inner": {"proto": "udp"}}


@given(st.dictionaries(packet_keys, json_values, max_size=5),
       st.dictionaries(settings_keys, json_values, max_size=2),
       st.dictionaries(packet_keys | st.sampled_from(["client_port", "server_port"]),
                       json_values, max_size=3))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_any_json_gives_a_case_or_a_case_error(packet: dict[str, Any], sett: dict[str, Any],
                                               defaults: dict[str, Any]) -> None:
    for p in ({**ICMP_ERROR, **packet}, packet):
        try:
            prepare_case({"name": "x", "settings": sett, "defaults": defaults, "packets": [p]})
        except CaseError as exc:
            assert str(exc).startswith("case x (")


rule_words = st.sampled_from([
    "-p", "tcp", "udp", "icmp", "--dport", "--sport", "80", "1:2", ":", "-j", "CT", "--zone",
    "--helper", "ftp", "NOTRACK", "MARK", "CONNMARK", "--set-mark", "0x1/0x2", "-m",
    "conntrack", "--ctstate", "NEW", "--ctdir", "REPLY", "-s", "1.2.3.4/8", "::1", "!",
    "--icmp-type", "8/0", "dscp", "--dscp", "connlabel", "--label", "--set", "'", "ACCEPT", "-i",
    "65536", "-1"])


@given(st.lists(rule_words, max_size=8))
@settings(max_examples=400)
def test_any_rule_text_parses_or_raises_case_error(words: list[str]) -> None:
    try:
        IptRule.parse(" ".join(words))
    except CaseError as exc:
        assert str(exc).startswith("rule ")
