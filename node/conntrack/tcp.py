"""The TCP tracker: Linux 6.18 net/netfilter/nf_conntrack_proto_tcp.c in Python.

  TcpTracker.packet()  nf_conntrack_tcp_packet(), with tcp_error() and tcp_new()
  tcp_in_window()      tcp_in_window() and tcp_init_sender()
  _handle_invalid()    nf_tcp_handle_invalid()
  tcp_options()        tcp_options();  _sack_edge(): tcp_sack()

The state table and constants are in tcp_table.py. Per-connection state lives
in `entry.proto` (a TcpConn, the kernel's struct ip_ct_tcp), both directions'
struct ip_ct_tcp_state included, as flat slots; `TcpConn.seen[dir]` gives a
TcpPeer view of one direction. While a flow table handles the connection's
packets the state is packed into bytes (freeze(); thaw() to write, conn_of()
and state_of() to read).

Sequence arithmetic is the kernel's u32 arithmetic: every stored number is kept
in [0, 2**32) and before()/after() compare modulo 2**32, written inline as
`((a - b) & M) >= H`, i.e. before(a, b). tcp_in_window()'s window checks, the
hot path, write the same test as `(a - b) >> 31 & 1` (bit 31 of the
difference): a - b is small there, and CPython shifts and masks a one-digit
int without allocating, while `& M` or `& H` (two-digit constants) always take
the arbitrary-precision path.

Not modelled: NAT sequence adjustment (nf_ct_seq_offset() is taken as 0: this
engine has no seqadj), the SYN proxy keep-alive special case, and cttimeout
policies (timeouts come from the sysctls).
"""

from __future__ import annotations

import contextlib
import struct
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from node.conntrack.entry import (
    IPCT_ASSURED,
    IPCT_PROTOINFO,
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_FIXED_TIMEOUT,
    IPS_SEEN_REPLY,
    ORIGINAL,
    REPLY,
)
from node.conntrack.l4proto import ACCEPT, INVALID, REPEAT
from node.conntrack.tcp_table import (
    ACK_SET,
    FIN_SET,
    FLAG_INDEX,
    FLAG_MASK,
    IP_CT_EXP_CHALLENGE_ACK,
    IP_CT_TCP_FLAG_BE_LIBERAL,
    IP_CT_TCP_FLAG_CLOSE_INIT,
    IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED,
    IP_CT_TCP_FLAG_MAXACK_SET,
    IP_CT_TCP_FLAG_SACK_PERM,
    IP_CT_TCP_FLAG_WINDOW_SCALE,
    IP_CT_TCP_SIMULTANEOUS_OPEN,
    MAXACKWINCONST,
    NONE_SET,
    RST_SET,
    STATE_BY_NAME,
    SYN_SENT2_TIMEOUT,
    SYN_SET,
    SYNACK_SET,
    TCP_CONNTRACKS,
    TCP_MAX_WSCALE,
    TCP_STATE_NAMES,
    TIMEOUT_RETRANS,
    TIMEOUT_SYSCTLS,
    TIMEOUT_UNACK,
    TcpState,
    flag_names,
    flags_from_names,
    sCL,
    sCW,
    sES,
    sFW,
    sIG,
    sIV,
    sLA,
    sNO,
    sS2,
    sSR,
    sSS,
    sTW,
)
from node.packet import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN

if TYPE_CHECKING:
    from node.conntrack.entry import Entry
    from node.conntrack.sysctl import Sysctl
    from node.conntrack.table import Conntrack
    from node.packet import Packet, Tcp

__all__ = ["TCP_CONNTRACKS", "TcpConn", "TcpPeer", "TcpState", "TcpTracker", "tcp_in_window"]

M = 0xFFFFFFFF  # u32
H = 0x80000000  # before(a, b) <=> ((a - b) & M) >= H <=> (a - b) >> 31 & 1


# tcp_in_window()'s verdicts (enum nf_ct_tcp_action)
NFCT_TCP_IGNORE = 0
NFCT_TCP_INVALID = 1
NFCT_TCP_ACCEPT = 2

TS_ONLY_PREFIX = b"\x01\x01\x08\x0a"  # NOP NOP TIMESTAMP(10): tcp_sack()'s fast path

# Old states in which tcp_can_early_drop() is true (closing connections).
_CLOSING = frozenset((sFW, sCW, sLA, sTW, sCL))
# The special cases' answer: (verdict, old_state, new_state, check_window);
# _CONTINUE means "go on to the window check (or straight to in_window)".
_CONTINUE = 2
_Step = tuple[int, int, int, bool]
# New states nf_conntrack_tcp_packet()'s switch has a case for.
_SWITCH = tuple(s in (sSS, sIG, sIV, sTW, sS2, sSR, sCL) for s in range(sIG + 1))


class _PeerField:
    """One field of struct ip_ct_tcp_state. TcpConn stores both directions'
    copies as flat slots (`td_end0`, `td_end1` ...); a TcpPeer reads and writes
    its direction's copy through this descriptor."""

    __slots__ = ("slots",)

    def __init__(self) -> None:
        self.slots = ("", "")

    def __set_name__(self, owner: type, name: str) -> None:
        self.slots = (name + "0", name + "1")

    def __get__(self, peer: TcpPeer, owner: type | None = None) -> int:
        return getattr(peer.conn, self.slots[peer.direction])

    def __set__(self, peer: TcpPeer, value: int) -> None:
        setattr(peer.conn, self.slots[peer.direction], value)


class TcpPeer:
    """struct ip_ct_tcp_state: what conntrack knows of one direction's sender.

    A view of one direction of a TcpConn (`conn.seen[dir]`), whose fields it
    reads and writes. TcpPeer() is a standalone one (backed by a private
    TcpConn); assigning a pair of them to `conn.seen` copies their fields."""

    __slots__ = ("conn", "direction")

    td_end = _PeerField()  # max(seq + len) sent
    td_maxend = _PeerField()  # max(ack + max(win, 1)) the peer allows
    td_maxwin = _PeerField()  # max(win) (0: nothing seen from this side yet)
    td_maxack = _PeerField()  # max(ack) sent
    td_scale = _PeerField()  # window scale factor
    flags = _PeerField()  # IP_CT_TCP_FLAG_*

    conn: TcpConn
    direction: int

    def __new__(cls, conn: TcpConn | None = None, direction: int = ORIGINAL) -> TcpPeer:
        self = object.__new__(cls)
        self.conn = TcpConn() if conn is None else conn
        self.direction = direction
        return self

    def export(self) -> dict[str, int]:
        return {"td_end": self.td_end, "td_maxend": self.td_maxend, "td_maxwin": self.td_maxwin,
                "td_maxack": self.td_maxack, "td_scale": self.td_scale, "flags": self.flags}

    def restore(self, data: dict[str, int]) -> None:
        self.td_end = int(data["td_end"]) & M
        self.td_maxend = int(data["td_maxend"]) & M
        self.td_maxwin = int(data["td_maxwin"]) & M
        self.td_maxack = int(data["td_maxack"]) & M
        self.td_scale = int(data["td_scale"])
        self.flags = int(data["flags"]) & 0xFF

    def reset(self) -> None:
        """nf_ct_tcp_state_reset(): forget everything but BE_LIBERAL."""
        self.td_end = self.td_maxend = self.td_maxwin = self.td_maxack = self.td_scale = 0
        self.flags &= IP_CT_TCP_FLAG_BE_LIBERAL

    def __repr__(self) -> str:
        return f"<TcpPeer {('orig', 'reply')[self.direction]} {self.export()}>"


