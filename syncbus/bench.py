"""`ctlab bench sync`: replication measured through a real broker.

Two processes and a broker, on this host:
  node A (a child process: python -m syncbus.bench --publisher ...) owns a real
      conntrack table; it publishes coalesced CtBatch frames (Outbox, codec,
      HMAC with a cluster key) through MqttBus;
  node B (this process) receives them through MqttBus and runs the whole
      receive path of a member: SyncCore.on_message (topic and origin checks,
      HMAC, decode, Replica.apply into its own Conntrack, pre-install in its
      emulated card);
  the broker: a Mosquitto started for the run, or the embedded amqtt broker in
      its own process (python -m syncbus.broker), or any broker URL given.

Figures (DESIGN.md section 6):
  sync_events_per_s    connection records applied by B per second, first frame
                       to last, while A publishes `conns` connections `rounds`
                       times (round 1 creates them on B, later rounds update
                       them); A encodes while B applies, so the figure is the
                       pipeline's (its slowest stage; inserts and updates are
                       also given apart)
  sync_install_p50_ms / sync_install_p99_ms
                       creation on A (entry.created, A's clock) to installation
                       in B's card (B's clock), A opening `rate` new TCP
                       connections per second (3-way handshake each) for
                       `seconds`; both clocks are this host's CLOCK_MONOTONIC
  sync_bytes_per_event frame bytes (envelope and HMAC included) per record
Benchmarks, not tests: nothing here asserts a threshold.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from node.conntrack import Conntrack, Sysctl
from node.conntrack.entry import Entry
from node.conntrack.tuple import tuple_of
from node.offload import Card, Faults
from node.packet import IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_SYN, Packet, Tcp, TcpOptions, Udp
from syncbus import topics
from syncbus.broker import (
    MOSQUITTO,
    BrokerProcess,
    Mosquitto,
    bridge_config,
    stop_process,
    wait_bridged,
)
from syncbus.bus import BusConfig, BusMessage, MqttBus
from syncbus.core import SyncConfig, SyncCore
from syncbus.outbox import Outbox

CLUSTER = "bench"
KEY = b"ctlab-bench-cluster-key-32-bytes"
OPTS = TcpOptions(mss=1460, wscale=7, sackok=True)
clock = time.monotonic


# ================================================================ node A
def _addr(i: int, side: int) -> bytes:
    """198.18.0.0/15, the benchmarking range: clients in 198.18/16, servers in
    198.19/16, i modulo 65536 (the client port, 1024 + i % 60000, tells apart
    connections beyond that: the pair repeats only after 122 880 000)."""
    return bytes((198, 18 + side, (i >> 8) & 0xFF, i & 0xFF))


def _tcp(src: bytes, dst: bytes, sport: int, dport: int, flags: int, seq: int,
         ack: int, opts: TcpOptions | None = None) -> Packet:
    return Packet(4, src, dst, IPPROTO_TCP, Tcp(sport, dport, seq, ack, flags, 65535, 0,
                                                 opts or TcpOptions()), b"", length=40)


def open_udp(ct: Conntrack, i: int, now: float) -> Entry:
    """A UDP flow's first packet through the engine (confirmed: offloadable in
    the original direction)."""
    pkt = Packet(4, _addr(i, 0), _addr(i, 1), IPPROTO_UDP, Udp(1024 + i % 60000, 53), b"q",
                 length=29)
    ct.commit(pkt, now)
    entry = ct.find(tuple_of(pkt))
    assert entry is not None
    return entry


def open_connection(ct: Conntrack, i: int, now: float) -> Entry:
    """A real 3-way handshake through the engine (ESTABLISHED, ASSURED)."""
    c, s, cp = _addr(i, 0), _addr(i, 1), 1024 + i % 60000
    syn = _tcp(c, s, cp, 443, TCP_SYN, 1000, 0, OPTS)
    ct.commit(syn, now)
    ct.commit(_tcp(s, c, 443, cp, TCP_SYN | TCP_ACK, 5000, 1001, OPTS), now)
    ct.commit(_tcp(c, s, cp, 443, TCP_ACK, 1001, 5001), now)
    entry = ct.find(tuple_of(syn))
    assert entry is not None
    return entry


def _control(run: str) -> str:
    """The run's control topics (ready, go, done): under ctlab/, which a bridge
    between two brokers carries (syncbus.broker.bridge_config()), beside the
    clusters' trees (no cluster is named "-bench")."""
    return f"ctlab/-bench/{run}"


