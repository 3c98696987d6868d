"""A node's datapath: its ports, tc on them, conntrack behind act_ct, and the
offload card in front of it all.

A packet received on a port runs that port's ingress block (net/core/dev.c
sch_handle_ingress -> tcf_classify); act_ct uses the node's conntrack table;
mirred sends the packet out of another port, where it runs that port's egress
block (clsact egress) before it is transmitted, or into another port's
ingress. Each packet gets a frozen Outcome: the ingress verdict, the filters
it matched (chain, prio, handle), the ct state a later lookup would see, the
zone, what was transmitted where, the (possibly NATed) packet, why it was
dropped, and which path it took and why.

With a card (`Datapath(..., card=Card(ct))`) the packet reaches the card first
(node.tc.offload.TcOffload: the card's tc driver). The card runs the offloaded
filters in chain order; a ct action looks the packet up in the card's CT table.
A packet handled entirely there took path "hw". Otherwise the card says where
software resumes (Outcome.why is the reason): the chain (no rule in the card for
what software would match: "no_rule"), or the filter and the action position of
a ct action whose lookup missed ("no_entry", "fin_rst", "unsupported",
"table_full"), as mlx5 restores chain and action (act_miss). In software, act_ct
looks in the card's flow table before conntrack (sw_lookup) and offers what it
tracked after commit (offer). Path "sw-fastpath": every software ct action was
answered by the flow table; "sw": conntrack ran (or software tc ran without a
ct action). Hardware counters reach `tc -s` at the card's bulk poll
(poll(), every second: "used_hw_stats delayed").

Without a card there is no flow table: act_ct runs conntrack for every packet
and every Outcome says path="sw".
Time is an argument; nothing here reads a clock: whoever owns time calls
poll(now) at next_deadline().
"""

from __future__ import annotations

import gc
import io
import statistics
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from node.conntrack.table import Conntrack
from node.offload.card import Card
from node.offload.outcomes import PollResult
from node.packet import Packet, TcpOptions, tcp
from node.tc.model import TcModel
from node.tc.offload import DEFAULT_RULE_CAPACITY, MISS_REASONS, Miss, TcOffload
from node.tc.skb import (
    ETH_HLEN,
    PATH_CONNTRACK,
    PATH_FLOWTABLE,
    PATH_HW_CT,
    PATH_SOFTWARE,
    Skb,
)
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
HW, SW_FASTPATH, SW = "hw", "sw-fastpath", "sw"
_VERDICTS = {TC_ACT_SHOT: DROP, TC_ACT_REDIRECT: STOLEN, **dict.fromkeys(CONSUMED, STOLEN)}
PATHS = (HW, SW_FASTPATH, SW)
CT_HIT, HW_RULE = "ct_hit", "hw_rule"  # Outcome.why of a packet handled in hardware
_new = tuple.__new__  # a NamedTuple without its Python-level __new__ (the per-packet path)


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
    path: str = SW  # "hw" | "sw-fastpath" | "sw"
    why: str = ""  # hw: ct_hit | hw_rule; sw: the card's miss reason (none without a card)

    @property
    def ports(self) -> tuple[str, ...]:
        """The ports the packet (or copies of it) left through."""
        return tuple(e.port for e in self.egress if e.sent and e.direction == "egress")

    @property
    def forwarded(self) -> bool:
        for e in self.egress:  # noqa: SIM110 (a loop: no generator per packet)
            if e.sent and e.how == "redirect":
                return True
        return False


class Tick(NamedTuple):
    """What poll() did: conntrack entries expired, and the card's poll."""

    at: float
    expired: int
    card: PollResult | None


