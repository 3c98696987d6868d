"""`ctlab bench failover`, tiny, and the promotion record it reads.

The bench runs real node processes against a real broker: b must take over
with every flow already in its card and forward a random old flow in
hardware. The promotion count is checked against a table that changes while
it is counted in steps."""

from __future__ import annotations

import pytest

from node.conntrack import Conntrack
from node.daemon.bench import bench_failover, flow_packet
from node.packet import parse
from tests.daemon.helpers import memory_node

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]


def test_bench_failover_takes_over_with_every_flow_in_the_card() -> None:
    res = bench_failover((300, 600))  # Mosquitto when installed (CI), else amqtt
    assert res["failover_entries"] == 600 and len(res["failover_runs"]) == 2
    for run in res["failover_runs"]:
        n = run["entries"]
        assert run["probe_path"] == "hw" and run["probe_forwarded"] is True
        assert run["at_promotion"] == {"table": n, "eligible": n, "installed": n,
                                       "pending": 0, "reason": "no live active"}
        assert 0 < run["a_exit_ms"] <= run["kill_to_active_ms"] <= run["kill_to_first_hw_ms"]
        assert run["fill_s"] <= run["sync_s"]
        assert set(run["gc_full_max_ms"]) == {"a", "b"}


def test_with_a_will_grace_the_takeover_waits_for_it() -> None:
    """--will-grace 0.25: b acts on a's will once the grace has passed, and
    still has every flow in its card (the cost of riding out broker flaps)."""
    res = bench_failover((300,), will_grace=0.25)
    (run,) = res["failover_runs"]
    assert run["will_grace"] == 0.25 and run["probe_path"] == "hw"
    assert run["at_promotion"]["installed"] == 300
    assert 250 <= run["kill_to_active_ms"] < 350 + 250, run  # the grace, under dead_after's


@pytest.mark.parametrize(("grace", "ok"), [("0.2", True), ("0", True), ("0.5", False),
                                           ("-1", False), ("soon", False)])
def test_the_will_grace_option_is_checked(grace: str, ok: bool) -> None:
    from scenarios.cli import _parser

    if ok:
        assert _parser().parse_args(["bench", "failover", "--will-grace", grace]).will_grace \
            == float(grace)
    else:
        with pytest.raises(SystemExit):
            _parser().parse_args(["bench", "failover", "--will-grace", grace])


def test_flow_packets_are_distinct_udp_flows_in_the_benchmarking_range() -> None:
    ct = Conntrack(events=False)
    for i in (0, 1, 59_999, 60_000, 123_456):
        pkt = parse(flow_packet(i))
        assert pkt.src[:2] == bytes((198, 18)) and pkt.dst[:2] == bytes((198, 19))
        ct.commit(pkt, 1.0)
    assert len(ct) == 5


def test_promotion_count_is_of_the_table_at_that_moment_counted_in_steps() -> None:
    """installed/pending at once from the card, eligible later in steps, of the
    entries there were at the promotion (new and removed ones do not count)."""
    from node.daemon.views import OffloadCount, offload_json

    node = memory_node()
    for i in range(10):
        node.receive("inside", flow_packet(i), 1.0)
    node.poll(1.0)
    # one more flow, not offloaded yet (its insert lands at the next poll)
    node.card.hw.faults.insert_latency = 0.5
    node.receive("inside", flow_packet(10), 1.0)
    want = offload_json(node)
    assert want == {"eligible": 11, "installed": 10, "pending": 1}
    record: dict[str, object] = {"table": len(node.ct)}
    count = OffloadCount(node, record)
    assert record == {"table": 11, "installed": 10, "pending": 1, "eligible": None}
    for i in range(11, 15):  # later flows are not the promotion's
        node.receive("inside", flow_packet(i), 1.1)
    assert [count.step(4), count.step(4)] == [False, False] and record["eligible"] is None
    assert count.step(4) and record["eligible"] == 11  # 4 + 4 + 3


def test_state_counts_a_big_table_without_a_pass_and_small_ones_at_once() -> None:
    """Up to AT_ONCE entries /state's offload figures are one pass; above, the
    card is counted at once and eligible comes from the last stepped count."""
    from node.daemon import views

    node = memory_node()
    queued: list[views.OffloadCount] = []
    tc = views.TableCount(node, queued.append)
    for i in range(40):
        node.receive("inside", flow_packet(i), 1.0)
    node.poll(1.0)
    assert tc.read(1.0) == {"eligible": 40, "installed": 40, "pending": 0} and not queued
    old, views.AT_ONCE = views.AT_ONCE, 10  # (a "big" table, small enough for a test)
    try:
        first = tc.read(2.0)
        assert first == {"eligible": None, "installed": 40, "pending": 0,
                         "eligible_counted_at": None} and len(queued) == 1
        assert tc.read(2.1)["eligible"] is None and len(queued) == 1  # one count at a time
        for i in range(40, 45):  # entries added after the count began are not in it
            node.receive("inside", flow_packet(i), 2.2)
        node.poll(2.2)
        while not queued[0].step(16):
            pass
        got = tc.read(3.0)
        assert got == {"eligible": 40, "installed": 45, "pending": 0,
                       "eligible_counted_at": 2.0} and len(queued) == 2
        while not queued[1].step(16):
            pass
        assert tc.read(4.0)["eligible"] == 45
    finally:
        views.AT_ONCE = old