def _bus(url: str, client: str, subs: tuple[str, ...] = ()) -> MqttBus:
    return MqttBus(BusConfig(url, client, subs, max_pending=4096, timeout=30.0, keepalive=60))


async def _publisher(args: argparse.Namespace) -> dict[str, Any]:
    ctl = _control(args.run)
    ct = Conntrack(Sysctl(nf_conntrack_max=4_000_000), events=args.mode == "latency")
    core = SyncCore(SyncConfig(CLUSTER, "a", KEY, budget=args.budget), ct, None,
                    epoch=1, now=clock())
    out: dict[str, Any] = {}
    entries: list[Entry] = []
    if args.mode == "events":  # before connecting: it keeps the event loop busy for seconds
        t = clock()
        entries = [open_connection(ct, i, t) for i in range(args.conns)]
        out["setup_s"] = round(clock() - t, 3)
    async with _bus(args.url, f"bench-a-{args.run}", (f"{ctl}/go",)) as bus:
        await bus.wait_connected(15)
        await bus.publish(f"{ctl}/ready", b"1")
        async for ev in bus.events():  # wait for B's go
            if isinstance(ev, BusMessage) and ev.topic == f"{ctl}/go":
                break
        if args.mode == "events":
            cpu = time.process_time()
            out.update(await _publish_rounds(bus, core.outbox, entries, args.rounds))
            out["cpu_s"] = round(time.process_time() - cpu, 3)  # A's, for all rounds
        else:
            out.update(await _publish_paced(bus, core, ct, args.rate, args.seconds,
                                            open_udp if args.proto == "udp" else open_connection))
        await bus.drain(60)
        await bus.publish(f"{ctl}/done", json.dumps(out).encode())
        await bus.drain(10)
        return out


async def _publish_rounds(bus: MqttBus, ob: Outbox, entries: list[Entry],
                          rounds: int) -> dict[str, Any]:
    encode_s = 0.0
    gc.disable()
    try:
        for _ in range(rounds):
            now = clock()
            for i, e in enumerate(entries):  # every connection changed (a NEW, then UPDATEs)
                # as a member does: a frame leaves when the byte budget is reached (so
                # B applies one frame while A fills the next), the rest at the end
                if ob.upsert(e, now) or i == len(entries) - 1:
                    t = time.perf_counter()
                    frames = ob.flush(now)
                    encode_s += time.perf_counter() - t
                    for f in frames:
                        await bus.publish(f.topic, f.payload)
                    await asyncio.sleep(0)  # the writer sends it (a member's loop runs
                    # between packets as well)
    finally:
        gc.enable()
    return {"items": ob.stats["items"], "frames": ob.stats["frames"],
            "bytes": ob.stats["bytes"], "encode_per_s": round(ob.stats["items"] / encode_s)}


