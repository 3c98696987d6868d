"""Roles: heartbeats and priorities, preempt, the will, terms that fence a
returning active, the readiness gate, and active-active ownership."""

from __future__ import annotations

import pytest

from node.conntrack.tuple import Tuple
from syncbus.election import (
    ACTIVE_ACTIVE,
    READY,
    SYNCING,
    Election,
    ElectionConfig,
    GateChanged,
    PeerDown,
    RoleChanged,
    SyncFrom,
    flow_key,
    owner_of,
)
from syncbus.messages import Heartbeat

T0 = 100.0


class Cluster:
    """Elections wired together by a perfect, instant heartbeat network."""

    def __init__(self) -> None:
        self.nodes: dict[str, Election] = {}
        self.seqs: dict[str, int] = {}
        self.epochs: dict[str, int] = {}
        self.down: set[str] = set()  # paused / partitioned: neither sends nor receives
        self.cut: set[str] = set()  # running, but cut off the broker: its heartbeats are lost
        self.mute: set[str] = set()  # its heartbeats are lost, it still hears the others
        self.stalled = False  # the broker forwards nothing (connections stay up)
        # a partition between sites (a bridge cut): heartbeats reach the own side only
        self.side: dict[str, int] = {}
        self.held: list[tuple[str, float]] = []  # heartbeats it took meanwhile: (node, sent)
        self.now = T0
        self.events: list[tuple[str, object]] = []

    def add(self, name: str, epoch: int = 1, **cfg: object) -> Election:
        e = Election(ElectionConfig(name, **cfg), epoch, self.now)  # type: ignore[arg-type]
        self.nodes[name] = e
        self.epochs[name] = epoch
        return e

    def beat(self, name: str) -> None:
        e = self.nodes[name]
        self.seqs[name] = self.seqs.get(name, 0) + 1
        hb = e.heartbeat(self.now, 10 if e.role == "active" else 0, 0)
        if self.stalled:
            self.held.append((name, self.now))
            return  # the broker accepts it and forwards nothing
        # its own heartbeat comes back through the broker (a pending will takes effect)
        self.events += [(name, ev) for ev in e.on_echo(self.now, self.now)]
        for other, o in self.nodes.items():
            if other != name and other not in self.down and other not in self.cut \
                    and self.side.get(other, 0) == self.side.get(name, 0):
                self.events += [(other, ev) for ev in
                                o.on_heartbeat(self.epochs[name], self.seqs[name], hb, self.now)]

    def run(self, seconds: float, step: float = 0.01) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = round(self.now + step, 6)
            for name, e in self.nodes.items():
                if name in self.down:
                    continue
                self.events += [(name, ev) for ev in e.tick(self.now)]
                for ev in self.events:
                    if ev[0] == name and isinstance(ev[1], SyncFrom):
                        self.events.remove(ev)
                        self.events += [(name, x) for x in
                                        e.snapshot_complete(ev[1].source, self.now)]
                if e.heartbeat_due(self.now):
                    if name in self.cut or name in self.mute:
                        e.heartbeat(self.now, 0, 0)  # lost on the way
                    else:
                        self.beat(name)

    def will(self, name: str, session: int = 0, term: int | None = None) -> None:
        """The broker publishes `name`'s will: the heartbeat it registered when
        it connected (its term then, unless `term` is given), role offline."""
        e = self.nodes.pop(name)
        hb = Heartbeat(name, "offline", e.cfg.priority, e.term if term is None else term,
                       False, 0, 0, session)
        for other, o in self.nodes.items():
            self.events += [(other, ev) for ev in o.on_heartbeat(self.epochs[name], 0, hb,
                                                                 self.now)]

    def roles(self) -> dict[str, str]:
        return {n: e.role for n, e in self.nodes.items()}


def test_a_lone_node_becomes_active_after_discovery() -> None:
    c = Cluster()
    a = c.add("a")
    c.run(0.25)
    assert a.role == "joining" and a.gate.state == "discovering"
    c.run(0.1)
    assert a.role == "active" and a.term == 1
    assert a.gate.state == READY and "nothing to sync" in a.gate.reason


def test_the_highest_priority_wins_and_others_stand_by() -> None:
    c = Cluster()
    c.add("a", priority=100)
    c.add("b", priority=200)
    c.add("c", priority=150)
    c.run(1.0)
    assert c.roles() == {"a": "standby", "b": "active", "c": "standby"}


def test_the_will_makes_the_best_standby_take_over_at_once() -> None:
    c = Cluster()
    c.add("a", priority=200)
    c.run(1.0)
    c.add("b", priority=100)
    c.add("c", priority=150)
    c.run(1.0)
    term = c.nodes["a"].term
    c.will("a")  # kill -9: the broker publishes a's will
    assert c.roles() == {"b": "standby", "c": "standby"}  # the broker is not confirmed yet
    c.run(0.011)  # c's probe heartbeat, sent after the will, is back: the broker works
    assert c.roles() == {"b": "standby", "c": "active"}
    assert c.nodes["c"].term == term + 1
    assert any(isinstance(ev, PeerDown) and ev.reason == "will" and ev.was_active
               for _, ev in c.events)


def test_a_will_with_the_term_of_its_connection_does_not_lower_the_next_term() -> None:
    """The active's broker link is cut for a moment (a partition, not a
    death): its will, registered when it connected as a joiner (term 0),
    makes b take over; the takeover's term must still be above the one a
    reached, so that a, back on the broker and still active, is fenced
    instead of fencing b by its priority. (ctlab chaos --seed 23 on local:
    a took the role back and the failover took 8.4 s instead of 0.1 s.)"""
    c = Cluster()
    a = c.add("a", priority=200)
    c.run(1.0)
    c.add("b", priority=100)
    c.run(1.0)
    assert a.role == "active" and a.term == 1
    saved = c.nodes["a"]
    c.will("a", term=0)  # the broker publishes the will registered at a's connect
    c.run(0.011)
    assert c.nodes["b"].role == "active" and c.nodes["b"].term == 2
    c.nodes["a"] = saved  # a is back on the broker (a new session), still active (term 1)
    saved.session = 1
    c.run(0.3)
    assert c.roles() == {"a": "standby", "b": "active"}
    assert c.nodes["b"].peers["a"].alive  # b hears a again, and keeps the role
    assert any(n == "a" and isinstance(ev, RoleChanged) and "fenced by b (term 2)" in ev.reason
               for n, ev in c.events)


