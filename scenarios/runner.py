"""`ctlab run`: one scenario, end to end, on a backend. Jepsen's roles:

    workload   scenarios.traffic.TrafficGen through scenarios.switch.Switch
    nemesis    the fault schedule (scenarios.faults.plan), each step carried out
               by the backend or through the node's control API, and recorded
               with whether it took effect
    observer   every node's /state (roles, tables, counters) every `poll`
               seconds, and its conntrack events (/events)
    checker    scenarios.invariants over the history and the final snapshots

The phases:

    setup      broker, nodes; wait until the roles settle (one active, every
               readiness gate open)
    run        traffic from t=0 for the scenario's duration; faults at their times
    heal       every fault still in effect is healed (the plan's heals at the end)
    final      the workload closes every flow (Jepsen's final generator) and the
               runner waits up to `settle` seconds for the closes to finish
    quiesce    up to `quiesce` seconds for every live member's table to agree
    snapshot   each member's conntrack table and card entries
    check      invariants -> report.json and report.html

Failover bookkeeping (what the failover, preinstall and hw_hits records mean):
a failover begins when a disruptive fault hits the node the switch sends to
(or, without a fault, when another node claims the active role); it completes
at the first packet delivered through the new active. An outage the active
lives through (a pause, a cut data link) that heals before anyone takes over
ends instead at the first packet the old active delivers again ("resumed": how
long its traffic stopped, and no failover). An active cut off the broker keeps
forwarding: its failover begins when the switch moves to the member that took
over, and a cut healed before that is no outage. The new active's
pre-installed ratio is read from its last full /state before it took over;
the hardware hit ratio counts the paths of the packets it delivers in the
`hw_window` seconds after the failover completed, for the flows that were
established before the failover began (the traffic it inherited).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.conntrack import Tuple
from node.packet import ip_bytes
from scenarios import control, faults, invariants, report
from scenarios.backends.base import Backend, ClusterPlan
from scenarios.invariants import single_active
from scenarios.model import (
    CLUSTER_PROCESS,
    DEAD_AFTER,
    F_CT,
    F_EXPIRE,
    F_FAILOVER,
    F_HW_HITS,
    F_PREINSTALL,
    F_ROLES,
    F_SITES,
    HB_INTERVAL,
    FaultRecord,
    History,
    InvariantSpec,
    Op,
    Scenario,
    Snapshot,
    broker_site,
    flow_key,
)
from scenarios.progress import Progress
from scenarios.switch import PathCount, Switch
from scenarios.traffic import TrafficGen
from syncbus.messages import ROLE_WITNESS

ACTIVE = "active"
EVENT_INVARIANTS = ("no_resurrected_flows", "no_premature_aging")
STATE_TIMEOUT = 0.5
ROLE_TIMING = {"hb_interval": HB_INTERVAL, "dead_after": DEAD_AFTER}  # (scenarios.model)
EVENT_TYPES = {"new": "new", "update": "update", "destroy": "destroy"}


class StartupError(RuntimeError):
    """The cluster did not come up as the scenario describes it (a node that
    never took its role, roles that did not settle): the run could not start.
    The backend has torn down what it made."""


@dataclass(frozen=True)
class RunOptions:
    out: Path = Path("ctlab-report")
    poll: float = 0.1  # /state of every node
    sample: float = 1.0  # full /state: metric samples, the standby's pre-installed count
    hw_window: float = 1.0  # seconds after a failover whose paths are counted
    hw_settle: float = 2.0  # ... for flows established this long before it began
    settle: float = 15.0  # the final phase, at most (+1 s per 200 open flows): flows closing
    quiesce: float = 15.0  # tables converging
    startup: float = 30.0  # roles settling
    progress: bool = True
    chaos: bool = False  # record everything every invariant needs


@dataclass
class _NodeView:
    name: str
    state: dict[str, Any] | None = None  # the last /state answer (brief or full)
    full: dict[str, Any] | None = None  # the last full one
    standby_state: dict[str, Any] | None = None  # the last one while not active
    epoch: int | None = None
    events_since: int = 0
    last_counters: dict[str, float] = field(default_factory=dict)
    failures: int = 0
    # each process of the node (its epoch), in the order they were seen: when it
    # started on this host's monotonic clock, how sure that is (the round trip
    # of the /state it was read from: the least one counts), and its role log
    started: dict[int, tuple[float, float]] = field(default_factory=dict)
    roles: dict[int, list[list[Any]]] = field(default_factory=dict)

    def note_started(self, st: Mapping[str, Any], sent: float, got: float) -> None:
        """A full /state read between `sent` and `got`: its uptime says when the
        node's process started, within half the round trip."""
        epoch, uptime = st.get("epoch"), st.get("uptime")
        if not isinstance(epoch, int) or not isinstance(uptime, (int, float)):
            return
        rtt = got - sent
        if epoch not in self.started or rtt < self.started[epoch][1]:
            self.started[epoch] = ((sent + got) / 2 - uptime, rtt)
        log = st.get("roles")
        if isinstance(log, list):  # the node keeps its last 200 entries: add the new ones
            have = self.roles.setdefault(epoch, [])
            last = have[-1][0] if have else float("-inf")
            have.extend(e for e in log if isinstance(e, list) and e
                        and isinstance(e[0], (int, float)) and (
                e[0] > last or (e[0] == last and e not in have)))

    def role_starts(self, t0: float) -> list[float]:
        """When each of the node's processes started, in seconds of the run."""
        return [round(at - t0, 3) for at, _ in self.started.values()]

    def role_log(self, t0: float) -> list[list[Any]]:
        """Every process's role log in the order they ran, its times in seconds
        of the run (t0: the run's start on the monotonic clock): a process's own
        log counts from its own start."""
        return [[round(at + self.started[e][0] - t0, 3), *rest]
                for e, log in self.roles.items() for at, *rest in log]


