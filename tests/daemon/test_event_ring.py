"""The node's ring of conntrack events behind /events?since=N."""

from __future__ import annotations

from collections import deque

from syncbus.bench import open_udp
from tests.daemon.helpers import memory_node


def test_events_since_gives_what_a_scan_of_the_ring_gives() -> None:
    node = memory_node()
    node.events = deque(maxlen=7)  # a small ring, so that it wraps
    seen = 0
    for batch in (3, 5, 1, 9):
        for i in range(seen, seen + batch):  # a new UDP flow each: one NEW event
            open_udp(node.ct, i, 1.0 + seen)
        seen += len(node.take_ct_events())
        assert node.event_seq == seen
        for since in range(-2, seen + 3):
            want = [(seq, ev) for seq, ev in node.events if seq > since]
            assert node.events_since(since) == want, since
    assert [seq for seq, _ in node.events_since(0)] == list(range(seen - 6, seen + 1))
    assert node.events_since(seen) == [] and node.events_since(seen + 5) == []
