"""Replay kernel-oracle cases through the conntrack engine (`ctlab ct replay`).

The oracle's lab is a router R whose conntrack sees every packet; this module
models R with the engine, in R's order of hooks:

  raw PREROUTING    the case's raw rules, then the helper and zone CT rules:
                    the first CT/NOTRACK target a packet matches gives its template
  conntrack         Conntrack.track()
  mangle PREROUTING classification (what we report), then connmark/connlabel
                    and the case's mangle rules
  POSTROUTING       helper, then confirm (every forwarded packet is committed)

Time is virtual: a `sleep` step advances it and nothing really sleeps. Pure:
no I/O here; the CLI reads files and prints.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from node.conntrack import Conntrack, Entry, Sysctl, Template, Tuple, tuple_of
from node.conntrack.entry import CTINFO_STATE, IP_CT_UNTRACKED
from node.conntrack.events import CtView
from node.conntrack.table import CtResult
from node.packet import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Packet
from scenarios.casefile import Case, IptRule, Sleep

START_TIME = 1000.0  # virtual clock origin; only differences matter
# Virtual time that passes between two packets. The oracle spends 25-600 ms per
# packet (median 70 ms over our 5911 recorded packets: sending, waiting for the
# forwarded copy, dumping the tables), and the kernel's timers run meanwhile; a
# case with short timeouts and many packets sees that time pass.
PACKET_GAP = 0.05
# The keys the oracle records under "kernel" that `ct replay` reproduces.
KEYS = ("ctstate", "ctdir", "proto_state", "flags", "status", "timeout", "mark", "zone",
        "labels", "helper", "orig", "reply", "master")


def _template(rules: tuple[IptRule, ...], pkt: Packet, pkt_zone: int) -> Template:
    """raw PREROUTING: the first CT/NOTRACK target a packet matches gives its
    template; ACCEPT/RETURN end the chain."""
    for rule in rules:
        if rule.matches(pkt, pkt_zone):
            if rule.is_ct_target():
                return rule.template()
            if rule.terminal:
                break
    return Template()


def _view_dict(view: CtView | None) -> dict[str, Any]:
    if view is None:
        return {k: None for k in KEYS[2:]}
    timeout = view.timeout
    tcp = None
    p = view.protoinfo
    if p is not None:
        tcp = {k: p[k] for k in ("wscale_orig", "wscale_reply", "flags_orig", "flags_reply")
               if k in p}
    return {
        "proto_state": view.proto_state,
        "flags": view.flags,
        "status": view.status_list(),
        # ctnetlink reports whole seconds left, read a moment after the packet
        "timeout": max(0, math.floor(timeout - 1e-3)),
        "mark": view.mark,
        "zone": view.zone,
        "labels": view.labels_list(),
        "helper": view.helper,
        "orig": view.orig.to_dict(),
        "reply": view.reply.to_dict(),
        "master": view.master.to_dict() if view.master else None,
        "tcp": tcp,
    }


class Replayer:
    """One case's router: a fresh conntrack table with the case's sysctls."""

    def __init__(self, case: Case, packet_gap: float = PACKET_GAP) -> None:
        self.case = case
        self.packet_gap = packet_gap
        self.ct = Conntrack(Sysctl().with_values(case.settings.sysctl))
        self.rules = case.raw_table
        self.mangle = case.mangle_table
        self.now = START_TIME

    def step(self, pkt: Packet, zone: int, key: Packet | None = None) -> dict[str, Any]:
        """One packet through R. `key` is the packet whose entry the oracle reports
        (for an ICMP error, the quoted packet as specified); default `pkt`."""
        ct = self.ct
        now = self.now
        ct.expire(now)
        template = _template(self.rules, pkt, zone)
        if not pkt.ip_csum_ok:  # ip_rcv() drops it before any hook
            view = self._packet_entry(key or pkt, template.zone)
            self.now += self.packet_gap
            return {"ctstate": "NONE", "ctdir": None, "delivered": False,
                    **_view_dict(view), "expectations": self._expectations()}
        res = ct.track(pkt, now, template)
        state, direction = _classify(res)
        if res.entry is not None:
            self._mangle(res, state, direction, pkt, zone)
        delivered = res.verdict != 0
        if res.entry is not None and res.ctinfo != IP_CT_UNTRACKED:
            res = ct.commit_tracked(res, pkt, now)
            delivered = res.verdict != 0
        elif state == "NONE":
            delivered = False
        ct.take_events()
        view = self._packet_entry(key or pkt, template.zone)
        self.now += self.packet_gap
        return {"ctstate": state, "ctdir": direction, "delivered": delivered,
                **_view_dict(view), "expectations": self._expectations()}

    def _mangle(self, res: CtResult, state: str, direction: str | None, pkt: Packet,
                zone: int) -> None:
        """mangle PREROUTING after classification: connmark, connlabel and the
        case's rules, applied to the packet's entry."""
        entry = res.entry
        assert entry is not None
        for rule in self.mangle:
            if rule.matches(pkt, zone, ctstate=state, ctdir=direction):
                rule.apply_to_entry(self.ct, entry)
                if rule.terminal:
                    break

    def _packet_entry(self, pkt: Packet, zone: int) -> CtView | None:
        """The entry the oracle reports for a packet: the first entry, in its dump
        order, whose original or reply tuple matches the packet's key, in the
        packet's zone (in any zone when the case has raw rules). The key is looser
        than a conntrack tuple: addresses and protocol, plus the ports for TCP and
        UDP and the identifier for ICMP queries (never the ICMP type)."""
        key = _oracle_key(pkt)
        any_zone = bool(self.case.settings.raw_rules)
        hits = [e for e in self.ct.entries() if (any_zone or e.zone == zone)
                and (_key_matches(e.orig, key) or _key_matches(e.reply, key))]
        if not hits:
            return None
        return self.ct.view(min(hits, key=_dump_order), self.now)

    def _expectations(self) -> list[dict[str, object]]:
        return [e.to_dict(self.now) for e in self.ct.expect]

    def sleep(self, seconds: float) -> None:
        self.now += seconds


ICMP_QUERY_TYPES = {4: frozenset((0, 8, 13, 14, 15, 16, 17, 18)),
                    6: frozenset((128, 129, 139, 140))}


def _oracle_key(pkt: Packet) -> tuple[int, bytes, bytes, int | None, int | None]:
    """(proto, src, dst, sport or ICMP id, dport): None where the oracle's key has
    no such field."""
    t = tuple_of(pkt)
    if t.proto in (IPPROTO_TCP, IPPROTO_UDP):
        return t.proto, t.src, t.dst, t.sport, t.dport
    if t.proto in (IPPROTO_ICMP, IPPROTO_ICMPV6) and (t.dport >> 8) in \
            ICMP_QUERY_TYPES[pkt.family]:
        return t.proto, t.src, t.dst, t.sport, None
    return t.proto, t.src, t.dst, None, None


def _key_matches(t: Tuple, key: tuple[int, bytes, bytes, int | None, int | None]) -> bool:
    proto, src, dst, first, second = key
    if t.proto != proto or t.src != src or t.dst != dst:
        return False
    if first is not None and t.sport != first:
        return False
    return second is None or t.dport == second


def _dump_order(e: Entry) -> tuple[object, ...]:
    """The oracle sorts its table dump by zone, protocol name, addresses as text,
    then ports (or the ICMP id)."""
    o = e.orig.to_dict()
    return (e.zone, str(o["proto"]), o["src"], o["dst"], o.get("sport", o.get("id", 0)),
            o.get("dport", 0))


def _classify(res: CtResult) -> tuple[str, str | None]:
    """The CTCLASS counter that moves: INVALID, UNTRACKED, STATE/DIRECTION, or NONE
    when conntrack dropped the packet before mangle."""
    if res.verdict == 0:
        return "NONE", None
    if res.ctinfo == IP_CT_UNTRACKED:
        return "UNTRACKED", None
    if res.entry is None:
        return "INVALID", None
    return CTINFO_STATE[res.ctinfo], "REPLY" if res.direction else "ORIGINAL"


def replay_case(case: Case, packet_gap: float = PACKET_GAP) -> dict[str, Any]:
    """The case with each packet echoed and the engine's answer under "ctlab"."""
    r = Replayer(case, packet_gap)
    packets: list[dict[str, Any]] = []
    for step in case.steps:
        if isinstance(step, Sleep):
            r.sleep(step.seconds)
            packets.append(dict(step.raw))
            continue
        rec = {k: v for k, v in step.raw.items() if k != "kernel"}
        rec["ip_hex"] = step.data.hex()
        rec["ctlab"] = r.step(step.packet, step.zone, step.quoted)
        if "kernel" in step.raw:
            rec["kernel"] = step.raw["kernel"]
        packets.append(rec)
    return {"name": case.name, "packets": packets}


def replay(cases: Iterable[Case], packet_gap: float = PACKET_GAP) -> dict[str, Any]:
    return {"cases": [replay_case(c, packet_gap) for c in cases]}


# ---------------------------------------------------------------- comparison
COMPARED = ("ctstate", "ctdir", "proto_state", "flags", "status", "mark", "zone", "labels",
            "helper", "timeout")


def differences(kernel: dict[str, Any], ours: dict[str, Any],
                keys: Iterable[str] = COMPARED, tolerance: int = 2) -> list[str]:
    """Where the engine's answer differs from the kernel's recorded one, on `keys`
    (status as a set; timeout within `tolerance` seconds)."""
    out = []
    for key in keys:
        k, o = kernel.get(key), ours.get(key)
        if key == "status":
            k, o = sorted(k or []), sorted(o or [])
        if key == "timeout":
            same = (k is None) == (o is None) and (k is None or abs(k - o) <= tolerance)
        else:
            same = k == o
        if not same:
            out.append(f"{key}: kernel {k!r}, ctlab {o!r}")
    return out
