"""The conntrack core: commit semantics, UDP/ICMP/GRE/generic trackers, zones,
mark and labels, events, expiry, early drop, sysctls. TCP, helpers and NAT
have their own test modules."""

from __future__ import annotations

import pytest

from node.conntrack import Conntrack, Sysctl, SysctlError, Template
from node.conntrack.entry import (
    IP_CT_ESTABLISHED,
    IP_CT_ESTABLISHED_REPLY,
    IP_CT_NEW,
    IP_CT_RELATED,
    IP_CT_RELATED_REPLY,
    IP_CT_UNTRACKED,
    IPCT_ASSURED,
    IPCT_DESTROY,
    IPCT_LABEL,
    IPCT_MARK,
    IPCT_NEW,
    IPCT_REPLY,
    IPS_ASSURED,
    IPS_SEEN_REPLY,
)
from node.conntrack.table import INVALID_CTINFO
from node.packet import (
    IPPROTO_GRE,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_UDP,
    Gre,
    Icmp,
    Packet,
    Udp,
)

A = bytes((198, 18, 1, 2))
B = bytes((198, 19, 1, 2))
R = bytes((198, 19, 5, 1))
A6 = bytes.fromhex("20010db8000100000000000000000002")
B6 = bytes.fromhex("20010db8000200000000000000000002")


def udp(src: bytes, dst: bytes, sport: int, dport: int, **kw: object) -> Packet:
    fam = 4 if len(src) == 4 else 6
    return Packet(fam, src, dst, IPPROTO_UDP, Udp(sport, dport), b"data", length=32, **kw)  # type: ignore[arg-type]


def echo(src: bytes, dst: bytes, type_: int, ident: int = 7) -> Packet:
    proto = IPPROTO_ICMP if len(src) == 4 else IPPROTO_ICMPV6
    return Packet(4 if len(src) == 4 else 6, src, dst, proto, Icmp(type_, 0, ident, 1),
                  length=28)


def icmp_error(src: bytes, dst: bytes, inner: Packet, type_: int = 3, code: int = 3) -> Packet:
    proto = IPPROTO_ICMP if len(src) == 4 else IPPROTO_ICMPV6
    return Packet(inner.family, src, dst, proto, Icmp(type_, code, inner=inner), length=56)


# ---------------------------------------------------------------- commit semantics

def test_uncommitted_packet_is_tracked_as_new_but_not_inserted() -> None:
    ct = Conntrack()
    res = ct.track(udp(A, B, 1000, 53), 0.0)
    assert res.ctinfo == IP_CT_NEW and res.entry is not None
    assert len(ct) == 0
    assert ct.track(udp(A, B, 1000, 53), 0.1).ctinfo == IP_CT_NEW
    assert ct.take_events() == []


def test_commit_inserts_and_emits_new() -> None:
    ct = Conntrack()
    res = ct.commit(udp(A, B, 1000, 53), 0.0)
    assert res.ctinfo == IP_CT_NEW and len(ct) == 1
    [ev] = ct.take_events()
    assert ev.type == "NEW" and ev.bits & IPCT_NEW
    assert ev.entry.flags == ["UNREPLIED"]


def test_reply_is_established_reply_and_sets_seen_reply_once() -> None:
    ct = Conntrack()
    ct.commit(udp(A, B, 1000, 53), 0.0)
    ct.take_events()
    res = ct.commit(udp(B, A, 53, 1000), 0.5)
    assert res.ctinfo == IP_CT_ESTABLISHED_REPLY
    assert res.entry is not None and res.entry.status & IPS_SEEN_REPLY
    [ev] = ct.take_events()
    assert ev.type == "UPDATE" and ev.bits == IPCT_REPLY
    assert ct.commit(udp(A, B, 1000, 53), 0.6).ctinfo == IP_CT_ESTABLISHED
    assert ct.take_events() == []  # nothing changed: no event


# ---------------------------------------------------------------- UDP

