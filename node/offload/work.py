"""The flow tables' periodic work and the card commands behind them.

Transcribed from Linux 6.18:
  gc()        nf_flow_table_core.c nf_flow_offload_gc_step(), for every flow each second:
              teardown of flows whose ct died, that expired (idle) or that act_ct
              finds outdated (tcf_ct_flow_is_outdated()); the conntrack hold
              (nf_flow_table_extend_ct_timeout()); the hardware delete of torn-down
              flows and their free once deleted; stats jobs for live hardware flows
  add()       nf_flow_offload_add() + flow_offload_work_add(): REPLACE per direction;
              with mlx5, -EEXIST for an installed entry with the same restore cookie
              (ctinfo), an in-place update otherwise (en/tc_ct.c:1190-1215)
  delete()    nf_flow_offload_del() + flow_offload_work_del()
  _stats()    nf_flow_offload_stats() + flow_offload_work_stats()
One command is in flight per flow (NF_FLOW_HW_PENDING); a command takes effect
`insert_latency` after it is issued (a heap of due times) and completes lazily.
"""

from __future__ import annotations

import heapq
from operator import attrgetter

import numpy as np

from node.conntrack.entry import (
    IP_CT_ESTABLISHED,
    IP_CT_ESTABLISHED_REPLY,
    IP_CT_NEW,
    IPS_HW_OFFLOAD,
    IPS_SEEN_REPLY,
)
from node.conntrack.table import Conntrack
from node.offload import flowtable as ft
from node.offload.flowtable import FlowTables
from node.offload.hwtable import (
    DYING,
    IN_HW,
    INSERT_FAILURE_NAMES,
    INSERT_OK,
    PENDING,
    HwTable,
)
from node.offload.outcomes import CardCounters, InsertDone, InsertFailed, Teardown

_new = tuple.__new__  # builds a NamedTuple in C, without its Python __new__

_ADD, _DEL = 0, 1
STATS_FRACTION = 0.9  # nf_flow_offload_stats(): only when less than 90 % of T is left
STATS_BUDGET_MIN = 65536  # stats jobs a poll always runs if due
HOLD_SCAN_SLICES = 16  # the ct hold check reads 1/16 of the entries' timeouts per poll
_expires = attrgetter("expires_at")


