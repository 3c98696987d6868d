"""The emulated offload card (node.offload) with the real conntrack engine, on a
virtual clock.

`Lab` is a tiny stand-in datapath: every packet goes to the card first (hardware
CT table); a miss goes to act_ct's software flow table (sw_lookup), and if that
misses too, through conntrack with `ct commit` and then to offer(). Time moves
only with sleep(), which runs the card's poll (and conntrack's expiry) at every
deadline the card asks for, as the daemon will."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from node.conntrack import Conntrack, Sysctl, Template
from node.conntrack.entry import (
    IP_CT_ESTABLISHED,
    IP_CT_NEW,
    IPS_ASSURED,
    IPS_DST_NAT,
    IPS_HW_OFFLOAD,
    IPS_OFFLOAD,
    IPS_SEQ_ADJUST,
    Entry,
)
from node.conntrack.tcp import TcpTracker, conn_of
from node.conntrack.tcp_table import (
    IP_CT_TCP_FLAG_BE_LIBERAL,
    IP_CT_TCP_FLAG_MAXACK_SET,
)
from node.conntrack.tuple import tuple_of
from node.offload import (
    Card,
    Direction,
    FaultError,
    Faults,
    HwHit,
    HwMiss,
    HwState,
    MissReason,
    PollResult,
    Teardown,
    read_knobs,
    set_knob,
    should_offload,
)
from node.offload.flowtable import FLOW_USED, NF_FLOW_TEARDOWN
from node.offload.outcomes import CT_ESTABLISHED, CT_NEW, CT_REPLY, CT_TRACKED
from node.packet import Packet, gre, icmp_echo, tcp, udp

A, B = "198.18.0.1", "198.19.0.1"
START = 1000.0


class Lab:
    def __init__(self, zone: int = 0, poll_interval: float = 1.0, acct: int = 1,
                 **faults: Any) -> None:
        faults.setdefault("insert_latency", 0.0)
        self.ct = Conntrack(Sysctl(nf_conntrack_acct=acct))
        self.card = Card(self.ct, Faults(**faults), poll_interval=poll_interval)
        self.zone = zone
        self.now = START
        self.sent = 0
        self.via: dict[str, int] = {"hw": 0, "sw": 0, "ct": 0}
        self.misses: list[MissReason] = []
        self.polls: list[PollResult] = []
        self.card.poll(self.now)

    def send(self, pkt: Packet) -> str:
        """One packet through the stand-in datapath; the path it took."""
        self.sent += 1
        card, now = self.card, self.now
        hit = card.lookup(pkt, self.zone, now)
        if isinstance(hit, HwHit):
            path = "hw"
        else:
            self.misses.append(hit.reason)
            if card.sw_lookup(pkt, self.zone, now) is not None:
                path = "sw"
            else:
                res = self.ct.commit(pkt, now, Template(zone=self.zone))
                if res.entry is not None:
                    card.offer(res.entry, res.ctinfo, now)
                path = "ct"
        self.via[path] += 1
        return path

    def sleep(self, seconds: float) -> None:
        end = self.now + seconds
        while self.card.next_deadline() <= end:
            self.now = max(self.now, self.card.next_deadline())
            self.ct.expire(self.now)
            self.polls.append(self.card.poll(self.now))
        self.now = end
        self.ct.expire(end)

    def teardowns(self) -> list[Teardown]:
        return [t for p in self.polls for t in p.teardowns]

    def entry(self, pkt: Packet) -> Entry:
        entry = self.ct.find(tuple_of(pkt), self.zone)
        assert entry is not None
        return entry


class Conn:
    """A TCP connection between A:sport and B:80 with its sequence numbers."""

    def __init__(self, lab: Lab, sport: int = 40000, a: str = A, b: str = B) -> None:
        self.lab, self.sport, self.a, self.b = lab, sport, a, b
        self.seq_a, self.seq_b = 1000, 5000

    def a2b(self, flags: str = "A", data: bytes = b"", **ip: Any) -> Packet:
        pkt = tcp(self.a, self.b, self.sport, 80, flags, self.seq_a, self.seq_b, payload=data,
                  **ip)
        self.seq_a += len(data) + ("S" in flags) + ("F" in flags)
        return pkt

    def b2a(self, flags: str = "A", data: bytes = b"") -> Packet:
        pkt = tcp(self.b, self.a, 80, self.sport, flags, self.seq_b, self.seq_a, payload=data)
        self.seq_b += len(data) + ("S" in flags) + ("F" in flags)
        return pkt

    def open(self) -> Entry:
        lab = self.lab
        lab.send(self.a2b("S"))
        lab.send(self.b2a("SA"))
        lab.send(self.a2b("A"))
        return lab.entry(self.a2b("A"))

    def data(self, n: int = 1) -> list[str]:
        return [self.lab.send(self.a2b("PA", b"x" * 10) if i % 2 == 0
                              else self.b2a("PA", b"y" * 20)) for i in range(n)]


def miss(lab: Lab, pkt: Packet, zone: int = 0) -> MissReason | None:
    """The card's verdict on a lookup that must miss (None: it hit)."""
    out = lab.card.lookup(pkt, zone, lab.now)
    return out.reason if isinstance(out, HwMiss) else None


