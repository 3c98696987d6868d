"""The MQTT transport: the only module that imports aiomqtt.

A Bus is an async context manager that keeps a connection to a broker, with
  - publish(topic, payload, retain=False) -> bool   QoS 1; False (counted) while
                                                   disconnected: nothing is queued
                                                   for later (the protocol resyncs)
  - subscribe(pattern)   more subscriptions (they also come back on reconnect)
  - events()    one async iterator of BusMessage(topic, payload) and, in the
                same order, Connected(session) / Disconnected(session, reason):
                reconnection is visible to the daemon, which re-announces itself
  - drain()     wait until everything published so far is acknowledged
  - status()    connected, session, counters, last error, link ("up" | "cut")
  - hold() / release()   a partition (fault injection): hold() drops the
                connection at once, without an MQTT DISCONNECT (the broker
                publishes the will, as when a link dies), and the loop does not
                reconnect until release(); meanwhile publish() drops as during
                any disconnection
Subscriptions and the will are configuration: they are (re)established on
every connection; the will payload is asked for per session (will(session)),
because a will must name the connection it belongs to.

MqttBus runs one explicit loop: connect (username/password, TLS), subscribe,
pump messages in and publishes out (a few writer tasks keep `max_inflight`
QoS 1 publishes in flight, in order), and on any MQTT error: Disconnected,
back off (doubling, with jitter, up to backoff_max), reconnect. All tasks are
children of TaskGroups owned by the context manager.

LocalBus / LocalBroker are the in-memory twin (topic wildcards, retained
messages, wills, forced disconnects) and pass the same contract tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple, Protocol
from urllib.parse import unquote, urlsplit

import aiomqtt

from syncbus.errors import BusError

log = logging.getLogger("syncbus.bus")

QOS = 1


class BusMessage(NamedTuple):
    topic: str
    payload: bytes


class Connected(NamedTuple):
    session: int  # 1, 2, ...: one per successful connection


class Disconnected(NamedTuple):
    session: int
    reason: str


BusEvent = BusMessage | Connected | Disconnected
Will = Callable[[int], tuple[str, bytes]]  # session -> (topic, payload); retained, QoS 1


class Bus(Protocol):
    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool: ...

    async def subscribe(self, pattern: str) -> None: ...

    def events(self) -> AsyncIterator[BusEvent]: ...

    async def drain(self, timeout: float = 10.0) -> None: ...

    def status(self) -> dict[str, Any]: ...

    def abort_connection(self) -> None: ...

    async def crash(self, timeout: float = 10.0) -> None: ...

    def hold(self) -> None: ...

    def release(self) -> None: ...


# ================================================================ configuration
@dataclass(frozen=True)
class Tls:
    ca_certs: str | None = None  # CA bundle to verify the broker (None: system CAs)
    certfile: str | None = None  # client certificate (mutual TLS)
    keyfile: str | None = None
    insecure: bool = False  # skip hostname verification (tests with self-signed certs)


@dataclass(frozen=True)
class BusConfig:
    url: str  # mqtt://[user[:password]@]host[:port]  or  mqtts://... (TLS)
    client_id: str
    subscriptions: tuple[str, ...] = ()
    username: str | None = None  # override the URL's
    password: str | None = None
    tls: Tls | None = None  # implied (system CAs) by mqtts://
    will: Will | None = None
    keepalive: int = 5  # seconds; the broker fires the will after 1.5x this of silence
    backoff_min: float = 0.05
    backoff_max: float = 2.0
    max_inflight: int = 32
    max_pending: int = 10000  # publishes waiting for a writer (then publish() waits)
    timeout: float = 10.0  # per MQTT operation
    extra: dict[str, Any] = field(default_factory=dict)  # passed to aiomqtt.Client

    def endpoint(self) -> tuple[str, int, str | None, str | None, bool]:
        """(host, port, username, password, tls) from the URL and overrides."""
        parts = urlsplit(self.url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise BusError(f"broker URL must be mqtt:// or mqtts://, not {self.url!r}")
        tls = parts.scheme in ("mqtts", "ssl") or self.tls is not None
        if not parts.hostname:
            raise BusError(f"broker URL without a host: {self.url!r}")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise BusError(f"bad port in broker URL {self.url!r}") from None
        user = self.username if self.username is not None else (
            unquote(parts.username) if parts.username else None)
        password = self.password if self.password is not None else (
            unquote(parts.password) if parts.password else None)
        return parts.hostname, port, user, password, tls


def _tls_context(tls: Tls | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=tls.ca_certs if tls else None)
    if tls is not None and tls.certfile:
        ctx.load_cert_chain(tls.certfile, tls.keyfile)
    if tls is not None and tls.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _payload(p: object) -> bytes:
    if isinstance(p, bytes):
        return p
    if isinstance(p, bytearray):
        return bytes(p)
    return b"" if p is None else str(p).encode()


# ================================================================ MQTT
class MqttBus:
    def __init__(self, cfg: BusConfig) -> None:
        self.cfg = cfg
        self.host, self.port, self._user, self._password, self._tls = cfg.endpoint()
        self.session = 0
        self.connected = False
        self.last_error = ""
        self._events: asyncio.Queue[BusEvent] = asyncio.Queue()
        self._outq: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue(cfg.max_pending)
        self._client: aiomqtt.Client | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._stopping = asyncio.Event()
        self._up = asyncio.Event()
        self._released = asyncio.Event()  # clear: held (a cut link), no reconnecting
        self._released.set()
        self.subscriptions: list[str] = list(cfg.subscriptions)
        self._races: SocketRaceFilter | None = None
        self.stats = {"connects": 0, "disconnects": 0, "published": 0, "received": 0,
                      "dropped_offline": 0, "dropped_on_disconnect": 0, "publish_errors": 0,
                      "holds": 0}

    async def __aenter__(self) -> MqttBus:
        self._races = SocketRaceFilter.install(asyncio.get_running_loop())
        self._stack = contextlib.AsyncExitStack()
        tg = await self._stack.enter_async_context(asyncio.TaskGroup())
        tg.create_task(self._run(), name=f"mqtt-{self.cfg.client_id}")
        return self

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._stopping.set()
        self._released.set()  # a held loop wakes up to stop
        assert self._stack is not None
        await self._stack.aclose()

    async def wait_connected(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            await self._up.wait()

    # ------------------------------------------------------------ the loop
    async def _run(self) -> None:
        backoff = self.cfg.backoff_min
        while not self._stopping.is_set():
            if not self._released.is_set():
                log.warning("mqtt %s: link held (cut): not reconnecting until released",
                            self.cfg.client_id)
                await self._released.wait()
                backoff = self.cfg.backoff_min
                continue
            self.session += 1
            session = self.session
            reason = "closed"
            try:
                await self._connection(session)
            except* aiomqtt.MqttError as eg:
                reason = "; ".join(str(e) for e in eg.exceptions)
            except* (OSError, ssl.SSLError) as eg:
                reason = "; ".join(str(e) for e in eg.exceptions)
            except* _Stop:
                pass
            # A lost session (its TaskGroup and aiomqtt) can leave a cancel request
            # counted on this task (Task.cancelling() stays 1) though nothing cancels
            # the bus. Python 3.11.2's asyncio.timeout() (Debian bookworm, the
            # container image) then turns the backoff below into a CancelledError and
            # the loop dies: no reconnection, ever. A real cancellation has already
            # propagated out of _connection() (or is still pending: uncancel() leaves
            # it), so the stale count goes.
            me = asyncio.current_task()
            while me is not None and me.cancelling():
                me.uncancel()
            was_up = self.connected
            self._down()
            if self._stopping.is_set():
                break
            if not self._released.is_set():
                reason = "link cut (held)"
            self.last_error = reason
            if was_up:
                backoff = self.cfg.backoff_min
                self._events.put_nowait(Disconnected(session, reason))
                log.warning("mqtt %s: session %d lost (%s); reconnecting", self.cfg.client_id,
                            session, reason)
            else:
                log.warning("mqtt %s: connect to %s:%d failed (%s); retry in %.2fs",
                            self.cfg.client_id, self.host, self.port, reason, backoff)
            if not self._released.is_set():
                continue  # held: wait for release() at the top, no backoff
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff * (0.5 + random.random())):
                    await self._stopping.wait()
            backoff = min(backoff * 2, self.cfg.backoff_max)

    async def _connection(self, session: int) -> None:
        cfg = self.cfg
        will = None
        if cfg.will is not None:
            topic, payload = cfg.will(session)
            will = aiomqtt.Will(topic, payload, qos=QOS, retain=True)
        client = aiomqtt.Client(
            self.host, self.port, identifier=cfg.client_id, username=self._user,
            password=self._password, will=will, clean_session=True, keepalive=cfg.keepalive,
            timeout=cfg.timeout, max_inflight_messages=cfg.max_inflight,
            tls_context=_tls_context(cfg.tls) if self._tls else None, **cfg.extra)
        client.pending_calls_threshold = cfg.max_inflight + 16  # we keep that many in flight
        async with client:
            _nodelay(client)
            self._client = client  # from here on hold() can abort it
            if not self._released.is_set():  # held while connecting: drop it now
                _shutdown(client)
                raise _Stop
            # A cancel swallowed here (see _cancel_if_swallowed) is harmless: only
            # __aexit__ cancels this task, after setting _stopping, which ends the
            # session.
            for sub in list(self.subscriptions):
                await client.subscribe(sub, qos=QOS)
            self.connected = True
            self._up.set()
            self.stats["connects"] += 1
            self._events.put_nowait(Connected(session))
            log.info("mqtt %s: session %d up (%s:%d)", cfg.client_id, session, self.host,
                     self.port)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._reader(client))
                tg.create_task(self._watch_stop())
                for _ in range(max(1, cfg.max_inflight)):
                    tg.create_task(self._writer(client))

    async def _watch_stop(self) -> None:
        await self._stopping.wait()
        raise _Stop

    async def _reader(self, client: aiomqtt.Client) -> None:
        """Hand what arrives to events(). aiomqtt's iterator costs a task and an
        asyncio.wait() per message, so a node whose loop is busy with its ports
        took at most about one message per loop turn: its inbound stream fell
        behind by up to seconds (a standby's acks reached a busy active 0.2-1.3 s
        late while its own frames left in milliseconds). The iterator only waits
        for the next message now (and ends on a disconnect); what is queued
        behind it is taken at once."""
        put = self._events.put_nowait
        stats = self.stats
        queued = client._queue  # aiomqtt's inbound queue (not public)
        async for m in client.messages:
            stats["received"] += 1
            put(BusMessage(str(m.topic), _payload(m.payload)))
            while not queued.empty():
                m = queued.get_nowait()
                stats["received"] += 1
                put(BusMessage(str(m.topic), _payload(m.payload)))

    async def _writer(self, client: aiomqtt.Client) -> None:
        q = self._outq
        while True:
            topic, payload, retain = await q.get()
            try:
                # the paho call runs before the first suspension: publishes leave in order
                await client.publish(topic, payload, qos=QOS, retain=retain)
                self.stats["published"] += 1
            except aiomqtt.MqttError:
                self.stats["publish_errors"] += 1
                raise
            finally:
                q.task_done()
            # Without this the writer waited on the queue for good, and so did the
            # session's TaskGroup and the bus's shutdown (seen twice in about 200
            # broker restarts under load: tests/syncbus/test_live.py).
            _cancel_if_swallowed()

    def _down(self) -> None:
        if self.connected:
            self.stats["disconnects"] += 1
        self.connected = False
        self._up.clear()
        self._client = None
        while not self._outq.empty():  # in-flight state is lost with the connection
            self._outq.get_nowait()
            self._outq.task_done()
            self.stats["dropped_on_disconnect"] += 1

    # ------------------------------------------------------------ the API
    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        if not self.connected:
            self.stats["dropped_offline"] += 1
            return False
        await self._outq.put((topic, payload, retain))
        return True

    async def subscribe(self, pattern: str) -> None:
        """Add a subscription now (if connected) and on every reconnect."""
        if pattern not in self.subscriptions:
            self.subscriptions.append(pattern)
            client = self._client
            if client is not None and self.connected:
                with contextlib.suppress(aiomqtt.MqttError):  # the reconnect will do it
                    await client.subscribe(pattern, qos=QOS)
                _cancel_if_swallowed()

    async def events(self) -> AsyncIterator[BusEvent]:
        while True:
            yield await self._events.get()

    async def drain(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            await self._outq.join()

    def status(self) -> dict[str, Any]:
        return {"connected": self.connected, "session": self.session,
                "broker": f"{self.host}:{self.port}", "last_error": self.last_error,
                "link": "up" if self._released.is_set() else "cut",
                "pending_in": self._events.qsize(), "pending_out": self._outq.qsize(),
                # this loop's (SocketRaceFilter is one per loop, a node has one bus)
                "socket_races": self._races.ignored if self._races is not None else 0,
                **self.stats}

    def abort_connection(self) -> None:
        """Drop the TCP connection without an MQTT DISCONNECT (the broker then
        publishes the will; the loop reconnects). For tests and fault injection."""
        client = self._client
        if client is not None:
            _shutdown(client)

    def hold(self) -> None:
        """Cut the link: drop the connection now (no DISCONNECT: the will fires)
        and do not reconnect until release()."""
        if self._released.is_set():
            self.stats["holds"] += 1
        self._released.clear()
        self.abort_connection()

    def release(self) -> None:
        """Heal the link: the loop reconnects at once."""
        self._released.set()

    @property
    def held(self) -> bool:
        return not self._released.is_set()

    async def crash(self, timeout: float = 10.0) -> None:
        """Die like kill -9: the connection drops without DISCONNECT (the broker
        publishes the will) and the bus stops without reconnecting."""
        self.abort_connection()
        async with asyncio.timeout(timeout):
            while self.connected:
                await asyncio.sleep(0.005)
        self._stopping.set()


class _Stop(Exception):
    """The bus is closing, or its link is held (internal)."""


class SocketRaceFilter:
    """The loop's exception handler, less one race of aiomqtt's: it registers
    paho's socket with the loop through call_soon_threadsafe(add_reader or
    add_writer, fd), and when a dropped link (a cut, a broker gone) makes paho
    close the socket first, the scheduled call meets a closed descriptor. The
    loop would log that as an unhandled error with a traceback; nothing is lost
    (the session is over, the bus reconnects), so it becomes one log line.
    Every other error goes to the handler that was there before."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous
        self.ignored = 0

    @classmethod
    def install(cls, loop: asyncio.AbstractEventLoop) -> SocketRaceFilter:
        """Once per loop (a second bus on the same loop finds it there)."""
        current = loop.get_exception_handler()
        if isinstance(current, cls):
            return current
        handler = cls(current)
        loop.set_exception_handler(handler)
        return handler

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        name = getattr(getattr(context.get("handle"), "_callback", None), "__name__", "")
        closed = (isinstance(exc, OSError) and exc.errno == errno.EBADF) or \
            (isinstance(exc, ValueError) and str(exc).startswith("Invalid file descriptor"))
        if closed and name in ("add_reader", "add_writer"):
            self.ignored += 1
            log.info("mqtt: the socket closed before its %s ran (a dropped link): ignored", name)
            return
        if self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)


