"""The netns backend: every node, the broker and the traffic endpoints in a
network namespace of their own, joined by two bridges (the sync network and
the data network) that live in a hub namespace, so the host's own firewall
(Docker's FORWARD policy, br_netfilter) never sees our frames. The runner
reaches the nodes' control APIs through one veth from the host into the sync
network; it opens its traffic sockets inside the traffic namespace (setns
on this thread, socket, setns back: a socket stays in the namespace it was
made in).

    hub:      bridge S (sync 198.18.K.0/24), bridge D (data 198.18.K+1.0/24)
    host      198.18.K.1    -> S         (control API access)
    broker    198.18.K.2    -> S         (MQTT on 1883)
    node i    198.18.K.10+i -> S (sync0: MQTT, control on 8000)
              198.18.K+1.10+i -> D (data0: ports inside 7001, outside 7002)
    traffic   198.18.K+1.2  -> D (the runner's inside 9001 / outside 9002 sockets)
    broker 2  198.18.K.3    -> S         (broker `bridged` only: the second site's)

Faults: the broker link is cut with iptables in the node's namespace (TCP to
and from the broker's port dropped: the session dies by keepalive, as in a
real partition); the data path by taking data0 down. Needs root, iproute2
and iptables. Everything created is listed as it is made and removed in
reverse order at teardown, also after a failure.

Broker `bridged`: two Mosquittos, the second (in a namespace of its own)
bridged to the first (syncbus.broker.bridge_config()); the first, third ...
node use the first, the others the second; the broker faults hit the first,
or the second with the target broker2.
`bridge_cut` drops the bridge's TCP in the second broker's namespace, both
ways: a silent partition between the sites (no reset, no FIN). The bridge's
connection lives through a short one (its retransmissions get through at the
heal) and times out after about 14 s of a long one (RTO_MAX_MS), when
Mosquitto starts making it again."""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import os
import random
import signal as signals
import socket
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from node.daemon.wire import grow_buffers
from scenarios.backends.base import (
    Addr,
    Applied,
    BackendError,
    ClusterPlan,
    Process,
    ProcessBackend,
    broker_command,
    node_command,
    python_env,
    wait_tcp,
    write_config,
)
from syncbus.broker import BrokerError, bridge_config, mosquitto_config, wait_bridged

CLONE_NEWNET = 0x40000000
MQTT_PORT, CONTROL_PORT = 1883, 8000
NODE_PORTS = {"inside": 7001, "outside": 7002}
TRAFFIC_PORTS = {"inside": 9001, "outside": 9002}
# The two brokers of a bridged pair retransmit at least once a second
# (net.ipv4.tcp_rto_max_ms, per namespace, Linux >= 6.15; 120 s by default).
# With the kernel's backoff a silent partition of the bridge is over for the
# cluster only at the bridge's next retransmission: a 20 s cut ended the split
# brain 8.6 s after the heal (README.md, "Bridged brokers").
RTO_MAX, RTO_MAX_MS = "/proc/sys/net/ipv4/tcp_rto_max_ms", 1000
SITE2_CONF = "mosquitto-site2.conf"  # in the run's workdir
SUBNET_LOCK = "/run/ctlab-netns.lock"  # held while a run chooses its subnets


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise BackendError(f"{' '.join(argv)}: {r.stderr.strip() or r.stdout.strip()}")
    return r


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise BackendError(f"setns: {os.strerror(err)}")


