"""Scenarios as data, and the history a run records. Pure: no processes, no
sockets, no clock (every time is an argument, in seconds from the run's start).

A scenario file (YAML) says what cluster to build, what traffic to drive
through it, which faults to inject when, and which invariants must hold::

    name: failover-basic            # optional: defaults to the file's stem
    description: idle established flows; the active is killed
    seed: 1                         # traffic and chaos randomness
    duration: 20s                   # the run (numbers are seconds; or 500ms, 2s, 1.5m, 1h)
    cluster:
      name: lab                     # MQTT topic prefix (default ctlab)
      mode: active-standby          # or active-active
      preempt: false                # a returning higher-priority node takes the role back
      broker: embedded              # embedded | mosquitto | mqtt://host:port | mqtts://...
                                    # | bridged (local and netns backends: two Mosquittos,
                                    # bridged, one per site: the 1st, 3rd ... node on the
                                    # first, the others on the second; broker faults hit
                                    # the first, or the second with target: broker2)
      cluster_key: on               # HMAC on every sync message
      defer: 50ms                   # hold a packet that changed a connection until a
                                    # peer has the change (pfsync defer; default off)
      will_grace: 500ms             # a member's MQTT will waits this long for it to
                                    # reconnect (at most dead_after, 800ms; default 0:
                                    # a flap of a member's broker link moves the role)
      step_down_isolated: 1s        # an active whose own heartbeats have not come back
                                    # through the broker this long gives the role up
                                    # (default 0: never; else at least dead_after)
      quorum: 2                     # members a node must hear (itself included) to be
                                    # active: a partition's smaller side has none (default
                                    # 0: no quorum rule; at most the number of nodes)
      nodes:
        a: {priority: 200}
        b: {priority: 100, card: small}   # a card profile below (default: "default")
        w: {witness: true}          # a vote in the quorum, never active, no traffic
    cards:
      small: {capacity: 1000, insert_rate: 600000, insert_latency: 1ms, poll_interval: 1s}
    sysctl: {nf_conntrack_tcp_timeout_established: 600}   # net.netfilter.* on every node
    tc: |                           # a tc batch script (iproute2 syntax), on every node
      qdisc add dev inside ingress
    # tc_file: firewall.tc          # or the script in a file next to this one
    traffic:
      web: {proto: tcp, count: 1000, open_rate: 500, packet_rate: 2, payload: [64, 512],
            duration: 10s, start: 0s, nat: false, max_opening: 256}
    faults:
      - {at: 5s, kind: kill, target: active, duration: 5s}
    invariants:
      no_broken_flows: {}
      failover_time: {max_ms: 1000}
    mechanisms: {replication: on, preinstall: on, distributed_aging: on, readiness_gate: on}
    expect: pass                    # negative controls: {verdict: fail, failing: [name, ...]}

Unknown keys, bad values and dangling references are errors, each a
ScenarioError whose message starts with FILE:LINE:COLUMN (1-based), e.g.
"failover-basic.yaml:12:11: unknown fault kind 'kil'; known: kill, pause, ...".
The tc script is run through the offline tc model at load time, so a typo in
it is reported at its line in the scenario file too.

The history is Jepsen's: an append-only list of operations, each an
invocation ("invoke") later completed by "ok" (it happened), "fail" (it did
not) or "info" (we cannot tell), plus informational records. The vocabulary
of `f` is below (F_*); who records what:

    process        f          types             value
    flow id        open       invoke, ok, fail  {key, proto, profile, parent?}
    flow id        close      invoke, ok, fail  {key}
    flow id        transfer   fail              {key, reason}: broke while open
    flow id        stall      info              {key, retries}: a retransmission timer fired
    "cluster"      failover   invoke, ok, fail  {from} / {from, to}: the active was lost /
                                                traffic flows through the new active
    node name      preinstall info              {installed, eligible} at failover
    node name      hw_hits    info              {hw, sw}: packets right after failover
    node name      ct         info              {event: new|update|destroy, key}
    node name      expire     info              {key, timeout}: aged out on that node
    node name      seen       info              {key}: the node forwarded a packet of key
                                                (a shell may record only the first per
                                                key, node and second)

Fault records are kept beside the operations ({at, kind, target, applied} per
inject and heal), and so are metric samples (per node, per metric: hw_pps,
sw_pps, ct_entries, card_entries, sync_lag_ms, events_published,
events_applied, bad_messages).
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from node.conntrack import Sysctl, SysctlError, Tuple
from syncbus.core import MAX_DEFER

# ================================================================ vocabulary
MODES = ("active-standby", "active-active")
# The nodes' role timing: heartbeats every 100 ms; a silent peer is dead after
# 800 ms. A crash is seen at once through the MQTT will; the timeout only
# decides for a hung node (SIGSTOP), and it must outlast the scheduling stalls
# of a busy two-core machine, or a loaded active looks dead to a restarted peer
# and the roles flap.
HB_INTERVAL = 0.1
DEAD_AFTER = 0.8
BROKER_KINDS = ("embedded", "mosquitto", "bridged")
PROTOS = ("tcp", "udp", "icmp", "ftp")
FTP_MODES = ("passive", "active")
MECHANISMS = ("replication", "preinstall", "distributed_aging", "readiness_gate")
VERDICTS = ("pass", "fail", "unknown")
ROLE_TARGETS = ("active", "standby")  # resolved to a node when the fault fires
BROKER_TARGET = "broker"
BROKER2_TARGET = "broker2"  # the second broker of a bridged pair (broker_stop, broker_pause)


def broker_site(target: str) -> int:
    """Which broker of a bridged pair a broker fault's target names (1 or 2)."""
    return 2 if target == BROKER2_TARGET else 1


