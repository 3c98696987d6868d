"""Brokers: the embedded amqtt broker (the default) and a managed Mosquitto.

embedded_broker(host, port)   async context manager; amqtt in this process and
                              event loop; yields its URL. Used when no broker
                              URL is given (node, run).
serve() / main()              `ctlab broker` (python -m syncbus.broker): the
                              embedded broker until SIGTERM.
BrokerProcess                 that, as a child process (benchmarks).
Mosquitto(...)                the real `mosquitto` binary on a loopback port
                              with a generated configuration (optionally a
                              password file and an ACL), for tests and
                              benchmarks. It is started as a child process and
                              stopped by its PID only (terminate, then kill),
                              on every exit path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from syncbus.errors import BrokerError

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
SHUTDOWN_TIMEOUT = 5.0


_HANDED_OUT: set[tuple[int, int]] = set()  # (socket type, port) this process gave out
_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
PORTS_FROM = 10000  # below: the well-known and registered services' usual ports


def port_pool(ephemeral: str, low: int = PORTS_FROM) -> range | None:
    """The ports to hand out, given ip_local_port_range's text ("32768\t60999"):
    the longest run from `low` up that lies outside the ephemeral range, or
    None if there is none worth the name (fewer than 1000 ports). A port from
    the ephemeral range, picked now and bound by a node later, could be taken
    in between as the source port of any outgoing connection (the runner polls
    every node over TCP): `ctlab run` then lost a node that could not listen on
    its control port (CI, 2026-11-28: data-link-failover on the local backend)."""
    try:
        lo, hi = (int(v) for v in ephemeral.split())
    except ValueError:
        return None
    below, above = range(low, max(low, lo)), range(max(low, hi + 1), 65536)
    best = max(below, above, key=len)
    return best if len(best) >= 1000 else None


def _pool() -> range | None:
    try:
        return port_pool(_EPHEMERAL.read_text())
    except OSError:  # not Linux, or no /proc: the kernel's choice, as bind(0)
        return None


def _unused_port(host: str, kind: int) -> int:
    """A port of socket type `kind` that nobody has bound on `host` right now
    and that this process has not handed out before (the kernel may give the
    same ephemeral port to two bind(0) calls in a row, and two nodes configured
    one after the other would then share it). It comes from outside the
    ephemeral range where there is room (port_pool()), so that no connection
    made meanwhile takes it; another program may still bind it first (the
    usual small race)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    pool = _pool()
    pick = random.SystemRandom()
    for _ in range(256):
        port = pick.choice(pool) if pool is not None else 0
        with socket.socket(family, kind) as s:
            try:
                s.bind((host, port))
            except OSError:  # in use
                continue
            port = int(s.getsockname()[1])
        if (kind, port) not in _HANDED_OUT:
            _HANDED_OUT.add((kind, port))
            return port
    raise OSError(f"no unused port on {host}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now, not handed out before."""
    return _unused_port(host, socket.SOCK_STREAM)


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port nobody has bound right now, not handed out before."""
    return _unused_port(host, socket.SOCK_DGRAM)


def stop_process(proc: subprocess.Popen[Any] | None,
                 timeout: float = STOP_TIMEOUT) -> int | None:
    """Stop a child we started, by its PID only: SIGTERM (a clean shutdown),
    SIGKILL when it has not exited within `timeout`. Returns its exit code
    (None when there was no process)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)  # stopped (paused), it cannot run its SIGTERM handler
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode


def signal_process(proc: subprocess.Popen[Any] | None, sig: signal.Signals) -> bool:
    """Send `sig` to a child we started, by its PID, if it still runs."""
    if proc is None or proc.poll() is not None:
        return False
    proc.send_signal(sig)
    return True


def wait_listening(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return True
        time.sleep(0.02)
    return False


# ================================================================ amqtt
def amqtt_config(host: str, port: int) -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}",
                                  "max_connections": 0}},
        # anonymous access; no $SYS publisher, no packet logger (they cost CPU)
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                    {"allow_anonymous": True}},
    }


