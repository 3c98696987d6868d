"""The software datapath end to end: the OVS-style two-chain firewall of the
Netdev talk (chain 0: -trk -> ct zone -> goto chain 1; chain 1: +trk+new ->
ct commit -> forward, +trk+est -> forward, +trk+rel -> forward, +trk+inv ->
drop), with TCP, UDP, ICMP, FTP and its RELATED data connection, and with NAT.

Packets carry correct sequence numbers, so the real TCP window tracking
accepts them; every packet's verdict and ct_state is checked.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest

from node.conntrack.entry import IPS_ASSURED, IPS_SRC_NAT
from node.datapath import REPLAY_PASSES, Datapath, Outcome, bench_firewall, bench_sw_pps
from node.packet import Packet, icmp_echo, icmp_error, ip_str, tcp, udp
from node.tc.cli import run_batch_text
from node.tc.parse import Options
from node.tc.skb import (
    CT_ESTABLISHED,
    CT_INVALID,
    CT_NEW,
    CT_RELATED,
    CT_REPLY,
    CT_TRACKED,
)

CLIENT, SERVER, PUBLIC = "198.18.0.1", "198.19.2.1", "198.19.100.1"
NEW = CT_TRACKED | CT_NEW
EST = CT_TRACKED | CT_ESTABLISHED
EST_RPL = EST | CT_REPLY
REL = CT_TRACKED | CT_RELATED
REL_RPL = REL | CT_REPLY
INV = CT_TRACKED | CT_INVALID

FIREWALL = """
qdisc add dev inside ingress
qdisc add dev outside ingress
# chain 0: everything untracked goes through conntrack in zone 1
filter add dev inside ingress pref 1 chain 0 protocol ip flower ct_state -trk \
    action ct zone 1 pipe action goto chain 1
filter add dev outside ingress pref 1 chain 0 protocol ip flower ct_state -trk \
    action ct zone 1 pipe action goto chain 1
# chain 1, inside: new connections are committed (FTP control with its helper)
filter add dev inside ingress pref 1 chain 1 protocol ip flower ip_proto tcp dst_port 21 \
    ct_state +trk+new action ct zone 1 commit helper ipv4-tcp-ftp pipe \
    action mirred egress redirect dev outside
filter add dev inside ingress pref 2 chain 1 protocol ip flower ct_state +trk+new \
    action ct zone 1 commit pipe action mirred egress redirect dev outside
filter add dev inside ingress pref 3 chain 1 protocol ip flower ct_state +trk+est \
    action mirred egress redirect dev outside
filter add dev inside ingress pref 4 chain 1 protocol ip flower ct_state +trk+rel \
    action ct zone 1 commit pipe action mirred egress redirect dev outside
filter add dev inside ingress pref 5 chain 1 protocol ip flower ct_state +trk+inv action drop
# chain 1, outside: only replies and related connections come in
filter add dev outside ingress pref 3 chain 1 protocol ip flower ct_state +trk+est \
    action mirred egress redirect dev inside
filter add dev outside ingress pref 4 chain 1 protocol ip flower ct_state +trk+rel \
    action ct zone 1 commit pipe action mirred egress redirect dev inside
filter add dev outside ingress pref 5 chain 1 protocol ip flower ct_state +trk+inv action drop
filter add dev outside ingress pref 6 chain 1 protocol ip flower ct_state +trk+new action drop
"""

NAT_FIREWALL = """
qdisc add dev inside ingress
qdisc add dev outside ingress
filter add dev inside ingress pref 1 chain 0 protocol ip flower ct_state -trk \
    action ct zone 1 nat pipe action goto chain 1
filter add dev outside ingress pref 1 chain 0 protocol ip flower ct_state -trk \
    action ct zone 1 nat pipe action goto chain 1
filter add dev inside ingress pref 1 chain 1 protocol ip flower ct_state +trk+new \
    action ct zone 1 commit nat src addr 198.19.100.1 port 20000-20100 pipe \
    action mirred egress redirect dev outside
filter add dev inside ingress pref 2 chain 1 protocol ip flower ct_state +trk+est \
    action mirred egress redirect dev outside
filter add dev inside ingress pref 3 chain 1 protocol ip flower ct_state +trk+inv action drop
filter add dev outside ingress pref 2 chain 1 protocol ip flower ct_state +trk+est \
    action mirred egress redirect dev inside
filter add dev outside ingress pref 3 chain 1 protocol ip flower ct_state +trk+rel \
    action mirred egress redirect dev inside
