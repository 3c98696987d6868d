"""Expectations (nf_conntrack_expect.c): a helper announces a connection it
expects, e.g. FTP's data connection; the first packet matching it creates a
RELATED child entry with status EXPECTED and a master.

Transcribed from Linux 6.18 net/netfilter/nf_conntrack_expect.c:
  Expectation.matches()  nf_ct_exp_equal(): the packet's tuple masked by the
                         expectation's mask equals the expectation's tuple
  ExpectTable.related()  nf_ct_expect_related(): __nf_ct_expect_check() (an
                         identical expectation of the same master is replaced,
                         an overlapping one of another master is refused with
                         EBUSY, the helper policy's max_expected evicts the
                         oldest, the table limit refuses), then insertion with
                         the policy's timeout
  ExpectTable.take()     nf_ct_find_expectation(): newest match first; the
                         master must be confirmed and alive; unlinked unless
                         PERMANENT or the lookup asks to keep it (act_ct
                         without commit)
An expectation lives in its master's zone. Only the source address and port
can be wildcards (nf_ct_expect_init() with a NULL saddr or src port).

Replication (conntrackd's ExpectationSync): the table can note the masters
whose expectations its own traffic changed (watch(), take_changed(): created
by a helper, or taken by the connection they expected; the kernel's IPEXP_NEW /
IPEXP_DESTROY events), and install a peer's expectations of a master without
noting them (sync(): ctnetlink's expectation create, never republished).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from node.conntrack.entry import IPS_CONFIRMED, IPS_DYING
from node.conntrack.tuple import Tuple

if TYPE_CHECKING:
    from node.conntrack.entry import Entry

NF_CT_EXPECT_PERMANENT = 0x1
NF_CT_EXPECT_INACTIVE = 0x2
NF_CT_EXPECT_USERSPACE = 0x4
EXPECT_FLAG_NAMES = {NF_CT_EXPECT_PERMANENT: "PERMANENT", NF_CT_EXPECT_INACTIVE: "INACTIVE",
                     NF_CT_EXPECT_USERSPACE: "USERSPACE"}
NF_CT_EXPECT_CLASS_DEFAULT = 0

# What nf_ct_expect_related() returns (0 or a negative errno).
EALREADY = -114
EBUSY = -16
EMFILE = -24


@dataclass(slots=True)
class Expectation:
    tuple: Tuple  # what the child's original tuple looks like (wildcard fields are 0)
    src_any_addr: bool  # mask: source address is a wildcard
    src_any_port: bool  # mask: source port is a wildcard
    master: Entry
    helper: str | None  # helper the child gets (exp->assign_helper; None for FTP/TFTP data)
    expires_at: float
    timeout: float
    flags: int = 0
    cls: int = NF_CT_EXPECT_CLASS_DEFAULT
    fn: str | None = None  # expectfn by name, e.g. "nat-follow-master" (none modelled yet)

    @property
    def zone(self) -> int:
        return self.master.zone

    def matches(self, t: Tuple) -> bool:
        e = self.tuple
        return (t.dst == e.dst and t.dport == e.dport and t.proto == e.proto
                and t.family == e.family
                and (self.src_any_addr or t.src == e.src)
                and (self.src_any_port or t.sport == e.sport))

    def same_as(self, other: Expectation) -> bool:
        """expect_matches(): same tuple, same mask, same zone."""
        return (self.tuple == other.tuple and self.src_any_addr == other.src_any_addr
                and self.src_any_port == other.src_any_port and self.zone == other.zone)

    def clashes(self, other: Expectation) -> bool:
        """expect_clash(): equal on the part both masks cover, in the same zone."""
        a, b = self.tuple, other.tuple
        return (a.family == b.family and a.proto == b.proto and a.dst == b.dst
                and a.dport == b.dport and self.zone == other.zone
                and (self.src_any_addr or other.src_any_addr or a.src == b.src)
                and (self.src_any_port or other.src_any_port or a.sport == b.sport))

    def to_dict(self, now: float) -> dict[str, object]:
        """As ctnetlink dumps it (the oracle's "expectations" entries)."""
        t = self.tuple
        full = b"\xff" * len(t.src)
        mask = Tuple(t.family, t.proto, b"\x00" * len(t.src) if self.src_any_addr else full,
                     full, 0 if self.src_any_port else 0xFFFF, 0xFFFF)
        return {"master": self.master.orig.to_dict(), "tuple": t.to_dict(),
                "mask": mask.to_dict(),
                # whole seconds left, read a moment after the packet (as ctnetlink)
                "timeout": max(0, math.floor(self.expires_at - now - 1e-3)),
                "zone": self.zone, "helper": self.master.helper,
                "flags": [n for b, n in EXPECT_FLAG_NAMES.items() if self.flags & b],
                "class": self.cls, "fn": self.fn}


class ExpectTable:
    """All expectations of one conntrack table, oldest first. Small by design
    (a helper policy allows a handful per master)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: list[Expectation] = []
        # masters whose expectations changed (by id), while watched
        self._changed: dict[int, Entry] | None = None
        self.changes = 0  # how many times a watched master's expectations changed

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Expectation]:
        return iter(list(self._items))

    def watch(self) -> None:
        """From now on, note the masters whose expectations change (replication)."""
        if self._changed is None:
            self._changed = {}

    def take_changed(self) -> list[Entry]:
        """The masters whose expectations related() or take() changed since the
        last call (in the order they changed; nothing unless watched)."""
        changed = self._changed
        if not changed:
            return []
        self._changed = {}
        return list(changed.values())

    def _note(self, master: Entry) -> None:
        if self._changed is not None:
            self._changed[id(master)] = master
            self.changes += 1

    def of(self, master: Entry) -> list[Expectation]:
        """The master's expectations, oldest first."""
        return list(master.expectations)

    def related(self, exp: Expectation, max_expected: int = 0,
                now: float | None = None) -> int:
        """nf_ct_expect_related(exp, 0): 0 when inserted, else a negative errno
        (EALREADY, EBUSY, EMFILE); `max_expected` is the helper policy's limit
        for the expectation's class (0: no limit). `now` defaults to the
        expectation's creation time (expires_at - timeout)."""
        if now is None:
            now = exp.expires_at - exp.timeout
        deadline = self.next_deadline()
        if deadline is not None and deadline <= now:
            self.expire(now)  # their timers have fired
        items = self._items
        for i in range(len(items) - 1, -1, -1):  # the hash chain, newest first
            old = items[i]
            if old.master is exp.master and old.same_as(exp):
                if old.cls != exp.cls:
                    return EALREADY
                self._unlink(i)
                break
            if old.clashes(exp):
                return EBUSY
        if max_expected:
            mine = [i for i, e in enumerate(items) if e.master is exp.master and e.cls == exp.cls]
            if len(mine) >= max_expected:
                self._unlink(mine[0])  # evict_oldest_expect()
                if len(mine) - 1 >= max_expected:
                    return EMFILE
        if len(items) >= self.max_entries:
            return EMFILE  # "nf_conntrack: expectation table full"
        items.append(exp)
        _link(exp)
        self._note(exp.master)
        return 0

    def add(self, exp: Expectation, max_expected: int = 0, now: float | None = None) -> bool:
        """related() as a yes/no."""
        return self.related(exp, max_expected, now) == 0

    def unexpect(self, exp: Expectation) -> bool:
        """nf_ct_unexpect_related(): remove it if it is still there."""
        for i, e in enumerate(self._items):
            if e is exp:
                self._unlink(i)
                return True
        return False

    def _unlink(self, i: int) -> None:
        _drop(self._items.pop(i))

    def take(self, t: Tuple, zone: int, now: float, unlink: bool = True) -> Expectation | None:
        """The expectation `t` fulfils. Unlinked unless PERMANENT or `unlink` is
        False (the kernel keeps it when the template is not confirmed: act_ct
        and OVS without commit)."""
        items = self._items
        for i in range(len(items) - 1, -1, -1):
            exp = items[i]
            if exp.flags & NF_CT_EXPECT_INACTIVE or exp.expires_at <= now \
                    or exp.zone != zone or not exp.matches(t):
                continue
            status = exp.master.status
            if not status & IPS_CONFIRMED or status & IPS_DYING:
                return None  # "these are not the droids you are looking for"
            if unlink and not exp.flags & NF_CT_EXPECT_PERMANENT:
                self._unlink(i)
                self._note(exp.master)
            return exp
        return None

    def sync(self, master: Entry, exps: list[Expectation], now: float,
             replace: bool = True) -> int:
        """Install a peer's expectations of `master` (already in the table; each
        exp.master is `master`), as ctnetlink creates them for conntrackd: an
        identical one of the same master is refreshed in place, another is
        inserted with related() (refused if it clashes with another master's or
        the table is full). With `replace`, the master's expectations not listed
        are removed (the peer's list is the whole set). Nothing is noted for
        take_changed(): what a peer sent is never republished. Returns how
        many of `exps` are in the table."""
        changed, self._changed = self._changed, None
        try:
            if replace and master.expect_count:
                for i in range(len(self._items) - 1, -1, -1):
                    old = self._items[i]
                    if old.master is master and not any(old.same_as(e) for e in exps):
                        self._unlink(i)
            n = 0
            for exp in exps:
                if exp.expires_at <= now:
                    continue
                same = next((e for e in self._items
                             if e.master is master and e.same_as(exp) and e.cls == exp.cls), None)
                if same is not None:
                    same.expires_at, same.timeout = exp.expires_at, exp.timeout
                    same.flags, same.helper, same.fn = exp.flags, exp.helper, exp.fn
                    n += 1
                elif self.related(exp, 0, now) == 0:
                    n += 1
            return n
        finally:
            self._changed = changed

    def remove_master(self, master: Entry) -> None:
        """nf_ct_remove_expectations(): the master is going away."""
        if master.expect_count:
            self._items = [e for e in self._items if e.master is not master]
            master._ext().expects = None

    def expire(self, now: float) -> int:
        keep = []
        gone = 0
        for exp in self._items:
            if exp.expires_at <= now:
                _drop(exp)
                gone += 1
            else:
                keep.append(exp)
        self._items = keep
        return gone

    def next_deadline(self) -> float | None:
        return min((e.expires_at for e in self._items), default=None)

    def clear(self) -> None:
        for e in self._items:
            e.master._ext().expects = None
        self._items = []


def _link(exp: Expectation) -> None:
    """Add `exp` to its master's list (nf_conn_help.expectations)."""
    ext = exp.master._ext()
    if ext.expects is None:
        ext.expects = [exp]
    else:
        ext.expects.append(exp)


def _drop(exp: Expectation) -> None:
    """Remove `exp` (this very object) from its master's list."""
    ext = exp.master.ext
    mine = ext.expects if ext is not None else None
    if mine:
        for i, e in enumerate(mine):
            if e is exp:
                del mine[i]
                break
        if not mine:
            ext.expects = None  # type: ignore[union-attr]
