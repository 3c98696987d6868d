"""The shipped Mosquitto configuration (compose/mosquitto/) against a real
Mosquitto: credentials are required, and a node publishes only under its own
name."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncbus.broker import Mosquitto
from syncbus.bus import BusConfig, Connected, MqttBus
from tests.syncbus.conftest import have_mosquitto, messages, next_event

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60),
              pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")]

COMPOSE = Path(__file__).resolve().parents[2] / "compose" / "mosquitto"
USERS = {"node-a": "pw-a", "node-b": "pw-b", "watcher": "pw-w"}


@pytest.fixture(scope="module")
def acl_broker() -> Iterator[Mosquitto]:
    with Mosquitto(users=USERS, acl=(COMPOSE / "acl").read_text()) as m:
        yield m


def bus(m: Mosquitto, user: str, subs: tuple[str, ...] = (), password: str | None = None,
        **kw: object) -> MqttBus:
    pw = USERS.get(user, "") if password is None else password
    return MqttBus(BusConfig(f"mqtt://{user}:{pw}@{m.host}:{m.port}", f"{user}-acl", subs,
                             backoff_max=0.2, **kw))  # type: ignore[arg-type]


async def test_a_node_publishes_under_its_own_name_only(acl_broker: Mosquitto) -> None:
    async with bus(acl_broker, "watcher", ("ctlab/#",)) as w, bus(acl_broker, "node-a") as a:
        await w.wait_connected()
        await a.wait_connected()
        denied = ["ctlab/c1/ct/node-b", "ctlab/c1/touch/node-b", "ctlab/c1/hb/node-b",
                  "ctlab/c1/resync/node-b/resp/node-a", "ctlab/c1/ct/node-a/extra",
                  "other/topic"]
        allowed = ["ctlab/c1/ct/node-a", "ctlab/c1/touch/node-a", "ctlab/c1/hb/node-a",
                   "ctlab/c1/resync/node-a/resp/node-b", "ctlab/c1/resync/node-b/req",
                   "ctlab/c2/ct/node-a"]
        for t in denied + allowed:
            assert await a.publish(t, t.encode())
        await a.drain()
        got = await messages(w, len(allowed))
        assert [m.topic for m in got] == allowed
        with pytest.raises(TimeoutError):
            await messages(w, 1, timeout=0.5)  # the denied ones never arrive


async def test_the_will_is_allowed_on_the_nodes_own_heartbeat(acl_broker: Mosquitto) -> None:
    async with bus(acl_broker, "watcher", ("ctlab/c1/hb/+",)) as w, \
            bus(acl_broker, "node-b", will=lambda s: ("ctlab/c1/hb/node-b", b"offline")) as b:
        await w.wait_connected()
        await b.wait_connected()
        b.abort_connection()
        (m,) = await messages(w, 1)
        assert (m.topic, m.payload) == ("ctlab/c1/hb/node-b", b"offline")


@pytest.mark.parametrize("user, password", [("node-a", "wrong"), ("nobody", "x")])
async def test_bad_credentials_and_anonymous_clients_are_refused(
        acl_broker: Mosquitto, user: str, password: str) -> None:
    async with bus(acl_broker, user, password=password) as b:
        await asyncio.sleep(0.6)
        st = b.status()
        assert not st["connected"] and st["connects"] == 0
        assert "authori" in st["last_error"].lower() or "password" in st["last_error"].lower()
    anon = MqttBus(BusConfig(f"mqtt://{acl_broker.host}:{acl_broker.port}", "anon",
                             backoff_max=0.2))
    async with anon:
        await asyncio.sleep(0.4)
        assert not anon.status()["connected"]


async def test_the_shipped_configuration_and_example_passwords_work() -> None:
    """compose/mosquitto/mosquitto.conf + passwd.example + acl, paths rewritten."""
    d = Path(tempfile.mkdtemp(prefix="ctlab-acl-"))
    try:
        shutil.copy(COMPOSE / "acl", d / "acl")
        shutil.copy(COMPOSE / "passwd.example", d / "passwd")
        d.chmod(0o755)  # readable by the mosquitto user when the tests run as root
        for f in d.iterdir():
            f.chmod(0o644)
        conf = (COMPOSE / "mosquitto.conf").read_text()
        conf = conf.replace("/mosquitto/config/", f"{d}/")
        conf = conf.replace("listener 1883", "listener {port} 127.0.0.1")
        with Mosquitto(config=conf) as m:
            url = f"mqtt://node-a:change-me-a@{m.host}:{m.port}"
            watch = MqttBus(BusConfig(f"mqtt://node-b:change-me-b@{m.host}:{m.port}", "b",
                                      ("ctlab/c1/ct/+",)))
            async with watch, MqttBus(BusConfig(url, "a")) as a:
                assert isinstance(await next_event(a, Connected), Connected)
                await watch.wait_connected()
                await a.publish("ctlab/c1/ct/node-c", b"no")
                await a.publish("ctlab/c1/ct/node-a", b"yes")
                (msg,) = await messages(watch, 1)
                assert msg.payload == b"yes"
    finally:
        shutil.rmtree(d, ignore_errors=True)