async def _publish_paced(bus: MqttBus, core: SyncCore, ct: Conntrack, rate: int,
                         seconds: float, opener: Any) -> dict[str, Any]:
    """`rate` new connections per second, in 1 ms ticks, through the member's
    real path: engine events -> SyncCore.on_local_events -> the flush timer."""
    start = clock()
    made = 0
    burst = max(1, rate // 200)  # at most 5 ms worth at once: if A falls behind, the
    while (now := clock()) - start < seconds:  # rate drops (reported), not the flush timer
        due = int((now - start) * rate)
        for _ in range(min(due - made, burst)):
            opener(ct, made, now)
            made += 1
        for f in core.on_local_events(ct.take_events(), now):
            await bus.publish(f.topic, f.payload)
        d = core.outbox.next_deadline()  # paced in ~1 ms ticks, never spinning: on a
        await asyncio.sleep(max(0.0002, min(0.001, (d or now + 0.001) - clock())))  # shared box
        # a spinning A would starve B and the broker
    for f in core.outbox.flush(clock()):
        await bus.publish(f.topic, f.payload)
    ob = core.outbox.stats
    return {"items": ob["items"], "frames": ob["frames"], "bytes": ob["bytes"],
            "achieved_rate": round(made / (clock() - start))}


# ================================================================ node B
async def _receiver(url: str, mode: str, expect: int | None, argv: list[str],
                    timeout: float, publisher_url: str | None = None) -> dict[str, Any]:
    """Node B on `url`; node A, its child, on `publisher_url` (default: the same)."""
    run = os.urandom(4).hex()
    ctl = _control(run)
    ct = Conntrack(Sysctl(nf_conntrack_max=4_000_000), events=False)
    card = Card(ct, Faults(insert_latency=0.0, capacity=8 * 1024 * 1024))
    core = SyncCore(SyncConfig(CLUSTER, "b", KEY), ct, card, epoch=1, now=clock())
    subs = (topics.ct(CLUSTER, "a"), f"{ctl}/ready", f"{ctl}/done")
    async with _bus(url, f"bench-b-{run}", subs) as bus:
        await bus.wait_connected(15)
        with _child([*argv, "--run", run, "--url", publisher_url or url,
                     "--mode", mode]) as child:
            async with asyncio.timeout(timeout):
                return await _receive(bus, core, ct, ctl, expect, child)
    raise AssertionError("unreachable")


async def _receive(bus: MqttBus, core: SyncCore, ct: Conntrack, ctl: str,
                   expect: int | None, child: subprocess.Popen[bytes]) -> dict[str, Any]:
    rep = core.replica
    first = last = 0.0
    cpu0 = cpu1 = 0.0
    round1 = 0.0
    conns: int | None = None
    done: dict[str, Any] | None = None
    polled = 0
    on_message = core.on_message
    gc.disable()
    try:
        async for ev in bus.events():
            if not isinstance(ev, BusMessage):
                continue
            if ev.topic == f"{ctl}/ready":
                await bus.publish(f"{ctl}/go", b"1")
                continue
            if ev.topic == f"{ctl}/done":
                done = json.loads(ev.payload)
                expect = done["items"]
            else:
                now = clock()
                if not first:
                    first = now
                    cpu0 = time.process_time()
                on_message(ev.topic, ev.payload, now)
                last = clock()
                cpu1 = time.process_time()
                if conns is None and rep.stats["created"] and rep.stats["updated"]:
                    conns = rep.stats["created"]
                    round1 = last
            if expect is not None and rep.stats["items"] >= expect and done is not None:
                break
            polled += 1
            if not polled % 64 and child.poll() not in (None, 0):  # (a syscall: the GIL
                # released and taken back, and B off its core, at every frame before)
                raise RuntimeError(f"the publisher died (exit {child.returncode})")
    finally:
        gc.enable()
    assert done is not None
    items = rep.stats["items"]
    out = {"items": items, "created": rep.stats["created"], "updated": rep.stats["updated"],
           "elapsed_s": round(last - first, 3), "table": len(ct),
           "installed": rep.stats["installed"], "bad": core.stats["bad_messages"],
           "fast_lane": rep.stats["fast"],
           "publisher": done}
    out["events_per_s"] = round(items / (last - first)) if last > first else 0
    # what B could do with a core of its own (this process's CPU time, not the wall)
    out["b_cpu_s"] = round(cpu1 - cpu0, 3)
    out["events_per_b_cpu_s"] = round(items / (cpu1 - cpu0)) if cpu1 > cpu0 else 0
    if conns and round1 > first:
        out["inserts_per_s"] = round(conns / (round1 - first))
        out["updates_per_s"] = round((items - conns) / (last - round1)) if last > round1 else 0
    out["lat"] = sorted(rep.install_latency)
    return out


@contextlib.contextmanager
def _child(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", "syncbus.bench", "--publisher", *argv],
                            env=env, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:  # stopped by its PID, whatever happened
        stop_process(proc, 10)


# ================================================================ the benchmark
@contextlib.contextmanager
def broker_for(url: str | None, kind: str) -> Iterator[tuple[str, str, str]]:
    """(B's URL, A's URL, name): the given URL, or a broker started for the run;
    `bridged`: two Mosquittos, B's bridged to A's (one broker per site)."""
    if url is not None:
        yield url, url, url
    elif kind == "amqtt":
        with BrokerProcess() as b:
            yield b.url, b.url, "amqtt (embedded, own process)"
    else:
        ver = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True).stdout
        name = "mosquitto " + (ver.split()[2] if len(ver.split()) > 2 else "")
        with Mosquitto() as m:
            if kind != "bridged":
                yield m.url, m.url, name
                return
            with Mosquitto(extra=bridge_config("ctlab-bench", m.host, m.port)) as m2:
                asyncio.run(wait_bridged(m.url, m2.url))
                yield m2.url, m.url, f"{name}, two bridged (A on one, B on the other)"


def _pct(lat: list[float], q: float) -> float:
    if not lat:
        return float("nan")
    return round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 3)


