"""The software datapath: a node's ports, tc on them, conntrack behind act_ct.

A packet received on a port runs that port's ingress block (net/core/dev.c
sch_handle_ingress -> tcf_classify); act_ct uses the node's conntrack table;
mirred sends the packet out of another port, where it runs that port's egress
block (clsact egress) before it is transmitted, or into another port's
ingress. Each packet gets a frozen Outcome: the ingress verdict, the filters
it matched (chain, prio, handle), the ct state a later lookup would see, the
zone, what was transmitted where, the (possibly NATed) packet, and why it was
dropped.

Software path only: the offload card will sit in front of `receive` (a hit is
answered by the card, a miss comes here), and every Outcome says path="sw".
Time is an argument; nothing here reads a clock.
"""

from __future__ import annotations

import gc
import io
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from node.conntrack.table import Conntrack
from node.packet import Packet, TcpOptions, tcp
from node.tc.model import TcModel
from node.tc.skb import Skb
from node.tc.verdict import (
    TC_ACT_QUEUED,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
    TC_ACT_STOLEN,
    TC_ACT_TRAP,
    action_n2a,
)

PASS, DROP, STOLEN = "pass", "drop", "stolen"
CONSUMED = frozenset((TC_ACT_STOLEN, TC_ACT_QUEUED, TC_ACT_TRAP))


class Egress(NamedTuple):
    """One transmission (or delivery into another port) caused by mirred."""

    port: str
    pkt: Packet
    how: str  # "redirect" | "mirror"
    direction: str  # "egress": sent out of `port`; "ingress": received on `port`
    sent: bool  # False: that port's tc dropped it (or consumed it)
    chains: tuple[tuple[int, int, int], ...] = ()  # what it matched there
    mark: int = 0


class Outcome(NamedTuple):
    verdict: str  # pass (up the stack) | drop | stolen (consumed, e.g. redirected)
    code: int  # the TC_ACT_* value tcf_classify returned (-1: no filter decided)
    chains: tuple[tuple[int, int, int], ...]  # (chain, prio, handle) of each match
    ct_state: int  # flower ct_state bits the packet carries after tc
    zone: int
    egress: tuple[Egress, ...]
    pkt: Packet  # the packet as tc left it (NAT applied)
    drop_reason: str = ""
    mark: int = 0
    path: str = "sw"

    @property
    def ports(self) -> tuple[str, ...]:
        """The ports the packet (or copies of it) left through."""
        return tuple(e.port for e in self.egress if e.sent and e.direction == "egress")

    @property
    def forwarded(self) -> bool:
        return any(e.sent and e.how == "redirect" for e in self.egress)


class Datapath:
    """One node's software datapath (implements node.tc.skb.Env for actions)."""

    def __init__(self, ports: Iterable[str], tc: TcModel | None = None,
                 conntrack: Conntrack | None = None, now: float = 0.0) -> None:
        self.conntrack_table = conntrack if conntrack is not None else Conntrack()
        self.tc = tc if tc is not None else TcModel(auto_devices=False,
                                                    helpers=self.conntrack_table.helpers)
        for port in ports:
            self.tc.add_device(port)
        self.now = now
        self._egress: list[Egress] = []

    # ------------------------------------------------------------ Env
    @property
    def conntrack(self) -> Conntrack:
        return self.conntrack_table

    def mirred(self, skb: Skb, dev: str, egress: bool, redirect: bool) -> bool:
        port = self.tc.devices.get(dev)
        if port is None or not port.up:
            return True
        how = "redirect" if redirect else "mirror"
        skb.trace = []
        skb.dev = dev
        skb.reset_tc()
        block = port.egress if egress else port.ingress
        code = block.classify(skb, self) if block is not None else -1
        sent = code != TC_ACT_SHOT and code not in CONSUMED
        self._egress.append(Egress(dev, skb.pkt, how, "egress" if egress else "ingress", sent,
                                   tuple(skb.trace), skb.mark))
        return False

    # ------------------------------------------------------------ packets
    def receive(self, port: str, pkt: Packet, now: float, mark: int = 0) -> Outcome:
        """A packet arrives on `port` at time `now`."""
        self.now = now
        self.tc.now = now
        self._egress = []
        skb = Skb(pkt, port, mark)
        dev = self.tc.devices.get(port)
        if dev is None:
            raise KeyError(f"no port {port!r}")
        block = dev.ingress
        code = block.classify(skb, self) if block is not None else -1
        if code == TC_ACT_SHOT:
            verdict = DROP
            reason = skb.drop_reason or "TC_INGRESS"
        elif code in CONSUMED or code == TC_ACT_REDIRECT:
            verdict, reason = STOLEN, ""
        else:
            verdict, reason = PASS, ""
        entry = skb.ct
        zone = entry.zone if entry is not None else skb.zone
        return Outcome(verdict, code, tuple(skb.trace), skb.ct_state, zone,
                       tuple(self._egress), skb.pkt, reason, skb.mark)

    def expire(self, now: float) -> int:
        """Conntrack's garbage collection up to `now`."""
        return self.conntrack_table.expire(now)


