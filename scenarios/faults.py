"""The nemesis vocabulary: every fault kind as an inject/heal pair, and the
chaos schedule generator. Pure data and pure functions: the backends (local
processes, network namespaces, containers) execute the steps.

FAULTS is the explicit registry. Each kind names what it hits (a node or the
broker), the resource it occupies (two faults on one resource of one target
never overlap), its parameters, and the two actions a backend performs, as a
verb with arguments ("$name" arguments are the fault's parameters). The verbs:

    signal SIG        send a signal to the node's process (SIGKILL, SIGSTOP, SIGCONT)
    stop              stop the node gracefully (SIGTERM, wait for it to exit)
    start             start the node again (it rejoins as a standby)
    broker-stop       stop the broker (every node loses its session)
    broker-start      start it again
    broker-signal SIG send a signal to the broker (SIGSTOP: a stalled broker, SIGCONT)
                      (the broker verbs' target: "broker", or "broker2", the second
                      broker of a bridged pair)
    cut / restore     link=broker: the node's link to the broker;
                      link=data: the node's data path (its traffic ports);
                      link=bridge (target broker): the link between the two
                      brokers of a bridged pair
    impair / restore  link=sync: the node's sync messages (loss, dup, delay)
    card / card-reset set knobs of the node's offload card (node.offload.faults names)
    clock             set the node's clock offset (seconds)

plan() turns a schedule of Faults into time-ordered FaultSteps (inject, then
heal at `at + duration`, or at the run's end). chaos_faults() draws a random
schedule from a seed: the same seed, duration, nodes and kinds (or chaos mix,
CHAOS_MIXES) give the same schedule, which is what makes `ctlab chaos --seed N`
replay a run.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from scenarios.model import BROKER2_TARGET, BROKER_TARGET, ROLE_TARGETS, Fault, Param, Params

NODE, BROKER = "node", "broker"


@dataclass(frozen=True)
class Action:
    verb: str
    args: Params = ()

    def render(self, params: Mapping[str, object]) -> Params:
        """The arguments with "$name" replaced by the fault's parameter values."""
        return tuple((k, params[v[1:]] if isinstance(v, str) and v.startswith("$") else v)
                     for k, v in self.args)


@dataclass(frozen=True)
class Outage:
    """How a node fault takes its node out of service, for the runner (which
    node is down, when a failover began and how it ends) and the chaos mixes.

    process: the node's process stops answering (the runner counts it down
        until the heal);
    survivable: the process lives through it: healed before any member took
        over, the old active just carries on (the failover it began "resumed");
    fails_over: aimed at the active, it makes another member take over (a cut
        data link does so only where data links are tracked);
    forwards: the node's data path keeps forwarding through it (only its sync is
        cut): the active's traffic stops only when the switch moves to a member
        that took over, so that is when the failover begins, and an outage healed
        before anyone took over stopped no traffic at all."""

    process: bool
    survivable: bool
    fails_over: bool
    forwards: bool = False


CRASH = Outage(process=True, survivable=False, fails_over=True)  # kill -9, SIGTERM
HANG = Outage(process=True, survivable=True, fails_over=True)  # SIGSTOP
BROKER_CUT = Outage(process=False, survivable=True, fails_over=True, forwards=True)
DATA_CUT = Outage(process=False, survivable=True, fails_over=False)


@dataclass(frozen=True)
class FaultKind:
    name: str
    target: str  # NODE or BROKER
    resource: str  # what it occupies: process, broker, broker-link, data-link, sync, card, clock
    inject: Action
    heal: Action
    doc: str
    params: Mapping[str, Param] = field(default_factory=dict)
    disruptive: bool = False  # takes a node or the broker out of service
    # what a node fault that takes its node out of service does (a node fault is
    # disruptive exactly when it has one)
    outage: Outage | None = None

    def __post_init__(self) -> None:
        if self.outage is not None and not (self.disruptive and self.target == NODE):
            raise ValueError(f"fault kind {self.name}: an outage is a disruptive node fault")
        if self.target == NODE and self.disruptive and self.outage is None:
            raise ValueError(f"fault kind {self.name}: a disruptive node fault needs its outage")


