"""NAT as act_ct applies it (`ct commit nat src|dst addr A[-B] [port P[-Q]]`,
bare `ct nat`), driven through the real Conntrack: track, NAT, confirm."""

from __future__ import annotations

from dataclasses import replace

import pytest

from node.conntrack import Conntrack, CtResult, Sysctl, Template, nat
from node.conntrack.entry import (
    IP_CT_ESTABLISHED,
    IP_CT_ESTABLISHED_REPLY,
    IP_CT_NEW,
    IP_CT_RELATED,
    IP_CT_RELATED_REPLY,
    IPS_CONFIRMED,
    IPS_DST_NAT,
    IPS_DST_NAT_DONE,
    IPS_SRC_NAT,
    IPS_SRC_NAT_DONE,
)
from node.conntrack.l4proto import ACCEPT, DROP
from node.conntrack.nat import DST, SRC, NatError, NatOutcome, NatRange
from node.conntrack.tuple import Tuple
from node.packet import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    Icmp,
    Packet,
    Tcp,
    Udp,
    build,
    icmp_echo,
    icmp_error,
    ip_bytes,
    ip_checksum,
    ip_str,
    l4_checksum,
    parse,
    tcp,
    udp,
)

A1, A2 = "198.18.1.2", "198.18.1.3"  # clients
B = "198.19.1.2"  # server
N = "198.19.9.1"  # the NAT address
T0 = 1000.0
NAT_STATUS = IPS_SRC_NAT | IPS_DST_NAT | IPS_SRC_NAT_DONE | IPS_DST_NAT_DONE


def through(ct: Conntrack, pkt: Packet, rng: NatRange | None = None, commit: bool = True,
            now: float = T0, zone: int = 0) -> tuple[CtResult, NatOutcome]:
    """One act_ct `ct [commit] [zone Z] nat [...]`: track, NAT, helper and
    confirm when committing (nothing when NAT drops)."""
    res = ct.track(pkt, now, Template(zone=zone))
    out = nat.act_nat(ct, res.entry, res.ctinfo, pkt, rng, commit, now)
    if commit and out.verdict == ACCEPT and res.entry is not None \
            and ct.help(res, out.packet, now) == ACCEPT:
        res = ct.confirm(res, now)
    return res, out


def passes(ct: Conntrack, pkt: Packet, rng: NatRange | None, now: float = T0,
           zone: int = 0) -> bool:
    """NAT accepted the packet and the entry was confirmed."""
    res, out = through(ct, pkt, rng, now=now, zone=zone)
    return out.verdict == ACCEPT and res.verdict == ACCEPT and res.entry is not None


def src_of(pkt: Packet) -> tuple[str, int]:
    assert isinstance(pkt.l4, Tcp | Udp)
    return ip_str(pkt.src), pkt.l4.sport


def dst_of(pkt: Packet) -> tuple[str, int]:
    assert isinstance(pkt.l4, Tcp | Udp)
    return ip_str(pkt.dst), pkt.l4.dport


def tup(src: str, dst: str, sport: int, dport: int, proto: int = IPPROTO_UDP) -> Tuple:
    s, d = ip_bytes(src), ip_bytes(dst)
    return Tuple(4 if len(s) == 4 else 6, proto, s, d, sport, dport)


def wire_ok(pkt: Packet) -> Packet:
    """The packet as the next hop parses it: checksums must verify."""
    again = parse(build(pkt))
    assert again.l4_csum_ok and again.ip_csum_ok
    return again


# ---------------------------------------------------------------- ranges

def test_range_parses_tc_words_and_prints_them_back() -> None:
    rng = NatRange.parse("src", "5.5.5.7-5.5.6.0", "1000-2000")
    assert rng.kind == SRC and rng.min_addr == ip_bytes("5.5.5.7")
    assert rng.max_addr == ip_bytes("5.5.6.0") and (rng.min_port, rng.max_port) == (1000, 2000)
    assert str(rng) == "src addr 5.5.5.7-5.5.6.0 port 1000-2000"
    single = NatRange.parse("dst", "2001::1", "80")
    assert single.max_addr == single.min_addr and single.max_port == 80
    assert str(single) == "dst addr 2001::1 port 80"
    assert single.range_flags == nat.NF_NAT_RANGE_MAP_IPS | nat.NF_NAT_RANGE_PROTO_SPECIFIED


