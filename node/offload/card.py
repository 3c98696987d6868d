"""The emulated offload card, as act_ct and the datapath see it.

One Card serves one conntrack table (netns). It joins act_ct's flow tables to the
card's hardware CT table, modelled on Linux 6.18 and mlx5:

  sw_lookup()  act_ct.c tcf_ct_flow_table_lookup(): the software fast path
  offer()      act_ct.c tcf_ct_flow_table_process_conn() (+ flow_offload_refresh())
  lookup()     the hardware pipeline's CT table lookup (mlx5 en/tc_ct.c): a hit is
               handled and counted in hardware; a miss says why
  poll()       every second: mlx5's bulk counter read (fs_counters.c) and the flow
               table GC (nf_flow_table_core.c nf_flow_offload_gc_step()) with its
               hardware stats jobs (nf_flow_table_offload.c flow_offload_work_stats())
The GC and the add/del/stats commands behind these are in work.py.

Time is an argument; commands take effect `insert_latency` later and complete lazily
at the next call that sees them due (next_deadline() says when).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from typing import Any

import numpy as np

from node.conntrack.entry import (
    IP_CT_ESTABLISHED,
    IP_CT_ESTABLISHED_REPLY,
    IP_CT_NEW,
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_DYING,
    IPS_HELPER,
    IPS_OFFLOAD,
    IPS_SEEN_REPLY,
    IPS_SEQ_ADJUST,
    Entry,
)
from node.conntrack.table import Conntrack
from node.conntrack.tcp_table import sES
from node.conntrack.tuple import Tuple
from node.offload import flowtable as ft
from node.offload.faults import Faults
from node.offload.flowtable import FlowTables
from node.offload.hwtable import (
    DYING,
    FULL,
    IN_HW,
    PENDING,
    HwState,
    HwTable,
)
from node.offload.outcomes import (
    MISS,
    CardCounters,
    FlowInfo,
    HwHit,
    HwMiss,
    MissReason,
    PollResult,
    SwHit,
)
from node.offload.policy import BOTH, Direction, flow_key, should_offload
from node.offload.work import Work
from node.packet import IPPROTO_TCP, TCP_FIN, TCP_RST, Packet, Tcp

_new_tuple = tuple.__new__
_UNSUPPORTED, _NO_ENTRY, _FIN_RST, _TABLE_FULL = (
    MissReason.UNSUPPORTED, MissReason.NO_ENTRY, MissReason.FIN_RST, MissReason.TABLE_FULL)
_QUEUED_OR_IN = (IN_HW, PENDING)  # a direction whose hardware entry is there or queued
SYNC_RETRY_FOR = 30.0  # seconds a replicated entry's card state is retried
# _steady(): an established, assured, offloaded TCP connection (no helper, no
# seq adjust) whose flow is offloaded both ways and marked established
_STEADY_MASK = (IPS_OFFLOAD | IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED | IPS_HELPER
                | IPS_SEQ_ADJUST)
_STEADY = IPS_OFFLOAD | IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED
_STEADY_FLOW_MASK = ft.NF_FLOW_TEARDOWN | ft.NF_FLOW_HW_BIDIRECTIONAL | ft.NF_FLOW_HW_ESTABLISHED
_STEADY_FLOW = ft.NF_FLOW_HW_BIDIRECTIONAL | ft.NF_FLOW_HW_ESTABLISHED


def _fin_or_rst(pkt: Packet) -> bool:
    l4 = pkt.l4
    return isinstance(l4, Tcp) and bool(l4.flags & (TCP_FIN | TCP_RST))


class Card:
    """An offload card bound to one conntrack table.

    What the datapath calls, and when:
      1. A packet reaching a port whose offloaded filter runs a ct action in `zone`:
         lookup(pkt, zone, now). HwHit: handled in hardware (the ct info to match
         the rest of the rule on, its NAT rewrite); HwMiss(reason): continue in
         software right after that ct action (mlx5 restores chain and action).
      2. In software, act_ct for a packet without a cached ct of that zone:
         sw_lookup(pkt, zone, now) first. SwHit: attach entry/ctinfo, skip
         conntrack. None: conntrack (+ commit, nat, mark, labels), then
         offer(entry, ctinfo, now) if it returned an entry.
      3. At next_deadline() (every second, or when a command is due): poll(now),
         timed by the caller, who stores the duration in counters.last_poll_s.
    The TC layer lists in sw_only_zones the zones whose ct action is not in
    hardware. Replication calls install_synced() for a replicated entry and
    touch() for a peer's traffic.
    """

    def __init__(self, ct: Conntrack, faults: Faults | None = None, *,
                 poll_interval: float = 1.0) -> None:
        self.ct = ct
        self.faults = faults if faults is not None else Faults()
        self.flows = FlowTables(ct)
        self.hw = HwTable(self.faults, 2 * self.flows.size)
        self.counters = CardCounters()
        self.poll_interval = poll_interval
        # Zones whose ct action is not in hardware (no driver callback bound to
        # their flow table): flows stay software-only. The TC layer fills this.
        self.sw_only_zones: set[int] = set()
        if ct.offload_gone is None:
            ct.offload_gone = []
        self.work = Work(ct, self.flows, self.hw, self.counters, self.sw_only_zones)
        self._next_gc = float("-inf")
        # Replicated entries whose card state has not caught up with their last
        # record yet (a command in flight, a flow still being torn down, a failed
        # insert): entry id -> (entry, retry until). Retried by poll().
        self._catch_up: dict[int, tuple[Entry, float]] = {}

    # ================================================================ packet path
    def lookup(self, pkt: Packet, zone: int, now: float) -> HwHit | HwMiss:
        """The card's CT table lookup for a packet whose offloaded ct action runs in
        `zone`. A hit is counted in hardware; a FIN/RST also tears the flow down."""
        if self.work.jobs and self.work.jobs[0][0] <= now:
            self.work.run_due(now)
        c = self.counters
        key = flow_key(pkt)
        if key is None:
            c.misses[_UNSUPPORTED] += 1
            return MISS[_UNSUPPORTED]
        slot = self.flows.code(key, zone)
        if slot < 0:
            c.misses[_NO_ENTRY] += 1
            return MISS[_NO_ENTRY]
        if _fin_or_rst(pkt):
            self.work.teardown(slot >> 1, now, "fin_rst")
            c.misses[_FIN_RST] += 1
            return MISS[_FIN_RST]
        hw = self.hw
        st = hw.state[slot]
        if st != IN_HW and st != DYING:
            reason = _TABLE_FULL if st == FULL else _NO_ENTRY
            c.misses[reason] += 1
            return MISS[reason]
        length = pkt.length
        hw.packets[slot] += 1
        hw.bytes[slot] += length
        hw.dirty[slot] = 1
        c.hw_packets += 1
        c.hw_bytes += length
        return _new_tuple(HwHit, (self.flows.owners[slot >> 1], slot & 1, hw.ctinfo[slot],
                                  hw.mark[slot], hw.labels.get(slot, 0) if hw.labels else 0,
                                  slot))

    def resolve(self, tuples: Sequence[Tuple], zone: int) -> np.ndarray:
        """Batch path, step 1: the hardware slot of each tuple (-1: none)."""
        omap = self.flows.orig_index.get(zone)
        if not omap:
            return np.full(len(tuples), -1, np.int64)
        codes = np.fromiter(map(omap.get, tuples, repeat(-1)), np.int64, len(tuples))
        miss = np.flatnonzero(codes < 0)
        codes[codes >= 0] <<= 1
        if miss.size:  # reply tuples (or none)
            rmap = self.flows.reply_index[zone]
            fids = np.fromiter(map(rmap.get, map(tuples.__getitem__, miss.tolist()), repeat(-1)),
                               np.int64, miss.size)
            codes[miss] = np.where(fids >= 0, fids << 1 | 1, -1)
        return codes

    def hit_batch(self, slots: np.ndarray, lengths: np.ndarray, now: float) -> np.ndarray:
        """Batch path, step 2: count hits for packets already resolved to slots
        (established traffic: no FIN/RST, supported headers). Returns the hit mask;
        the misses are counted as NO_ENTRY or TABLE_FULL."""
        if self.work.jobs and self.work.jobs[0][0] <= now:
            self.work.run_due(now)
        hw = self.hw
        slots = np.asarray(slots, np.int64)
        lengths = np.asarray(lengths, np.int64)
        st = np.where(slots >= 0, hw.state_v[np.maximum(slots, 0)], 0)
        hit = (st == IN_HW) | (st == DYING)
        hs = slots[hit]
        hl = lengths[hit]
        np.add.at(hw.packets_v, hs, 1)
        np.add.at(hw.bytes_v, hs, hl)
        hw.dirty_v[hs] = 1
        c = self.counters
        c.hw_packets += int(hs.size)
        c.hw_bytes += int(hl.sum())
        full = int(np.count_nonzero(st == FULL))
        c.misses[_TABLE_FULL] += full
        c.misses[_NO_ENTRY] += int(slots.size - hs.size) - full
        return hit

    def sw_lookup(self, pkt: Packet, zone: int, now: float) -> SwHit | None:
        """act_ct's flow table lookup before conntrack (tcf_ct_flow_table_lookup()).
        A hit carries the entry and ctinfo to attach, and conntrack is skipped;
        None means "run conntrack" (then call offer())."""
        if self.work.jobs and self.work.jobs[0][0] <= now:
            self.work.run_due(now)
        key = flow_key(pkt)
        if key is None:
            return None
        flows = self.flows
        code = flows.code(key, zone)
        if code < 0:
            return None
        fid, direction = code >> 1, code & 1
        flags = flows.flags[fid]
        entry = flows.owners[fid]
        if flags & ft.NF_FLOW_TEARDOWN or entry.status & IPS_DYING:
            return None
        force = False
        if direction and not flags & ft.NF_FLOW_HW_BIDIRECTIONAL:
            # Only offload the reply direction once the connection is assured.
            if entry.status & IPS_ASSURED:
                flows.flags[fid] = flags | ft.NF_FLOW_HW_BIDIRECTIONAL
            elif flags & ft.NF_FLOW_HW_ESTABLISHED:
                flows.mark_ct_seen(fid, now)
                return None
            force = True
        if _fin_or_rst(pkt):
            self.work.teardown(fid, now, "fin_rst")
            return None
        if direction:
            ctinfo = IP_CT_ESTABLISHED_REPLY
        else:
            ctinfo = IP_CT_ESTABLISHED if entry.status & IPS_SEEN_REPLY else IP_CT_NEW
        self.work.refresh(fid, now, force)
        if not entry.status & IPS_ASSURED:
            flows.mark_ct_seen(fid, now)
            return None  # let conntrack see it, so it can become ASSURED
        if self.ct.sysctl.nf_conntrack_acct:  # nf_ct_acct_update(), as conntrack does
            acct = entry.acct
            acct[2 * direction] += 1
            acct[2 * direction + 1] += pkt.length
        self.counters.sw_packets += 1
        self.counters.sw_bytes += pkt.length
        return SwHit(entry, ctinfo, direction)

    def offer(self, entry: Entry, ctinfo: int, now: float) -> Direction | None:
        """After conntrack (and commit) for a packet that passed a ct action:
        add the connection to its zone's flow table if act_ct's rule allows, and
        queue the hardware insert. Returns the directions added, or None.
        An entry already in the flow table is refreshed instead."""
        if self.work.jobs and self.work.jobs[0][0] <= now:
            self.work.run_due(now)
        direction = should_offload(entry, ctinfo)
        if direction is None:
            return None
        if entry.status & IPS_OFFLOAD:
            fid = self.flows.fid_of(entry)
            if fid >= 0 and not self.flows.flags[fid] & ft.NF_FLOW_TEARDOWN:
                self.flows.mark_ct_seen(fid, now)
                self.work.refresh(fid, now, False)
            return None
        hw = entry.zone not in self.sw_only_zones
        fid = self.flows.add(entry, entry.orig.proto == IPPROTO_TCP,
                             direction == BOTH, hw, now)
        if fid < 0:
            return None
        self.hw.ensure(2 * self.flows.size)
        self.counters.flows_added += 1
        if hw:
            self.work.add(fid, now)
        return direction

    def install_synced(self, entry: Entry, now: float) -> Direction | None:
        """Pre-install a replicated connection (already in this node's conntrack)
        without traffic, as act_ct would on its next packet, and keep it as the
        origin's card holds it when a later record changes it: the original
        direction's ct info once replied, the reply direction once assured (UDP),
        a teardown once it is no longer offloadable (a TCP FIN or RST on the
        origin). What cannot be done now (a command in flight, the tuples still
        held by a flow being torn down, a failed insert) is retried by poll().
        Returns the directions added for a new flow, None otherwise (not
        offloadable, or an update of a flow already in the card)."""
        if self.work.jobs and self.work.jobs[0][0] <= now:
            self.work.run_due(now)
        status = entry.status
        if status & IPS_OFFLOAD:
            if not self._steady(entry, status):
                self._update_synced(entry, IP_CT_ESTABLISHED if status & IPS_SEEN_REPLY
                                    else IP_CT_NEW, now)
            return None
        ctinfo = IP_CT_ESTABLISHED if status & IPS_SEEN_REPLY else IP_CT_NEW
        direction = self.offer(entry, ctinfo, now)
        if direction is not None:
            self.counters.synced += 1
            self._check_synced(entry, now)
        elif not entry.status & (IPS_OFFLOAD | IPS_DYING) \
                and should_offload(entry, ctinfo) is not None:
            self._later(entry, now)  # its tuples are still in a flow being torn down
        else:
            self._catch_up.pop(entry.id, None)
        return direction

    def install_synced_many(self, entries: Sequence[Entry], now: float
                            ) -> list[Direction | None]:
        """install_synced() of each entry in turn, with the same outcome (the
        same flows, hardware entries, counters, jobs and retries). New
        connections, such as the creates of a replica's frame, go in together
        when the card can take all of their inserts at once: no fault armed,
        room for every entry, a token each without waiting. Otherwise, or if
        one of them is already offloaded, dying or in a software-only zone,
        they go one by one."""
        if not entries:
            return []
        if self.work.jobs and self.work.jobs[0][0] <= now:
            self.work.run_due(now)
        flows, sw_only = self.flows, self.sw_only_zones
        directions: list[Direction | None] = []
        new: list[Entry] = []
        both: list[bool] = []
        for entry in entries:
            status = entry.status
            if status & (IPS_OFFLOAD | IPS_DYING) or entry.zone in sw_only:
                return [self.install_synced(e, now) for e in entries]
            direction = should_offload(entry, IP_CT_ESTABLISHED if status & IPS_SEEN_REPLY
                                       else IP_CT_NEW)
            if direction is not None and flows.free_for(entry):
                new.append(entry)
                both.append(direction == BOTH)
            directions.append(direction)
        if new and (len(set(map(id, new))) != len(new)  # (one entry twice: in turn)
                    or not self.hw.take_tokens(len(new) + sum(both), now)):
            return [self.install_synced(e, now) for e in entries]
        if new:
            fids = flows.add_many(new, both, True, now)
            self.hw.ensure(2 * flows.size)
            self.work.add_new(fids, now)
            self.counters.flows_added += len(new)
            self.counters.synced += len(new)
        catch_up = self._catch_up
        for i, (entry, direction) in enumerate(zip(entries, directions, strict=True)):
            if direction is None:
                if catch_up:
                    catch_up.pop(entry.id, None)
            elif not entry.status & IPS_OFFLOAD:  # its tuples are still held by a flow
                self._later(entry, now)  # being torn down
                directions[i] = None
            elif catch_up:
                catch_up.pop(entry.id, None)
        return directions

    def _update_synced(self, entry: Entry, ctinfo: int, now: float) -> None:
        """An offloaded replicated entry changed: bring its flow up to date."""
        flows = self.flows
        fid = flows.fid_of(entry)
        if fid < 0:
            return
        flags = flows.flags[fid]
        if flags & ft.NF_FLOW_TEARDOWN:
            self._later(entry, now)  # re-added once freed, if still offloadable
            return
        direction = should_offload(entry, ctinfo)
        if direction is None:  # the origin's act_ct tore it down (FIN, RST)
            self._catch_up.pop(entry.id, None)
            self.work.teardown(fid, now, "synced")
            return
        want = flags
        if direction == BOTH:
            want |= ft.NF_FLOW_HW_BIDIRECTIONAL
        if entry.zone in self.sw_only_zones:
            flows.flags[fid] = want
            self._catch_up.pop(entry.id, None)
            return
        stale = want != flags or (ctinfo == IP_CT_ESTABLISHED
                                  and not flags & ft.NF_FLOW_HW_ESTABLISHED) \
            or not self._in_card(fid, want)
        if not stale:
            self._catch_up.pop(entry.id, None)
            return
        if flags & ft.NF_FLOW_HW_PENDING:
            self._later(entry, now)  # one command in flight per flow
            return
        flows.flags[fid] = want
        self.work.add(fid, now)
        self._check_synced(entry, now)

    def _steady(self, entry: Entry, status: int) -> bool:
        """_update_synced()'s usual case, decided in one call (a standby's card
        follows every record of every connection it holds): an established,
        assured TCP connection, which should_offload() offloads both ways, whose
        flow is not being torn down, is bidirectional and established, and has
        both hardware entries in the card or queued. _update_synced() would then
        only forget a pending retry; so does this, and returns True. False
        says nothing: _update_synced() decides. should_offload(), fid_of() and
        _in_card() are written out here, not called (the calls were most of the
        follow-up's cost): a change to one of them is a change here too
        (tests/node/test_offload_steady.py compares the two paths)."""
        if status & _STEADY_MASK != _STEADY or entry.orig[1] != IPPROTO_TCP:
            return False
        conn = entry.proto
        if conn is None or (conn[0] if conn.__class__ is bytes else conn.state) != sES:
            return False
        ext = entry.ext
        if ext is not None and ext.helper is not None:
            return False
        flows = self.flows  # (a flow of a software-only zone has no hardware entries)
        omap = flows.orig_index.get(entry.zone)
        fid = omap.get(entry.orig) if omap is not None else None
        if fid is None or flows.owners[fid] is not entry \
                or flows.flags[fid] & _STEADY_FLOW_MASK != _STEADY_FLOW:
            return False
        state = self.hw.state
        if state[2 * fid] not in _QUEUED_OR_IN or state[2 * fid + 1] not in _QUEUED_OR_IN:
            return False
        if self._catch_up:
            self._catch_up.pop(entry.id, None)
        return True

    def _in_card(self, fid: int, flags: int) -> bool:
        """Every direction `flags` offloads has its hardware entry (or its insert
        queued)."""
        state = self.hw.state
        if state[2 * fid] not in _QUEUED_OR_IN:
            return False
        return not flags & ft.NF_FLOW_HW_BIDIRECTIONAL or state[2 * fid + 1] in _QUEUED_OR_IN

    def _check_synced(self, entry: Entry, now: float) -> None:
        """After a synced add: an insert that failed (busy, full, fault) is retried."""
        fid = self.flows.fid_of(entry)
        if fid >= 0 and entry.zone not in self.sw_only_zones \
                and not self._in_card(fid, self.flows.flags[fid]):
            self._later(entry, now)
        else:
            self._catch_up.pop(entry.id, None)

    def _later(self, entry: Entry, now: float) -> None:
        old = self._catch_up.get(entry.id)
        if old is None or old[0] is not entry:
            self._catch_up[entry.id] = (entry, now + SYNC_RETRY_FOR)

    def _retry_synced(self, now: float) -> None:
        """poll(): replicated entries whose card state could not follow their last
        record get another go (for SYNC_RETRY_FOR seconds)."""
        for eid, (entry, until) in list(self._catch_up.items()):
            if entry.status & IPS_DYING or until < now:
                del self._catch_up[eid]
                continue
            self.install_synced(entry, now)

    def touch(self, entry: Entry, lastused: float, now: float) -> bool:
        """A peer saw traffic on this connection at `lastused`: extend its flow
        timeout as a hardware stats job would (distributed aging)."""
        fid = self.flows.fid_of(entry)
        if fid < 0 or self.flows.flags[fid] & ft.NF_FLOW_TEARDOWN:
            return False
        timeout = lastused + self.flows.period[fid]
        if timeout > self.flows.timeout[fid]:
            self.flows.timeout[fid] = timeout
        return True

    # ================================================================ time
    def next_deadline(self) -> float:
        """When poll() next has work: the next GC, or an earlier command completion."""
        return min(self._next_gc, self.work.next_due())

    def poll(self, now: float) -> PollResult:
        """Complete due commands; once per poll_interval also read all counters
        (bulk) and run the flow table GC: teardown of idle / dying / outdated flows,
        hardware deletes, frees, stats jobs. Returns what happened since the last
        poll."""
        work = self.work
        if work.jobs and work.jobs[0][0] <= now:
            work.run_due(now)
        gc = now >= self._next_gc
        if self._catch_up and gc:  # before the GC finds an outdated flow
            self._retry_synced(now)
        freed = stats_jobs = 0
        active = np.zeros(0, np.int64)
        if gc:
            self._next_gc = now + self.poll_interval
            self.counters.polls += 1
            moved = self.hw.bulk_read(now, 2 * len(self.flows.owners))
            if moved.size:
                active = self.flows.cookie_v[moved]
            freed, stats_jobs = work.gc(now)
        result = PollResult(now, gc, tuple(work.completed), tuple(work.failed),
                            tuple(work.teardowns), freed, stats_jobs, active)
        work.completed.clear()
        work.failed.clear()
        work.teardowns.clear()
        return result

    # ================================================================ inspection
    def inspect(self, entry: Entry) -> FlowInfo | None:
        """The entry's flow (flags, timeout) and hardware entries, or None."""
        fid = self.flows.fid_of(entry)
        if fid < 0:
            return None
        hw = self.hw
        s = (2 * fid, 2 * fid + 1)
        return FlowInfo(ft.flag_names(self.flows.flags[fid]),
                        self.flows.timeout[fid],
                        (HwState(hw.state[s[0]]), HwState(hw.state[s[1]])),
                        (hw.packets[s[0]], hw.packets[s[1]]),
                        (hw.bytes[s[0]], hw.bytes[s[1]]),
                        (float(hw.lastuse[s[0]]), float(hw.lastuse[s[1]])))

    @property
    def stats(self) -> dict[str, Any]:
        """Card statistics: entries, inserts, failures, misses by reason, packets."""
        out = self.counters.as_dict()
        out["entries"] = self.hw.entries
        out["flows"] = len(self.flows)
        out["capacity"] = self.faults.capacity
        return out


__all__ = ["Card"]
