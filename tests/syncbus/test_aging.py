"""Distributed aging: an entry expires only when no member saw traffic for its
timeout; ages travel as "seconds ago", so clock skew between members changes
nothing; a dead member's last touches stay in effect."""

from __future__ import annotations

import pytest

from node.conntrack import Conntrack
from node.conntrack.tuple import tuple_of
from node.offload import Card, Faults
from node.packet import udp
from syncbus import codec, ctstate
from syncbus.aging import Aging, extend
from syncbus.messages import ConnId, CtBatch, Envelope, TouchDigest
from syncbus.outbox import Outbox
from syncbus.replica import Replica
from tests.syncbus.helpers import KEY, addr, open_udp

T0 = 1000.0
POLL = 1.0


class Pair:
    """An active (a) and a standby (b) whose clock runs `skew` seconds ahead."""

    def __init__(self, skew: float = 0.0, n: int = 3) -> None:
        self.skew = skew
        self.a_ct, self.b_ct = Conntrack(), Conntrack()
        self.b_card = Card(self.b_ct, Faults(insert_latency=0.0))
        self.a_aging, self.b_aging = Aging(), Aging()
        self.ob = Outbox("c1", "a", 1, KEY)
        self.rep = Replica("b", 1, self.b_ct, self.b_card, last_seen=self.b_aging.last_seen)
        self.pkts = [udp(addr(i, 0), addr(i, 1), 20000 + i, 53, b"q") for i in range(n)]
        for p in self.pkts:
            self.a_ct.commit(p, T0)
            self.ob.upsert(self.a_ct.find(tuple_of(p)), T0)  # type: ignore[arg-type]
        for f in self.ob.flush(T0):
            self.rep.apply(codec.decode(f.payload, KEY), T0 + skew)
        self.b_card.poll(T0 + skew)

    def traffic(self, t: float, which: range | None = None) -> None:
        """Packets through the active at its time t (it notes them for aging)."""
        for i in which if which is not None else range(len(self.pkts)):
            res = self.a_ct.commit(self.pkts[i], t)
            assert res.entry is not None
            self.a_aging.note(0, res.entry.orig, t)

    def poll_cycle(self, t: float, transit: float = 0.002) -> None:
        """The active publishes its digest at its time t; b receives it."""
        frames = self.ob.touches(self.a_aging.digest(t), t)
        for f in frames:
            body = codec.decode(f.payload, KEY).body
            assert isinstance(body, TouchDigest)
            self.b_aging.receive(body, t + transit + self.skew)
        self.b_aging.apply(self.b_ct, t + transit + self.skew, self.b_card)

    def a_expiry(self, i: int) -> float:
        return self.a_ct.find(tuple_of(self.pkts[i])).expires_at  # type: ignore[union-attr]

    def b_expiry(self, i: int) -> float:
        """b's expiry, in a's clock."""
        return self.b_ct.find(tuple_of(self.pkts[i])).expires_at - self.skew  # type: ignore[union-attr]


    def step(self, t: float) -> None:
        """Both members' expiry (and b's card: offloaded entries age in the flow
        table, as in the kernel) at a's time t."""
        self.a_ct.expire(t)
        self.b_card.poll(t + self.skew)
        self.b_ct.expire(t + self.skew)

    def alive(self) -> tuple[set[int], set[int]]:
        return ({i for i, pk in enumerate(self.pkts) if self.a_ct.find(tuple_of(pk))},
                {i for i, pk in enumerate(self.pkts) if self.b_ct.find(tuple_of(pk))})


@pytest.mark.parametrize("skew", [0.0, 30.0, -30.0])
def test_traffic_through_the_active_alone_keeps_the_standbys_copy_alive(skew: float) -> None:
    p = Pair(skew)
    t = T0
    while t < T0 + 100:  # 100 s of traffic: much longer than UDP's 30 s
        t += 0.25
        if t % POLL == 0:
            p.traffic(t - 0.3)
            p.poll_cycle(t)
        p.step(t)
        assert p.alive() == ({0, 1, 2}, {0, 1, 2})
    for i in range(3):  # b's flow times out when a's entry does, whatever the skew
        flow = p.b_card.inspect(p.b_ct.find(tuple_of(p.pkts[i])))  # type: ignore[arg-type]
        assert flow is not None
        assert flow.timeout - skew == pytest.approx(p.a_expiry(i), abs=0.01)


