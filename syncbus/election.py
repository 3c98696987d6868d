"""Roles, pure: active-standby election, the readiness gate, active-active ownership.

Active-standby (VRRP's rules, with pfsync's gate and a fencing term):
  - every member heartbeats every `hb_interval` (100 ms); a peer unheard for
    `dead_after` is dead, and its MQTT will (role offline) kills it as soon as
    a heartbeat this member sent after the will has come back through the
    broker: a broker shutting down publishes the wills of live members, then
    drops every connection (what it forwards in between was sent before); a
    will within `reconnect_grace` of this member's reconnect (or of a stall)
    only ends the peer's session, unless the peer has been heard since; with
    `will_grace`, a will also waits that long for the peer to reconnect (a
    heartbeat from a later connection cancels it): a flap of a member's MQTT
    connection shorter than that moves no role, and a kill -9 costs that much
    more (0, the default: the will acts at once; at most `dead_after`, after
    which the peer's silence decides anyway);
  - with no live active, the best eligible member takes over: highest
    priority, then the node name (deterministic, so all agree); a member that
    has just become eligible first lets two heartbeats pass (a cold start);
  - preempt on: an eligible member of higher priority than the active takes
    over; preempt off: an active stays while it lives;
  - each takeover starts a new term (the highest term ever seen + 1); an
    active that sees another active with a higher (term, priority, name) steps
    down at once: the term fences an old active that returns (SIGSTOP,
    partition);
  - a member whose data path is down (a tracked link: the node's ports)
    is in FAULT, as VRRP's track_interface puts it: it gives up the active
    role at once, is no candidate, and its heartbeats say so, so that the
    best standby takes over; once the link is back it is a standby again (and
    preempts if it may);
  - with `step_down_isolated` (0, the default: never; else at least
    `dead_after`), an active whose own heartbeats have not come back through
    the broker for that long (its link to the broker cut, or the broker
    stalled or gone) gives the role up: a member cut off from the cluster
    stops claiming it, as a partition minority does under a quorum rule. The
    split brain of a cut then lasts until that, not until the heal; the price
    is a broker outage longer than that, which leaves no member active until
    the broker is back (the best member then takes over with a new term);
  - with a quorum of q members (0, the default: no quorum rule; corosync's
    expected votes), a member holds or takes the active role only while it
    hears q members, itself included, and its own heartbeats come back through
    the broker within `dead_after`: the side of a partition that hears fewer
    (a bridge cut between two sites, an active cut off from its broker) has no
    active, so no partition makes two. A peer's vote lapses `dead_after` after
    its last heartbeat. An active that loses the quorum gives the role up at
    once and, as after `step_down_isolated`, takes it again only once it has
    heard every live peer anew; a takeover waits a heartbeat interval after the
    death it follows (_not_yet()). A witness (`witness`: never a
    candidate, no data path needed) is the odd vote of a two-node cluster. The
    price: a broker stall or outage longer than `dead_after`, or the loss of
    all but fewer than q members, leaves the cluster without an active;
  - no promotion while the bus is down (the node cannot see the others), and
    no peer is declared dead meanwhile; once back, peers get `reconnect_grace`
    to reappear (a broker restart is not the active's death). "Down" includes a
    stalled broker: a member that does not get its own heartbeat back within
    `dead_after` trusts nobody's silence. A silence counts only once a
    heartbeat this member sent after it had lasted `dead_after` (a probe, sent
    at that moment) is back, and a pause in its own heartbeats' return does not
    count towards anybody's silence: a broker that stalls just after this
    member's heartbeat came back (and just before a peer's) kills nobody.

Readiness gate (a joining node must not become active half-empty):
  DISCOVERING for `discover` seconds (retained heartbeats arrive), then
  SYNCING from the active (or the ready peer with the largest table) until its
  full snapshot completes, then READY. With no peer holding state, READY at once
  ("nothing to sync"). If the source dies, another one is picked; if it only
  goes quiet (a timeout, no will: a stall, a partition, a broker backlog) and no
  other peer holds state, the gate keeps waiting and asks again when the source
  is heard: a node never takes over empty from a peer that may be alive. The wait is
  bounded and visible: after `sync_timeout` the gate reports timed_out; the node
  then becomes eligible only if no other live member is (it never pretends the
  transfer was fine, and it never leaves the cluster without an active).
  With readiness_gate off (a negative control) the node is eligible from the
  start: it still syncs, but may take the active role before the snapshot is
  complete (the gate's state still tells how far the sync is).

Active-active: every ready member is active; a flow belongs to one member by
rendezvous hashing of its direction-normalised tuple (owner_of()), so the
original and the reply direction (an asymmetric path) name the same owner.

The shell feeds heartbeats (on_heartbeat), snapshot completion
(snapshot_complete) and time (tick); it publishes heartbeat() when
heartbeat_due(), and acts on the returned events.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from node.conntrack.tuple import Tuple
from syncbus.messages import (
    ROLE_ACTIVE,
    ROLE_FAULT,
    ROLE_JOINING,
    ROLE_OFFLINE,
    ROLE_STANDBY,
    ROLE_WITNESS,
    Heartbeat,
)

ACTIVE_STANDBY = "active-standby"
ACTIVE_ACTIVE = "active-active"

MAX_QUORUM = 64  # members; far above any cluster ctlab runs

DISCOVERING = "discovering"
SYNCING = "syncing"
READY = "ready"


@dataclass(frozen=True, slots=True)
class ElectionConfig:
    node: str
    priority: int = 100  # 0..255
    preempt: bool = False
    mode: str = ACTIVE_STANDBY
    hb_interval: float = 0.1
    dead_after: float = 0.35  # 3 heartbeats + skew, VRRP style
    discover: float = 0.3  # time to collect retained heartbeats before choosing a source
    sync_timeout: float = 10.0  # the readiness gate's bound
    reconnect_grace: float = 5.0  # after a bus outage, peers get this long to reappear
    # (a restarted broker takes 1-2 s to listen, and each member its reconnect backoff)
    readiness_gate: bool = True  # False (a negative control): eligible at once
    will_grace: float = 0.0  # a will waits this long for its peer to reconnect
    step_down_isolated: float = 0.0  # an active unheard by itself this long steps down
    quorum: int = 0  # members (this one included) it must hear to be active; 0: no rule
    witness: bool = False  # a vote in the quorum, never active

    def __post_init__(self) -> None:
        if not 0 <= self.priority <= 255:
            raise ValueError("priority must be 0..255")
        if self.mode not in (ACTIVE_STANDBY, ACTIVE_ACTIVE):
            raise ValueError(f"mode must be {ACTIVE_STANDBY} or {ACTIVE_ACTIVE}")
        if not 0 < self.hb_interval < self.dead_after:
            raise ValueError("need 0 < hb_interval < dead_after")
        if self.discover < 0 or self.sync_timeout <= 0:
            raise ValueError("discover must be >= 0 and sync_timeout > 0")
        if not 0 <= self.will_grace <= self.dead_after:
            raise ValueError("need 0 <= will_grace <= dead_after (beyond it the silence "
                             "decides)")
        if self.step_down_isolated and not self.step_down_isolated >= self.dead_after:
            raise ValueError("step_down_isolated must be 0 (never) or at least dead_after "
                             "(a shorter stall of the broker moves no role)")
        if not 0 <= self.quorum <= MAX_QUORUM:
            raise ValueError(f"quorum must be 0 (no quorum rule) .. {MAX_QUORUM}")


# ---------------------------------------------------------------- events
class RoleChanged(NamedTuple):
    old: str
    new: str
    term: int
    reason: str


class PeerDown(NamedTuple):
    node: str
    reason: str  # "will" or "timeout"
    was_active: bool


class PeerUp(NamedTuple):
    node: str


class SyncFrom(NamedTuple):
    """Ask `source` for a full snapshot (Replica.request_full)."""

    source: str
    epoch: int


class GateChanged(NamedTuple):
    state: str  # DISCOVERING, SYNCING, READY
    reason: str
    timed_out: bool


Event = RoleChanged | PeerDown | PeerUp | SyncFrom | GateChanged


@dataclass
class Peer:
    node: str
    epoch: int
    hb: Heartbeat
    heard_at: float
    alive: bool = True
    hb_seq: int = 0
    will_session: int = -1  # the session a will declared dead (-1: none)
    pending_will: Heartbeat | None = None  # a will not confirmed yet (on_echo)
    will_at: float = float("-inf")  # when pending_will came (will_grace counts from it)
    quiet: bool = False  # declared dead by silence (a timeout), not by its will
    beat_at: float = float("-inf")  # its last heartbeat (a grace moves heard_at, not this)

    @property
    def rank(self) -> tuple[int, int, str]:
        return (self.hb.term, self.hb.priority, self.node)


@dataclass
class Gate:
    state: str = DISCOVERING
    since: float = 0.0
    source: str | None = None
    reason: str = "waiting for peers' heartbeats"
    timed_out: bool = False
    stalled: bool = False  # the source went quiet mid-transfer: ask again when it is back
    history: list[tuple[float, str, str]] = field(default_factory=list)


class Election:
    def __init__(self, cfg: ElectionConfig, epoch: int, now: float) -> None:
        self.cfg = cfg
        self.epoch = epoch
        self.role = ROLE_JOINING
        self.term = 0
        self.peers: dict[str, Peer] = {}
        self.gate = Gate(since=now)
        self.connected = True
        self.session = 0
        self._next_hb = now
        self._started = now
        self._eligible_since = float("inf")
        self._echo_at = now  # our own last heartbeat seen back through the bus
        self._echo_sent = float("-inf")  # when that heartbeat was sent (our clock)
        self._hb_sent = float("-inf")  # when our last heartbeat left
        self.fault: str | None = None  # why a tracked data link is down (FAULT), or None
        # The highest term any heartbeat or will has carried (every peer's included):
        # a takeover goes above it. (A will carries the term of the moment its
        # connection was made, often lower than the one its node reached since: it
        # must not lower the bar.)
        self._term_seen = 0
        # When the last will of a live peer came: it takes effect once a heartbeat
        # we sent after it is back (the broker still works after the will).
        self._will_at = float("-inf")
        self._isolated_at = float("-inf")  # when we last gave the role up, cut off
        self._quorate_since = float("inf")  # with a quorum rule: since when we have it
        self._lost_at = float("-inf")  # when we last declared a peer dead
        self._wait_end = float("inf")  # (quorum) the end of a takeover's wait, pending
        # with a quorum rule: each time it was lost or regained (time, quorate, why)
        self.quorum_log: deque[tuple[float, bool, str]] = deque(maxlen=64)
        self._grace_until = float("-inf")  # the end of the last reconnect grace
        self._grace_from = float("-inf")  # and its start
        self.transitions: list[tuple[float, RoleChanged]] = []
        # Wills of live peers: received; taken (the peer's death); withdrawn (it
        # reconnected first, within will_grace); voided (our own connection went
        # down first: the broker going down publishes the wills of live members).
        # A will that the peer's silence overtook (dead_after ran out first) is
        # only received: that death is a timeout.
        self.wills = dict.fromkeys(("received", "taken", "withdrawn", "voided"), 0)

    # ------------------------------------------------------------ inputs
    def set_connected(self, connected: bool, session: int, now: float) -> list[Event]:
        """The bus went down or came back. While it is down nobody can be heard,
        so nobody is declared dead; when it is back, peers that were alive get
        `reconnect_grace` to reconnect too (a broker restart must not look like
        the active's death: only a peer that stays silent after it is dead)."""
        was = self.connected
        first = connected and self.session == 0
        if not connected:  # a will not confirmed yet was the broker going down
            for p in self.peers.values():
                if p.pending_will is not None:
                    self.wills["voided"] += 1
                p.pending_will = None
        self.connected = connected
        self.session = session
        if first and self.gate.state == DISCOVERING:
            self._started = now  # retained heartbeats arrive from the first connection on
        if connected:
            self._next_hb = now  # announce ourselves at once on (re)connect
            if not was:
                self._grace(now)
            self._echo_at = now
        return self.tick(now)

    def set_fault(self, fault: str | None, now: float) -> list[Event]:
        """A tracked data link went down (`fault` says which and why) or every
        one is up again (None)."""
        self.fault = fault
        return self.tick(now)

    def on_echo(self, sent_at: float, now: float) -> list[Event]:
        """Our own heartbeat, sent at `sent_at` (our clock: its envelope's), came
        back through the broker: the bus works. (A broker that stalls keeps
        connections open but forwards nothing: without our own echo we declare
        nobody dead and promote nobody.) One sent after a pending will confirms
        it."""
        gap = now - self._echo_at
        if gap > self.cfg.dead_after:
            self._grace(now)  # the bus was stalled: peers could not be heard either
        elif gap > 2 * self.cfg.hb_interval:
            # a shorter stall (of the broker, or of this process): what peers sent
            # meanwhile is still on its way, so their silence stops for as long
            stalled = gap - self.cfg.hb_interval
            for p in self.peers.values():
                if p.alive:
                    p.heard_at = min(p.heard_at + stalled, now)
        self._echo_at = now
        self._echo_sent = max(self._echo_sent, sent_at)
        dead_after = self.cfg.dead_after
        if any(p.pending_will is not None or (p.alive and now - p.heard_at > dead_after)
               for p in self.peers.values()):
            return self.tick(now)
        return []

    def bus_ok(self, now: float) -> bool:
        return self.connected and now - self._echo_at <= self.cfg.dead_after

    def _grace(self, now: float) -> None:
        self._grace_from = now
        self._grace_until = now + self.cfg.reconnect_grace
        grace = now + self.cfg.reconnect_grace - self.cfg.dead_after
        for p in self.peers.values():
            if p.alive:
                p.heard_at = max(p.heard_at, grace)

    def on_heartbeat(self, origin_epoch: int, seq: int, hb: Heartbeat,
                     now: float) -> list[Event]:
        """A heartbeat (seq > 0) or a will (seq 0, role offline) from a peer."""
        if hb.node == self.cfg.node:
            return []
        out: list[Event] = []
        p = self.peers.get(hb.node)
        if p is not None and origin_epoch < p.epoch:
            return []  # an old incarnation (a late retained will): fenced
        if p is None or origin_epoch > p.epoch:
            was_alive = p is not None and p.alive
            p = self.peers[hb.node] = Peer(hb.node, origin_epoch, hb, now, alive=False)
            if was_alive:
                p.alive = True
        self._term_seen = max(self._term_seen, hb.term)
        if seq == 0 or hb.role == ROLE_OFFLINE:
            if p.hb.session > hb.session and p.hb.role != ROLE_OFFLINE:
                return []  # the will of an earlier connection: the node reconnected
            p.will_session = max(p.will_session, hb.session)
            if not p.alive:
                p.hb = hb
                return out + self.tick(now)
            if now < self._grace_until and p.beat_at <= self._grace_from:
                # Just back on the bus (a broker restart): a will now may be the
                # broker's doing (restored, retained) for a peer that is reconnecting
                # too. It stays alive for the rest of the grace, unless heard from a
                # later connection; its old session's heartbeats no longer count.
                # (A peer heard since, on the session the will is for, was alive on
                # this broker: its will is its death, as outside the grace.)
                return out
            # A live peer's will takes effect (tick()) once a heartbeat sent after
            # it is back: a broker shutting down publishes the wills of members that
            # are alive, then drops every connection. (Mosquitto forwards what it
            # had queued after the wills: an echo of a heartbeat sent before the
            # will proves nothing.) The probe leaves now; our own disconnect
            # cancels the will.
            if p.pending_will is None:  # (a duplicate does not restart its grace)
                self.wills["received"] += 1
                p.will_at = now
            p.pending_will = hb
            self._will_at = now
            self._next_hb = min(self._next_hb, now)
            return out + self.tick(now)
        if seq <= p.hb_seq:
            return []  # a replayed or reordered heartbeat
        if hb.session <= p.will_session:
            return []  # sent before the connection whose will we already took
        p.hb_seq = seq
        p.hb = hb
        p.heard_at = p.beat_at = now
        if p.pending_will is not None:  # heard from a later connection: it reconnected
            self.wills["withdrawn"] += 1
            p.pending_will = None
        if not p.alive:
            p.alive, p.quiet = True, False
            out.append(PeerUp(p.node))
        return out + self.tick(now)

    def snapshot_complete(self, source: str, now: float) -> list[Event]:
        g = self.gate
        if g.state == SYNCING and source == g.source:
            return [self._gate(READY, f"snapshot from {source} complete", now), *self.tick(now)]
        return []

    # ------------------------------------------------------------ time
    def tick(self, now: float) -> list[Event]:
        out: list[Event] = []
        if now >= self._wait_end:
            self._wait_end = float("inf")  # (_decide() below may take the role now)
        bus_ok = self.bus_ok(now)
        confirmed = self._echo_sent > self._will_at
        will_grace = self.cfg.will_grace
        for p in self.peers.values():
            if p.pending_will is not None and confirmed and bus_ok \
                    and now - p.will_at >= will_grace:
                out.append(PeerDown(p.node, "will", p.hb.role == ROLE_ACTIVE))
                self._lost(now)
                p.alive, p.hb, p.pending_will = False, p.pending_will, None
                self.wills["taken"] += 1
            if p.alive and now - p.heard_at > self.cfg.dead_after:
                # silent long enough: dead once a heartbeat we sent since is back
                silent = p.heard_at + self.cfg.dead_after
                if bus_ok and self._echo_sent >= silent:
                    p.alive, p.quiet, p.pending_will = False, True, None
                    out.append(PeerDown(p.node, "timeout", p.hb.role == ROLE_ACTIVE))
                    self._lost(now)
                elif self._hb_sent < silent:
                    self._next_hb = min(self._next_hb, now)  # the probe leaves now
        out += self._gate_step(now)
        out += self._decide(now)
        return out

    def _lost(self, now: float) -> None:
        self._lost_at = now
        if self.cfg.quorum:
            self._wait_end = now + self.cfg.hb_interval  # (see _not_yet())

    def next_deadline(self) -> float:
        """The next time tick() or heartbeat() has something to do."""
        t = min(self._next_hb, self._wait_end)
        if self.role == ROLE_ACTIVE and self.cfg.step_down_isolated:
            t = min(t, self._echo_at + self.cfg.step_down_isolated)  # (then tick() decides)
        if self.role == ROLE_ACTIVE and self.cfg.quorum:
            t = min(t, self._echo_at + self.cfg.dead_after)  # (then quorate() fails)
        if self.connected and self._echo_at + self.cfg.dead_after > t:
            for p in self.peers.values():
                # until its probe has left (then on_echo() decides)
                if p.alive and self._hb_sent < p.heard_at + self.cfg.dead_after:
                    t = min(t, p.heard_at + self.cfg.dead_after)
        if self.cfg.will_grace:
            for p in self.peers.values():
                if p.pending_will is not None:  # its grace ends (then tick() decides)
                    t = min(t, p.will_at + self.cfg.will_grace)
        g = self.gate
        if g.state == DISCOVERING:
            t = min(t, self._started + self.cfg.discover)
        elif g.state == SYNCING and not g.timed_out:
            t = min(t, g.since + self.cfg.sync_timeout)
        return t

    def heartbeat_due(self, now: float) -> bool:
        return now >= self._next_hb

    def heartbeat(self, now: float, table_size: int, ct_seq: int) -> Heartbeat:
        self._next_hb = now + self.cfg.hb_interval
        self._hb_sent = now
        return Heartbeat(self.cfg.node, self.role, self.cfg.priority, self.term,
                         self.gate.state == READY, table_size, ct_seq, self.session)

    # ------------------------------------------------------------ readiness gate
    def _gate(self, state: str, reason: str, now: float, source: str | None = None) -> GateChanged:
        g = self.gate
        g.state, g.reason, g.since, g.source = state, reason, now, source
        g.history.append((now, state, reason))
        return GateChanged(state, reason, g.timed_out)

    def _gate_step(self, now: float) -> list[Event]:
        g = self.gate
        if g.state == READY:
            return []
        if g.state == DISCOVERING:
            if now - self._started < self.cfg.discover:
                return []
            return self._pick_source(now, "")
        source = self.peers.get(g.source or "")
        if source is not None and source.alive and g.stalled:
            g.stalled = False
            g.history.append((now, SYNCING, f"{source.node} is heard again: asking again"))
            return [SyncFrom(source.node, source.epoch)]
        if source is not None and not source.alive and source.quiet \
                and source.hb.table_size > 0 and not self._holders(exclude=source.node):
            # The source went quiet without its will: a stall, a partition, a broker
            # backlog; it did not leave, and its table lives on. A half-filled gate
            # must not call that "nothing to sync" and take over empty: it waits
            # (still bounded by sync_timeout) and asks again when the source is back.
            if not g.stalled:
                g.stalled = True
                g.history.append((now, SYNCING, f"source {source.node} went quiet: waiting"))
        elif source is None or not source.alive:
            return self._pick_source(now, f"source {g.source} is gone; ")
        if not g.timed_out and now - g.since >= self.cfg.sync_timeout:
            g.timed_out = True
            g.history.append((now, SYNCING, "timed out"))
            return [GateChanged(SYNCING, f"no complete snapshot from {g.source} after "
                                f"{self.cfg.sync_timeout:g} s", True)]
        return []

    def _holders(self, exclude: str = "") -> list[Peer]:
        """Live, ready peers holding state (snapshot sources)."""
        return [p for p in self.peers.values()
                if p.alive and p.hb.ready and p.hb.table_size > 0 and p.node != exclude]

    def _pick_source(self, now: float, why: str) -> list[Event]:
        live = [p for p in self.peers.values() if p.alive]
        actives = [p for p in live if p.hb.role == ROLE_ACTIVE]
        holders = self._holders()
        if actives:
            src = max(actives, key=lambda p: p.rank)
        elif holders:
            src = max(holders, key=lambda p: (p.hb.table_size, p.node))
        else:
            return [self._gate(READY, why + "no peer holds state: nothing to sync", now)]
        return [self._gate(SYNCING, why + f"bulk sync from {src.node}", now, src.node),
                SyncFrom(src.node, src.epoch)]

    def eligible(self) -> bool:
        g = self.gate
        if g.state == READY or not self.cfg.readiness_gate:
            return True
        if not g.timed_out:
            return False
        # the bound expired: eligible only when nobody else is
        return not self.has_ready_peer()

    def has_ready_peer(self) -> bool:
        """A live peer that is ready, not going offline and no witness is there."""
        return any(p.alive and p.hb.ready and p.hb.role not in (ROLE_OFFLINE, ROLE_WITNESS)
                   for p in self.peers.values())

    def votes(self, now: float) -> int:
        """The members this one hears, itself included (witnesses, joining
        members and members in FAULT vote too). A peer silent for `dead_after`
        no longer votes, though it is dead only once our probe is back: peers cut
        off together are declared dead one by one, and the first death must not
        be weighed against the votes of the others (found by the bridge cut with
        a witness: b took the role on a's death, w's vote still counted, and gave
        it up 1 ms later, at w's)."""
        limit = now - self.cfg.dead_after
        return 1 + sum(p.alive and p.heard_at > limit for p in self.peers.values())

    def quorate(self, now: float) -> bool:
        """May this member hold the active role: always without a quorum rule;
        with one, while it hears `quorum` members and its own heartbeats come
        back through the broker within `dead_after` (a member cut off from the
        broker hears nobody, whatever it last knew)."""
        return not self._no_quorum(now)

    def _no_quorum(self, now: float) -> str:
        """Why this member lacks the quorum, or "" (it has it, or there is no rule)."""
        if not self.cfg.quorum:
            return ""
        if not self.connected:
            return "no quorum: not connected to the broker"
        if now - self._echo_at >= self.cfg.dead_after:
            return ("no quorum: none of our heartbeats came back for "
                    f"{now - self._echo_at:.2f} s")
        if self.votes(now) < self.cfg.quorum:
            return f"no quorum: {self._heard(now)}"
        return ""

    def _heard(self, now: float) -> str:
        return f"{self.votes(now)} heard, {self.cfg.quorum} needed"

    # ------------------------------------------------------------ roles
    def _set_role(self, role: str, now: float, reason: str) -> list[Event]:
        if role == self.role:
            return []
        ev = RoleChanged(self.role, role, self.term, reason)
        self.role = role
        self.transitions.append((now, ev))
        self._next_hb = now  # tell everyone at once
        return [ev]

    def _max_term(self) -> int:
        return max(self.term, self._term_seen)

    def _decide(self, now: float) -> list[Event]:
        no_quorum = self._no_quorum(now)
        if no_quorum:
            if self._quorate_since != float("inf") or not self.quorum_log:
                self.quorum_log.append((now, False, no_quorum))
            self._quorate_since = float("inf")
        elif self._quorate_since == float("inf"):
            self._quorate_since = now
            if self.cfg.quorum:
                self.quorum_log.append((now, True, self._heard(now)))
        eligible = self.eligible()
        if not eligible:
            self._eligible_since = float("inf")
        elif self._eligible_since == float("inf"):
            self._eligible_since = now
        if self.cfg.witness:
            return self._set_role(ROLE_WITNESS, now, "a witness: a vote, never active")
        if self.fault is not None:
            return self._set_role(ROLE_FAULT, now, f"data link down: {self.fault}")
        if self.cfg.mode == ACTIVE_ACTIVE:
            if eligible and no_quorum:
                return self._set_role(ROLE_STANDBY, now, no_quorum)
            return self._set_role(ROLE_ACTIVE if eligible else ROLE_JOINING, now,
                                  "active-active: every ready member forwards")
        me = (self.term, self.cfg.priority, self.cfg.node)
        live = [p for p in self.peers.values() if p.alive]
        actives = [p for p in live if p.hb.role == ROLE_ACTIVE]
        best = max(actives, key=lambda p: p.rank) if actives else None
        if self.role == ROLE_ACTIVE:
            if best is not None and best.rank > me:
                return self._set_role(ROLE_STANDBY, now,
                                      f"fenced by {best.node} (term {best.hb.term})")
            isolated = self.cfg.step_down_isolated
            if isolated and now - self._echo_at >= isolated:
                self._isolated_at = now
                return self._set_role(ROLE_STANDBY, now, "isolated: none of our heartbeats "
                                      f"came back for {now - self._echo_at:.2f} s")
            if no_quorum:
                self._isolated_at = now
                return self._set_role(ROLE_STANDBY, now, no_quorum)
            return []
        if not eligible:
            return self._set_role(ROLE_JOINING, now, self.gate.reason)
        if not self.bus_ok(now):
            return self._set_role(ROLE_STANDBY, now, "bus down or stalled: no promotion")
        if best is not None:
            if self.cfg.preempt and self.cfg.priority > best.hb.priority:
                return self._promote(now, f"preempting {best.node} "
                                          f"(priority {self.cfg.priority} > {best.hb.priority})")
            return self._set_role(ROLE_STANDBY, now, f"{best.node} is active")
        if any(p.beat_at < self._isolated_at for p in live):
            # what we knew of them is from before we were cut off: one of them may
            # have taken the role meanwhile (its heartbeat is on its way)
            return self._set_role(ROLE_STANDBY, now, "isolated: waiting to hear every "
                                                     "peer again")
        if live and now - self._eligible_since < 2 * self.cfg.hb_interval:
            # just became eligible (a cold start): let the peers hear that first,
            # so that every member compares the same candidates
            return self._set_role(ROLE_STANDBY, now, "settling")
        rivals = [p for p in live if p.hb.ready and p.hb.role == ROLE_STANDBY]
        mine = (self.cfg.priority, self.cfg.node)
        if any((p.hb.priority, p.node) > mine for p in rivals):
            return self._set_role(ROLE_STANDBY, now, "a better standby will take over")
        return self._promote(now, "no live active")

    def _promote(self, now: float, reason: str) -> list[Event]:
        if self.cfg.quorum:
            why = self._no_quorum(now) or self._not_yet(now)
            if why:
                return self._set_role(ROLE_STANDBY, now, why)
        self.term = self._max_term() + 1
        return self._set_role(ROLE_ACTIVE, now, reason)

    def _not_yet(self, now: float) -> str:
        """Why a quorate member may not take the role yet (with a quorum rule),
        or "". The active's side of a partition gives the role up when its
        votes lapse, `dead_after` after the last heartbeats that crossed; this
        side declares the active dead `dead_after` after the active's last one
        crossed (and a probe), and the two can be a heartbeat interval apart. So
        a takeover waits a heartbeat interval after the last death; by then the
        vote of a member across the partition has lapsed too (votes())."""
        if now - self._quorate_since < self.cfg.dead_after:
            # Just quorate (a partition healed, a broker back): the member that
            # holds the role may not have been heard yet (the first heartbeat to
            # arrive was the witness's); every reachable one is within dead_after.
            return "quorum regained: hearing every member first"
        if now - self._lost_at < self.cfg.hb_interval:
            return "quorum: a heartbeat interval after the last death first"
        return ""

    # ------------------------------------------------------------ inspection
    def members(self) -> list[str]:
        """Live, ready members including this one, sorted (active-active owners);
        not those in FAULT (their data path is down), nor witnesses."""
        out = [p.node for p in self.peers.values()
               if p.alive and p.hb.ready and p.hb.role not in (ROLE_FAULT, ROLE_WITNESS)]
        if self.eligible() and self.fault is None and not self.cfg.witness:
            out.append(self.cfg.node)
        return sorted(out)

    def active(self) -> str | None:
        """The node this one believes is active (active-standby)."""
        if self.role == ROLE_ACTIVE:
            return self.cfg.node
        actives = [p for p in self.peers.values() if p.alive and p.hb.role == ROLE_ACTIVE]
        return max(actives, key=lambda p: p.rank).node if actives else None


# ---------------------------------------------------------------- active-active
def flow_key(orig: Tuple, zone: int) -> bytes:
    """The direction-normalised key of a connection: the same for its original
    and its reply tuple when there is no NAT (an asymmetric path sees either)."""
    a = orig.src + orig.sport.to_bytes(2, "big")
    b = orig.dst + orig.dport.to_bytes(2, "big")
    lo, hi = (a, b) if a <= b else (b, a)
    return bytes((orig.family, orig.proto)) + zone.to_bytes(2, "big") + lo + hi


def owner_of(orig: Tuple, zone: int, members: Sequence[str] | Iterable[str]) -> str | None:
    """Rendezvous (highest random weight) hashing: every member computes the
    same owner, and a member leaving moves only its own flows."""
    key = flow_key(orig, zone)
    best, best_score = None, b""
    for m in members:
        score = hashlib.blake2b(key, digest_size=8, key=m.encode()[:64]).digest()
        if best is None or score > best_score:
            best, best_score = m, score
    return best


__all__ = ["ACTIVE_ACTIVE", "ACTIVE_STANDBY", "DISCOVERING", "READY", "SYNCING", "Election",
           "ElectionConfig", "Event", "Gate", "GateChanged", "Peer", "PeerDown", "PeerUp",
           "RoleChanged", "SyncFrom", "flow_key", "owner_of"]
