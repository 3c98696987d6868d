"""The card's performance figures (DESIGN.md section 6), as pure functions.

They take the timer (e.g. time.perf_counter) as an argument and return figures;
`ctlab bench datapath` wires them in. Nothing here asserts a target.

  hw_pps          card hits per second for established TCP: packets resolved to
                  hardware slots (one exact-match lookup each) and counted, in
                  batches of `batch` (the batched hit path); hw_pps_single is the
                  per-packet lookup() path, for comparison. Medians over windows.
  poll_1m_s       the slowest poll() over several 1 s cycles with `flows` offloaded
                  connections (2 counters each) all active, in steady state: bulk
                  counter read, GC scan (ct dying / outdated / ct hold), stats jobs
                  (timeout refresh from lastuse + conntrack accounting, which is
                  on here: nf_conntrack_acct=1) for the flows due; poll_1m_mean_s
                  the mean; poll_1m_burst_s one poll in which every flow is due
                  for its stats job
  bytes_per_conn  memory of a tracked + offloaded TCP connection: conntrack entry
                  (after a real handshake), flow table entry and hardware entries,
                  measured with tracemalloc over `n` connections whose packets
                  are parsed from their bytes at times of their own (as a node
                  meets them); _card is what node/offload allocated, _sw the rest
"""

from __future__ import annotations

import gc
import os
import statistics
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from node.conntrack.entry import IPS_ASSURED, IPS_SEEN_REPLY, Entry
from node.conntrack.sysctl import Sysctl
from node.conntrack.table import Conntrack
from node.conntrack.tcp import TcpTracker
from node.conntrack.tuple import Tuple, tuple_of
from node.offload.card import Card
from node.offload.faults import Faults
from node.packet import IPPROTO_TCP, TCP_ACK, TCP_SYN, Packet, Tcp, TcpOptions
from node.packet_codec import build, parse

Timer = Callable[[], float]
PAYLOAD = b"x" * 64
NOW = 1000.0
WINDOWS = 5  # rates are the median over this many windows (the machine may be shared)


def _ends(i: int) -> tuple[bytes, bytes, int]:
    """Connection i's client, server and client port (unique for i < 2**24):
    clients in 198.18/16, servers in 198.19/16 (RFC 2544 benchmarking space)."""
    hi, lo = (i >> 8) & 0xFF, i & 0xFF
    return bytes((198, 18, hi, lo)), bytes((198, 19, hi, lo)), 10000 + (i >> 16)


def _seg(src: bytes, dst: bytes, sport: int, dport: int, flags: int, seq: int, ack: int,
         payload: bytes = b"", options: TcpOptions | None = None) -> Packet:
    return Packet(4, src, dst, IPPROTO_TCP,
                  Tcp(sport, dport, seq, ack, flags, 65535, 0, options or TcpOptions()),
                  payload, length=40 + len(payload))


def _card(ct: Conntrack, capacity: int) -> Card:
    return Card(ct, Faults(capacity=capacity, insert_latency=0.0,
                           insert_rate=1e12, insert_burst=1e12))


_SYN_OPTIONS = TcpOptions(mss=1460, wscale=7, sackok=True)


def _handshake(i: int) -> tuple[Packet, Packet, Packet]:
    """Connection i's SYN, SYN/ACK and ACK (client to server port 443)."""
    c, s, cp = _ends(i)
    return (_seg(c, s, cp, 443, TCP_SYN, 1000, 0, options=_SYN_OPTIONS),
            _seg(s, c, 443, cp, TCP_SYN | TCP_ACK, 5000, 1001, options=_SYN_OPTIONS),
            _seg(c, s, cp, 443, TCP_ACK, 1001, 5001))


def open_offloaded(ct: Conntrack, card: Card, n: int, now: float) -> list[Packet]:
    """n TCP connections: 3-way handshake through conntrack (ct commit), offered
    to the card on the last ACK. Returns one established data packet per flow."""
    data = []
    for i in range(n):
        for pkt in _handshake(i):
            res = ct.commit(pkt, now)
        if res.entry is not None:
            card.offer(res.entry, res.ctinfo, now)
        c, s, cp = _ends(i)
        data.append(_seg(c, s, cp, 443, TCP_ACK, 1001, 5001, PAYLOAD))
    return data


def open_from_the_wire(ct: Conntrack, card: Card | None, n: int) -> float:
    """open_offloaded() as a node meets it: every packet parsed from its bytes
    (its addresses and ports are objects of its own, as a node's are) at a time
    of its own (1 us apart); without a card, tracked only. Returns the time of
    the last packet."""
    now = NOW
    for i in range(n):
        for pkt in _handshake(i):
            now += 1e-6
            res = ct.commit(parse(build(pkt)), now)
        if card is not None and res.entry is not None:
            card.offer(res.entry, res.ctinfo, now)
    return now


def bench_hw_pps(timer: Timer, seconds: float = 1.0, flows: int = 10_000,
                 batch: int = 4096) -> dict[str, Any]:
    ct = Conntrack(Sysctl(nf_conntrack_max=2 * flows + 16), events=False)
    card = _card(ct, 2 * flows)
    packets = open_offloaded(ct, card, flows, NOW)
    tuples = [tuple_of(p) for p in packets]
    lengths = np.full(batch, packets[0].length, np.int64)
    batches = [tuples[i:i + batch] for i in range(0, len(tuples) - batch + 1, batch)]
    resolve, hit_batch, lookup = card.resolve, card.hit_batch, card.lookup

    def batched_window() -> float:
        done = 0
        start = timer()
        while timer() - start < seconds / WINDOWS:
            for keys in batches:
                hit_batch(resolve(keys, 0), lengths, NOW)
            done += len(batches) * batch
        return done / (timer() - start)

    def single_window() -> float:
        done = 0
        start = timer()
        while timer() - start < seconds / WINDOWS / 2:
            for pkt in packets[:batch]:
                lookup(pkt, 0, NOW)
            done += batch
        return done / (timer() - start)

    gc.disable()
    try:
        batched = statistics.median(batched_window() for _ in range(WINDOWS))
        single_pps = statistics.median(single_window() for _ in range(WINDOWS))
    finally:
        gc.enable()
    hits = card.counters.hw_packets
    assert hits and not sum(card.counters.misses), "every packet must hit"
    return {"hw_pps": round(batched), "hw_pps_single": round(single_pps)}


