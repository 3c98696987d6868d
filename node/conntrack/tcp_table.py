"""The TCP tracker's tables, transcribed from Linux 6.18
net/netfilter/nf_conntrack_proto_tcp.c and include/uapi/linux/netfilter/nf_conntrack_tcp.h.

Everything here is data, indexed the way the kernel indexes it:

  TcpState            enum tcp_conntrack (the state values are the kernel's numbers)
  TCP_STATE_NAMES     tcp_conntrack_names[]
  SYN_SET ... NONE_SET  enum tcp_bit_set, the row ("flag index") of the table
  FLAG_INDEX          tcp_valid_flags[] and get_conntrack_index() folded into one lookup
  TCP_CONNTRACKS      tcp_conntracks[2][6][TCP_CONNTRACK_MAX], cell for cell
  TIMEOUT_SYSCTLS     tcp_timeouts[] as the sysctls that set them (tcp_init_net())
  IP_CT_TCP_FLAG_*    the per-direction flag bits, in ctnetlink order

The tracker (tcp.py) looks a packet up here and handles the handful of special
cases in nf_conntrack_tcp_packet()'s switch. The hot path uses the plain ints;
TcpState is for people and tests.
"""

from __future__ import annotations

from enum import IntEnum


class TcpState(IntEnum):
    """enum tcp_conntrack. SYN_SENT2 reuses the obsolete LISTEN slot (9)."""

    NONE = 0
    SYN_SENT = 1
    SYN_RECV = 2
    ESTABLISHED = 3
    FIN_WAIT = 4
    CLOSE_WAIT = 5
    LAST_ACK = 6
    TIME_WAIT = 7
    CLOSE = 8
    SYN_SENT2 = 9
    MAX = 10  # sIV in the table: the packet is invalid
    INVALID = 10  # (an alias of MAX, the name the table's sIV stands for)
    IGNORE = 11  # sIG in the table: accept, but do not change state
    RETRANS = 12  # timeout slot only
    UNACK = 13  # timeout slot only


TCP_STATE_NAMES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
                   "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2")
STATE_BY_NAME = {name: i for i, name in enumerate(TCP_STATE_NAMES)}

# Short names, as the kernel's table spells them.
sNO, sSS, sSR, sES, sFW, sCW, sLA, sTW, sCL, sS2 = range(10)
sIV = TcpState.MAX.value
sIG = TcpState.IGNORE.value
TIMEOUT_RETRANS = TcpState.RETRANS.value
TIMEOUT_UNACK = TcpState.UNACK.value

# enum tcp_bit_set: the table row a packet selects.
SYN_SET, SYNACK_SET, FIN_SET, ACK_SET, RST_SET, NONE_SET = range(6)
INDEX_NAMES = ("SYN", "SYNACK", "FIN", "ACK", "RST", "NONE")

# include/uapi/linux/netfilter/nf_conntrack_tcp.h. The first six live in each
# direction's flags; EXP_CHALLENGE_ACK and SIMULTANEOUS_OPEN in last_flags.
IP_CT_TCP_FLAG_WINDOW_SCALE = 0x01
IP_CT_TCP_FLAG_SACK_PERM = 0x02
IP_CT_TCP_FLAG_CLOSE_INIT = 0x04
IP_CT_TCP_FLAG_BE_LIBERAL = 0x08
IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED = 0x10
IP_CT_TCP_FLAG_MAXACK_SET = 0x20
IP_CT_EXP_CHALLENGE_ACK = 0x40
IP_CT_TCP_SIMULTANEOUS_OPEN = 0x80
TCP_FLAG_NAMES = ("WINDOW_SCALE", "SACK_PERM", "CLOSE_INIT", "BE_LIBERAL",
                  "DATA_UNACKNOWLEDGED", "MAXACK_SET", "EXP_CHALLENGE_ACK", "SIMULTANEOUS_OPEN")

TCP_MAX_WSCALE = 14  # include/net/tcp.h; RFC 7323 2.3
MAXACKWINCONST = 66000  # MAXACKWINDOW(sender) = max(sender->td_maxwin, 66000)


def _names(flags: int) -> tuple[str, ...]:
    return tuple(name for i, name in enumerate(TCP_FLAG_NAMES) if flags & (1 << i))


_FLAG_NAMES = tuple(map(_names, range(256)))  # every u8 value: read per exported event


def flag_names(flags: int) -> list[str]:
    """The names of the IP_CT_TCP_FLAG_* / IP_CT_* bits set in `flags`, lowest first."""
    return list(_FLAG_NAMES[flags] if 0 <= flags < 256 else _names(flags))


def flags_from_names(names: list[str]) -> int:
    bits = 0
    for name in names:
        bits |= 1 << TCP_FLAG_NAMES.index(name)
    return bits


