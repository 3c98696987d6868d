"""The runner's pure parts: progress output, report expectations, entry keys,
and `ctlab run` / `ctlab chaos` input errors (exit 2, nothing started); and
how it follows the nodes' roles over their control ports."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from node.conntrack import Tuple
from node.packet import ip_bytes
from scenarios import faults, report
from scenarios.cli import main
from scenarios.invariants import INVARIANTS
from scenarios.model import F_FAILOVER, F_PREINSTALL, Expectation, History, flow_key, load
from scenarios.progress import Progress
from scenarios.runner import STATE_TIMEOUT, Runner, RunOptions, entry_key, expectation_met
from scenarios.switch import Switch
from tests.procs import netns_names, state

LIBRARY = Path(__file__).resolve().parents[2] / "scenarios" / "library"


def test_progress_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    p = Progress("demo", 20.0, stream=out)
    p.update(5.0, active="a", flows=10)
    p.update(6.0, active="a", flows=11)  # within PLAIN_EVERY: not printed again
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("demo [") and "5.0/20s" in lines[0] and "active=a" in lines[0]
    assert lines[0].count("█") == 7  # a quarter of 28


def test_progress_disabled_prints_nothing() -> None:
    out = io.StringIO()
    Progress("demo", 1.0, enabled=False, stream=out).update(0.5)
    assert out.getvalue() == ""


def test_entry_key_matches_the_workload_key() -> None:
    t = Tuple(2, 6, ip_bytes("198.18.0.5"), ip_bytes("198.19.0.1"), 10000, 80)
    orig = {"family": 2, "proto": 6, "src": "198.18.0.5", "dst": "198.19.0.1",
            "sport": 10000, "dport": 80}
    assert entry_key(orig) == flow_key(t) == "tcp src=198.18.0.5 dst=198.19.0.1 sport=10000 " \
                                             "dport=80"


def _report(verdict: str, failing: list[str]) -> dict[str, object]:
    return {"verdict": verdict,
            "invariants": [{"name": n, "verdict": "fail"} for n in failing]}


def test_expectations_of_positive_and_negative_scenarios() -> None:
    sc = load(LIBRARY / "failover-basic.yaml")
    assert expectation_met(sc, _report("pass", []))
    assert not expectation_met(sc, _report("fail", ["no_broken_flows"]))
    assert not expectation_met(sc, _report("unknown", []))
    neg = load(LIBRARY / "negative" / "replication-off.yaml")
    assert neg.expect == Expectation("fail", ("no_broken_flows",))
    assert expectation_met(neg, _report("fail", ["no_broken_flows", "convergence"]))
    assert not expectation_met(neg, _report("fail", ["convergence"]))  # failed for another reason
    assert not expectation_met(neg, _report("pass", []))


def test_run_rejects_a_bad_scenario_file(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("duration: 5s\ncluster: {nodes: {a: {}}}\ntc: ''\n"
                   "invariants: {no_broken_flow: {}}\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:4:" in err and "no_broken_flow" in err
    assert not (tmp_path / "out").exists()


def test_run_rejects_a_bad_broker_override(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["run", str(LIBRARY / "failover-basic.yaml"), "--broker", "http://x",
               "--out", str(tmp_path)])
    assert rc == 2
    assert "mqtt://" in capsys.readouterr().err


def test_the_bridged_broker_pair_is_refused_where_it_is_not_built(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["run", str(LIBRARY / "failover-basic.yaml"), "--broker", "bridged",
               "--backend", "docker", "--out", str(tmp_path / "out")])
    assert rc == 2
    assert "broker 'bridged' is not available on the docker backend" in \
        capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_local_backend_starts_a_bridged_pair_and_stops_both(tmp_path: Path) -> None:
    """The first and third node on the first broker, the second on the other;
    the bridge carries a probe each way before the nodes start; the teardown
    stops both Mosquittos. (Faults on its second broker: standby-site-broker.yaml
    in test_scenario_runs.)"""
    from scenarios.backends import make
    from scenarios.backends.base import ClusterPlan, wait_tcp

    backend = make("local")

    async def go() -> tuple[list[int], float | None]:
        await backend.setup(ClusterPlan("tb", ("a", "b", "c"), "bridged", tmp_path))
        try:
            first = await backend.start_broker()
            urls = {n: backend.broker_of(n) for n in ("a", "b", "c")}
            assert urls["a"] == urls["c"] == first != urls["b"]
            assert backend.mosquitto is not None and backend.site_b is not None
            return [backend.mosquitto.port, backend.site_b.port], backend.bridge_wait_s
        finally:
            await backend.teardown()
    ports, waited = asyncio.run(go())
    assert waited is not None and 0 < waited < 15
    assert not any(wait_tcp("127.0.0.1", p, 0.2) for p in ports)  # both stopped


def test_a_netns_bridged_pair_survives_a_silent_bridge_cut_that_ends_its_connection(
        tmp_path: Path) -> None:
    """The netns backend's bridged pair: the second broker in a namespace of its
    own, the nodes alternating between the sites. bridge_cut drops the bridge's
    TCP silently; here it lasts until the bridge's connection times out (the
    test lowers tcp_retries2 in the second broker's namespace to get there in
    seconds) with more QoS 1 messages queued for the other site than Mosquitto's
    usual in-flight limit. After the heal the bridge must carry messages both
    ways again: Mosquitto 2.0.11 without bridge_config()'s max_inflight_messages 0
    never sent anything from the second broker to the first after such a cut."""
    import subprocess

    from scenarios.backends import make
    from scenarios.backends.base import ClusterPlan
    from scenarios.backends.netns import RTO_MAX, RTO_MAX_MS
    from syncbus.broker import BrokerError, wait_bridged
    from syncbus.bus import BusConfig, MqttBus

    backend = make("netns")

    def in_ns(ns: str, *argv: str) -> str:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()

    brokers = []

    async def go() -> None:
        await backend.setup(ClusterPlan("tnb", ("a", "b", "c"), "bridged", tmp_path))
        try:
            first = await backend.start_broker()
            urls = {n: backend.node_config(n, {})["broker"]["url"] for n in ("a", "b", "c")}
            assert urls["a"] == urls["c"] == first != urls["b"], urls
            assert [backend.site_of(n) for n in ("a", "b", "c")] == [1, 2, 1]
            assert backend.bridge_wait_s is not None and 0 < backend.bridge_wait_s < 15
            await second_broker_faults(backend, first, urls["b"], 1883)
            assert await wait_bridged(first, urls["b"]) < 15
            site2 = backend.ns("brk2")
            if Path(RTO_MAX).exists():
                for ns in (backend.ns("brk"), site2):
                    assert in_ns(ns, "sysctl", "-n", "net.ipv4.tcp_rto_max_ms") == \
                        str(RTO_MAX_MS)
            in_ns(site2, "sysctl", "-qw", "net.ipv4.tcp_retries2=3")
            cut = await backend.cut("broker", "bridge")
            assert cut.ok and "dropped" in cut.detail, cut
            assert not (await backend.cut("broker", "bridge")).ok  # already cut
            async with MqttBus(BusConfig(urls["b"], "tnb-filler")) as bus:
                await bus.wait_connected(5)
                for i in range(300):  # queued for the bridge, never acknowledged
                    await bus.publish(f"ctlab/-fill/{i}", b"x")
                await bus.drain(5)
            with pytest.raises(BrokerError):  # no probe crosses a cut bridge
                await wait_bridged(first, urls["b"], timeout=1.0)
            assert backend.broker2 is not None
            brokers.extend([backend.broker_proc, backend.broker2])
            log = backend.broker2.log_path
            deadline = time.monotonic() + 20
            while "timed out" not in log.read_text() and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert "timed out" in log.read_text(), backend.broker2.tail()
            healed = await backend.restore("broker", "bridge")
            assert healed.ok, healed
            # both ways again (wait_bridged probes each direction)
            assert await wait_bridged(first, urls["b"], timeout=15) < 15
        finally:
            await backend.teardown()
    asyncio.run(go())
    assert len(brokers) == 2 and not any(p.alive() for p in brokers)  # both stopped
    assert not {n for n in netns_names() if n.startswith(backend.rid)}


def test_netns_runs_set_up_at_once_take_subnets_of_their_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three netns backends set up at once (threads: as two `ctlab run`s or
    `pytest -n` workers would) each choose the lowest free /24 pair: the lock
    around a run's choice and its first address makes them choose in turn."""
    from scenarios.backends import netns
    from scenarios.backends.base import ClusterPlan

    monkeypatch.setattr(netns.random, "choice", min)
    backends = [netns.NetnsBackend() for _ in range(3)]

    async def go() -> list[int]:
        try:
            await asyncio.gather(*(b.setup(ClusterPlan(f"tsub{i}", ("a",), "embedded",
                                                       tmp_path / str(i)))
                                   for i, b in enumerate(backends)))
            return [b.k for b in backends]
        finally:
            for b in backends:
                await b.teardown()
    ks = asyncio.run(go())
    assert len(set(ks)) == 3, ks
    assert not {n for n in netns_names() if n.startswith("tsub")}


