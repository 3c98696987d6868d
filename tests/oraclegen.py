#!/usr/bin/env python3
"""oraclegen: seed-driven random packet cases for the kernel oracle.

The hand-written oracle fixtures (tests/fixtures/oracle/cases) were written by
people who knew the rules they were testing.  This generator builds a
differently biased corpus: randomized conversations that *mostly* behave like
real client/server traffic, with occasional perturbations, in the oracle's
case format (see shared/tools/kernel_oracle/README.md).  Recorded against the
real kernel, the cases become a holdout set for `ctlab ct replay --compare`.

    python3 tests/oraclegen.py --seed N --cases K --out FILE [--skip GLOB]... [--check]

writes K cases as {"cases": [...]} to FILE.  The output depends only on the
generator version, the seed, K, --family and the --skip globs (cases whose
names match are generated and then left out, so the other cases do not
change), so a corpus is regenerated bit-for-bit from its command line.  Each
case has its own RNG (derived from the seed and its index); case names are
gen_s<seed>_<index>_<family>_<v4|v6|mixed>, and every description starts with
"[oraclegen <family>]" and ends with the variants and perturbations used.
`--check` validates the cases with the oracle's own case loader (needs the
oracle tool; see --oracle-dir).

As a module:

    import oraclegen
    cases = oraclegen.generate(seed=1, count=100)      # list of case dicts
    oraclegen.FAMILIES                                 # name -> (weight, generator)

Case families (weights in FAMILIES):

* tcp_conv     one TCP conversation: handshake variants with random options
               (mss, wscale 0-14, sackok, timestamps), data in both directions,
               ACKs, delayed/cumulative ACKs, retransmissions, out-of-order and
               duplicated segments, SACK blocks, window changes and zero
               windows, keepalives; occasional perturbations (seq/ack off by
               small or large amounts, odd flag sets, RSTs at random points,
               SYNs/SYN-ACKs mid-connection, bad checksums, data past the
               window, FINs from either side); various closes and reopens;
               random sysctls (be_liberal, loose, ignore_invalid_rst,
               max_retrans, distinct timeouts, checksum).
* tcp_chaos    the same with a high perturbation rate (30-60 % of the steps).
* tcp_pickup   mid-stream pickup (tcp_loose 0/1), first packet from either side.
* tcp_multi    several TCP connections between the same hosts: port reuse,
               reversed tuples, RST-and-reconnect, ICMP errors.
* udp          UDP flows in both directions, sleeps around the 2 s stream
               boundary (never within STREAM_MARGIN of it), checksum 0 / bad,
               replies from other ports, distinct timeouts.
* icmp_echo    ICMP/ICMPv6 queries (echo, timestamp, info, mask, node info) with
               ids, matching and mismatching replies, unknown types.
* icmp_error   ICMP errors quoting existing flows from either side, from the
               endpoint or a router, truncated, wrong destination, unknown flow.
* gre          GRE v0 (with and without key) and v1 (PPTP call ids).
* generic      other IP protocols (ESP, OSPF, PIM, VRRP, 253, 254, ...).
* zones        flows with per-packet conntrack zones (and a case default zone).
* ftp          FTP control dialogues (PORT, EPRT, PASV, EPSV) with correct
               seq/ack and the data connections; occasional perturbations.
* tftp         TFTP RRQ/WRQ transfers answered from new ports.
* expiry       short timeouts that expire during a sleep (>= 0.5 s margin).
* mixed        a bit of everything in one case, IPv4 and IPv6 together.

About a third of all cases are IPv6.  Things the oracle cannot run are never
generated: no SCTP (132), UDP-Lite (136) or DCCP (33), no fragments, no NAT.

Timing.  The oracle runs in real time, 20-80 ms per packet (more on a loaded
machine), while `ct replay` advances its virtual clock only on sleep steps.
The generator keeps a lower bound (the sum of sleeps, which is also what the
replay sees) and an upper bound (sleeps + PKT_MAX per packet) of the time
between packets and only emits a packet when both bounds fall on the same side
of every time boundary it could hit: the UDP (and TFTP) 2 s stream rule
+- STREAM_MARGIN, and, in the expiry family, timeouts +- EXPIRY_MARGIN.
Sleep steps are at most MAX_SLEEP (2.5 s), at most CASE_SLEEP_CAP per case and
FILE_SLEEP_PER_CASE x K per file.

Determinism of the recording.  Besides timing, the only nondeterminism in the
oracle's results is the order of the expectation dump; the generator never
has two expectations outstanding at once (one FTP control connection per case,
TFTP requests reuse the client port while an expectation may be pending).

Only the Python standard library is used.
"""

from __future__ import annotations

import argparse
import fnmatch
import ipaddress
import json
import os
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# ------------------------------------------------------------------ constants

HOST = {4: {"A": "198.18.1.2", "B": "198.19.1.2"},
        6: {"A": "2001:db8:1::2", "B": "2001:db8:2::2"}}
OTHER = {"A": "B", "B": "A"}
MOD32 = 1 << 32

PKT_MAX = 0.2          # upper bound of the oracle's real time per packet (s)
STREAM = 2.0           # UDP: an entry older than this gets the stream timeout
STREAM_MARGIN = 0.3    # never let a UDP packet land within this of STREAM
EXPIRY_MARGIN = 0.5    # distance kept from a timeout that could expire
MAX_SLEEP = 2.5        # longest single sleep step
CASE_SLEEP_CAP = 5.0   # most sleep in one case
FILE_SLEEP_PER_CASE = 0.15   # sleep budget of a generated file: this much per case
MAX_PAYLOAD = 1400     # keeps every packet below a 1500-byte MTU (v6 + options)

TCP_TIMEOUTS = ["syn_sent", "syn_recv", "established", "fin_wait", "close_wait",
                "last_ack", "time_wait", "close", "max_retrans", "unacknowledged"]
# Generic protocols that are safe in both families: not an IPv6 extension
# header, not a tunnel R could decapsulate, and not one the oracle crashes on.
GENERIC_PROTOS = [50, 89, 103, 112, 115, 99, 253, 254, 200]


def sc(name: str) -> str:
    """Full name of a netfilter sysctl (the oracle adds net.netfilter.)."""
    return f"nf_conntrack_{name}"


# ------------------------------------------------------------------ addresses

def rand_addr(rng: random.Random, side: str, fam: int) -> str:
    """A random address on `side` that the oracle accepts (not the link net)."""
    if fam == 4:
        base = 18 if side == "A" else 19
        return f"198.{base}.{rng.randint(2, 254)}.{rng.randint(1, 254)}"
    net = 1 if side == "A" else 2
    return str(ipaddress.IPv6Address(
        f"2001:db8:{net}:{rng.randint(1, 0xffff):x}::{rng.randint(1, 0xffff):x}"))


def router_addr(rng: random.Random, side: str, fam: int) -> str:
    """An address of a 'router' on `side` that could send ICMP errors."""
    if fam == 4:
        base = 18 if side == "A" else 19
        return f"198.{base}.{rng.choice([5, 9, 77, 200])}.{rng.choice([1, 254])}"
    net = 1 if side == "A" else 2
    return f"2001:db8:{net}:{rng.choice([5, 9, 77, 200])}::1"


def ephemeral(rng: random.Random) -> int:
    return rng.choice([rng.randint(1024, 65535), rng.randint(32768, 60999),
                       rng.randint(49152, 65535)])


def server_port(rng: random.Random, avoid: tuple[int, ...] = (21, 69)) -> int:
    while True:
        p = rng.choice([80, 443, 22, 25, 110, 143, 3306, 5432, 8080, 8443, 53, 123,
                        rng.randint(1, 1023), rng.randint(1024, 65535)])
        if p not in avoid:
            return p


# ------------------------------------------------------------------ case builder

class Case:
    """A case under construction, with the time bookkeeping described above."""

    def __init__(self, name: str, family: int, description: str = "",
                 sleep_budget: float = CASE_SLEEP_CAP) -> None:
        self.name = name
        self.sleep_budget = min(sleep_budget, CASE_SLEEP_CAP)
        self.family = family
        self.description = description
        self.settings: dict[str, Any] = {}
        if family == 6:
            self.settings["family"] = 6
        self.sysctl: dict[str, Any] = {}
        self.packets: list[dict[str, Any]] = []
        self.t = 0.0                  # sum of sleeps so far (lower bound of elapsed time)
        self.n = 0                    # packets so far
        self.slept = 0.0
        # UDP stream rule: key -> candidate creation points (t, n); key in sure
        # once a packet surely created the entry.
        self.stream_cands: dict[Any, list[tuple[float, int]]] = {}
        self.stream_sure: set[Any] = set()
        self.tags: list[str] = []

    # elapsed-time bounds since a point (t0, n0), for a packet sent now
    def bounds(self, t0: float, n0: int) -> tuple[float, float]:
        lo = self.t - t0
        return lo, lo + PKT_MAX * (self.n - n0 + 1) + 0.05

    def stream_ok(self, key: Any) -> bool:
        for t0, n0 in self.stream_cands.get(key, []):
            lo, hi = self.bounds(t0, n0)
            if not (hi < STREAM - STREAM_MARGIN or lo > STREAM + STREAM_MARGIN):
                return False
        return True

    def stream_note(self, key: Any, sure: bool) -> None:
        if key in self.stream_sure:
            return
        self.stream_cands.setdefault(key, []).append((self.t, self.n))
        if sure:
            self.stream_sure.add(key)

    def add(self, pkt: dict[str, Any]) -> dict[str, Any]:
        if self.family == 6 and pkt.get("family") == 6:
            del pkt["family"]
        self.packets.append(pkt)
        self.n += 1
        return pkt

    def can_sleep(self, s: float) -> bool:
        return self.slept + s <= self.sleep_budget + 1e-9

    def sleep(self, s: float, note: str = "") -> None:
        s = round(min(s, MAX_SLEEP), 2)
        step: dict[str, Any] = {"sleep": s}
        if note:
            step["note"] = note
        self.packets.append(step)
        self.t += s
        self.slept += s

    def to_dict(self) -> dict[str, Any]:
        settings = dict(self.settings)
        if self.sysctl:
            settings["sysctl"] = dict(sorted(self.sysctl.items()))
        out: dict[str, Any] = {"name": self.name}
        desc = self.description
        if self.tags:
            desc += " [" + ", ".join(self.tags) + "]"
        out["description"] = desc.strip()
        if settings:
            out["settings"] = settings
        out["packets"] = self.packets
        return out


@dataclass
class Flow:
    """Endpoints of one flow.  Side A is on A's network, side B on B's."""
    proto: Any
    fam: int
    a: str
    b: str
    aport: int = 0
    bport: int = 0
    zone: int | None = None

    def addr(self, side: str) -> str:
        return self.a if side == "A" else self.b

    def port(self, side: str) -> int:
        return self.aport if side == "A" else self.bport

    def base(self, side: str, case_family: int) -> dict[str, Any]:
        """Packet fields for a packet sent by `side` on this flow."""
        p: dict[str, Any] = {"from": side}
        if self.fam != case_family:
            p["family"] = self.fam
        src, dst = self.addr(side), self.addr(OTHER[side])
        if src != HOST[self.fam][side]:
            p["src"] = src
        if dst != HOST[self.fam][OTHER[side]]:
            p["dst"] = dst
        p["proto"] = self.proto
        if self.proto in ("tcp", "udp"):
            p["sport"], p["dport"] = self.port(side), self.port(OTHER[side])
        if self.zone is not None:
            p["zone"] = self.zone
        return p

    def inner(self, side: str) -> dict[str, Any]:
        """Fields of a quoted packet that `side` sent on this flow."""
        p: dict[str, Any] = {"from": side, "proto": self.proto}
        p["src"], p["dst"] = self.addr(side), self.addr(OTHER[side])
        if self.proto in ("tcp", "udp"):
            p["sport"], p["dport"] = self.port(side), self.port(OTHER[side])
        return p

    def stream_key(self, zone: int | None = None) -> Any:
        z = self.zone if zone is None else zone
        return (self.proto, self.fam, frozenset(((self.a, self.aport), (self.b, self.bport))), z)


def choose(rng: random.Random, weighted: list[tuple[Any, float]]) -> Any:
    total = sum(w for _, w in weighted)
    x = rng.random() * total
    for item, w in weighted:
        x -= w
        if x < 0:
            return item
    return weighted[-1][0]


def pick_family(rng: random.Random) -> int:
    return 6 if rng.random() < 0.34 else 4


def small_off(rng: random.Random) -> int:
    return rng.choice([-1, 1]) * rng.choice([1, 1, 2, 3, 7, 10, 50, 100, 999])


def large_off(rng: random.Random) -> int:
    return rng.choice([-1, 1]) * rng.choice([70000, 200000, 1 << 20, 5_000_000, 1 << 30,
                                             (1 << 31) - 1, rng.randint(100000, 1 << 31)])


# ------------------------------------------------------------------ TCP model

@dataclass
class End:
    """One TCP endpoint as the generator imagines it."""
    side: str
    isn: int
    snd_nxt: int = 0
    snd_una: int = 0
    rcv_nxt: int | None = None
    ooo: list[tuple[int, int]] = field(default_factory=list)   # received beyond rcv_nxt
    win: int = 65535                   # receive window in bytes
    adv: int = 65535                   # window (bytes) last advertised to the peer
    ws_off: int | None = None          # wscale offered in its SYN
    shift: int = 0                     # negotiated shift for its own window field
    sack_off: bool = False
    ts_off: bool = False
    mss: int = 1460
    tsval: int = 0
    ts_recent: int = 0
    fin_seq: int | None = None         # seq of its FIN, once sent
    sent: list[tuple[int, int, str]] = field(default_factory=list)  # (seq, len, flags)

    def __post_init__(self) -> None:
        self.snd_nxt = self.snd_una = self.isn