class Datapath:
    """One node's datapath (implements node.tc.skb.Env for actions and
    node.tc.offload.HwEnv for the card's pipeline)."""

    def __init__(self, ports: Iterable[str], tc: TcModel | None = None,
                 conntrack: Conntrack | None = None, now: float = 0.0, *,
                 card: Card | None = None,
                 rule_capacity: int = DEFAULT_RULE_CAPACITY) -> None:
        if conntrack is None:
            conntrack = card.ct if card is not None else Conntrack()
        self.conntrack_table = conntrack
        self.conntrack = conntrack  # (Env.conntrack: an attribute, read per ct action)
        self.tc = tc if tc is not None else TcModel(auto_devices=False,
                                                    helpers=self.conntrack_table.helpers)
        # The card's tc driver; also act_ct's flow tables (env.flowtable).
        self.offload: TcOffload | None = None
        if card is not None:
            if card.ct is not self.conntrack_table:
                raise ValueError("the card serves another conntrack table")
            self.offload = TcOffload(card, rule_capacity)
        self.flowtable = self.offload
        for port in ports:
            self.tc.add_device(port)
        if self.offload is not None:
            for dev in self.tc.devices.values():
                dev.offload = self.offload
                for block in (dev.ingress, dev.egress):
                    if block is not None and block.offload is None:
                        block.offload = self.offload
        self.now = now
        self._egress: tuple[Egress, ...] = ()  # what mirred sent, during receive()
        # receive()'s Skb, kept for the next packet (nothing holds an Skb after
        # receive() returns); None while one is in use.
        self._spare: Skb | None = None
        self._why = ""
        self.paths = dict.fromkeys(PATHS, 0)  # packets received, by path
        self.misses = dict.fromkeys(MISS_REASONS, 0)  # software packets, by card miss

    # ------------------------------------------------------------ Env / HwEnv
    def mirred(self, skb: Skb, dev: str, egress: bool, redirect: bool) -> bool:
        """Software mirred: the packet runs the target's tc in software."""
        try:
            port = self.tc.devices[dev]
        except KeyError:
            return True
        if not port.up:
            return True
        block = port.egress if egress else port.ingress
        if block is None or not block.chains:  # no tc there: transmitted as it is
            self._egress += (_new(Egress, (dev, skb.pkt, "redirect" if redirect else "mirror",
                                           "egress" if egress else "ingress", True, (),
                                           skb.mark)),)
            return False
        target = _copy(skb, dev)
        code = block.classify(target, self)
        skb.path |= target.path
        self._sent(target, dev, egress, redirect, code)
        return False

    def hw_mirred(self, skb: Skb, dev: str, egress: bool, redirect: bool) -> bool:
        """mirred in the card: the target's tc runs in the card too; what the card
        misses there is finished in software."""
        port = self.tc.devices.get(dev)
        if port is None or not port.up:
            return True
        block = port.egress if egress else port.ingress
        if block is None or not block.chains:
            self._egress += (Egress(dev, skb.pkt, "redirect" if redirect else "mirror",
                                    "egress" if egress else "ingress", True, (), skb.mark),)
            return False
        target = _copy(skb, dev)
        code = self._hw_then_sw(block, target)
        skb.path |= target.path
        self._sent(target, dev, egress, redirect, code)
        return False

    def _sent(self, target: Skb, dev: str, egress: bool, redirect: bool, code: int) -> None:
        sent = code != TC_ACT_SHOT and code not in CONSUMED
        self._egress += (Egress(dev, target.pkt, "redirect" if redirect else "mirror",
                                "egress" if egress else "ingress", sent,
                                target.trace, target.mark),)

    def _hw_then_sw(self, block: Any, skb: Skb) -> int:
        hw = self.offload
        assert hw is not None
        got = hw.classify(block, skb, self)
        if type(got) is not Miss:
            return got  # type: ignore[return-value]
        if not self._why:
            self._why = got.reason
        skb.path |= PATH_SOFTWARE
        return block.resume(skb, self, got.chain, got.pos, got.flt, got.act_index)

    # ------------------------------------------------------------ packets
    def receive(self, port: str, pkt: Packet, now: float, mark: int = 0) -> Outcome:
        """A packet arrives on `port` at time `now`."""
        self.now = now
        self.tc.now = now
        self._egress = ()
        try:
            dev = self.tc.devices[port]
        except KeyError:
            raise KeyError(f"no port {port!r}") from None
        skb = self._spare
        if skb is None:
            skb = Skb(pkt, port, mark)
        else:  # Skb.__init__, on the last packet's Skb
            self._spare = None
            skb.pkt = pkt
            skb.len = pkt.length + ETH_HLEN
            skb.dev = port
            skb.mark = mark
            skb.ct = None
            skb.ctinfo = None
            skb.ct_state = 0
            skb.post_ct = False
            skb.zone = 0
            skb.trace = ()
            skb.path = 0
            if skb.__dict__:
                skb.__dict__.clear()
        block = dev.ingress
        hw = self.offload
        if block is None:
            code = -1
        elif hw is None:
            whole = block.program  # (Block.classify from chain 0, without its frame)
            code = whole(skb, self) if whole else block.classify(skb, self)  # type: ignore[operator]
        else:
            self._why = ""
            code = self._hw_then_sw(block, skb)
        verdict = _VERDICTS.get(code, PASS)
        reason = (skb.drop_reason or "TC_INGRESS") if verdict is DROP else ""
        if hw is None or block is None:
            path, why = SW, ""
        else:
            bits = skb.path
            why = self._why
            if not bits & PATH_SOFTWARE:
                path, why = HW, CT_HIT if bits & PATH_HW_CT else HW_RULE
            elif bits & PATH_CONNTRACK or not bits & PATH_FLOWTABLE:
                path = SW
            else:
                path = SW_FASTPATH
            if why in self.misses:
                self.misses[why] += 1
        self.paths[path] += 1
        entry = skb.ct
        self._spare = skb
        return _new(Outcome, (verdict, code, skb.trace, skb.ct_state,
                              entry.zone if entry is not None else skb.zone, self._egress,
                              skb.pkt, reason, skb.mark, path, why))

    # ------------------------------------------------------------ time
    def next_deadline(self) -> float:
        """When poll() next has work: the card's next poll or command, or the next
        conntrack expiry (inf: nothing scheduled)."""
        at = self.conntrack_table.next_deadline()
        deadline = float("inf") if at is None else at
        if self.offload is not None:
            deadline = min(deadline, self.offload.card.next_deadline())
        return deadline

    def poll(self, now: float) -> Tick:
        """Everything due at `now`: the card's poll (commands, and once a second its
        bulk counter read and flow table GC, whose rule counters then reach the
        filters' hardware statistics) and conntrack's expiry."""
        self.now = now
        result = None
        if self.offload is not None:
            result = self.offload.card.poll(now)
            if result.gc:
                self.offload.sync_stats(now)
        return Tick(now, self.conntrack_table.expire(now), result)

    def expire(self, now: float) -> int:
        """Conntrack's garbage collection up to `now`."""
        return self.conntrack_table.expire(now)


