"""Replication end to end: real node processes (python -m node.daemon) through a
real broker (a separate amqtt process, or Mosquitto), driven through the
control API. Each test runs against both brokers."""

from __future__ import annotations

import re
import signal
import time
from typing import Any

import paho.mqtt.publish as mqtt_publish
import pytest

from node.conntrack import Conntrack
from node.conntrack.tuple import tuple_of
from node.packet import tcp
from syncbus import codec, topics
from syncbus.ctstate import upsert_of
from syncbus.messages import PROTOCOL_VERSION, ConnId, CtBatch, Envelope
from tests.daemon.conftest import (
    KEY,
    OPTS,
    Broker,
    Cluster,
    NodeProc,
    data_packets,
    handshake,
    udp_flow,
    wait_until,
)

pytestmark = [pytest.mark.timeout(120), pytest.mark.broker]
FIGURES: dict[str, list[float]] = {}  # printed at the end (pytest -s) for the README


def record(name: str, value: float) -> None:
    FIGURES.setdefault(name, []).append(value)
    print(f"\nFIGURE {name} = {value * 1000:.1f} ms")


def pair(cluster: Cluster, **kw: Any) -> tuple[NodeProc, NodeProc]:
    """A (priority 200, active) and B (priority 100, standby), both up. Both
    start at once; A preempts, in case B's process was up first."""
    a = cluster.node("a", priority=200, role={"preempt": True}, **kw)
    b = cluster.node("b", priority=100, **kw)
    a.wait_ready()
    b.wait_ready()
    try:
        wait_until(lambda: a.role() == "active" and b.role() == "standby", 15,
                   "a active and b standby")
    except AssertionError:
        for n in (a, b):
            st = n.state()
            print(n.name, st["role"], st["gate"], st["peers"], st["bus"], st["roles"])
            print(n.log())
        raise
    return a, b


def installed(n: NodeProc, sport: int) -> dict[str, Any] | None:
    e = n.entry(sport)
    if e is not None and e["card"] is not None and e["card"]["installed"]:
        return e
    return None


def open_flows(n: NodeProc, sports: range) -> None:
    for sport in sports:
        for port, pkt in handshake(sport):
            out = n.inject(port, pkt)
            assert out["forwarded"], out


def table(n: NodeProc) -> dict[tuple[Any, ...], str | None]:
    return {(e["orig"]["src"], e["orig"]["sport"], e["orig"]["dst"], e["orig"]["dport"],
             e["orig"]["proto"], e["zone"]): e["state"] for e in n.entries()}


# ================================================================ create -> installed
def test_a_create_on_a_is_installed_in_bs_card(cluster: Cluster) -> None:
    a, b = pair(cluster)
    for sport in range(50000, 50010):
        syn, synack, ack = handshake(sport)
        t0 = time.monotonic()
        a.inject(*syn)
        a.inject(*synack)
        t1 = time.monotonic()
        a.inject(*ack)  # established and assured: offloadable from here on
        e = wait_until(lambda s=sport: installed(b, s), 10, f"flow {sport} in b's card",
                       interval=0.005)
        t2 = time.monotonic()
        record("syn_on_a_to_installed_on_b_polled", t2 - t0)
        record("ack_on_a_to_installed_on_b_polled", t2 - t1)
    assert e["synced_from"] == "a"
    assert e["offload"] == "hw" and "HW_OFFLOAD" in e["status"]
    assert e["card"]["hw"] == ["IN_HW", "IN_HW"]
    text = b.text("/conntrack?format=text")
    assert re.search(r"^tcp +6 src=198\.18\.0\.1 dst=198\.19\.0\.1 sport=50009 dport=443 .*"
                     r"\[HW_OFFLOAD\] mark=0 zone=1 use=1$", text, re.M), text
    st = b.state()
    assert st["tables"]["card_entries"] >= 20  # both directions of ten flows
    lat = st["install_latency_ms"]
    assert lat["count"] >= 10 and 0 < lat["p99"] < 5000
    record("create_to_installed_p50_metric", lat["p50"] / 1000)
    record("create_to_installed_p99_metric", lat["p99"] / 1000)
    metrics = b.text("/metrics")
    count = re.search(r"^ctlab_sync_install_latency_seconds_count (\d+)$", metrics, re.M)
    assert count and int(count.group(1)) >= 10
    assert a.state()["outbox"]["items"] >= 10 and st["replica"]["items"] >= 10


