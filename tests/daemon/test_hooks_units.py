"""The runner's node-side hooks, without processes: the `mechanisms:` section and
the ports' `annotate` option in the config, the annotation header, the nemesis
request parser, and the ports' data cut."""

from __future__ import annotations

from typing import Any

import pytest

from node.daemon import config, nemesis
from node.daemon.errors import ConfigError
from node.daemon.wire import (
    ANNOTATION_PATHS,
    MemoryPort,
    decode_annotated,
    encode_annotation,
)
from node.datapath import PATHS
from node.packet import build, udp
from syncbus.service import Impairment


def base(**extra: Any) -> dict[str, Any]:
    return {"node": "a", "cluster": "c", "ports": {"inside": {"bind": "127.0.0.1:7001"}},
            **extra}


# ================================================================ config
def test_mechanisms_default_to_on_and_each_can_be_switched_off() -> None:
    assert config.parse(base()).mechanisms == config.Mechanisms(True, True, True, True)
    assert config.parse(base(mechanisms=None)).mechanisms == config.Mechanisms()
    for name in ("replication", "preinstall", "distributed_aging", "readiness_gate"):
        m = config.parse(base(mechanisms={name: False})).mechanisms
        assert getattr(m, name) is False
        assert sum(not v for v in vars(m).values()) == 1


@pytest.mark.parametrize(("mech", "message"), [
    ({"replicaton": False}, "mechanisms.replicaton: unknown field"),
    ({"preinstall": "off"}, "mechanisms.preinstall: expected true or false"),
    ({"readiness_gate": 0}, "mechanisms.readiness_gate: expected true or false"),
    ([True], "mechanisms: expected a mapping"),
])
def test_bad_mechanisms_are_config_errors_naming_the_field(mech: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.parse(base(mechanisms=mech))


def test_annotate_is_a_port_flag_off_by_default() -> None:
    cfg = config.parse(base(ports={"inside": {"bind": "127.0.0.1:7001", "annotate": True},
                                   "outside": {"bind": "127.0.0.1:7002"}}))
    assert cfg.port("inside").annotate is True
    assert cfg.port("outside").annotate is False
    with pytest.raises(ConfigError, match=r"ports\.inside\.annotate: expected true or false"):
        config.parse(base(ports={"inside": {"bind": "127.0.0.1:7001", "annotate": "yes"}}))


# ================================================================ annotation
@pytest.mark.parametrize("path", ["hw", "sw-fastpath", "sw"])
def test_the_annotation_header_round_trips(path: str) -> None:
    pkt = build(udp("198.18.0.1", "198.19.0.1", 1000, 53, b"q"))
    header = encode_annotation(path)
    assert len(header) == 8 and header[:4] == b"CTLA" and header[4] == 1
    assert header[5] == ANNOTATION_PATHS.index(path) and header[6:] == b"\0\0"
    assert decode_annotated(header + pkt) == (path, pkt)


def test_the_path_codes_are_the_datapaths_paths_in_a_fixed_order() -> None:
    assert ANNOTATION_PATHS == ("hw", "sw-fastpath", "sw")
    assert set(ANNOTATION_PATHS) == set(PATHS)


def test_a_datagram_without_the_header_decodes_as_itself() -> None:
    pkt = build(udp("198.18.0.1", "198.19.0.1", 1000, 53, b"q"))
    assert decode_annotated(pkt) == (None, pkt)
    assert decode_annotated(b"") == (None, b"")


@pytest.mark.parametrize(("data", "message"), [
    (b"CTLA\x02\x00\x00\x00", "version 2"),
    (b"CTLA\x01\x03\x00\x00", "unknown annotation path code 3"),
    (b"CTLA\x01", "truncated"),
])
def test_a_bad_header_is_an_error(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_annotated(data)
    with pytest.raises(ValueError, match="no annotation for path"):
        encode_annotation("fast")


def test_an_annotating_memory_port_prefixes_what_it_sends_and_a_cut_drops_both_ways() -> None:
    plain, annotated = MemoryPort("p"), MemoryPort("q", annotate=True)
    assert plain.send(b"\x45pkt", "hw") and annotated.send(b"\x45pkt", "sw-fastpath")
    assert plain.sent[-1] == b"\x45pkt"
    assert decode_annotated(annotated.sent[-1]) == ("sw-fastpath", b"\x45pkt")
    annotated.cut = True
    assert not annotated.send(b"\x45pkt", "hw")
    annotated.deliver(b"\x45in")
    assert annotated.recv_nowait() is None
    assert annotated.stats["nemesis_drops"] == 2 and annotated.stats["tx"] == 1
    annotated.cut = False
    annotated.deliver(b"\x45in")
    assert annotated.recv_nowait() == b"\x45in"


# ================================================================ nemesis requests
def test_a_full_nemesis_request_parses() -> None:
    ch = nemesis.parse({"sync": {"loss": 0.5, "duplicate": 0.1, "delay": 0.05, "jitter": 0.01,
                                 "seed": 7},
                        "broker_link": "cut", "data": "up", "clock_offset": -30})
    assert ch.sync == Impairment(0.5, 0.1, 0.05, 0.01) and ch.seed == 7
    assert (ch.broker_link, ch.data, ch.clock_offset) == ("cut", "up", -30.0)
    assert nemesis.parse({"sync": None}).sync is None
    assert nemesis.parse({"sync": {}}).sync == Impairment()
    assert nemesis.parse({"seed": 3}).seed == 3


@pytest.mark.parametrize(("body", "message"), [
    ([], "expected a JSON object"),
    ({"partition": "cut"}, "partition: unknown field"),
    ({"sync": {"loss": 1.5}}, r"sync.loss: 1.5 is out of range \[0, 1\]"),
    ({"sync": {"loss": -0.1}}, "sync.loss: -0.1 is out of range"),
    ({"sync": {"duplicate": "half"}}, "sync.duplicate: expected a number"),
    ({"sync": {"delay": -1}}, "sync.delay: -1 is out of range"),
    ({"sync": {"jitter": float("nan")}}, "sync.jitter: expected a number"),
    ({"sync": {"loss": True}}, "sync.loss: expected a number"),
    ({"sync": {"drop": 0.1}}, "sync.drop: unknown field"),
    ({"sync": {"seed": 1.5}}, "sync.seed: expected an integer"),
    ({"sync": 0.5}, "sync: expected"),
    ({"seed": 1, "sync": {"seed": 2}}, "seed: 1 differs from sync.seed 2"),
    ({"broker_link": "down"}, 'broker_link: expected "cut" or "up"'),
    ({"data": None}, 'data: expected "cut" or "up"'),
    ({"clock_offset": 86401}, "clock_offset: 86401 is out of range"),
    ({"clock_offset": "30"}, "clock_offset: expected a number"),
])
def test_bad_nemesis_requests_name_the_field(body: object, message: str) -> None:
    with pytest.raises(nemesis.NemesisError, match=message):
        nemesis.parse(body)
