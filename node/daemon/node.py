"""One node's engines wired together, synchronous: conntrack, tc, the card,
the datapath and the replication core. The async shell (service.py) feeds it
packets and time; the control API (control.py) reads it.

    node = Node(cfg, now, epoch)
    sends = node.receive(port, data, now)      -> Received (outcome, what to send where)
    node.poll(now)                             at node.next_deadline(): conntrack expiry,
                                               card commands, the card's bulk poll
    node.take_ct_events()                      after each burst, for core.on_local_events

Time is an argument here too: the shell owns the clock.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from node.conntrack.entry import Entry
from node.conntrack.events import CtEvent
from node.conntrack.table import Conntrack
from node.conntrack.tuple import tuple_of
from node.daemon.config import NodeConfig
from node.daemon.errors import ConfigError
from node.daemon.gcwatch import GcWatch
from node.daemon.metrics import Histogram
from node.datapath import PATHS, Datapath, Outcome, Tick
from node.offload import Card, FaultError, Faults, PollResult
from node.packet import Packet, PacketError, build, parse
from node.tc.cli import run_batch_text
from node.tc.model import TcModel
from node.tc.parse import Options
from syncbus.core import SyncConfig, SyncCore

RING = 10000  # capture and event records kept for the control API
MAX_LAG_FOR_LATENCY = 5.0  # a transit outside [0, this] means skewed clocks: not used


@dataclass
class Received:
    outcome: Outcome | None
    sends: list[tuple[str, bytes, str]] = field(default_factory=list)  # port, packet, path
    error: str = ""
    flow: int | None = None  # its conntrack entry's id (with Node.flows on: defer)


class InstallTimer:
    """The card as the replica and aging see it (install_synced, touch), timing
    each replicated install from the connection's creation on its origin to the
    card's InsertDone (node-local ends; the transit of the carrying batch is the
    origin's send time against this clock, dropped when the clocks disagree)."""

    def __init__(self, card: Card) -> None:
        self.card = card
        self.core: SyncCore | None = None
        self.pending: dict[int, tuple[Entry, float]] = {}
        self.latency = Histogram()
        self.snapshot_installs = 0
        self.on_queued: Callable[[], None] | None = None  # the shell's card timer wake-up

    def install_synced(self, entry: Entry, now: float) -> object:
        done = self.card.install_synced(entry, now)
        if done is not None:
            if self.on_queued is not None:
                self.on_queued()
            self._queued(entry)
        return done

    def install_synced_many(self, entries: Sequence[Entry], now: float) -> list[object]:
        done = self.card.install_synced_many(entries, now)
        queued = [entry for entry, d in zip(entries, done, strict=True) if d is not None]
        if queued and self.on_queued is not None:
            self.on_queued()
        for entry in queued:
            self._queued(entry)
        return list(done)

    def _queued(self, entry: Entry) -> None:
        """A new flow of `entry` was queued for hardware: time it from its
        creation on its origin (not for a snapshot's bulk transfer)."""
        if self.core is not None:
            replica = self.core.replica
            meta = replica.meta.get(entry.id)
            if meta is not None and meta.origin in replica.snapshots:
                self.snapshot_installs += 1  # a bulk transfer, not a creation
            else:
                lag = replica.sync_lag[-1] if replica.sync_lag else 0.0
                if not 0.0 <= lag <= MAX_LAG_FOR_LATENCY:
                    lag = 0.0
                if len(self.pending) < 1_000_000:
                    self.pending[entry.id] = (entry, entry.created - lag)

    def touch(self, entry: Entry, lastused: float, now: float) -> bool:
        return self.card.touch(entry, lastused, now)

    def completed(self, res: PollResult) -> None:
        for done in res.completed:
            item = self.pending.pop(done.entry.id, None)
            if item is not None and item[0] is done.entry:
                self.latency.observe(max(0.0, done.at - item[1]))
        for failed in res.failed:
            self.pending.pop(failed.entry.id, None)
        for td in res.teardowns:
            self.pending.pop(td.entry.id, None)