def state(card: Card, entry: Entry) -> tuple[HwState, HwState] | None:
    info = card.inspect(entry)
    return None if info is None else info.hw


# ================================================================ policy
def test_tcp_enters_the_flow_table_on_the_handshakes_last_ack_both_ways() -> None:
    lab = Lab()
    conn = Conn(lab)
    assert lab.send(conn.a2b("S")) == "ct"
    assert lab.send(conn.b2a("SA")) == "ct"
    entry = lab.entry(conn.a2b())
    assert not entry.status & IPS_OFFLOAD  # SYN_RECV, not assured: stays in software
    lab.send(conn.a2b("A"))
    assert entry.status & IPS_OFFLOAD and entry.status & IPS_HW_OFFLOAD
    assert state(lab.card, entry) == (HwState.IN_HW, HwState.IN_HW)
    tcp = conn_of(entry)
    assert tcp is not None and all(peer.flags & IP_CT_TCP_FLAG_BE_LIBERAL for peer in tcp.seen)
    assert type(entry.proto) is bytes  # packed while the flow table holds it (tcp.freeze())
    assert entry.expires_at - lab.now == 86400  # held a day while offloaded
    assert conn.data(4) == ["hw"] * 4


def test_tcp_rule_needs_established_ctinfo_assured_and_state_established() -> None:
    lab = Lab()
    entry = Conn(lab).open()
    assert should_offload(entry, IP_CT_ESTABLISHED) == Direction.BOTH
    assert should_offload(entry, IP_CT_NEW) is None
    entry.status &= ~IPS_ASSURED
    assert should_offload(entry, IP_CT_ESTABLISHED) is None


def test_udp_is_offloaded_when_committed_one_way_until_assured_then_both_ways() -> None:
    lab = Lab()
    out, back = udp(A, B, 5000, 53, b"q"), udp(B, A, 53, 5000, b"r")
    assert lab.send(out) == "ct"
    entry = lab.entry(out)
    assert state(lab.card, entry) == (HwState.IN_HW, HwState.ABSENT)
    assert lab.send(out) == "hw"
    assert lab.send(back) == "ct"  # reply: no hardware entry; conntrack sees the reply
    lab.sleep(1)  # offloaded as NEW, replied since: outdated, torn down
    assert [t.reason for t in lab.teardowns()] == ["outdated"]
    lab.sleep(2)
    assert lab.send(out) == "ct"  # conntrack: a stream older than 2 s -> ASSURED
    assert entry.status & IPS_ASSURED
    assert state(lab.card, entry) == (HwState.IN_HW, HwState.IN_HW)
    assert lab.send(back) == "hw"
    assert lab.send(out) == "hw"
    assert lab.card.hw.ctinfo[2 * lab.card.flows.fid_of(entry)] == IP_CT_ESTABLISHED


def test_udp_reply_direction_is_offloaded_once_assured() -> None:
    lab = Lab()
    lab.sleep(0.5)
    out, back = udp(A, B, 5000, 53, b"q"), udp(B, A, 53, 5000, b"r")
    lab.send(out)  # created at +0.5 s; offloaded NEW
    lab.send(back)
    lab.sleep(1.5)  # outdated at +1 s, freed at +2 s
    entry = lab.entry(out)
    assert lab.card.inspect(entry) is None
    lab.sleep(0.1)
    assert lab.send(out) == "ct"  # replied, not yet assured: re-added one way, as ESTABLISHED
    assert state(lab.card, entry) == (HwState.IN_HW, HwState.ABSENT)
    lab.sleep(0.5)
    assert lab.send(back) == "ct"  # flow table: not assured and HW_ESTABLISHED -> conntrack
    assert entry.status & IPS_ASSURED
    assert lab.send(back) == "sw"  # flow table: assured -> bidirectional, reply offloaded
    assert state(lab.card, entry) == (HwState.IN_HW, HwState.IN_HW)
    assert lab.send(back) == "hw"


