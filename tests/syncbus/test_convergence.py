"""Members end up agreeing: asymmetric paths (active-active), a member taking
back traffic for connections another one created, the TCP join of two partial
views, and a standby's card following the active's (UDP offloaded one way, then
replied, then assured; a TCP flow torn down by a FIN)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from node.conntrack import Conntrack
from node.conntrack.entry import IPS_ASSURED, IPS_OFFLOAD, IPS_SEEN_REPLY
from node.conntrack.nat import NatRange, act_nat
from node.conntrack.tcp import conn_of
from node.conntrack.tcp_table import IP_CT_TCP_FLAG_CLOSE_INIT, sCW, sES, sFW, sLA, sSR, sSS
from node.conntrack.tuple import tuple_of
from node.offload import Card, Faults, HwHit
from node.offload import flowtable as ft
from node.offload.hwtable import IN_HW
from node.packet import Packet, tcp, udp
from syncbus import ctstate
from syncbus.messages import ConnId, CtBatch, Envelope
from syncbus.replica import Replica
from tests.syncbus.helpers import OPTS, Member, Net, addr, open_tcp

CI = IP_CT_TCP_FLAG_CLOSE_INIT
SNAT = NatRange.parse("src", "203.0.113.1")


# ------------------------------------------------------------------ a datapath
def through(m: Member, pkt: Packet, now: float, nat: NatRange | None = None) -> str:
    """One packet through a member as its datapath takes it: the card's hardware
    table, act_ct's flow table, else conntrack (+ nat, commit) and the offer."""
    if isinstance(m.card.lookup(pkt, 0, now), HwHit):
        return "hw"
    if m.card.sw_lookup(pkt, 0, now) is not None:
        return "sw-fastpath"
    res = m.ct.track(pkt, now)
    if res.entry is None:
        return "invalid"
    if nat is not None:
        pkt = act_nat(m.ct, res.entry, res.ctinfo, pkt, nat, True, now).packet
    m.ct.commit_tracked(res, pkt, now)
    m.card.offer(res.entry, res.ctinfo, now)
    return "sw"


@contextmanager
def held(net: Net) -> Iterator[list[tuple[Any, str]]]:
    """Frames published inside the block reach nobody until it ends (a slow
    broker): each member's own packets race its peer's records."""
    frames: list[tuple[Any, str]] = []

    def hold(f: Any, name: str) -> bool:
        frames.append((f, name))
        return False

    net.filter = hold
    try:
        yield frames
    finally:
        net.filter = None
    for f, name in frames:
        m = net.members.get(name)
        if m is not None:
            net.send(m.core.on_message(f.topic, f.payload, net.now))


def state(m: Member, pkt: Packet) -> tuple[int, int, int] | None:
    e = m.ct.find(tuple_of(pkt))
    c = None if e is None else conn_of(e)  # (packed while the card holds the flow)
    return None if c is None else (c.state, c.flags0 & CI, c.flags1 & CI)


# ------------------------------------------------------------------ the TCP join
def _conn(state: int, flags0: int = 0, flags1: int = 0) -> Any:
    ct = Conntrack()
    e = open_tcp(ct, 1, 1000.0)
    e.proto.state = state
    e.proto.flags0 |= flags0
    e.proto.flags1 |= flags1
    return e.proto


@pytest.mark.parametrize(("mine", "theirs", "joined"), [
    ((sFW, CI, 0), (sFW, 0, CI), sLA),  # each member saw one side's FIN
    ((sCW, CI, 0), (sFW, 0, CI), sLA),
    ((sFW, CI, 0), (sCW, CI, 0), sCW),  # the same FIN, acknowledged on one of them
    ((sES, 0, 0), (sFW, 0, CI), sFW),
])
def test_two_partial_views_of_a_close_join_to_the_same_state(
        mine: tuple[int, int, int], theirs: tuple[int, int, int], joined: int) -> None:
    for x, y in ((mine, theirs), (theirs, mine)):
        conn, other = _conn(*x), _conn(*y)
        ctstate.merge_tcp(conn, ctstate.tcp_info(other))
        assert conn.state == joined, (x, y)
        assert conn.flags0 & CI == (x[1] | y[1]) and conn.flags1 & CI == (x[2] | y[2])


def test_close_init_joins_even_before_the_direction_is_learnt() -> None:
    conn = _conn(sFW, CI, 0)
    other = _conn(sFW, 0, CI)
    other.td_maxwin1 = 0  # e.g. after a flow offload fixup
    ctstate.merge_tcp(conn, ctstate.tcp_info(other))
    assert conn.state == sLA and conn.flags1 & CI