def test_a_will_from_a_broker_going_down_changes_nothing() -> None:
    """A broker shutting down publishes the wills of members that are alive,
    then drops every connection: b, still connected when a's will arrives,
    loses its own connection a moment later. The will never takes effect: a
    is back (a new session) within the reconnect grace, and stays active."""
    c = Cluster()
    a = c.add("a", priority=200)
    c.run(1.0)
    b = c.add("b", priority=100)
    c.run(1.0)
    c.will("a", term=0)
    saved = a
    c.stalled = True  # shutting down, the broker forwards nothing b sends from now on ...
    c.now = round(c.now + 0.001, 6)  # ... but what it had queued: b's heartbeat from before
    assert b.on_echo(c.now - 0.05, c.now) == []
    c.run(0.02)
    b.set_connected(False, 1, c.now)  # then it drops every connection
    assert b.peers["a"].alive and b.role == "standby"
    c.stalled = False
    c.now = round(c.now + 0.5, 6)  # both reconnect to the restarted broker
    b.set_connected(True, 2, c.now)
    c.nodes["a"] = saved
    saved.session = 2
    c.run(1.0)
    assert c.roles() == {"a": "active", "b": "standby"}
    assert not any(isinstance(ev, PeerDown) for _, ev in c.events)
    assert b.wills == {"received": 1, "taken": 0, "withdrawn": 0, "voided": 1}


def test_a_silent_active_is_declared_dead_after_dead_after() -> None:
    c = Cluster()
    c.add("a", priority=200)
    c.run(1.0)
    c.add("b", priority=100)
    c.run(1.0)
    c.down.add("a")  # SIGSTOP: no will, just silence
    c.run(0.2)
    assert c.nodes["b"].role == "standby"  # not before dead_after (0.35 s)
    c.run(0.2)
    assert c.nodes["b"].role == "active"


def test_a_returning_old_active_is_fenced_by_the_higher_term() -> None:
    c = Cluster()
    c.add("a", priority=200)
    c.run(1.0)
    c.add("b", priority=100)
    c.run(1.0)
    c.down.add("a")
    c.run(1.0)
    assert c.nodes["a"].role == "active" and c.nodes["b"].role == "active"  # a is frozen
    assert c.nodes["b"].term > c.nodes["a"].term
    c.down.discard("a")  # SIGCONT: a still believes it is active
    c.run(0.2)
    assert c.roles() == {"a": "standby", "b": "active"}  # no preempt: b keeps it
    assert any(n == "a" and isinstance(ev, RoleChanged) and "fenced" in ev.reason
               for n, ev in c.events)


@pytest.mark.parametrize("preempt, expect", [(False, "b"), (True, "a")])
def test_preempt_decides_whether_a_better_node_takes_back_the_role(preempt: bool,
                                                                   expect: str) -> None:
    c = Cluster()
    c.add("b", priority=100)
    c.run(1.0)
    c.add("a", priority=200, preempt=preempt)
    c.run(1.0)
    assert [n for n, r in c.roles().items() if r == "active"] == [expect]


@pytest.mark.parametrize("preempt, after", [(False, "b"), (True, "a")])
def test_an_active_whose_data_link_goes_down_gives_the_role_up(preempt: bool,
                                                               after: str) -> None:
    """VRRP's FAULT (keepalived's track_interface): the active's data path is
    down while it still heartbeats; it steps down at once and says so, and
    the standby takes over without waiting for a timeout. Once the link is
    back it is a standby, and takes the role back only with preempt."""
    c = Cluster()
    a = c.add("a", priority=200, preempt=preempt)
    c.run(1.0)
    c.add("b", priority=100)
    c.run(1.0)
    term = a.term
    ev = a.set_fault("inside: data0 is down", c.now)
    assert ev == [RoleChanged("active", "fault", term, "data link down: inside: data0 is down")]
    assert a.heartbeat_due(c.now)  # told to the others at once
    c.run(0.011)
    assert c.roles() == {"a": "fault", "b": "active"}
    assert c.nodes["b"].term == term + 1
    c.run(2.0)
    assert c.roles() == {"a": "fault", "b": "active"}  # no candidate while in FAULT
    a.set_fault(None, c.now)
    c.run(0.5)
    assert [n for n, r in c.roles().items() if r == "active"] == [after]


def test_a_standby_in_fault_is_no_candidate() -> None:
    """The active dies while the only standby's data link is down: nobody
    takes over (nothing could forward); the standby does once its link is up."""
    c = Cluster()
    c.add("a", priority=200)
    c.run(1.0)
    b = c.add("b", priority=100)
    c.run(1.0)
    b.set_fault("outside: wire cut", c.now)
    c.run(0.1)
    c.will("a")
    c.run(1.0)
    assert c.roles() == {"b": "fault"}
    b.set_fault(None, c.now)
    c.run(0.1)
    assert c.roles() == {"b": "active"}


def test_active_active_a_member_in_fault_owns_no_flows() -> None:
    c = Cluster()
    a = c.add("a", mode=ACTIVE_ACTIVE)
    b = c.add("b", mode=ACTIVE_ACTIVE)
    c.run(1.0)
    assert a.members() == b.members() == ["a", "b"]
    b.set_fault("inside: data0 has no carrier", c.now)
    c.run(0.2)
    assert b.role == "fault"
    assert a.members() == b.members() == ["a"]
    b.set_fault(None, c.now)
    c.run(0.2)
    assert a.members() == b.members() == ["a", "b"] and b.role == "active"