def test_icmp_helper_and_seq_adjust_connections_are_never_offloaded() -> None:
    lab = Lab()
    ping = icmp_echo(A, B, id=7)
    lab.send(ping)
    lab.send(icmp_echo(B, A, id=7, reply=True))
    assert lab.send(ping) == "ct"
    assert lab.card.inspect(lab.entry(ping)) is None
    assert miss(lab, ping) == MissReason.UNSUPPORTED
    seqadj = Conn(Lab()).open()
    seqadj.status = (seqadj.status & ~IPS_OFFLOAD) | IPS_SEQ_ADJUST
    assert should_offload(seqadj, IP_CT_ESTABLISHED) is None


def test_a_connection_with_a_helper_stays_in_software() -> None:
    lab = Lab()
    ct = lab.ct
    tmpl = Template(helper="ftp")
    syn = tcp(A, B, 40000, 21, "S", 1000, 0)
    ct.commit(syn, lab.now, tmpl)
    ct.commit(tcp(B, A, 21, 40000, "SA", 5000, 1001), lab.now, tmpl)
    res = ct.commit(tcp(A, B, 40000, 21, "A", 1001, 5001), lab.now, tmpl)
    assert res.entry is not None and res.entry.helper == "ftp"
    assert res.entry.status & IPS_ASSURED
    assert lab.card.offer(res.entry, res.ctinfo, lab.now) is None


def test_gre_v0_is_offloaded_when_assured_and_not_nated() -> None:
    lab = Lab()
    out, back = gre(A, B, b"x"), gre(B, A, b"y")
    lab.send(out)
    lab.send(back)
    assert lab.send(out) == "ct"  # GRE becomes ASSURED on the first packet after a reply
    entry = lab.entry(out)
    assert state(lab.card, entry) == (HwState.IN_HW, HwState.IN_HW)
    assert lab.send(back) == "hw"
    assert entry.status & IPS_ASSURED
    assert should_offload(entry, IP_CT_ESTABLISHED) == Direction.BOTH
    entry.status |= IPS_DST_NAT
    assert should_offload(entry, IP_CT_ESTABLISHED) is None
    v1 = Lab()
    pptp_out, pptp_back = gre(A, B, version=1, call_id=5), gre(B, A, version=1, call_id=6)
    v1.send(pptp_out)
    v1.send(pptp_back)
    assert should_offload(v1.entry(pptp_out), IP_CT_ESTABLISHED) is None


# ================================================================ lifecycle
def test_lifecycle_pending_in_hw_dying_dead_then_freed() -> None:
    lab = Lab(insert_latency=0.010)
    conn = Conn(lab)
    entry = conn.open()
    card = lab.card
    assert state(card, entry) == (HwState.PENDING, HwState.PENDING)
    assert not entry.status & IPS_HW_OFFLOAD
    assert card.stats["entries"] == 2
    assert lab.send(conn.a2b("PA", b"x")) == "sw"  # pending: the software flow table serves
    lab.sleep(0.010)
    assert lab.send(conn.a2b("PA", b"x")) == "hw"
    assert state(card, entry) == (HwState.IN_HW, HwState.IN_HW)
    assert entry.status & IPS_HW_OFFLOAD
    card.faults.insert_latency = 4.5  # slow deletes, to watch DYING
    while not lab.teardowns():  # idle: torn down by the GC ~30 s later
        lab.sleep(1)
    assert [t.reason for t in lab.teardowns()] == ["idle"]
    info = card.inspect(entry)
    assert info is not None and "TEARDOWN" in info.flags and "HW_DYING" in info.flags
    assert info.hw == (HwState.DYING, HwState.DYING)
    assert not entry.status & (IPS_OFFLOAD | IPS_HW_OFFLOAD)
    assert card.stats["entries"] == 2  # still in the card until the delete completes
    lab.sleep(4.6)
    info = card.inspect(entry)
    assert info is not None and info.hw == (HwState.DEAD, HwState.DEAD)
    assert "HW_DEAD" in info.flags and card.stats["entries"] == 0
    lab.sleep(1)
    assert card.inspect(entry) is None
    assert card.stats["flows"] == 0


