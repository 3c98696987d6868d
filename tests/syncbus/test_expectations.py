"""FTP through a failover, with real engines on both members.

The standby knows the expectations the active's FTP helper created
(conntrackd's ExpectationSync), so the data connection a 227 answer or a PORT
command announced is RELATED there after a failover; and it takes over
control connections whose windows moved on since their last replicated event
(entries the replica writes are BE_LIBERAL, as conntrackd injects them)."""

from __future__ import annotations

import pytest

from node.conntrack import Conntrack
from node.conntrack.entry import IP_CT_RELATED, IPS_EXPECTED, Entry
from node.conntrack.table import Template
from node.conntrack.tcp_table import IP_CT_TCP_FLAG_BE_LIBERAL
from node.conntrack.tuple import Tuple, tuple_of
from node.packet import Packet, TcpOptions, ip_bytes, tcp
from syncbus import codec, ctstate
from syncbus.messages import ConnId, CtBatch
from tests.syncbus.helpers import OPTS, Member, Net

FTP = Template(zone=1, helper="ftp")  # `ct zone 1 commit helper ipv4-tcp-ftp`
ZONE1 = Template(zone=1)
C, S = "198.18.0.1", "198.19.0.1"


def _host_port(addr: str, port: int) -> str:
    return ",".join([*addr.split("."), str(port >> 8), str(port & 0xFF)])


class Flow:
    """One TCP connection's two ends: sequence numbers advance as packets are made."""

    def __init__(self, src: str, dst: str, sport: int, dport: int, iss: int, irs: int) -> None:
        self.src, self.dst, self.sport, self.dport = src, dst, sport, dport
        self.seq = [iss, irs]  # next seq of the originator, of the responder

    def pkt(self, d: int, flags: str, payload: bytes = b"") -> Packet:
        src, dst, sport, dport = ((self.src, self.dst, self.sport, self.dport) if d == 0
                                  else (self.dst, self.src, self.dport, self.sport))
        p = tcp(src, dst, sport, dport, flags, self.seq[d], self.seq[1 - d],
                options=OPTS if "S" in flags else TcpOptions(), payload=payload)
        self.seq[d] = (self.seq[d] + len(payload) + ("S" in flags) + ("F" in flags)) & 0xFFFFFFFF
        return p

    def open(self, ct: Conntrack, now: float, template: Template = ZONE1) -> Entry:
        for d, flags in ((0, "S"), (1, "SA"), (0, "A")):
            assert ct.commit(self.pkt(d, flags), now, template).entry is not None
        entry = ct.find(Tuple(4, 6, ip_bytes(self.src), ip_bytes(self.dst), self.sport,
                              self.dport), template.zone)
        assert entry is not None
        return entry


def say(m: Member, flow: Flow, d: int, line: str, now: float) -> None:
    """One line on the control connection through `m`'s conntrack, and its ACK."""
    res = m.ct.commit(flow.pkt(d, "PA", line.encode() + b"\r\n"), now, FTP)
    assert res.entry is not None, res.reason
    assert m.ct.commit(flow.pkt(1 - d, "A"), now, FTP).entry is not None


def pasv(m: Member, ctl: Flow, now: float, port: int = 50001) -> None:
    """The client asks for passive mode; the server offers `port` (the helper
    expects the data connection)."""
    say(m, ctl, 0, "PASV", now)
    say(m, ctl, 1, f"227 Entering Passive Mode ({_host_port(S, port)}).", now)


def login(net: Net, m: Member, flow: Flow) -> Entry:
    ctl = flow.open(m.ct, net.now, FTP)
    for d, line in ((1, "220 ready"), (0, "USER anonymous"), (1, "331 password"),
                    (0, "PASS ctlab@"), (1, "230 ok")):
        say(m, flow, d, line, net.now)
    net.local(m.name)
    return ctl


def pair() -> tuple[Net, Member, Member]:
    net = Net()
    a = net.add("a", priority=200)
    b = net.add("b", priority=100)
    net.run(2.0)
    return net, a, b


