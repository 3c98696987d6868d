"""Ports picked for brokers, nodes and scenario sockets: never the same one
twice in a process (the kernel can return one ephemeral port to two bind(0)
calls in a row, and two nodes configured one after the other then collide)."""

from __future__ import annotations

import socket

from syncbus.broker import free_port, free_udp_port


def test_ports_handed_out_are_distinct_and_bindable() -> None:
    udp = [free_udp_port() for _ in range(300)]
    tcp = [free_port() for _ in range(300)]
    assert len(set(udp)) == len(udp) and len(set(tcp)) == len(tcp)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        u.bind(("127.0.0.1", udp[-1]))
        t.bind(("127.0.0.1", tcp[-1]))