def _cancel_if_swallowed() -> None:
    """Raise the cancellation an aiomqtt call just swallowed. aiomqtt waits for
    the broker's PUBACK or SUBACK with asyncio.wait_for(), which in Python 3.11
    returns the result when a cancellation meets a call that has just completed:
    the task is still cancelling(), but nothing raised (CPython gh-86296, fixed
    in 3.12 by gh-96764's rewrite of wait_for)."""
    me = asyncio.current_task()
    if me is not None and me.cancelling():
        raise asyncio.CancelledError


def _nodelay(client: aiomqtt.Client) -> None:
    """TCP_NODELAY on the broker connection. paho leaves Nagle on: a small
    publish then waits for the ACK of the one before it, which the broker may
    delay up to 40 ms (Linux's delayed ACK); a sync frame and its ack paid that
    twice (80 ms measured on loopback, against 1-2 ms without)."""
    setsockopt = getattr(client._client.socket(), "setsockopt", None)  # aiomqtt hides it
    if setsockopt is not None:
        with contextlib.suppress(OSError):
            setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _shutdown(client: aiomqtt.Client) -> None:
    """Shut paho's socket down: the connection dies without a DISCONNECT."""
    sock = client._client.socket()
    shutdown = getattr(sock, "shutdown", None)
    if shutdown is not None:
        with contextlib.suppress(OSError):
            shutdown(2)


