"""Members wired together (SyncCore over the in-memory Net, real engines and
cards): replication, pre-installation, failover, late joiners, loss and resync,
and a hypothesis fuzz of the whole receive path."""

from __future__ import annotations

import hmac
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from node.conntrack.entry import IPS_HW_OFFLOAD
from node.conntrack.tuple import tuple_of
from node.offload import HwHit
from syncbus import codec, topics
from syncbus.messages import CtBatch, CtDelete, Envelope
from syncbus.outbox import Publish
from tests.syncbus.helpers import KEY, Net, open_snat, open_tcp, open_udp, tcp_packets


def table(ct: Any) -> list[tuple[object, ...]]:
    return sorted((e.orig, e.reply, e.zone, e.status & 0x3FFF, e.mark, e.labels)
                  for e in ct.entries())


def pair() -> tuple[Net, Any, Any]:
    net = Net()
    a = net.add("a", priority=200)
    net.run(0.5)
    b = net.add("b", priority=100)
    net.run(0.5)
    assert (a.core.role, b.core.role) == ("active", "standby")
    return net, a, b


def test_a_create_on_the_active_is_installed_in_the_standbys_card() -> None:
    net, a, b = pair()
    e = open_tcp(a.ct, 1, net.now)
    net.local("a")
    mine = b.ct.find(e.orig)
    assert mine is not None and mine.status & IPS_HW_OFFLOAD
    assert b.core.replica.stats["installed"] == 1
    assert b.core.outbox.ct_seq == 0  # b republished nothing
    assert b.core.replica.stats["fast"] == 1  # a plain record: built from its fields
    e.mark = 7
    a.ct.refresh(e, 300.0, net.now)
    a.core.outbox.upsert(e, net.now)
    net.send(a.core.outbox.flush(net.now))
    assert mine.mark == 7 and b.core.replica.stats["fast"] == 2  # the update too
    open_snat(a.ct, 2, net.now)  # NAT ranges: the extended form, decoded
    net.local("a")
    assert b.core.replica.stats["created"] == 2 and b.core.replica.stats["fast"] == 2


def test_after_the_active_dies_the_standby_forwards_its_flows_in_hardware() -> None:
    net, a, b = pair()
    for i in range(20):
        open_tcp(a.ct, i, net.now)
    open_udp(a.ct, 100, net.now)
    open_snat(a.ct, 101, net.now)
    net.local("a")
    net.remove("a")  # kill -9: the will
    net.run(0.05)
    assert b.core.role == "active"
    for i in range(20):
        data = tcp_packets(i)[3]  # the next data packet of an established flow
        hit = b.card.lookup(data, 0, net.now)
        assert isinstance(hit, HwHit), f"flow {i}: {hit}"


def test_deletes_propagate_and_are_never_echoed() -> None:
    net, a, b = pair()
    entries = [open_udp(a.ct, i, net.now) for i in range(5)]
    net.local("a")
    a.ct.kill(entries[2], net.now)
    net.local("a")
    net.run(0.2)
    assert b.ct.find(entries[2].orig) is None and len(b.ct) == 4
    assert b.core.outbox.ct_seq == 0
    assert not [f for f in net.log if f.topic == topics.ct("c1", "b")]


def test_a_late_joiner_gets_a_full_snapshot_before_it_may_become_active() -> None:
    net, a, _b = pair()
    for i in range(300):
        open_tcp(a.ct, i, net.now)
    net.local("a")
    held: list[Publish] = []
    net.filter = lambda f, to: not (to == "c" and "/resp/c" in f.topic and not held.append(f))
    c = net.add("c", priority=255, preempt=True)  # would take over at once if it could
    net.run(2.0)
    assert held and c.core.role == "joining" and len(c.ct) == 0
    assert a.core.role == "active"
    net.filter = None
    for f in held:
        net._to(c, f)  # the snapshot arrives
    net.run(0.5)
    assert table(c.ct) == table(a.ct)
    assert c.core.election.gate.state == "ready"
    assert c.core.role == "active" and a.core.role == "standby"  # preempted, after the gate


def test_a_lost_frame_is_resynced_and_the_tables_converge() -> None:
    net, a, b = pair()
    drop = {"n": 2}

    def lossy(f: Publish, to: str) -> bool:
        if to == "b" and f.topic == topics.ct("c1", "a") and drop["n"] > 0:
            drop["n"] -= 1
            return False
        return True
    net.filter = lossy
    for i in range(5):
        open_udp(a.ct, i, net.now)
        net.local("a")
    # two frames were lost; the third revealed the gap, a replayed them at once
    net.run(0.3)
    assert table(b.ct) == table(a.ct)
    assert b.core.replica.stats["gaps"] >= 1 and a.core.outbox.stats["replayed"] >= 2


def test_a_lost_last_frame_on_an_idle_stream_is_found_by_heartbeats() -> None:
    net, a, b = pair()
    net.filter = lambda f, to: not (to == "b" and f.topic == topics.ct("c1", "a"))
    open_udp(a.ct, 1, net.now)
    net.local("a")
    net.filter = None
    assert len(b.ct) == 0
    net.run(0.5)  # heartbeats announce ct_seq 1
    assert len(b.ct) == 1


def test_a_restarted_origin_is_a_new_epoch_and_nothing_is_lost() -> None:
    net, a, b = pair()
    open_udp(a.ct, 1, net.now)
    net.local("a")
    net.remove("a")
    net.run(0.1)
    a2 = net.add("a", epoch=2, priority=200)
    net.run(1.0)
    assert len(a2.ct) == 1  # the restarted node synced from b (now active)
    assert b.core.role == "active" and a2.core.role == "standby"