def test_no_promotion_while_the_bus_is_down() -> None:
    c = Cluster()
    c.add("a", priority=200)
    c.run(1.0)
    b = c.add("b", priority=100)
    c.run(1.0)
    b.set_connected(False, 1, c.now)
    c.will("a")
    c.run(1.0)
    assert b.role == "standby"
    b.set_connected(True, 2, c.now)
    c.run(0.02)
    assert b.role == "active"


def test_a_stale_will_from_an_earlier_connection_is_ignored() -> None:
    c = Cluster()
    a = c.add("a", priority=200)
    c.run(1.0)
    b = c.add("b", priority=100)
    c.run(1.0)
    a.set_connected(True, 2, c.now)  # a reconnected: its heartbeats now say session 2
    c.run(0.2)
    stale = Heartbeat("a", "offline", 200, a.term, False, 0, 0, 1)  # the will of session 1
    assert b.on_heartbeat(1, 0, stale, c.now) == []
    assert b.peers["a"].alive and b.role == "standby"
    current = Heartbeat("a", "offline", 200, a.term, False, 0, 0, 2)
    b.on_heartbeat(1, 0, current, c.now)
    c.run(0.011)  # b's probe is back: the will takes effect (a's session-2 beats no longer count)
    assert any(n == "b" and isinstance(ev, PeerDown) and ev.reason == "will"
               for n, ev in c.events)


def test_a_late_heartbeat_from_a_dead_session_does_not_revive_it() -> None:
    c = Cluster()
    c.add("a")
    b = c.add("b")
    c.run(1.0)
    b.on_heartbeat(1, 0, Heartbeat("a", "offline", 100, 1, False, 0, 0, 1), c.now)
    late = Heartbeat("a", "active", 100, 1, True, 0, 0, 1)  # sent before the will, delivered after
    b.on_heartbeat(1, 10_000, late, c.now)
    assert b.peers["a"].pending_will is not None  # the will still stands
    c.nodes.pop("a")
    c.run(0.011)
    assert not b.peers["a"].alive


def test_an_old_epochs_retained_will_does_not_kill_the_new_incarnation() -> None:
    c = Cluster()
    c.add("a", epoch=5)
    b = c.add("b")
    c.run(1.0)
    b.on_heartbeat(4, 0, Heartbeat("a", "offline", 100, 1, False, 0, 0, 9), c.now)
    assert b.peers["a"].alive


# ------------------------------------------------------------------ readiness gate
def test_a_joiner_syncs_from_the_active_before_it_is_eligible() -> None:
    c = Cluster()
    c.add("a", priority=100)
    c.run(1.0)
    b = c.add("b", priority=250, preempt=True)  # would preempt at once if it could
    c.run(0.35)
    sync = [ev for n, ev in c.events if n == "b" and isinstance(ev, SyncFrom)]
    assert sync == [] or sync[0].source == "a"
    assert b.gate.state == READY and "snapshot from a complete" in b.gate.reason
    c.run(0.1)
    assert b.role == "active"  # only after the gate opened


def test_the_gate_holds_while_the_snapshot_is_missing_and_says_why() -> None:
    c = Cluster()
    c.add("a")
    c.run(1.0)
    b = Election(ElectionConfig("b", priority=250, preempt=True, sync_timeout=2.0), 1, c.now)
    c.nodes["b"] = b
    c.epochs["b"] = 1
    out: list[object] = []
    end = c.now + 1.5
    while c.now < end:  # like Cluster.run, but the snapshot never completes
        c.now = round(c.now + 0.01, 6)
        out += b.tick(c.now)
        for n in ("a", "b"):
            c.nodes[n].tick(c.now)
            if c.nodes[n].heartbeat_due(c.now):
                c.beat(n)
    assert b.gate.state == SYNCING and not b.eligible() and b.role == "joining"
    assert any(isinstance(ev, SyncFrom) and ev.source == "a" for ev in out)
    while c.now < end + 1.0:
        c.now = round(c.now + 0.01, 6)
        out += b.tick(c.now)
        for n in ("a", "b"):
            if c.nodes[n].heartbeat_due(c.now):
                c.beat(n)
    timed_out = [ev for ev in out if isinstance(ev, GateChanged) and ev.timed_out]
    assert timed_out and "no complete snapshot from a" in timed_out[0].reason
    assert b.gate.timed_out and not b.eligible()  # a is alive and ready: b keeps waiting
    c.will("a")  # ... unless nobody else can be active
    c.run(0.011)
    assert b.eligible()


def test_the_gate_moves_to_another_source_when_its_source_dies() -> None:
    c = Cluster()
    c.add("a", priority=200)
    c.run(1.0)
    c.add("s", priority=100)
    c.run(1.0)
    j = Election(ElectionConfig("j", priority=50), 1, c.now)
    c.nodes["j"] = j
    c.epochs["j"] = 1
    for n in ("a", "s"):
        c.beat(n)
    evs = j.tick(c.now + 0.31)
    assert SyncFrom("a", 1) in evs
    c.will("a")
    c.run(0.011)
    assert j.gate.source in ("s", None)


