"""The local backend: the broker and every node are processes of this host on
loopback; the runner's traffic sockets are loopback sockets too. No
privileges needed. Link faults go through the nodes' nemesis hooks (the
node drops its broker session and refuses to reconnect; its ports drop
everything), since loopback has no links to take down.

Broker `bridged`: two Mosquittos, the second bridged to the first
(syncbus.broker.bridge_config(): one broker per site). The first, third ...
node connect to the first, the others to the second. The broker faults (stop,
pause, restart) hit the first, the broker of the site where the first node,
usually the active, is, or the second with the target broker2."""

from __future__ import annotations

import asyncio
import signal as signals
import socket
from collections.abc import Mapping
from typing import Any

from node.daemon.wire import grow_buffers
from scenarios import control
from scenarios.backends.base import (
    Addr,
    Applied,
    BackendError,
    ClusterPlan,
    Process,
    ProcessBackend,
    broker_command,
    python_env,
    wait_tcp,
)
from scenarios.backends.relay import Relay
from syncbus.broker import (
    BrokerError,
    Mosquitto,
    bridge_config,
    free_port,
    free_udp_port,
    wait_bridged,
)

HOST = "127.0.0.1"
LINK_VERBS = {"broker": "broker_link", "data": "data"}


def _udp_port() -> int:
    return free_udp_port(HOST)