NETWORK = ipaddress.IPv4Network("198.18.0.0/15")  # RFC 2544 benchmarking: the only addresses
DEFAULT_CARD = "default"
MAX_PAYLOAD = 1400

OP_TYPES = ("invoke", "ok", "fail", "info")
F_OPEN, F_CLOSE, F_TRANSFER, F_STALL = "open", "close", "transfer", "stall"
F_FAILOVER, F_PREINSTALL, F_HW_HITS = "failover", "preinstall", "hw_hits"
F_CT, F_EXPIRE, F_SEEN = "ct", "expire", "seen"
F_ROLES = "roles"  # the members' role logs, read at the end of a run
F_SITES = "sites"  # a bridged pair of brokers: {member: its broker, 1 or 2} (else absent)
CLUSTER_PROCESS, NEMESIS_PROCESS = "cluster", "nemesis"

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DURATION = re.compile(r"^\s*([+-]?\d+(?:\.\d*)?|[+-]?\.\d+)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class ScenarioError(ValueError):
    """A bad scenario file: the message starts with FILE:LINE:COLUMN."""

    def __init__(self, source: str, line: int, column: int, message: str) -> None:
        super().__init__(f"{source}:{line}:{column}: {message}")
        self.source, self.line, self.column, self.message = source, line, column, message


# ================================================================ parameters
@dataclass(frozen=True)
class Param:
    """One parameter of a fault kind or an invariant: its type, default and range.

    kind: seconds (a number or "500ms"), number, int, ratio (0..1), bool,
    choice (one of `choices`) or str. `required` params have no default."""

    kind: str
    default: object = None
    doc: str = ""
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    required: bool = False

    def parse(self, raw: object) -> object:
        """The value, or ValueError with a message fit for a user."""
        if self.kind == "bool":
            if not isinstance(raw, bool):
                raise ValueError(f"expected true or false, not {raw!r}")
            return raw
        if self.kind in ("choice", "str"):
            if not isinstance(raw, str):
                raise ValueError(f"expected a string, not {raw!r}")
            if self.kind == "choice" and raw not in self.choices:
                raise ValueError(f"{raw!r} is not one of: {', '.join(self.choices)}")
            return raw
        value: float
        if self.kind == "seconds":
            value = parse_seconds(raw)
        elif self.kind == "int":
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise ValueError(f"expected an integer, not {raw!r}")
            value = raw
        else:
            if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
                raise ValueError(f"expected a number, not {raw!r}")
            value = float(raw)
        lo, hi = (0.0, 1.0) if self.kind == "ratio" else (self.lo, self.hi)
        if lo is not None and value < lo:
            raise ValueError(f"{raw!r} is below the minimum {_num(lo)}")
        if hi is not None and value > hi:
            raise ValueError(f"{raw!r} is above the maximum {_num(hi)}")
        return value


def parse_seconds(raw: object) -> float:
    """A duration: a number of seconds, or a string with a unit (ms, s, m, h)."""
    if isinstance(raw, bool):
        raise ValueError(f"expected a duration (e.g. 5s, 500ms), not {raw!r}")
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str) and (m := _DURATION.match(raw)):
        value = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"expected a duration (e.g. 5s, 500ms, 1.5m), not {raw!r}")
    if not math.isfinite(value):
        raise ValueError(f"expected a finite duration, not {raw!r}")
    return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


Params = tuple[tuple[str, Any], ...]


def _param(params: Params, name: str) -> Any:
    for key, value in params:
        if key == name:
            return value
    raise KeyError(name)


# ================================================================ the scenario
@dataclass(frozen=True)
class CardProfile:
    """An offload card's static figures (node.offload.faults.Faults defaults)."""

    name: str
    capacity: int = 2 * 1024 * 1024
    insert_rate: float = 600_000.0
    insert_latency: float = 0.001
    poll_interval: float = 1.0


@dataclass(frozen=True)
class NodeSpec:
    name: str
    priority: int = 100
    card: str = DEFAULT_CARD
    witness: bool = False  # a vote in the quorum (role.witness), never active


@dataclass(frozen=True)
class Broker:
    kind: str  # embedded | mosquitto | bridged (two Mosquittos, one per site) | url
    url: str | None = None


@dataclass(frozen=True)
class Cluster:
    nodes: tuple[NodeSpec, ...]
    name: str = "ctlab"
    mode: str = "active-standby"
    preempt: bool = False
    broker: Broker = Broker("embedded")
    cluster_key: bool = False
    defer: float = 0.0  # seconds (node config sync.defer); 0: off
    will_grace: float = 0.0  # seconds (node config role.will_grace); 0: a will acts at once
    step_down_isolated: float = 0.0  # seconds (role.step_down_isolated); 0: never
    quorum: int = 0  # members a node must hear to be active (role.quorum); 0: no rule

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    @property
    def candidates(self) -> tuple[str, ...]:
        """The nodes that may hold the active role and carry traffic (not witnesses)."""
        return tuple(n.name for n in self.nodes if not n.witness)


