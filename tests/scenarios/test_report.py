"""report.json has DESIGN.md §5's fields; report.html is one offline page that
headless Chromium renders (and that a person can read)."""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from scenarios import report
from scenarios.faults import plan
from scenarios.invariants import INVARIANTS, check_all
from scenarios.model import (
    CLUSTER_PROCESS,
    F_CLOSE,
    F_FAILOVER,
    F_HW_HITS,
    F_OPEN,
    F_PREINSTALL,
    F_ROLES,
    Fault,
    FaultRecord,
    History,
    Snapshot,
)

REQUIRED = {"scenario", "seed", "backend", "verdict", "invariants", "faults", "metrics"}
METRICS = {"failover_ms", "flows_established_before", "flows_survived",
           "hw_hit_ratio_after_failover", "preinstalled_ratio_at_failover", "sync_lag_ms",
           "events_published", "events_applied", "bad_messages", "split_brain", "no_active"}


def sample_history() -> History:
    """A 20 s failover run: 40 flows, the active (a) killed at 6 s, b takes over."""
    h = History()
    for i in range(40):
        h.invoke(f"web-{i}", 0.1 + i * 0.01, F_OPEN, {"key": f"tcp k{i}"})
    for i in range(40):
        h.ok(f"web-{i}", 0.6 + i * 0.01, F_OPEN, {"key": f"tcp k{i}"})
    h.record_fault(FaultRecord(6.0, "kill", "a", True))
    h.invoke(CLUSTER_PROCESS, 6.0, F_FAILOVER, {"from": "a"})
    h.ok(CLUSTER_PROCESS, 6.31, F_FAILOVER, {"from": "a", "to": "b"})
    h.info("b", 6.31, F_PREINSTALL, {"installed": 40, "eligible": 40})
    h.info("b", 7.31, F_HW_HITS, {"hw": 1980, "sw": 12})
    h.record_fault(FaultRecord(8.0, "sync_delay", "b", True))
    h.record_fault(FaultRecord(10.0, "sync_delay", "b", True, "heal"))
    h.record_fault(FaultRecord(12.0, "kill", "a", True, "heal"))
    h.record_fault(FaultRecord(14.0, "card_insert_fail", "b", False, detail="control API "
                               "refused"))
    h.record_fault(FaultRecord(15.0, "card_insert_fail", "b", True, "heal"))
    for i in range(40):
        h.invoke(f"web-{i}", 18.0, F_CLOSE, {"key": f"tcp k{i}"})
    for i in range(40):
        h.ok(f"web-{i}", 18.2, F_CLOSE, {"key": f"tcp k{i}"})
    h.info(CLUSTER_PROCESS, 19.9, F_ROLES, {"mode": "active-standby", "end": 19.9, "nodes": {
        "a": [(-0.5, "joining"), (0.1, "active"), (12.4, "joining"), (12.9, "standby")],
        "b": [(-0.5, "joining"), (0.3, "standby"), (6.3, "active")]}})
    for step in range(200):
        t = step * 0.1
        a_up = not 6.0 <= t < 12.5
        active_a = t < 6.0
        wave = 1 + 0.15 * math.sin(t)
        h.sample(t, "a", "hw_pps", 9000 * wave if a_up and active_a else 0)
        h.sample(t, "a", "sw_pps", 400 * wave if a_up and active_a else 0)
        h.sample(t, "b", "hw_pps", 0 if active_a else 8800 * wave if t > 6.4 else 0)
        h.sample(t, "b", "sw_pps", 0 if active_a else 350 * wave if t > 6.4 else 1500)
        h.sample(t, "a", "ct_entries", min(40, t * 80) if a_up else 0)
        h.sample(t, "b", "ct_entries", min(40, max(0, t - 0.05) * 80))
        h.sample(t, "a", "card_entries", min(80, t * 150) if a_up else 0)
        h.sample(t, "b", "card_entries", min(80, max(0, t - 0.1) * 150))
        h.sample(t, "a", "sync_lag_ms", 0.5 + (step * 37 % 23) / 4)
        h.sample(t, "b", "sync_lag_ms", 0.8 + (step * 53 % 31) / 3 + (40 if t == 8.5 else 0))
        h.sample(t, "a", "events_published", step * 5 if t < 6 else max(0, step - 125) * 5)
        h.sample(t, "b", "events_applied", step * 5)
    return h