class Work:
    """The GC step and the add/del/stats commands of one card's flow tables."""

    def __init__(self, ct: Conntrack, flows: FlowTables, hw: HwTable,
                 counters: CardCounters, sw_only_zones: set[int]) -> None:
        self.ct = ct
        self.flows = flows
        self.hw = hw
        self.counters = counters
        self.sw_only_zones = sw_only_zones
        self.jobs: list[tuple[float, int, int, int]] = []  # (due, seq, kind, fid)
        self._seq = 0
        self._scan_slice = 0
        self.completed: list[InsertDone] = []
        self.failed: list[InsertFailed] = []
        self.teardowns: list[Teardown] = []

    def next_due(self) -> float:
        return self.jobs[0][0] if self.jobs else float("inf")

    def gc(self, now: float) -> tuple[int, int]:
        """nf_flow_offload_gc_step() for every flow, vectorized: teardown of flows
        whose ct died, that expired (idle) or are outdated; the ct hold; then the
        hardware delete of torn-down flows, their free once deleted, and the stats
        jobs of live hardware flows."""
        flows = self.flows
        gone = self.ct.offload_gone
        if gone:  # nf_ct_is_dying(flow->ct), learnt from conntrack as it happens
            for entry in gone:
                fid = flows.fid_of(entry)
                if fid >= 0:
                    self.teardown(fid, now, "ct_dying")
            gone.clear()
        n = len(flows.owners)
        if not flows.count:
            return 0, 0
        owners = flows.owners
        flags = flows.flags_v[:n]
        timeout = flows.timeout_v[:n]
        used = (flags & ft.FLOW_USED) != 0
        live = used & ((flags & ft.NF_FLOW_TEARDOWN) == 0)
        for fid in np.flatnonzero(live & (timeout <= now)).tolist():
            self.teardown(fid, now, "idle")
        # tcf_ct_flow_is_outdated(): offloaded as NEW (no HW_ESTABLISHED), replied
        # since, in hardware and no update queued: torn down to be re-added.
        maybe = live & ((flags & (ft.NF_FLOW_HW_PENDING | ft.NF_FLOW_HW_ESTABLISHED)) == 0) \
            & (self.hw.state_v[0:2 * n:2] == IN_HW)
        both = IPS_SEEN_REPLY | IPS_HW_OFFLOAD
        for fid in np.flatnonzero(maybe).tolist():
            if owners[fid].status & both == both and not flows.flags[fid] & ft.NF_FLOW_TEARDOWN:
                self.teardown(fid, now, "outdated")
        flags = flows.flags_v[:n]
        td = used & ((flags & ft.NF_FLOW_TEARDOWN) != 0)
        live = used & ~td
        check_at = flows.ct_check_at_v
        # Any other writer of a held entry's timeout (a replica update ...) is seen
        # within HOLD_SCAN_SLICES polls: each poll reads a slice of the entries.
        lo = self._scan_slice * n // HOLD_SCAN_SLICES
        hi = (self._scan_slice + 1) * n // HOLD_SCAN_SLICES
        self._scan_slice = (self._scan_slice + 1) % HOLD_SCAN_SLICES
        if hi > lo:
            expires = np.fromiter(map(_expires, owners[lo:hi]), np.float64, hi - lo)
            np.minimum(check_at[lo:hi], expires - ft.CT_HOLD_MIN, out=check_at[lo:hi])
        for fid in np.flatnonzero(live & (check_at[:n] <= now)).tolist():
            entry = owners[fid]
            ft.extend_ct_timeout(self.ct, entry, now)
            check_at[fid] = entry.expires_at - ft.CT_HOLD_MIN
        hwf = (flags & ft.NF_FLOW_HW) != 0
        # Torn down: queue the hardware delete, or free once the delete is done.
        to_del = td & hwf & ((flags & ft.NF_FLOW_HW_DYING) == 0)
        to_free = td & (~hwf | ((flags & ft.NF_FLOW_HW_DEAD) != 0))
        to_stat = live & hwf & ((flags & ft.NF_FLOW_HW_PENDING) == 0) \
            & (timeout - now < STATS_FRACTION * flows.period_v[:n])
        stats_jobs = self._stats(self._most_urgent(np.flatnonzero(to_stat)))
        for fid in np.flatnonzero(to_del).tolist():
            self.delete(fid, now)
        freed = 0
        for fid in np.flatnonzero(to_free).tolist():
            self._free(fid)
            freed += 1
        return freed, stats_jobs

    def _most_urgent(self, due: np.ndarray) -> np.ndarray:
        """The stats jobs this poll runs. The kernel queues them to a workqueue that
        drains over time; here at most a third of the flows per poll (a flow is due
        at most every 3 polls, so that keeps up), the closest to expiry first: a
        burst of due flows (a bulk pre-install) spreads over a few polls, well
        within the 27 s a due flow has left."""
        budget = max(STATS_BUDGET_MIN, -(-self.flows.count // 3))
        if due.size <= budget:
            return due
        urgent = np.argpartition(self.flows.timeout_v[due], budget)[:budget]
        return np.sort(due[urgent])

    def _stats(self, fids: np.ndarray) -> int:
        """flow_offload_work_stats(): timeout = max(timeout, lastused + T) and the
        hardware deltas added to conntrack accounting (nf_conntrack_acct), per
        direction."""
        if not fids.size:
            return 0
        flows, hw = self.flows, self.hw
        s0 = 2 * fids
        s1 = s0 + 1
        bidir = (flows.flags_v[fids] & ft.NF_FLOW_HW_BIDIRECTIONAL) != 0
        lastused = np.maximum(hw.lastuse[s0], np.where(bidir, hw.lastuse[s1], 0.0))
        timeout = flows.timeout_v
        timeout[fids] = np.maximum(timeout[fids], lastused + flows.period_v[fids])
        acct = self.ct.sysctl.nf_conntrack_acct
        if not acct and hw.rep_packets is None:  # no accounting, and there never was
            self.counters.stats_jobs += int(fids.size)
            return int(fids.size)
        dp0, db0 = hw.read_deltas(s0)
        dp1, db1 = hw.read_deltas(s1)
        moved = np.flatnonzero(dp0 | dp1) if acct else fids[:0]
        if moved.size:  # nf_ct_acct_add(), with the acct extension (nf_conntrack_acct)
            owners = flows.owners
            rows = zip(fids[moved].tolist(), dp0[moved].tolist(), db0[moved].tolist(),
                       dp1[moved].tolist(), db1[moved].tolist(), strict=True)
            for fid, p0, b0, p1, b1 in rows:
                counts = owners[fid].acct
                counts[0] += p0
                counts[1] += b0
                counts[2] += p1
                counts[3] += b1
        self.counters.stats_jobs += int(fids.size)
        return int(fids.size)

    def refresh(self, fid: int, now: float, force: bool) -> None:
        if self.flows.refresh(fid, now, force) \
                and self.flows.owners[fid].zone not in self.sw_only_zones:
            self.add(fid, now)

    def teardown(self, fid: int, now: float, reason: str) -> None:
        if self.flows.teardown(fid, now):
            c = self.counters
            c.teardowns[reason] = c.teardowns.get(reason, 0) + 1
            self.teardowns.append(Teardown(self.flows.owners[fid], reason, now))

    def add(self, fid: int, now: float) -> None:
        """nf_flow_offload_add() + flow_offload_work_add(): REPLACE the original
        direction (and the reply one once bidirectional)."""
        flows, hw, c = self.flows, self.hw, self.counters
        flags = flows.flags[fid] | ft.NF_FLOW_HW  # (the zone may have gained hardware)
        if flags & ft.NF_FLOW_HW_PENDING:
            return  # one job in flight per flow
        entry = flows.owners[fid]
        ctinfo = IP_CT_ESTABLISHED if entry.status & IPS_SEEN_REPLY else IP_CT_NEW
        if ctinfo == IP_CT_ESTABLISHED:
            flags |= ft.NF_FLOW_HW_ESTABLISHED
        ok = 0
        due = now
        for d in (0, 1) if flags & ft.NF_FLOW_HW_BIDIRECTIONAL else (0,):
            slot = 2 * fid + d
            want = ctinfo if d == 0 else IP_CT_ESTABLISHED_REPLY
            st = hw.state[slot]
            if st in (IN_HW, PENDING):
                if hw.ctinfo[slot] == want:
                    continue  # -EEXIST: same restore cookie
                hw.update(slot, want, entry.mark, entry.labels)
                c.updates += 1
                ok += 1
                continue
            result, ready = hw.insert(slot, want, entry.mark, entry.labels, now)
            if result is INSERT_OK:
                c.inserts += 1
                ok += 1
                due = max(due, ready)
            else:
                reason = INSERT_FAILURE_NAMES[result]
                c.insert_failures[reason] = c.insert_failures.get(reason, 0) + 1
                self.failed.append(InsertFailed(entry, d, reason, now))
        if not ok:
            flows.flags[fid] = flags
            return
        flows.flags[fid] = flags | ft.NF_FLOW_HW_PENDING
        self._schedule(due, _ADD, fid, now)

    def add_new(self, fids: list[int], now: float) -> None:
        """add() of flows just added (FlowTables.add_many()) whose inserts the
        hardware table has taken tokens for (HwTable.take_tokens()): every
        insert succeeds and is issued at `now`. With no insert latency they
        complete at once, as _schedule() would complete them."""
        flows, hw, c = self.flows, self.hw, self.counters
        flags_col, owners = flows.flags, flows.owners
        due = now + hw.faults.insert_latency
        at_once = due <= now
        done = self.completed.append
        for fid in fids:
            flags = flags_col[fid] | ft.NF_FLOW_HW
            entry = owners[fid]
            mark, labels = entry.mark, entry.labels
            if entry.status & IPS_SEEN_REPLY:
                flags |= ft.NF_FLOW_HW_ESTABLISHED
                hw.insert_taken(2 * fid, IP_CT_ESTABLISHED, mark, labels, at_once)
            else:
                hw.insert_taken(2 * fid, IP_CT_NEW, mark, labels, at_once)
            if flags & ft.NF_FLOW_HW_BIDIRECTIONAL:
                hw.insert_taken(2 * fid + 1, IP_CT_ESTABLISHED_REPLY, mark, labels, at_once)
                c.inserts += 2
            else:
                c.inserts += 1
            if at_once:  # (_finish(): in hardware, each direction's InsertDone)
                done(_new(InsertDone, (entry, 0, now)))
                if flags & ft.NF_FLOW_HW_BIDIRECTIONAL:
                    done(_new(InsertDone, (entry, 1, now)))
                entry.status = ft.status_word(entry.status | IPS_HW_OFFLOAD)
                flags_col[fid] = flags
            else:
                flags_col[fid] = flags | ft.NF_FLOW_HW_PENDING
                self._seq += 1
                heapq.heappush(self.jobs, (due, self._seq, _ADD, fid))

    def delete(self, fid: int, now: float) -> None:
        """nf_flow_offload_del() + flow_offload_work_del()."""
        flows, hw = self.flows, self.hw
        flags = flows.flags[fid]
        if flags & ft.NF_FLOW_HW_PENDING:
            return  # retried by the next GC
        entry = flows.owners[fid]
        entry.status = ft.status_word(entry.status & ~IPS_HW_OFFLOAD)
        due = now
        for slot in (2 * fid, 2 * fid + 1):
            if hw.state[slot] == IN_HW:
                due = max(due, hw.remove(slot, now))
                self.counters.deletes += 1
        flows.flags[fid] = flags | ft.NF_FLOW_HW_DYING | ft.NF_FLOW_HW_PENDING
        self._schedule(due, _DEL, fid, now)

    def _schedule(self, due: float, kind: int, fid: int, now: float) -> None:
        if due <= now:
            self._finish(kind, fid, now)
        else:
            self._seq += 1
            heapq.heappush(self.jobs, (due, self._seq, kind, fid))

    def run_due(self, now: float) -> None:
        jobs = self.jobs
        while jobs and jobs[0][0] <= now:
            due, _, kind, fid = heapq.heappop(jobs)
            self._finish(kind, fid, due)

    def _finish(self, kind: int, fid: int, at: float) -> None:
        flows, hw = self.flows, self.hw
        entry = flows.owners[fid]
        flags = flows.flags[fid] & ~ft.NF_FLOW_HW_PENDING
        for d in (0, 1):
            slot = 2 * fid + d
            if kind == _ADD and hw.state[slot] == PENDING:
                hw.settle(slot)
                self.completed.append(_new(InsertDone, (entry, d, at)))
            elif kind == _DEL and hw.state[slot] == DYING:
                hw.settle(slot)
        if kind == _ADD:
            entry.status = ft.status_word(entry.status | IPS_HW_OFFLOAD)
        else:
            flags |= ft.NF_FLOW_HW_DEAD
        flows.flags[fid] = flags

    def _free(self, fid: int) -> None:
        """flow_offload_del(): the flow and its hardware slots are released."""
        self.flows.free(fid)
        self.hw.reset(2 * fid)
        self.hw.reset(2 * fid + 1)
