"""The run's report: report.json (DESIGN.md §5) and report.html, one
self-contained page readable offline (inline CSS and SVG drawn here, no
script, nothing fetched).

    report = build(scenario="failover-basic", seed=1, backend="local",
                   results=results, history=history, schedule=steps,
                   git_revision=git_revision(repo), duration=20.0)
    write(out_dir, report)            # out_dir/report.json, out_dir/report.html

report.json holds the fields of DESIGN.md §5 (scenario, seed, backend,
verdict, invariants, faults, metrics) and, beside them, git_revision,
duration, schedule (the planned fault steps: with the seed they replay the
run) and series (metric -> node -> [[time, value], ...]: the samples the
page plots); the runner adds traffic, nodes, expect and phases (wall seconds
spent in setup, run, final, quiesce, check, teardown and report), and
`ctlab chaos` adds chaos: {seed, duration, interval, mix, kinds, base, replay}
(mix is None when --kinds chose the kinds; replay is the command line). Each fault
entry is {at, kind, target, applied} as it fired, with heal_at and healed for
its heal. render_html() reads only that dict, so
a page can be redrawn from any report.json.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from scenarios.faults import FAULTS, FaultStep
from scenarios.invariants import (
    Result,
    compose,
    failover_time,
    hw_hit_ratio,
    no_broken_flows,
    single_active,
)
from scenarios.invariants import preinstalled_ratio as preinstalled
from scenarios.model import BROKER2_TARGET, BROKER_TARGET, FaultRecord, History

MAX_POINTS = 1500  # per node and metric in report.json (decimated beyond)
LAG_BINS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
COUNTERS = ("events_published", "events_applied", "bad_messages")


# ================================================================ report.json
def build(*, scenario: str, seed: int, backend: str, results: Sequence[Result],
          history: History, schedule: Sequence[FaultStep] = (), git_revision: str | None = None,
          duration: float | None = None) -> dict[str, Any]:
    """The report as a JSON-ready dict."""
    return {
        "scenario": scenario,
        "seed": seed,
        "backend": backend,
        "verdict": compose(r.verdict for r in results),
        "invariants": [{"name": r.name, "verdict": r.verdict, "detail": r.detail}
                       for r in results],
        "faults": fault_entries(history.faults),
        "metrics": metrics(history),
        "git_revision": git_revision,
        "duration": duration,
        "schedule": [{"at": s.at, "action": s.action, "kind": s.kind, "target": s.target,
                      "verb": s.verb, "args": dict(s.args), "fault": s.fault}
                     for s in schedule],
        "series": series(history),
    }


def fault_entries(records: Sequence[FaultRecord]) -> list[dict[str, Any]]:
    """One entry per injection, its heal (the next heal of that kind and
    target) folded in."""
    out: list[dict[str, Any]] = []
    open_: dict[tuple[str, str], dict[str, Any]] = {}
    entry: dict[str, Any] | None
    for r in records:
        if r.action == "inject":
            entry = {"at": r.at, "kind": r.kind, "target": r.target, "applied": r.applied,
                     "heal_at": None, "healed": False, "detail": r.detail}
            out.append(entry)
            open_[(r.kind, r.target)] = entry
        elif (entry := open_.pop((r.kind, r.target), None)) is not None:
            entry["heal_at"], entry["healed"] = r.at, r.applied
            if r.detail:
                entry["detail"] = "; ".join(x for x in (entry["detail"], r.detail) if x)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (q in 0..100)."""
    rank = max(1, math.ceil(q / 100 * len(values)))
    return values[min(rank, len(values)) - 1]


def _counter_total(points: Sequence[tuple[float, float]]) -> float:
    """What a cumulative counter counted, across restarts (a drop is a reset)."""
    total, prev = 0.0, 0.0
    for _, v in points:
        total += v - prev if v >= prev else v
        prev = v
    return total


def metrics(history: History) -> dict[str, Any]:
    survival = no_broken_flows.analyse(history)
    took = [o.took for o in failover_time.durations(history)
            if o.took is not None and not o.resumed]
    hits = hw_hit_ratio.hits(history)
    hw, total = sum(h[2] for h in hits), sum(h[2] + h[3] for h in hits)
    pre = preinstalled.ratios(history)
    installed, eligible = sum(p[2] for p in pre), sum(p[3] for p in pre)
    lags = sorted(s.value for s in history.samples if s.metric == "sync_lag_ms")
    per_node = _points(history)
    return {
        "failover_ms": round(max(took) * 1000, 3) if took else None,
        # two members active at once, and none (active-standby; None without role logs)
        **single_active.summary(history),
        "flows_established_before": len(survival.before),
        "flows_survived": len(survival.survived),
        "hw_hit_ratio_after_failover": round(hw / total, 6) if total else None,
        "preinstalled_ratio_at_failover": round(installed / eligible, 6) if eligible else None,
        "sync_lag_ms": {"p50": percentile(lags, 50) if lags else None,
                        "p99": percentile(lags, 99) if lags else None,
                        "max": lags[-1] if lags else None},
        **{c: int(sum(_counter_total(p) for p in per_node.get(c, {}).values()))
           for c in COUNTERS},
    }