def test_udp_unreplied_timeout_is_30s() -> None:
    ct = Conntrack()
    res = ct.commit(udp(A, B, 1000, 53), 10.0)
    assert res.entry is not None and res.entry.expires_at == 40.0


def test_udp_replied_within_2s_keeps_30s_and_is_not_assured() -> None:
    ct = Conntrack()
    ct.commit(udp(A, B, 1000, 53), 0.0)
    res = ct.commit(udp(B, A, 53, 1000), 1.0)
    ct.commit(udp(A, B, 1000, 53), 1.9)
    assert res.entry is not None
    assert not res.entry.status & IPS_ASSURED
    assert res.entry.expires_at == pytest.approx(31.9)


def test_udp_becomes_assured_stream_after_2s() -> None:
    ct = Conntrack()
    ct.commit(udp(A, B, 1000, 53), 0.0)
    ct.commit(udp(B, A, 53, 1000), 0.5)
    ct.take_events()
    res = ct.commit(udp(A, B, 1000, 53), 2.5)
    assert res.entry is not None and res.entry.status & IPS_ASSURED
    assert res.entry.expires_at == 122.5
    [ev] = ct.take_events()
    assert ev.bits & IPCT_ASSURED and ev.entry.flags == ["ASSURED"]


def test_udp_without_reply_never_becomes_assured() -> None:
    ct = Conntrack()
    ct.commit(udp(A, B, 1000, 53), 0.0)
    res = ct.commit(udp(A, B, 1000, 53), 5.0)
    assert res.entry is not None and not res.entry.status & IPS_ASSURED
    assert res.entry.expires_at == 35.0


def test_udp_bad_checksum_is_invalid_unless_checksum_sysctl_off() -> None:
    bad = udp(A, B, 1000, 53, l4_csum_ok=False)
    assert Conntrack().commit(bad, 0.0).ctinfo == INVALID_CTINFO
    off = Conntrack(Sysctl().with_values({"nf_conntrack_checksum": 0}))
    assert off.commit(bad, 0.0).ctinfo == IP_CT_NEW


def test_udp_custom_timeouts_by_sysctl_name() -> None:
    ct = Conntrack(Sysctl().with_values({"net.netfilter.nf_conntrack_udp_timeout": 7,
                                         "nf_conntrack_udp_timeout_stream": 77}))
    ct.commit(udp(A, B, 1000, 53), 0.0)
    ct.commit(udp(B, A, 53, 1000), 0.1)
    res = ct.commit(udp(B, A, 53, 1000), 3.0)
    assert res.entry is not None and res.entry.expires_at == 80.0


# ---------------------------------------------------------------- ICMP

@pytest.mark.parametrize("src,dst,req,rep", [(A, B, 8, 0), (A6, B6, 128, 129)])
def test_icmp_echo_request_reply(src: bytes, dst: bytes, req: int, rep: int) -> None:
    ct = Conntrack()
    assert ct.commit(echo(src, dst, req), 0.0).ctinfo == IP_CT_NEW
    res = ct.commit(echo(dst, src, rep), 0.1)
    assert res.ctinfo == IP_CT_ESTABLISHED_REPLY
    assert res.entry is not None and res.entry.expires_at == pytest.approx(30.1)


def test_icmp_echo_reply_without_request_is_invalid() -> None:
    ct = Conntrack()
    assert ct.commit(echo(B, A, 0), 0.0).ctinfo == INVALID_CTINFO
    assert len(ct) == 0


def test_icmp_echo_reply_with_wrong_id_is_invalid() -> None:
    ct = Conntrack()
    ct.commit(echo(A, B, 8, ident=7), 0.0)
    assert ct.commit(echo(B, A, 0, ident=8), 0.1).ctinfo == INVALID_CTINFO


def test_icmp_router_advertisement_is_invalid() -> None:
    assert Conntrack().commit(echo(A, B, 9), 0.0).ctinfo == INVALID_CTINFO


