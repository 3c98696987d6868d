"""act_ct's flow tables (struct nf_flowtable, one per zone) and what a flow does
to its conntrack entry.

Transcribed from Linux 6.18:
  include/net/netfilter/nf_flow_table.h  enum nf_flow_flags (the NF_FLOW_* bits below),
                                         NF_FLOW_TIMEOUT
  net/netfilter/nf_flow_table_core.c     flow_offload_add() (:318-349),
                                         flow_offload_refresh() (:351-368),
                                         flow_offload_teardown(), flow_offload_lookup(),
                                         flow_offload_fixup_tcp()/_ct() (:168-240),
                                         nf_flow_table_tcp_timeout(),
                                         nf_flow_table_extend_ct_timeout()
  net/sched/act_ct.c                     tcf_ct_flow_table_add() (:418-458): IPS_OFFLOAD,
                                         BE_LIBERAL, NF_FLOW_HW_BIDIRECTIONAL
The garbage collector (nf_flow_offload_gc_step) and the hardware jobs are in work.py,
because they interleave with the card.

Storage: a flow is a flow id (`fid`) into a struct of numpy arrays (flags, timeout,
offload timeout, cookie, ct_check_at) plus `owners[fid]`, its conntrack entry, so
that the 1 s garbage collection of a million flows is vectorized. Each zone's table is
two dicts, original tuples and reply tuples, to the flow id: one int object for both
directions. A tuple's "code" is 2 * fid + direction; the card numbers its hardware
entries the same way (slot = code), so a code is both a flow direction and a slot.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import numpy as np

from node.conntrack.entry import (
    IPS_DST_NAT,
    IPS_OFFLOAD,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
    Entry,
)
from node.conntrack.sysctl import Sysctl
from node.conntrack.table import Conntrack
from node.conntrack.tcp import freeze, set_be_liberal, thaw
from node.conntrack.tcp_table import (
    IP_CT_TCP_FLAG_CLOSE_INIT,
    IP_CT_TCP_FLAG_MAXACK_SET,
    SYN_SENT2_TIMEOUT,
    TIMEOUT_SYSCTLS,
    sCL,
    sCW,
    sES,
    sFW,
    sLA,
    sS2,
    sTW,
)
from node.conntrack.tuple import Tuple
from node.offload.hwtable import buffer_column
from node.offload.policy import tcp_state
from node.packet import IPPROTO_TCP, IPPROTO_UDP

# enum nf_flow_flags (bit numbers, as masks)
NF_FLOW_SNAT = 1 << 0
NF_FLOW_DNAT = 1 << 1
NF_FLOW_CLOSING = 1 << 2  # nft's FIN handling; act_ct tears down on FIN/RST instead
NF_FLOW_TEARDOWN = 1 << 3
NF_FLOW_HW = 1 << 4
NF_FLOW_HW_DYING = 1 << 5
NF_FLOW_HW_DEAD = 1 << 6
NF_FLOW_HW_PENDING = 1 << 7
NF_FLOW_HW_BIDIRECTIONAL = 1 << 8
NF_FLOW_HW_ESTABLISHED = 1 << 9
FLOW_FLAG_NAMES = ("SNAT", "DNAT", "CLOSING", "TEARDOWN", "HW", "HW_DYING", "HW_DEAD",
                   "HW_PENDING", "HW_BIDIRECTIONAL", "HW_ESTABLISHED")
FLOW_USED = 1 << 15  # emulator only: the flow id is allocated

NF_FLOW_TIMEOUT = 30  # other protocols (GRE): include/net/netfilter/nf_flow_table.h
NF_CT_DAY = 86400  # flow_offload_add(): nf_ct_refresh(ct, NF_CT_DAY)
CT_HOLD_MIN = 300  # nf_flow_table_extend_ct_timeout(): min_timeout = 5 * 60 * HZ
JIFFY = 0.001  # one tick at HZ=1000


def flag_names(flags: int) -> list[str]:
    return [name for i, name in enumerate(FLOW_FLAG_NAMES) if flags & (1 << i)]


# ---------------------------------------------------------------- the ct side
def offload_timeout(sysctl: Sysctl, proto: int) -> float:
    """flow_offload_get_timeout(): nf_flowtable_{tcp,udp}_timeout, else NF_FLOW_TIMEOUT."""
    if proto == IPPROTO_TCP:
        return float(sysctl.nf_flowtable_tcp_timeout)
    if proto == IPPROTO_UDP:
        return float(sysctl.nf_flowtable_udp_timeout)
    return float(NF_FLOW_TIMEOUT)


def tcp_timeout(sysctl: Sysctl, state: int) -> float:
    """tn->timeouts[state], from the sysctls (tcp_table.TIMEOUT_SYSCTLS)."""
    if state == sS2:
        return float(SYN_SENT2_TIMEOUT)
    name = TIMEOUT_SYSCTLS[state] if 0 <= state < len(TIMEOUT_SYSCTLS) else None
    return float(getattr(sysctl, name)) if name else 0.0


def fixup_tcp(entry: Entry, state: int) -> None:
    """flow_offload_fixup_tcp(): the window data is outdated after the bypass; forget
    td_maxwin and MAXACK_SET so that conntrack re-learns the windows (RST checks
    would fail otherwise). In CLOSE, mark CLOSE_INIT so that a SYN reopens.

    Written against node.conntrack.tcp's TcpConn (`state`, and seen[dir].td_maxwin
    and seen[dir].flags as the flat slots td_maxwin0/1, flags0/1)."""
    conn = thaw(entry)
    if conn is None:
        return
    conn.state = state
    if state == sCL:
        conn.flags0 |= IP_CT_TCP_FLAG_CLOSE_INIT
    conn.td_maxwin0 = conn.td_maxwin1 = 0
    conn.flags0 &= ~IP_CT_TCP_FLAG_MAXACK_SET
    conn.flags1 &= ~IP_CT_TCP_FLAG_MAXACK_SET


def fixup_ct(ct: Conntrack, entry: Entry, expired: bool, now: float) -> None:
    """flow_offload_fixup_ct(): hand the connection back to conntrack. Its timeout is
    lowered (never raised) to the state's timeout, minus the offload timeout when the
    flow expired (idle): TCP the current state's, UDP 120 s replied / 30 s unreplied."""
    proto = entry.orig.proto
    sysctl = ct.sysctl
    if proto == IPPROTO_TCP:
        state = tcp_state(entry)
        fixup_tcp(entry, state)
        timeout = tcp_timeout(sysctl, state)
    elif proto == IPPROTO_UDP:
        timeout = float(sysctl.nf_conntrack_udp_timeout_stream if entry.status & IPS_SEEN_REPLY
                        else sysctl.nf_conntrack_udp_timeout)
    else:
        return
    if expired:
        timeout -= offload_timeout(sysctl, proto)
    timeout = max(timeout, 0.0)
    if entry.expires_at - now > timeout:
        ct.refresh(entry, timeout, now)


