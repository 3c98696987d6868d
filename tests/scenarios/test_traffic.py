"""The traffic generator speaks TCP, UDP, ICMP and FTP well enough that the
conntrack engine (window tracking included) accepts every packet, through
loss and retransmission, and through the library's firewall with NAT."""

from __future__ import annotations

import io
import ipaddress
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.conntrack import Conntrack, Template
from node.conntrack.entry import IP_CT_ESTABLISHED_REPLY, IP_CT_RELATED
from node.datapath import Datapath
from node.packet import Tcp, TcpOptions, build, icmp_echo, parse, tcp, udp
from node.tc.cli import run_batch_text
from node.tc.parse import Options
from scenarios.model import F_CLOSE, F_OPEN, F_TRANSFER, TrafficProfile, load
from scenarios.traffic import (
    BROKEN,
    CLOSED,
    CLOSING,
    ESTABLISHED,
    INSIDE,
    OPENING,
    ORIG,
    OUTSIDE,
    REPLY,
    SYN_OPTIONS,
    Send,
    TrafficGen,
    _datagram,
    _echo,
    _segment,
)

LIBRARY = Path(__file__).resolve().parents[2] / "scenarios" / "library"
NETWORK = ipaddress.ip_network("198.18.0.0/15")
STEP = 0.005


def profile(proto: str = "tcp", **kw: object) -> TrafficProfile:
    base: dict[str, object] = dict(
        name=proto, proto=proto, count=30, clients="198.18.0.0/24", server="198.19.0.1",
        open_rate=100.0, packet_rate=4.0, payload=(1, 1400), duration=2.0,
        port={"tcp": 80, "udp": 53, "ftp": 21}.get(proto, 0))
    base.update(kw)
    return TrafficProfile(**base)  # type: ignore[arg-type]


PROFILES = {
    "tcp": profile(),
    "udp": profile("udp"),
    "icmp": profile("icmp"),
    "ftp-passive": profile("ftp", count=6, packet_rate=2.0),
    "ftp-active": profile("ftp", count=6, packet_rate=2.0, ftp_mode="active"),
}


def helper_for(pkt: object) -> Template:
    l4 = getattr(pkt, "l4", None)
    ftp = isinstance(l4, Tcp) and 21 in (l4.sport, l4.dport)
    return Template(helper="ftp") if ftp else Template()


class Wire:
    """Carries the generator's packets through a conntrack table (ct commit,
    the FTP helper on port 21), dropping a share of them at random."""

    def __init__(self, gen: TrafficGen, loss: float = 0.0, seed: int = 0) -> None:
        self.gen, self.loss, self.rng = gen, loss, random.Random(seed)
        self.ct = Conntrack()
        self.sent: list[Send] = []
        self.invalid: list[tuple[float, Send, str]] = []
        self.ctinfo: Counter[int] = Counter()

    def run(self, until: float) -> None:
        now = 0.0
        while now < until:
            for send in self.gen.next_packets(now):
                self.sent.append(send)
                res = self.ct.commit(send.packet, now, helper_for(send.packet))
                if res.invalid:
                    self.invalid.append((now, send, res.reason))
                self.ctinfo[res.ctinfo] += 1
                if self.rng.random() < self.loss:
                    self.gen.lost(send.flow_id, send.direction, send.packet, now)
                else:
                    self.gen.deliver(send.flow_id, send.direction, send.packet, now)
            self.ct.expire(now)
            now = round(now + STEP, 6)


@pytest.mark.parametrize("loss", [0.0, 0.1], ids=["lossless", "10%-loss"])
@pytest.mark.parametrize("name", PROFILES)
def test_conntrack_accepts_every_packet_and_every_flow_completes(name: str, loss: float) -> None:
    gen = TrafficGen(PROFILES[name], seed=3)
    wire = Wire(gen, loss, seed=4)
    wire.run(30.0)
    assert not wire.invalid, wire.invalid[:3]
    counts = gen.counts()
    assert counts[BROKEN] == 0 and counts[CLOSED] == len(gen.flows()) > 0
    assert gen.finished and gen.next_deadline() is None
    if loss:
        assert sum(f.retransmits for f in gen.flows()) > 0
    if name.startswith("ftp"):
        data = [f for f in gen.flows() if f.proto == "ftp-data"]
        assert len(data) >= 6 and wire.ctinfo[IP_CT_RELATED] >= len(data)
        assert all(f.parent is not None for f in data)