@dataclass
class _Failover:
    source: str
    started: float
    target: str | None = None
    fault: int | None = None  # the schedule's fault that began it, if one did
    healed: bool = False  # that fault (a survivable outage) healed before anyone took over
    window: tuple[float, PathCount] | None = None  # (end, counts)
    # the path each (flow, direction) last took before the failover began, and when
    paths_before: dict[tuple[str, int], tuple[str, float]] = field(default_factory=dict)


@dataclass
class _Cut:
    """An outage of the active that its data path lives through (its broker link
    cut): the fault a takeover during it is blamed on, until the old active
    forwards after the heal or the switch leaves it."""

    source: str
    fault: int
    healed: bool = False


def entry_key(orig: Mapping[str, Any]) -> str:
    """model.flow_key of an entry's original tuple in the control API's JSON."""
    return flow_key(Tuple(int(orig["family"]), int(orig["proto"]), ip_bytes(orig["src"]),
                          ip_bytes(orig["dst"]), int(orig["sport"]), int(orig["dport"])))


class Runner:
    def __init__(self, scenario: Scenario, backend: Backend, options: RunOptions,
                 schedule: tuple[faults.FaultStep, ...] | None = None) -> None:
        self.sc = scenario
        self.backend = backend
        self.opt = options
        self.steps = schedule if schedule is not None else faults.plan(scenario.faults,
                                                                      scenario.duration)
        self.nodes = scenario.cluster.node_names
        # a bridged pair of brokers: which one each member uses (1, 2), from the backend
        self.sites: dict[str, int] = {}
        self.key = "hex:" + secrets.token_hex(24)
        self.views = {n: _NodeView(n) for n in self.nodes}
        self.ops: list[Op] = []
        self.records: list[FaultRecord] = []
        self.history = History()
        self.t0 = 0.0
        self.resolved: dict[int, str] = {}  # fault index -> the node a role target hit
        # node -> (epoch, term) it had when the switch last left it: a node the
        # switch comes back to with both unchanged never gave the role up
        self.left: dict[str, tuple[Any, Any]] = {}
        self.failover: _Failover | None = None
        self.cut: _Cut | None = None
        # (flow, direction) -> (hw | sw, when): its last delivery
        self.last_path: dict[tuple[str, int], tuple[str, float]] = {}
        sysctl = scenario.sysctl_values()
        polls = 2 * max(scenario.card_of(n).poll_interval for n in self.nodes)
        self.hw_idle = {"udp": sysctl.nf_flowtable_udp_timeout - polls,
                        "tcp": sysctl.nf_flowtable_tcp_timeout - polls}
        self.stopping = asyncio.Event()
        self.wake = asyncio.Event()
        wants = {i.name for i in scenario.invariants}
        self.tail_events = options.chaos or bool(wants & set(EVENT_INVARIANTS))
        self.gen = TrafficGen(scenario.traffic, scenario.seed)
        self.switch: Switch | None = None
        self.progress = Progress(scenario.name, scenario.duration, enabled=options.progress)
        self.phase = "setup"
        self.phase_times: dict[str, float] = {}  # wall seconds spent in each phase
        self._phase_at = time.monotonic()
        self.down: set[str] = set()  # nodes a fault took out (the switch avoids them)
        self.cards: dict[str, Any] = {}  # each node's card statistics at the end

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _enter(self, phase: str) -> None:
        """The run moves on to `phase`; the one it leaves gets its wall time."""
        at = time.monotonic()
        self.phase_times[self.phase] = round(
            self.phase_times.get(self.phase, 0.0) + at - self._phase_at, 3)
        self.phase, self._phase_at = phase, at

    # ================================================================ config
    def cluster_settings(self) -> dict[str, Any]:
        """What the run's cluster was built with (report.json "cluster"): the
        settings two runs are compared by."""
        cl, m = self.sc.cluster, self.sc.mechanisms
        return {"mode": cl.mode, "preempt": cl.preempt, "broker": cl.broker.kind,
                "cluster_key": cl.cluster_key, "defer": cl.defer, "will_grace": cl.will_grace,
                "step_down_isolated": cl.step_down_isolated, "quorum": cl.quorum,
                **ROLE_TIMING,
                "nodes": {n.name: {"priority": n.priority, "card": n.card,
                                   **({"witness": True} if n.witness else {}),
                                   **({"site": self.sites[n.name]} if self.sites else {})}
                          for n in cl.nodes},
                "mechanisms": dataclasses.asdict(m)}

    def node_config(self, name: str) -> dict[str, Any]:
        sc, cl = self.sc, self.sc.cluster
        spec = next(n for n in cl.nodes if n.name == name)
        card = sc.card_of(name)
        m = sc.mechanisms
        cfg: dict[str, Any] = {
            "node": name, "cluster": cl.name, "tc": sc.tc,
            "card": {"capacity": card.capacity, "insert_rate": card.insert_rate,
                     "insert_latency": card.insert_latency,
                     "poll_interval": card.poll_interval},
            "role": {"mode": cl.mode, "priority": spec.priority, "preempt": cl.preempt,
                     "will_grace": cl.will_grace,
                     "step_down_isolated": cl.step_down_isolated, "quorum": cl.quorum,
                     "witness": spec.witness, **ROLE_TIMING},
            "sysctl": dict(sc.sysctl),
            "mechanisms": dataclasses.asdict(m),
        }
        if cl.defer:
            cfg["sync"] = {"defer": cl.defer}
        if cl.cluster_key:
            cfg["cluster_key"] = self.key
        return cfg

    # ================================================================ the run
    async def run(self) -> dict[str, Any]:
        sc = self.sc
        broker = sc.cluster.broker
        self.backend.check_broker(broker.kind)
        plan = ClusterPlan(f"ctl{secrets.token_hex(3)}", self.nodes,
                           broker.url if broker.kind == "url" and broker.url else broker.kind,
                           self.opt.out / "work")
        started = time.monotonic()
        try:
            async with self.backend:
                await self.backend.setup(plan)
                self.sites = {n: site for n in self.nodes
                              if (site := self.backend.site_of(n)) is not None}
                await self._setup()
                self.t0 = time.monotonic()
                self._enter("run")
                await self._main()
                snapshots = await self._finish()
                self._enter("teardown")
        finally:
            self.progress.close()
        self._enter("report")
        return self._report(snapshots, time.monotonic() - started)

    async def _setup(self) -> None:
        b = self.backend
        if self.sc.cluster.broker.kind != "url":
            await b.start_broker()
        # Highest priority first, and the rest once it holds the role: the run
        # starts from the cluster the scenario describes, not from a start race.
        # With a quorum rule the first group is as large as the quorum (witnesses
        # first, then by priority): a node alone may not take the role.
        cl = self.sc.cluster
        lead = min(cl.nodes, key=lambda n: (n.witness, -n.priority))
        helpers = sorted((n for n in cl.nodes if n is not lead),
                         key=lambda n: (not n.witness, -n.priority))[:max(cl.quorum - 1, 0)]
        first = [lead, *helpers]
        await asyncio.gather(*(b.start_node(n.name, self.node_config(n.name)) for n in first))
        if cl.mode != "active-active":
            await self._wait_role(lead.name, ACTIVE)
        await asyncio.gather(*(b.start_node(n.name, self.node_config(n.name))
                               for n in cl.nodes if n not in first))
        deadline = time.monotonic() + self.opt.startup
        while True:
            states = await self._states()
            if self._settled(states):
                break
            if time.monotonic() > deadline:
                roles = {n: (s or {}).get("role") for n, s in states.items()}
                raise StartupError(f"the cluster did not settle in {self.opt.startup:g}s: "
                                   f"roles {roles} (node logs: {self.backend_logs()})")
            await asyncio.sleep(0.1)
        actives = [n for n, s in states.items() if s and s.get("role") == ACTIVE]
        sockets = {side: b.traffic_socket(side) for side in ("inside", "outside")}
        asym = {p.name for p in self.sc.traffic if p.asymmetric}
        self.switch = Switch(self.gen, self.sc.cluster.candidates, sockets, b.port_address,
                             mode=self.sc.cluster.mode,
                             asymmetric=lambda fid: fid.rsplit("-", 1)[0] in asym,
                             record_seen=self.tail_events)
        self.switch.active = (max(actives, key=lambda n: (states[n] or {}).get("term", 0))
                              if actives else None)
        self.switch.on_delivery = self._delivered

    async def _wait_role(self, name: str, role: str) -> None:
        deadline = time.monotonic() + self.opt.startup
        while time.monotonic() < deadline:
            st = await self._state(name)
            if st is not None and st.get("role") == role:
                return
            await asyncio.sleep(0.05)
        raise StartupError(f"{name} did not become {role} in {self.opt.startup:g}s "
                           f"(node logs: {self.backend_logs()})")

    def backend_logs(self) -> Path:
        return self.opt.out / "work" / "logs"

    def _settled(self, states: Mapping[str, dict[str, Any] | None]) -> bool:
        if any(s is None for s in states.values()):
            return False
        gates = all(s["gate"]["state"] == "ready" for s in states.values() if s)
        candidates = self.sc.cluster.candidates
        if any(s and s["role"] != ROLE_WITNESS for n, s in states.items() if n not in candidates):
            return False
        roles = [s["role"] for n, s in states.items() if s and n in candidates]
        if self.sc.cluster.mode == "active-active":
            return gates and all(r == ACTIVE for r in roles)
        return gates and roles.count(ACTIVE) == 1 and all(r in (ACTIVE, "standby")
                                                          for r in roles)

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.switch is not None
        for side, sock in self.switch.sockets.items():
            loop.add_reader(sock.fileno(), self._readable, side)
        try:
            async with asyncio.TaskGroup() as tg:
                traffic = tg.create_task(self._traffic(), name="traffic")
                watch = tg.create_task(self._watch(), name="watch")
                tails = [tg.create_task(self._events(n), name=f"events-{n}")
                         for n in self.nodes if self.tail_events]
                bar = tg.create_task(self._progress(), name="progress")
                await self._nemesis()
                # final phase: the workload closes every flow
                self._enter("final")
                live = sum(n for k, n in self.gen.counts().items()
                           if k in ("opening", "established", "closing"))
                self.gen.close_all(self.now())
                self.wake.set()
                # a big table closes at the cluster's pace: 1 s more per 200 flows
                end = time.monotonic() + self.opt.settle + live / 200
                while not self.gen.finished and time.monotonic() < end:
                    await asyncio.sleep(0.1)
                self.stopping.set()
                self.wake.set()
                await traffic
                for t in (watch, bar, *tails):
                    t.cancel()
        finally:
            for sock in self.switch.sockets.values():
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(sock.fileno())
        self._collect()

    def _readable(self, side: str) -> None:
        assert self.switch is not None
        self.switch.drain(side, self.now())
        self.wake.set()

    # ================================================================ workload
    async def _traffic(self) -> None:
        gen, sw = self.gen, self.switch
        assert sw is not None
        while not self.stopping.is_set():
            now = self.now()
            sw.send(gen.next_packets(now), now)
            self._collect()
            self._close_window(now)
            due = gen.next_deadline()
            delay = 0.02 if due is None else min(max(due - self.now(), 0.0), 0.02)
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.wake.wait()
            else:
                await asyncio.sleep(0)
            self.wake.clear()

    def _collect(self) -> None:
        self.ops.extend(self.gen.take_ops())
        if self.switch is not None:
            self.ops.extend(self.switch.take_ops())

    # ================================================================ failover
    def _delivered(self, node: str, path: str, flow_id: str, direction: int,
                   now: float) -> None:
        if self.cut is not None and self.cut.healed and node == self.cut.source:
            self.cut = None  # it kept the role: nothing to blame on the cut any more
        fo = self.failover
        if fo is not None and fo.healed and fo.target is None and node == fo.source:
            # back before anyone took over: no failover, no hardware window
            self.ops.append(Op("ok", "cluster", now, F_FAILOVER,
                               {"from": node, "to": node, "resumed": True}))
            self.failover = fo = None
        if fo is None or fo.target != node:
            self.last_path[flow_id, direction] = (path, now)
            return
        if fo.window is None:
            self.ops.append(Op("ok", "cluster", now, F_FAILOVER,
                               {"from": fo.source, "to": node}))
            fo.window = (now + self.opt.hw_window, PathCount())
        if now <= fo.window[0]:
            # The established traffic the failover inherited: flows established
            # `settle` seconds before it began, time enough to be replicated and
            # installed (how long that takes is sync_install_p99, measured on its
            # own), and, of those, the directions the old active forwarded in
            # hardware (act_ct keeps a young UDP flow's replies in software until
            # it is assured, on any node); a flow still opening goes through
            # software on any node.
            est = self.gen.established_at(flow_id)
            before = fo.paths_before.get((flow_id, direction))
            if est is not None and est < fo.started - self.opt.hw_settle \
                    and before is not None and before[0] == "hw" \
                    and fo.started - before[1] < self._hw_idle(flow_id):
                fo.window[1].add(path)
        self.last_path[flow_id, direction] = (path, now)

    def _hw_idle(self, flow_id: str) -> float:
        """How long a flow may idle and still be in hardware: its flow-table
        timeout (nf_flowtable_{tcp,udp}_timeout), less two card polls (the GC
        that tears it down runs once a poll)."""
        return self.hw_idle["udp" if self.gen.flow(flow_id).proto == "udp" else "tcp"]

    def _close_window(self, now: float) -> None:
        fo = self.failover
        if fo is not None and fo.window is not None and now > fo.window[0]:
            counts = fo.window[1]
            self.ops.append(Op("info", fo.target or "?", now, F_HW_HITS,
                               {"hw": counts.hw, "sw": counts.sw}))
            self.failover = None

    def _begin_failover(self, source: str, now: float,
                        detail: dict[str, Any] | None = None, fault: int | None = None) -> None:
        if self.failover is not None and self.failover.window is None:
            return  # one is already under way
        self._close_window(float("inf"))
        self.failover = _Failover(source, now, fault=fault, paths_before=dict(self.last_path))
        self.ops.append(Op("invoke", "cluster", now, F_FAILOVER,
                           {"from": source, **(detail or {})}))

    def _switch_to(self, new: str, now: float) -> None:
        sw = self.switch
        assert sw is not None
        old = sw.active
        cut = self.cut if self.cut is not None and self.cut.source == old else None
        if cut is not None:
            self.cut = None  # the switch leaves the cut node: the cut explains no later move
        if self.failover is None or self.failover.window is not None:
            if cut is not None:
                # the active's traffic stops now, not when its broker link was cut
                self._begin_failover(cut.source, now, fault=cut.fault)
            else:
                # not begun by a fault on the active: why the node took the role
                # (stable_roles judges it)
                promo = (self.views[new].state or {}).get("promotion")
                reason = promo.get("reason", "") if isinstance(promo, dict) else ""
                self._begin_failover(old or "?", now,
                                     {"unprompted": True, "to": new, "reason": reason})
        assert self.failover is not None
        self.failover.target = new
        got = self._preinstalled(new, old)
        if got is not None:
            self.ops.append(Op("info", new, now, F_PREINSTALL, got))
        if old is not None:
            was = self.views[old].state or self.views[old].full or {}
            self.left[old] = (was.get("epoch"), was.get("term"))
        sw.active = new

    def _preinstalled(self, new: str, old: str | None) -> dict[str, Any] | None:
        """What the new active's card held when it took the role (the node
        records it at that moment: its promotion), against what the old active's
        card held (its last full /state; without one, the new active's own count
        of offloadable connections). A node that promotes itself half-empty is
        measured against the old active's card, not its own empty table. An insert the
        card has accepted (PENDING, landing `insert_latency` later) counts."""
        st = self.views[new].state or {}
        promo = st.get("promotion")  # brief /state; the full one lists them all
        if promo is None and st.get("promotions"):
            promo = st["promotions"][-1]
        if st.get("epoch") is not None and self.left.get(new) == (st["epoch"], st.get("term")):
            # The switch comes back to a node that never gave the role up (two
            # actives: a partition, a stall): its promotion is from before the switch
            # left it (the run's start, with an empty card; `ctlab chaos --seed 7608
            # --backend netns --broker bridged` measured 0/800). What its card holds
            # now is the measure (its last full /state, a second old at most).
            off = (self.views[new].full or {}).get("offload") or {}
            if off.get("installed") is None:
                return None
            promo = {**off, "pending": off.get("pending", 0), "at": None}
        elif not isinstance(promo, dict) or promo.get("term") != st.get("term"):
            off = (self.views[new].standby_state or {}).get("offload") or {}
            if off.get("eligible") is None:  # (a big table's first count still under way)
                return None
            promo = {**off, "pending": off.get("pending", 0), "at": None}
        before = (self.views[old].full or {}).get("offload") if old in self.views else None
        if isinstance(before, dict) and "installed" in before:
            # what the old active had in hardware (its last full /state, a second old
            # at most): a flow idle past its flow-table timeout is out of hardware on
            # every node, so it is not a pre-install the new active owes
            eligible = int(before["installed"]) + int(before.get("pending", 0))
        else:  # the new active's own count (None while it is still counting, after
            # the moment of its promotion: its last count as a standby then)
            own = promo.get("eligible")
            if own is None:
                own = ((self.views[new].standby_state or {}).get("offload") or {}) \
                    .get("eligible")
            if own is None:
                return None
            eligible = int(own)
        in_hw, pending = int(promo["installed"]), int(promo.get("pending", 0))
        return {"installed": min(in_hw + pending, eligible), "eligible": eligible,
                "in_hw": in_hw, "pending": pending, "promoted_at": promo.get("at")}

    # ================================================================ observer
    async def _state(self, name: str, full: bool = True) -> dict[str, Any] | None:
        v = self.views[name]
        path = "/state" if full else "/state?brief=1"
        sent = time.monotonic()
        try:
            st = await control.get(self.backend.control_url(name), path, STATE_TIMEOUT)
        except control.ControlError:
            v.failures += 1
            v.state = None
            return None
        v.failures = 0
        v.state = st
        if v.epoch is not None and st.get("epoch") != v.epoch:
            v.events_since = 0  # a new process: its event numbers start again
            v.standby_state = None  # ... and what the old one held is gone
        if full:
            v.full = st
            v.note_started(st, sent, time.monotonic())
            if st.get("role") != ACTIVE:
                v.standby_state = st
        v.epoch = st.get("epoch")
        return dict(st)

    async def _states(self, full: bool = True) -> dict[str, dict[str, Any] | None]:
        got = await asyncio.gather(*(self._state(n, full) for n in self.nodes))
        return dict(zip(self.nodes, got, strict=True))

    async def _watch(self) -> None:
        """Each node is followed on its own: a node that does not answer (a
        paused process, a partitioned container) costs its own request's
        STATE_TIMEOUT, not everybody's. (Polled together, one paused active made
        every round wait 0.5 s for it, and the runner saw the new active up to
        1.4 s after it took over: a pause failover measured 1.8 s instead of
        the 0.8 s it took.)"""
        async with asyncio.TaskGroup() as tg:
            for name in self.nodes:
                tg.create_task(self._watch_node(name), name=f"watch-{name}")

    async def _watch_node(self, name: str) -> None:
        next_sample = 0.0
        while True:
            now = self.now()
            full = now >= next_sample  # the whole /state (a pass over its tables): seldom
            st = await self._state(name, full)
            now = self.now()
            self._follow(self._known(), now)
            if full:
                self._sample({name: st}, now)
                next_sample = now + self.opt.sample
            await asyncio.sleep(self.opt.poll)

    def _known(self) -> dict[str, dict[str, Any] | None]:
        """Every node's last /state (None: its last request failed)."""
        return {n: self.views[n].state for n in self.nodes}

    def _follow(self, states: Mapping[str, dict[str, Any] | None], now: float) -> None:
        sw = self.switch
        assert sw is not None
        up = {n for n, s in states.items() if s is not None and n not in self.down}
        actives = {n: s for n, s in states.items()
                   if s is not None and s.get("role") == ACTIVE and n in up}
        if self.sc.cluster.mode == "active-active":
            live = set(actives)
            if live and live != sw.live:
                lost = sw.live - live
                sw.live = live
                if lost:
                    self._begin_failover(sorted(lost)[0], now)
                    assert self.failover is not None
                    self.failover.target = sorted(live)[0]
            return
        if not actives:
            return
        best = max(actives, key=lambda n: (actives[n].get("term", 0), n == sw.active))
        if best != sw.active:
            self._switch_to(best, now)

    def _sample(self, states: Mapping[str, dict[str, Any] | None], now: float) -> None:
        for name, st in states.items():
            if st is None:
                continue
            v = self.views[name]
            c = st.get("counters") or {}
            hw = float(c.get("packets_hw", 0))
            sw_ = float(c.get("packets_sw", 0)) + float(c.get("packets_sw-fastpath", 0))
            prev = v.last_counters
            if prev and prev.get("epoch") == v.epoch and now > prev["t"]:
                dt = now - prev["t"]
                self.history.sample(now, name, "hw_pps", max(0.0, hw - prev["hw"]) / dt)
                self.history.sample(now, name, "sw_pps", max(0.0, sw_ - prev["sw"]) / dt)
            v.last_counters = {"t": now, "hw": hw, "sw": sw_, "epoch": v.epoch or 0}
            tables = st.get("tables") or {}
            self.history.sample(now, name, "ct_entries", tables.get("conntrack", 0))
            self.history.sample(now, name, "card_entries", tables.get("card_entries", 0))
            lag = (st.get("sync_lag_ms") or {}).get("p99")
            if lag is not None:
                self.history.sample(now, name, "sync_lag_ms", lag)
            self.history.sample(now, name, "events_published",
                                (st.get("outbox") or {}).get("items", 0))
            self.history.sample(now, name, "events_applied",
                                (st.get("replica") or {}).get("items", 0))
            self.history.sample(now, name, "bad_messages", st.get("bad_messages", 0))

    async def _events(self, name: str) -> None:
        v = self.views[name]
        url = self.backend.control_url(name)
        while True:
            try:
                got = await control.get(url, f"/events?since={v.events_since}&wait=0.5&brief=1",
                                        3.0)
            except control.ControlError:
                await asyncio.sleep(0.2)
                continue
            nxt = int(got.get("next", 0))
            if nxt < v.events_since:
                v.events_since = 0
                continue
            now = self.now()
            for ev in got.get("events", ()):
                kind = str(ev.get("type", "")).lower()
                orig = ev.get("orig")
                if not orig or kind not in EVENT_TYPES:
                    continue
                key = entry_key(orig)
                self.ops.append(Op("info", name, now, F_CT, {"event": kind, "key": key}))
                if kind == "destroy" and ev.get("reason") == "timeout":
                    self.ops.append(Op("info", name, now, F_EXPIRE,
                                       {"key": key, "timeout": ev.get("timeout")}))
            v.events_since = max(v.events_since, nxt)

    async def _progress(self) -> None:
        while True:
            c = self.gen.counts()
            sw = self.switch
            self.progress.update(min(self.now(), self.sc.duration), phase=self.phase,
                                 active=(sw.active if sw and sw.mode != "active-active"
                                         else ",".join(sorted(sw.live)) if sw else "-"),
                                 flows=c["established"], broken=c["broken"],
                                 faults=sum(1 for r in self.records if r.action == "inject"))
            await asyncio.sleep(0.25)

    # ================================================================ nemesis
    async def _nemesis(self) -> None:
        for step in self.steps:
            delay = step.at - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._apply(step)
        rest = self.sc.duration - self.now()
        if rest > 0:
            await asyncio.sleep(rest)

    def _resolve(self, step: faults.FaultStep) -> str:
        if step.action == "heal" and step.fault in self.resolved:
            return self.resolved[step.fault]
        target = step.target
        sw = self.switch
        if target == ACTIVE:
            target = (sw.active if sw and sw.active else self.nodes[0])
        elif target == "standby":
            active = sw.active if sw else None
            candidates = self.sc.cluster.candidates
            others = [n for n in candidates if n != active and n not in self.down]
            target = others[0] if others else candidates[-1]
        self.resolved[step.fault] = target
        return target

    async def _apply(self, step: faults.FaultStep) -> None:
        target = self._resolve(step)
        now = self.now()
        outage = faults.FAULTS[step.kind].outage
        on_active = (outage is not None and self.switch is not None
                     and self.switch.mode != "active-active" and target == self.switch.active)
        forwards = outage is not None and outage.forwards
        if step.action == "inject" and on_active and not forwards:
            self._begin_failover(target, now, fault=step.fault)
        try:
            applied = await self._verb(step, target)
        except Exception as exc:  # a verb that blows up did not take effect: say so
            applied = (False, f"{type(exc).__name__}: {exc}")
        ok, detail = applied
        fo = self.failover
        # An outage the active's process lives through (a SIGSTOP shorter than
        # dead_after), healed before any member took over: the failover it began
        # ends when the old active forwards again.
        if ok and step.action == "heal" and outage is not None and outage.survivable \
                and fo is not None and fo.fault == step.fault and fo.target is None:
            fo.healed = True
        if ok and step.action == "inject" and on_active and forwards:
            self.cut = _Cut(target, step.fault)
        if ok and step.action == "heal" and self.cut is not None \
                and self.cut.fault == step.fault:
            self.cut.healed = True
        if ok and outage is not None and outage.process:
            if step.action == "inject":
                self.down.add(target)
            else:
                self.down.discard(target)
        self.records.append(FaultRecord(round(now, 3), step.kind, target, ok, step.action,
                                        detail))

    async def _verb(self, step: faults.FaultStep, target: str) -> tuple[bool, str]:
        b, args = self.backend, dict(step.args)
        verb = step.verb
        if verb == "signal":
            r = await b.signal(target, str(args["signal"]))
        elif verb == "stop":
            r = await b.stop_node(target)
        elif verb == "start":
            if b.running(target):
                if self.views[target].state is None:  # paused or wedged: make sure
                    await b.stop_node(target)
                else:
                    return True, f"{target} is already running"
            r = await b.start_node(target, self.node_config(target))
        elif verb == "broker-stop":
            r = await b.stop_broker(broker_site(target))
        elif verb == "broker-start":
            await b.start_broker(broker_site(target))
            return True, f"{target} started"
        elif verb == "broker-signal":
            r = await b.signal_broker(str(args["signal"]), broker_site(target))
        elif verb == "cut":
            r = await b.cut(target, str(args["link"]))
        elif verb == "restore" and args.get("link") != "sync":
            r = await b.restore(target, str(args["link"]))
        elif verb in ("impair", "restore"):
            body = None if verb == "restore" else {
                k: v for k, v in (("loss", args.get("loss")), ("duplicate", args.get("duplicate")),
                                  ("delay", args.get("delay")), ("jitter", args.get("jitter")))
                if v is not None}
            return await self._post(target, "/nemesis", {"sync": body})
        elif verb == "card":
            knobs = {k: v for k, v in args.items() if not (k == "fail_next" and v == 0)}
            if knobs.get("fail_all") is False:
                knobs.pop("fail_all")
            return await self._post(target, "/card/fault", knobs)
        elif verb == "card-reset":
            card = self.sc.card_of(target)
            return await self._post(target, "/card/fault", {
                "capacity": card.capacity, "fail_next": 0, "fail_all": False})
        elif verb == "clock":
            return await self._post(target, "/nemesis", {"clock_offset": args["offset"]})
        else:
            return False, f"unknown verb {verb!r}"
        return r.ok, r.detail

    async def _post(self, target: str, path: str, body: Any) -> tuple[bool, str]:
        try:
            got = await control.post(self.backend.control_url(target), path, body)
        except control.ControlError as exc:
            return False, str(exc)
        return True, f"{path} {body} -> {_short(got)}"

    # ================================================================ the end
    def _node_reports(self) -> dict[str, Any]:
        """Each node's last /state, trimmed to what explains a run: its role
        history (of every process it ran, in seconds of the run, like the
        faults' times), readiness gate, tables and sync figures."""
        out: dict[str, Any] = {}
        for name, v in self.views.items():
            st = v.full or v.standby_state
            if st is None:
                out[name] = {"reachable": False}
                continue
            out[name] = {k: st.get(k) for k in (
                "role", "term", "epoch", "gate", "tables", "sync_lag_ms",
                "install_latency_ms", "bad_messages", "replica", "outbox", "nemesis",
                "mechanisms", "offload", "counters", "promotions", "defer", "gc",
                "quorum")}
            out[name]["reachable"] = v.state is not None
            out[name]["roles"] = v.role_log(self.t0)
            out[name]["started"] = v.role_starts(self.t0)
            out[name]["card"] = self.cards.get(name)
        return out

    def _roles(self) -> dict[str, Any]:
        """Every node's role timeline (its processes' starts and role changes,
        in seconds of the run), as single_active reads it."""
        return {"mode": self.sc.cluster.mode, "end": self.now(),
                "nodes": {name: single_active.role_timeline(v.role_log(self.t0),
                                                            v.role_starts(self.t0))
                          for name, v in self.views.items()}}

    async def _finish(self) -> list[Snapshot]:
        self._enter("quiesce")
        deadline = time.monotonic() + self.opt.quiesce
        snaps: list[Snapshot] = []
        while True:
            snaps = await self._snapshots()
            live = [s for s in snaps if s.alive]
            same = all(dict(s.entries) == dict(live[0].entries) for s in live[1:])
            if same or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        self._enter("check")
        await self._states()  # the final word of each node, for the report
        for name in self.nodes:
            with contextlib.suppress(control.ControlError):
                self.cards[name] = await control.get(self.backend.control_url(name), "/card")
        return snaps

    async def _snapshots(self) -> list[Snapshot]:
        async def one(name: str) -> Snapshot:
            now = self.now()
            if not self.backend.running(name):
                return Snapshot(name, now, {}, None, alive=False)
            try:
                got = await control.get(self.backend.control_url(name), "/conntrack", 10.0)
                rows = got["entries"]
            except control.ControlError:
                return Snapshot(name, now, {}, None, alive=False)
            entries, card = {}, set()
            for r in rows:
                key = entry_key(r["orig"])
                entries[key] = str(r.get("state") or "")
                if (r.get("card") or {}).get("installed"):
                    card.add(key)
            return Snapshot(name, now, entries, frozenset(card))

        return list(await asyncio.gather(*(one(n) for n in self.nodes)))

    def _invariant_specs(self) -> list[InvariantSpec]:
        """The scenario's invariants; chaos adds every other one, with defaults."""
        specs = list(self.sc.invariants)
        if self.opt.chaos:
            named = {s.name for s in specs}
            specs += [InvariantSpec(n) for n in invariants.INVARIANTS if n not in named]
        return specs

    def _report(self, snapshots: list[Snapshot], elapsed: float) -> dict[str, Any]:
        self._collect()
        self.ops.append(Op("info", CLUSTER_PROCESS, self.now(), F_ROLES, self._roles()))
        if self.sites:
            self.ops.append(Op("info", CLUSTER_PROCESS, self.now(), F_SITES, self.sites))
        for op in sorted(self.ops, key=lambda o: o.time):
            self.history.append(op)
        for r in self.records:
            self.history.record_fault(r)
        results = invariants.check(self._invariant_specs(), self.history, snapshots)
        rep = report.build(scenario=self.sc.name, seed=self.sc.seed, backend=self.backend.name,
                           results=results, history=self.history, schedule=self.steps,
                           git_revision=report.git_revision(Path(__file__).parents[1]),
                           duration=round(elapsed, 3))
        sw = self.switch
        rep["traffic"] = {"flows": self.gen.counts(),
                          "packets": {} if sw is None else {
                              "sent": sw.stats.sent, "delivered": sw.stats.delivered,
                              "unmatched": sw.stats.unmatched, "no_target": sw.stats.no_target,
                              "by_node": {n: {"hw": c.hw, "sw": c.sw}
                                          for n, c in sw.stats.by_node.items()}}}
        rep["nodes"] = self._node_reports()
        rep["cluster"] = self.cluster_settings()
        self._enter("done")
        rep["phases"] = dict(self.phase_times)  # wall seconds per phase, setup to report
        rep["expect"] = {"verdict": self.sc.expect.verdict,
                         "failing": list(self.sc.expect.failing)}
        # Chaos: a random schedule need not exercise every invariant (no failover
        # drawn: failover_time is unknown); it must make none fail.
        rep["expectation_met"] = (rep["verdict"] != "fail" if self.opt.chaos
                                  else expectation_met(self.sc, rep))
        return rep


def expectation_met(sc: Scenario, rep: Mapping[str, Any]) -> bool:
    """A scenario expecting pass passes; a negative control must fail, and
    fail on the invariants it names."""
    if sc.expect.verdict == "pass":
        return bool(rep["verdict"] == "pass")
    failing = set(report.invariants_with(rep, "fail"))
    return rep["verdict"] == sc.expect.verdict and set(sc.expect.failing) <= failing


def _short(value: Any, n: int = 120) -> str:
    text = str(value)
    return text if len(text) <= n else text[: n - 1] + "…"


async def run(scenario: Scenario, backend: Backend, options: RunOptions,
              schedule: tuple[faults.FaultStep, ...] | None = None,
              on_report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    rep = await Runner(scenario, backend, options, schedule).run()
    if on_report is not None:
        on_report(rep)
    return rep


__all__ = ["RunOptions", "Runner", "StartupError", "entry_key", "expectation_met", "run"]