def extend_ct_timeout(ct: Conntrack, entry: Entry, now: float) -> None:
    """nf_flow_table_extend_ct_timeout(): keep an offloaded entry from expiring: when
    less than 5 min are left, UDP and TCP ESTABLISHED get a day, TCP closing states
    5 min, SYN_* and CLOSE nothing; other protocols (GRE) hit the kernel's WARN_ON
    and get one jiffy."""
    left = entry.expires_at - now
    if left <= 0 or left >= CT_HOLD_MIN:
        return
    proto = entry.orig.proto
    if proto == IPPROTO_UDP:
        seconds = float(NF_CT_DAY)
    elif proto == IPPROTO_TCP:
        state = tcp_state(entry)
        if state == sES:
            seconds = float(NF_CT_DAY)
        elif state in (sFW, sCW, sLA, sTW):
            seconds = float(CT_HOLD_MIN)
        else:  # SYN_SENT, SYN_RECV, CLOSE: 0, no extension
            return
    else:
        seconds = JIFFY
    ct.refresh(entry, seconds, now)


# ---------------------------------------------------------------- the tables
_STATUS_WORDS: dict[int, int] = {}


def status_word(status: int) -> int:
    """The one int object for this conntrack status value. OFFLOAD and HW_OFFLOAD
    (bits 14, 15) put an offloaded entry's status beyond CPython's small ints, so
    that each `|=` here would give the entry an int of its own (32 bytes); the
    flow table's transitions share them instead (there are few distinct values)."""
    return _STATUS_WORDS.setdefault(status, status)


