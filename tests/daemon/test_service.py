"""service.run() in this process: memory ports, an embedded broker, a clean stop."""

from __future__ import annotations

import asyncio

import pytest

from node.daemon import config
from node.daemon.service import run
from node.daemon.wire import MemoryPort
from node.packet import build, parse
from tests.daemon.conftest import handshake, node_config

pytestmark = pytest.mark.timeout(60)


async def test_run_forwards_between_memory_ports_and_stops_cleanly() -> None:
    raw = node_config("m", "mem", None, broker={"embedded": {"port": 0}})
    raw["ports"] = {"inside": {"type": "memory"}, "outside": {"type": "memory"}}
    cfg = config.parse(raw)
    ports = {"inside": MemoryPort("inside"), "outside": MemoryPort("outside")}
    ready, stop = asyncio.Event(), asyncio.Event()
    infos: list[dict[str, object]] = []
    task = asyncio.create_task(run(cfg, ready=ready, stop=stop, ports=ports,
                                   on_ready=infos.append))
    try:
        async with asyncio.timeout(20):
            await ready.wait()
        assert str(infos[0]["control"]).startswith("http://127.0.0.1:")
        for port, pkt in handshake(47000):
            ports[port].deliver(build(pkt))
            other = "outside" if port == "inside" else "inside"
            async with asyncio.timeout(5):
                while not ports[other].sent:
                    await asyncio.sleep(0.01)
            assert parse(ports[other].sent.popleft()) == pkt
        ports["inside"].deliver(b"\x45junk")  # counted, dropped, the pump goes on
        ports["inside"].deliver(build(handshake(47001)[0][1]))
        async with asyncio.timeout(5):
            while not ports["outside"].sent:
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task  # returns: the TaskGroup was cancelled, the bus closed