def sample_report() -> dict[str, Any]:
    h = sample_history()
    snaps = [Snapshot(n, 19.5, {f"tcp k{i}": "CLOSE" for i in range(40)}, frozenset())
             for n in ("a", "b")]
    results = check_all(h, snaps)
    steps = plan([Fault(6.0, "kill", "active", 6.0), Fault(8.0, "sync_delay", "b", 2.0,
                                                              (("delay", 0.05), ("jitter", 0.0))),
                  Fault(14.0, "card_insert_fail", "b", 1.0, (("count", 0), ("all", True)))],
                 20.0)
    return report.build(scenario="failover-basic", seed=1, backend="local", results=results,
                        history=h, schedule=steps, git_revision="0123456789abcdef",
                        duration=20.0)


# ---------------------------------------------------------------- report.json
def test_report_json_has_the_design_fields() -> None:
    r = sample_report()
    assert set(r) >= REQUIRED
    assert set(r) - REQUIRED == {"git_revision", "duration", "schedule", "series"}
    assert set(r["metrics"]) == METRICS
    assert set(r["metrics"]["sync_lag_ms"]) == {"p50", "p99", "max"}
    assert all(set(i) == {"name", "verdict", "detail"} for i in r["invariants"])
    assert [i["name"] for i in r["invariants"]] == list(INVARIANTS)
    assert all({"at", "kind", "target", "applied"} <= set(f) for f in r["faults"])
    again = json.loads(report.to_json(r))
    assert again == r


def test_metrics_from_the_history() -> None:
    m = sample_report()["metrics"]
    assert m["failover_ms"] == pytest.approx(310.0)
    assert (m["flows_established_before"], m["flows_survived"]) == (40, 40)
    assert m["hw_hit_ratio_after_failover"] == pytest.approx(1980 / 1992, abs=1e-6)
    assert m["preinstalled_ratio_at_failover"] == 1.0
    assert m["sync_lag_ms"]["max"] > m["sync_lag_ms"]["p99"] >= m["sync_lag_ms"]["p50"] > 0
    # a's publish counter restarted with the process at 12.5 s: both runs count
    assert m["events_published"] == 59 * 5 + (199 - 125) * 5
    assert m["events_applied"] == 199 * 5 and m["bad_messages"] == 0


def test_empty_history_gives_empty_metrics_and_an_unknown_verdict() -> None:
    r = report.build(scenario="x", seed=0, backend="local", results=(), history=History())
    assert r["verdict"] == "unknown" and r["faults"] == [] and r["series"] == {}
    assert r["metrics"]["failover_ms"] is None and r["metrics"]["sync_lag_ms"]["p50"] is None
    page = report.render_html(r)
    assert "No fault was injected" in page and "No sync-lag samples" in page


def test_faults_show_whether_they_fired() -> None:
    faults = sample_report()["faults"]
    assert [(f["kind"], f["target"], f["applied"], f["heal_at"], f["healed"])
            for f in faults] == [("kill", "a", True, 12.0, True),
                                 ("sync_delay", "b", True, 10.0, True),
                                 ("card_insert_fail", "b", False, 15.0, True)]
    assert faults[2]["detail"] == "control API refused"


def test_every_fault_kind_has_a_colour_in_the_timeline() -> None:
    """Each fault kind's resource is a family with a colour and a legend entry
    (a new kind without one broke report.html: KeyError in the legend)."""
    from scenarios.faults import FAULTS
    assert {k.resource for k in FAULTS.values()} <= set(report.FAMILY_COLOURS)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert report.percentile(values, 50) == 50 and report.percentile(values, 99) == 99
    assert report.percentile([3.0], 99) == 3.0


def test_git_revision_reads_the_checkout(tmp_path: Path) -> None:
    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    assert report.git_revision(tmp_path) is None
    (git / "packed-refs").write_text("# pack-refs\n" + "a" * 40 + " refs/heads/main\n")
    assert report.git_revision(tmp_path) == "a" * 40
    (git / "refs" / "heads" / "main").write_text("b" * 40 + "\n")
    assert report.git_revision(tmp_path) == "b" * 40
    repo = Path(__file__).resolve().parents[2]
    if (repo / ".git").exists():
        rev = report.git_revision(repo)
        assert rev is not None and len(rev) == 40


# ---------------------------------------------------------------- report.html
def test_html_is_one_self_contained_page() -> None:
    page = report.render_html(sample_report())
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    lowered = page.lower()
    for outside in ("http://", "https://", "<script", "<link", "src=", "@import", "url("):
        assert outside not in lowered, outside
    assert page.count("<svg") == 5  # timeline, rates of a and b, table sizes, histogram
    for heading in ("Verdict", "Fault timeline", "Roles", "Packet rates per node", "Table sizes",
                    "Sync lag", "Fault schedule"):
        assert f"<h2>{heading}</h2>" in page
    assert "card_insert_fail (not applied)" in page