def _kind(name: str, target: str, resource: str, inject: Action, heal: Action, doc: str,
          params: Mapping[str, Param] | None = None, outage: Outage | None = None,
          disruptive: bool = False) -> FaultKind:
    return FaultKind(name, target, resource, inject, heal, doc, params or {},
                     disruptive or outage is not None, outage)


_RESTORE_SYNC = Action("restore", (("link", "sync"),))

FAULTS: dict[str, FaultKind] = {k.name: k for k in (
    _kind("kill", NODE, "process", Action("signal", (("signal", "SIGKILL"),)), Action("start"),
          "kill -9 the node; heal: start it again (it rejoins as a standby)", outage=CRASH),
    _kind("pause", NODE, "process", Action("signal", (("signal", "SIGSTOP"),)),
          Action("signal", (("signal", "SIGCONT"),)),
          "SIGSTOP the node; heal: SIGCONT (it wakes up believing it is still active)",
          outage=HANG),
    _kind("restart", NODE, "process", Action("stop"), Action("start"),
          "stop the node gracefully (SIGTERM); heal: start it again", outage=CRASH),
    _kind("broker_stop", BROKER, "broker", Action("broker-stop"), Action("broker-start"),
          "stop the MQTT broker (target broker2: the second of a bridged pair); heal: start "
          "it again", disruptive=True),
    _kind("broker_pause", BROKER, "broker", Action("broker-signal", (("signal", "SIGSTOP"),)),
          Action("broker-signal", (("signal", "SIGCONT"),)),
          "SIGSTOP the MQTT broker (a stalled broker: every connection stays open, nothing "
          "is forwarded; target broker2: the second of a bridged pair); heal: SIGCONT",
          disruptive=True),
    _kind("bridge_cut", BROKER, "bridge", Action("cut", (("link", "bridge"),)),
          Action("restore", (("link", "bridge"),)),
          "cut the bridge between the two brokers of a bridged pair (--broker bridged: a "
          "partition between the sites, each broker up); heal: restore it. Drawn by chaos "
          "mix 4 on a bridged pair only",
          disruptive=True),
    _kind("partition_broker", NODE, "broker-link", Action("cut", (("link", "broker"),)),
          Action("restore", (("link", "broker"),)),
          "cut the node off the broker (its data path stays up); heal: reconnect",
          outage=BROKER_CUT),
    _kind("partition_data", NODE, "data-link", Action("cut", (("link", "data"),)),
          Action("restore", (("link", "data"),)),
          "cut the node's data path (its traffic ports; sync stays up); heal: restore",
          outage=DATA_CUT),
    _kind("sync_loss", NODE, "sync",
          Action("impair", (("link", "sync"), ("loss", "$rate"))), _RESTORE_SYNC,
          "drop a share of the node's sync messages (both ways); heal: stop dropping",
          {"rate": Param("ratio", 0.1, "share of messages dropped")}),
    _kind("sync_dup", NODE, "sync",
          Action("impair", (("link", "sync"), ("duplicate", "$rate"))), _RESTORE_SYNC,
          "duplicate a share of the node's sync messages; heal: stop",
          {"rate": Param("ratio", 0.1, "share of messages sent twice")}),
    _kind("sync_delay", NODE, "sync",
          Action("impair", (("link", "sync"), ("delay", "$delay"), ("jitter", "$jitter"))),
          _RESTORE_SYNC, "delay the node's sync messages; heal: stop delaying",
          {"delay": Param("seconds", 0.05, "added delay", lo=0.0, hi=60.0),
           "jitter": Param("seconds", 0.0, "random extra delay, up to", lo=0.0, hi=60.0)}),
    _kind("card_capacity", NODE, "card", Action("card", (("capacity", "$capacity"),)),
          Action("card-reset"),
          "shrink the node's card table (entries beyond it stay in software); heal: restore",
          {"capacity": Param("int", 0, "hardware CT entries left", lo=0, hi=2**32)}),
    _kind("card_insert_fail", NODE, "card",
          Action("card", (("fail_next", "$count"), ("fail_all", "$all"))), Action("card-reset"),
          "make the node's card refuse inserts; heal: accept them again",
          {"count": Param("int", 0, "the next N inserts fail", lo=0, hi=2**32),
           "all": Param("bool", True, "every insert fails")}),
    _kind("clock_skew", NODE, "clock", Action("clock", (("offset", "$offset"),)),
          Action("clock", (("offset", 0.0),)),
          "step the node's clock (every timer of the node jumps with it, as on a host "
          "whose timers follow a stepped clock); heal: step it back. In no chaos mix: a "
          "forward step legitimately ages entries early (ask with --kinds)",
          {"offset": Param("seconds", 30.0, "seconds added", lo=-86400.0, hi=86400.0)}),
)}

