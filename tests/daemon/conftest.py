"""Real node processes and real brokers for the daemon tests.

Every process a test starts (brokers, nodes) is a child started here and
stopped by its PID in a fixture teardown (SIGTERM, then SIGKILL), also when
the test fails. Every wait is bounded. Loopback only; ports are picked free
at runtime; each test has its own cluster name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from node.packet import Packet, TcpOptions, build, tcp, udp
from syncbus.broker import (
    MOSQUITTO,
    BrokerProcess,
    Mosquitto,
    free_port,
    free_udp_port,
    stop_process,
)

REPO = Path(__file__).resolve().parents[2]
FIREWALL_TC = (REPO / "node" / "daemon" / "examples" / "firewall.tc").read_text()
KEY = "daemon-test-cluster-key-0123456789abcdef"
STOP_TIMEOUT = 10.0
START_TIMEOUT = 20.0
OPTS = TcpOptions(mss=1460, wscale=7, sackok=True)




def wait_until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "",
               interval: float = 0.02) -> Any:
    """Poll `cond` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or cond}")
        time.sleep(interval)


# ================================================================ HTTP
def http(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, bytes]:
    data = None if body is None else (body if isinstance(body, bytes) else
                                      json.dumps(body).encode())
    req = urllib.request.Request(url, data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# ================================================================ brokers
class Broker:
    """A broker process on a fixed loopback port that can be stopped and started."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._mosq: Mosquitto | None = None
        self._amqtt: BrokerProcess | None = None
        if kind == "mosquitto":
            self._mosq = Mosquitto()
            self.port = self._mosq.port
        else:
            self._amqtt = BrokerProcess()
            self.port = self._amqtt.port

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self._mosq is not None:
            self._mosq.start()
        elif self._amqtt is not None:
            self._amqtt.__enter__()

    def stop(self) -> None:
        if self._mosq is not None:
            self._mosq.stop()
        elif self._amqtt is not None:
            self._amqtt.__exit__(None, None, None)

    def close(self) -> None:
        self.signal(signal.SIGCONT)  # a broker paused by a failed test still stops
        if self._mosq is not None:
            self._mosq.close()
        else:
            self.stop()

    def signal(self, sig: signal.Signals) -> None:
        """Signal the broker process (SIGSTOP: a stalled broker; SIGCONT)."""
        broker = self._mosq if self._mosq is not None else self._amqtt
        if broker is not None:
            broker.signal(sig)


BROKERS = ["amqtt", "mosquitto"]


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    if request.param == "mosquitto" and not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed")
    b = Broker(request.param)
    try:
        b.start()
        yield b
    finally:
        b.close()


# ================================================================ nodes
class NodeProc:
    """`python -m node.daemon --config FILE` as a child process."""

    def __init__(self, workdir: Path, name: str, config: dict[str, Any]) -> None:
        self.name = name
        self.config = config
        self.workdir = workdir
        self.path = workdir / f"{name}.json"
        self.path.write_text(json.dumps(config, indent=1))
        host, port = config["control"]["listen"].rsplit(":", 1)
        self.url = f"http://{host}:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports = {n: int(p["bind"].rsplit(":", 1)[1]) for n, p in config["ports"].items()}

    def start(self) -> NodeProc:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with open(self.workdir / f"{self.name}.out", "ab") as out, \
                open(self.workdir / f"{self.name}.err", "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "node.daemon", "--config", str(self.path),
                 "--log-level", "INFO"], stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                env=env, cwd=REPO)
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> NodeProc:
        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"node {self.name} exited with {self.proc.returncode}:\n"
                                     f"{self.log()}")
            with contextlib.suppress(OSError):
                return self.get("/health")["ok"] is True
            return False
        wait_until(up, timeout, f"node {self.name} to answer /health")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> int | None:
        """SIGTERM (a clean shutdown), SIGKILL if that takes too long; returns the
        exit code."""
        proc, self.proc = self.proc, None
        return stop_process(proc, STOP_TIMEOUT)

    def kill9(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT)

    def log(self) -> str:
        p = self.workdir / f"{self.name}.err"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    # ------------------------------------------------------------ control API
    def get(self, path: str, timeout: float = 10.0) -> Any:
        status, body = http("GET", self.url + path, timeout=timeout)
        assert status == 200, (path, status, body[:500])
        return json.loads(body)

    def text(self, path: str) -> str:
        status, body = http("GET", self.url + path)
        assert status == 200, (path, status, body[:500])
        return body.decode()

    def post(self, path: str, body: Any) -> Any:
        status, data = http("POST", self.url + path, body)
        assert status == 200, (path, status, data[:500])
        return json.loads(data)

    def inject(self, port: str, pkt: Packet) -> dict[str, Any]:
        out: dict[str, Any] = self.post("/inject", {"port": port, "hex": build(pkt).hex()})
        return out

    def state(self) -> dict[str, Any]:
        st: dict[str, Any] = self.get("/state")
        return st

    def role(self) -> str:
        return str(self.get("/health")["role"])

    def entries(self) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = self.get("/conntrack")["entries"]
        return got

    def entry(self, sport: int) -> dict[str, Any] | None:
        for e in self.entries():
            if e["orig"]["sport"] == sport:
                return e
        return None


@contextlib.contextmanager
def peer_sockets() -> Iterator[dict[str, socket.socket]]:
    """The far ends of a node's two UDP ports (clients inside, servers outside)."""
    socks = {}
    for name in ("inside", "outside"):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.settimeout(5.0)
        socks[name] = s
    try:
        yield socks
    finally:
        for s in socks.values():
            s.close()


@contextlib.contextmanager
def lone_active(workdir: Path, cfg: dict[str, Any],
                peers: dict[str, socket.socket]) -> Iterator[NodeProc]:
    """One node whose ports send to `peers`, started and active (its own
    embedded broker), stopped by its PID at the end."""
    for name, s in peers.items():
        cfg["ports"][name]["peer"] = f"127.0.0.1:{s.getsockname()[1]}"
    n = NodeProc(workdir, cfg["node"], cfg)
    try:
        n.start().wait_ready()
        wait_until(lambda: n.role() == "active", 10, "the lone node to become active")
        yield n
    finally:
        n.stop()


def node_config(name: str, cluster: str, broker_url: str | None, *, priority: int = 100,
                **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "node": name, "cluster": cluster, "cluster_key": KEY,
        "broker": {"url": broker_url, "keepalive": 2} if broker_url else {},
        "ports": {"inside": {"bind": f"127.0.0.1:{free_udp_port()}"},
                  "outside": {"bind": f"127.0.0.1:{free_udp_port()}"}},
        "tc": FIREWALL_TC,
        "card": {"insert_latency": 0.001, "poll_interval": 0.5},
        "role": {"priority": priority, "sync_timeout": 5.0},
        "control": {"listen": f"127.0.0.1:{free_port()}"},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


class Cluster:
    """Starts nodes against one broker; stops every one of them at the end."""

    def __init__(self, workdir: Path, broker_url: str | None) -> None:
        self.workdir = workdir
        self.broker_url = broker_url
        self.name = "t" + uuid.uuid4().hex[:10]
        self.nodes: list[NodeProc] = []

    def node(self, name: str, *, start: bool = True, **kw: Any) -> NodeProc:
        n = NodeProc(self.workdir, name, node_config(name, self.name, self.broker_url, **kw))
        self.nodes.append(n)
        if start:
            n.start()
        return n

    def stop_all(self) -> None:
        for n in self.nodes:
            with contextlib.suppress(Exception):
                n.stop()


@pytest.fixture
def cluster(broker: Broker, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, broker.url)
    try:
        yield c
    finally:
        c.stop_all()


@pytest.fixture
def solo(tmp_path: Path) -> Iterator[Cluster]:
    """Nodes without a broker URL (each embeds one on a free port)."""
    c = Cluster(tmp_path, None)
    try:
        yield c
    finally:
        c.stop_all()


# ================================================================ traffic
CLIENT, SERVER = "198.18.0.1", "198.19.0.1"


def handshake(sport: int, client: str = CLIENT, server: str = SERVER,
              dport: int = 443) -> list[tuple[str, Packet]]:
    """A TCP 3-way handshake through the firewall (inside -> outside)."""
    return [("inside", tcp(client, server, sport, dport, "S", 1000, 0, options=OPTS)),
            ("outside", tcp(server, client, dport, sport, "SA", 5000, 1001, options=OPTS)),
            ("inside", tcp(client, server, sport, dport, "A", 1001, 5001))]


def data_packets(sport: int, n: int = 1, client: str = CLIENT, server: str = SERVER,
                 dport: int = 443) -> list[tuple[str, Packet]]:
    """Established data after handshake(): n client segments, each ACKed."""
    out: list[tuple[str, Packet]] = []
    cseq = 1001
    for _ in range(n):
        out.append(("inside", tcp(client, server, sport, dport, "PA", cseq, 5001,
                                  payload=b"x" * 10)))
        cseq += 10
        out.append(("outside", tcp(server, client, dport, sport, "A", 5001, cseq)))
    return out


def udp_flow(sport: int, client: str = CLIENT, server: str = SERVER) -> Packet:
    return udp(client, server, sport, 5353, b"ping")


__all__ = ["KEY", "Broker", "Cluster", "NodeProc", "data_packets", "free_udp_port",
           "handshake", "http", "node_config", "udp_flow", "wait_until"]