def _points(history: History) -> dict[str, dict[str, list[tuple[float, float]]]]:
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for s in history.samples:
        out.setdefault(s.metric, {}).setdefault(s.node, []).append((s.time, s.value))
    for nodes in out.values():
        for pts in nodes.values():
            pts.sort()
    return out


def series(history: History) -> dict[str, dict[str, list[list[float]]]]:
    out: dict[str, dict[str, list[list[float]]]] = {}
    for metric, nodes in _points(history).items():
        for node, pts in nodes.items():
            step = max(1, math.ceil(len(pts) / MAX_POINTS))
            out.setdefault(metric, {})[node] = [[round(t, 3), v] for t, v in pts[::step]]
    return out


def to_json(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def git_revision(repo: str | Path) -> str | None:
    """The commit checked out in `repo`, read from .git (no git process)."""
    git = Path(repo) / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: PATH"
            git = (Path(repo) / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        common = git / "commondir"
        base = (git / common.read_text().strip()).resolve() if common.is_file() else git
        if (base / ref).is_file():
            return (base / ref).read_text().strip()
        for line in (base / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split(" ", 1)[0]
    except (OSError, IndexError):
        return None
    return None


def write(out_dir: str | Path, report: Mapping[str, Any]) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, page = out / "report.json", out / "report.html"
    js.write_text(to_json(report), encoding="utf-8")
    page.write_text(render_html(report), encoding="utf-8")
    return js, page


def invariants_with(rep: Mapping[str, Any], verdict: str) -> list[str]:
    """The names of a report's invariants whose verdict is `verdict`."""
    return [i["name"] for i in rep.get("invariants", []) if i["verdict"] == verdict]


# ================================================================ campaigns
def campaign_row(rep: Mapping[str, Any], page: str) -> dict[str, Any]:
    """One run of a chaos campaign (`ctlab chaos --runs N`) in its index:
    `page` is the run's report.html, relative to the index."""
    m = rep.get("metrics") or {}
    return {
        "seed": rep.get("seed"),
        "verdict": rep.get("verdict"),
        "expectation_met": bool(rep.get("expectation_met")),
        "failing": invariants_with(rep, "fail"),
        "unknown": invariants_with(rep, "unknown"),
        "faults": [{"at": f["at"], "kind": f["kind"], "target": f["target"],
                    "applied": f["applied"]} for f in rep.get("faults", [])],
        "failover_ms": m.get("failover_ms"),
        "two_actives_ms": (m.get("split_brain") or {}).get("total_ms"),
        "flows_survived": m.get("flows_survived"),
        "flows_established_before": m.get("flows_established_before"),
        "replay": (rep.get("chaos") or {}).get("replay"),
        "report": page,
    }


def campaign_line(row: Mapping[str, Any]) -> str:
    """A campaign row as one line of the command's output."""
    faults = ", ".join(f"{f['kind']}->{f['target']}" for f in row["faults"]) or "no faults"
    line = f"seed {row['seed']}: {str(row['verdict']).upper()} ({faults})"
    if row["failover_ms"] is not None:
        line += f", failover {row['failover_ms']:.0f} ms"
    if row.get("two_actives_ms"):
        line += f", two actives {row['two_actives_ms']:.0f} ms"
    if row["failing"]:
        line += f"; failing: {', '.join(row['failing'])}"
    return line


def write_index(out_dir: str | Path, rows: Sequence[Mapping[str, Any]]) -> tuple[Path, Path]:
    """OUT/index.json ({"runs": rows, "verdicts": counts, "coverage": ...}) and
    OUT/index.html."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, page = out / "index.json", out / "index.html"
    js.write_text(to_json({"runs": list(rows), "verdicts": verdict_counts(rows),
                           "coverage": campaign_coverage(rows)}), encoding="utf-8")
    page.write_text(render_index(rows), encoding="utf-8")
    return js, page


def verdict_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many campaign runs ended with each verdict."""
    return dict(Counter(str(r["verdict"]) for r in rows))


def campaign_coverage(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What a campaign exercised: runs with a failover, the faults that took
    effect by kind, and for each invariant left unknown (no run of it
    exercised: no failover to time, say) in how many runs. A campaign of
    unknowns passed nothing."""
    return {
        "runs": len(rows),
        "failovers": sum(1 for r in rows if r["failover_ms"] is not None),
        "faults_applied": dict(sorted(Counter(
            f["kind"] for r in rows for f in r["faults"] if f["applied"]).items())),
        "unknown": dict(sorted(Counter(n for r in rows for n in r["unknown"]).items(),
                               key=lambda kv: (-kv[1], kv[0]))),
    }


def coverage_line(cov: Mapping[str, Any]) -> str:
    """campaign_coverage() in one line."""
    line = f"failovers in {cov['failovers']} of {cov['runs']} runs"
    if cov["unknown"]:
        line += "; unknown: " + ", ".join(f"{n} in {k}" for n, k in cov["unknown"].items())
    return line


def render_index(rows: Sequence[Mapping[str, Any]]) -> str:
    """The campaign's page: one row per run, linked to its report."""
    def faults(r: Mapping[str, Any]) -> str:
        return "<br>".join(
            f"{_fmt(f['at'], ' s')} {_e(f['kind'])} → {_e(f['target'])}"
            + ("" if f["applied"] else " <b>(not applied)</b>") for f in r["faults"]) or "—"
    def shrunk(r: Mapping[str, Any]) -> str:  # (--shrink: the first failed run's)
        got = r.get("shrunk")
        if not got:
            return ""
        return (f"<br>shrunk to {got['to']} of {len(r['faults'])} faults"
                + ("" if got["minimal"] else " (budget spent)")
                + f": <a href=\"{_e(got['scenario'])}\">{_e(got['scenario'])}</a>")
    body = "".join(
        f"<tr><td><a href=\"{_e(r['report'])}\">{_e(r['seed'])}</a></td>"
        f"<td>{_badge(str(r['verdict']))}</td><td>{faults(r)}</td>"
        f"<td>{_fmt(r['failover_ms'], ' ms')}</td>"
        f"<td>{_fmt(r.get('two_actives_ms'), ' ms')}</td>"
        f"<td>{_fmt(r['flows_survived'])} / {_fmt(r['flows_established_before'])}</td>"
        f'<td class="detail">{_e(", ".join(r["failing"]) or "—")}</td>'
        f"<td><code>{_e(r['replay'] or '')}</code>{shrunk(r)}</td></tr>" for r in rows)
    failed = sum(1 for r in rows if not r["expectation_met"])
    table = ("<table><thead><tr><th>seed</th><th>verdict</th><th>faults</th><th>failover</th>"
             "<th>two actives</th><th>flows survived</th><th>failing</th><th>replay</th>"
             "</tr></thead>"
             f"<tbody>{body}</tbody></table>") if rows else \
        '<p class="empty">No run completed.</p>'
    title = f"ctlab chaos campaign · {len(rows)} runs · {failed} failed"
    cov = campaign_coverage(rows)
    fired = ", ".join(f"{_e(k)} {n}" for k, n in cov["faults_applied"].items()) or "none"
    unknown = ", ".join(f"{_e(k)} in {n}" for k, n in cov["unknown"].items()) or "none"
    return f"""{_page_top(title)}
<header><h1>Chaos campaign {_badge("fail" if failed else "pass", True)}</h1>
<p class="lede">{len(rows)} runs, {failed} failed. Each seed links to its report; the replay
command draws its schedule again.</p>
<p class="coverage">Failovers in {cov['failovers']} of {len(rows)} runs. Faults that took
effect: {fired}. Invariants left unknown (not exercised by the run's schedule): {unknown}.</p>
</header>
{table}
</body></html>
"""


# ================================================================ report.html
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
FAMILY_COLOURS = {"process": "#C0392B", "broker": "#D35400", "bridge": "#935116",
                  "broker-link": "#8E44AD", "data-link": "#6C3483", "sync": "#1F618D",
                  "card": "#117A65", "clock": "#5D6D7E"}
SPLIT_COLOUR = "#B7950B"  # two actives: a state of the cluster, not a fault
VERDICT_COLOURS = {"pass": "#1a7f37", "fail": "#cf222e", "unknown": "#9a6700"}

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1120px; padding: 2rem 1.5rem 4rem; color: var(--fg);
  background: #fff; font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto,
  "Helvetica Neue", Arial, sans-serif; }
h1 { font-size: 1.8rem; margin: 0 0 .4rem; letter-spacing: -.01em; }
h2 { font-size: 1.2rem; margin: 2.4rem 0 .8rem; padding-bottom: .3rem;
  border-bottom: 1px solid var(--line); }
p.lede { color: var(--muted); margin: .2rem 0 1rem; }
.badge { display: inline-block; padding: .1rem .65rem; border-radius: 999px; color: #fff;
  font-weight: 650; font-size: .8rem; letter-spacing: .05em; text-transform: uppercase;
  vertical-align: middle; }
.badge.big { font-size: 1rem; padding: .25rem .9rem; }
dl.meta { display: grid; grid-template-columns: repeat(auto-fill, minmax(12rem, 1fr));
  gap: .6rem 1.5rem; margin: 1rem 0; }
dl.meta div { background: var(--soft); border-radius: 8px; padding: .55rem .8rem; }
dl.meta dt { color: var(--muted); font-size: .8rem; text-transform: uppercase;
  letter-spacing: .04em; }
dl.meta dd { margin: 0; font-size: 1.15rem; font-weight: 600;
  font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
dl.meta div.wide { grid-column: 1 / -1; }
dl.meta div.wide dd { font-size: 1rem; font-weight: 500; }
table { border-collapse: collapse; width: 100%; font-size: .95rem; }
th, td { text-align: left; padding: .5rem .65rem; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { font-size: .8rem; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.detail { color: #24292f; overflow-wrap: anywhere; }
code { font: .9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
figure { margin: 1rem 0 1.6rem; }
figcaption { color: var(--muted); font-size: .9rem; margin-top: .3rem; }
.legend { display: flex; flex-wrap: wrap; gap: .3rem 1.2rem; font-size: .9rem; margin: .2rem 0; }
.legend span::before { content: ""; display: inline-block; width: 1.4rem; height: 0;
  border-top: 3px solid var(--c); margin-right: .4rem; vertical-align: middle; }
.legend span.dash::before { border-top-style: dashed; }
.legend span.box::before { height: .8rem; border: 0; background: var(--c); opacity: .35; }
svg { width: 100%; height: auto; display: block; }
svg text { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif;
  fill: #3d444d; }
.empty { color: var(--muted); font-style: italic; }
footer { margin-top: 3rem; color: var(--muted); font-size: .85rem; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: object, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        text = f"{value:.1%}" if unit == "%" else f"{value:,.1f}" if abs(value) < 1e6 \
            else f"{value:,.0f}"
        return text if unit == "%" else text + unit
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}{unit}"
    return str(value) + unit


def _badge(verdict: str, big: bool = False) -> str:
    colour = VERDICT_COLOURS.get(verdict, "#59636e")
    return (f'<span class="badge{" big" if big else ""}" style="background:{colour}">'
            f"{_e(verdict)}</span>")


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / max(ticks, 1)
    if raw <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def _ticks(lo: float, hi: float, ticks: int = 5) -> list[float]:
    step = _nice_step(hi - lo, ticks)
    first = math.ceil(lo / step - 1e-9) * step
    out, v = [], first
    while v <= hi + step * 1e-6:
        out.append(round(v, 10))
        v += step
    return out


def _num_label(v: float) -> str:
    if abs(v) >= 1e6:
        return f"{v / 1e6:g}M"
    if abs(v) >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


class _Chart:
    """An SVG line chart over run time, with the fault windows shaded."""

    W, H, L, R, T, B = 1040, 240, 64, 16, 14, 36

    def __init__(self, t_end: float, y_max: float, y_label: str,
                 windows: Sequence[tuple[float, float, str]]) -> None:
        self.t_end = max(t_end, 1e-3)
        self.y_max = y_max if y_max > 0 else 1.0
        self.y_max = max(_ticks(0, self.y_max)[-1], self.y_max)
        self.y_label, self.windows = y_label, windows
        self.parts: list[str] = []

    def x(self, t: float) -> float:
        return self.L + (self.W - self.L - self.R) * min(max(t, 0), self.t_end) / self.t_end

    def y(self, v: float) -> float:
        return self.T + (self.H - self.T - self.B) * (1 - min(max(v, 0), self.y_max) / self.y_max)

    def line(self, pts: Sequence[Sequence[float]], colour: str, dashed: bool = False,
             title: str = "") -> None:
        if not pts:
            return
        path = " ".join(f"{'M' if i == 0 else 'L'}{self.x(t):.1f},{self.y(v):.1f}"
                        for i, (t, v) in enumerate(pts))
        dash = ' stroke-dasharray="7 4"' if dashed else ""
        self.parts.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"'
                          f'{dash} stroke-linejoin="round"><title>{_e(title)}</title></path>')

    def svg(self, label: str) -> str:
        g = []
        for start, end, kind in self.windows:
            x0, x1 = self.x(start), self.x(end)
            g.append(f'<rect x="{x0:.1f}" y="{self.T}" width="{max(x1 - x0, 1.5):.1f}" '
                     f'height="{self.H - self.T - self.B}" fill="#cf222e" opacity="0.09">'
                     f"<title>{_e(kind)}</title></rect>")
        for v in _ticks(0, self.y_max):
            y = self.y(v)
            g.append(f'<line x1="{self.L}" x2="{self.W - self.R}" y1="{y:.1f}" y2="{y:.1f}" '
                     'stroke="#d1d9e0" stroke-width="1"/>')
            g.append(f'<text x="{self.L - 8}" y="{y + 4:.1f}" text-anchor="end" '
                     f'font-size="12">{_num_label(v)}</text>')
        g += _time_axis(self.x, self.t_end, self.H - self.B, self.L, self.W - self.R)
        g.append(f'<text x="14" y="{(self.H - self.B) / 2:.0f}" font-size="12" '
                 f'text-anchor="middle" transform="rotate(-90 14 {(self.H - self.B) / 2:.0f})">'
                 f"{_e(self.y_label)}</text>")
        return (f'<svg viewBox="0 0 {self.W} {self.H}" role="img" aria-label="{_e(label)}">'
                + "".join(g + self.parts) + "</svg>")


def _time_axis(x: Any, t_end: float, y0: float, left: float, right: float) -> list[str]:
    g = [f'<line x1="{left}" x2="{right}" y1="{y0}" y2="{y0}" stroke="#59636e"/>']
    for t in _ticks(0, t_end, 10):
        g.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{y0}" y2="{y0 + 5}" '
                 'stroke="#59636e"/>')
        g.append(f'<text x="{x(t):.1f}" y="{y0 + 19}" text-anchor="middle" '
                 f'font-size="12">{t:g}s</text>')
    return g


def _legend(items: Iterable[tuple[str, str, str]]) -> str:
    spans = "".join(f'<span class="{cls}" style="--c:{c}">{_e(label)}</span>'
                    for label, c, cls in items)
    return f'<div class="legend">{spans}</div>'


def _windows(report: Mapping[str, Any], end: float) -> list[tuple[float, float, str]]:
    return [(f["at"], f["heal_at"] if f.get("heal_at") is not None else end,
             f"{f['kind']} {f['target']}") for f in report.get("faults", [])]


def _run_end(report: Mapping[str, Any]) -> float:
    ends = [float(report.get("duration") or 0)]
    for nodes in report.get("series", {}).values():
        for pts in nodes.values():
            if pts:
                ends.append(pts[-1][0])
    for f in report.get("faults", []):
        ends += [f["at"], f.get("heal_at") or 0]
    return max(ends) or 1.0


TWO_ACTIVES = "two actives"  # the timeline's lane for metrics.split_brain's windows


def _timeline(report: Mapping[str, Any], end: float) -> str:
    faults = report.get("faults", [])
    split = ((report.get("metrics") or {}).get("split_brain") or {}).get("windows") or []
    if not faults and not split:
        return '<p class="empty">No fault was injected.</p>'
    targets = sorted({f["target"] for f in faults},
                     key=lambda t: (t in (BROKER_TARGET, BROKER2_TARGET), t))
    if split:
        targets.append(TWO_ACTIVES)
    lane, top, left, right, width = 34, 10, 110, 16, 1040
    height = top + lane * len(targets) + 40

    def x(t: float) -> float:
        return left + (width - left - right) * min(max(t, 0), end) / end

    g = []
    for i, target in enumerate(targets):
        y = top + i * lane
        g.append(f'<rect x="{left}" y="{y}" width="{width - left - right}" height="{lane - 6}" '
                 'fill="#f6f8fa"/>')
        g.append(f'<text x="{left - 10}" y="{y + lane / 2 + 1:.0f}" text-anchor="end" '
                 f'font-size="13" font-weight="600">{_e(target)}</text>')
    for f in faults:
        y = top + targets.index(f["target"]) * lane + 3
        x0 = x(f["at"])
        x1 = x(f["heal_at"] if f.get("heal_at") is not None else end)
        kind = FAULTS.get(f["kind"])
        colour = FAMILY_COLOURS.get(kind.resource if kind else "", "#59636e")
        applied = f.get("applied", False)
        style = (f'fill="{colour}" fill-opacity="0.85"' if applied else
                 f'fill="#fff" stroke="{colour}" stroke-width="2" stroke-dasharray="5 3"')
        heal = f.get("heal_at")
        tip = (f"{f['kind']} on {f['target']} at {f['at']:g}s"
               + (f", healed at {heal:g}s" if heal is not None else ", not healed")
               + ("" if applied else " — NOT APPLIED")
               + (f" ({f['detail']})" if f.get("detail") else ""))
        g.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 3):.1f}" '
                 f'height="{lane - 12}" rx="4" {style}><title>{_e(tip)}</title></rect>')
        label = f["kind"] + ("" if applied else " (not applied)")
        if x1 - x0 > 7.5 * len(label):
            fill = "#fff" if applied else colour
            g.append(f'<text x="{x0 + 6:.1f}" y="{y + lane / 2 - 1:.0f}" font-size="12" '
                     f'style="fill:{fill}" font-weight="600">{_e(label)}</text>')
        else:
            g.append(f'<text x="{x1 + 4:.1f}" y="{y + lane / 2 - 1:.0f}" font-size="12">'
                     f"{_e(label)}</text>")
    for w in split:
        y = top + targets.index(TWO_ACTIVES) * lane + 3
        x0, x1 = x(w["from"]), x(w["to"])
        tip = (f"{' and '.join(w['nodes'])} both active from {w['from']:g}s to {w['to']:g}s "
               f"({(w['to'] - w['from']) * 1000:.0f} ms)")
        g.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 3):.1f}" '
                 f'height="{lane - 12}" rx="4" fill="{SPLIT_COLOUR}" fill-opacity="0.85">'
                 f"<title>{_e(tip)}</title></rect>")
        label = "+".join(w["nodes"])
        if x1 - x0 > 7.5 * len(label):
            g.append(f'<text x="{x0 + 6:.1f}" y="{y + lane / 2 - 1:.0f}" font-size="12" '
                     f'style="fill:#fff" font-weight="600">{_e(label)}</text>')
    g += _time_axis(x, end, top + lane * len(targets) + 2, left, width - right)
    svg = (f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="fault timeline">'
           + "".join(g) + "</svg>")
    kinds = sorted({FAULTS[f["kind"]].resource for f in faults if f["kind"] in FAULTS})
    legend = _legend([*((k, FAMILY_COLOURS[k], "box") for k in kinds),
                      *([(TWO_ACTIVES, SPLIT_COLOUR, "box")] if split else [])])
    return (f"<figure>{svg}{legend}<figcaption>Each bar runs from injection to heal; hover "
            "for details. A dashed outline marks a fault that did not take effect."
            + (" The last lane: when two members held the active role at once (their "
               "role logs)." if split else "") + "</figcaption></figure>")


def _rates(report: Mapping[str, Any], end: float) -> str:
    series = report.get("series", {})
    nodes = sorted(set(series.get("hw_pps", {})) | set(series.get("sw_pps", {})))
    if not nodes:
        return '<p class="empty">No packet-rate samples were recorded.</p>'
    peak = max((v for m in ("hw_pps", "sw_pps") for pts in series.get(m, {}).values()
                for _, v in pts), default=1.0)
    out = [_legend((("hardware", PALETTE[0], ""), ("software", PALETTE[1], "dash"),
                    ("fault window", "#cf222e", "box")))]
    for node in nodes:
        chart = _Chart(end, peak, "packets/s", _windows(report, end))
        chart.line(series.get("hw_pps", {}).get(node, []), PALETTE[0], title=f"{node} hardware")
        chart.line(series.get("sw_pps", {}).get(node, []), PALETTE[1], True,
                   title=f"{node} software")
        out.append(f"<figure>{chart.svg(f'packet rates of {node}')}<figcaption>Node "
                   f"<strong>{_e(node)}</strong>: packets per second forwarded in hardware "
                   "and in software.</figcaption></figure>")
    return "".join(out)


def _tables(report: Mapping[str, Any], end: float) -> str:
    series = report.get("series", {})
    ct, card = series.get("ct_entries", {}), series.get("card_entries", {})
    nodes = sorted(set(ct) | set(card))
    if not nodes:
        return '<p class="empty">No table-size samples were recorded.</p>'
    peak = max((v for m in (ct, card) for pts in m.values() for _, v in pts), default=1.0)
    chart = _Chart(end, peak, "entries", _windows(report, end))
    items = []
    for i, node in enumerate(nodes):
        colour = PALETTE[i % len(PALETTE)]
        chart.line(ct.get(node, []), colour, title=f"{node} conntrack entries")
        chart.line(card.get(node, []), colour, True, title=f"{node} card entries")
        items += [(f"{node} conntrack", colour, ""), (f"{node} card", colour, "dash")]
    return (f"{_legend(items)}<figure>{chart.svg('table sizes')}<figcaption>Conntrack "
            "entries (solid) and hardware entries in the card (dashed), per node."
            "</figcaption></figure>")


def _histogram(report: Mapping[str, Any]) -> str:
    lags = sorted(v for pts in report.get("series", {}).get("sync_lag_ms", {}).values()
                  for _, v in pts)
    if not lags:
        return '<p class="empty">No sync-lag samples were recorded.</p>'
    edges = (*LAG_BINS_MS, math.inf)
    counts = [0] * len(edges)
    for v in lags:
        counts[next(i for i, e in enumerate(edges) if v <= e)] += 1
    labels = [f"≤{e:g}" for e in LAG_BINS_MS] + [f">{LAG_BINS_MS[-1]:g}"]
    w, h, left, bottom, top = 1040, 240, 64, 40, 14
    top_count = max(_ticks(0, max(counts))[-1], max(counts), 1)
    bw = (w - left - 16) / len(counts)
    g = []
    for v in _ticks(0, top_count):
        y = top + (h - top - bottom) * (1 - v / top_count)
        g.append(f'<line x1="{left}" x2="{w - 16}" y1="{y:.1f}" y2="{y:.1f}" stroke="#d1d9e0"/>')
        g.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end" font-size="12">'
                 f"{_num_label(v)}</text>")
    for i, (n, label) in enumerate(zip(counts, labels, strict=True)):
        bh = (h - top - bottom) * n / top_count
        x = left + i * bw
        g.append(f'<rect x="{x + 4:.1f}" y="{h - bottom - bh:.1f}" width="{bw - 8:.1f}" '
                 f'height="{bh:.1f}" fill="{PALETTE[0]}" rx="2"><title>{_e(label)} ms: {n}'
                 f"</title></rect>")
        g.append(f'<text x="{x + bw / 2:.1f}" y="{h - bottom + 18}" text-anchor="middle" '
                 f'font-size="12">{_e(label)}</text>')
    g.append(f'<text x="{w / 2:.0f}" y="{h - 4}" text-anchor="middle" font-size="12">'
             "sync lag (ms)</text>")
    g.append(f'<text x="14" y="{(h - bottom) / 2:.0f}" font-size="12" text-anchor="middle" '
             f'transform="rotate(-90 14 {(h - bottom) / 2:.0f})">samples</text>')
    p50, p99 = percentile(lags, 50), percentile(lags, 99)
    return (f'<figure><svg viewBox="0 0 {w} {h}" role="img" aria-label="sync lag histogram">'
            + "".join(g) + f"</svg><figcaption>{len(lags):,} samples: p50 {p50:.3g} ms, "
            f"p99 {p99:.3g} ms, max {lags[-1]:.3g} ms (time from an event on its origin to its "
            "install on a peer).</figcaption></figure>")