def expectations(ct: Conntrack) -> list[tuple[object, ...]]:
    return [(e.tuple, e.src_any_addr, e.src_any_port, e.zone, e.master.orig, e.helper,
             e.flags, e.cls) for e in ct.expect]


def the(ct: Conntrack, flow: Flow) -> Entry:
    entry = ct.find(Tuple(4, 6, ip_bytes(flow.src), ip_bytes(flow.dst), flow.sport,
                          flow.dport), 1)
    assert entry is not None
    return entry


def test_the_standby_holds_the_expectation_of_a_227_answer() -> None:
    net, a, b = pair()
    ctl = Flow(C, S, 10001, 21, 1000, 5000)
    login(net, a, ctl)
    assert len(a.ct.expect) == 0 and len(b.ct.expect) == 0
    pasv(a, ctl, net.now)
    net.local("a")
    assert len(a.ct.expect) == 1
    assert expectations(b.ct) == expectations(a.ct)
    (mine,) = b.ct.expect
    assert mine.master is the(b.ct, ctl)
    assert mine.expires_at == pytest.approx(next(iter(a.ct.expect)).expires_at, abs=0.01)
    # what the replica installed is not the standby's to publish
    assert b.ct.expect.take_changed() == []
    assert b.core.outbox.flush(net.now) == []


def test_after_a_failover_the_passive_data_connection_is_related_on_the_standby() -> None:
    net, a, b = pair()
    ctl = Flow(C, S, 10001, 21, 1000, 5000)
    login(net, a, ctl)
    pasv(a, ctl, net.now)
    net.local("a")
    net.remove("a")  # killed before the client connects
    net.run(1.0)
    data = Flow(C, S, 10002, 50001, 7000, 9000)
    res = b.ct.commit(data.pkt(0, "S"), net.now, ZONE1)
    assert res.ctinfo == IP_CT_RELATED and res.entry is not None
    assert res.entry.status & IPS_EXPECTED and res.entry.master is the(b.ct, ctl)
    assert len(b.ct.expect) == 0  # taken


def test_after_a_failover_the_active_data_connection_is_related_on_the_standby() -> None:
    """Active mode: the server connects from outside, where only +rel passes."""
    net, a, b = pair()
    ctl = Flow(C, S, 10001, 21, 1000, 5000)
    login(net, a, ctl)
    say(a, ctl, 0, f"PORT {_host_port(C, 40000)}", net.now)
    net.local("a")
    assert expectations(b.ct) == expectations(a.ct) != []
    net.remove("a")
    net.run(1.0)
    data = Flow(S, C, 20, 40000, 3000, 4000)
    res = b.ct.track(data.pkt(0, "S"), net.now, ZONE1)  # `ct zone 1`, then +rel commits
    assert res.ctinfo == IP_CT_RELATED and res.entry is not None
    assert res.entry.master is the(b.ct, ctl)


def test_a_taken_expectation_goes_on_the_standby_too() -> None:
    net, a, b = pair()
    ctl = Flow(C, S, 10001, 21, 1000, 5000)
    login(net, a, ctl)
    pasv(a, ctl, net.now)
    net.local("a")
    assert len(b.ct.expect) == 1
    data = Flow(C, S, 10002, 50001, 7000, 9000)
    data.open(a.ct, net.now)
    net.local("a")
    assert len(a.ct.expect) == 0 and len(b.ct.expect) == 0
    child = the(b.ct, data)
    assert child.status & IPS_EXPECTED and child.master is the(b.ct, ctl)


def test_a_newer_expectation_replaces_the_older_on_the_standby() -> None:
    """FTP's policy is one expectation per master: the next PASV evicts it."""
    net, a, b = pair()
    ctl = Flow(C, S, 10001, 21, 1000, 5000)
    login(net, a, ctl)
    for port in (50001, 50002):
        pasv(a, ctl, net.now, port)
        net.local("a")
    assert [e.tuple.dport for e in b.ct.expect] == [50002]
    assert expectations(b.ct) == expectations(a.ct)


