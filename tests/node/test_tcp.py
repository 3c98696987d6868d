"""The TCP tracker (node/conntrack/tcp.py) against Linux 6.18's
nf_conntrack_proto_tcp.c and the kernel observations in
../shared/reference/kernel_conntrack_observed.md. Every test drives the real
Conntrack with ct.commit() (track + help + confirm, as iptables does).
Test names state the kernel rule they check."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest

from node.conntrack import Conntrack, Sysctl
from node.conntrack.entry import (
    IP_CT_ESTABLISHED,
    IP_CT_ESTABLISHED_REPLY,
    IP_CT_NEW,
    IPCT_ASSURED,
    IPCT_PROTOINFO,
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_SEEN_REPLY,
    Entry,
)
from node.conntrack.table import CtResult
from node.conntrack.tcp import (
    PACKED,
    PACKED_FIELDS,
    TcpConn,
    TcpTracker,
    conn_of,
    freeze,
    state_of,
    thaw,
)
from node.conntrack.tcp_table import (
    FLAG_INDEX,
    FLAG_MASK,
    IP_CT_TCP_FLAG_BE_LIBERAL,
    NONE_SET,
    STATE_BY_NAME,
    TCP_CONNTRACKS,
    TCP_STATE_NAMES,
    TcpState,
    flag_names,
    flags_from_names,
)
from node.conntrack.tuple import tuple_of
from node.packet import IPPROTO_TCP, NO_OPTIONS, Packet, Tcp, TcpOptions

A = bytes((198, 18, 1, 2))
B = bytes((198, 19, 1, 2))
A6 = bytes.fromhex("20010db8000100000000000000000002")
B6 = bytes.fromhex("20010db8000200000000000000000002")
CPORT, SPORT = 40000, 80
FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40,
             "C": 0x80}
WS7 = TcpOptions(mss=1460, wscale=7, sackok=True)
TRACKER = TcpTracker()


def seg(src: bytes, dst: bytes, sport: int, dport: int, flags: str, seq: int = 0,
        ack: int = 0, win: int = 65535, payload: bytes = b"",
        options: TcpOptions = NO_OPTIONS, raw_options: bytes = b"",
        csum_ok: bool = True) -> Packet:
    bits = 0
    for ch in flags:
        bits |= FLAG_BITS[ch]
    l4 = Tcp(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, bits, win, 0, options,
             raw_options)
    hdr = (20 if len(src) == 4 else 40) + 20 + len(raw_options)
    return Packet(4 if len(src) == 4 else 6, src, dst, IPPROTO_TCP, l4, payload,
                  l4_csum_ok=csum_ok, length=hdr + len(payload))


class Lab:
    """One router's conntrack between client A and server B, on a virtual clock."""

    def __init__(self, **sysctl: int) -> None:
        self.ct = Conntrack(Sysctl().with_values(sysctl))
        self.now = 1000.0
        self.src, self.dst = A, B

    def send(self, pkt: Packet) -> CtResult:
        self.ct.expire(self.now)
        return self.ct.commit(pkt, self.now)

    def a(self, flags: str, seq: int = 0, ack: int = 0, **kw: Any) -> CtResult:
        """A packet from the client A (port CPORT) to the server B."""
        return self.send(seg(self.src, self.dst, CPORT, SPORT, flags, seq, ack, **kw))

    def b(self, flags: str, seq: int = 0, ack: int = 0, **kw: Any) -> CtResult:
        """A packet from the server B back to A."""
        return self.send(seg(self.dst, self.src, SPORT, CPORT, flags, seq, ack, **kw))

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    @property
    def entry(self) -> Entry | None:
        pkt = seg(self.src, self.dst, CPORT, SPORT, "S")
        return self.ct.find(tuple_of(pkt))

    @property
    def state(self) -> str | None:
        e = self.entry
        return TRACKER.state_name(e) if e is not None else None

    @property
    def timeout(self) -> float | None:
        e = self.entry
        return e.expires_at - self.now if e is not None else None

    @property
    def conn(self) -> TcpConn:
        e = self.entry
        assert e is not None
        conn: TcpConn = e.proto
        return conn

    def info(self) -> dict[str, Any]:
        e = self.entry
        assert e is not None
        out = TRACKER.export(e)
        assert out is not None
        return out

    def handshake(self, isn_a: int = 1000, isn_b: int = 5000, win: int = 64240,
                  options: TcpOptions = WS7, ack_win: int = 502) -> None:
        """SYN, SYN/ACK, ACK: ESTABLISHED and ASSURED."""
        assert self.a("S", isn_a, win=win, options=options).ctinfo == IP_CT_NEW
        assert self.b("SA", isn_b, isn_a + 1, win=65160, options=options).ctinfo \
            == IP_CT_ESTABLISHED_REPLY
        assert self.a("A", isn_a + 1, isn_b + 1, win=ack_win).ctinfo == IP_CT_ESTABLISHED
        assert self.state == "ESTABLISHED"


def verdict(res: CtResult) -> str:
    """The oracle's classification: NEW/ORIGINAL, ESTABLISHED/REPLY, INVALID."""
    if res.entry is None:
        return "INVALID"
    state = {IP_CT_NEW: "NEW", IP_CT_ESTABLISHED: "ESTABLISHED",
             IP_CT_ESTABLISHED_REPLY: "ESTABLISHED"}[res.ctinfo]
    return f"{state}/{'REPLY' if res.direction else 'ORIGINAL'}"


# ================================================================ the table

# tcp_conntracks[][][] as printed in Linux 6.18 nf_conntrack_proto_tcp.c
# (and act_ct.md §6.1), typed in independently of tcp_table.py.
KERNEL_TABLE = """
ORIGINAL syn    sSS sSS sIG sIG sIG sIG sIG sSS sSS sS2
ORIGINAL synack sIV sIV sSR sIV sIV sIV sIV sIV sIV sSR
ORIGINAL fin    sIV sIV sFW sFW sLA sLA sLA sTW sCL sIV
ORIGINAL ack    sES sIV sES sES sCW sCW sTW sTW sCL sIV
ORIGINAL rst    sIV sCL sCL sCL sCL sCL sCL sCL sCL sCL
ORIGINAL none   sIV sIV sIV sIV sIV sIV sIV sIV sIV sIV
REPLY    syn    sIV sS2 sIV sIV sIV sIV sIV sSS sIV sS2
REPLY    synack sIV sSR sIG sIG sIG sIG sIG sIG sIG sSR
REPLY    fin    sIV sIV sFW sFW sLA sLA sLA sTW sCL sIV
REPLY    ack    sIV sIG sSR sES sCW sCW sTW sTW sCL sIG
REPLY    rst    sIV sCL sCL sCL sCL sCL sCL sCL sCL sCL
REPLY    none   sIV sIV sIV sIV sIV sIV sIV sIV sIV sIV
"""
SHORT = {"sNO": 0, "sSS": 1, "sSR": 2, "sES": 3, "sFW": 4, "sCW": 5, "sLA": 6, "sTW": 7,
         "sCL": 8, "sS2": 9, "sIV": 10, "sIG": 11}
ROWS = ("syn", "synack", "fin", "ack", "rst", "none")
CELLS = [(d, ROWS.index(row), old, SHORT[cell])
         for line in KERNEL_TABLE.strip().splitlines()
         for d, row, *cells in [line.split()]
         for old, cell in enumerate(cells)]
PACKET_OF_ROW = {0: "S", 1: "SA", 2: "FA", 3: "A", 4: "RA"}


def test_transition_table_is_the_kernels_cell_for_cell() -> None:
    for d, row, old, expected in CELLS:
        assert TCP_CONNTRACKS[0 if d == "ORIGINAL" else 1][row][old] == expected, (d, row, old)


