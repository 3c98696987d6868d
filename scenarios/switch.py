"""The switch between the traffic endpoints and the cluster: it carries each
packet the workload sends to the node that should get it, and each packet a
node forwards back to the workload, recording its fate.

Which node gets a packet:
  * active-standby: the active, as the runner last saw it (a switch after the
    new active's gratuitous ARP); while no node is known to be active, the
    last one (packets to a dead node are lost, as on a real wire);
  * active-active: the flow's owner by hash over the live members; with
    `asymmetric`, replies go through the next member (the other path).

Packets are matched to their flow by the IPv4 identification the switch
stamps on each one (NAT rewrites addresses and ports, never the ID). A node's
ports annotate what they send with the path it took (hw, sw-fastpath, sw:
node.daemon.wire), so every delivery says through which node and which path.

Pure apart from the sockets it is handed: time is passed in."""

from __future__ import annotations

import socket
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from node.daemon.wire import decode_annotated
from node.packet import Packet, PacketError, build, parse
from scenarios.model import F_SEEN, Op
from scenarios.traffic import INSIDE, ORIG, Send, TrafficGen

Addr = tuple[str, int]
ID_SPACE = 1 << 16
SEEN_GRANULE = 1.0  # seconds: one "seen" record per key, node and granule


@dataclass
class PathCount:
    hw: int = 0
    sw: int = 0

    def add(self, path: str) -> None:
        if path == "hw":
            self.hw += 1
        else:
            self.sw += 1


@dataclass
class Stats:
    sent: int = 0
    delivered: int = 0
    unmatched: int = 0  # arrived but not ours (or matched nothing in flight)
    bad: int = 0  # did not parse
    no_target: int = 0  # nowhere to send
    send_errors: int = 0
    by_node: dict[str, PathCount] = field(default_factory=dict)


@dataclass(slots=True)
class _InFlight:
    flow_id: str
    direction: int
    node: str
    proto: int


def stamp(raw: bytes, ident: int) -> bytes:
    """An IPv4 packet with its identification set to `ident`, the header
    checksum updated incrementally (RFC 1624: HC' = ~(~HC + ~m + m')). The
    workload only speaks IPv4 (its networks are 198.18/15)."""
    if raw[0] >> 4 != 4:
        raise ValueError("the switch stamps IPv4 packets only")
    old = (raw[4] << 8) | raw[5]
    c = (~((raw[10] << 8) | raw[11]) & 0xFFFF) + (~old & 0xFFFF) + ident
    c = (c & 0xFFFF) + (c >> 16)
    c = (c & 0xFFFF) + (c >> 16)
    c = ~c & 0xFFFF
    return b"".join((raw[:4], ident.to_bytes(2, "big"), raw[6:10], c.to_bytes(2, "big"),
                     raw[12:]))


class Switch:
    def __init__(self, gen: TrafficGen, nodes: Sequence[str],
                 sockets: Mapping[str, socket.socket],
                 address: Callable[[str, str], Addr], *, mode: str = "active-standby",
                 asymmetric: Callable[[str], bool] = lambda fid: False,
                 record_seen: bool = False) -> None:
        self.gen = gen
        self.nodes = tuple(nodes)
        self.sockets = dict(sockets)
        self.address = address
        self.mode = mode
        self.asymmetric = asymmetric
        self.record_seen = record_seen
        self.active: str | None = None  # active-standby: where traffic goes
        self.live: set[str] = set(nodes)  # active-active: members that carry traffic
        self.inflight: dict[int, _InFlight] = {}
        self.next_id = 1
        self.stats = Stats(by_node={n: PathCount() for n in nodes})
        self.ops: list[Op] = []
        self._seen: dict[tuple[str, str], float] = {}
        self._keys: dict[str, str] = {}
        # node, path, flow id, direction, now: after each delivery
        self.on_delivery: Callable[[str, str, str, int, float], None] | None = None

    # ------------------------------------------------------------ where to
    def target(self, send: Send) -> str | None:
        if self.mode != "active-active":
            return self.active
        live = sorted(self.live)
        if not live:
            return None
        root = send.flow_id.split(".", 1)[0]  # an FTP data connection follows its control
        i = zlib.crc32(root.encode()) % len(live)
        if send.direction != ORIG and self.asymmetric(send.flow_id) and len(live) > 1:
            i = (i + 1) % len(live)
        return live[i]

    # ------------------------------------------------------------ out
    def send(self, sends: Sequence[Send], now: float) -> None:
        for s in sends:
            node = self.target(s)
            if node is None:
                self.stats.no_target += 1
                self.gen.lost(s.flow_id, s.direction, s.packet, now, where="switch")
                continue
            ident = self.next_id
            self.next_id = ident + 1 if ident + 1 < ID_SPACE else 1
            self.inflight[ident] = _InFlight(s.flow_id, s.direction, node, s.packet.proto)
            port = "inside" if s.side == INSIDE else "outside"
            try:
                raw = stamp(build(s.packet), ident)
                self.sockets[port].sendto(raw, self.address(node, port))
                self.stats.sent += 1
            except (BlockingIOError, OSError):
                self.stats.send_errors += 1
                self.gen.lost(s.flow_id, s.direction, s.packet, now, where=node)

    # ------------------------------------------------------------ in
    def receive(self, datagram: bytes, now: float) -> None:
        path, raw = decode_annotated(datagram)
        try:
            pkt: Packet = parse(raw)
        except PacketError:
            self.stats.bad += 1
            return
        fl = self.inflight.pop(pkt.ip_id, None)
        if fl is None or fl.proto != pkt.proto:
            self.stats.unmatched += 1
            return
        path = path or "sw"
        self.stats.delivered += 1
        self.stats.by_node[fl.node].add(path)
        try:
            self.gen.deliver(fl.flow_id, fl.direction, pkt, now, via=fl.node,
                             path="hw" if path == "hw" else "sw")
        except KeyError:
            self.stats.unmatched += 1
            return
        if self.on_delivery is not None:
            self.on_delivery(fl.node, path, fl.flow_id, fl.direction, now)
        if self.record_seen:
            self._note_seen(fl.flow_id, fl.node, now)

    def _note_seen(self, flow_id: str, node: str, now: float) -> None:
        key = self._keys.get(flow_id)
        if key is None:
            key = self.gen.flow(flow_id).key
            if not key:
                return
            self._keys[flow_id] = key
        last = self._seen.get((key, node))
        if last is None or now - last >= SEEN_GRANULE:
            self._seen[(key, node)] = now
            self.ops.append(Op("info", node, now, F_SEEN, {"key": key}))

    def drain(self, side: str, now: float, limit: int = 4096) -> int:
        """Read what is queued on one side's socket (non-blocking)."""
        sock = self.sockets[side]
        n = 0
        while n < limit:
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            self.receive(data, now)
            n += 1
        return n

    def take_ops(self) -> list[Op]:
        ops, self.ops = self.ops, []
        return ops


__all__ = ["PathCount", "Stats", "Switch", "stamp"]