def test_the_roles_section_lists_faults_and_role_logs_in_run_time() -> None:
    """What each node's election made of the faults, in one list with them,
    ordered by the run's clock (a fault before what it caused at the same
    millisecond)."""
    r = sample_report()  # kill a at 6.0 s, healed at 12.0 s
    assert "No node reported its role log" in report.render_html(r)
    r["nodes"] = {
        "a": {"started": [-1.2, 12.3], "roles": [
            [-0.9, "RoleChanged(old='joining', new='active', term=1)"],
            [12.8, "RoleChanged(old='joining', new='standby', term=0)"]]},
        "b": {"started": [-1.1], "roles": [
            [6.0, "PeerDown(node='a', reason='will', was_active=True)"],
            [6.0, "RoleChanged(old='standby', new='active', term=2)"]]},
        "c": {"reachable": False}}
    page = report.render_html(r)
    section = page[page.index("<h2>Roles</h2>"):page.index("<h2>Packet rates")]
    cells = [c.split("</td>")[0] for c in section.split("<td")[1:]]
    lines = [" ".join(cells[i:i + 3]) for i in range(0, len(cells), 3)]
    said = [html.unescape(line.replace(' class="num">', "").replace(' class="detail"><code>', "")
                          .replace("</code>", "").replace(">", "")) for line in lines]
    assert said[:4] == ["-1.200s a process started", "-1.100s b process started",
                        "-0.900s a RoleChanged(old='joining', new='active', term=1)",
                        "6.000s fault kill → a"], said
    assert said[4:6] == ["6.000s b PeerDown(node='a', reason='will', was_active=True)",
                         "6.000s b RoleChanged(old='standby', new='active', term=2)"]
    assert said.index("12.000s fault kill → a healed") < said.index("12.300s a process started")
    assert said[-1] == "15.000s fault card_insert_fail → b healed"
    assert len(said) == 13  # 9 role rows, 5 fault rows less the failed insert's heal


def test_html_escapes_what_it_shows() -> None:
    r = sample_report()
    r["scenario"] = "<b>x</b>"
    r["invariants"][0]["detail"] = "a < b & c"
    page = report.render_html(r)
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "a &lt; b &amp; c" in page


def test_a_chaos_page_shows_its_mix_and_replay_command() -> None:
    r = sample_report()
    assert "Replay:" not in report.render_html(r)  # a scenario run has none
    r["chaos"] = {"seed": 7, "duration": 25.0, "interval": 5.0, "mix": 2, "kinds": ["kill"],
                  "base": "b.yaml", "replay": "ctlab chaos --seed 7 --duration 25 --mix 2"}
    page = report.render_html(r)
    assert "<dt>chaos mix</dt><dd>2</dd>" in page
    assert "Replay: <code>ctlab chaos --seed 7 --duration 25 --mix 2</code>" in page
    r["chaos"] = {**r["chaos"], "mix": None, "kinds": ["kill", "pause"],
                  "replay": "ctlab chaos --seed 7 --kinds kill,pause & <x>"}
    page = report.render_html(r)
    assert "<dt>chaos mix</dt><dd>kinds kill, pause</dd>" in page
    assert "--kinds kill,pause &amp; &lt;x&gt;</code>" in page


def test_a_campaign_index_lists_each_run(tmp_path: Path) -> None:
    r = sample_report()
    r["seed"], r["expectation_met"] = 3, r["verdict"] != "fail"
    r["chaos"] = {"replay": "ctlab chaos --seed 3 --duration 30 --mix 2 & <x>"}
    row = report.campaign_row(r, "seed-3/report.html")
    assert row["seed"] == 3 and row["report"] == "seed-3/report.html"
    assert row["failing"] == [i["name"] for i in r["invariants"] if i["verdict"] == "fail"]
    assert [f["kind"] for f in row["faults"]] == [f["kind"] for f in r["faults"]]
    line = report.campaign_line(row)
    assert line.startswith(f"seed 3: {r['verdict'].upper()} (")
    js, page = report.write_index(tmp_path, [row, {**row, "seed": 4, "verdict": "fail",
                                                   "expectation_met": False,
                                                   "report": "seed-4/report.html"}])
    index = json.loads(js.read_text())
    assert [x["seed"] for x in index["runs"]] == [3, 4] and index["verdicts"]["fail"] >= 1
    html_ = page.read_text()
    assert '<a href="seed-4/report.html">4</a>' in html_ and "2 runs, 1 failed" in html_
    assert "&amp; &lt;x&gt;" in html_ and "<x>" not in html_
    shrunk = {**row, "seed": 5, "shrunk": {"scenario": "seed-5/shrunk.yaml", "to": 1,
                                           "minimal": False, "faults": []}}
    assert f"<br>shrunk to 1 of {len(row['faults'])} faults (budget spent): " \
        '<a href="seed-5/shrunk.yaml">seed-5/shrunk.yaml</a>' in report.render_index([shrunk])
    assert "shrunk to" not in html_  # (no run of that index was shrunk)
    empty = report.render_index([])
    assert "No run completed." in empty