def test_a_dying_entry_still_matches_until_its_delete_completes() -> None:
    lab = Lab(insert_latency=0.5)
    conn = Conn(lab)
    entry = conn.open()
    lab.sleep(0.5)
    lab.ct.kill(entry, lab.now)  # e.g. conntrack -D: the GC tears the flow down
    lab.sleep(0.6)
    assert [t.reason for t in lab.teardowns()] == ["ct_dying"]
    assert state(lab.card, entry) == (HwState.DYING, HwState.DYING)
    assert lab.send(conn.a2b("PA", b"x")) == "hw"
    lab.sleep(0.5)
    assert state(lab.card, entry) == (HwState.DEAD, HwState.DEAD)
    assert lab.send(conn.a2b("PA", b"x")) != "hw"


# ================================================================ misses
def test_miss_no_entry_for_an_unknown_tuple() -> None:
    assert miss(Lab(), udp(A, B, 1, 2)) == MissReason.NO_ENTRY


def test_miss_in_another_zone() -> None:
    lab = Lab(zone=3)
    out = udp(A, B, 5000, 53)
    lab.send(out)
    assert lab.send(out) == "hw"
    assert miss(lab, out, zone=0) == MissReason.NO_ENTRY
    assert miss(lab, out, zone=3) is None


def test_miss_fin_or_rst_tears_the_flow_down_and_fixes_conntrack_up() -> None:
    for flags in ("FA", "RA"):
        lab = Lab()
        conn = Conn(lab)
        entry = conn.open()
        conn.data(4)
        assert lab.send(conn.a2b(flags)) == "ct"
        assert lab.misses[-1] == MissReason.FIN_RST
        info = lab.card.inspect(entry)
        assert info is not None and "TEARDOWN" in info.flags
        assert not entry.status & IPS_OFFLOAD
        # flow_offload_fixup_tcp(): the reply side's window is forgotten (re-learnt).
        assert entry.proto.seen[1].td_maxwin == 0
        assert not entry.proto.seen[1].flags & IP_CT_TCP_FLAG_MAXACK_SET
        expected = {"FA": ("FIN_WAIT", 120), "RA": ("CLOSE", 10)}[flags]
        assert (TcpTracker().state_name(entry), entry.expires_at - lab.now) == expected
        lab.sleep(2)
        assert [t.reason for t in lab.teardowns()] == ["fin_rst"]
        assert lab.card.inspect(entry) is None


def test_fin_seen_in_software_also_tears_down() -> None:
    lab = Lab(insert_latency=1.0)
    conn = Conn(lab)
    entry = conn.open()
    assert lab.send(conn.a2b("FA")) == "ct"
    assert lab.misses[-1] == MissReason.FIN_RST
    assert not entry.status & IPS_OFFLOAD


@pytest.mark.parametrize("ip", [{"ip_options": b"\x01\x01\x01\x00"},
                                {"more_frags": True}, {"ttl": 1}])
def test_miss_unsupported_headers(ip: dict[str, Any]) -> None:
    lab = Lab()
    conn = Conn(lab)
    conn.open()
    assert miss(lab, conn.a2b("PA", b"x", **ip)) == MissReason.UNSUPPORTED
    assert lab.card.sw_lookup(conn.a2b("PA", b"x", **ip), 0, lab.now) is None


def test_miss_unsupported_protocols() -> None:
    lab = Lab()
    for pkt in (icmp_echo(A, B), gre(A, B, version=1, call_id=1),
                udp("2001:db8::1", "2001:db8::2", 1, 2, ext_headers=((60, b"\0" * 8),))):
        assert miss(lab, pkt) == MissReason.UNSUPPORTED


def test_miss_table_full_falls_back_to_software_and_offloads_when_space_frees() -> None:
    lab = Lab(capacity=2)
    first, second = Conn(lab, 40001), Conn(lab, 40002)
    e1 = first.open()
    e2 = second.open()
    assert state(lab.card, e1) == (HwState.IN_HW, HwState.IN_HW)
    assert state(lab.card, e2) == (HwState.FULL, HwState.FULL)
    assert e2.status & IPS_OFFLOAD and not e2.status & IPS_HW_OFFLOAD
    assert second.data(2) == ["sw", "sw"]
    assert lab.misses[-2:] == [MissReason.TABLE_FULL] * 2
    lab.sleep(1.5)
    second.data(2)  # the refresh retries the insert (once a second): still full
    failures = [f for p in lab.polls for f in p.failed]
    assert {f.reason for f in failures} == {"table_full"}
    lab.send(first.a2b("RA"))  # frees the first connection's entries
    lab.sleep(2)
    assert lab.card.stats["entries"] == 0
    assert second.data(1) == ["sw"]  # refresh -> insert succeeds
    assert state(lab.card, e2) == (HwState.IN_HW, HwState.IN_HW)
    assert second.data(2) == ["hw", "hw"]


