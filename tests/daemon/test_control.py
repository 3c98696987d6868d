"""The control API of one real node process (embedded broker): bad input gets a
4xx and a JSON error and changes nothing; /metrics parses as Prometheus text;
the UDP wire, capture, events and the conntrack CLI work end to end."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.daemon.gcwatch import YOUNG_THRESHOLD
from node.packet import build, parse, tcp
from tests.daemon.conftest import (
    REPO,
    NodeProc,
    data_packets,
    handshake,
    http,
    lone_active,
    node_config,
    peer_sockets,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def peers() -> Iterator[dict[str, socket.socket]]:
    """The far ends of the node's two UDP ports (clients and servers)."""
    with peer_sockets() as socks:
        yield socks


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory,
         peers: dict[str, socket.socket]) -> Iterator[NodeProc]:
    cfg = node_config("solo", "ctl", None, broker={"embedded": {"port": 0}})
    with lone_active(tmp_path_factory.mktemp("control"), cfg, peers) as n:
        yield n


def error_of(status_body: tuple[int, bytes]) -> tuple[int, str]:
    status, body = status_body
    doc = json.loads(body)
    assert doc["status"] == status
    return status, str(doc["error"])


def raw_request(n: NodeProc, data: bytes) -> bytes:
    host, port = n.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# ================================================================ bad input
@pytest.mark.parametrize(("method", "path", "body", "status", "text"), [
    ("GET", "/nope", None, 404, "no such endpoint"),
    ("DELETE", "/state", None, 405, "DELETE not allowed"),
    ("GET", "/inject", None, 405, "GET not allowed"),
    ("POST", "/inject", None, 400, "a JSON body is required"),
    ("POST", "/inject", b"{not json", 400, "not JSON"),
    ("POST", "/inject", [1, 2], 400, "expected"),
    ("POST", "/inject", {"port": "eth9", "hex": "45"}, 400, "port must be one of"),
    ("POST", "/inject", {"port": "inside", "hex": "xyz"}, 400, "hex is not hex"),
    ("POST", "/inject", {"port": "inside", "hex": 45}, 400, "hex must be a string"),
    ("POST", "/inject", {"port": "inside", "hex": "4500"}, 400, "bad packet"),
    ("POST", "/card/fault", {"no_such_knob": 1}, 400, "unknown knob"),
    ("POST", "/card/fault", {"fail_next": -3}, 400, "negative"),
    ("POST", "/card/fault", {}, 400, "expected"),
    ("GET", "/events?since=x", None, 400, "since must be an integer"),
    ("GET", "/conntrack?format=xml", None, 400, "format must be json or text"),
])
def test_bad_requests_get_a_4xx_with_a_json_error(node: NodeProc, method: str, path: str,
                                                   body: Any, status: int, text: str) -> None:
    got_status, message = error_of(http(method, node.url + path, body))
    assert got_status == status
    assert text in message
    assert node.get("/health")["ok"] is True


