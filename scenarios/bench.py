"""`ctlab bench`: the performance figures of DESIGN.md section 6.

Benchmarks, not tests: they measure and print; nothing asserts a threshold.
With --json the last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import gc
import json
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from node.conntrack import Conntrack, Sysctl
from node.offload.bench import open_from_the_wire
from node.packet import IPPROTO_TCP, TCP_ACK, TCP_SYN, Packet, Tcp, TcpOptions

FLOWS = 1000
ROUND_PASSES = 10  # passes over the 2 * FLOWS packets per timed round (~70 ms)
PAYLOAD = b"x" * 64


def _addr(i: int, side: int) -> bytes:
    # 198.18.0.0/15: clients in 198.18/16, servers in 198.19/16
    return bytes((198, 18 + side, (i >> 8) & 0xFF, i & 0xFF))


def _tcp(src: bytes, dst: bytes, sport: int, dport: int, flags: int, seq: int, ack: int,
         payload: bytes = b"", options: TcpOptions | None = None) -> Packet:
    return Packet(4, src, dst, IPPROTO_TCP,
                  Tcp(sport, dport, seq, ack, flags, 65535, 0, options or TcpOptions()),
                  payload, length=40 + len(payload))


def established_flows(ct: Conntrack, n: int, now: float) -> list[tuple[Packet, Packet]]:
    """Open n TCP connections (3-way handshake, window scaling) and return for
    each one an (original, reply) pair of data packets that stay in window."""
    pairs = []
    opts = TcpOptions(mss=1460, wscale=7, sackok=True)
    for i in range(n):
        c, s = _addr(i, 0), _addr(i, 1)
        cp, sp = 10000 + (i % 50000), 443
        ct.commit(_tcp(c, s, cp, sp, TCP_SYN, 1000, 0, options=opts), now)
        ct.commit(_tcp(s, c, sp, cp, TCP_SYN | TCP_ACK, 5000, 1001, options=opts), now)
        ct.commit(_tcp(c, s, cp, sp, TCP_ACK, 1001, 5001), now)
        # Data is re-sent at the same sequence numbers (retransmission-free: each
        # copy acknowledges the other side, so both stay inside the window).
        pairs.append((_tcp(c, s, cp, sp, TCP_ACK, 1001, 5001, PAYLOAD),
                      _tcp(s, c, sp, cp, TCP_ACK, 5001, 1001 + len(PAYLOAD), PAYLOAD)))
    return pairs


def bench_ct(seconds: float) -> dict[str, Any]:
    """ct_pps: established TCP packets per second of one core through the engine
    (track + confirm, window tracking on); ct_bytes_per_conn: memory per
    committed TCP entry, its packets parsed from their bytes at times of their own
    (node.offload.bench.open_from_the_wire()) as a node meets them.

    The run is cut into rounds of ROUND_PASSES passes over the packets, each
    timed in CPU time of this process (single-threaded: one core). ct_pps is
    the fastest round, the engine's speed when nothing else disturbs the core,
    as timeit reports the minimum; ct_pps_median is the median round, what a
    busy shared machine gave."""
    ct = Conntrack(Sysctl(nf_conntrack_max=2_000_000), events=False)
    now = 1000.0
    pairs = established_flows(ct, FLOWS, now)
    packets = [p for pair in pairs for p in pair] * ROUND_PASSES
    commit = ct.commit
    rates: list[float] = []
    gc.disable()
    try:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or not rates:
            started = time.process_time()
            for pkt in packets:
                commit(pkt, now)
            cpu = time.process_time() - started
            if cpu > 0:
                rates.append(len(packets) / cpu)
    finally:
        gc.enable()
    return {"ct_pps": round(max(rates)), "ct_pps_median": round(statistics.median(rates)),
            "ct_bytes_per_conn": _bytes_per_conn(50_000)}


def _bytes_per_conn(n: int) -> int:
    gc.collect()
    tracemalloc.start()
    ct = Conntrack(Sysctl(nf_conntrack_max=2_000_000), events=False)
    base = tracemalloc.get_traced_memory()[0]
    open_from_the_wire(ct, None, n)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert len(ct) == n
    return round(used / n)


def bench_datapath(seconds: float) -> dict[str, Any]:
    """sw_pps, hw_pps, poll_1m_s, bytes_per_conn (and sw_fastpath_pps, hw_path_pps):
    node.datapath.bench_datapath, a progress line per figure on stderr. Timed in
    CPU time of this process (one core), as bench_ct is."""
    from node.datapath import bench_datapath as measure

    return measure(time.process_time, seconds,
                   progress=lambda line: print(line, file=sys.stderr, flush=True))


def bench_sync(seconds: float) -> dict[str, Any]:
    """Replication node to node through a real broker (Mosquitto when installed,
    else the embedded amqtt broker in its own process): sync_events_per_s,
    sync_install_p50/p99_ms at 10k new connections/s, bytes per event."""
    import shutil

    from syncbus.bench import bench_sync as run

    broker = "mosquitto" if shutil.which("mosquitto") or \
        shutil.which("mosquitto", path="/usr/sbin") else "amqtt"
    figures = run(None, broker=broker, seconds=max(seconds, 1.0))
    return {k: v for k, v in figures.items() if k != "details"}


FAILOVER_SIZES = (1000, 20_000, 200_000)


def bench_failover(seconds: float, sizes: tuple[int, ...] = FAILOVER_SIZES,
                   will_grace: float = 0.0) -> dict[str, Any]:
    """Failure -> standby active and forwarding in hardware, for each table size,
    with two real node processes and a real broker (node.daemon.bench)."""
    from node.daemon.bench import bench_failover as run

    return run(sizes, say=lambda line: print(line, file=sys.stderr, flush=True),
               will_grace=will_grace)


BENCHES: dict[str, Callable[[float], dict[str, Any]]] = {
    "ct": bench_ct, "sync": bench_sync, "datapath": bench_datapath, "failover": bench_failover}


def run_bench(what: str, *, as_json: bool, seconds: float,
              entries: tuple[int, ...] = FAILOVER_SIZES, will_grace: float = 0.0) -> int:
    from syncbus.bench import exit_on_sigterm

    exit_on_sigterm()  # `bench sync` and `bench failover` start brokers and nodes
    names = list(BENCHES) if what == "all" else [what]
    figures: dict[str, Any] = {}
    for name in names:
        print(f"bench {name} ...", file=sys.stderr)
        result = bench_failover(seconds, entries, will_grace) if name == "failover" \
            else BENCHES[name](seconds)
        figures.update(result)
        if not as_json:
            for key, value in result.items():
                print(f"{key:>20}: {value}")
    if as_json:
        figures["python"] = platform.python_version()
        print(json.dumps(figures))
    return 0
