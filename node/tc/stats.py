"""Counters and times of actions and filters (gnet_stats_basic/queue, tcf_t)
and their iproute2 rendering (tc_util.c print_tcstats2_attr, print_tm).

Software and hardware are counted apart, as the kernel's bstats/bstats_hw:
`bytes`/`packets` are the totals, `bytes_hw`/`packets_hw` the part the offload
card reported (iproute2 prints "Sent software"/"Sent hardware" when the latter
is non-zero). Times are in the model's clock (seconds); dumps convert them to
USER_HZ ticks like jiffies_to_clock_t().
"""

from __future__ import annotations

from dataclasses import dataclass

from node.tc.out import PRINT_ANY, PRINT_FP, Out

USER_HZ = 100


@dataclass(slots=True)
class Stats:
    bytes: int = 0
    packets: int = 0
    drops: int = 0
    overlimits: int = 0
    requeues: int = 0
    bytes_hw: int = 0
    packets_hw: int = 0
    install: float = 0.0  # tcf_t: creation time
    lastuse: float = 0.0  # last packet (= install until one is seen)
    firstuse: float | None = None  # first packet

    @classmethod
    def created(cls, now: float) -> Stats:
        return cls(install=now, lastuse=now)

    def use(self, nbytes: int, now: float) -> None:
        """tcf_action_update_bstats + tcf_lastuse_update (software path)."""
        self.bytes += nbytes
        self.packets += 1
        self.lastuse = now
        if self.firstuse is None:
            self.firstuse = now

    def add_hw(self, nbytes: int, npackets: int, drops: int, lastuse: float) -> None:
        """tcf_action_update_stats(..., hw=true): counters the card reports in bulk."""
        self.bytes += nbytes
        self.packets += npackets
        self.bytes_hw += nbytes
        self.packets_hw += npackets
        self.drops += drops
        if npackets:
            self.lastuse = max(self.lastuse, lastuse)
            if self.firstuse is None:
                self.firstuse = lastuse

    def tm(self, now: float) -> tuple[int, int, int]:
        """tcf_tm_dump: (install, lastuse, firstuse) ages in USER_HZ ticks."""
        def ticks(t: float) -> int:
            return max(0, round((now - t) * USER_HZ))

        first = 0 if self.firstuse is None else ticks(self.firstuse)
        return ticks(self.install), ticks(self.lastuse), first


def print_tm(out: Out, stats: Stats, now: float) -> None:
    """print_tm: text in seconds, JSON in ticks; zero ages are left out."""
    install, lastuse, firstuse = stats.tm(now)
    if install:
        out.uint("installed", f" installed {install // USER_HZ} sec", install)
    if lastuse:
        out.uint("last_used", f" used {lastuse // USER_HZ} sec", lastuse)
    if firstuse:
        out.uint("first_used", f" firstused {firstuse // USER_HZ} sec", firstuse)


def print_stats2(out: Out, s: Stats, prefix: str) -> None:
    """print_tcstats2_attr for basic + basic_hw + queue stats (no rate estimator)."""
    out.fp(prefix)
    out.uint("bytes", f"Sent {s.bytes} bytes", s.bytes)
    out.uint("packets", f" {s.packets} pkt", s.packets)
    out.uint("drops", f" (dropped {s.drops}", s.drops)
    out.uint("overlimits", f", overlimits {s.overlimits}", s.overlimits)
    out.uint("requeues", f" requeues {s.requeues}) ", s.requeues)
    if s.bytes_hw or s.packets_hw:
        if s.bytes >= s.bytes_hw and s.packets >= s.packets_hw:
            sw_b, sw_p = s.bytes - s.bytes_hw, s.packets - s.packets_hw
            out.nl()
            out.fp(prefix)
            out.uint("sw_bytes", f"Sent software {sw_b} bytes", sw_b)
            out.uint("sw_packets", f" {sw_p} pkt", sw_p)
        out.nl()
        out.fp(prefix)
        out.uint("hw_bytes", f"Sent hardware {s.bytes_hw} bytes", s.bytes_hw)
        out.uint("hw_packets", f" {s.packets_hw} pkt", s.packets_hw)
    out.nl()
    out.fp(prefix)
    out.uint("backlog", "backlog 0b", 0, PRINT_ANY)
    out.uint("qlen", " 0p", 0, PRINT_ANY)
    out.uint(None, f" requeues {s.requeues}", s.requeues, PRINT_FP)
