"""Ports picked for brokers, nodes and scenario sockets: never the same one
twice in a process (the kernel can return one ephemeral port to two bind(0)
calls in a row, and two nodes configured one after the other then collide),
and outside the ephemeral range (an outgoing connection could take one before
its node binds it); and the one way children are stopped (by PID: SIGTERM,
then SIGKILL)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

from syncbus.broker import (
    PORTS_FROM,
    free_port,
    free_udp_port,
    port_pool,
    signal_process,
    stop_process,
)


def test_ports_handed_out_are_distinct_and_bindable() -> None:
    udp = [free_udp_port() for _ in range(300)]
    tcp = [free_port() for _ in range(300)]
    assert len(set(udp)) == len(udp) and len(set(tcp)) == len(tcp)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        u.bind(("127.0.0.1", udp[-1]))
        t.bind(("127.0.0.1", tcp[-1]))
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        lo, hi = map(int, f.read().split())
    assert not [p for p in udp + tcp if lo <= p <= hi]  # no connection can take them


@pytest.mark.parametrize(("text", "pool"), [
    ("32768\t60999\n", range(PORTS_FROM, 32768)),  # Linux's default
    ("49152 65535", range(PORTS_FROM, 49152)),  # IANA's dynamic ports
    ("1024 40000", range(40001, 65536)),  # a low range: above it
    ("10500 65000", None),  # no room worth the name: the kernel's choice
    ("1024 65535", None),
    ("", None), ("garbage", None), ("1 2 3", None),
])
def test_the_port_pool_lies_outside_the_ephemeral_range(text: str, pool: range | None) -> None:
    assert port_pool(text) == pool


def test_stop_process_terminates_then_kills_what_ignores_sigterm() -> None:
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stubborn = subprocess.Popen([sys.executable, "-c", (
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)")], stdout=subprocess.PIPE)
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
        assert stop_process(polite) == -signal.SIGTERM
        started = time.monotonic()
        assert stop_process(stubborn, timeout=0.5) == -signal.SIGKILL
        assert time.monotonic() - started < 5
        assert stop_process(None) is None
        assert stop_process(polite) == -signal.SIGTERM  # already gone: its code again
    finally:
        for p in (polite, stubborn):
            if p.poll() is None:
                p.kill()
                p.wait()
        if stubborn.stdout is not None:
            stubborn.stdout.close()


def test_stop_process_ends_a_paused_process_with_sigterm() -> None:
    """A paused (SIGSTOPped) child that handles SIGTERM, as a broker does,
    gets SIGCONT first: its handler runs and it exits cleanly. (Stopped, it
    could not run the handler: SIGKILL after the timeout.)"""
    paused = subprocess.Popen([sys.executable, "-c", (
        "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(3)); "
        "print('ready', flush=True); time.sleep(60)")], stdout=subprocess.PIPE)
    try:
        assert paused.stdout is not None and paused.stdout.readline() == b"ready\n"
        assert signal_process(paused, signal.SIGSTOP)
        assert stop_process(paused, timeout=2.0) == 3  # its own handler's exit
        assert not signal_process(paused, signal.SIGCONT)  # gone: nothing to signal
        assert not signal_process(None, signal.SIGCONT)
    finally:
        if paused.poll() is None:
            paused.kill()
            paused.wait()
        if paused.stdout is not None:
            paused.stdout.close()
