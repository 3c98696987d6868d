"""Property tests: any packet sequence is handled without raising, the table
stays consistent, and replay is deterministic."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from node.conntrack import Conntrack, Template
from node.conntrack.entry import IPS_CONFIRMED
from node.packet import (
    IPPROTO_GRE,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Gre,
    Icmp,
    Packet,
    Tcp,
    TcpOptions,
    Udp,
)

HOSTS = [bytes((198, 18, 1, 2)), bytes((198, 19, 1, 2)), bytes((198, 19, 5, 1))]
ports = st.sampled_from([21, 53, 69, 80, 1000, 40000])
hosts = st.sampled_from(HOSTS)
u32 = st.sampled_from([0, 1, 1000, 1001, 1019, 5000, 5001, 0x7FFFFFFF, 0xFFFFFFFF]) | \
    st.integers(0, 0xFFFFFFFF)

tcp_options = st.builds(TcpOptions, mss=st.none() | st.integers(0, 65535),
                        wscale=st.none() | st.integers(0, 20), sackok=st.booleans(),
                        sack=st.lists(st.tuples(u32, u32), max_size=2).map(tuple))
tcp_l4 = st.builds(Tcp, ports, ports, u32, u32, st.integers(0, 255), st.integers(0, 65535),
                   st.just(0), tcp_options)
payloads = st.sampled_from([b"", b"x" * 10, b"PORT 198,19,1,2,4,1\r\n",
                            b"227 Entering Passive Mode (198,19,1,2,4,1)\r\n",
                            b"\x00\x01file\x00octet\x00"])


@st.composite
def packets(draw: st.DrawFn) -> Packet:
    src, dst = draw(hosts), draw(hosts)
    kind = draw(st.sampled_from(["tcp", "udp", "icmp", "icmperr", "gre", "other"]))
    csum = draw(st.booleans() | st.just(True))
    if kind == "tcp":
        return Packet(4, src, dst, IPPROTO_TCP, draw(tcp_l4), draw(payloads), length=60,
                      l4_csum_ok=csum)
    if kind == "udp":
        return Packet(4, src, dst, IPPROTO_UDP, Udp(draw(ports), draw(ports)), draw(payloads),
                      length=40, l4_csum_ok=csum)
    if kind == "icmp":
        return Packet(4, src, dst, IPPROTO_ICMP,
                      Icmp(draw(st.integers(0, 255)), draw(st.integers(0, 3)),
                           draw(st.integers(0, 3)), 1), length=28)
    if kind == "icmperr":
        inner = Packet(4, dst, src, IPPROTO_UDP, Udp(draw(ports), draw(ports)), length=28,
                       truncated=True)
        return Packet(4, src, dst, IPPROTO_ICMP, Icmp(draw(st.sampled_from([3, 11])), 0,
                                                      inner=inner), length=56)
    if kind == "gre":
        return Packet(4, src, dst, IPPROTO_GRE, Gre(draw(st.integers(0, 1))), b"x", length=30)
    return Packet(4, src, dst, draw(st.integers(0, 255)), None, b"abcd", length=24)


steps = st.lists(st.tuples(packets(), st.floats(0, 40), st.sampled_from([None, "ftp", "tftp"]),
                           st.integers(0, 2), st.booleans()), max_size=40)


def run(seq: list[tuple[Packet, float, str | None, int, bool]]) -> list[tuple[int, int]]:
    ct = Conntrack()
    now = 0.0
    out = []
    for pkt, dt, helper, zone, commit in seq:
        now += dt
        ct.expire(now)
        template = Template(zone=zone, helper=helper)
        res = ct.commit(pkt, now, template) if commit else ct.track(pkt, now, template)
        out.append((res.ctinfo, res.verdict))
        ct.take_events()
    for entry in ct.entries():
        assert entry.status & IPS_CONFIRMED
        assert ct.find(entry.orig, entry.zone) is entry
        assert ct.find(entry.reply, entry.zone) is entry
    return out


@settings(max_examples=300, deadline=None)
@given(steps)
def test_any_packet_sequence_is_handled_and_replay_is_deterministic(
        seq: list[tuple[Packet, float, str | None, int, bool]]) -> None:
    assert run(seq) == run(seq)