def test_flag_index_is_tcp_valid_flags_then_get_conntrack_index() -> None:
    valid = {0x02: 0, 0x22: 0, 0x12: 1, 0x04: 4, 0x14: 4, 0x11: 2, 0x31: 2, 0x10: 3, 0x30: 3}
    for flags in range(0x38):
        assert FLAG_INDEX[flags] == valid.get(flags, -1), hex(flags)


def _entry_in(lab: Lab, state: int) -> Entry:
    """A confirmed, replied, assured entry in `state`; both directions liberal,
    so only the state table decides."""
    lab.a("S", 1000)
    entry = lab.entry
    assert entry is not None
    TRACKER.restore(entry, {
        "state": TCP_STATE_NAMES[state],
        "flags_orig": ["BE_LIBERAL"], "flags_reply": ["BE_LIBERAL"],
    })
    entry.proto.last_index = NONE_SET
    entry.status |= IPS_SEEN_REPLY | IPS_ASSURED
    return entry


@pytest.mark.parametrize(("d", "row", "old", "expected"),
                         [c for c in CELLS if c[1] != 5 and c[2] != 0],
                         ids=lambda v: str(v))
def test_each_table_cell_drives_the_state(d: str, row: int, old: int, expected: int) -> None:
    """Every reachable cell, through packet(). With no CLOSE_INIT and no earlier
    RST, a SYN in TIME_WAIT/CLOSE does not reopen: it is ignored (see the reopen
    tests below)."""
    lab = Lab()
    entry = _entry_in(lab, old)
    if expected == SHORT["sSS"] and old in (SHORT["sTW"], SHORT["sCL"]):
        expected = SHORT["sIG"]
    send = lab.a if d == "ORIGINAL" else lab.b
    res = send(PACKET_OF_ROW[row], 1000, 5000)
    if expected == SHORT["sIV"]:
        assert res.entry is None
        assert entry.proto.state == old
    elif expected == SHORT["sIG"]:
        assert res.entry is entry
        assert entry.proto.state == old
    else:
        assert res.entry is entry
        assert entry.proto.state == expected


def test_state_names_and_enum_agree() -> None:
    assert [s.name for s in TcpState][:10] == list(TCP_STATE_NAMES)
    assert STATE_BY_NAME["SYN_SENT2"] == TcpState.SYN_SENT2 == 9


# ================================================================ new connections

def test_syn_creates_entry_in_syn_sent_with_its_options() -> None:
    lab = Lab()
    res = lab.a("S", 1000, win=64240, options=WS7)
    assert verdict(res) == "NEW/ORIGINAL"
    assert lab.state == "SYN_SENT" and lab.timeout == 120
    info = lab.info()
    assert info["wscale_orig"] == 7 and info["wscale_reply"] == 0
    assert info["flags_orig"] == ["WINDOW_SCALE", "SACK_PERM"] and info["flags_reply"] == []


@pytest.mark.parametrize("flags", ["SA", "R", "RA", "FA"])
def test_synack_rst_and_fin_never_create_an_entry(flags: str) -> None:
    lab = Lab()
    assert verdict(lab.a(flags, 1000, 1)) == "INVALID"
    assert len(lab.ct) == 0


def test_three_way_handshake_reaches_established_and_assured() -> None:
    lab = Lab()
    lab.a("S", 1000, options=WS7)
    assert lab.state == "SYN_SENT"
    res = lab.b("SA", 5000, 1001, options=WS7)
    assert verdict(res) == "ESTABLISHED/REPLY"
    assert lab.state == "SYN_RECV" and lab.timeout == 60
    assert lab.info()["wscale_reply"] == 7
    lab.ct.take_events()
    res = lab.a("A", 1001, 5001)
    assert verdict(res) == "ESTABLISHED/ORIGINAL"
    assert lab.state == "ESTABLISHED" and lab.timeout == 432000
    entry = lab.entry
    assert entry is not None and entry.status & IPS_ASSURED
    [ev] = lab.ct.take_events()
    assert ev.type == "UPDATE" and ev.bits == IPCT_PROTOINFO | IPCT_ASSURED


def test_original_direction_stays_new_until_the_first_reply() -> None:
    lab = Lab()
    assert verdict(lab.a("S", 1000)) == "NEW/ORIGINAL"
    assert verdict(lab.a("S", 1000)) == "NEW/ORIGINAL"  # retransmitted SYN
    lab.b("SA", 5000, 1001)
    assert verdict(lab.a("A", 1001, 5001)) == "ESTABLISHED/ORIGINAL"


def test_syn_retransmit_in_syn_sent_does_not_refresh_timeout() -> None:
    lab = Lab()
    lab.a("S", 1000)
    lab.sleep(50)
    lab.a("S", 1000)
    assert lab.timeout == 70


def test_syn_with_higher_isn_reinitialises_the_entry() -> None:
    lab = Lab()
    lab.a("S", 1000)
    lab.a("S", 900000)  # the client restarted with a new ISN
    assert lab.conn.seen[0].td_end == 900001
    assert verdict(lab.b("SA", 5000, 900001)) == "ESTABLISHED/REPLY"
    assert lab.state == "SYN_RECV"
    # A late SYN with a lower ISN in SYN_RECV is ignored.
    assert verdict(lab.a("S", 1000)) == "ESTABLISHED/ORIGINAL"
    assert lab.state == "SYN_RECV"
    assert verdict(lab.a("A", 900001, 5001)) == "ESTABLISHED/ORIGINAL"
    assert lab.state == "ESTABLISHED"


def test_synack_for_the_old_isn_after_reinit_is_ignored_as_overly_delayed() -> None:
    lab = Lab()
    lab.a("S", 1000)
    lab.a("S", 900000)
    # Its ack is far below the new td_end: IV fails, so the packet passes
    # (ESTABLISHED/REPLY) without moving the state.
    assert verdict(lab.b("SA", 5000, 1001)) == "ESTABLISHED/REPLY"
    assert lab.state == "SYN_SENT"


# ---------------------------------------------------------------- loose pickup

def test_loose_pickup_starts_established_and_liberal() -> None:
    lab = Lab()
    res = lab.a("A", 1000, 5000, payload=b"x" * 10)
    assert verdict(res) == "NEW/ORIGINAL"
    assert lab.state == "ESTABLISHED"
    info = lab.info()
    assert info["flags_orig"] == ["SACK_PERM", "BE_LIBERAL"]
    assert info["flags_reply"] == ["SACK_PERM", "BE_LIBERAL"]
    assert lab.timeout == 300  # capped at _unacknowledged until the first reply


def test_loose_pickup_is_assured_only_on_the_packet_after_the_first_reply() -> None:
    lab = Lab()
    lab.a("A", 1000, 5000)
    assert verdict(lab.b("A", 5000, 1000)) == "ESTABLISHED/REPLY"
    entry = lab.entry
    assert entry is not None and not entry.status & IPS_ASSURED
    assert lab.timeout == 300
    assert verdict(lab.a("A", 1000, 5000)) == "ESTABLISHED/ORIGINAL"
    assert entry.status & IPS_ASSURED
    assert lab.timeout == 432000


def test_loose_pickup_accepts_data_far_ahead() -> None:
    lab = Lab()
    lab.a("A", 1000, 5000)
    lab.b("A", 5000, 1000)
    assert verdict(lab.a("PA", 1000 + 500_000_000, 5000, payload=b"x")) \
        == "ESTABLISHED/ORIGINAL"


def test_loose_pickup_from_the_server_makes_it_the_original_direction() -> None:
    lab = Lab()
    assert verdict(lab.b("A", 5000, 1000)) == "NEW/ORIGINAL"
    entry = lab.entry
    assert entry is not None and entry.orig.src == B
    assert verdict(lab.a("A", 1000, 5000)) == "ESTABLISHED/REPLY"


