"""`conntrack -L` lines (node.conntrack.listing), field for field as conntrack-tools
prints them, including offloaded entries (no timeout, no TCP state)."""

from __future__ import annotations

from node.conntrack import Conntrack, Sysctl, Template
from node.conntrack.listing import format_entry, listing
from node.conntrack.tuple import tuple_of
from node.offload import Card, Faults
from node.packet import IPPROTO_TCP, gre, icmp_echo, ip_packet, tcp, udp

A, B = "198.18.0.1", "198.19.0.1"
T = 1000.0
TUPLES = ("src=198.18.0.1 dst=198.19.0.1 sport=40000 dport=80 "
          "src=198.19.0.1 dst=198.18.0.1 sport=80 dport=40000")


def handshake(ct: Conntrack, card: Card | None = None, zone: int = 0) -> None:
    tmpl = Template(zone=zone)
    ct.commit(tcp(A, B, 40000, 80, "S", 1000), T, tmpl)
    ct.commit(tcp(B, A, 80, 40000, "SA", 5000, 1001), T, tmpl)
    res = ct.commit(tcp(A, B, 40000, 80, "A", 1001, 5001), T, tmpl)
    if card is not None and res.entry is not None:
        card.offer(res.entry, res.ctinfo, T)


def test_established_tcp_shows_timeout_state_and_assured() -> None:
    ct = Conntrack()
    handshake(ct)
    assert listing(ct, T + 0.5) == [
        f"tcp      6 431999 ESTABLISHED {TUPLES} [ASSURED] mark=0 use=1"]


def test_hardware_offloaded_entry_has_no_timeout_and_no_state() -> None:
    ct = Conntrack()
    handshake(ct, Card(ct, Faults(insert_latency=0.0)), zone=3)
    assert listing(ct, T) == [f"tcp      6 {TUPLES} [HW_OFFLOAD] mark=0 zone=3 use=1"]


def test_software_offloaded_entry_shows_offload() -> None:
    ct = Conntrack()
    handshake(ct, Card(ct, Faults(fail_all=True)))
    assert listing(ct, T) == [f"tcp      6 {TUPLES} [OFFLOAD] mark=0 use=1"]


def test_unreplied_udp_and_zone_filter() -> None:
    ct = Conntrack()
    ct.commit(udp(A, B, 5000, 53), T)
    ct.commit(udp(A, B, 5001, 53), T, Template(zone=9))
    assert listing(ct, T + 1) == [
        "udp      17 29 src=198.18.0.1 dst=198.19.0.1 sport=5000 dport=53 [UNREPLIED] "
        "src=198.19.0.1 dst=198.18.0.1 sport=53 dport=5000 mark=0 use=1",
        "udp      17 29 src=198.18.0.1 dst=198.19.0.1 sport=5001 dport=53 [UNREPLIED] "
        "src=198.19.0.1 dst=198.18.0.1 sport=53 dport=5001 mark=0 zone=9 use=1"]
    assert len(listing(ct, T, zone=9)) == 1


def test_icmp_prints_type_code_id_and_the_reply_type() -> None:
    ct = Conntrack()
    ct.commit(icmp_echo(A, B, id=7, seq=1), T)
    assert listing(ct, T) == [
        "icmp     1 30 src=198.18.0.1 dst=198.19.0.1 type=8 code=0 id=7 [UNREPLIED] "
        "src=198.19.0.1 dst=198.18.0.1 type=0 code=0 id=7 mark=0 use=1"]


def test_counters_with_accounting_and_mark_in_decimal() -> None:
    ct = Conntrack(Sysctl(nf_conntrack_acct=1))
    out = udp(A, B, 5000, 53, b"abc")
    res = ct.commit(out, T)
    assert res.entry is not None
    ct.set_mark(res.entry, 0xBB)
    ct.commit(udp(B, A, 53, 5000, b"defgh"), T)
    assert listing(ct, T) == [
        f"udp      17 30 src=198.18.0.1 dst=198.19.0.1 sport=5000 dport=53 "
        f"packets=1 bytes={out.length} src=198.19.0.1 dst=198.18.0.1 sport=53 dport=5000 "
        f"packets=1 bytes=33 mark=187 use=1"]


def test_ipv6_gre_generic_and_extended_output() -> None:
    ct = Conntrack()
    ct.commit(udp("2001:db8::1", "2001:db8::2", 5000, 53), T)
    ct.commit(gre(A, B, b"x"), T)
    ct.commit(ip_packet(A, B, 99, payload=b"zz"), T)
    lines = listing(ct, T, extended=True)
    assert lines == [
        "ipv6     10 udp      17 30 src=2001:db8::1 dst=2001:db8::2 sport=5000 dport=53 "
        "[UNREPLIED] src=2001:db8::2 dst=2001:db8::1 sport=53 dport=5000 mark=0 use=1",
        "ipv4     2 gre      47 30 src=198.18.0.1 dst=198.19.0.1 srckey=0x0 dstkey=0x0 "
        "[UNREPLIED] src=198.19.0.1 dst=198.18.0.1 srckey=0x0 dstkey=0x0 mark=0 use=1",
        "ipv4     2 unknown  99 600 src=198.18.0.1 dst=198.19.0.1 [UNREPLIED] "
        "src=198.19.0.1 dst=198.18.0.1 mark=0 use=1"]


def test_helper_is_named() -> None:
    ct = Conntrack()
    res = ct.commit(tcp(A, B, 40000, 21, "S", 1000), T, Template(helper="ftp"))
    assert res.entry is not None
    line = format_entry(ct.view(res.entry, T))
    assert line.startswith("tcp      6 120 SYN_SENT src=198.18.0.1 ")
    assert line.endswith(" mark=0 helper=ftp use=1")


def test_offloaded_then_handed_back_entry_shows_its_timer_again() -> None:
    ct = Conntrack()
    card = Card(ct, Faults(insert_latency=0.0))
    handshake(ct, card)
    entry = ct.find(tuple_of(tcp(A, B, 40000, 80)), 0)
    assert entry is not None and entry.orig.proto == IPPROTO_TCP
    card.lookup(tcp(A, B, 40000, 80, "FA", 1001, 5001), 0, T)  # FIN: torn down
    ct.commit(tcp(A, B, 40000, 80, "FA", 1001, 5001), T)
    card.poll(T + 1)  # the hardware delete clears HW_OFFLOAD
    assert listing(ct, T + 1) == [f"tcp      6 119 FIN_WAIT {TUPLES} [ASSURED] mark=0 use=1"]