def test_a_joiner_whose_source_goes_quiet_waits_and_asks_again() -> None:
    """The source stops being heard (no will: its heartbeats stuck behind a
    broker backlog, say) while the joiner's snapshot is under way. The joiner
    must not call that "nothing to sync" and take over with an empty table: it
    keeps waiting, and asks again when the source is heard."""
    c = Cluster()
    c.add("a", priority=100)
    c.run(1.0)
    j = Election(ElectionConfig("j", priority=200, preempt=True), 1, c.now)
    c.nodes["j"], c.epochs["j"] = j, 1
    c.beat("a")
    assert SyncFrom("a", 1) in j.tick(c.now + 0.31)  # the snapshot is asked for
    c.now += 0.31
    c.down.add("a")  # a goes quiet (it is not dead: no will)
    for _ in range(100):  # 1 s: far past dead_after
        c.now = round(c.now + 0.01, 6)
        evs = j.tick(c.now)
        if j.heartbeat_due(c.now):
            c.beat("j")  # its own heartbeats come back: the bus works
        assert not any(isinstance(e, RoleChanged) and e.new == "active" for e in evs)
    assert j.gate.state == SYNCING and j.gate.stalled and j.role != "active"
    assert not j.peers["a"].alive and j.peers["a"].quiet
    c.down.discard("a")
    c.events.clear()
    c.beat("a")  # heard again
    assert ("j", SyncFrom("a", 1)) in c.events and not j.gate.stalled  # asked again
    assert j.snapshot_complete("a", c.now + 0.02)
    assert j.gate.state == READY


def test_a_joiner_whose_source_leaves_with_its_will_does_not_wait() -> None:
    c = Cluster()
    c.add("a", priority=100)
    c.run(1.0)
    j = Election(ElectionConfig("j", priority=200), 1, c.now)
    c.nodes["j"], c.epochs["j"] = j, 1
    c.beat("a")
    assert SyncFrom("a", 1) in j.tick(c.now + 0.31)
    c.will("a")  # a crashed: the broker published its will
    c.run(0.011)
    assert j.gate.state == READY and "nothing to sync" in j.gate.reason


# ------------------------------------------------------------------ active-active
def test_active_active_every_ready_member_is_active() -> None:
    c = Cluster()
    c.add("a", mode=ACTIVE_ACTIVE)
    c.add("b", mode=ACTIVE_ACTIVE)
    c.run(1.0)
    assert c.roles() == {"a": "active", "b": "active"}
    assert c.nodes["a"].members() == ["a", "b"]


def test_ownership_is_the_same_for_both_directions_and_moves_minimally() -> None:
    members = ["a", "b", "c"]
    flows = [Tuple(4, 6, bytes((10, 0, i >> 8, i & 255)), b"\x0a\x01\x00\x01", 1000 + i, 443)
             for i in range(3000)]
    owners = [owner_of(t, 0, members) for t in flows]
    assert owners == [owner_of(t.invert(), 0, members) for t in flows]  # type: ignore[arg-type]
    share = {m: owners.count(m) / len(flows) for m in members}
    assert all(0.28 < s < 0.39 for s in share.values())
    after = [owner_of(t, 0, ["a", "c"]) for t in flows]
    moved = [i for i in range(len(flows)) if owners[i] != after[i]]
    assert all(owners[i] == "b" for i in moved)  # only b's flows move
    assert flow_key(flows[0], 1) != flow_key(flows[0], 2)


def test_a_broker_outage_is_not_the_actives_death() -> None:
    c = Cluster()
    a = c.add("a", priority=200)
    c.run(1.0)
    b = c.add("b", priority=100)
    c.run(1.0)
    for e in (a, b):
        e.set_connected(False, 1, c.now)
    c.down |= {"a", "b"}  # nobody hears anybody
    c.run(3.0)
    assert (a.role, b.role) == ("active", "standby") and b.peers["a"].alive
    c.down.discard("b")
    b.set_connected(True, 2, c.now)  # b is back first ...
    c.run(1.0)
    assert b.role == "standby"  # ... and gives a its grace to reconnect
    c.down.discard("a")
    a.set_connected(True, 2, c.now)
    c.run(1.0)
    assert (a.role, b.role) == ("active", "standby")


def _outage_b_back_first(c: Cluster, outage: float) -> tuple[Election, Election]:
    """a active, b standby; both lose the broker for `outage` seconds and b is
    back first (a is still down)."""
    a = c.add("a", priority=200)
    c.run(1.0)
    b = c.add("b", priority=100)
    c.run(1.0)
    b.set_connected(False, 1, c.now)
    c.down |= {"a", "b"}
    c.run(outage)
    c.down.discard("b")
    b.set_connected(True, 2, c.now)
    return a, b


def test_an_active_that_does_not_come_back_after_an_outage_is_replaced() -> None:
    c = Cluster()
    _, b = _outage_b_back_first(c, 1.0)
    c.run(4.9)
    assert b.role == "standby"
    c.run(0.5)  # reconnect_grace (5 s) has passed without a word from a
    assert b.role == "active"


def test_a_stalled_broker_makes_nobody_dead() -> None:
    c = Cluster()
    a = c.add("a", priority=200)
    c.run(1.0)
    b = c.add("b", priority=100)
    c.run(1.0)
    c.stalled = True  # connected, but nothing gets through, not even b's own heartbeat
    c.run(3.0)
    assert (a.role, b.role) == ("active", "standby") and b.peers["a"].alive
    assert not b.bus_ok(c.now)
    c.stalled = False
    c.run(1.0)
    assert (a.role, b.role) == ("active", "standby")


@pytest.mark.parametrize("phase", [0.0, 0.02, 0.05, 0.09])
def test_a_stall_just_after_our_own_heartbeat_makes_nobody_dead(phase: float) -> None:
    """b's heartbeats leave `phase` after a's. The broker stalls right after
    b's: b's own echo is then fresher than a's last heartbeat by `phase`, so
    a's silence reaches dead_after while b's bus still looks fine. Before,
    that made b take over from a healthy active at every stall that began in
    the wrong part of the interval (a real Mosquitto paused for 1.5 s:
    tests/daemon/test_replication.py). The silence counts only once a heartbeat
    b sent after it grew that long has come back."""
    c = Cluster()
    a = c.add("a", priority=200)
    c.run(1.0)
    c.run(phase)
    b = c.add("b", priority=100)
    c.run(1.0)
    while not b.heartbeat_due(round(c.now + 0.01, 6)):
        c.run(0.01)
    c.run(0.01)  # b's heartbeat has just come back: then the stall
    c.stalled = True
    c.run(2.0)
    assert (a.role, b.role) == ("active", "standby") and b.peers["a"].alive
    assert not any(isinstance(ev, PeerDown) for _, ev in c.events)
    c.stalled = False
    c.run(1.0)
    assert (a.role, b.role) == ("active", "standby")