filter add dev outside ingress pref 4 chain 1 protocol ip flower ct_state +trk+new action drop
filter add dev outside ingress pref 5 chain 1 protocol ip flower ct_state +trk+inv action drop
"""


def node(rules: str) -> Datapath:
    dp = Datapath(["inside", "outside"])
    out, err = io.StringIO(), io.StringIO()
    assert run_batch_text(dp.tc, Options(), "rules", rules, out, err) == 0, err.getvalue()
    return dp


@dataclass
class Wire:
    """Sends packets into a datapath on a virtual clock and checks each one."""

    dp: Datapath
    now: float = 0.0

    def send(self, port: str, pkt: Packet, verdict: str, ct_state: int,
             out: str | None = None) -> Outcome:
        self.now += 0.001
        res = self.dp.receive(port, pkt, self.now)
        assert res.verdict == verdict, res
        assert res.ct_state == ct_state, (hex(res.ct_state), res)
        assert res.path == "sw"
        if out is not None:
            assert res.ports == (out,), res
        return res


@dataclass
class TcpConn:
    """A TCP connection's sequence numbers, as its two ends would send them."""

    client: str
    server: str
    cport: int
    sport: int
    cseq: int = 1000
    sseq: int = 90000

    def c(self, flags: str, payload: bytes = b"") -> Packet:
        pkt = tcp(self.client, self.server, self.cport, self.sport, flags, seq=self.cseq,
                  ack=self.sseq if "A" in flags else 0, payload=payload, win=64240)
        self.cseq += len(payload) + ("S" in flags) + ("F" in flags)
        return pkt

    def s(self, flags: str, payload: bytes = b"") -> Packet:
        pkt = tcp(self.server, self.client, self.sport, self.cport, flags, seq=self.sseq,
                  ack=self.cseq if "A" in flags else 0, payload=payload, win=65160)
        self.sseq += len(payload) + ("S" in flags) + ("F" in flags)
        return pkt


def test_tcp_handshake_data_and_fin_through_the_firewall() -> None:
    w = Wire(node(FIREWALL))
    conn = TcpConn(CLIENT, SERVER, 40000, 80)
    res = w.send("inside", conn.c("S"), "stolen", NEW, out="outside")
    assert res.chains == ((0, 1, 1), (1, 2, 1))  # chain 0 ct, chain 1 "+trk+new" commit
    assert res.zone == 1
    res = w.send("outside", conn.s("SA"), "stolen", EST_RPL, out="inside")
    assert res.chains == ((0, 1, 1), (1, 3, 1))
    w.send("inside", conn.c("A"), "stolen", EST, out="outside")
    w.send("inside", conn.c("PA", b"GET / HTTP/1.0\r\n\r\n"), "stolen", EST, out="outside")
    w.send("outside", conn.s("PA", b"HTTP/1.0 200 OK\r\n\r\nhello"), "stolen", EST_RPL,
           out="inside")
    w.send("inside", conn.c("A"), "stolen", EST, out="outside")
    w.send("inside", conn.c("FA"), "stolen", EST, out="outside")
    w.send("outside", conn.s("FA"), "stolen", EST_RPL, out="inside")
    w.send("inside", conn.c("A"), "stolen", EST, out="outside")
    (entry,) = list(w.dp.conntrack.entries())
    assert entry.zone == 1 and entry.status & IPS_ASSURED


def test_new_connection_stays_new_until_the_reply() -> None:
    """+est in the original direction only after a reply: a retransmitted SYN of
    a committed connection is still +trk+new."""
    w = Wire(node(FIREWALL))
    conn = TcpConn(CLIENT, SERVER, 40001, 80)
    syn = conn.c("S")
    w.send("inside", syn, "stolen", NEW, out="outside")
    w.send("inside", syn, "stolen", NEW, out="outside")
    assert len(list(w.dp.conntrack.entries())) == 1


def test_unsolicited_traffic_from_outside_is_dropped() -> None:
    w = Wire(node(FIREWALL))
    # a SYN from outside is a new connection: chain 1's "+trk+new drop" on outside
    res = w.send("outside", tcp(SERVER, CLIENT, 5555, 22, "S", seq=1), "drop", NEW)
    assert res.chains == ((0, 1, 1), (1, 6, 1))
    # a SYN-ACK with no connection is invalid: +trk+inv is dropped
    res = w.send("outside", tcp(SERVER, CLIENT, 80, 40000, "SA", seq=1, ack=2), "drop", INV)
    assert res.chains == ((0, 1, 1), (1, 5, 1))
    assert res.drop_reason == "TC_INGRESS"
    assert not list(w.dp.conntrack.entries())


