"""Session-wide: a SIGTERM (a CI job's timeout, `kill`) stops the test run as
Ctrl-C does, so that the finally blocks and fixtures of the running test
stop its processes and remove its namespaces. `ctlab run` in-process hands
the signal on here once its own teardown is done."""

from __future__ import annotations

import signal
from types import FrameType

import pytest


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    signal.signal(signal.SIGTERM, _interrupt)