# ================================================================ aging
def test_an_idle_hardware_flow_is_torn_down_30s_after_the_card_last_saw_it() -> None:
    lab = Lab()
    conn = Conn(lab)
    entry = conn.open()
    for _ in range(20):  # 10 s of hardware traffic
        assert conn.data(1) == ["hw"]
        lab.sleep(0.5)
    last = lab.now - 0.5
    while not lab.teardowns():
        lab.sleep(0.25)
    gone = lab.teardowns()[0]
    assert gone.reason == "idle" and gone.entry is entry
    assert last + 30 <= gone.at <= last + 31 + 1e-9
    # Hardware counters reached conntrack's accounting through the stats jobs.
    assert entry.acct[0] + entry.acct[2] == lab.sent


def test_without_nf_conntrack_acct_the_card_counts_nothing_for_conntrack() -> None:
    """nf_conntrack_acct=0, the default: neither software flow table hits nor the
    hardware stats jobs give the entry accounting (no acct extension is made, and
    the card keeps no last-read counters); the stats jobs still keep it alive."""
    lab = Lab(acct=0)
    hw_conn, sw_conn = Conn(lab, 40000), Conn(lab, 40001)
    hw_entry = hw_conn.open()
    lab.card.sw_only_zones.add(0)  # the next flow stays in the software flow table
    sw_entry = sw_conn.open()
    for _ in range(80):  # 40 s: stats jobs run for the hardware flow
        assert hw_conn.data(1) == ["hw"] and sw_conn.data(1) == ["sw"]
        lab.sleep(0.5)
    assert lab.card.counters.stats_jobs and lab.card.counters.sw_packets
    assert hw_entry.ext is None and sw_entry.ext is None
    assert lab.card.hw.rep_packets is None
    assert lab.teardowns() == []


def test_offloaded_entries_share_their_status_words() -> None:
    """OFFLOAD and HW_OFFLOAD take a status beyond the small ints: the flow table
    gives entries with the same status the same int object."""
    lab = Lab()
    first, second = Conn(lab, 40000).open(), Conn(lab, 40001).open()
    assert first.status & IPS_OFFLOAD and first.status & IPS_HW_OFFLOAD
    assert first.status == second.status and first.status is second.status


def test_an_active_hardware_flow_is_never_torn_down() -> None:
    lab = Lab()
    conn = Conn(lab)
    entry = conn.open()
    for _ in range(600):  # 5 minutes, a packet every half second
        assert conn.data(1) == ["hw"]
        lab.sleep(0.5)
    assert lab.teardowns() == []
    assert entry.status & IPS_HW_OFFLOAD
    info = lab.card.inspect(entry)
    assert info is not None and info.timeout - lab.now > 25


def test_an_idle_udp_flow_goes_back_to_conntrack_with_90s() -> None:
    lab = Lab()
    out, back = udp(A, B, 5000, 53), udp(B, A, 53, 5000)
    lab.send(out)
    lab.send(back)
    lab.sleep(3)  # outdated (offloaded as NEW), freed; then re-added as a stream
    lab.send(out)
    entry = lab.entry(out)
    assert state(lab.card, entry) == (HwState.IN_HW, HwState.IN_HW)
    lab.sleep(40)
    assert [t.reason for t in lab.teardowns()] == ["outdated", "idle"]
    gone = lab.teardowns()[1]
    assert entry.expires_at == pytest.approx(gone.at + 90)  # udp_timeout_stream 120 - 30
    assert entry.timeout == 90


def test_an_idle_tcp_flow_keeps_its_day_long_timeout() -> None:
    lab = Lab()
    entry = Conn(lab).open()
    lab.sleep(35)
    assert [t.reason for t in lab.teardowns()] == ["idle"]
    assert entry.expires_at - lab.now > 86000  # established: 5 days - 30 s > a day


def test_a_software_only_flow_is_refreshed_by_its_packets() -> None:
    lab = Lab(fail_all=True)
    conn = Conn(lab)
    entry = conn.open()
    for _ in range(100):
        assert conn.data(1) == ["sw"]
        lab.sleep(0.5)
    assert lab.teardowns() == []
    assert entry.status & IPS_OFFLOAD and not entry.status & IPS_HW_OFFLOAD


def test_conntrack_holds_an_offloaded_entry_past_a_day() -> None:
    lab = Lab(poll_interval=20)  # coarse GC: a day in 4320 polls
    conn = Conn(lab)
    entry = conn.open()
    lowest = float("inf")
    for _ in range(9000):  # 25 hours of hardware traffic, a packet every 10 s
        assert conn.data(1) == ["hw"]
        lab.sleep(10)
        lowest = min(lowest, entry.expires_at - lab.now)
    assert lab.teardowns() == [] and lab.ct.find(entry.orig, 0) is entry
    assert 280 <= lowest < 300  # renewed (to a day) once less than 5 minutes were left


