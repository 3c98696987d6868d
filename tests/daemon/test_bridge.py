"""A bridged pair of brokers, one per site: node A connected to Mosquitto M1,
node B to Mosquitto M2, M2 bridged to M1 (syncbus.broker.bridge_config(): every
ctlab topic both ways, QoS 1). Real node processes and real Mosquittos.

What the topology changes: replication and a crash's detection cross the
bridge, and the broker is no longer one point of failure for everybody: when
the active's own broker goes down, the standby still hears itself on the other
one, sees the active fall silent and takes over, while the active, cut off,
keeps the role (it trusts nobody's silence, its own included) until the brokers
are joined again and it sees the newer term. `role.step_down_isolated` bounds
that split brain."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from syncbus.broker import (
    MOSQUITTO,
    BrokerError,
    Mosquitto,
    bridge_config,
    mosquitto_config,
    wait_bridged,
)
from tests.daemon.conftest import Cluster, NodeProc, data_packets, wait_until
from tests.daemon.test_replication import installed, open_flows, record, table

pytestmark = [pytest.mark.timeout(120), pytest.mark.broker,
              pytest.mark.skipif(not Path(MOSQUITTO).exists(),
                                 reason="mosquitto is not installed")]


class Sites:
    """M1 and M2 (bridged to M1), and a cluster whose members each say which."""

    def __init__(self, workdir: Path) -> None:
        self.m1 = Mosquitto()
        self.m2 = Mosquitto(extra=bridge_config("ctlab-site-b", self.m1.host, self.m1.port))
        self.cluster = Cluster(workdir, self.m1.url)

    def start(self) -> None:
        self.m1.start()
        self.m2.start()
        asyncio.run(wait_bridged(self.m1.url, self.m2.url))

    def node(self, name: str, broker: Mosquitto, **kw: Any) -> NodeProc:
        return self.cluster.node(name, broker={"url": broker.url}, **kw)

    def close(self) -> None:
        self.cluster.stop_all()
        for m in (self.m2, self.m1):
            m.close()


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[Sites]:
    s = Sites(tmp_path)
    try:
        s.start()
        yield s
    finally:
        s.close()


def bridged_pair(sites: Sites, **kw: Any) -> tuple[NodeProc, NodeProc]:
    """A (priority 200, preempts) on M1, active; B (priority 100) on M2, standby."""
    a = sites.node("a", sites.m1, priority=200, role={"preempt": True, **kw})
    b = sites.node("b", sites.m2, priority=100)
    a.wait_ready()
    b.wait_ready()
    wait_until(lambda: a.role() == "active" and b.role() == "standby", 15,
               "a active and b standby across the bridge")
    return a, b


def roles_during(nodes: tuple[NodeProc, ...], seconds: float,
                 interval: float = 0.05) -> list[tuple[float, tuple[str, ...]]]:
    """Each node's role, sampled every `interval` for `seconds` (t from the start)."""
    out = []
    t0 = time.monotonic()
    while (t := time.monotonic() - t0) < seconds:
        out.append((t, tuple(n.role() for n in nodes)))
        time.sleep(interval)
    return out


def hears(n: NodeProc, peer: str) -> bool:
    """`n` takes `peer` for alive, and `peer` is not in its joining state."""
    return any(p["node"] == peer and p["alive"] and p["role"] in ("active", "standby")
               for p in n.state()["peers"])


def both_active(samples: list[tuple[float, tuple[str, ...]]]) -> list[float]:
    return [t for t, roles in samples if roles == ("active", "active")]


# ================================================================ replication
def test_a_create_on_a_crosses_the_bridge_into_bs_card(sites: Sites) -> None:
    a, b = bridged_pair(sites)
    sports = range(52000, 52020)
    t0 = time.monotonic()
    open_flows(a, sports)
    wait_until(lambda: all(installed(b, s) for s in sports), 15,
               "every flow in b's card, across the bridge", interval=0.01)
    record("bridge_20_flows_opened_to_all_installed", time.monotonic() - t0)
    e = installed(b, 52019)
    assert e is not None and e["synced_from"] == "a" and e["card"]["hw"] == ["IN_HW", "IN_HW"]
    lat = b.state()["install_latency_ms"]
    assert lat["count"] >= 20 and 0 < lat["p99"] < 5000
    record("bridge_create_to_installed_p99_metric", lat["p99"] / 1000)
    # and the other way: b's heartbeats reach a, through M2 and the bridge
    peers = {p["node"]: p for p in a.state()["peers"]}
    assert peers["b"]["alive"] and peers["b"]["role"] == "standby"