def test_a_joining_member_gets_the_expectations_in_its_snapshot() -> None:
    net = Net()
    a = net.add("a", priority=200)
    net.run(1.0)
    ctl = Flow(C, S, 10001, 21, 1000, 5000)
    login(net, a, ctl)
    pasv(a, ctl, net.now)
    net.local("a")
    b = net.add("b", priority=100)
    net.run(2.0)
    assert b.core.replica.stats["snapshots"] >= 1
    assert expectations(b.ct) == expectations(a.ct) != []


def test_the_control_connection_survives_a_failover_after_unreplicated_data() -> None:
    """Established packets of a connection produce no events: the standby's copy
    of its windows is as old as its last event. The next packets after a failover
    are beyond those windows and would be INVALID there: conntrackd injects
    entries with BE_LIBERAL for this reason."""
    net, a, b = pair()
    ctl = Flow(C, S, 10001, 21, 1000, 5000)
    login(net, a, ctl)
    frames = len(net.log)
    for i in range(5):  # 200 + 300 bytes each way that no record carries
        say(a, ctl, 0, "NOOP " + "x" * 200, net.now)
        say(a, ctl, 1, f"200 {i} " + "y" * 300, net.now)
        net.local("a")
    assert not [f for f in net.log[frames:] if "/ct/" in f.topic]
    net.remove("a")
    net.run(1.0)
    mine = the(b.ct, ctl)
    for d, line in ((0, "PASV"), (1, f"227 Entering Passive Mode ({_host_port(S, 50009)}).")):
        res = b.ct.commit(ctl.pkt(d, "PA", line.encode() + b"\r\n"), net.now, FTP)
        assert res.entry is mine, res.reason
    assert mine.proto.flags0 & mine.proto.flags1 & IP_CT_TCP_FLAG_BE_LIBERAL
    # the helper picked the session up (NF_CT_FTP_SEQ_PICKUP) and announced it here
    assert [e.tuple.dport for e in b.ct.expect] == [50009]
    net.run(0.1)
    assert b.core.outbox.stats["items"] > 0  # b publishes the master it adopted


def test_an_expecting_master_takes_the_slow_lane_with_the_same_bytes() -> None:
    ct = Conntrack()
    ctl = Flow(C, S, 10001, 21, 1000, 5000)
    master = ctl.open(ct, 10.0, FTP)
    for d, line in ((1, "220 ready"), (0, "USER x"), (1, "331 pw"), (0, "PASV"),
                    (1, f"227 Entering Passive Mode ({_host_port(S, 50001)}).")):
        assert ct.commit(ctl.pkt(d, "PA", line.encode() + b"\r\n"), 10.0, FTP).entry
    assert master.expect_count == 1
    master.helper = None  # an expecting master without a helper name still lists them
    conn = ConnId("a", 7, master.id)
    packed = ctstate.pack_entry(master, conn, 12.5, "a", 7)
    assert packed == codec.pack_item(ctstate.upsert_of(master, conn, 12.5), "a", 7)
    (exp,) = ctstate.upsert_of(master, conn, 12.5).expects
    assert exp.timeout == pytest.approx(300 - 2.5) and exp.tuple.dport == 50001
    frame = codec.encode_packed("c1", "a", 7, 1, 12.5, [packed], None)
    body = codec.decode(frame).body
    assert isinstance(body, CtBatch) and body.items[0].expects == (exp,)  # type: ignore


def test_a_data_connection_on_the_active_is_still_tuple_of_the_expectation() -> None:
    """Sanity of the helpers above: the expectation matches the data SYN."""
    ct = Conntrack()
    ctl = Flow(C, S, 10001, 21, 1000, 5000)
    ctl.open(ct, 1.0, FTP)
    for d, line in ((1, "220 ready"), (0, "PASV"),
                    (1, f"227 Entering Passive Mode ({_host_port(S, 50001)}).")):
        ct.commit(ctl.pkt(d, "PA", line.encode() + b"\r\n"), 1.0, FTP)
    (exp,) = ct.expect
    assert exp.matches(tuple_of(Flow(C, S, 10002, 50001, 1, 2).pkt(0, "S")))
