"""One member's replication, pure: what the node daemon drives.

SyncCore joins the outbox (what this node says), the replica (what it hears),
aging and the election, checks every incoming frame against the topic it came
on, and answers resync requests. Bytes in, Publish values out, time passed in:
the daemon owns the bus, the clock and the timers.

What the daemon calls, and when:

    core = SyncCore(SyncConfig(...), ct, card, epoch=<increasing per start>, now=t)
    bus subscribes to core.subscriptions(); its will is core.will(session, t)
    on every (re)connect      publish(core.on_connected(session, t))
    on disconnect             core.on_disconnected(t)
    on every message          publish(core.on_message(topic, payload, t))
    after packets/card polls  publish(core.on_local_events(ct.take_events(), t))
                              (every CtEvent, NEW/UPDATE/DESTROY, in order)
    local traffic             core.aging.note(zone, orig, at) (software hits, card
                              PollResult.active), then once per poll cycle
                              publish(core.touches(t))
    at core.next_deadline()   publish(core.poll(t)) (flush timer, heartbeats,
                              election, resync retries, snapshot frames)
    role changes              core.take_events() (RoleChanged, PeerDown, GateChanged...)

Every frame that does not decode, does not verify, or does not belong on its
topic is counted in stats["bad_messages"] and dropped before it touches state.

The protective mechanisms can be switched off one by one (SyncConfig; negative
controls prove that a scenario's checks can fail):
    replication=False        nothing is said about this node's connections: no
                             ct frames, no deletes; resync requests get an empty
                             (well-formed) snapshot. Heartbeats, the election and
                             touches go on; what peers send is still applied.
    preinstall=False         replicated entries enter conntrack but are not
                             installed in the card (it offloads them on traffic)
    distributed_aging=False  no touch digests are published; received ones are
                             ignored (stats["touches_ignored"])
    readiness_gate=False     the node is eligible before its snapshot completes

And one can be switched on (SyncConfig.defer, seconds; off by default, as in
pfsync): the daemon holds each packet that changed a replicated connection
until a peer acknowledged the frame carrying the change, or `defer` passed
(defer.py). Every member with defer set acknowledges the ct frames it applies
(CtAck on its ack topic), so it is a cluster setting.

    while core.defers():      after a burst whose packets changed connections:
                              publish(core.on_local_events(events, t, urgent=True))
                              then core.hold(flow, packet, t) -> what may leave now
                              (deferrals.hold_behind() for the packets of a flow
                              with packets held)
    core.deferrals            release(t) after an ack came in (Member wakes the
                              daemon) or at next_deadline()
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from node.conntrack.entry import IPS_DYING
from node.conntrack.events import DESTROY, CtEvent
from node.conntrack.table import Conntrack
from syncbus import codec, topics
from syncbus.aging import Aging
from syncbus.defer import Deferrals
from syncbus.election import (
    ACTIVE_STANDBY,
    Election,
    ElectionConfig,
    Event,
    PeerDown,
    SyncFrom,
)
from syncbus.errors import CodecError, TopicError
from syncbus.messages import (
    CtAck,
    CtBatch,
    CtDelete,
    CtFrame,
    Envelope,
    Heartbeat,
    ResyncRequest,
    SnapshotChunk,
    SnapshotEnd,
    SnapshotStart,
    TouchDigest,
)
from syncbus.outbox import (
    DEFAULT_BUDGET,
    DEFAULT_DELAY,
    DEFAULT_HISTORY,
    Outbox,
    Publish,
    SnapshotWriter,
)
from syncbus.replica import (
    RESYNC_RETRY,
    TOMBSTONE_TTL,
    Replica,
    RequestResync,
    SnapshotComplete,
)

REPLICA_TICK = 0.25  # resync retries and tombstone expiry
MAX_DEFER = 1.0  # seconds (pfsync: 20 ms)


@dataclass(frozen=True, slots=True)
class SyncConfig:
    cluster: str
    node: str
    key: bytes | None = None  # cluster key: HMAC on every frame, unauthenticated refused
    priority: int = 100
    preempt: bool = False
    mode: str = ACTIVE_STANDBY
    hb_interval: float = 0.1
    dead_after: float = 0.35
    discover: float = 0.3
    sync_timeout: float = 10.0
    reconnect_grace: float = 5.0
    will_grace: float = 0.0  # a peer's will waits this long for it to reconnect
    step_down_isolated: float = 0.0  # an active unheard by itself this long steps down
    quorum: int = 0  # members (this one included) it must hear to be active; 0: no rule
    witness: bool = False  # a vote in the quorum, never active
    budget: int = DEFAULT_BUDGET
    flush_delay: float = DEFAULT_DELAY
    history_bytes: int = DEFAULT_HISTORY
    tombstone_ttl: float = TOMBSTONE_TTL
    resync_retry: float = RESYNC_RETRY
    snapshot_frames_per_poll: int = 16
    replication: bool = True  # the mechanisms (see the module docstring)
    preinstall: bool = True
    distributed_aging: bool = True
    readiness_gate: bool = True
    defer: float = 0.0  # seconds a changing packet may wait for a peer's ack (0: off)

    def __post_init__(self) -> None:
        if not 0.0 <= self.defer <= MAX_DEFER:
            raise ValueError(f"defer must be 0 (off) .. {MAX_DEFER:g} seconds")
        topics.check_name(self.cluster, "cluster")
        topics.check_name(self.node)
        codec.check_key(self.key)


# What comes back to its sender through its own subscriptions (ct/+, touch/+,
# ack/+), dropped by topic before the decoder (half of a busy active's inbound
# frames). Own heartbeats are decoded: the election times its echo.
_OWN_ECHOES = frozenset({topics.CT, topics.TOUCH, topics.ACK})

_BODY_FOR_KIND: dict[str, tuple[type, ...]] = {
    topics.CT: (CtBatch, CtFrame),
    topics.TOUCH: (TouchDigest,),
    topics.HB: (Heartbeat,),
    topics.ACK: (CtAck,),
    topics.RESYNC_REQ: (ResyncRequest,),
    topics.RESYNC_RESP: (CtBatch, CtFrame, SnapshotStart, SnapshotChunk, SnapshotEnd),
}


class SyncCore:
    def __init__(self, cfg: SyncConfig, ct: Conntrack, card: Any = None, *, epoch: int,
                 now: float) -> None:
        self.cfg = cfg
        self.ct = ct
        self.card = card
        self.epoch = epoch
        if cfg.replication:
            ct.expect.watch()  # masters whose expectations change are republished
        self.aging = Aging()
        self.replica = Replica(cfg.node, epoch, ct, card if cfg.preinstall else None,
                               tombstone_ttl=cfg.tombstone_ttl,
                               resync_retry=cfg.resync_retry,
                               last_seen=self.aging.last_seen)
        self.outbox = Outbox(cfg.cluster, cfg.node, epoch, cfg.key, budget=cfg.budget,
                             delay=cfg.flush_delay, history_bytes=cfg.history_bytes,
                             identity=self.replica.identity)
        self.election = Election(ElectionConfig(
            cfg.node, cfg.priority, cfg.preempt, cfg.mode, cfg.hb_interval, cfg.dead_after,
            cfg.discover, cfg.sync_timeout, cfg.reconnect_grace, cfg.readiness_gate,
            cfg.will_grace, cfg.step_down_isolated, cfg.quorum, cfg.witness), epoch, now)
        self.deferrals: Deferrals[Any] | None = Deferrals(cfg.defer) if cfg.defer else None
        self._events: list[Event] = []
        self._snapshots: deque[SnapshotWriter] = deque()
        self._next_replica_tick = now
        self.stats = {"bad_messages": 0, "messages": 0, "published": 0, "requests": 0,
                      "touches_ignored": 0, "acks_sent": 0, "acks_received": 0, "echoes": 0}
        self.bad_reasons: dict[str, int] = {}

    # ------------------------------------------------------------ wiring
    def subscriptions(self) -> list[str]:
        return topics.subscriptions(self.cfg.cluster, self.cfg.node)

    def will(self, session: int, now: float) -> Publish:
        return self.outbox.will(self._heartbeat_body(now), session, now)

    def on_connected(self, session: int, now: float) -> list[Publish]:
        self._events += self.election.set_connected(True, session, now)
        return self.poll(now)

    def on_disconnected(self, now: float) -> None:
        self._events += self.election.set_connected(False, self.election.session, now)

    def set_fault(self, fault: str | None, now: float) -> list[Publish]:
        """A tracked data link of this node went down (`fault`: which, why) or
        every one is up again (None): the election's FAULT state. What to
        publish at once (the heartbeat that tells the others)."""
        if fault == self.election.fault:
            return []
        out: list[Publish] = []
        self._on_election(self.election.set_fault(fault, now), now, out)
        return out + self.poll(now)

    def take_events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    @property
    def role(self) -> str:
        return self.election.role

    # ------------------------------------------------------------ incoming
    def on_message(self, topic: str, payload: bytes, now: float) -> list[Publish]:
        self.stats["messages"] += 1
        try:
            where = topics.parse(topic)
        except TopicError as exc:
            return self._bad(type(exc).__name__, exc)
        if where.node == self.cfg.node and where.kind in _OWN_ECHOES \
                and where.cluster == self.cfg.cluster:
            self.stats["echoes"] += 1
            return []  # our own ct/touch/ack frames, back through the wildcard: not decoded
        try:
            env = codec.decode(payload, self.cfg.key, lazy=True)
        except CodecError as exc:
            return self._bad(type(exc).__name__, exc)
        if where.cluster != self.cfg.cluster or env.cluster != self.cfg.cluster:
            return self._bad("cluster", None)
        if not isinstance(env.body, _BODY_FOR_KIND[where.kind]):
            return self._bad("body_not_for_topic", None)
        if where.kind == topics.RESYNC_REQ:  # published to the target by the requester
            assert isinstance(env.body, ResyncRequest)
            if env.body.requester != env.origin:
                return self._bad("requester_not_origin", None)
        elif env.origin != where.node:
            return self._bad("origin_not_topic_owner", None)  # a spoofed origin
        if env.origin == self.cfg.node:  # our own frames come back through ct/+ and hb/+
            if where.kind == topics.HB and env.epoch == self.epoch:
                echoed: list[Publish] = []  # (a will confirmed by this echo: its consequences)
                self._on_election(self.election.on_echo(env.sent_at, now), now, echoed)
                return echoed
            return []
        if where.kind == topics.RESYNC_REQ:
            assert isinstance(env.body, ResyncRequest)
            return self._answer(env.body, now) if where.node == self.cfg.node else []
        if where.kind == topics.RESYNC_RESP and where.requester != self.cfg.node:
            return []
        if where.kind == topics.ACK:
            assert isinstance(env.body, CtAck)
            ack = env.body
            if ack.origin == self.cfg.node and ack.epoch == self.epoch \
                    and self.deferrals is not None and ack.seq <= self.outbox.ct_seq:
                self.stats["acks_received"] += 1
                self.deferrals.ack(ack.seq, now - env.sent_at)
            return []
        if where.kind == topics.TOUCH:
            assert isinstance(env.body, TouchDigest)
            if not self.cfg.distributed_aging:
                self.stats["touches_ignored"] += 1
                return []
            self.aging.receive(env.body, now)
            self.aging.apply(self.ct, now, self.card)
            return []
        out: list[Publish] = []
        if where.kind == topics.HB:
            assert isinstance(env.body, Heartbeat)
            self._on_election(self.election.on_heartbeat(env.epoch, env.seq, env.body, now),
                              now, out)
        for action in self.replica.apply(env, now):
            if isinstance(action, RequestResync):
                out.append(self._request(action, now))
            elif isinstance(action, SnapshotComplete):
                self._on_election(self.election.snapshot_complete(action.origin, now), now,
                                  out)
        if self.deferrals is not None and isinstance(env.body, CtBatch | CtFrame):
            out += self._ack(env.origin, env.epoch, now)
        return out

    def _ack(self, origin: str, epoch: int, now: float) -> list[Publish]:
        """Acknowledge `origin`'s ct stream up to the last frame applied without
        a gap (nothing while a gap is open: the resync fills it first)."""
        st = self.replica.origin_state(origin)
        if st is None or st[0] != epoch or st[1] <= 1 or self.replica.gap_open(origin):
            return []
        self.stats["acks_sent"] += 1
        return [self.outbox.ack(CtAck(origin, epoch, st[1] - 1), now)]

    def _bad(self, reason: str, exc: Exception | None) -> list[Publish]:
        self.stats["bad_messages"] += 1
        self.bad_reasons[reason] = self.bad_reasons.get(reason, 0) + 1
        return []

    def _request(self, action: RequestResync, now: float) -> Publish:
        self.stats["requests"] += 1
        env = Envelope(1, self.cfg.cluster, self.cfg.node, self.epoch, 0, now, action.request)
        return Publish(topics.resync_req(self.cfg.cluster, action.origin),
                       codec.encode(env, self.cfg.key))

    def _answer(self, req: ResyncRequest, now: float) -> list[Publish]:
        frames = self.outbox.replay(req)
        if frames is not None:
            return frames
        if any(w.requester == req.requester for w in self._snapshots):
            return []  # one snapshot in flight per requester is enough
        entries = self.ct.entries() if self.cfg.replication else ()
        self._snapshots.append(self.outbox.snapshot(req.requester, entries))
        return self._snapshot_frames(now)

    def _snapshot_frames(self, now: float) -> list[Publish]:
        out: list[Publish] = []
        while self._snapshots and len(out) < self.cfg.snapshot_frames_per_poll:
            frame = self._snapshots[0].next(now)
            if frame is None:
                self._snapshots.popleft()
            else:
                out.append(frame)
        return out

    def _on_election(self, events: list[Event], now: float, out: list[Publish]) -> None:
        for ev in events:
            if isinstance(ev, SyncFrom):
                out.append(self._request(self.replica.request_full(ev.source, ev.epoch, now),
                                        now))
            elif isinstance(ev, PeerDown):
                self.replica.forget_origin(ev.node)
        self._events += events

    # ------------------------------------------------------------ outgoing
    def defers(self) -> bool:
        """Whether packets that change connections are held now: defer is on,
        this node replicates, and a live, ready peer is there to acknowledge."""
        return self.deferrals is not None and self.cfg.replication \
            and self.election.has_ready_peer()

    def hold(self, flow: Hashable, item: Any, now: float) -> list[Any]:
        """Hold `item` (a packet of connection `flow` to transmit) until a peer
        acknowledged every ct frame published so far; what may leave now
        (Deferrals.hold)."""
        assert self.deferrals is not None
        return self.deferrals.hold(self.outbox.ct_seq, flow, item, now)

    def on_local_events(self, events: Iterable[CtEvent], now: float,
                        urgent: bool = False) -> list[Publish]:
        """The engine's events (ct.take_events()): publish what this node's own
        datapath did; drop the echoes of what the replica applied. `urgent`:
        send what is pending now instead of at the flush timer (packets wait
        for it: defer)."""
        ct, outbox, replica = self.ct, self.outbox, self.replica
        for ev in events:
            view = ev.entry
            if ev.type == DESTROY:
                conn = replica.destroyed(view.id)
                self.aging.forget((view.zone, view.orig))
                if conn is not None and self.cfg.replication:
                    outbox.delete(CtDelete(conn, view.orig, view.reply, view.zone), now)
                continue
            if not self.cfg.replication:
                continue
            entry = ct.find(view.orig, view.zone)
            if entry is None or entry.id != view.id:
                continue  # gone since (its DESTROY follows)
            replica.adopt(entry)
            outbox.upsert(entry, now)
        if self.cfg.replication:
            # A helper created an expectation, or a connection took one: the
            # master's record carries its expectations (IPEXP_NEW / _DESTROY).
            for master in ct.expect.take_changed():
                if master.status & IPS_DYING or ct.find(master.orig, master.zone) is not master:
                    continue  # not (or no longer) in the table: its events say so
                replica.adopt(master)
                outbox.upsert(master, now)
        return outbox.flush(now) if urgent else outbox.poll(now)

    def touches(self, now: float) -> list[Publish]:
        """Once per poll cycle: this node's touch digest."""
        touched = self.aging.digest(now)  # (taken either way: it must not grow)
        if not touched or not self.cfg.distributed_aging:
            return []
        return self.outbox.touches(touched, now)

    def _heartbeat_body(self, now: float) -> Heartbeat:
        return self.election.heartbeat(now, len(self.ct), self.outbox.ct_seq)

    def poll(self, now: float) -> list[Publish]:
        out = self.outbox.poll(now)
        self._on_election(self.election.tick(now), now, out)
        if now >= self._next_replica_tick:
            self._next_replica_tick = now + REPLICA_TICK
            for action in self.replica.tick(now):
                if isinstance(action, RequestResync):
                    out.append(self._request(action, now))
        if self.election.heartbeat_due(now):
            hb = self._heartbeat_body(now)  # re-arms the heartbeat timer
            if self.election.connected:
                out.append(self.outbox.heartbeat(hb, now))
        out += self._snapshot_frames(now)
        self.stats["published"] += len(out)
        return out

    def next_deadline(self) -> float:
        t = min(self.election.next_deadline(), self._next_replica_tick)
        d = self.outbox.next_deadline()
        if d is not None:
            t = min(t, d)
        if self._snapshots:
            t = float("-inf")  # frames to send: come back at once
        return t

    def metrics(self) -> dict[str, Any]:
        r, o = self.replica, self.outbox
        return {"role": self.role, "term": self.election.term, "fault": self.election.fault,
                "gate": self.election.gate.state,
                "gate_timed_out": self.election.gate.timed_out, **self.stats,
                "bad_reasons": dict(self.bad_reasons), "replica": dict(r.stats),
                "outbox": dict(o.stats), "aging": dict(self.aging.stats),
                "ct_seq": o.ct_seq, "install_latency_samples": len(r.install_latency),
                **({"defer": self.deferrals.summary()} if self.deferrals is not None else {})}


__all__ = ["SyncConfig", "SyncCore"]