@dataclass(frozen=True)
class TrafficProfile:
    """Flows of one kind: `count` flows open at `open_rate` per second from
    `start`; each exchanges `packet_rate` requests per second (each answered)
    with payloads of `payload` bytes (a [lo, hi] range) and closes `duration`
    after it opened (None: when the run ends). FTP flows run control sessions
    with a data connection per transfer (`ftp_mode` passive or active). At most
    `max_opening` of its flows are in their handshake at once (a client's
    connect backlog): further opens wait, so an overloaded path slows the
    openings down instead of drowning in retransmitted SYNs."""

    name: str
    proto: str
    count: int
    clients: str  # an IPv4 network the client addresses come from
    server: str  # the server address the clients connect to
    open_rate: float = 1000.0
    packet_rate: float = 1.0
    payload: tuple[int, int] = (64, 512)
    duration: float | None = None
    start: float = 0.0
    nat: bool = False
    port: int = 80
    asymmetric: bool = False
    ftp_mode: str = "passive"
    max_opening: int = 256


@dataclass(frozen=True)
class Fault:
    """One fault: injected `at`, healed `duration` later (None: when the run
    ends, in the runner's heal-all phase). `target` is a node, a role
    (active, standby: resolved when it fires), "broker" or, for a broker
    outage, "broker2" (the second of a bridged pair). `params` holds every
    parameter of the kind, defaults filled in."""

    at: float
    kind: str
    target: str
    duration: float | None = None
    params: Params = ()

    def param(self, name: str) -> Any:
        return _param(self.params, name)

    def heal_at(self, end: float) -> float:
        return end if self.duration is None else min(end, self.at + self.duration)


@dataclass(frozen=True)
class InvariantSpec:
    name: str
    params: Params = ()

    def param(self, name: str) -> Any:
        return _param(self.params, name)


@dataclass(frozen=True)
class Mechanisms:
    """The cluster's protective mechanisms; negative controls turn one off."""

    replication: bool = True
    preinstall: bool = True
    distributed_aging: bool = True
    readiness_gate: bool = True


@dataclass(frozen=True)
class Expectation:
    verdict: str = "pass"
    failing: tuple[str, ...] = ()  # invariants that must fail (negative controls)


@dataclass(frozen=True)
class Scenario:
    name: str
    source: str
    duration: float
    cluster: Cluster
    tc: str
    seed: int = 0
    description: str = ""
    cards: tuple[CardProfile, ...] = (CardProfile(DEFAULT_CARD),)
    sysctl: Params = ()  # net.netfilter.* overrides, validated against node.conntrack.Sysctl
    traffic: tuple[TrafficProfile, ...] = ()
    faults: tuple[Fault, ...] = ()
    invariants: tuple[InvariantSpec, ...] = ()
    mechanisms: Mechanisms = Mechanisms()
    expect: Expectation = Expectation()

    def card(self, name: str) -> CardProfile:
        for c in self.cards:
            if c.name == name:
                return c
        raise KeyError(name)

    def card_of(self, node: str) -> CardProfile:
        for n in self.cluster.nodes:
            if n.name == node:
                return self.card(n.card)
        raise KeyError(node)

    def sysctl_values(self) -> Sysctl:
        return Sysctl().with_values(dict(self.sysctl))

    def with_seed(self, seed: int) -> Scenario:
        return replace(self, seed=seed)

    def with_faults(self, faults: Iterable[Fault]) -> Scenario:
        return replace(self, faults=tuple(sorted(faults, key=lambda f: f.at)))


