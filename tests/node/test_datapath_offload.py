"""The offload card in front of the software datapath, end to end, on a virtual
clock: the two-chain firewall of the Netdev talk with its filters in the card,
real conntrack, real TCP sequence numbers.

A packet reaches the card first; what the card handles entirely is path "hw",
a miss resumes in software ("sw-fastpath" when act_ct's flow table answered,
"sw" when conntrack ran) with the reason in Outcome.why. Hardware counters
reach `tc -s` at the card's bulk poll, driven here by Node.sleep() through
Datapath.next_deadline()/poll() as the daemon drives them.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

import pytest

from node.conntrack import Conntrack
from node.conntrack.entry import IPS_HW_OFFLOAD, IPS_OFFLOAD
from node.datapath import Datapath, Outcome
from node.offload import Card, Faults, HwState
from node.packet import Packet, icmp_echo, ip_str, tcp, udp
from node.tc.chain import Filter
from node.tc.cli import run_batch_text, tc_main
from node.tc.parse import Options
from node.tc.skb import CT_ESTABLISHED, CT_NEW, CT_REPLY, CT_TRACKED

from .test_datapath import FIREWALL, NAT_FIREWALL, TcpConn

CLIENT, SERVER, PUBLIC = "198.18.0.1", "198.19.2.1", "198.19.100.1"
NEW = CT_TRACKED | CT_NEW
EST = CT_TRACKED | CT_ESTABLISHED
EST_RPL = EST | CT_REPLY
START = 1000.0
LATENCY = 0.005  # the card's insert latency in these tests

# The firewall of node.datapath.BENCH_FIREWALL / test_datapath.FIREWALL without the
# FTP helper filter (a helper keeps the filter in software; tested apart).
TWO_CHAIN = """
qdisc add dev inside ingress
qdisc add dev outside ingress
filter add dev inside ingress pref 1 chain 0 protocol ip flower ct_state -trk \
    action ct zone 1 pipe action goto chain 1
filter add dev outside ingress pref 1 chain 0 protocol ip flower ct_state -trk \
    action ct zone 1 pipe action goto chain 1
filter add dev inside ingress pref 2 chain 1 protocol ip flower ct_state +trk+new \
    action ct zone 1 commit pipe action mirred egress redirect dev outside
filter add dev inside ingress pref 3 chain 1 protocol ip flower ct_state +trk+est \
    action mirred egress redirect dev outside
filter add dev inside ingress pref 4 chain 1 protocol ip flower ct_state +trk+rel \
    action ct zone 1 commit pipe action mirred egress redirect dev outside
filter add dev inside ingress pref 5 chain 1 protocol ip flower ct_state +trk+inv action drop
filter add dev outside ingress pref 3 chain 1 protocol ip flower ct_state +trk+est \
    action mirred egress redirect dev inside
filter add dev outside ingress pref 4 chain 1 protocol ip flower ct_state +trk+rel \
    action ct zone 1 commit pipe action mirred egress redirect dev inside
