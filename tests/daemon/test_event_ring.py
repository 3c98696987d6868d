"""The node's ring of conntrack events behind /events?since=N."""

from __future__ import annotations

from collections import deque

from node.daemon.node import Node
from node.packet import IPPROTO_UDP, Packet, Udp
from tests.daemon.helpers import memory_node


def _flows(node: Node, n: int, now: float) -> None:
    for i in range(n):
        pkt = Packet(4, bytes((198, 18, 0, i)), bytes((198, 19, 0, 1)), IPPROTO_UDP,
                     Udp(1000 + i, 53), b"q", length=29)
        node.ct.commit(pkt, now)


def test_events_since_gives_what_a_scan_of_the_ring_gives() -> None:
    node = memory_node()
    node.events = deque(maxlen=7)  # a small ring, so that it wraps
    seen = 0
    for batch in (3, 5, 1, 9):
        _flows(node, batch, 1.0 + seen)
        seen += len(node.take_ct_events())
        assert node.event_seq == seen
        for since in range(-2, seen + 3):
            want = [(seq, ev) for seq, ev in node.events if seq > since]
            assert node.events_since(since) == want, since
    assert [seq for seq, _ in node.events_since(0)] == list(range(seen - 6, seen + 1))
    assert node.events_since(seen) == [] and node.events_since(seen + 5) == []