# ================================================================ loading
def load(path: str | Path) -> Scenario:
    """Read and validate a scenario file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(str(path), 1, 1, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ScenarioError(str(path), 1, 1, "not UTF-8 text") from None
    return loads(text, str(path), base=p.parent)


def loads(text: str, source: str = "<scenario>", *, base: Path | None = None) -> Scenario:
    """Validate a scenario given as YAML text (`source` names it in errors;
    `base` is where tc_file is looked up)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise ScenarioError(source, line, col,
                            f"not YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(source, 1, 1, f"not YAML: {exc}") from None
    return _Loader(source, text, base).scenario(root)


class _Loader:
    """Walks the composed YAML nodes, so that every value keeps its position."""

    def __init__(self, source: str, text: str, base: Path | None) -> None:
        self.source = source
        self.lines = text.splitlines()
        self.base = base
        self.constructor = yaml.SafeLoader("")

    # ------------------------------------------------------------ errors
    def error(self, node: yaml.Node | None, message: str) -> ScenarioError:
        if node is None:
            return ScenarioError(self.source, 1, 1, message)
        mark = node.start_mark
        return ScenarioError(self.source, mark.line + 1, mark.column + 1, message)

    def scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return _Composite(node)
        return self.constructor.construct_object(node)

    def mapping(self, node: yaml.Node | None, where: str) -> _Map:
        return _Map(self, node, where)

    # ------------------------------------------------------------ top level
    def scenario(self, root: yaml.Node | None) -> Scenario:
        if root is None:
            raise ScenarioError(self.source, 1, 1, "empty file: a scenario is a mapping "
                                "(cluster, tc, traffic, faults, invariants, duration ...)")
        top = self.mapping(root, "the scenario")
        name = top.name("name", Path(self.source).stem if self.source else "scenario")
        description = top.text("description", "")
        seed = top.integer("seed", 0, lo=0, hi=2**63 - 1)
        duration = top.seconds("duration", None, lo=0.001, hi=7 * 86400.0)
        assert duration is not None
        cards = self.cards(top.node("cards"))
        cluster = self.cluster(top.required("cluster"), {c.name for c in cards})
        tc = self.tc(top)
        sysctl = self.sysctl(top.node("sysctl"))
        traffic = self.traffic(top.node("traffic"), cluster, duration)
        faults = self.faults(top.node("faults"), cluster, duration)
        invariants = self.invariants(top.node("invariants"))
        if not invariants:
            raise self.error(top.node("invariants") or root, "invariants: a scenario checks at "
                             f"least one; known: {', '.join(_invariant_names())}")
        mechanisms = self.mechanisms(top.node("mechanisms"))
        expect = self.expect(top.node("expect"), {i.name for i in invariants})
        top.done()
        return Scenario(name, self.source, duration, cluster, tc, seed, description, cards,
                        sysctl, traffic, faults, invariants, mechanisms, expect)

    def cards(self, node: yaml.Node | None) -> tuple[CardProfile, ...]:
        out = {DEFAULT_CARD: CardProfile(DEFAULT_CARD)}
        for key, value in self.mapping(node, "cards").entries(named=True):
            s = self.mapping(value, f"card {key}")
            d = CardProfile(key)
            out[key] = CardProfile(
                key, s.integer("capacity", d.capacity, lo=0, hi=2**32),
                s.number("insert_rate", d.insert_rate, lo=0.001, hi=1e9),
                s.seconds("insert_latency", d.insert_latency, lo=0.0, hi=60.0) or 0.0,
                s.seconds("poll_interval", d.poll_interval, lo=0.01, hi=3600.0) or 1.0)
            s.done()
        return tuple(out.values())

    def cluster(self, node: yaml.Node, cards: set[str]) -> Cluster:
        s = self.mapping(node, "cluster")
        name = s.name("name", "ctlab")
        mode = s.choice("mode", "active-standby", MODES, "role mode")
        preempt = s.flag("preempt", False)
        broker = self.broker(s.node("broker"))
        key = s.flag("cluster_key", False)
        defer = s.seconds("defer", 0.0, lo=0.0, hi=MAX_DEFER) or 0.0
        will_grace = s.seconds("will_grace", 0.0, lo=0.0, hi=DEAD_AFTER) or 0.0
        isolated_node = s.node("step_down_isolated")
        isolated = s.seconds("step_down_isolated", 0.0, lo=0.0, hi=3600.0) or 0.0
        if isolated and isolated < DEAD_AFTER:
            raise self.error(isolated_node, "step_down_isolated: 0 (never) or at least the "
                             f"nodes' dead_after ({_num(DEAD_AFTER)} s)")
        nodes = []
        first_witness: yaml.Node | None = None
        for nname, value in s.mapping_of("nodes", required=True).entries(named=True):
            n = self.mapping(value, f"node {nname}")
            priority = n.integer("priority", 100, lo=0, hi=255)
            card_node = n.node("card")
            card = n.text("card", DEFAULT_CARD)
            if card not in cards:
                raise self.error(card_node, f"unknown card profile {card!r}; "
                                 f"known: {', '.join(sorted(cards))}")
            witness_node = n.node("witness")
            witness = n.flag("witness", False)
            if witness and first_witness is None:
                first_witness = witness_node
            n.done()
            nodes.append(NodeSpec(nname, priority, card, witness))
        if not nodes:
            raise self.error(s.node("nodes"), "a cluster needs at least one node")
        quorum = s.integer("quorum", 0, lo=0, hi=len(nodes))
        if all(n.witness for n in nodes):
            raise self.error(s.node("nodes"), "a cluster needs a node that is no witness")
        if first_witness is not None and not quorum:
            raise self.error(first_witness, "a witness is a vote in the quorum: set "
                             "cluster.quorum (e.g. 2 of a two-node cluster and its witness)")
        reserved = [n.name for n in nodes
                    if n.name in (BROKER_TARGET, BROKER2_TARGET, *ROLE_TARGETS)]
        if reserved:
            knode = s.mapping_of("nodes").key_node(reserved[0])
            raise self.error(knode, f"{reserved[0]!r} is reserved (fault targets active, "
                             "standby, broker and broker2); name the node otherwise")
        s.done()
        return Cluster(tuple(nodes), name, mode, preempt, broker, key, defer, will_grace,
                       isolated, quorum)

    def broker(self, node: yaml.Node | None) -> Broker:
        if node is None:
            return Broker("embedded")
        value = self.scalar(node)
        if isinstance(value, str) and value in BROKER_KINDS:
            return Broker(value)
        if isinstance(value, str) and re.match(r"^mqtts?://", value):
            host = re.sub(r"^mqtts?://(?:[^@/]*@)?", "", value).split("/")[0]
            port = host.rsplit(":", 1)[1] if ":" in host else "1883"
            if not host.split(":")[0] or not port.isdigit() or not 0 < int(port) < 65536:
                raise self.error(node, f"bad broker URL {value!r}: use mqtt://HOST[:PORT]")
            return Broker("url", value)
        raise self.error(node, f"broker: expected embedded, mosquitto, bridged or an mqtt:// "
                         f"or mqtts:// URL, not {value!r}")

    def tc(self, top: _Map) -> str:
        inline, path = top.node("tc"), top.node("tc_file")
        if inline is not None and path is not None:
            raise self.error(path, "give either tc or tc_file, not both")
        if inline is None and path is None:
            raise self.error(top.where_node, "missing tc: the tc script every node runs "
                             "(or tc_file: a file with it)")
        if inline is not None:
            script = self.scalar(inline)
            if not isinstance(script, str):
                raise self.error(inline, "tc: expected the script as text (use tc: |)")
            top.use("tc")
            self.check_tc(script, inline, None)
            return script
        assert path is not None
        rel = self.scalar(path)
        top.use("tc_file")
        if not isinstance(rel, str) or not rel:
            raise self.error(path, "tc_file: expected a file name")
        full = (self.base or Path(".")) / rel
        try:
            script = full.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise self.error(path, f"tc_file: cannot read {str(full)!r}: {exc}") from None
        self.check_tc(script, path, str(full))
        return script

    def check_tc(self, script: str, node: yaml.Node, file: str | None) -> None:
        """Run the script through the offline tc model, command by command;
        report the first failing one where it is: in the scenario or the tc file."""
        import io

        from node.tc.args import getcmdlines
        from node.tc.cli import run_batch_text
        from node.tc.model import TcModel
        from node.tc.parse import Options

        model, prev = TcModel(), 0
        for last, command in getcmdlines(script):
            lineno, prev = prev + 1, last
            if not command.strip():
                continue
            err = io.StringIO()
            if run_batch_text(model, Options(), "tc", command.rstrip("\n") + "\n",
                              io.StringIO(), err) == 0:
                continue
            said = [ln.strip() for ln in err.getvalue().splitlines()
                    if ln.strip() and not ln.startswith("Command failed")]
            self.tc_error(script, node, file, lineno, said[0] if said else "tc failed")

    def tc_error(self, script: str, node: yaml.Node, file: str | None, lineno: int,
                 message: str) -> None:
        lines = script.splitlines()
        text = lines[lineno - 1] if lineno <= len(lines) else ""
        column = len(text) - len(text.lstrip()) + 1
        if file is not None:
            raise ScenarioError(file, lineno, column, f"tc: {message}")
        style = getattr(node, "style", None)
        if style in ("|", ">"):
            line = node.start_mark.line + 1 + lineno
            if line - 1 < len(self.lines):
                src = self.lines[line - 1]
                column = len(src) - len(src.lstrip()) + 1
        else:
            line, column = node.start_mark.line + 1, node.start_mark.column + 1
        raise ScenarioError(self.source, line, column, f"tc: {message}")

    def sysctl(self, node: yaml.Node | None) -> Params:
        out: dict[str, Any] = {}
        for key, value in self.mapping(node, "sysctl").entries():
            try:
                Sysctl().with_values({key: self.scalar(value)})
            except SysctlError as exc:
                raise self.error(value, f"sysctl: {exc}") from None
            out[key.removeprefix("net.netfilter.")] = int(self.scalar(value))
        return tuple(sorted(out.items()))

    def traffic(self, node: yaml.Node | None, cluster: Cluster,
                duration: float) -> tuple[TrafficProfile, ...]:
        out = []
        for index, (name, value) in enumerate(self.mapping(node, "traffic").entries(True)):
            s = self.mapping(value, f"traffic {name}")
            proto = s.choice("proto", None, PROTOS, "traffic protocol")
            count = s.integer("count", None, lo=1, hi=1_000_000)
            open_rate = s.number("open_rate", 1000.0, lo=0.001, hi=1e6)
            max_opening = s.integer("max_opening", 256, lo=1, hi=1_000_000)
            packet_rate = s.number("packet_rate", 1.0, lo=0.0, hi=10_000.0)
            payload = self.payload(s)
            life = s.seconds("duration", None, lo=0.001, hi=7 * 86400.0, nullable=True)
            start = s.seconds("start", 0.0, lo=0.0, hi=duration) or 0.0
            nat = s.flag("nat", False)
            default_port = {"tcp": 80, "udp": 53, "ftp": 21}.get(str(proto), 0)
            port_node = s.node("port")
            port = s.integer("port", default_port, lo=1, hi=65535)
            if proto == "icmp" and port_node is not None:
                raise self.error(port_node, "port: ICMP has no ports")
            asym_node = s.node("asymmetric")
            asymmetric = s.flag("asymmetric", False)
            if asymmetric and cluster.mode != "active-active":
                raise self.error(asym_node, "asymmetric paths need cluster mode active-active")
            mode_node = s.node("mode")
            ftp_mode = s.choice("mode", "passive", FTP_MODES, "FTP mode")
            if mode_node is not None and proto != "ftp":
                raise self.error(mode_node, "mode: only for proto ftp (passive or active)")
            if proto == "ftp" and ftp_mode == "active" and nat:
                raise self.error(mode_node, "active-mode FTP through NAT needs nf_nat_ftp, "
                                 "which the cluster does not model: use mode: passive")
            clients = self.network(s, "clients", f"198.18.{index % 256}.0/24")
            server = self.address(s, "server", f"198.19.0.{index % 254 + 1}")
            s.done()
            out.append(TrafficProfile(name, str(proto), int(count or 0), clients, server,
                                      open_rate, packet_rate, payload, life, start, nat,
                                      port, asymmetric, ftp_mode, int(max_opening or 256)))
        return tuple(out)

    def payload(self, s: _Map) -> tuple[int, int]:
        node = s.node("payload")
        if node is None:
            return (64, 512)
        s.use("payload")
        raw = self.scalar(node)
        if isinstance(raw, _Composite) and isinstance(node, yaml.SequenceNode) \
                and len(node.value) == 2:
            lo, hi = (self.scalar(n) for n in node.value)
        else:
            lo = hi = raw
        for v in (lo, hi):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_PAYLOAD:
                raise self.error(node, f"payload: expected bytes (0..{MAX_PAYLOAD}) or "
                                 f"[lo, hi], not {v!r}")
        if lo > hi:
            raise self.error(node, f"payload: [{lo}, {hi}] is an empty range")
        return (lo, hi)

    def network(self, s: _Map, key: str, default: str) -> str:
        node = s.node(key)
        text = s.text(key, default)
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise self.error(node, f"{key}: {text!r} is not an IPv4 network") from None
        if not isinstance(net, ipaddress.IPv4Network) or not net.subnet_of(NETWORK) \
                or net.num_addresses < 4:
            raise self.error(node, f"{key}: {text} is not a network of at least 4 "
                             f"addresses inside {NETWORK}")
        return str(net)

    def address(self, s: _Map, key: str, default: str) -> str:
        node = s.node(key)
        text = s.text(key, default)
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            raise self.error(node, f"{key}: {text!r} is not an IPv4 address") from None
        if addr not in NETWORK:
            raise self.error(node, f"{key}: {text} is outside {NETWORK}")
        return str(addr)

    def faults(self, node: yaml.Node | None, cluster: Cluster,
               end: float) -> tuple[Fault, ...]:
        from scenarios.faults import FAULTS

        if node is None:
            return ()
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, "faults: expected a list of {at, kind, target, duration}")
        out: list[tuple[Fault, yaml.Node]] = []
        for item in node.value:
            s = self.mapping(item, "fault")
            at = s.seconds("at", None, lo=0.0, hi=end)
            kind_node = s.node("kind")
            kind_name = s.text("kind", None)
            kind = FAULTS.get(kind_name)
            if kind is None:
                raise self.error(kind_node, f"unknown fault kind {kind_name!r}; known: "
                                 f"{', '.join(FAULTS)}{_hint(kind_name, FAULTS)}")
            target_node = s.node("target")
            default_target = BROKER_TARGET if kind.target == "broker" else None
            target = s.text("target", default_target)
            allowed = (((BROKER_TARGET, BROKER2_TARGET) if kind.resource == "broker"
                        else (BROKER_TARGET,)) if kind.target == "broker"
                       else (*cluster.node_names, *ROLE_TARGETS))
            if target not in allowed:
                raise self.error(target_node, f"{kind.name}: unknown target {target!r}; "
                                 f"known: {', '.join(allowed)}{_hint(target, allowed)}")
            dur_node, heal_node = s.node("duration"), s.node("heal")
            if dur_node is not None and heal_node is not None:
                raise self.error(heal_node, "give either duration or heal (the time it "
                                 "heals at), not both")
            length = s.seconds("duration", None, lo=0.0, hi=end, nullable=True)
            heal = s.seconds("heal", None, lo=0.0, hi=end, nullable=True)
            assert at is not None
            if heal is not None:
                if heal < at:
                    raise self.error(heal_node, f"heal: {_num(heal)}s is before the fault "
                                     f"at {_num(at)}s")
                length = heal - at
            if length is not None and at + length > end + 1e-9:
                raise self.error(dur_node, f"heals at {_num(at + length)}s, after the run "
                                 f"ends at {_num(end)}s")
            params = self.params(s.node("params"), kind.params, f"{kind.name} params", item)
            s.use("params")
            s.done()
            out.append((Fault(at, kind.name, str(target), length, params), item))
        self.check_overlaps(out, end)
        return tuple(f for f, _ in sorted(out, key=lambda p: p[0].at))

    def check_overlaps(self, faults: list[tuple[Fault, yaml.Node]], end: float) -> None:
        from scenarios.faults import FAULTS

        seen: list[tuple[Fault, yaml.Node]] = []
        for fault, node in sorted(faults, key=lambda p: p[0].at):
            res = FAULTS[fault.kind].resource
            for other, onode in seen:
                if FAULTS[other.kind].resource == res and other.target == fault.target \
                        and fault.at < other.heal_at(end):
                    raise self.error(node, f"{fault.kind} of {fault.target} at "
                                     f"{_num(fault.at)}s overlaps the {other.kind} at "
                                     f"{_num(other.at)}s (line {onode.start_mark.line + 1}), "
                                     "which is not healed yet")
            seen.append((fault, node))

    def params(self, node: yaml.Node | None, spec: Mapping[str, Param], where: str,
               owner: yaml.Node | None = None) -> Params:
        s = self.mapping(node, where)
        out = []
        for name, p in spec.items():
            vnode = s.node(name)
            if vnode is None or self.scalar(vnode) is None:
                if p.required:
                    doc = f" ({p.doc})" if p.doc else ""
                    raise self.error(vnode or node or owner, f"{where}: missing {name}{doc}")
                out.append((name, p.default))
                continue
            try:
                out.append((name, p.parse(self.scalar(vnode))))
            except ValueError as exc:
                raise self.error(vnode, f"{where}: {name}: {exc}") from None
        s.done()
        return tuple(out)

    def invariants(self, node: yaml.Node | None) -> tuple[InvariantSpec, ...]:
        from scenarios.invariants import INVARIANTS

        out = []
        top = self.mapping(node, "invariants")
        for name, value in top.entries():
            inv = INVARIANTS.get(name)
            if inv is None:
                raise self.error(top.key_node(name), f"unknown invariant {name!r}; known: "
                                 f"{', '.join(INVARIANTS)}{_hint(name, INVARIANTS)}")
            out.append(InvariantSpec(name, self.params(value, inv.params, name,
                                                       top.key_node(name))))
        return tuple(out)

    def mechanisms(self, node: yaml.Node | None) -> Mechanisms:
        s = self.mapping(node, "mechanisms")
        values = {name: s.flag(name, True) for name in MECHANISMS}
        s.done()
        return Mechanisms(**values)

    def expect(self, node: yaml.Node | None, invariants: set[str]) -> Expectation:
        if node is None:
            return Expectation()
        if isinstance(node, yaml.ScalarNode):
            value = self.scalar(node)
            if value not in VERDICTS:
                raise self.error(node, f"expect: {value!r} is not one of pass, fail, unknown")
            return Expectation(str(value))
        s = self.mapping(node, "expect")
        verdict = s.choice("verdict", "pass", VERDICTS, "verdict")
        failing: list[str] = []
        fnode = s.node("failing")
        if fnode is not None:
            s.use("failing")
            items = fnode.value if isinstance(fnode, yaml.SequenceNode) else [fnode]
            for item in items:
                name = self.scalar(item)
                if name not in invariants:
                    raise self.error(item, f"expect: {name!r} is not among this scenario's "
                                     f"invariants ({', '.join(sorted(invariants)) or 'none'})")
                failing.append(str(name))
        if failing and verdict != "fail":
            raise self.error(fnode, "expect: failing invariants need verdict: fail")
        s.done()
        return Expectation(str(verdict), tuple(failing))


