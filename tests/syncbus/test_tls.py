"""MQTT over TLS with username/password, against a real Mosquitto (a throwaway
CA and server certificate made with the openssl command)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncbus.broker import Mosquitto
from syncbus.bus import BusConfig, MqttBus, Tls
from tests.syncbus.conftest import have_mosquitto, messages

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60),
              pytest.mark.skipif(not have_mosquitto() or not shutil.which("openssl"),
                                 reason="needs mosquitto and openssl")]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="ctlab-tls-"))
    try:
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                 "/CN=ctlab test CA", "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
                 "-keyout", "server.key", "-out", "server.csr", cwd=d)
        (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt",
                 cwd=d)
        d.chmod(0o755)  # mosquitto reads them after dropping to its own user
        for f in d.iterdir():
            f.chmod(0o644)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_broker(certs: Path) -> Iterator[Mosquitto]:
    extra = (f"cafile {certs / 'ca.crt'}\ncertfile {certs / 'server.crt'}\n"
             f"keyfile {certs / 'server.key'}\ntls_version tlsv1.2")
    with Mosquitto(users={"node-a": "pw-a"}, extra=extra) as m:
        yield m


async def test_a_bus_connects_with_tls_and_credentials(tls_broker: Mosquitto,
                                                       certs: Path) -> None:
    url = f"mqtts://node-a:pw-a@127.0.0.1:{tls_broker.port}"
    tls = Tls(ca_certs=str(certs / "ca.crt"))
    async with MqttBus(BusConfig(url, "tls-sub", ("ctlab/#",), tls=tls)) as sub, \
            MqttBus(BusConfig(url, "tls-pub", tls=tls)) as pub:
        await sub.wait_connected()
        await pub.wait_connected()
        await pub.publish("ctlab/c1/ct/node-a", b"secret")
        (m,) = await messages(sub, 1)
        assert m.payload == b"secret"


async def test_an_unknown_ca_is_refused(tls_broker: Mosquitto) -> None:
    url = f"mqtts://node-a:pw-a@127.0.0.1:{tls_broker.port}"
    async with MqttBus(BusConfig(url, "tls-bad", backoff_max=0.2)) as bus:  # system CAs only
        await _wait_for_error(bus)
        assert not bus.status()["connected"]
        assert "certificate" in bus.status()["last_error"].lower()


async def test_plain_mqtt_to_a_tls_listener_does_not_connect(tls_broker: Mosquitto) -> None:
    url = f"mqtt://node-a:pw-a@127.0.0.1:{tls_broker.port}"
    async with MqttBus(BusConfig(url, "tls-plain", backoff_max=0.2, timeout=2)) as bus:
        await _wait_for_error(bus)
        assert not bus.status()["connected"]


async def _wait_for_error(bus: MqttBus) -> None:
    import asyncio
    async with asyncio.timeout(20):
        while not bus.status()["last_error"]:
            await asyncio.sleep(0.05)