# ------------------------------------------------------------------ own connections
def test_a_peers_record_of_this_nodes_own_connection_is_merged() -> None:
    """Asymmetric paths: this node saw the SYN, its peer the SYN/ACK and
    published it under this node's identity (it adopted the connection)."""
    ct = Conntrack()
    syn = tcp(addr(1, 0), addr(1, 1), 12345, 80, "S", 1000, 0, options=OPTS)
    ct.commit(syn, 1000.0)
    mine = ct.find(tuple_of(syn))
    assert mine is not None and mine.proto.state == sSS
    r = Replica("a", 5, ct, None)
    peer = Conntrack()
    peer.commit(syn, 1000.0)
    theirs = peer.find(tuple_of(syn))
    assert theirs is not None
    peer.commit(tcp(addr(1, 1), addr(1, 0), 80, 12345, "SA", 5000, 1001, options=OPTS), 1000.0)
    up = ctstate.upsert_of(theirs, ConnId("a", 5, mine.id), 1000.0)  # our identity
    r.apply(Envelope(1, "c1", "b", 9, 1, 1000.0, CtBatch((up,))), 1000.0)
    assert mine.proto.state == sSR and mine.status & IPS_SEEN_REPLY
    ack = tcp(addr(1, 0), addr(1, 1), 12345, 80, "A", 1001, 5001)
    assert ct.track(ack, 1000.0).entry is mine  # the handshake completes here too


def _flow(i: int) -> tuple[Any, Any]:
    c, s, cp = addr(i, 0), addr(i, 1), 20000 + i

    def C(f: str, sq: int, ack: int, pl: bytes = b"", **kw: Any) -> tuple[str, Packet]:
        return "C", tcp(c, s, cp, 80, f, sq, ack, payload=pl, **kw)

    def S(f: str, sq: int, ack: int, pl: bytes = b"", **kw: Any) -> tuple[str, Packet]:
        return "S", tcp(s, c, 80, cp, f, sq, ack, payload=pl, **kw)

    return C, S


def _open(C: Any, S: Any) -> list[tuple[str, Packet]]:
    return [C("S", 1000, 0, options=OPTS), S("SA", 5000, 1001, options=OPTS),
            C("A", 1001, 5001), C("PA", 1001, 5001, b"x" * 10),
            S("PA", 5001, 1011, b"y" * 20), C("A", 1011, 5021)]


CLOSES = {
    "client first": lambda C, S: [C("FA", 1011, 5021), S("A", 5021, 1012),
                                  S("FA", 5021, 1012), C("A", 1012, 5022)],
    "client first, FIN answered by FIN": lambda C, S: [C("FA", 1011, 5021),
                                                       S("FA", 5021, 1012),
                                                       C("A", 1012, 5022)],
    "server first": lambda C, S: [S("FA", 5021, 1011), C("A", 1011, 5022),
                                  C("FA", 1011, 5022), S("A", 5022, 1012)],
    "simultaneous": lambda C, S: [C("FA", 1011, 5021), S("FA", 5021, 1011),
                                  C("A", 1012, 5022), S("A", 5022, 1012)],
}


@pytest.mark.parametrize("race", [False, True])
@pytest.mark.parametrize("close", sorted(CLOSES))
def test_asymmetric_paths_converge_on_the_state_of_a_closed_connection(
        close: str, race: bool) -> None:
    """Active-active, each flow's original direction through one member and its
    replies through the other (flow 1 created on a, flow 2 on b). Each member's
    table must end with the same state as the other's."""
    net = Net()
    a = net.add("a", mode="active-active")
    b = net.add("b", mode="active-active")
    net.run(1.0)
    assert (a.core.role, b.core.role) == ("active", "active")
    for i, (fwd, rev) in enumerate(((a, b), (b, a)), 1):
        C, S = _flow(i)
        path = {"C": fwd, "S": rev}
        for side, p in _open(C, S):
            assert through(path[side], p, net.now) != "invalid", (side, p)
            net.run(0.1)
        first = _open(C, S)[0][1]
        assert state(a, first) == state(b, first) == (sES, 0, 0)
        if race:
            with held(net):
                for side, p in CLOSES[close](C, S):
                    through(path[side], p, net.now)
                    net.run(0.05)
        else:
            for side, p in CLOSES[close](C, S):
                through(path[side], p, net.now)
                net.run(0.1)
        net.run(1.0)
        sa, sb = state(a, first), state(b, first)
        assert sa == sb and sa is not None and sa[0] >= sLA, (i, sa, sb)


