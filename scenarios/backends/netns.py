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

Faults: the broker link is cut with iptables in the node's namespace (TCP to
and from the broker's port dropped: the session dies by keepalive, as in a
real partition); the data path by taking data0 down. Needs root, iproute2
and iptables. Everything created is listed as it is made and removed in
reverse order at teardown, also after a failure."""

from __future__ import annotations

import asyncio
import ctypes
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

CLONE_NEWNET = 0x40000000
MQTT_PORT, CONTROL_PORT = 1883, 8000
NODE_PORTS = {"inside": 7001, "outside": 7002}
TRAFFIC_PORTS = {"inside": 9001, "outside": 9002}


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

    def __init__(self) -> None:
        super().__init__()
        self.undo: list[Callable[[], object]] = []
        self.index: dict[str, int] = {}
        self.sockets: dict[str, socket.socket] = {}
        self.k = 0
        self.rid = ""
        self.cuts: set[tuple[str, str]] = set()

    # ------------------------------------------------------------ names
    def ns(self, who: str) -> str:
        return f"{self.rid}-{who}"

    def sync_ip(self, host: int) -> str:
        return f"198.18.{self.k}.{host}"

    def data_ip(self, host: int) -> str:
        return f"198.18.{self.k + 1}.{host}"

    def node_ns(self, name: str) -> str:
        return self.ns(f"n{self.index[name]}")

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
        used = _used_subnets()
        free = [k for k in range(2, 250, 2) if k not in used and k + 1 not in used]
        if not free:
            raise BackendError("no free /24 pair left in 198.18.0.0/16")
        self.k = random.choice(free)
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
        _sh("ip", "addr", "add", f"{self.sync_ip(1)}/24", "dev", host_if)
        _sh("ip", "link", "set", host_if, "up")
        self._netns(self.ns("brk"))
        self._veth(self.ns("brk"), "sync0", "bs", f"{self.sync_ip(2)}/24", "vbrk")
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
        self.broker_proc = None
        for s in self.sockets.values():
            s.close()
        self.sockets.clear()
        while self.undo:
            await asyncio.to_thread(self.undo.pop())

    # ------------------------------------------------------------ broker
    async def start_broker(self) -> str:
        assert self.plan is not None
        host, url = self.sync_ip(2), f"mqtt://{self.sync_ip(2)}:{MQTT_PORT}"
        if self.broker_proc is not None and self.broker_proc.alive():
            return url
        logs = self.plan.workdir / "logs"
        if self.plan.broker == "mosquitto":
            conf = write_config(self.plan.workdir / "mosquitto.conf", {})
            conf.write_text(f"listener {MQTT_PORT} {host}\nallow_anonymous true\n"
                            "persistence false\nmax_queued_messages 100000\n"
                            "max_inflight_messages 100\nset_tcp_nodelay true\n",
                            encoding="utf-8")
            argv = ["mosquitto", "-c", str(conf)]
        else:
            argv = broker_command(host, MQTT_PORT)
        self.broker_proc = Process("broker", ["ip", "netns", "exec", self.ns("brk"), *argv],
                                   logs / "broker.log", python_env())
        ok = await asyncio.to_thread(wait_tcp, host, MQTT_PORT, 15.0, self.broker_proc.proc)
        if not ok:
            raise BackendError(f"the broker did not start in {self.ns('brk')}:\n"
                               f"{self.broker_proc.tail()}")
        return url

    async def stop_broker(self) -> Applied:
        p = self.broker_proc
        if p is None or not p.alive():
            return Applied(False, "no broker of ours is running")
        await asyncio.to_thread(p.stop)
        return Applied(True, f"broker (pid {p.pid}) in {self.ns('brk')} stopped")

    async def signal_broker(self, sig: str) -> Applied:
        p = self.broker_proc
        if p is None or not p.alive():
            return Applied(False, "no broker of ours is running")
        ok = p.signal(getattr(signals, sig))
        return Applied(ok, f"{sig} to the broker (pid {p.pid}) in {self.ns('brk')}")

    # ------------------------------------------------------------ nodes
    def node_config(self, name: str, config: Mapping[str, Any]) -> dict[str, Any]:
        i = self.index[name]
        url = (self.plan.broker if self.plan and self.plan.broker.startswith("mqtt")
               else f"mqtt://{self.sync_ip(2)}:{MQTT_PORT}")
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
    def _broker_rules(self, name: str, op: str) -> None:
        ns, b = self.node_ns(name), self.sync_ip(2)
        for chain, rule in (("OUTPUT", ["-d", b, "-p", "tcp", "--dport", str(MQTT_PORT)]),
                            ("INPUT", ["-s", b, "-p", "tcp", "--sport", str(MQTT_PORT)])):
            _sh("ip", "netns", "exec", ns, "iptables", op, chain, *rule, "-j", "DROP")

    def _heal_links(self, name: str) -> None:
        ns = self.node_ns(name)
        while _sh("ip", "netns", "exec", ns, "iptables", "-D", "OUTPUT", "-d", self.sync_ip(2),
                  "-p", "tcp", "--dport", str(MQTT_PORT), "-j", "DROP",
                  check=False).returncode == 0:
            pass
        while _sh("ip", "netns", "exec", ns, "iptables", "-D", "INPUT", "-s", self.sync_ip(2),
                  "-p", "tcp", "--sport", str(MQTT_PORT), "-j", "DROP",
                  check=False).returncode == 0:
            pass
        _sh("ip", "-n", ns, "link", "set", "data0", "up", check=False)

    async def cut(self, name: str, link: str) -> Applied:
        if link not in ("broker", "data"):  # (bridge_cut: no bridged pair here)
            return Applied(False, f"no link {link!r} on the netns backend")
        if (name, link) in self.cuts:
            return Applied(False, f"{name}: {link} link is already cut")
        ns = self.node_ns(name)
        try:
            if link == "broker":
                await asyncio.to_thread(self._broker_rules, name, "-I")
                how = f"iptables in {ns}: tcp to/from {self.sync_ip(2)}:{MQTT_PORT} dropped"
            else:
                await asyncio.to_thread(_sh, "ip", "-n", ns, "link", "set", "data0", "down")
                how = f"ip -n {ns} link set data0 down"
        except BackendError as exc:
            return Applied(False, str(exc))
        self.cuts.add((name, link))
        return Applied(True, how)

    async def restore(self, name: str, link: str) -> Applied:
        if (name, link) not in self.cuts:
            return Applied(False, f"{name}: {link} link is not cut")
        ns = self.node_ns(name)
        try:
            if link == "broker":
                await asyncio.to_thread(self._broker_rules, name, "-D")
                how = f"iptables rules in {ns} removed"
            else:
                await asyncio.to_thread(_sh, "ip", "-n", ns, "link", "set", "data0", "up")
                how = f"ip -n {ns} link set data0 up"
        except BackendError as exc:
            return Applied(False, str(exc))
        self.cuts.discard((name, link))
        return Applied(True, how)

    # ------------------------------------------------------------ addresses
    def control_url(self, name: str) -> str:
        return f"http://{self.sync_ip(10 + self.index[name])}:{CONTROL_PORT}"

    def port_address(self, name: str, port: str) -> Addr:
        return (self.data_ip(10 + self.index[name]), NODE_PORTS[port])

    def traffic_socket(self, side: str) -> socket.socket:
        return self.sockets[side]


__all__ = ["NetnsBackend", "socket_in"]
