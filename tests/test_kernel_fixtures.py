"""The engine against the real kernel: every packet of every recorded fixture
(tests/fixtures/oracle/results) is replayed through `ct replay` and must agree
with what Linux answered: ctstate, ctdir, proto_state, flags, status, mark,
zone, labels, helper, and the timeout within 2 s. The randomized holdout
corpus (tests/fixtures/oracle/holdout) must agree on ctstate/ctdir/proto_state
for at least 99% of its packets."""

from __future__ import annotations

from pathlib import Path

import pytest

from scenarios.casefile import load_cases
from scenarios.replay import differences, replay

FIXTURES = Path(__file__).parent / "fixtures" / "oracle"
RESULTS = sorted((FIXTURES / "results").glob("*.json"))
HOLDOUT = sorted((FIXTURES / "holdout" / "results").glob("*.json"))


def test_fixtures_exist() -> None:
    assert len(RESULTS) >= 10


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.stem)
def test_engine_agrees_with_kernel_on_every_packet(path: Path) -> None:
    result = replay(load_cases([str(path)]))
    failures = []
    compared = 0
    for case in result["cases"]:
        for i, pkt in enumerate(case["packets"]):
            if "kernel" not in pkt:
                continue
            compared += 1
            diff = differences(pkt["kernel"], pkt["ctlab"])
            if diff:
                failures.append(f"{case['name']} packet {i}: {'; '.join(diff)}")
    assert compared > 0
    assert not failures, "\n".join(failures)


@pytest.mark.skipif(not HOLDOUT, reason="no holdout corpus recorded")
def test_engine_agrees_with_kernel_on_99_percent_of_the_holdout_corpus() -> None:
    result = replay(load_cases([str(p) for p in HOLDOUT]))
    total = agree = 0
    for case in result["cases"]:
        for pkt in case["packets"]:
            if "kernel" in pkt:
                total += 1
                agree += not differences(pkt["kernel"], pkt["ctlab"],
                                         ("ctstate", "ctdir", "proto_state"))
    assert total >= 1000
    assert agree / total >= 0.99, f"{agree}/{total} packets agree"