@pytest.mark.parametrize("args", [("both", "1.2.3.4", None), ("src", "1.2.3.4-2001::1", None),
                                  ("src", "1.2.3.x", None), ("dst", "1.2.3.4", "70000"),
                                  ("dst", "1.2.3.4", "x")])
def test_bad_ranges_are_refused(args: tuple[str, str, str | None]) -> None:
    with pytest.raises(NatError):
        NatRange.parse(*args)


# ---------------------------------------------------------------- SNAT

def test_snat_rewrites_the_source_and_the_reply_tuple() -> None:
    ct = Conntrack()
    res, out = through(ct, udp(A1, B, 5000, 53, b"q"), NatRange.parse("src", N))
    entry = res.entry
    assert out.verdict == ACCEPT and out.snat and not out.dnat
    assert src_of(out.packet) == (N, 5000) and dst_of(out.packet) == (B, 53)
    assert entry is not None and entry.orig == tup(A1, B, 5000, 53)
    assert entry.reply == tup(B, N, 53, 5000)
    assert entry.status & NAT_STATUS == IPS_SRC_NAT | IPS_SRC_NAT_DONE
    assert entry.status & IPS_CONFIRMED
    assert isinstance(entry.nat, nat.NatBinding) and entry.nat.src == NatRange.parse("src", N)
    wire_ok(out.packet)


def test_reply_is_de_natted_by_a_bare_nat() -> None:
    ct = Conntrack()
    through(ct, udp(A1, B, 5000, 53, b"q"), NatRange.parse("src", N))
    res, out = through(ct, udp(B, N, 53, 5000, b"a"), None, commit=False)
    assert res.ctinfo == IP_CT_ESTABLISHED_REPLY
    assert src_of(out.packet) == (B, 53) and dst_of(out.packet) == (A1, 5000)
    assert out.dnat and not out.snat  # the reverse manip
    wire_ok(out.packet)


def test_later_packets_replay_the_binding_with_a_bare_nat() -> None:
    ct = Conntrack()
    through(ct, udp(A1, B, 5000, 53, b"q"), NatRange.parse("src", N))
    through(ct, udp(B, N, 53, 5000, b"a"), None, commit=False)
    res, out = through(ct, udp(A1, B, 5000, 53, b"q2"), None, commit=False)
    assert res.ctinfo == IP_CT_ESTABLISHED and src_of(out.packet) == (N, 5000)


def test_bare_nat_does_not_translate_a_packet_still_new() -> None:
    """nf_ct_nat(): a NEW packet of a committed connection (no reply yet) is
    only translated by an action that names the manip."""
    ct = Conntrack()
    through(ct, udp(A1, B, 5000, 53, b"q"), NatRange.parse("src", N))
    res, out = through(ct, udp(A1, B, 5000, 53, b"again"), None, commit=False)
    assert res.ctinfo == IP_CT_NEW and out.manips == 0 and src_of(out.packet) == (A1, 5000)
    res, out = through(ct, udp(A1, B, 5000, 53, b"again"), NatRange.parse("src", N))
    assert src_of(out.packet) == (N, 5000)


def test_no_nat_action_leaves_the_packet_alone() -> None:
    ct = Conntrack()
    pkt = udp(A1, B, 5000, 53, b"q")
    res, out = through(ct, pkt, None)
    assert out.packet is pkt and out.manips == 0
    assert res.entry is not None and res.entry.status & NAT_STATUS == 0