filter add dev outside ingress pref 5 chain 1 protocol ip flower ct_state +trk+inv action drop
filter add dev outside ingress pref 6 chain 1 protocol ip flower ct_state +trk+new action drop
"""


class Node:
    """A datapath with a card, its tc rules, and a virtual clock."""

    def __init__(self, rules: str = TWO_CHAIN, card: bool = True, rule_capacity: int = 4096,
                 **faults: Any) -> None:
        faults.setdefault("insert_latency", LATENCY)
        self.ct = Conntrack()
        self.card = Card(self.ct, Faults(**faults)) if card else None
        self.dp = Datapath(["inside", "outside"], conntrack=self.ct, card=self.card,
                           rule_capacity=rule_capacity)
        self.now = START
        self.dp.now = START
        self.sent: list[tuple[str, Outcome]] = []
        err = io.StringIO()
        assert run_batch_text(self.dp.tc, Options(), "rules", rules, io.StringIO(), err) == 0, \
            err.getvalue()

    def sleep(self, seconds: float) -> None:
        """Advance the clock, polling at every deadline on the way (the daemon's job)."""
        until = self.now + seconds
        for _ in range(100_000):
            due = self.dp.next_deadline()
            if due > until:
                break
            self.now = max(self.now, due)
            self.dp.poll(self.now)
        else:
            raise AssertionError("next_deadline() does not move on")
        self.now = until

    def send(self, port: str, pkt: Packet) -> Outcome:
        self.sleep(0.001)
        out = self.dp.receive(port, pkt, self.now)
        self.sent.append((port, out))
        return out

    def tc(self, line: str) -> str:
        out, err = io.StringIO(), io.StringIO()
        assert run_batch_text(self.dp.tc, Options(stats=1), "show", line + "\n", out, err) == 0
        return out.getvalue()

    def filter(self, port: str, chain: int, pref: int) -> Filter:
        dev = self.dp.tc.devices[port]
        assert dev.ingress is not None
        (tp,) = [tp for tp in dev.ingress.chains[chain].protos if tp.prio == pref]
        return tp.filters[1]

    def paths(self) -> Counter[str]:
        return Counter(out.path for _, out in self.sent)


def handshake(n: Node, conn: TcpConn) -> list[Outcome]:
    return [n.send("inside", conn.c("S")), n.send("outside", conn.s("SA")),
            n.send("inside", conn.c("A"))]


def exchange(n: Node, conn: TcpConn, rounds: int = 1) -> list[Outcome]:
    outs = []
    for _ in range(rounds):
        outs.append(n.send("inside", conn.c("PA", b"hello")))
        outs.append(n.send("outside", conn.s("PA", b"world")))
    return outs


# ---------------------------------------------------------------- TCP life cycle
def test_tcp_starts_in_software_and_moves_to_hardware_once_offered() -> None:
    n = Node()
    conn = TcpConn(CLIENT, SERVER, 40000, 80)
    syn, synack, ack = handshake(n, conn)
    # The handshake misses the card's CT table and runs conntrack in software.
    assert [(o.path, o.why) for o in (syn, synack, ack)] == [("sw", "no_entry")] * 3
    assert syn.chains == ((0, 1, 1), (1, 2, 1)) and syn.ct_state == NEW
    assert synack.ct_state == EST_RPL and ack.ct_state == EST
    (entry,) = n.ct.entries()
    # The ACK made it established + assured: act_ct offered it; the insert is in flight.
    assert entry.status & IPS_OFFLOAD and not entry.status & IPS_HW_OFFLOAD
    info = n.card.inspect(entry)  # type: ignore[union-attr]
    assert info is not None and info.hw == (HwState.PENDING, HwState.PENDING)
    # Until the insert takes effect, the flow table answers in software.
    out = n.send("inside", conn.c("PA", b"early"))
    assert (out.path, out.why, out.ct_state) == ("sw-fastpath", "no_entry", EST)
    n.sleep(LATENCY)
    assert entry.status & IPS_HW_OFFLOAD
    for out in exchange(n, conn, 3):
        assert (out.path, out.why, out.verdict) == ("hw", "ct_hit", "stolen")
        assert out.ct_state in (EST, EST_RPL) and out.zone == 1
    inside, outside = exchange(n, conn)
    assert inside.chains == ((0, 1, 1), (1, 3, 1)) and inside.ports == ("outside",)
    assert outside.chains == ((0, 1, 1), (1, 3, 1)) and outside.ports == ("inside",)
    assert ip_str(inside.egress[0].pkt.dst) == SERVER
    assert n.card.counters.hw_packets == 8  # type: ignore[union-attr]


def test_fin_misses_to_software_and_tears_the_flow_down() -> None:
    n = Node()
    conn = TcpConn(CLIENT, SERVER, 40001, 80)
    handshake(n, conn)
    n.sleep(LATENCY)
    assert {o.path for o in exchange(n, conn, 2)} == {"hw"}
    (entry,) = n.ct.entries()
    fin = n.send("inside", conn.c("FA"))
    # Hardware rules never match FIN/RST: software resumes right after the chain 0
    # ct action's position, runs act_ct (flow table teardown, then conntrack) and
    # the rest of the rule.
    assert (fin.path, fin.why, fin.verdict, fin.ct_state) == ("sw", "fin_rst", "stolen", EST)
    assert fin.chains == ((0, 1, 1), (1, 3, 1))
    assert not entry.status & IPS_OFFLOAD
    info = n.card.inspect(entry)  # type: ignore[union-attr]
    assert info is not None and "TEARDOWN" in info.flags
    assert entry.proto.state == 4  # sFW: conntrack saw the FIN
    # The next GC deletes the hardware entries; from then on everything is software.
    n.sleep(1.0)
    n.sleep(1.0)
    assert n.card.inspect(entry) is None  # type: ignore[union-attr]
    assert not entry.status & IPS_HW_OFFLOAD
    finack = n.send("outside", conn.s("FA"))
    last = n.send("inside", conn.c("A"))
    assert [(o.path, o.why) for o in (finack, last)] == [("sw", "no_entry")] * 2
    assert n.card.stats["teardowns"] == {"fin_rst": 1}  # type: ignore[union-attr]


def test_rst_also_misses_and_tears_down() -> None:
    n = Node()
    conn = TcpConn(CLIENT, SERVER, 40002, 80)
    handshake(n, conn)
    n.sleep(LATENCY)
    exchange(n, conn)
    rst = n.send("outside", tcp(SERVER, CLIENT, 80, 40002, "R", seq=conn.sseq))
    assert (rst.path, rst.why) == ("sw", "fin_rst")
    (entry,) = n.ct.entries()
    assert not entry.status & IPS_OFFLOAD


# ---------------------------------------------------------------- UDP, ICMP
def test_udp_is_offloaded_one_way_once_committed() -> None:
    n = Node()
    first = n.send("inside", udp(CLIENT, SERVER, 53000, 53, b"q1"))
    assert (first.path, first.why, first.ct_state) == ("sw", "no_entry", NEW)
    (entry,) = n.ct.entries()
    assert entry.status & IPS_OFFLOAD  # committed: offered at once, original direction
    n.sleep(LATENCY)
    # The client's next packets are handled by the card, still +trk+new (the
    # hardware entry was installed as NEW): chain 1's +trk+new rule runs in hardware.
    again = n.send("inside", udp(CLIENT, SERVER, 53000, 53, b"q2"))
    assert (again.path, again.why, again.ct_state) == ("hw", "ct_hit", NEW)
    assert again.chains == ((0, 1, 1), (1, 2, 1)) and again.ports == ("outside",)
    # The reply direction is not offloaded before the connection is assured.
    reply = n.send("outside", udp(SERVER, CLIENT, 53, 53000, b"a1"))
    assert (reply.path, reply.why, reply.ct_state) == ("sw", "no_entry", EST_RPL)
    assert reply.ports == ("inside",)


def test_icmp_is_never_offloaded() -> None:
    n = Node()
    for seq in range(3):
        req = n.send("inside", icmp_echo(CLIENT, SERVER, id=9, seq=seq))
        rep = n.send("outside", icmp_echo(SERVER, CLIENT, id=9, seq=seq, reply=True))
        assert (req.path, req.why) == ("sw", "unsupported")
        assert (rep.path, rep.why, rep.ct_state) == ("sw", "unsupported", EST_RPL)
        n.sleep(1.0)
    assert n.card.stats["flows"] == 0  # type: ignore[union-attr]
    assert n.card.counters.misses == [0, 0, 6, 0]  # type: ignore[union-attr]


# ---------------------------------------------------------------- rule offload
def test_filters_in_hardware_and_the_ones_left_in_software() -> None:
    n = Node()
    text = n.tc("filter show dev inside ingress")
    shown = {}
    for part in text.split("filter protocol ip pref ")[1:]:
        head, _, body = part.partition("\n")
        if "handle" in head:
            flags = [w for w in body.split("\n") if w.strip().startswith(("in_hw", "not_in"))]
            shown[head.split()[0], head.split()[3]] = flags[0].strip()
    assert shown == {("1", "0"): "in_hw in_hw_count 1", ("2", "1"): "in_hw in_hw_count 1",
                     ("3", "1"): "in_hw in_hw_count 1", ("4", "1"): "not_in_hw",
                     ("5", "1"): "not_in_hw"}
    off = n.dp.offload
    assert off is not None
    assert off.stats["refused"] == {"matching on ct_state +rel isn't supported": 2,
                                    "matching on ct_state +inv isn't supported": 2}
    assert off.stats["hw_zones"] == [1]
    # An offloaded filter's actions report delayed hardware stats.
    assert "\tused_hw_stats delayed\n" in n.tc("filter show dev inside ingress chain 0")
    assert "used_hw_stats" not in n.tc("filter show dev inside ingress chain 1 pref 4")


def test_helper_and_skip_hw_filters_stay_in_software() -> None:
    n = Node(FIREWALL)  # its FTP filter runs `ct commit helper ipv4-tcp-ftp`
    assert "  not_in_hw\n" in n.tc("filter show dev inside ingress chain 1 pref 1")
    assert n.dp.offload is not None
    assert n.dp.offload.refused["ct action with helper is not supported"] == 1
    n.tc("filter add dev outside ingress pref 9 chain 1 protocol ip flower skip_hw "
         "ip_proto udp action drop")
    assert "  skip_hw\n  not_in_hw\n" in n.tc("filter show dev outside ingress chain 1 pref 9")


def test_skip_sw_filters_live_only_in_hardware() -> None:
    rules = TWO_CHAIN.replace(
        "qdisc add dev outside ingress\n",
        "qdisc add dev outside ingress\n"
        "filter add dev inside ingress pref 0x10 chain 1 protocol ip flower skip_sw "
        "ip_proto udp dst_port 9 action drop\n", 1)
    rules = rules.replace("pref 2 chain 1 protocol ip flower ct_state +trk+new",
                          "pref 0x20 chain 1 protocol ip flower ct_state +trk+new")
    n = Node(rules)
    assert "  skip_sw\n  in_hw in_hw_count 1\n" in n.tc(
        "filter show dev inside ingress chain 1 pref 0x10")
    # The first packet of the flow: conntrack in software, then chain 1 in software,
    # where the skip_sw filter does not exist: the +trk+new rule forwards it.
    first = n.send("inside", udp(CLIENT, SERVER, 5000, 9, b"x"))
    assert (first.path, first.verdict) == ("sw", "stolen")
    n.sleep(LATENCY)
    # Offloaded: the card runs chain 1 itself and its skip_sw rule drops the packet.
    second = n.send("inside", udp(CLIENT, SERVER, 5000, 9, b"y"))
    assert (second.path, second.why, second.verdict) == ("hw", "ct_hit", "drop")
    assert second.chains == ((0, 1, 1), (1, 16, 1))
    # A skip_sw filter the card cannot take is refused with the driver's message.
    out, err = io.StringIO(), io.StringIO()
    code = run_batch_text(n.dp.tc, Options(), "x",
                          "filter add dev inside ingress pref 7 chain 1 protocol ip flower "
                          "skip_sw ct_state +trk+rel action drop\n", out, err)
    assert code == 1
    assert err.getvalue().startswith(
        "Error: ctlab_card: matching on ct_state +rel isn't supported.\n")


def test_rule_table_capacity() -> None:
    n = Node(rule_capacity=3)
    # chain 0 on both ports and the first chain 1 rule fit; the rest does not
    assert "in_hw" in n.tc("filter show dev inside ingress chain 1 pref 2")
    assert "not_in_hw" in n.tc("filter show dev inside ingress chain 1 pref 3")
    off = n.dp.offload
    assert off is not None and off.rules_used == 3
    assert off.refused["rule table full"] == 3  # inside +trk+est, outside +trk+est/+new
    out, err = io.StringIO(), io.StringIO()
    assert run_batch_text(n.dp.tc, Options(), "x",
                          "filter add dev inside ingress pref 9 chain 1 protocol ip flower "
                          "skip_sw action drop\n", out, err) == 1
    assert err.getvalue().startswith("Error: ctlab_card: rule table full.\n")
    n.tc("filter del dev inside ingress pref 2 chain 1")
    assert off.rules_used == 2
    n.tc("filter add dev inside ingress pref 9 chain 1 protocol ip flower skip_sw "
         "action drop")
    assert off.rules_used == 3


# ---------------------------------------------------------------- the CT table
def test_a_full_table_leaves_flows_in_software_until_space_frees() -> None:
    n = Node(capacity=2)  # one connection's two directions
    first = TcpConn(CLIENT, SERVER, 41000, 80)
    second = TcpConn(CLIENT, SERVER, 41001, 80)
    handshake(n, first)
    handshake(n, second)
    n.sleep(LATENCY)
    assert {o.path for o in exchange(n, first)} == {"hw"}
    outs = exchange(n, second, 3)
    assert {(o.path, o.why) for o in outs} == {("sw-fastpath", "table_full")}
    assert n.card.counters.insert_failures == {"table_full": 2}  # type: ignore[union-attr]
    # The first connection closes; its entries go at the next GC.
    n.send("inside", first.c("FA"))
    n.send("outside", first.s("FA"))
    n.send("inside", first.c("A"))
    n.sleep(2.0)
    # The software path retries the insert as it refreshes the flow (at most
    # about once a second): then the second connection is in hardware.
    retry = exchange(n, second)
    assert retry[0].path == "sw-fastpath"
    n.sleep(LATENCY)
    assert {(o.path, o.why) for o in exchange(n, second, 2)} == {("hw", "ct_hit")}


def test_miss_resumes_at_the_ct_action_not_before_it() -> None:
    """Actions before the ct action ran in the card; software runs the ct action
    (its lookup missed) and what follows, and nothing before it again."""
    rules = TWO_CHAIN.replace("action ct zone 1 pipe action goto chain 1",
                              "action skbedit mark 0x10/0x10 pipe action ct zone 1 pipe "
                              "action goto chain 1", 1)
    n = Node(rules)
    out = n.send("inside", udp(CLIENT, SERVER, 6000, 7, b"x"))
    assert (out.path, out.why, out.mark) == ("sw", "no_entry", 0x10)
    n.sleep(1.0)  # the bulk poll brings the card's counters to tc
    skbedit, ct_act, goto = n.filter("inside", 0, 1).actions
    assert (skbedit.stats.packets, skbedit.stats.packets_hw) == (1, 1)
    assert (ct_act.stats.packets, ct_act.stats.packets_hw) == (1, 0)
    assert (goto.stats.packets, goto.stats.packets_hw) == (1, 0)


# ---------------------------------------------------------------- accounting
def test_hardware_plus_software_statistics_add_up_to_the_packets_sent() -> None:
    n = Node(insert_latency=0.05)
    conns = [TcpConn(CLIENT, SERVER, 42000 + i, 80) for i in range(3)]
    for conn in conns:
        handshake(n, conn)
        exchange(n, conn, 2)  # in the software flow table: the insert is in flight
    n.sleep(0.05)
    for conn in conns:
        exchange(n, conn, 3)
    n.send("inside", conns[0].c("FA"))
    n.send("outside", conns[0].s("FA"))
    for i in range(4):
        n.send("inside", udp(CLIENT, SERVER, 53000, 53, b"q"))
        n.send("outside", udp(SERVER, CLIENT, 53, 53000, b"a"))
        n.send("inside", icmp_echo(CLIENT, SERVER, id=1, seq=i))
        n.send("outside", icmp_echo(SERVER, CLIENT, id=1, seq=i, reply=True))
    n.send("outside", tcp(SERVER, CLIENT, 22, 5555, "S", seq=1))  # dropped: +trk+new
    n.sleep(1.0)  # a bulk poll: hardware counters reach tc
    sent = len(n.sent)
    paths = n.paths()
    assert paths["hw"] and paths["sw-fastpath"] and paths["sw"]
    assert sum(n.dp.paths.values()) == sent and n.dp.paths == dict(paths, **{
        p: 0 for p in ("hw", "sw-fastpath", "sw") if p not in paths})
    card = n.card
    assert card is not None
    # Every packet met the chain 0 ct action in the card: a hit or a miss.
    assert card.counters.hw_packets + sum(card.counters.misses) == sent
    assert card.counters.hw_packets == paths["hw"]
    assert sum(n.dp.misses.values()) == paths["sw-fastpath"] + paths["sw"]
    assert card.counters.sw_packets == paths["sw-fastpath"]
    # Filters: each packet counted once, in hardware or in software.
    for port in ("inside", "outside"):
        on_port = [out for p, out in n.sent if p == port]
        for chain, pref in [(0, 1), *[(1, p) for p in range(2, 7)]]:
            try:
                flt = n.filter(port, chain, pref)
            except ValueError:
                continue
            where = (chain, pref, 1)
            matched = [o for o in on_port if where in o.chains]
            in_hw = [o for o in matched if o.path == "hw"]
            assert flt.stats.packets == len(matched), (port, where)
            assert flt.stats.packets_hw == (len(matched) if chain == 0 else len(in_hw)), where
            for action in flt.actions:  # these filters never miss after a ct hit
                assert action.stats.packets == len(matched), (port, where, action.name)
                assert action.stats.packets_hw == len(in_hw), (port, where, action.name)
    chain0 = n.filter("inside", 0, 1)
    assert chain0.stats.packets == sum(1 for p, _ in n.sent if p == "inside")


def test_tc_s_batch_prints_the_software_hardware_split(tmp_path: Any) -> None:
    n = Node()
    conn = TcpConn(CLIENT, SERVER, 43000, 80)
    handshake(n, conn)  # 2 inside packets in software
    n.sleep(LATENCY)
    exchange(n, conn, 4)  # 4 inside packets in hardware
    n.sleep(1.0)
    batch = tmp_path / "show.batch"
    batch.write_text("filter show dev inside ingress chain 1 pref 3\n")
    out, err = io.StringIO(), io.StringIO()
    assert tc_main(["-s", "-batch", str(batch)], out, err, model=n.dp.tc) == 0, err.getvalue()
    text = out.getvalue()
    flt = n.filter("inside", 1, 3)
    (mirred,) = flt.actions
    hw_bytes = mirred.stats.bytes_hw
    sw_bytes = mirred.stats.bytes - hw_bytes
    assert (mirred.stats.packets, mirred.stats.packets_hw) == (5, 4)
    assert hw_bytes == 4 * (14 + 20 + 20 + 5)  # tc counts frames: 5-byte payloads
    assert (f"\tSent {sw_bytes + hw_bytes} bytes 5 pkt (dropped 0, overlimits 0 requeues 0) \n"
            f"\tSent software {sw_bytes} bytes 1 pkt\n"
            f"\tSent hardware {hw_bytes} bytes 4 pkt\n"
            "\tbacklog 0b 0p requeues 0\n"
            "\tused_hw_stats delayed\n") in text
    assert "  in_hw in_hw_count 1\n" in text
    # JSON carries the same split
    batch.write_text("-j filter show dev inside ingress chain 1 pref 3\n")
    out = io.StringIO()
    assert tc_main(["-s", "-batch", str(batch)], out, err, model=n.dp.tc) == 0
    import json

    entry = json.loads(out.getvalue())[1]
    stats = entry["options"]["actions"][0]["stats"]
    assert (stats["sw_packets"], stats["hw_packets"]) == (1, 4)
    assert entry["options"]["in_hw"] is True and entry["options"]["in_hw_count"] == 1


def test_hardware_counts_reach_tc_only_at_the_bulk_poll() -> None:
    n = Node()
    conn = TcpConn(CLIENT, SERVER, 43100, 80)
    handshake(n, conn)
    n.sleep(LATENCY)
    exchange(n, conn, 2)
    flt = n.filter("inside", 0, 1)
    assert flt.actions[0].stats.packets_hw == 0  # delayed: not read yet
    assert "Sent hardware" not in n.tc("filter show dev inside ingress chain 0")
    n.sleep(1.0)
    assert flt.actions[0].stats.packets_hw == 2
    assert "\tSent hardware " in n.tc("filter show dev inside ingress chain 0")


# ---------------------------------------------------------------- NAT
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_nat_in_hardware_rewrites_as_software_does(proto: str) -> None:
    hw, sw = Node(NAT_FIREWALL), Node(NAT_FIREWALL, card=False)

    def both(port: str, pkt: Packet) -> Outcome:
        a, b = hw.send(port, pkt), sw.send(port, pkt)
        assert [(e.port, e.pkt) for e in a.egress] == [(e.port, e.pkt) for e in b.egress]
        assert (a.verdict, a.pkt) == (b.verdict, b.pkt)
        # A UDP flow offloaded before its reply restores +trk+new from the card until
        # the GC finds it outdated (tcf_ct_flow_is_outdated); TCP is offloaded
        # established.
        assert proto == "udp" or a.ct_state == b.ct_state
        return a

    if proto == "tcp":
        conn = TcpConn(CLIENT, SERVER, 44000, 80)
        both("inside", conn.c("S"))
        (entry,) = sw.ct.entries()
        public_port = entry.reply.dport
        reply = TcpConn(SERVER, PUBLIC, 80, public_port, cseq=conn.sseq, sseq=conn.cseq)

        def out_pkt(payload: bytes) -> Packet:
            pkt = reply.c("PA" if payload else "SA", payload)
            conn.sseq = reply.cseq
            return pkt

        both("outside", out_pkt(b""))
        both("inside", conn.c("A"))
        reply.sseq = conn.cseq
        hw.sleep(LATENCY)
        sw.sleep(LATENCY)
        for i in range(3):
            a = both("inside", conn.c("PA", b"data%d" % i))
            reply.sseq = conn.cseq
            assert a.path == "hw" and ip_str(a.egress[0].pkt.src) == PUBLIC
            b = both("outside", out_pkt(b"resp%d" % i))
            assert b.path == "hw" and ip_str(b.egress[0].pkt.dst) == CLIENT
    else:
        both("inside", udp(CLIENT, SERVER, 45000, 53, b"q"))
        (entry,) = sw.ct.entries()
        hw.sleep(LATENCY)
        sw.sleep(LATENCY)
        for _ in range(3):
            a = both("inside", udp(CLIENT, SERVER, 45000, 53, b"q"))
            assert a.path == "hw" and ip_str(a.egress[0].pkt.src) == PUBLIC
            both("outside", udp(SERVER, PUBLIC, 53, entry.reply.dport, b"a"))


# ---------------------------------------------------------------- time
def test_next_deadline_includes_the_cards_poll_and_conntrack() -> None:
    n = Node()
    n.dp.poll(START)
    assert n.dp.next_deadline() == START + 1.0  # the card's 1 s bulk poll
    tick = n.dp.poll(START + 1.0)
    assert tick.card is not None and tick.card.gc and tick.expired == 0
    plain = Node(card=False)
    assert plain.dp.next_deadline() == float("inf")
    plain.send("inside", udp(CLIENT, SERVER, 1, 2, b"x"))
    assert plain.dp.next_deadline() == pytest.approx(plain.now + 30.0)
    assert plain.dp.poll(plain.now + 31).expired == 1


def test_an_idle_hardware_flow_is_handed_back_after_the_flow_timeout() -> None:
    n = Node()
    conn = TcpConn(CLIENT, SERVER, 46000, 80)
    handshake(n, conn)
    n.sleep(LATENCY)
    assert {o.path for o in exchange(n, conn)} == {"hw"}
    (entry,) = n.ct.entries()
    n.sleep(40.0)
    assert not entry.status & (IPS_OFFLOAD | IPS_HW_OFFLOAD)
    assert n.card.stats["teardowns"] == {"idle": 1}  # type: ignore[union-attr]
    out = n.send("inside", conn.c("PA", b"again"))
    assert (out.path, out.why) == ("sw", "no_entry")


def test_datapath_without_a_card_is_the_software_path() -> None:
    n = Node(card=False)
    conn = TcpConn(CLIENT, SERVER, 47000, 80)
    outs = handshake(n, conn) + exchange(n, conn, 3)
    assert {(o.path, o.why) for o in outs} == {("sw", "")}
    assert n.dp.paths == {"hw": 0, "sw-fastpath": 0, "sw": 9}


def test_a_card_must_serve_the_datapaths_conntrack() -> None:
    with pytest.raises(ValueError):
        Datapath(["a"], conntrack=Conntrack(), card=Card(Conntrack()))
    card = Card(Conntrack())
    assert Datapath(["a"], card=card).conntrack is card.ct



def test_bench_datapath_reports_every_figure_with_a_fake_clock() -> None:
    from node.datapath import bench_datapath

    ticks = iter(range(1_000_000))
    lines: list[str] = []
    got = bench_datapath(lambda: next(ticks) / 20, 1.0, progress=lines.append, flows=2,
                         hw_flows=64, poll_flows=256, conns=200)
    for key in ("sw_pps", "hw_pps", "poll_1m_s", "bytes_per_conn", "sw_fastpath_pps",
                "hw_path_pps"):
        assert key in got and got[key] > 0, key
        assert f"datapath: {key} ..." in lines and any(
            line.startswith(f"datapath: {key} = ") for line in lines)


def test_the_egress_block_of_a_redirect_runs_in_the_card_too() -> None:
    rules = TWO_CHAIN.replace("qdisc add dev outside ingress\n",
                              "qdisc add dev outside clsact\n"
                              "filter add dev outside egress pref 5 matchall "
                              "action skbedit mark 7 pipe\n")
    n = Node(rules)
    conn = TcpConn(CLIENT, SERVER, 48000, 80)
    handshake(n, conn)
    n.sleep(LATENCY)
    out = n.send("inside", conn.c("PA", b"x"))
    assert (out.path, out.why) == ("hw", "ct_hit")
    (eg,) = out.egress
    assert (eg.port, eg.sent, eg.chains, eg.mark) == ("outside", True, ((0, 5, 1),), 7)
    # A filter the card lacks, first in the egress block: that block finishes in
    # software, so the packet's path is software.
    n.tc("filter add dev outside egress pref 2 protocol ip flower skip_hw ip_proto tcp "
         "action skbedit mark 9/0x8 continue")
    n.sleep(2.0)
    out = n.send("inside", conn.c("PA", b"y"))
    assert (out.path, out.why) == ("sw", "no_rule")
    (eg,) = out.egress
    assert eg.chains == ((0, 2, 1), (0, 5, 1)) and eg.mark == 7
    matchall = n.dp.tc.devices["outside"].egress.chains[0].protos[-1].filters[1]  # type: ignore[union-attr]
    n.sleep(1.0)
    assert (matchall.stats.packets, matchall.stats.packets_hw) == (4, 1)  # 2 handshake
