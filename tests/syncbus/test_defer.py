"""Defer (pfsync's `defer`): the pure queue, and members acknowledging each
other's ct frames over the in-memory Net."""

from __future__ import annotations

import pytest

from node.conntrack.tuple import tuple_of
from syncbus import codec, topics
from syncbus.core import SyncConfig
from syncbus.defer import Deferrals
from syncbus.messages import CtAck, Envelope
from syncbus.outbox import Publish
from tests.syncbus.helpers import CLUSTER, KEY, Net, tcp_packets

DEFER = 0.02  # pfsync's PFSYNC_DEFER_TIMEOUT


# ================================================================ the queue
def test_a_packet_waits_for_the_ack_of_its_frame_and_its_flow_keeps_its_order() -> None:
    d: Deferrals[str] = Deferrals(DEFER)
    assert d.hold(3, "f1", "syn", 10.0) == []
    assert d.holds("f1") and not d.holds("f2")
    assert d.hold_behind("f1", "f1 data behind it", 10.001) == []
    assert d.hold(4, "f2", "f2 synack", 10.002) == []
    d.ack(2)
    assert d.release(10.005) == []
    d.ack(3)
    assert d.release(10.006) == ["syn", "f1 data behind it"]
    assert not d.holds("f1")
    d.ack(4)
    assert d.release(10.007) == ["f2 synack"]
    assert d.stats["released_acked"] == 3 and d.stats["released_timeout"] == 0
    assert len(d) == 0 and d.next_deadline() is None


def test_other_flows_pass_a_held_one() -> None:
    d: Deferrals[str] = Deferrals(DEFER)
    d.ack(1)
    assert d.hold(2, "f1", "f1 syn", 1.0) == []
    assert d.hold(1, "f2", "f2 change, acknowledged already", 1.0) == \
        ["f2 change, acknowledged already"]
    assert d.hold_behind("f3", "f3 data", 1.0) == ["f3 data"]  # nothing of f3 held
    d.hold(2, "f4", "f4 syn", 1.0)
    d.hold_behind("f1", "f1 ack", 1.0)
    d.ack(2)
    assert d.release(1.001) == ["f1 syn", "f4 syn", "f1 ack"]


def test_without_an_ack_a_packet_leaves_at_the_timeout() -> None:
    d: Deferrals[str] = Deferrals(DEFER)
    d.hold(1, "f", "syn", 10.0)
    d.hold_behind("f", "data", 10.001)
    assert d.next_deadline() == pytest.approx(10.0 + DEFER)
    assert d.release(10.0 + DEFER / 2) == []
    assert d.release(10.0 + DEFER) == ["syn", "data"]  # the one behind goes with it
    assert d.stats["released_timeout"] == 1
    s = d.summary()
    assert s["wait_max_ms"] == pytest.approx(DEFER * 1000) and s["held"] == 0


def test_nothing_waits_when_its_frame_is_acknowledged_already() -> None:
    d: Deferrals[str] = Deferrals(DEFER)
    d.ack(5)
    assert d.hold(5, "f", "x", 1.0) == ["x"] and d.stats["deferred"] == 0
    d.hold(6, "f", "y", 1.0)
    assert d.hold(5, "f", "z", 1.0) == []  # acknowledged, but behind y of its flow


def test_a_full_queue_lets_the_oldest_go() -> None:
    d: Deferrals[int] = Deferrals(DEFER, limit=3)
    assert [d.hold(1, i, i, 1.0) for i in range(3)] == [[], [], []]
    assert d.hold(1, 3, 3, 1.0) == [0]
    assert d.stats["released_overflow"] == 1 and len(d) == 3 and not d.holds(0)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Deferrals(0.0)
    with pytest.raises(ValueError):
        SyncConfig(CLUSTER, "a", defer=5.0)


# ================================================================ members
def deferring_pair(defer: float = DEFER) -> tuple[Net, object, object]:
    net = Net()
    a = net.add("a", priority=200, defer=defer)
    net.run(0.5)
    b = net.add("b", priority=100, defer=defer)
    net.run(0.5)
    assert (a.core.role, b.core.role) == ("active", "standby")
    return net, a, b


