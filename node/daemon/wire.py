"""Ports: where a node's packets come from and go to. One raw L3 packet (IPv4
or IPv6 header first, no Ethernet) per datagram or message.

  Port        the Protocol the packet pump uses
  UdpPort     a UDP socket: receives on `bind`, sends to `peer` (or, without a
              peer, back to whoever sent the last datagram). Loopback or a
              container network; no privileges.
  MemoryPort  in memory, for tests in one process: deliver() puts a packet on
              the wire towards the node, `sent` collects what the node sends.

A later AF_PACKET port (a real interface, raw frames minus the Ethernet
header) implements the same Protocol: recv/recv_nowait/send/close and stats.

Receiving never blocks the sender: each port holds at most `max_queue`
packets and drops (counting rx_dropped) beyond that; sending never waits
either (tx_dropped when there is nowhere to send).
"""

from __future__ import annotations

import asyncio
import collections
import socket
from typing import Protocol

from node.daemon.config import Addr

MAX_QUEUE = 65536


class Port(Protocol):
    name: str
    stats: dict[str, int]

    async def recv(self) -> bytes:
        """The next packet (waits for one)."""
        ...

    def recv_nowait(self) -> bytes | None:
        """The next packet if one is queued (to drain a burst), else None."""
        ...

    def send(self, data: bytes) -> bool:
        """Put one packet on the wire; False if it was dropped."""
        ...

    def close(self) -> None: ...


def _stats() -> dict[str, int]:
    return {"rx": 0, "rx_bytes": 0, "rx_dropped": 0, "tx": 0, "tx_bytes": 0, "tx_dropped": 0}


class _Inbox:
    """A bounded packet queue with a wake-up event (no task per packet)."""

    def __init__(self, stats: dict[str, int], max_queue: int) -> None:
        self.q: collections.deque[bytes] = collections.deque()
        self.ready = asyncio.Event()
        self.stats = stats
        self.max_queue = max_queue

    def put(self, data: bytes) -> None:
        if len(self.q) >= self.max_queue:
            self.stats["rx_dropped"] += 1
            return
        self.stats["rx"] += 1
        self.stats["rx_bytes"] += len(data)
        self.q.append(data)
        self.ready.set()

    async def get(self) -> bytes:
        while not self.q:
            self.ready.clear()
            await self.ready.wait()
        return self.q.popleft()

    def get_nowait(self) -> bytes | None:
        return self.q.popleft() if self.q else None


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, port: UdpPort) -> None:
        self.port = port

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.port.last_sender = (str(addr[0]), int(addr[1]))
        self.port.inbox.put(data)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable etc.
        self.port.stats["errors"] = self.port.stats.get("errors", 0) + 1


class UdpPort:
    def __init__(self, name: str, peer: Addr | None, max_queue: int = MAX_QUEUE) -> None:
        self.name = name
        self.peer = peer
        self.stats = _stats()
        self.inbox = _Inbox(self.stats, max_queue)
        self.last_sender: Addr | None = None
        self.local: Addr | None = None
        self._transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls, name: str, bind: Addr, peer: Addr | None = None,
                   max_queue: int = MAX_QUEUE) -> UdpPort:
        port = cls(name, peer, max_queue)
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in bind[0] else socket.AF_INET
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(port), local_addr=bind, family=family)
        port._transport = transport
        sock = transport.get_extra_info("sockname")
        port.local = (str(sock[0]), int(sock[1]))
        return port

    async def recv(self) -> bytes:
        return await self.inbox.get()

    def recv_nowait(self) -> bytes | None:
        return self.inbox.get_nowait()

    def send(self, data: bytes) -> bool:
        dest = self.peer or self.last_sender
        t = self._transport
        if dest is None or t is None or t.is_closing():
            self.stats["tx_dropped"] += 1
            return False
        t.sendto(data, dest)
        self.stats["tx"] += 1
        self.stats["tx_bytes"] += len(data)
        return True

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class MemoryPort:
    """An in-memory port: deliver() is the wire towards the node; what the node
    sends is appended to `sent` (and handed to `on_send` when set, e.g. another
    MemoryPort's deliver to join two nodes back to back)."""

    def __init__(self, name: str, max_queue: int = MAX_QUEUE) -> None:
        self.name = name
        self.stats = _stats()
        self.inbox = _Inbox(self.stats, max_queue)
        self.sent: collections.deque[bytes] = collections.deque(maxlen=max_queue)
        self.on_send: MemoryPort | None = None

    def deliver(self, data: bytes) -> None:
        self.inbox.put(bytes(data))

    async def recv(self) -> bytes:
        return await self.inbox.get()

    def recv_nowait(self) -> bytes | None:
        return self.inbox.get_nowait()

    def send(self, data: bytes) -> bool:
        self.stats["tx"] += 1
        self.stats["tx_bytes"] += len(data)
        self.sent.append(data)
        if self.on_send is not None:
            self.on_send.deliver(data)
        return True

    def close(self) -> None:
        pass


__all__ = ["MAX_QUEUE", "MemoryPort", "Port", "UdpPort"]
