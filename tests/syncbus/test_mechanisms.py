"""The protective mechanisms switched off one by one (negative controls), on the
in-memory Net: replication, pre-installation (with whole Nodes: tc, datapath
and card), distributed aging and the readiness gate."""

from __future__ import annotations

from typing import Any

from node.conntrack.tuple import tuple_of
from node.daemon import config
from node.daemon.node import Node
from node.daemon.views import offload_json
from node.offload.hwtable import IN_HW
from node.packet import build
from syncbus import topics
from syncbus.election import READY
from syncbus.outbox import Publish
from tests.daemon.conftest import FIREWALL_TC, data_packets, handshake
from tests.syncbus.helpers import CLUSTER, KEY, Member, Net, open_tcp, open_udp


def frames_on(net: Net, kind: str, node: str) -> list[Publish]:
    return [f for f in net.log if topics.parse(f.topic).kind == kind
            and topics.parse(f.topic).node == node]


# ================================================================ replication
def test_replication_off_publishes_nothing_but_a_joiners_gate_still_opens() -> None:
    net = Net()
    a = net.add("a", priority=200, replication=False)
    net.run(0.5)
    assert a.core.role == "active"
    for i in range(5):
        open_tcp(a.ct, i, net.now)
    open_udp(a.ct, 9, net.now)
    net.local("a")
    b = net.add("b", priority=100)
    net.run(1.0)
    assert len(a.ct) == 6 and len(b.ct) == 0
    assert frames_on(net, topics.CT, "a") == []
    assert a.core.outbox.stats["frames"] == 0 and a.core.outbox.ct_seq == 0
    gate = b.core.election.gate
    assert gate.state == READY and "snapshot from a complete" in gate.reason
    assert b.core.replica.stats["snapshots"] == 1 and b.core.role == "standby"
    # a still applies what others send, and a destroy on a says nothing either
    e = open_tcp(b.ct, 20, net.now)
    net.local("b")
    assert a.ct.find(e.orig) is not None
    a.ct.kill(next(iter(a.ct.entries())), net.now)
    net.local("a")
    assert frames_on(net, topics.CT, "a") == []


def test_with_replication_on_the_same_joiner_gets_the_entries() -> None:
    net = Net()
    a = net.add("a", priority=200)
    net.run(0.5)
    for i in range(5):
        open_tcp(a.ct, i, net.now)
    net.local("a")
    b = net.add("b", priority=100)
    net.run(1.0)
    assert len(b.ct) == 5 and b.core.election.gate.state == READY


# ================================================================ pre-installation
def add_node(net: Net, name: str, priority: int, **mechanisms: bool) -> tuple[Node, Member]:
    """A whole Node (tc firewall, datapath, card) as a Net member."""
    raw: dict[str, Any] = {
        "node": name, "cluster": CLUSTER, "cluster_key": KEY.decode(), "tc": FIREWALL_TC,
        "ports": {"inside": {"type": "memory"}, "outside": {"type": "memory"}},
        "card": {"insert_latency": 0.001}, "role": {"priority": priority},
        "mechanisms": mechanisms}
    node = Node(config.parse(raw), net.now, 1)
    m = Member(node.core, node.ct, node.card, name)
    net.members[name] = m
    for topic, payload in list(net.retained.items()):
        net.send(net._to(m, Publish(topic, payload, True)))
    net.send(node.core.on_connected(1, net.now))
    return node, m


def nodes(preinstall: bool) -> tuple[Net, Node, Node]:
    net = Net()
    a, _ = add_node(net, "a", 200)
    net.run(0.5)
    b, _ = add_node(net, "b", 100, preinstall=preinstall)
    net.run(0.5)
    assert (a.core.role, b.core.role) == ("active", "standby")
    for port, pkt in handshake(40000):
        assert a.receive(port, build(pkt), net.now).outcome.forwarded  # type: ignore[union-attr]
    net.local("a")
    net.run(0.1)  # card inserts on both
    return net, a, b