def test_a_member_that_takes_the_traffic_back_updates_the_others_own_connections() -> None:
    """failover-under-load: b created connections while it was active; the
    restarted a becomes active again and sees them closed. b, now the standby,
    must follow, although the records carry its own identity."""
    net = Net()
    b = net.add("b", priority=100)
    net.run(1.0)
    assert b.core.role == "active"
    flows = [_flow(i) for i in range(1, 4)]
    for C, S in flows:
        for _side, p in _open(C, S):
            through(b, p, net.now)
        net.run(0.05)
    a = net.add("a", priority=200, preempt=True, epoch=2)
    net.run(3.0)
    assert a.core.role == "active" and b.core.role == "standby"
    for C, S in flows:
        first = _open(C, S)[0][1]
        assert state(a, first) == state(b, first) == (sES, 0, 0)
        for _side, p in CLOSES["client first"](C, S):
            through(a, p, net.now)
            net.run(0.05)
    net.run(1.0)
    for C, S in flows:
        first = _open(C, S)[0][1]
        assert state(b, first) == state(a, first)
        assert state(a, first)[0] > sFW  # type: ignore[index]
    assert b.core.replica.stats["own"] > 0  # they were b's own connections


# ------------------------------------------------------------------ the standby's card
def test_the_standbys_card_follows_a_udp_flow_from_one_way_to_assured() -> None:
    """act_ct offloads UDP once committed, the original direction only until it
    is assured (2 s of two-way traffic). The standby's card must hold the flow
    all along: replied (its ct info moves to ESTABLISHED, so the GC does not
    find it outdated and tear it down), then bidirectional once assured."""
    net = Net()
    a = net.add("a", priority=200)
    net.run(0.5)
    b = net.add("b", priority=100)
    net.run(0.5)
    q = udp(addr(1, 0), addr(1, 1), 40000, 53, b"q")
    through(a, q, net.now, SNAT)
    net.run(0.2)
    ea = a.ct.find(tuple_of(q))
    assert ea is not None
    r = ea.reply
    ans = udp(r.src, r.dst, r.sport, r.dport, b"a")
    mine = b.ct.find(tuple_of(q))
    assert mine is not None and mine.status & IPS_OFFLOAD

    def flow() -> Any:
        info = b.card.inspect(mine)
        assert info is not None, "not in the standby's card"
        return info

    assert "HW_BIDIRECTIONAL" not in flow().flags
    through(a, ans, net.now, SNAT)
    for _ in range(30):  # 3 s: several GC rounds while replied, not yet assured
        net.run(0.1)
        assert mine.status & IPS_SEEN_REPLY and not mine.status & IPS_ASSURED
        info = flow()
        assert "HW_ESTABLISHED" in info.flags and info.hw[0] == IN_HW
    through(a, q, net.now, SNAT)  # the stream is assured now
    net.run(2.0)
    assert mine.status & IPS_ASSURED
    info = flow()
    assert "HW_BIDIRECTIONAL" in info.flags and info.hw == (IN_HW, IN_HW)
    net.remove("a")
    net.run(0.1)
    assert b.core.role == "active"
    assert isinstance(b.card.lookup(ans, 0, net.now), HwHit)
    assert isinstance(b.card.lookup(q, 0, net.now), HwHit)


def test_a_fin_on_the_active_tears_the_standbys_flow_down_too() -> None:
    net = Net()
    a = net.add("a", priority=200)
    net.run(0.5)
    b = net.add("b", priority=100)
    net.run(0.5)
    C, S = _flow(1)
    for _side, p in _open(C, S):
        through(a, p, net.now)
    net.run(0.2)
    first = _open(C, S)[0][1]
    mine = b.ct.find(tuple_of(first))
    assert mine is not None and b.card.inspect(mine) is not None
    through(a, C("FA", 1011, 5021)[1], net.now)  # a's act_ct tears its flow down
    net.run(3.0)
    assert a.card.inspect(a.ct.find(tuple_of(first))) is None  # type: ignore[arg-type]
    assert mine.proto.state == sFW and not mine.status & IPS_OFFLOAD
    assert b.card.inspect(mine) is None


def test_a_synced_update_that_cannot_be_applied_now_is_retried() -> None:
    """The update of a flow whose insert is still in flight (insert latency) is
    applied once the insert completes, before the GC could call it outdated."""
    ct = Conntrack()
    card = Card(ct, Faults(insert_latency=0.5))
    q = udp(addr(1, 0), addr(1, 1), 40000, 53, b"q")
    ct.commit(q, 1000.0)
    e = ct.find(tuple_of(q))
    assert e is not None
    assert card.install_synced(e, 1000.0) is not None  # one way, NEW
    e.status |= IPS_SEEN_REPLY  # the next record: replied
    assert card.install_synced(e, 1000.1) is None  # an update, not an install
    for t in (1000.6, 1001.6, 1002.6, 1003.6):
        card.poll(t)
    info = card.inspect(e)
    assert info is not None and "HW_ESTABLISHED" in info.flags and info.hw[0] == IN_HW
    assert not int(card.flows.flags[card.flows.fid_of(e)]) & ft.NF_FLOW_TEARDOWN
