"""The replication path in stages, costed per record, without a broker.

n TCP connections (real 3-way handshakes through A's engine) go through the
path one stage at a time, each stage over all n records:

  encode                  A: Outbox.upsert of every connection, then flush
                          (coalescing, msgpack, HMAC)
  decode_full             B: codec.decode of those frames into CtUpsert items
  decode                  B: codec.decode(lazy=True), as SyncCore.on_message
                          does (plain records stay bytes: the fast lane)
  apply_insert            B: Replica.apply of round 1 (every record a create)
  apply_update            B: Replica.apply of round 2 (every record an update)
  apply_insert_with_card  the same on a member with a card: each create
                          pre-installed (Card.install_synced, insert latency 0)
  apply_update_with_card  ... and the card following each update

Two measures of the same stages:
  stage_costs(n)        CPU microseconds per record, in this process. It moves
                        with the machine's load (2x on a busy shared machine).
  instruction_costs(n)  instructions per record, counted by valgrind's callgrind
                        in a child process. The same on a busy machine as on a
                        quiet one: the measure to compare two versions of the
                        code with. Needs valgrind, and an interpreter whose
                        symbol table is not stripped: collection is switched on
                        only inside operator.call() (CPython's _operator_call),
                        through which the child calls each stage, and dumped as
                        each call returns, so one run gives every stage and
                        nothing of the start-up, imports and set-up.

python -m syncbus.stages [--records N] [--instructions] [--json]
Benchmarks, not tests: nothing here asserts a threshold.
"""

from __future__ import annotations

import argparse
import gc
import json
import operator
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from node.conntrack import Conntrack, Sysctl
from node.offload import Card, Faults
from syncbus import codec
from syncbus.bench import CLUSTER, KEY, open_connection
from syncbus.core import SyncConfig, SyncCore
from syncbus.messages import Envelope

STAGES = ("encode", "decode_full", "decode", "apply_insert", "apply_update",
          "apply_insert_with_card", "apply_update_with_card")
TOGGLE = "_operator_call"  # the C function behind operator.call (CPython >= 3.11)


def pipeline(n: int) -> Iterator[tuple[str, Callable[[], object]]]:
    """The stages in order, as (name, run): each run() must be called before
    the next stage is asked for (the set-up between two stages, not measured,
    runs when it is)."""
    ct = Conntrack(Sysctl(nf_conntrack_max=4_000_000), events=False)
    entries = [open_connection(ct, i, 1.0) for i in range(n)]
    a = SyncCore(SyncConfig(CLUSTER, "a", KEY), ct, None, epoch=1, now=1.0)

    def encode(now: float) -> list[Any]:
        for e in entries:
            a.outbox.upsert(e, now)
        return a.outbox.flush(now)
    first: list[Any] = []
    yield "encode", lambda: first.extend(encode(1.0))
    second = encode(2.0)
    yield "decode_full", lambda: [codec.decode(f.payload, KEY) for f in first]
    yield "decode", lambda: [codec.decode(f.payload, KEY, lazy=True) for f in first]
    rounds: list[list[Envelope]] = [[codec.decode(f.payload, KEY, lazy=True) for f in fs]
                                    for fs in (first, second)]
    for suffix, card in (("", False), ("_with_card", True)):
        bct = Conntrack(Sysctl(nf_conntrack_max=4_000_000), events=False)
        b = SyncCore(SyncConfig(CLUSTER, "b", KEY), bct,
                     Card(bct, Faults(insert_latency=0.0)) if card else None,
                     epoch=1, now=1.0)
        yield "apply_insert" + suffix, _applying(b, rounds[0], 1.0)
        yield "apply_update" + suffix, _applying(b, rounds[1], 2.0)


def _applying(member: SyncCore, frames: list[Envelope], now: float) -> Callable[[], object]:
    return lambda: [member.replica.apply(env, now) for env in frames]


def stage_costs(n: int = 10_000) -> dict[str, float]:
    """CPU microseconds per record of each stage (process time, garbage
    collection off), keyed `<stage>_us`."""
    out: dict[str, float] = {}
    gc.disable()
    try:
        for name, run in pipeline(n):
            t = time.process_time()
            run()
            out[name + "_us"] = round((time.process_time() - t) / n * 1e6, 2)
    finally:
        gc.enable()
    return out


class CallgrindError(RuntimeError):
    """valgrind is missing, or its run did not give one count per stage."""


def instruction_costs(n: int = 2000, *, timeout: float = 600.0) -> dict[str, float]:
    """Instructions per record of each stage, keyed `<stage>_instr`: one child
    process under callgrind (about 30 s, most of it the interpreter starting
    under valgrind). Deterministic up to a few tenths of a percent: the child
    runs with PYTHONHASHSEED=0 and one BLAS thread (an idle OpenBLAS thread
    spins under valgrind and would be counted)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise CallgrindError("instruction counts need valgrind (Debian: apt-get install "
                             "valgrind)")
    with tempfile.TemporaryDirectory(prefix="ctlab-callgrind-") as tmp:
        out = Path(tmp) / "cg.out"
        env = {**os.environ, "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1"}
        cmd = [valgrind, "--tool=callgrind", "--collect-atstart=no",
               f"--toggle-collect={TOGGLE}", f"--dump-after={TOGGLE}",
               f"--callgrind-out-file={out}",
               sys.executable, "-m", "syncbus.stages", "--child", str(n)]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                           check=False)
        if r.returncode != 0:
            raise CallgrindError(f"the child under callgrind failed ({r.returncode}): "
                                 f"{r.stderr[-2000:]}")
        counts = [_total(Path(f"{out}.{i}")) for i in range(1, len(STAGES) + 1)
                  if Path(f"{out}.{i}").exists()]
    if len(counts) != len(STAGES):
        raise CallgrindError(
            f"callgrind dumped {len(counts)} counts for {len(STAGES)} stages: is "
            f"{TOGGLE} in {sys.executable}'s symbol table (not stripped)?")
    return {name + "_instr": round(c / n, 1) for name, c in zip(STAGES, counts, strict=True)}


def _total(dump: Path) -> int:
    """The instruction total of one callgrind dump (its `totals:` line)."""
    m = re.search(r"^totals:\s+(\d+)", dump.read_text(errors="replace"), re.M)
    if m is None:
        raise CallgrindError(f"no totals in {dump.name}")
    return int(m.group(1))


def _child(n: int) -> int:
    """Under callgrind: every stage through operator.call, nothing else."""
    gc.disable()
    for _name, run in pipeline(n):
        operator.call(run)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child(int(argv[1]))
    ap = argparse.ArgumentParser(prog="python -m syncbus.stages", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=None,
                    help="connections per stage (default 10000, 2000 with --instructions)")
    ap.add_argument("--instructions", action="store_true",
                    help="count instructions under callgrind instead of timing")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    a = ap.parse_args(argv)
    if a.records is not None and a.records < 1:
        ap.error("--records must be at least 1")
    try:
        res = instruction_costs(a.records or 2000) if a.instructions \
            else stage_costs(a.records or 10_000)
    except CallgrindError as exc:
        print(f"syncbus.stages: {exc}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(res))
    else:
        unit = "instructions" if a.instructions else "CPU us"
        for key, value in res.items():
            print(f"{key.rsplit('_', 1)[0]:24} {value:>12,} {unit} per record")
    return 0


__all__ = ["STAGES", "CallgrindError", "instruction_costs", "main", "pipeline", "stage_costs"]

if __name__ == "__main__":
    raise SystemExit(main())