def test_a_stall_shorter_than_dead_after_does_not_count_towards_a_silence() -> None:
    """A stall of 0.32 s (dead_after 0.35) that began just after b's own echo,
    0.05 s after a's last heartbeat: b's probe leaves as a's silence reaches
    dead_after. The resumed broker forwards b's own heartbeats first (it reads
    its clients' sockets in its own order), a's queued ones right after. The
    first echo, 0.32 s after the one before, stops a's silence for the stall,
    so the probe's echo finds a within dead_after and a stays alive."""
    c = Cluster()
    a = c.add("a", priority=200)
    c.run(1.0)
    c.run(0.05)
    b = c.add("b", priority=100)
    c.run(1.0)
    while not b.heartbeat_due(round(c.now + 0.01, 6)):
        c.run(0.01)
    c.run(0.01)  # b's heartbeat has just come back, a's came 0.05 s before
    c.stalled = True
    c.run(0.32)
    queued = [sent for name, sent in c.held if name == "b"]
    silent = b.peers["a"].heard_at + b.cfg.dead_after
    assert queued[-1] >= silent  # the probe left
    c.stalled = False
    for sent in queued:  # b's own heartbeats come back first
        c.events += [("b", ev) for ev in b.on_echo(sent, c.now)]
    assert b.peers["a"].alive and b.role == "standby"
    c.run(1.0)  # then a's, and the cluster goes on
    assert (a.role, b.role) == ("active", "standby")
    assert not any(isinstance(ev, PeerDown) for _, ev in c.events)


def test_a_silent_peer_is_dead_one_round_trip_after_dead_after() -> None:
    """A paused peer (no will): its silence is confirmed by a probe, a
    heartbeat sent the moment the silence reaches dead_after, as soon as that
    heartbeat is back."""
    c = Cluster()
    c.add("a", priority=200)
    c.run(1.0)
    b = c.add("b", priority=100)
    c.run(1.0)
    c.down.add("a")
    heard = b.peers["a"].heard_at
    c.run(0.5)
    down = [ev for n, ev in c.events if n == "b" and isinstance(ev, PeerDown)]
    assert [(ev.node, ev.reason, ev.was_active) for ev in down] == [("a", "timeout", True)]
    assert b.role == "active"
    took = next(t for t, rc in b.transitions if rc.new == "active") - heard
    assert b.cfg.dead_after < took <= b.cfg.dead_after + 0.02, took


def test_after_a_stall_a_will_of_a_peer_heard_since_is_its_death() -> None:
    """The grace after a stall is for wills a broker may publish for peers that
    are reconnecting: a peer heard since, on the connection the will is for,
    was alive on this broker, and its will is its death at once (ctlab chaos
    --seed 86 --kinds broker_pause,pause,kill,sync_delay: a kill -9 3.5 s after
    a stall took 0.8 s, a timeout, instead of one round trip)."""
    c = Cluster()
    a = c.add("a", priority=200)
    c.run(1.0)
    b = c.add("b", priority=100)
    c.run(1.0)
    c.stalled = True
    c.run(1.0)
    c.stalled = False
    c.run(0.5)
    assert b.peers["a"].alive and b.role == "standby"
    c.will("a")  # kill -9, within the grace that the stall began
    c.run(0.011)
    assert b.role == "active" and b.term == a.term + 1
    assert [(ev.node, ev.reason) for n, ev in c.events
            if n == "b" and isinstance(ev, PeerDown)] == [("a", "will")]


def _restored_will(c: Cluster) -> tuple[Election, Election]:
    """An outage, b back first; it receives a's will of the session before (a
    broker that restored it)."""
    a, b = _outage_b_back_first(c, 0.5)
    will = Heartbeat("a", "offline", 200, 0, False, 0, 0, a.session)
    assert b.on_heartbeat(1, 0, will, c.now) == []
    return a, b


def test_a_will_restored_by_a_restarted_broker_is_no_death_within_the_grace() -> None:
    """The restored will only ends a's old session: a is given the reconnect
    grace, and stays active when it is heard from its new session."""
    c = Cluster()
    a, b = _restored_will(c)
    c.run(1.0)
    assert b.peers["a"].alive and b.role == "standby"
    c.down.discard("a")
    a.set_connected(True, a.session + 1, c.now)
    c.run(1.0)
    assert (a.role, b.role) == ("active", "standby")
    assert not any(isinstance(ev, PeerDown) for n, ev in c.events if n == "b")


def test_a_restored_will_of_a_peer_that_stays_away_ends_in_a_takeover() -> None:
    c = Cluster()
    a, b = _restored_will(c)
    c.run(4.9)
    assert b.role == "standby"
    c.run(0.5)  # the grace (5 s) is over and a was not heard: it is dead
    assert b.role == "active" and b.term == a.term + 1
    assert any(n == "b" and isinstance(ev, PeerDown) and ev.was_active for n, ev in c.events)


