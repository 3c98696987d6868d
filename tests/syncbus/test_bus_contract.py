"""The Bus contract, the same tests for LocalBus, MqttBus on the embedded amqtt
broker and MqttBus on a real Mosquitto (a unique topic tree per test)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from syncbus.bus import (
    BusConfig,
    Connected,
    Disconnected,
    MqttBus,
    SocketRaceFilter,
    topic_matches,
)
from syncbus.errors import BusError
from tests.syncbus.conftest import Brokered, messages, next_event

pytestmark = pytest.mark.timeout(60)


async def test_publish_subscribe_in_order_with_exact_bytes(brokered: Brokered) -> None:
    p = brokered.prefix
    async with brokered.bus("sub", (f"{p}/ct/+",)) as sub, brokered.bus("pub") as pub:
        await sub.wait_connected()
        await pub.wait_connected()
        payloads = [bytes([i % 256]) * (i + 1) + b"\x00\xff" for i in range(200)]
        payloads.append(bytes(range(256)) * 800)  # 200 kB
        for x in payloads:
            assert await pub.publish(f"{p}/ct/a", x)
        got = await messages(sub, len(payloads))
        assert [m.payload for m in got] == payloads
        assert {m.topic for m in got} == {f"{p}/ct/a"}
        await pub.drain()


async def test_wildcards_select_topics(brokered: Brokered) -> None:
    p = brokered.prefix
    async with brokered.bus("sub", (f"{p}/ct/+", f"{p}/resync/b/#")) as sub, \
            brokered.bus("pub") as pub:
        await sub.wait_connected()
        await pub.wait_connected()
        for t in ("ct/a", "hb/a", "ct/a/x", "resync/b/req", "resync/c/req", "ct/z"):
            await pub.publish(f"{p}/{t}", t.encode())
        got = await messages(sub, 3)
        assert [m.payload for m in got] == [b"ct/a", b"resync/b/req", b"ct/z"]


async def test_a_retained_message_reaches_a_late_subscriber(brokered: Brokered) -> None:
    p = brokered.prefix
    async with brokered.bus("pub") as pub:
        await pub.wait_connected()
        await pub.publish(f"{p}/hb/a", b"old", retain=True)
        await pub.publish(f"{p}/hb/a", b"new", retain=True)
        await pub.drain()
        async with brokered.bus("late", (f"{p}/hb/+",)) as late:
            (m,) = await messages(late, 1)
            assert m.payload == b"new"


async def test_the_will_fires_when_the_connection_dies_and_the_bus_reconnects(
        brokered: Brokered) -> None:
    p = brokered.prefix
    sessions: list[int] = []

    def will(session: int) -> tuple[str, bytes]:
        sessions.append(session)
        return f"{p}/hb/a", f"offline {session}".encode()
    async with brokered.bus("watch", (f"{p}/hb/+",)) as watch, \
            brokered.bus("a", will=will, keepalive=2) as a:
        await watch.wait_connected()
        assert isinstance(await next_event(a, Connected), Connected)
        await a.publish(f"{p}/hb/a", b"alive 1", retain=True)
        assert (await messages(watch, 1))[0].payload == b"alive 1"
        a.abort_connection()  # no DISCONNECT: the broker publishes the will
        assert (await messages(watch, 1))[0].payload == b"offline 1"
        ev = await next_event(a, Disconnected)
        assert isinstance(ev, Disconnected) and ev.session == 1
        ev = await next_event(a, Connected)
        assert isinstance(ev, Connected) and ev.session == 2 and sessions[:2] == [1, 2]
        await a.wait_connected()
        await a.publish(f"{p}/hb/a", b"alive 2", retain=True)
        assert (await messages(watch, 1))[0].payload == b"alive 2"
        assert a.status()["connects"] == 2


async def test_a_clean_close_does_not_fire_the_will(brokered: Brokered) -> None:
    p = brokered.prefix
    async with brokered.bus("watch", (f"{p}/hb/+",)) as watch:
        await watch.wait_connected()
        async with brokered.bus("a", will=lambda s: (f"{p}/hb/a", b"offline")) as a:
            await a.wait_connected()
            await a.publish(f"{p}/hb/a", b"bye")
            await a.drain()
        assert (await messages(watch, 1))[0].payload == b"bye"
        with pytest.raises(TimeoutError):
            await messages(watch, 1, timeout=0.5)


async def test_after_a_broker_restart_the_bus_reconnects_and_resubscribes(
        brokered: Brokered) -> None:
    p = brokered.prefix
    async with brokered.bus("sub", (f"{p}/ct/+",), backoff_max=0.2) as sub, \
            brokered.bus("pub", backoff_max=0.2) as pub:
        await sub.wait_connected()
        await pub.wait_connected()
        await brokered.restart()
        assert isinstance(await next_event(sub, Disconnected), Disconnected)
        ev = await next_event(sub, Connected)
        assert isinstance(ev, Connected) and ev.session >= 2
        await pub.wait_connected(15)
        await sub.wait_connected(15)
        for _ in range(50):  # until the new subscription is in place
            await pub.publish(f"{p}/ct/a", b"after")
            try:
                (m,) = await messages(sub, 1, timeout=0.2)
                break
            except TimeoutError:
                continue
        assert m.payload == b"after"


async def test_publishing_while_disconnected_is_refused_and_counted(brokered: Brokered) -> None:
    bus = brokered.bus("x")
    async with bus:
        await bus.wait_connected()
        await brokered.restart()
        refused = 0
        for _ in range(200):
            if not await bus.publish(f"{brokered.prefix}/ct/x", b"?"):
                refused += 1
                break
            await asyncio.sleep(0.005)
        assert refused and bus.status()["dropped_offline"] >= 1


def test_topic_matching() -> None:
    assert topic_matches("a/+/c", "a/b/c") and not topic_matches("a/+/c", "a/b/d")
    assert topic_matches("a/#", "a/b/c/d") and topic_matches("#", "x")
    assert not topic_matches("a/+", "a/b/c") and not topic_matches("a/b", "a")


def test_bad_urls_are_refused() -> None:
    for url in ("http://x", "mqtt://", "mqtt://h:99999"):
        with pytest.raises(BusError):
            BusConfig(url, "c").endpoint()
    host, port, user, pw, tls = BusConfig("mqtts://u:p%40ss@h", "c").endpoint()
    assert (host, port, user, pw, tls) == ("h", 8883, "u", "p@ss", True)
    assert BusConfig("mqtt://u:p@h:1", "c", username="v").endpoint()[2] == "v"


async def test_an_unreachable_broker_is_retried_visibly() -> None:
    from syncbus.broker import free_port
    bus = MqttBus(BusConfig(f"mqtt://127.0.0.1:{free_port()}", "lonely", backoff_max=0.1))
    async with bus:
        await asyncio.sleep(0.5)
        st = bus.status()
        assert not st["connected"] and st["session"] >= 3 and st["last_error"]
        # the loop's race filter, counted where /state and /metrics read the bus
        races = SocketRaceFilter.install(asyncio.get_running_loop())
        races.ignored += 2
        assert bus.status()["socket_races"] == races.ignored >= 2


async def test_the_embedded_broker_runs_in_process() -> None:
    from syncbus.broker import embedded_broker
    async with embedded_broker() as url, MqttBus(BusConfig(url, "e-sub", ("x/#",))) as sub, \
            MqttBus(BusConfig(url, "e-pub")) as pub:
        await sub.wait_connected()
        await pub.wait_connected()
        await pub.publish("x/1", b"hello")
        (m,) = await messages(sub, 1)
        assert m.payload == b"hello"


async def test_a_later_subscription_works_and_survives_a_reconnect(brokered: Brokered) -> None:
    p = brokered.prefix
    async with brokered.bus("sub", ()) as sub, brokered.bus("pub") as pub:
        await sub.wait_connected()
        await pub.wait_connected()
        await sub.subscribe(f"{p}/touch/+")
        await pub.publish(f"{p}/touch/a", b"1")
        assert (await messages(sub, 1))[0].payload == b"1"
        sub.abort_connection()
        ev = await next_event(sub, Connected)
        assert isinstance(ev, Connected) and ev.session == 2
        for _ in range(50):
            await pub.publish(f"{p}/touch/a", b"2")
            try:
                (m,) = await messages(sub, 1, timeout=0.2)
                break
            except TimeoutError:
                continue
        assert m.payload == b"2"


def test_a_socket_closed_before_its_writer_is_registered_is_one_log_line(
        caplog: pytest.LogCaptureFixture) -> None:
    """aiomqtt's race on a dropped link: add_writer(fd) scheduled, the socket
    closed before it runs. The filter turns it into an info line; any other
    error still reaches the loop's handler (here: a recorder set before)."""
    async def main() -> tuple[SocketRaceFilter, list[dict[str, object]]]:
        loop = asyncio.get_running_loop()
        seen: list[dict[str, object]] = []
        loop.set_exception_handler(lambda lp, ctx: seen.append(ctx))
        guard = SocketRaceFilter.install(loop)
        assert SocketRaceFilter.install(loop) is guard  # once per loop
        sock = socket.socket()
        fd = sock.fileno()
        loop.call_soon(loop.add_writer, fd, lambda: None)
        sock.close()  # before the scheduled registration runs
        loop.call_soon(loop.add_reader, -1, lambda: None)  # paho's fileno() after close
        loop.call_soon(int, "not a number")  # a real bug: not ours to hide
        await asyncio.sleep(0.01)
        return guard, seen

    with caplog.at_level("INFO", logger="syncbus.bus"):
        guard, seen = asyncio.run(main())
    assert guard.ignored == 2
    assert [type(ctx["exception"]) for ctx in seen] == [ValueError]
    assert "invalid literal" in str(seen[0]["exception"])
    assert sum("the socket closed before its add_writer ran" in r.getMessage()
               for r in caplog.records) == 1


