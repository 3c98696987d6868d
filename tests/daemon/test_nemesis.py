"""The scenario runner's node-side hooks on real node processes: the nemesis
control API (sync impairment, broker link, data link, clock), annotated ports,
/card/entries, the offload counts in /state, DESTROY reasons in /events, and
the mechanisms switched off (replication, pre-installation, distributed aging).

The solo tests share one node with an embedded broker; the cluster tests run
against one broker (Mosquitto when installed, else amqtt in its own process)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.daemon.wire import decode_annotated
from node.packet import build, icmp_echo, parse, tcp
from syncbus.broker import MOSQUITTO
from tests.daemon.conftest import (
    Broker,
    Cluster,
    NodeProc,
    data_packets,
    handshake,
    http,
    lone_active,
    node_config,
    peer_sockets,
    udp_flow,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)


# ================================================================ one node
@pytest.fixture(scope="module")
def peers() -> Iterator[dict[str, socket.socket]]:
    with peer_sockets() as socks:
        yield socks


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory,
         peers: dict[str, socket.socket]) -> Iterator[NodeProc]:
    cfg = node_config("solo", "nem", None, broker={"embedded": {"port": 0}},
                      sysctl={"nf_conntrack_icmp_timeout": 1})
    cfg["ports"]["outside"]["annotate"] = True
    with lone_active(tmp_path_factory.mktemp("nemesis"), cfg, peers) as n:
        yield n


def settings(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "stats"}


def drain(s: socket.socket) -> None:
    s.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while s.recv(65536):
            pass
    s.settimeout(5.0)


@pytest.mark.parametrize(("body", "message"), [
    ({"sync": {"loss": 2}}, "sync.loss: 2 is out of range"),
    ({"data": "cut", "sync": {"loss": -1}}, "sync.loss"),  # a good field is not applied
    ({"broker_link": "cut", "clock_offset": 1e9}, "clock_offset"),
    ({"data": "off"}, 'data: expected "cut" or "up"'),
    ({"sync": {"delay": "1s"}}, "sync.delay: expected a number"),
    ({"what": 1}, "what: unknown field"),
    ([1], "expected a JSON object"),
])
def test_a_bad_nemesis_request_is_a_400_and_changes_nothing(node: NodeProc, body: Any,
                                                            message: str) -> None:
    before = settings(node.get("/nemesis"))
    status, data = http("POST", node.url + "/nemesis", body)
    doc = json.loads(data)
    assert status == 400 and message in doc["error"], doc
    assert settings(node.get("/nemesis")) == before
    assert before == {"sync": None, "broker_link": "up", "data": "up", "clock_offset": 0.0}
    assert node.get("/health")["bus_connected"] is True


def test_nemesis_answers_with_the_full_state_and_state_shows_it(node: NodeProc) -> None:
    got = node.post("/nemesis", {"sync": {"loss": 0.0, "duplicate": 0.0, "delay": 0.001,
                                          "seed": 5}})
    try:
        assert got["sync"] == {"loss": 0.0, "duplicate": 0.0, "delay": 0.001, "jitter": 0.0,
                               "seed": 5}
        assert set(got["stats"]) == {"sync_out", "sync_in", "sync_pending", "data_drops",
                                     "broker_holds"}
        assert set(got["stats"]["sync_out"]) == {"frames", "dropped", "duplicated", "delayed"}
        wait_until(lambda: node.get("/nemesis")["stats"]["sync_out"]["delayed"] > 0, 5,
                   "heartbeats to be delayed")
        st = node.state()
        assert st["nemesis"]["sync"]["seed"] == 5
        assert st["mechanisms"] == {"replication": True, "preinstall": True,
                                    "distributed_aging": True, "readiness_gate": True}
        assert set(st["offload"]) == {"eligible", "installed", "pending"}
    finally:
        assert node.post("/nemesis", {"sync": None})["sync"] is None
    assert node.role() == "active"


def test_data_cut_drops_everything_on_the_ports_until_up(
        node: NodeProc, peers: dict[str, socket.socket]) -> None:
    for s in peers.values():
        drain(s)
    to_node = ("127.0.0.1", node.ports["inside"])
    syn = tcp("198.18.7.1", "198.19.7.1", 47000, 80, "S", 7, 0)
    peers["inside"].sendto(build(syn), to_node)
    path, raw = decode_annotated(peers["outside"].recvfrom(65536)[0])  # annotated port
    assert path == "sw" and parse(raw) == syn
    assert node.post("/nemesis", {"data": "cut"})["data"] == "cut"
    try:
        peers["inside"].sendto(build(tcp("198.18.7.2", "198.19.7.2", 47001, 80, "S", 7, 0)),
                               to_node)
        out = node.inject("inside", udp_flow(47002))
        assert out["drop_reason"] == "NEMESIS_DATA_CUT" and out["forwarded"] is False
        wait_until(lambda: node.get("/nemesis")["stats"]["data_drops"]["inside"] >= 2, 5,
                   "the cut port to count its drops")
        peers["outside"].settimeout(0.5)
        with pytest.raises(TimeoutError):
            peers["outside"].recvfrom(65536)
        assert node.entry(47001) is None and node.entry(47002) is None
        assert node.state()["ports"]["inside"]["nemesis_drops"] >= 2
    finally:
        assert node.post("/nemesis", {"data": "up"})["data"] == "up"
        peers["outside"].settimeout(5.0)
    peers["inside"].sendto(build(tcp("198.18.7.3", "198.19.7.3", 47003, 80, "S", 7, 0)),
                           to_node)
    path, raw = decode_annotated(peers["outside"].recvfrom(65536)[0])
    assert path == "sw" and parse(raw).l4.sport == 47003  # type: ignore[union-attr]


def test_annotation_carries_the_hardware_path_and_plain_ports_send_raw_packets(
        node: NodeProc, peers: dict[str, socket.socket]) -> None:
    for port, pkt in handshake(47100):
        node.inject(port, pkt)
    wait_until(lambda: (node.entry(47100) or {}).get("offload") == "hw", 5, "hw offload")
    for s in peers.values():
        drain(s)
    (to_out, c_pkt), (to_in, s_pkt) = data_packets(47100)
    assert node.inject(to_out, c_pkt)["path"] == "hw"
    assert node.inject(to_in, s_pkt)["path"] == "hw"
    assert decode_annotated(peers["outside"].recvfrom(65536)[0]) == ("hw", build(c_pkt))
    assert peers["inside"].recvfrom(65536)[0] == build(s_pkt)  # no annotate there


def test_card_entries_and_offload_counts(node: NodeProc) -> None:
    for port, pkt in handshake(47200):
        node.inject(port, pkt)
    wait_until(lambda: (node.entry(47200) or {}).get("offload") == "hw", 5, "hw offload")
    entries = node.get("/card/entries")["entries"]
    mine = [e for e in entries if e["orig"]["sport"] == 47200]
    assert sorted(e["direction"] for e in mine) == ["original", "reply"]
    assert all(e["state"] == "IN_HW" and e["zone"] == 1 for e in mine)
    assert mine[0]["orig"] == node.entry(47200)["orig"]  # type: ignore[index]
    assert node.get("/card?entries=1")["entries"] == entries
    assert "entries" not in node.get("/card")
    off = node.state()["offload"]
    assert 1 <= off["installed"] <= off["eligible"]
    e = node.entry(47200)
    assert e is not None and e["state"] == "ESTABLISHED" and e["period"] > 0


def test_a_destroy_event_says_why_and_carries_the_timeout(node: NodeProc) -> None:
    since = node.get("/events?since=0")["next"]
    node.inject("inside", icmp_echo("198.18.9.1", "198.19.9.1", 77, 1))

    def destroyed() -> dict[str, Any] | None:
        got = node.get(f"/events?since={since}&wait=1")
        for ev in got["events"]:
            if ev["type"] == "DESTROY" and ev["entry"]["orig"]["src"] == "198.18.9.1":
                return dict(ev)
        return None
    ev = wait_until(destroyed, 10, "the ICMP entry to expire")
    assert ev["reason"] == "timeout" and ev["timeout"] == 1.0
    assert ev["entry"]["period"] == 1.0 and ev["entry"]["timeout"] <= 0.05
    new = node.get(f"/events?since={since}")["events"][0]
    assert new["type"] == "NEW" and new["reason"] is None


def test_clock_offset_moves_the_nodes_time(node: NodeProc) -> None:
    t0 = node.state()["now"]
    try:
        got = node.post("/nemesis", {"clock_offset": 500.0})
        assert got["clock_offset"] == 500.0
        st = node.state()
        assert 500.0 <= st["now"] - t0 < 520.0
        assert st["nemesis"]["clock_offset"] == 500.0
    finally:
        node.post("/nemesis", {"clock_offset": 0})
    assert node.state()["now"] - t0 < 20.0
    wait_until(lambda: node.role() == "active", 5, "the node to stay active")


# ================================================================ clusters
@pytest.fixture
def cl(tmp_path: Path) -> Iterator[Cluster]:
    b = Broker("mosquitto" if Path(MOSQUITTO).exists() else "amqtt")
    c = Cluster(tmp_path, b.url)
    try:
        b.start()
        yield c
    finally:
        c.stop_all()
        b.close()


def pair(c: Cluster, a_kw: dict[str, Any] | None = None,
         b_kw: dict[str, Any] | None = None) -> tuple[NodeProc, NodeProc]:
    a = c.node("a", priority=200, role={"preempt": True}, **(a_kw or {}))
    b = c.node("b", priority=100, **(b_kw or {}))
    a.wait_ready()
    b.wait_ready()
    wait_until(lambda: a.role() == "active" and b.role() == "standby", 15,
               "a active and b standby")
    return a, b


def open_flows(n: NodeProc, sports: range) -> None:
    for sport in sports:
        for port, pkt in handshake(sport):
            assert n.inject(port, pkt)["forwarded"]


def sports_of(n: NodeProc) -> set[int]:
    return {e["orig"]["sport"] for e in n.entries()}


@pytest.mark.broker
def test_sync_loss_on_a_keeps_its_creates_from_b(cl: Cluster) -> None:
    a, b = pair(cl)
    a.post("/nemesis", {"sync": {"loss": 1.0}})
    open_flows(a, range(48000, 48005))
    time.sleep(1.0)
    assert not sports_of(b) & set(range(48000, 48005))
    assert a.get("/nemesis")["stats"]["sync_out"]["dropped"] >= 5


@pytest.mark.broker
def test_replication_off_gives_b_nothing_but_its_gate_opens(cl: Cluster) -> None:
    a = cl.node("a", priority=200, mechanisms={"replication": False}).wait_ready()
    wait_until(lambda: a.role() == "active", 10, "a active")
    open_flows(a, range(48100, 48105))
    b = cl.node("b", priority=100).wait_ready()

    def b_ready() -> bool:
        return bool(b.state()["gate"]["state"] == "ready")
    wait_until(b_ready, 10, "b's gate to open")
    gate = b.state()["gate"]
    assert "snapshot from a complete" in gate["reason"], gate
    open_flows(a, range(48105, 48107))
    time.sleep(0.5)
    assert sports_of(b) == set() and len(a.entries()) == 7
    assert a.state()["outbox"]["frames"] == 0 and a.state()["mechanisms"]["replication"] is False
    assert b.role() == "standby"


@pytest.mark.broker
def test_preinstall_off_keeps_bs_card_empty_while_its_conntrack_has_the_entries(
        cl: Cluster) -> None:
    a, b = pair(cl, b_kw={"mechanisms": {"preinstall": False}})
    sports = range(48200, 48204)
    open_flows(a, sports)
    wait_until(lambda: sports_of(b) >= set(sports), 10, "b to get the entries")
    time.sleep(0.3)
    assert b.get("/card/entries")["entries"] == []
    assert b.state()["tables"]["card_entries"] == 0
    assert b.state()["offload"] == {"eligible": 4, "installed": 0, "pending": 0}
    assert all(b.entry(s)["card"] is None for s in sports)  # type: ignore[index]
    a.kill9()
    wait_until(lambda: b.role() == "active", 10, "b to take over")
    first = b.inject(*data_packets(48200)[0])
    assert first["path"] == "sw" and first["forwarded"]
    wait_until(lambda: b.state()["offload"]["installed"] == 1, 5,
               "software traffic to offload the synced entry")
    assert b.inject(*data_packets(48200)[1])["path"] == "hw"


@pytest.mark.broker
def test_distributed_aging_off_sends_no_touches(cl: Cluster) -> None:
    a, b = pair(cl, a_kw={"mechanisms": {"distributed_aging": False}})
    a.inject("inside", udp_flow(48300))
    wait_until(lambda: 48300 in sports_of(b), 10, "b to get the flow")
    for _ in range(6):  # traffic on a across several card polls (0.5 s)
        a.inject("inside", udp_flow(48300))
        time.sleep(0.25)
    sa, sb = a.state(), b.state()
    assert sa["aging"]["noted"] > 0
    assert sb["aging"]["received"] == 0 and sb["aging"]["extended"] == 0


@pytest.mark.broker
def test_a_cut_data_link_puts_the_active_in_fault_and_the_standby_takes_over(
        cl: Cluster) -> None:
    """The active's data path goes down while its sync link stays up (the
    local backend's partition_data): it gives the role up at once (FAULT, as
    keepalived's track_interface), b takes over in well under dead_after's
    worth of missed heartbeats, with a's flows already in its card; once the
    link is back, a (priority 200, preempt) takes the role back."""
    a, b = pair(cl)
    open_flows(a, range(48500, 48503))
    wait_until(lambda: sports_of(b) >= set(range(48500, 48503)), 10, "b to get the flows")
    t0 = time.monotonic()
    assert a.post("/nemesis", {"data": "cut"})["data"] == "cut"
    wait_until(lambda: b.role() == "active", 5, "b to take over")
    took = time.monotonic() - t0
    st = a.state()
    assert st["role"] == "fault" and st["fault"] == "inside: wire cut; outside: wire cut", st
    assert took < 1.5, took  # a link check (100 ms) and a heartbeat, not a peer timeout
    assert "data link down" in json.dumps(st["roles"])
    assert {p["node"]: p["role"] for p in b.state()["peers"]} == {"a": "fault"}
    assert b.state()["offload"]["installed"] >= 3  # a's flows, in b's card before
    assert a.post("/nemesis", {"data": "up"})["data"] == "up"
    wait_until(lambda: (a.role(), b.role()) == ("active", "standby"), 5,
               "a to preempt once its link is back")
    assert a.state()["fault"] is None
    assert "Traceback" not in a.log() + b.log()


@pytest.mark.broker
def test_a_cut_broker_link_fires_the_will_and_after_up_the_node_resyncs(cl: Cluster) -> None:
    a, b = pair(cl)
    open_flows(a, range(48400, 48403))
    wait_until(lambda: sports_of(b) >= set(range(48400, 48403)), 10, "b to get the flows")
    term0 = a.state()["term"]
    t0 = time.monotonic()
    got = a.post("/nemesis", {"broker_link": "cut"})
    assert got["broker_link"] == "cut" and got["stats"]["broker_holds"] == 1

    def a_down() -> bool:
        peers = {p["node"]: p for p in b.state()["peers"]}
        return not peers["a"]["alive"] and peers["a"]["role"] == "offline"
    wait_until(a_down, 5, "b to see a's will")
    assert time.monotonic() - t0 < 3.0  # the will, not a keepalive timeout
    wait_until(lambda: b.role() == "active", 5, "b to take over")
    # a's will carries term 0 (registered when a connected, before its election):
    # b's term must still go above the term a reached (ctlab chaos --seed 23)
    taken = b.state()["term"]
    assert taken > term0
    open_flows(a, range(48403, 48406))  # while cut: nobody hears these
    time.sleep(0.5)
    bus = a.state()["bus"]
    assert not bus["connected"] and bus["link"] == "cut" and bus["connects"] == 1
    assert not sports_of(b) & set(range(48403, 48406))
    assert a.post("/nemesis", {"broker_link": "up"})["broker_link"] == "up"
    wait_until(lambda: sports_of(b) >= set(range(48400, 48406)), 15,
               "b to resync a's flows made while cut")
    assert a.state()["bus"]["connects"] >= 2
    # a, back and still active with its old term, is fenced by b's; then it
    # preempts (priority 200 > 100) with a term of its own above b's
    wait_until(lambda: (a.role(), b.role()) == ("active", "standby"), 10,
               "a to preempt b")
    assert a.state()["term"] > taken
    reasons = [r[1] for r in a.state()["roles"] if r[1].startswith("RoleChanged")]
    assert any(f"fenced by b (term {taken})" in r for r in reasons), reasons
    a.post("/nemesis", {"broker_link": "cut"})  # a node on a cut link still stops cleanly
    t0 = time.monotonic()
    assert a.stop() == 0 and time.monotonic() - t0 < 5.0
    assert "Traceback" not in a.log()


@pytest.mark.broker
def test_with_a_will_grace_a_short_broker_flap_of_the_active_moves_no_role(cl: Cluster) -> None:
    """role.will_grace 0.6 s (dead_after 0.8 s): a's MQTT connection is cut (no
    DISCONNECT: the broker publishes its will) and restored 0.2 s later. a is
    back on a new connection within the grace: b stays standby, a active, no
    term moves. Then a kill -9 of a: b takes over on the will, once the grace
    has passed (not at once, and not on dead_after's silence alone)."""
    role = {"will_grace": 0.6, "dead_after": 0.8}
    a = cl.node("a", priority=200, role={**role, "preempt": True}).wait_ready()
    b = cl.node("b", priority=100, role=role).wait_ready()
    wait_until(lambda: a.role() == "active" and b.role() == "standby", 15,
               "a active and b standby")
    term = a.state()["term"]
    assert a.post("/nemesis", {"broker_link": "cut"})["broker_link"] == "cut"
    time.sleep(0.2)
    assert a.post("/nemesis", {"broker_link": "up"})["broker_link"] == "up"
    wait_until(lambda: a.state()["bus"]["connects"] >= 2, 5, "a to reconnect")
    time.sleep(1.0)  # past the grace and dead_after
    assert (a.role(), b.role()) == ("active", "standby")
    assert a.state()["term"] == term
    b_roles = [what for _, what in b.state()["roles"]]
    assert not any("new='active'" in r for r in b_roles), b_roles
    assert not any(r.startswith("PeerDown") for r in b_roles), b_roles
    # the will did come (the cut closed a's connection), and a's return withdrew it
    assert b.state()["wills"] == {"received": 1, "taken": 0, "withdrawn": 1, "voided": 0}
    assert b.state()["will_grace"] == 0.6
    t0 = time.monotonic()
    a.kill9()
    wait_until(lambda: b.role() == "active", 5, "b to take over")
    took = time.monotonic() - t0
    assert 0.55 <= took < 2.0, took
    downs = [r for _, r in b.state()["roles"] if r.startswith("PeerDown")]
    assert downs and "reason='will'" in downs[-1], downs
    assert b.state()["wills"]["taken"] == 1


@pytest.mark.broker
def test_with_step_down_isolated_an_active_cut_off_the_broker_gives_the_role_up(
        cl: Cluster) -> None:
    """role.step_down_isolated 0.6 s: a's broker link is cut for 2 s. b takes
    over on a's will; a, which cannot hear that, gives the role up 0.6 s after
    its last heartbeat came back, not at the heal: the split brain lasts about
    that long. After the heal a stays standby (it waits to hear b, active) and
    b keeps the role."""
    role = {"step_down_isolated": 0.6, "dead_after": 0.35}
    a = cl.node("a", priority=200, role=role).wait_ready()
    b = cl.node("b", priority=100, role=role).wait_ready()
    wait_until(lambda: a.role() == "active" and b.role() == "standby", 15,
               "a active and b standby")
    assert a.state()["step_down_isolated"] == 0.6
    t0 = time.monotonic()
    assert a.post("/nemesis", {"broker_link": "cut"})["broker_link"] == "cut"
    wait_until(lambda: b.role() == "active", 5, "b to take over on a's will")
    wait_until(lambda: a.role() == "standby", 5, "a to give the role up", interval=0.01)
    gave_up = time.monotonic() - t0
    assert 0.5 <= gave_up < 1.5, gave_up
    time.sleep(max(0.0, 2.0 - (time.monotonic() - t0)))
    assert a.post("/nemesis", {"broker_link": "up"})["broker_link"] == "up"
    wait_until(lambda: a.state()["bus"]["connects"] >= 2, 5, "a to reconnect")
    time.sleep(1.0)
    assert (a.role(), b.role()) == ("standby", "active")
    reasons = [r for _, r in a.state()["roles"] if r.startswith("RoleChanged")]
    assert "reason='isolated: none of our heartbeats came back for" in reasons[-1], reasons
    assert sum("new='active'" in r for r in reasons) == 1, reasons  # never took it back


@pytest.mark.broker
def test_a_frozen_active_that_wakes_up_is_fenced_and_stays_standby(cl: Cluster) -> None:
    """SIGSTOP, the stuck process of the textbook split brain: its broker
    connection stays up (the freeze is shorter than the keepalive), so no will
    fires and b must find the silence itself. When a wakes up, its timers are
    all late and every peer looks silent to it: it must not take the role on
    that stale view. It sees b's higher term, steps down (no preempt here),
    stays standby, and has the flows b opened meanwhile. It does so on the
    first heartbeats it reads, not on a timeout: the zombie active lasts a few
    milliseconds (2-5 ms measured), under dead_after (0.35 s) here."""
    a = cl.node("a", priority=200).wait_ready()
    wait_until(lambda: a.role() == "active", 10, "a active")
    b = cl.node("b", priority=100).wait_ready()
    wait_until(lambda: b.role() == "standby" and b.state()["gate"]["state"] == "ready", 10,
               "b a ready standby")
    open_flows(a, range(48600, 48603))
    wait_until(lambda: sports_of(b) >= set(range(48600, 48603)), 10, "b to get the flows")
    term_a = a.state()["term"]
    os.kill(a.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: b.role() == "active", 5, "b to take over from the frozen a")
        taken = b.state()["term"]
        assert taken > term_a
        open_flows(b, range(48603, 48606))
        time.sleep(0.5)
    finally:
        os.kill(a.pid, signal.SIGCONT)
        woke = time.monotonic()
    wait_until(lambda: a.role() == "standby", 5, "a to step down", interval=0.005)
    assert time.monotonic() - woke < 0.25  # fenced by what it reads, not by a timeout
    wait_until(lambda: sports_of(a) >= set(range(48600, 48606)), 10, "a to get b's flows")
    for _ in range(10):  # and it stays that way: no flapping on a's late timers
        assert (a.role(), b.role()) == ("standby", "active")
        time.sleep(0.1)
    assert b.state()["term"] == taken  # b was never fenced by a's stale term
    assert {p["node"]: p["term"] for p in a.state()["peers"]} == {"b": taken}
    reasons = [r[1] for r in a.state()["roles"] if r[1].startswith("RoleChanged")]
    assert any(f"fenced by b (term {taken})" in r for r in reasons), reasons
    assert "Traceback" not in a.log() + b.log()
