"""`ctlab bench sync` end to end, tiny: the figures come back under the keys
DESIGN.md section 5 names (nothing here judges their values)."""

from __future__ import annotations

import signal
import sys

import pytest

from syncbus.bench import bench_sync
from tests.procs import alive, descendants, sigterm_when
from tests.syncbus.conftest import have_mosquitto

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]


_MOSQUITTO = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")


@pytest.mark.parametrize("broker", [pytest.param("mosquitto", marks=_MOSQUITTO), "amqtt",
                                    pytest.param("bridged", marks=_MOSQUITTO)])
def test_bench_sync_reports_its_figures(broker: str) -> None:
    """(bridged: A on one Mosquitto, B on another bridged to it)"""
    res = bench_sync(broker=broker, conns=300, rounds=2, rate=300, seconds=0.5,
                     stage_records=300, timeout=120)
    assert res["broker"].startswith("mosquitto" if broker == "bridged" else broker)
    assert ("bridged" in res["broker"]) == (broker == "bridged")
    for key in ("sync_events_per_s", "sync_install_p50_ms", "sync_install_p99_ms",
                "sync_bytes_per_event"):
        assert res[key] > 0
    ev = res["details"]["events"]
    assert ev["items"] == 600 and ev["created"] == 300 and ev["bad"] == 0
    assert ev["fast_lane"] == 600  # plain TCP records: every one took the receive fast lane
    assert res["details"]["latency"]["samples"] > 0


def test_sigterm_stops_a_bench_and_its_broker_and_publisher() -> None:
    """`ctlab bench sync` killed with SIGTERM while A publishes: it exits 143
    and takes its Mosquitto and its publisher process with it (stopped by PID
    in the finally blocks SIGTERM now runs)."""
    t = sigterm_when([sys.executable, "-m", "scenarios.cli", "bench", "sync"],
                     lambda pid: len(descendants(pid)) >= 2, settle=1.0)  # the broker and A
    assert t.returncode == 128 + signal.SIGTERM, t.output
    assert not alive(t.processes), alive(t.processes)