def test_an_entry_conntrack_refreshed_is_held_again_by_the_gc() -> None:
    lab = Lab(fail_all=True)  # software only: unassured UDP packets go through conntrack
    out = udp(A, B, 5000, 53)
    lab.send(out)
    entry = lab.entry(out)
    assert entry.expires_at - lab.now == 86400
    lab.sleep(0.5)
    assert lab.send(out) == "ct"
    assert entry.expires_at - lab.now == 30  # the UDP tracker's unreplied timeout
    lab.sleep(0.5)
    assert entry.expires_at - lab.now == pytest.approx(86400)  # nf_flow_table_extend_ct_timeout


def test_a_timeout_lowered_by_another_writer_is_held_again_within_16_polls() -> None:
    lab = Lab()
    entry = Conn(lab).open()
    lab.ct.refresh(entry, 60, lab.now)  # e.g. a replica update from a peer
    lab.sleep(16)
    assert entry.expires_at - lab.now > 86000
    assert lab.teardowns() == []


# ================================================================ rate and latency
def test_insert_latency_delays_the_first_hardware_hit() -> None:
    lab = Lab(insert_latency=0.050)
    out = udp(A, B, 5000, 53)
    lab.send(out)
    lab.sleep(0.049)
    assert lab.send(out) == "ct"  # pending (unassured UDP: the software path is conntrack)
    assert lab.misses[-1] == MissReason.NO_ENTRY
    lab.sleep(0.001)
    assert lab.send(out) == "hw"
    done = [d for p in lab.polls for d in p.completed]
    assert [d.at for d in done] == [START + 0.050]


def test_insertion_rate_limit_paces_inserts() -> None:
    lab = Lab(insert_rate=10, insert_burst=2, max_insert_wait=100)
    flows = [udp(A, B, 5000 + i, 53) for i in range(20)]
    for pkt in flows:
        lab.send(pkt)
    lab.sleep(0.55)
    assert sum(lab.send(pkt) == "hw" for pkt in flows) == 7  # 2 at once, then 1 per 100 ms
    lab.sleep(1.3)
    assert sum(lab.send(pkt) == "hw" for pkt in flows) == 20
    done = sorted(d.at for p in lab.polls for d in p.completed)
    assert done[2:] == pytest.approx([START + 0.1 * k for k in range(1, 19)])


def test_an_insert_waiting_too_long_for_a_token_fails_busy_and_is_retried() -> None:
    lab = Lab(insert_rate=10, insert_burst=2, max_insert_wait=0.5)
    flows = [udp(A, B, 5000 + i, 53) for i in range(20)]
    for pkt in flows:
        lab.send(pkt)
    lab.sleep(0.1)
    failed = [f.reason for p in lab.polls for f in p.failed]
    assert failed == ["busy"] * 13
    lab.sleep(5)
    for _ in range(3):  # software packets refresh the flows: the inserts are retried
        for pkt in flows:
            lab.send(pkt)
        lab.sleep(1.1)
    assert all(lab.send(pkt) == "hw" for pkt in flows)


# ================================================================ faults
def test_fail_next_inserts_leaves_the_flow_in_software_until_the_retry() -> None:
    lab = Lab()
    lab.card.faults.fail_next_inserts(1)
    out = udp(A, B, 5000, 53)
    lab.send(out)
    entry = lab.entry(out)
    assert state(lab.card, entry) == (HwState.FAILED, HwState.ABSENT)
    assert lab.card.stats["insert_failures_by_reason"] == {"fault": 1}
    assert lab.send(out) == "ct"
    lab.sleep(1.5)
    assert lab.send(out) == "ct"  # refreshed: the insert is retried and succeeds
    assert lab.send(out) == "hw"


def test_fail_all_and_knobs_by_name() -> None:
    lab = Lab()
    set_knob(lab.card.faults, "fail_all", "1")
    entry = Conn(lab).open()
    assert state(lab.card, entry) == (HwState.FAILED, HwState.FAILED)
    set_knob(lab.card.faults, "fail_all_inserts", "0")
    set_knob(lab.card.faults, "capacity", "0")
    set_knob(lab.card.faults, "insert_latency", "0.5")
    knobs = read_knobs(lab.card.faults)
    assert (knobs["fail_all"], knobs["capacity"], knobs["insert_latency"]) == (False, 0, 0.5)
    lab.card.faults.set_capacity(10)
    with pytest.raises(FaultError):
        set_knob(lab.card.faults, "warp_drive", "1")
    with pytest.raises(FaultError):
        set_knob(lab.card.faults, "capacity", "-1")
    with pytest.raises(FaultError):
        set_knob(lab.card.faults, "insert_rate", "0")
    with pytest.raises(FaultError):
        Faults(insert_latency=float("nan"))