def test_no_pickup_with_tcp_loose_0() -> None:
    lab = Lab(nf_conntrack_tcp_loose=0)
    assert verdict(lab.a("A", 1000, 5000)) == "INVALID"
    assert verdict(lab.b("A", 5000, 1000)) == "INVALID"
    assert len(lab.ct) == 0
    assert verdict(lab.a("S", 1000)) == "NEW/ORIGINAL"  # a SYN still opens


# ================================================================ tcp_error

@pytest.mark.parametrize("flags", ["SF", "SR", "", "F", "FPU", "SRA", "FR", "U", "P"])
def test_invalid_flag_combinations_are_invalid_and_leave_the_entry(flags: str) -> None:
    lab = Lab()
    lab.handshake()
    before = lab.info()
    deadline = lab.entry.expires_at  # type: ignore[union-attr]
    assert verdict(lab.a(flags, 1001, 5001)) == "INVALID"
    assert lab.info() == before
    assert lab.entry.expires_at == deadline  # type: ignore[union-attr]


@pytest.mark.parametrize("flags", ["PA", "EA", "CA", "ECPA", "SEC", "UA", "FUA", "SU"])
def test_psh_ece_cwr_are_ignored_and_urg_combinations_are_valid(flags: str) -> None:
    lab = Lab()
    if "S" in flags:
        assert verdict(lab.a(flags, 1000)) == "NEW/ORIGINAL"
        return
    lab.handshake()
    assert verdict(lab.a(flags, 1001, 5001)) == "ESTABLISHED/ORIGINAL"


def test_bad_checksum_is_invalid() -> None:
    lab = Lab()
    assert verdict(lab.a("S", 1000, csum_ok=False)) == "INVALID"
    assert len(lab.ct) == 0
    lab.handshake()
    assert verdict(lab.a("A", 1001, 5001, csum_ok=False)) == "INVALID"


def test_bad_checksum_passes_with_nf_conntrack_checksum_0() -> None:
    lab = Lab(nf_conntrack_checksum=0)
    assert verdict(lab.a("S", 1000, csum_ok=False)) == "NEW/ORIGINAL"


# ================================================================ RST

def test_rst_answering_the_syn_deletes_the_entry_at_once() -> None:
    lab = Lab()
    lab.a("S", 1000)
    lab.ct.take_events()
    res = lab.b("RA", 0, 1001)
    assert verdict(res) == "ESTABLISHED/REPLY"
    assert len(lab.ct) == 0
    events = lab.ct.take_events()
    assert [e.type for e in events] == ["DESTROY"]  # and no UPDATE after it
    assert verdict(lab.a("S", 1000)) == "NEW/ORIGINAL"


def test_client_rst_before_any_reply_deletes_the_entry() -> None:
    lab = Lab()
    lab.a("S", 1000)
    assert verdict(lab.a("R", 1001)) == "NEW/ORIGINAL"
    assert len(lab.ct) == 0


def test_rst_with_the_exact_sequence_number_moves_to_close() -> None:
    lab = Lab()
    lab.handshake()
    assert verdict(lab.b("R", 5001)) == "ESTABLISHED/REPLY"
    assert lab.state == "CLOSE" and lab.timeout == 10


def test_rst_in_window_at_another_sequence_keeps_the_state_with_close_timeout() -> None:
    lab = Lab()
    lab.handshake()
    assert verdict(lab.b("R", 5001 + 100)) == "ESTABLISHED/REPLY"
    assert lab.state == "ESTABLISHED" and lab.timeout == 10
    # The next packet ends the 10 s. (The RST's sequence number advanced the
    # server's td_end, so an ACK of 5001 leaves "unacknowledged data": 300 s.)
    lab.a("A", 1001, 5001)
    assert lab.timeout == 300


def test_rst_right_after_the_senders_last_segment_closes() -> None:
    lab = Lab()
    lab.handshake()
    lab.b("PA", 5001, 1001, payload=b"x" * 19)
    assert verdict(lab.b("R", 5020)) == "ESTABLISHED/REPLY"
    assert lab.state == "CLOSE"


def test_rst_below_the_last_acknowledged_sequence_is_invalid() -> None:
    lab = Lab()
    lab.handshake()
    lab.b("PA", 5001, 1001, payload=b"x" * 100)
    lab.a("A", 1001, 5101)
    assert verdict(lab.b("R", 5050)) == "INVALID"
    assert lab.state == "ESTABLISHED"


def test_rst_below_maxack_is_accepted_with_ignore_invalid_rst() -> None:
    lab = Lab(nf_conntrack_tcp_ignore_invalid_rst=1)
    lab.handshake()
    lab.b("PA", 5001, 1001, payload=b"x" * 100)
    lab.a("A", 1001, 5101)
    assert verdict(lab.b("R", 5050)) == "ESTABLISHED/REPLY"
    assert lab.state == "ESTABLISHED" and lab.timeout == 10


@pytest.mark.parametrize("ignore", [0, 1])
def test_rst_far_beyond_the_window_is_invalid_even_with_ignore_invalid_rst(ignore: int) -> None:
    lab = Lab(nf_conntrack_tcp_ignore_invalid_rst=ignore)
    lab.handshake()
    assert verdict(lab.b("R", 5001 + 10_000_000)) == "INVALID"
    assert lab.state == "ESTABLISHED"


def test_rst_with_zero_ack_is_treated_as_without_ack() -> None:
    lab = Lab()
    lab.handshake()
    assert verdict(lab.b("RA", 5001, 0)) == "ESTABLISHED/REPLY"
    assert lab.state == "CLOSE"


# ================================================================ reopening

def test_syn_after_the_servers_rst_is_ignored_and_synack_resyncs() -> None:
    lab = Lab()
    lab.handshake()
    lab.b("R", 5001)
    assert lab.state == "CLOSE"
    assert verdict(lab.a("S", 7000, options=WS7)) == "ESTABLISHED/ORIGINAL"
    assert lab.state == "CLOSE" and lab.timeout == 10  # ignored: not refreshed
    assert verdict(lab.b("SA", 9000, 7001, options=WS7)) == "ESTABLISHED/REPLY"
    assert lab.state == "SYN_RECV"
    info = lab.info()
    assert info["td_orig"]["td_end"] == 7001 and info["wscale_orig"] == 7
    assert verdict(lab.a("A", 7001, 9001)) == "ESTABLISHED/ORIGINAL"
    assert lab.state == "ESTABLISHED"


def test_syn_after_a_client_rst_reopens_the_entry() -> None:
    lab = Lab()
    lab.handshake()
    lab.a("R", 1001)
    assert lab.state == "CLOSE"
    old = lab.entry
    assert verdict(lab.a("S", 7000)) == "NEW/ORIGINAL"
    assert lab.entry is not old and lab.state == "SYN_SENT"


def _to_time_wait(lab: Lab) -> None:
    lab.handshake()
    lab.a("FA", 1001, 5001)
    lab.b("FA", 5001, 1002)
    lab.a("A", 1002, 5002)
    assert lab.state == "TIME_WAIT"


def test_syn_in_time_wait_reopens_entry() -> None:
    lab = Lab()
    _to_time_wait(lab)
    old = lab.entry
    assert verdict(lab.a("S", 90000)) == "NEW/ORIGINAL"
    assert lab.entry is not old and lab.state == "SYN_SENT"
    destroyed = [e for e in lab.ct.take_events() if e.type == "DESTROY"]
    assert len(destroyed) == 1


def test_syn_in_time_wait_from_the_server_reopens_with_roles_switched() -> None:
    lab = Lab()
    _to_time_wait(lab)
    assert verdict(lab.b("S", 90000)) == "NEW/ORIGINAL"
    entry = lab.entry
    assert entry is not None and entry.orig.src == B
    assert lab.state == "SYN_SENT"


