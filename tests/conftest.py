"""Session-wide: a SIGTERM (a CI job's timeout, `kill`) stops the test run as
Ctrl-C does, so that the finally blocks and fixtures of the running test
stop its processes and remove its namespaces. `ctlab run` in-process hands
the signal on here once its own teardown is done.

A test that is about to reach its timeout (pytest-timeout) first writes where
each of its asyncio tasks waits to stderr: pytest-timeout shows the threads'
stacks, and a hung asyncio test has one thread idle in epoll, which tells
nothing. pytest shows the dump under "Captured stderr call"."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

DUMP_BEFORE_TIMEOUT = 10.0  # seconds


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    signal.signal(signal.SIGTERM, _interrupt)


def _timeout_of(item: pytest.Item) -> float | None:
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    ini = item.config.getini("timeout")
    return float(ini) if ini else None


def _dump_tasks(name: str) -> None:
    """Every unfinished asyncio task and where it waits (read from another
    thread while the loop is stuck: a debugging aid, not a precise snapshot)."""
    out = sys.stderr
    tasks = [t for t in list(asyncio.tasks._all_tasks) if not t.done()]  # type: ignore[attr-defined]
    print(f"\n===== {name}: {len(tasks)} asyncio tasks, "
          f"{DUMP_BEFORE_TIMEOUT:g} s before the timeout =====", file=out)
    for t in tasks:
        print(f"--- {t!r}", file=out)
        try:
            t.print_stack(limit=15, file=out)
        except Exception as exc:  # the loop moved on under us: say so, go on
            print(f"    (stack unavailable: {exc!r})", file=out)
    out.flush()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    limit = _timeout_of(item)
    timer = None
    if limit and limit > 2 * DUMP_BEFORE_TIMEOUT:
        timer = threading.Timer(limit - DUMP_BEFORE_TIMEOUT, _dump_tasks, (item.nodeid,))
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