def test_invalid_packets_of_a_connection_are_dropped() -> None:
    w = Wire(node(FIREWALL))
    conn = TcpConn(CLIENT, SERVER, 40002, 80)
    w.send("inside", conn.c("S"), "stolen", NEW)
    w.send("outside", conn.s("SA"), "stolen", EST_RPL)
    w.send("inside", conn.c("A"), "stolen", EST)
    # SYN+FIN is not a valid flag combination (tcp_valid_flags)
    bad = tcp(CLIENT, SERVER, 40002, 80, "SF", seq=conn.cseq, ack=conn.sseq)
    w.send("inside", bad, "drop", INV)
    # far outside the window (tcp_in_window, condition I)
    far = tcp(SERVER, CLIENT, 80, 40002, "A", seq=(conn.sseq + 10**9) & 0xFFFFFFFF,
              ack=conn.cseq)
    w.send("outside", far, "drop", INV)


def test_udp_request_and_reply() -> None:
    w = Wire(node(FIREWALL))
    w.send("inside", udp(CLIENT, SERVER, 53000, 53, b"query"), "stolen", NEW, out="outside")
    w.send("outside", udp(SERVER, CLIENT, 53, 53000, b"answer"), "stolen", EST_RPL,
           out="inside")
    w.send("inside", udp(CLIENT, SERVER, 53000, 53, b"again"), "stolen", EST, out="outside")
    # the same port pair from outside first would be new: dropped
    w.send("outside", udp(SERVER, CLIENT, 53, 53001, b"x"), "drop", NEW)


def test_icmp_echo_and_a_related_error() -> None:
    w = Wire(node(FIREWALL))
    w.send("inside", icmp_echo(CLIENT, SERVER, id=7, seq=1), "stolen", NEW, out="outside")
    w.send("outside", icmp_echo(SERVER, CLIENT, id=7, seq=1, reply=True), "stolen", EST_RPL,
           out="inside")
    # a UDP flow, then a "port unreachable" from the server quoting its packet
    query = udp(CLIENT, SERVER, 41000, 33434, b"probe")
    w.send("inside", query, "stolen", NEW, out="outside")
    err = icmp_error(SERVER, CLIENT, query, type=3, code=3)
    res = w.send("outside", err, "stolen", REL_RPL, out="inside")
    assert res.chains == ((0, 1, 1), (1, 4, 1))
    # an error quoting a connection conntrack never saw is invalid
    stray = icmp_error(SERVER, CLIENT, udp(CLIENT, SERVER, 41001, 9, b"?"), type=3, code=3)
    w.send("outside", stray, "drop", INV)


def test_ftp_with_the_helper_and_its_related_data_connection() -> None:
    w = Wire(node(FIREWALL))
    ctl = TcpConn(CLIENT, SERVER, 40100, 21)
    res = w.send("inside", ctl.c("S"), "stolen", NEW, out="outside")
    assert res.chains == ((0, 1, 1), (1, 1, 1))  # the dst_port 21 filter: helper
    (entry,) = list(w.dp.conntrack.entries())
    assert entry.helper == "ftp"
    w.send("outside", ctl.s("SA"), "stolen", EST_RPL)
    w.send("inside", ctl.c("A"), "stolen", EST)
    w.send("outside", ctl.s("PA", b"220 ready\r\n"), "stolen", EST_RPL)
    w.send("inside", ctl.c("A"), "stolen", EST)
    w.send("inside", ctl.c("PA", b"USER ftp\r\n"), "stolen", EST)
    w.send("outside", ctl.s("PA", b"331 ok\r\n"), "stolen", EST_RPL)
    # PORT 198,18,0,1,156,164 announces 198.18.0.1:40100 for the server's data connection
    w.send("inside", ctl.c("PA", b"PORT 198,18,0,1,156,164\r\n"), "stolen", EST)
    w.send("outside", ctl.s("PA", b"200 PORT ok\r\n"), "stolen", EST_RPL)
    data = TcpConn(SERVER, CLIENT, 20, 156 * 256 + 164, cseq=7000, sseq=3000)
    # the server's connection from outside is RELATED, committed, let in
    res = w.send("outside", data.c("S"), "stolen", REL, out="inside")
    assert res.chains == ((0, 1, 1), (1, 4, 1))
    w.send("inside", data.s("SA"), "stolen", EST_RPL, out="outside")
    w.send("outside", data.c("PA", b"file contents"), "stolen", EST, out="inside")
    w.send("inside", data.s("A"), "stolen", EST_RPL, out="outside")
    child = [e for e in w.dp.conntrack.entries() if e.master is not None]
    assert len(child) == 1 and child[0].master is entry


