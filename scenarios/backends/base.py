"""What a backend does for the runner: place and start the broker and the
nodes, give the runner its traffic sockets, and carry out the fault verbs that
depend on where things run. Everything else (traffic, roles, nemesis hooks
through the nodes' control API, checking, reports) is the runner's and is the
same on every backend.

The runner's view of a backend:

    async with backend:                           # teardown removes all it made
        await backend.setup(plan)                 # networks, folders
        url = await backend.start_broker()        # the URL nodes use
        await backend.start_node("a", config)     # config: the node's YAML as a dict,
                                                  #   without ports/control/broker
        backend.control_url("a")                  # where the runner reaches its API
        backend.port_address("a", "inside")       # where the runner sends its packets
        sock = backend.traffic_socket("inside")   # a bound UDP socket (non-blocking)
        await backend.signal("a", "SIGKILL") ...  # fault verbs, each -> Applied

A backend never guesses: every verb answers whether it took effect and how
(Applied.detail), and the runner records that in the report.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import os
import signal as signals
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

Addr = tuple[str, int]
SIDES = ("inside", "outside")  # the node's ports, and the traffic endpoints behind them
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0


class BackendError(RuntimeError):
    """The backend cannot do what was asked (a missing tool, no privileges, a
    node that does not start): the message says which and why."""


@dataclass(frozen=True)
class Applied:
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class ClusterPlan:
    """What to build: the run's name (unique per run: it names namespaces,
    networks and containers), the nodes, the broker kind and where to write."""

    run_id: str
    nodes: tuple[str, ...]
    broker: str  # embedded | mosquitto | a URL (the backend starts nothing)
    workdir: Path
    broker_users: Mapping[str, str] = field(default_factory=dict)


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def python_env() -> dict[str, str]:
    """The environment for child processes: this checkout importable without
    installing it, unbuffered output."""
    root = str(repo_root())
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def node_command(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "scenarios.cli", "node", "--config", str(config_path)]


def broker_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "syncbus.broker", "--host", host, "--port", str(port)]


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
    return path


def wait_tcp(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None,
             connect: Any = None) -> bool:
    """True once something accepts TCP connections on host:port (False on
    timeout, or at once when `proc` has exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            s = connect() if connect is not None else socket.create_connection((host, port), 0.5)
            s.close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def _libc_prctl() -> Any:
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()  # looked up here: the child must not load libraries after fork
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the runner dies (prctl
    PR_SET_PDEATHSIG), so a runner killed by a timeout leaves no node behind."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, 9, 0, 0, 0)  # 9: SIGKILL


class Process:
    """A child process the backend started, stopped by its PID and nothing else.
    It dies with the runner's thread that started it (the event loop's)."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, env: Mapping[str, str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "ab")  # noqa: SIM115 (closed in reap)
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=dict(env),
                                     start_new_session=True, preexec_fn=_die_with_parent)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> bool:
        if not self.alive():
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)
            return True
        return False

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM (after SIGCONT: a paused process cannot exit), then SIGKILL."""
        if self.alive():
            self.signal(signals.SIGCONT)
            self.signal(signals.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signals.SIGKILL)
                self.proc.wait(timeout)
        self.reap()
        return self.proc.returncode

    def kill(self) -> None:
        if self.alive():
            self.signal(signals.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_TIMEOUT)
        self.reap()

    def reap(self) -> None:
        if not self._log.closed:
            self._log.close()

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def ready_line(proc: Process, timeout: float) -> dict[str, Any]:
    """The JSON line `ctlab node` prints when it is ready (from its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for line in proc.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("{") and '"ready"' in line:
                    with contextlib.suppress(ValueError):
                        return dict(json.loads(line))
        if not proc.alive():
            break
        time.sleep(0.05)
    raise BackendError(f"node {proc.name} did not become ready"
                       f"{' (it exited)' if not proc.alive() else ''}:\n{proc.tail()}")


class Backend(abc.ABC):
    """The verbs every backend implements (see the module docstring)."""

    name: str = ""
    needs_root = False
    # the broker kinds it can start (a URL it only connects to: any backend)
    broker_kinds: tuple[str, ...] = ("embedded", "mosquitto")

    def __init__(self) -> None:
        self.plan: ClusterPlan | None = None

    def site_of(self, name: str) -> int | None:
        """Which broker of a bridged pair node `name` uses (1: the first, which
        the broker faults hit; 2: the other), or None with a single broker. The
        first, third ... node are on the first broker, the others on the second."""
        if self.plan is None or self.plan.broker != "bridged":
            return None
        return 2 if self.plan.nodes.index(name) % 2 else 1

    def no_second_broker(self) -> str:
        """Why a fault on broker2 cannot be applied here."""
        return (f"no second broker: broker2 is the second of a bridged pair "
                f"(--broker bridged; the {self.name} backend has: "
                f"{', '.join(self.broker_kinds)})")

    def check_broker(self, kind: str) -> None:
        """BackendError unless this backend can run a cluster on `kind`."""
        if kind != "url" and kind not in self.broker_kinds:
            raise BackendError(f"broker {kind!r} is not available on the {self.name} backend "
                               f"(it has: {', '.join(self.broker_kinds)} or a URL)")

    async def __aenter__(self) -> Backend:
        return self

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.teardown()

    # ------------------------------------------------------------ the cluster
    @abc.abstractmethod
    async def setup(self, plan: ClusterPlan) -> None: ...

    @abc.abstractmethod
    async def teardown(self) -> None:
        """Stop every process and remove everything the backend created (also
        after a failure half-way through setup)."""

    # `site` 2: the second broker of a bridged pair (fault target broker2);
    # a backend without one refuses it (BackendError, or Applied(False, why)).
    @abc.abstractmethod
    async def start_broker(self, site: int = 1) -> str:
        """Start the broker (or restart it where it was); the URL nodes use."""

    @abc.abstractmethod
    async def stop_broker(self, site: int = 1) -> Applied: ...

    @abc.abstractmethod
    async def signal_broker(self, sig: str, site: int = 1) -> Applied:
        """SIGSTOP (a stalled broker: connections stay open) or SIGCONT."""

    @abc.abstractmethod
    async def start_node(self, name: str, config: Mapping[str, Any]) -> Applied:
        """Start (or restart) a node with `config` plus this backend's ports,
        control listener and broker URL; return once its control API answers."""

    @abc.abstractmethod
    async def stop_node(self, name: str) -> Applied:
        """Graceful stop: SIGTERM and wait."""

    @abc.abstractmethod
    async def signal(self, name: str, sig: str) -> Applied:
        """SIGKILL, SIGSTOP or SIGCONT to the node."""

    @abc.abstractmethod
    def running(self, name: str) -> bool: ...

    # ------------------------------------------------------------ links
    @abc.abstractmethod
    async def cut(self, name: str, link: str) -> Applied:
        """link "broker": the node loses the broker; "data": its traffic ports."""

    @abc.abstractmethod
    async def restore(self, name: str, link: str) -> Applied: ...

    # ------------------------------------------------------------ addresses
    @abc.abstractmethod
    def control_url(self, name: str) -> str: ...

    @abc.abstractmethod
    def port_address(self, name: str, port: str) -> Addr:
        """Where the runner sends the packets that enter `name` on `port`."""

    @abc.abstractmethod
    def traffic_socket(self, side: str) -> socket.socket:
        """The runner's UDP socket for one side (clients inside, servers
        outside): the nodes' ports of that side send to it."""

    def logs(self) -> dict[str, str]:
        """name -> the last lines of each process's log (for failure reports)."""
        return {}


