"""Helpers shared by the daemon tests that need no process."""

from __future__ import annotations

from node.daemon import config
from node.daemon.bench import FIREWALL
from node.daemon.node import Node


def memory_node(now: float = 1.0) -> Node:
    """A node with the failover bench's firewall on in-memory ports, no card latency."""
    cfg = config.parse({"node": "a", "cluster": "c", "tc": FIREWALL,
                        "card": {"insert_latency": 0.0},
                        "ports": {"inside": {"type": "memory"}, "outside": {"type": "memory"}}})
    return Node(cfg, now, 1)
