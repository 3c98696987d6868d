"""`ctlab bench failover`: takeover time against table size, with real node
processes and a real broker.

For each table size N (DESIGN.md section 6: "failure -> standby ready, 200k
entries, <= 1 s, flat in table size"):
  1. a broker (Mosquitto when installed, else the embedded amqtt broker in its
     own process) and two nodes, a (priority 200, active) and b (standby), both
     `python -m node.daemon` with the example two-port firewall and a cluster key;
  2. N UDP flows are opened through a: one datagram each on its "inside" port,
     sent in chunks that wait for a's table to catch up (a socket buffer never
     overflows); each is committed by act_ct and offloaded in its original
     direction, and replicated to b, which pre-installs it in its card;
  3. once b's card holds all N, a is killed with SIGKILL, and b's /health is read
     every millisecond until it says active; then one datagram of a random old
     flow is injected on b, which must forward it in hardware.
Figures per size: fill_s (a's table full), sync_s (b's card full, counted from
the first datagram), kill_to_active_ms, kill_to_first_hw_ms (the injected
packet's answer, HTTP round trip included), what b's card held at the moment it
took the active role (its /state promotion record), both nodes' RSS and their
longest full garbage collection (node/daemon/gcwatch.py).
Benchmarks, not tests: nothing here asserts a threshold.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from node.packet import build, udp
from syncbus.broker import (
    MOSQUITTO,
    BrokerProcess,
    Mosquitto,
    free_port,
    free_udp_port,
    stop_process,
)

ROOT = Path(__file__).resolve().parents[2]
FIREWALL = (Path(__file__).parent / "examples" / "firewall.tc").read_text()
KEY = "ctlab-bench-failover-cluster-key-0123456789"
SERVER = bytes((198, 19, 0, 1))
CHUNK = 2000  # datagrams sent before waiting for a's table to catch up
clock = time.monotonic
Say = Callable[[str], None]


def flow_packet(i: int) -> bytes:
    """Flow i's first datagram: client 198.18.x.y:port -> 198.19.0.1:5353."""
    k, port = divmod(i, 60000)
    client = bytes((198, 18, (k >> 8) & 0xFF, k & 0xFF))
    return build(udp(client, SERVER, 1024 + port, 5353, b"ping"))


def _config(name: str, cluster: str, url: str, priority: int, entries: int,
            will_grace: float = 0.0) -> dict[str, Any]:
    return {
        "node": name, "cluster": cluster, "cluster_key": KEY,
        "broker": {"url": url, "keepalive": 2},
        "ports": {"inside": {"bind": f"127.0.0.1:{free_udp_port()}"},
                  "outside": {"bind": f"127.0.0.1:{free_udp_port()}"}},
        "tc": FIREWALL,
        "card": {"capacity": 4 * entries + 1024},
        # the flows are idle after their one datagram: keep them in the flow
        # table (and the card) for the run, as failover-under-load does for TCP
        "sysctl": {"nf_conntrack_max": 2 * entries + 1024, "nf_flowtable_udp_timeout": 600},
        "role": {"priority": priority, "preempt": priority > 100, "sync_timeout": 60.0,
                 "will_grace": will_grace},
        "control": {"listen": f"127.0.0.1:{free_port()}"},
    }


class _Node:
    """A node process and its control API."""

    def __init__(self, workdir: Path, cfg: dict[str, Any]) -> None:
        self.name = cfg["node"]
        self.cfg = cfg
        self.url = "http://" + cfg["control"]["listen"]
        self.inside = int(cfg["ports"]["inside"]["bind"].rsplit(":", 1)[1])
        path = workdir / f"{self.name}.json"
        path.write_text(json.dumps(cfg))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        self.err = workdir / f"{self.name}.err"
        with open(self.err, "wb") as err:
            self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-m", "node.daemon", "--config", str(path)],
                stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, env=env)

    def get(self, path: str, timeout: float = 10.0) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: Any) -> Any:
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10.0) as resp:
            return json.loads(resp.read())

    def brief(self) -> dict[str, Any]:
        got: dict[str, Any] = self.get("/state?brief=1")
        return got

    def rss_mb(self) -> float | None:
        if self.proc is None:
            return None
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
        return None

    def alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"node {self.name} exited: "
                               f"{self.err.read_text(errors='replace')[-2000:]}")

    def kill9(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, 15)


def _wait(cond: Callable[[], Any], timeout: float, what: str, nodes: list[_Node],
          interval: float = 0.01) -> Any:
    deadline = clock() + timeout
    while True:
        with contextlib.suppress(OSError, urllib.error.URLError):
            got = cond()
            if got:
                return got
        for n in nodes:
            n.alive()
        if clock() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def _pair(url: str, entries: int, will_grace: float = 0.0) -> Iterator[tuple[_Node, _Node]]:
    cluster = "fo" + os.urandom(4).hex()
    with tempfile.TemporaryDirectory(prefix="ctlab-bench-failover-") as tmp:
        nodes: list[_Node] = []
        try:
            a = _Node(Path(tmp), _config("a", cluster, url, 200, entries, will_grace))
            nodes.append(a)
            b = _Node(Path(tmp), _config("b", cluster, url, 100, entries, will_grace))
            nodes.append(b)
            _wait(lambda: a.get("/health")["role"] == "active"
                  and b.brief()["role"] == "standby" and b.brief()["gate"]["state"] == "ready",
                  60, "a active and b a ready standby", nodes)
            yield a, b
        finally:  # stopped by PID, whatever happened
            for n in nodes:
                n.stop()