def verdict_name(code: int) -> str:
    """The iproute2 name of a TC_ACT_* value ("pass", "drop", "goto" ...)."""
    return action_n2a(code)


# ---------------------------------------------------------------- benchmark
# The Netdev talk's two-chain firewall (the one tests/node/test_datapath.py
# carries packets through), as `ctlab bench datapath` measures it.
BENCH_FIREWALL = """\
qdisc add dev inside ingress
qdisc add dev outside ingress
filter add dev inside ingress pref 1 chain 0 protocol ip flower ct_state -trk \
    action ct zone 1 pipe action goto chain 1
filter add dev outside ingress pref 1 chain 0 protocol ip flower ct_state -trk \
    action ct zone 1 pipe action goto chain 1
filter add dev inside ingress pref 1 chain 1 protocol ip flower ct_state +trk+new \
    action ct zone 1 commit pipe action mirred egress redirect dev outside
filter add dev inside ingress pref 2 chain 1 protocol ip flower ct_state +trk+est \
    action mirred egress redirect dev outside
filter add dev inside ingress pref 3 chain 1 protocol ip flower ct_state +trk+rel \
    action mirred egress redirect dev outside
filter add dev inside ingress pref 4 chain 1 protocol ip flower ct_state +trk+inv action drop
filter add dev outside ingress pref 1 chain 1 protocol ip flower ct_state +trk+est \
    action mirred egress redirect dev inside
filter add dev outside ingress pref 2 chain 1 protocol ip flower ct_state +trk+rel \
    action mirred egress redirect dev inside
filter add dev outside ingress pref 3 chain 1 protocol ip flower ct_state +trk+new action drop
filter add dev outside ingress pref 4 chain 1 protocol ip flower ct_state +trk+inv action drop
"""


def bench_firewall(flows: int, segments: int = 16,
                   now: float = 1000.0) -> tuple[Datapath, list[tuple[str, Packet]]]:
    """A datapath with BENCH_FIREWALL and `flows` TCP connections opened through
    it (3-way handshake), and for each flow `segments` pre-built established
    packets in both directions (64-byte client data, server ACK) with correct
    sequence numbers; replaying the list is in-window for the TCP tracker."""
    from node.tc.cli import run_batch_text
    from node.tc.parse import Options

    dp = Datapath(["inside", "outside"], conntrack=Conntrack(events=False))
    err = io.StringIO()
    if run_batch_text(dp.tc, Options(), "firewall", BENCH_FIREWALL, io.StringIO(), err):
        raise RuntimeError(err.getvalue())
    opts = TcpOptions(mss=1460, wscale=7, sackok=True)
    payload = b"x" * 64
    stream: list[tuple[str, Packet]] = []
    for i in range(flows):
        client, server, cport = bytes((198, 18, i >> 8 & 0xFF, i & 0xFF)), \
            bytes((198, 19, i >> 8 & 0xFF, i & 0xFF)), 10000 + (i >> 16)
        cseq, sseq = 1000, 5000
        for port, pkt in (
                ("inside", tcp(client, server, cport, 443, "S", cseq, 0, 64240, opts)),
                ("outside", tcp(server, client, 443, cport, "SA", sseq, cseq + 1, 65160,
                                opts)),
                ("inside", tcp(client, server, cport, 443, "A", cseq + 1, sseq + 1, 502))):
            if not dp.receive(port, pkt, now).forwarded:
                raise RuntimeError("handshake not forwarded")
        cseq, sseq = cseq + 1, sseq + 1
        for _ in range(segments):
            stream.append(("inside", tcp(client, server, cport, 443, "PA", cseq, sseq, 502,
                                         payload=payload)))
            cseq += len(payload)
            stream.append(("outside", tcp(server, client, 443, cport, "A", sseq, cseq, 509)))
    return dp, stream


def bench_sw_pps(timer: Callable[[], float], seconds: float = 1.0,
                 flows: int = 64) -> dict[str, Any]:
    """sw_pps: established TCP packets per second through the two-chain firewall
    on the software path (one core, pre-built packets, GC paused while timing).
    `timer` is the clock (e.g. time.perf_counter): this module reads none."""
    dp, stream = bench_firewall(flows)
    receive = dp.receive
    now = 1000.0
    done = forwarded = 0
    gc.disable()
    try:
        start = timer()
        while True:
            for port, pkt in stream:
                forwarded += receive(port, pkt, now).forwarded
            done += len(stream)
            now += 0.001
            elapsed = timer() - start
            if elapsed >= seconds:
                break
    finally:
        gc.enable()
    if forwarded != done:
        raise RuntimeError(f"{done - forwarded} of {done} packets were not forwarded")
    return {"sw_pps": round(done / elapsed), "sw_packets": done, "sw_flows": flows}
