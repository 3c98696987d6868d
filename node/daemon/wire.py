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

Two knobs for test harnesses, on every port:
  annotate  (config `annotate: true`) every datagram the node sends is
            prefixed with the path the packet took through the node, an 8-byte
            header (encode_annotation / decode_annotated):
                b"CTLA"  1 byte version (1)  1 byte path code  2 bytes zero
            path codes: ANNOTATION_PATHS[code], 0 "hw", 1 "sw-fastpath", 2 "sw"
            (node.datapath's Outcome.path). Received datagrams never carry it.
  cut       (the control API's nemesis "data": "cut") the wire is down: every
            packet received or sent is dropped and counted in "nemesis_drops".
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from typing import Protocol

from node.daemon.config import Addr

MAX_QUEUE = 65536
SOCKET_BUFFER = 4 << 20  # bytes of socket buffer asked for each way


def grow_buffers(sock: socket.socket, size: int = SOCKET_BUFFER) -> None:
    """Let bursts queue in the kernel instead of being dropped there (UDP
    RcvbufErrors): the *FORCE options pass net.core.rmem_max/wmem_max when we
    may (root), else the plain ones (capped at those sysctls)."""
    for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF),
                         (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, size)

# ================================================================ annotation
ANNOTATION_MAGIC = b"CTLA"
ANNOTATION_VERSION = 1
ANNOTATION_LEN = 8
# code -> path (node.datapath.PATHS values); the wire format: append only
ANNOTATION_PATHS: tuple[str, ...] = ("hw", "sw-fastpath", "sw")
_CODES = {path: code for code, path in enumerate(ANNOTATION_PATHS)}
_HEADERS = {path: ANNOTATION_MAGIC + bytes((ANNOTATION_VERSION, code, 0, 0))
            for path, code in _CODES.items()}


def encode_annotation(path: str) -> bytes:
    """The 8-byte header for a packet that took `path` ("hw", "sw-fastpath" or
    "sw"): b"CTLA", version 1, the path's code, two zero bytes. ValueError for
    another path."""
    try:
        return _HEADERS[path]
    except KeyError:
        raise ValueError(f"no annotation for path {path!r} (one of "
                         f"{', '.join(ANNOTATION_PATHS)})") from None


def decode_annotated(datagram: bytes) -> tuple[str | None, bytes]:
    """(path, packet) of a datagram an annotating port sent; (None, datagram)
    when it has no header (a raw L3 packet never starts with b"CTLA": 0x43 is
    IPv4 with a 12-byte header, which does not exist). ValueError for a header
    of another version, an unknown path code or a truncated header."""
    if not datagram.startswith(ANNOTATION_MAGIC):
        return None, datagram
    if len(datagram) < ANNOTATION_LEN:
        raise ValueError(f"truncated annotation header ({len(datagram)} bytes)")
    version, code = datagram[4], datagram[5]
    if version != ANNOTATION_VERSION:
        raise ValueError(f"annotation version {version} (this reader knows "
                         f"{ANNOTATION_VERSION})")
    if code >= len(ANNOTATION_PATHS):
        raise ValueError(f"unknown annotation path code {code}")
    return ANNOTATION_PATHS[code], bytes(datagram[ANNOTATION_LEN:])


# ================================================================ ports


class Port(Protocol):
    name: str
    stats: dict[str, int]
    annotate: bool  # prefix what is sent with its path (encode_annotation)
    cut: bool  # the wire is down: drop everything both ways (nemesis_drops)

    async def recv(self) -> bytes:
        """The next packet (waits for one)."""
        ...

    def recv_nowait(self) -> bytes | None:
        """The next packet if one is queued (to drain a burst), else None."""
        ...

    def send(self, data: bytes, path: str | None = None) -> bool:
        """Put one packet on the wire (the path it took through the node, for
        an annotating port); False if it was dropped."""
        ...

    def close(self) -> None: ...


def _stats() -> dict[str, int]:
    return {"rx": 0, "rx_bytes": 0, "rx_dropped": 0, "tx": 0, "tx_bytes": 0, "tx_dropped": 0,
            "nemesis_drops": 0}


def _outgoing(port: UdpPort | MemoryPort, data: bytes, path: str | None) -> bytes | None:
    """What goes on the wire for `data`, or None when the wire is cut."""
    if port.cut:
        port.stats["nemesis_drops"] += 1
        return None
    if port.annotate:
        if path is None:
            raise ValueError(f"port {port.name}: annotate needs the packet's path")
        return encode_annotation(path) + data
    return data


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
        port = self.port
        if port.cut:
            port.stats["nemesis_drops"] += 1
            return
        port.last_sender = (str(addr[0]), int(addr[1]))
        port.inbox.put(data)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable etc.
        self.port.stats["errors"] = self.port.stats.get("errors", 0) + 1


class UdpPort:
    def __init__(self, name: str, peer: Addr | None, max_queue: int = MAX_QUEUE, *,
                 annotate: bool = False) -> None:
        self.name = name
        self.peer = peer
        self.annotate = annotate
        self.cut = False
        self.stats = _stats()
        self.inbox = _Inbox(self.stats, max_queue)
        self.last_sender: Addr | None = None
        self.local: Addr | None = None
        self._transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls, name: str, bind: Addr, peer: Addr | None = None,
                   max_queue: int = MAX_QUEUE, *, annotate: bool = False) -> UdpPort:
        port = cls(name, peer, max_queue, annotate=annotate)
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in bind[0] else socket.AF_INET
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(port), local_addr=bind, family=family)
        port._transport = transport
        raw = transport.get_extra_info("socket")
        if raw is not None:
            grow_buffers(raw)
        sock = transport.get_extra_info("sockname")
        port.local = (str(sock[0]), int(sock[1]))
        return port

    async def recv(self) -> bytes:
        return await self.inbox.get()

    def recv_nowait(self) -> bytes | None:
        return self.inbox.get_nowait()

    def send(self, data: bytes, path: str | None = None) -> bool:
        wire = _outgoing(self, data, path)
        if wire is None:
            return False
        dest = self.peer or self.last_sender
        t = self._transport
        if dest is None or t is None or t.is_closing():
            self.stats["tx_dropped"] += 1
            return False
        t.sendto(wire, dest)
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

    def __init__(self, name: str, max_queue: int = MAX_QUEUE, *, annotate: bool = False) -> None:
        self.name = name
        self.annotate = annotate
        self.cut = False
        self.stats = _stats()
        self.inbox = _Inbox(self.stats, max_queue)
        self.sent: collections.deque[bytes] = collections.deque(maxlen=max_queue)
        self.on_send: MemoryPort | None = None

    def deliver(self, data: bytes) -> None:
        if self.cut:
            self.stats["nemesis_drops"] += 1
            return
        self.inbox.put(bytes(data))

    async def recv(self) -> bytes:
        return await self.inbox.get()

    def recv_nowait(self) -> bytes | None:
        return self.inbox.get_nowait()

    def send(self, data: bytes, path: str | None = None) -> bool:
        wire = _outgoing(self, data, path)
        if wire is None:
            return False
        self.stats["tx"] += 1
        self.stats["tx_bytes"] += len(wire)
        self.sent.append(wire)
        if self.on_send is not None:
            self.on_send.deliver(wire)
        return True

    def close(self) -> None:
        pass


__all__ = ["ANNOTATION_LEN", "ANNOTATION_MAGIC", "ANNOTATION_PATHS", "ANNOTATION_VERSION",
           "MAX_QUEUE", "MemoryPort", "Port", "UdpPort", "decode_annotated",
           "encode_annotation"]
