"""SCTP (nf_conntrack_proto_sctp.c, Linux 6.18): the checks that decide whether
a packet may create an entry, and the per-state timeouts.

Implemented: sctp_error() (length, CRC32c when nf_conntrack_checksum=1),
do_basic_checks() (zero-length chunks, COOKIE_ECHO/ACK not first, INIT/INIT_ACK/
SHUTDOWN_COMPLETE not alone), the out-of-the-blue rule for unconfirmed entries
(ABORT, SHUTDOWN_COMPLETE, COOKIE_ACK) and sctp_new() (the ORIGINAL row of
sctp_conntracks[] from sNO, INIT with a zero verification tag).
Not implemented: the state machine of a confirmed association, which stays
in the state its first packet gave it (refreshed with that state's timeout).
The kernel oracle cannot record SCTP entries, so only entry creation is
measured against the kernel; see tests/fixtures/oracle/README.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node.conntrack.l4proto import ACCEPT, INVALID

if TYPE_CHECKING:
    from node.conntrack.entry import Entry
    from node.conntrack.table import Conntrack
    from node.packet import Packet

# enum sctp_conntrack
S_NONE, S_CLOSED, S_COOKIE_WAIT, S_COOKIE_ECHOED, S_ESTABLISHED, S_SHUTDOWN_SENT, \
    S_SHUTDOWN_RECD, S_SHUTDOWN_ACK_SENT, S_HEARTBEAT_SENT = range(9)
STATE_NAMES = ("NONE", "CLOSED", "COOKIE_WAIT", "COOKIE_ECHOED", "ESTABLISHED",
               "SHUTDOWN_SENT", "SHUTDOWN_RECD", "SHUTDOWN_ACK_SENT", "HEARTBEAT_SENT")

# chunk types (include/linux/sctp.h)
CID_INIT, CID_INIT_ACK, CID_ABORT, CID_SHUTDOWN, CID_SHUTDOWN_ACK, CID_ERROR = 1, 2, 6, 7, 8, 9
CID_COOKIE_ECHO, CID_COOKIE_ACK, CID_SHUTDOWN_COMPLETE = 10, 11, 14
CID_HEARTBEAT, CID_HEARTBEAT_ACK = 4, 5
# sctp_new_state(): chunk type -> row of sctp_conntracks
CHUNK_ROW = {CID_INIT: 0, CID_INIT_ACK: 1, CID_ABORT: 2, CID_SHUTDOWN: 3, CID_SHUTDOWN_ACK: 4,
             CID_ERROR: 5, CID_COOKIE_ECHO: 6, CID_COOKIE_ACK: 7, CID_SHUTDOWN_COMPLETE: 8,
             CID_HEARTBEAT: 9, CID_HEARTBEAT_ACK: 10}
# sctp_conntracks[ORIGINAL][row][sNO]: the state a first packet's chunk leads to
NEW_STATE_FROM_NONE = (S_CLOSED, S_CLOSED, S_CLOSED, S_CLOSED, S_SHUTDOWN_ACK_SENT, S_CLOSED,
                       S_CLOSED, S_CLOSED, S_CLOSED, S_HEARTBEAT_SENT, S_CLOSED)
OOTB_CHUNKS = frozenset((CID_ABORT, CID_SHUTDOWN_COMPLETE, CID_COOKIE_ACK))


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def sctp_checksum_ok(segment: bytes) -> bool:
    """The CRC32c of the packet with its checksum field zeroed, stored little-endian."""
    if len(segment) < 12:
        return False
    want = int.from_bytes(segment[8:12], "little")
    return crc32c(segment[:8] + b"\0\0\0\0" + segment[12:]) == want


def _chunks(segment: bytes) -> list[tuple[int, int]] | None:
    """(type, length) of every chunk, or None when do_basic_checks() fails."""
    out: list[tuple[int, int]] = []
    off = 12
    sole = False
    while off + 4 <= len(segment):
        ctype = segment[off]
        length = int.from_bytes(segment[off + 2:off + 4], "big")
        if ctype in (CID_INIT, CID_INIT_ACK, CID_SHUTDOWN_COMPLETE):
            sole = True
        if length == 0 or (out and (ctype in (CID_COOKIE_ACK, CID_COOKIE_ECHO) or sole)):
            return None
        out.append((ctype, length))
        off += (length + 3) & ~3
    return out


class SctpTracker:
    def packet(self, ct: Conntrack, entry: Entry, pkt: Packet, direction: int, ctinfo: int,
               now: float) -> int:
        seg = pkt.payload
        if len(seg) < 12:
            return INVALID  # "short packet"
        if ct.sysctl.nf_conntrack_checksum and not sctp_checksum_ok(seg):
            return INVALID  # "bad checksum"
        chunks = _chunks(seg)
        if chunks is None:
            return INVALID
        if not entry.confirmed:
            types = {t for t, _ in chunks}
            if types & OOTB_CHUNKS:
                return INVALID
            state = S_NONE
            vtag = int.from_bytes(seg[4:8], "big")
            for ctype, _ in chunks:
                row = CHUNK_ROW.get(ctype)
                if row is None:
                    return INVALID  # DATA, SACK ...: no state from sNO, "invalid new"
                state = NEW_STATE_FROM_NONE[row]
                if ctype == CID_INIT and vtag:
                    return INVALID
            if not chunks:
                return INVALID
            entry.proto = state
        ct.refresh(entry, _timeout(ct, entry.proto), now)
        return ACCEPT

    def state_name(self, entry: Entry) -> str | None:
        return None  # ctnetlink reports SCTP state in its own attribute, not proto_state

    def export(self, entry: Entry) -> dict[str, Any] | None:
        return self.expand(self.capture(entry))

    def capture(self, entry: Entry) -> object:
        return entry.proto if isinstance(entry.proto, int) else None

    def expand(self, captured: Any) -> dict[str, Any] | None:
        return None if captured is None else {"sctp_state": STATE_NAMES[captured]}


def _timeout(ct: Conntrack, state: Any) -> int:
    s = ct.sysctl
    return {S_CLOSED: s.nf_conntrack_sctp_timeout_closed,
            S_COOKIE_WAIT: s.nf_conntrack_sctp_timeout_cookie_wait,
            S_COOKIE_ECHOED: s.nf_conntrack_sctp_timeout_cookie_echoed,
            S_ESTABLISHED: s.nf_conntrack_sctp_timeout_established}.get(state, 3)