@pytest.mark.parametrize("type_", [133, 134, 135, 136, 130, 143])
def test_icmpv6_neighbour_discovery_and_mld_are_untracked(type_: int) -> None:
    ct = Conntrack()
    assert ct.commit(echo(A6, B6, type_), 0.0).ctinfo == IP_CT_UNTRACKED
    assert len(ct) == 0


def test_icmp_error_from_server_side_is_related_reply() -> None:
    ct = Conntrack()
    query = udp(A, B, 1000, 53)
    ct.commit(query, 0.0)
    res = ct.commit(icmp_error(R, A, query), 0.1)
    assert res.ctinfo == IP_CT_RELATED_REPLY
    assert res.entry is not None and res.entry.expires_at == 30.0  # not refreshed


def test_icmp_error_from_client_side_is_related_original() -> None:
    ct = Conntrack()
    ct.commit(udp(A, B, 1000, 53), 0.0)
    ct.commit(udp(B, A, 53, 1000), 0.0)
    res = ct.commit(icmp_error(A, B, udp(B, A, 53, 1000)), 0.1)
    assert res.ctinfo == IP_CT_RELATED


def test_icmp_error_for_unknown_flow_or_wrong_outer_destination_is_invalid() -> None:
    ct = Conntrack()
    query = udp(A, B, 1000, 53)
    assert ct.commit(icmp_error(R, A, query), 0.0).ctinfo == INVALID_CTINFO
    ct.commit(query, 0.0)
    elsewhere = bytes((198, 18, 9, 9))
    assert ct.commit(icmp_error(R, elsewhere, query), 0.1).ctinfo == INVALID_CTINFO


def test_icmpv6_error_is_related() -> None:
    ct = Conntrack()
    query = udp(A6, B6, 1000, 53)
    ct.commit(query, 0.0)
    assert ct.commit(icmp_error(B6, A6, query, type_=1, code=4), 0.1).ctinfo == \
        IP_CT_RELATED_REPLY


# ---------------------------------------------------------------- GRE and generic

def test_gre_v0_30s_until_reply_then_assured_180s() -> None:
    ct = Conntrack()
    out = Packet(4, A, B, IPPROTO_GRE, Gre(0), b"x" * 20, length=44)
    back = Packet(4, B, A, IPPROTO_GRE, Gre(0), b"x" * 20, length=44)
    res = ct.commit(out, 0.0)
    assert res.entry is not None and res.entry.expires_at == 30.0
    ct.commit(back, 0.1)
    res = ct.commit(out, 0.2)
    assert res.entry is not None and res.entry.status & IPS_ASSURED
    assert res.entry.expires_at == pytest.approx(180.2)


def test_gre_key_is_not_part_of_the_tuple() -> None:
    ct = Conntrack()
    ct.commit(Packet(4, A, B, IPPROTO_GRE, Gre(0, key=1), length=28), 0.0)
    res = ct.commit(Packet(4, A, B, IPPROTO_GRE, Gre(0, key=2), length=28), 0.1)
    assert res.ctinfo == IP_CT_NEW and len(ct) == 1


def test_generic_protocol_600s_never_assured() -> None:
    ct = Conntrack()
    out = Packet(4, A, B, 253, None, b"abcd", length=24)
    back = Packet(4, B, A, 253, None, b"abcd", length=24)
    ct.commit(out, 0.0)
    ct.commit(back, 1.0)
    res = ct.commit(out, 5.0)
    assert res.ctinfo == IP_CT_ESTABLISHED
    assert res.entry is not None and not res.entry.status & IPS_ASSURED
    assert res.entry.expires_at == 605.0


# ---------------------------------------------------------------- zones, notrack

def test_same_tuple_in_two_zones_is_two_entries() -> None:
    ct = Conntrack()
    ct.commit(udp(A, B, 1000, 53), 0.0, Template(zone=1))
    res = ct.commit(udp(A, B, 1000, 53), 0.0, Template(zone=2))
    assert res.ctinfo == IP_CT_NEW and len(ct) == 2
    assert res.entry is not None and res.entry.zone == 2


