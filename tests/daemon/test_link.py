"""node/daemon/link.py against real interfaces: a veth pair in a network
namespace of the test's own, taken down, left without carrier, its address
removed and moved, deleted. The watch runs in that namespace (a child
process: `ip netns exec`), as a node's does in the netns backend. Needs root
and iproute2 (CI is root)."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.daemon.link import LinkWatch, TrackedPort, tracked_address

ROOT = Path(__file__).resolve().parents[2]
V4, V6 = "198.18.250.1", "2001:2::1"  # the benchmarking ranges (RFC 2544, RFC 5180)
CHILD = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from node.daemon.link import LinkWatch, TrackedPort
watch = LinkWatch([TrackedPort("inside", {V4!r}, lambda: False),
                   TrackedPort("outside", {V6!r}, lambda: False)])
for _ in sys.stdin:
    print(watch.check(), flush=True)
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[tuple[str, Callable[[], str]]]:
    """A namespace with the veth pair d0 (198.18.250.1, 2001:2::1) - d1, both
    up, and the watch's verdict on demand."""
    ns = f"ctlt-link-{secrets.token_hex(3)}"
    ip("netns", "add", ns)
    child = None
    try:
        ip("-n", ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
        ip("-n", ns, "addr", "add", f"{V4}/24", "dev", "d0")
        ip("-n", ns, "addr", "add", f"{V6}/64", "dev", "d0", "nodad")
        ip("-n", ns, "link", "set", "d0", "up")
        ip("-n", ns, "link", "set", "d1", "up")
        child = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", CHILD],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

        def check() -> str:
            assert child is not None and child.stdin is not None and child.stdout is not None
            child.stdin.write("\n")
            child.stdin.flush()
            return child.stdout.readline().strip()
        yield ns, check
    finally:
        if child is not None:
            child.kill()
            child.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def test_every_way_a_link_goes_down_is_seen_and_said(
        netns: tuple[str, Callable[[], str]]) -> None:
    ns, check = netns
    assert check() == "None"
    ip("-n", ns, "link", "set", "d1", "down")  # the far end: no carrier
    assert check() == "inside: d0 has no carrier; outside: d0 has no carrier"
    ip("-n", ns, "link", "set", "d1", "up")
    ip("-n", ns, "link", "set", "d0", "down")  # `ip link set data0 down`: partition_data
    # (Linux drops an interface's IPv6 addresses when it goes down, with
    # net.ipv6.conf.*.keep_addr_on_down at its default 0: they are gone.)
    assert check() == f"inside: d0 is down; outside: {V6} is on no interface"
    ip("-n", ns, "link", "set", "d0", "up")
    assert check() == f"outside: {V6} is on no interface"
    ip("-n", ns, "addr", "add", f"{V6}/64", "dev", "d0", "nodad")
    assert check() == "None"
    ip("-n", ns, "addr", "del", f"{V4}/24", "dev", "d0")
    assert check() == f"inside: {V4} is on no interface"
    ip("-n", ns, "addr", "add", f"{V4}/24", "dev", "d1")  # moved: found where it is now
    assert check() == "None"
    ip("-n", ns, "link", "set", "d1", "down")
    assert check() == "inside: d1 is down; outside: d0 has no carrier"
    ip("-n", ns, "link", "del", "d0")  # removed, as a container's network disconnected
    assert check() == f"inside: {V4} is on no interface; outside: {V6} is on no interface"


def test_a_cut_wire_is_down_and_loopback_or_wildcard_binds_have_no_link() -> None:
    cut = {"inside": False}
    watch = LinkWatch([TrackedPort("inside", tracked_address("127.0.0.1"),
                                   lambda: cut["inside"]),
                       TrackedPort("outside", tracked_address("0.0.0.0"), lambda: False),
                       TrackedPort("mem", tracked_address(None), lambda: False)])
    assert [p.address for p in watch.ports] == [None, None, None]
    assert watch.check() is None
    cut["inside"] = True
    assert watch.check() == "inside: wire cut"
    assert tracked_address("::") is None and tracked_address("::1") is None
    assert tracked_address("node-a") is None  # a name: resolved at bind time, not tracked
    assert tracked_address("198.18.0.7") == "198.18.0.7"