_PEER_FIELDS = ("td_end", "td_maxend", "td_maxwin", "td_maxack", "td_scale", "flags")


class TcpConn:
    """struct ip_ct_tcp: the connection's state, in `entry.proto`.

    The two struct ip_ct_tcp_state (`seen[ORIGINAL]`, `seen[REPLY]`) are flat
    slots here, suffixed with the direction (`td_end0` is seen[0].td_end): two
    objects and a tuple less per connection. `seen` gives TcpPeer views of them.

    A fresh TcpConn is all zeros, as a ctnetlink-created entry is (so
    last_index is SYN_SET); tcp_new() sets last_index to NONE_SET."""

    __slots__ = ("flags0", "flags1", "last_ack", "last_dir", "last_end", "last_flags",
                 "last_index", "last_seq", "last_win", "last_wscale", "retrans", "state",
                 "td_end0", "td_end1", "td_maxack0", "td_maxack1", "td_maxend0", "td_maxend1",
                 "td_maxwin0", "td_maxwin1", "td_scale0", "td_scale1")

    def __init__(self) -> None:
        self.td_end0 = self.td_maxend0 = self.td_maxwin0 = self.td_maxack0 = 0
        self.td_scale0 = self.flags0 = 0
        self.td_end1 = self.td_maxend1 = self.td_maxwin1 = self.td_maxack1 = 0
        self.td_scale1 = self.flags1 = 0
        self.state = sNO
        self.last_dir = ORIGINAL
        self.last_index = SYN_SET
        self.last_seq = 0
        self.last_ack = 0
        self.last_end = 0
        self.last_win = 0
        self.last_wscale = 0
        self.last_flags = 0
        self.retrans = 0

    @property
    def seen(self) -> tuple[TcpPeer, TcpPeer]:
        return TcpPeer(self, ORIGINAL), TcpPeer(self, REPLY)

    @seen.setter
    def seen(self, peers: tuple[TcpPeer, TcpPeer]) -> None:
        # Read both first: the peers may be views of this very connection.
        rows = [[getattr(peer, name) for name in _PEER_FIELDS] for peer in peers]
        for direction, row in enumerate(rows):
            view = TcpPeer(self, direction)
            for name, value in zip(_PEER_FIELDS, row, strict=True):
                setattr(view, name, value)

    def __repr__(self) -> str:
        s0, s1 = self.seen
        return (f"<TcpConn {TCP_STATE_NAMES[self.state]} orig={s0.export()} "
                f"reply={s1.export()} last_index={self.last_index} retrans={self.retrans}>")


# ---------------------------------------------------------------- packed state
# struct ip_ct_tcp as bytes: the state of a connection whose packets a flow table
# handles, or that a replica holds for its active. Nothing in software reads or
# writes its windows while the flow table holds it (tcp_packet() runs again only
# after the teardown), so FlowTables.add() packs it (freeze()); a replica stores
# the record's TCP block packed as it came (syncbus.ctstate.new_entry()); the
# first writer after that unpacks it again (thaw()). 91 bytes, not tracked by
# the cyclic GC, instead of a 208-byte TcpConn and an int object for each of
# its u32 fields that is beyond CPython's small ints (up to twelve, 28-32 bytes
# each). The order is TcpInfo's (the replication record's), the widths the
# kernel's: u8 state, per direction u32 td_end, td_maxend, td_maxwin, td_maxack
# and u8 td_scale, flags, then u8 last_dir, last_index, u32 last_seq, last_ack,
# last_end, last_win and u8 last_wscale, last_flags, retrans. A packed state is
# BE_LIBERAL in both directions, as tcf_ct_flow_table_add() makes every
# connection it offloads: a writer may leave the two bits out (a replica stores
# the active's record as it came), the readers here put them in.
PACKED_FIELDS = ("state", "td_end0", "td_maxend0", "td_maxwin0", "td_maxack0", "td_scale0",
                 "flags0", "td_end1", "td_maxend1", "td_maxwin1", "td_maxack1", "td_scale1",
                 "flags1", "last_dir", "last_index", "last_seq", "last_ack", "last_end",
                 "last_win", "last_wscale", "last_flags", "retrans")
PACKED = struct.Struct("!B" + "IIIIBB" * 2 + "BBIIIIBBB")
packed_values = attrgetter(*PACKED_FIELDS)
_PACKED_SLOTS = tuple(getattr(TcpConn, name) for name in PACKED_FIELDS)  # slot descriptors
_FLAGS0, _FLAGS1 = PACKED_FIELDS.index("flags0"), PACKED_FIELDS.index("flags1")
_NO_STATE = packed_values(TcpConn())  # what export() reports for an entry without state


def packed_state(packed: bytes) -> tuple[int, ...]:
    """The values (PACKED_FIELDS) of a packed state, BE_LIBERAL included."""
    values = PACKED.unpack(packed)
    if values[_FLAGS0] & values[_FLAGS1] & IP_CT_TCP_FLAG_BE_LIBERAL:
        return values
    out = list(values)
    out[_FLAGS0] |= IP_CT_TCP_FLAG_BE_LIBERAL
    out[_FLAGS1] |= IP_CT_TCP_FLAG_BE_LIBERAL
    return tuple(out)


def unpacked(packed: bytes) -> TcpConn:
    """The TcpConn that freeze() packed into `packed`."""
    conn = TcpConn.__new__(TcpConn)
    for slot, value in zip(_PACKED_SLOTS, packed_state(packed), strict=True):
        slot.__set__(conn, value)
    return conn