@contextlib.asynccontextmanager
async def embedded_broker(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Run amqtt in this event loop for the duration of the block; yields
    `mqtt://host:port`. Port 0 picks a free one."""
    from amqtt.broker import Broker  # imported here: amqtt is heavy and optional at import

    port = port or free_port(host)
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.WARNING)
    broker = Broker(amqtt_config(host, port))
    try:
        await broker.start()
    except Exception as exc:
        raise BrokerError(f"embedded broker on {host}:{port} did not start: {exc}") from exc
    try:
        yield f"mqtt://{host}:{port}"
    finally:
        await _shutdown(broker)


async def _shutdown(broker: Any) -> None:
    """amqtt's shutdown, bounded: with clients still connected it can wait
    forever (seen with 0.12.1, intermittently); then its listeners are closed
    by force so that the port is free again."""
    import asyncio

    try:
        async with asyncio.timeout(SHUTDOWN_TIMEOUT):
            await broker.shutdown()
    except TimeoutError:
        logging.getLogger("syncbus.broker").warning(
            "amqtt shutdown did not finish in %ss; closing its listeners", SHUTDOWN_TIMEOUT)
        for server in list(getattr(broker, "_servers", {}).values()):
            instance = getattr(server, "instance", None)
            if instance is not None:
                instance.close()
                for close in ("close_clients", "abort_clients"):  # 3.13+; harmless if absent
                    fn = getattr(instance, close, None)
                    if fn is not None:
                        fn()


# ================================================================ mosquitto
def bridge_config(name: str, host: str, port: int, *, prefix: str = "ctlab/#",
                  username: str | None = None, password: str | None = None) -> str:
    """Mosquitto configuration lines (for `Mosquitto(extra=...)` or a
    mosquitto.conf) for a bridge from this broker to the one at host:port that
    carries every topic under `prefix` both ways at QoS 1: one broker per site,
    each member connected to its own. try_private tells the remote broker that
    the client is a bridge (no echo of what it forwards); a clean session and a
    one-second restart, because replication resyncs what a bridge outage
    loses (gaps are detected and replayed, heartbeats say where a stream ended).

    The first line is a broker-wide setting the bridge needs: no limit on the
    QoS 1 messages in flight to a client. Mosquitto 2.0.11 (Debian 12's) does
    not give the bridge's in-flight quota back when the bridge reconnects with
    a clean session: after a silent partition long enough to fill it (100
    messages) and to end the bridge's TCP connection, nothing ever went from
    this broker to the other again (the netns backend's `bridge_cut` of 20 s:
    a split brain to the end of the run, the other direction working). The
    broker's other clients get no limit either; ctlab's members read what
    they are sent at once."""
    for what, value in (("name", name), ("host", host), ("prefix", prefix),
                        ("username", username)):
        if value is not None and (not value or any(c.isspace() for c in value)):
            raise BrokerError(f"bridge {what} {value!r}: empty or with whitespace")
    if password is not None and ("\n" in password or "\r" in password):
        raise BrokerError("bridge password: a line break would end the configuration line")
    if not 0 < port < 65536:
        raise BrokerError(f"bridge port {port}: not in 1..65535")
    lines = ["max_inflight_messages 0",
             f"connection {name}", f"address {host}:{port}", f"topic {prefix} both 1",
             "try_private true", "cleansession true", "restart_timeout 1",
             "notifications false", "bridge_protocol_version mqttv311"]
    if username is not None:
        lines += [f"remote_username {username}", f"remote_password {password or ''}"]
    return "\n".join(lines)


def mosquitto_config(host: str, port: int, auth: Sequence[str] = ("allow_anonymous true",),
                     extra: str = "") -> str:
    """A mosquitto.conf for replication: one listener on host:port, no
    persistence, queue limits raised (Mosquitto's defaults, 1000 queued and 20
    in flight per client, silently drop replication traffic) and Nagle off,
    then the `auth` lines and `extra`. A broker-wide option that `extra` sets
    before its first bridge (`connection`), as bridge_config() does with
    max_inflight_messages, replaces the one here rather than following it."""
    base = [f"listener {port} {host}", "persistence false", "max_queued_messages 100000",
            "max_inflight_messages 100", "set_tcp_nodelay true", *auth]
    own = set()
    for line in extra.splitlines():
        word = line.split()[0] if line.strip() and not line.lstrip().startswith("#") else ""
        if word == "connection":
            break
        own.add(word)
    own.discard("listener")  # another listener is one more, not this one replaced
    lines = [line for line in base if line.split()[0] not in own]
    return "\n".join([*lines, *([extra] if extra else [])]) + "\n"


async def wait_bridged(url_a: str, url_b: str, *, prefix: str = "ctlab",
                       timeout: float = 15.0) -> float:
    """Until a message published on each broker of a bridged pair has reached a
    subscriber on the other (Mosquitto starts its bridge after its listener, and
    restarts it seconds after the remote comes back): the seconds it took.
    Raises BrokerError after `timeout`. The probes go under `prefix`/, which
    the bridge must carry."""
    import asyncio

    from syncbus.bus import BusConfig, BusMessage, MqttBus  # (bus: the MQTT client)

    token = os.urandom(4).hex()
    topic = f"{prefix}/-bridge-probe/{token}/"
    t0 = time.monotonic()
    got: set[str] = set()

    async def listen(bus: MqttBus, side: str) -> None:
        async for ev in bus.events():
            if isinstance(ev, BusMessage) and ev.topic == topic + side:
                got.add(side)
                return

    try:
        async with asyncio.timeout(timeout), \
                MqttBus(BusConfig(url_a, f"ctlab-probe-a-{token}", (topic + "a",))) as a, \
                MqttBus(BusConfig(url_b, f"ctlab-probe-b-{token}", (topic + "b",))) as b, \
                asyncio.TaskGroup() as tg:
            await a.wait_connected(timeout)
            await b.wait_connected(timeout)
            tg.create_task(listen(a, "a"))
            tg.create_task(listen(b, "b"))
            while got != {"a", "b"}:
                await a.publish(topic + "b", b"1")  # a -> the bridge -> b, and back
                await b.publish(topic + "a", b"1")
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise BrokerError(f"no bridge between {url_a} and {url_b} after {timeout:g} s "
                          f"(crossed: {sorted(got) or 'nothing'})") from None
    return time.monotonic() - t0


class Mosquitto:
    """A Mosquitto process on a loopback port. Use as a context manager, or
    start()/stop() (restart() keeps the port: a broker restart fault).

    users: {username: password} -> password_file (mosquitto_passwd) and
    allow_anonymous false. acl: the text of an acl_file. extra: more
    configuration lines. config: a whole configuration instead (it must open
    a listener on host:port; `{port}` in it is replaced by the port)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0,
                 users: Mapping[str, str] | None = None, acl: str | None = None,
                 extra: str = "", config: str | None = None,
                 binary: str = MOSQUITTO) -> None:
        if not Path(binary).exists() and shutil.which(binary) is None:
            raise BrokerError(f"mosquitto binary not found: {binary}")
        self.binary = binary
        self.host = host
        self.port = port or free_port(host)
        self.users = dict(users or {})
        self.acl = acl
        self.extra = extra
        self.config = config
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _write_config(self, d: Path) -> Path:
        conf = d / "mosquitto.conf"
        if self.config is not None:
            conf.write_text(self.config.replace("{port}", str(self.port)))
            return conf
        auth: list[str] = []
        if self.users:
            pw = d / "passwd"
            pw.unlink(missing_ok=True)
            pw.touch(mode=0o600)
            for user, password in self.users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(pw), user, password], check=True,
                               capture_output=True, timeout=10)
            auth += ["allow_anonymous false", f"password_file {pw}"]
        else:
            auth.append("allow_anonymous true")
        if self.acl is not None:
            acl = d / "acl"
            acl.write_text(self.acl)
            auth.append(f"acl_file {acl}")
        conf.write_text(mosquitto_config(self.host, self.port, auth, self.extra))
        return conf

    def start(self) -> str:
        if self.proc is not None:
            raise BrokerError("mosquitto is already running")
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="ctlab-mosquitto-")
        d = Path(self._dir.name)
        conf = self._write_config(d)
        # started as root, mosquitto drops to its own user before it reads the
        # password and ACL files: let that user read this (throwaway) directory
        d.chmod(0o755)
        for f in d.iterdir():
            f.chmod(0o644)
        logf = open(d / "mosquitto.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            self.proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=logf,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            logf.close()
        if not wait_listening(self.host, self.port, START_TIMEOUT) or self.proc.poll() is not None:
            log = self.log()
            self.stop()
            raise BrokerError(f"mosquitto did not start on {self.host}:{self.port}:\n{log}")
        return self.url

    def stop(self) -> None:
        """Stop our process, by its PID only."""
        proc, self.proc = self.proc, None
        stop_process(proc)

    def signal(self, sig: signal.Signals) -> bool:
        """SIGSTOP (a stalled broker) or SIGCONT; False when it is not running."""
        return signal_process(self.proc, sig)

    def kill(self) -> None:
        """kill -9 (a crash: no clean shutdown)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT)

    def restart(self) -> str:
        self.stop()
        return self.start()

    def log(self) -> str:
        if self._dir is None:
            return ""
        p = Path(self._dir.name) / "mosquitto.log"
        return p.read_text(errors="replace")[-4000:] if p.exists() else ""

    def close(self) -> None:
        self.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> Mosquitto:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:  # last resort: never leave a broker behind
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()




# ================================================================ `ctlab broker`
async def serve(host: str = "127.0.0.1", port: int = 1883,
                ready: Callable[[str], None] | None = None) -> None:
    """Run the embedded broker until cancelled (`ctlab broker`, SIGTERM)."""
    import asyncio

    async with embedded_broker(host, port) as url:
        if ready is not None:
            ready(url)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    """python -m syncbus.broker [--host H] [--port P]: the embedded amqtt broker
    in its own process; prints its URL on stdout once it listens."""
    import argparse
    import asyncio

    ap = argparse.ArgumentParser(prog="syncbus.broker", description=main.__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    args = ap.parse_args(argv)

    def ready(url: str) -> None:
        print(url, flush=True)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve(args.host, args.port, ready)

    asyncio.run(run())
    return 0


class BrokerProcess:
    """`python -m syncbus.broker` as a child process (amqtt out of the caller's
    process, like a real broker); stopped by its PID."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def __enter__(self) -> BrokerProcess:
        import sys

        root = str(Path(__file__).resolve().parents[1])  # importable without installing
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncbus.broker", "--host", self.host, "--port",
             str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL, env=env)
        if not wait_listening(self.host, self.port, START_TIMEOUT):
            self.__exit__(None, None, None)
            raise BrokerError(f"embedded broker process did not start on port {self.port}")
        return self

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc)

    def signal(self, sig: signal.Signals) -> bool:
        """SIGSTOP (a stalled broker) or SIGCONT; False when it is not running."""
        return signal_process(self.proc, sig)

    def restart(self) -> str:
        """Stop and start again on the same port (a broker restart fault)."""
        self.stop()
        self.__enter__()
        return self.url


__all__ = ["MOSQUITTO", "PORTS_FROM", "BrokerError", "BrokerProcess", "Mosquitto",
           "bridge_config", "embedded_broker", "free_port", "free_udp_port", "main",
           "port_pool", "serve", "signal_process", "stop_process", "wait_bridged",
           "wait_listening"]

if __name__ == "__main__":
    raise SystemExit(main())