async def second_broker_faults(backend: Any, first: str, second: str, port: int) -> None:
    """broker_stop and broker_pause on broker2 (site 2) of a running bridged
    pair (netns): applied to the second broker alone, and healed."""
    from scenarios.backends.base import wait_tcp

    def is_stopped(pid: int, want: bool) -> bool:
        """Whether the process is stopped by a signal (state T in /proc/PID/stat),
        waiting up to a second for it to become `want`."""
        def now() -> bool:
            return state(pid) == "T"
        deadline = time.monotonic() + 1.0
        while now() != want and time.monotonic() < deadline:
            time.sleep(0.01)
        return now()

    host = second.split("//")[1].split(":")[0]
    stopped = await backend.stop_broker(2)
    assert stopped.ok and "stopped" in stopped.detail, stopped
    assert not await asyncio.to_thread(wait_tcp, host, port, 0.3)
    assert not (await backend.stop_broker(2)).ok  # not running
    assert await asyncio.to_thread(wait_tcp, first.split("//")[1].split(":")[0],
                                   int(first.rsplit(":", 1)[1]), 1.0)  # the first is up
    assert await backend.start_broker(2) == second
    assert await asyncio.to_thread(wait_tcp, host, port, 5.0)
    paused = await backend.signal_broker("SIGSTOP", 2)
    assert paused.ok and "SIGSTOP" in paused.detail, paused
    pid = int(paused.detail.split("(pid ")[1].split(")")[0])
    assert pid == backend.broker2.pid != backend.broker_proc.pid  # the second one
    try:
        assert is_stopped(pid, True)
    finally:
        assert (await backend.signal_broker("SIGCONT", 2)).ok
    assert not is_stopped(pid, False)