def test_syn_on_an_established_entry_passes_unchanged_and_synack_resyncs() -> None:
    lab = Lab()
    lab.handshake()
    lab.sleep(10)
    assert verdict(lab.a("S", 70000)) == "ESTABLISHED/ORIGINAL"
    assert lab.state == "ESTABLISHED" and lab.timeout == 432000 - 10
    assert verdict(lab.b("SA", 80000, 70001)) == "ESTABLISHED/REPLY"
    assert lab.state == "SYN_RECV"
    assert verdict(lab.a("A", 70001, 80001)) == "ESTABLISHED/ORIGINAL"
    assert lab.state == "ESTABLISHED"


def test_synack_not_acking_the_ignored_syn_stays_ignored() -> None:
    lab = Lab()
    lab.handshake()
    lab.a("S", 70000)
    assert verdict(lab.b("SA", 80000, 12345)) == "ESTABLISHED/REPLY"
    assert lab.state == "ESTABLISHED"


# ================================================================ state sequences

def test_simultaneous_open_goes_through_syn_sent2() -> None:
    lab = Lab()
    states = []
    lab.a("S", 1000, options=WS7)
    states.append(lab.state)
    assert verdict(lab.b("S", 5000, options=WS7)) == "ESTABLISHED/REPLY"
    states.append(lab.state)
    assert "SIMULTANEOUS_OPEN" in flag_names(lab.conn.last_flags)
    lab.a("SA", 1000, 5001, options=WS7)
    states.append(lab.state)
    lab.b("SA", 5000, 1001, options=WS7)
    states.append(lab.state)
    lab.b("A", 5001, 1001)  # the reply-direction ACK completes a simultaneous open
    states.append(lab.state)
    assert states == ["SYN_SENT", "SYN_SENT2", "SYN_RECV", "SYN_RECV", "ESTABLISHED"]
    entry = lab.entry
    assert entry is not None and entry.status & IPS_ASSURED


def test_normal_close_states_and_timeouts() -> None:
    lab = Lab()
    lab.handshake()
    lab.a("FA", 1001, 5001)
    assert (lab.state, lab.timeout) == ("FIN_WAIT", 120)
    assert "CLOSE_INIT" in lab.info()["flags_orig"]
    lab.b("A", 5001, 1002)
    assert (lab.state, lab.timeout) == ("CLOSE_WAIT", 60)
    lab.b("FA", 5001, 1002)
    assert (lab.state, lab.timeout) == ("LAST_ACK", 30)
    lab.a("A", 1002, 5002)
    assert (lab.state, lab.timeout) == ("TIME_WAIT", 120)


def test_crossing_fins_go_fin_wait_last_ack_time_wait() -> None:
    lab = Lab()
    lab.handshake()
    lab.a("FA", 1001, 5001)
    assert lab.state == "FIN_WAIT"
    lab.b("FA", 5001, 1001)  # crosses: does not ack the client's FIN
    assert lab.state == "LAST_ACK"
    lab.a("A", 1002, 5002)
    assert lab.state == "TIME_WAIT"


def test_every_state_change_caches_protoinfo() -> None:
    lab = Lab()
    lab.handshake()
    lab.ct.take_events()
    lab.a("PA", 1001, 5001, payload=b"abc")
    assert lab.ct.take_events() == []  # ESTABLISHED -> ESTABLISHED: no event
    lab.a("FA", 1004, 5001)
    [ev] = lab.ct.take_events()
    assert ev.type == "UPDATE" and ev.bits == IPCT_PROTOINFO
    assert ev.entry.proto_state == "FIN_WAIT"


def test_an_event_keeps_the_protocol_state_of_its_packet() -> None:
    """A view captures the TCP state when it is made and expands it when read:
    what later packets (or a freeze() by the flow table) do to the entry does
    not reach an event already taken."""
    lab = Lab()
    lab.a("S", 1000, options=WS7)
    [syn] = lab.ct.take_events()
    at_syn = lab.info()
    lab.b("SA", 5000, 1001, options=WS7)
    lab.a("A", 1001, 5001)
    entry = lab.entry
    assert entry is not None
    TRACKER.set_be_liberal(entry)
    freeze(entry)
    assert syn.entry.protoinfo == at_syn and at_syn["state"] == "SYN_SENT"
    assert syn.entry.protoinfo is not syn.entry.protoinfo  # a new dict per read
    now = lab.ct.view(entry, lab.now)
    assert now.protoinfo == lab.info() and now.protoinfo["state"] == "ESTABLISHED"
    assert "BE_LIBERAL" in now.protoinfo["flags_orig"]  # (a frozen state is liberal)
    assert "BE_LIBERAL" not in syn.entry.protoinfo["flags_orig"]
    assert now != syn.entry and now == lab.ct.view(entry, lab.now)


# ================================================================ window scaling

def test_window_scale_is_used_only_if_both_syns_carry_it() -> None:
    lab = Lab()
    lab.a("S", 1000, options=WS7)
    lab.b("SA", 5000, 1001, options=TcpOptions(mss=1460, sackok=True))
    info = lab.info()
    assert info["wscale_orig"] == 0 and info["wscale_reply"] == 0
    assert info["flags_orig"] == ["WINDOW_SCALE", "SACK_PERM"]
    assert info["flags_reply"] == ["SACK_PERM", "MAXACK_SET"]


@pytest.mark.parametrize(("raw", "scale"), [(15, 14), (16, 14), (14, 14), (0, 0)])
def test_window_scale_above_14_is_stored_as_14(raw: int, scale: int) -> None:
    lab = Lab()
    opt = bytes((1, 3, 3, raw))  # NOP, WS
    lab.a("S", 1000, raw_options=opt)
    lab.b("SA", 5000, 1001, raw_options=opt)
    info = lab.info()
    assert (info["wscale_orig"], info["wscale_reply"]) == (scale, scale)


@pytest.mark.parametrize(("raw", "flags", "scale"), [
    (bytes((3, 3, 7, 0)), ["WINDOW_SCALE"], 7),  # WS then EOL
    (bytes((0, 3, 3, 7)), [], 0),  # EOL first: nothing after it counts
    (bytes((4, 2, 3, 3, 5, 1, 1, 1)), ["WINDOW_SCALE", "SACK_PERM"], 5),
    (bytes((3, 4, 7, 0)), [], 0),  # wrong size for WS: skipped
    (bytes((2, 1, 3, 3, 7, 0, 0, 0)), [], 0),  # "silly" size 1: stop
    (bytes((1, 1, 3, 9, 7, 0, 0, 0)), [], 0),  # runs past the header: stop
    (bytes((4, 3, 0, 3, 3, 6, 0, 0)), ["WINDOW_SCALE"], 6),  # SACK_PERM of size 3 skipped
])
def test_tcp_options_are_parsed_as_the_kernel_does(raw: bytes, flags: list[str],
                                                   scale: int) -> None:
    lab = Lab()
    lab.a("S", 1000, raw_options=raw)
    info = lab.info()
    assert info["flags_orig"] == flags and info["wscale_orig"] == scale


def test_scaled_window_allows_data_beyond_the_unscaled_window() -> None:
    lab = Lab()
    lab.handshake(ack_win=502)  # 502 << 7 = 64256 bytes
    lab.b("A", 5001, 1001, win=502)
    assert verdict(lab.a("PA", 1001 + 60000, 5001, payload=b"x" * 100)) \
        == "ESTABLISHED/ORIGINAL"


# ================================================================ window checks

def _established(lab: Lab, win_a: int = 65535, win_b: int = 65535) -> None:
    """An unscaled handshake: A's ISN 1000, B's 5000."""
    lab.a("S", 1000, win=win_a)
    lab.b("SA", 5000, 1001, win=win_b)
    lab.a("A", 1001, 5001, win=win_a)