# ================================================================ corner cases
def test_udp_offloaded_as_new_is_torn_down_when_outdated_and_re_added_established() -> None:
    lab = Lab()
    out, back = udp(A, B, 5000, 53), udp(B, A, 53, 5000)
    lab.send(out)
    entry = lab.entry(out)
    assert lab.card.hw.ctinfo[2 * lab.card.flows.fid_of(entry)] == IP_CT_NEW
    lab.send(back)  # conntrack: SEEN_REPLY; the hardware still says NEW
    lab.sleep(1)
    assert [t.reason for t in lab.teardowns()] == ["outdated"]
    lab.sleep(1)
    lab.send(out)
    fid = lab.card.flows.fid_of(entry)
    assert fid >= 0 and lab.card.hw.ctinfo[2 * fid] == IP_CT_ESTABLISHED
    assert lab.send(out) == "hw"


def test_hw_hit_restores_ct_state_mark_and_zone() -> None:
    lab = Lab(zone=7)
    conn = Conn(lab)
    entry = conn.open()
    hit = lab.card.lookup(conn.b2a("PA", b"y"), 7, lab.now)
    assert isinstance(hit, HwHit)
    assert (hit.entry, hit.direction, hit.zone, hit.mark, hit.nat) == (entry, 1, 7, 0, None)
    assert hit.ct_state == CT_TRACKED | CT_ESTABLISHED | CT_REPLY
    udp_lab = Lab()
    out = udp(A, B, 5000, 53)
    udp_lab.send(out)
    new = udp_lab.card.lookup(out, 0, udp_lab.now)
    assert isinstance(new, HwHit) and new.ct_state == CT_TRACKED | CT_NEW


def test_sw_only_zone_keeps_flows_out_of_hardware_until_it_gains_hardware() -> None:
    lab = Lab()
    lab.card.sw_only_zones.add(0)
    conn = Conn(lab)
    entry = conn.open()
    assert entry.status & IPS_OFFLOAD and state(lab.card, entry) == (HwState.ABSENT,) * 2
    assert conn.data(2) == ["sw", "sw"]
    lab.card.sw_only_zones.clear()  # an offloaded filter now runs the zone's ct action
    lab.sleep(1.5)
    assert conn.data(2) == ["sw", "hw"]  # the refresh installed it
    lab.send(conn.a2b("RA"))
    lab.sleep(2)
    assert not entry.status & IPS_HW_OFFLOAD and lab.card.stats["entries"] == 0


def test_install_synced_pre_installs_a_standby_and_touch_keeps_it() -> None:
    active = Lab()
    conn = Conn(active)
    src = conn.open()
    standby = Lab()
    copy = Entry(src.orig, src.reply, src.zone, standby.now, 0)
    copy.status = src.status & ~(IPS_OFFLOAD | IPS_HW_OFFLOAD)
    TcpTracker().restore(copy, TcpTracker().export(src) or {})
    standby.ct.refresh(copy, 432000, standby.now)
    assert standby.ct.insert_synced(copy, standby.now)
    assert standby.card.install_synced(copy, standby.now) == Direction.BOTH
    assert state(standby.card, copy) == (HwState.IN_HW, HwState.IN_HW)
    assert standby.send(conn.a2b("PA", b"x")) == "hw"  # the first packet after failover
    for _ in range(10):  # the active keeps reporting traffic
        standby.sleep(10)
        assert standby.card.touch(copy, standby.now - 0.5, standby.now)
    assert standby.teardowns() == []
    standby.sleep(40)
    assert [t.reason for t in standby.teardowns()] == ["idle"]
    assert standby.card.stats["synced"] == 1