def freeze(entry: Entry) -> None:
    """Pack the entry's TcpConn (a flow table takes over its packets). A state
    that does not fit the kernel's field widths (only a restore() from foreign
    data could make one) stays unpacked."""
    conn = entry.proto
    if conn.__class__ is TcpConn:
        with contextlib.suppress(struct.error):
            entry.proto = PACKED.pack(*packed_values(conn))


def thaw(entry: Entry) -> TcpConn | None:
    """The entry's TcpConn, to write to: unpacked and put back first if freeze()
    packed it."""
    conn = entry.proto
    if conn.__class__ is bytes:
        conn = entry.proto = unpacked(conn)
    return conn


def conn_of(entry: Entry) -> TcpConn | None:
    """The entry's TCP state, to read: a packed one is unpacked into a copy."""
    conn = entry.proto
    return unpacked(conn) if conn.__class__ is bytes else conn


def set_be_liberal(entry: Entry) -> None:
    """nf_ct_set_tcp_be_liberal(): seen[0].flags and seen[1].flags get
    BE_LIBERAL. A packed state has it by definition: left packed."""
    conn = entry.proto
    if conn is not None and conn.__class__ is not bytes:
        conn.flags0 |= IP_CT_TCP_FLAG_BE_LIBERAL
        conn.flags1 |= IP_CT_TCP_FLAG_BE_LIBERAL


def state_of(entry: Entry) -> int:
    """ct->proto.tcp.state; sNO for an entry without TCP state."""
    conn = entry.proto
    if conn is None:
        return sNO
    return conn[0] if conn.__class__ is bytes else conn.state


# ---------------------------------------------------------------- options
def _parse_options(raw: bytes) -> tuple[int, int]:
    """tcp_options()'s loop: (WINDOW_SCALE|SACK_PERM flags, scale) from raw
    option bytes. Stops at EOL, a "silly" size or a partial option; an option
    of the wrong size is skipped; the scale is clamped to 14."""
    flags = scale = 0
    length = len(raw)
    i = 0
    while length > 0:
        opcode = raw[i]
        i += 1
        if opcode == 0:  # TCPOPT_EOL
            break
        if opcode == 1:  # TCPOPT_NOP
            length -= 1
            continue
        if length < 2:
            break
        opsize = raw[i]
        i += 1
        if opsize < 2 or opsize > length:
            break
        if opcode == 4 and opsize == 2:  # TCPOPT_SACK_PERM
            flags |= IP_CT_TCP_FLAG_SACK_PERM
        elif opcode == 3 and opsize == 3:  # TCPOPT_WINDOW
            scale = min(raw[i], TCP_MAX_WSCALE)
            flags |= IP_CT_TCP_FLAG_WINDOW_SCALE
        i += opsize - 2
        length -= opsize
    return flags, scale


def _options_of(th: Tcp) -> tuple[int, int] | None:
    """The packet's (flags, scale), or None when the header has no options
    (tcp_options() then leaves the state alone). Raw bytes are authoritative;
    a packet built from decoded options only uses those."""
    raw = th.raw_options
    if raw:
        return _parse_options(raw)
    opts = th.options
    if opts.mss is None and opts.wscale is None and not opts.sackok and not opts.sack \
            and opts.ts is None:
        return None
    flags = IP_CT_TCP_FLAG_SACK_PERM if opts.sackok else 0
    scale = 0
    if opts.wscale is not None:
        flags |= IP_CT_TCP_FLAG_WINDOW_SCALE
        scale = min(opts.wscale, TCP_MAX_WSCALE)
    return flags, scale


def tcp_options(th: Tcp, peer: TcpPeer) -> None:
    """tcp_options(): learn window scaling and SACK permission from a SYN."""
    parsed = _options_of(th)
    if parsed is None:
        return
    peer.td_scale = parsed[1]
    peer.flags = (peer.flags & IP_CT_TCP_FLAG_BE_LIBERAL) | parsed[0]


def _sack_edge(th: Tcp, sack: int) -> int:
    """tcp_sack(): the highest right edge of the first SACK option, if after `sack`."""
    raw = th.raw_options
    if not raw:
        for _, right in th.options.sack:
            right &= M
            if ((sack - right) & M) >= H:
                sack = right
        return sack
    length = len(raw)
    if length == 12 and raw.startswith(TS_ONLY_PREFIX):
        return sack
    i = 0
    while length > 0:
        opcode = raw[i]
        i += 1
        if opcode == 0:
            return sack
        if opcode == 1:
            length -= 1
            continue
        if length < 2:
            return sack
        opsize = raw[i]
        i += 1
        if opsize < 2 or opsize > length:
            return sack
        if opcode == 5 and opsize >= 10 and (opsize - 2) % 8 == 0:  # TCPOPT_SACK
            for j in range(i + 4, i + opsize - 2, 8):
                right = int.from_bytes(raw[j:j + 4], "big")
                if ((sack - right) & M) >= H:  # after(right, sack)
                    sack = right
            return sack
        i += opsize - 2
        length -= opsize
    return sack


# ---------------------------------------------------------------- window
def _init_sender(sender: TcpPeer, receiver: TcpPeer, th: Tcp, end: int, win: int,
                 direction: int) -> None:
    """tcp_init_sender(): a SYN/ACK answering a SYN, or a SYN from the reply
    direction in a simultaneous open. Window scaling needs both SYNs' option."""
    sender.td_end = sender.td_maxend = end
    sender.td_maxwin = win or 1
    tcp_options(th, sender)
    if direction == REPLY and not (sender.flags & IP_CT_TCP_FLAG_WINDOW_SCALE
                                   and receiver.flags & IP_CT_TCP_FLAG_WINDOW_SCALE):
        sender.td_scale = receiver.td_scale = 0


