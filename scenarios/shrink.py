"""Shrinking a failing fault schedule to a smaller one that still fails.

A chaos run that fails hands its user a schedule of a dozen faults, most of
which had nothing to do with the failure. `ctlab chaos --shrink` runs the
scenario again with parts of the schedule left out, keeps every removal after
which the run still fails, and writes the smallest failing schedule as a
scenario file that `ctlab run` replays.

The search is Zeller and Hildebrandt's ddmin ("Simplifying and Isolating
Failure-Inducing Input", IEEE TSE 28(2), 2002), complements only: the schedule
is cut into n chunks, and a run without one chunk that still fails becomes the
new schedule (n back to max(n - 1, 2)); when none does, n doubles, up to one
fault per chunk. What it returns is 1-minimal for the runs it made: leaving out
any single fault of it made a run pass (or was not tried for lack of budget,
which the result says). Pure: `fails` runs the scenario, so this module does
no I/O and its tests need no cluster.

A run that passes by chance keeps a fault that did not matter, and one that
fails by chance lets go of one that did: shrinking a failure that shows only
sometimes gives a schedule that failed at least once, still a real failing run
to look at. `tries` runs each candidate up to that many times (it fails if any
run does), which is what a race needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scenarios.model import Fault, Scenario


@dataclass(frozen=True)
class Shrunk:
    faults: tuple[Fault, ...]  # the smallest failing schedule found
    runs: int  # runs made (each a call of `fails`)
    minimal: bool  # False: the budget ran out before every single removal was tried


def shrink(faults: Sequence[Fault], fails: Callable[[tuple[Fault, ...]], bool],
           max_runs: int = 30, tries: int = 1) -> Shrunk:
    """The smallest sub-schedule of `faults` for which fails() holds, found
    with at most `max_runs` calls. `faults` is assumed to fail (the caller
    has seen it fail); sub-schedules keep the faults' order. A failure that
    shows only sometimes (a race): each candidate is run up to `tries` times
    and fails if any of its runs does."""
    if tries < 1:
        raise ValueError("tries must be at least 1")
    cur = list(faults)
    runs = 0

    def failing(candidate: tuple[Fault, ...]) -> bool | None:
        """fails() within `tries` runs; None: the budget ran out first."""
        nonlocal runs
        for _ in range(tries):
            if runs >= max_runs:
                return None
            runs += 1
            if fails(candidate):
                return True
        return False

    n = 2
    while cur:
        n = min(n, len(cur))
        size = -(-len(cur) // n)  # ceil: n chunks of about equal size
        chunks = [range(i, min(i + size, len(cur))) for i in range(0, len(cur), size)]
        for chunk in chunks:
            verdict = failing(tuple(f for i, f in enumerate(cur) if i not in chunk))
            if verdict is None:
                return Shrunk(tuple(cur), runs, False)
            if verdict:
                cur = [f for i, f in enumerate(cur) if i not in chunk]
                n = max(n - 1, 2)
                break
        else:
            if n >= len(cur):
                break  # every single fault was needed
            n = min(2 * n, len(cur))
    return Shrunk(tuple(cur), runs, True)


def scenario_text(base_file: Path, sc: Scenario, faults: Sequence[Fault],
                  invariants: Sequence[str], note: str, broker: str | None = None) -> str:
    """The base scenario file with `sc`'s seed and duration and the schedule
    `faults`: a scenario file that `ctlab run` replays. Every name in
    `invariants` is checked (chaos checks them all; those the base does not
    set get their defaults). tc_file becomes an absolute path, so the file
    can go anywhere; `broker` is a --broker override."""
    doc = yaml.safe_load(base_file.read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise ValueError(f"{base_file}: not a scenario (a mapping)")
    doc["description"] = note
    doc["seed"] = sc.seed
    doc["duration"] = f"{sc.duration:g}s"
    if isinstance(doc.get("tc_file"), str):
        doc["tc_file"] = str((base_file.parent / doc["tc_file"]).resolve())
    if broker is not None:
        doc.setdefault("cluster", {})["broker"] = broker
    doc["faults"] = [_fault(f) for f in faults]
    checked = doc.get("invariants") or {}
    for name in invariants:
        checked.setdefault(name, {})
    doc["invariants"] = checked
    doc.pop("expect", None)  # what chaos expects: no invariant fails
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)


def _fault(f: Fault) -> dict[str, Any]:
    out: dict[str, Any] = {"at": f"{f.at:g}s", "kind": f.kind, "target": f.target}
    if f.duration is not None:
        out["duration"] = f"{f.duration:g}s"
    if f.params:
        out["params"] = dict(f.params)
    return out


def write_scenario(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


__all__ = ["Shrunk", "scenario_text", "shrink", "write_scenario"]
