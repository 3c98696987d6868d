"""Where a scenario runs: the explicit registry of backends (scenarios/backends/base.py
says what each must do)."""

from __future__ import annotations

from collections.abc import Callable

from scenarios.backends.base import Applied, Backend, BackendError, ClusterPlan


def _local() -> Backend:
    from scenarios.backends.local import LocalBackend

    return LocalBackend()


def _netns() -> Backend:
    from scenarios.backends.netns import NetnsBackend

    return NetnsBackend()


def _docker() -> Backend:
    from scenarios.backends.docker import DockerBackend

    return DockerBackend()


BACKENDS: dict[str, Callable[[], Backend]] = {"local": _local, "netns": _netns,
                                              "docker": _docker}


def make(name: str) -> Backend:
    try:
        return BACKENDS[name]()
    except KeyError:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}") from None


__all__ = ["BACKENDS", "Applied", "Backend", "BackendError", "ClusterPlan", "make"]
