"""A conntrack entry (struct nf_conn) and the constants that describe it.

Status bits, ctinfo values and event bits are transcribed from
include/uapi/linux/netfilter/nf_conntrack_common.h (Linux 6.18).
The entry is mutable engine state; what leaves the engine is a frozen
`CtView` snapshot (see events.py).
"""

from __future__ import annotations

from typing import Any

from node.conntrack.tuple import Tuple

# enum ip_conntrack_status
IPS_EXPECTED = 1 << 0
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_CONFIRMED = 1 << 3
IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5
IPS_SEQ_ADJUST = 1 << 6
IPS_SRC_NAT_DONE = 1 << 7
IPS_DST_NAT_DONE = 1 << 8
IPS_DYING = 1 << 9
IPS_FIXED_TIMEOUT = 1 << 10
IPS_TEMPLATE = 1 << 11
IPS_NAT_CLASH = 1 << 12
IPS_HELPER = 1 << 13
IPS_OFFLOAD = 1 << 14
IPS_HW_OFFLOAD = 1 << 15
STATUS_NAMES = ("EXPECTED", "SEEN_REPLY", "ASSURED", "CONFIRMED", "SRC_NAT", "DST_NAT",
                "SEQ_ADJUST", "SRC_NAT_DONE", "DST_NAT_DONE", "DYING", "FIXED_TIMEOUT",
                "TEMPLATE", "NAT_CLASH", "HELPER", "OFFLOAD", "HW_OFFLOAD")

# enum ip_conntrack_info
IP_CT_ESTABLISHED = 0
IP_CT_RELATED = 1
IP_CT_NEW = 2
IP_CT_ESTABLISHED_REPLY = 3
IP_CT_RELATED_REPLY = 4
IP_CT_UNTRACKED = 7
CTINFO_STATE = {IP_CT_ESTABLISHED: "ESTABLISHED", IP_CT_RELATED: "RELATED", IP_CT_NEW: "NEW",
                IP_CT_ESTABLISHED_REPLY: "ESTABLISHED", IP_CT_RELATED_REPLY: "RELATED",
                IP_CT_UNTRACKED: "UNTRACKED"}

# enum ip_conntrack_dir
ORIGINAL = 0
REPLY = 1

# enum ip_conntrack_events (bit numbers, as masks)
IPCT_NEW = 1 << 0
IPCT_RELATED = 1 << 1
IPCT_DESTROY = 1 << 2
IPCT_REPLY = 1 << 3
IPCT_ASSURED = 1 << 4
IPCT_PROTOINFO = 1 << 5
IPCT_HELPER = 1 << 6
IPCT_MARK = 1 << 7
IPCT_SEQADJ = 1 << 8
IPCT_SECMARK = 1 << 9
IPCT_LABEL = 1 << 10
IPCT_SYNPROXY = 1 << 11
EVENT_NAMES = ("NEW", "RELATED", "DESTROY", "REPLY", "ASSURED", "PROTOINFO", "HELPER", "MARK",
               "SEQADJ", "SECMARK", "LABEL", "SYNPROXY")


def status_names(status: int) -> list[str]:
    return [name for i, name in enumerate(STATUS_NAMES) if status & (1 << i)]


def event_names(bits: int) -> list[str]:
    return [name for i, name in enumerate(EVENT_NAMES) if bits & (1 << i)]


class EntryExt:
    """The parts of an entry most connections never use, created on first use,
    as the kernel keeps them in extensions (nf_ct_ext: helper, NAT, labels,
    accounting) rather than in struct nf_conn. Read and written through the
    Entry properties of the same names."""

    __slots__ = ("acct", "expects", "helper", "helper_data", "labels", "master", "nat")

    def __init__(self) -> None:
        self.helper: str | None = None
        self.helper_data: Any = None  # the helper's private state (nf_ct_ftp_master ...)
        self.master: Entry | None = None
        self.nat: Any = None  # NAT binding (nat.NatBinding) once set up
        self.labels = 0  # 128-bit label bitmap, bit N = label N
        # the expectations this entry is the master of, oldest first (the
        # expectations list of struct nf_conn_help); kept by the ExpectTable
        self.expects: list[Any] | None = None
        # packets orig, bytes orig, packets reply, bytes reply (nf_conn_acct)
        self.acct: list[int] | None = None