def tcp_in_window(conn: TcpConn, direction: int, index: int, th: Tcp, paylen: int,
                  liberal: int) -> int:
    """tcp_in_window(): van Rooij's four window checks, with the 2022 rule that
    overly delayed packets are ignored, not invalid, and the tolerance for data
    overshooting the receiver's window by at most its max window. Updates the
    peers' windows and the retransmission counter. `liberal` is the
    nf_conntrack_tcp_be_liberal sysctl. Returns NFCT_TCP_*; an INVALID or IGNORE
    verdict becomes ACCEPT when the sender is BE_LIBERAL (nf_tcp_log_invalid()).

    The hot path of established traffic: both peers' fields are read into
    locals once and written back once (they are flat slots of TcpConn; the
    `if direction:` blocks only pick which copy is the sender's)."""
    flags = th.flags
    seq = th.seq
    ack = sack = th.ack
    win_raw = win = th.window
    end = (seq + paylen) & M
    if flags & 0x03:  # SYN|FIN
        end = (end + (flags >> 1 & 1) + (flags & 1)) & M  # SYN and FIN count 1

    if (conn.flags0 if direction else conn.flags1) & IP_CT_TCP_FLAG_SACK_PERM:  # the receiver
        raw = th.raw_options
        if raw:
            if len(raw) != 12 or raw[:4] != TS_ONLY_PREFIX:  # tcp_sack()'s fast path
                sack = _sack_edge(th, sack)
        elif th.options.sack:
            sack = _sack_edge(th, sack)
    # (NAT sequence adjustment would shift ack and sack here: no seqadj in this engine.)

    if flags & 0x06 or not flags & 0x10 \
            or not (conn.td_maxwin1 if direction else conn.td_maxwin0):  # SYN|RST, no ACK, new
        # Not plain established traffic (most packets skip this block).
        sender = TcpPeer(conn, direction)
        receiver = TcpPeer(conn, 1 - direction)
        if sender.td_maxwin == 0:
            if flags & TCP_SYN:
                _init_sender(sender, receiver, th, end, win, direction)
                if not flags & TCP_ACK:
                    return NFCT_TCP_ACCEPT  # simultaneous open
            else:
                # Mid-stream: the history is lost; learn from this packet.
                sender.td_end = end
                swin = (win << sender.td_scale) & M
                sender.td_maxwin = swin or 1
                sender.td_maxend = (end + sender.td_maxwin) & M
                if receiver.td_maxwin == 0:
                    # Nothing seen the other way yet: make III and IV pass until then.
                    receiver.td_end = receiver.td_maxend = sack
                elif sack == (receiver.td_end + 1) & M:
                    receiver.td_end = (receiver.td_end + 1) & M  # a keepalive's answer
        elif flags & TCP_SYN and ((sender.td_end - end) & M) >= H \
                and (conn.state == sSS or conn.state == sSR):
            # A SYN (or SYN/ACK) with a higher sequence number: the peer restarted
            # (RFC 793 "reinitialized"); re-learn this direction as for the first one.
            _init_sender(sender, receiver, th, end, win, direction)
            if direction == REPLY and not flags & TCP_ACK:
                return NFCT_TCP_ACCEPT

        if not flags & TCP_ACK:
            ack = sack = receiver.td_end  # no ACK: pretend it acknowledged everything
        elif flags & TCP_RST and ack == 0:
            ack = sack = receiver.td_end  # broken stacks: RST|ACK with a zero ack
        if flags & TCP_RST and seq == 0 and conn.state == sSS:
            seq = end = sender.td_end  # an RST answering a SYN

    # The sender's (s_) and the receiver's (r_) fields, one plain statement
    # each: packing them into tuples, or testing `direction` once per field,
    # costs as much as the window checks themselves.
    if direction:
        s_end = conn.td_end1
        s_maxend = conn.td_maxend1
        s_maxwin = conn.td_maxwin1
        s_maxack = conn.td_maxack1
        s_scale = conn.td_scale1
        s_flags = conn.flags1
        r_end = conn.td_end0
        r_maxend = conn.td_maxend0
        r_maxwin = conn.td_maxwin0
        r_flags = conn.flags0
    else:
        s_end = conn.td_end0
        s_maxend = conn.td_maxend0
        s_maxwin = conn.td_maxwin0
        s_maxack = conn.td_maxack0
        s_scale = conn.td_scale0
        s_flags = conn.flags0
        r_end = conn.td_end1
        r_maxend = conn.td_maxend1
        r_maxwin = conn.td_maxwin1
        r_flags = conn.flags1
    maxackwin = s_maxwin if s_maxwin > MAXACKWINCONST else MAXACKWINCONST
    if not ((seq - s_maxend - 1) >> 31 & 1):  # I fails: not before(seq, td_maxend + 1)
        overshot = (end - s_maxend + 1) & M
        ack_ok = (r_end - maxackwin - 1 - sack) >> 31 & 1
        in_recv_win = r_maxwin != 0 and (s_end - r_maxwin - 1 - end) >> 31 & 1
        if in_recv_win and ack_ok and overshot <= r_maxwin and (sack - r_end - 1) >> 31 & 1:
            # Data beyond the window but within one max window of it: let the
            # peer's ACK for it update the state later ("%u bytes more than expected").
            sender = TcpPeer(conn, direction)
            sender.td_end = end
            sender.flags = s_flags | IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED
            return _log_invalid(s_flags, liberal, NFCT_TCP_IGNORE)
        return _log_invalid(s_flags, liberal, NFCT_TCP_INVALID)  # "SEQ is over upper bound"
    if not ((sack - r_end - 1) >> 31 & 1):  # III fails: sack after receiver.td_end
        return _log_invalid(s_flags, liberal, NFCT_TCP_INVALID)  # "ACK is over upper bound"
    if r_maxwin and not ((s_end - r_maxwin - 1 - end) >> 31 & 1):
        # II fails: already-acked data retransmitted ("SEQ is under lower bound")
        return _log_invalid(s_flags, liberal, NFCT_TCP_IGNORE)
    if not ((r_end - maxackwin - 1 - sack) >> 31 & 1):
        # IV fails: "ignored ACK under lower bound (possible overly delayed)"
        return _log_invalid(s_flags, liberal, NFCT_TCP_IGNORE)

    if not flags & TCP_SYN:
        win <<= s_scale

    # Update the sender.
    swin = (win + sack - ack) & M
    if s_maxwin < swin:
        s_maxwin = swin
    if (s_end - end) >> 31 & 1:  # after(end, td_end)
        s_end = end
        s_flags |= IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED
    if flags & TCP_ACK:
        if not s_flags & IP_CT_TCP_FLAG_MAXACK_SET:
            s_maxack = ack
            s_flags |= IP_CT_TCP_FLAG_MAXACK_SET
        elif (s_maxack - ack) >> 31 & 1:  # after(ack, td_maxack)
            s_maxack = ack

    # Update the receiver.
    if r_maxwin and (s_maxend - end) >> 31 & 1:  # after(end, sender's td_maxend)
        r_maxwin = (r_maxwin + end - s_maxend) & M
    if (r_maxend - 1 - sack - win) >> 31 & 1:  # after(sack + win, td_maxend - 1)
        r_maxend = (sack + win + (0 if win else 1)) & M
    if ack == r_end and r_flags & IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED:
        r_flags &= ~IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED

    if direction:
        conn.td_end1 = s_end
        conn.td_maxwin1 = s_maxwin
        conn.td_maxack1 = s_maxack
        conn.flags1 = s_flags
        conn.td_maxend0 = r_maxend
        conn.td_maxwin0 = r_maxwin
        conn.flags0 = r_flags
    else:
        conn.td_end0 = s_end
        conn.td_maxwin0 = s_maxwin
        conn.td_maxack0 = s_maxack
        conn.flags0 = s_flags
        conn.td_maxend1 = r_maxend
        conn.td_maxwin1 = r_maxwin
        conn.flags1 = r_flags

    # Count retransmissions of the same ACK segment.
    if index == ACK_SET:
        if conn.last_seq == seq and conn.last_end == end and conn.last_ack == ack \
                and conn.last_dir == direction and conn.last_win == win_raw:
            conn.retrans = conn.retrans + 1 & 0xFF  # u8 retrans, as the kernel's
        else:
            conn.last_dir = direction
            conn.last_seq = seq
            conn.last_ack = ack
            conn.last_end = end
            conn.last_win = win_raw
            conn.retrans = 0
    return NFCT_TCP_ACCEPT


