"""Expectations (nf_conntrack_expect.c): a helper announces a connection it
expects, e.g. FTP's data connection; the first packet matching it creates a
RELATED child entry with status EXPECTED and a master.

Matching follows nf_ct_exp_equal(): the packet's tuple masked by the
expectation's mask must equal the expectation's tuple, in the master's zone.
A zero source port in the mask means "any source port".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from node.conntrack.tuple import Tuple

if TYPE_CHECKING:
    from node.conntrack.entry import Entry

NF_CT_EXPECT_PERMANENT = 0x1
NF_CT_EXPECT_INACTIVE = 0x2
NF_CT_EXPECT_USERSPACE = 0x4
EXPECT_FLAG_NAMES = {NF_CT_EXPECT_PERMANENT: "PERMANENT", NF_CT_EXPECT_INACTIVE: "INACTIVE",
                     NF_CT_EXPECT_USERSPACE: "USERSPACE"}


@dataclass(slots=True)
class Expectation:
    tuple: Tuple  # what the child's original tuple looks like (src fields may be wildcards)
    src_any_addr: bool  # mask: source address is a wildcard
    src_any_port: bool  # mask: source port is a wildcard
    master: Entry
    helper: str | None  # helper the child gets (None for FTP/TFTP data)
    expires_at: float
    timeout: float
    flags: int = 0
    cls: int = 0
    fn: str | None = None

    @property
    def zone(self) -> int:
        return self.master.zone

    def matches(self, t: Tuple) -> bool:
        e = self.tuple
        return (t.dst == e.dst and t.dport == e.dport and t.proto == e.proto
                and t.family == e.family
                and (self.src_any_addr or t.src == e.src)
                and (self.src_any_port or t.sport == e.sport))

    def to_dict(self, now: float) -> dict[str, object]:
        mask: dict[str, object] = {"proto": self.tuple.to_dict()["proto"]}
        width = 32 if self.tuple.family == 4 else 128
        import ipaddress

        mask["src"] = str(ipaddress.ip_address(0 if self.src_any_addr else (1 << width) - 1)
                          if width == 32 else
                          ipaddress.IPv6Address(0 if self.src_any_addr else (1 << 128) - 1))
        mask["dst"] = "255.255.255.255" if width == 32 else "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        mask["sport"] = 0 if self.src_any_port else 0xFFFF
        mask["dport"] = 0xFFFF
        return {"master": self.master.orig.to_dict(), "tuple": self.tuple.to_dict(),
                "mask": mask, "timeout": max(0, int(self.expires_at - now)),
                "zone": self.zone, "helper": self.master.helper,
                "flags": [n for b, n in EXPECT_FLAG_NAMES.items() if self.flags & b],
                "class": self.cls}


class ExpectTable:
    """All expectations of one conntrack table. Small by design (a handful per master)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: list[Expectation] = []

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._items))

    def add(self, exp: Expectation) -> bool:
        """nf_ct_expect_related(): replaces an identical expectation of the same
        master; refuses when the table is full."""
        for i, old in enumerate(self._items):
            if old.master is exp.master and old.tuple == exp.tuple:
                self._items[i] = exp
                return True
        if len(self._items) >= self.max_entries:
            return False
        self._items.append(exp)
        exp.master.expect_count += 1
        return True

    def take(self, t: Tuple, zone: int, now: float) -> Expectation | None:
        """The expectation `t` fulfils, unlinked unless it is permanent."""
        for i, exp in enumerate(self._items):
            if exp.expires_at <= now or exp.zone != zone or not exp.matches(t):
                continue
            if exp.flags & NF_CT_EXPECT_INACTIVE:
                continue
            if not exp.flags & NF_CT_EXPECT_PERMANENT:
                del self._items[i]
                exp.master.expect_count -= 1
            return exp
        return None

    def remove_master(self, master: Entry) -> None:
        if master.expect_count:
            self._items = [e for e in self._items if e.master is not master]
            master.expect_count = 0

    def expire(self, now: float) -> int:
        keep = []
        gone = 0
        for exp in self._items:
            if exp.expires_at <= now:
                exp.master.expect_count -= 1
                gone += 1
            else:
                keep.append(exp)
        self._items = keep
        return gone

    def next_deadline(self) -> float | None:
        return min((e.expires_at for e in self._items), default=None)

    def clear(self) -> None:
        for e in self._items:
            e.master.expect_count = 0
        self._items = []