def test_preinstall_off_keeps_the_standbys_card_empty_until_traffic_offloads_the_entry(
) -> None:
    net, a, b = nodes(preinstall=False)
    orig = tuple_of(handshake(40000)[0][1])
    entry = b.ct.find(orig, 1)
    assert entry is not None and b.core.replica.meta[entry.id].origin == "a"
    assert b.card.hw.entries == 0 and len(b.card.flows) == 0
    assert b.card.counters.synced == 0 and b.core.replica.stats["installed"] == 0
    assert offload_json(b) == {"eligible": 1, "installed": 0, "pending": 0}
    assert offload_json(a) == {"eligible": 1, "installed": 1, "pending": 0}
    # failover: the first packets on b go through software, which offloads the
    # synced entry as it would a local one; once inserted, traffic is in hardware
    net.remove("a")
    net.run(0.05)
    assert b.core.role == "active"
    first, reply = data_packets(40000)
    got = b.receive(first[0], build(first[1]), net.now)
    assert got.outcome is not None and got.outcome.path == "sw" and got.outcome.forwarded
    net.run(0.05)
    fid = b.card.flows.fid_of(entry)
    assert fid >= 0 and b.card.hw.state[2 * fid] == IN_HW
    assert offload_json(b) == {"eligible": 1, "installed": 1, "pending": 0}
    out = b.receive(reply[0], build(reply[1]), net.now).outcome
    assert out is not None and out.path == "hw" and out.forwarded


def test_preinstall_on_installs_on_arrival() -> None:
    _, _, b = nodes(preinstall=True)
    assert b.card.hw.entries == 2 and b.card.counters.synced == 1
    assert offload_json(b) == {"eligible": 1, "installed": 1, "pending": 0}


# ================================================================ aging
def test_distributed_aging_off_sends_no_touches_and_ignores_received_ones() -> None:
    net = Net()
    a = net.add("a", priority=200, distributed_aging=False)
    b = net.add("b", priority=100)
    net.run(0.5)
    e = open_udp(a.ct, 1, net.now)
    net.local("a")
    assert b.ct.find(e.orig) is not None
    a.core.aging.note(e.zone, e.orig, net.now)
    assert a.core.touches(net.now) == []
    assert a.core.aging.digest(net.now) == []  # taken: the digest does not grow
    # b's touches reach a, which ignores them
    b.core.aging.note(e.zone, e.orig, net.now)
    frames = b.core.touches(net.now)
    assert len(frames) == 1
    before = a.ct.find(e.orig).expires_at  # type: ignore[union-attr]
    net.now += 10.0
    net.send(frames)
    assert a.core.stats["touches_ignored"] == 1 and a.core.aging.stats["received"] == 0
    assert a.ct.find(e.orig).expires_at == before  # type: ignore[union-attr]
    assert frames_on(net, topics.TOUCH, "a") == []


def test_distributed_aging_on_sends_and_applies_touches() -> None:
    net = Net()
    a = net.add("a", priority=200)
    b = net.add("b", priority=100)
    net.run(0.5)
    e = open_udp(a.ct, 1, net.now)
    net.local("a")
    a.core.aging.note(e.zone, e.orig, net.now)
    net.send(a.core.touches(net.now))
    assert b.core.aging.stats["received"] == 1
    assert a.core.aging.digest(net.now) == []


# ================================================================ readiness gate
def joiner_without_a_snapshot(gate: bool) -> tuple[Net, Any, Any]:
    """a active with 50 flows; b (better priority, preempt) joins but never gets
    the snapshot's frames."""
    net = Net()
    a = net.add("a", priority=100)
    net.run(0.5)
    for i in range(50):
        open_tcp(a.ct, i, net.now)
    net.local("a")
    net.filter = lambda f, to: not (to == "b" and topics.parse(f.topic).kind
                                    == topics.RESYNC_RESP)
    b = net.add("b", priority=200, preempt=True, readiness_gate=gate)
    net.run(1.0)
    return net, a, b


def test_readiness_gate_off_lets_a_node_take_over_before_its_snapshot() -> None:
    _, a, b = joiner_without_a_snapshot(gate=False)
    assert b.core.election.gate.state != READY
    assert b.core.role == "active" and len(b.ct) < len(a.ct)
    assert a.core.role == "standby"


def test_readiness_gate_on_keeps_the_joiner_out_until_its_snapshot() -> None:
    _, a, b = joiner_without_a_snapshot(gate=True)
    assert b.core.election.gate.state != READY
    assert b.core.role == "joining" and a.core.role == "active"