def socket_in(netns: str, bind: Addr) -> socket.socket:
    """A UDP socket bound to `bind` inside network namespace `netns`."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            grow_buffers(s)
            s.bind(bind)
            s.setblocking(False)
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)
    return s


def _used_subnets() -> set[int]:
    out = _sh("ip", "-4", "-o", "addr", "show", check=False).stdout
    used = set()
    for line in out.splitlines():
        for word in line.split():
            if word.startswith("198.18."):
                used.add(int(word.split(".")[2]))
    return used


class NetnsBackend(ProcessBackend):
    name = "netns"
    needs_root = True
    broker_kinds = ("embedded", "mosquitto", "bridged")

    def __init__(self) -> None:
        super().__init__()
        self.undo: list[Callable[[], object]] = []
        self.index: dict[str, int] = {}
        self.sockets: dict[str, socket.socket] = {}
        self.k = 0
        self.rid = ""
        self.cuts: set[tuple[str, str]] = set()
        self.broker2: Process | None = None  # bridged: the second site's broker
        self.bridge_wait_s: float | None = None  # bridged: until the bridge carried a probe

    # ------------------------------------------------------------ names
    def ns(self, who: str) -> str:
        return f"{self.rid}-{who}"

    def sync_ip(self, host: int) -> str:
        return f"198.18.{self.k}.{host}"

    def data_ip(self, host: int) -> str:
        return f"198.18.{self.k + 1}.{host}"

    def node_ns(self, name: str) -> str:
        return self.ns(f"n{self.index[name]}")

    def broker_ip(self, name: str) -> str:
        """The address of the broker node `name` connects to (its site's)."""
        return self.sync_ip(3 if self.site_of(name) == 2 else 2)

    # ------------------------------------------------------------ setup
    async def setup(self, plan: ClusterPlan) -> None:
        if os.geteuid() != 0:
            raise BackendError("the netns backend needs root (network namespaces, veth, "
                               "iptables); use --backend local")
        for tool in ("ip", "iptables"):
            if _sh("sh", "-c", f"command -v {tool}", check=False).returncode != 0:
                raise BackendError(f"the netns backend needs {tool} (Debian: iproute2, "
                                   "iptables)")
        self.plan = plan
        self.rid = plan.run_id[:9]
        self.broker2 = self.bridge_wait_s = None
        self.index = {n: i for i, n in enumerate(plan.nodes)}
        await asyncio.to_thread(self._build)

    def _netns(self, name: str) -> None:
        _sh("ip", "netns", "add", name)
        self.undo.append(lambda: _sh("ip", "netns", "del", name, check=False))
        _sh("ip", "-n", name, "link", "set", "lo", "up")

    def _veth(self, ns: str, inner: str, bridge: str, cidr: str, outer: str) -> None:
        """A veth from namespace `ns` (named `inner` there, with `cidr`) to `bridge` in the hub."""
        hub = self.ns("hub")
        _sh("ip", "-n", hub, "link", "add", outer, "type", "veth", "peer", "name", inner,
            "netns", ns)
        _sh("ip", "-n", hub, "link", "set", outer, "master", bridge, "up")
        _sh("ip", "-n", ns, "addr", "add", cidr, "dev", inner)
        _sh("ip", "-n", ns, "link", "set", inner, "up")

    def _build(self) -> None:
        assert self.plan is not None
        hub = self.ns("hub")
        self._netns(hub)
        for br in ("bs", "bd"):
            _sh("ip", "-n", hub, "link", "add", br, "type", "bridge")
            _sh("ip", "-n", hub, "link", "set", br, "up")
        # the host's way into the sync network (removed with the hub namespace)
        host_if = f"{self.rid}h"
        _sh("ip", "-n", hub, "link", "add", "hostlink", "type", "veth", "peer", "name", host_if,
            "netns", "1")
        self.undo.append(lambda: _sh("ip", "link", "del", host_if, check=False))
        _sh("ip", "-n", hub, "link", "set", "hostlink", "master", "bs", "up")
        # Runs at once on one host (`pytest -n`, two shells) choose their subnets
        # in turn: a run's choice is seen by the next (_used_subnets()) once its
        # first address is on the host.
        with open(SUBNET_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = _used_subnets()
            free = [k for k in range(2, 250, 2) if k not in used and k + 1 not in used]
            if not free:
                raise BackendError("no free /24 pair left in 198.18.0.0/16")
            self.k = random.choice(free)
            _sh("ip", "addr", "add", f"{self.sync_ip(1)}/24", "dev", host_if)
        _sh("ip", "link", "set", host_if, "up")
        self._netns(self.ns("brk"))
        self._veth(self.ns("brk"), "sync0", "bs", f"{self.sync_ip(2)}/24", "vbrk")
        if self.plan.broker == "bridged":
            self._netns(self.ns("brk2"))
            self._veth(self.ns("brk2"), "sync0", "bs", f"{self.sync_ip(3)}/24", "vbrk2")
            if Path(RTO_MAX).exists():  # (Linux >= 6.15) see RTO_MAX_MS
                for b in ("brk", "brk2"):
                    _sh("ip", "netns", "exec", self.ns(b), "sysctl", "-qw",
                        f"net.ipv4.tcp_rto_max_ms={RTO_MAX_MS}")
        self._netns(self.ns("trf"))
        self._veth(self.ns("trf"), "data0", "bd", f"{self.data_ip(2)}/24", "vtrf")
        for name, i in self.index.items():
            ns = self.node_ns(name)
            self._netns(ns)
            self._veth(ns, "sync0", "bs", f"{self.sync_ip(10 + i)}/24", f"vs{i}")
            self._veth(ns, "data0", "bd", f"{self.data_ip(10 + i)}/24", f"vd{i}")
        for side, port in TRAFFIC_PORTS.items():
            self.sockets[side] = socket_in(self.ns("trf"), (self.data_ip(2), port))

    async def teardown(self) -> None:
        await self.stop_processes()
        if self.broker2 is not None:
            await asyncio.to_thread(self.broker2.stop)
        self.broker_proc = self.broker2 = None
        for s in self.sockets.values():
            s.close()
        self.sockets.clear()
        while self.undo:
            await asyncio.to_thread(self.undo.pop())

    # ------------------------------------------------------------ broker
    async def start_broker(self, site: int = 1) -> str:
        if site != 1:
            if self.broker2 is None:
                raise BackendError(self.no_second_broker())
            assert self.plan is not None
            if not self.broker2.alive():  # (its configuration is still there)
                self.broker2 = await asyncio.to_thread(
                    self._broker_process, "broker2", "brk2", self.sync_ip(3),
                    ["mosquitto", "-c", str(self.plan.workdir / SITE2_CONF)])
            return f"mqtt://{self.sync_ip(3)}:{MQTT_PORT}"
        assert self.plan is not None
        host, url = self.sync_ip(2), f"mqtt://{self.sync_ip(2)}:{MQTT_PORT}"
        if self.broker_proc is not None and self.broker_proc.alive():
            return url
        if self.plan.broker in ("mosquitto", "bridged"):
            argv = ["mosquitto", "-c", str(self._mosquitto_conf("mosquitto.conf", host))]
        else:
            argv = broker_command(host, MQTT_PORT)
        self.broker_proc = await asyncio.to_thread(self._broker_process, "broker", "brk",
                                                   host, argv)
        if self.plan.broker == "bridged" and self.broker2 is None:
            # the second site's broker, bridged to the first over the sync network
            host2 = self.sync_ip(3)
            conf = self._mosquitto_conf(SITE2_CONF, host2, bridge_config(
                f"ctlab-{self.rid}", host, MQTT_PORT))
            self.broker2 = await asyncio.to_thread(self._broker_process, "broker2", "brk2",
                                                   host2, ["mosquitto", "-c", str(conf)])
            try:
                self.bridge_wait_s = await wait_bridged(url, f"mqtt://{host2}:{MQTT_PORT}")
            except BrokerError as exc:
                raise BackendError(f"{exc}:\n{self.broker2.tail()}") from None
        return url

    def _mosquitto_conf(self, file: str, host: str, extra: str = "") -> Path:
        assert self.plan is not None
        conf = write_config(self.plan.workdir / file, {})
        conf.write_text(mosquitto_config(host, MQTT_PORT, extra=extra), encoding="utf-8")
        return conf

    def _broker_process(self, label: str, ns: str, host: str, argv: list[str]) -> Process:
        """A broker started in namespace `ns`, once it listens on host:1883."""
        assert self.plan is not None
        p = Process(label, ["ip", "netns", "exec", self.ns(ns), *argv],
                    self.plan.workdir / "logs" / f"{label}.log", python_env())
        if not wait_tcp(host, MQTT_PORT, 15.0, p.proc):
            tail = p.tail()
            p.stop()
            raise BackendError(f"the broker did not start in {self.ns(ns)}:\n{tail}")
        return p

    def _site_broker(self, site: int) -> tuple[Process | None, str]:
        """The broker process of `site` and its namespace."""
        return (self.broker2, self.ns("brk2")) if site == 2 else (self.broker_proc,
                                                                   self.ns("brk"))

    async def stop_broker(self, site: int = 1) -> Applied:
        if site != 1 and self.broker2 is None:
            return Applied(False, self.no_second_broker())
        p, ns = self._site_broker(site)
        if p is None or not p.alive():
            return Applied(False, "no broker of ours is running")
        await asyncio.to_thread(p.stop)
        return Applied(True, f"{p.name} (pid {p.pid}) in {ns} stopped")

    async def signal_broker(self, sig: str, site: int = 1) -> Applied:
        if site != 1 and self.broker2 is None:
            return Applied(False, self.no_second_broker())
        p, ns = self._site_broker(site)
        if p is None or not p.alive():
            return Applied(False, "no broker of ours is running")
        ok = p.signal(getattr(signals, sig))
        return Applied(ok, f"{sig} to {p.name} (pid {p.pid}) in {ns}")

    # ------------------------------------------------------------ nodes
    def node_config(self, name: str, config: Mapping[str, Any]) -> dict[str, Any]:
        i = self.index[name]
        url = (self.plan.broker if self.plan and self.plan.broker.startswith("mqtt")
               else f"mqtt://{self.broker_ip(name)}:{MQTT_PORT}")
        return {**config,
                "broker": {**config.get("broker", {}), "url": url},
                "ports": {side: {"bind": f"{self.data_ip(10 + i)}:{port}",
                                 "peer": f"{self.data_ip(2)}:{TRAFFIC_PORTS[side]}",
                                 "annotate": True}
                          for side, port in NODE_PORTS.items()},
                "control": {"listen": f"{self.sync_ip(10 + i)}:{CONTROL_PORT}"}}

    def node_argv(self, name: str, config_path: Path) -> list[str]:
        return ["ip", "netns", "exec", self.node_ns(name), *node_command(config_path)]

    def where(self, name: str) -> str:
        return f" in {self.node_ns(name)}"

    async def before_start(self, name: str) -> None:
        self.cuts = {c for c in self.cuts if c[0] != name}
        await asyncio.to_thread(self._heal_links, name)

    # ------------------------------------------------------------ links
    @staticmethod
    def _mqtt_drops(broker: str) -> tuple[tuple[str, list[str]], ...]:
        """The iptables rules (chain, match) that drop TCP to and from `broker`'s MQTT port."""
        return (("OUTPUT", ["-d", broker, "-p", "tcp", "--dport", str(MQTT_PORT)]),
                ("INPUT", ["-s", broker, "-p", "tcp", "--sport", str(MQTT_PORT)]))

    def _drop_mqtt(self, ns: str, broker: str, op: str) -> None:
        """Insert (-I) or delete (-D) the drops of TCP to and from broker:1883 in `ns`."""
        for chain, rule in self._mqtt_drops(broker):
            _sh("ip", "netns", "exec", ns, "iptables", op, chain, *rule, "-j", "DROP")

    def _heal_links(self, name: str) -> None:
        ns = self.node_ns(name)
        for chain, rule in self._mqtt_drops(self.broker_ip(name)):
            while _sh("ip", "netns", "exec", ns, "iptables", "-D", chain, *rule, "-j", "DROP",
                      check=False).returncode == 0:
                pass
        _sh("ip", "-n", ns, "link", "set", "data0", "up", check=False)

    async def cut(self, name: str, link: str) -> Applied:
        if link == "bridge":
            return await self._bridge(cut=True)
        if link not in ("broker", "data"):
            return Applied(False, f"no link {link!r} on the netns backend")
        if (name, link) in self.cuts:
            return Applied(False, f"{name}: {link} link is already cut")
        ns = self.node_ns(name)
        try:
            if link == "broker":
                b = self.broker_ip(name)
                await asyncio.to_thread(self._drop_mqtt, ns, b, "-I")
                how = f"iptables in {ns}: tcp to/from {b}:{MQTT_PORT} dropped"
            else:
                await asyncio.to_thread(_sh, "ip", "-n", ns, "link", "set", "data0", "down")
                how = f"ip -n {ns} link set data0 down"
        except BackendError as exc:
            return Applied(False, str(exc))
        self.cuts.add((name, link))
        return Applied(True, how)

    async def restore(self, name: str, link: str) -> Applied:
        if link == "bridge":
            return await self._bridge(cut=False)
        if (name, link) not in self.cuts:
            return Applied(False, f"{name}: {link} link is not cut")
        ns = self.node_ns(name)
        try:
            if link == "broker":
                await asyncio.to_thread(self._drop_mqtt, ns, self.broker_ip(name), "-D")
                how = f"iptables rules in {ns} removed"
            else:
                await asyncio.to_thread(_sh, "ip", "-n", ns, "link", "set", "data0", "up")
                how = f"ip -n {ns} link set data0 up"
        except BackendError as exc:
            return Applied(False, str(exc))
        self.cuts.discard((name, link))
        return Applied(True, how)

    async def _bridge(self, *, cut: bool) -> Applied:
        """The bridge between the two brokers of a bridged pair: its TCP dropped
        both ways in the second broker's namespace (silently: no reset), or let
        through again."""
        if self.broker2 is None:
            return Applied(False, "no bridge: the broker is not a bridged pair (--broker bridged)")
        if (("broker", "bridge") in self.cuts) == cut:
            return Applied(False, f"the bridge is {'already' if cut else 'not'} cut")
        ns, first = self.ns("brk2"), self.sync_ip(2)
        try:
            await asyncio.to_thread(self._drop_mqtt, ns, first, "-I" if cut else "-D")
        except BackendError as exc:
            return Applied(False, str(exc))
        if cut:
            self.cuts.add(("broker", "bridge"))
            return Applied(True, f"iptables in {ns}: the bridge's tcp to/from "
                                 f"{first}:{MQTT_PORT} dropped (silently)")
        self.cuts.discard(("broker", "bridge"))
        return Applied(True, f"iptables rules in {ns} removed: the bridge's tcp flows again")

    def logs(self) -> dict[str, str]:
        out = super().logs()
        if self.broker2 is not None:
            out["broker-site2"] = self.broker2.tail(20)
        return out

    # ------------------------------------------------------------ addresses
    def control_url(self, name: str) -> str:
        return f"http://{self.sync_ip(10 + self.index[name])}:{CONTROL_PORT}"

    def port_address(self, name: str, port: str) -> Addr:
        return (self.data_ip(10 + self.index[name]), NODE_PORTS[port])

    def traffic_socket(self, side: str) -> socket.socket:
        return self.sockets[side]


__all__ = ["NetnsBackend", "socket_in"]