def _invariant_names() -> list[str]:
    from scenarios.invariants import INVARIANTS

    return list(INVARIANTS)


@dataclass(frozen=True)
class _Composite:
    """A mapping or sequence where a scalar was expected."""

    node: yaml.Node

    def __repr__(self) -> str:
        return "a mapping" if isinstance(self.node, yaml.MappingNode) else "a list"


def _hint(word: object, known: Iterable[str]) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Map:
    """A YAML mapping read key by key; done() rejects the keys nobody asked for."""

    def __init__(self, loader: _Loader, node: yaml.Node | None, where: str) -> None:
        self.loader, self.where, self.where_node = loader, where, node
        self.items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        self.known: list[str] = []
        if node is None:
            return
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return
        if not isinstance(node, yaml.MappingNode):
            raise loader.error(node, f"{where}: expected a mapping (key: value)")
        loader.constructor.flatten_mapping(node)  # YAML merge keys (<<: *anchor)
        for knode, vnode in node.value:
            key = loader.scalar(knode)
            if not isinstance(key, str):
                raise loader.error(knode, f"{where}: keys are names, not {key!r}")
            if key in self.items:
                first = self.items[key][0].start_mark.line + 1
                raise loader.error(knode, f"{where}: duplicate key {key!r} (first on line "
                                   f"{first})")
            self.items[key] = (knode, vnode)

    def use(self, key: str) -> None:
        if key not in self.known:
            self.known.append(key)

    def node(self, key: str) -> yaml.Node | None:
        self.use(key)
        item = self.items.get(key)
        return item[1] if item else None

    def key_node(self, key: str) -> yaml.Node:
        return self.items[key][0]

    def required(self, key: str) -> yaml.Node:
        node = self.node(key)
        if node is None:
            raise self.loader.error(self.where_node, f"{self.where}: missing {key}")
        return node

    def entries(self, named: bool = False) -> Iterator[tuple[str, yaml.Node]]:
        """Every key (all of them count as known), checked as names if `named`."""
        for key, (knode, vnode) in self.items.items():
            self.use(key)
            if named and not _NAME.match(key):
                raise self.loader.error(knode, f"{self.where}: bad name {key!r}: use 1-64 "
                                        "characters of A-Z a-z 0-9 _ -")
            yield key, vnode

    def mapping_of(self, key: str, required: bool = False) -> _Map:
        node = self.required(key) if required else self.node(key)
        return _Map(self.loader, node, key)

    def typed(self, key: str, default: Any, param: Param, nullable: bool = False) -> Any:
        node = self.node(key)
        if node is None:
            if default is None and not nullable:
                raise self.loader.error(self.where_node, f"{self.where}: missing {key}")
            return default
        raw = self.loader.scalar(node)
        if raw is None or (nullable and raw in ("forever", "never")):
            if nullable:
                return None
            raise self.loader.error(node, f"{self.where}: {key}: a value is needed")
        try:
            return param.parse(raw)
        except ValueError as exc:
            raise self.loader.error(node, f"{self.where}: {key}: {exc}") from None

    def text(self, key: str, default: str | None) -> str:
        return str(self.typed(key, default, Param("str")))

    def name(self, key: str, default: str | None) -> str:
        value = self.text(key, default)
        if not _NAME.match(value):
            raise self.loader.error(self.node(key), f"{self.where}: {key}: bad name "
                                    f"{value!r}: use 1-64 characters of A-Z a-z 0-9 _ -")
        return value

    def flag(self, key: str, default: bool) -> bool:
        return bool(self.typed(key, default, Param("bool")))

    def integer(self, key: str, default: int | None, lo: int, hi: int) -> int:
        return int(self.typed(key, default, Param("int", lo=lo, hi=hi)))

    def number(self, key: str, default: float | None, lo: float, hi: float) -> float:
        return float(self.typed(key, default, Param("number", lo=lo, hi=hi)))

    def seconds(self, key: str, default: float | None, lo: float, hi: float,
                nullable: bool = False) -> float | None:
        value = self.typed(key, default, Param("seconds", lo=lo, hi=hi), nullable)
        return None if value is None else float(value)

    def choice(self, key: str, default: str | None, choices: Sequence[str], what: str) -> str:
        node = self.node(key)
        value = self.text(key, default)
        if value not in choices:
            raise self.loader.error(node, f"unknown {what} {value!r}; known: "
                                    f"{', '.join(choices)}{_hint(value, choices)}")
        return value

    def done(self) -> None:
        for key, (knode, _) in self.items.items():
            if key not in self.known:
                raise self.loader.error(knode, f"unknown key {key!r} in {self.where}; known: "
                                        f"{', '.join(self.known)}{_hint(key, self.known)}")