def test_the_standby_acknowledges_what_it_applied_and_the_active_lets_the_packet_go() -> None:
    net, a, b = deferring_pair()
    assert a.core.defers()
    syn = tcp_packets(1)[0]
    a.ct.commit(syn, net.now)
    frames = a.core.on_local_events(a.ct.take_events(), net.now, urgent=True)
    assert len(frames) == 1  # urgent: no wait for the flush timer
    assert a.core.hold(1, "the SYN", net.now) == []  # its frame is not acknowledged yet
    net.send(frames)  # b applies it and acks (through the Net, synchronously)
    assert b.ct.find(tuple_of(syn)) is not None
    d = a.core.deferrals
    assert d.acked == a.core.outbox.ct_seq
    assert d.release(net.now) == ["the SYN"]
    assert b.core.stats["acks_sent"] >= 1 and a.core.stats["acks_received"] >= 1
    assert a.core.stats["echoes"] >= 1 and a.core.stats["bad_messages"] == 0  # its own frame


def test_a_lost_frame_is_not_acknowledged_until_the_resync_fills_the_gap() -> None:
    net, a, b = deferring_pair()
    ct_topic = topics.ct(CLUSTER, "a")
    net.filter = lambda f, to: not (f.topic == ct_topic and to == "b")
    a.ct.commit(tcp_packets(1)[0], net.now)
    net.send(a.core.on_local_events(a.ct.take_events(), net.now, urgent=True))
    lost = a.core.outbox.ct_seq
    a.core.hold(1, "syn 1", net.now)
    net.filter = None
    a.ct.commit(tcp_packets(2)[0], net.now)
    net.send(a.core.on_local_events(a.ct.take_events(), net.now, urgent=True))
    # b saw frame lost+1 with a gap before it: it asks for a replay first. The Net
    # delivers synchronously, so the replay and then the ack have come already.
    assert b.core.replica.stats["gaps"] == 1
    assert a.core.deferrals.acked == a.core.outbox.ct_seq > lost
    assert b.ct.find(tuple_of(tcp_packets(1)[0])) is not None


def test_no_peer_no_waiting_and_members_without_defer_send_no_acks() -> None:
    net = Net()
    a = net.add("a", priority=200, defer=DEFER)
    net.run(0.5)
    assert a.core.role == "active" and not a.core.defers()  # alone: nobody to wait for
    plain = Net()
    x = plain.add("x", priority=200)
    plain.run(0.5)
    y = plain.add("y", priority=100)
    plain.run(0.5)
    x.ct.commit(tcp_packets(3)[0], plain.now)
    plain.local("x")
    assert x.core.deferrals is None and y.core.stats["acks_sent"] == 0
    assert not any(topics.parse(f.topic).kind == topics.ACK for f in plain.log)


def test_forged_and_misdirected_acks_release_nothing() -> None:
    net, a, _ = deferring_pair()
    a.ct.commit(tcp_packets(4)[0], net.now)
    frames = a.core.on_local_events(a.ct.take_events(), net.now, urgent=True)
    a.core.hold(4, "syn", net.now)
    seq, epoch = a.core.outbox.ct_seq, a.core.epoch

    def ack(body: CtAck, sender: str = "b", key: bytes | None = KEY) -> Publish:
        env = Envelope(1, CLUSTER, sender, 1, 99, net.now, body)
        return Publish(topics.ack(CLUSTER, sender), codec.encode(env, key))

    bad = [ack(CtAck("a", epoch, seq), key=b"x" * 32),  # not authentic
           ack(CtAck("a", epoch + 1, seq)),  # another incarnation of a
           ack(CtAck("c", epoch, seq)),  # someone else's stream
           ack(CtAck("a", epoch, seq + 100))]  # beyond anything a sent
    spoofed = Publish(topics.ack(CLUSTER, "c"), bad[1].payload)  # b's frame on c's topic
    for f in [*bad, spoofed]:
        a.core.on_message(f.topic, f.payload, net.now)
    assert a.core.deferrals.acked < seq and a.core.deferrals.release(net.now) == []
    assert a.core.stats["bad_messages"] == 2  # the forgery and the spoof
    net.send(frames)
    assert a.core.deferrals.release(net.now) == ["syn"]