def test_the_report_gives_the_time_with_two_actives() -> None:
    """metrics.split_brain (single_active's windows), its card on the page, and
    the campaign's row, line and index column."""
    r = sample_report()
    assert r["metrics"]["split_brain"] == {"total_ms": 0.0, "windows": []}  # a killed: gone
    # from a's kill at 6 s to b's takeover: nobody held the role
    assert r["metrics"]["no_active"] == {"total_ms": 300.0, "windows": [{"from": 6.0, "to": 6.3}]}
    page = report.render_html(r)
    assert "<dt>two actives</dt><dd>never</dd>" in page
    assert "<dt>no active</dt><dd>300 ms in 1 window</dd>" in page
    h = sample_history()  # b does not step down when a comes back active at 12.9 s
    h.info(CLUSTER_PROCESS, 19.95, F_ROLES, {"mode": "active-standby", "end": 19.9, "nodes": {
        "a": [(-0.5, "joining"), (0.1, "active"), (12.4, "joining"), (12.9, "active")],
        "b": [(-0.5, "joining"), (0.3, "standby"), (6.3, "active"), (13.15, "standby")]}})
    m = report.metrics(h)
    assert m["split_brain"] == {"total_ms": 250.0,
                                "windows": [{"from": 12.9, "to": 13.15, "nodes": ["a", "b"]}]}
    r["metrics"] = m
    page = report.render_html(r)
    assert "<dt>two actives</dt><dd>250 ms in 1 window</dd>" in page
    assert "<title>a and b both active from 12.9s to 13.15s (250 ms)</title>" in page
    assert ">two actives</text>" in page  # the fault timeline's last lane
    row = report.campaign_row({**r, "chaos": {"replay": "x"}}, "seed-1/report.html")
    assert row["two_actives_ms"] == 250.0
    assert ", two actives 250 ms" in report.campaign_line(row)
    assert "<td>250.0 ms</td>" in report.render_index([row])
    h = History()
    h.info(CLUSTER_PROCESS, 5.0, F_ROLES, {"mode": "active-active", "end": 5.0, "nodes": {
        "a": [(0.1, "active")], "b": [(0.1, "active")]}})
    assert report.metrics(h)["split_brain"] is None and report.metrics(h)["no_active"] is None


def test_a_campaign_index_says_what_the_campaign_exercised(tmp_path: Path) -> None:
    """A campaign of unknowns passed nothing: the index counts the runs with a
    failover, the faults that took effect and each invariant left unknown."""
    def row(seed: int, failover: float | None, faults: list[tuple[str, bool]],
            unknown: list[str]) -> dict[str, object]:
        return {"seed": seed, "verdict": "unknown" if unknown else "pass",
                "expectation_met": True, "failing": [], "unknown": unknown,
                "faults": [{"at": 1.0, "kind": k, "target": "a", "applied": a}
                           for k, a in faults],
                "failover_ms": failover, "flows_survived": 10,
                "flows_established_before": 10, "replay": f"ctlab chaos --seed {seed}",
                "report": f"seed-{seed}/report.html"}
    rows = [row(1, 12.0, [("kill", True), ("sync_loss", True)], []),
            row(2, None, [("broker_stop", True), ("pause", False)],
                ["failover_time", "hw_hit_ratio"]),
            row(3, None, [("sync_loss", True)], ["hw_hit_ratio"])]
    cov = report.campaign_coverage(rows)
    assert cov == {"runs": 3, "failovers": 1,
                   "faults_applied": {"broker_stop": 1, "kill": 1, "sync_loss": 2},
                   "unknown": {"hw_hit_ratio": 2, "failover_time": 1}}
    assert list(cov["unknown"]) == ["hw_hit_ratio", "failover_time"]  # most often first
    assert report.coverage_line(cov) == \
        "failovers in 1 of 3 runs; unknown: hw_hit_ratio in 2, failover_time in 1"
    js, page = report.write_index(tmp_path, rows)
    assert json.loads(js.read_text())["coverage"] == cov
    assert "Failovers in 1 of 3 runs. Faults that took\neffect: broker_stop 1, kill 1, " \
        "sync_loss 2. Invariants left unknown (not exercised by the run's schedule): " \
        "hw_hit_ratio in 2, failover_time in 1." in page.read_text()
    none = report.campaign_coverage([])
    assert report.coverage_line(none) == "failovers in 0 of 0 runs"
    assert "effect: none. Invariants left unknown (not exercised by the run's schedule): " \
        "none." in report.render_index([])