# ================================================================ history
def flow_key(t: Tuple) -> str:
    """The name of a connection in histories and snapshots: its original tuple
    without the zone ("tcp src=198.18.0.1 dst=198.19.0.1 sport=10000 dport=80")."""
    from node.conntrack.tuple import PROTO_NAMES

    return f"{PROTO_NAMES.get(t.proto, t.proto)} {t}"


@dataclass(frozen=True, slots=True)
class Op:
    """A history operation (Jepsen): invoke, then ok / fail / info; or info alone."""

    type: str
    process: str
    time: float
    f: str
    value: Any = None
    index: int = -1

    def __post_init__(self) -> None:
        if self.type not in OP_TYPES:
            raise ValueError(f"op type {self.type!r} is not one of {', '.join(OP_TYPES)}")


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """A fault step as it happened: `applied` says whether it really took effect
    (a fault that silently fails to inject is the chaos tools' classic bug)."""

    at: float
    kind: str
    target: str  # the node it hit (a role target resolved), "broker" or "broker2"
    applied: bool
    action: str = "inject"  # or "heal"
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Sample:
    time: float
    node: str
    metric: str
    value: float


@dataclass(frozen=True)
class Snapshot:
    """One member's tables at the end of the run (after heal and quiesce):
    conntrack entries (flow key -> protocol state) and hardware entries (keys)."""

    node: str
    at: float
    entries: Mapping[str, str]
    card: frozenset[str] | None = None  # None: the card's table was not read
    alive: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", MappingProxyType(dict(self.entries)))