def _fill(a: _Node, b: _Node, packets: list[bytes], say: Say) -> dict[str, float]:
    n = len(packets)
    t0 = clock()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        dst = ("127.0.0.1", a.inside)
        for start in range(0, n, CHUNK):
            for data in packets[start:start + CHUNK]:
                s.sendto(data, dst)
            behind = min(start + CHUNK, n) - CHUNK

            def caught_up(behind: int = behind) -> bool:
                return bool(a.brief()["tables"]["conntrack"] >= behind)
            _wait(caught_up, 60, "a's table to catch up", [a, b], 0.005)
            if start // CHUNK % 25 == 0:
                say(f"failover: {min(start + CHUNK, n)}/{n} flows sent")
    _wait(lambda: a.brief()["tables"]["conntrack"] >= n, 60, f"a's table to reach {n}", [a, b])
    fill = clock() - t0
    _wait(lambda: b.brief()["tables"]["card_entries"] >= n, 300, f"b's card to hold {n}",
          [a, b], 0.05)
    return {"fill_s": round(fill, 3), "sync_s": round(clock() - t0, 3)}


def _poll_mean_ms(n: _Node) -> float | None:
    """The node's mean card poll (bulk counter read + GC) so far, from /metrics:
    the periodic work a takeover may have to wait behind."""
    with urllib.request.urlopen(n.url + "/metrics", timeout=10.0) as resp:
        text = resp.read().decode()
    names = ("ctlab_card_poll_seconds_sum ", "ctlab_card_poll_seconds_count ")
    got = dict(line.split() for line in text.splitlines() if line.startswith(names))
    count = float(got.get("ctlab_card_poll_seconds_count", 0))
    return round(1000 * float(got["ctlab_card_poll_seconds_sum"]) / count, 1) if count else None


def _takeover(a: _Node, b: _Node, probe: bytes) -> dict[str, Any]:
    b_poll = _poll_mean_ms(b)
    t0 = clock()
    a.kill9()
    gone = clock() - t0  # the kernel tears a's memory down before it closes a's sockets
    _wait(lambda: b.get("/health", 5.0)["role"] == "active", 30, "b to take over", [b], 0.001)
    active = clock() - t0
    got = b.post("/inject", {"port": "inside", "hex": probe.hex()})
    first = clock() - t0
    # b counts its eligible entries after the moment of its promotion, in steps
    promo = _wait(lambda: (b.brief()["promotion"] or {}).get("eligible") is not None
                  and b.brief()["promotion"], 30, "b's promotion record", [b])
    return {"kill_to_active_ms": round(1000 * active, 1), "a_exit_ms": round(1000 * gone, 1),
            "kill_to_first_hw_ms": round(1000 * first, 1), "b_card_poll_mean_ms": b_poll,
            "probe_path": got.get("path"), "probe_forwarded": got.get("forwarded"),
            "at_promotion": {k: promo.get(k) for k in ("table", "eligible", "installed",
                                                       "pending", "reason")}}


def run_size(url: str, entries: int, say: Say, rng: random.Random,
             will_grace: float = 0.0) -> dict[str, Any]:
    packets = [flow_packet(i) for i in range(entries)]
    with _pair(url, entries, will_grace) as (a, b):
        out: dict[str, Any] = {"entries": entries, "will_grace": will_grace}
        out.update(_fill(a, b, packets, say))
        out["rss_mb"] = {"a": a.rss_mb(), "b": b.rss_mb()}
        # the longest stop of each node's event loop by a full garbage collection
        out["gc_full_max_ms"] = {n.name: n.get("/state", 30.0)["gc"]["pause_max_ms"]["2"]
                                 for n in (a, b)}
        out.update(_takeover(a, b, packets[rng.randrange(entries)]))
        say(f"failover: {entries} entries: b active {out['kill_to_active_ms']} ms after "
            f"the kill, first packet {out['probe_path']} at {out['kill_to_first_hw_ms']} ms")
        return out


@contextlib.contextmanager
def _broker(kind: str) -> Iterator[tuple[str, str]]:
    if kind == "mosquitto":
        with Mosquitto() as m:
            yield m.url, "mosquitto"
    else:
        with BrokerProcess() as bp:
            yield bp.url, "amqtt (embedded, own process)"


def bench_failover(sizes: tuple[int, ...] = (1000, 20_000, 200_000), broker: str | None = None,
                   say: Say | None = None, seed: int = 1,
                   will_grace: float = 0.0) -> dict[str, Any]:
    """kill_to_active_ms and kill_to_first_hw_ms for each table size (the
    largest size's are the headline figures), and the details per size. With
    `will_grace` (both nodes' role.will_grace) b acts on a's will that much
    later: what riding out broker flaps costs a crash."""
    say = say or (lambda line: None)
    kind = broker or ("mosquitto" if Path(MOSQUITTO).exists() else "amqtt")
    rng = random.Random(seed)
    runs = []
    with _broker(kind) as (url, name):
        for n in sizes:
            runs.append(run_size(url, n, say, rng, will_grace))
    top = max(runs, key=lambda r: r["entries"])
    return {"failover_broker": name, "failover_entries": top["entries"],
            "failover_kill_to_active_ms": top["kill_to_active_ms"],
            "failover_kill_to_first_hw_ms": top["kill_to_first_hw_ms"],
            "failover_runs": runs}