def test_source_already_in_range_and_free_is_kept_without_the_nat_bit() -> None:
    ct = Conntrack()
    res, out = through(ct, udp(A1, B, 5000, 53, b"q"),
                       NatRange.parse("src", "198.18.1.0-198.18.1.255", "4000-6000"))
    assert res.entry is not None and out.packet.src == ip_bytes(A1)
    assert res.entry.status & NAT_STATUS == IPS_SRC_NAT_DONE
    assert res.entry.reply == tup(B, A1, 53, 5000)


def test_snat_address_range_picks_an_address_in_range() -> None:
    ct = Conntrack()
    rng = NatRange.parse("src", "198.19.9.10-198.19.9.20")
    chosen = set()
    for i in range(20):
        _, out = through(ct, udp(f"198.18.1.{i + 2}", B, 5000, 53, b"q"), rng)
        addr = ip_bytes(ip_str(out.packet.src))
        assert ip_bytes("198.19.9.10") <= addr <= ip_bytes("198.19.9.20")
        chosen.add(addr)
    assert len(chosen) > 1  # hashed over the clients


def test_snat_address_choice_is_the_kernels_hash() -> None:
    """find_best_ips_proto(): jhash2 of the source words, seeded with the last
    destination word and the zone, scaled into the range."""
    ct = Conntrack()
    lo = ip_bytes("198.19.9.10")
    rng = NatRange(SRC, lo, ip_bytes("198.19.9.20"))
    _, out = through(ct, udp(A1, B, 5000, 53, b"q"), rng)
    src_words = nat._le_words(ip_bytes(A1))
    j = nat.jhash2(src_words, int.from_bytes(ip_bytes(B), "little") ^ 0)
    expect = int.from_bytes(lo, "big") + ((j * 11) >> 32)
    assert out.packet.src == expect.to_bytes(4, "big")


def test_persistent_maps_a_client_to_one_address_whatever_the_destination() -> None:
    ct = Conntrack()
    rng = NatRange(SRC, ip_bytes("198.19.9.10"), ip_bytes("198.19.9.200"),
                   flags=nat.NF_NAT_RANGE_PERSISTENT)
    addrs = {through(ct, udp(A1, f"198.19.1.{i}", 5000, 53, b"q"), rng)[1].packet.src
             for i in range(2, 12)}
    assert len(addrs) == 1


def test_snat_port_range_moves_the_port_into_it() -> None:
    ct = Conntrack()
    res, out = through(ct, tcp(A1, B, 40000, 80, "S", seq=1),
                       NatRange.parse("src", N, "1000-1999"))
    addr, port = src_of(out.packet)
    assert addr == N and 1000 <= port <= 1999
    assert res.entry is not None and res.entry.reply == tup(B, N, 80, port, IPPROTO_TCP)
    wire_ok(out.packet)


def test_two_clients_mapped_to_one_address_get_different_ports() -> None:
    ct = Conntrack()
    rng = NatRange.parse("src", N)
    r1, o1 = through(ct, udp(A1, B, 5000, 53, b"q"), rng)
    r2, o2 = through(ct, udp(A2, B, 5000, 53, b"q"), rng)
    assert src_of(o1.packet) == (N, 5000)  # the first keeps its port
    addr, port = src_of(o2.packet)
    assert addr == N and port != 5000 and port >= 1024  # ephemeral ports stay >= 1024
    assert r1.entry is not None and r2.entry is not None
    assert r1.entry.reply != r2.entry.reply
    # Each answer finds its own client.
    _, back1 = through(ct, udp(B, N, 53, 5000, b"a"), None, commit=False)
    _, back2 = through(ct, udp(B, N, 53, port, b"a"), None, commit=False)
    assert dst_of(back1.packet) == (A1, 5000) and dst_of(back2.packet) == (A2, 5000)


def test_low_source_ports_stay_in_their_class() -> None:
    ct = Conntrack()
    rng = NatRange.parse("src", N)
    through(ct, udp(A1, B, 123, 123, b"q"), rng)
    through(ct, udp(A1, B, 700, 123, b"q"), rng)
    _, low = through(ct, udp(A2, B, 123, 123, b"q"), rng)
    _, mid = through(ct, udp(A2, B, 700, 123, b"q"), rng)
    assert 1 <= src_of(low.packet)[1] <= 511 and src_of(low.packet)[1] != 123
    assert 600 <= src_of(mid.packet)[1] <= 1023 and src_of(mid.packet)[1] != 700


