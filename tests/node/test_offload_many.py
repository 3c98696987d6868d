"""Card.install_synced_many(): a replica's run of new connections goes to the
card together, and leaves exactly what install_synced() of each in turn
leaves, whatever the entries (offloadable one way, both ways, not at all;
marks and labels; a software-only zone; already offloaded; dying; tuples still
held by a flow being torn down) and whatever the card can take (capacity,
armed insert faults, tokens, insert latency)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from node.conntrack import Conntrack, Sysctl
from node.conntrack.entry import (
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_DST_NAT,
    IPS_DYING,
    IPS_HW_OFFLOAD,
    IPS_OFFLOAD,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
    Entry,
)
from node.conntrack.tcp import TcpTracker
from node.conntrack.tuple import tuple_of
from node.offload import Card, Direction, Faults
from node.packet import icmp_echo, tcp, udp

NOW = 1000.0
SW_ONLY = 2  # the zone without hardware, when the world has one
KINDS = ("tcp", "tcp_syn", "udp", "udp_assured", "udp_snat", "udp_dnat", "icmp")


def _origin_entry(ct: Conntrack, kind: str, port: int) -> Entry:
    """A connection as its origin's engine made it (real packets)."""
    a, b = "198.18.0.1", f"198.19.{port >> 8 & 0xFF}.{port & 0xFF}"
    if kind in ("tcp", "tcp_syn"):
        pkts = [tcp(a, b, port, 80, "S", 1000, 0)]
        if kind == "tcp":
            pkts += [tcp(b, a, 80, port, "SA", 5000, 1001), tcp(a, b, port, 80, "A", 1001, 5001)]
    elif kind.startswith("udp"):
        pkts = [udp(a, b, port, 53, b"q")]
    else:
        pkts = [icmp_echo(a, b, port, 1)]
    for pkt in pkts:
        ct.commit(pkt, NOW)
    entry = ct.find(tuple_of(pkts[0]))
    assert entry is not None
    if kind == "udp_assured":
        entry.status |= IPS_SEEN_REPLY | IPS_ASSURED
    elif kind.endswith("nat"):  # (the card reads the status bits: SNAT/DNAT flow flags)
        entry.status |= IPS_SRC_NAT if kind == "udp_snat" else IPS_DST_NAT
    return entry


def _synced(ct: Conntrack, src: Entry, zone: int, mark: int, labels: int) -> Entry:
    """The replica's copy of `src`, in this node's conntrack (as ctstate builds one)."""
    copy = Entry(src.orig, src.reply, zone, NOW, 0)
    copy.status = (src.status | IPS_CONFIRMED) & ~(IPS_OFFLOAD | IPS_HW_OFFLOAD | IPS_DYING)
    copy.mark, copy.labels = mark, labels
    data = TcpTracker().export(src) if src.orig.proto == 6 else None
    if data:
        TcpTracker().restore(copy, data)
    ct.refresh(copy, 120.0, NOW)
    assert ct.insert_synced(copy, NOW)
    return copy