def test_reply_in_another_zone_does_not_match() -> None:
    ct = Conntrack()
    ct.commit(udp(A, B, 1000, 53), 0.0, Template(zone=1))
    assert ct.commit(udp(B, A, 53, 1000), 0.1).ctinfo == IP_CT_NEW


def test_notrack_template_gives_untracked() -> None:
    ct = Conntrack()
    assert ct.commit(udp(A, B, 1000, 53), 0.0, Template(notrack=True)).ctinfo == \
        IP_CT_UNTRACKED
    assert len(ct) == 0
    # the answer, not matched by the rule, opens an entry in the reverse direction
    res = ct.commit(udp(B, A, 53, 1000), 0.1)
    assert res.ctinfo == IP_CT_NEW and res.entry is not None and res.entry.orig.src == B


# ---------------------------------------------------------------- mark and labels

def test_mark_rule_is_value_or_old_and_not_mask() -> None:
    ct = Conntrack()
    res = ct.commit(udp(A, B, 1000, 53), 0.0)
    assert res.entry is not None
    ct.set_mark(res.entry, 0xF0, 0xFF)
    assert res.entry.mark == 0xF0
    ct.set_mark(res.entry, 0x0F00, 0x0F00)
    assert res.entry.mark == 0x0FF0
    ct.set_mark(res.entry, 0x1, 0)  # mask 0: no-op
    assert res.entry.mark == 0x0FF0
    ct.set_mark(res.entry, 0x3, 0x1)  # value is not ANDed with the mask
    assert res.entry.mark == 0x0FF3
    ct.deliver(res.entry, 0.0)
    assert ct.take_events()[-1].bits & IPCT_MARK


def test_labels_are_128_bits_old_and_not_mask_xor_value() -> None:
    ct = Conntrack()
    res = ct.commit(udp(A, B, 1000, 53), 0.0)
    assert res.entry is not None
    ct.set_labels(res.entry, 1 << 127 | 1, (1 << 128) - 1)
    assert res.entry.labels == 1 << 127 | 1
    ct.set_labels(res.entry, 1 << 5, 1 << 127)
    assert res.entry.labels == 1 | 1 << 5
    ct.deliver(res.entry, 0.0)
    assert ct.take_events()[-1].bits & IPCT_LABEL
    assert ct.view(res.entry, 0.0).labels_list() == [0, 5]


def test_expected_child_inherits_master_mark() -> None:
    from node.conntrack.expect import Expectation
    from node.conntrack.tuple import Tuple

    ct = Conntrack()
    master = ct.commit(udp(A, B, 1000, 69), 0.0).entry
    assert master is not None
    master.mark = 42
    ct.expect.add(Expectation(Tuple(4, IPPROTO_UDP, B, A, 0, 1000), False, True, master,
                              None, 300.0, 300.0))
    res = ct.commit(udp(B, A, 3333, 1000), 1.0)
    assert res.ctinfo == IP_CT_RELATED
    assert res.entry is not None and res.entry.master is master and res.entry.mark == 42
    [_, ev] = ct.take_events()
    assert ev.type == "NEW"


# ---------------------------------------------------------------- expiry and events

def test_expiry_removes_entry_and_emits_destroy() -> None:
    ct = Conntrack()
    ct.commit(udp(A, B, 1000, 53), 0.0)
    ct.take_events()
    assert ct.next_deadline() == 30.0
    assert ct.expire(29.9) == 0 and len(ct) == 1
    assert ct.expire(30.0) == 1 and len(ct) == 0
    [ev] = ct.take_events()
    assert ev.type == "DESTROY" and ev.bits & IPCT_DESTROY


