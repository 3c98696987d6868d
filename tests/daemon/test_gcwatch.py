"""The garbage collector's pauses, measured by the hook every node installs."""

from __future__ import annotations

import gc

from node.daemon.gcwatch import YOUNG_THRESHOLD, GcWatch


def test_collections_are_timed_by_generation_while_installed() -> None:
    watch = GcWatch()
    watch.install()
    try:
        junk: list[list[object]] = [[i] for i in range(10_000)]
        for item in junk[:100]:
            item.append(item)  # cycles for the collector to find
        del junk
        gc.collect()
        gc.collect(0)
    finally:
        watch.uninstall()
    assert watch not in gc.callbacks
    s = watch.summary()
    assert s["collections"]["2"] >= 1 and s["collections"]["0"] >= 1
    assert s["last_full_ms"] is not None and s["last_full_ms"] >= 0
    assert s["pause_max_ms"]["2"] >= s["last_full_ms"] >= 0
    assert watch.collected >= 100
    before = s["collections"]["2"]
    gc.collect()  # uninstalled: not seen
    assert watch.summary()["collections"]["2"] == before
    watch.uninstall()  # twice is harmless


def test_install_sets_the_young_threshold_and_uninstall_restores_it() -> None:
    before = gc.get_threshold()
    watch = GcWatch()
    watch.install()
    try:
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *before[1:])
        assert watch.summary()["thresholds"] == [YOUNG_THRESHOLD, *before[1:]]
    finally:
        watch.uninstall()
    assert gc.get_threshold() == before
    watch.install(young_threshold=None)  # timing only
    try:
        assert gc.get_threshold() == before
    finally:
        watch.uninstall()


def _full_collections_while_a_standby_applies_updates(young: int | None,
                                                      objects: bool = False) -> int:
    """A standby (replica with a card) with 20k TCP entries applies 8 rounds of
    updates from its active; the full collections that ran meanwhile. With
    `objects`, the frames are decoded into their records (CtBatch: a CtUpsert,
    a TcpInfo, a ConnId ... per record) instead of taking a member's fast lane."""
    from node.conntrack import Conntrack, Sysctl
    from node.offload import Card, Faults
    from syncbus import codec
    from syncbus.bench import CLUSTER, KEY, open_connection
    from syncbus.core import SyncConfig, SyncCore

    n = 20_000
    gc.disable()
    try:
        act = Conntrack(Sysctl(nf_conntrack_max=4 * n), events=False)
        entries = [open_connection(act, i, 1.0) for i in range(n)]
        a = SyncCore(SyncConfig(CLUSTER, "a", KEY), act, None, epoch=1, now=1.0)
        sct = Conntrack(Sysctl(nf_conntrack_max=4 * n), events=False)
        b = SyncCore(SyncConfig(CLUSTER, "b", KEY), sct, Card(sct, Faults(insert_latency=0.0)),
                     epoch=1, now=1.0)
        rounds = []
        for r in range(9):
            for e in entries:
                a.outbox.upsert(e, 1.0 + r)
            rounds.append(a.outbox.flush(1.0 + r))
        for f in rounds[0]:
            b.on_message(f.topic, f.payload, 1.0)
    finally:
        gc.enable()
    gc.collect()
    watch = GcWatch()
    watch.install(young_threshold=young)
    try:
        for r, frames in enumerate(rounds[1:], 1):
            for f in frames:
                if objects:
                    b.replica.apply(codec.decode(f.payload, KEY), 1.0 + r)
                else:
                    b.on_message(f.topic, f.payload, 1.0 + r)
    finally:
        watch.uninstall()
    assert b.replica.stats["updated"] == 8 * n
    return int(watch.summary()["collections"]["2"])


def test_a_standby_following_its_active_runs_no_full_collection() -> None:
    """With the node's young threshold, the records of a frame die young. With
    CPython's default (700), records decoded into objects are promoted, and the
    old generation's growth brings full collections (each a pause of 0.3-0.6 s
    at 200k entries); a member's fast lane (plain records read in place) leaves
    nothing to promote even then."""
    assert _full_collections_while_a_standby_applies_updates(YOUNG_THRESHOLD) == 0
    assert _full_collections_while_a_standby_applies_updates(YOUNG_THRESHOLD, True) == 0
    assert _full_collections_while_a_standby_applies_updates(700, True) >= 1
    assert _full_collections_while_a_standby_applies_updates(700) == 0