async def _acked_as_cancelled(task: asyncio.Task[None] | None) -> None:
    """The broker's ack completes the call in the same loop turn as `task` is
    cancelled, waited for as aiomqtt's Client._wait_for does."""
    loop = asyncio.get_running_loop()
    ack = loop.create_future()

    def race() -> None:
        ack.set_result(None)
        assert task is not None
        task.cancel()
    loop.call_soon(race)
    await asyncio.wait_for(ack, 10)


class _PubackAtTheCancel:
    """Stands in for aiomqtt.Client.publish only, to make one race exact: the
    PUBACK completes the publish in the same loop turn as the session's
    TaskGroup cancels the writer. aiomqtt waits with asyncio.wait_for(), which
    in Python 3.11 then returns the result and drops the cancellation."""

    def __init__(self) -> None:
        self.writer: asyncio.Task[None] | None = None
        self.published = 0

    async def publish(self, topic: str, payload: bytes, **kw: object) -> None:
        await _acked_as_cancelled(self.writer)
        self.published += 1


async def test_a_writer_cancelled_as_its_puback_arrives_still_stops() -> None:
    """The bus's writers stop when their session ends even if the cancel meets a
    completed publish (a bus that stops, or a broker restart under load, hung
    for good before: the writer went back to waiting on its queue)."""
    bus = MqttBus(BusConfig("mqtt://127.0.0.1:1", "w"))
    client = _PubackAtTheCancel()
    client.writer = asyncio.create_task(bus._writer(client))  # type: ignore[arg-type]
    await bus._outq.put(("t/x", b"1", False))
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(2):
            await client.writer
    assert client.published == 1 and bus._outq.empty()


