"""Node configuration: every mistake is one ConfigError naming the field, and
`ctlab node` turns it into exit code 2 and one line, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from node.daemon import config
from node.daemon.config import ConfigError
from tests.daemon.conftest import REPO, free_udp_port, node_config

EXAMPLES = REPO / "node" / "daemon" / "examples"


def good() -> dict[str, Any]:
    return node_config("a", "lab", "mqtt://127.0.0.1:1883")


def with_(path: str, value: Any) -> dict[str, Any]:
    cfg = good()
    if path == "tc_file":
        del cfg["tc"]
    *parents, last = path.split(".")
    d = cfg
    for p in parents:
        d = d.setdefault(p, {})
    d[last] = value
    return cfg


def test_the_shipped_examples_are_valid_and_set_a_cluster_key() -> None:
    for name in ("node-a.yaml", "node-b.yaml"):
        cfg = config.load(EXAMPLES / name)
        assert cfg.cluster_key is not None and len(cfg.cluster_key) >= 16
        assert {p.name for p in cfg.ports} == {"inside", "outside"}
        assert "ct zone 1 commit" in cfg.tc


def test_a_good_config_parses_into_frozen_values() -> None:
    cfg = config.parse(with_("sysctl", {"net.netfilter.nf_conntrack_udp_timeout": 4}))
    assert cfg.node == "a" and cfg.cluster == "lab"
    assert cfg.sysctl.nf_conntrack_udp_timeout == 4
    assert cfg.card.poll_interval == 0.5
    with pytest.raises(AttributeError):
        cfg.node = "b"  # type: ignore[misc]


@pytest.mark.parametrize(("path", "value", "field"), [
    ("node", None, "node: required"),
    ("node", "a/b", "node: bad node name"),
    ("cluster", "", "cluster: bad cluster name"),
    ("cluster_key", "short", "cluster_key: the cluster key must be at least 16 bytes"),
    ("cluster_key", "hex:zz", "cluster_key: bad hex"),
    ("broker.url", "http://x", "broker.url: broker URL must be mqtt://"),
    ("broker.url", "mqtt://h:99999", "broker.url: bad port"),
    ("broker.keepalive", 0, "broker.keepalive: 0 is out of range"),
    ("broker.tls", {"insecure": "yes"}, "broker.tls.insecure: expected true or false"),
    ("broker.tls", {"ca_certs": "/nonexistent/ca.pem"}, "broker.tls.ca_certs: no such file"),
    ("ports", {}, "ports: required"),
    ("ports", {"in/side": {"bind": "127.0.0.1:1"}}, "ports: bad port name"),
    ("ports.inside", {"peer": "127.0.0.1:1"}, "ports.inside.bind: required"),
    ("ports.inside.bind", "localhost", "ports.inside.bind: expected HOST:PORT"),
    ("ports.inside.bind", "127.0.0.1:70000", "ports.inside.bind: bad port"),
    ("ports.inside.type", "pcap", "ports.inside.type: 'pcap' is not one of udp, memory"),
    ("card.capacity", -1, "card.capacity: -1 is out of range"),
    ("card.poll_interval", "fast", "card.poll_interval: expected a number"),
    ("card.insert_rat", 5, "card.insert_rat: unknown field"),
    ("role.mode", "primary", "role.mode: 'primary' is not one of"),
    ("role.priority", 256, "role.priority: 256 is out of range"),
    ("role.priority", 1.5, "role.priority: expected an integer"),
    ("role.dead_after", 0.05, "role.dead_after: must be longer than role.hb_interval"),
    ("role.track_data", "no", "role.track_data: expected true or false"),
    ("role.will_grace", -0.1, "role.will_grace: -0.1 is out of range"),
    ("role.will_grace", 0.5, "role.will_grace: must not be longer than role.dead_after"),
    ("role.step_down_isolated", 0.2, "role.step_down_isolated: 0 (never) or at least "
                                     "role.dead_after"),
    ("role.step_down_isolated", -1, "role.step_down_isolated: -1 is out of range"),
    ("role.quorum", 65, "role.quorum: 65 is out of range"),
    ("role.quorum", 1.5, "role.quorum: expected an integer"),
    ("role.witness", "yes", "role.witness: expected true or false"),
    ("control.listen", "127.0.0.1", "control.listen: expected HOST:PORT"),
    ("sysctl", {"nf_conntrack_bogus": 1}, "sysctl: unknown sysctl net.netfilter.nf_conntrack_bo"),
    ("sysctl", {"nf_conntrack_udp_timeout": "x"}, "sysctl: net.netfilter.nf_conntrack_udp"),
    ("sysctl", {"nf_conntrack_udp_timeout": True}, "sysctl.nf_conntrack_udp_timeout: expected"),
    ("clock_offset", 1e9, "clock_offset: 1000000000.0 is out of range"),
    ("tc_file", "/nonexistent/fw.tc", "tc_file: cannot read"),
    ("colour", "blue", "colour: unknown field"),
    ("sync", {"defer": 5}, "sync.defer: 5 is out of range"),
    ("sync", {"defer": "soon"}, "sync.defer: expected a number"),
    ("sync", {"defr": 0.02}, "sync.defr: unknown field"),
])
def test_a_bad_field_is_one_config_error_naming_it(path: str, value: Any, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.parse(with_(path, value))
    assert field in str(err.value)


def test_data_links_are_tracked_unless_turned_off() -> None:
    assert config.parse(good()).role.track_data is True
    assert config.parse(with_("role.track_data", False)).role.track_data is False


def test_a_will_acts_at_once_unless_a_grace_is_set() -> None:
    assert config.parse(good()).role.will_grace == 0.0
    assert config.parse(with_("role.will_grace", 0.35)).role.will_grace == 0.35
    assert config.parse(good()).role.step_down_isolated == 0.0
    assert config.parse(with_("role.step_down_isolated", 2)).role.step_down_isolated == 2.0


def test_no_quorum_rule_and_no_witness_unless_set() -> None:
    role = config.parse(good()).role
    assert (role.quorum, role.witness) == (0, False)
    role = config.parse(with_("role", {"quorum": 2, "witness": True})).role
    assert (role.quorum, role.witness) == (2, True)


def test_tc_inline_and_tc_file_are_exclusive() -> None:
    cfg = good()
    cfg["tc_file"] = "x.tc"
    with pytest.raises(ConfigError, match="not both"):
        config.parse(cfg)


def test_the_top_level_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        config.parse(["node", "a"])


def run_node(tmp_path: Path, text: str, suffix: str = ".yaml") -> subprocess.CompletedProcess[str]:
    p = tmp_path / f"cfg{suffix}"
    p.write_text(text)
    return subprocess.run([sys.executable, "-m", "scenarios.cli", "node", "--config", str(p)],
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_the_reference_in_ctlab_node_help_is_a_valid_config_naming_every_field(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ctlab node --help` prints config.reference(). As YAML it is a config
    that parses (but for tc_file, the alternative to tc; its TLS files made
    here), and it names every field the parser reads, so it cannot fall behind
    a new one."""
    doc = yaml.safe_load(config.reference())
    del doc["tc_file"]
    doc["ports"]["inside"]["annotate"] = True  # the two fields it gives as comments
    doc["ports"]["inside"]["type"] = "udp"
    for name in ("ca.pem", "c.pem", "c.key"):
        (tmp_path / name).write_text("-")
    read: set[str] = set()
    get = config._Section.get

    def recording(self: Any, key: str, default: Any) -> Any:
        read.add(self.path(key))
        return get(self, key, default)

    monkeypatch.setattr(config._Section, "get", recording)
    cfg = config.parse(doc, base=tmp_path)
    assert cfg.node == "a" and cfg.role.track_data and cfg.broker.tls is not None
    text = config.reference()
    unnamed = {path for path in read if f"{path.rpartition('.')[2]}:" not in text}
    assert not unnamed and len(read) > 40, (unnamed, sorted(read))
    helped = subprocess.run([sys.executable, "-m", "scenarios.cli", "node", "--help"],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert helped.returncode == 0 and "  mechanisms:" in helped.stdout
    assert "dead_after: 0.35" in helped.stdout and "node/daemon/examples/" in helped.stdout


@pytest.mark.parametrize(("text", "suffix", "message"), [
    ("node: [unclosed", ".yaml", "not YAML"),
    ('{"node": "a",}', ".json", "not JSON: line 1"),
    ("node: a\ncluster: lab\nports: {inside: {bind: '127.0.0.1:1'}}\nrole: {priority: 900}\n",
     ".yaml", "role.priority: 900 is out of range"),
])
def test_ctlab_node_exits_2_with_the_message_and_no_traceback(
        tmp_path: Path, text: str, suffix: str, message: str) -> None:
    res = run_node(tmp_path, text, suffix)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("ctlab node: ")


def test_a_failing_tc_script_is_a_config_error_at_start(tmp_path: Path) -> None:
    port = free_udp_port()
    res = run_node(tmp_path, f"node: a\ncluster: lab\nports: {{inside: {{bind: "
                             f"'127.0.0.1:{port}'}}}}\ntc: 'qdisc add dev nosuch ingress'\n")
    assert res.returncode == 2, res.stderr
    assert "the tc script failed" in res.stderr and "nosuch" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_port_that_does_not_bind_is_a_config_error(tmp_path: Path) -> None:
    res = run_node(tmp_path, "node: a\ncluster: lab\nports: {inside: {bind: '192.0.2.1:9'}}\n")
    assert res.returncode == 2, res.stderr
    assert "ports.inside.bind: cannot bind" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_missing_file_is_exit_2(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "node.daemon", "--config",
                          str(tmp_path / "nope.yaml")], capture_output=True, text=True,
                         timeout=60, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.returncode == 2
    assert "cannot read" in res.stderr and "Traceback" not in res.stderr