# The chaos mixes: how `ctlab chaos` draws when no --kinds are given, by
# version. A seed's schedule depends on the mix (the draw picks a kind by its
# index in it, with its weight), so a shipped mix never changes: a new default is
# a new version, and `ctlab chaos --mix N` replays the seeds recorded with an
# older one.
@dataclass(frozen=True)
class ChaosMix:
    """kinds: what a draw picks from, in the order it indexes them; weights:
    a kind's relative weight where it is not 1 (a mix without weights draws its
    kinds uniformly); active: the share of node-disruptive faults aimed at the
    active (the "active" role, resolved when the fault fires), or None to draw
    their target uniformly from the nodes and the roles, as --kinds does.
    On a bridged pair of brokers only: site_kinds are drawn from too (after
    `kinds`), and with either_broker a broker outage hits either broker
    ("broker" or "broker2"). Elsewhere the mix draws as if it had neither."""

    kinds: tuple[str, ...]
    weights: tuple[tuple[str, int], ...] = ()
    active: float | None = None
    site_kinds: tuple[str, ...] = ()
    either_broker: bool = False

    def __post_init__(self) -> None:
        weighted = dict(self.weights)
        every = (*self.kinds, *self.site_kinds)
        if not self.kinds or len(set(every)) != len(every) \
                or not set(every) <= set(FAULTS) or not set(weighted) <= set(self.kinds) \
                or any(w < 1 for w in weighted.values()) \
                or not (self.active is None or 0.0 < self.active < 1.0):
            raise ValueError(f"malformed chaos mix {self!r}")

    def drawn(self, bridged: bool) -> tuple[str, ...]:
        """The kinds a draw picks from, in order, on a bridged pair or not."""
        return (*self.kinds, *self.site_kinds) if bridged else self.kinds

    def weight(self, kind: str) -> int:
        return dict(self.weights).get(kind, 1)

    def describe(self) -> str:
        """As --help lists it: "kill x2" for a weight, then the active's share,
        then what a bridged pair adds."""
        out = ", ".join(k if self.weight(k) == 1 else f"{k} x{self.weight(k)}"
                        for k in self.kinds)
        if self.active is not None:
            out += f"; a node outage hits the active with p={self.active:g}"
        if self.site_kinds or self.either_broker:
            extra = [*self.site_kinds, *(["broker outages on either broker"]
                                         if self.either_broker else [])]
            out += f"; on a bridged pair also {', '.join(extra)}"
        return out


# Node faults that, aimed at the active, force a failover: kill, SIGSTOP,
# SIGTERM, or a cut from the broker.
FAILOVER_KINDS = tuple(sorted(k.name for k in FAULTS.values()
                              if k.outage is not None and k.outage.fails_over))

_MIX_2 = ("broker_pause", "broker_stop", "card_capacity", "card_insert_fail", "kill",
          "partition_broker", "partition_data", "pause", "restart", "sync_delay", "sync_dup",
          "sync_loss")
CHAOS_MIXES: dict[int, ChaosMix] = {
    # up to 2026-11-28 (seeds 5, 7, 14, 23, 53, 54 and the runs in the notes)
    1: ChaosMix(("broker_stop", "card_capacity", "card_insert_fail", "kill", "partition_broker",
                 "partition_data", "pause", "restart", "sync_delay", "sync_dup", "sync_loss")),
    # + broker_pause: a stalled broker found two election bugs (syncbus/README.md, "Roles")
    # (up to 2026-11-28: seeds 400-411, 500-509 and the CI run's seed 1)
    2: ChaosMix(_MIX_2),
    # mix 2's kinds, with runs that fail over. Of 1000 seeds of the chaos base's
    # shape (3 nodes, 30 s, a fault every 5 s), mix 2 took the active down in
    # 29%, so most runs left the failover invariants unknown. Here the four
    # FAILOVER_KINDS weigh 2 and half the node outages aim at the active: 58%,
    # with broker, card and sync faults still in 28-38% of the runs (README.md,
    # "Scenarios").
    3: ChaosMix(_MIX_2, weights=tuple((k, 2) for k in FAILOVER_KINDS), active=0.5),
    # mix 3, and on a bridged pair (--broker bridged) the site partitions too:
    # bridge_cut, and broker outages of the second broker. On one broker it
    # draws exactly what mix 3 draws (the same seeds, the same schedules).
    4: ChaosMix(_MIX_2, weights=tuple((k, 2) for k in FAILOVER_KINDS), active=0.5,
                site_kinds=("bridge_cut",), either_broker=True),
}
CHAOS_MIX = max(CHAOS_MIXES)  # the default: the newest


