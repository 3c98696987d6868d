"""A node's configuration: frozen dataclasses, parsed once from YAML or JSON.

    node: a                       # 1-64 of A-Z a-z 0-9 _ -  (also the MQTT username)
    cluster: lab
    cluster_key: "at least 16 bytes of secret"   # or "hex:..."; HMAC on every frame
    broker:                       # omitted or without url: an embedded amqtt broker
      url: mqtt://a:secret@127.0.0.1:1883        # mqtts:// for TLS
      username: a                 # optional, override the URL's
      password: secret
      tls: {ca_certs: ca.pem, certfile: c.pem, keyfile: c.key, insecure: false}
      keepalive: 5
      embedded: {host: 127.0.0.1, port: 1883}    # where the embedded broker listens
    ports:                        # name -> a UDP endpoint: one raw L3 packet per datagram
      inside:  {bind: "127.0.0.1:7001", peer: "127.0.0.1:7101"}
      outside: {bind: "127.0.0.1:7002"}          # no peer: answer the last sender
      # annotate: true  prefixes every datagram sent with the packet's path (hw,
      #                 sw-fastpath, sw): 8 bytes, wire.encode_annotation()
      # type: memory    an in-memory port (in-process tests; default udp)
    tc: |                         # a tc batch script (iproute2 syntax), applied at start
      qdisc add dev inside ingress
    tc_file: firewall.tc          # or the script in a file (relative to this file)
    card: {capacity: 2097152, insert_rate: 600000, insert_latency: 0.001, poll_interval: 1.0}
    role: {mode: active-standby, priority: 100, preempt: false, hb_interval: 0.1,
           dead_after: 0.35, discover: 0.3, sync_timeout: 10,
           will_grace: 0,         # a peer's MQTT will waits this long (<= dead_after) for
                                  #   the peer to reconnect: a shorter flap of its broker
                                  #   link moves no role; a kill -9 is found that much later
           step_down_isolated: 0, # an active whose own heartbeats have not come back
                                  #   through the broker this long (0: never; else at
                                  #   least dead_after) gives the role up: a cut from the
                                  #   broker ends the split brain then, not at the heal;
                                  #   a broker outage that long leaves nobody active
           quorum: 0,             # members (this one included) a node must hear to be or
                                  #   become active (0: no quorum rule); a partition's
                                  #   smaller side then has no active (no split brain), at
                                  #   the price of none anywhere when fewer are heard
           witness: false,        # a vote in the quorum that is never active (the odd
                                  #   member of a two-node cluster: it needs no data path)
           track_data: true}      # a data port's link down (or its wire cut): FAULT,
                                  #   the active role given up (keepalived's track_interface)
    control: {listen: "127.0.0.1:8001"}
    sysctl: {nf_conntrack_udp_timeout: 30}       # net.netfilter.* names
    clock_offset: 0               # seconds added to this node's clock (skew tests)
    mechanisms:                   # the protective mechanisms; negative controls turn one off
      replication: true           # off: publish nothing about this node's connections
                                  #   (no ct batches or deletes; resync answers and
                                  #   snapshots carry no entries); still heartbeats,
                                  #   elects, receives and applies what peers send
      preinstall: true            # off: replicated entries enter conntrack but not the
                                  #   card; it offloads them on software traffic, as local ones
      distributed_aging: true     # off: no touch digests sent, received ones ignored
      readiness_gate: true        # off: eligible at once, before the snapshot completes
    sync:
      defer: 0                    # seconds (0: off; pfsync uses 0.02): hold each packet
                                  #   that changed a connection until a peer acknowledged
                                  #   the change, or this long. A cluster setting: members
                                  #   with it acknowledge what they apply.

Every problem is one ConfigError whose message names the field
("ports.inside.bind: ..."); unknown fields are errors too (a typo must not
silently fall back to a default).
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from node.conntrack.sysctl import Sysctl, SysctlError
from node.daemon.errors import ConfigError
from node.offload.faults import DEFAULT_CAPACITY, DEFAULT_INSERT_LATENCY, DEFAULT_INSERT_RATE
from syncbus import topics
from syncbus.bus import BusConfig
from syncbus.core import MAX_DEFER
from syncbus.election import ACTIVE_ACTIVE, ACTIVE_STANDBY, MAX_QUORUM
from syncbus.errors import BusError

Addr = tuple[str, int]


@dataclass(frozen=True)
class TlsConfig:
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    insecure: bool = False


@dataclass(frozen=True)
class BrokerConfig:
    url: str | None = None  # None: run an embedded broker at `embedded`
    username: str | None = None
    password: str | None = None
    tls: TlsConfig | None = None
    keepalive: int = 5
    embedded: Addr = ("127.0.0.1", 1883)


@dataclass(frozen=True)
class PortConfig:
    name: str
    type: str = "udp"  # "udp" | "memory" (in-process tests)
    bind: Addr | None = None
    peer: Addr | None = None
    annotate: bool = False  # prefix every datagram sent with its path (wire.py)


@dataclass(frozen=True)
class CardConfig:
    capacity: int = DEFAULT_CAPACITY
    insert_rate: float = DEFAULT_INSERT_RATE
    insert_latency: float = DEFAULT_INSERT_LATENCY
    poll_interval: float = 1.0


@dataclass(frozen=True)
class RoleConfig:
    mode: str = ACTIVE_STANDBY
    priority: int = 100
    preempt: bool = False
    hb_interval: float = 0.1
    dead_after: float = 0.35
    discover: float = 0.3
    sync_timeout: float = 10.0
    track_data: bool = True  # data links tracked: one down puts the node in FAULT (link.py)
    will_grace: float = 0.0  # a peer's will waits this long for the peer to reconnect
    step_down_isolated: float = 0.0  # unheard by itself this long, an active steps down
    quorum: int = 0  # members it must hear (itself included) to be active; 0: no rule
    witness: bool = False  # a vote in the quorum, never active


@dataclass(frozen=True)
class Mechanisms:
    """The cluster's protective mechanisms (all on); a negative control turns one off."""

    replication: bool = True
    preinstall: bool = True
    distributed_aging: bool = True
    readiness_gate: bool = True