def _copy(skb: Skb, dev: str) -> Skb:
    """The copy of `skb` a mirred target's tc works on: a new tc run on `dev`."""
    target = skb.clone()
    target.mirred_depth = skb.mirred_depth + 1
    target.trace = ()
    target.dev = dev
    target.reset_tc()
    return target


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


def bench_firewall(flows: int, segments: int = 16, now: float = 1000.0, *,
                   card: bool = False,
                   skip_hw: bool = False) -> tuple[Datapath, list[tuple[str, Packet]]]:
    """A datapath with BENCH_FIREWALL and `flows` TCP connections opened through
    it (3-way handshake), and for each flow `segments` pre-built established
    packets in both directions (64-byte client data, server ACK) with correct
    sequence numbers; replaying the list is in-window for the TCP tracker.
    With `card`, an offload card (no insert latency or rate limit) is in front,
    polled once after the handshakes; `skip_hw` keeps every filter in software,
    so the flows stay in act_ct's software flow table."""
    from node.offload.faults import Faults
    from node.tc.cli import run_batch_text
    from node.tc.parse import Options

    ct = Conntrack(events=False)
    nic = Card(ct, Faults(insert_latency=0.0, insert_rate=1e12, insert_burst=1e12)) \
        if card else None
    dp = Datapath(["inside", "outside"], conntrack=ct, card=nic)
    rules = BENCH_FIREWALL.replace(" flower ", " flower skip_hw ") if skip_hw else BENCH_FIREWALL
    err = io.StringIO()
    if run_batch_text(dp.tc, Options(), "firewall", rules, io.StringIO(), err):
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
    if card:
        dp.poll(now)
    return dp, stream


REPLAY_PASSES = 8  # passes over the stream per timed round (~0.1 s of software path)


def _replay(dp: Datapath, stream: list[tuple[str, Packet]], timer: Callable[[], float],
            seconds: float, want_path: str) -> tuple[int, list[float]]:
    """Replay `stream` for `seconds` (GC paused, virtual time 1 ms per pass) in
    rounds of REPLAY_PASSES passes, each round timed apart; every packet must be
    forwarded on `want_path`. (packets, each round's packets/s)."""
    receive = dp.receive
    now = 1000.0
    done = 0
    rates: list[float] = []
    per_round = len(stream) * REPLAY_PASSES
    before = dp.paths[want_path]
    gc.disable()
    try:
        start = timer()
        while True:
            began = timer()
            for _ in range(REPLAY_PASSES):
                for port, pkt in stream:
                    receive(port, pkt, now)
                now += 0.001
            ended = timer()
            done += per_round
            if ended > began:
                rates.append(per_round / (ended - began))
            if ended - start >= seconds and rates:
                break
    finally:
        gc.enable()
    took = dp.paths[want_path] - before
    if took != done:
        raise RuntimeError(f"{done - took} of {done} packets left the {want_path} path")
    return done, rates