def test_a_kill9_of_the_active_is_seen_across_the_bridge(sites: Sites) -> None:
    """M1 publishes A's will; the bridge carries it to M2 and B."""
    a, b = bridged_pair(sites)
    sports = range(52100, 52110)
    open_flows(a, sports)
    wait_until(lambda: all(installed(b, s) for s in sports), 15, "every flow in b's card")
    t0 = time.monotonic()
    a.kill9()
    wait_until(lambda: b.role() == "active", 10, "b to take over", interval=0.005)
    record("bridge_kill9_to_b_active", time.monotonic() - t0)
    first = [b.inject(*data_packets(s)[0]) for s in sports]
    assert [o["path"] for o in first] == ["hw"] * len(sports), first
    promo = b.state()["promotions"][-1]
    assert promo["eligible"] == len(sports)
    assert promo["installed"] + promo["pending"] == len(sports)


# ================================================================ the active's broker down
def _broker_outage(sites: Sites, a: NodeProc, b: NodeProc, outage: float,
                   how: str = "stop") -> list[tuple[float, tuple[str, ...]]]:
    """M1 (A's broker) down for `outage` seconds (`how`: stopped, or killed with
    SIGKILL), then back on its port; the roles sampled while it is down."""
    sports = range(52200, 52210)
    open_flows(a, sports)
    wait_until(lambda: all(installed(b, s) for s in sports), 15, "every flow in b's card")
    if how == "kill":
        sites.m1.kill()
    else:
        sites.m1.stop()
    samples = roles_during((a, b), outage)
    sites.m1.start()
    # Joined again (A reconnects at once, the bridge a few seconds later), A sees
    # B's newer term (it steps down if it had not), then preempts B (priority 200,
    # preempt on) with a term above it: one active again.
    wait_until(lambda: hears(a, "b") and hears(b, "a"), 30, "the brokers to be joined again")
    wait_until(lambda: (a.role(), b.role()) == ("active", "standby"), 15,
               "a to preempt b with a newer term")
    terms = {n.name: n.state()["term"] for n in (a, b)}
    assert terms["a"] > 2 and terms["b"] >= 2, terms
    wait_until(lambda: table(a) == table(b), 15, "a and b to converge")
    assert all(installed(b, s) for s in sports)
    return samples


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_the_active_s_broker_going_down_splits_a_bridged_pair_until_it_returns(
        sites: Sites, how: str) -> None:
    """Stopped, Mosquitto publishes the wills of its clients on its way down, and the
    bridge carries A's to B, whose own heartbeats still come back (through M2): B takes
    over at once. Killed, it publishes nothing: B takes over on A's silence."""
    a, b = bridged_pair(sites)
    samples = _broker_outage(sites, a, b, 3.0, how)
    took_over = next(t for t, roles in samples if roles[1] == "active")
    split = both_active(samples)
    record(f"bridge_m1_{how}_to_b_active", took_over)
    record(f"bridge_m1_{how}_two_actives_for", (split[-1] - split[0]) if split else 0.0)
    # b took over on the will, or within its dead_after and a probe, and a kept the
    # role while M1 was down: two actives for the rest of the outage
    assert took_over < (0.3 if how == "stop" else 2.0), samples
    assert split and split[-1] > 2.5 and split[0] == took_over, samples


def test_step_down_isolated_bounds_the_split_brain_of_a_bridged_pair(sites: Sites) -> None:
    a, b = bridged_pair(sites, step_down_isolated=1.0)
    samples = _broker_outage(sites, a, b, 3.0)
    split = both_active(samples)
    record("bridge_m1_down_two_actives_for_isolated_1s",
           (split[-1] - split[0]) if split else 0.0)
    # a gave the role up about 1 s after its last heartbeat came back: two actives at
    # most from b's takeover to then; from 1.5 s on, a was never active while M1 was down
    assert not [t for t, roles in samples if t > 1.5 and roles[0] == "active"], samples
    assert any(roles == ("standby", "active") for t, roles in samples), samples
    assert a.state()["step_down_isolated"] == 1.0


# ================================================================ credentials
COMPOSE = Path(__file__).resolve().parents[2] / "compose" / "mosquitto"