def _verdicts(report: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><td><code>{_e(r['name'])}</code></td><td>{_badge(r['verdict'])}</td>"
                   f'<td class="detail">{_e(r["detail"])}</td></tr>'
                   for r in report.get("invariants", []))
    if not rows:
        return '<p class="empty">No invariant was checked.</p>'
    return ("<table><thead><tr><th>invariant</th><th>verdict</th><th>detail</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def _metric_cards(m: Mapping[str, Any]) -> str:
    lag = m.get("sync_lag_ms") or {}
    cards = [
        ("failover", _fmt(m.get("failover_ms"), " ms")),
        ("two actives", _windows_card(m.get("split_brain"))),
        ("no active", _windows_card(m.get("no_active"))),
        ("flows survived", f"{_fmt(m.get('flows_survived'))} / "
                           f"{_fmt(m.get('flows_established_before'))}"),
        ("hw hits after failover", _fmt(m.get("hw_hit_ratio_after_failover"), "%")),
        ("pre-installed at failover", _fmt(m.get("preinstalled_ratio_at_failover"), "%")),
        ("sync lag p50 / p99 / max", " / ".join(_fmt(lag.get(k)) for k in ("p50", "p99", "max"))
         + " ms"),
        ("events published", _fmt(m.get("events_published"))),
        ("events applied", _fmt(m.get("events_applied"))),
        ("bad messages", _fmt(m.get("bad_messages"))),
    ]
    return '<dl class="meta">' + "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>"
                                         for k, v in cards) + "</dl>"