def _vacant() -> Entry:
    entry = Entry(Tuple(0, 0, b"", b""), Tuple(0, 0, b"", b""), 0, 0.0, 0)
    entry.expires_at = float("inf")
    return entry


VACANT = _vacant()  # owners[] filler for free flow ids (status 0, never expires)


class FlowTables:
    """The flow tables of one conntrack table (netns), one index per zone."""

    def __init__(self, ct: Conntrack, size: int = 1024) -> None:
        self.ct = ct
        # zone -> tuple -> fid, for the original and the reply tuples (the same
        # int object in both: one dict of codes would hold two per flow).
        self.orig_index: dict[int, dict[Tuple, int]] = {}
        self.reply_index: dict[int, dict[Tuple, int]] = {}
        self.owners: list[Entry] = []
        # Per flow id, each an array.array (read and written one flow at a time,
        # per packet and per install) with a numpy view of the same memory under
        # the name + "_v" (the poll's vectorised passes), as the card's HwTable.
        self._alloc_columns(size)
        self._free: list[int] = []
        self.count = 0

    # Declared for type checkers; created by _alloc_columns().
    flags: array[int]  # NF_FLOW_* bits
    timeout: array[float]  # flow->timeout (absolute)
    period: array[float]  # flow_offload_get_timeout() (float32)
    cookie: array[int]  # the conntrack entry id
    # When the GC must look at the entry's timeout (extend_ct_timeout()): 5 min
    # before the hold set at add ends, or at once after conntrack saw a packet
    # of the flow (mark_ct_seen()): nothing else lowers an offloaded entry's timeout.
    ct_check_at: array[float]
    flags_v: np.ndarray
    timeout_v: np.ndarray
    period_v: np.ndarray
    cookie_v: np.ndarray
    ct_check_at_v: np.ndarray

    _COLUMNS = (("flags", "H", np.uint16), ("timeout", "d", np.float64),
                ("period", "f", np.float32), ("cookie", "q", np.int64),
                ("ct_check_at", "d", np.float64))

    def _alloc_columns(self, size: int) -> None:
        """(Re)allocate every column for `size` flows, keeping the current values."""
        for name, code, dtype in self._COLUMNS:
            col, view = buffer_column(code, dtype, size, getattr(self, name, None))
            setattr(self, name, col)
            setattr(self, name + "_v", view)

    def __len__(self) -> int:
        return self.count

    @property
    def size(self) -> int:
        return len(self.flags)

    def _alloc(self) -> int:
        if self._free:
            return self._free.pop()
        fid = len(self.owners)
        if fid == len(self.flags):
            self._alloc_columns(2 * fid)
        self.owners.append(VACANT)
        return fid

    def code(self, t: Tuple, zone: int) -> int:
        """The tuple's 2 * fid + direction in this zone's table, or -1."""
        omap = self.orig_index.get(zone)
        if omap is None:
            return -1
        fid = omap.get(t)
        if fid is not None:
            return fid << 1
        fid = self.reply_index[zone].get(t)  # (made with omap)
        return -1 if fid is None else fid << 1 | 1

    def fid_of(self, entry: Entry) -> int:
        """The flow of a conntrack entry, or -1."""
        omap = self.orig_index.get(entry.zone)
        fid = omap.get(entry.orig) if omap is not None else None
        if fid is None or self.owners[fid] is not entry:
            return -1
        return fid

    def add(self, entry: Entry, tcp: bool, bidirectional: bool, hw: bool, now: float) -> int:
        """tcf_ct_flow_table_add() + flow_offload_add(): the new flow id, or -1 if the
        entry is already offloaded or its tuples are still in the table (a flow being
        torn down: rhashtable_insert_fast() -EEXIST)."""
        if entry.status & IPS_OFFLOAD or not self.free_for(entry):
            return -1
        fid = self._alloc()
        self._take(entry, fid, tcp, bidirectional, hw, now)
        self.count += 1
        return fid

    def free_for(self, entry: Entry) -> bool:
        """Neither of the entry's tuples is in its zone's table (as either
        direction): add() can take it."""
        omap = self.orig_index.get(entry.zone)
        if omap is None:
            return True
        rmap = self.reply_index[entry.zone]
        orig, reply = entry.orig, entry.reply
        return not (orig in omap or orig in rmap or reply in omap or reply in rmap)

    def add_many(self, entries: Sequence[Entry], bidirectional: Sequence[bool], hw: bool,
                 now: float) -> list[int]:
        """add() of each entry in turn, for entries it takes (not offloaded, their
        tuples free: free_for()), their flow ids in order: the same flow ids,
        columns and conntrack updates as one add() after the other."""
        fids = [self._alloc() for _ in entries]
        take = self._take
        for entry, fid, both in zip(entries, fids, bidirectional, strict=True):
            take(entry, fid, entry.orig.proto == IPPROTO_TCP, both, hw, now)
        self.count += len(fids)
        return fids

    def _take(self, entry: Entry, fid: int, tcp: bool, bidirectional: bool, hw: bool,
              now: float) -> None:
        """flow_offload_add() of an entry whose tuples are free, as flow `fid`."""
        zone = entry.zone
        status = entry.status = status_word(entry.status | IPS_OFFLOAD)
        if tcp:
            set_be_liberal(entry)
            freeze(entry)  # its packets bypass tcp_packet() until the teardown
        omap = self.orig_index.get(zone)
        if omap is None:  # (setdefault() would build two dicts at every add)
            omap = self.orig_index[zone] = {}
            self.reply_index[zone] = {}
        omap[entry.orig] = fid
        self.reply_index[zone][entry.reply] = fid
        flags = FLOW_USED
        if bidirectional:
            flags |= NF_FLOW_HW_BIDIRECTIONAL
        if status & IPS_SRC_NAT:
            flags |= NF_FLOW_SNAT
        if status & IPS_DST_NAT:
            flags |= NF_FLOW_DNAT
        if hw:
            flags |= NF_FLOW_HW
        period = offload_timeout(self.ct.sysctl, entry.orig.proto)
        self.owners[fid] = entry
        self.flags[fid] = flags
        self.period[fid] = period
        self.timeout[fid] = now + period
        self.cookie[fid] = entry.id
        self.ct.refresh(entry, NF_CT_DAY, now)
        self.ct_check_at[fid] = entry.expires_at - CT_HOLD_MIN

    def mark_ct_seen(self, fid: int, now: float) -> None:
        """A packet of the flow went through conntrack, which may have lowered the
        entry's timeout: the next GC checks the hold."""
        self.ct_check_at[fid] = now

    def refresh(self, fid: int, now: float, force: bool) -> bool:
        """flow_offload_refresh(): push the timeout to now + T when that moves it by
        more than a second (or `force`). True when the hardware add must be re-queued."""
        timeout = now + self.period[fid]
        if not force and timeout - self.timeout[fid] <= 1.0:
            return False
        self.timeout[fid] = timeout
        return not self.flags[fid] & NF_FLOW_CLOSING

    def teardown(self, fid: int, now: float) -> bool:
        """flow_offload_teardown(): clear IPS_OFFLOAD and, the first time, fix the
        conntrack entry up. True if the flow was not torn down before."""
        entry = self.owners[fid]
        entry.status = status_word(entry.status & ~IPS_OFFLOAD)
        flags = self.flags[fid]
        if flags & NF_FLOW_TEARDOWN:
            return False
        self.flags[fid] = flags | NF_FLOW_TEARDOWN
        fixup_ct(self.ct, entry, self.timeout[fid] <= now, now)
        return True

    def free(self, fid: int) -> Entry:
        """flow_offload_del(): remove both tuples and release the flow id."""
        entry = self.owners[fid]
        for index, t in ((self.orig_index, entry.orig), (self.reply_index, entry.reply)):
            zmap = index.get(entry.zone)
            if zmap is not None and zmap.get(t) == fid:
                del zmap[t]
        self.owners[fid] = VACANT
        self.flags[fid] = 0
        self._free.append(fid)
        self.count -= 1
        return entry