def bench_sync(broker_url: str | None = None, *, broker: str = "mosquitto",
               conns: int = 50_000, rounds: int = 4, rate: int = 10_000,
               seconds: float = 3.0, budget: int = 64 * 1024, proto: str = "udp",
               phases: tuple[str, ...] = ("events", "latency"), stage_records: int = 10_000,
               timeout: float = 300.0) -> dict[str, Any]:
    """Run both measurements through one broker; returns the figures (keys as
    DESIGN.md section 5) and the details behind them."""
    out: dict[str, Any] = {}
    details: dict[str, Any] = {}
    with broker_for(broker_url, broker) as (url, a_url, name):
        out["broker"] = name
        if "events" in phases:
            ev = asyncio.run(_receiver(url, "events", None, [
                "--conns", str(conns), "--rounds", str(rounds), "--budget", str(budget)],
                timeout, a_url))
            ev.pop("lat")
            pub = ev["publisher"]
            out["sync_events_per_s"] = ev["events_per_s"]
            out["sync_bytes_per_event"] = round(pub["bytes"] / pub["items"], 1)
            details["events"] = {**ev, "conns": conns, "rounds": rounds, "budget": budget,
                                 "record": "TCP upsert, IPv4, both directions' window data"}
        if "latency" in phases:
            lat = asyncio.run(_receiver(url, "latency", None, [
                "--rate", str(rate), "--seconds", str(seconds), "--proto", proto], timeout,
                a_url))
            lats = lat.pop("lat")
            out["sync_install_p50_ms"] = _pct(lats, 0.50)
            out["sync_install_p99_ms"] = _pct(lats, 0.99)
            details["latency"] = {
                **lat, "rate": rate, "seconds": seconds, "proto": proto, "samples": len(lats),
                "max_ms": _pct(lats, 1.0),
                "mean_ms": round(1000 * statistics.fmean(lats), 3) if lats else None,
                "bytes_per_event": round(lat["publisher"]["bytes"]
                                         / max(lat["publisher"]["items"], 1), 1)}
    from syncbus.stages import stage_costs  # (stages builds on this module's node A)

    details["stage_cpu_us_per_record"] = stage_costs(stage_records)
    details["machine"] = {"cpus": os.cpu_count(), "load": os.getloadavg(),
                          "python_loop_10M_s": _calibrate()}
    out["details"] = details
    return out


def _calibrate() -> float:
    """Seconds for 10M trivial Python loop iterations here (a typical 2024
    desktop core: ~0.4 s): to compare figures across machines."""
    t = time.process_time()
    x = 0
    for i in range(10_000_000):
        x += i
    return round(time.process_time() - t, 2)


def _publisher_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="syncbus.bench --publisher")
    ap.add_argument("--url", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--mode", choices=["events", "latency"], required=True)
    ap.add_argument("--conns", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--budget", type=int, default=64 * 1024)
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--proto", choices=["udp", "tcp"], default="udp")
    asyncio.run(_publisher(ap.parse_args(argv)))
    return 0


def exit_on_sigterm() -> None:
    """SIGTERM runs the finally blocks (brokers and children stopped by PID):
    for a bench's main thread, which starts brokers and processes."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> int:
    """python -m syncbus.bench [--broker mosquitto|amqtt] [--url URL] [--json]"""
    argv = sys.argv[1:] if argv is None else argv
    exit_on_sigterm()
    if argv and argv[0] == "--publisher":
        return _publisher_main(argv[1:])
    ap = argparse.ArgumentParser(prog="syncbus.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", choices=["mosquitto", "amqtt", "bridged"], default="mosquitto",
                    help="bridged: two Mosquittos, B's bridged to A's")
    ap.add_argument("--url", default=None, help="use this broker instead of starting one")
    ap.add_argument("--conns", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--budget", type=int, default=64 * 1024)
    ap.add_argument("--proto", choices=["udp", "tcp"], default="udp",
                    help="connections opened in the latency run")
    ap.add_argument("--only", choices=["events", "latency"], default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    res = bench_sync(a.url, broker=a.broker, conns=a.conns, rounds=a.rounds, rate=a.rate,
                     seconds=a.seconds, budget=a.budget, proto=a.proto,
                     phases=(a.only,) if a.only else ("events", "latency"))
    if a.json:
        print(json.dumps({"details": res["details"]}))
    else:
        for k, v in res.items():
            if k != "details":
                print(f"{k:24} {v}")
        print(json.dumps(res["details"], indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "details"}))
    return 0


__all__ = ["bench_sync", "broker_for", "exit_on_sigterm", "main", "open_connection",
           "open_udp"]

if __name__ == "__main__":
    raise SystemExit(main())