def _log_invalid(sender_flags: int, liberal: int, verdict: int) -> int:
    """nf_tcp_log_invalid(): a liberal sender's bad packets are accepted."""
    if sender_flags & IP_CT_TCP_FLAG_BE_LIBERAL or liberal:
        return NFCT_TCP_ACCEPT
    return verdict


# ---------------------------------------------------------------- the tracker
class TcpTracker:
    """nf_conntrack_l4proto_tcp: the L4Tracker contract (packet, state_name,
    export) plus restore() for replication and the hooks other kernel code
    calls (set_be_liberal, set_closing, can_early_drop). Stateless apart from a
    cache of timeout tables; connections live in `entry.proto`."""

    def __init__(self) -> None:
        # Sysctl objects are frozen: their timeouts table is computed once. The
        # last one used is kept apart for the hot path.
        self._timeouts: dict[int, tuple[Sysctl, tuple[float, ...]]] = {}
        self._last_sysctl: Sysctl | None = None
        self._last_timeouts: tuple[float, ...] = ()
        # For the established fast path, from the last one: the ESTABLISHED,
        # RETRANS and UNACK timeouts and nf_conntrack_tcp_max_retrans.
        self._last_est: tuple[float, float, float, int] = (0.0, 0.0, 0.0, 0)

    def timeouts(self, sysctl: Sysctl) -> tuple[float, ...]:
        """tcp_timeouts[] for these sysctls, indexed by TcpState (MAX/IGNORE: 0)."""
        cached = self._timeouts.get(id(sysctl))
        if cached is None or cached[0] is not sysctl:
            values = [float(getattr(sysctl, name)) if name else 0.0 for name in TIMEOUT_SYSCTLS]
            values[sS2] = float(SYN_SENT2_TIMEOUT)
            if len(self._timeouts) > 64:
                self._timeouts.clear()
            cached = self._timeouts[id(sysctl)] = (sysctl, tuple(values))
        self._last_sysctl, self._last_timeouts = cached
        timeouts = cached[1]
        self._last_est = (timeouts[sES], timeouts[TIMEOUT_RETRANS], timeouts[TIMEOUT_UNACK],
                          sysctl.nf_conntrack_tcp_max_retrans)
        return timeouts

    # ------------------------------------------------------------ per packet
    def packet(self, ct: Conntrack, entry: Entry, pkt: Packet, direction: int, ctinfo: int,
               now: float) -> int:
        th: Tcp = pkt.l4  # type: ignore[assignment]
        sysctl = ct.sysctl
        # tcp_error(): bad checksum, then the flag combination.
        if not pkt.l4_csum_ok and sysctl.nf_conntrack_checksum:
            return INVALID  # "bad checksum"
        index = FLAG_INDEX[th.flags & FLAG_MASK]
        if index < 0:
            return INVALID  # "invalid tcp flag combination"
        paylen = len(pkt.payload)
        conn: TcpConn | None = entry.proto
        status = entry.status
        if index == ACK_SET and conn.__class__ is TcpConn and conn.state == sES \
                and status & IPS_CONFIRMED:  # (not packed by a flow table: see freeze())
            # The steady state, inline: an ACK without SYN, FIN or RST on an
            # ESTABLISHED connection. TCP_CONNTRACKS keeps ESTABLISHED and the
            # switch has no case for it; tcp_in_window()'s established path is
            # written out below (the same four checks, the same updates: see
            # tests/node/test_tcp.py, which runs both on random states). Any other
            # packet (a sender not seen yet, SACK blocks to read, a failed check)
            # falls through to the general path before anything is changed.
            if direction:
                s_maxwin = conn.td_maxwin1
                s_end = conn.td_end1
                s_maxend = conn.td_maxend1
                s_maxack = conn.td_maxack1
                s_scale = conn.td_scale1
                s_flags = conn.flags1
                r_end = conn.td_end0
                r_maxend = conn.td_maxend0
                r_maxwin = conn.td_maxwin0
                r_flags = conn.flags0
            else:
                s_maxwin = conn.td_maxwin0
                s_end = conn.td_end0
                s_maxend = conn.td_maxend0
                s_maxack = conn.td_maxack0
                s_scale = conn.td_scale0
                s_flags = conn.flags0
                r_end = conn.td_end1
                r_maxend = conn.td_maxend1
                r_maxwin = conn.td_maxwin1
                r_flags = conn.flags1
            if r_flags & IP_CT_TCP_FLAG_SACK_PERM:  # tcp_sack() would run: no SACK block?
                raw = th.raw_options
                no_sack = len(raw) == 12 and raw[:4] == TS_ONLY_PREFIX if raw \
                    else not th.options.sack
            else:
                no_sack = True
            seq = th.seq
            ack = th.ack  # (and sack: no SACK block)
            end = (seq + paylen) & M
            maxackwin = s_maxwin if s_maxwin > MAXACKWINCONST else MAXACKWINCONST
            if s_maxwin and no_sack \
                    and (seq - s_maxend - 1) >> 31 & 1 \
                    and (ack - r_end - 1) >> 31 & 1 \
                    and (not r_maxwin or (s_end - r_maxwin - 1 - end) >> 31 & 1) \
                    and (r_end - maxackwin - 1 - ack) >> 31 & 1:  # checks I, III, II, IV
                win_raw = th.window
                win = win_raw << s_scale
                # Update the sender.
                swin = win & M  # (win + sack - ack)
                if s_maxwin < swin:
                    s_maxwin = swin
                if (s_end - end) >> 31 & 1:  # after(end, td_end)
                    s_end = end
                    s_flags |= IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED
                if not s_flags & IP_CT_TCP_FLAG_MAXACK_SET:
                    s_maxack = ack
                    s_flags |= IP_CT_TCP_FLAG_MAXACK_SET
                elif (s_maxack - ack) >> 31 & 1:  # after(ack, td_maxack)
                    s_maxack = ack
                # Update the receiver.
                if r_maxwin and (s_maxend - end) >> 31 & 1:  # after(end, sender's td_maxend)
                    r_maxwin = (r_maxwin + end - s_maxend) & M
                if (r_maxend - 1 - ack - win) >> 31 & 1:  # after(sack + win, td_maxend - 1)
                    r_maxend = (ack + win + (0 if win else 1)) & M
                if ack == r_end and r_flags & IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED:
                    r_flags &= ~IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED
                if direction:
                    conn.td_end1 = s_end
                    conn.td_maxwin1 = s_maxwin
                    conn.td_maxack1 = s_maxack
                    conn.flags1 = s_flags
                    conn.td_maxend0 = r_maxend
                    conn.td_maxwin0 = r_maxwin
                    conn.flags0 = r_flags
                else:
                    conn.td_end0 = s_end
                    conn.td_maxwin0 = s_maxwin
                    conn.td_maxack0 = s_maxack
                    conn.flags0 = s_flags
                    conn.td_maxend1 = r_maxend
                    conn.td_maxwin1 = r_maxwin
                    conn.flags1 = r_flags
                # Count retransmissions of the same ACK segment.
                if conn.last_seq == seq and conn.last_end == end and conn.last_ack == ack \
                        and conn.last_dir == direction and conn.last_win == win_raw:
                    retrans = conn.retrans = conn.retrans + 1 & 0xFF  # (u8)
                else:
                    conn.last_seq = seq
                    conn.last_ack = ack
                    conn.last_end = end
                    conn.last_win = win_raw
                    retrans = conn.retrans = 0
                # in_window (ESTABLISHED -> ESTABLISHED: no state change, no event)
                conn.last_index = ACK_SET
                conn.last_dir = direction
                if sysctl is not self._last_sysctl:
                    self.timeouts(sysctl)
                timeout, t_retrans, t_unack, max_retrans = self._last_est
                if retrans >= max_retrans and timeout > t_retrans:
                    timeout = t_retrans
                elif (s_flags | r_flags) & IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED \
                        and timeout > t_unack:
                    timeout = t_unack
                elif win_raw == 0 and timeout > t_retrans:
                    timeout = t_retrans  # zero window
                if not status & IPS_SEEN_REPLY:
                    if timeout > t_unack:
                        timeout = t_unack  # a pickup waits for its first reply
                elif not status & IPS_ASSURED:
                    entry.status |= IPS_ASSURED
                    entry.events |= IPCT_ASSURED
                # ct.refresh(), inline unless the entry needs a sooner timer
                at = now + timeout
                if status & IPS_FIXED_TIMEOUT:
                    pass
                elif at < entry.heap_at:
                    ct.refresh(entry, timeout, now)
                else:
                    entry.timeout = timeout
                    entry.expires_at = at
                return ACCEPT
        return self.general(ct, entry, th, index, paylen, direction, status, now)

    def general(self, ct: Conntrack, entry: Entry, th: Tcp, index: int, paylen: int,
                direction: int, status: int, now: float) -> int:
        """nf_conntrack_tcp_packet() after tcp_error(), for every packet (packet()
        answers the steady state itself, the same way): tcp_new() for a new entry,
        the state table and its special cases, tcp_in_window(), the timeout."""
        sysctl = ct.sysctl
        conn = thaw(entry)
        if not status & IPS_CONFIRMED:
            conn = _tcp_new(index, th, paylen, sysctl)
            if conn is None:
                return INVALID  # "invalid new", or a pickup with tcp_loose=0
            entry.proto = conn
        elif conn is None:
            conn = entry.proto = TcpConn()  # inserted without protocol info

        old_state = conn.state
        new_state = TCP_CONNTRACKS[direction][index][old_state]
        check_window = True
        if _SWITCH[new_state]:
            verdict, old_state, new_state, check_window = self._special(
                ct, entry, conn, th, paylen, direction, index, old_state, new_state, now)
            if verdict != _CONTINUE:
                return verdict

        if check_window:
            res = tcp_in_window(conn, direction, index, th, paylen,
                                sysctl.nf_conntrack_tcp_be_liberal)
            if res != NFCT_TCP_ACCEPT:
                if res == NFCT_TCP_IGNORE:
                    return ACCEPT  # accepted, state and timeout untouched
                _handle_invalid(ct, entry, conn, direction, index, now,
                                self.timeouts(sysctl)[TIMEOUT_UNACK])
                return INVALID

        # in_window: from here on the packet is in window.
        conn.last_index = index
        conn.last_dir = direction
        conn.state = new_state
        if old_state != new_state:
            if new_state == sFW:
                conn.seen[direction].flags |= IP_CT_TCP_FLAG_CLOSE_INIT
            entry.events |= IPCT_PROTOINFO

        timeouts = self._last_timeouts if sysctl is self._last_sysctl else self.timeouts(sysctl)
        timeout = timeouts[new_state]
        if conn.retrans >= sysctl.nf_conntrack_tcp_max_retrans \
                and timeout > timeouts[TIMEOUT_RETRANS]:
            timeout = timeouts[TIMEOUT_RETRANS]
        elif index == RST_SET:
            timeout = timeouts[sCL]
        elif (conn.flags0 | conn.flags1) & IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED \
                and timeout > timeouts[TIMEOUT_UNACK]:
            timeout = timeouts[TIMEOUT_UNACK]
        elif conn.last_win == 0 and timeout > timeouts[TIMEOUT_RETRANS]:
            timeout = timeouts[TIMEOUT_RETRANS]  # zero window

        if not status & IPS_SEEN_REPLY:
            if th.flags & TCP_RST:
                # The only answer is an RST (or the client gave up): not a
                # connection; delete it now, the packet still passes.
                ct.kill(entry, now, "rst")
                return ACCEPT
            if index == SYN_SET and old_state == sSS:
                return ACCEPT  # a SYN retransmit does not renew the timeout
            if new_state == sES and timeout > timeouts[TIMEOUT_UNACK]:
                timeout = timeouts[TIMEOUT_UNACK]  # a pickup waits for its first reply
        elif not status & IPS_ASSURED and new_state == sES \
                and old_state in (sSR, sES):
            entry.status |= IPS_ASSURED
            entry.events |= IPCT_ASSURED
        ct.refresh(entry, timeout, now)
        return ACCEPT

    def _special(self, ct: Conntrack, entry: Entry, conn: TcpConn, th: Tcp, paylen: int,
                 direction: int, index: int, old_state: int, new_state: int,
                 now: float) -> _Step:
        """nf_conntrack_tcp_packet()'s switch on the new state: (verdict, old
        state, new state, check the window?). The verdict is final (INVALID,
        REPEAT, or ACCEPT for an ignored packet) unless it is _CONTINUE."""
        if new_state == sSS:
            if old_state < sTW:
                return _CONTINUE, old_state, new_state, True
            if (conn.flags0 | conn.flags1) & IP_CT_TCP_FLAG_CLOSE_INIT \
                    or (conn.last_dir == direction and conn.last_index == RST_SET):
                # Reopening a closed or aborted connection: delete the entry and
                # look the packet up again (it will create a new one).
                ct.kill(entry, now, "reopen")
                return REPEAT, old_state, new_state, False
            new_state = sIG  # the fallthrough into the IGNORE case
        if new_state == sIG:
            return _ignore(conn, th, paylen, direction, index, old_state)
        if new_state == sIV:
            return INVALID, old_state, new_state, False  # "packet ... invalid"
        if new_state == sTW:
            if old_state == sLA and index == ACK_SET and conn.last_dir != direction \
                    and conn.last_index == SYN_SET \
                    and conn.last_flags & IP_CT_EXP_CHALLENGE_ACK:
                # An RFC 5961 challenge ACK to a SYN we let through: it does not
                # acknowledge the last FIN.
                conn.last_flags &= ~IP_CT_EXP_CHALLENGE_ACK
                return ACCEPT, old_state, new_state, False
        elif new_state == sS2:
            conn.last_flags |= IP_CT_TCP_SIMULTANEOUS_OPEN
        elif new_state == sSR:
            if direction == REPLY and index == ACK_SET \
                    and conn.last_flags & IP_CT_TCP_SIMULTANEOUS_OPEN:
                new_state = sES
        elif new_state == sCL and index == RST_SET:
            return _rst_in_close(ct, entry, conn, th, direction, old_state)
        return _CONTINUE, old_state, new_state, True

    # ------------------------------------------------------------ reporting
    def state_name(self, entry: Entry) -> str | None:
        return TCP_STATE_NAMES[state_of(entry)] if entry.proto is not None else "NONE"

    def export(self, entry: Entry) -> dict[str, Any] | None:
        """ctnetlink's CTA_PROTOINFO_TCP (state, wscale, flags per direction) plus
        everything else in struct ip_ct_tcp, so that restore() rebuilds it exactly."""
        return self.expand(self.capture(entry))

    def capture(self, entry: Entry) -> tuple[int, ...]:
        """The state's values (PACKED_FIELDS order): one C call for a TcpConn, an
        unpack for a frozen one; a default TcpConn's for an entry without."""
        conn = entry.proto
        if conn.__class__ is bytes:
            return packed_state(conn)
        return packed_values(conn) if conn is not None else _NO_STATE

    def expand(self, captured: tuple[int, ...]) -> dict[str, Any]:
        (state, end0, maxend0, maxwin0, maxack0, scale0, flags0, end1, maxend1, maxwin1,
         maxack1, scale1, flags1, last_dir, last_index, last_seq, last_ack, last_end,
         last_win, last_wscale, last_flags, retrans) = captured
        return {
            "state": TCP_STATE_NAMES[state],
            "wscale_orig": scale0,
            "wscale_reply": scale1,
            "flags_orig": flag_names(flags0),
            "flags_reply": flag_names(flags1),
            "td_orig": {"td_end": end0, "td_maxend": maxend0, "td_maxwin": maxwin0,
                        "td_maxack": maxack0, "td_scale": scale0, "flags": flags0},
            "td_reply": {"td_end": end1, "td_maxend": maxend1, "td_maxwin": maxwin1,
                         "td_maxack": maxack1, "td_scale": scale1, "flags": flags1},
            "last_dir": last_dir,
            "last_index": last_index,
            "last_seq": last_seq,
            "last_ack": last_ack,
            "last_end": last_end,
            "last_win": last_win,
            "last_wscale": last_wscale,
            "last_flags": last_flags,
            "retrans": retrans,
        }

    def restore(self, entry: Entry, data: dict[str, Any]) -> None:
        """The inverse of export(). Given only the ctnetlink part (state, wscale,
        flags), it does what nlattr_to_tcp() does on a new entry: the windows stay
        unknown (td_maxwin 0) and are learnt from the next packets."""
        conn = TcpConn()
        state = data.get("state", "NONE")
        conn.state = STATE_BY_NAME[state] if isinstance(state, str) else int(state)
        if conn.state >= sIV:
            raise ValueError(f"bad TCP state {state!r}")
        s0, s1 = conn.seen
        if "td_orig" in data:
            s0.restore(data["td_orig"])
            s1.restore(data["td_reply"])
            conn.last_dir = int(data["last_dir"])
            conn.last_index = int(data["last_index"])
            conn.last_seq = int(data["last_seq"]) & M
            conn.last_ack = int(data["last_ack"]) & M
            conn.last_end = int(data["last_end"]) & M
            conn.last_win = int(data["last_win"])
            conn.last_wscale = int(data["last_wscale"])
            conn.last_flags = int(data["last_flags"]) & 0xFF
            conn.retrans = int(data["retrans"])
        else:
            s0.flags = flags_from_names(data.get("flags_orig", []))
            s1.flags = flags_from_names(data.get("flags_reply", []))
            if "wscale_orig" in data and "wscale_reply" in data \
                    and s0.flags & s1.flags & IP_CT_TCP_FLAG_WINDOW_SCALE:
                s0.td_scale = int(data["wscale_orig"])
                s1.td_scale = int(data["wscale_reply"])
        entry.proto = conn

    # ------------------------------------------------------------ other callers
    def can_early_drop(self, entry: Entry) -> bool:
        """tcp_can_early_drop(): a closing connection may be evicted even if
        assured (the GC's early drop when the table is nearly full)."""
        return entry.proto is not None and state_of(entry) in _CLOSING

    def set_be_liberal(self, entry: Entry) -> None:
        """nf_ct_set_tcp_be_liberal(): stop window checks in both directions
        (done when a connection is offloaded to a flow table)."""
        set_be_liberal(entry)

    def set_closing(self, ct: Conntrack, entry: Entry, now: float) -> None:
        """nf_conntrack_tcp_set_closing(): force CLOSE with its timeout (a flow
        table saw FIN/RST on an offloaded connection)."""
        conn = thaw(entry)
        if conn is None or not entry.status & IPS_CONFIRMED:
            return
        old_state = conn.state
        conn.state = sCL
        if old_state == sCL or entry.status & IPS_FIXED_TIMEOUT:
            return
        ct.refresh(entry, self.timeouts(ct.sysctl)[sCL], now)
        entry.events |= IPCT_PROTOINFO