@dataclass(frozen=True)
class SyncSettings:
    """Replication tuning that is not a protective mechanism."""

    defer: float = 0.0  # seconds; 0 = off (syncbus/defer.py)


@dataclass(frozen=True)
class NodeConfig:
    node: str
    cluster: str
    ports: tuple[PortConfig, ...]
    cluster_key: bytes | None = None
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    tc: str = ""
    tc_name: str = "tc"  # where the script came from (for error messages)
    card: CardConfig = field(default_factory=CardConfig)
    role: RoleConfig = field(default_factory=RoleConfig)
    control: Addr = ("127.0.0.1", 0)
    sysctl: Sysctl = field(default_factory=Sysctl)
    clock_offset: float = 0.0
    mechanisms: Mechanisms = field(default_factory=Mechanisms)
    sync: SyncSettings = field(default_factory=SyncSettings)

    def port(self, name: str) -> PortConfig:
        for p in self.ports:
            if p.name == name:
                return p
        raise KeyError(name)


# ================================================================ loading
def reference() -> str:
    """The annotated example at the top of this module (`ctlab node --help`
    prints it): every field there is, with its default or an example value."""
    doc = __doc__ or ""
    return textwrap.dedent(doc.split("\n\n", 1)[1].split("\n\nEvery problem", 1)[0])