class Entry:
    """One tracked connection. `expires_at` is absolute, in the engine's clock.

    helper, helper_data, master, nat, labels, expects and acct live in
    `ext` (an EntryExt, None until one of them is set); they read as their
    defaults (None, 0) until then. `acct` is created when first read: the
    table counts packets only with nf_conntrack_acct=1, as the kernel does."""

    __slots__ = (
        "created",
        "events",
        "expires_at",
        "ext",
        "heap_at",
        "id",
        "mark",
        "orig",
        "proto",
        "reply",
        "status",
        "timeout",
        "zone",
    )

    def __init__(self, orig: Tuple, reply: Tuple, zone: int, now: float, entry_id: int) -> None:
        self.orig = orig
        self.reply = reply
        self.zone = zone
        self.status = 0
        self.created = now
        self.expires_at = now
        self.timeout = 0.0  # the last timeout set, in seconds (for display and replication)
        self.heap_at = float("inf")  # time of this entry's latest expiry timer
        self.mark = 0
        self.proto: Any = None  # the L4 tracker's state (TcpConn, ...)
        self.events = 0  # IPCT_* bits cached until delivery (nf_conntrack_ecache)
        self.ext: EntryExt | None = None
        self.id = entry_id

    def _ext(self) -> EntryExt:
        ext = self.ext
        if ext is None:
            ext = self.ext = EntryExt()
        return ext

    # The extension's fields. A setter given the default value creates nothing.
    @property
    def helper(self) -> str | None:
        return None if self.ext is None else self.ext.helper

    @helper.setter
    def helper(self, value: str | None) -> None:
        if value is not None or self.ext is not None:
            self._ext().helper = value

    @property
    def helper_data(self) -> Any:
        return None if self.ext is None else self.ext.helper_data

    @helper_data.setter
    def helper_data(self, value: Any) -> None:
        if value is not None or self.ext is not None:
            self._ext().helper_data = value

    @property
    def master(self) -> Entry | None:
        return None if self.ext is None else self.ext.master

    @master.setter
    def master(self, value: Entry | None) -> None:
        if value is not None or self.ext is not None:
            self._ext().master = value

    @property
    def nat(self) -> Any:
        return None if self.ext is None else self.ext.nat

    @nat.setter
    def nat(self, value: Any) -> None:
        if value is not None or self.ext is not None:
            self._ext().nat = value

    @property
    def labels(self) -> int:
        return 0 if self.ext is None else self.ext.labels

    @labels.setter
    def labels(self, value: int) -> None:
        if value or self.ext is not None:
            self._ext().labels = value

    @property
    def expect_count(self) -> int:
        ext = self.ext
        return 0 if ext is None or not ext.expects else len(ext.expects)

    @property
    def expectations(self) -> tuple[Any, ...]:
        """The expectations this entry is the master of (expect.Expectation),
        oldest first: the ExpectTable's, read-only here."""
        ext = self.ext
        return () if ext is None or not ext.expects else tuple(ext.expects)

    @property
    def acct(self) -> list[int]:
        """[packets orig, bytes orig, packets reply, bytes reply], mutable in place."""
        ext = self._ext()
        if ext.acct is None:
            ext.acct = [0, 0, 0, 0]
        return ext.acct

    @acct.setter
    def acct(self, value: list[int]) -> None:
        self._ext().acct = value

    @property
    def confirmed(self) -> bool:
        return bool(self.status & IPS_CONFIRMED)

    def tuple(self, direction: int) -> Tuple:
        return self.reply if direction else self.orig

    def __repr__(self) -> str:
        return f"<Entry {self.id} zone={self.zone} {self.orig} status={status_names(self.status)}>"