def test_same_source_reuses_its_existing_mapping() -> None:
    """find_appropriate_src(): a second connection from a mapped source gets
    the same address and port when that tuple is free."""
    ct = Conntrack()
    rng = NatRange.parse("src", N, "1000-1999")
    _, first = through(ct, udp(A1, B, 5000, 53, b"q"), rng)
    _, second = through(ct, udp(A1, "198.19.1.3", 5000, 53, b"q"), rng)
    assert src_of(second.packet) == src_of(first.packet)


def test_exhausted_range_drops_the_packet() -> None:
    ct = Conntrack()
    rng = NatRange.parse("src", N, "1000-1001")
    ports = {src_of(through(ct, udp(f"198.18.1.{i}", B, 5000, 53, b"q"), rng)[1].packet)[1]
             for i in (2, 3)}
    assert ports == {1000, 1001}
    pkt = udp("198.18.1.4", B, 5000, 53, b"q")
    entry = ct.track(pkt, T0).entry
    assert entry is not None
    assert not nat.setup(ct, entry, rng, T0)  # no free tuple left
    assert nat.clashes(ct, entry, T0)
    res, out = through(ct, pkt, rng)
    assert out.verdict == ACCEPT  # as nf_nat_setup_info(): the confirmation refuses it
    assert res.verdict == DROP and res.entry is None
    assert len(ct) == 2


def test_single_port_taken_drops_the_packet() -> None:
    ct = Conntrack()
    rng = NatRange.parse("src", N, "1000")
    assert passes(ct, udp(A1, B, 5000, 53, b"q"), rng)
    assert not passes(ct, udp(A2, B, 5000, 53, b"q"), rng)


def test_a_freed_tuple_is_reused_once_the_entry_expired() -> None:
    ct = Conntrack()
    rng = NatRange.parse("src", N, "1000")
    through(ct, udp(A1, B, 5000, 53, b"q"), rng)
    assert not passes(ct, udp(A2, B, 5000, 53, b"q"), rng, now=T0 + 29)
    ct.expire(T0 + 31)  # the unreplied UDP entry is gone after 30 s
    assert passes(ct, udp(A2, B, 5000, 53, b"q"), rng, now=T0 + 31)


def test_zones_do_not_clash() -> None:
    ct = Conntrack()
    rng = NatRange.parse("src", N, "1000")
    assert passes(ct, udp(A1, B, 5000, 53, b"q"), rng, zone=1)
    assert passes(ct, udp(A2, B, 5000, 53, b"q"), rng, zone=2)
    assert not passes(ct, udp("198.18.1.4", B, 5000, 53, b"q"), rng, zone=2)


def test_snat_ipv6() -> None:
    ct = Conntrack()
    rng = NatRange.parse("src", "2001:db8:2::99")
    _, o1 = through(ct, tcp("2001:db8:1::2", "2001:db8:2::2", 40000, 80, "S", seq=1), rng)
    _, o2 = through(ct, tcp("2001:db8:1::3", "2001:db8:2::2", 40000, 80, "S", seq=1), rng)
    assert src_of(o1.packet) == ("2001:db8:2::99", 40000)
    assert src_of(o2.packet)[0] == "2001:db8:2::99" and src_of(o2.packet)[1] != 40000
    wire_ok(o1.packet)
    wire_ok(o2.packet)


def test_snat_icmp_echo_changes_the_id_on_a_clash() -> None:
    ct = Conntrack()
    rng = NatRange.parse("src", N)
    _, o1 = through(ct, icmp_echo(A1, B, id=7, seq=1), rng)
    _, o2 = through(ct, icmp_echo(A2, B, id=7, seq=1), rng)
    assert isinstance(o1.packet.l4, Icmp) and isinstance(o2.packet.l4, Icmp)
    assert o1.packet.l4.id == 7 and o2.packet.l4.id != 7
    res, back = through(ct, icmp_echo(B, N, id=o2.packet.l4.id, seq=1, reply=True), None,
                        commit=False)
    assert res.ctinfo == IP_CT_ESTABLISHED_REPLY
    assert isinstance(back.packet.l4, Icmp) and back.packet.l4.id == 7
    assert ip_str(back.packet.dst) == A2
    wire_ok(back.packet)