def _windows_card(found: Mapping[str, Any] | None) -> str:
    """A metric card of windows (two actives, no active): their total, how many."""
    if not found:
        return "—"
    n = len(found["windows"])
    return (f"{found['total_ms']:,.0f} ms in {n} window{'s' if n != 1 else ''}"
            if n else "never")


def _schedule(report: Mapping[str, Any]) -> str:
    steps = report.get("schedule", [])
    if not steps:
        return '<p class="empty">The schedule was empty.</p>'
    rows = "".join(
        f'<tr><td class="num">{s["at"]:.3f}s</td><td>{_e(s["action"])}</td>'
        f"<td><code>{_e(s['kind'])}</code></td><td>{_e(s['target'])}</td>"
        f"<td><code>{_e(s['verb'])} {_e(' '.join(f'{k}={v}' for k, v in s['args'].items()))}"
        "</code></td></tr>" for s in steps)
    return ("<table><thead><tr><th>at</th><th>step</th><th>fault</th><th>target</th>"
            f"<th>backend action</th></tr></thead><tbody>{rows}</tbody></table>")


ROLE_ROWS = 400


def _role_changes(report: Mapping[str, Any]) -> str:
    """The faults and what each node's election made of them (its role log:
    roles, peers up and down, its readiness gate; each process's start), in
    one list, in seconds of the run (negative: during setup)."""
    rows: list[tuple[float, int, str, str]] = []
    for f in report.get("faults", []):
        what = f"{f['kind']} → {f['target']}"
        rows.append((f["at"], 0, "fault", what + ("" if f.get("applied") else " (not applied)")))
        if f.get("healed") and f.get("heal_at") is not None:
            rows.append((f["heal_at"], 0, "fault", what + " healed"))
    for node, v in (report.get("nodes") or {}).items():
        for at in v.get("started") or ():
            rows.append((at, 1, node, "process started"))
        for at, what in v.get("roles") or ():
            rows.append((at, 1, node, str(what)))
    quiet = "" if any(r[1] for r in rows) else '<p class="empty">No node reported its role log.</p>'
    if not rows:
        return quiet
    rows.sort(key=lambda r: (r[0], r[1]))
    more = len(rows) - ROLE_ROWS
    body = "".join(f'<tr><td class="num">{at:.3f}s</td><td>{_e(who)}</td>'
                   f'<td class="detail"><code>{_e(what)}</code></td></tr>'
                   for at, _, who, what in rows[:ROLE_ROWS])
    return ("<table><thead><tr><th>at</th><th>who</th><th>what</th></tr></thead>"
            f"<tbody>{body}</tbody></table>"
            + (f'<p class="empty">{more} later rows are in report.json.</p>' if more > 0 else "")
            + quiet)