@pytest.mark.parametrize("grace", [0.0, 0.2])
def test_a_will_grace_rides_out_a_flap_of_the_actives_broker_link(grace: float) -> None:
    """a's MQTT connection drops (the broker publishes its will) and a is back
    on a new connection 0.15 s later. Without a grace (the default) b takes
    over on the will; with will_grace 0.2 the will waits for a, a reconnects
    within it, nobody takes over and a stays active."""
    c = Cluster()
    a = c.add("a", priority=200, will_grace=grace)
    c.run(1.0)
    b = c.add("b", priority=100, will_grace=grace)
    c.run(1.0)
    c.down.add("a")
    before = len(c.events)
    will = Heartbeat("a", "offline", 200, a.term, False, 0, 0, 0)
    c.events += [("b", ev) for ev in b.on_heartbeat(1, 0, will, c.now)]
    assert b.next_deadline() <= c.now + grace + 1e-9
    c.run(0.15)  # b's probes came back long ago: only the grace can hold the will
    c.down.discard("a")
    a.set_connected(True, 1, c.now)  # a reconnects: its heartbeats say session 1
    c.run(0.5)
    moved = [ev for _, ev in c.events[before:] if isinstance(ev, (PeerDown, RoleChanged))]
    if not grace:
        assert c.roles() == {"a": "standby", "b": "active"}  # a fenced by b's term
        assert b.wills == {"received": 1, "taken": 1, "withdrawn": 0, "voided": 0}
        assert ("a", "will") in [(ev.node, ev.reason) for ev in moved
                                 if isinstance(ev, PeerDown)]
        return
    assert b.peers["a"].alive and b.peers["a"].pending_will is None
    assert c.roles() == {"a": "active", "b": "standby"}
    assert not moved
    assert b.wills == {"received": 1, "taken": 0, "withdrawn": 1, "voided": 0}


def test_a_will_grace_delays_a_takeover_by_that_much() -> None:
    """kill -9 with will_grace 0.2: the will takes effect when the grace ends
    (not at once, not at dead_after)."""
    c = Cluster()
    c.add("a", priority=200, will_grace=0.2, dead_after=0.5)
    c.run(1.0)
    b = c.add("b", priority=100, will_grace=0.2, dead_after=0.5)
    c.run(1.0)
    c.will("a")
    killed = c.now
    c.run(0.19)
    assert b.role == "standby"
    c.run(0.03)
    assert b.role == "active"
    down = [ev for n, ev in c.events if n == "b" and isinstance(ev, PeerDown)]
    assert [(d.node, d.reason) for d in down] == [("a", "will")]
    took = next(t for t, ev in b.transitions if ev.new == "active")
    assert killed + 0.2 <= took < killed + 0.22


@pytest.mark.parametrize("grace", [-0.01, 0.36])
def test_a_will_grace_is_between_zero_and_dead_after(grace: float) -> None:
    with pytest.raises(ValueError, match="will_grace"):
        ElectionConfig("a", will_grace=grace)


def _cut_active(c: Cluster, **cfg: object) -> tuple[Election, Election]:
    """a active, b standby; then a's link to the broker is cut (the broker
    publishes a's will: b takes over at once)."""
    a = c.add("a", priority=200, **cfg)
    c.run(1.0)
    b = c.add("b", priority=100, **cfg)
    c.run(1.0)
    c.cut.add("a")
    a.set_connected(False, 1, c.now)
    will = Heartbeat("a", "offline", 200, a.term, False, 0, 0, 0)
    c.events += [("b", ev) for ev in b.on_heartbeat(1, 0, will, c.now)]
    return a, b


@pytest.mark.parametrize("isolated", [0.0, 0.5])
def test_an_active_cut_off_the_broker_steps_down_with_step_down_isolated(
        isolated: float) -> None:
    """b takes over on a's will. Without step_down_isolated (the default) a,
    which cannot hear b, stays active until the cut heals: two actives. With
    0.5 s, a gives the role up 0.5 s after its last heartbeat came back, stays
    standby while cut off (no promotion without the bus), and after the heal
    b keeps the role."""
    c = Cluster()
    a, b = _cut_active(c, step_down_isolated=isolated)
    cut = c.now
    c.run(0.4)
    assert (a.role, b.role) == ("active", "active")
    c.run(1.6)
    if not isolated:
        assert (a.role, b.role) == ("active", "active")  # the split brain lasts
    else:
        assert (a.role, b.role) == ("standby", "active")
        down = next((t, ev) for t, ev in a.transitions if ev.new == "standby")
        assert cut + 0.4 < down[0] <= cut + 0.5 and down[1].reason.startswith("isolated: ")
    c.cut.discard("a")
    a.set_connected(True, 2, c.now)
    c.run(1.0)
    assert (a.role, b.role) == ("standby", "active")
    assert [ev.new for _, ev in a.transitions].count("active") == 1  # never took it back


def test_a_stalled_broker_longer_than_step_down_isolated_leaves_nobody_active() -> None:
    """The price: every member's heartbeats stop coming back, so the active
    gives the role up and nobody may take it; once the broker forwards again
    the best member takes over with a new term."""
    c = Cluster()
    a = c.add("a", priority=200, step_down_isolated=0.5)
    c.run(1.0)
    b = c.add("b", priority=100, step_down_isolated=0.5)
    c.run(1.0)
    term = a.term
    c.stalled = True
    c.run(2.0)
    assert (a.role, b.role) == ("standby", "standby")
    c.stalled = False
    c.run(1.0)
    assert (a.role, b.role) == ("active", "standby") and a.term == term + 1


@pytest.mark.parametrize(("field", "value", "ok"), [
    ("step_down_isolated", 0.0, True), ("step_down_isolated", 0.35, True),
    ("step_down_isolated", 5.0, True), ("step_down_isolated", 0.3, False),
    ("step_down_isolated", -1.0, False),  # 0 (never) or at least dead_after
    ("quorum", 0, True), ("quorum", 1, True), ("quorum", 3, True), ("quorum", 64, True),
    ("quorum", -1, False), ("quorum", 65, False)])  # 0 (no rule) or a member count
def test_step_down_isolated_and_quorum_are_checked(field: str, value: float,
                                                    ok: bool) -> None:
    if ok:
        assert getattr(ElectionConfig("a", **{field: value}), field) == value
    else:
        with pytest.raises(ValueError, match=field):
            ElectionConfig("a", **{field: value})


# ---------------------------------------------------------------- quorum and witness
def _with_witness(c: Cluster, **cfg: object) -> tuple[Election, Election, Election]:
    """a (200) active, b (100) standby and the witness w, all with `cfg`."""
    a = c.add("a", priority=200, **cfg)
    c.run(1.0)
    b = c.add("b", priority=100, **cfg)
    w = c.add("w", priority=255, witness=True, **cfg)
    c.run(1.0)
    assert c.roles() == {"a": "active", "b": "standby", "w": "witness"}
    return a, b, w