def synced_connections(ct: Conntrack, card: Card, n: int, now: float,
                       first: int = 0) -> list[Entry]:
    """n established TCP connections (numbered from `first`) installed the
    replication way: conntrack entries restored from their protoinfo, then
    pre-installed in the card."""
    tracker = TcpTracker()
    info = {"state": "ESTABLISHED", "flags_orig": ["SACK_PERM"], "flags_reply": ["SACK_PERM"]}
    entries = []
    for i in range(first, first + n):
        c, s, cp = _ends(i)
        orig = Tuple(4, IPPROTO_TCP, c, s, cp, 443)
        entry = Entry(orig, Tuple(4, IPPROTO_TCP, s, c, 443, cp), 0, now, 0)
        entry.status = IPS_SEEN_REPLY | IPS_ASSURED
        tracker.restore(entry, info)
        ct.refresh(entry, 432000, now)
        ct.insert_synced(entry, now)
        card.install_synced(entry, now)
        entries.append(entry)
    return entries


def bench_poll(timer: Timer, flows: int = 500_000, polls: int = 8) -> dict[str, Any]:
    """Every connection sends in every 1 s cycle, and each cycle's poll is timed.
    The connections are installed over 4 s, as arriving traffic would install them,
    so each poll runs the stats jobs (timeout refresh, accounting) of about a
    quarter of them, the steady state of 1 s polls with a 3 s stats period. Then
    one more poll with every flow due for its stats job at once (a burst)."""
    # With accounting (nf_conntrack_acct=1): the stats jobs then also add the
    # hardware counters to every entry's accounting, the heavier poll.
    ct = Conntrack(Sysctl(nf_conntrack_max=flows + 16, nf_conntrack_acct=1), events=False)
    card = _card(ct, 2 * flows)
    now = NOW
    card.poll(now)
    gc.disable()  # millions of new objects: the cyclic GC would rescan them all
    quarter = -(-flows // 4)
    slots = np.arange(2 * flows, dtype=np.int64)
    lengths = np.full(slots.size, 100, np.int64)
    for g in range(4):
        synced_connections(ct, card, min(quarter, flows - g * quarter), now, first=g * quarter)
        now += 1.0
        installed = 2 * min(flows, (g + 1) * quarter)
        card.hit_batch(slots[:installed], lengths[:installed], now - 0.5)
        card.poll(now)
    gc.enable()
    gc.collect()
    gc.freeze()  # the measured polls run without the cyclic GC walking the tables

    def one_poll() -> float:
        nonlocal now
        now += 1.0
        card.hit_batch(slots, lengths, now - 0.5)
        start = timer()
        result = card.poll(now)
        took = timer() - start
        assert result.gc and not result.teardowns and result.active.size == flows
        return took

    times = [one_poll() for _ in range(polls)]
    card.flows.timeout_v[:] = now + 20.0  # every flow below 90 % of its timeout
    burst = one_poll()
    gc.unfreeze()
    card.counters.last_poll_s = times[-1]
    return {"poll_1m_s": round(max(times), 3), "poll_1m_mean_s": round(sum(times) / polls, 3),
            "poll_1m_burst_s": round(burst, 3), "poll_flows": flows,
            "poll_counters": 2 * flows}


_THIS_FILE = os.path.abspath(__file__)


def bench_bytes_per_conn(n: int = 50_000) -> dict[str, Any]:
    """tracemalloc over n handshaken, offloaded connections, split by where the
    memory was allocated: the card's modules (flow table index and columns,
    hardware entries) and the rest (the software entry: conntrack's entry,
    tuples, table index and timers, and the TCP state the flow table packed)."""
    gc.collect()
    tracemalloc.start()
    ct = Conntrack(Sysctl(nf_conntrack_max=2 * n), events=False)
    card = _card(ct, 2 * n)
    before = tracemalloc.take_snapshot()
    now = open_from_the_wire(ct, card, n)
    card.poll(now)  # drains the per-poll results, as the daemon's 1 s poll does
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    assert len(ct) == n and card.hw.entries == 2 * n
    total = card_part = 0
    card_dir = os.path.dirname(_THIS_FILE) + os.sep
    for stat in after.compare_to(before, "filename"):
        total += stat.size_diff
        where = stat.traceback[0].filename
        if where.startswith(card_dir) and where != _THIS_FILE:  # (this file: the addresses)
            card_part += stat.size_diff
    return {"bytes_per_conn": round(total / n), "bytes_per_conn_card": round(card_part / n),
            "bytes_per_conn_sw": round((total - card_part) / n), "bytes_per_conn_n": n}


def bench_datapath_offload(timer: Timer, seconds: float = 1.0,
                           poll_flows: int = 500_000) -> dict[str, Any]:
    """All the card's figures, with the keys `ctlab bench datapath --json` reports.
    poll_1m_s is for 1M hardware counters: 500k bidirectional connections."""
    out: dict[str, Any] = {}
    out.update(bench_hw_pps(timer, seconds))
    out.update(bench_poll(timer, poll_flows))
    out.update(bench_bytes_per_conn())
    return out
