"""The docker backend (scenarios/backends/docker.py) against a real Docker
engine: every verb on a two-node cluster, a scenario end to end through the
runner, the compose file with the runner in attach mode, and the cleanup of
leftovers. They need a Docker engine and FAIL without one (conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from node.packet import TcpOptions, build, tcp
from scenarios import control, report
from scenarios.backends.base import BackendError, ClusterPlan
from scenarios.backends.docker import LABEL_RUN, DockerBackend, cleanup
from scenarios.model import loads
from scenarios.runner import RunOptions, run
from tests.procs import sigterm_when

ROOT = Path(__file__).resolve().parents[2]
TC = (ROOT / "scenarios" / "library" / "firewall.tc").read_text(encoding="utf-8")

pytestmark = pytest.mark.timeout(1500)  # the first test may build the image


def node_cfg(name: str, priority: int) -> dict[str, Any]:
    return {"node": name, "cluster": "dockertest", "tc": TC,
            "role": {"mode": "active-standby", "priority": priority}}


async def eventually(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await check()
            if last:
                return last
        except control.ControlError as exc:
            last = exc
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:g}s (last: {last})")


async def role(b: DockerBackend, name: str) -> str | None:
    st = await control.get(b.control_url(name), "/state", 1.0)
    return str(st.get("role"))


async def bus_connected(b: DockerBackend, name: str) -> bool:
    return bool((await control.get(b.control_url(name), "/health", 1.0)).get("bus_connected"))


async def through(b: DockerBackend, name: str, sport: int, timeout: float = 2.0) -> bool:
    """A TCP SYN sent to `name`'s inside port comes out of its outside port
    (to the runner's outside socket)."""
    ins, outs = b.traffic_socket("inside"), b.traffic_socket("outside")
    while True:  # drop what an earlier check left
        try:
            outs.recv(65535)
        except BlockingIOError:
            break
    pkt = build(tcp("198.18.0.1", "198.19.0.1", sport, 80, "S", 1000, 0,
                    options=TcpOptions(mss=1460)))
    deadline = time.monotonic() + timeout
    next_send = 0.0
    while time.monotonic() < deadline:
        if time.monotonic() >= next_send:
            ins.sendto(pkt, b.port_address(name, "inside"))
            next_send = time.monotonic() + 0.5
        try:
            outs.recv(65535)
            return True
        except BlockingIOError:
            await asyncio.sleep(0.05)
    return False


def labelled(client: Any, rid: str) -> tuple[list[str], list[str]]:
    sel = {"label": f"{LABEL_RUN}={rid}"}
    return ([c.name for c in client.containers.list(all=True, filters=sel)],
            [n.name for n in client.networks.list(filters=sel)])


# ------------------------------------------------------------------ the verbs
async def test_cluster_verbs(docker_client: Any, ctlab_image: str, tmp_path: Path) -> None:
    rid = f"ctlt{secrets.token_hex(3)}"
    b = DockerBackend(image=ctlab_image, mode="create", client=docker_client)
    async with b:
        await b.setup(ClusterPlan(rid, ("a", "b"), "embedded", tmp_path))
        assert b.nets["data"].prefix.startswith("198.19.")
        url = await b.start_broker()
        assert url == f"mqtt://{b.nets['sync'].ip(2)}:1883"
        assert (await b.start_node("a", node_cfg("a", 200))).ok
        await eventually("a active", lambda: _is(role(b, "a"), "active"))
        assert (await b.start_node("b", node_cfg("b", 100))).ok
        await eventually("b standby", lambda: _is(role(b, "b"), "standby"))
        again = await b.start_node("b", node_cfg("b", 100))
        assert not again.ok and "already running" in again.detail
        names, nets = labelled(docker_client, rid)
        assert sorted(names) == sorted(f"{rid}-{n}" for n in ("a", "b", "broker"))
        assert sorted(nets) == sorted(f"{rid}-{n}" for n in ("data", "sync", "mgmt"))

        # the data path, and cutting it (docker network disconnect)
        assert await through(b, "a", 20001), "no packet through a"
        cut = await b.cut("a", "data")
        assert cut.ok and "disconnect" in cut.detail, cut
        assert not (await b.cut("a", "data")).ok  # already cut
        assert not await through(b, "a", 20002), "a forwarded with its data link cut"
        assert (await b.restore("a", "data")).ok
        assert await through(b, "a", 20003, timeout=10.0), "no packet after the restore"

        # pause (the cgroup freezer): the standby takes over, a's API is silent
        assert (await b.signal("a", "SIGSTOP")).ok
        assert b.running("a")
        await eventually("b active after a paused", lambda: _is(role(b, "b"), "active"))
        with pytest.raises(control.ControlError):
            await control.get(b.control_url("a"), "/health", 0.5)
        assert (await b.signal("a", "SIGCONT")).ok
        await eventually("a answers after SIGCONT", lambda: bus_connected(b, "a"))

        # the broker link (sync network disconnected): the session dies, comes back
        assert (await b.cut("a", "broker")).ok
        await eventually("a loses the broker", lambda: _not(bus_connected(b, "a")))
        assert (await control.get(b.control_url("a"), "/health", 1.0))["ok"]  # mgmt still up
        assert (await b.restore("a", "broker")).ok
        await eventually("a reconnects", lambda: bus_connected(b, "a"), timeout=40.0)

        # kill -9 and a start with a new config
        killed = await b.signal("a", "SIGKILL")
        assert killed.ok and not b.running("a"), killed
        assert not (await b.signal("a", "SIGKILL")).ok
        assert (await b.start_node("a", node_cfg("a", 200))).ok
        assert b.running("a")
        await eventually("a back as standby", lambda: _is(role(b, "a"), "standby"))

        # graceful stop, the broker stopped and started again
        stopped = await b.stop_node("b")
        assert stopped.ok and "exit code 0" in stopped.detail, stopped
        assert not b.running("b")
        assert (await b.stop_broker()).ok
        await eventually("a loses the stopped broker", lambda: _not(bus_connected(b, "a")))
        assert await b.start_broker() == url
        await eventually("a reconnects to the broker", lambda: bus_connected(b, "a"),
                         timeout=40.0)

        # the broker stalled (the cgroup freezer): connections stay open
        paused = await b.signal_broker("SIGSTOP")
        assert paused.ok and "docker pause" in paused.detail, paused
        assert not (await b.signal_broker("SIGSTOP")).ok  # already paused
        await asyncio.sleep(1.0)
        assert await bus_connected(b, "a")  # no keepalive ran out in 1 s
        resumed = await b.signal_broker("SIGCONT")
        assert resumed.ok and "docker unpause" in resumed.detail, resumed
        assert not (await b.signal_broker("SIGCONT")).ok  # not paused
        await eventually("a still on the broker", lambda: bus_connected(b, "a"))
        assert set(b.logs()) == {"a", "b", "broker"}
    assert labelled(docker_client, rid) == ([], [])
    assert (tmp_path / "logs" / f"{rid}-a.log").read_text().count('"ready"') == 2
    assert (tmp_path / "nodes" / "a.yaml").exists()


async def _is(value: Any, want: Any) -> bool:
    return bool(await value == want)


async def _not(value: Any) -> bool:
    return not await value


async def test_teardown_after_failed_setup(docker_client: Any, ctlab_image: str,
                                           tmp_path: Path) -> None:
    """A node that cannot start: start_node raises, teardown still removes all."""
    rid = f"ctlt{secrets.token_hex(3)}"
    b = DockerBackend(image=ctlab_image, mode="create", client=docker_client)
    with pytest.raises(BackendError, match="did not answer"):
        async with b:
            await b.setup(ClusterPlan(rid, ("a",), "embedded", tmp_path))
            await b.start_broker()
            await b.start_node("a", {**node_cfg("a", 100), "tc": "qdisc add dev nowhere x"})
    assert labelled(docker_client, rid) == ([], [])


def test_missing_image_is_a_clear_error(docker_client: Any, tmp_path: Path) -> None:
    b = DockerBackend(image=f"ctlab-missing-{secrets.token_hex(3)}:x", client=docker_client)
    with pytest.raises(BackendError, match=r"build-image\.sh"):
        asyncio.run(b.setup(ClusterPlan("ctltmiss", ("a",), "embedded", tmp_path)))
    asyncio.run(b.teardown())


def test_cleanup_removes_only_labelled(docker_client: Any, ctlab_image: str) -> None:
    rid = f"ctlt{secrets.token_hex(3)}"
    mine = docker_client.networks.create(f"{rid}-left", labels={LABEL_RUN: rid})
    other = docker_client.networks.create(f"{rid}-other", labels={"ctlab.test": rid})
    try:
        c = docker_client.containers.create(ctlab_image, ["--help"], name=f"{rid}-left",
                                            labels={LABEL_RUN: rid})
        assert cleanup(docker_client, rid, say=lambda s: None) == 2
        assert labelled(docker_client, rid) == ([], [])
        with pytest.raises(Exception):  # noqa: B017 (docker.errors.NotFound)
            c.reload()
        other.reload()  # untouched
    finally:
        other.remove()
        with contextlib.suppress(Exception):
            mine.remove()


def running_ctlab(client: Any) -> set[str]:
    return {c.name for c in client.containers.list(all=True, filters={"label": LABEL_RUN})}


# ------------------------------------------------------------------ end to end
SCENARIO = """
description: pause, a data partition and a broker partition, in containers
seed: 3
duration: 16s
cluster:
  mode: active-standby
  preempt: false
  broker: embedded
  cluster_key: on
  nodes:
    a: {priority: 200}
    b: {priority: 100}
tc_file: firewall.tc
traffic:
  web:
    proto: tcp
    count: 150
    open_rate: 150
    packet_rate: 1
    payload: [64, 256]
faults:
  - {at: 3s, kind: pause, target: active, duration: 3s}
  - {at: 8s, kind: partition_data, target: standby, duration: 2s}
  - {at: 11s, kind: partition_broker, target: standby, duration: 2s}
invariants:
  failover_time: {max_ms: 3000}
  card_subset: {}
"""


async def test_scenario_end_to_end(docker_client: Any, ctlab_image: str,
                                   tmp_path: Path) -> None:
    """The runner drives a scenario through the docker backend: every fault
    is carried out by Docker and recorded, and the report is written."""
    sc = loads(SCENARIO, "docker-e2e", base=ROOT / "scenarios" / "library")
    before = running_ctlab(docker_client)
    rep = await run(sc, DockerBackend(image=ctlab_image, client=docker_client),
                    RunOptions(out=tmp_path, progress=False))
    js, page = report.write(tmp_path, rep)
    assert json.loads(js.read_text())["backend"] == "docker"
    assert page.stat().st_size > 1000
    assert [f["kind"] for f in rep["faults"]] == ["pause", "partition_data", "partition_broker"]
    assert all(f["applied"] and f["healed"] for f in rep["faults"]), rep["faults"]
    details = " | ".join(f["detail"] for f in rep["faults"])
    for verb in ("docker pause", "docker unpause", "docker network disconnect",
                 "docker network connect"):
        assert verb in details, details
    fo = next(i for i in rep["invariants"] if i["name"] == "failover_time")
    assert fo["verdict"] == "pass", fo
    assert rep["traffic"]["packets"]["delivered"] > 0
    assert list((tmp_path / "work" / "logs").glob("*-a.log"))
    assert running_ctlab(docker_client) == before  # the run removed what it made


def test_sigterm_stops_a_docker_run_and_removes_its_containers(
        docker_client: Any, ctlab_image: str, tmp_path: Path) -> None:
    """`ctlab run --backend docker` sent SIGTERM once its broker and nodes run
    in containers: it exits 143 within seconds, having removed the containers
    and networks of its run."""
    before = running_ctlab(docker_client)

    def ready(pid: int) -> dict[str, str]:  # broker and both nodes running: name -> run id
        up = {c.name: c.labels[LABEL_RUN] for c in
              docker_client.containers.list(filters={"label": LABEL_RUN}) if c.name not in before}
        return up if len(up) >= 3 else {}
    left: dict[str, str] = {}
    try:
        t = sigterm_when([sys.executable, "-m", "scenarios.cli", "run",
                          str(ROOT / "scenarios" / "library" / "failover-basic.yaml"),
                          "--backend", "docker", "--out", str(tmp_path), "--quiet"], ready,
                         settle=2.0, timeout=120.0, cwd=ROOT,
                         env={**os.environ, "CTLAB_IMAGE": ctlab_image})
    finally:  # what the run left (nothing, if it works) is noted, then removed
        left = {c.name: c.labels[LABEL_RUN] for c in docker_client.containers.list(
            all=True, filters={"label": LABEL_RUN}) if c.name not in before}
        for rid in set(left.values()):
            cleanup(docker_client, rid, say=lambda s: None)
    assert t.returncode == 128 + signal.SIGTERM, t.output
    assert "terminated (SIGTERM), cleaned up" in t.output, t.output
    assert not left, left
    rids = set(t.ready.values())
    assert len(rids) == 1, t.ready
    assert labelled(docker_client, rids.pop()) == ([], [])


# ------------------------------------------------------------------ compose
def compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True,
                      check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("neither `docker compose` (v2) nor docker-compose (v1) is installed "
                "(Debian: apt-get install docker-compose)", pytrace=False)


def docker_socket() -> str:
    host = os.environ.get("DOCKER_HOST", "")
    return host[len("unix://"):] if host.startswith("unix://") else "/var/run/docker.sock"


def test_compose_up_writes_a_report(docker_client: Any, ctlab_image: str,
                                    tmp_path: Path) -> None:
    """compose/docker-compose.yml as the README runs it: `up` starts Mosquitto,
    three nodes and the runner (attach mode); the runner plays its scenario
    with container faults, writes the report and stops the cluster, and `up`
    returns."""
    compose = [*compose_command(), "-f", str(ROOT / "compose" / "docker-compose.yml"),
               "-p", f"ctlt{secrets.token_hex(3)}"]
    env = {**os.environ, "CTLAB_IMAGE": ctlab_image, "CTLAB_REPORTS": str(tmp_path),
           "CTLAB_DOCKER_SOCKET": docker_socket(),
           "CTLAB_RUN": "run scenarios/library/failover-basic.yaml --backend docker "
                        "--out /reports/failover-basic --quiet"}
    try:
        up = subprocess.run([*compose, "up", "--no-build"], env=env, capture_output=True,
                            text=True, timeout=600, check=False)
        out = tmp_path / "failover-basic"
        assert (out / "report.json").exists(), f"no report:\n{up.stdout[-4000:]}\n{up.stderr}"
        rep = json.loads((out / "report.json").read_text())
        assert (out / "report.html").exists()
        assert rep["backend"] == "docker" and rep["scenario"] == "failover-basic"
        [kill] = rep["faults"]
        assert kill["kind"] == "kill" and kill["applied"] and kill["healed"], kill
        assert "docker kill" in kill["detail"] and "docker start" in kill["detail"], kill
        services = {re.split(r"[_-]", p.stem)[-2] for p in (out / "work" / "logs").glob("*.log")}
        assert services >= {"a", "b", "broker"}, services
    finally:
        subprocess.run([*compose, "down", "--remove-orphans", "--timeout", "5"], env=env,
                       capture_output=True, timeout=120, check=False)