def _tcp_new(index: int, th: Tcp, paylen: int, sysctl: Sysctl) -> TcpConn | None:
    """tcp_new(): only a SYN opens a connection; with tcp_loose an ACK picks up
    one already in progress (both directions then SACK_PERM and BE_LIBERAL)."""
    new_state = TCP_CONNTRACKS[ORIGINAL][index][sNO]
    if new_state >= sIV:
        return None  # "invalid new": SYN/ACK, FIN, RST
    if new_state != sSS and not sysctl.nf_conntrack_tcp_loose:
        return None
    conn = TcpConn()
    flags = th.flags
    conn.td_end0 = (th.seq + paylen + (1 if flags & TCP_SYN else 0)
                    + (1 if flags & TCP_FIN else 0)) & M
    conn.td_maxwin0 = th.window or 1
    if new_state == sSS:
        conn.td_maxend0 = conn.td_end0
        tcp_options(th, TcpPeer(conn, ORIGINAL))
    else:
        conn.td_maxend0 = (conn.td_end0 + conn.td_maxwin0) & M
        conn.flags0 = conn.flags1 = IP_CT_TCP_FLAG_SACK_PERM | IP_CT_TCP_FLAG_BE_LIBERAL
    conn.last_index = NONE_SET
    return conn


def _ignore(conn: TcpConn, th: Tcp, paylen: int, direction: int, index: int,
            old_state: int) -> _Step:
    """The IGNORE case: a SYN, SYN/ACK or ACK that may show we are out of sync.
    Remember it; a SYN/ACK that answers an ignored SYN resynchronises the entry."""
    if index == SYNACK_SET and conn.last_index == SYN_SET and conn.last_dir != direction \
            and th.ack == conn.last_end:
        # Both ends agree on the ignored SYN: adopt it as the opening SYN.
        peer = conn.seen[conn.last_dir]
        peer.td_end = peer.td_maxend = conn.last_end
        peer.td_maxwin = conn.last_win or 1
        peer.td_scale = conn.last_wscale
        conn.last_flags &= ~IP_CT_EXP_CHALLENGE_ACK
        peer.flags = conn.last_flags
        conn.seen[direction].reset()
        return _CONTINUE, sSS, sSR, True
    flags = th.flags
    conn.last_index = index
    conn.last_dir = direction
    conn.last_seq = th.seq
    conn.last_end = (th.seq + paylen + (1 if flags & TCP_SYN else 0)
                     + (1 if flags & TCP_FIN else 0)) & M
    conn.last_win = th.window
    if index == SYN_SET and direction == ORIGINAL:
        # Note the SYN's options for a resync; in LAST_ACK the answer may be an
        # RFC 5961 challenge ACK, which must not count as the last ACK.
        parsed = _options_of(th)
        opt_flags, scale = parsed if parsed is not None else (0, 0)
        conn.last_flags = opt_flags & (IP_CT_TCP_FLAG_WINDOW_SCALE | IP_CT_TCP_FLAG_SACK_PERM)
        conn.last_wscale = scale if opt_flags & IP_CT_TCP_FLAG_WINDOW_SCALE else 0
        if old_state == sLA:
            conn.last_flags |= IP_CT_EXP_CHALLENGE_ACK
    if old_state == sSS and index == ACK_SET and direction == REPLY:
        conn.last_ack = th.ack  # a possible challenge ACK answering the SYN
    return ACCEPT, old_state, sIG, False