def _world(spec: dict[str, Any], many: bool) -> tuple[Any, ...]:
    """Build the card, pre-install, kill and tear down as `spec` says (the same
    for both worlds), then install the batch one by one or together; return
    everything the card and the entries hold."""
    origin = Conntrack(Sysctl(), events=False)
    ct = Conntrack(Sysctl(), events=False)
    card = Card(ct, Faults(capacity=spec["capacity"], insert_rate=100.0,
                           insert_burst=spec["burst"], insert_latency=spec["latency"]))
    if spec["sw_only"]:
        card.sw_only_zones.add(SW_ONLY)
    card.poll(NOW)
    pre = [_synced(ct, _origin_entry(origin, kind, 20000 + i), 0, 0, 0)
           for i, kind in enumerate(spec["pre"])]
    for e in pre:
        card.install_synced(e, NOW)
    killed = [e for i, e in enumerate(pre) if i in spec["kill"]]
    for e in killed:
        ct.kill(e, NOW, "test")
    card.poll(NOW + 1.0)  # the GC tears their flows down (freed at the next one)
    now = NOW + 1.5
    card.faults.fail_next = spec["fail_next"]
    card.faults.fail_all = spec["fail_all"]
    batch: list[Entry] = []
    for i, (kind, zone, mark, labels) in enumerate(spec["batch"]):
        batch.append(_synced(ct, _origin_entry(origin, kind, 30000 + i), zone, mark, labels))
    if spec["reuse"] and killed:  # the tuples of a flow still being torn down
        gone = killed[0]
        batch.insert(len(batch) // 2, _synced(ct, gone, 0, 7, 0))
    if spec["again"] and pre and pre[-1] not in killed:  # one already offloaded
        batch.append(pre[-1])
    if spec["dying"] and killed:
        batch.insert(0, killed[-1])
    if spec["twice"] and batch:  # the same entry twice in one call
        batch.append(batch[0])
    state = [_install(card, batch, now, many)]
    later = card.poll(now + 1.0)  # completions, retries, the GC (a held flow freed)
    state.append(([(d.entry.id, d.direction, d.at) for d in later.completed],
                  [(f.entry.id, f.direction, f.reason) for f in later.failed],
                  [(t.entry.id, t.reason) for t in later.teardowns], later.freed))
    # A second round: the entries still waiting to catch up, their tuples free
    # by now, and new ones.
    waiting = [e for e in batch if e.id in card._catch_up and not e.status & IPS_OFFLOAD]
    fresh = [_synced(ct, _origin_entry(origin, "tcp", 40000 + i), 0, 0, 0) for i in range(2)]
    state.append(_install(card, waiting + fresh, now + 1.5, many))
    return tuple(state)


def _install(card: Card, batch: list[Entry], now: float, many: bool) -> tuple[Any, ...]:
    """Install `batch` one by one or together; everything the card and the
    entries hold afterwards."""
    if many:
        got = card.install_synced_many(batch, now)
    else:
        got = [card.install_synced(e, now) for e in batch]
    flows, hw, n = card.flows, card.hw, len(card.flows.owners)
    return (
        got, card.stats, dict(card.counters.insert_failures), dict(card.counters.teardowns),
        [(o.id, o.orig) for o in flows.owners], list(flows._free), flows.count,
        flows.flags_v[:n].tolist(), flows.timeout_v[:n].tolist(), flows.period_v[:n].tolist(),
        flows.cookie_v[:n].tolist(), flows.ct_check_at_v[:n].tolist(),
        {z: sorted(m.values()) for z, m in flows.orig_index.items()},
        {z: sorted(m.values()) for z, m in flows.reply_index.items()},
        hw.size, hw.entries, hw._tokens, hw._refilled_at, dict(hw.labels),
        hw.state_v[:2 * n].tolist(), hw.ctinfo_v[:2 * n].tolist(), hw.mark_v[:2 * n].tolist(),
        list(card.work.jobs), [(d.entry.id, d.direction, d.at) for d in card.work.completed],
        [(f.entry.id, f.direction, f.reason) for f in card.work.failed],
        {k: (v[0].id, v[1]) for k, v in card._catch_up.items()}, list(card._catch_up),
        sorted((e.id, e.status, e.expires_at, e.timeout, e.proto if type(e.proto) is bytes
                else repr(e.proto)) for e in card.ct.entries()))


_entries = st.tuples(st.sampled_from(KINDS), st.sampled_from((0, 1, SW_ONLY)),
                     st.sampled_from((0, 5)), st.sampled_from((0, 1 << 70)))
_specs = st.fixed_dictionaries({
    "capacity": st.sampled_from((3, 8, 1000)),
    "burst": st.sampled_from((1.0, 4.0, 1000.0)),
    "latency": st.sampled_from((0.0, 0.002)),
    "sw_only": st.booleans(),
    "pre": st.lists(st.sampled_from(("tcp", "udp_assured", "udp")), max_size=4),
    "kill": st.sets(st.integers(0, 3), max_size=2),
    "fail_next": st.sampled_from((0, 0, 1, 2)),
    "fail_all": st.sampled_from((False, False, False, True)),
    "batch": st.lists(_entries, max_size=8),
    "reuse": st.booleans(),
    "again": st.booleans(),
    "dying": st.booleans(),
    "twice": st.booleans()})

_PLAIN = {"capacity": 1000, "burst": 1000.0, "latency": 0.0, "sw_only": False, "pre": [],
          "kill": set(), "fail_next": 0, "fail_all": False, "reuse": False, "again": False,
          "dying": False, "twice": False}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_specs)
@example({**_PLAIN, "batch": [("tcp", 0, 5, 0), ("udp", 1, 0, 1 << 70), ("tcp_syn", 0, 0, 0),
                              ("udp_assured", 0, 0, 0), ("icmp", 0, 0, 0)]})
@example({**_PLAIN, "latency": 0.002, "batch": [("tcp", 0, 0, 0)] * 3})
@example({**_PLAIN, "pre": ["tcp", "udp"], "kill": {0}, "reuse": True,
          "batch": [("tcp", 0, 0, 0)] * 2})  # held tuples: retried later
@example({**_PLAIN, "burst": 4.0, "batch": [("tcp", 0, 0, 0)] * 3})  # 6 inserts, 4 tokens
@example({**_PLAIN, "capacity": 3, "batch": [("udp", 0, 0, 0)] * 4})  # room for three
@example({**_PLAIN, "fail_next": 1, "batch": [("udp", 0, 0, 0)] * 2})
@example({**_PLAIN, "sw_only": True, "batch": [("tcp", SW_ONLY, 0, 0), ("tcp", 0, 0, 0)]})
@example({**_PLAIN, "latency": 0.002, "pre": ["tcp"], "kill": {0}, "batch": []})  # jobs due
@example({**_PLAIN, "twice": True, "batch": [("tcp", 0, 0, 0)] * 2})
def test_install_synced_many_leaves_what_one_by_one_leaves(spec: dict[str, Any]) -> None:
    one_by_one = _world(spec, many=False)
    together = _world(spec, many=True)
    assert together == one_by_one


def test_a_frame_of_new_connections_goes_in_together(monkeypatch: Any) -> None:
    """The batch path itself, not its one-by-one fallback: five offloadable
    connections and one that is not, on a card with room and tokens for all."""
    def one_by_one(self: Card, entry: Entry, now: float) -> None:
        raise AssertionError("install_synced() called: the batch fell back")
    monkeypatch.setattr(Card, "install_synced", one_by_one)
    spec = {**_PLAIN, "latency": 0.002,
            "batch": [("tcp", 0, 0, 0)] * 3 + [("tcp_syn", 0, 0, 0)] + [("udp", 1, 9, 0)] * 2}
    first, later, _ = _world(spec, many=True)
    assert first[0] == [Direction.BOTH] * 3 + [None] + [Direction.ORIGINAL] * 2
    assert first[1]["inserts"] == 8 and first[1]["synced"] == 5
    assert len(later[0]) == 8  # every insert completed at the next poll