def test_a_second_data_connection_without_port_is_new_and_dropped() -> None:
    w = Wire(node(FIREWALL))
    data = TcpConn(SERVER, CLIENT, 20, 40200)
    w.send("outside", data.c("S"), "drop", NEW)


def test_snat_on_the_way_out_and_the_reply_de_nated() -> None:
    w = Wire(node(NAT_FIREWALL))
    conn = TcpConn(CLIENT, SERVER, 40000, 80)
    res = w.send("inside", conn.c("S"), "stolen", NEW, out="outside")
    out = res.egress[0].pkt
    assert ip_str(out.src) == PUBLIC and ip_str(out.dst) == SERVER
    public_port = out.l4.sport  # type: ignore[union-attr]
    assert 20000 <= public_port <= 20100
    assert res.pkt == out  # the outcome's packet is the translated one
    (entry,) = list(w.dp.conntrack.entries())
    assert entry.status & IPS_SRC_NAT
    # the server answers the public address; the reply is translated back
    reply = tcp(SERVER, PUBLIC, 80, public_port, "SA", seq=conn.sseq, ack=conn.cseq, win=65160)
    conn.sseq += 1
    res = w.send("outside", reply, "stolen", EST_RPL, out="inside")
    back = res.egress[0].pkt
    assert ip_str(back.dst) == CLIENT and back.l4.dport == 40000  # type: ignore[union-attr]
    res = w.send("inside", conn.c("A"), "stolen", EST, out="outside")
    again = res.egress[0].pkt
    assert ip_str(again.src) == PUBLIC and again.l4.sport == public_port  # type: ignore[union-attr]
    data = tcp(SERVER, PUBLIC, 80, public_port, "PA", seq=conn.sseq, ack=conn.cseq,
               payload=b"hi", win=65160)
    res = w.send("outside", data, "stolen", EST_RPL, out="inside")
    assert ip_str(res.egress[0].pkt.dst) == CLIENT


def test_snat_udp_and_a_related_icmp_error_translated_back() -> None:
    w = Wire(node(NAT_FIREWALL))
    query = udp(CLIENT, SERVER, 41000, 53, b"q")
    res = w.send("inside", query, "stolen", NEW, out="outside")
    sent = res.egress[0].pkt
    assert ip_str(sent.src) == PUBLIC
    err = icmp_error(SERVER, PUBLIC, sent, type=3, code=3)
    res = w.send("outside", err, "stolen", REL_RPL, out="inside")
    back = res.egress[0].pkt
    assert ip_str(back.dst) == CLIENT
    inner = back.l4.inner  # type: ignore[union-attr]
    assert inner is not None and ip_str(inner.src) == CLIENT
    assert inner.l4.sport == 41000  # type: ignore[union-attr]


@pytest.mark.parametrize("rules", [FIREWALL, NAT_FIREWALL])
def test_every_tc_run_starts_untracked(rules: str) -> None:
    """post_ct is per tc pass: a packet arriving without a ct is -trk in chain 0."""
    w = Wire(node(rules))
    res = w.send("inside", udp(CLIENT, SERVER, 1, 2, b"x"), "stolen", NEW)
    assert res.chains[0] == (0, 1, 1)


def test_bench_firewall_stream_stays_established_when_replayed() -> None:
    """`ctlab bench datapath`'s software figure: its packets are established TCP
    through both chains, and replaying them stays in the tracker's window."""
    dp, stream = bench_firewall(flows=3, segments=4)
    assert len(stream) == 3 * 4 * 2
    for rnd in range(3):
        for port, pkt in stream:
            res = dp.receive(port, pkt, 1001.0 + rnd)
            assert res.forwarded and res.chains[-1][0] == 1
            assert res.ct_state == (EST if port == "inside" else EST_RPL)


def test_bench_sw_pps_with_a_fake_clock() -> None:
    # Rounds timed 1, 2 and 4 ticks long: the fastest and the median round.
    ticks = iter([0.0, 0.0, 1.0, 1.0, 3.0, 3.0, 7.0])
    got = bench_sw_pps(lambda: next(ticks), seconds=7.0, flows=2)
    per_round = 2 * 16 * 2 * REPLAY_PASSES  # flows x segments x directions x passes
    assert got["sw_flows"] == 2 and got["sw_packets"] == 3 * per_round
    assert got["sw_pps"] == per_round and got["sw_pps_median"] == per_round / 2
