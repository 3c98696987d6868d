"""`ctlab bench sync` end to end, tiny: the figures come back under the keys
DESIGN.md section 5 names (nothing here judges their values)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from syncbus.bench import bench_sync
from tests.procs import alive, descendants
from tests.syncbus.conftest import have_mosquitto

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]


@pytest.mark.parametrize("broker", [
    pytest.param("mosquitto", marks=pytest.mark.skipif(not have_mosquitto(),
                                                       reason="mosquitto is not installed")),
    "amqtt"])
def test_bench_sync_reports_its_figures(broker: str) -> None:
    res = bench_sync(broker=broker, conns=300, rounds=2, rate=300, seconds=0.5,
                     stage_records=300, timeout=120)
    assert res["broker"].startswith(broker)
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
    proc = subprocess.Popen([sys.executable, "-m", "scenarios.cli", "bench", "sync"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(ours := descendants(proc.pid)) < 2:  # the broker and A
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        time.sleep(1.0)
        ours = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # only if the test failed above
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert not alive(ours), alive(ours)