def _page_top(title: str) -> str:
    """A self-contained page's head, up to its <body>."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{CSS}</style></head>
<body>"""


def cluster_line(c: Mapping[str, Any]) -> str:
    """report.json's "cluster" in one line: the settings runs are compared by."""
    def ms(key: str) -> str:
        v = c.get(key)
        return f"{round(1000 * v):,} ms" if isinstance(v, (int, float)) else "—"
    off = [k.replace("_", " ") for k, on in (c.get("mechanisms") or {}).items() if not on]
    parts = [str(c.get("mode")), f"broker {c.get('broker')}",
             "preempt " + ("on" if c.get("preempt") else "off"),
             f"heartbeat {ms('hb_interval')}", f"dead_after {ms('dead_after')}",
             f"will_grace {ms('will_grace')}",
             *([f"step_down_isolated {ms('step_down_isolated')}"]
               if c.get("step_down_isolated") else []),
             *([f"quorum {c['quorum']}" + "".join(
                 f" ({n}: witness)" for n, v in (c.get("nodes") or {}).items()
                 if isinstance(v, Mapping) and v.get("witness"))] if c.get("quorum") else []),
             "defer " + (ms("defer") if c.get("defer") else "off"),
             "cluster key " + ("on" if c.get("cluster_key") else "off")]
    if off:
        parts.append("off: " + ", ".join(off))
    return " · ".join(parts)