# ---------------------------------------------------------------- DNAT

def test_dnat_rewrites_the_destination_and_binds_the_source_too() -> None:
    ct = Conntrack()
    vip = "198.19.1.100"
    res, out = through(ct, tcp(A1, vip, 40000, 80, "S", seq=1),
                       NatRange.parse("dst", "198.19.2.10", "8080"))
    entry = res.entry
    assert entry is not None and out.dnat and out.snat
    assert dst_of(out.packet) == ("198.19.2.10", 8080) and src_of(out.packet) == (A1, 40000)
    assert entry.reply == tup("198.19.2.10", A1, 8080, 40000, IPPROTO_TCP)
    # DNAT done, and the null source binding made "source done" without SRC_NAT.
    assert entry.status & NAT_STATUS == IPS_DST_NAT | IPS_DST_NAT_DONE | IPS_SRC_NAT_DONE
    syn_ack = tcp("198.19.2.10", A1, 8080, 40000, "SA", seq=100, ack=2)
    res2, back = through(ct, syn_ack, None, commit=False)
    assert res2.ctinfo == IP_CT_ESTABLISHED_REPLY
    assert src_of(back.packet) == (vip, 80) and dst_of(back.packet) == (A1, 40000)
    wire_ok(back.packet)


def test_dnat_port_range_starts_at_its_first_port() -> None:
    ct = Conntrack()
    rng = NatRange.parse("dst", "198.19.2.10-198.19.2.20", "8000-8010")
    for sport in (40000, 40001):
        _, out = through(ct, tcp(A1, "198.19.1.100", sport, 80, "S", seq=1), rng)
        addr, port = dst_of(out.packet)
        assert port == 8000  # the destination search starts at the bottom
        assert ip_bytes("198.19.2.10") <= ip_bytes(addr) <= ip_bytes("198.19.2.20")


def test_dnat_port_range_skips_used_ports() -> None:
    ct = Conntrack()
    rng = NatRange.parse("dst", "198.19.2.10", "8000-8010")
    ports = [dst_of(through(ct, udp(A1, "198.19.1.100", 5000, 53 + i, b"q"), rng)[1].packet)[1]
             for i in range(3)]
    assert ports == [8000, 8001, 8002]


def test_dnat_keeps_a_destination_already_in_range() -> None:
    ct = Conntrack()
    res, out = through(ct, udp(A1, B, 5000, 8005, b"q"), NatRange.parse("dst", B, "8000-8010"))
    assert dst_of(out.packet) == (B, 8005)
    assert res.entry is not None and not res.entry.status & IPS_DST_NAT
    assert res.entry.status & IPS_DST_NAT_DONE


def test_dnat_null_source_binding_moves_the_port_on_a_clash() -> None:
    """Two VIPs to one server, same client port: the second connection's reply
    tuple would be the first's, so its source port is changed."""
    ct = Conntrack()
    server = NatRange.parse("dst", "198.19.2.10", "80")
    _, o1 = through(ct, tcp(A1, "198.19.1.100", 40000, 80, "S", seq=1), server)
    res, o2 = through(ct, tcp(A1, "198.19.1.101", 40000, 80, "S", seq=1), server)
    assert src_of(o1.packet) == (A1, 40000)
    assert src_of(o2.packet)[0] == A1 and src_of(o2.packet)[1] != 40000
    assert res.entry is not None and res.entry.status & IPS_SRC_NAT
    assert o2.verdict == ACCEPT and res.entry.status & IPS_CONFIRMED


# ---------------------------------------------------------------- ICMP errors

