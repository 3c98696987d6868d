"""The garbage collector's pauses, measured by the hook every node installs."""

from __future__ import annotations

import gc

from node.daemon.gcwatch import GcWatch


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