@dataclass(frozen=True)
class FaultStep:
    """One action of the schedule: `fault` is the fault's index in the
    schedule, so that a backend pairs each heal with its inject."""

    at: float
    action: str  # "inject" | "heal"
    kind: str
    target: str
    verb: str
    args: Params
    fault: int


def plan(faults: Sequence[Fault], end: float) -> tuple[FaultStep, ...]:
    """The steps of a schedule in time order; at equal times heals come first."""
    steps = []
    for i, f in enumerate(faults):
        kind = FAULTS[f.kind]
        params = dict(f.params)
        steps.append(FaultStep(f.at, "inject", f.kind, f.target, kind.inject.verb,
                               kind.inject.render(params), i))
        steps.append(FaultStep(f.heal_at(end), "heal", f.kind, f.target, kind.heal.verb,
                               kind.heal.render(params), i))
    return tuple(sorted(steps, key=lambda s: (s.at, s.action != "heal", s.fault)))


# ================================================================ chaos
# How chaos picks each kind's parameters (the explicit table of its choices).
_CHAOS_PARAMS: dict[str, Callable[[random.Random], dict[str, object]]] = {
    "sync_loss": lambda r: {"rate": round(r.uniform(0.05, 0.3), 3)},
    "sync_dup": lambda r: {"rate": round(r.uniform(0.05, 0.3), 3)},
    "sync_delay": lambda r: {"delay": round(r.uniform(0.01, 0.2), 3),
                             "jitter": round(r.uniform(0.0, 0.05), 3)},
    "card_capacity": lambda r: {"capacity": r.choice((0, 100, 1000))},
    "card_insert_fail": lambda r: ({"count": 0, "all": True} if r.random() < 0.5
                                   else {"count": r.randint(1, 1000), "all": False}),
    "clock_skew": lambda r: {"offset": round(r.choice((-1, 1)) * r.uniform(1.0, 60.0), 3)},
}


def _params(kind: FaultKind, rng: random.Random) -> Params:
    chosen = _CHAOS_PARAMS.get(kind.name, lambda r: {})(rng)
    return tuple((name, chosen.get(name, p.default)) for name, p in kind.params.items())


@dataclass(frozen=True)
class ChaosOptions:
    """interval: mean seconds between two faults; length: (min, max) of a fault;
    warmup: quiet seconds at the start (flows establish); settle: quiet seconds
    at the end (the cluster converges before the final check); recover: quiet
    seconds after a disruptive fault heals before the next one."""

    interval: float = 5.0
    length: tuple[float, float] = (0.5, 5.0)
    warmup: float | None = None  # default: max(1 s, 10% of the run)
    settle: float | None = None  # default: max(2 s, 20% of the run)
    recover: float = 2.0


def chaos_kinds(kinds: Iterable[str] | None = None, mix: int = CHAOS_MIX,
                bridged: bool = False) -> list[str]:
    """The kinds a draw picks from, in the order it indexes them: `kinds` as
    given (duplicates dropped), or else chaos mix `mix` (on a bridged pair of
    brokers or not)."""
    if kinds is None:
        if mix not in CHAOS_MIXES:
            raise ValueError(f"unknown chaos mix {mix!r}; known: "
                             f"{', '.join(map(str, CHAOS_MIXES))}")
        return list(CHAOS_MIXES[mix].drawn(bridged))
    names = list(dict.fromkeys(kinds))
    for name in names:
        if name not in FAULTS:
            raise ValueError(f"unknown fault kind {name!r}; known: {', '.join(FAULTS)}")
    return names