def _most_actives(c: Cluster, seconds: float) -> int:
    """Run `seconds`, returning the most members active at one moment."""
    most = 0
    for _ in range(round(seconds / 0.01)):
        c.run(0.01)
        most = max(most, list(c.roles().values()).count("active"))
    return most


@pytest.mark.parametrize("quorum", [0, 2])
def test_with_a_quorum_the_side_of_a_partition_without_the_witness_takes_no_role(
        quorum: int) -> None:
    """The sites split (a bridge cut) with the witness on b's side. Without a
    quorum rule a keeps the role and b takes it too: two actives until the
    heal. With quorum 2, a hears 1 of 2 members and gives the role up, and b,
    hearing the witness, takes over: never two actives at once."""
    c = Cluster()
    a, b, _w = _with_witness(c, quorum=quorum)
    c.side = {"a": 1}  # b and w on side 0
    cut = c.now
    most = _most_actives(c, 2.0)
    if not quorum:
        assert most == 2 and c.roles() == {"a": "active", "b": "active", "w": "witness"}
        return
    assert most == 1 and c.roles() == {"a": "standby", "b": "active", "w": "witness"}
    down = next(t for t, ev in a.transitions if ev.new == "standby" and t > cut)
    up = next(t for t, ev in b.transitions if ev.new == "active")
    assert cut < down < up < cut + 0.6, (cut, down, up)
    assert a.transitions[-1][1].reason == "no quorum: 1 heard, 2 needed"
    assert not a.quorate(c.now) and b.quorate(c.now) and a.votes(c.now) == 1 and b.votes(c.now) == 2
    c.side = {}
    assert _most_actives(c, 1.0) == 1
    assert c.roles() == {"a": "standby", "b": "active", "w": "witness"}  # preempt off


def test_with_a_quorum_the_side_with_the_witness_keeps_its_active() -> None:
    """The witness on the active's side: a keeps the role, b (hearing only
    itself) never takes it, and nothing moves at the heal."""
    c = Cluster()
    a, b, _w = _with_witness(c, quorum=2)
    term = a.term
    c.side = {"b": 1}
    assert _most_actives(c, 2.0) == 1
    assert c.roles() == {"a": "active", "b": "standby", "w": "witness"}
    assert not b.quorate(c.now) and b.votes(c.now) == 1
    assert b.quorum_log[-1][1:] == (False, "no quorum: 1 heard, 2 needed")
    c.side = {}
    c.run(1.0)
    assert c.roles() == {"a": "active", "b": "standby", "w": "witness"} and a.term == term
    assert b.quorum_log[-1][1:] == (True, "2 heard, 2 needed")
    assert [q for _, q, _ in a.quorum_log] == [False, True]  # alone at its start only


def test_a_two_member_quorum_without_a_witness_leaves_a_partition_without_active() -> None:
    """The price of a quorum: two members, quorum 2, split: neither side may
    hold the role; at the heal the best one takes it again."""
    c = Cluster()
    a = c.add("a", priority=200, quorum=2)
    c.run(1.0)
    assert a.role == "standby"  # alone: 1 of 2
    c.add("b", priority=100, quorum=2)
    c.run(1.0)
    assert c.roles() == {"a": "active", "b": "standby"}
    c.side = {"a": 1}
    c.run(2.0)
    assert c.roles() == {"a": "standby", "b": "standby"}
    c.side = {}
    c.run(1.0)
    assert c.roles() == {"a": "active", "b": "standby"}


def test_with_a_quorum_an_active_cut_off_the_broker_gives_the_role_up_at_once() -> None:
    """Its connection closed (the broker publishes its will): a gives the role
    up as its bus goes down, before b takes over on the will; after the heal b
    keeps the role (a waits to hear every peer anew)."""
    c = Cluster()
    a = c.add("a", priority=200, quorum=2)
    c.run(1.0)
    b = c.add("b", priority=100, quorum=2)
    w = c.add("w", witness=True, quorum=2)
    c.run(1.0)
    c.cut.add("a")
    a.set_connected(False, 1, c.now)
    assert a.role == "standby"
    assert a.transitions[-1][1].reason == "no quorum: not connected to the broker"
    will = Heartbeat("a", "offline", 200, a.term, False, 0, 0, 0)
    for o in (b, w):
        c.events += [(o.cfg.node, ev) for ev in o.on_heartbeat(1, 0, will, c.now)]
    assert _most_actives(c, 1.0) == 1 and b.role == "active"
    c.cut.discard("a")
    a.set_connected(True, 2, c.now)
    assert _most_actives(c, 1.0) == 1
    assert c.roles() == {"a": "standby", "b": "active", "w": "witness"}


@pytest.mark.parametrize("how", ["cut", "mute"])
def test_with_a_quorum_an_active_whose_heartbeats_stop_coming_back_steps_down(
        how: str) -> None:
    """A silent cut of a's broker link (no will yet: the broker waits for the
    keepalive): a stops hearing b and w, whose votes lapse `dead_after` after
    their last heartbeats; or a one-way loss (mute: a still hears them): a's own
    heartbeats stop coming back, and a gives the role up `dead_after` after the
    last one. Either way before b declares it dead (one probe later) and takes
    over: never two actives."""
    c = Cluster()
    a, b, _w = _with_witness(c, quorum=2)
    getattr(c, how).add("a")
    last = a._echo_at
    assert _most_actives(c, 2.0) == 1
    assert c.roles() == {"a": "standby", "b": "active", "w": "witness"}
    down = next(t for t, ev in a.transitions if ev.new == "standby" and t > last)
    up = next(t for t, ev in b.transitions if ev.new == "active")
    assert last < down <= last + a.cfg.dead_after + 0.011 and down <= up, (last, down, up)
    why = a.transitions[-1][1].reason
    if how == "mute":
        assert why.startswith("no quorum: none of our heartbeats came back for 0.3"), why
    else:
        assert why == "no quorum: 1 heard, 2 needed", why