class History:
    """Append-only: operations in time order (each gets its index), fault
    records and metric samples."""

    def __init__(self) -> None:
        self._ops: list[Op] = []
        self._faults: list[FaultRecord] = []
        self._samples: list[Sample] = []
        self._frozen: tuple[Op, ...] | None = ()

    def append(self, op: Op) -> Op:
        if self._ops and op.time < self._ops[-1].time:
            raise ValueError(f"history is in time order: {op.time} < {self._ops[-1].time}")
        op = replace(op, index=len(self._ops))
        self._ops.append(op)
        self._frozen = None
        return op

    def extend(self, ops: Iterable[Op]) -> None:
        for op in ops:
            self.append(op)

    def invoke(self, process: str, time: float, f: str, value: Any = None) -> Op:
        return self.append(Op("invoke", process, time, f, value))

    def ok(self, process: str, time: float, f: str, value: Any = None) -> Op:
        return self.append(Op("ok", process, time, f, value))

    def fail(self, process: str, time: float, f: str, value: Any = None) -> Op:
        return self.append(Op("fail", process, time, f, value))

    def info(self, process: str, time: float, f: str, value: Any = None) -> Op:
        return self.append(Op("info", process, time, f, value))

    def record_fault(self, record: FaultRecord) -> None:
        self._faults.append(record)

    def sample(self, time: float, node: str, metric: str, value: float) -> None:
        self._samples.append(Sample(time, node, metric, float(value)))

    @property
    def ops(self) -> tuple[Op, ...]:
        if self._frozen is None:
            self._frozen = tuple(self._ops)
        return self._frozen

    @property
    def faults(self) -> tuple[FaultRecord, ...]:
        return tuple(self._faults)

    @property
    def samples(self) -> tuple[Sample, ...]:
        return tuple(self._samples)

    def __len__(self) -> int:
        return len(self._ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def by_f(self, *fs: str) -> list[Op]:
        return [op for op in self._ops if op.f in fs]

    def pairs(self, f: str) -> list[tuple[Op, Op | None]]:
        """Each invocation of `f` with its completion (the next ok/fail/info of
        the same process and f), or None if it never completed."""
        open_: dict[str, int] = {}
        out: list[tuple[Op, Op | None]] = []
        for op in self._ops:
            if op.f != f:
                continue
            if op.type == "invoke":
                open_[op.process] = len(out)
                out.append((op, None))
            elif op.process in open_:
                i = open_.pop(op.process)
                out[i] = (out[i][0], op)
        return out

    def to_records(self) -> dict[str, list[Any]]:
        """JSON-ready: {"ops": [...], "faults": [...], "samples": [...]}."""
        return {
            "ops": [{"index": o.index, "type": o.type, "process": o.process, "time": o.time,
                     "f": o.f, "value": o.value} for o in self._ops],
            "faults": [{"at": r.at, "kind": r.kind, "target": r.target, "applied": r.applied,
                        "action": r.action, "detail": r.detail} for r in self._faults],
            "samples": [[s.time, s.node, s.metric, s.value] for s in self._samples],
        }

    @classmethod
    def from_records(cls, data: Mapping[str, Any]) -> History:
        h = cls()
        for o in data.get("ops", ()):
            h.append(Op(o["type"], o["process"], o["time"], o["f"], o.get("value")))
        for r in data.get("faults", ()):
            h.record_fault(FaultRecord(r["at"], r["kind"], r["target"], r["applied"],
                                       r.get("action", "inject"), r.get("detail", "")))
        for t, node, metric, value in data.get("samples", ()):
            h.sample(t, node, metric, value)
        return h


__all__ = ["Broker", "CardProfile", "Cluster", "Expectation", "Fault", "FaultRecord",
           "History", "InvariantSpec", "Mechanisms", "NodeSpec", "Op", "Param", "Sample",
           "Scenario", "ScenarioError", "Snapshot", "TrafficProfile", "flow_key",
           "load", "loads", "parse_seconds"]