class _SubackAtTheCancel:
    """The same race for a subscription made from outside the bus: the SUBACK
    and the caller's cancel arrive in the same loop turn."""

    def __init__(self) -> None:
        self.caller: asyncio.Task[None] | None = None
        self.subscribed: list[str] = []

    async def subscribe(self, pattern: str, **kw: object) -> None:
        await _acked_as_cancelled(self.caller)
        self.subscribed.append(pattern)


async def test_a_subscribe_cancelled_as_its_suback_arrives_is_cancelled() -> None:
    """Its caller sees the cancellation (in 3.11 wait_for() would have dropped
    it, and the caller would have gone on as if nobody had cancelled it)."""
    bus = MqttBus(BusConfig("mqtt://127.0.0.1:1", "s"))
    client = _SubackAtTheCancel()
    bus._client, bus.connected = client, True  # type: ignore[assignment]
    went_on = False

    async def caller() -> None:
        nonlocal went_on
        await bus.subscribe("ctlab/c/hb/+")
        went_on = True
    client.caller = asyncio.create_task(caller())
    with pytest.raises(asyncio.CancelledError):
        await client.caller
    assert client.subscribed == ["ctlab/c/hb/+"] and not went_on
    assert bus.subscriptions[-1] == "ctlab/c/hb/+"  # the reconnect keeps it