def render_html(report: Mapping[str, Any]) -> str:
    """The page for a report dict (as build() returns or report.json holds)."""
    end = _run_end(report)
    verdict = str(report.get("verdict", "unknown"))
    rev = report.get("git_revision") or "unknown"
    meta = [("seed", report.get("seed")), ("backend", report.get("backend")),
            ("duration", _fmt(report.get("duration"), " s")),
            ("phases", " · ".join(f"{k} {_fmt(v, ' s')}"
                                  for k, v in (report.get("phases") or {}).items()) or "—"),
            ("faults", len(report.get("faults", []))),
            ("revision", str(rev)[:12])]
    cluster = report.get("cluster")
    if isinstance(cluster, Mapping):
        meta.append(("cluster", cluster_line(cluster)))
    chaos = report.get("chaos")
    if isinstance(chaos, Mapping):
        meta.append(("chaos mix", chaos.get("mix") if chaos.get("mix") is not None
                     else "kinds " + ", ".join(map(str, chaos.get("kinds") or ()))))
    wide = ("phases", "cluster")  # lines, not figures: a row of their own
    head = ('<dl class="meta">' + "".join(
        f"<div{' class=wide' if k in wide else ''}><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>"
        for k, v in sorted(meta, key=lambda kv: kv[0] in wide)) + "</dl>")
    if isinstance(chaos, Mapping) and chaos.get("replay"):
        head += f'<p>Replay: <code>{_e(chaos["replay"])}</code></p>'

    title = f"ctlab · {report.get('scenario', 'scenario')} · {verdict}"
    return f"""{_page_top(title)}
<header><h1>{_e(report.get("scenario", "scenario"))} {_badge(verdict, True)}</h1>
<p class="lede">ctlab run report. The seed and the fault schedule below replay this run.</p>
{head}</header>
<h2>Verdict</h2>
{_verdicts(report)}
<h2>Key figures</h2>
{_metric_cards(report.get("metrics", {}))}
<h2>Fault timeline</h2>
{_timeline(report, end)}
<h2>Roles</h2>
{_role_changes(report)}
<h2>Packet rates per node</h2>
{_rates(report, end)}
<h2>Table sizes</h2>
{_tables(report, end)}
<h2>Sync lag</h2>
{_histogram(report)}
<h2>Fault schedule</h2>
{_schedule(report)}
<footer>Generated by ctlab from report.json (git revision <code>{_e(rev)}</code>).</footer>
</body></html>
"""


__all__ = ["build", "fault_entries", "git_revision", "metrics", "percentile", "render_html",
           "series", "to_json", "write"]