def test_old_data_far_behind_the_window_is_ignored_not_invalid() -> None:
    lab = Lab()
    _established(lab)
    lab.sleep(5)
    before = lab.info()
    res = lab.a("PA", 1001 - 2_000_000, 5001, payload=b"x" * 100)
    assert verdict(res) == "ESTABLISHED/ORIGINAL"
    assert lab.info() == before and lab.timeout == 432000 - 5  # nothing changed


def test_data_far_ahead_of_the_window_is_invalid() -> None:
    lab = Lab()
    _established(lab)
    assert verdict(lab.a("PA", 1001 + 2_000_000, 5001, payload=b"x" * 100)) == "INVALID"


@pytest.mark.parametrize("over", [1, 11])
def test_a_small_overshoot_past_the_window_is_tolerated(over: int) -> None:
    lab = Lab()
    _established(lab, win_b=1000)
    # B's window lets A send up to 2001; this segment ends `over` bytes later.
    res = lab.a("PA", 1001, 5001, payload=b"x" * (1000 + over))
    assert verdict(res) == "ESTABLISHED/ORIGINAL"
    res = lab.a("PA", 2001 + over, 5001, payload=b"x" * 10)  # starts past td_maxend
    assert verdict(res) == "ESTABLISHED/ORIGINAL"
    assert lab.conn.seen[0].td_end == 2011 + over  # remembered for the peer's ACK


def test_an_overshoot_beyond_one_max_window_is_invalid() -> None:
    lab = Lab()
    _established(lab, win_b=1000)
    assert verdict(lab.a("PA", 1001 + 5000, 5001, payload=b"x" * 10)) == "INVALID"


def test_ack_of_unseen_data_is_invalid() -> None:
    lab = Lab()
    _established(lab)
    assert verdict(lab.b("A", 5001, 1001 + 100)) == "INVALID"


def test_ack_of_unseen_data_passes_with_be_liberal() -> None:
    lab = Lab(nf_conntrack_tcp_be_liberal=1)
    _established(lab)
    assert verdict(lab.b("A", 5001, 1001 + 100)) == "ESTABLISHED/REPLY"


def test_a_sack_block_beyond_the_data_sent_is_invalid() -> None:
    lab = Lab()
    lab.handshake()  # SACK permitted both ways
    lab.a("PA", 1001, 5001, payload=b"x" * 100)
    sack = TcpOptions(sack=((1051, 1101),))
    assert verdict(lab.b("A", 5001, 1001, options=sack)) == "ESTABLISHED/REPLY"
    bad = TcpOptions(sack=((1051, 1201),))
    assert verdict(lab.b("A", 5001, 1001, options=bad)) == "INVALID"
    raw = bytes((1, 1, 5, 10)) + (1051).to_bytes(4, "big") + (1201).to_bytes(4, "big")
    assert verdict(lab.b("A", 5001, 1001, raw_options=raw)) == "INVALID"


def test_sack_is_not_looked_at_without_sack_perm() -> None:
    lab = Lab()
    _established(lab)  # no SACK_PERM
    lab.a("PA", 1001, 5001, payload=b"x" * 100)
    bad = TcpOptions(sack=((1051, 1201),))
    assert verdict(lab.b("A", 5001, 1001, options=bad)) == "ESTABLISHED/REPLY"


def test_timestamps_are_not_checked() -> None:
    lab = Lab()
    lab.handshake()
    lab.a("PA", 1001, 5001, payload=b"a", options=TcpOptions(ts=(1000, 1)))
    res = lab.a("PA", 1002, 5001, payload=b"b", options=TcpOptions(ts=(10, 1)))
    assert verdict(res) == "ESTABLISHED/ORIGINAL"


def test_sequence_numbers_wrap_around_2_to_the_32() -> None:
    lab = Lab()
    isn = 0xFFFFFF00
    lab.handshake(isn_a=isn, isn_b=0xFFFFFFF0)
    for i in range(4):
        res = lab.a("PA", isn + 1 + 100 * i, 0xFFFFFFF1, payload=b"x" * 100)
        assert verdict(res) == "ESTABLISHED/ORIGINAL"
    assert lab.conn.seen[0].td_end == (isn + 401) & 0xFFFFFFFF == 0x91
    assert verdict(lab.b("A", 0xFFFFFFF1, 0x91)) == "ESTABLISHED/REPLY"
    assert lab.timeout == 432000


# ================================================================ timeouts

def test_unacknowledged_data_sets_the_unacknowledged_timeout() -> None:
    lab = Lab()
    lab.handshake()
    lab.a("PA", 1001, 5001, payload=b"x" * 100)
    assert lab.timeout == 300
    assert "DATA_UNACKNOWLEDGED" in lab.info()["flags_orig"]
    lab.b("A", 5001, 1101)  # all acknowledged
    assert lab.timeout == 432000
    assert "DATA_UNACKNOWLEDGED" not in lab.info()["flags_orig"]


def test_third_identical_retransmission_sets_max_retrans_timeout() -> None:
    lab = Lab(nf_conntrack_tcp_timeout_unacknowledged=400)
    lab.handshake()
    timeouts = []
    for _ in range(4):
        lab.a("PA", 1001, 5001, payload=b"x" * 100)
        timeouts.append(lab.timeout)
    assert timeouts == [400, 400, 400, 300]
    assert lab.conn.retrans == 3


def test_zero_window_gives_the_max_retrans_timeout() -> None:
    lab = Lab()
    lab.handshake()
    lab.b("A", 5001, 1001, win=0)
    assert lab.timeout == 300


def test_custom_state_timeouts_come_from_the_sysctls() -> None:
    lab = Lab(nf_conntrack_tcp_timeout_syn_sent=7, nf_conntrack_tcp_timeout_syn_recv=8,
              nf_conntrack_tcp_timeout_established=9000)
    lab.a("S", 1000)
    assert lab.timeout == 7
    lab.b("SA", 5000, 1001)
    assert lab.timeout == 8
    lab.a("A", 1001, 5001)
    assert lab.timeout == 9000


def test_timeout_overrides_apply_only_when_shorter_than_the_state_timeout() -> None:
    lab = Lab()
    lab.handshake()
    lab.a("FA", 1001, 5001)
    lab.b("A", 5001, 1002)
    assert lab.state == "CLOSE_WAIT"
    lab.b("PA", 5001, 1002, payload=b"x")  # unacknowledged data, but 60 < 300
    assert lab.timeout == 60


# ================================================================ RFC 5961, invalid FIN/RST

def _to_last_ack(lab: Lab) -> None:
    lab.handshake()
    lab.a("FA", 1001, 5001)
    lab.b("A", 5001, 1002)
    lab.b("FA", 5001, 1002)
    assert lab.state == "LAST_ACK"


def test_challenge_ack_in_last_ack_does_not_count_as_the_last_ack() -> None:
    lab = Lab()
    _to_last_ack(lab)
    assert verdict(lab.a("S", 90000)) == "ESTABLISHED/ORIGINAL"  # ignored SYN
    assert "EXP_CHALLENGE_ACK" in flag_names(lab.conn.last_flags)
    assert verdict(lab.b("A", 5002, 1002)) == "ESTABLISHED/REPLY"  # the challenge ACK
    assert lab.state == "LAST_ACK"
    assert "EXP_CHALLENGE_ACK" not in flag_names(lab.conn.last_flags)
    lab.a("A", 1002, 5002)  # the real last ACK
    assert lab.state == "TIME_WAIT"


