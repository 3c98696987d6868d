"""The node process: the only asyncio in `node`. Thin wiring around Node (the
engines) and syncbus.service.Member (replication):

    async with AsyncExitStack:          embedded broker (no URL), ports, the bus
      async with TaskGroup:
        member.run()                    bus in, core timers, frames out (from the
                                        first connection on)
        pump(port) per port             parse -> datapath -> egress ports; events
                                        out after each burst
        deferred()                      with defer: held packets out when a peer
                                        acknowledged their change (or time is up)
        timers()                        at the datapath's next deadline: conntrack
                                        expiry, card commands, and every
                                        poll_interval the card's bulk poll -> aging
                                        touches published
        roles()                         role/gate/peer events -> log
        control.serve()                 the HTTP control API
        _until(stop)                    SIGTERM/SIGINT: cancel the group
      member.goodbye()                  an offline heartbeat, then the bus closes

Time: one monotonic clock (plus the configured offset, for skew tests) is
passed into every core call. The offset can be changed at run time (the
control API's nemesis hooks, nemesis.py), as can the sync impairment, the
broker link and the data ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

from node.daemon.config import NodeConfig, PortConfig
from node.daemon.errors import ConfigError
from node.daemon.link import LinkWatch, TrackedPort, tracked_address
from node.daemon.node import Node, Received
from node.daemon.views import OffloadCount, TableCount
from node.daemon.wire import MemoryPort, Port, UdpPort
from syncbus.bus import BusConfig, MqttBus, Tls
from syncbus.election import RoleChanged
from syncbus.messages import ROLE_ACTIVE
from syncbus.service import Member

log = logging.getLogger("node.daemon")

BURST = 64  # packets handled before the events are handed to replication
MAX_SLEEP = 0.25  # timers re-check at least this often (replica inserts do not wake them)


class Clock:
    """time.monotonic() + offset (a node whose clock is skewed, for tests)."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.monotonic() + self.offset


class _Stop(Exception):
    """A shutdown was asked for (internal): cancels the task group."""


async def _sleep_until(clock: Callable[[], float], deadline: float,
                       wake: asyncio.Event) -> None:
    delay = min(MAX_SLEEP, deadline - clock())
    if delay > 0:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await wake.wait()
    else:
        await asyncio.sleep(0)  # due already: still let the other tasks run
    wake.clear()