class Node:
    def __init__(self, cfg: NodeConfig, now: float, epoch: int) -> None:
        self.cfg = cfg
        self.epoch = epoch
        self.started = now
        self.ct = Conntrack(cfg.sysctl)
        try:
            faults = Faults(capacity=cfg.card.capacity, insert_rate=cfg.card.insert_rate,
                            insert_latency=cfg.card.insert_latency)
        except FaultError as exc:
            raise ConfigError(f"card: {exc}") from None
        self.card = Card(self.ct, faults, poll_interval=cfg.card.poll_interval)
        tc = TcModel(auto_devices=False, helpers=self.ct.helpers)
        self.ports = [p.name for p in cfg.ports]
        self.datapath = Datapath(self.ports, tc, self.ct, now, card=self.card)
        self._apply_tc(cfg.tc, cfg.tc_name)
        self.installs = InstallTimer(self.card)
        r, m = cfg.role, cfg.mechanisms
        try:
            sync = SyncConfig(cfg.cluster, cfg.node, cfg.cluster_key, priority=r.priority,
                              preempt=r.preempt, mode=r.mode, hb_interval=r.hb_interval,
                              dead_after=r.dead_after, discover=r.discover,
                              sync_timeout=r.sync_timeout, will_grace=r.will_grace,
                              step_down_isolated=r.step_down_isolated,
                              quorum=r.quorum, witness=r.witness,
                              replication=m.replication,
                              preinstall=m.preinstall, distributed_aging=m.distributed_aging,
                              readiness_gate=m.readiness_gate, defer=cfg.sync.defer)
        except ValueError as exc:
            raise ConfigError(f"role: {exc}") from None
        self.core = SyncCore(sync, self.ct, self.installs, epoch=epoch, now=now)
        self.installs.core = self.core
        self.counters: dict[str, int] = {
            **{f"packets_{path}": 0 for path in PATHS}, "forwarded": 0, "verdict_pass": 0,
            "verdict_drop": 0, "verdict_stolen": 0}
        self.bad_packets: dict[str, int] = {}
        self.internal_errors = {"engine": 0, "publish": 0}  # bugs caught at a boundary
        # packets sent: (seq, at, port, path, bytes), made JSON when read (take_capture)
        self.capture: deque[tuple[int, float, str, str, bytes]] = deque(maxlen=RING)
        self.capture_seq = 0
        self.events: deque[tuple[int, CtEvent]] = deque(maxlen=RING)
        self.event_seq = 0
        self.role_log: deque[tuple[float, str]] = deque(maxlen=200)
        # Each time this node took the active role: its term, when (seconds since
        # start) and what its card held then (views.offload_json): the pre-installed
        # ratio of that failover, read at the moment itself.
        self.promotions: deque[dict[str, Any]] = deque(maxlen=32)
        self.poll_seconds = Histogram((0.0001, 0.001, 0.01, 0.1, 0.5, 1.0))
        self.gc = GcWatch()  # installed by the daemon while it runs
        self.flows = cfg.sync.defer > 0  # name each packet's connection (Received.flow)

    def _apply_tc(self, script: str, name: str) -> None:
        out, err = io.StringIO(), io.StringIO()
        if run_batch_text(self.datapath.tc, Options(), name, script, out, err):
            raise ConfigError(f"{name}: the tc script failed: {err.getvalue().strip()}")

    # ------------------------------------------------------------ packets
    def receive(self, port: str, data: bytes, now: float) -> Received:
        """One raw L3 packet from `port`: parse, datapath, what to transmit."""
        try:
            pkt = parse(data)
        except PacketError as exc:
            return self._bad("parse", f"bad packet: {exc}")
        except Exception as exc:  # the codec must not take the node down
            return self._bad("parse", f"bad packet: {type(exc).__name__}: {exc}")
        return self.receive_packet(port, pkt, now, data)

    def receive_packet(self, port: str, pkt: Packet, now: float,
                       raw: bytes | None = None) -> Received:
        """`pkt` through the datapath. `raw`, its bytes as received: a packet that
        leaves unchanged (the same object: no NAT, no rewrite) is sent as it came,
        not rebuilt, as a forwarding device does (checksums and IP options included)."""
        if port not in self.ports:
            return self._bad("no_port", f"no port {port!r}")
        try:
            out = self.datapath.receive(port, pkt, now)
        except Exception as exc:  # an engine bug on one packet: count it, keep going
            self.internal_errors["engine"] += 1
            return self._bad("engine", f"{type(exc).__name__}: {exc}")
        entry = None
        if out.path != "hw":  # hardware traffic reaches aging through the card's poll
            entry = self._note_software(pkt, out.zone, now)
        elif self.flows:
            entry = self._find(pkt, out.zone)
        c = self.counters
        c["packets_" + out.path] = c.get("packets_" + out.path, 0) + 1
        c["verdict_" + out.verdict] = c.get("verdict_" + out.verdict, 0) + 1
        if out.forwarded:
            c["forwarded"] += 1
        sends = []
        for e in out.egress:
            if e.sent and e.direction == "egress":
                if e.pkt is pkt and raw is not None and len(raw) == pkt.length:
                    wire = raw
                else:
                    try:
                        wire = build(e.pkt)
                    except (PacketError, ValueError) as exc:
                        self._bad("build", str(exc))
                        continue
                sends.append((e.port, wire, out.path))
                self.capture_seq += 1
                self.capture.append((self.capture_seq, now, e.port, out.path, wire))
        return Received(out, sends, flow=None if entry is None else entry.id)

    def take_capture(self) -> list[dict[str, Any]]:
        """The packets sent since the last call, oldest first (GET /capture)."""
        out = [{"seq": seq, "at": at, "port": port, "path": path, "hex": wire.hex()}
               for seq, at, port, path, wire in self.capture]
        self.capture.clear()
        return out

    def _find(self, pkt: Packet, zone: int) -> Entry | None:
        try:
            return self.ct.find(tuple_of(pkt), zone)
        except (ValueError, TypeError):
            return None

    def _note_software(self, pkt: Packet, zone: int, now: float) -> Entry | None:
        entry = self._find(pkt, zone)
        if entry is not None:
            self.core.aging.note(entry.zone, entry.orig, now)
        return entry

    def _bad(self, reason: str, message: str) -> Received:
        self.bad_packets[reason] = self.bad_packets.get(reason, 0) + 1
        return Received(None, [], message)

    # ------------------------------------------------------------ time
    def next_deadline(self) -> float:
        return self.datapath.next_deadline()

    def poll(self, now: float) -> Tick:
        """Conntrack expiry, due card commands, and once per poll interval the
        card's bulk counter read: connections with hardware traffic count as seen
        now (aging)."""
        tick = self.datapath.poll(now)
        res = tick.card
        if res is not None:
            self.installs.completed(res)
            if res.gc and res.active.size:
                self._note_hardware(res, now)
        return tick

    def _note_hardware(self, res: PollResult, now: float) -> None:
        ids = set(res.active.tolist())
        aging = self.core.aging
        for entry in self.ct.entries():
            if entry.id in ids:
                aging.note(entry.zone, entry.orig, now)

    def change_mark(self) -> tuple[int, int]:
        """Compared before and after a packet: whether it changed a connection
        (an event) or a master's expectations (what replication publishes)."""
        return self.ct.pending_events, self.ct.expect.changes

    def events_since(self, since: int) -> list[tuple[int, CtEvent]]:
        """The ring's events after seq `since`, oldest first. Seqs are consecutive,
        so they are the newest event_seq - since records: taken from the ring's
        end, at a cost of what is returned, not of the ring (a watcher polling
        /events would otherwise scan all RING records per request)."""
        n = min(self.event_seq - since, len(self.events))
        if n <= 0:
            return []
        got = list(islice(reversed(self.events), n))
        got.reverse()
        return got

    def take_ct_events(self) -> list[CtEvent]:
        """The engine's events since the last call (kept for /events too)."""
        events = self.ct.take_events()
        for ev in events:
            self.event_seq += 1
            self.events.append((self.event_seq, ev))
        return events

    # ------------------------------------------------------------ faults
    def set_faults(self, knobs: dict[str, object]) -> dict[str, object]:
        from node.offload.faults import read_knobs, set_knob

        for name, value in knobs.items():
            set_knob(self.card.faults, name, value)  # FaultError for the caller
        return read_knobs(self.card.faults)


__all__ = ["InstallTimer", "Node", "Received"]
