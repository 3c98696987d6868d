"""Defer end to end: real node processes through a real broker (both kinds).
With sync.defer, a packet that changed a connection leaves the active only once
the standby acknowledged the change: whoever receives it can count on the
standby having the connection."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from typing import Any

import pytest

from node.packet import parse
from tests.daemon.conftest import (
    Cluster,
    NodeProc,
    data_packets,
    handshake,
    peer_sockets,
    wait_until,
)

pytestmark = [pytest.mark.timeout(120), pytest.mark.broker]
DEFER = 1.0  # seconds: generous, so that a loaded CI machine still sees acks first


def deferring_pair(cluster: Cluster,
                   peers: dict[str, socket.socket]) -> tuple[NodeProc, NodeProc]:
    ports = {name: f"127.0.0.1:{s.getsockname()[1]}" for name, s in peers.items()}
    a = cluster.node("a", priority=200, role={"preempt": True}, sync={"defer": DEFER},
                     start=False)
    for name, peer in ports.items():
        a.config["ports"][name]["peer"] = peer
    a.path.write_text(json.dumps(a.config))
    a.start()
    b = cluster.node("b", priority=100, sync={"defer": DEFER})
    a.wait_ready()
    b.wait_ready()
    wait_until(lambda: a.role() == "active" and b.role() == "standby", 15,
               "a active and b standby")
    wait_until(lambda: a.state()["defer"]["active"], 10, "a to see a ready peer to wait for")
    return a, b


def receive(s: socket.socket) -> Any:
    data, _ = s.recvfrom(65536)
    return parse(data)


def forward(a: NodeProc, peers: dict[str, socket.socket],
            packets: list[tuple[str, Any]]) -> None:
    """Inject each packet into a and receive it at the far end, one by one."""
    for port, pkt in packets:
        a.inject(port, pkt)
        receive(peers["outside" if port == "inside" else "inside"])


def test_a_changing_packet_leaves_only_once_the_standby_has_the_connection(
        cluster: Cluster) -> None:
    with peer_sockets() as peers:
        a, b = deferring_pair(cluster, peers)
        waits = []
        for sport in range(51000, 51010):
            syn = handshake(sport)[0]
            t0 = time.monotonic()
            assert a.inject(*syn)["forwarded"]
            got = receive(peers["outside"])
            waits.append(time.monotonic() - t0)
            assert got.l4.sport == sport
            # The SYN is out: b must hold the connection already (it acknowledged it).
            e = b.entry(sport)
            assert e is not None and e["synced_from"] == "a" and e["state"] == "SYN_SENT", e
        st = a.state()["defer"]
        assert st["deferred"] >= 10 and st["released_acked"] >= 10, st
        assert st["released_timeout"] == 0 and st["held"] == 0, st
        assert b.state()["defer"]["acks_sent"] >= 10
        assert max(waits) < DEFER, waits
        print(f"\nFIGURE defer_syn_to_wire_p50 = {sorted(waits)[len(waits) // 2] * 1000:.1f} ms"
              f" (a's hold p50 {st['wait_p50_ms']} ms)")
        metrics = a.text("/metrics")
        assert re.search(r'^ctlab_defer_released_total\{why="acked"\} (\d+)$', metrics, re.M)


def test_established_traffic_is_not_held(cluster: Cluster) -> None:
    with peer_sockets() as peers:
        a, _ = deferring_pair(cluster, peers)
        sport = 51100
        forward(a, peers, handshake(sport))
        before = a.state()["defer"]["deferred"]
        forward(a, peers, data_packets(sport, 5))
        assert a.state()["defer"]["deferred"] == before  # no change, nothing to wait for


def test_a_held_connection_holds_no_other_and_leaves_at_the_timeout(cluster: Cluster) -> None:
    with peer_sockets() as peers:
        a, b = deferring_pair(cluster, peers)
        other = 51300
        forward(a, peers, handshake(other))
        os.kill(b.pid, signal.SIGSTOP)  # no more acks (a still counts b as alive a while)
        try:
            t0 = time.monotonic()
            a.inject(*handshake(51301)[0])  # a new connection: held
            a.inject(*data_packets(other, 1)[0])  # established data of another one
            first = receive(peers["outside"])
            assert first.l4.sport == other  # it did not wait
            second = receive(peers["outside"])
            assert second.l4.sport == 51301 and time.monotonic() - t0 >= DEFER * 0.9
            st = a.state()["defer"]
            assert st["released_timeout"] >= 1 and st["held"] == 0, st
        finally:
            os.kill(b.pid, signal.SIGCONT)


def test_without_a_ready_peer_nothing_is_held(cluster: Cluster) -> None:
    with peer_sockets() as peers:
        a, b = deferring_pair(cluster, peers)
        b.kill9()
        wait_until(lambda: not a.state()["defer"]["active"], 10, "a to see b gone")
        before = a.state()["defer"]["deferred"]
        t0 = time.monotonic()
        a.inject(*handshake(51200)[0])
        receive(peers["outside"])
        assert time.monotonic() - t0 < DEFER
        assert a.state()["defer"]["deferred"] == before