def test_icmp_error_for_a_snat_connection_is_translated_inside_and_out() -> None:
    ct = Conntrack()
    through(ct, udp(A1, B, 5000, 53, b"q"), NatRange.parse("src", N, "2000"))
    quoted = udp(N, B, 2000, 53, b"q")
    err = icmp_error("198.19.5.1", N, quoted, type=3, code=3)
    res, out = through(ct, err, None, commit=False)
    assert res.ctinfo == IP_CT_RELATED_REPLY and out.verdict == ACCEPT and out.dnat
    pkt = wire_ok(out.packet)
    assert ip_str(pkt.src) == "198.19.5.1" and ip_str(pkt.dst) == A1
    assert isinstance(pkt.l4, Icmp) and pkt.l4.inner is not None
    inner = pkt.l4.inner
    assert src_of(inner) == (A1, 5000) and dst_of(inner) == (B, 53)
    # The quoted packet's own checksums were updated along.
    assert inner.ip_csum == ip_checksum(inner) and inner.l4_csum == l4_checksum(inner)


def test_icmp_error_in_the_original_direction_needs_commit() -> None:
    ct = Conntrack()
    through(ct, udp(A1, B, 5000, 53, b"q"), NatRange.parse("src", N, "2000"))
    through(ct, udp(B, N, 53, 2000, b"a"), None, commit=False)
    err = icmp_error("198.18.7.1", B, udp(B, A1, 53, 5000, b"a"), type=3, code=3)
    res, bare = through(ct, err, None, commit=False)
    assert res.ctinfo == IP_CT_RELATED and bare.manips == 0 and bare.packet is err
    res, out = through(ct, err, NatRange.parse("src", N, "2000"), commit=True)
    pkt = wire_ok(out.packet)
    assert ip_str(pkt.src) == N and ip_str(pkt.dst) == B
    assert isinstance(pkt.l4, Icmp) and pkt.l4.inner is not None
    assert src_of(pkt.l4.inner) == (B, 53) and dst_of(pkt.l4.inner) == (N, 2000)


def test_icmp_error_with_a_bad_checksum_is_dropped_by_nat() -> None:
    ct = Conntrack(Sysctl(nf_conntrack_checksum=0))  # conntrack lets it through
    through(ct, udp(A1, B, 5000, 53, b"q"), NatRange.parse("src", N, "2000"))
    err = icmp_error("198.19.5.1", N, udp(N, B, 2000, 53, b"q"))
    bad = replace(err, l4_csum=0x1234, l4_csum_ok=False)
    res, out = through(ct, bad, None, commit=False)
    assert res.ctinfo == IP_CT_RELATED_REPLY and out.verdict == DROP


def test_icmp_redirect_for_a_natted_connection_is_dropped() -> None:
    ct = Conntrack()
    through(ct, udp(A1, B, 5000, 53, b"q"), NatRange.parse("src", N, "2000"))
    err = icmp_error("198.19.5.1", N, udp(N, B, 2000, 53, b"q"), type=5,
                     rest=ip_bytes("198.19.5.2"))
    _, out = through(ct, err, None, commit=False)
    assert out.verdict == DROP


def test_icmp_error_quoting_a_truncated_tcp_header() -> None:
    ct = Conntrack()
    through(ct, tcp(A1, B, 40000, 80, "S", seq=1), NatRange.parse("src", N, "2000"))
    quoted = tcp(N, B, 2000, 80, "S", seq=1)
    err = icmp_error("198.19.5.1", N, quoted, type=11, inner_len=28)  # IP + 8 bytes of TCP
    res, out = through(ct, err, None, commit=False)
    assert res.ctinfo == IP_CT_RELATED_REPLY and out.verdict == ACCEPT
    pkt = wire_ok(out.packet)
    assert isinstance(pkt.l4, Icmp) and pkt.l4.inner is not None
    assert ip_str(pkt.dst) == A1 and src_of(pkt.l4.inner) == (A1, 40000)