@pytest.mark.parametrize("backend", ["local", "netns", "docker"])
def test_a_bridge_cut_without_a_bridged_pair_is_not_applied(backend: str) -> None:
    """bridge_cut on a single broker (or a backend without bridged pairs): the
    fault is recorded as not applied, with the reason; nothing raises (the
    netns backend looked the target "broker" up as a node, and raised KeyError).
    So are broker faults on broker2 (the runner records a BackendError raised by
    start_broker as not applied)."""
    from scenarios.backends import make
    from scenarios.backends.base import BackendError

    b = make(backend)
    for verb in (b.cut, b.restore):
        got = asyncio.run(verb("broker", "bridge"))
        assert not got.ok and "bridge" in got.detail, got
    for got in (asyncio.run(b.stop_broker(2)), asyncio.run(b.signal_broker("SIGSTOP", 2))):
        assert not got.ok and "no second broker" in got.detail, got
    with pytest.raises(BackendError, match="no second broker"):
        asyncio.run(b.start_broker(2))


def test_the_relay_pipes_until_cut_and_refuses_until_restored() -> None:
    """scenarios.backends.relay: the bridged pair's link on the local backend."""
    from scenarios.backends.relay import Relay

    async def go() -> None:
        async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while data := await r.read(100):
                w.write(data)
                await w.drain()
            w.close()
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        relay = Relay(server.sockets[0].getsockname()[:2])
        port = await relay.start()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"ping")
            assert await r.readexactly(4) == b"ping"
            relay.cut()  # the piped connection ends
            assert await asyncio.wait_for(r.read(100), 2) == b""
            r2, w2 = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(r2.read(100), 2) == b""  # refused while cut
            relay.restore()
            r3, w3 = await asyncio.open_connection("127.0.0.1", port)
            w3.write(b"again")
            assert await r3.readexactly(5) == b"again"
            assert relay.stats["connections"] == 2 and relay.stats["refused"] == 1
            for writer in (w, w2, w3):
                writer.close()
        finally:
            await relay.close()
            server.close()
    asyncio.run(go())