def test_refresh_reschedules_expiry() -> None:
    ct = Conntrack()
    ct.commit(udp(A, B, 1000, 53), 0.0)
    ct.commit(udp(A, B, 1000, 53), 20.0)
    assert ct.expire(30.0) == 0
    assert ct.next_deadline() == 50.0
    assert ct.expire(50.0) == 1


def test_expired_entry_is_not_found_even_before_gc() -> None:
    ct = Conntrack()
    ct.commit(udp(A, B, 1000, 53), 0.0)
    assert ct.commit(udp(A, B, 1000, 53), 31.0).ctinfo == IP_CT_NEW


def test_events_off_emits_nothing() -> None:
    ct = Conntrack(events=False)
    ct.commit(udp(A, B, 1000, 53), 0.0)
    ct.expire(100.0)
    assert ct.take_events() == []


# ---------------------------------------------------------------- table full

def test_full_table_early_drops_an_unassured_entry() -> None:
    ct = Conntrack(Sysctl(nf_conntrack_max=2))
    ct.commit(udp(A, B, 1, 53), 0.0)
    ct.commit(udp(A, B, 2, 53), 0.0)
    res = ct.commit(udp(A, B, 3, 53), 0.0)
    assert res.ctinfo == IP_CT_NEW and len(ct) == 2
    assert ct.stats["early_drop"] == 1
    assert ct.find(_t(A, B, 1, 53)) is None


def test_full_table_of_assured_entries_drops_the_packet() -> None:
    ct = Conntrack(Sysctl(nf_conntrack_max=1))
    ct.commit(udp(A, B, 1, 53), 0.0)
    ct.commit(udp(B, A, 53, 1), 0.1)
    ct.commit(udp(A, B, 1, 53), 3.0)  # assured
    res = ct.commit(udp(A, B, 2, 53), 3.0)
    assert res.verdict == 0 and res.reason == "table full, dropping packet"
    assert len(ct) == 1


def _t(src: bytes, dst: bytes, sport: int, dport: int):  # type: ignore[no-untyped-def]
    from node.conntrack.tuple import Tuple

    return Tuple(4, IPPROTO_UDP, src, dst, sport, dport)


# ---------------------------------------------------------------- sysctl

def test_unknown_sysctl_is_rejected() -> None:
    with pytest.raises(SysctlError, match=r"unknown sysctl net\.netfilter\.nf_conntrack_nope"):
        Sysctl().with_values({"nf_conntrack_nope": 1})


def test_non_integer_sysctl_is_rejected() -> None:
    with pytest.raises(SysctlError, match="not an integer"):
        Sysctl().with_values({"nf_conntrack_tcp_loose": "yes"})


def test_kernel_defaults() -> None:
    s = Sysctl()
    assert (s.nf_conntrack_tcp_timeout_established, s.nf_conntrack_udp_timeout,
            s.nf_conntrack_udp_timeout_stream, s.nf_conntrack_icmp_timeout,
            s.nf_conntrack_generic_timeout, s.nf_conntrack_gre_timeout,
            s.nf_conntrack_gre_timeout_stream) == (432000, 30, 120, 30, 600, 30, 180)



def test_an_entrys_tuples_share_one_int_object_per_port_value() -> None:
    """A parsed packet's ports are int objects of its own; the tuples an entry
    keeps use one shared object per 16-bit value instead (tuple.interned())."""
    ct = Conntrack()
    entries = []
    for i in range(2):
        sport, dport = int("40000"), int("5353")  # fresh objects, as a parser makes
        pkt = udp(bytes((198, 18, 0, 1 + i)), bytes((198, 19, 0, 1)), sport, dport)
        res = ct.commit(pkt, 1000.0)
        assert res.entry is not None and res.entry.orig == (4, 17, pkt.src, pkt.dst, 40000, 5353)
        entries.append(res.entry)
    a, b = entries
    assert a.orig.sport is b.orig.sport and a.orig.dport is b.orig.dport
    assert a.reply.dport is a.orig.sport and a.reply.sport is a.orig.dport