class LocalBackend(ProcessBackend):
    name = "local"
    broker_kinds = ("embedded", "mosquitto", "bridged")

    def __init__(self) -> None:
        super().__init__()
        self.ports: dict[tuple[str, str], int] = {}
        self.controls: dict[str, int] = {}
        self.sockets: dict[str, socket.socket] = {}
        self.broker_port = 0
        self.broker_url = ""
        self.mosquitto: Mosquitto | None = None
        self.site_b: Mosquitto | None = None  # bridged: the second site's broker
        self.relay: Relay | None = None  # bridged: the bridge's link (cut by bridge_cut)
        self.bridge_wait_s: float | None = None  # bridged: until the bridge carried a probe

    async def setup(self, plan: ClusterPlan) -> None:
        self.plan = plan
        self.mosquitto = None  # (a Mosquitto of an earlier run listened on its port)
        self.site_b = self.relay = self.bridge_wait_s = None
        for side in ("inside", "outside"):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            grow_buffers(s)
            s.bind((HOST, 0))
            s.setblocking(False)
            self.sockets[side] = s
        for n in plan.nodes:
            self.controls[n] = free_port(HOST)
            for side in ("inside", "outside"):
                self.ports[(n, side)] = _udp_port()
        if plan.broker in self.broker_kinds:
            self.broker_port = free_port(HOST)
            self.broker_url = f"mqtt://{HOST}:{self.broker_port}"
        else:
            self.broker_url = plan.broker

    async def teardown(self) -> None:
        await self.stop_processes()
        await self.stop_broker()
        if self.site_b is not None:
            await asyncio.to_thread(self.site_b.close)
        if self.relay is not None:
            await self.relay.close()
        for s in self.sockets.values():
            s.close()
        self.sockets.clear()

    # ------------------------------------------------------------ broker
    async def start_broker(self, site: int = 1) -> str:
        if site != 1:
            if self.site_b is None:
                raise BackendError(self.no_second_broker())
            if self.site_b.pid is None:
                await asyncio.to_thread(self.site_b.start)
            return self.site_b.url
        assert self.plan is not None
        if self.plan.broker == "embedded":
            if self.broker_proc is None or not self.broker_proc.alive():
                self.broker_proc = Process("broker", broker_command(HOST, self.broker_port),
                                           self.plan.workdir / "logs" / "broker.log",
                                           python_env())
                if not await asyncio.to_thread(wait_tcp, HOST, self.broker_port, 15.0,
                                               self.broker_proc.proc):
                    raise BackendError(f"the embedded broker did not start:\n"
                                       f"{self.broker_proc.tail()}")
        elif self.plan.broker in ("mosquitto", "bridged"):
            if self.mosquitto is None:
                self.mosquitto = Mosquitto(host=HOST, port=self.broker_port)
            if self.mosquitto.pid is None:
                await asyncio.to_thread(self.mosquitto.start)
            if self.plan.broker == "bridged" and self.site_b is None:
                self.relay = Relay((HOST, self.broker_port))
                self.site_b = Mosquitto(host=HOST, extra=bridge_config(
                    f"ctlab-{self.plan.run_id}", HOST, await self.relay.start()))
                await asyncio.to_thread(self.site_b.start)
                try:
                    self.bridge_wait_s = await wait_bridged(self.broker_url, self.site_b.url)
                except BrokerError as exc:
                    raise BackendError(f"{exc}:\n{self.site_b.log()}") from None
        return self.broker_url

    def broker_of(self, name: str) -> str:
        """The URL of the broker node `name` connects to."""
        if self.site_of(name) == 2 and self.site_b is not None:
            return self.site_b.url
        return self.broker_url

    async def stop_broker(self, site: int = 1) -> Applied:
        if site != 1:
            if self.site_b is None:
                return Applied(False, self.no_second_broker())
            pid = self.site_b.pid
            if pid is None:
                return Applied(False, "the second broker is not running")
            await asyncio.to_thread(self.site_b.stop)
            return Applied(True, f"the second site's mosquitto (pid {pid}) stopped")
        if self.broker_proc is not None and self.broker_proc.alive():
            pid = self.broker_proc.pid
            await asyncio.to_thread(self.broker_proc.stop)
            return Applied(True, f"embedded broker (pid {pid}) stopped")
        if self.mosquitto is not None and self.mosquitto.pid is not None:
            pid = self.mosquitto.pid
            await asyncio.to_thread(self.mosquitto.stop)
            return Applied(True, f"mosquitto (pid {pid}) stopped")
        return Applied(False, "no broker of ours is running")

    async def signal_broker(self, sig: str, site: int = 1) -> Applied:
        if site != 1:
            if self.site_b is None:
                return Applied(False, self.no_second_broker())
            ok = self.site_b.signal(getattr(signals, sig))
            return Applied(ok, f"{sig} to the second site's mosquitto (pid {self.site_b.pid})"
                           if ok else "the second broker is not running")
        if self.broker_proc is not None and self.broker_proc.alive():
            p = self.broker_proc
            ok = p.signal(getattr(signals, sig))
            return Applied(ok, f"{sig} to the embedded broker (pid {p.pid})")
        if self.mosquitto is not None and self.mosquitto.signal(getattr(signals, sig)):
            return Applied(True, f"{sig} to mosquitto (pid {self.mosquitto.pid})")
        return Applied(False, "no broker of ours is running")

    # ------------------------------------------------------------ nodes
    def node_config(self, name: str, config: Mapping[str, Any]) -> dict[str, Any]:
        inside, outside = self.sockets["inside"], self.sockets["outside"]
        peers = {"inside": inside.getsockname(), "outside": outside.getsockname()}
        return {**config,
                "broker": {**config.get("broker", {}), "url": self.broker_of(name)},
                "ports": {side: {"bind": f"{HOST}:{self.ports[(name, side)]}",
                                 "peer": f"{HOST}:{peers[side][1]}", "annotate": True}
                          for side in ("inside", "outside")},
                "control": {"listen": f"{HOST}:{self.controls[name]}"}}

    # ------------------------------------------------------------ links
    async def _link(self, name: str, link: str, state: str) -> Applied:
        if link not in LINK_VERBS:
            return Applied(False, f"no link {link!r} on the local backend")
        try:
            await control.post(self.control_url(name), "/nemesis", {LINK_VERBS[link]: state})
        except control.ControlError as exc:
            return Applied(False, str(exc))
        return Applied(True, f"{name}: {link} link {state} (node nemesis hook)")

    async def cut(self, name: str, link: str) -> Applied:
        if link == "bridge":
            return self._bridge(cut=True)
        return await self._link(name, link, "cut")

    async def restore(self, name: str, link: str) -> Applied:
        if link == "bridge":
            return self._bridge(cut=False)
        return await self._link(name, link, "up")

    def _bridge(self, *, cut: bool) -> Applied:
        """The link between the two brokers of a bridged pair: cut (every
        bridge connection closed, reconnects refused) or restored."""
        if self.relay is None:
            return Applied(False, "no bridge: the broker is not a bridged pair (--broker bridged)")
        if cut:
            self.relay.cut()
            return Applied(True, "the bridge between the brokers cut (its connection closed, "
                                 "reconnects refused)")
        self.relay.restore()
        return Applied(True, "the bridge between the brokers restored (Mosquitto reconnects it)")

    def logs(self) -> dict[str, str]:
        out = super().logs()
        for label, m in (("mosquitto", self.mosquitto), ("mosquitto-site-b", self.site_b)):
            if m is not None:
                out[label] = "\n".join(m.log().splitlines()[-20:])
        return out

    # ------------------------------------------------------------ addresses
    def control_url(self, name: str) -> str:
        return f"http://{HOST}:{self.controls[name]}"

    def port_address(self, name: str, port: str) -> Addr:
        return (HOST, self.ports[(name, port)])

    def traffic_socket(self, side: str) -> socket.socket:
        return self.sockets[side]


__all__ = ["LocalBackend"]