# ================================================================ failover
def test_after_a_is_killed_b_forwards_its_established_flows_in_hw_from_the_first_packet(
        cluster: Cluster) -> None:
    a, b = pair(cluster)
    sports = range(51000, 51010)
    open_flows(a, sports)
    assert a.inject(*data_packets(51000)[0])["path"] == "hw"  # a offloaded them too
    wait_until(lambda: all(installed(b, s) for s in sports), 15, "every flow in b's card")
    t0 = time.monotonic()
    a.kill9()
    wait_until(lambda: b.role() == "active", 10, "b to take over")
    took_over = time.monotonic() - t0
    first = [b.inject(*data_packets(s)[0]) for s in sports]
    first_hw = time.monotonic() - t0
    assert [o["path"] for o in first] == ["hw"] * len(sports), first
    assert all(o["forwarded"] and o["ports"] == ["outside"] for o in first)
    replies = [b.inject(*data_packets(s)[1]) for s in sports]
    assert all(o["path"] == "hw" and o["ports"] == ["inside"] for o in replies)
    record("kill_to_b_active", took_over)
    record("kill_to_first_hw_packets_on_b", first_hw)
    st = b.state()
    assert st["role"] == "active" and st["term"] >= 1
    assert any(not p["alive"] and p["node"] == "a" for p in st["peers"])
    # b recorded, at the moment it took over, that its card already held them all
    promo = st["promotions"][-1]
    assert promo["term"] == st["term"] and promo["table"] == len(sports)
    assert promo["eligible"] == len(sports)
    assert promo["installed"] + promo["pending"] == len(sports)
    assert b.get("/state?brief=1")["promotion"] == promo


# ================================================================ broker restart
def test_a_broker_restart_is_followed_by_resync_and_convergence(cluster: Cluster,
                                                                broker: Broker) -> None:
    a, b = pair(cluster)
    open_flows(a, range(52000, 52005))
    wait_until(lambda: len(table(b)) == 5, 10, "b to have the first five flows")
    broker.stop()
    wait_until(lambda: not a.get("/state")["bus"]["connected"], 10, "a to see the outage")
    open_flows(a, range(52005, 52010))  # changes nobody hears
    for port, pkt in data_packets(52000, 1)[:1]:  # and an update
        a.inject(port, pkt)
    broker.start()
    wait_until(lambda: table(a) == table(b) and len(table(b)) == 10, 30,
               "tables to converge after the restart")
    wait_until(lambda: all(installed(b, s) for s in range(52000, 52010)), 10, "b's card")
    sa, sb = a.state(), b.state()
    assert sa["bus"]["connects"] >= 2 and sb["bus"]["connects"] >= 2
    assert sb["replica"]["resync_requests"] >= 1 or sb["replica"]["snapshots"] >= 2
    roles = sorted((sa["role"], sb["role"]))
    assert roles == ["active", "standby"]


@pytest.mark.parametrize("stall", [1.5, 4.0])
def test_a_stalled_broker_is_nobodys_death(cluster: Cluster, broker: Broker,
                                           stall: float) -> None:
    """The broker process stops (SIGSTOP: swapped out, a VM paused) with every
    connection open. For 1.5 s (four times dead_after) nobody's heartbeat comes
    back, its own included, so nobody's silence is trusted: no takeover. At 4 s
    the clients' keepalive (2 s, then 2 s for the PINGRESP) gives up and they
    reconnect when the broker resumes, which then publishes the wills of the
    connections it lost: within the reconnect grace those end old sessions, not
    members. Either way the roles and terms do not move and what a did
    meanwhile reaches b."""
    a, b = pair(cluster)
    open_flows(a, range(52100, 52103))
    wait_until(lambda: len(table(b)) == 3, 10, "b to have the first flows")
    before = {n.name: len(n.state()["roles"]) for n in (a, b)}
    terms = (a.state()["term"], b.state()["term"])
    broker.signal(signal.SIGSTOP)
    try:
        time.sleep(0.5)
        open_flows(a, range(52103, 52106))  # a's data path does not wait for the broker
        time.sleep(stall - 0.5)
        assert (a.role(), b.role()) == ("active", "standby")
    finally:
        broker.signal(signal.SIGCONT)
    wait_until(lambda: table(a) == table(b) and len(table(b)) == 6, 30,
               "b to get what a did during the stall")
    time.sleep(1.0)  # and a little longer: wills restored late, late timers
    sa, sb = a.state(), b.state()
    assert (sa["role"], sb["role"]) == ("active", "standby")
    assert (sa["term"], sb["term"]) == terms
    for n, st in ((a, sa), (b, sb)):
        since = [r for r in st["roles"][before[n.name]:]
                 if r[1].startswith(("RoleChanged", "PeerDown"))]
        assert since == [], (n.name, since)
        assert "Traceback" not in n.log()
    if stall > 3:
        assert sa["bus"]["connects"] >= 2 and sb["bus"]["connects"] >= 2