def test_write_puts_both_files(tmp_path: Path) -> None:
    js, page = report.write(tmp_path / "out", sample_report())
    assert json.loads(js.read_text())["scenario"] == "failover-basic"
    assert page.read_text().startswith("<!DOCTYPE html>")


def _png_pixels(data: bytes) -> tuple[int, int, Counter[int]]:
    """Decode an 8-bit RGB/RGBA PNG (what Chromium writes): its size and how
    many pixels have each colour (0xRRGGBB)."""
    import numpy as np

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    width = height = depth = colour = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert depth == 8 and colour in (2, 6), (depth, colour)
    bpp = 3 if colour == 2 else 4
    stride = width * bpp
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        ftype, line = int(raw[y, 0]), raw[y, 1:]
        if ftype == 0:
            cur = line.copy()
        elif ftype == 1:  # Sub: a running sum per channel
            cur = (np.cumsum(line.reshape(width, bpp).astype(np.uint32), axis=0) % 256) \
                .astype(np.uint8).reshape(stride)
        elif ftype == 2:  # Up
            cur = line + prev
        else:  # Average, Paeth: byte by byte
            cur_b, up = bytearray(line.tobytes()), prev.tobytes()
            for i in range(stride):
                a = cur_b[i - bpp] if i >= bpp else 0
                b, c = up[i], up[i - bpp] if i >= bpp else 0
                if ftype == 3:
                    cur_b[i] = (cur_b[i] + (a + b) // 2) & 0xFF
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                    cur_b[i] = (cur_b[i] + pred) & 0xFF
            cur = np.frombuffer(bytes(cur_b), dtype=np.uint8)
        out[y] = cur
        prev = cur
    rgb = out.reshape(height, width, bpp)[:, :, :3].astype(np.uint32)
    packed = (rgb[:, :, 0] << 16) | (rgb[:, :, 1] << 8) | rgb[:, :, 2]
    values, counts = np.unique(packed, return_counts=True)
    return width, height, Counter(dict(zip(values.tolist(), counts.tolist(), strict=True)))


def test_the_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    page = tmp_path / "report.html"
    page.write_text(report.render_html(sample_report()), encoding="utf-8")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri()],
        check=True, capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
    width, height, colours = _png_pixels(shot.read_bytes())
    assert (width, height) == (1280, 1600)
    background, share = colours.most_common(1)[0]
    assert background == 0xFFFFFF
    assert share / (width * height) < 0.9, "the page is (nearly) blank"
    assert len(colours) > 50  # text, badges, plots: many colours


def test_the_page_gives_each_phase_its_wall_time() -> None:
    r = sample_report()
    r["phases"] = {"setup": 2.04, "run": 22.0, "final": 1.37}
    page = report.render_html(r)
    assert "setup 2.0 s · run 22.0 s · final 1.4 s" in page
    assert "<dt>phases</dt><dd>—</dd>" in report.render_html(sample_report())


def test_the_page_names_the_clusters_settings() -> None:
    """report.json's "cluster" (what the runner built the cluster with) is one
    line of the page's header, durations in milliseconds."""
    r = sample_report()
    assert "<dt>cluster</dt>" not in report.render_html(r)  # (an older report has none)
    r["cluster"] = {"mode": "active-standby", "preempt": False, "broker": "embedded",
                    "cluster_key": True, "defer": 0.05, "will_grace": 0.6,
                    "hb_interval": 0.1, "dead_after": 0.8,
                    "nodes": {"a": {"priority": 200, "card": "default"}},
                    "mechanisms": {"replication": True, "preinstall": False,
                                   "distributed_aging": True, "readiness_gate": True}}
    page = report.render_html(r)
    line = page.split("<dt>cluster</dt><dd>")[1].split("</dd>")[0]
    assert html.unescape(line) == (
        "active-standby · broker embedded · preempt off · heartbeat 100 ms · dead_after 800 ms"
        " · will_grace 600 ms · defer 50 ms · cluster key on · off: preinstall")