# ================================================================ accounting
def test_hardware_plus_software_packets_add_up_to_what_was_sent() -> None:
    lab = Lab(capacity=6, insert_latency=0.002)
    lab.card.faults.fail_next_inserts(1)
    conns = [Conn(lab, 41000 + i) for i in range(5)]
    for c in conns:
        c.open()
    udps = [(udp(A, B, 6000 + i, 53, b"q" * i), udp(B, A, 53, 6000 + i, b"r")) for i in range(4)]
    for step in range(400):
        c = conns[step % 5]
        c.data(1 + step % 3)
        out, back = udps[step % 4]
        lab.send(out if step % 3 else back)
        if step == 200:
            lab.send(conns[0].a2b("FA"))
        lab.sleep(0.05 * (step % 7))
    lab.sleep(5)  # the GC reads every hardware counter at least once more
    c = lab.card.counters
    assert c.hw_packets + lab.via["sw"] + lab.via["ct"] == lab.sent
    assert lab.via["hw"] == c.hw_packets and lab.via["sw"] == c.sw_packets
    assert c.hw_packets > 0 and c.sw_packets > 0 and lab.via["ct"] > 0
    # Per connection, conntrack's accounting saw every packet (software ones when
    # they passed, hardware ones through the stats jobs), except for conns[0]'s
    # hardware packets after its FIN (the kernel loses those too).
    for conn in conns[1:]:
        entry = lab.entry(conn.a2b())
        info = lab.card.inspect(entry)
        assert info is not None
        sent_here = entry.acct[0] + entry.acct[2]
        assert sent_here == _sent_on(lab, conn)


def _sent_on(lab: Lab, conn: Conn) -> int:
    """Packets the connection sent: the 3 of the handshake plus its data packets,
    counted from the sequence numbers (a->b carries 10 bytes, b->a 20)."""
    return 3 + (conn.seq_a - 1001) // 10 + (conn.seq_b - 5001) // 20


# ================================================================ consistency
def _check_invariants(lab: Lab) -> None:
    card, flows, hw = lab.card, lab.card.flows, lab.card.hw
    live_slots = np.isin(hw.state_v, (HwState.PENDING, HwState.IN_HW, HwState.DYING))
    assert hw.entries == int(np.count_nonzero(live_slots))
    assert hw.entries <= max(card.faults.capacity, hw.entries)
    used = [fid for fid in range(len(flows.owners)) if flows.flags[fid] & FLOW_USED]
    assert len(used) == flows.count == len(card.flows)
    assert sum(len(z) for z in flows.orig_index.values()) == flows.count
    assert sum(len(z) for z in flows.reply_index.values()) == flows.count
    for fid in used:
        entry = flows.owners[fid]
        assert flows.orig_index[entry.zone][entry.orig] == fid
        assert flows.reply_index[entry.zone][entry.reply] == fid
        assert flows.code(entry.orig, entry.zone) == 2 * fid
        assert flows.code(entry.reply, entry.zone) == 2 * fid + 1
        if not flows.flags[fid] & NF_FLOW_TEARDOWN:
            assert entry.status & IPS_OFFLOAD
    for entry in lab.ct.entries():
        if entry.status & (IPS_OFFLOAD | IPS_HW_OFFLOAD):
            assert flows.fid_of(entry) >= 0
    c = card.counters
    assert c.hw_packets + lab.via["sw"] + lab.via["ct"] == lab.sent


def test_random_traffic_keeps_the_card_consistent() -> None:
    rng = random.Random(4)
    lab = Lab(capacity=8, insert_latency=0.003, insert_rate=50, insert_burst=5,
              max_insert_wait=0.2)
    conns: list[Conn] = []
    udps = [(udp(A, B, 7000 + i, 53), udp(B, A, 53, 7000 + i)) for i in range(6)]
    for _ in range(1500):
        r = rng.random()
        if r < 0.05 or not conns:
            conn = Conn(lab, 20000 + len(conns))
            conn.open()
            conns.append(conn)
        elif r < 0.55:
            rng.choice(conns).data(rng.randint(1, 3))
        elif r < 0.75:
            lab.send(rng.choice(rng.choice(udps)))
        elif r < 0.78:
            lab.send(rng.choice(conns).a2b(rng.choice(("FA", "RA"))))
        elif r < 0.80:
            entries = list(lab.ct.entries())
            if entries:
                lab.ct.kill(rng.choice(entries), lab.now)
        elif r < 0.82:
            lab.card.faults.fail_next_inserts(rng.randint(0, 3))
        elif r < 0.84:
            lab.card.faults.set_capacity(rng.choice((2, 8, 100)))
        else:
            lab.sleep(rng.choice((0.001, 0.1, 0.7, 1.3, 5.0, 31.0)))
        _check_invariants(lab)
    stats = lab.card.stats
    assert stats["hw_packets"] and stats["sw_packets"] and stats["insert_failures"]
    assert {"fin_rst", "idle"} <= set(stats["teardowns"])