def load(path: str | Path) -> NodeConfig:
    """Read and validate a config file (.json as JSON, anything else as YAML)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON: line {exc.lineno}: {exc.msg}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not YAML: {exc}") from None
    return parse(data, base=p.parent)


def parse(data: object, *, base: Path | None = None) -> NodeConfig:
    """Validate a decoded config document (a mapping)."""
    top = _Section(data, "")
    node = top.name("node", "node")
    cluster = top.name("cluster", "cluster")
    key = top.key("cluster_key")
    broker = _broker(top.section("broker"), base)
    ports = _ports(top.get("ports", None), "ports")
    tc, tc_name = _tc(top, base)
    card = _card(top.section("card"))
    role = _role(top.section("role"))
    control = top.section("control")
    listen = control.addr("listen", ("127.0.0.1", 0)) or ("127.0.0.1", 0)
    control.done()
    sysctl = _sysctl(top.get("sysctl", {}), "sysctl")
    offset = top.number("clock_offset", 0.0, lo=-86400.0, hi=86400.0)
    mechanisms = _mechanisms(top.section("mechanisms"))
    sync_s = top.section("sync")
    sync = SyncSettings(sync_s.number("defer", 0.0, lo=0.0, hi=MAX_DEFER))
    sync_s.done()
    top.done()
    return NodeConfig(node, cluster, ports, key, broker, tc, tc_name, card, role, listen,
                      sysctl, offset, mechanisms, sync)


def _broker(s: _Section, base: Path | None) -> BrokerConfig:
    url = s.text("url", None)
    username = s.text("username", None)
    password = s.text("password", None)
    tls_s = s.section("tls")
    tls = None
    if tls_s.present:
        tls = TlsConfig(_file(tls_s, "ca_certs", base), _file(tls_s, "certfile", base),
                        _file(tls_s, "keyfile", base), tls_s.flag("insecure", False))
    tls_s.done()
    keepalive = int(s.number("keepalive", 5, lo=1, hi=3600))
    emb = s.section("embedded")
    embedded = (emb.text("host", "127.0.0.1") or "127.0.0.1",
                int(emb.number("port", 1883, lo=0, hi=65535)))
    emb.done()
    s.done()
    if url is not None:
        try:
            BusConfig(url, "check", username=username, password=password, tls=None).endpoint()
        except BusError as exc:
            raise ConfigError(f"broker.url: {exc}") from None
    return BrokerConfig(url, username, password, tls, keepalive, embedded)


def _file(s: _Section, key: str, base: Path | None) -> str | None:
    """A file that must exist now (relative to the config file)."""
    name = s.text(key, None)
    if name is None:
        return None
    p = Path(name)
    if not p.is_absolute() and base is not None:
        p = base / p
    if not p.is_file():
        raise ConfigError(f"{s.path(key)}: no such file {str(p)!r}")
    return str(p)


def _ports(raw: object, where: str) -> tuple[PortConfig, ...]:
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"{where}: required: a mapping of port name -> "
                          "{bind: HOST:PORT, peer: HOST:PORT}")
    out = []
    for name, spec in raw.items():
        if not isinstance(name, str) or not topics.valid_name(name):
            raise ConfigError(f"{where}: bad port name {name!r}: use 1-64 characters of "
                              "A-Z a-z 0-9 _ -")
        s = _Section(spec, f"{where}.{name}")
        kind = s.choice("type", "udp", ("udp", "memory"))
        bind = s.addr("bind", None)
        peer = s.addr("peer", None)
        annotate = s.flag("annotate", False)
        s.done()
        if kind == "udp" and bind is None:
            raise ConfigError(f"{where}.{name}.bind: required for a UDP port (HOST:PORT)")
        out.append(PortConfig(name, kind, bind, peer, annotate))
    return tuple(out)


def _tc(top: _Section, base: Path | None) -> tuple[str, str]:
    inline = top.text("tc", None)
    path = top.text("tc_file", None)
    if inline is not None and path is not None:
        raise ConfigError("tc, tc_file: give the tc script inline or in a file, not both")
    if path is None:
        return inline or "", "tc"
    p = Path(path)
    if not p.is_absolute() and base is not None:
        p = base / p
    try:
        return p.read_text(encoding="utf-8"), str(p)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"tc_file: cannot read {str(p)!r}: {exc}") from None


def _card(s: _Section) -> CardConfig:
    out = CardConfig(int(s.number("capacity", DEFAULT_CAPACITY, lo=0, hi=1 << 32)),
                     s.number("insert_rate", DEFAULT_INSERT_RATE, lo=1e-9, hi=1e12),
                     s.number("insert_latency", DEFAULT_INSERT_LATENCY, lo=0.0, hi=3600.0),
                     s.number("poll_interval", 1.0, lo=0.01, hi=3600.0))
    s.done()
    return out


def _role(s: _Section) -> RoleConfig:
    out = RoleConfig(s.choice("mode", ACTIVE_STANDBY, (ACTIVE_STANDBY, ACTIVE_ACTIVE)),
                     int(s.number("priority", 100, lo=0, hi=255, integer=True)),
                     s.flag("preempt", False),
                     s.number("hb_interval", 0.1, lo=0.001, hi=60.0),
                     s.number("dead_after", 0.35, lo=0.002, hi=600.0),
                     s.number("discover", 0.3, lo=0.0, hi=600.0),
                     s.number("sync_timeout", 10.0, lo=0.001, hi=3600.0),
                     s.flag("track_data", True),
                     s.number("will_grace", 0.0, lo=0.0, hi=600.0),
                     s.number("step_down_isolated", 0.0, lo=0.0, hi=3600.0),
                     int(s.number("quorum", 0, lo=0, hi=MAX_QUORUM, integer=True)),
                     s.flag("witness", False))
    s.done()
    if not out.hb_interval < out.dead_after:
        raise ConfigError("role.dead_after: must be longer than role.hb_interval")
    if out.will_grace > out.dead_after:
        raise ConfigError("role.will_grace: must not be longer than role.dead_after "
                          "(a peer silent that long is dead anyway)")
    if out.step_down_isolated and out.step_down_isolated < out.dead_after:
        raise ConfigError("role.step_down_isolated: 0 (never) or at least role.dead_after "
                          "(a shorter stall of the broker must move no role)")
    return out


def _mechanisms(s: _Section) -> Mechanisms:
    out = Mechanisms(s.flag("replication", True), s.flag("preinstall", True),
                     s.flag("distributed_aging", True), s.flag("readiness_gate", True))
    s.done()
    return out


def _sysctl(raw: object, where: str) -> Sysctl:
    if raw is None:
        return Sysctl()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping of net.netfilter.* name -> value")
    for k, v in raw.items():
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise ConfigError(f"{where}.{k}: expected an integer, got {v!r}")
    try:
        return Sysctl().with_values(raw)
    except SysctlError as exc:
        raise ConfigError(f"{where}: {exc}") from None


# ================================================================ one section
class _Section:
    """Typed reads of one mapping; done() refuses whatever was not read."""

    def __init__(self, raw: object, where: str) -> None:
        self.where = where
        self.present = raw is not None
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where or 'config'}: expected a mapping, got "
                              f"{type(raw).__name__}")
        self.raw: dict[str, Any] = {str(k): v for k, v in raw.items()}
        self.seen: set[str] = set()

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, default: Any) -> Any:
        self.seen.add(key)
        value = self.raw.get(key, default)
        return default if value is None else value

    def section(self, key: str) -> _Section:
        return _Section(self.get(key, None), self.path(key))

    def done(self) -> None:
        extra = sorted(set(self.raw) - self.seen)
        if extra:
            raise ConfigError(f"{self.path(extra[0])}: unknown field (known here: "
                              f"{', '.join(sorted(self.seen))})")

    def text(self, key: str, default: str | None) -> str | None:
        value = self.get(key, default)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{self.path(key)}: expected a string, got {value!r}")
        return value

    def name(self, key: str, what: str) -> str:
        value = self.text(key, None)
        if value is None:
            raise ConfigError(f"{self.path(key)}: required")
        if not topics.valid_name(value):
            raise ConfigError(f"{self.path(key)}: bad {what} name {value!r}: use 1-64 "
                              "characters of A-Z a-z 0-9 _ -")
        return value

    def choice(self, key: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.text(key, default)
        if value not in allowed:
            raise ConfigError(f"{self.path(key)}: {value!r} is not one of {', '.join(allowed)}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.path(key)}: expected true or false, got {value!r}")
        return value

    def number(self, key: str, default: float, *, lo: float, hi: float,
               integer: bool = False) -> float:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            raise ConfigError(f"{self.path(key)}: expected a number, got {value!r}")
        if integer and not float(value).is_integer():
            raise ConfigError(f"{self.path(key)}: expected an integer, got {value!r}")
        if not lo <= value <= hi:
            raise ConfigError(f"{self.path(key)}: {value!r} is out of range [{lo:g}, {hi:g}]")
        return float(value)

    def addr(self, key: str, default: Addr | None) -> Addr | None:
        value = self.get(key, None)
        if value is None:
            return default
        return parse_addr(value, self.path(key))

    def key(self, key: str) -> bytes | None:
        value = self.text(key, None)
        if value is None:
            return None
        if value.startswith("hex:"):
            try:
                raw = bytes.fromhex(value[4:])
            except ValueError:
                raise ConfigError(f"{self.path(key)}: bad hex after 'hex:'") from None
        else:
            raw = value.encode()
        if len(raw) < 16:
            raise ConfigError(f"{self.path(key)}: the cluster key must be at least 16 bytes")
        return raw


def parse_addr(value: object, where: str) -> Addr:
    """HOST:PORT (IPv6 as [::1]:PORT), or {host: H, port: P}."""
    if isinstance(value, Mapping):
        host, port = value.get("host"), value.get("port")
    elif isinstance(value, str) and ":" in value:
        host, _, port_text = value.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        port = int(port_text) if port_text.isdigit() else port_text
    else:
        raise ConfigError(f"{where}: expected HOST:PORT, got {value!r}")
    if not isinstance(host, str) or not host:
        raise ConfigError(f"{where}: expected HOST:PORT, got {value!r} (no host)")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"{where}: bad port in {value!r} (0-65535)")
    return host, port


__all__ = ["Addr", "BrokerConfig", "CardConfig", "ConfigError", "Mechanisms", "NodeConfig",
           "PortConfig", "RoleConfig", "SyncSettings", "TlsConfig", "load", "parse", "parse_addr"]