class Tcp:
    """A TCP connection between flow.a (client, side A unless swapped) and
    flow.b, emitting packets into a Case.  The model keeps each side's
    sequence space, receive state, windows and negotiated options; a
    'perturbation' is a packet the model does not believe in."""

    def __init__(self, rng: random.Random, case: Case, flow: Flow,
                 client: str = "A") -> None:
        self.rng = rng
        self.case = case
        self.flow = flow
        self.client = client
        self.server = OTHER[client]
        self.ends = {s: End(s, self.rand_isn()) for s in ("A", "B")}
        self.sack = False
        self.ts = False
        self.established = False
        self.closed = False            # the model considers the connection over
        self.reset = False

    # -- helpers
    def rand_isn(self) -> int:
        r = self.rng.random()
        if r < 0.1:
            return MOD32 - self.rng.randint(1, 3000)       # wraps soon
        if r < 0.15:
            return self.rng.randint(0, 1000)
        return self.rng.randint(0, MOD32 - 1)

    def e(self, side: str) -> End:
        return self.ends[side]

    def peer(self, side: str) -> End:
        return self.ends[OTHER[side]]

    def win_field(self, end: End, syn: bool) -> int:
        if syn:
            return min(65535, end.win)
        return min(65535, end.win >> end.shift)

    def ts_opt(self, end: End) -> list[Any]:
        end.tsval += self.rng.randint(1, 40)
        return ["nop", "nop", ["ts", end.tsval % MOD32, end.ts_recent % MOD32]]

    def sack_blocks(self, end: End, limit: int) -> list[list[int]]:
        blocks = sorted(end.ooo, key=lambda x: -x[0])[:limit]
        return [[lft % MOD32, rgt % MOD32] for lft, rgt in blocks]

    def emit(self, side: str, flags: str, seq: int | None = None, ack: int | None = None,
             length: int = 0, payload: str | None = None, win: int | None = None,
             options: list[Any] | None = None, note: str = "", extra: dict | None = None,
             track: bool = True, deliver: bool = True, auto_opts: bool = True) -> dict:
        """Emit one segment.  track: the sender's state advances; deliver: the
        receiver gets it (False = lost after R)."""
        end, peer = self.e(side), self.peer(side)
        if seq is None:
            seq = end.snd_nxt
        if ack is None and "A" in flags:
            ack = end.rcv_nxt if end.rcv_nxt is not None else 0
        syn = "S" in flags
        if win is None:
            win = self.win_field(end, syn)
        if payload is not None:
            length = len(payload.encode())
        p = self.flow.base(side, self.case.family)
        p["flags"] = flags
        p["seq"] = seq % MOD32
        if ack is not None:
            p["ack"] = ack % MOD32
        p["win"] = win
        opts = list(options) if options is not None else []
        if options is None and auto_opts and not syn:
            if self.ts and "R" not in flags:
                opts += self.ts_opt(end)
            if self.sack and end.ooo and "A" in flags and "R" not in flags:
                blocks = self.sack_blocks(end, 3 if self.ts else 4)
                opts += ["nop", "nop", ["sack", blocks]]
        if opts:
            p["options"] = opts
        if payload is not None:
            p["payload"] = payload
        elif length:
            p["payload_len"] = length
        if extra:
            p.update(extra)
        if note:
            p["note"] = note
        self.case.add(p)
        seglen = length + (1 if syn else 0) + (1 if "F" in flags else 0)
        end.adv = win if syn else win << end.shift
        if track:
            end.snd_nxt = max(end.snd_nxt, seq + seglen)
            if length or "F" in flags:
                end.sent.append((seq, length, flags))
            if "F" in flags:
                end.fin_seq = seq + length
            if deliver:
                self.deliver(peer, seq, seglen, side)
                if "A" in flags and ack is not None:
                    peer.snd_una = max(peer.snd_una, min(ack, peer.snd_nxt))
                if opts and self.ts:
                    peer.ts_recent = end.tsval
        return p

    def deliver(self, rcv: End, seq: int, seglen: int, _from: str) -> None:
        if rcv.rcv_nxt is None or seglen == 0:
            return
        lo, hi = seq, seq + seglen
        if hi <= rcv.rcv_nxt:
            return
        if lo <= rcv.rcv_nxt:
            rcv.rcv_nxt = hi
        else:
            rcv.ooo.append((lo, hi))
        changed = True
        while changed:
            changed = False
            for iv in list(rcv.ooo):
                if iv[1] <= rcv.rcv_nxt:
                    rcv.ooo.remove(iv)
                    changed = True
                elif iv[0] <= rcv.rcv_nxt:
                    rcv.rcv_nxt = iv[1]
                    rcv.ooo.remove(iv)
                    changed = True
        # merge overlapping intervals (for SACK blocks)
        merged: list[tuple[int, int]] = []
        for lo2, hi2 in sorted(rcv.ooo):
            if merged and lo2 <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi2))
            else:
                merged.append((lo2, hi2))
        rcv.ooo = merged

    # -- SYN options
    def syn_options(self, end: End, reply_to: End | None) -> list[Any]:
        rng = self.rng
        if reply_to is None:
            end.mss = choose(rng, [(1460, 5), (1440, 1), (1360, 1), (1220, 1), (536, 1),
                                   (rng.randint(1, 65535), 0.5), (8960, 0.3)])
            end.sack_off = rng.random() < 0.75
            end.ts_off = rng.random() < 0.6
            end.ws_off = choose(rng, [(None, 2), (rng.randint(0, 14), 7), (7, 3),
                                      (rng.choice([15, 16, 255]), 0.2)])
            use_mss = rng.random() < 0.92
        else:
            # the responder mostly mirrors what it was offered
            mirror = rng.random() < 0.9
            end.mss = choose(rng, [(1460, 5), (1400, 1), (1380, 1), (536, 0.5)])
            end.sack_off = (reply_to.sack_off and mirror) or (not mirror and rng.random() < 0.5)
            end.ts_off = (reply_to.ts_off and mirror) or (not mirror and rng.random() < 0.3)
            if reply_to.ws_off is not None and mirror:
                end.ws_off = choose(rng, [(rng.randint(0, 14), 6), (7, 3), (0, 1)])
            elif not mirror and rng.random() < 0.5:
                end.ws_off = rng.randint(0, 14)
            else:
                end.ws_off = None
            use_mss = rng.random() < 0.95
        end.tsval = rng.randint(1, MOD32 - 1)
        style = rng.choice(["linux", "windows", "random"])
        opts: list[Any] = []
        ts = ["ts", end.tsval, (reply_to.tsval if reply_to and reply_to.ts_off else 0)]
        if style == "linux":
            if use_mss:
                opts.append(["mss", end.mss])
            if end.sack_off and end.ts_off:
                opts += ["sackok", ts]
            elif end.ts_off:
                opts += ["nop", "nop", ts]
            elif end.sack_off:
                opts += ["nop", "nop", "sackok"]
            if end.ws_off is not None:
                opts += ["nop", ["wscale", end.ws_off]]
        elif style == "windows":
            if use_mss:
                opts.append(["mss", end.mss])
            if end.ws_off is not None:
                opts += ["nop", ["wscale", end.ws_off]]
            if end.ts_off:
                opts += ["nop", "nop", ts]
            if end.sack_off:
                opts += ["nop", "nop", "sackok"]
        else:
            items: list[Any] = []
            if use_mss:
                items.append([["mss", end.mss]])
            if end.sack_off:
                items.append(["sackok"])
            if end.ts_off:
                items.append([ts])
            if end.ws_off is not None:
                items.append([["wscale", end.ws_off]])
            rng.shuffle(items)
            for it in items:
                if rng.random() < 0.4:
                    opts.append("nop")
                opts += it
        if not use_mss:
            end.mss = 536
        return opts

    def choose_syn_window(self, end: End) -> None:
        end.win = choose(self.rng, [(64240, 4), (65535, 3), (29200, 2), (8192, 1), (14600, 1),
                                    (self.rng.randint(1, 65535), 1), (0, 0.15), (1024, 0.5)])

    def negotiate(self) -> None:
        a, b = self.e(self.client), self.e(self.server)
        if a.ws_off is not None and b.ws_off is not None:
            a.shift, b.shift = min(a.ws_off, 14), min(b.ws_off, 14)
        else:
            a.shift = b.shift = 0
        self.sack = a.sack_off and b.sack_off
        self.ts = a.ts_off and b.ts_off
        for end in (a, b):
            end.win = self.established_window(end)

    def established_window(self, end: End) -> int:
        rng = self.rng
        if end.shift == 0:
            return choose(rng, [(65535, 3), (64240, 3), (29200, 1), (8192, 1),
                                (rng.randint(512, 65535), 2)])
        w = choose(rng, [(65535, 1), (131072, 2), (262144, 2), (1 << 20, 1),
                         (rng.randint(1024, 1 << 22), 2), (8192, 0.5)])
        return min(w, 65535 << end.shift)

    # -- handshake
    def handshake(self, variant: str | None = None) -> str:
        rng = self.rng
        c, s = self.client, self.server
        ce, se = self.e(c), self.e(s)
        if variant is None:
            variant = choose(rng, [("normal", 40), ("syn_retx", 6), ("syn_new_isn", 4),
                                   ("synack_retx", 5), ("simultaneous", 3), ("refused", 4),
                                   ("bad_synack", 4), ("ack_in_synsent", 3), ("data_on_ack", 6),
                                   ("no_third_ack", 4), ("dup_third_ack", 3), ("rst_in_synrecv", 2),
                                   ("synack_no_syn", 1.5), ("syn_with_data", 1.5),
                                   ("fin_in_synrecv", 1), ("rst_in_synsent", 1.5),
                                   ("synack_new_isn", 1), ("synack_then_syn", 1),
                                   ("synack_with_data", 0.7)])
        self.case.tags.append(f"handshake={variant}")
        self.choose_syn_window(ce)
        copts = self.syn_options(ce, None)
        if variant == "syn_with_data":
            self.emit(c, "S", options=copts, length=rng.randint(1, 200), note="SYN with data",
                      track=False)
            ce.snd_nxt = ce.isn + 1
        elif variant == "synack_no_syn":
            self.emit(s, "SA", seq=se.isn, ack=rng.randint(0, MOD32 - 1),
                      note="SYN/ACK out of nowhere", track=False, options=[["mss", 1460]])
            self.emit(c, "S", options=copts, note="SYN")
        else:
            self.emit(c, "S", options=copts, note="SYN")
        se.rcv_nxt = ce.isn + 1
        if variant == "syn_retx":
            for _ in range(rng.randint(1, 3)):
                self.emit(c, "S", seq=ce.isn, options=copts, note="SYN retransmitted", track=False)
        elif variant == "syn_new_isn":
            old = ce.isn
            delta = rng.choice([rng.randint(1, 100000), -rng.randint(1, 100000),
                                rng.randint(1 << 20, 1 << 31)])
            ce.isn = (old + delta) % MOD32
            ce.snd_nxt = ce.snd_una = ce.isn + 1
            self.emit(c, "S", seq=ce.isn, options=copts, note=f"SYN again, ISN {delta:+d}",
                      track=False)
            if rng.random() < 0.3:
                # the server answers the first SYN
                se.rcv_nxt = old + 1
            else:
                se.rcv_nxt = ce.isn + 1
        elif variant == "ack_in_synsent":
            self.emit(s, "A", seq=rng.randint(0, MOD32 - 1),
                      ack=ce.isn + 1 + rng.choice([0, 1, 5000]),
                      note="bare ACK from the server in SYN_SENT", track=False)
        elif variant == "refused":
            self.emit(s, "RA", seq=0, ack=ce.isn + 1, win=0, note="connection refused", track=False)
            if rng.random() < 0.6:
                self.ends[c] = ce = End(c, self.rand_isn())
                self.choose_syn_window(ce)
                copts = self.syn_options(ce, None)
                self.emit(c, "S", options=copts, note="SYN retried")
                se.rcv_nxt = ce.isn + 1
            else:
                self.closed = True
                return variant
        elif variant == "simultaneous":
            self.choose_syn_window(se)
            sopts = self.syn_options(se, None)
            self.emit(s, "S", options=sopts, note="crossing SYN from the server")
            ce.rcv_nxt = se.isn + 1
            self.emit(c, "SA", seq=ce.isn, ack=se.isn + 1, options=copts, note="client SYN/ACK",
                      track=False)
            self.emit(s, "SA", seq=se.isn, ack=ce.isn + 1, options=sopts, note="server SYN/ACK",
                      track=False)
            ce.snd_nxt = ce.isn + 1
            se.snd_nxt = se.isn + 1
            # negotiate on the SYNs: both offered independently
            self.negotiate_simultaneous()
            if rng.random() < 0.7:
                self.emit(c, "A", note="ACK")
            self.established = True
            return variant
        elif variant == "rst_in_synsent":
            if rng.random() < 0.5:
                self.emit(c, "R", seq=ce.isn + 1, note="client aborts with RST", track=False)
            else:
                self.emit(s, "R", seq=rng.choice([0, rng.randint(0, MOD32 - 1)]),
                          note="server RST without ACK", track=False)
            if rng.random() < 0.4:
                self.closed = True
                return variant
        elif variant == "bad_synack":
            off = small_off(rng) if rng.random() < 0.6 else large_off(rng)
            self.choose_syn_window(se)
            sopts = self.syn_options(se, ce)
            self.emit(s, "SA", seq=se.isn, ack=ce.isn + 1 + off, options=sopts,
                      note=f"SYN/ACK acking {off:+d}", track=False)
        # the SYN/ACK
        if variant != "bad_synack":
            self.choose_syn_window(se)
            sopts = self.syn_options(se, ce)
        ack = se.rcv_nxt
        if variant == "synack_with_data":
            self.emit(s, "SA", seq=se.isn, ack=ack, options=sopts, length=self.rng.randint(1, 100),
                      note="SYN/ACK carrying data", track=False)
        self.emit(s, "SA", seq=se.isn, ack=ack, options=sopts, note="SYN/ACK")
        ce.rcv_nxt = se.isn + 1
        ce.snd_una = max(ce.snd_una, ack)
        if variant == "synack_retx":
            self.emit(s, "SA", seq=se.isn, ack=ack, options=sopts, note="SYN/ACK retransmitted",
                      track=False)
        elif variant == "synack_new_isn":
            old = se.isn
            se.isn = self.rand_isn()
            se.snd_nxt = se.snd_una = se.isn + 1
            ce.rcv_nxt = se.isn + 1
            self.emit(s, "SA", seq=se.isn, ack=ack, options=sopts,
                      note="SYN/ACK again with another ISN", track=False)
            if rng.random() < 0.3:
                ce.rcv_nxt = old + 1          # the client answers the first one
        elif variant == "synack_then_syn":
            self.emit(c, "S", seq=ce.isn, options=copts, note="SYN retransmitted after the SYN/ACK",
                      track=False)
            if rng.random() < 0.5:
                self.emit(s, "SA", seq=se.isn, ack=ack, options=sopts, note="SYN/ACK again",
                          track=False)
        self.negotiate()
        if variant == "fin_in_synrecv":
            self.emit(c, "FA", note="client FIN instead of the third ACK")
            self.ack(s, note="server ACKs the FIN")
            self.established = True
            return variant
        if variant == "rst_in_synrecv":
            who = rng.choice([c, s])
            self.emit(who, "R", note="RST during the handshake", track=False)
            self.reset = True
            if rng.random() < 0.5:
                self.closed = True
                return variant
        if variant == "no_third_ack":
            self.data(c, note="data without the third ACK")
        elif variant == "data_on_ack":
            self.data(c, note="third ACK carries data")
        else:
            self.emit(c, "A", note="ACK")
            if variant == "dup_third_ack":
                self.emit(c, "A", seq=ce.snd_nxt, ack=ce.rcv_nxt, note="ACK again", track=False)
        self.established = True
        return variant

    def negotiate_simultaneous(self) -> None:
        self.negotiate()

    # -- data
    def data_len(self, side: str) -> int:
        rng = self.rng
        end = self.e(side)
        peer = self.peer(side)
        n = choose(rng, [(1, 0.5), (rng.randint(2, 100), 2.5), (rng.randint(100, 536), 2),
                         (rng.randint(536, MAX_PAYLOAD), 3), (min(end.mss, MAX_PAYLOAD), 1.5)])
        n = max(1, min(n, MAX_PAYLOAD, max(1, peer.mss)))
        avail = peer.adv - (end.snd_nxt - end.snd_una)
        if avail < n:
            n = max(1, avail)
        return n

    def can_send(self, side: str) -> bool:
        end, peer = self.e(side), self.peer(side)
        return end.fin_seq is None and peer.adv - (end.snd_nxt - end.snd_una) > 0

    def data(self, side: str, n: int | None = None, note: str = "", payload: str | None = None,
             deliver: bool = True, flags: str | None = None) -> dict:
        if n is None and payload is None:
            n = self.data_len(side)
        if flags is None:
            flags = "PA" if self.rng.random() < 0.6 else "A"
        return self.emit(side, flags, length=n or 0, payload=payload,
                         note=note or f"{side} data {n if payload is None else len(payload)}",
                         deliver=deliver)

    def ack(self, side: str, note: str = "") -> dict:
        return self.emit(side, "A", note=note or f"{side} ACK")

    def retransmit(self, side: str, which: str = "last", times: int = 1) -> None:
        end = self.e(side)
        if not end.sent:
            return
        if which == "last":
            seq, ln, flags = end.sent[-1]
        elif which == "unacked":
            un = [x for x in end.sent if x[0] + x[1] > end.snd_una]
            if not un:
                seq, ln, flags = end.sent[-1]
            else:
                seq, ln, flags = un[0]
        else:
            seq, ln, flags = self.rng.choice(end.sent)
        for i in range(times):
            self.emit(side, flags, seq=seq, length=ln, note=f"{side} retransmits seq+{ln}"
                      + (f" (#{i + 1})" if times > 1 else ""))

    # -- the conversation
    def data_phase(self, steps: int, perturb_rate: float) -> None:
        rng = self.rng
        c, s = self.client, self.server
        talker = c
        for _ in range(steps):
            if self.closed:
                return
            if rng.random() < perturb_rate:
                self.perturb()
                continue
            ev = choose(rng, [("burst", 30), ("ack", 10), ("retx", 6), ("ooo", 5), ("lost", 4),
                              ("dup", 4), ("window", 5), ("keepalive", 2), ("probe", 2),
                              ("turn", 12), ("piggy", 8), ("sack", 3), ("half_close", 1.5)])
            if ev == "turn":
                talker = OTHER[talker]
                ev = "burst"
            other = OTHER[talker]
            if ev == "burst":
                if not self.can_send(talker):
                    if self.e(talker).fin_seq is None:
                        oe = self.e(other)
                        oe.win = max(oe.win, 8192 << oe.shift if oe.shift < 3 else 65536)
                        self.ack(other, note=f"{other} ACK (window opens)")
                    continue
                for _i in range(rng.choice([1, 1, 1, 1, 2, 2, 3])):
                    if not self.can_send(talker):
                        break
                    self.data(talker)
                if rng.random() < 0.55 and self.e(other).rcv_nxt is not None:
                    self.ack(other)
            elif ev == "piggy":
                if self.can_send(other):
                    self.data(other, note=f"{other} data with piggy-backed ACK")
                    talker = other
            elif ev == "ack":
                self.ack(rng.choice([c, s]))
            elif ev == "retx":
                who = rng.choice([c, s])
                times = choose(rng, [(1, 6), (2, 2), (3, 2), (4, 1)])
                self.retransmit(who, rng.choice(["last", "unacked", "any"]), times)
            elif ev == "ooo":
                if not self.can_send(talker):
                    continue
                end = self.e(talker)
                n1, n2 = self.data_len(talker), max(1, self.data_len(talker) // 2)
                seq1 = end.snd_nxt
                self.emit(talker, "PA", seq=seq1 + n1, length=n2, note=f"{talker} segment 2 first")
                self.emit(talker, "A", seq=seq1, length=n1, note=f"{talker} segment 1 late")
                if rng.random() < 0.8:
                    self.ack(other)
            elif ev == "lost":
                if not self.can_send(talker):
                    continue
                end = self.e(talker)
                n1 = self.data_len(talker)
                seq1 = end.snd_nxt
                before_r = rng.random() < 0.5
                if before_r:
                    end.snd_nxt += n1         # R never sees it
                    end.sent.append((seq1, n1, "A"))
                else:
                    self.data(talker, n=n1, note=f"{talker} data lost after R", deliver=False)
                if self.can_send(talker):
                    self.data(talker, note=f"{talker} data after a lost segment")
                if rng.random() < 0.8:
                    self.ack(other, note=f"{other} dup ACK" + (" with SACK" if self.sack else ""))
                self.emit(talker, "A", seq=seq1, length=n1,
                          note=f"{talker} retransmits the lost segment")
                self.ack(other)
            elif ev == "dup":
                if self.case.packets and "flags" in self.case.packets[-1] \
                        and self.case.packets[-1].get("proto") == "tcp":
                    dup = dict(self.case.packets[-1])
                    dup["note"] = "duplicate of the previous segment"
                    dup.pop("ip_id", None)
                    self.case.add(dup)
            elif ev == "window":
                who = rng.choice([c, s])
                end = self.e(who)
                end.win = choose(rng, [(0, 3), (self.rng.randint(1, 2000), 2),
                                       (self.established_window(end), 4)])
                self.ack(who, note=f"{who} window update to {end.win} bytes")
            elif ev == "keepalive":
                who = rng.choice([c, s])
                end = self.e(who)
                ln = rng.choice([0, 1])
                self.emit(who, "A", seq=end.snd_nxt - 1, length=ln, note=f"{who} keepalive",
                          track=False)
                if rng.random() < 0.7:
                    self.ack(OTHER[who], note="keepalive answer")
            elif ev == "probe":
                who = rng.choice([c, s])
                end, peer = self.e(who), self.peer(who)
                if peer.adv == 0 and end.fin_seq is None:
                    self.emit(who, "A", length=1, note=f"{who} zero-window probe", track=False)
                    if rng.random() < 0.6:
                        peer.win = self.established_window(peer)
                        self.ack(OTHER[who], note=f"{OTHER[who]} window reopens")
                else:
                    self.ack(who)
            elif ev == "sack":
                who = rng.choice([c, s])
                end = self.e(who)
                if end.ooo:
                    self.ack(who, note=f"{who} ACK with SACK")
                else:
                    # a plausible D-SACK for data already received
                    if end.rcv_nxt is not None and self.sack \
                            and end.rcv_nxt - self.peer(who).isn > 200:
                        blk = [[(end.rcv_nxt - 100) % MOD32, end.rcv_nxt % MOD32]]
                        opts = (self.ts_opt(end) if self.ts else []) + ["nop", "nop", ["sack", blk]]
                        self.emit(who, "A", options=opts, note=f"{who} ACK with D-SACK")
            elif ev == "half_close":
                who = rng.choice([c, s])
                if self.e(who).fin_seq is None:
                    self.emit(who, "FA", note=f"{who} half-closes")
                    self.ack(OTHER[who])

    def perturb(self) -> None:
        rng = self.rng
        c, s = self.client, self.server
        who = rng.choice([c, s])
        end = self.e(who)
        kind = choose(rng, [("seq_small", 8), ("seq_large", 6), ("ack_small", 6), ("ack_large", 5),
                            ("flags", 8), ("rst", 7), ("syn_mid", 4), ("synack_mid", 2),
                            ("bad_csum", 3), ("ack_unseen", 3), ("sack_beyond", 3),
                            ("past_window", 5), ("urg", 1.5), ("old_data", 3), ("fin_mid", 3),
                            ("zero_win_data", 2), ("ts_old", 1.5)])
        self.case.tags.append(f"perturb={kind}")
        if kind == "seq_small" or kind == "seq_large":
            off = small_off(rng) if kind == "seq_small" else large_off(rng)
            n = self.data_len(who)
            self.emit(who, "PA", seq=end.snd_nxt + off, length=n,
                      note=f"{who} data with seq {off:+d}", track=False)
        elif kind in ("ack_small", "ack_large"):
            off = small_off(rng) if kind == "ack_small" else large_off(rng)
            n = rng.choice([0, 0, self.data_len(who)])
            self.emit(who, "PA" if n else "A", ack=(end.rcv_nxt or 0) + off, length=n,
                      note=f"{who} {'data' if n else 'ACK'} with ack {off:+d}", track=False)
        elif kind == "flags":
            flags = rng.choice(["", "F", "SF", "SR", "SRA", "FPU", "U", "PU", "FR", "FRA", "SFA",
                                "P", "SFPU", "SPA", "RP", "RPA", "AEC", "SEC", "PAU", "FPUSRAEC",
                                "E", "C", "SAE", "RU"])
            n = rng.choice([0, 0, 10])
            self.emit(who, flags, ack=end.rcv_nxt if "A" in flags else rng.choice([None, 0]),
                      length=n, note=f"{who} odd flags {flags!r}", track=False)
        elif kind == "rst":
            self.rst(who)
        elif kind == "syn_mid":
            isn = rng.choice([self.e(who).isn, self.rand_isn(),
                              end.snd_nxt + rng.randint(1, 100000)])
            self.emit(who, "S", seq=isn, win=self.win_field(end, True),
                      options=self.syn_options_copy(end), note=f"{who} SYN mid-connection",
                      track=False)
            if rng.random() < 0.4:
                other = OTHER[who]
                oe = self.e(other)
                self.emit(other, "SA",
                          seq=oe.snd_nxt - 1 if rng.random() < 0.5 else self.rand_isn(),
                          ack=isn + 1, options=[["mss", 1460]], note=f"{other} SYN/ACK to it",
                          track=False)
                if rng.random() < 0.5:
                    self.emit(who, "A", seq=isn + 1, ack=oe.snd_nxt, note=f"{who} ACK (resync)",
                              track=False)
        elif kind == "synack_mid":
            self.emit(who, "SA", seq=end.isn, ack=self.peer(who).snd_nxt,
                      win=self.win_field(end, True), note=f"{who} SYN/ACK mid-connection",
                      track=False)
        elif kind == "bad_csum":
            n = self.data_len(who)
            self.emit(who, "PA", length=n, note=f"{who} data with a bad checksum",
                      extra={"bad_checksum": True}, track=False)
        elif kind == "ack_unseen":
            off = rng.choice([1, 100, 1000, 65535, 300000])
            self.emit(who, "A", ack=self.peer(who).snd_nxt + off,
                      note=f"{who} ACKs {off} bytes never sent", track=False)
        elif kind == "sack_beyond":
            base = end.rcv_nxt or 0
            off = rng.choice([10, 1000, 100000, 1 << 24])
            blk = [[(base + off) % MOD32, (base + off + rng.randint(1, 3000)) % MOD32]]
            opts: list[Any] = ["nop", "nop", ["sack", blk]]
            self.emit(who, "A", options=opts, note=f"{who} SACK block {off} past the data",
                      track=False)
        elif kind == "past_window":
            peer = self.peer(who)
            edge = end.snd_una + peer.adv
            off = rng.choice([0, 1, 11, 500, 5000, 70000, 300000, 1 << 24])
            n = self.data_len(who)
            self.emit(who, "PA", seq=edge + off, length=n, note=f"{who} data {off} past the window",
                      track=False)
        elif kind == "urg":
            n = self.data_len(who)
            self.emit(who, "PAU", length=n, extra={"urg": rng.randint(0, n)},
                      note=f"{who} urgent data")
        elif kind == "old_data":
            off = rng.choice([1000, 65536, 2_000_000, 1 << 30])
            n = self.data_len(who)
            self.emit(who, "PA", seq=end.snd_una - off, length=n, note=f"{who} old data {off} back",
                      track=False)
        elif kind == "fin_mid":
            if end.fin_seq is None:
                self.emit(who, "FA", note=f"{who} FIN in the middle")
                if rng.random() < 0.7:
                    self.ack(OTHER[who])
        elif kind == "zero_win_data":
            peer = self.peer(who)
            peer.win = 0
            self.ack(peer.side, note=f"{peer.side} zero window")
            self.emit(who, "PA", length=rng.randint(1, 500), note=f"{who} data into a zero window",
                      track=False)
        elif kind == "ts_old":
            if self.ts:
                old_ts = (end.tsval - rng.randint(1, 1 << 30)) % MOD32
                opts = ["nop", "nop", ["ts", old_ts, end.ts_recent % MOD32]]
                self.emit(who, "PA", length=self.data_len(who), options=opts,
                          note=f"{who} data with an old timestamp")
            else:
                self.data(who)

    def syn_options_copy(self, end: End) -> list[Any]:
        opts: list[Any] = [["mss", end.mss]]
        if end.sack_off:
            opts.append("sackok")
        if end.ws_off is not None:
            opts += ["nop", ["wscale", end.ws_off]]
        return opts

    def rst(self, who: str, kind: str | None = None) -> None:
        rng = self.rng
        end = self.e(who)
        peer = self.peer(who)
        if kind is None:
            kind = choose(rng, [("exact", 5), ("exact_ack", 5), ("in_window", 4), ("below", 2),
                                ("far", 2), ("ack_only_seq0", 1)])
        if kind == "exact":
            self.emit(who, "R", note=f"{who} RST at the exact seq", track=False)
        elif kind == "exact_ack":
            self.emit(who, "RA", note=f"{who} RST/ACK at the exact seq", track=False)
        elif kind == "in_window":
            off = rng.randint(1, max(1, min(peer.adv, 60000)))
            self.emit(who, "R", seq=end.snd_nxt + off, note=f"{who} RST in window (+{off})",
                      track=False)
        elif kind == "below":
            off = rng.randint(1, 100000)
            self.emit(who, "R", seq=end.snd_una - off, note=f"{who} RST below the window (-{off})",
                      track=False)
        elif kind == "far":
            off = large_off(rng)
            self.emit(who, "RA", seq=end.snd_nxt + off, note=f"{who} RST far off ({off:+d})",
                      track=False)
        else:
            self.emit(who, "RA", seq=0, note=f"{who} RST/ACK with seq 0", track=False)
        self.case.tags.append(f"rst={kind}")
        if kind in ("exact", "exact_ack"):
            self.reset = True
            if rng.random() < 0.6:
                self.closed = True

    def challenge_reconnect(self) -> None:
        """The client 'reboots' and reuses the port: its SYN hits the old
        connection, the server answers with a challenge ACK, the client resets
        with the acknowledged sequence number and connects again."""
        rng = self.rng
        c, s = self.client, self.server
        se = self.e(s)
        isn = self.rand_isn()
        self.emit(c, "S", seq=isn, win=64240, options=[["mss", 1460], "sackok", "nop",
                                                        ["wscale", 7]],
                  note="client SYN on the old connection (port reuse)", track=False)
        self.emit(s, "A", note="server challenge ACK", track=False)
        if rng.random() < 0.85:
            self.emit(c, "R", seq=se.rcv_nxt, note="client RST with the challenged seq",
                      track=False)
        fresh = Tcp(rng, self.case, self.flow, c)
        fresh.ends[c].isn = fresh.ends[c].snd_nxt = fresh.ends[c].snd_una = \
            isn + rng.choice([0, 0, 1, 64000])
        fresh.handshake(choose(rng, [("normal", 5), ("syn_retx", 1)]))
        fresh.data_phase(rng.randint(0, 2), 0)
        self.closed = True

    def close(self, how: str | None = None, after: bool = True) -> None:
        """Close the connection one of several ways (if the model thinks it is
        still open), then maybe (after=True) do something after the close."""
        rng = self.rng
        c, s = self.client, self.server
        if self.closed:
            return
        if not after:
            self.after_close = lambda: None  # type: ignore[method-assign]
        how = how or choose(rng, [("client_first", 5), ("server_first", 4), ("crossing", 2),
                           ("challenge_reconnect", 1.5), ("syn_while_closing", 1),
                           ("rst_both", 0.7), ("data_after_fin", 0.7), ("rst_after_fin_ack", 0.7),
                           ("fin_with_data", 2), ("fin_ack_combined", 3), ("rst", 3),
                           ("fin_then_rst", 1.5), ("fin_retx", 1.5), ("none", 4)])
        self.case.tags.append(f"close={how}")
        if how == "none":
            return
        first = c if how in ("client_first", "fin_with_data", "fin_ack_combined", "fin_retx",
                             "fin_then_rst") else s
        if rng.random() < 0.3 and how not in ("crossing", "rst"):
            first = OTHER[first]
        second = OTHER[first]
        if how == "rst":
            self.rst(rng.choice([c, s]), rng.choice(["exact", "exact_ack"]))
            self.closed = True
            self.after_close()
            return
        if how == "rst_both":
            self.rst(c, rng.choice(["exact", "exact_ack"]))
            self.rst(s, rng.choice(["exact", "exact_ack", "in_window"]))
            self.closed = True
            return
        if how == "challenge_reconnect":
            self.challenge_reconnect()
            return
        if how == "crossing":
            if self.e(first).fin_seq is None:
                self.emit(first, "FA", note=f"{first} FIN")
            if self.e(second).fin_seq is None:
                # the second FIN does not acknowledge the first yet
                e2 = self.e(second)
                self.emit(second, "FA", ack=(e2.rcv_nxt or 0) - 1, note=f"{second} FIN crossing",
                          track=True)
            self.ack(first, note=f"{first} last ACK")
            self.ack(second, note=f"{second} last ACK")
            self.closed = True
            self.after_close()
            return
        fe = self.e(first)
        if fe.fin_seq is None:
            if how == "fin_with_data":
                self.emit(first, "FPA", length=self.data_len(first), note=f"{first} data + FIN")
            else:
                self.emit(first, "FA", note=f"{first} FIN")
        if how == "fin_retx":
            self.emit(first, "FA", seq=fe.fin_seq, note=f"{first} FIN retransmitted", track=False)
        if how == "data_after_fin":
            self.emit(first, "PA", seq=(fe.fin_seq or fe.snd_nxt) + 1, length=rng.randint(1, 100),
                      note=f"{first} data after its own FIN", track=False)
        if how == "syn_while_closing":
            who = rng.choice([first, second])
            self.emit(who, "S", seq=self.rand_isn(), win=64240, options=[["mss", 1460]],
                      note=f"{who} SYN while closing", track=False)
        if how == "rst_after_fin_ack":
            self.emit(second, "A", note=f"{second} ACKs the FIN")
            self.emit(second, "RA", note=f"{second} RST/ACK after ACKing the FIN", track=False)
            self.closed = True
            return
        if how == "fin_then_rst":
            self.emit(second, "A", note=f"{second} ACKs the FIN")
            self.rst(second, rng.choice(["exact", "exact_ack", "in_window"]))
            self.closed = True
            self.after_close()
            return
        se = self.e(second)
        if how == "fin_ack_combined" and se.fin_seq is None:
            self.emit(second, "FA", note=f"{second} FIN/ACK")
        else:
            self.ack(second, note=f"{second} ACKs the FIN")
            if rng.random() < 0.3 and self.can_send(second):
                self.data(second, note=f"{second} data after the peer's FIN")
                self.ack(first)
            if se.fin_seq is None:
                self.emit(second, "FA", note=f"{second} FIN")
        self.ack(first, note=f"{first} last ACK")
        self.closed = True
        self.after_close()

    def after_close(self) -> None:
        rng = self.rng
        c, s = self.client, self.server
        what = choose(rng, [("nothing", 10), ("reopen", 3), ("late_ack", 1.5), ("late_data", 1),
                            ("server_syn", 0.7), ("rst", 1)])
        if what == "nothing":
            return
        self.case.tags.append(f"after_close={what}")
        if what == "late_ack":
            who = rng.choice([c, s])
            self.emit(who, "A", seq=self.e(who).snd_nxt, note=f"{who} late ACK", track=False)
        elif what == "late_data":
            who = rng.choice([c, s])
            self.emit(who, "PA", length=rng.randint(1, 300), note=f"{who} data after close",
                      track=False)
        elif what == "rst":
            who = rng.choice([c, s])
            self.emit(who, "R", note=f"{who} RST after close", track=False)
        elif what in ("reopen", "server_syn"):
            who = c if what == "reopen" else s
            old = self.e(who).snd_nxt
            new_isn = choose(rng, [(old + rng.randint(1, 1 << 20), 3), (self.rand_isn(), 2),
                                   (old - rng.randint(1, 100000), 1)])
            new_isn %= MOD32
            # a fresh connection on the same tuple
            self.ends = {x: End(x, self.rand_isn()) for x in ("A", "B")}
            self.ends[who].isn = self.ends[who].snd_nxt = self.ends[who].snd_una = new_isn
            self.client, self.server = who, OTHER[who]
            self.closed = self.established = self.reset = False
            self.case.tags.append("reopened")
            self.handshake(choose(rng, [("normal", 5), ("data_on_ack", 1), ("syn_retx", 1)]))
            self.data_phase(rng.randint(1, 4), 0.05)
            self.client, self.server = c, s


def tcp_sysctls(rng: random.Random, case: Case, rate: float = 0.35) -> None:
    if rng.random() > rate:
        return
    for _ in range(rng.choice([1, 1, 1, 2])):
        what = choose(rng, [("be_liberal", 3), ("loose0", 1), ("ignore_invalid_rst", 2),
                            ("max_retrans", 2), ("timeouts", 4), ("checksum0", 0.7)])
        if what == "be_liberal":
            case.sysctl[sc("tcp_be_liberal")] = 1
        elif what == "loose0":
            case.sysctl[sc("tcp_loose")] = 0
        elif what == "ignore_invalid_rst":
            case.sysctl[sc("tcp_ignore_invalid_rst")] = 1
        elif what == "max_retrans":
            case.sysctl[sc("tcp_max_retrans")] = rng.choice([0, 1, 2, 5, 10])
        elif what == "timeouts":
            values = rng.sample(range(40, 1000), len(TCP_TIMEOUTS))
            for name, v in zip(TCP_TIMEOUTS, values, strict=True):
                case.sysctl[sc(f"tcp_timeout_{name}")] = v
        elif what == "checksum0":
            case.sysctl[sc("checksum")] = 0


# ------------------------------------------------------------------ families

def fam_tcp_chaos(rng: random.Random, case: Case) -> None:
    """A TCP conversation with a high rate of perturbations."""
    fam_tcp_conv(rng, case, chaos=True)


def fam_tcp_conv(rng: random.Random, case: Case, chaos: bool = False) -> None:
    fam = case.family
    a = HOST[fam]["A"] if rng.random() < 0.8 else rand_addr(rng, "A", fam)
    b = HOST[fam]["B"] if rng.random() < 0.8 else rand_addr(rng, "B", fam)
    flow = Flow("tcp", fam, a, b, ephemeral(rng), server_port(rng))
    client = "A" if rng.random() < 0.85 else "B"
    if client == "B":
        flow.aport, flow.bport = flow.bport, flow.aport
    if rng.random() < 0.06:
        case.settings["zone"] = rng.choice([1, 5, 300, 65535])
    tcp_sysctls(rng, case)
    t = Tcp(rng, case, flow, client)
    odd = a != HOST[fam]["A"] or b != HOST[fam]["B"]
    case.description = (f"Random TCP conversation, client on side {client}"
                        f"{' (non-host addresses)' if odd else ''}.")
    t.handshake()
    perturb_rate = choose(rng, [(0.0, 3), (0.05, 3), (0.12, 3), (0.25, 1)])
    if chaos:
        perturb_rate = rng.uniform(0.3, 0.6)
        case.description = case.description.replace("Random TCP", "Perturbed TCP")
    steps = choose(rng, [(rng.randint(1, 3), 4), (rng.randint(3, 6), 2),
                         (rng.randint(6, 10), 1)])
    t.data_phase(steps, perturb_rate)
    if rng.random() < 0.03 and case.can_sleep(2.0):
        case.sleep(rng.choice([0.5, 1.0, 1.5, 2.0]), note="idle")
        t.data_phase(rng.randint(1, 3), perturb_rate)
    if rng.random() < 0.08:
        icmp_error_on_tcp(rng, case, t)
    t.close()


def icmp_error_on_tcp(rng: random.Random, case: Case, t: Tcp) -> None:
    who = rng.choice(["A", "B"])             # side that sent the quoted packet
    e = t.e(who)
    inner = t.flow.inner(who)
    inner.update(flags=rng.choice(["A", "PA", "S"]), seq=e.snd_una % MOD32,
                 ack=(e.rcv_nxt or 0) % MOD32)
    icmp_error(rng, case, t.flow, who, inner)


def icmp_error(rng: random.Random, case: Case, flow: Flow, quoted_side: str, inner: dict,
               wrong_dst: bool = False, zone: int | None = None,
               same_dir: bool | None = None) -> dict:
    """Emit an ICMP error quoting `inner`, a packet `quoted_side` sent.  With
    same_dir (rare) the error travels in the quoted packet's own direction."""
    fam = flow.fam
    if same_dir is None:
        same_dir = rng.random() < 0.04
    sender = OTHER[quoted_side]
    if same_dir:
        sender = quoted_side
        wrong_dst = False
    p: dict[str, Any] = {"from": sender}
    if fam != case.family:
        p["family"] = fam
    proto = "icmp" if fam == 4 else "icmpv6"
    p["proto"] = proto
    src = flow.addr(sender) if rng.random() < 0.5 else router_addr(rng, sender, fam)
    dst = flow.addr(quoted_side) if not wrong_dst else rand_addr(rng, quoted_side, fam)
    if same_dir:
        dst = flow.addr(OTHER[quoted_side])
    if src != HOST[fam][sender]:
        p["src"] = src
    if dst != HOST[fam][OTHER[sender]]:
        p["dst"] = dst
    if fam == 4:
        typ, code = choose(rng, [((3, rng.choice([0, 1, 2, 3, 4, 9, 10, 13])), 6),
                                 ((11, rng.choice([0, 1])), 2), ((12, 0), 1), ((4, 0), 0.5),
                                 ((5, rng.choice([0, 1])), 0.5)])
    else:
        typ, code = choose(rng, [((1, rng.choice([0, 1, 3, 4, 5])), 6), ((2, 0), 2), ((3, 0), 1.5),
                                 ((4, rng.choice([0, 1])), 1)])
    p["type"], p["code"] = typ, code
    if fam == 4 and typ == 3 and code == 4:
        p["mtu"] = rng.choice([1280, 1400, 576])
    elif fam == 6 and typ == 2:
        p["mtu"] = rng.choice([1280, 1400])
    elif typ == 12 or (fam == 6 and typ == 4):
        p["pointer"] = rng.choice([0, 8, 20])
    elif fam == 4 and typ == 5:
        p["gateway"] = router_addr(rng, sender, 4)
    inner = dict(inner)
    inner_fields = dict(inner)
    if rng.random() < 0.03:
        inner_fields["bad_checksum"] = True     # conntrack does not check the quoted packet
    if rng.random() < 0.03:
        p["bad_checksum"] = True
    p["inner"] = inner_fields
    r = rng.random()
    if r < 0.12:
        hdr = 20 if fam == 4 else 40
        p["inner_len"] = hdr + rng.choice([8, 8, 4, 12, 2])
    z = zone if zone is not None else flow.zone
    if z is not None:
        p["zone"] = z
    p["note"] = f"ICMP{'v6' if fam == 6 else ''} {typ}/{code} from {sender} " \
        f"quoting {quoted_side}'s packet" + (" (wrong dst)" if wrong_dst else "") \
        + (" (same direction)" if same_dir else "")
    return case.add(p)


def fam_tcp_pickup(rng: random.Random, case: Case) -> None:
    fam = case.family
    flow = Flow("tcp", fam, HOST[fam]["A"], HOST[fam]["B"], ephemeral(rng), server_port(rng))
    loose = rng.choice([None, None, 1, 0])
    if loose is not None:
        case.sysctl[sc("tcp_loose")] = loose
    if rng.random() < 0.3:
        case.sysctl[sc("tcp_be_liberal")] = 1
    if rng.random() < 0.3:
        values = rng.sample(range(40, 1000), len(TCP_TIMEOUTS))
        for name, v in zip(TCP_TIMEOUTS, values, strict=True):
            case.sysctl[sc(f"tcp_timeout_{name}")] = v
    t = Tcp(rng, case, flow, "A")
    for end in t.ends.values():
        end.isn = end.snd_nxt = end.snd_una = t.rand_isn()
        end.rcv_nxt = None
    # the model: both sides are mid-stream with negotiated options
    A, B = t.e("A"), t.e("B")
    A.rcv_nxt, B.rcv_nxt = B.snd_nxt, A.snd_nxt
    ws = rng.random() < 0.5
    for end in (A, B):
        end.shift = rng.randint(0, 10) if ws else 0
        end.win = end.adv = t.established_window(end)
    t.ts = rng.random() < 0.4
    t.sack = rng.random() < 0.5
    t.established = True
    first = rng.choice(["A", "A", "B"])
    kind = choose(rng, [("A", 4), ("PA", 4), ("FA", 1), ("RA", 1), ("R", 0.5), ("SA", 1),
                        ("", 0.3), ("F", 0.3)])
    case.description = f"Mid-stream pickup: the first packet is {kind!r} from {first}."
    if kind in ("A", "PA"):
        t.emit(first, kind, length=t.data_len(first) if kind == "PA" else 0,
               note=f"first packet seen: {kind} from {first}")
    elif kind == "FA":
        t.emit(first, "FA", note=f"first packet seen: FIN from {first}")
    else:
        t.emit(first, kind, note=f"first packet seen: {kind or 'no flags'} from {first}",
               track=False)
    t.data_phase(rng.randint(2, 6), 0.08)
    t.close()


def fam_tcp_multi(rng: random.Random, case: Case) -> None:
    fam = case.family
    tcp_sysctls(rng, case, 0.25)
    scenario = choose(rng, [("reversed", 3), ("parallel", 3), ("rst_reconnect", 3),
                            ("same_port_other_host", 2)])
    case.description = f"Several TCP connections: {scenario}."
    cport, sport = ephemeral(rng), server_port(rng)
    f1 = Flow("tcp", fam, HOST[fam]["A"], HOST[fam]["B"], cport, sport)
    t1 = Tcp(rng, case, f1, "A")
    t1.handshake(choose(rng, [("normal", 4), ("data_on_ack", 1)]))
    t1.data_phase(rng.randint(1, 2), 0.05)
    if scenario == "reversed":
        # B connects to A using the same two ports, swapped
        f2 = Flow("tcp", fam, HOST[fam]["A"], HOST[fam]["B"], sport, cport)
        t2 = Tcp(rng, case, f2, "B")
        t2.handshake(choose(rng, [("normal", 4), ("syn_retx", 1)]))
        t2.data_phase(rng.randint(1, 2), 0.05)
        t1.data_phase(rng.randint(0, 2), 0.05)
        t2.close()
        t1.close()
    elif scenario == "parallel":
        f2 = Flow("tcp", fam, HOST[fam]["A"], HOST[fam]["B"], ephemeral(rng), sport)
        t2 = Tcp(rng, case, f2, "A")
        t2.handshake()
        for _ in range(rng.randint(2, 5)):
            rng.choice([t1, t2]).data_phase(1, 0.1)
        if rng.random() < 0.5:
            icmp_error_on_tcp(rng, case, rng.choice([t1, t2]))
        t2.close()
        t1.close()
    elif scenario == "rst_reconnect":
        t1.rst(rng.choice(["A", "B"]), rng.choice(["exact", "exact_ack", "in_window"]))
        t2 = Tcp(rng, case, f1, "A")
        t2.handshake(choose(rng, [("normal", 4), ("syn_retx", 1)]))
        t2.data_phase(rng.randint(1, 3), 0.08)
        t2.close()
    else:
        other = rand_addr(rng, "A", fam)
        f2 = Flow("tcp", fam, other, HOST[fam]["B"], cport, sport)
        t2 = Tcp(rng, case, f2, "A")
        t2.handshake()
        t2.data_phase(rng.randint(1, 3), 0.05)
        t1.data_phase(rng.randint(1, 2), 0.05)
        t1.close()
        t2.close()


def fam_udp(rng: random.Random, case: Case) -> None:
    fam = case.family
    nflows = choose(rng, [(1, 5), (2, 3), (3, 1)])
    steps = rng.randint(2, 8)
    flows = []
    for _ in range(nflows):
        a = HOST[fam]["A"] if rng.random() < 0.75 else rand_addr(rng, "A", fam)
        b = HOST[fam]["B"] if rng.random() < 0.75 else rand_addr(rng, "B", fam)
        f = Flow("udp", fam, a, b, ephemeral(rng), rng.choice([53, 123, 443, 500, 4500, 5353,
                                                                 1194, 51820, 3478,
                                                                 rng.randint(1, 65535)]))
        flows.append((f, rng.choice(["A", "A", "B"])))
    if rng.random() < 0.25:
        case.sysctl[sc("udp_timeout")] = rng.randint(31, 99)
        case.sysctl[sc("udp_timeout_stream")] = rng.randint(121, 299)
    if rng.random() < 0.05:
        case.sysctl[sc("checksum")] = 0
    sleepy = rng.random() < 0.18
    short_at = rng.randrange(steps) if sleepy and rng.random() < 0.5 else -1
    long_at = rng.randrange(steps) if sleepy else -1
    case.description = f"UDP: {nflows} flow(s) in both directions" \
        + (", with sleeps" if sleepy else "") + "."
    started: set[int] = set()
    for _ in range(steps):
        i = rng.randrange(len(flows))
        f, opener = flows[i]
        if i not in started:
            side = opener
        else:
            side = rng.choice(["A", "B"])
        udp_packet(rng, case, f, side, i in started)
        started.add(i)
        for at, s in ((short_at, rng.choice([0.3, 0.5, 0.7])),
                      (long_at, rng.choice([2.4, 2.5]))):
            if at == _ and case.can_sleep(s):
                case.sleep(s, note="let time pass")
    if rng.random() < 0.2:
        f, opener = rng.choice(flows)
        inner = f.inner(opener)
        inner["payload"] = "q"
        icmp_error(rng, case, f, opener, inner, wrong_dst=rng.random() < 0.15)


def udp_packet(rng: random.Random, case: Case, f: Flow, side: str, started: bool,
               zone: int | None = None) -> bool:
    """One UDP datagram on flow f from side, unless the 2 s rule makes it
    timing-sensitive; then sleep past the boundary first if the budget allows."""
    key = f.stream_key(zone)
    if not case.stream_ok(key):
        if case.can_sleep(2.5):
            case.sleep(2.5, note="past the 2 s stream boundary")
        if not case.stream_ok(key):
            return False
    p = f.base(side, case.family)
    if zone is not None:
        p["zone"] = zone
    kind = choose(rng, [("normal", 20), ("bad_csum", 0.8), ("zero_csum", 0.8), ("other_port", 1),
                        ("empty", 1), ("ip_bad_csum", 0.3 if f.fam == 4 else 0)])
    sure = True
    if kind == "normal":
        p["payload_len"] = rng.choice([1, 12, 48, 64, 100, 512, 1200, rng.randint(1, MAX_PAYLOAD)])
        p["note"] = f"{side} datagram"
    elif kind == "bad_csum":
        p["payload_len"] = rng.randint(1, 200)
        p["bad_checksum"] = True
        p["note"] = f"{side} datagram with a bad checksum"
        sure = False
    elif kind == "ip_bad_csum":
        p["payload_len"] = rng.randint(1, 200)
        p["ip_bad_checksum"] = True
        p["note"] = f"{side} datagram with a bad IPv4 header checksum"
        sure = False
    elif kind == "zero_csum":
        p["payload_len"] = rng.randint(1, 200)
        p["checksum"] = 0
        p["note"] = f"{side} datagram without checksum"
        sure = False
    elif kind == "other_port":
        p["sport"] = rng.randint(1024, 65535)
        p["payload_len"] = rng.randint(1, 200)
        p["note"] = f"{side} datagram from another port"
        f2 = Flow("udp", f.fam, f.a, f.b,
                  p["sport"] if side == "A" else f.aport, p["sport"] if side == "B" else f.bport,
                  f.zone)
        k2 = f2.stream_key(zone)
        if not case.stream_ok(k2):
            return False
        case.add(p)
        case.stream_note(k2, True)
        return True
    else:
        p["note"] = f"{side} empty datagram"
    case.add(p)
    case.stream_note(key, sure)
    return True


def fam_icmp_echo(rng: random.Random, case: Case) -> None:
    fam = case.family
    proto = "icmp" if fam == 4 else "icmpv6"
    used_ids: set[int] = set()

    def new_id() -> int:
        while True:
            i = rng.choice([rng.randint(0, 65535), rng.randint(1, 100), 0, 65535])
            if i not in used_ids:
                used_ids.add(i)
                return i

    if fam == 4:
        pairs = [((8, 0), 10), ((13, 14), 1.5), ((15, 16), 0.7), ((17, 18), 0.7)]
    else:
        pairs = [((128, 129), 10), ((139, 140), 1)]
    if rng.random() < 0.2:
        case.sysctl[sc("icmp_timeout" if fam == 4 else "icmpv6_timeout")] = rng.randint(31, 99)
    # (requester, request type, reply type, src, dst, id)
    outstanding: list[tuple[str, int, int, str, str, int]] = []
    case.description = "ICMP queries with identifiers: requests, matching and mismatching replies."
    for _ in range(rng.randint(2, 9)):
        r = rng.random()
        if r < 0.45 or not outstanding:
            if outstanding and rng.random() < 0.15:
                # another request on an existing query "connection"
                who, req, rep, src, dst, ident = outstanding[-1]
            else:
                req, rep = choose(rng, pairs)
                who = rng.choice(["A", "A", "B"])
                src = HOST[fam][who] if rng.random() < 0.8 else rand_addr(rng, who, fam)
                dst = HOST[fam][OTHER[who]] if rng.random() < 0.8 \
                    else rand_addr(rng, OTHER[who], fam)
                ident = new_id()
                outstanding.append((who, req, rep, src, dst, ident))
            p = {"from": who, "proto": proto, "type": req, "id": ident,
                 "seq": rng.randint(0, 65535)}
            if src != HOST[fam][who]:
                p["src"] = src
            if dst != HOST[fam][OTHER[who]]:
                p["dst"] = dst
            p["payload_len"] = rng.choice([0, 8, 56, 56, 100])
            if rng.random() < 0.04:
                p["code"] = rng.randint(1, 255)
            if rng.random() < 0.03:
                p["bad_checksum"] = True
            p["note"] = f"{who} query type {req} id {ident}"
            case.add(p)
        elif r < 0.85:
            who, req, rep, src, dst, ident = rng.choice(outstanding)
            replier = OTHER[who]
            kind = choose(rng, [("ok", 8), ("wrong_id", 1.2), ("wrong_src", 0.8), ("dup", 1),
                                ("request_type", 0.6)])
            p = {"from": replier, "proto": proto, "type": rep, "id": ident,
                 "seq": rng.randint(0, 65535)}
            rsrc = dst
            if kind == "wrong_id":
                p["id"] = new_id()
            elif kind == "wrong_src":
                rsrc = rand_addr(rng, replier, fam)
            elif kind == "request_type":
                # the answer uses the request type (a query in the other direction)
                p["type"] = req
            if rsrc != HOST[fam][replier]:
                p["src"] = rsrc
            if src != HOST[fam][who]:
                p["dst"] = src
            p["payload_len"] = rng.choice([0, 8, 56])
            p["note"] = f"{replier} reply ({kind}) type {p['type']} id {p['id']}"
            case.add(p)
            if kind == "dup":
                q = dict(p)
                q["note"] = "same reply again"
                case.add(q)
        else:
            # an odd message
            if fam == 4:
                typ = rng.choice([9, 10, 40, 14, 0, 42, 6, 30])
            else:
                typ = rng.choice([200, 150, 129, 135, 133, 143, 255])
            who = rng.choice(["A", "B"])
            p = {"from": who, "proto": proto, "type": typ, "code": 0}
            if typ in (0, 14, 129):
                p["id"] = new_id()
                p["seq"] = 1
            else:
                p["payload_len"] = rng.choice([4, 8, 24])
            p["note"] = f"{who} ICMP type {typ}"
            case.add(p)
    if rng.random() < 0.2 and outstanding:
        who, req, rep, src, dst, ident = rng.choice(outstanding)
        f = Flow(proto, fam, src if who == "A" else dst, dst if who == "A" else src)
        inner = f.inner(who)
        inner.update(type=req, id=ident, seq=1)
        icmp_error(rng, case, f, who, inner)


def fam_icmp_error(rng: random.Random, case: Case) -> None:
    """Set up one or two flows, then ICMP errors quoting them (or not)."""
    fam = case.family
    case.description = "ICMP errors quoting existing flows from either side, and unknown ones."
    flows: list[tuple[Flow, dict]] = []
    for _ in range(choose(rng, [(1, 3), (2, 2)])):
        kind = choose(rng, [("tcp", 4), ("udp", 4), ("echo", 2), ("gre", 0.7), ("generic", 0.7)])
        a = HOST[fam]["A"] if rng.random() < 0.8 else rand_addr(rng, "A", fam)
        b = HOST[fam]["B"] if rng.random() < 0.8 else rand_addr(rng, "B", fam)
        opener = rng.choice(["A", "A", "B"])
        if kind == "tcp":
            f = Flow("tcp", fam, a, b, ephemeral(rng), server_port(rng))
            t = Tcp(rng, case, f, opener)
            if rng.random() < 0.5:
                t.handshake(choose(rng, [("normal", 5), ("data_on_ack", 1)]))
                t.data_phase(rng.randint(0, 2), 0)
                st = "est"
            else:
                t.choose_syn_window(t.e(opener))
                t.emit(opener, "S", options=t.syn_options(t.e(opener), None), note="SYN")
                st = "syn"
            flows.append((f, {"opener": opener, "tcp": t, "st": st}))
        elif kind == "udp":
            f = Flow("udp", fam, a, b, ephemeral(rng), rng.randint(1, 65535))
            udp_packet(rng, case, f, opener, False)
            if rng.random() < 0.5:
                udp_packet(rng, case, f, OTHER[opener], True)
            flows.append((f, {"opener": opener}))
        elif kind == "echo":
            proto = "icmp" if fam == 4 else "icmpv6"
            f = Flow(proto, fam, a, b)
            ident = rng.randint(0, 65535)
            p = f.base(opener, case.family)
            p.update(type=8 if fam == 4 else 128, id=ident, seq=1, payload_len=56,
                     note=f"{opener} echo request")
            case.add(p)
            if rng.random() < 0.5:
                q = f.base(OTHER[opener], case.family)
                q.update(type=0 if fam == 4 else 129, id=ident, seq=1, payload_len=56,
                         note="echo reply")
                case.add(q)
            flows.append((f, {"opener": opener, "id": ident}))
        elif kind == "gre":
            f = Flow("gre", fam, a, b)
            p = f.base(opener, case.family)
            p.update(payload_len=20, note=f"{opener} GRE")
            case.add(p)
            flows.append((f, {"opener": opener}))
        else:
            f = Flow(rng.choice(GENERIC_PROTOS), fam, a, b)
            p = f.base(opener, case.family)
            p.update(payload_len=24, note=f"{opener} protocol {f.proto}")
            case.add(p)
            flows.append((f, {"opener": opener}))
    for _ in range(rng.randint(1, 4)):
        f, info = rng.choice(flows)
        opener = info["opener"]
        quoted = opener if rng.random() < 0.65 else OTHER[opener]
        inner = f.inner(quoted)
        r = rng.random()
        if r < 0.1:
            # an unknown flow: other ports / addresses
            if f.proto in ("tcp", "udp"):
                inner["sport"] = rng.randint(1024, 65535)
            else:
                inner["src"] = rand_addr(rng, quoted, fam)
        if f.proto == "tcp":
            t = info["tcp"]
            e = t.e(quoted)
            inner.update(flags="S" if info["st"] == "syn" and quoted == opener else "A",
                         seq=e.snd_una % MOD32)
        elif f.proto == "udp":
            inner["payload"] = "abcd"
        elif f.proto in ("icmp", "icmpv6"):
            req = (8 if fam == 4 else 128) if quoted == opener else (0 if fam == 4 else 129)
            inner.update(type=req, id=info["id"], seq=1)
        elif f.proto == "gre":
            inner["payload_len"] = 8
        else:
            inner["payload_len"] = 8
        icmp_error(rng, case, f, quoted, inner, wrong_dst=rng.random() < 0.1)
        if rng.random() < 0.35:
            # traffic continues on the flow
            if f.proto == "tcp":
                t = info["tcp"]
                if t.established:
                    t.data_phase(1, 0)
                else:
                    t.emit(t.client, "S", seq=t.e(t.client).isn, note="SYN retransmitted",
                           track=False)
            elif f.proto == "udp":
                udp_packet(rng, case, f, rng.choice(["A", "B"]), True)
    if rng.random() < 0.08:
        # nested: an error quoting an ICMP error
        f, info = flows[0]
        p = {"from": "B", "proto": "icmp" if fam == 4 else "icmpv6", "type": 3 if fam == 4 else 1,
             "code": 1, "note": "error quoting an error",
             "inner": {"proto": "icmp" if fam == 4 else "icmpv6", "type": 3 if fam == 4 else 1,
                       "code": 3, "inner": {"proto": "udp", "sport": 1, "dport": 2, "from": "B"}}}
        case.add(p)


def fam_gre(rng: random.Random, case: Case) -> None:
    fam = case.family
    case.description = "GRE flows (v0 with and without key, v1 PPTP call ids)."
    if rng.random() < 0.25:
        case.sysctl[sc("gre_timeout")] = rng.randint(31, 99)
        case.sysctl[sc("gre_timeout_stream")] = rng.randint(181, 400)
    version = choose(rng, [(0, 3), (1, 1)])
    a, b = HOST[fam]["A"], HOST[fam]["B"]
    f = Flow("gre", fam, a, b)
    if version == 0:
        key_a = rng.choice([None, rng.randint(0, MOD32 - 1)])
        key_b = key_a if rng.random() < 0.6 else rng.choice([None, rng.randint(0, MOD32 - 1)])
        opener = rng.choice(["A", "A", "B"])
        for _ in range(rng.randint(2, 7)):
            side = opener if rng.random() < 0.5 else OTHER[opener]
            p = f.base(side, case.family)
            key = key_a if side == "A" else key_b
            if key is not None:
                p["key"] = key
            p["gre_proto"] = rng.choice([0x0800, 0x0800, 0x86DD, 0x6558, 0x880B])
            p["payload_len"] = rng.choice([20, 40, 100, 576])
            p["note"] = f"{side} GRE v0" + (f" key {key}" if key is not None else "")
            case.add(p)
    else:
        # one call per address pair (entries of two calls would sort ambiguously)
        ca = rng.choice([0, rng.randint(1, 65535)])
        cb = rng.choice([0, ca, rng.randint(1, 65535)])
        for _ in range(rng.randint(2, 6)):
            side = rng.choice(["A", "B"])
            p = f.base(side, case.family)
            p.update(gre_version=1, call_id=ca if side == "A" else cb,
                     payload_len=rng.choice([0, 20, 60]), note=f"{side} GRE v1")
            if rng.random() < 0.1:
                p["gre_proto"] = 0x0800
                p["note"] += " (not PPP)"
            case.add(p)
    if rng.random() < 0.15:
        inner = f.inner("A")
        inner["payload_len"] = 8
        icmp_error(rng, case, f, "A", inner)


def fam_generic(rng: random.Random, case: Case) -> None:
    fam = case.family
    case.description = "Other IP protocols tracked by the generic tracker."
    if rng.random() < 0.25:
        case.sysctl[sc("generic_timeout")] = rng.randint(100, 900)
    pairs = []
    for _ in range(rng.choice([1, 1, 2])):
        proto = rng.choice(GENERIC_PROTOS)
        a = HOST[fam]["A"] if rng.random() < 0.7 else rand_addr(rng, "A", fam)
        b = HOST[fam]["B"] if rng.random() < 0.7 else rand_addr(rng, "B", fam)
        pairs.append(Flow(proto, fam, a, b))
    for _ in range(rng.randint(2, 6)):
        f = rng.choice(pairs)
        side = rng.choice(["A", "A", "B"])
        p = f.base(side, case.family)
        p["payload_len"] = rng.choice([8, 24, 64, 200])
        p["note"] = f"{side} protocol {f.proto}"
        case.add(p)


def fam_zones(rng: random.Random, case: Case) -> None:
    fam = case.family
    zones = [0, 1, 2, 7, 300, 65535]
    if rng.random() < 0.3:
        case.settings["zone"] = rng.choice([1, 5, 42])
    default = case.settings.get("zone", 0)
    case.description = ("Flows in several conntrack zones; replies and errors in the same or "
                        "another zone.")
    for _ in range(rng.randint(1, 3)):
        kind = choose(rng, [("tcp", 3), ("udp", 3), ("icmp", 2)])
        z1 = rng.choice(zones)
        z2 = z1 if rng.random() < 0.6 else rng.choice(zones)
        if kind == "tcp":
            f = Flow("tcp", fam, HOST[fam]["A"], HOST[fam]["B"], ephemeral(rng), server_port(rng),
                     zone=z1)
            t = Tcp(rng, case, f, "A")
            t.handshake(choose(rng, [("normal", 5), ("data_on_ack", 1)]))
            if z2 != z1:
                f.zone = z2
                case.tags.append("zone switch")
                t.data_phase(rng.randint(1, 3), 0)
                f.zone = z1
            t.data_phase(rng.randint(0, 2), 0)
            if rng.random() < 0.3:
                icmp_error_on_tcp(rng, case, t)
            if rng.random() < 0.5:
                t.close()
        elif kind == "udp":
            f = Flow("udp", fam, HOST[fam]["A"], HOST[fam]["B"], ephemeral(rng),
                     rng.randint(1, 65535))
            udp_packet(rng, case, f, "A", False, zone=z1)
            udp_packet(rng, case, f, "B", True, zone=z2)
            if rng.random() < 0.5:
                udp_packet(rng, case, f, rng.choice(["A", "B"]), True, zone=rng.choice([z1, z2]))
            if rng.random() < 0.3:
                inner = f.inner("A")
                inner["payload"] = "z"
                icmp_error(rng, case, f, "A", inner, zone=rng.choice([z1, z2, default]))
        else:
            proto = "icmp" if fam == 4 else "icmpv6"
            ident = rng.randint(0, 65535)
            f = Flow(proto, fam, HOST[fam]["A"], HOST[fam]["B"], zone=z1)
            p = f.base("A", case.family)
            p.update(type=8 if fam == 4 else 128, id=ident, seq=1, note="echo request")
            case.add(p)
            q = f.base("B", case.family)
            q.update(type=0 if fam == 4 else 129, id=ident, seq=1, zone=z2, note="echo reply")
            case.add(q)
    # strip explicit zones equal to the case default
    for p in case.packets:
        if p.get("zone") == default and "zone" in p and rng.random() < 0.5:
            del p["zone"]


def ftp_port_arg(fam: int, addr: str, port: int, cmd: str) -> str:
    if cmd == "PORT":
        return f"PORT {addr.replace('.', ',')},{port >> 8},{port & 0xff}"
    if cmd == "EPRT":
        return f"EPRT |{1 if fam == 4 else 2}|{addr}|{port}|"
    raise ValueError(cmd)


def ftp_odd_active(rng: random.Random, fam: int, addr: str, port: int, mode: str,
                   case: Case) -> str:
    """A PORT/EPRT command with unusual but possibly valid formatting."""
    hi, lo = port >> 8, port & 0xff
    if mode == "PORT":
        parts = addr.split(".")
        v = rng.choice(["zeros", "spaces", "big", "short", "space_before", "trailing"])
        if v == "zeros":
            line = "PORT " + ",".join(f"{int(x):03d}" for x in parts) + f",{hi:03d},{lo:03d}"
        elif v == "spaces":
            line = "PORT " + ", ".join(parts) + f", {hi}, {lo}"
        elif v == "big":
            line = "PORT " + ",".join(parts) + f",{hi + 256},{lo}"
        elif v == "short":
            line = "PORT " + ",".join(parts) + f",{hi}"
        elif v == "space_before":
            line = "PORT  " + ",".join(parts) + f",{hi},{lo}"
        else:
            line = "PORT " + ",".join(parts) + f",{hi},{lo} extra"
    else:
        v = rng.choice(["delim", "af_mismatch", "port0", "no_trailing", "big_port"])
        af = 1 if fam == 4 else 2
        if v == "delim":
            d = rng.choice(["!", "#", "/"])
            line = f"EPRT {d}{af}{d}{addr}{d}{port}{d}"
        elif v == "af_mismatch":
            line = f"EPRT |{3 - af}|{addr}|{port}|"
        elif v == "port0":
            line = f"EPRT |{af}|{addr}|0|"
        elif v == "no_trailing":
            line = f"EPRT |{af}|{addr}|{port}"
        else:
            line = f"EPRT |{af}|{addr}|{port + 65536}|"
    case.tags.append(f"format={v}")
    return line + "\r\n"


def ftp_odd_passive(rng: random.Random, fam: int, b: str, port: int, mode: str,
                    case: Case) -> str:
    """A 227/229 reply with unusual but possibly valid formatting."""
    hi, lo = port >> 8, port & 0xff
    if mode == "PASV":
        h = (b if fam == 4 else HOST[4]["B"]).replace(".", ",")
        v = rng.choice(["no_parens", "equals", "zeros", "no_dot", "big"])
        if v == "no_parens":
            line = f"227 Entering Passive Mode {h},{hi},{lo}"
        elif v == "equals":
            line = f"227 =({h},{hi},{lo})"
        elif v == "zeros":
            line = "227 Entering Passive Mode (" + ",".join(
                f"{int(x):03d}" for x in h.split(",")) + f",{hi:03d},{lo:03d})."
        elif v == "no_dot":
            line = f"227 Entering Passive Mode ({h},{hi},{lo})"
        else:
            line = f"227 Entering Passive Mode ({h},{hi},{lo + 256})."
    else:
        v = rng.choice(["delim", "no_text", "missing_delim", "spaces", "big"])
        if v == "delim":
            d = rng.choice(["!", "#"])
            line = f"229 Entering Extended Passive Mode ({d}{d}{d}{port}{d})"
        elif v == "no_text":
            line = f"229 (|||{port}|)"
        elif v == "missing_delim":
            line = f"229 Entering Extended Passive Mode (||{port}|)"
        elif v == "spaces":
            line = f"229 Entering Extended Passive Mode ( |||{port}| )"
        else:
            line = f"229 Entering Extended Passive Mode (|||{port + 65536}|)"
    case.tags.append(f"format={v}")
    return line + "\r\n"


def fam_ftp(rng: random.Random, case: Case) -> None:
    fam = case.family
    port = 21
    if rng.random() < 0.15:
        port = rng.choice([2121, 8021])
        case.settings["helper"] = {"name": "ftp", "proto": "tcp", "port": port}
    else:
        case.settings["helper"] = "ftp"
    if rng.random() < 0.1:
        case.settings["zone"] = rng.choice([3, 77])
    a = HOST[fam]["A"] if rng.random() < 0.85 else rand_addr(rng, "A", fam)
    b = HOST[fam]["B"]
    ctl = Flow("tcp", fam, a, b, ephemeral(rng), port)
    t = Tcp(rng, case, ctl, "A")
    t.handshake(choose(rng, [("normal", 8), ("syn_retx", 1), ("synack_retx", 1)]))
    # keep the control connection's windows roomy and options simple
    case.description = "FTP control dialogue with data connections"

    def say(side: str, text: str, note: str | None = None, split: bool = False) -> None:
        if split and len(text) > 6:
            k = rng.randint(2, len(text) - 3)
            t.data(side, payload=text[:k], note=f"{side}: {text[:k]!r} (first part)", flags="PA")
            t.data(side, payload=text[k:], note=f"{side}: {text[k:]!r} (rest)", flags="PA")
        else:
            t.data(side, payload=text, note=note or f"{side}: {text.strip()[:60]}", flags="PA")
        if rng.random() < 0.15:
            t.ack(OTHER[side])

    first_line_port = rng.random() < 0.05
    if first_line_port:
        say("A", ftp_port_arg(fam, a, 40001, "PORT" if fam == 4 else "EPRT") + "\r\n",
            note="PORT as the client's first line")
    say("B", rng.choice(["220 (vsFTPd 3.0.5)\r\n", "220 ready\r\n",
                         "220-Welcome\r\n220 FTP server ready\r\n"]))
    say("A", rng.choice(["USER anonymous\r\n", "USER ftp\r\n", "user bob\r\n"]))
    say("B", "331 Please specify the password.\r\n")
    say("A", "PASS guest@\r\n")
    say("B", "230 Login successful.\r\n")
    if rng.random() < 0.3:
        say("A", "TYPE I\r\n")
        say("B", "200 Switching to Binary mode.\r\n")
    used_ports: set[int] = set()
    for _transfer in range(rng.choice([1, 1, 1, 2])):
        modes = ["PORT", "EPRT", "PASV", "EPSV"] if fam == 4 else ["EPRT", "EPSV", "EPRT",
                                                                    "EPSV", "PORT", "PASV"]
        mode = rng.choice(modes)
        perturb = choose(rng, [(None, 9), ("wrong_addr", 1), ("wrong_data_port", 1),
                               ("split", 0.7), ("lowercase", 0.7), ("retx_cmd", 0.7),
                               ("reuse", 0.7), ("data_before_reply", 0.5), ("format", 2),
                               ("pipelined", 0.7), ("lf_only", 0.7), ("reply_twice", 0.5)])
        if perturb:
            case.tags.append(f"ftp={perturb}")
        case.tags.append(mode)
        dport = rng.randint(1024, 65535)
        while dport in used_ports:
            dport = rng.randint(1024, 65535)
        used_ports.add(dport)
        if mode in ("PORT", "EPRT"):
            addr = a if perturb != "wrong_addr" else rand_addr(rng, "A", fam)
            if mode == "PORT" and fam == 6:
                addr = HOST[4]["A"]
            cmd = ftp_port_arg(fam, addr, dport, mode) + "\r\n"
            if perturb == "format":
                cmd = ftp_odd_active(rng, fam, addr, dport, mode, case)
            elif perturb == "lowercase":
                cmd = cmd[0:4].lower() + cmd[4:]
            elif perturb == "lf_only":
                cmd = cmd.replace("\r\n", "\n")
            elif perturb == "pipelined":
                cmd = "NOOP\r\n" + cmd
            say("A", cmd, split=perturb == "split")
            if perturb == "retx_cmd":
                t.retransmit("A", "last")
            if perturb != "data_before_reply":
                say("B", f"200 {mode} command successful.\r\n")
            # the data connection: server -> client:dport
            dflow = Flow("tcp", fam, a, b, dport if perturb != "wrong_data_port" else dport + 1,
                         20 if port == 21 else port - 1)
            dt = Tcp(rng, case, dflow, "B")
        else:
            if mode == "PASV":
                bb = b if fam == 4 else HOST[4]["B"]
                h = bb.replace(".", ",")
                reply = f"227 Entering Passive Mode ({h},{dport >> 8},{dport & 0xff}).\r\n"
            else:
                reply = f"229 Entering Extended Passive Mode (|||{dport}|)\r\n"
            if perturb == "wrong_addr" and mode == "PASV":
                h = rand_addr(rng, "B", 4).replace(".", ",")
                reply = f"227 Entering Passive Mode ({h},{dport >> 8},{dport & 0xff}).\r\n"
            elif perturb == "format":
                reply = ftp_odd_passive(rng, fam, b, dport, mode, case)
            elif perturb == "lf_only":
                reply = reply.replace("\r\n", "\n")
            elif perturb == "pipelined":
                reply = "200 NOOP ok\r\n" + reply
            cmd = mode + "\r\n"
            if perturb == "lowercase":
                cmd = cmd.lower()
            say("A", cmd)
            if perturb != "data_before_reply":
                say("B", reply, split=perturb == "split")
                if perturb == "retx_cmd":
                    t.retransmit("B", "last")
                elif perturb == "reply_twice":
                    say("B", reply)
            dflow = Flow("tcp", fam, a, b, ephemeral(rng),
                         dport if perturb != "wrong_data_port" else dport + 1)
            dt = Tcp(rng, case, dflow, "A")
        say("A", rng.choice(["LIST\r\n", "RETR file.bin\r\n", "STOR up.txt\r\n", "NLST\r\n"]))
        dt.handshake(choose(rng, [("normal", 8), ("syn_retx", 1)]))
        if perturb == "data_before_reply":
            say("B", "200 ok\r\n" if mode in ("PORT", "EPRT") else reply)
        say("B", "150 Here comes the data.\r\n")
        dt.data_phase(rng.randint(0, 2), 0.03)
        dt.close()
        if perturb == "reuse":
            # a second data connection on the same expectation
            d2 = Flow("tcp", fam, dflow.a, dflow.b,
                      dflow.aport if mode in ("PORT", "EPRT") else ephemeral(rng),
                      rng.randint(1024, 65535) if mode in ("PORT", "EPRT") else dflow.bport)
            dt2 = Tcp(rng, case, d2, dt.client)
            dt2.handshake("normal")
        say("B", "226 Transfer complete.\r\n")
    if rng.random() < 0.7:
        say("A", "QUIT\r\n")
        say("B", "221 Goodbye.\r\n")
        t.close()
    case.description += f" over IPv{fam}, helper port {port}."


def fam_tftp(rng: random.Random, case: Case) -> None:
    fam = case.family
    case.settings["helper"] = "tftp"
    if rng.random() < 0.1:
        case.settings["zone"] = rng.choice([4, 99])
    case.description = "TFTP transfers (RRQ/WRQ) answered from new server ports."
    a, b = HOST[fam]["A"], HOST[fam]["B"]
    pending_port: int | None = None      # client port whose expectation may be outstanding
    for _ in range(rng.choice([1, 1, 2])):
        cport = pending_port if pending_port is not None else ephemeral(rng)
        ctl = Flow("udp", fam, a, b, cport, 69)
        op = rng.choice([1, 1, 2])
        fname = rng.choice(["file.txt", "pxelinux.0", "boot/vmlinuz", "x"])
        mode = rng.choice(["octet", "netascii"])
        req = (op.to_bytes(2, "big") + fname.encode() + b"\0" + mode.encode() + b"\0").hex()
        if not udp_like(rng, case, ctl, "A", req, f"{'RRQ' if op == 1 else 'WRQ'} {fname}"):
            return
        if rng.random() < 0.15:
            udp_like(rng, case, ctl, "A", req, "request retransmitted")
        answer = choose(rng, [("new_port", 8), ("port69", 1), ("other_client_port", 1),
                              ("error", 1), ("none", 0.5)])
        case.tags.append(f"tftp={answer}")
        sport = rng.randint(1024, 65535)
        if answer == "none":
            pending_port = cport
            continue
        if answer == "port69":
            child = Flow("udp", fam, a, b, cport, 69)
        elif answer == "other_client_port":
            child = Flow("udp", fam, a, b, cport + 1 if cport < 65535 else cport - 1, sport)
            pending_port = cport
        else:
            child = Flow("udp", fam, a, b, cport, sport)
            pending_port = None
        if answer == "error":
            udp_like(rng, case, child, "B", "0005000146696c65206e6f7420666f756e6400", "ERROR")
            continue
        blocks = rng.randint(1, 4)
        for blk in range(1, blocks + 1):
            if op == 1:
                data = b"\0\3" + blk.to_bytes(2, "big") + b"d" * rng.choice([512, 100])
                if not udp_like(rng, case, child, "B", data.hex(), f"DATA {blk}"):
                    break
                ack = "0004" + blk.to_bytes(2, "big").hex()
                if not udp_like(rng, case, child, "A", ack, f"ACK {blk}"):
                    break
            else:
                if blk == 1 and not udp_like(rng, case, child, "B", "00040000", "ACK 0"):
                    break
                data = b"\0\3" + blk.to_bytes(2, "big") + b"u" * rng.choice([512, 30])
                if not udp_like(rng, case, child, "A", data.hex(), f"DATA {blk}"):
                    break
                ack = "0004" + blk.to_bytes(2, "big").hex()
                if not udp_like(rng, case, child, "B", ack, f"ACK {blk}"):
                    break


def udp_like(rng: random.Random, case: Case, f: Flow, side: str, payload_hex: str,
             note: str) -> bool:
    key = f.stream_key()
    if not case.stream_ok(key):
        if case.can_sleep(2.5):
            case.sleep(2.5, note="past the 2 s stream boundary")
        if not case.stream_ok(key):
            return False
    p = f.base(side, case.family)
    p["payload_hex"] = payload_hex
    p["note"] = f"{side} {note}"
    case.add(p)
    case.stream_note(key, True)
    return True


def fam_expiry(rng: random.Random, case: Case) -> None:
    """A short timeout that expires (or clearly does not) during a sleep."""
    fam = case.family
    kind = choose(rng, [("udp", 3), ("icmp", 2), ("generic", 1.5), ("gre", 1), ("tcp", 3)])
    T = rng.choice([1, 2])
    expire = rng.random() < 0.75 and case.can_sleep(MAX_SLEEP)
    s = round(T + EXPIRY_MARGIN + rng.uniform(0.1, 0.7), 2) if expire else None
    case.description = f"{kind}: timeout {T} s, sleep {'past it' if expire else 'well within it'}."
    a, b = HOST[fam]["A"], HOST[fam]["B"]

    def gap() -> None:
        if expire:
            assert s is not None
            case.sleep(min(s, MAX_SLEEP), note=f"sleep past the {T} s timeout")
        elif case.can_sleep(0.6):
            # not expired: T=2 and a sleep far enough below it
            case.sleep(0.6, note=f"sleep, {T} s timeout not reached")

    if not expire:
        T = 2 if kind != "tcp" else 5
    if kind == "udp":
        case.sysctl[sc("udp_timeout")] = T
        case.sysctl[sc("udp_timeout_stream")] = T
        f = Flow("udp", fam, a, b, ephemeral(rng), rng.randint(1, 65535))
        p = f.base("A", case.family)
        p.update(payload_len=10, note="A datagram")
        case.add(p)
        if rng.random() < 0.6:
            q = f.base("B", case.family)
            q.update(payload_len=10, note="B reply")
            case.add(q)
        gap()
        side = rng.choice(["A", "B"])
        p = f.base(side, case.family)
        p.update(payload_len=10, note=f"{side} datagram after the sleep")
        case.add(p)
    elif kind == "icmp":
        case.sysctl[sc("icmp_timeout" if fam == 4 else "icmpv6_timeout")] = T
        proto = "icmp" if fam == 4 else "icmpv6"
        f = Flow(proto, fam, a, b)
        ident = rng.randint(0, 65535)
        p = f.base("A", case.family)
        p.update(type=8 if fam == 4 else 128, id=ident, seq=1, note="echo request")
        case.add(p)
        gap()
        q = f.base("B", case.family)
        q.update(type=0 if fam == 4 else 129, id=ident, seq=1, note="echo reply after the sleep")
        case.add(q)
    elif kind == "generic":
        case.sysctl[sc("generic_timeout")] = T
        f = Flow(rng.choice(GENERIC_PROTOS), fam, a, b)
        for side in ("A", "B"):
            p = f.base(side, case.family)
            p.update(payload_len=16, note=f"{side} protocol {f.proto}")
            case.add(p)
        gap()
        p = f.base("B", case.family)
        p.update(payload_len=16, note="B after the sleep")
        case.add(p)
    elif kind == "gre":
        case.sysctl[sc("gre_timeout")] = T
        case.sysctl[sc("gre_timeout_stream")] = T
        f = Flow("gre", fam, a, b)
        for side in ("A", "B", "A"):
            p = f.base(side, case.family)
            p.update(payload_len=16, note=f"{side} GRE")
            case.add(p)
        gap()
        p = f.base("B", case.family)
        p.update(payload_len=16, note="B GRE after the sleep")
        case.add(p)
    else:
        for name in TCP_TIMEOUTS:
            case.sysctl[sc(f"tcp_timeout_{name}")] = T
        f = Flow("tcp", fam, a, b, ephemeral(rng), server_port(rng))
        t = Tcp(rng, case, f, "A")
        stage = choose(rng, [("syn", 1), ("established", 2), ("closed", 2), ("rst", 1)])
        case.tags.append(f"stage={stage}")
        if stage == "syn":
            t.choose_syn_window(t.e("A"))
            t.emit("A", "S", options=t.syn_options(t.e("A"), None), note="SYN")
        else:
            t.handshake("normal")
            t.data_phase(rng.randint(1, 3), 0)
            if stage == "closed":
                t.close(rng.choice(["client_first", "server_first", "fin_ack_combined"]),
                        after=False)
            elif stage == "rst":
                t.rst(rng.choice(["A", "B"]), "exact")
        gap()
        what = rng.choice(["syn", "ack", "synack"])
        if what == "syn":
            t2 = Tcp(rng, case, f, "A")
            t2.choose_syn_window(t2.e("A"))
            t2.emit("A", "S", options=t2.syn_options(t2.e("A"), None),
                    note="new SYN after the sleep")
            if rng.random() < 0.6:
                t2.emit("B", "SA", seq=t2.e("B").isn, ack=t2.e("A").isn + 1, note="SYN/ACK")
        elif what == "ack":
            side = rng.choice(["A", "B"])
            t.emit(side, "A", note=f"{side} ACK after the sleep", track=False)
        else:
            t.emit("B", "SA", seq=t.e("B").isn, ack=t.e("A").snd_nxt,
                   note="SYN/ACK after the sleep", track=False)


def fam_mixed(rng: random.Random, case: Case) -> None:
    """A bit of everything, in both families."""
    case.description = "Mixed protocols and families in one case."
    for _ in range(rng.randint(2, 4)):
        fam = rng.choice([4, 6])
        what = choose(rng, [("tcp", 3), ("udp", 2), ("icmp", 1), ("gre", 0.5), ("generic", 0.5)])
        a, b = HOST[fam]["A"], HOST[fam]["B"]
        if what == "tcp":
            f = Flow("tcp", fam, a, b, ephemeral(rng), server_port(rng))
            t = Tcp(rng, case, f, rng.choice(["A", "A", "B"]))
            t.handshake()
            t.data_phase(rng.randint(1, 4), 0.1)
            if rng.random() < 0.3:
                icmp_error_on_tcp(rng, case, t)
            if rng.random() < 0.5:
                t.close()
        elif what == "udp":
            f = Flow("udp", fam, a, b, ephemeral(rng), rng.randint(1, 65535))
            udp_packet(rng, case, f, "A", False)
            udp_packet(rng, case, f, "B", True)
        elif what == "icmp":
            proto = "icmp" if fam == 4 else "icmpv6"
            f = Flow(proto, fam, a, b)
            ident = rng.randint(0, 65535)
            p = f.base("A", case.family)
            p.update(type=8 if fam == 4 else 128, id=ident, seq=1, note="echo request")
            case.add(p)
            q = f.base("B", case.family)
            q.update(type=0 if fam == 4 else 129, id=ident, seq=1, note="echo reply")
            case.add(q)
        else:
            f = Flow("gre" if what == "gre" else rng.choice(GENERIC_PROTOS), fam, a, b)
            for side in ("A", "B"):
                p = f.base(side, case.family)
                p.update(payload_len=12, note=f"{side} {f.proto}")
                case.add(p)


FAMILIES: dict[str, tuple[float, Callable[[random.Random, Case], None]]] = {
    "tcp_conv": (36, fam_tcp_conv),
    "tcp_chaos": (5, fam_tcp_chaos),
    "tcp_pickup": (5, fam_tcp_pickup),
    "tcp_multi": (3, fam_tcp_multi),
    "udp": (10, fam_udp),
    "icmp_echo": (6, fam_icmp_echo),
    "icmp_error": (9, fam_icmp_error),
    "gre": (4, fam_gre),
    "generic": (3, fam_generic),
    "zones": (6, fam_zones),
    "ftp": (6, fam_ftp),
    "tftp": (4, fam_tftp),
    "expiry": (1.2, fam_expiry),
    "mixed": (2, fam_mixed),
}


def generate_case(rng: random.Random, name: str, family: str,
                  sleep_budget: float = CASE_SLEEP_CAP) -> dict[str, Any]:
    fam = pick_family(rng)
    # a mixed case has no case-wide family: every IPv6 packet says so itself
    case = Case(name, 4 if family == "mixed" else fam, sleep_budget=sleep_budget)
    FAMILIES[family][1](rng, case)
    if not any("sleep" not in p for p in case.packets):
        raise RuntimeError(f"{name}: no packets")
    d = case.to_dict()
    d["description"] = f"[oraclegen {family}] " + d["description"]
    return d


def generate(seed: int, count: int, skip: list[str] | None = None,
             families: list[str] | None = None) -> list[dict[str, Any]]:
    """`count` cases from `seed`.  Each case gets its own RNG derived from the
    seed and its index, so skipping or changing one case never changes the
    others."""
    names = families or list(FAMILIES)
    weights = [(n, FAMILIES[n][0]) for n in names]
    top = random.Random(seed)
    out = []
    budget = FILE_SLEEP_PER_CASE * count        # sleep budget of the whole file
    for i in range(count):
        family = choose(top, weights)
        case_seed = top.randrange(1 << 62)
        rng = random.Random(case_seed)
        tag = family
        name = f"gen_s{seed}_{i:03d}_{tag}"
        d = generate_case(rng, name, family, budget)
        budget -= sum(p["sleep"] for p in d["packets"] if "sleep" in p)
        fam = 6 if d.get("settings", {}).get("family") == 6 else 4
        d["name"] = f"{name}_{'mixed' if family == 'mixed' else f'v{fam}'}"
        if skip and any(fnmatch.fnmatch(d["name"], g) for g in skip):
            continue
        out.append(d)
    return out


# ------------------------------------------------------------------ output

def dumps(doc: Any) -> str:
    """Compact JSON: one packet per line."""
    lines = ["{", ' "cases": [']
    cases = doc["cases"]
    for ci, c in enumerate(cases):
        lines.append("  {")
        keys = [k for k in c if k != "packets"]
        for k in keys:
            lines.append(f"   {json.dumps(k)}: {json.dumps(c[k])},")
        lines.append('   "packets": [')
        for pi, p in enumerate(c["packets"]):
            lines.append("    " + json.dumps(p) + ("," if pi < len(c["packets"]) - 1 else ""))
        lines.append("   ]")
        lines.append("  }" + ("," if ci < len(cases) - 1 else ""))
    lines.append(" ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def oracle_check(path: str, oracle_dir: str) -> None:
    sys.path.insert(0, oracle_dir)
    import runner
    cases = runner.load_cases([path])
    for c in cases:
        runner.prepare_case(c)
    print(f"{len(cases)} case(s) OK (oracle case loader)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--cases", type=int, required=True, help="number of cases to generate")
    ap.add_argument("--out", required=True, help="case file to write ('-' = stdout)")
    ap.add_argument("--skip", action="append", default=[], metavar="GLOB",
                    help="leave out cases whose names match (repeatable)")
    ap.add_argument("--family", action="append", choices=sorted(FAMILIES),
                    help="only these families (repeatable; changes the case mix)")
    ap.add_argument("--check", action="store_true",
                    help="validate the output with the oracle's case loader")
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--oracle-dir", default=os.environ.get(
        "CTLAB_ORACLE_DIR", os.path.join(here, "..", "..", "shared", "tools", "kernel_oracle")))
    args = ap.parse_args(argv)
    cases = generate(args.seed, args.cases, args.skip, args.family)
    text = dumps({"cases": cases})
    if args.out == "-":
        sys.stdout.write(text)
    else:
        with open(args.out, "w") as f:
            f.write(text)
    n = sum(1 for c in cases for p in c["packets"] if "sleep" not in p)
    sl = sum(p["sleep"] for c in cases for p in c["packets"] if "sleep" in p)
    v6 = sum(1 for c in cases if c.get("settings", {}).get("family") == 6)
    print(f"{len(cases)} cases ({v6} IPv6), {n} packets, {sl:.1f} s of sleep -> {args.out}",
          file=sys.stderr)
    if args.check and args.out != "-":
        oracle_check(args.out, args.oracle_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