def _rst_in_close(ct: Conntrack, entry: Entry, conn: TcpConn, th: Tcp, direction: int,
                  old_state: int) -> _Step:
    """The CLOSE case for an RST: is it a valid reset of this connection?"""
    if old_state in _CLOSING:
        # tcp_can_early_drop(): the tuple may already be reused and the
        # sequence data stale; skip the checks.
        return _CONTINUE, old_state, sCL, False
    new_state = sCL
    other = conn.seen[1 - direction]
    established = old_state == sES and entry.status & IPS_ASSURED
    if other.flags & IP_CT_TCP_FLAG_MAXACK_SET and conn.last_index != SYN_SET:
        seq = th.seq
        if seq == 0 and not established:
            return _CONTINUE, old_state, new_state, True  # answers a SYN we let through
        if ((seq - other.td_maxack) & M) >= H and not ct.sysctl.nf_conntrack_tcp_ignore_invalid_rst:
            return INVALID, old_state, new_state, False  # "invalid rst": below the peer's ack
        if not established or seq == other.td_maxack:
            return _CONTINUE, old_state, new_state, True
        if conn.last_index == ACK_SET and conn.last_dir == direction and seq == conn.last_end:
            return _CONTINUE, old_state, new_state, True  # RST right after our last segment
        # In window but not exact: keep the state, so a challenge ACK can follow.
        new_state = old_state
    status = entry.status
    if ((status & IPS_SEEN_REPLY and conn.last_index == SYN_SET)
            or (not status & IPS_ASSURED and conn.last_index == ACK_SET)) \
            and th.ack == conn.last_end:
        # An RST answering a SYN or ACK we let through while out of sync:
        # close without a window check (it may ack what we ignored).
        return _CONTINUE, old_state, new_state, False
    if old_state == sSS and conn.last_index == ACK_SET and conn.last_dir == REPLY \
            and th.seq == conn.last_ack:
        return _CONTINUE, old_state, new_state, False  # reset after a challenge ACK
    return _CONTINUE, old_state, new_state, True


def _handle_invalid(ct: Conntrack, entry: Entry, conn: TcpConn, direction: int, index: int,
                    now: float, unack_timeout: float) -> None:
    """nf_tcp_handle_invalid(): an out-of-window FIN or RST answering the other
    side's FIN or RST shortens an assured entry's timeout to UNACK, so that dead
    connections do not linger for days."""
    status = entry.status
    if not status & IPS_ASSURED or status & IPS_FIXED_TIMEOUT:
        return
    if index != RST_SET and index != FIN_SET:
        return
    if conn.last_dir != direction and (conn.last_index == FIN_SET
                                       or conn.last_index == RST_SET):
        expires = entry.expires_at - now
        if expires < 120:
            return
        if expires > unack_timeout:
            ct.refresh(entry, unack_timeout, now)
    else:
        conn.last_index = index
        conn.last_dir = direction