def bench_sw_pps(timer: Callable[[], float], seconds: float = 1.0,
                 flows: int = 64) -> dict[str, Any]:
    """sw_pps: established TCP packets per second through the two-chain firewall
    on the software path: full TC and conntrack with window tracking for every
    packet (no card, so no flow table; one core, pre-built packets, GC paused
    while timing). `timer` is the clock (e.g. time.process_time): this module
    reads none. As ct_pps, sw_pps is the fastest round (what the code does when
    nothing else disturbs the core, as timeit reports the minimum) and
    sw_pps_median the median round (what a shared machine gave)."""
    dp, stream = bench_firewall(flows)
    done, rates = _replay(dp, stream, timer, seconds, SW)
    forwarded = sum(dp.receive(port, pkt, 1000.0).forwarded for port, pkt in stream)
    if forwarded != len(stream):
        raise RuntimeError(f"{len(stream) - forwarded} of {len(stream)} packets not forwarded")
    return {"sw_pps": round(max(rates)), "sw_pps_median": round(statistics.median(rates)),
            "sw_packets": done, "sw_flows": flows}


def bench_fastpath_pps(timer: Callable[[], float], seconds: float = 1.0,
                       flows: int = 64) -> dict[str, Any]:
    """sw_fastpath_pps: the same traffic with a card but every filter skip_hw, so
    established flows are answered by act_ct's software flow table (conntrack
    skipped), as the kernel's software path does for offloaded flows."""
    dp, stream = bench_firewall(flows, card=True, skip_hw=True)
    _, rates = _replay(dp, stream, timer, seconds, SW_FASTPATH)
    return {"sw_fastpath_pps": round(max(rates)),
            "sw_fastpath_pps_median": round(statistics.median(rates))}


def bench_hw_path_pps(timer: Callable[[], float], seconds: float = 1.0,
                      flows: int = 64) -> dict[str, Any]:
    """hw_path_pps: the same traffic handled by the card, one packet at a time
    through Datapath.receive (both chains run in the card, a CT table hit each)."""
    dp, stream = bench_firewall(flows, card=True)
    _, rates = _replay(dp, stream, timer, seconds, HW)
    return {"hw_path_pps": round(max(rates)),
            "hw_path_pps_median": round(statistics.median(rates))}


def bench_datapath(timer: Callable[[], float], seconds: float = 1.0, *,
                   progress: Callable[[str], None] | None = None, flows: int = 64,
                   hw_flows: int = 10_000, poll_flows: int = 500_000,
                   conns: int = 50_000) -> dict[str, Any]:
    """`ctlab bench datapath`: sw_pps (software path, conntrack per packet),
    hw_pps (card hits, batched: node.offload.bench), poll_1m_s (bulk poll of 1M
    hardware counters with the aging refresh: 500k bidirectional connections),
    bytes_per_conn (a tracked and offloaded connection, software entry included),
    plus sw_fastpath_pps and hw_path_pps. `progress` gets a line per figure."""
    from node.offload import bench as card_bench

    say = progress if progress is not None else (lambda line: None)
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("sw_pps", lambda: bench_sw_pps(timer, seconds, flows)),
        ("sw_fastpath_pps", lambda: bench_fastpath_pps(timer, seconds, flows)),
        ("hw_path_pps", lambda: bench_hw_path_pps(timer, seconds, flows)),
        ("hw_pps", lambda: card_bench.bench_hw_pps(timer, seconds, hw_flows,
                                                   min(4096, hw_flows))),
        ("poll_1m_s", lambda: card_bench.bench_poll(timer, poll_flows)),
        ("bytes_per_conn", lambda: card_bench.bench_bytes_per_conn(conns)),
    ]
    out: dict[str, Any] = {}
    for name, step in steps:
        say(f"datapath: {name} ...")
        got = step()
        out.update(got)
        say(f"datapath: {name} = {got[name]}")
    return out