def test_with_a_quorum_a_stalled_broker_leaves_nobody_active_until_it_is_back() -> None:
    """The price again: a broker stall longer than dead_after and every member
    hears nobody; the active gives the role up, and takes it back with a new
    term once the broker forwards again."""
    c = Cluster()
    a, _b, _w = _with_witness(c, quorum=2)
    term = a.term
    c.stalled = True
    c.run(1.5)
    assert c.roles() == {"a": "standby", "b": "standby", "w": "witness"}
    c.stalled = False
    c.run(1.0)
    assert c.roles() == {"a": "active", "b": "standby", "w": "witness"} and a.term == term + 1


def test_a_witness_is_never_active_nor_a_rival_nor_an_owner() -> None:
    """A witness of the highest priority: never active, even alone; it does
    not keep a lower-priority standby from taking over; it owns no flows in
    active-active; and a joiner whose gate timed out does not count it as a
    ready peer."""
    c = Cluster()
    w = c.add("w", priority=255, witness=True)
    c.run(2.0)
    assert w.role == "witness"
    b = c.add("b", priority=10)
    c.run(1.0)
    assert c.roles() == {"w": "witness", "b": "active"}
    assert not b.has_ready_peer() and w.members() == ["b"] == b.members()
    c = Cluster()
    x = c.add("x", mode=ACTIVE_ACTIVE)
    y = c.add("y", mode=ACTIVE_ACTIVE)
    v = c.add("v", mode=ACTIVE_ACTIVE, witness=True)
    c.run(2.0)
    assert c.roles() == {"x": "active", "y": "active", "v": "witness"}
    assert x.members() == y.members() == v.members() == ["x", "y"]


def test_active_active_with_a_quorum_the_smaller_side_forwards_nothing() -> None:
    c = Cluster()
    for n in ("x", "y", "z"):
        c.add(n, mode=ACTIVE_ACTIVE, quorum=2)
    c.run(2.0)
    assert set(c.roles().values()) == {"active"}
    c.side = {"z": 1}
    c.run(2.0)
    assert c.roles() == {"x": "active", "y": "active", "z": "standby"}
    assert c.nodes["x"].members() == ["x", "y"]
    c.side = {}
    c.run(1.0)
    assert set(c.roles().values()) == {"active"}


@pytest.mark.parametrize("witness_with", ["a", "b"])
@pytest.mark.parametrize("last", ["w", "a"])
def test_with_a_quorum_no_heartbeat_phase_makes_two_actives(last: str,
                                                            witness_with: str) -> None:
    """The sites split just after `last`'s heartbeat crossed (w beats 40 ms
    after a in its interval), the witness on one side: never two actives, and
    the witness's side ends with the role. Before a takeover waited a heartbeat
    interval after the death and counted only the votes heard since, b, alone,
    took the role when it declared a dead, w's heartbeat, sent after a's, still
    fresh; and gave it up when w lapsed (the e2e bridge cut found it: 1 ms)."""
    c = Cluster()
    a = c.add("a", priority=200, quorum=2)
    c.run(1.0)
    c.add("w", witness=True, quorum=2)
    b = c.add("b", priority=100, quorum=2)
    c.run(1.0)
    assert c.roles() == {"a": "active", "b": "standby", "w": "witness"}
    other = "a" if last == "w" else "w"
    while not b.peers[last].heard_at == c.now > b.peers[other].heard_at:
        c.run(0.01)
    c.side = {"b": 1, "w": 1 if witness_with == "b" else 0}
    assert _most_actives(c, 2.0) == 1
    assert (a.role, b.role) == (("active", "standby") if witness_with == "a"
                                else ("standby", "active"))


def test_with_a_quorum_a_takeover_waits_a_heartbeat_interval_after_the_death() -> None:
    """b's side of a partition with the witness, the active a alone. a's last
    heartbeat crossed 90 ms before the last ones of b and w (their phases), so a
    hears its last votes 90 ms after b hears a, and gives the role up
    `dead_after` after them (the tests above). b declares a dead `dead_after`
    after a's last heartbeat and a probe: without waiting a heartbeat interval
    more, b would take the role on w's next heartbeat, before a let it go."""
    hb, dead = 0.1, 0.35
    b = Election(ElectionConfig("b", priority=100, quorum=2, readiness_gate=False), 2, 0.0)
    b.set_connected(True, 1, 0.0)
    seq = {"a": 0, "w": 0}

    def beat(node: str, role: str, now: float) -> None:
        seq[node] += 1
        b.on_heartbeat(1, seq[node], Heartbeat(node, role, 200 if node == "a" else 100,
                                               1 if node == "a" else 0, True, 10, 0, 1), now)

    def step(t: float, a_beats: bool) -> float:
        """10 ms on: a beats at .x0 (until the cut), w at .x9; b's own beats echo."""
        t = round(t + 0.01, 2)
        if a_beats and abs(t * 100 % 10) < 1e-6:
            beat("a", "active", t)
        if abs((t * 100 - 9) % 10) < 1e-6:
            beat("w", "witness", t)
        if b.heartbeat_due(t):
            b.heartbeat(t, 10, 0)
            b.on_echo(t, t)
        b.tick(t)
        return t

    t = 0.0
    while t < 2.0:  # a active, w witness, b following
        t = step(t, True)
    assert b.role == "standby" and b.quorate(t)
    a_last = 2.0
    a_gives_up = a_last + 0.09 + dead  # its last votes (b's, w's) lapse then
    while b.role != "active" and t < 4.0:  # the cut: nothing from a any more
        t = step(t, False)
    assert b.role == "active" and a_gives_up < t <= a_last + dead + hb + hb + 0.011, t