# ================================================================ late joiner
def test_a_late_joiner_gets_a_full_snapshot_before_it_may_become_active(
        cluster: Cluster) -> None:
    a = cluster.node("a", priority=100).wait_ready()
    wait_until(lambda: a.role() == "active", 10, "a active")
    n_flows = 40
    for i in range(n_flows):
        a.inject("inside", udp_flow(53000 + i))
    c = cluster.node("c", priority=250, role={"preempt": True})
    seen: list[tuple[str, str, int]] = []

    def watch() -> bool:
        try:
            st = c.get("/state", timeout=2)
        except OSError:
            return False  # not listening yet
        seen.append((st["role"], st["gate"]["state"], st["tables"]["conntrack"]))
        return bool(st["role"] == "active")
    wait_until(watch, 20, "c to take over (preempt)")
    wait_until(lambda: a.role() == "standby", 10, "a to step down")
    assert all(role in ("joining",) for role, gate, _ in seen if gate != "ready"), seen
    first_active = next(size for role, _, size in seen if role == "active")
    assert first_active == n_flows, seen
    gate = c.state()["gate"]
    states = [s for _, s, _ in gate["history"]]
    assert states[-2:] == ["syncing", "ready"], gate
    assert "snapshot from a complete" in gate["history"][-1][2]
    assert table(c) == table(a)


# ================================================================ forged messages
def forged_frames(cluster: str) -> list[tuple[str, bytes]]:
    """Frames a raw MQTT client publishes on the cluster's topics: garbage, an
    envelope signed with the wrong key, one with no signature, a truncated one."""
    ct = Conntrack()
    syn = tcp("198.18.66.1", "198.19.77.1", 666, 22, "S", 1, 0, options=OPTS)
    ct.commit(syn, 1.0)
    entry = ct.find(tuple_of(syn))
    assert entry is not None
    up = upsert_of(entry, ConnId("a", 1, entry.id), 1.0)
    env = Envelope(PROTOCOL_VERSION, cluster, "a", 1, 1, time.monotonic(), CtBatch((up,)))
    wrong_key = codec.encode(env, b"w" * 32)
    unsigned = codec.encode(env, None)
    good = codec.encode(env, KEY.encode())
    t = topics.ct(cluster, "a")
    return [(t, b"\x00garbage"), (t, wrong_key), (t, unsigned), (t, good[:-7]),
            (topics.ct(cluster, "evil"), good),  # a's frame on another node's topic
            (topics.hb(cluster, "a"), wrong_key)]


def test_forged_and_unauthenticated_messages_are_counted_and_install_nothing(
        cluster: Cluster, broker: Broker) -> None:
    a, b = pair(cluster)
    open_flows(a, range(54000, 54002))
    wait_until(lambda: len(table(b)) == 2, 10, "b to have the two real flows")
    before = {n.name: n.state()["bad_messages"] for n in (a, b)}
    frames = forged_frames(cluster.name)
    mqtt_publish.multiple([{"topic": t, "payload": p, "qos": 1} for t, p in frames],
                          hostname="127.0.0.1", port=broker.port, client_id="forger")
    wait_until(lambda: b.state()["bad_messages"] - before["b"] >= len(frames), 10,
               "b to count every forged frame")
    st = b.state()
    assert {"CodecError", "origin_not_topic_owner"} <= set(st["bad_reasons"])
    assert all(e["orig"]["src"] != "198.18.66.1" for e in b.entries())
    assert len(table(b)) == 2 and st["role"] == "standby"
    # a drops them too (the frames claim to be a's own, or are garbage)
    assert all(e["orig"]["src"] != "198.18.66.1" for e in a.entries())
    open_flows(a, range(54002, 54003))  # replication still works
    wait_until(lambda: len(table(b)) == 3, 10, "a new real flow to replicate")


# ================================================================ clean shutdown
def test_sigterm_is_a_clean_shutdown_with_an_offline_heartbeat(cluster: Cluster) -> None:
    a, b = pair(cluster)
    t0 = time.monotonic()
    assert a.stop() == 0  # SIGTERM
    stopped = time.monotonic() - t0
    assert stopped < 5.0

    def a_offline() -> bool:
        peers = {p["node"]: p for p in b.state()["peers"]}
        return not peers["a"]["alive"] and peers["a"]["role"] == "offline"
    wait_until(a_offline, 5, "b to hear a's goodbye")
    wait_until(lambda: b.role() == "active", 5, "b to take over")
    assert "Traceback" not in a.log()
