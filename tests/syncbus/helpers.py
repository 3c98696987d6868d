"""Shared test helpers: real engine connections, pure members and a pure network.

`Net` moves Publish frames between SyncCores synchronously, with MQTT's
subscription matching and retained messages; it can drop, duplicate or hold
frames, so ordering and loss are under the test's control. Time is the test's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from node.conntrack import Conntrack, Sysctl
from node.conntrack.entry import Entry
from node.conntrack.nat import NatRange, act_nat
from node.conntrack.tuple import tuple_of
from node.offload import Card, Faults
from node.packet import Packet, TcpOptions, tcp, udp
from syncbus.bus import topic_matches
from syncbus.core import SyncConfig, SyncCore
from syncbus.outbox import Publish

KEY = b"k" * 32
CLUSTER = "c1"
OPTS = TcpOptions(mss=1460, wscale=7, sackok=True)


def addr(i: int, side: int, v6: bool = False) -> str:
    if v6:
        return f"2001:db8:{side}::{i + 1:x}"
    return f"198.{18 + side}.{(i >> 8) & 0xFF}.{i & 0xFF}"


def tcp_packets(i: int, v6: bool = False) -> list[Packet]:
    """Handshake + one data packet each way for connection number i."""
    c, s, cp = addr(i, 0, v6), addr(i, 1, v6), 10000 + i % 50000
    return [tcp(c, s, cp, 443, "S", 1000, 0, options=OPTS),
            tcp(s, c, 443, cp, "SA", 5000, 1001, options=OPTS),
            tcp(c, s, cp, 443, "A", 1001, 5001),
            tcp(c, s, cp, 443, "PA", 1001, 5001, payload=b"x" * 10),
            tcp(s, c, 443, cp, "PA", 5001, 1011, payload=b"y" * 20)]


def open_tcp(ct: Conntrack, i: int, now: float, v6: bool = False) -> Entry:
    pkts = tcp_packets(i, v6)
    for p in pkts:
        ct.commit(p, now)
    entry = ct.find(tuple_of(pkts[0]))
    assert entry is not None
    return entry


def open_udp(ct: Conntrack, i: int, now: float) -> Entry:
    p = udp(addr(i, 0), addr(i, 1), 20000 + i % 40000, 53, b"q")
    ct.commit(p, now)
    entry = ct.find(tuple_of(p))
    assert entry is not None
    return entry


def open_snat(ct: Conntrack, i: int, now: float) -> Entry:
    """A UDP connection source-NATed to 203.0.113.1 (a rewritten reply tuple)."""
    p = udp(addr(i, 0), addr(i, 1), 30000 + i % 30000, 123, b"q")
    res = ct.track(p, now)
    assert res.entry is not None
    out = act_nat(ct, res.entry, res.ctinfo, p, NatRange.parse("src", "203.0.113.1"), True, now)
    ct.commit_tracked(res, out.packet, now)
    entry = ct.find(tuple_of(p))
    assert entry is not None and entry.reply != entry.orig.invert()
    return entry


@dataclass
class Member:
    core: SyncCore
    ct: Conntrack
    card: Card
    name: str
    session: int = 1
    connected: bool = True
    inbox: list[tuple[str, bytes]] = field(default_factory=list)


class Net:
    """A synchronous in-memory broker between SyncCores."""

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}
        self.retained: dict[str, bytes] = {}
        self.log: list[Publish] = []
        self.filter: Callable[[Publish, str], bool] | None = None  # False: drop for that member
        self.now = 1000.0

    def add(self, name: str, epoch: int = 1, key: bytes | None = KEY, card: bool = True,
            **cfg: Any) -> Member:
        ct = Conntrack(Sysctl(nf_conntrack_max=1_000_000))
        c = Card(ct, Faults(insert_latency=0.0)) if card else None
        core = SyncCore(SyncConfig(CLUSTER, name, key, **cfg), ct, c, epoch=epoch, now=self.now)
        m = Member(core, ct, c, name)  # type: ignore[arg-type]
        self.members[name] = m
        for topic, payload in list(self.retained.items()):
            self._to(m, Publish(topic, payload, True))
        self.send(core.on_connected(1, self.now))
        return m

    def remove(self, name: str, will: bool = True) -> None:
        """The member dies (kill -9): the broker publishes its will."""
        m = self.members.pop(name)
        if will:
            self.send([m.core.will(m.session, self.now)])

    def send(self, frames: Iterable[Publish]) -> None:
        queue = list(frames)
        while queue:
            f = queue.pop(0)
            self.log.append(f)
            if f.retain:
                self.retained[f.topic] = f.payload
            for m in list(self.members.values()):
                if m.connected:
                    queue += self._to(m, f)

    def _to(self, m: Member, f: Publish) -> list[Publish]:
        if not any(topic_matches(s, f.topic) for s in m.core.subscriptions()):
            return []
        if self.filter is not None and not self.filter(f, m.name):
            return []
        return m.core.on_message(f.topic, f.payload, self.now)

    def local(self, name: str) -> None:
        """Publish what the member's engine did (its events) and flush."""
        m = self.members[name]
        self.send(m.core.on_local_events(m.ct.take_events(), self.now))
        self.send(m.core.outbox.flush(self.now))

    def run(self, seconds: float, step: float = 0.05) -> None:
        """Advance time, polling every member (timers, heartbeats, expiry)."""
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = min(end, self.now + step)
            for m in list(self.members.values()):
                m.ct.expire(self.now)
                m.card.poll(self.now) if m.card is not None else None
                self.send(m.core.on_local_events(m.ct.take_events(), self.now))
                self.send(m.core.poll(self.now))