# ---------------------------------------------------------------- flag index
# tcp_error(): PSH, ECE and CWR are ignored (masked off) and the rest must be
# one of the combinations in tcp_valid_flags[]; get_conntrack_index() then
# picks the row: RST, else SYN (SYNACK with ACK), else FIN, else ACK, else NONE.
# FLAG_INDEX[flags & FLAG_MASK] is the row, or -1 for "invalid tcp flag combination".
_FIN, _SYN, _RST, _ACK, _URG = 0x01, 0x02, 0x04, 0x10, 0x20
FLAG_MASK = _FIN | _SYN | _RST | _ACK | _URG  # ~(ECE|CWR|PSH) within the flag byte
VALID_FLAGS = frozenset({
    _SYN, _SYN | _URG, _SYN | _ACK,
    _RST, _RST | _ACK,
    _FIN | _ACK, _FIN | _ACK | _URG,
    _ACK, _ACK | _URG,
})


def _conntrack_index(flags: int) -> int:
    """get_conntrack_index()"""
    if flags & _RST:
        return RST_SET
    if flags & _SYN:
        return SYNACK_SET if flags & _ACK else SYN_SET
    if flags & _FIN:
        return FIN_SET
    if flags & _ACK:
        return ACK_SET
    return NONE_SET


FLAG_INDEX = tuple(_conntrack_index(f) if f in VALID_FLAGS else -1
                   for f in range(FLAG_MASK + 1))


# ---------------------------------------------------------------- transitions
# TCP_CONNTRACKS[dir][index][old_state] -> new state, sIV or sIG.
# Columns:  sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2
TCP_CONNTRACKS: tuple[tuple[tuple[int, ...], ...], ...] = (
    (  # ORIGINAL
        # syn: open (sNO), SYN retransmit (sSS, sS2), reopen after close (sTW, sCL);
        #      a SYN inside a live connection is ignored (sSR..sLA): the peer answers it.
        (sSS, sSS, sIG, sIG, sIG, sIG, sIG, sSS, sSS, sS2),
        # synack: only in a simultaneous open (sS2 -> sSR, late retransmit in sSR);
        #      never from the client otherwise.
        (sIV, sIV, sSR, sIV, sIV, sIV, sIV, sIV, sIV, sSR),
        # fin: close starts (sSR, sES -> sFW), FINs cross (sFW, sCW -> sLA),
        #      retransmits stay; no FIN before the SYN/ACK (sSS, sS2).
        (sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV),
        # ack: pickup (sNO -> sES, tcp_loose), handshake done (sSR -> sES),
        #      FIN acked (sFW -> sCW), last ACK (sLA -> sTW); no ACK before SYN/ACK.
        (sES, sIV, sES, sES, sCW, sCW, sTW, sTW, sCL, sIV),
        # rst: closes from any state (window and sequence checked in the tracker).
        (sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),
        # none: no flags that matter: never valid.
        (sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV),
    ),
    (  # REPLY
        # syn: simultaneous open (sSS, sS2 -> sS2); in TIME_WAIT the server may
        #      reopen with roles switched (sTW -> sSS); otherwise invalid.
        (sIV, sS2, sIV, sIV, sIV, sIV, sIV, sSS, sIV, sS2),
        # synack: the standard open (sSS -> sSR) and simultaneous open (sS2 -> sSR);
        #      later SYN/ACKs are retransmits or answers to ignored SYNs (sIG).
        (sIV, sSR, sIG, sIG, sIG, sIG, sIG, sIG, sIG, sSR),
        # fin: as in the original direction.
        (sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV),
        # ack: before the SYN/ACK it may be a half-open connection or a
        #      challenge ACK (sSS, sS2 -> sIG); in sSR it answers a resent SYN.
        (sIV, sIG, sSR, sES, sCW, sCW, sTW, sTW, sCL, sIG),
        # rst: as in the original direction.
        (sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),
        # none
        (sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV),
    ),
)


# ---------------------------------------------------------------- timeouts
# tcp_timeouts[], as the per-netns sysctls that set them (tcp_init_net()).
# None: no sysctl; SYN_SENT2 is fixed at 2 minutes. NONE uses syn_sent
# (timeouts[0] is the "new connection" slot).
SYN_SENT2_TIMEOUT = 120
TIMEOUT_SYSCTLS: tuple[str | None, ...] = (
    "nf_conntrack_tcp_timeout_syn_sent",  # NONE
    "nf_conntrack_tcp_timeout_syn_sent",
    "nf_conntrack_tcp_timeout_syn_recv",
    "nf_conntrack_tcp_timeout_established",
    "nf_conntrack_tcp_timeout_fin_wait",
    "nf_conntrack_tcp_timeout_close_wait",
    "nf_conntrack_tcp_timeout_last_ack",
    "nf_conntrack_tcp_timeout_time_wait",
    "nf_conntrack_tcp_timeout_close",
    None,  # SYN_SENT2
    None,  # MAX (no timeout)
    None,  # IGNORE (no timeout)
    "nf_conntrack_tcp_timeout_max_retrans",
    "nf_conntrack_tcp_timeout_unacknowledged",
)