def chaos_faults(seed: int, duration: float, nodes: Sequence[str],
                 kinds: Iterable[str] | None = None,
                 options: ChaosOptions = ChaosOptions(),
                 mix: int = CHAOS_MIX, *, bridged: bool = False) -> tuple[Fault, ...]:
    """A random schedule, deterministic from the seed, the duration, the nodes
    and the kinds (`kinds`, or else chaos mix `mix`, which may draw more on a
    bridged pair of brokers: `bridged`). Its safety rules:

    * every fault heals before `duration - settle`;
    * disruptive faults (kill, pause, restart, partitions, broker stop) never
      overlap one another, and `recover` seconds pass between them, so the
      cluster never loses more than one node (or the broker) at a time and a
      healed node can rejoin before the next blow;
    * node-disruptive kinds need two nodes (one must stay to carry traffic);
    * two faults on one resource of one target never overlap;
    * no node fault overlaps a disruptive fault (a fault on a node that is
      down, paused or cut off could not be applied, or would say nothing).
    """
    if not nodes:
        raise ValueError("chaos needs at least one node")
    names = chaos_kinds(kinds, mix, bridged)
    drawn = CHAOS_MIXES[mix] if kinds is None else ChaosMix(tuple(names))
    brokers = ((BROKER_TARGET, BROKER2_TARGET) if bridged and drawn.either_broker
               else (BROKER_TARGET,))
    active = drawn.active
    if len(nodes) < 2:
        names = [n for n in names if FAULTS[n].outage is None]
    if not names:
        return ()
    weights = [drawn.weight(n) for n in names] if drawn.weights else None
    rng = random.Random(seed)
    warmup = options.warmup if options.warmup is not None else max(1.0, 0.1 * duration)
    settle = options.settle if options.settle is not None else max(2.0, 0.2 * duration)
    last = duration - settle
    lo, hi = options.length
    out: list[Fault] = []
    busy: dict[tuple[str, str], float] = {}  # (resource, target) -> heal time
    calm_from = warmup  # when the next disruptive fault may start
    storms: list[tuple[float, float]] = []  # disruptive windows, recovery included
    t = warmup
    while True:
        t += min(rng.expovariate(1.0 / options.interval), 3 * options.interval)
        if t + lo > last:
            break
        kind = FAULTS[rng.choice(names) if weights is None
                      else rng.choices(names, weights)[0]]
        # Roles (resolved when the fault fires) only for disruptive faults: two
        # faults on one resource must not end up on one node.
        targets = ((brokers if kind.resource == BROKER else (BROKER_TARGET,))
                   if kind.target == BROKER
                   else (*sorted(nodes), *ROLE_TARGETS) if kind.outage is not None
                   else tuple(sorted(nodes)))
        if active is not None and kind.outage is not None:
            target = ("active" if rng.random() < active
                      else rng.choice([t for t in targets if t != "active"]))
        else:
            target = rng.choice(targets)
        length = min(rng.uniform(lo, hi), last - t)
        if kind.disruptive and (t < calm_from or any(t < b for _, b in busy.items())):
            continue
        if not kind.disruptive and any(a <= t + length and t <= b for a, b in storms):
            continue
        if busy.get((kind.resource, target), -1.0) > t:
            continue
        busy[(kind.resource, target)] = t + length
        if kind.disruptive:
            calm_from = t + length + options.recover
            storms.append((t, calm_from))
        out.append(Fault(round(t, 3), kind.name, target, round(length, 3), _params(kind, rng)))
    return tuple(out)


def chaos_schedule(seed: int, duration: float, nodes: Sequence[str],
                   kinds: Iterable[str] | None = None,
                   options: ChaosOptions = ChaosOptions(),
                   mix: int = CHAOS_MIX, *, bridged: bool = False) -> tuple[FaultStep, ...]:
    """chaos_faults() as steps: every inject followed by its heal before the end."""
    return plan(chaos_faults(seed, duration, nodes, kinds, options, mix, bridged=bridged),
                duration)


__all__ = ["BROKER_CUT", "CHAOS_MIX", "CHAOS_MIXES", "CRASH", "DATA_CUT", "FAILOVER_KINDS",
           "FAULTS", "HANG", "Action", "ChaosMix", "ChaosOptions", "FaultKind", "FaultStep",
           "Outage", "chaos_faults", "chaos_kinds", "chaos_schedule", "plan"]