class Daemon:
    """The running node: what the tasks and the control API share."""

    def __init__(self, node: Node, member: Member, bus: MqttBus, ports: Mapping[str, Port],
                 clock: Clock) -> None:
        self.node = node
        self.member = member
        self.bus = bus
        self.ports = dict(ports)
        self.clock = clock
        self.wake = asyncio.Event()  # new work for the card or an earlier expiry
        self._counts: asyncio.Queue[OffloadCount] = asyncio.Queue()
        self.table_count = TableCount(node, self._counts.put_nowait)  # /state "offload"
        self.events = asyncio.Condition()
        node.installs.on_queued = self.wake.set
        member.on_event = self._on_event
        self.released = asyncio.Event()  # defer: an ack came, or packets were held
        member.on_release = self.released.set
        # defer: this burst's packets to hold, with their flow and whether they
        # changed it (else they only wait behind its held packets)
        self._held: list[tuple[int | None, list[tuple[str, bytes, str]], bool]] = []
        self._burst_flows: set[int | None] = set()
        self.control_url = ""

    def _on_event(self, ev: object) -> None:
        """A role event, the moment the core emits it: a promotion records what
        the card holds right then (for the pre-installed ratio)."""
        if isinstance(ev, RoleChanged) and ev.new == ROLE_ACTIVE:
            node = self.node
            record = {"term": ev.term, "at": round(self.clock() - node.started, 3),
                      "reason": ev.reason, "table": len(node.ct)}
            self._counts.put_nowait(OffloadCount(node, record))  # eligible: counts()
            node.promotions.append(record)

    # ------------------------------------------------------------ packets
    def _handle(self, port: str, data: bytes) -> Received:
        node, core = self.node, self.member.core
        d = core.deferrals
        defers = d is not None and core.defers()
        mark = node.change_mark() if defers else None
        got = node.receive(port, data, self.clock())
        if got.sends:
            if defers and node.change_mark() != mark:  # after its frame is acknowledged
                self._held.append((got.flow, got.sends, True))
                self._burst_flows.add(got.flow)
            elif d is not None and (got.flow in self._burst_flows or d.holds(got.flow)):
                self._held.append((got.flow, got.sends, False))  # behind its flow's
            else:
                self._transmit(got.sends)
        return got

    def _transmit(self, sends: list[tuple[str, bytes, str]]) -> None:
        for out_port, raw, path in sends:
            p = self.ports.get(out_port)
            if p is not None:
                p.send(raw, path)

    async def flush(self) -> None:
        """Hand the engine's events to replication (and to /events readers);
        with defer, this burst's held packets wait for the frame carrying them."""
        events = self.node.take_ct_events()
        held, self._held = self._held, []
        self._burst_flows.clear()
        if events:
            try:
                await self.member.local_events(events, urgent=bool(held))
            except Exception:  # a record the core cannot take must not stop the node
                self.node.internal_errors["publish"] += 1
                log.exception("%s: publishing %d events failed", self.node.cfg.node,
                              len(events))
            async with self.events:
                self.events.notify_all()
        elif held:  # an expectation changed without an event: still a frame to wait for
            await self.member.local_events((), urgent=True)
        if held:
            core, now = self.member.core, self.clock()
            d = core.deferrals
            assert d is not None
            for flow, sends, changed in held:
                for send in sends:
                    self._transmit(core.hold(flow, send, now) if changed
                                   else d.hold_behind(flow, send, now))
            self.released.set()  # the release task sees the new deadline
        self.wake.set()  # offers may have queued hardware inserts

    async def deferred(self) -> None:
        """Defer: send held packets once a peer acknowledged their frame, or at
        the defer timeout (pfsync's INS_ACK or PFSYNC_DEFER_TIMEOUT)."""
        d = self.member.core.deferrals
        if d is None:
            return
        while True:
            deadline = d.next_deadline()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if deadline is None
                                           else max(0.0, deadline - self.clock())):
                    await self.released.wait()
            self.released.clear()
            self._transmit(d.release(self.clock()))

    async def inject(self, port: str, data: bytes) -> Received:
        """A packet from the control API, as if it arrived on `port`."""
        got = self._handle(port, data)
        await self.flush()
        return got

    async def pump(self, port: Port) -> None:
        while True:
            self._handle(port.name, await port.recv())
            for _ in range(BURST - 1):
                data = port.recv_nowait()
                if data is None:
                    break
                self._handle(port.name, data)
            await self.flush()

    # ------------------------------------------------------------ timers
    async def timers(self) -> None:
        node, card = self.node, self.node.card
        while True:
            await _sleep_until(self.clock, node.next_deadline(), self.wake)
            now = self.clock()
            if node.next_deadline() > now:
                continue
            t0 = time.perf_counter()
            tick = node.poll(now)
            res = tick.card
            if res is not None and res.gc:
                card.counters.last_poll_s = time.perf_counter() - t0
                node.poll_seconds.observe(card.counters.last_poll_s)
                await self.member.touches()  # once per poll cycle
            if tick.expired or (res is not None and (res.teardowns or res.gc)):
                await self.flush()

    async def counts(self) -> None:
        """Counts of eligible entries (a promotion's, /state's on a big table),
        a step per loop turn."""
        while True:
            count = await self._counts.get()
            while not count.step():
                await asyncio.sleep(0)

    async def links(self, watch: LinkWatch, interval: float) -> None:
        """Every heartbeat interval: a data link gone down puts this node in
        FAULT (it gives the active role up at once); every one up again ends it."""
        last: str | None = None
        while True:
            why = watch.check()
            if why != last:
                log.warning("%s: data path %s", self.node.cfg.node,
                            f"down ({why}): FAULT" if why else "up again")
                await self.member.set_fault(why)
                last = why
            await asyncio.sleep(interval)

    async def roles(self) -> None:
        q = self.member.role_events
        while True:
            ev = await q.get()
            text = repr(ev)  # a NamedTuple's: its type's name, then its fields
            self.node.role_log.append((self.clock(), text))
            log.info("%s: %s", self.node.cfg.node, text)

    def port_stats(self) -> dict[str, dict[str, int]]:
        return {name: dict(p.stats) for name, p in self.ports.items()}


# ================================================================ run
async def open_port(pc: PortConfig) -> Port:
    if pc.type == "memory":
        return MemoryPort(pc.name, annotate=pc.annotate)
    assert pc.bind is not None
    try:
        return await UdpPort.open(pc.name, pc.bind, pc.peer, annotate=pc.annotate)
    except OSError as exc:
        raise ConfigError(f"ports.{pc.name}.bind: cannot bind {pc.bind[0]}:{pc.bind[1]}: "
                          f"{exc.strerror or exc}") from None