def test_tcp_segments_look_like_linux() -> None:
    gen = TrafficGen(profile(count=1), seed=1)
    wire = Wire(gen)
    wire.run(3.0)
    pkts = [s.packet for s in wire.sent]
    syn, synack = pkts[0].l4, pkts[1].l4
    assert isinstance(syn, Tcp) and isinstance(synack, Tcp)
    assert (syn.flags, syn.window, syn.options.mss, syn.options.wscale, syn.options.sackok) \
        == (0x02, 64240, 1460, 7, True)
    assert (synack.flags, synack.ack, synack.window) == (0x12, (syn.seq + 1) & 0xFFFFFFFF, 65160)
    third = pkts[2].l4
    assert isinstance(third, Tcp) and (third.flags, third.window) == (0x10, 502)
    entry = next(iter(wire.ct.entries()))
    assert entry.proto.state == 7  # TIME_WAIT after the FIN handshake
    flags = [p.l4.flags & 0x1F for p in pkts if isinstance(p.l4, Tcp)]
    assert flags.count(0x11) == 2  # one FIN each way


def test_addresses_stay_in_the_benchmark_network_and_sides_are_right() -> None:
    gen = TrafficGen([PROFILES["tcp"], PROFILES["ftp-active"]], seed=2)
    wire = Wire(gen)
    wire.run(10.0)
    for send in wire.sent:
        src, dst = (ipaddress.ip_address(a) for a in (send.packet.src, send.packet.dst))
        assert src in NETWORK and dst in NETWORK
        client_side = src in ipaddress.ip_network("198.18.0.0/16")
        assert send.side == (INSIDE if client_side else OUTSIDE)
    active_data = [s for s in wire.sent if ".d" in s.flow_id and s.direction == ORIG]
    assert active_data and all(s.side == OUTSIDE for s in active_data)  # from port 20
    assert all(s.packet.l4.sport == 20 for s in active_data)  # type: ignore[union-attr]


def test_same_seed_same_packets() -> None:
    def trace(seed: int) -> list[bytes]:
        wire = Wire(TrafficGen([PROFILES["tcp"], PROFILES["udp"]], seed=seed), 0.05, seed=1)
        wire.run(4.0)
        return [build(s.packet) for s in wire.sent]

    assert trace(5) == trace(5)
    assert trace(5) != trace(6)


def test_flows_open_at_the_configured_rate_and_record_their_history() -> None:
    gen = TrafficGen(profile(count=10, open_rate=5.0, duration=1.0, packet_rate=2.0), seed=1)
    wire = Wire(gen)
    wire.run(0.99)
    assert gen.counts()["pending"] == 5  # 5 per second
    wire.run(6.0)
    ops = gen.take_ops()
    assert gen.take_ops() == []
    per = Counter((op.f, op.type) for op in ops)
    assert per[(F_OPEN, "invoke")] == per[(F_OPEN, "ok")] == 10
    assert per[(F_CLOSE, "invoke")] == per[(F_CLOSE, "ok")] == 10
    opened = next(op for op in ops if op.f == F_OPEN)
    assert opened.value["key"].startswith("tcp src=198.18.0.1 dst=198.19.0.1 sport=10000")
    view = gen.flow("tcp-0")
    assert view.state == CLOSED and view.established_at is not None
    assert view.closed_at is not None and view.closed_at - view.opened_at >= 1.0  # type: ignore[operator]
    assert view.sent == view.delivered


def test_close_all_ends_every_flow_and_opens_no_more() -> None:
    gen = TrafficGen(profile(count=100, open_rate=20.0, duration=None), seed=1)
    wire = Wire(gen)
    wire.run(2.0)
    assert gen.counts()[ESTABLISHED] > 0
    gen.close_all(2.0)
    wire.run(6.0)
    counts = gen.counts()
    assert counts["pending"] == 0 and counts[CLOSED] == len(gen.flows()) < 100
    assert gen.finished