def test_rst_answering_a_challenge_ack_to_a_syn_closes_without_window_check() -> None:
    lab = Lab()
    lab.a("S", 1000)
    assert verdict(lab.b("A", 777, 12345)) == "ESTABLISHED/REPLY"  # challenge ACK: ignored
    assert lab.state == "SYN_SENT" and lab.conn.last_ack == 12345
    assert verdict(lab.a("R", 12345)) == "ESTABLISHED/ORIGINAL"
    assert lab.state == "CLOSE"


def test_out_of_window_rst_answering_a_fin_lowers_an_assured_timeout() -> None:
    lab = Lab()
    _established(lab)
    assert lab.timeout == 432000
    assert verdict(lab.a("FA", 1001 + 5_000_000, 5001)) == "INVALID"  # noted as last FIN
    assert lab.timeout == 432000
    assert verdict(lab.b("R", 5001 + 5_000_000)) == "INVALID"
    assert lab.timeout == 300 and lab.state == "ESTABLISHED"


def test_invalid_fin_does_not_touch_an_unassured_entry() -> None:
    lab = Lab()
    lab.a("A", 1000, 5000)  # pickup, not assured
    entry = lab.entry
    assert entry is not None
    entry.proto.seen[0].flags &= ~IP_CT_TCP_FLAG_BE_LIBERAL
    entry.proto.seen[1].flags &= ~IP_CT_TCP_FLAG_BE_LIBERAL
    assert verdict(lab.a("FA", 1000 + 5_000_000, 5000)) == "INVALID"
    assert lab.conn.last_index == 3  # only the pickup ACK was noted


# ================================================================ IPv6

def test_ipv6_handshake_and_close() -> None:
    lab = Lab()
    lab.src, lab.dst = A6, B6
    lab.handshake()
    assert lab.timeout == 432000
    lab.a("R", 1001)
    assert lab.state == "CLOSE" and lab.timeout == 10


# ================================================================ replication

def _standby_copy(lab: Lab) -> tuple[Conntrack, Entry]:
    """What a standby builds from a replicated entry: same tuples, status,
    timeout, and the TCP state through export()/restore()."""
    src = lab.entry
    assert src is not None
    data = TRACKER.export(src)
    assert data is not None
    ct2 = Conntrack(lab.ct.sysctl)
    copy = Entry(src.orig, src.reply, src.zone, lab.now, 0)
    copy.status = src.status & ~IPS_CONFIRMED
    copy.expires_at = src.expires_at
    copy.timeout = src.timeout
    TRACKER.restore(copy, data)
    assert ct2.insert_synced(copy, lab.now)
    return ct2, copy


def test_export_restore_round_trips_every_field() -> None:
    lab = Lab()
    lab.handshake()
    lab.a("PA", 1001, 5001, payload=b"x" * 100)
    lab.a("PA", 1001, 5001, payload=b"x" * 100)
    src = lab.entry
    assert src is not None
    _, copy = _standby_copy(lab)
    assert TRACKER.export(copy) == TRACKER.export(src)
    assert TRACKER.export(copy)["retrans"] == 1  # type: ignore[index]


def test_a_standby_continues_the_connection_exactly() -> None:
    lab = Lab()
    lab.handshake()
    lab.a("PA", 1001, 5001, payload=b"x" * 100)
    ct2, _ = _standby_copy(lab)
    standby = Lab()
    standby.ct, standby.now = ct2, lab.now
    steps: list[tuple[str, str, int, int, int]] = [
        ("b", "A", 5001, 1101, 0), ("a", "PA", 1101, 5001, 50),
        ("a", "PA", 1101 + 5_000_000, 5001, 10), ("b", "A", 5001, 1151, 0),
        ("a", "FA", 1151, 5001, 0), ("b", "FA", 5001, 1152, 0), ("a", "A", 1152, 5002, 0),
    ]
    for side, flags, seq, ack, n in steps:
        r1 = getattr(lab, side)(flags, seq, ack, payload=b"y" * n)
        r2 = getattr(standby, side)(flags, seq, ack, payload=b"y" * n)
        assert verdict(r1) == verdict(r2)
        assert lab.info() == standby.info()
        assert lab.timeout == standby.timeout
    assert standby.state == "TIME_WAIT"


def test_restore_from_ctnetlink_fields_only_relearns_the_windows() -> None:
    """conntrackd replicates state, wscale and flags only (nlattr_to_tcp()): the
    windows are unknown and learnt from the next packets, as the kernel does."""
    lab = Lab()
    lab.handshake()
    src = lab.entry
    assert src is not None
    full = TRACKER.export(src)
    assert full is not None
    subset = {k: full[k] for k in ("state", "wscale_orig", "wscale_reply", "flags_orig",
                                   "flags_reply")}
    copy = Entry(src.orig, src.reply, 0, lab.now, 0)
    copy.status = src.status & ~IPS_CONFIRMED
    copy.expires_at = src.expires_at
    TRACKER.restore(copy, subset)
    assert copy.proto.state == TcpState.ESTABLISHED
    assert copy.proto.seen[0].td_scale == 7 and copy.proto.seen[0].td_maxwin == 0
    ct2 = Conntrack()
    assert ct2.insert_synced(copy, lab.now)
    standby = Lab()
    standby.ct, standby.now = ct2, lab.now
    assert verdict(standby.a("PA", 1001, 5001, payload=b"x" * 10)) == "ESTABLISHED/ORIGINAL"
    assert verdict(standby.b("A", 5001, 1011)) == "ESTABLISHED/REPLY"
    assert standby.state == "ESTABLISHED" and standby.timeout == 432000


def test_restore_rejects_an_unknown_state() -> None:
    lab = Lab()
    lab.a("S", 1000)
    entry = lab.entry
    assert entry is not None
    with pytest.raises(KeyError):
        TRACKER.restore(entry, {"state": "LISTEN"})


# ================================================================ flow table hooks

def test_set_be_liberal_stops_window_checks_both_ways() -> None:
    lab = Lab()
    _established(lab)
    entry = lab.entry
    assert entry is not None
    TRACKER.set_be_liberal(entry)
    assert verdict(lab.a("PA", 1001 + 5_000_000, 5001, payload=b"x")) \
        == "ESTABLISHED/ORIGINAL"
    assert verdict(lab.b("A", 5001, 1001 + 9_000_000)) == "ESTABLISHED/REPLY"


def test_set_closing_forces_close_with_its_timeout() -> None:
    lab = Lab()
    lab.handshake()
    entry = lab.entry
    assert entry is not None
    lab.ct.take_events()
    TRACKER.set_closing(lab.ct, entry, lab.now)
    assert lab.state == "CLOSE" and lab.timeout == 10
    lab.ct.deliver(entry, lab.now)
    [ev] = lab.ct.take_events()
    assert ev.bits == IPCT_PROTOINFO


# ================================================================ overshoot, as recorded

def test_data_one_byte_past_the_edge_is_tolerated_but_ignored() -> None:
    lab = Lab()
    _established(lab)
    lab.sleep(3)
    res = lab.a("PA", 1001 + 65535 + 1, 5001, payload=b"x" * 10)
    assert verdict(res) == "ESTABLISHED/ORIGINAL"
    assert lab.timeout == 432000 - 3  # ignored: no refresh to _unacknowledged
    assert lab.conn.seen[0].td_end == 66547
    assert "DATA_UNACKNOWLEDGED" in lab.info()["flags_orig"]


def test_data_300000_past_an_unscaled_window_is_invalid() -> None:
    lab = Lab()
    _established(lab)
    assert verdict(lab.a("PA", 301001, 5001, payload=b"x" * 100)) == "INVALID"


def test_scaled_overshoot_of_70000_is_tolerated_after_a_scaled_window_update() -> None:
    lab = Lab()
    lab.handshake(win=65535, ack_win=65535)
    lab.b("A", 5001, 1001, win=1000)  # 1000 << 7 = 128000
    assert verdict(lab.a("PA", 199001, 5001, payload=b"x" * 10)) == "ESTABLISHED/ORIGINAL"