class ProcessBackend(Backend):
    """A backend whose nodes and broker are child processes of the runner
    (local, netns): the node verbs over `procs`, by PID. A subclass says how
    a node is started (node_argv) and where it runs (where: for details)."""

    def __init__(self) -> None:
        super().__init__()
        self.procs: dict[str, Process] = {}
        self.broker_proc: Process | None = None

    def node_argv(self, name: str, config_path: Path) -> list[str]:
        return node_command(config_path)

    def where(self, name: str) -> str:
        """" in <namespace>" or "": appended to fault details."""
        return ""

    def node_config(self, name: str, config: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    async def before_start(self, name: str) -> None:
        """Undo what faults left on the node's links before it starts again."""

    async def start_node(self, name: str, config: Mapping[str, Any]) -> Applied:
        assert self.plan is not None
        old = self.procs.get(name)
        if old is not None and old.alive():
            return Applied(False, f"{name} is already running (pid {old.pid})")
        await self.before_start(name)
        path = write_config(self.plan.workdir / "nodes" / f"{name}.yaml",
                            self.node_config(name, config))
        proc = Process(name, self.node_argv(name, path),
                       self.plan.workdir / "logs" / f"{name}.log", python_env())
        self.procs[name] = proc
        await asyncio.to_thread(ready_line, proc, 30.0)
        return Applied(True, f"{name} started{self.where(name)} (pid {proc.pid})")

    async def stop_node(self, name: str) -> Applied:
        p = self.procs.get(name)
        if p is None or not p.alive():
            return Applied(False, f"{name} is not running")
        code = await asyncio.to_thread(p.stop)
        return Applied(True, f"{name} (pid {p.pid}) stopped, exit code {code}")

    async def signal(self, name: str, sig: str) -> Applied:
        p = self.procs.get(name)
        if p is None or not p.alive():
            return Applied(False, f"{name} is not running")
        if not p.signal(getattr(signals, sig)):
            return Applied(False, f"{sig} to {name} (pid {p.pid}) failed")
        if sig == "SIGKILL":
            await asyncio.to_thread(p.kill)  # reap it
        return Applied(True, f"{sig} to {name} (pid {p.pid}){self.where(name)}")

    def running(self, name: str) -> bool:
        p = self.procs.get(name)
        return p is not None and p.alive()

    async def stop_processes(self) -> None:
        """Every node, then the broker (teardown)."""
        for p in list(self.procs.values()):
            await asyncio.to_thread(p.stop)
        self.procs.clear()
        if self.broker_proc is not None:
            await asyncio.to_thread(self.broker_proc.stop)

    def logs(self) -> dict[str, str]:
        out = {n: p.tail(40) for n, p in self.procs.items()}
        if self.broker_proc is not None:
            out["broker"] = self.broker_proc.tail(20)
        return out


__all__ = ["SIDES", "Addr", "Applied", "Backend", "BackendError", "ClusterPlan", "Process",
           "ProcessBackend",
           "broker_command", "node_command", "python_env", "ready_line", "repo_root",
           "wait_tcp", "write_config"]