def test_openings_wait_while_the_handshake_backlog_is_full() -> None:
    """A path that answers nothing: no more than max_opening flows are ever in
    their handshake; only when they break do the next ones open (a slow cluster
    slows the openings down instead of drowning in retransmitted SYNs)."""
    gen = TrafficGen(profile(count=50, open_rate=1000.0, duration=None, max_opening=8), seed=1)
    now, most = 0.0, 0
    while now < 40.0:
        for send in gen.next_packets(now):
            gen.lost(send.flow_id, send.direction, send.packet, now)
        most = max(most, gen.counts()[OPENING])
        now = round(now + 0.05, 6)
    counts = gen.counts()
    assert most == 8 and counts[OPENING] == 8 and counts[BROKEN] % 8 == 0
    assert counts[BROKEN] >= 16 and counts["pending"] == 50 - 8 - counts[BROKEN]
    # and once the path answers, the backlog drains and every flow opens
    gen = TrafficGen(profile(count=50, open_rate=1000.0, duration=None, max_opening=8), seed=1)
    Wire(gen).run(1.0)
    assert gen.counts()[ESTABLISHED] == 50


def test_close_all_closes_at_most_max_closing_flows_at_once() -> None:
    gen = TrafficGen(profile(count=60, open_rate=1000.0, duration=None, max_opening=10), seed=1)
    wire = Wire(gen)
    wire.run(2.0)
    assert gen.counts()[ESTABLISHED] == 60
    gen.close_all(2.0)
    assert gen.counts()[CLOSING] <= 10 and gen.closing <= 10
    most = 0
    now = 2.0
    while not gen.finished and now < 20.0:
        for send in gen.next_packets(now):
            gen.deliver(send.flow_id, send.direction, send.packet, now)
        most = max(most, gen.closing)
        now = round(now + STEP, 6)
    assert gen.finished and gen.counts()[CLOSED] == 60
    assert most == 10 and gen.closing == 0


def test_a_dead_path_breaks_the_flows_after_the_retransmissions() -> None:
    """Packets dropped from some moment on (replication off, say): the generator
    notices and records the flows as broken."""
    gen = TrafficGen(profile(count=5, duration=None, packet_rate=2.0), seed=1)
    now = 0.0
    while now < 30.0:
        for send in gen.next_packets(now):
            if now < 2.0:
                gen.deliver(send.flow_id, send.direction, send.packet, now)
            else:
                gen.lost(send.flow_id, send.direction, send.packet, now, where="b")
        now = round(now + STEP, 6)
    views = gen.flows()
    assert all(v.state == BROKEN and "retransmissions" in v.reason for v in views)
    assert all(v.lost > 0 for v in views)
    fails = [op for op in gen.take_ops() if op.type == "fail"]
    assert len(fails) == 5 and {op.f for op in fails} == {F_TRANSFER}
    assert all(11.0 < op.time - 2.0 < 13.5 for op in fails)


def test_a_short_outage_is_survived() -> None:
    gen = TrafficGen(profile(count=20, duration=6.0, packet_rate=5.0), seed=1)
    wire = Wire(gen)
    orig_run = gen.deliver

    def flaky(flow_id: str, direction: int, packet: object, now: float, **kw: object) -> None:
        if 2.0 <= now < 2.8:
            gen.lost(flow_id, direction, packet, now)  # type: ignore[arg-type]
        else:
            orig_run(flow_id, direction, packet, now)  # type: ignore[arg-type]

    gen.deliver = flaky  # type: ignore[method-assign]
    wire.run(15.0)
    assert not wire.invalid
    assert gen.counts()[CLOSED] == 20
    assert any(op.f == "stall" for op in gen.take_ops())


def firewall(script: str) -> Datapath:
    dp = Datapath(["inside", "outside"])
    err = io.StringIO()
    assert run_batch_text(dp.tc, Options(), "fw", script, io.StringIO(), err) == 0, err.getvalue()
    return dp


def through(dp: Datapath, gen: TrafficGen, until: float) -> list[tuple[float, Send, str]]:
    """Every packet into the node on its side; what comes out the other side is
    delivered (NAT applied), anything else is a drop."""
    drops = []
    now = 0.0
    while now < until:
        for send in gen.next_packets(now):
            res = dp.receive(send.side, send.packet, now)
            other = OUTSIDE if send.side == INSIDE else INSIDE
            if res.ports != (other,):
                drops.append((now, send, res.verdict))
                gen.lost(send.flow_id, send.direction, send.packet, now)
            else:
                out = res.egress[0].pkt
                gen.deliver(send.flow_id, send.direction, parse(build(out)), now, via="a",
                            path=res.path)
        dp.expire(now)
        now = round(now + STEP, 6)
    return drops


