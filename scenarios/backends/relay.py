"""A TCP relay that can be cut: the local backend's link between the two
brokers of a bridged pair (loopback has no link to take down, and the bridge
is Mosquitto's own connection, which no node's nemesis hook reaches).

Relay(target) listens on a loopback port of its own and pipes every
connection to `target`. cut() closes every piped connection at once (both
ends: the bridge sees its remote go away, as on a failed link) and refuses
new ones (accepted and closed at once, so that Mosquitto's reconnects fail
fast) until restore(). Runs in the caller's event loop."""

from __future__ import annotations

import asyncio
import contextlib

from syncbus.broker import free_port

CHUNK = 1 << 16


class Relay:
    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.target = target
        self.host = host
        self.port = 0
        self.cut_off = False
        self.stats = {"connections": 0, "refused": 0, "cuts": 0, "bytes": 0}
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        """Listen; returns the port."""
        self.port = free_port(self.host)
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        return self.port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            self.stats["refused"] += 1
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self.stats["refused"] += 1
            writer.close()
            return
        self.stats["connections"] += 1
        self._writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(CHUNK):
                dst.write(data)
                self.stats["bytes"] += len(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:  # one side ended: end the other (a half-open bridge is no bridge)
            self._writers.discard(dst)
            dst.close()

    def cut(self) -> None:
        """Close every piped connection, and refuse new ones until restore()."""
        self.cut_off = True
        self.stats["cuts"] += 1
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    def restore(self) -> None:
        self.cut_off = False

    async def close(self) -> None:
        self.cut()
        for task in list(self._pipes):
            task.cancel()
        if self._pipes:
            await asyncio.gather(*self._pipes, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
            self._server = None


__all__ = ["Relay"]