def test_scaled_overshoot_of_70000_is_invalid_while_only_the_synack_window_is_known() -> None:
    lab = Lab()
    lab.handshake(win=65535, ack_win=65535)  # the SYN/ACK's window is never scaled
    assert verdict(lab.a("PA", 136536, 5001, payload=b"x" * 10)) == "INVALID"


# ================================================================ the kernel oracle

ORACLE = Path(__file__).parents[1] / "fixtures" / "oracle" / "results"
TCP_FIXTURES = ("tcp_states.json", "tcp_window.json", "tcp_sysctl.json", "timeouts.json")


def _replay_against_kernel(case: dict[str, Any]) -> list[str]:
    from node.conntrack.entry import CTINFO_STATE
    from node.packet import parse

    settings = case.get("settings", {})
    ct = Conntrack(Sysctl().with_values(settings.get("sysctl", {})))
    now, problems = 1000.0, []
    for i, step in enumerate(case["packets"]):
        if "ip_hex" not in step:
            now += step["sleep"]
            continue
        pkt = parse(bytes.fromhex(step["ip_hex"]))
        ct.expire(now)
        res = ct.commit(pkt, now)
        kernel = step["kernel"]
        ours: dict[str, Any] = {"ctstate": "INVALID", "ctdir": None}
        if res.entry is not None:
            ours = {"ctstate": CTINFO_STATE[res.ctinfo],
                    "ctdir": "REPLY" if res.direction else "ORIGINAL"}
        entry = ct.find(tuple_of(pkt))
        view = ct.view(entry, now) if entry is not None else None
        if view is not None and pkt.proto == IPPROTO_TCP:
            info = view.protoinfo or {}
            ours.update(proto_state=view.proto_state, status=sorted(view.status_list()),
                        flags=view.flags, timeout=int(view.timeout - 1e-3),
                        tcp={k: info[k] for k in ("wscale_orig", "wscale_reply",
                                                  "flags_orig", "flags_reply")})
        for key, ours_value in ours.items():
            want = kernel[key]
            if key == "status":
                want = sorted(want)
            if key == "timeout" and want is not None and abs(want - ours_value) <= 2:
                continue
            if want != ours_value:
                problems.append(f"#{i} {step.get('note', '')}: {key} kernel={want!r} "
                                f"ours={ours_value!r}")
    return problems


@pytest.mark.parametrize("name", TCP_FIXTURES)
def test_matches_the_kernel_oracle_on_every_recorded_packet(name: str) -> None:
    """Differential check against Linux 6.18: verdict, direction, TCP state,
    status, flags, window scale and TCP flags, timeout (±2 s)."""
    path = ORACLE / name
    if not path.exists():
        pytest.skip(f"no oracle results {name}")
    problems = {case["name"]: p for case in json.loads(path.read_text())["cases"]
                if (p := _replay_against_kernel(case))}
    assert problems == {}


# ================================================================ robustness

def test_random_segments_never_break_the_u32_invariants() -> None:
    """Seeded noise around a real connection: the tracker never raises, every
    stored sequence number stays a u32, and the state is always a real state."""
    import random

    rnd = random.Random(6_18)
    for _ in range(30):
        lab = Lab(nf_conntrack_tcp_be_liberal=rnd.choice((0, 1)))
        isn_a, isn_b = rnd.getrandbits(32), rnd.getrandbits(32)
        lab.handshake(isn_a=isn_a, isn_b=isn_b)
        for _ in range(60):
            side = rnd.choice((lab.a, lab.b))
            flags = rnd.choice(("A", "PA", "FA", "R", "RA", "S", "SA", "A", "PA"))
            base_seq, base_ack = (isn_a, isn_b) if side == lab.a else (isn_b, isn_a)
            seq = base_seq + rnd.choice((1, 2, 100, -100, 70000, 1 << 31)) + rnd.randrange(3)
            ack = base_ack + rnd.choice((0, 1, 2, 100, 1 << 31))
            opts = rnd.choice((NO_OPTIONS, WS7, TcpOptions(sack=((seq, seq + 10),))))
            side(flags, seq, ack, win=rnd.choice((0, 1, 502, 65535)),
                 payload=b"x" * rnd.choice((0, 1, 1400)), options=opts)
            lab.sleep(rnd.choice((0, 1, 30)))
            entry = lab.entry
            if entry is None:
                break
            conn = entry.proto
            assert 0 < conn.state < TcpState.MAX
            for peer in conn.seen:
                for value in (peer.td_end, peer.td_maxend, peer.td_maxwin, peer.td_maxack):
                    assert 0 <= value <= 0xFFFFFFFF
            assert 0 <= conn.last_end <= 0xFFFFFFFF and 0 <= conn.last_seq <= 0xFFFFFFFF


def test_closing_states_may_be_early_dropped() -> None:
    lab = Lab()
    lab.handshake()
    entry = lab.entry
    assert entry is not None
    assert not TRACKER.can_early_drop(entry)
    lab.a("FA", 1001, 5001)
    assert TRACKER.can_early_drop(entry)


def test_rst_in_a_closing_state_skips_the_sequence_checks() -> None:
    lab = Lab()
    _to_time_wait(lab)
    # Far outside any window: in TIME_WAIT the tuple may be reused already.
    assert verdict(lab.b("R", 5002 + 50_000_000)) == "ESTABLISHED/REPLY"
    assert lab.state == "CLOSE" and lab.timeout == 10


def test_keepalive_and_its_ack_are_accepted() -> None:
    lab = Lab()
    lab.handshake()
    assert verdict(lab.a("A", 1000, 5001)) == "ESTABLISHED/ORIGINAL"  # seq = snd.nxt - 1
    assert verdict(lab.b("A", 5001, 1001)) == "ESTABLISHED/REPLY"
    assert lab.state == "ESTABLISHED"


def test_fin_far_behind_the_window_is_ignored_and_keeps_the_state() -> None:
    lab = Lab()
    _established(lab)
    assert verdict(lab.a("FA", 1001 - 2_000_000, 5001)) == "ESTABLISHED/ORIGINAL"
    assert lab.state == "ESTABLISHED"


def test_be_liberal_lets_an_old_fin_change_the_state() -> None:
    lab = Lab(nf_conntrack_tcp_be_liberal=1)
    _established(lab)
    assert verdict(lab.a("FA", 1001 - 2_000_000, 5001)) == "ESTABLISHED/ORIGINAL"
    assert lab.state == "FIN_WAIT"


def test_simultaneous_open_syn_does_not_refresh_the_timer() -> None:
    """The reply-direction SYN is a SYN seen in SYN_SENT before SEEN_REPLY: like
    a retransmit, it does not renew the timeout (SYN_SENT2's own is not used)."""
    lab = Lab()
    lab.a("S", 1000)
    lab.sleep(20)
    lab.b("S", 5000)
    assert lab.state == "SYN_SENT2" and lab.timeout == 100


# ================================================================ the fast path
_CONN_SLOTS = TcpConn.__slots__
_ENTRY_FIELDS = ("status", "events", "timeout", "expires_at", "heap_at")