@pytest.mark.parametrize("scenario", ["failover-basic", "nat-failover"])
def test_the_library_firewall_forwards_every_packet(scenario: str) -> None:
    s = load(LIBRARY / f"{scenario}.yaml")
    profiles = [replace(p, count=10, open_rate=50.0, duration=2.0, packet_rate=4.0)
                for p in s.traffic]
    profiles += [replace(PROFILES["ftp-passive"], name="ftp-p", clients="198.18.9.0/24"),
                 replace(PROFILES["ftp-active"], name="ftp-a", clients="198.18.10.0/24"),
                 replace(PROFILES["icmp"], clients="198.18.11.0/24")]
    if scenario == "nat-failover":
        profiles = [p for p in profiles if p.proto != "ftp"]  # no nf_nat_ftp: as in Linux
    gen = TrafficGen(profiles, seed=8)
    drops = through(firewall(s.tc), gen, 20.0)
    assert not drops, drops[:3]
    views = gen.flows()
    assert all(v.state == CLOSED for v in views)
    assert all(v.delivered == v.sent and v.sw > 0 for v in views)
    natted = {v.translated for v in views if v.proto in ("tcp", "udp")}
    assert natted == ({True} if scenario == "nat-failover" else {False})


def test_a_node_without_the_table_drops_established_flows() -> None:
    """What replication-off looks like from the wire: moving established flows
    to a node that never saw them breaks them (the firewall refuses mid-stream
    pickups), and the generator says so."""
    s = load(LIBRARY / "failover-basic.yaml")
    gen = TrafficGen(replace(s.traffic[0], count=5, open_rate=50.0, packet_rate=2.0), seed=1)
    through(firewall(s.tc), gen, 1.0)
    assert gen.counts()[ESTABLISHED] == 5
    drops = through(firewall(s.tc), gen, 20.0)
    assert drops and gen.counts()[BROKEN] == 5
    assert all(d[1].direction in (ORIG, REPLY) for d in drops)


def test_replies_come_back_established() -> None:
    gen = TrafficGen(PROFILES["udp"], seed=1)
    wire = Wire(gen)
    wire.run(3.0)
    assert wire.ctinfo[IP_CT_ESTABLISHED_REPLY] > 0


@settings(max_examples=25, deadline=None)
@given(src=st.integers(0, 2**17 - 1), dst=st.integers(0, 2**17 - 1),
       sport=st.integers(1, 65535), dport=st.integers(1, 65535),
       flags=st.sampled_from([0x02, 0x12, 0x10, 0x18, 0x11, 0x19]),
       seq=st.integers(0, 2**32 - 1), ack=st.integers(0, 2**32 - 1),
       window=st.integers(0, 65535), payload=st.binary(max_size=64))
def test_the_fast_constructors_build_what_node_packet_builds(
        src: int, dst: int, sport: int, dport: int, flags: int, seq: int, ack: int,
        window: int, payload: bytes) -> None:
    base = int(ipaddress.ip_address("198.18.0.0"))
    a, b = (ipaddress.ip_address(base + x).packed for x in (src, dst))
    opts = SYN_OPTIONS if flags & 0x02 else TcpOptions()
    assert _segment(a, b, sport, dport, flags, seq, ack, window, payload) == \
        tcp(a, b, sport, dport, flags, seq, ack, window, opts, payload)
    assert _datagram(a, b, sport, dport, payload) == udp(a, b, sport, dport, payload)
    for reply in (False, True):
        assert _echo(a, b, sport, dport, payload, reply) == \
            icmp_echo(a, b, sport, dport, payload, reply=reply)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32), loss=st.floats(0.0, 0.3),
       proto=st.sampled_from(["tcp", "udp", "icmp", "ftp"]))
def test_any_seed_and_loss_rate_stays_valid(seed: int, loss: float, proto: str) -> None:
    prof = PROFILES["ftp-passive" if proto == "ftp" else proto]
    gen = TrafficGen(replace(prof, count=5), seed=seed)
    wire = Wire(gen, loss, seed=seed)
    wire.run(20.0)
    assert not wire.invalid, wire.invalid[:3]
    assert gen.counts()[BROKEN] == 0 and gen.finished
