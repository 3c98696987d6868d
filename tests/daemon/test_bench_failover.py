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
    from node.daemon import config
    from node.daemon.node import Node
    from node.daemon.views import PromotionCount, offload_json

    fw = (config.Path(__file__).resolve().parents[2] / "node" / "daemon" / "examples"
          / "firewall.tc").read_text()
    cfg = config.parse({"node": "a", "cluster": "c", "tc": fw,
                        "card": {"insert_latency": 0.0},
                        "ports": {"inside": {"type": "memory"}, "outside": {"type": "memory"}}})
    node = Node(cfg, 1.0, 1)
    for i in range(10):
        node.receive("inside", flow_packet(i), 1.0)
    node.poll(1.0)
    # one more flow, not offloaded yet (its insert lands at the next poll)
    node.card.hw.faults.insert_latency = 0.5
    node.receive("inside", flow_packet(10), 1.0)
    want = offload_json(node)
    assert want == {"eligible": 11, "installed": 10, "pending": 1}
    record: dict[str, object] = {"table": len(node.ct)}
    count = PromotionCount(node, record)
    assert record == {"table": 11, "installed": 10, "pending": 1, "eligible": None}
    for i in range(11, 15):  # later flows are not the promotion's
        node.receive("inside", flow_packet(i), 1.1)
    assert [count.step(4), count.step(4)] == [False, False] and record["eligible"] is None
    assert count.step(4) and record["eligible"] == 11  # 4 + 4 + 3