def test_a_bridge_with_credentials_under_the_shipped_acl(tmp_path: Path) -> None:
    """Both brokers with passwords and the shipped ACL, its ctlab-bridge lines
    uncommented on M1, the bridge logging in there as ctlab-bridge
    (bridge.conf.example's lines, from bridge_config()): replication crosses it,
    and on M2 a node still publishes only under its own name."""
    acl = (COMPOSE / "acl").read_text()
    bridged = acl.replace("#user ctlab-bridge", "user ctlab-bridge") \
        .replace("#topic readwrite ctlab/#", "topic readwrite ctlab/#")
    assert bridged != acl and "\nuser ctlab-bridge\ntopic readwrite ctlab/#" in bridged
    example = (COMPOSE / "bridge.conf.example").read_text()
    lines = bridge_config("ctlab-site-b", "site-a-broker", 1883, username="ctlab-bridge",
                          password="change-me-bridge")
    assert lines in example  # the shipped example is what the helper writes
    users = {"a": "pw-a", "b": "pw-b"}
    m1 = Mosquitto(users={**users, "ctlab-bridge": "pw-bridge"}, acl=bridged)
    m2 = Mosquitto(users=users, acl=acl, extra=bridge_config(
        "ctlab-site-b", m1.host, m1.port, username="ctlab-bridge", password="pw-bridge"))
    cluster = Cluster(tmp_path, None)
    try:
        m1.start()
        m2.start()
        a = cluster.node("a", priority=200, role={"preempt": True},
                         broker={"url": f"mqtt://a:pw-a@{m1.host}:{m1.port}"})
        b = cluster.node("b", priority=100,
                         broker={"url": f"mqtt://b:pw-b@{m2.host}:{m2.port}"})
        a.wait_ready()
        b.wait_ready()
        wait_until(lambda: a.role() == "active" and b.role() == "standby", 20,
                   "a active and b standby across the bridge")
        sports = range(52300, 52305)
        open_flows(a, sports)
        wait_until(lambda: all(installed(b, s) for s in sports), 15,
                   "every flow in b's card, across the bridge")
        # b, on M2, publishing a heartbeat under a's name: M2's ACL drops it
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.username_pw_set("b", "pw-b")
        c.connect(m2.host, m2.port)
        c.loop_start()
        c.publish(f"ctlab/{cluster.name}/hb/a", b"forged", qos=1).wait_for_publish(5)
        c.loop_stop()
        c.disconnect()
        time.sleep(0.5)
        assert a.role() == "active" and b.state()["bad_messages"] == 0
    finally:
        cluster.stop_all()
        for m in (m2, m1):
            m.close()


@pytest.mark.parametrize("kw", [{"name": ""}, {"name": "site b"}, {"host": "a\nconnection x"},
                                {"prefix": "ctlab/# in"}, {"username": "u v"},
                                {"password": "p\ntopic # both 2"}, {"port": 0}])
def test_bridge_config_refuses_what_would_misread_as_configuration(kw: dict[str, Any]) -> None:
    args: dict[str, Any] = {"name": "site-b", "host": "127.0.0.1", "port": 1883, **kw}
    with pytest.raises(BrokerError, match="bridge"):
        bridge_config(args.pop("name"), args.pop("host"), args.pop("port"), **args)


def test_a_bridging_brokers_config_sets_each_broker_wide_option_once() -> None:
    """mosquitto_config() (Mosquitto(extra=...) and the netns backend's files):
    bridge_config()'s max_inflight_messages 0 replaces the base's 100 instead of
    following it; the bridge's own lines and a second listener are kept."""
    plain = mosquitto_config("198.18.2.2", 1883).splitlines()
    assert plain[0] == "listener 1883 198.18.2.2" and "max_inflight_messages 100" in plain
    assert "allow_anonymous true" in plain
    extra = "listener 1884 198.18.2.2\n" + bridge_config("ctlab-b", "198.18.2.3", 1883)
    lines = mosquitto_config("198.18.2.2", 1883, extra=extra).splitlines()
    options = [ln.split()[0] for ln in lines[:lines.index("connection ctlab-b")]]
    assert options.count("max_inflight_messages") == 1 and "max_inflight_messages 0" in lines
    assert options.count("listener") == 2 and "max_queued_messages 100000" in lines
    assert "topic ctlab/# both 1" in lines and "restart_timeout 1" in lines