async def _broker_url(cfg: NodeConfig, stack: contextlib.AsyncExitStack) -> str:
    """The configured URL, or an embedded amqtt broker (or the one already
    listening where the embedded broker would: a second node on the host)."""
    if cfg.broker.url is not None:
        return cfg.broker.url
    from syncbus.broker import embedded_broker

    host, port = cfg.broker.embedded
    if port:
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(0.5):
                _, w = await asyncio.open_connection(host, port)
            w.close()
            log.info("a broker already listens on %s:%d: using it", host, port)
            return f"mqtt://{host}:{port}"
    return await stack.enter_async_context(embedded_broker(host, port))


def bus_config(cfg: NodeConfig, url: str, node: Node, clock: Callable[[], float]) -> BusConfig:
    b = cfg.broker
    tls = None if b.tls is None else Tls(b.tls.ca_certs, b.tls.certfile, b.tls.keyfile,
                                         b.tls.insecure)
    core = node.core

    def will(session: int) -> tuple[str, bytes]:
        w = core.will(session, clock())
        return w.topic, w.payload

    return BusConfig(url, f"ctlab-{cfg.cluster}-{cfg.node}", tuple(core.subscriptions()),
                     username=b.username, password=b.password, tls=tls, will=will,
                     keepalive=b.keepalive, backoff_max=1.0)


async def run(cfg: NodeConfig, *, ready: asyncio.Event | None = None,
              stop: asyncio.Event | None = None, ports: Mapping[str, Port] | None = None,
              on_ready: Callable[[dict[str, Any]], None] | None = None,
              epoch: int | None = None) -> None:
    """Run a node until `stop` is set (or the task is cancelled). ConfigError
    for a configuration that cannot start (tc script, a port that does not bind)."""
    from node.daemon import control

    clock = Clock(cfg.clock_offset)
    node = Node(cfg, clock(), epoch if epoch is not None else time.time_ns() // 1000)
    stop = stop if stop is not None else asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        node.gc.install()
        stack.callback(node.gc.uninstall)
        opened: dict[str, Port] = dict(ports or {})
        for pc in cfg.ports:
            if pc.name in opened:
                opened[pc.name].annotate = pc.annotate  # the config says what the wire carries
            else:
                opened[pc.name] = await open_port(pc)
                stack.callback(opened[pc.name].close)
        url = await _broker_url(cfg, stack)
        bus = MqttBus(bus_config(cfg, url, node, clock))
        await stack.enter_async_context(bus)
        member = Member(node.core, bus, clock)
        daemon = Daemon(node, member, bus, opened, clock)
        listening = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_replicate(member, bus), name="member")
                for p in opened.values():
                    tg.create_task(daemon.pump(p), name=f"pump-{p.name}")
                tg.create_task(daemon.timers(), name="timers")
                tg.create_task(daemon.deferred(), name="deferred")
                tg.create_task(daemon.roles(), name="roles")
                if cfg.role.track_data:
                    tg.create_task(daemon.links(_link_watch(cfg, opened), cfg.role.hb_interval),
                                   name="links")
                tg.create_task(daemon.counts(), name="counts")
                tg.create_task(control.serve(daemon, cfg.control, listening), name="control")
                await listening.wait()
                info = {"node": cfg.node, "cluster": cfg.cluster, "control": daemon.control_url,
                        "broker": url, "epoch": node.epoch,
                        "ports": {n: list(getattr(p, "local", None) or ())
                                  for n, p in opened.items()}}
                if on_ready is not None:
                    on_ready(info)
                if ready is not None:
                    ready.set()
                await stop.wait()
                raise _Stop
        except* _Stop:
            pass
        await member.goodbye()


def _link_watch(cfg: NodeConfig, ports: Mapping[str, Port]) -> LinkWatch:
    """The data ports' links: each port's wire, and the interface holding the
    address a UDP port is bound to (none for loopback or a wildcard)."""
    def wire_cut(port: Port) -> Callable[[], bool]:
        return lambda: port.cut
    return LinkWatch(TrackedPort(pc.name, tracked_address(pc.bind[0]) if pc.bind else None,
                                 wire_cut(ports[pc.name])) for pc in cfg.ports)


async def _replicate(member: Member, bus: MqttBus) -> None:
    """The Member, from the first connection on: nothing ticks the election
    before the bus can deliver the peers' retained heartbeats (so the readiness
    gate's discovery window cannot pass unheard)."""
    while True:
        with contextlib.suppress(TimeoutError):
            await bus.wait_connected(5.0)
            break
    await member.run()


def install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


__all__ = ["Clock", "Daemon", "bus_config", "install_signals", "open_port", "run"]