def _random_ack(rng: random.Random, conn: TcpConn, direction: int) -> Packet:
    """An ACK (maybe with PSH, data, SACK or timestamps) around the windows of
    `conn`, from A (direction 0) or B (1): in window, just out, or far out."""
    s_end = conn.td_end1 if direction else conn.td_end0
    r_end = conn.td_end0 if direction else conn.td_end1
    near = rng.choice([0, 0, 0, 1, -1, 64, -64, 70000, -70000, 1 << 31, 1 << 20])
    seq = (s_end + near - rng.choice([0, 0, 64, 1460])) & 0xFFFFFFFF
    ack = (r_end + rng.choice([0, 0, 0, -1, 1, -64, 64, -70000, 1 << 31])) & 0xFFFFFFFF
    raw = rng.choice([b"", b"", b"\x01\x01\x08\x0a" + bytes(8),
                      b"\x01\x01\x05\x0a" + ((ack + 100) & 0xFFFFFFFF).to_bytes(4, "big")
                      + ((ack + 200) & 0xFFFFFFFF).to_bytes(4, "big")])
    src, dst, sport, dport = (B, A, SPORT, CPORT) if direction else (A, B, CPORT, SPORT)
    return seg(src, dst, sport, dport, rng.choice(["A", "A", "PA", "EA"]), seq, ack,
               win=rng.choice([0, 1, 502, 65535]), payload=b"x" * rng.choice([0, 0, 1, 64]),
               raw_options=raw)


@pytest.mark.parametrize("seed", range(12))
def test_the_established_fast_path_does_what_the_general_path_does(seed: int) -> None:
    """packet() answers ACKs on ESTABLISHED connections itself (tcp_in_window()'s
    established path written out): on random connection states and segments
    (in and out of window, SACK, zero windows, retransmissions, liberal and
    max_retrans sysctls) it must leave the verdict, the connection and the entry
    exactly as the general path (general(), which runs tcp_in_window()) does."""
    rng = random.Random(seed)
    lab = Lab(nf_conntrack_tcp_be_liberal=int(seed % 3 == 0), nf_conntrack_tcp_max_retrans=2)
    lab.handshake(isn_a=rng.randrange(1 << 32), isn_b=rng.randrange(1 << 32),
                  options=rng.choice([WS7, NO_OPTIONS]))
    fast = general = 0
    for _ in range(300):
        entry = lab.entry
        assert entry is not None
        conn: TcpConn = entry.proto
        direction = rng.randrange(2)
        pkt = _random_ack(rng, conn, direction)
        runs = []
        for path in ("packet", "general"):
            twin = copy.copy(entry)
            twin.proto = copy.copy(conn)
            ct = Conntrack(lab.ct.sysctl)
            tracker = TcpTracker()
            called: list[int] = []
            if path == "packet":
                def spy(*args: Any, tracker: TcpTracker = tracker,
                        called: list[int] = called) -> int:
                    called.append(1)
                    return TcpTracker.general(tracker, *args)
                tracker.general = spy  # type: ignore[method-assign]
                ret = tracker.packet(ct, twin, pkt, direction, 0, lab.now)
                took_fast = not called
            else:
                th = pkt.l4
                assert isinstance(th, Tcp)
                ret = tracker.general(ct, twin, th, FLAG_INDEX[th.flags & FLAG_MASK],
                                      len(pkt.payload), direction, twin.status, lab.now)
            runs.append((ret, [getattr(twin.proto, name) for name in _CONN_SLOTS],
                         [getattr(twin, name) for name in _ENTRY_FIELDS]))
        assert runs[0] == runs[1], (pkt, conn)
        fast += took_fast
        general += not took_fast
        lab.send(pkt)
        lab.sleep(rng.choice([0.0, 0.001, 1.0]))
        if lab.state != "ESTABLISHED":
            break
    assert fast > 20 and general > 5  # both paths were compared


# ================================================================ packed state
@pytest.mark.parametrize("seed", range(6))
def test_a_packed_connection_is_the_same_connection(seed: int) -> None:
    """freeze() (a flow table takes the connection over) packs struct ip_ct_tcp
    into the kernel's field widths; every reader sees the same state, and the next
    packet through conntrack (after the flow table let go) unpacks it and is
    tracked exactly as on a twin that was never packed."""
    rng = random.Random(seed)
    lab = Lab()
    lab.handshake(isn_a=rng.randrange(1 << 32), isn_b=rng.randrange(1 << 32))
    entry = lab.entry
    assert entry is not None
    for _ in range(rng.randrange(1, 20)):  # move the windows and the last_* fields
        lab.send(_random_ack(rng, lab.conn, rng.randrange(2)))
    TRACKER.set_be_liberal(entry)  # as tcf_ct_flow_table_add() does before freeze()
    conn: TcpConn = entry.proto
    slots = [getattr(conn, name) for name in _CONN_SLOTS]
    exported = TRACKER.export(entry)
    freeze(entry)
    assert type(entry.proto) is bytes and len(entry.proto) == PACKED.size == 58
    assert state_of(entry) == conn.state and TRACKER.export(entry) == exported
    assert TRACKER.state_name(entry) == "ESTABLISHED"
    copy_ = conn_of(entry)
    assert copy_ is not None and copy_ is not conn
    assert [getattr(copy_, name) for name in _CONN_SLOTS] == slots
    assert type(entry.proto) is bytes  # reading does not unpack

    twin = copy.copy(entry)
    twin.proto = conn
    direction = rng.randrange(2)
    pkt = _random_ack(rng, conn, direction)
    verdicts = [TRACKER.packet(Conntrack(lab.ct.sysctl), e, pkt, direction, 0, lab.now)
                for e in (entry, twin)]
    assert verdicts[0] == verdicts[1]
    assert type(entry.proto) is TcpConn  # written: unpacked for good
    assert [getattr(entry.proto, name) for name in _CONN_SLOTS] \
        == [getattr(twin.proto, name) for name in _CONN_SLOTS]


def test_a_packed_state_reads_be_liberal_in_both_directions() -> None:
    """Every connection a flow table holds is BE_LIBERAL (tcf_ct_flow_table_add());
    a writer of packed state may leave the bits out (a replica stores the
    active's record as it came), the readers put them in."""
    lab = Lab()
    lab.handshake()
    entry = lab.entry
    assert entry is not None and not lab.conn.flags0 & IP_CT_TCP_FLAG_BE_LIBERAL
    entry.proto = PACKED.pack(*(getattr(lab.conn, name) for name in PACKED_FIELDS))
    for conn in (conn_of(entry), thaw(entry)):
        assert conn is not None
        assert conn.flags0 & conn.flags1 & IP_CT_TCP_FLAG_BE_LIBERAL


def test_a_state_beyond_the_kernels_widths_stays_unpacked() -> None:
    lab = Lab()
    lab.handshake()
    entry = lab.entry
    assert entry is not None
    entry.proto.td_scale0 = 300  # (only a restore() of foreign data could do this)
    freeze(entry)
    assert type(entry.proto) is TcpConn and thaw(entry) is entry.proto


def test_the_retransmission_counter_is_the_kernels_u8() -> None:
    """struct ip_ct_tcp's retrans is a u8 that tcp_in_window() increments: the
    300th copy of the same ACK leaves it at 300 mod 256 (and the state packable)."""
    lab = Lab()
    lab.handshake()
    for _ in range(300):
        lab.a("A", 1001, 5001, win=502)
    assert lab.conn.retrans == 300 % 256
    entry = lab.entry
    assert entry is not None
    freeze(entry)
    assert type(entry.proto) is bytes


def test_flag_names_are_the_set_bits_in_order_for_every_value() -> None:
    """The table behind flag_names() (read twice per exported TCP event), for
    every u8 value: one name per set bit, lowest bit first, and back to the same
    bits; each call gives a list of its own."""
    for flags in range(256):
        names = flag_names(flags)
        assert len(names) == bin(flags).count("1")
        assert flags_from_names(names) == flags
        assert [flags_from_names([n]) for n in names] == sorted(flags_from_names([n])
                                                                for n in names)
    assert flag_names(0x123) == ["WINDOW_SCALE", "SACK_PERM", "MAXACK_SET"]  # (bit 8: no name)
    first = flag_names(0x23)
    first.append("x")
    assert flag_names(0x23) == ["WINDOW_SCALE", "SACK_PERM", "MAXACK_SET"]