def test_icmpv6_error_for_a_dnat_connection() -> None:
    ct = Conntrack()
    vip, real = "2001:db8:2::100", "2001:db8:2::10"
    through(ct, udp("2001:db8:1::2", vip, 5000, 53, b"q"), NatRange.parse("dst", real))
    # The client's side could not deliver a reply, which it saw coming from the VIP.
    quoted = udp(vip, "2001:db8:1::2", 53, 5000, b"a")
    err = icmp_error("2001:db8:1::ff", vip, quoted)
    res, out = through(ct, err, NatRange.parse("dst", real), commit=True)
    assert res.ctinfo == IP_CT_RELATED and out.dnat
    pkt = wire_ok(out.packet)
    assert ip_str(pkt.src) == "2001:db8:1::ff" and ip_str(pkt.dst) == real
    assert isinstance(pkt.l4, Icmp) and pkt.l4.inner is not None
    assert src_of(pkt.l4.inner) == (real, 53) and dst_of(pkt.l4.inner) == ("2001:db8:1::2", 5000)


# ---------------------------------------------------------------- mangle / setup

def test_mangle_applies_both_manips_of_a_double_nat() -> None:
    ct = Conntrack()
    pkt = udp(A1, "198.19.1.100", 5000, 53, b"q")
    res = ct.track(pkt, T0)
    entry = res.entry
    assert entry is not None
    assert nat.setup(ct, entry, NatRange.parse("dst", B, "5353"), T0)
    assert nat.setup(ct, entry, NatRange.parse("src", N, "2000"), T0)
    assert entry.status & NAT_STATUS == NAT_STATUS
    out = nat.mangle(pkt, entry, 0)
    assert src_of(out) == (N, 2000) and dst_of(out) == (B, 5353)
    back = nat.mangle(udp(B, N, 5353, 2000, b"a"), entry, 1)
    assert src_of(back) == ("198.19.1.100", 53) and dst_of(back) == (A1, 5000)


def test_setup_twice_for_one_manip_fails_and_confirmed_entries_are_left_alone() -> None:
    ct = Conntrack()
    res, _ = through(ct, udp(A1, B, 5000, 53, b"q"), NatRange.parse("src", N))
    entry = res.entry
    assert entry is not None
    before = (entry.reply, entry.status)
    assert nat.setup(ct, entry, NatRange.parse("dst", "198.19.2.2"), T0)  # confirmed: no-op
    assert (entry.reply, entry.status) == before
    fresh = ct.track(udp(A2, B, 5000, 53, b"q"), T0).entry
    assert fresh is not None
    assert nat.setup(ct, fresh, NatRange.parse("src", N, "3000"), T0)
    assert not nat.setup(ct, fresh, NatRange.parse("src", N, "3001"), T0)


def test_null_binding_keeps_the_tuple_when_free() -> None:
    ct = Conntrack()
    entry = ct.track(udp(A1, B, 5000, 53, b"q"), T0).entry
    assert entry is not None
    assert nat.null_binding(ct, entry, DST, T0)
    assert entry.status & NAT_STATUS == IPS_DST_NAT_DONE
    assert entry.reply == tup(B, A1, 53, 5000)


def test_time_wait_entry_is_evicted_for_a_new_syn() -> None:
    """nf_nat_used_tuple_harder(): in the last attempts, a source-NATed
    TIME_WAIT connection whose sequence space the new SYN has passed is killed."""
    ct = Conntrack()
    rng = NatRange.parse("src", N, "1000-1001")

    def open_(client: str, isn: int) -> int:
        _, out = through(ct, tcp(client, B, 40000, 80, "S", seq=isn), rng)
        port = src_of(out.packet)[1]
        through(ct, tcp(B, N, 80, port, "SA", seq=9000, ack=isn + 1), None, commit=False)
        through(ct, tcp(client, B, 40000, 80, "A", seq=isn + 1, ack=9001), None, commit=False)
        return port

    old_port = open_(A1, 1000)
    open_(A2, 1000)
    # A1's connection closes: FIN, ACK, FIN, ACK -> TIME_WAIT
    through(ct, tcp(A1, B, 40000, 80, "FA", seq=1001, ack=9001), None, commit=False)
    through(ct, tcp(B, N, 80, old_port, "A", seq=9001, ack=1002), None, commit=False)
    through(ct, tcp(B, N, 80, old_port, "FA", seq=9001, ack=1002), None, commit=False)
    through(ct, tcp(A1, B, 40000, 80, "A", seq=1002, ack=9002), None, commit=False)
    tw = ct.find(tup(A1, B, 40000, 80, IPPROTO_TCP))
    assert tw is not None and ct.view(tw, T0).proto_state == "TIME_WAIT"
    res, out = through(ct, tcp("198.18.1.4", B, 40000, 80, "S", seq=5000), rng)
    assert out.verdict == ACCEPT and src_of(out.packet) == (N, old_port)
    assert ct.find(tup(A1, B, 40000, 80, IPPROTO_TCP)) is None  # killed
    assert res.entry is not None and res.entry.status & IPS_CONFIRMED