@pytest.mark.parametrize("skew", [0.0, 30.0, -30.0])
def test_when_traffic_stops_every_copy_expires_together(skew: float) -> None:
    p = Pair(skew)
    t = T0
    gone_a: dict[int, float] = {}
    gone_b: dict[int, float] = {}
    while (len(gone_a) < 3 or len(gone_b) < 3) and t < T0 + 120:
        t = round(t + 0.05, 2)
        if t % POLL == 0:
            if t <= T0 + 40:  # flows 1 and 2 go idle at +20, flow 0 at +40
                p.traffic(t - 0.5, range(3) if t <= T0 + 20 else range(1))
            p.poll_cycle(t)  # polls go on after traffic has stopped everywhere
        p.step(t)
        on_a, on_b = p.alive()
        for i in range(3):
            if i not in on_a:
                gone_a.setdefault(i, t)
            if i not in on_b:
                gone_b.setdefault(i, t)
    assert len(gone_a) == len(gone_b) == 3
    for i in range(3):
        assert abs(gone_a[i] - gone_b[i]) <= POLL  # within one poll interval
    assert gone_b[1] < gone_b[0] and gone_b[2] < gone_b[0]


def test_a_dead_actives_last_touches_stay_in_effect() -> None:
    p = Pair()
    for k in range(1, 11):
        p.traffic(T0 + k - 0.1)
        p.poll_cycle(T0 + k)
    # the active dies at T0+10: no more digests. Its last touch (T0+9.9) holds:
    last = T0 + 9.9
    t = T0 + 10
    while t < last + 30 - 0.1:
        t = round(t + 0.1, 2)
        p.step(t)
        assert p.alive()[1] == {0, 1, 2}
    while t < last + 30 + POLL + 0.1:
        t = round(t + 0.1, 2)
        p.step(t)
    assert p.alive()[1] == set()


def test_touches_also_extend_the_standbys_card_flows() -> None:
    p = Pair()
    entry = p.b_ct.find(tuple_of(p.pkts[0]))
    before = p.b_card.inspect(entry).timeout  # type: ignore[arg-type, union-attr]
    p.traffic(T0 + 20)
    p.poll_cycle(T0 + 20.5)
    after = p.b_card.inspect(entry).timeout  # type: ignore[arg-type, union-attr]
    assert after == pytest.approx(before + 20, abs=0.01)


def test_a_later_update_does_not_shorten_what_touches_extended() -> None:
    p = Pair()
    p.traffic(T0 + 25)  # seen by the active at 25 ...
    p.poll_cycle(T0 + 25.5)
    e = p.a_ct.find(tuple_of(p.pkts[0]))
    assert e is not None
    stale = ctstate.upsert_of(e, ConnId("a", 1, e.id), T0 + 1)._replace(timeout=29.0)
    p.rep.apply(Envelope(1, "c1", "a", 1, 2, T0 + 1, CtBatch((stale,))), T0 + 26)
    assert p.b_expiry(0) == pytest.approx(T0 + 25 + 30, abs=0.01)


def test_an_extension_keeps_the_entrys_own_timeout() -> None:
    ct = Conntrack()
    e = open_udp(ct, 1, T0)
    assert e.timeout == 30
    assert extend(ct, e, T0 + 10, T0 + 11)
    assert e.expires_at == pytest.approx(T0 + 40) and e.timeout == 30
    assert extend(ct, e, T0 + 20, T0 + 21)
    assert e.expires_at == pytest.approx(T0 + 50)
    assert not extend(ct, e, T0 + 5, T0 + 21)  # older news never shortens it


def test_digests_carry_the_newest_touch_and_unknown_connections_wait_for_the_replica() -> None:
    ag = Aging()
    t = tuple_of(udp(addr(1, 0), addr(1, 1), 1, 2))
    ag.note(0, t, 5.0)
    ag.note(0, t, 7.0)
    ag.note(0, t, 6.0)
    (touch,) = ag.digest(8.0)
    assert touch.seconds_ago == pytest.approx(1.0)
    assert ag.digest(9.0) == []
    other = Aging()
    other.receive(TouchDigest((touch,)), 100.0)
    assert other.apply(Conntrack(), 100.0) == 0 and other.stats["unknown"] == 1
    assert other.last_seen[(0, t)] == pytest.approx(99.0)  # kept for when it arrives
