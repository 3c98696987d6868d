"""The data links a node tracks, as keepalived's track_interface does: a node
whose data path is down gives up the active role (the election's FAULT state,
syncbus/election.py), so that a standby with a working path takes over.

A port's link is down when:
  - its wire is cut (the control API's nemesis "data": "cut": how the local
    backend partitions a node on loopback, which has no link to take down);
  - it is bound to an address of one of this host's interfaces, and that
    interface is down (not IFF_UP) or has no carrier (not IFF_RUNNING: a veth
    whose peer is down);
  - it is bound to an address that is on no interface any more (the interface
    was removed: a container's network disconnected).
A port bound to a loopback or wildcard address, or a memory port, has no link
but its wire.

Linux (netdevice(7)): SIOCGIFFLAGS for the flags, SIOCGIFADDR for an
interface's IPv4 address, /proc/net/if_inet6 for the IPv6 ones.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

SIOCGIFFLAGS = 0x8913  # include/uapi/linux/sockios.h
SIOCGIFADDR = 0x8915
IFF_UP = 0x1  # include/uapi/linux/if.h
IFF_RUNNING = 0x40
IF_INET6 = Path("/proc/net/if_inet6")


def _ifreq(name: str) -> bytes:
    return struct.pack("256s", name.encode()[:15])


def flags_of(name: str) -> int | None:
    """The interface's IFF_* flags, or None if there is no such interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            got = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, _ifreq(name))
        except OSError:
            return None
    return int(struct.unpack_from("H", got, 16)[0])


def _ipv4_of(name: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            got = fcntl.ioctl(s.fileno(), SIOCGIFADDR, _ifreq(name))
        except OSError:
            return None  # no such interface, or no IPv4 address
    return socket.inet_ntoa(got[20:24])


def interface_of(address: str) -> str | None:
    """The interface that holds `address` (an IPv4 interface's primary address,
    or any IPv6 one), or None."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        for _, name in socket.if_nameindex():
            if _ipv4_of(name) == address:
                return name
        return None
    try:
        lines = IF_INET6.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) == 6 and ipaddress.ip_address(int(fields[0], 16)) == ip:
            return fields[5]
    return None


@dataclass
class TrackedPort:
    name: str
    address: str | None  # a specific, non-loopback address it is bound to; None: no link
    is_cut: Callable[[], bool]  # its wire is cut (nemesis)
    interface: str | None = None  # where `address` was found last


def tracked_address(host: str | None) -> str | None:
    """The address whose link a port bound to `host` depends on: None for no
    address, a wildcard or a loopback one (no link to lose)."""
    if not host:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None  # a name: resolved at bind time; not tracked
    return None if ip.is_unspecified or ip.is_loopback else str(ip)


class LinkWatch:
    """The state of the data ports' links: check() says why the data path is
    down, or None when every port's link is up."""

    def __init__(self, ports: Iterable[TrackedPort]) -> None:
        self.ports = list(ports)

    def check(self) -> str | None:
        down = [why for why in map(self._down, self.ports) if why is not None]
        return "; ".join(down) if down else None

    def _down(self, port: TrackedPort) -> str | None:
        if port.is_cut():
            return f"{port.name}: wire cut"
        if port.address is None:
            return None
        name = port.interface
        if name is None or not self._holds(name, port.address):
            name = port.interface = interface_of(port.address)
            if name is None:
                return f"{port.name}: {port.address} is on no interface"
        flags = flags_of(name)
        if flags is None:
            port.interface = None
            return f"{port.name}: {name} is gone"
        if not flags & IFF_UP:
            return f"{port.name}: {name} is down"
        if not flags & IFF_RUNNING:
            return f"{port.name}: {name} has no carrier"
        return None

    @staticmethod
    def _holds(name: str, address: str) -> bool:
        if ipaddress.ip_address(address).version == 4:
            return _ipv4_of(name) == address
        return interface_of(address) == name


__all__ = ["IFF_RUNNING", "IFF_UP", "LinkWatch", "TrackedPort", "flags_of", "interface_of",
           "tracked_address"]