def test_jhash_matches_lookup3_test_vectors() -> None:
    text = b"Four score and seven years ago"
    assert nat.jhash(text, 0) == 0x17770551
    assert nat.jhash(text, 1) == 0xCD628161
    data = bytes(range(16))
    words = [int.from_bytes(data[i:i + 4], "little") for i in range(0, 16, 4)]
    assert nat.jhash2(words, 7) == nat.jhash(data, 7)


def test_incremental_checksum_update_matches_a_recomputation() -> None:
    pkt = udp(A1, B, 5000, 53, b"payload")
    csum = l4_checksum(pkt)
    moved = replace(pkt, src=ip_bytes(N), l4=Udp(1234, 53))
    updated = nat.csum_replace(csum, ip_bytes(A1) + (5000).to_bytes(2, "big"),
                               ip_bytes(N) + (1234).to_bytes(2, "big"))
    assert updated == l4_checksum(moved)


def test_explicit_bad_checksum_stays_bad_after_nat() -> None:
    ct = Conntrack(Sysctl(nf_conntrack_checksum=0))
    pkt = udp(A1, B, 5000, 53, b"q")
    bad = replace(pkt, l4_csum=l4_checksum(pkt) ^ 0x5A5A, l4_csum_ok=False)
    _, out = through(ct, bad, NatRange.parse("src", N, "2000"))
    assert src_of(out.packet) == (N, 2000)
    assert not parse(build(out.packet)).l4_csum_ok
    assert out.packet.l4_csum != l4_checksum(out.packet)


@pytest.mark.parametrize("ctinfo", [IP_CT_ESTABLISHED, IP_CT_NEW])
def test_act_nat_without_an_entry_accepts(ctinfo: int) -> None:
    ct = Conntrack()
    pkt = udp(A1, B, 5000, 53, b"q")
    out = nat.act_nat(ct, None, ctinfo, pkt, NatRange.parse("src", N), True, T0)
    assert out == NatOutcome(ACCEPT, pkt)


def test_source_index_does_not_grow_with_dead_connections() -> None:
    ct = Conntrack()
    rng = NatRange.parse("src", N)
    for i in range(600):
        now = T0 + 40 * (i // 100)  # batches of 100; each batch outlives the previous
        ct.expire(now)
        through(ct, udp(A1, B, 1024 + i, 53, b"q"), rng, now=now)
    index = nat._BYSOURCE[ct]
    assert len(ct) == 100
    assert index.size <= 2 * len(ct) + 64 + 1


def test_replicated_entry_is_registered_for_source_reuse() -> None:
    ct = Conntrack()
    rng = NatRange.parse("src", N, "1000-1999")
    res, out = through(ct, udp(A1, B, 5000, 53, b"q"), rng)
    assert res.entry is not None
    replica = Conntrack()
    entry = res.entry
    assert replica.insert_synced(entry, T0)
    nat.register(replica, entry)
    _, again = through(replica, udp(A1, "198.19.1.3", 5000, 53, b"q"), rng)
    assert src_of(again.packet) == src_of(out.packet)
