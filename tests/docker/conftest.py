"""Fixtures of the container tests: a Docker engine and ctlab's image.

These tests never skip. Without a Docker engine they FAIL and say how to get
one (CI starts dockerd before the test suite: see .ci/run and compose/ci.sh);
deselect them with `-m "not docker"` on a machine without Docker.

The image (CTLAB_IMAGE, default ctlab:latest) is brought up to date with
compose/build-image.sh before the first test: a no-op apart from `docker
build`'s cache check when nothing changed; with changed sources it rebuilds
the wheels and the image (a minute or two), the base image only when it is
missing (debootstrap: root, and a Debian mirror in this machine's apt
sources). CTLAB_TEST_REUSE_IMAGE=1 uses whatever image is there.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT = 1500


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "docker: needs a Docker engine and builds ctlab's image (tests/docker)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    from scenarios.backends.base import BackendError
    from scenarios.backends.docker import connect

    try:
        client = connect()
    except BackendError as exc:
        problem = str(exc)
    else:
        yield client
        client.close()
        return
    pytest.fail(f"tests/docker need a Docker engine: {problem}. On Debian (as root): "
                "apt-get install docker.io docker-compose debootstrap, then "
                "`compose/ci.sh start` (or any dockerd) and export DOCKER_HOST if it is "
                "not the default socket. Deselect with -m 'not docker'.", pytrace=False)


@pytest.fixture(scope="session")
def ctlab_image(docker_client: Any) -> str:
    image = os.environ.get("CTLAB_IMAGE") or "ctlab:latest"
    if os.environ.get("CTLAB_TEST_REUSE_IMAGE") == "1":
        try:
            docker_client.images.get(image)
            return image
        except Exception:
            pass
    r = subprocess.run([str(ROOT / "compose" / "build-image.sh"), "--tag", image],
                       capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    if r.returncode != 0:
        pytest.fail(f"compose/build-image.sh failed ({r.returncode}):\n{r.stdout[-2000:]}\n"
                    f"{r.stderr[-3000:]}", pytrace=False)
    return image
