"""The FTP helper (Linux 6.18 net/netfilter/nf_conntrack_ftp.c).

The control connection is scanned for the commands that announce a data
connection: PORT and EPRT from the client (original direction), the 227 and
229 answers from the server (reply direction). Each announces an expectation
"peer's address, any source port -> the announced address and port".

Kernel behaviour kept here, in the kernel's order (help()):
  * Nothing is looked at until traffic has gone both ways: only ctinfo
    ESTABLISHED / ESTABLISHED_REPLY packets with payload are scanned.
  * A command is only recognised at the start of a line: the packet's
    sequence number must be one remembered as "just after a newline" for its
    direction (seq_aft_nl, two per direction). A packet ending in '\\n'
    records seq + len. Nothing is remembered before the first line, so the
    first line in each direction is never parsed.
  * A match that starts but cannot be completed (a short packet that is a
    prefix of a pattern, a missing delimiter, unparsable numbers) drops the
    packet ("partial matching").
  * The announced address must be the sender's own address (the source of
    the tuple of its direction); otherwise no expectation is created, unless
    the `loose` module parameter is set, and the packet is accepted.
  * The expectation: source = the other side's address (exact), source port
    any, destination = the announced address and port (nf_ct_expect_init()
    with the !dir tuple's addresses). Policy: max_expected 1 (a new one evicts
    the older), timeout 5 minutes. A refused expectation drops the packet.
  * NF_CT_FTP_SEQ_PICKUP (set for entries injected from user space, e.g. by a
    failover daemon) lets the first packet of each direction be parsed.
NAT mangling of the announced address (nf_nat_ftp) and sequence adjustment
are not modelled: the expectation is registered unmangled, as when the
nf_nat_ftp module is not loaded.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from node.conntrack.entry import IP_CT_ESTABLISHED, IP_CT_ESTABLISHED_REPLY
from node.conntrack.expect import NF_CT_EXPECT_CLASS_DEFAULT, Expectation
from node.conntrack.l4proto import ACCEPT, DROP
from node.conntrack.tuple import Tuple
from node.packet import IPPROTO_TCP, Tcp

if TYPE_CHECKING:
    from node.conntrack.entry import Entry
    from node.conntrack.table import Conntrack
    from node.packet import Packet

FTP_PORT = 21
NUM_SEQ_TO_REMEMBER = 2
NF_CT_FTP_SEQ_PICKUP = 1 << 0

# enum nf_ct_ftp_type
NF_CT_FTP_PORT = 0
NF_CT_FTP_PASV = 1
NF_CT_FTP_EPRT = 2
NF_CT_FTP_EPSV = 3


@dataclass(slots=True)
class FtpState:
    """struct nf_ct_ftp_master: per direction, the sequence numbers that follow
    a newline (where a command may start) and the pickup flags."""

    seq_aft_nl: tuple[list[int], list[int]] = field(default_factory=lambda: ([], []))
    flags: list[int] = field(default_factory=lambda: [0, 0])

    def pickup(self) -> None:
        """nf_ct_ftp_from_nlattr(): the entry was injected from user space."""
        self.flags[0] |= NF_CT_FTP_SEQ_PICKUP
        self.flags[1] |= NF_CT_FTP_SEQ_PICKUP


class _Cmd:
    """struct nf_conntrack_man: the announced address (the 16-byte union, as
    the kernel compares it) and port."""

    __slots__ = ("family", "port", "u3")

    def __init__(self, family: int, addr: bytes) -> None:
        self.family = family
        self.u3 = bytearray(addr.ljust(16, b"\0"))
        self.port = 0


# getnum(data, cmd, term) -> (length, offset correction); 0 length = no number
GetNum = Callable[[bytes, _Cmd, int], tuple[int, int]]


def _before(a: int, b: int) -> bool:
    return ((a - b) & 0xFFFFFFFF) >= 0x80000000


def _is_digit(c: int) -> bool:
    return 48 <= c <= 57


def _try_number(data: bytes, size: int, sep: int, term: int) -> tuple[int, list[int]]:
    """try_number(): `size` decimal numbers separated by `sep`, ended by `term`
    (any character when `term` is 0). Returns (length up to the terminator, numbers)."""
    array = [0] * size
    i = 0
    for length, c in enumerate(data):
        if i >= size:
            break
        if _is_digit(c):
            array[i] = (array[i] * 10 + c - 48) & 0xFFFFFFFF
        elif c == sep:
            i += 1
        else:
            if (c == term or not term) and i == size - 1:
                return length, array
            return 0, array
    return 0, array


def _try_rfc959(data: bytes, cmd: _Cmd, term: int) -> tuple[int, int]:
    """192,168,1,1,5,6"""
    length, a = _try_number(data, 6, 0x2C, term)
    if length == 0:
        return 0, 0
    ip = ((a[0] << 24) | (a[1] << 16) | (a[2] << 8) | a[3]) & 0xFFFFFFFF
    cmd.u3[0:4] = ip.to_bytes(4, "big")
    cmd.port = ((a[4] << 8) | a[5]) & 0xFFFF
    return length, 0


def _try_rfc1123(data: bytes, cmd: _Cmd, term: int) -> tuple[int, int]:
    """227 answers: the numbers start at the first digit (the parentheses of
    RFC 959 are optional, RFC 1123)."""
    for i, c in enumerate(data):
        if _is_digit(c):
            length, _ = _try_rfc959(data[i:], cmd, 0)
            return length, i
    return 0, 0


def _get_port(data: bytes, start: int, delim: int) -> tuple[int, int]:
    """get_port(): digits up to `delim`; returns (index after it, port)."""
    port = 0
    for i in range(start, len(data)):
        c = data[i]
        if c == delim:
            if port == 0:
                break
            return i + 1, port
        if not _is_digit(c):
            break
        port = (port * 10 + c - 48) & 0xFFFF
    return 0, 0


def _get_ipv6_addr(data: bytes, delim: int) -> tuple[int, bytes]:
    """in6_pton() up to `delim` (or a NUL, or the end of the data)."""
    end = len(data)
    for i, c in enumerate(data):
        if c == delim or c == 0:
            end = i
            break
        if not (_is_digit(c) or 97 <= (c | 0x20) <= 102 or c in (0x3A, 0x2E)):
            return 0, b""
    try:
        addr = socket.inet_pton(socket.AF_INET6, data[:end].decode("ascii"))
    except (OSError, ValueError):
        return 0, b""
    return end, addr


def _delimiter_ok(c: int) -> bool:
    return not _is_digit(c) and 33 <= c <= 126


def _try_eprt(data: bytes, cmd: _Cmd, term: int) -> tuple[int, int]:
    """|1|132.235.1.2|6275| or |2|3ffe::1|6275|"""
    if len(data) <= 3:
        return 0, 0
    delim = data[0]
    if not _delimiter_ok(delim) or data[2] != delim:
        return 0, 0
    if (cmd.family == 4 and data[1] != 0x31) or (cmd.family == 6 and data[1] != 0x32):
        return 0, 0
    if data[1] == 0x31:
        length, a = _try_number(data[3:], 4, 0x2E, delim)
        if length:
            ip = ((a[0] << 24) | (a[1] << 16) | (a[2] << 8) | a[3]) & 0xFFFFFFFF
            cmd.u3[0:4] = ip.to_bytes(4, "big")
    else:
        length, addr = _get_ipv6_addr(data[3:], delim)
        if length:
            cmd.u3[0:16] = addr
    if length == 0:
        return 0, 0
    end, port = _get_port(data, 3 + length + 1, delim)
    if end:
        cmd.port = port
    return end, 0


def _try_epsv_response(data: bytes, cmd: _Cmd, term: int) -> tuple[int, int]:
    """|||6446|"""
    if len(data) <= 3:
        return 0, 0
    delim = data[0]
    if not _delimiter_ok(delim) or data[1] != delim or data[2] != delim:
        return 0, 0
    end, port = _get_port(data, 3, delim)
    if end:
        cmd.port = port
    return end, 0


@dataclass(frozen=True, slots=True)
class _Search:
    pattern: bytes
    skip: int  # skip up to and over this character first (0: don't)
    term: int
    ftptype: int
    getnum: GetNum


# search[IP_CT_DIR_MAX][2]
SEARCH: tuple[tuple[_Search, ...], tuple[_Search, ...]] = (
    (_Search(b"PORT", 0x20, 0x0D, NF_CT_FTP_PORT, _try_rfc959),
     _Search(b"EPRT", 0x20, 0x0D, NF_CT_FTP_EPRT, _try_eprt)),
    (_Search(b"227 ", 0, 0, NF_CT_FTP_PASV, _try_rfc1123),
     _Search(b"229 ", 0x28, 0x29, NF_CT_FTP_EPSV, _try_epsv_response)),
)


def find_pattern(data: bytes, search: _Search, cmd: _Cmd) -> tuple[int, int, int]:
    """find_pattern(): (1 match | 0 no match | -1 partial, match offset, length)."""
    pattern = search.pattern
    dlen, plen = len(data), len(pattern)
    if dlen <= plen:  # short packet: a prefix of the pattern is a partial match
        return (-1 if data.lower() == pattern[:dlen].lower() else 0), 0, 0
    if data[:plen].lower() != pattern.lower():
        return 0, 0, 0
    i = plen
    if search.skip:
        while data[i] != search.skip:
            if i == dlen - 1:
                return -1, 0, 0
            i += 1
        i += 1
    numlen, shift = search.getnum(data[i:], cmd, search.term)
    if not numlen:
        return -1, 0, 0
    return 1, i + shift, numlen


class FtpHelper:
    """nf_conntrack_ftp: name "ftp", TCP, port 21."""

    name = "ftp"
    proto = IPPROTO_TCP
    port = FTP_PORT
    max_expected = 1  # ftp_exp_policy
    timeout = 5 * 60

    def __init__(self, loose: bool = False) -> None:
        self.loose = loose  # the `loose` module parameter

    def from_nlattr(self, entry: Entry) -> None:
        """nf_ct_ftp_from_nlattr(): an entry injected from user space (a replica
        taking over) parses the next packet of each direction whatever its
        sequence number, or the first command after a failover would be missed."""
        state = FtpState()
        state.pickup()
        entry.helper_data = state

    def help(self, ct: Conntrack, entry: Entry, pkt: Packet, direction: int, ctinfo: int,
             now: float) -> int:
        if ctinfo != IP_CT_ESTABLISHED and ctinfo != IP_CT_ESTABLISHED_REPLY:
            return ACCEPT  # until there's been traffic both ways, don't look
        tcp = pkt.l4
        data = pkt.payload
        if not isinstance(tcp, Tcp) or not data:
            return ACCEPT
        state = entry.helper_data
        if not isinstance(state, FtpState):
            state = entry.helper_data = FtpState()
        ends_in_nl = data[-1] == 0x0A
        seq = (tcp.seq + len(data)) & 0xFFFFFFFF
        if tcp.seq not in state.seq_aft_nl[direction]:
            if not state.flags[direction] & NF_CT_FTP_SEQ_PICKUP:
                if ends_in_nl:
                    _update_nl_seq(state, direction, seq)
                return ACCEPT
            state.flags[direction] ^= NF_CT_FTP_SEQ_PICKUP
        ret, partial = self._parse(ct, entry, data, direction, now)
        if ends_in_nl and not partial:
            _update_nl_seq(state, direction, seq)
        return ret

    def _parse(self, ct: Conntrack, entry: Entry, data: bytes, direction: int,
               now: float) -> tuple[int, bool]:
        """Scan one line start; returns (verdict, partial match)."""
        here = entry.tuple(direction)
        there = entry.tuple(1 - direction)
        family = here.family
        cmd = _Cmd(family, here.src)  # EPSV answers do not repeat the address
        found = 0
        for search in SEARCH[direction]:
            found, _offset, _length = find_pattern(data, search, cmd)
            if found:
                break
        if found == -1:
            return DROP, True  # "partial matching"
        if found == 0:
            return ACCEPT, False
        width = 4 if family == 4 else 16
        daddr = there.dst
        if bytes(cmd.u3) != here.src.ljust(16, b"\0"):
            # The announced address is not the sender's: a DMZ host opening
            # holes to an internal network, or the packet filter itself.
            if not self.loose:
                return ACCEPT, False
            daddr = bytes(cmd.u3[:width])
        exp = Expectation(
            tuple=Tuple(family, IPPROTO_TCP, there.src, daddr, 0, cmd.port),
            src_any_addr=False, src_any_port=True, master=entry, helper=None,
            expires_at=now + self.timeout, timeout=self.timeout,
            cls=NF_CT_EXPECT_CLASS_DEFAULT)
        if ct.expect.related(exp, self.max_expected, now) != 0:
            return DROP, False  # "cannot add expectation"
        return ACCEPT, False


def _update_nl_seq(state: FtpState, direction: int, nl_seq: int) -> None:
    """update_nl_seq(): remember where the next line starts; with both slots
    taken, replace the older one if the new position is after it."""
    seqs = state.seq_aft_nl[direction]
    if nl_seq in seqs:
        return
    if len(seqs) < NUM_SEQ_TO_REMEMBER:
        seqs.append(nl_seq)
        return
    oldest = 0 if _before(seqs[0], seqs[1]) else 1
    if _before(seqs[oldest], nl_seq):
        seqs[oldest] = nl_seq
