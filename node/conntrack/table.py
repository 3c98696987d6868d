"""The conntrack table: lookup, creation, confirmation, expiry and events.

Transcribes the flow of Linux 6.18 nf_conntrack_core.c:
  track()    nf_conntrack_in() + resolve_normal_ct() + init_conntrack()
  confirm()  __nf_conntrack_confirm() (what `ct commit` and iptables' POSTROUTING do)
  help()     nf_confirm()'s helper call (nf_conntrack_helper.c / ipv4_helper)
  expire()   the GC worker and the per-lookup nf_ct_is_expired() check
Time is an argument everywhere; nothing here reads a clock.

Expiry timers are kept as the kernel's timer wheel does (kernel/time/timer.c):
far timers go into one-second slots (a list of entries per second, no object
per timer); a slot's entries move into an exact heap of (time, id, entry) when
its second comes (or when next_deadline() must look inside it). Timers are
never cancelled: an entry whose timeout moved leaves a stale timer behind,
recognised by `entry.heap_at`, the time of its latest one.

An uncommitted packet is tracked (it gets an entry and a ctinfo) but the entry
is not inserted: the next packet of the flow is NEW again. Only confirm()
inserts, as act_ct without `commit` behaves.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, NamedTuple

from node.conntrack import l4proto
from node.conntrack.entry import (
    IP_CT_ESTABLISHED,
    IP_CT_ESTABLISHED_REPLY,
    IP_CT_NEW,
    IP_CT_RELATED,
    IP_CT_RELATED_REPLY,
    IP_CT_UNTRACKED,
    IPCT_DESTROY,
    IPCT_LABEL,
    IPCT_MARK,
    IPCT_NEW,
    IPCT_RELATED,
    IPCT_REPLY,
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_DYING,
    IPS_EXPECTED,
    IPS_FIXED_TIMEOUT,
    IPS_HELPER,
    IPS_OFFLOAD,
    IPS_SEEN_REPLY,
    ORIGINAL,
    REPLY,
    Entry,
)
from node.conntrack.events import CtEvent, CtView, event_type
from node.conntrack.expect import ExpectTable
from node.conntrack.sctp import SctpTracker
from node.conntrack.simple import (
    GenericTracker,
    GreTracker,
    IcmpTracker,
    UdpLiteTracker,
    UdpTracker,
)
from node.conntrack.sysctl import DEFAULT, Sysctl
from node.conntrack.tcp import TcpTracker
from node.conntrack.tuple import Tuple, interned, tuple_of
from node.frozen import fast_constructor
from node.packet import (
    IPPROTO_GRE,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Gre,
    Icmp,
    Packet,
)

IPPROTO_UDPLITE = 136
IPPROTO_SCTP = 132
GRE_PROTO_PPP = 0x880B
_TCP_UDP = frozenset((IPPROTO_TCP, IPPROTO_UDP))

# Explicit registry of layer-4 trackers (nf_ct_l4proto_find()).
TRACKERS: dict[int, l4proto.L4Tracker] = {
    IPPROTO_TCP: TcpTracker(),
    IPPROTO_UDP: UdpTracker(),
    IPPROTO_UDPLITE: UdpLiteTracker(),
    IPPROTO_SCTP: SctpTracker(),
    IPPROTO_ICMP: IcmpTracker(v6=False),
    IPPROTO_ICMPV6: IcmpTracker(v6=True),
    IPPROTO_GRE: GreTracker(),
}
GENERIC = GenericTracker()

ICMP_ERROR_TYPES = frozenset((3, 4, 5, 11, 12))  # icmp_is_err()
# ICMPv6 types conntrack leaves untracked (nf_conntrack_proto_icmpv6.c noct_valid_new):
# MLD query/report/done, router/neighbour solicitation/advertisement, redirect? no: 130-136, 143.
ICMPV6_UNTRACKED = frozenset((130, 131, 132, 133, 134, 135, 136, 143))
EARLY_DROP_SCAN = 256  # entries looked at for an unassured victim (kernel: 8 buckets)

INVALID_CTINFO = -1
ACCEPT = l4proto.ACCEPT
REPEAT = l4proto.REPEAT
_NF_REPEAT = (1, 2, 3)  # track()'s NF_REPEAT loop: three tries

# NamedTuple construction without the Python-level __new__ that Tuple(...) and
# CtResult(...) run (one interpreter frame per packet on the hot path).
_new_tuple = tuple.__new__
# What the hash table is keyed by: Tuples, and looked up with plain tuples equal
# to them (a NamedTuple hashes and compares as the plain tuple of its fields).
_Key = tuple[int, int, bytes, bytes, int, int]


class CtResult(NamedTuple):
    """What conntrack attached to a packet (skb->_nfct + ctinfo) and its verdict."""

    entry: Entry | None
    ctinfo: int  # IP_CT_*; INVALID_CTINFO when the packet is invalid (no entry)
    verdict: int = l4proto.ACCEPT  # ACCEPT or DROP
    reason: str = ""

    @property
    def direction(self) -> int:
        return REPLY if self.ctinfo >= IP_CT_ESTABLISHED_REPLY and self.ctinfo != \
            IP_CT_UNTRACKED else ORIGINAL

    @property
    def invalid(self) -> bool:
        return self.ctinfo == INVALID_CTINFO


UNTRACKED = CtResult(None, IP_CT_UNTRACKED)


def _invalid(reason: str) -> CtResult:
    return CtResult(None, INVALID_CTINFO, l4proto.ACCEPT, reason)


@dataclass(frozen=True, slots=True)
class Template:
    """What `-j CT` or act_ct attaches before conntrack runs (a template ct)."""

    zone: int = 0
    helper: str | None = None
    notrack: bool = False


DEFAULT_TEMPLATE = Template()


class Conntrack:
    """One conntrack table (one network namespace)."""

    def __init__(self, sysctl: Sysctl = DEFAULT, *, events: bool = True,
                 helpers: Mapping[str, Any] | None = None) -> None:
        from node.conntrack.helpers import HELPERS  # the registry of ALGs

        self.sysctl = sysctl
        self.emit_events = events
        self.helpers: Mapping[str, Any] = HELPERS if helpers is None else helpers
        self.expect = ExpectTable(sysctl.nf_conntrack_expect_max)
        # zone -> {orig tuple: entry, reply tuple: entry}: the hash table. It
        # is also the list of entries (the orig keys' values, in the order they
        # were inserted): no other index of them is kept.
        self._zones: dict[int, dict[_Key, Entry]] = {}
        self._count = 0  # confirmed entries
        self._wheel: dict[int, list[Entry]] = {}  # second -> entries with a timer in it
        self._seconds: list[int] = []  # the wheel's seconds (a heap)
        self._heap: list[tuple[float, int, Entry]] = []  # timers of due (or looked-at) seconds
        self._events: list[CtEvent] = []
        self._next_id = 1
        # Entries destroyed while in a flow table (IPS_OFFLOAD), for its GC's
        # nf_ct_is_dying() check; None unless an offload card asked for them.
        self.offload_gone: list[Entry] | None = None
        self._stats = {"found": 0, "invalid": 0, "insert": 0, "insert_failed": 0, "drop": 0,
                       "early_drop": 0, "expired": 0, "untracked": 0}
        self._found = 0  # stats["found"], counted per packet apart from the dict

    @property
    def stats(self) -> dict[str, int]:
        """Counters (the kernel's per-cpu conntrack stats): found, invalid, insert ..."""
        stats = self._stats
        stats["found"] = self._found
        return stats

    # ------------------------------------------------------------------ lookup
    def __len__(self) -> int:
        return self._count

    def entries(self) -> Iterator[Entry]:
        return iter(list(self._iter_entries()))

    def frozen_entries(self) -> Iterator[Entry]:
        """Every confirmed entry once, in no set order, from a copy of the hash
        taken now (C-level copies: milliseconds for 200k entries): to walk later,
        a step at a time, while the table goes on changing."""
        copies = [zmap.copy() for zmap in self._zones.values() if zmap]
        return itertools.chain.from_iterable(map(_entries_of, copies))

    def _iter_entries(self) -> Iterator[Entry]:
        """Every confirmed entry once, oldest first: in insertion order within a
        zone, and the zones merged by id (creation order, which is insertion
        order unless an entry was confirmed long after it was tracked)."""
        zmaps = [zmap for zmap in self._zones.values() if zmap]
        if len(zmaps) == 1:
            return _entries_of(zmaps[0])
        return heapq.merge(*map(_entries_of, zmaps), key=attrgetter("id"))

    def find(self, t: Tuple, zone: int = 0) -> Entry | None:
        zmap = self._zones.get(zone)
        return zmap.get(t) if zmap else None

    def _find_live(self, t: Tuple, zone: int, now: float) -> Entry | None:
        zmap = self._zones.get(zone)
        if not zmap:
            return None
        entry = zmap.get(t)
        if entry is not None and entry.expires_at <= now:
            self._destroy(entry, now, "timeout")  # nf_ct_gc_expired()
            self.stats["expired"] += 1
            return None
        return entry

    # ------------------------------------------------------------------ tracking
    def track(self, pkt: Packet, now: float, template: Template = DEFAULT_TEMPLATE) -> CtResult:
        """nf_conntrack_in(): attach an entry to `pkt` (creating an unconfirmed one
        for a new flow) and run its L4 tracker."""
        res = self.track_raw(pkt, now, template)
        return res if res.__class__ is CtResult else _new_tuple(CtResult, res)

    def track_raw(self, pkt: Packet, now: float,
                  template: Template = DEFAULT_TEMPLATE) -> tuple[Entry | None, int, int, str]:
        """track()'s (entry, ctinfo, verdict, reason), as a plain tuple when the
        packet is accepted (a CtResult otherwise): for callers that unpack it
        (act_ct, commit()), one object less per packet."""
        if template.notrack:
            self.stats["untracked"] += 1
            return UNTRACKED
        if pkt.frag_offset or pkt.more_frags:
            return self._count_invalid("fragment (conntrack sees reassembled packets only)")
        proto = pkt.proto
        zone = template.zone
        l4 = pkt.l4
        t: _Key
        if proto in _TCP_UDP:
            if l4 is None:
                return self._count_invalid("truncated L4 header")
            # tuple_of(pkt) as a plain tuple, for the lookup (see _Key); made a
            # Tuple only if it becomes a new entry's.
            t = (pkt.family, proto, pkt.src, pkt.dst, l4.sport, l4.dport)  # type: ignore[union-attr]
            tracker = TRACKERS[proto]
        else:
            if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
                if not isinstance(l4, Icmp) or (proto == IPPROTO_ICMP) != (pkt.family == 4):
                    return self._count_invalid("short or misplaced ICMP header")
                if not pkt.l4_csum_ok and self.sysctl.nf_conntrack_checksum:
                    return self._count_invalid("bad ICMP checksum")
                if proto == IPPROTO_ICMPV6 and l4.type in ICMPV6_UNTRACKED:
                    self.stats["untracked"] += 1
                    return UNTRACKED
                if (l4.type in ICMP_ERROR_TYPES) if proto == IPPROTO_ICMP else l4.type < 128:
                    return self._related_error(pkt, l4, zone, now)
            elif proto == IPPROTO_GRE and isinstance(l4, Gre) and l4.version == 1 \
                    and l4.proto != GRE_PROTO_PPP:
                return self._count_invalid("GRE v1 without PPP payload")
            t = tuple_of(pkt)
            tracker = TRACKERS.get(proto, GENERIC)
        zmap = self._zones.get(zone)
        for _ in _NF_REPEAT:
            # _find_live(), inline for the hot path
            entry = zmap.get(t) if zmap else None
            if entry is not None and entry.expires_at <= now:
                self._destroy(entry, now, "timeout")  # nf_ct_gc_expired()
                self.stats["expired"] += 1
                entry = None
            if entry is None:
                created = self._init_conntrack(interned(t), zone, now, template)
                if isinstance(created, CtResult):
                    return created
                entry, direction = created, ORIGINAL
            else:
                direction = ORIGINAL if entry.orig == t else REPLY
                self._found += 1
            status = entry.status
            if direction:
                ctinfo = IP_CT_ESTABLISHED_REPLY
            elif status & IPS_SEEN_REPLY:
                ctinfo = IP_CT_ESTABLISHED
            elif status & IPS_EXPECTED:
                ctinfo = IP_CT_RELATED
            else:
                ctinfo = IP_CT_NEW
            ret = tracker.packet(self, entry, pkt, direction, ctinfo, now)
            if ret <= 0:
                if ret == REPEAT:
                    continue
                if ret == l4proto.DROP:
                    self.stats["drop"] += 1
                    return CtResult(None, INVALID_CTINFO, l4proto.DROP, "dropped by tracker")
                return self._count_invalid(f"invalid for {type(tracker).__name__}")
            if direction and not status & IPS_SEEN_REPLY:
                entry.status |= IPS_SEEN_REPLY
                entry.events |= IPCT_REPLY
            if self.sysctl.nf_conntrack_acct:  # nf_ct_acct_update()
                acct = entry.acct
                acct[2 * direction] += 1
                acct[2 * direction + 1] += pkt.length
            return entry, ctinfo, ACCEPT, ""
        return self._count_invalid("repeated NF_REPEAT")

    def _count_invalid(self, reason: str) -> CtResult:
        self.stats["invalid"] += 1
        return _invalid(reason)

    def _related_error(self, pkt: Packet, icmp: Icmp, zone: int, now: float) -> CtResult:
        """nf_conntrack_inet_error(): an ICMP error is RELATED to the flow it quotes."""
        inner = icmp.inner
        if inner is None:
            return self._count_invalid("ICMP error without a quoted packet")
        if inner.proto in (IPPROTO_TCP, IPPROTO_UDP) and inner.l4 is None:
            return self._count_invalid("ICMP error quoting a truncated header")
        quoted = tuple_of(inner).invert()
        if quoted is None:
            return self._count_invalid("ICMP error quoting an untrackable packet")
        entry = self._find_live(quoted, zone, now)
        if entry is None:
            return self._count_invalid("ICMP error for an unknown connection")
        direction = ORIGINAL if entry.orig == quoted else REPLY
        if pkt.dst != entry.tuple(direction).dst:
            return self._count_invalid("outer destination is not the connection's endpoint")
        return CtResult(entry, IP_CT_RELATED_REPLY if direction else IP_CT_RELATED)

    def _init_conntrack(self, t: Tuple, zone: int, now: float,
                        template: Template) -> Entry | CtResult:
        reply = t.invert()
        if reply is None:
            return self._count_invalid("cannot invert tuple")
        if self._count >= self.sysctl.nf_conntrack_max and not self._early_drop(now):
            self.stats["drop"] += 1
            return CtResult(None, INVALID_CTINFO, l4proto.DROP, "table full, dropping packet")
        entry = Entry(t, reply, zone, now, self._next_id)
        self._next_id += 1
        exp = self.expect.take(t, zone, now) if len(self.expect) else None
        if exp is not None:
            entry.status |= IPS_EXPECTED
            entry.master = exp.master
            entry.helper = exp.helper
            entry.mark = exp.master.mark
        elif template.helper is not None:
            helper = self.helpers.get(template.helper)
            if helper is not None and helper.proto == t.proto:
                entry.helper = template.helper
                entry.status |= IPS_HELPER  # __nf_ct_try_assign_helper()
        return entry

    def _early_drop(self, now: float) -> bool:
        """early_drop(): evict one unassured entry (oldest first, bounded scan)."""
        for i, entry in enumerate(self._iter_entries()):
            if i >= EARLY_DROP_SCAN:
                break
            if entry.expires_at <= now or not entry.status & IPS_ASSURED:
                self._destroy(entry, now, "timeout" if entry.expires_at <= now
                              else "early_drop")
                self.stats["early_drop"] += 1
                return True
        return False

    # ------------------------------------------------------------------ commit
    def confirm(self, res: CtResult, now: float) -> CtResult:
        """Insert an unconfirmed entry (`ct commit`); deliver cached events.

        Returns the result the packet continues with: a clash with an entry
        inserted meanwhile makes the packet take that entry (nf_ct_resolve_clash)."""
        entry = res.entry
        if entry is None:
            return res
        if entry.status & IPS_CONFIRMED:
            self.deliver(entry, now)
            return res
        if entry.status & IPS_DYING:  # killed by its tracker before it was inserted
            self.stats["insert_failed"] += 1
            return CtResult(None, INVALID_CTINFO, l4proto.DROP, "entry died before commit")
        zmap = self._zones.get(entry.zone)
        if zmap is None:  # (setdefault() would build a dict at every call)
            zmap = self._zones[entry.zone] = {}
        clash = zmap.get(entry.orig) or zmap.get(entry.reply)
        if clash is not None:
            self.stats["insert_failed"] += 1
            if clash.orig == entry.orig and clash.reply == entry.reply:
                return CtResult(clash, res.ctinfo, res.verdict, "clash resolved")
            return CtResult(None, INVALID_CTINFO, l4proto.DROP, "insert clash")
        zmap[entry.orig] = entry
        zmap[entry.reply] = entry
        entry.status |= IPS_CONFIRMED
        self._count += 1
        self.stats["insert"] += 1
        entry.events |= IPCT_RELATED if entry.status & IPS_EXPECTED else IPCT_NEW
        self._schedule(entry)
        self.deliver(entry, now)
        return res

    def help(self, res: CtResult, pkt: Packet, now: float) -> int:
        """Run the entry's helper (ALG) on the packet, as nf_confirm() does before
        confirmation; helpers create expectations. Returns an NF verdict."""
        entry = res.entry
        if entry is None or entry.helper is None or res.ctinfo == IP_CT_RELATED_REPLY:
            return l4proto.ACCEPT
        helper = self.helpers.get(entry.helper)
        if helper is None:
            return l4proto.ACCEPT
        return int(helper.help(self, entry, pkt, res.direction, res.ctinfo, now))

    def commit(self, pkt: Packet, now: float,
               template: Template = DEFAULT_TEMPLATE) -> CtResult:
        """track + help + confirm: what iptables does for every packet, and what
        `action ct commit` does in tc."""
        raw = self.track_raw(pkt, now, template)
        res = raw if raw.__class__ is CtResult else _new_tuple(CtResult, raw)
        entry = res[0]
        if entry is not None and entry.status & IPS_CONFIRMED and not entry.events:
            # An established flow without a helper: help() and confirm() would do nothing.
            ext = entry.ext
            if ext is None or ext.helper is None:
                return res
        return self.commit_tracked(res, pkt, now)

    def commit_tracked(self, res: CtResult, pkt: Packet, now: float) -> CtResult:
        """help + confirm for a packet track() has already classified."""
        if res.entry is None:
            return res
        if self.help(res, pkt, now) != l4proto.ACCEPT:
            return CtResult(None, INVALID_CTINFO, l4proto.DROP, "dropped by helper")
        return self.confirm(res, now)

    # ------------------------------------------------------------------ updates
    def refresh(self, entry: Entry, seconds: float, now: float) -> None:
        """nf_ct_refresh(): the entry now expires `seconds` from `now`."""
        if entry.status & IPS_FIXED_TIMEOUT:
            return
        entry.timeout = seconds
        at = now + seconds
        entry.expires_at = at
        if at < entry.heap_at and entry.status & IPS_CONFIRMED:
            self._add_timer(entry, at)  # sooner than its timer: another one

    def set_mark(self, entry: Entry, value: int, mask: int = 0xFFFFFFFF) -> None:
        """act_ct's mark rule: new = value | (old & ~mask); no-op with mask 0."""
        if not mask:
            return
        new = (value | (entry.mark & ~mask)) & 0xFFFFFFFF
        if new != entry.mark:
            entry.mark = new
            if entry.status & IPS_CONFIRMED:
                entry.events |= IPCT_MARK

    def set_labels(self, entry: Entry, value: int, mask: int) -> None:
        """nf_connlabels_replace(): new = (old & ~mask) ^ value."""
        full = (1 << 128) - 1
        new = ((entry.labels & ~mask) ^ value) & full
        if new != entry.labels:
            entry.labels = new
            entry.events |= IPCT_LABEL

    def deliver(self, entry: Entry, now: float) -> None:
        """nf_ct_deliver_cached_events(): one ctnetlink message for the cached bits."""
        bits = entry.events
        if not bits or not entry.status & IPS_CONFIRMED or entry.status & IPS_DYING:
            return  # (a dying entry: killed by its tracker, e.g. TCP's RST before a reply)
        entry.events = 0
        if self.emit_events:
            self._events.append(_CtEvent(event_type(bits), bits, self.view(entry, now), now))

    def kill(self, entry: Entry, now: float, reason: str = "kill") -> None:
        """nf_ct_kill(): remove the entry now (DESTROY event if it was inserted;
        `reason` goes into the event, see events.DESTROY_REASONS)."""
        if entry.status & IPS_CONFIRMED:
            self._destroy(entry, now, reason)
        else:
            entry.status |= IPS_DYING

    def _destroy(self, entry: Entry, now: float, reason: str = "kill") -> None:
        zmap = self._zones.get(entry.zone)
        if zmap is None or zmap.get(entry.orig) is not entry:
            return  # not in the table (any more)
        del zmap[entry.orig]
        if zmap.get(entry.reply) is entry:
            del zmap[entry.reply]
        self._count -= 1
        entry.status |= IPS_DYING
        if self.offload_gone is not None and entry.status & IPS_OFFLOAD:
            self.offload_gone.append(entry)
        self.expect.remove_master(entry)
        if self.emit_events:
            self._events.append(_CtEvent(event_type(IPCT_DESTROY), IPCT_DESTROY | entry.events,
                                        self.view(entry, now), now, reason))
        entry.events = 0

    def insert_synced(self, entry: Entry, now: float) -> bool:
        """Insert an entry built elsewhere (replication): no tracker runs, no
        events are emitted. Returns False if its tuples clash with another entry."""
        zmap = self._zones.get(entry.zone)
        if zmap is None:  # (setdefault() would build a dict at every call)
            zmap = self._zones[entry.zone] = {}
        for t in (entry.orig, entry.reply):
            other = zmap.get(t)
            if other is not None and other is not entry:
                return False
        entry.id = self._next_id
        self._next_id += 1
        zmap[entry.orig] = entry
        zmap[entry.reply] = entry
        entry.status |= IPS_CONFIRMED
        entry.heap_at = float("inf")
        self._count += 1
        self._schedule(entry)
        return True

    def _schedule(self, entry: Entry) -> None:
        if entry.expires_at < entry.heap_at:
            self._add_timer(entry, entry.expires_at)

    def _add_timer(self, entry: Entry, at: float) -> None:
        """A timer for `entry` at `at`, in the wheel: the slot of its second."""
        entry.heap_at = at
        second = math.floor(at)
        slot = self._wheel.get(second)
        if slot is None:
            self._wheel[second] = [entry]
            heapq.heappush(self._seconds, second)
        else:
            slot.append(entry)

    def _open_second(self) -> None:
        """Move the wheel's first second into the exact heap (its live timers)."""
        second = heapq.heappop(self._seconds)
        heap = self._heap
        for entry in self._wheel.pop(second):
            at = entry.heap_at
            if second <= at < second + 1 and not entry.status & IPS_DYING:
                heapq.heappush(heap, (at, entry.id, entry))

    # ------------------------------------------------------------------ time
    def expire(self, now: float) -> int:
        """Remove every entry (and expectation) whose timeout has passed."""
        seconds = self._seconds
        while seconds and seconds[0] <= now:
            self._open_second()
        heap = self._heap
        gone = 0
        while heap and heap[0][0] <= now:
            at, _, entry = heapq.heappop(heap)
            if at != entry.heap_at or entry.status & IPS_DYING:
                continue  # stale item: the entry was rescheduled or is gone
            entry.heap_at = float("inf")
            if entry.expires_at <= now:
                self._destroy(entry, now, "timeout")
                gone += 1
            else:
                self._schedule(entry)
        self.stats["expired"] += gone
        self.expect.expire(now)
        return gone

    def next_deadline(self) -> float | None:
        """The earliest time at which expire() may have work (a lower bound)."""
        heap = self._heap
        seconds = self._seconds
        while True:
            while heap and (heap[0][0] != heap[0][2].heap_at or heap[0][2].status & IPS_DYING):
                heapq.heappop(heap)
            if not seconds or (heap and heap[0][0] <= seconds[0]):
                break
            self._open_second()  # it may hold a sooner timer
        candidates = [heap[0][0]] if heap else []
        exp = self.expect.next_deadline()
        if exp is not None:
            candidates.append(exp)
        return min(candidates) if candidates else None

    def flush(self, now: float) -> None:
        for entry in self.entries():
            self._destroy(entry, now, "flush")
        self.expect.clear()

    # ------------------------------------------------------------------ output
    def take_events(self) -> list[CtEvent]:
        events, self._events = self._events, []
        return events

    @property
    def pending_events(self) -> int:
        """Events not taken yet (a packet that adds to them changed a connection)."""
        return len(self._events)

    def view(self, entry: Entry, now: float) -> CtView:
        tracker = TRACKERS.get(entry.orig.proto, GENERIC)
        ext = entry.ext
        acct = ext.acct if ext is not None and ext.acct is not None else _NO_ACCT
        master = entry.master
        # Positional, in CtView's field order (test_view_fields_by_name checks it):
        # CPython matches 16 keywords one by one, 0.8 us a view (of about 3).
        return _CtView(
            entry.id, entry.orig, entry.reply, entry.zone, entry.status,
            tracker.state_name(entry), entry.expires_at - now, entry.mark, entry.labels,
            entry.helper, master.orig if master else None,
            (acct[0], acct[2]), (acct[1], acct[3]), entry.timeout,
            tracker.capture(entry), tracker)

    def dump(self, now: float) -> list[CtView]:
        return [self.view(e, now) for e in self._iter_entries()]


_NO_ACCT = (0, 0, 0, 0)
_CtView = fast_constructor(CtView)  # one per event and per listed entry
_CtEvent = fast_constructor(CtEvent)


def _entries_of(zmap: dict[_Key, Entry]) -> Iterator[Entry]:
    """The entries of one zone's map: each is the value of its orig tuple."""
    return (entry for t, entry in zmap.items() if t is entry.orig)
