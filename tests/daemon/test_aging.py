"""Distributed aging with real node processes: a standby's copy lives as long as
any member sees traffic; when traffic stops everywhere, every copy expires
together (within one card poll interval); clocks skewed by ±30 s change
nothing (touches travel as "seconds ago")."""

from __future__ import annotations

import time

import pytest

from tests.daemon.conftest import Broker, Cluster, NodeProc, udp_flow, wait_until

pytestmark = [pytest.mark.timeout(120), pytest.mark.broker]

TIMEOUT = 3  # seconds: UDP conntrack and flow table timeouts
POLL = 0.5  # card poll interval
SPORT = 55000


def alive(n: NodeProc) -> bool:
    return n.entry(SPORT) is not None


@pytest.mark.parametrize("skew", [0.0, 30.0], ids=["same-clock", "skew-60s"])
def test_traffic_through_a_alone_keeps_bs_copy_and_both_expire_together(
        cluster: Cluster, broker: Broker, skew: float) -> None:
    sysctl = {"nf_conntrack_udp_timeout": TIMEOUT, "nf_conntrack_udp_timeout_stream": TIMEOUT,
              "nf_flowtable_udp_timeout": TIMEOUT}
    a = cluster.node("a", priority=200, role={"preempt": True}, sysctl=sysctl,
                     clock_offset=skew,
                     card={"poll_interval": POLL})
    b = cluster.node("b", priority=100, sysctl=sysctl, clock_offset=-skew,
                     card={"poll_interval": POLL})
    a.wait_ready()
    b.wait_ready()
    wait_until(lambda: a.role() == "active" and b.role() == "standby", 15, "roles")

    start = time.monotonic()
    paths = []
    last_packet = start
    while time.monotonic() - start < 2 * TIMEOUT:  # well past the timeout
        paths.append(a.inject("inside", udp_flow(SPORT))["path"])
        last_packet = time.monotonic()
        if time.monotonic() - start > 1.0:
            assert alive(b), f"b's copy died while a saw traffic ({time.monotonic() - start:.1f}s)"
        time.sleep(0.3)
    assert paths[0] == "sw" and paths[-1] == "hw"  # offloaded on a after the first packet
    assert b.entry(SPORT)["card"]["installed"]  # type: ignore[index]
    assert b.state()["aging"]["received"] > 0

    gone: dict[str, float] = {}

    def both_gone() -> bool:
        for n in (a, b):
            if n.name not in gone and not alive(n):
                gone[n.name] = time.monotonic() - last_packet
        return len(gone) == 2
    wait_until(both_gone, TIMEOUT + 6 * POLL + 5, "both copies to expire", interval=0.05)
    print(f"\nFIGURE aging skew={skew:g}: a expired {gone['a']:.2f}s, b {gone['b']:.2f}s "
          "after the last packet")
    for name, after in gone.items():
        assert TIMEOUT - 0.5 <= after <= TIMEOUT + 3 * POLL + 1.0, (name, after)
    assert abs(gone["a"] - gone["b"]) <= POLL + 0.3, gone