def test_chaos_rejects_an_unknown_mix_and_kinds_with_a_mix(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chaos", "--mix", "9", "--out", str(tmp_path / "out")]) == 2
    assert "unknown chaos mix 9; known: 1, 2, 3" in capsys.readouterr().err
    assert main(["chaos", "--kinds", "nuke", "--out", str(tmp_path / "out")]) == 2
    assert "unknown fault kind 'nuke'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # one or the other
        main(["chaos", "--mix", "1", "--kinds", "kill"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    for runs in ("0", "-1", "x"):
        with pytest.raises(SystemExit) as exc:
            main(["chaos", "--runs", runs])
        assert exc.value.code == 2
        assert f"{runs!r} is not a positive whole number" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("argv", "replay", "mix"), [
    ([], "ctlab chaos --seed 1 --duration 30 --mix 4", 4),
    (["--seed", "7", "--broker", "bridged"],
     "ctlab chaos --seed 7 --duration 30 --mix 4 --broker bridged", 4),
    (["--seed", "23", "--duration", "25", "--mix", "1", "--backend", "netns"],
     "ctlab chaos --seed 23 --duration 25 --mix 1 --backend netns", 1),
    (["--seed", "86", "--kinds", "broker_pause,pause,kill", "--interval", "2.5",
      "--broker", "mosquitto"],
     "ctlab chaos --seed 86 --duration 30 --interval 2.5 --kinds broker_pause,pause,kill "
     "--broker mosquitto", None),
])
def test_a_chaos_report_says_how_to_replay_it(argv: list[str], replay: str,
                                               mix: int | None) -> None:
    """report.json "chaos" holds what drew the schedule and the command line
    that draws it again; parsing that command gives the same schedule."""
    import shlex

    from scenarios import faults
    from scenarios.cli import _parser as parser
    from scenarios.run_cli import _chaos_record

    def record(words: list[str]) -> dict[str, object]:
        a = parser().parse_args(["chaos", *words])
        kinds = a.kinds.split(",") if a.kinds else None
        m = faults.CHAOS_MIX if a.mix is None else a.mix
        return _chaos_record(a, 1 if a.seed is None else a.seed,
                             faults.chaos_kinds(kinds, m, a.broker == "bridged"),
                             None if kinds else m)
    rec = record(argv)
    assert rec["replay"] == replay and rec["mix"] == mix
    again = record(shlex.split(str(rec["replay"]))[2:])
    assert again == rec  # the replay command replays itself
    kinds = rec["kinds"]
    assert isinstance(kinds, list) and (mix is None or kinds == list(
        faults.CHAOS_MIXES[mix].drawn("bridged" in argv)))
    assert ("bridge_cut" in kinds) == ("bridged" in argv)


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_a_local_backend_used_for_a_second_run_starts_that_runs_broker(
        tmp_path: Path, broker: str) -> None:
    """Two runs in turn on one LocalBackend: each run's broker listens where
    that run's nodes dial (its URL). The Mosquitto of the first run used to
    be kept, and started again on the first run's port."""
    from urllib.parse import urlsplit

    from scenarios.backends import make
    from scenarios.backends.base import ClusterPlan, wait_tcp

    backend = make("local")

    async def one_run(k: int) -> tuple[str, bool]:
        await backend.setup(ClusterPlan(f"t{k}", ("a",), broker, tmp_path / f"run{k}"))
        try:
            url = urlsplit(await backend.start_broker())
            assert url.hostname is not None and url.port is not None
            return url.geturl(), await asyncio.to_thread(wait_tcp, url.hostname, url.port, 5.0)
        finally:
            await backend.teardown()
    first, second = asyncio.run(one_run(1)), asyncio.run(one_run(2))
    assert first[1] and second[1], (first, second)
    assert first[0] != second[0]  # a port of its own


def test_run_and_chaos_have_help(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in ("run", "chaos"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        assert "--backend" in text and "--seed" in text and "--out" in text


def _header_sum(raw: bytes) -> int:
    hl = (raw[0] & 0x0F) * 4
    t = sum(int.from_bytes(raw[i:i + 2], "big") for i in range(0, hl, 2))
    while t >> 16:
        t = (t & 0xFFFF) + (t >> 16)
    return t


@pytest.mark.parametrize("ident", [1, 2, 0x7FFF, 0x8000, 0xFFFF])
def test_stamp_sets_the_id_and_keeps_the_header_checksum_valid(ident: int) -> None:
    from node.packet import build, parse, tcp
    from scenarios.switch import stamp

    for pkt in (tcp("198.18.0.1", "198.19.0.1", 10000, 80, "S"),
                tcp("198.18.7.9", "198.19.0.1", 10001, 80, "PA", payload=b"x" * 300)):
        raw = stamp(stamp(build(pkt), 4242), ident)  # also from a non-zero id
        assert _header_sum(raw) == 0xFFFF
        got = parse(raw)
        assert got.ip_id == ident
        assert raw[12:] == build(pkt)[12:] and raw[:4] == build(pkt)[:4]


def test_rtt_estimator_follows_rfc6298() -> None:
    from scenarios.traffic import RttEstimator

    e = RttEstimator()
    assert e.rto(0.2) == 0.2  # no sample yet: the floor
    e.sample(0.1)
    assert e.srtt == pytest.approx(0.1) and e.rttvar == pytest.approx(0.05)
    assert e.rto(0.2) == pytest.approx(0.3)  # 0.1 + 4 * 0.05
    e.sample(0.5)
    assert e.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.4)
    assert e.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.5)
    for _ in range(50):
        e.sample(0.01)
    assert e.rto(0.2) == 0.2  # never below the floor (TCP_RTO_MIN)


def test_a_backend_process_dies_with_the_runner(tmp_path: Path) -> None:
    """A runner killed by a timeout must leave no node behind (PR_SET_PDEATHSIG)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from pathlib import Path\n"
        "from scenarios.backends.base import Process, python_env\n"
        f"p = Process('child', [sys.executable, '-c', 'import time; time.sleep(60)'], "
        f"Path({str(tmp_path / 'child.log')!r}), python_env())\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{child}/stat") as f:
            if f.read().split()[2] == "Z":  # a zombie until init reaps it: dead
                return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the child outlived its parent")


async def test_a_node_that_does_not_answer_does_not_delay_following_the_others() -> None:
    """A paused active (its control port accepts and never answers, as a
    SIGSTOPped process's does) costs its own /state timeout, not the others':
    the runner moves traffic to the standby that took over at once. (Polled
    together, a paused active delayed the switch by up to 1.4 s, and a pause
    failover measured 1.8 s instead of the 0.8 s it took.)"""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel accepts; nobody ever reads or answers

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = json.dumps({"role": "active", "term": 2, "epoch": 7}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    urls = {"a": f"http://127.0.0.1:{silent.getsockname()[1]}",
            "b": f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"}
    r = Runner(load(LIBRARY / "failover-basic.yaml"),
               SimpleNamespace(control_url=urls.__getitem__),  # type: ignore[arg-type]
               RunOptions(progress=False))
    r.switch = Switch(r.gen, r.nodes, {}, lambda node, side: ("127.0.0.1", 9))
    r.switch.active = "a"
    r.down.add("a")  # paused by a fault
    r.t0 = time.monotonic()
    watch = asyncio.create_task(r._watch())
    try:
        async with server, asyncio.timeout(5):
            while r.switch.active != "b":
                await asyncio.sleep(0.005)
        took = r.now()
    finally:
        watch.cancel()
        silent.close()
    assert took < STATE_TIMEOUT * 0.8, took
    assert r.views["b"].state is not None and r.views["b"].state["term"] == 2


def test_a_move_of_the_active_says_whether_a_fault_on_the_active_began_it() -> None:
    """What stable_roles judges: a move no fault on the active began carries the
    new active's own reason for taking the role; one after such a fault does not
    (the fault is its reason)."""
    r = Runner(load(LIBRARY / "failover-basic.yaml"),
               SimpleNamespace(control_url=lambda n: ""),  # type: ignore[arg-type]
               RunOptions(progress=False))
    r.switch = Switch(r.gen, r.nodes, {}, lambda node, side: ("127.0.0.1", 9))
    r.switch.active = "a"
    r.views["a"].state = {"role": "active", "term": 1}
    r.views["b"].state = {"role": "active", "term": 2,
                          "promotion": {"term": 2, "reason": "no live active"}}
    r._follow(r._known(), 5.0)
    assert r.switch.active == "b"
    assert r.ops[-1].f == F_FAILOVER and r.ops[-1].value == {
        "from": "a", "unprompted": True, "to": "b", "reason": "no live active"}
    r.failover = None  # that one is over
    r._begin_failover("b", 9.0)  # a kill of b, the active
    r.views["a"].state = {"role": "active", "term": 3,
                          "promotion": {"term": 3, "reason": "no live active"}}
    r._follow(r._known(), 9.5)
    assert r.switch.active == "a"
    moves = [op.value for op in r.ops if op.f == F_FAILOVER and op.type == "invoke"]
    assert moves[-1] == {"from": "b"}


def test_the_switch_back_to_an_active_that_never_gave_the_role_up_measures_its_card_now(
        ) -> None:
    """Two actives (a partition: `ctlab chaos --seed 7608 --backend netns
    --broker bridged`, the first site's broker stopped): the switch follows b,
    which took over; b is killed, and the switch goes back to a, which never
    gave the role up. a's promotion is from the run's start (its card empty
    then): what a's card holds now is what preinstalled_ratio must measure
    (it measured 0/800). A node promoted again (a new term) is measured at its
    promotion, as before."""
    r = Runner(load(LIBRARY / "failover-basic.yaml"),
               SimpleNamespace(control_url=lambda n: ""),  # type: ignore[arg-type]
               RunOptions(progress=False))
    r.switch = Switch(r.gen, r.nodes, {}, lambda node, side: ("127.0.0.1", 9))
    r.switch.active = "a"
    start = {"term": 1, "reason": "no live active", "installed": 0, "pending": 0,
             "eligible": 0, "at": 0.1}
    r.views["a"].state = {"role": "active", "term": 1, "epoch": 5, "promotion": start}
    r.views["a"].full = {**r.views["a"].state,
                         "offload": {"installed": 800, "pending": 0, "eligible": 800}}
    r.views["b"].state = {"role": "active", "term": 2, "epoch": 6, "promotion": {
        "term": 2, "reason": "no live active", "installed": 800, "pending": 0,
        "eligible": 800, "at": 6.2}}
    r.views["b"].full = {**r.views["b"].state,
                         "offload": {"installed": 800, "pending": 0, "eligible": 800}}
    r._follow(r._known(), 6.3)
    assert r.switch.active == "b"
    r.failover = None
    r._begin_failover("b", 10.2)  # b killed; a still active, term 1
    r.views["b"].state = None
    r.views["a"].full = {**r.views["a"].state,
                         "offload": {"installed": 790, "pending": 4, "eligible": 800}}
    r._follow(r._known(), 10.25)
    assert r.switch.active == "a"
    pre = [op.value for op in r.ops if op.f == F_PREINSTALL]
    assert pre[-1]["installed"] == 794 and pre[-1]["eligible"] == 800, pre
    # promoted again: measured at its new promotion
    r.failover = None
    r.views["b"].state = {"role": "active", "term": 3, "epoch": 7, "promotion": {
        "term": 3, "reason": "no live active", "installed": 700, "pending": 0,
        "eligible": 800, "at": 12.0}}
    r._follow(r._known(), 12.1)
    r.views["a"].state = {"role": "active", "term": 4, "epoch": 5, "promotion": {
        "term": 4, "reason": "preempting", "installed": 650, "pending": 0,
        "eligible": 800, "at": 13.0}}
    r.views["b"].state = {"role": "standby", "term": 4, "epoch": 7}
    r._follow(r._known(), 13.1)
    assert r.switch.active == "a"
    assert [(op.process, op.value["installed"]) for op in r.ops if op.f == F_PREINSTALL] == \
        [("b", 800), ("a", 794), ("b", 700), ("a", 650)]


def _outage_of_a(kind: str, times: list[float],
                 after: Callable[[Runner], object] = lambda r: None,
                 during: Callable[[Runner], object] = lambda r: None) -> Runner:
    """A failover-basic runner whose active, a, takes a `kind` fault at 21.088 s
    (the runner's clock reads `times`, one per fault step), healed 0.575 s
    later; `during` runs between the two, `after` once the fault healed."""
    async def body() -> Runner:
        r = Runner(load(LIBRARY / "failover-basic.yaml"),
                   SimpleNamespace(  # type: ignore[arg-type]
                       control_url=lambda n: "", running=lambda n: False,
                       signal=done, stop_node=done, start_node=done, cut=done, restore=done),
                   RunOptions(progress=False))
        r.switch = Switch(r.gen, r.nodes, {}, lambda node, side: ("127.0.0.1", 9))
        r.switch.active = "a"
        fault = faults.Fault(21.088, kind, "active", 0.575)
        r.now = iter(times).__next__  # type: ignore[method-assign]
        inject, heal = faults.plan([fault], 30.0)
        await r._apply(inject)
        during(r)
        await r._apply(heal)
        after(r)
        return r

    async def done(*args: object) -> SimpleNamespace:
        return SimpleNamespace(ok=True, detail="done")

    return asyncio.run(body())


def _failovers(r: Runner) -> tuple[list[tuple[str, float, object]], History]:
    h = History()
    for op in r.ops:
        getattr(h, op.type)(op.process, op.time, op.f, op.value)
    return [(op.type, op.time, op.value) for op in r.ops if op.f == F_FAILOVER], h


@pytest.mark.parametrize(("kind", "resumes"), [("pause", True), ("kill", False),
                                                ("restart", False)])
def test_an_outage_of_the_active_that_heals_before_a_takeover_is_no_failover(
        kind: str, resumes: bool) -> None:
    """A SIGSTOP of the active shorter than dead_after (0.575 s: `ctlab chaos
    --seed 405 --duration 30 --backend netns`, mix 3) heals before any member
    may declare it dead: nobody takes over and the old active forwards again.
    That outage ends there ("resumed"); before, the failover it began stayed
    open and failover_time failed it as incomplete. A killed or stopped active
    does not come back by itself: its failover stays open until a member takes
    over."""
    r = _outage_of_a(kind, [21.088, 21.663],
                     lambda r: r._delivered("a", "hw", "f1", 0, 21.67))
    ops, h = _failovers(r)
    assert ops[0] == ("invoke", 21.088, {"from": "a"})
    if resumes:
        assert ops[1:] == [("ok", 21.67, {"from": "a", "to": "a", "resumed": True})]
        assert r.failover is None
    else:
        assert ops[1:] == [] and r.failover is not None and r.failover.target is None
    took = INVARIANTS["failover_time"].check(h, [], {"max_ms": 2000})
    assert took.verdict == ("pass" if resumes else "unknown"), took
    if resumes:
        assert took.detail == "a resumed in 582 ms (bound 2000 ms)"
        assert report.metrics(h)["failover_ms"] is None  # no failover happened
        roles = INVARIANTS["stable_roles"].check(h, [], {})
        assert roles.detail == "the active role never moved", roles


def test_an_active_cut_off_the_broker_keeps_forwarding_until_the_switch_moves() -> None:
    """The active's broker link cut (its data path stays up) stops none of its
    traffic: a cut healed before anyone took over is no outage at all (it was
    reported as one the length of the cut, "a resumed in 582 ms", although a
    forwarded throughout), and a takeover during it begins its failover when
    the switch moves to the new active, blamed on the cut, not unprompted."""
    r = _outage_of_a("partition_broker", [21.088, 21.663],
                     during=lambda r: r._delivered("a", "hw", "f1", 0, 21.3),
                     after=lambda r: r._delivered("a", "hw", "f1", 0, 21.67))
    ops, h = _failovers(r)
    assert ops == [] and r.failover is None and r.cut is None
    assert INVARIANTS["failover_time"].check(h, [], {}).detail == "no failover happened"
    assert INVARIANTS["stable_roles"].check(h, [], {}).detail == "the active role never moved"

    def takeover(r: Runner) -> None:  # b takes the role at 21.9 s
        r.views["a"].state = {"role": "active", "term": 1}
        r.views["b"].state = {"role": "active", "term": 2,
                              "promotion": {"term": 2, "reason": "no live active"}}
        r._follow(r._known(), 21.9)

    def forwarded(r: Runner) -> None:  # a forwards after the heal, still the active
        r._delivered("a", "hw", "f1", 0, 21.8)

    blamed = [("invoke", 21.9, {"from": "a"})]  # as a kill's, at the move
    for during, after, heal_at, expect in [
            (takeover, forwarded, 22.5, blamed),
            (lambda r: None, takeover, 21.7, blamed),  # healed, a not heard from since
            (lambda r: None, lambda r: (forwarded(r), takeover(r)), 21.7,
             [("invoke", 21.9, {"from": "a", "unprompted": True, "to": "b",
                                "reason": "no live active"})])]:
        r = _outage_of_a("partition_broker", [21.088, heal_at], after, during)
        ops, h = _failovers(r)
        assert ops == expect and r.switch is not None and r.switch.active == "b"
        assert r.failover is not None and r.failover.target == "b"
        if expect is blamed:
            assert r.failover.fault == 0 and r.cut is None
            assert INVARIANTS["stable_roles"].check(h, [], {}).verdict == "pass"
    # killed during the cut: the kill's failover; the cut explains nothing after it
    r = _outage_of_a("partition_broker", [21.088, 22.5], during=lambda r: (
        r._begin_failover("a", 21.5, fault=1), takeover(r)))
    ops, h = _failovers(r)
    assert ops == [("invoke", 21.5, {"from": "a"})] and r.cut is None
    assert r.failover is not None and r.failover.fault == 1


def test_the_report_gives_each_nodes_role_log_in_seconds_of_the_run() -> None:
    """A node logs its role changes on its own clock, from its own start (a
    restarted node's from its new start). The runner reads where that start
    lies on its clock from each full /state's uptime (within half the round
    trip: the fastest read counts), keeps the log of every process the node
    ran, and the report gives it in seconds of the run, as the faults' times."""
    r = Runner(load(LIBRARY / "failover-basic.yaml"),
               SimpleNamespace(control_url=lambda n: ""),  # type: ignore[arg-type]
               RunOptions(progress=False))
    r.t0 = 1000.0  # the run began at 1000 s on this host's monotonic clock
    a = r.views["a"]
    first = [[0.3, "RoleChanged active"], [0.7, "PeerUp b"]]
    a.note_started({"epoch": 7, "uptime": 2.0, "roles": first}, 1000.5, 1000.9)  # rtt 0.4
    a.note_started({"epoch": 7, "uptime": 5.05, "roles": [*first, [4.0, "PeerDown b"]]},
                   1003.99, 1004.01)  # rtt 0.02: the better estimate (start at 998.95)
    a.note_started({"epoch": 7, "uptime": 9.0, "roles": [[0.7, "PeerUp b"], [4.0, "PeerDown b"],
                                                         [8.5, "fenced"]]},  # 0.3 fell out
                   1007.0, 1010.0)  # rtt 3: ignored for the start
    a.note_started({"epoch": 9, "uptime": 1.0, "roles": [[0.25, "RoleChanged standby"]]},
                   1012.0, 1012.1)  # killed and started again: a new process
    a.note_started({"epoch": 9, "uptime": "x", "roles": "garbage"}, 1013.0, 1013.1)  # ignored
    assert a.role_log(r.t0) == [[-0.75, "RoleChanged active"], [-0.35, "PeerUp b"],
                                [2.95, "PeerDown b"], [7.45, "fenced"],
                                [11.3, "RoleChanged standby"]]
    assert a.started == {7: (pytest.approx(998.95), pytest.approx(0.02)),
                         9: (pytest.approx(1011.05), pytest.approx(0.1))}
    a.full = {"role": "standby", "roles": [[0.25, "RoleChanged standby"]]}
    nodes = r._node_reports()
    assert nodes["a"]["roles"] == a.role_log(r.t0) and nodes["a"]["started"] == [-1.05, 11.05]
    assert nodes["b"] == {"reachable": False}


def test_the_runner_hands_single_active_every_nodes_role_timeline() -> None:
    """The last op of a run's history: each node's processes' starts (joining)
    and the roles its RoleChanged lines moved it to, in seconds of the run."""
    r = Runner(load(LIBRARY / "failover-basic.yaml"),
               SimpleNamespace(control_url=lambda n: ""),  # type: ignore[arg-type]
               RunOptions(progress=False))
    r.t0 = 1000.0
    a = r.views["a"]
    a.note_started({"epoch": 7, "uptime": 2.0, "roles": [
        [0.3, "RoleChanged(old='joining', new='active', term=1, reason='no live active')"],
        [0.7, "PeerUp(node='b')"]]}, 1000.99, 1001.01)
    a.note_started({"epoch": 9, "uptime": 1.0, "roles": [
        [0.25, "RoleChanged(old='joining', new='standby', term=0, reason='b is active')"]]},
        1012.0, 1012.1)
    roles = r._roles()
    assert roles["mode"] == "active-standby" and set(roles["nodes"]) == {"a", "b"}
    assert roles["nodes"]["a"] == [(-1.0, "joining"), (-0.7, "active"), (11.05, "joining"),
                                   (11.3, "standby")]
    assert roles["nodes"]["b"] == []  # never read


def test_the_clusters_quorum_and_its_witness_reach_the_nodes_role_config(
        tmp_path: Path) -> None:
    """cluster.quorum becomes each node's role.quorum and a witness node's
    role.witness (the node's own parser accepts them); report.json's cluster
    says both; the switch knows only the candidates."""
    from node.daemon import config

    text = (LIBRARY / "failover-basic.yaml").read_text().replace(
        "cluster:\n", "cluster:\n  quorum: 2\n", 1).replace(
        "    b: {priority: 100}\n", "    b: {priority: 100}\n    w: {witness: true}\n", 1)
    (tmp_path / "firewall.tc").write_text((LIBRARY / "firewall.tc").read_text())
    (tmp_path / "s.yaml").write_text(text)
    r = Runner(load(tmp_path / "s.yaml"),
               SimpleNamespace(control_url=lambda n: ""),  # type: ignore[arg-type]
               RunOptions(progress=False))
    roles = {}
    for name in r.nodes:
        cfg = r.node_config(name)
        cfg["ports"] = {"inside": {"bind": "127.0.0.1:1"}}
        role = config.parse(cfg).role
        roles[name] = (role.quorum, role.witness)
    assert roles == {"a": (2, False), "b": (2, False), "w": (2, True)}
    settings = r.cluster_settings()
    assert settings["quorum"] == 2
    assert settings["nodes"]["w"] == {"priority": 100, "card": "default", "witness": True}
    assert "witness" not in settings["nodes"]["a"]
    assert report.cluster_line(settings).count("quorum 2 (w: witness)") == 1
    assert r.sc.cluster.candidates == ("a", "b")


@pytest.mark.parametrize(("line", "grace", "isolated"), [
    ("", 0.0, 0.0), ("  will_grace: 500ms\n", 0.5, 0.0),
    ("  step_down_isolated: 1.5s\n", 0.0, 1.5)])
def test_the_clusters_will_grace_reaches_every_nodes_role_config(
        line: str, grace: float, isolated: float, tmp_path: Path) -> None:
    """cluster.will_grace becomes each node's role.will_grace, under the
    nodes' dead_after (the node's own parser accepts the config), and
    cluster.step_down_isolated each node's role.step_down_isolated."""
    from node.daemon import config

    text = (LIBRARY / "failover-basic.yaml").read_text().replace("cluster:\n",
                                                                 "cluster:\n" + line, 1)
    (tmp_path / "firewall.tc").write_text((LIBRARY / "firewall.tc").read_text())
    (tmp_path / "s.yaml").write_text(text)
    r = Runner(load(tmp_path / "s.yaml"),
               SimpleNamespace(control_url=lambda n: ""),  # type: ignore[arg-type]
               RunOptions(progress=False))
    for name in r.nodes:
        cfg = r.node_config(name)
        cfg["ports"] = {"inside": {"bind": "127.0.0.1:1"}}
        role = config.parse(cfg).role
        assert role.will_grace == grace and role.dead_after == 0.8
        assert role.step_down_isolated == isolated
    settings = r.cluster_settings()  # (report.json "cluster")
    assert settings["will_grace"] == grace and settings["dead_after"] == 0.8
    assert settings["step_down_isolated"] == isolated
    assert settings["nodes"] == {"a": {"priority": 200, "card": "default"},
                                 "b": {"priority": 100, "card": "default"}}
    assert settings["mechanisms"] == dict.fromkeys(
        ("replication", "preinstall", "distributed_aging", "readiness_gate"), True)
    json.dumps(settings)  # JSON-ready
