"""Drift check for the kernel-oracle fixtures in tests/fixtures/oracle/.

The fixtures are the real Linux conntrack's answers to scripted packet
sequences (see tests/fixtures/oracle/README.md).  They are only worth
something while they still describe the kernel we test against, so this
module re-records a small, deterministic sample of cases live with the oracle
tool and compares the kernel's per-packet answers with the committed results.

It also checks (without root) that every committed results file still matches
its case file, so a case edited without re-recording is caught.

The oracle tool lives outside the repository: $CTLAB_ORACLE_DIR, by default
<repo root>/../shared/tools/kernel_oracle.  Running it needs root (network
namespaces, iptables).  Without root or without the tool the live test is
skipped locally but FAILS when CI=true, so CI cannot silently lose the check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "oracle"
CASES_DIR = FIXTURES / "cases"
RESULTS_DIR = FIXTURES / "results"

# A deterministic sample spanning every case file; no case sleeps longer than 3 s.
SAMPLE = (
    "tcp_handshake_3way_v4",
    "tcp_fin_crossing_v6",
    "tcp_close_syn_after_server_rst_v4",
    "tcp_rst_in_window_not_exact_v6",
    "tcp_ignored_reply_sets_seen_reply_v4",
    "tcp_window_max_retrans_v4",
    "tcp_window_data_one_past_edge_v4",
    "tcp_sysctl_loose_pickup_from_client_v6",
    "tcp_sysctl_be_liberal_old_fin_changes_state_v4",
    "udp_checksum_zero_v6",
    "udp_bad_checksum_invalid_v4",
    "icmp_err_host_unreach_tcp_syn_from_router_v4",
    "icmpv6_neighbour_solicitation_untracked_v6",
    "gre_v1_pptp_different_call_ids_v4",
    "udplite_proper_checksum_v6",
    "zone_same_tuple_two_zones_v4",
    "mark_ftp_data_inherits_master_mark_v4",
    "notrack_udp53_reply_opens_reverse_entry_v6",
    "ftp_passive_epsv_229_v6",
    "ftp_port_split_across_segments_v4",
    "tftp_rrq_in_zone_v4",
    "timeout_tcp_close_expired_syn_new_v4",
)
MAX_SAMPLE_SLEEP = 3.0

# Per-packet answers compared exactly; "timeout" is compared within a tolerance.
COMPARED_FIELDS = ("ctstate", "ctdir", "delivered", "proto_state", "flags", "status",
                   "mark", "zone", "labels", "helper")
TIMEOUT_TOLERANCE = 2          # seconds; the kernel reports whole seconds left, read ~ms later
ORACLE_RUN_TIMEOUT = 240       # seconds for the whole live run


def _oracle_dir() -> Path:
    env = os.environ.get("CTLAB_ORACLE_DIR")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "tools" / "kernel_oracle"


def _cannot_run(reason: str) -> None:
    """Skip locally, but fail in CI: the drift check must not vanish silently."""
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"kernel oracle drift test cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _load_by_name(directory: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (file basename, case) for every {"cases": [...]} file in directory."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for path in sorted(directory.glob("*.json")):
        with path.open() as f:
            doc = json.load(f)
        for case in doc["cases"]:
            assert case["name"] not in out, f"duplicate case name {case['name']} in {path.name}"
            out[case["name"]] = (path.name, case)
    return out


def _kernel_packets(case: dict[str, Any]) -> list[dict[str, Any]]:
    return [p["kernel"] for p in case.get("packets", []) if "kernel" in p]


def _strip_recording(packet: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in packet.items() if k not in ("ip_hex", "kernel")}


def _diff_case(name: str, want: dict[str, Any], got: dict[str, Any]) -> list[str]:
    if "error" in got:
        return [f"{name}: oracle error: {got['error']}"]
    want_pk, got_pk = _kernel_packets(want), _kernel_packets(got)
    if len(want_pk) != len(got_pk):
        return [f"{name}: {len(got_pk)} packets recorded live, {len(want_pk)} in the fixture"]
    diffs = []
    for i, (w, g) in enumerate(zip(want_pk, got_pk, strict=True)):
        for field in COMPARED_FIELDS:
            if w.get(field) != g.get(field):
                diffs.append(f"{name} packet {i}: {field}: fixture {w.get(field)!r}, "
                             f"kernel now {g.get(field)!r}")
        wt, gt = w.get("timeout"), g.get("timeout")
        if (wt is None) != (gt is None) or (
                wt is not None and gt is not None and abs(wt - gt) > TIMEOUT_TOLERANCE):
            diffs.append(f"{name} packet {i}: timeout: fixture {wt!r}, kernel now {gt!r}")
    return diffs


def test_results_match_case_files() -> None:
    """Every case file has a results file recorded from exactly these cases."""
    case_files = sorted(p.name for p in CASES_DIR.glob("*.json"))
    assert case_files, f"no case files in {CASES_DIR}"
    assert sorted(p.name for p in RESULTS_DIR.glob("*.json")) == case_files
    for fname in case_files:
        with (CASES_DIR / fname).open() as f:
            cases = json.load(f)["cases"]
        with (RESULTS_DIR / fname).open() as f:
            results = json.load(f)
        assert results["summary"]["errors"] == [], f"{fname}: recorded with errors"
        assert [c["name"] for c in results["cases"]] == [c["name"] for c in cases], fname
        for case, res in zip(cases, results["cases"], strict=True):
            for key in ("description", "settings", "defaults"):
                assert case.get(key) == res.get(key), \
                    f"{case['name']}: {key} changed since recording"
            assert [_strip_recording(p) for p in res["packets"]] == case["packets"], \
                f"{case['name']}: packets changed since recording; re-record {fname}"


@pytest.mark.oracle
def test_kernel_still_matches_fixtures(tmp_path: Path) -> None:
    oracle_py = _oracle_dir() / "oracle.py"
    if not oracle_py.is_file():
        _cannot_run(f"kernel oracle tool not found at {oracle_py} (set CTLAB_ORACLE_DIR)")
    if os.geteuid() != 0:
        _cannot_run("the kernel oracle needs root (network namespaces, iptables)")

    cases = _load_by_name(CASES_DIR)
    results = _load_by_name(RESULTS_DIR)
    missing = [n for n in SAMPLE if n not in cases or n not in results]
    assert not missing, f"sample cases missing from the fixtures: {missing}"
    sample = [cases[n][1] for n in SAMPLE]
    for case in sample:
        sleeps = [p["sleep"] for p in case["packets"] if "sleep" in p]
        assert all(s <= MAX_SAMPLE_SLEEP for s in sleeps), f"{case['name']} sleeps too long"

    case_file = tmp_path / "drift_sample.json"
    case_file.write_text(json.dumps({"cases": sample}, indent=1))
    out_file = tmp_path / "drift_results.json"
    proc = subprocess.run(
        [sys.executable, str(oracle_py), "run", str(case_file), "--out", str(out_file)],
        capture_output=True, text=True, timeout=ORACLE_RUN_TIMEOUT, check=False)
    if proc.returncode != 0 or not out_file.is_file():
        pytest.fail(f"oracle run failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}",
                    pytrace=False)
    live = {c["name"]: c for c in json.loads(out_file.read_text())["cases"]}

    diffs: list[str] = []
    for name in SAMPLE:
        if name not in live:
            diffs.append(f"{name}: not in the live results")
            continue
        diffs.extend(_diff_case(name, results[name][1], live[name]))
    assert not diffs, ("the kernel's answers drifted from tests/fixtures/oracle/results "
                       "(re-record and review, see tests/fixtures/oracle/README.md):\n"
                       + "\n".join(diffs))
