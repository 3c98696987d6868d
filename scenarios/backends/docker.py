"""The docker backend: the broker and every node in a container of ctlab's
image (compose/Dockerfile), on container networks, driven through the Docker
Engine API (the `docker` SDK). Faults are Docker's own verbs.

Three networks, each a /24 in 198.19.0.0/16 (198.18.0.0/15, the benchmarking
range; the netns backend takes its subnets from 198.18.0.0/16):

    data   the nodes' traffic ports; the runner's traffic sockets
    sync   MQTT between the nodes and the broker
    mgmt   the nodes' control APIs (the runner's observer and nemesis hooks)

The control API has a network of its own so that cutting a node's broker
link (sync) or its data path (data) never cuts the runner off from the node:
a partitioned node is still observed, as the netns backend observes it.

    create mode (the default; `ctlab run --backend docker` on a host)
      networks    <run>-data, <run>-sync, <run>-mgmt: 198.19.K/24, K+1, K+2
                  (gateway .1 is the host)
      broker      <run>-broker on sync .2 (`ctlab broker`, or mosquitto)
      node i      <run>-<name> on data, sync and mgmt at .10+i; its config
                  (the runner's, plus ports, control and broker URL) is
                  copied into the container at /etc/ctlab/run/node.yaml
      traffic     UDP sockets of the runner bound on the host at the data
                  network's gateway (.1); the nodes' ports send there
    attach mode (CTLAB_DOCKER_MODE=attach: the runner service of
      compose/docker-compose.yml) drives the containers of a compose project
      found by their labels (com.docker.compose.project/service), the project
      of the container the runner runs in (or CTLAB_COMPOSE_PROJECT). For a
      fresh start, as on the other backends, setup stops the project's nodes
      and its broker; the runner then starts them in its order. A node keeps
      its compose config's ports, control listener, broker URL (with its
      credentials) and cluster key, and takes the rest (tc, card, role,
      mechanisms) from the scenario: that config is copied into the container
      before each start, and the node's compose entrypoint takes it once (a
      later `docker compose start` uses the compose config again). The
      runner's traffic sockets bind at the ports' peer address (the runner
      container's data address). Nodes the scenario does not name stay
      stopped until teardown, which starts them again, or, with
      CTLAB_STOP_AFTER=1 (the compose runner), stops the whole cluster so
      that `docker compose up` returns.

Faults: SIGKILL -> `docker kill`; SIGSTOP/SIGCONT -> `docker pause`/`unpause`
(the cgroup freezer: the whole container stops); stop/start -> `docker stop`
(SIGTERM, then SIGKILL after 5 s) and `docker start` with the config of the
start; link broker -> `docker network disconnect/connect` of the sync network
(the node's MQTT session dies as in a real partition), link data -> the same
for the data network; broker stop/start -> the broker container.

Everything created carries the label ctlab.run=<run id>; teardown saves each
container's log under the run's workdir/logs and removes what this run
created (containers, then networks) and nothing else. Leftovers of a run that
could not tear down: `python -m scenarios.backends.docker cleanup [--run ID]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import ipaddress
import os
import random
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from scenarios import control
from scenarios.backends.base import (
    SIDES,
    STOP_TIMEOUT,
    Addr,
    Applied,
    Backend,
    BackendError,
    ClusterPlan,
    wait_tcp,
    write_config,
)

DEFAULT_IMAGE = "ctlab:latest"
LABEL_RUN = "ctlab.run"
NETS = ("data", "sync", "mgmt")
NET_OF_LINK = {"broker": "sync", "data": "data"}
MQTT_PORT, CONTROL_PORT = 1883, 8000
NODE_PORTS = {"inside": 7001, "outside": 7002}
CONFIG_DIR = "/etc/ctlab/run"
CONFIG_PATH = f"{CONFIG_DIR}/node.yaml"
COMPOSE_CONFIG = "/etc/ctlab/node.yaml"  # where compose mounts a node's own config
SUBNET_BASE = "198.19"
BLOCKS = range(4, 197, 4)  # K: 198.19.K-K+2.0/24 (compose/docker-compose.yml uses 200-202)
READY_TIMEOUT = 45.0  # a node container: start, imports, control API up
LOG_TAIL = 40

L_PROJECT = "com.docker.compose.project"
L_SERVICE = "com.docker.compose.service"
L_NETWORK = "com.docker.compose.network"


def _docker() -> Any:
    try:
        import docker
    except ImportError:  # pragma: no cover (a dependency of ctlab)
        raise BackendError("the docker backend needs the docker SDK for Python "
                           "(pip install docker)") from None
    return docker


def connect(timeout: float = 30.0) -> Any:
    """A Docker client from the environment (DOCKER_HOST, or the default
    socket), or a BackendError saying why there is none."""
    docker = _docker()
    where = os.environ.get("DOCKER_HOST") or "the default socket (/var/run/docker.sock)"
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:
        raise BackendError(f"no Docker engine answers at {where}: {exc}. Start dockerd "
                           "(Debian: apt-get install docker.io) or set DOCKER_HOST") from None
    return client


def _tar(files: Mapping[str, bytes], where: str = CONFIG_DIR) -> bytes:
    """A tar archive of `files` (name -> bytes) in directory `where`, to
    put_archive at "/" (the directories are made when missing)."""
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w") as tar:
        parts = where.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            d = tarfile.TarInfo("/".join(parts[:i]))
            d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, now
            tar.addfile(d)
        for name, data in files.items():
            info = tarfile.TarInfo("/".join((*parts, name)))
            info.size, info.mode, info.mtime = len(data), 0o644, now
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _untar_one(chunks: Any) -> bytes:
    buf = io.BytesIO(b"".join(chunks))
    with tarfile.open(fileobj=buf) as tar:
        for member in tar:
            f = tar.extractfile(member)
            if f is not None:
                return f.read()
    raise BackendError("empty archive")


def _host_subnets() -> set[int]:
    """Third octets of the 198.19.x.y addresses this host has (other users of the range)."""
    if shutil.which("ip") is None:
        return set()
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True,
                         check=False).stdout
    used: set[int] = set()
    for word in out.split():
        if word.startswith(SUBNET_BASE + "."):
            used.add(int(word.split(".")[2]))
    return used


def _docker_subnets(client: Any) -> set[int]:
    used: set[int] = set()
    for net in client.networks.list():
        for cfg in ((net.attrs.get("IPAM") or {}).get("Config") or ()):
            sub = cfg.get("Subnet") or ""
            with contextlib.suppress(ValueError):
                n = ipaddress.ip_network(sub, strict=False)
                if n.version == 4 and n.overlaps(ipaddress.ip_network(SUBNET_BASE + ".0.0/16")):
                    first = int(str(n.network_address).split(".")[2])
                    last = int(str(n.broadcast_address).split(".")[2])
                    used.update(range(first, last + 1))
    return used


@dataclass
class _Net:
    role: str  # data | sync | mgmt
    name: str
    id: str
    prefix: str  # "198.19.K" (create mode)

    def ip(self, host: int) -> str:
        return f"{self.prefix}.{host}"


@dataclass
class _Node:
    name: str
    container: Any  # docker.models.containers.Container
    ips: dict[str, str]  # network role -> address
    base: dict[str, Any]  # attach mode: the compose config (ports, control, broker, key)


class DockerBackend(Backend):
    name = "docker"

    def __init__(self, image: str | None = None, mode: str | None = None,
                 project: str | None = None, client: Any = None) -> None:
        super().__init__()
        self.image = image or os.environ.get("CTLAB_IMAGE") or DEFAULT_IMAGE
        self.mode = mode or os.environ.get("CTLAB_DOCKER_MODE") or "create"
        if self.mode not in ("create", "attach"):
            raise BackendError(f"CTLAB_DOCKER_MODE must be create or attach, not {self.mode!r}")
        self.project = project or os.environ.get("CTLAB_COMPOSE_PROJECT") or ""
        self.broker_service = os.environ.get("CTLAB_BROKER_SERVICE") or "broker"
        self.client = client
        self.rid = ""
        self.nets: dict[str, _Net] = {}
        self.nodes: dict[str, _Node] = {}
        self.broker: Any = None
        self.broker_ip = ""
        self.broker_url = ""
        self.sockets: dict[str, socket.socket] = {}
        self.traffic: dict[str, Addr] = {}
        self.cuts: set[tuple[str, str]] = set()
        self.made_containers: list[Any] = []
        self.made_networks: list[Any] = []
        self.parked: list[Any] = []  # attach mode: the project's nodes stopped at setup
        self.since = 0  # attach mode: when the run began (for the logs it keeps)

    # ================================================================ setup
    async def setup(self, plan: ClusterPlan) -> None:
        self.plan = plan
        self.rid = plan.run_id
        if self.client is None:
            self.client = await asyncio.to_thread(connect)
        if self.mode == "attach":
            await asyncio.to_thread(self._attach)
        else:
            await asyncio.to_thread(self._create)

    def _labels(self, **extra: str) -> dict[str, str]:
        return {LABEL_RUN: self.rid, **extra}

    def _create(self) -> None:
        assert self.plan is not None
        docker = _docker()
        try:
            self.client.images.get(self.image)
        except docker.errors.ImageNotFound:
            raise BackendError(f"no image {self.image} in the Docker engine: build it with "
                               "compose/build-image.sh (or set CTLAB_IMAGE)") from None
        self._networks()
        for i, name in enumerate(self.plan.nodes):
            ips = {role: net.ip(10 + i) for role, net in self.nets.items()}
            self.nodes[name] = _Node(name, None, ips, {})
        self.broker_ip = self.nets["sync"].ip(2)
        b = self.plan.broker
        self.broker_url = b if b.startswith("mqtt") else f"mqtt://{self.broker_ip}:{MQTT_PORT}"
        gw = self.nets["data"].ip(1)
        for side in SIDES:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            try:
                s.bind((gw, 0))
            except OSError as exc:
                s.close()
                raise BackendError(f"cannot bind the {side} traffic socket at {gw}, the data "
                                   f"network's gateway ({exc.strerror or exc}): create mode "
                                   "runs the runner on the Docker host; in a container, use "
                                   "attach mode (compose/docker-compose.yml)") from None
            s.setblocking(False)
            self.sockets[side] = s
            self.traffic[side] = (gw, int(s.getsockname()[1]))

    def _networks(self) -> None:
        docker = _docker()
        used = _host_subnets() | _docker_subnets(self.client)
        free = [k for k in BLOCKS if not used & {k, k + 1, k + 2}]
        random.shuffle(free)
        for k in free[:8]:
            made: list[Any] = []
            try:
                for j, role in enumerate(NETS):
                    prefix = f"{SUBNET_BASE}.{k + j}"
                    ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(
                        subnet=f"{prefix}.0/24", gateway=f"{prefix}.1")])
                    net = self.client.networks.create(
                        f"{self.rid}-{role}", driver="bridge", ipam=ipam, check_duplicate=True,
                        labels=self._labels(**{"ctlab.net": role}),
                        options={"com.docker.network.bridge.enable_ip_masquerade": "false"})
                    made.append(net)
                    self.made_networks.append(net)
                    self.nets[role] = _Net(role, net.name, net.id, prefix)
                return
            except docker.errors.APIError as exc:
                if "overlap" not in str(exc).lower():
                    raise BackendError(f"docker network create: {exc}") from None
                for net in made:  # someone took the block meanwhile: the next one
                    with contextlib.suppress(docker.errors.APIError):
                        net.remove()
                    self.made_networks.remove(net)
                self.nets.clear()
        raise BackendError(f"no free /24 triple left in {SUBNET_BASE}.0.0/16 for the "
                           "data, sync and mgmt networks")

    # ------------------------------------------------------------ attach mode
    def _attach(self) -> None:
        assert self.plan is not None
        me = None
        if not self.project:
            with contextlib.suppress(Exception):
                me = self.client.containers.get(socket.gethostname())
                self.project = me.labels.get(L_PROJECT, "")
        if not self.project:
            raise BackendError("attach mode: no compose project (run inside a compose "
                               "service, or set CTLAB_COMPOSE_PROJECT)")
        found = {c.labels.get(L_SERVICE): c for c in self.client.containers.list(
            all=True, filters={"label": f"{L_PROJECT}={self.project}"})}
        missing = [n for n in (*self.plan.nodes, self.broker_service) if n not in found]
        if missing:
            raise BackendError(f"attach mode: compose project {self.project!r} has no "
                               f"service {', '.join(missing)} (it has: "
                               f"{', '.join(sorted(str(s) for s in found))})")
        for net in self.client.networks.list(filters={"label": f"{L_PROJECT}={self.project}"}):
            role = (net.attrs.get("Labels") or {}).get(L_NETWORK, "")
            if role in NETS:
                self.nets[role] = _Net(role, net.name, net.id, "")
        if set(self.nets) != set(NETS):
            raise BackendError(f"attach mode: compose project {self.project!r} must have the "
                               f"networks {', '.join(NETS)} (found {', '.join(self.nets)})")
        self.broker = found[self.broker_service]
        # A fresh start, as on the other backends: every node of the project
        # (those the scenario does not name too) and the broker are stopped;
        # the runner starts the broker and its nodes, in its order, with its
        # configs. Nodes it does not name stay stopped until the run ends.
        self.since = int(time.time())
        members = [c for c in found.values() if c.labels.get("ctlab.role") == "node"]
        for c in {c.id: c for c in (*members, *(found[n] for n in self.plan.nodes))}.values():
            if self._status(c) in ("running", "paused"):
                if c.status == "paused":
                    c.unpause()
                c.stop(timeout=int(STOP_TIMEOUT))
                self.parked.append(c)
        if self._status(self.broker) in ("running", "paused"):
            self.broker.stop(timeout=int(STOP_TIMEOUT))
        self.broker_ip = self._ip(self.broker, "sync")
        for name in self.plan.nodes:
            c = found[name]
            base = yaml.safe_load(_untar_one(c.get_archive(COMPOSE_CONFIG)[0])) or {}
            ips = {role: self._ip(c, role) for role in NETS}
            self.nodes[name] = _Node(name, c, ips, dict(base))
        self.broker_url = str((self.nodes[self.plan.nodes[0]].base.get("broker") or {})
                              .get("url", f"mqtt://{self.broker_ip}:{MQTT_PORT}"))
        # the traffic sockets: where the compose node configs send (the runner's address)
        for side in SIDES:
            peer = str(((self.nodes[self.plan.nodes[0]].base.get("ports") or {})
                        .get(side) or {}).get("peer", ""))
            host, _, port = peer.rpartition(":")
            if not host:
                raise BackendError(f"attach mode: compose config of {self.plan.nodes[0]} has "
                                   f"no ports.{side}.peer")
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            try:
                s.bind((host, int(port)))
            except OSError as exc:
                s.close()
                raise BackendError(f"attach mode: cannot bind the {side} traffic socket at "
                                   f"{peer} (the ports' peer must be this container's data "
                                   f"address): {exc.strerror or exc}") from None
            s.setblocking(False)
            self.sockets[side] = s
            self.traffic[side] = (host, int(port))

    def _ip(self, container: Any, role: str) -> str:
        """The container's address on a network (the one compose asked for
        when the container is stopped and has none)."""
        container.reload()
        net = container.attrs["NetworkSettings"]["Networks"].get(self.nets[role].name) or {}
        ip = net.get("IPAddress") or (net.get("IPAMConfig") or {}).get("IPv4Address")
        if not ip:
            raise BackendError(f"{container.name} has no address on the {role} network "
                               "(give it a fixed ipv4_address in the compose file)")
        return str(ip)

    # ================================================================ teardown
    async def teardown(self) -> None:
        for s in self.sockets.values():
            s.close()
        self.sockets.clear()
        if self.client is None:
            return
        await asyncio.to_thread(self._teardown)

    def _teardown(self) -> None:
        docker = _docker()
        logs = self.plan.workdir / "logs" if self.plan is not None else None
        if self.mode == "attach":
            self._release()
        for c in reversed(self.made_containers):
            if logs is not None:
                with contextlib.suppress(Exception):
                    logs.mkdir(parents=True, exist_ok=True)
                    (logs / f"{c.name}.log").write_bytes(c.logs())
            with contextlib.suppress(docker.errors.NotFound):
                try:
                    c.remove(force=True)
                except docker.errors.APIError:
                    time.sleep(1.0)  # a container still being removed: once more
                    c.remove(force=True)
        self.made_containers.clear()
        for net in reversed(self.made_networks):
            with contextlib.suppress(docker.errors.NotFound):
                net.remove()
        self.made_networks.clear()

    def _release(self) -> None:
        """Attach mode: keep the containers' logs of the run, then leave the
        compose project running (links connected, nothing paused, the nodes
        the run did not use started again; a node's entrypoint consumes the
        run config it was started with, so a later `docker compose start`
        uses its compose config). With CTLAB_STOP_AFTER=1 (the compose runner
        service) the broker and the nodes are stopped instead, so that
        `docker compose up` returns."""
        docker = _docker()
        if self.plan is not None:
            logs = self.plan.workdir / "logs"
            for c in [n.container for n in self.nodes.values()] + [self.broker]:
                with contextlib.suppress(Exception):
                    logs.mkdir(parents=True, exist_ok=True)
                    (logs / f"{c.name}.log").write_bytes(c.logs(since=self.since))
        for name, link in sorted(self.cuts):
            with contextlib.suppress(BackendError, docker.errors.APIError):
                self._connect(self.nodes[name], NET_OF_LINK[link])
        self.cuts.clear()
        used = [n.container for n in self.nodes.values()]
        for c in used:
            with contextlib.suppress(docker.errors.APIError):
                if self._status(c) == "paused":
                    c.unpause()
        if os.environ.get("CTLAB_STOP_AFTER", "") not in ("", "0"):
            for c in [*used, self.broker]:
                with contextlib.suppress(docker.errors.APIError, AttributeError):
                    c.stop(timeout=int(STOP_TIMEOUT))
            return
        for c in [self.broker, *self.parked]:
            with contextlib.suppress(docker.errors.APIError, AttributeError):
                if self._status(c) not in ("running", "paused"):
                    c.start()

    # ================================================================ broker
    async def start_broker(self, site: int = 1) -> str:
        if site != 1:
            raise BackendError(self.no_second_broker())
        assert self.plan is not None
        if self.mode == "create" and self.plan.broker.startswith("mqtt"):
            return self.broker_url  # an outside broker: nothing to start
        await asyncio.to_thread(self._start_broker)
        if not await asyncio.to_thread(wait_tcp, self.broker_ip, MQTT_PORT, 20.0):
            raise BackendError(f"the broker container did not listen on "
                               f"{self.broker_ip}:{MQTT_PORT}:\n{self._tail(self.broker)}")
        return self.broker_url

    def _start_broker(self) -> None:
        assert self.plan is not None
        if self.broker is None:
            self.broker = self._broker_container()
        self.broker.reload()
        if self.broker.status == "paused":
            self.broker.unpause()
        elif self.broker.status != "running":
            self.broker.start()

    def _broker_container(self) -> Any:
        assert self.plan is not None
        sync = self.nets["sync"]
        files: dict[str, bytes] = {}
        entry: list[str] | None = None
        if self.plan.broker == "mosquitto":
            conf = [f"listener {MQTT_PORT} 0.0.0.0", "persistence false", "log_dest stdout",
                    "max_queued_messages 100000", "max_inflight_messages 100",
                    "set_tcp_nodelay true"]
            if self.plan.broker_users:
                conf += ["allow_anonymous false", f"password_file {CONFIG_DIR}/passwd"]
                files["passwd"] = "".join(f"{u}:{p}\n" for u, p in
                                          self.plan.broker_users.items()).encode()
                script = (f"mosquitto_passwd -U {CONFIG_DIR}/passwd && "
                          f"exec mosquitto -c {CONFIG_DIR}/mosquitto.conf")
            else:
                conf.append("allow_anonymous true")
                script = f"exec mosquitto -c {CONFIG_DIR}/mosquitto.conf"
            files["mosquitto.conf"] = ("\n".join(conf) + "\n").encode()
            entry, command = ["/bin/sh", "-c", script], []
        else:
            command = ["broker", "--host", "0.0.0.0", "--port", str(MQTT_PORT)]
        c = self._container(f"{self.rid}-broker", command, {"sync": sync.ip(2)},
                            self._labels(**{"ctlab.role": "broker"}), entrypoint=entry)
        if files:
            c.put_archive("/", _tar(files))
        return c

    def _container(self, name: str, command: Sequence[str], ips: Mapping[str, str],
                   labels: Mapping[str, str], entrypoint: Sequence[str] | None = None) -> Any:
        """Create (not start) a container on the networks of `ips` (role -> address)."""
        roles = list(ips)
        first = self.nets[roles[0]]
        kwargs: dict[str, Any] = {}
        if entrypoint is not None:
            kwargs["entrypoint"] = list(entrypoint)
        c = self.client.containers.create(
            self.image, list(command), name=name, hostname=name.rsplit("-", 1)[-1],
            labels=dict(labels), network=first.name, detach=True,
            networking_config={first.name: self.client.api.create_endpoint_config(
                ipv4_address=ips[roles[0]])},
            **kwargs)
        self.made_containers.append(c)
        for role in roles[1:]:
            self.client.api.connect_container_to_network(c.id, self.nets[role].id,
                                                         ipv4_address=ips[role])
        return c

    async def stop_broker(self, site: int = 1) -> Applied:
        if site != 1:
            return Applied(False, self.no_second_broker())
        if self.broker is None:
            return Applied(False, "no broker container of ours")
        return await asyncio.to_thread(self._stop_broker)

    def _stop_broker(self) -> Applied:
        self.broker.reload()
        if self.broker.status not in ("running", "paused"):
            return Applied(False, f"broker container {self.broker.name} is not running")
        if self.broker.status == "paused":
            self.broker.unpause()
        self.broker.stop(timeout=int(STOP_TIMEOUT))
        return Applied(True, f"docker stop {self.broker.name}")

    async def signal_broker(self, sig: str, site: int = 1) -> Applied:
        if site != 1:
            return Applied(False, self.no_second_broker())
        return await asyncio.to_thread(self._signal, self.broker, "the broker", sig)

    # ================================================================ nodes
    def node_config(self, name: str, config: Mapping[str, Any]) -> dict[str, Any]:
        node = self.nodes[name]
        if self.mode == "attach":
            base = node.base
            cfg = {**config, "broker": dict(base.get("broker") or {}),
                   "ports": {side: {**dict(p), "annotate": True}
                             for side, p in (base.get("ports") or {}).items()},
                   "control": dict(base.get("control") or {})}
            if "cluster_key" in base:
                cfg["cluster_key"] = base["cluster_key"]
            return cfg
        return {**config,
                "broker": {**config.get("broker", {}), "url": self.broker_url},
                "ports": {side: {"bind": f"{node.ips['data']}:{port}",
                                 "peer": f"{self.traffic[side][0]}:{self.traffic[side][1]}",
                                 "annotate": True}
                          for side, port in NODE_PORTS.items()},
                "control": {"listen": f"{node.ips['mgmt']}:{CONTROL_PORT}"}}

    async def start_node(self, name: str, config: Mapping[str, Any]) -> Applied:
        assert self.plan is not None
        cfg = self.node_config(name, config)
        path = write_config(self.plan.workdir / "nodes" / f"{name}.yaml", cfg)
        text = path.read_bytes()
        applied = await asyncio.to_thread(self._start_node, name, text)
        if not applied.ok:
            return applied
        await self._wait_ready(name)
        return applied

    def _start_node(self, name: str, config: bytes) -> Applied:
        node = self.nodes[name]
        c = node.container
        if c is None:
            c = node.container = self._container(
                f"{self.rid}-{name}", ["node", "--config", CONFIG_PATH], node.ips,
                self._labels(**{"ctlab.role": "node", "ctlab.node": name}))
        c.reload()
        if c.status in ("running", "paused"):
            return Applied(False, f"{name} is already running (container {c.name})")
        self._heal_links(node)
        c.put_archive("/", _tar({"node.yaml": config}))
        c.start()
        return Applied(True, f"docker start {c.name}")

    async def _wait_ready(self, name: str) -> None:
        node = self.nodes[name]
        url = self.control_url(name)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(control.ControlError):
                await control.get(url, "/health", 1.0)
                return
            status = await asyncio.to_thread(self._status, node.container)
            if status not in ("running", "created"):
                break
            await asyncio.sleep(0.1)
        raise BackendError(f"node {name} (container {node.container.name}) did not answer "
                           f"on {url}/health (container {self._status(node.container)}):\n"
                           f"{self._tail(node.container)}")

    @staticmethod
    def _status(c: Any) -> str:
        try:
            c.reload()
        except Exception:
            return "gone"
        return str(c.status)

    async def stop_node(self, name: str) -> Applied:
        return await asyncio.to_thread(self._stop_node, name)

    def _stop_node(self, name: str) -> Applied:
        c = self.nodes[name].container
        if c is None or self._status(c) not in ("running", "paused"):
            return Applied(False, f"{name} is not running")
        if c.status == "paused":
            c.unpause()  # a frozen process cannot handle SIGTERM
        c.stop(timeout=int(STOP_TIMEOUT))
        c.reload()
        return Applied(True, f"docker stop {c.name}: exit code {c.attrs['State']['ExitCode']}")

    async def signal(self, name: str, sig: str) -> Applied:
        return await asyncio.to_thread(self._signal, self.nodes[name].container, name, sig)

    def _signal(self, c: Any, name: str, sig: str) -> Applied:
        """SIGSTOP and SIGCONT as docker pause/unpause (the cgroup freezer),
        any other signal as docker kill, to a node's or the broker's container."""
        docker = _docker()
        status = "gone" if c is None else self._status(c)
        if status not in ("running", "paused"):
            return Applied(False, f"{name} is not running")
        try:
            if sig == "SIGSTOP":
                if status == "paused":
                    return Applied(False, f"{name} is already paused")
                c.pause()
                return Applied(True, f"docker pause {c.name}")
            if sig == "SIGCONT":
                if status != "paused":
                    return Applied(False, f"{name} is not paused")
                c.unpause()
                return Applied(True, f"docker unpause {c.name}")
            c.kill(signal=sig)
            if sig == "SIGKILL":
                with contextlib.suppress(Exception):  # (a read timeout: reported below)
                    c.wait(timeout=STOP_TIMEOUT * 2)
            return Applied(True, f"docker kill --signal {sig} {c.name}")
        except docker.errors.APIError as exc:
            return Applied(False, f"{sig} to {c.name}: {exc.explanation or exc}")

    def running(self, name: str) -> bool:
        node = self.nodes.get(name)
        return (node is not None and node.container is not None
                and self._status(node.container) in ("running", "paused"))

    # ================================================================ links
    def _connect(self, node: _Node, role: str) -> None:
        self.client.api.connect_container_to_network(node.container.id, self.nets[role].id,
                                                     ipv4_address=node.ips[role])

    def _heal_links(self, node: _Node) -> None:
        for name, link in sorted(self.cuts):
            if name == node.name:
                self._connect(node, NET_OF_LINK[link])
                self.cuts.discard((name, link))

    async def cut(self, name: str, link: str) -> Applied:
        return await asyncio.to_thread(self._link, name, link, True)

    async def restore(self, name: str, link: str) -> Applied:
        return await asyncio.to_thread(self._link, name, link, False)

    def _link(self, name: str, link: str, cut: bool) -> Applied:
        docker = _docker()
        if link not in NET_OF_LINK:
            return Applied(False, f"no link {link!r} on the docker backend")
        node = self.nodes[name]
        if node.container is None:
            return Applied(False, f"{name} has no container")
        net = self.nets[NET_OF_LINK[link]]
        if cut == ((name, link) in self.cuts):
            return Applied(False, f"{name}: {link} link is {'already' if cut else 'not'} cut")
        try:
            if cut:
                self.client.api.disconnect_container_from_network(node.container.id, net.id,
                                                                  force=True)
                self.cuts.add((name, link))
                return Applied(True, f"docker network disconnect {net.name} "
                                     f"{node.container.name}")
            self._connect(node, net.role)
            self.cuts.discard((name, link))
            return Applied(True, f"docker network connect --ip {node.ips[net.role]} "
                                 f"{net.name} {node.container.name}")
        except docker.errors.APIError as exc:
            return Applied(False, f"{link} link of {name}: {exc.explanation or exc}")

    # ================================================================ addresses
    def control_url(self, name: str) -> str:
        node = self.nodes[name]
        if self.mode == "attach":
            listen = str((node.base.get("control") or {}).get("listen", ""))
            port = listen.rpartition(":")[2] or str(CONTROL_PORT)
            return f"http://{node.ips['mgmt']}:{port}"
        return f"http://{node.ips['mgmt']}:{CONTROL_PORT}"

    def port_address(self, name: str, port: str) -> Addr:
        node = self.nodes[name]
        if self.mode == "attach":
            bind = str(((node.base.get("ports") or {}).get(port) or {}).get("bind", ""))
            host, _, p = bind.rpartition(":")
            return (node.ips["data"] if host in ("", "0.0.0.0") else host, int(p))
        return (node.ips["data"], NODE_PORTS[port])

    def traffic_socket(self, side: str) -> socket.socket:
        return self.sockets[side]

    # ================================================================ logs
    @staticmethod
    def _tail(c: Any, lines: int = LOG_TAIL) -> str:
        if c is None:
            return ""
        try:
            return bytes(c.logs(tail=lines)).decode(errors="replace").rstrip()
        except Exception as exc:
            return f"(no log: {exc})"

    def logs(self) -> dict[str, str]:
        out = {n: self._tail(node.container) for n, node in self.nodes.items()
               if node.container is not None}
        if self.broker is not None:
            out["broker"] = self._tail(self.broker, 20)
        return out


# ==================================================================== cleanup
def cleanup(client: Any = None, run_id: str | None = None,
            say: Callable[[str], object] = print) -> int:
    """Remove the containers and networks of ctlab runs (of one run with
    `run_id`): everything labelled ctlab.run, nothing else. Returns how many
    objects were removed."""
    docker = _docker()
    client = client if client is not None else connect()
    selector = f"{LABEL_RUN}={run_id}" if run_id else LABEL_RUN
    n = 0
    for c in client.containers.list(all=True, filters={"label": selector}):
        with contextlib.suppress(docker.errors.NotFound):
            c.remove(force=True)
            say(f"removed container {c.name}")
            n += 1
    for net in client.networks.list(filters={"label": selector}):
        with contextlib.suppress(docker.errors.NotFound):
            net.remove()
            say(f"removed network {net.name}")
            n += 1
    return n


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scenarios.backends.docker",
                                 description="Maintenance of the docker backend.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    cl = sub.add_parser("cleanup", help="remove leftover containers and networks of ctlab runs")
    cl.add_argument("--run", default=None, metavar="ID", help="only this run's")
    args = ap.parse_args(argv)
    try:
        n = cleanup(run_id=args.run)
    except BackendError as exc:
        print(f"cleanup: {exc}", file=sys.stderr)
        return 1
    print(f"cleanup: {n} removed")
    return 0


__all__ = ["DEFAULT_IMAGE", "DockerBackend", "cleanup", "connect"]

if __name__ == "__main__":
    raise SystemExit(main())