# ================================================================ in memory
def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT topic filter matching (+ one level, # the rest)."""
    p, t = pattern.split("/"), topic.split("/")
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(p) == len(t)


class LocalBroker:
    """An in-memory broker: per-topic order, retained messages, wills."""

    def __init__(self) -> None:
        self._clients: dict[str, LocalBus] = {}
        self.retained: dict[str, bytes] = {}
        self.up = True

    def _attach(self, bus: LocalBus) -> None:
        old = self._clients.get(bus.cfg.client_id)
        if old is not None and old is not bus:
            old._lost("session taken over")
        self._clients[bus.cfg.client_id] = bus
        for topic, payload in list(self.retained.items()):
            if any(topic_matches(s, topic) for s in bus.subscriptions):
                bus._deliver(topic, payload)

    def _detach(self, bus: LocalBus, clean: bool) -> None:
        if self._clients.get(bus.cfg.client_id) is bus:
            del self._clients[bus.cfg.client_id]
            if not clean and bus.will_message is not None:
                self.route(*bus.will_message, retain=True)

    def route(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        if retain:
            if payload:
                self.retained[topic] = payload
            else:
                self.retained.pop(topic, None)
        for bus in list(self._clients.values()):
            if any(topic_matches(s, topic) for s in bus.subscriptions):
                bus._deliver(topic, payload)

    def drop(self, client_id: str) -> None:
        """Kill a client's connection (its will fires; it reconnects)."""
        bus = self._clients.get(client_id)
        if bus is not None:
            self._detach(bus, clean=False)
            bus._lost("connection dropped")

    def stop(self) -> None:
        """A broker outage: every client loses its connection (no wills: the
        broker is the one that died), retained messages survive (persistence)."""
        self.up = False
        for bus in list(self._clients.values()):
            del self._clients[bus.cfg.client_id]
            bus._lost("broker down")

    def start(self) -> None:
        self.up = True


class LocalBus:
    """The in-memory Bus: same contract as MqttBus, against a LocalBroker."""

    def __init__(self, broker: LocalBroker, cfg: BusConfig) -> None:
        self.broker = broker
        self.cfg = cfg
        self.session = 0
        self.connected = False
        self.last_error = ""
        self.will_message: tuple[str, bytes] | None = None
        self._events: asyncio.Queue[BusEvent] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stack: contextlib.AsyncExitStack | None = None
        self._up = asyncio.Event()
        self._released = asyncio.Event()  # clear: held (a cut link)
        self._released.set()
        self.subscriptions: list[str] = list(cfg.subscriptions)
        self.stats = {"connects": 0, "disconnects": 0, "published": 0, "received": 0,
                      "dropped_offline": 0, "holds": 0}

    async def __aenter__(self) -> LocalBus:
        self._stack = contextlib.AsyncExitStack()
        tg = await self._stack.enter_async_context(asyncio.TaskGroup())
        tg.create_task(self._run())
        return self

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._stopping.set()
        self._wake.set()
        self._released.set()
        if self.connected:
            self.broker._detach(self, clean=True)
            self.connected = False
        assert self._stack is not None
        await self._stack.aclose()

    async def wait_connected(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            await self._up.wait()

    async def _run(self) -> None:
        backoff = self.cfg.backoff_min
        while not self._stopping.is_set():
            if not self._released.is_set():
                await self._released.wait()
                backoff = self.cfg.backoff_min
                continue
            if self.broker.up:
                self.session += 1
                self.will_message = self.cfg.will(self.session) if self.cfg.will else None
                self.connected = True
                self._up.set()
                self.stats["connects"] += 1
                self._events.put_nowait(Connected(self.session))
                self.broker._attach(self)
                backoff = self.cfg.backoff_min
                await self._wake.wait()  # lost, or closing
                self._wake.clear()
                if self._stopping.is_set():
                    return
                self._events.put_nowait(Disconnected(self.session, self.last_error))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._stopping.wait()
            backoff = min(backoff * 2, self.cfg.backoff_max)

    def _lost(self, reason: str) -> None:
        self.connected = False
        self._up.clear()
        self.last_error = reason
        self.stats["disconnects"] += 1
        self._wake.set()

    def _deliver(self, topic: str, payload: bytes) -> None:
        self.stats["received"] += 1
        self._events.put_nowait(BusMessage(topic, payload))

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        if not self.connected:
            self.stats["dropped_offline"] += 1
            return False
        self.stats["published"] += 1
        self.broker.route(topic, bytes(payload), retain=retain)
        await asyncio.sleep(0)
        return True

    async def subscribe(self, pattern: str) -> None:
        if pattern not in self.subscriptions:
            self.subscriptions.append(pattern)
            if self.connected:
                for topic, payload in list(self.broker.retained.items()):
                    if topic_matches(pattern, topic):
                        self._deliver(topic, payload)

    async def events(self) -> AsyncIterator[BusEvent]:
        while True:
            yield await self._events.get()

    async def drain(self, timeout: float = 10.0) -> None:
        await asyncio.sleep(0)

    def status(self) -> dict[str, Any]:
        return {"connected": self.connected, "session": self.session, "broker": "local",
                "last_error": self.last_error,
                "link": "up" if self._released.is_set() else "cut",
                "pending_in": self._events.qsize(), "pending_out": 0, **self.stats}

    def abort_connection(self) -> None:
        self.broker.drop(self.cfg.client_id)

    def hold(self) -> None:
        if self._released.is_set():
            self.stats["holds"] += 1
        self._released.clear()
        self.broker.drop(self.cfg.client_id)
        self.last_error = "link cut (held)"

    def release(self) -> None:
        self._released.set()

    @property
    def held(self) -> bool:
        return not self._released.is_set()

    async def crash(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self.broker.drop(self.cfg.client_id)


__all__ = ["Bus", "BusConfig", "BusEvent", "BusMessage", "Connected", "Disconnected",
           "LocalBroker", "LocalBus", "MqttBus", "SocketRaceFilter", "Tls", "Will", "topic_matches"]