@pytest.mark.parametrize(("raw", "status"), [
    (b"garbage\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    (b"POST /inject HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
    (b"POST /inject HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    (b"POST /inject HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}", 400),
    (b"GET /state HTTP/1.1\r\n", 400),
])
def test_malformed_http_is_answered_and_the_node_carries_on(node: NodeProc, raw: bytes,
                                                            status: int) -> None:
    reply = raw_request(node, raw)
    assert reply.startswith(f"HTTP/1.1 {status} ".encode()), reply[:200]
    assert node.get("/health")["ok"] is True


def test_bad_packets_are_counted_and_change_nothing(node: NodeProc) -> None:
    before = len(node.entries())
    for junk in ("00", "4500001400000000", "6" + "0" * 79, "ff" * 40):
        status, _ = http("POST", node.url + "/inject", {"port": "inside", "hex": junk})
        assert status == 400
    m = metrics(node)
    assert m[("ctlab_bad_packets_total", (("reason", "parse"),))] >= 4
    assert len(node.entries()) == before


# ================================================================ metrics
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> tuple[dict[tuple[str, tuple[tuple[str, str], ...]], float],
                                          dict[str, str]]:
    """A strict reader of the text exposition format (0.0.4)."""
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    types: dict[str, str] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped")
            assert name not in types, f"TYPE twice for {name}"
            types[name] = kind
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels = m.group(1), tuple(LABEL.findall(m.group(3) or ""))
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or family in types, f"sample before its TYPE: {line!r}"
        samples[(name, labels)] = float(m.group(4))
    return samples, types


def metrics(n: NodeProc) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = http("GET", n.url + "/metrics")
    assert status == 200
    return parse_prometheus(body.decode())[0]


def test_metrics_parse_as_prometheus_text_with_the_documented_families(node: NodeProc) -> None:
    status, body = http("GET", node.url + "/metrics")
    assert status == 200
    samples, types = parse_prometheus(body.decode())
    for family, kind in [("ctlab_packets_total", "counter"),
                         ("ctlab_conntrack_entries", "gauge"),
                         ("ctlab_card_entries", "gauge"),
                         ("ctlab_card_inserts_total", "counter"),
                         ("ctlab_card_insert_failures_total", "counter"),
                         ("ctlab_card_misses_total", "counter"),
                         ("ctlab_sync_events_published_total", "counter"),
                         ("ctlab_sync_events_applied_total", "counter"),
                         ("ctlab_sync_bad_messages_total", "counter"),
                         ("ctlab_sync_install_latency_seconds", "histogram"),
                         ("ctlab_gc_pause_seconds", "histogram"),
                         ("ctlab_bus_socket_races_total", "counter"),
                         ("ctlab_sync_fast_lane_total", "counter"),
                         ("ctlab_role", "gauge"),
                         ("ctlab_role_wills_total", "counter")]:
        assert types.get(family) == kind, family
    assert samples[("ctlab_bus_socket_races_total", ())] == 0  # (no dropped link here)
    assert samples[("ctlab_role", (("role", "active"),))] == 1
    assert {dict(lb)["outcome"]: v for (name, lb), v in samples.items()
            if name == "ctlab_role_wills_total"} == dict.fromkeys(
                ("received", "taken", "withdrawn", "voided"), 0)  # (a lone node)
    assert {dict(lb)["path"] for name, lb in samples if name == "ctlab_packets_total"} \
        == {"hw", "sw", "sw-fastpath"}
    buckets = sorted(((float(dict(lb)["le"]), v) for (name, lb), v in samples.items()
                      if name == "ctlab_sync_install_latency_seconds_bucket"))
    assert buckets[-1][0] == math.inf
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert buckets[-1][1] == samples[("ctlab_sync_install_latency_seconds_count", ())]
    gens = {dict(lb)["generation"] for name, lb in samples
            if name == "ctlab_gc_pause_seconds_count"}
    assert gens == {"0", "1", "2"}
    gc = node.state()["gc"]
    assert set(gc) == {"collections", "pause_total_ms", "pause_max_ms", "last_full_ms",
                       "unreachable", "thresholds"}
    assert gc["thresholds"][0] == YOUNG_THRESHOLD  # the node's policy is on
    assert sum(samples[("ctlab_gc_pause_seconds_count", (("generation", g),))]
               for g in gens) >= 1  # (starting a node allocates plenty)


# ================================================================ the datapath
def test_a_handshake_through_inject_is_forwarded_offloaded_and_captured(node: NodeProc) -> None:
    node.get("/capture")
    outs = [node.inject(port, pkt) for port, pkt in handshake(41000)]
    assert [o["ports"] for o in outs] == [["outside"], ["inside"], ["outside"]]
    assert all(o["path"] == "sw" for o in outs)
    assert outs[0]["ct_state"].startswith("+trk+new")
    wait_until(lambda: (node.entry(41000) or {}).get("offload") == "hw", 5, "hw offload")
    data = [node.inject(port, pkt) for port, pkt in data_packets(41000, 2)]
    assert [o["path"] for o in data] == ["hw"] * 4
    sent = node.get("/capture")["packets"]
    assert [p["port"] for p in sent] == ["outside", "inside", "outside"] + \
        ["outside", "inside"] * 2
    assert parse(bytes.fromhex(sent[0]["hex"])) == handshake(41000)[0][1]
    assert node.get("/capture")["packets"] == []  # since the last read
    text = node.text("/conntrack?format=text")
    assert re.search(r"tcp +6 src=198\.18\.0\.1 dst=198\.19\.0\.1 sport=41000 dport=443 .*"
                     r"\[HW_OFFLOAD\] mark=0 zone=1 use=1", text), text


def test_the_udp_wire_carries_one_raw_packet_per_datagram(
        node: NodeProc, peers: dict[str, socket.socket]) -> None:
    for s in peers.values():  # what earlier injections sent to the peers
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while s.recv(65536):
                pass
        s.settimeout(5.0)
    syn = tcp("198.18.0.9", "198.19.0.9", 42000, 80, "S", 7, 0)
    peers["inside"].sendto(build(syn), ("127.0.0.1", node.ports["inside"]))
    data, _ = peers["outside"].recvfrom(65536)
    assert parse(data) == syn
    peers["inside"].sendto(b"\x00junk", ("127.0.0.1", node.ports["inside"]))
    wait_until(lambda: metrics(node)[("ctlab_port_rx_total", (("port", "inside"),))] >= 2, 5)
    assert node.get("/health")["ok"] is True


def test_card_faults_by_name_keep_flows_in_software(node: NodeProc) -> None:
    knobs = node.post("/card/fault", {"fail_all": 1})["knobs"]
    assert knobs["fail_all"] is True
    try:
        for port, pkt in handshake(43000):
            node.inject(port, pkt)
        wait_until(lambda: metrics(node)[("ctlab_card_insert_failures_total",
                                          (("reason", "fault"),))] >= 1, 5, "an insert failure")
        assert node.inject(*data_packets(43000)[0])["path"] == "sw-fastpath"  # flow table
    finally:
        node.post("/card/fault", {"fail_all": 0})
    card = node.get("/card")
    assert card["knobs"]["fail_all"] is False and "entries" in card["stats"]


def test_tc_show_as_text_and_json(node: NodeProc) -> None:
    text = node.text("/tc")
    assert "qdisc ingress ffff: dev inside" in text
    assert "ct commit zone 1 pipe" in text and "Sent " in text
    doc = node.get("/tc?json=1")
    assert doc["inside ingress"][1]["options"]["actions"][0]["kind"] == "ct"


def test_events_since_a_seq_with_long_poll(node: NodeProc) -> None:
    since = node.get("/events?since=0")["next"]
    got: dict[str, Any] = {}

    def waiter() -> None:
        got.update(node.get(f"/events?since={since}&wait=10", timeout=20))
    t = threading.Thread(target=waiter)
    t.start()
    node.inject(*handshake(44000)[0])
    t.join(15)
    assert not t.is_alive()
    assert got["events"][0]["type"] == "NEW" and got["events"][0]["seq"] == since + 1
    assert got["events"][0]["text"].startswith("    [NEW] tcp      6 120 SYN_SENT")


# ================================================================ the CLI
def ctlab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scenarios.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_ctlab_conntrack_L_lists_the_node_like_conntrack_tools(node: NodeProc) -> None:
    for port, pkt in handshake(45000):
        node.inject(port, pkt)
    res = ctlab("conntrack", "-L", "--node", node.url)
    assert res.returncode == 0, res.stderr
    assert re.search(r"^tcp +6 .*sport=45000 dport=443 ", res.stdout, re.M), res.stdout
    assert "flow entries have been shown" in res.stderr


def test_ctlab_conntrack_E_prints_events(node: NodeProc, tmp_path: Path) -> None:
    out = tmp_path / "events.txt"
    with open(out, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "scenarios.cli", "conntrack", "-E",
                                 "--node", node.url, "--count", "1"], stdout=fh,
                                stderr=subprocess.STDOUT, cwd=REPO,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
        try:
            # -E starts from "now": inject until it has printed one event
            sport = 46000

            def printed() -> bool:
                nonlocal sport
                node.inject(*handshake(sport)[0])
                sport += 1
                return proc.poll() is not None
            wait_until(printed, 20, "conntrack -E to print an event", interval=0.3)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
    assert proc.returncode == 0
    assert re.match(r" +\[NEW\] tcp +6 120 SYN_SENT src=198\.18\.0\.1 ", out.read_text())


def test_ctlab_conntrack_against_no_node_fails_cleanly() -> None:
    res = ctlab("conntrack", "-L", "--node", "http://127.0.0.1:9", "--timeout", "2")
    assert res.returncode == 1 and "Traceback" not in res.stderr


def test_a_lone_node_short_of_its_quorum_says_so_and_stays_standby(tmp_path: Path) -> None:
    """role.quorum 2 and nobody else: the node hears 1 of 2 members, so it may
    not take the role. /state and /metrics say why."""
    cfg = node_config("q1", "ctlq", None, broker={"embedded": {"port": 0}})
    cfg["role"]["quorum"] = 2
    n = NodeProc(tmp_path, "q1", cfg)
    try:
        n.start().wait_ready()
        wait_until(lambda: n.state()["gate"]["state"] == "ready", 10, "the gate to open")
        wait_until(lambda: n.role() == "standby", 10, "the node to settle")
        st = n.state()
        assert st["quorum"]["of"] == 2 and st["quorum"]["votes"] == 1, st["quorum"]
        assert st["quorum"]["quorate"] is False and st["witness"] is False
        assert [h[1:] for h in st["quorum"]["history"]] == \
            [[False, "no quorum: 1 heard, 2 needed"]], st["quorum"]
        assert metrics(n)[("ctlab_quorate", ())] == 0
        assert n.role() == "standby"
    finally:
        n.stop()