def test_frames_on_the_wrong_topic_or_from_a_spoofed_origin_are_counted_and_dropped() -> None:
    net, a, b = pair()
    e = open_udp(a.ct, 1, net.now)
    net.local("a")
    frame = net.log[-1].payload if net.log[-1].topic.endswith("/ct/a") else next(
        f.payload for f in reversed(net.log) if f.topic.endswith("/ct/a"))
    before = table(b.ct)
    bad = b.core.stats["bad_messages"]
    b.core.on_message(topics.ct("c1", "z"), frame, net.now)  # a's frame under z's name
    b.core.on_message(topics.touch("c1", "a"), frame, net.now)  # a batch on a touch topic
    b.core.on_message(topics.ct("c2", "a"), frame, net.now)  # another cluster
    b.core.on_message("other/topic", frame, net.now)
    forged = Envelope(1, "c1", "a", 1, 99, net.now, CtBatch((CtDelete(
        b.core.replica.identity(b.ct.find(e.orig)), e.orig, e.reply, 0),)))  # type: ignore[arg-type]
    b.core.on_message(topics.ct("c1", "a"), codec.encode(forged, b"w" * 32), net.now)
    b.core.on_message(topics.ct("c1", "a"), codec.encode(forged, None), net.now)
    assert b.core.stats["bad_messages"] == bad + 6
    assert table(b.ct) == before


def test_without_the_cluster_key_nothing_installs() -> None:
    net, _a, b = pair()
    intruder = net.add("a", key=None)  # same name, no key: every frame unauthenticated
    open_udp(intruder.ct, 7, net.now)
    net.send(intruder.core.on_local_events(intruder.ct.take_events(), net.now))
    net.send(intruder.core.outbox.flush(net.now))
    assert len(b.ct) == 0 and b.core.stats["bad_messages"] > 0


# ------------------------------------------------------------------ fuzzing the receive path
def _state(core: Any) -> tuple[object, ...]:
    r = core.replica
    return (table(core.ct), {o: (s.epoch, s.next_seq) for o, s in r.streams.items()},
            len(r.meta), core.election.role, core.election.term)


_NET, _A, _B = None, None, None


def _fixture() -> tuple[Net, Any, Any]:
    global _NET, _A, _B
    if _NET is None:
        _NET, _A, _B = pair()
        for i in range(10):
            open_tcp(_A.ct, i, _NET.now)
        _NET.local("a")
    return _NET, _A, _B  # type: ignore[return-value]


def _valid_frames() -> list[tuple[str, bytes]]:
    net, _, _ = _fixture()
    return [(f.topic, f.payload) for f in net.log]


TOPICS = st.sampled_from(["ctlab/c1/ct/a", "ctlab/c1/touch/a", "ctlab/c1/hb/a",
                          "ctlab/c1/resync/b/req", "ctlab/c1/resync/a/resp/b", "ctlab/c1/ct/b",
                          "ctlab/c1/x", "#"])


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_forged_replayed_and_oversized_frames_change_nothing(data: Any) -> None:
    net, _a, b = _fixture()
    frames = _valid_frames()
    kind = data.draw(st.sampled_from(["random", "mutated", "truncated", "replayed",
                                      "oversized", "resigned"]))
    topic = data.draw(TOPICS)
    if kind == "random":
        payload = data.draw(st.binary(max_size=300))
    elif kind == "oversized":
        payload = b"\x81" + bytes(codec.MAX_MESSAGE_BYTES)
    else:
        t, p = data.draw(st.sampled_from(frames))
        if kind == "replayed":
            topic, payload = t, p
        elif kind == "truncated":
            payload = p[:data.draw(st.integers(0, max(len(p) - 1, 0)))]
        elif kind == "resigned":  # a valid structure signed with the wrong key
            payload = codec.encode(codec.decode(p, KEY), b"x" * 32)
        else:
            buf = bytearray(p)
            for _ in range(data.draw(st.integers(1, 4))):
                buf[data.draw(st.integers(0, len(buf) - 1))] ^= data.draw(st.integers(1, 255))
            payload = bytes(buf)
    before = _state(b.core)
    out = b.core.on_message(topic, payload, net.now)
    if kind != "replayed" or topic.endswith("/req"):
        assert _state(b.core) == before
    assert all(isinstance(f, Publish) for f in out)
    assert tuple_of is not None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_malformed_records_from_a_peer_holding_the_key_change_nothing(data: Any) -> None:
    """A member with the cluster key (a bug, not an attacker) sends a ct frame
    whose records are damaged, correctly signed: the receiver refuses the whole
    frame, before applying any of it (a member decodes ct frames lazily, so the
    plain records' checks are the fast lane's), or applies a frame that is
    still valid. It never raises."""
    net, a, b = pair()
    for i in range(6):
        (open_tcp if i % 2 else open_udp)(a.ct, i, net.now)
    net.filter = lambda f, name: f.topic != "ctlab/c1/ct/a"  # b has not seen them
    net.local("a")
    ct_frames = [f for f in net.log if f.topic == "ctlab/c1/ct/a"]
    frame = data.draw(st.sampled_from(ct_frames))
    head = bytearray(frame.payload[:-codec.TAG_BYTES])
    for _ in range(data.draw(st.integers(1, 3))):  # anywhere after the format byte
        head[data.draw(st.integers(1, len(head) - 1))] ^= data.draw(st.integers(1, 255))
    payload = bytes(head) + hmac.digest(KEY, bytes(head), "sha256")
    net.now += 0.01
    before, bad = _state(b.core), b.core.stats["bad_messages"]
    b.core.on_message(frame.topic, payload, net.now)
    refused = b.core.stats["bad_messages"] > bad
    event("refused" if refused else "applied")
    if refused:
        assert _state(b.core) == before
