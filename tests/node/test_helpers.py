"""The FTP and TFTP helpers and their expectations, driven through the real
Conntrack (`commit`: track + helper + confirm, as iptables and `ct commit` do).

Every TCP packet carries correct sequence and acknowledgment numbers, so the
sessions are valid for the TCP window tracker too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from node.conntrack import Conntrack, CtResult, Sysctl, Template, tuple_of
from node.conntrack.entry import (
    CTINFO_STATE,
    IP_CT_ESTABLISHED,
    IP_CT_ESTABLISHED_REPLY,
    IP_CT_NEW,
    IP_CT_RELATED,
    IPS_EXPECTED,
    IPS_HELPER,
    ORIGINAL,
    REPLY,
)
from node.conntrack.expect import EBUSY, Expectation
from node.conntrack.helpers import HELPERS
from node.conntrack.helpers.ftp import FtpHelper, FtpState
from node.conntrack.helpers.tftp import TftpHelper
from node.conntrack.l4proto import ACCEPT, DROP
from node.conntrack.tuple import Tuple
from node.packet import IPPROTO_TCP, IPPROTO_UDP, Packet, Tcp, Udp, ip_bytes, parse, tcp, udp

CLIENT, SERVER = 0, 1
A, B = "198.18.1.2", "198.19.1.2"  # client and server, as in the kernel oracle's lab
A6, B6 = "2001:db8:1::2", "2001:db8:2::2"
T0 = 1000.0


@dataclass
class Session:
    """One TCP connection: side 0 opens it. Sequence numbers follow the data."""

    ct: Conntrack
    addr: tuple[str, str]
    port: tuple[int, int]
    templates: tuple[Template, Template]
    nxt: list[int] = field(default_factory=lambda: [1000, 5000])

    def send(self, side: int, flags: str, payload: bytes = b"", now: float = T0) -> CtResult:
        other = 1 - side
        ack = self.nxt[other] if "A" in flags else 0
        pkt = tcp(self.addr[side], self.addr[other], self.port[side], self.port[other],
                  flags, seq=self.nxt[side], ack=ack, payload=payload)
        res = self.ct.commit(pkt, now, self.templates[side])
        if res.verdict == ACCEPT:
            self.nxt[side] = (self.nxt[side] + len(payload) + ("S" in flags)
                              + ("F" in flags)) & 0xFFFFFFFF
        return res

    def open(self, now: float = T0) -> list[CtResult]:
        return [self.send(0, "S", now=now), self.send(1, "SA", now=now),
                self.send(0, "A", now=now)]

    def line(self, side: int, text: str, now: float = T0) -> CtResult:
        return self.send(side, "PA", text.encode(), now)


def control(ct: Conntrack, zone: int = 0, port: int = 21, v6: bool = False,
            helper: str | None = "ftp", cport: int = 40000) -> Session:
    """An FTP control connection; the client's packets match the CT --helper rule."""
    addr = (A6, B6) if v6 else (A, B)
    s = Session(ct, addr, (cport, port),
                (Template(zone=zone, helper=helper), Template(zone=zone)))
    s.open()
    return s


def logged_in(ct: Conntrack, **kw: object) -> Session:
    """Control connection past the greeting and USER: both first lines are gone."""
    s = control(ct, **kw)  # type: ignore[arg-type]
    s.line(SERVER, "220 ctlab FTP ready\r\n")
    s.line(CLIENT, "USER anonymous\r\n")
    s.line(SERVER, "331 Please specify the password.\r\n")
    return s


def only_expectation(ct: Conntrack) -> Expectation:
    exps = list(ct.expect)
    assert len(exps) == 1, exps
    return exps[0]


def tup(src: str, dst: str, sport: int, dport: int, proto: int = IPPROTO_TCP) -> Tuple:
    s, d = ip_bytes(src), ip_bytes(dst)
    return Tuple(4 if len(s) == 4 else 6, proto, s, d, sport, dport)


def data_session(ct: Conntrack, src: str, dst: str, sport: int, dport: int,
                 zone: int = 0) -> Session:
    return Session(ct, (src, dst), (sport, dport), (Template(zone=zone), Template(zone=zone)),
                   [9000, 7000])


# ---------------------------------------------------------------- registry

def test_registry_holds_ftp_and_tftp_with_their_policies() -> None:
    ftp, tftp = HELPERS["ftp"], HELPERS["tftp"]
    assert (ftp.name, ftp.proto, ftp.port, ftp.max_expected, ftp.timeout) == \
        ("ftp", IPPROTO_TCP, 21, 1, 300)
    assert (tftp.name, tftp.proto, tftp.port, tftp.max_expected, tftp.timeout) == \
        ("tftp", IPPROTO_UDP, 69, 1, 300)


def test_template_helper_is_assigned_with_the_helper_status_bit() -> None:
    ct = Conntrack()
    s = control(ct)
    entry = s.send(CLIENT, "A").entry
    assert entry is not None and entry.helper == "ftp" and entry.status & IPS_HELPER


def test_helper_of_another_protocol_is_not_assigned() -> None:
    ct = Conntrack()
    res = ct.commit(udp(A, B, 4000, 21, b"x"), T0, Template(helper="ftp"))
    assert res.entry is not None and res.entry.helper is None


# ---------------------------------------------------------------- FTP active mode

def test_port_expects_the_server_from_any_port_to_the_announced_client_port() -> None:
    ct = Conntrack()
    s = logged_in(ct)
    res = s.line(CLIENT, "PORT 198,18,1,2,195,80\r\n")
    assert res.verdict == ACCEPT
    exp = only_expectation(ct)
    assert exp.master is res.entry
    assert exp.tuple == tup(B, A, 0, 50000)
    assert not exp.src_any_addr and exp.src_any_port
    assert exp.helper is None and exp.timeout == 300
    assert exp.expires_at == T0 + 300
    d = exp.to_dict(T0)
    assert d["mask"] == {"src": "255.255.255.255", "dst": "255.255.255.255", "proto": "tcp",
                         "sport": 0, "dport": 65535}
    assert d["helper"] == "ftp" and d["zone"] == 0 and d["class"] == 0 and d["flags"] == []


def test_active_data_connection_is_related_original_then_established() -> None:
    ct = Conntrack()
    s = logged_in(ct)
    s.line(CLIENT, "PORT 198,18,1,2,195,80\r\n")
    master = s.send(CLIENT, "A").entry
    assert master is not None
    data = data_session(ct, B, A, 20, 50000)
    syn = data.send(0, "S", now=T0 + 1)
    assert syn.ctinfo == IP_CT_RELATED and syn.direction == ORIGINAL
    child = syn.entry
    assert child is not None and child.status & IPS_EXPECTED
    assert child.master is master and child.helper is None
    assert child.orig == tup(B, A, 20, 50000)
    assert len(ct.expect) == 0  # consumed
    synack = data.send(1, "SA", now=T0 + 1)
    assert synack.entry is child and synack.ctinfo == IP_CT_ESTABLISHED_REPLY
    ack = data.send(0, "A", now=T0 + 1)
    assert ack.entry is child and ack.ctinfo == IP_CT_ESTABLISHED
    view = ct.view(child, T0 + 1)
    assert view.master == master.orig and "EXPECTED" in view.status_list()


def test_view_fields_by_name() -> None:
    """Conntrack.view() fills CtView positionally (it is made per event): every
    field, read by name, is the entry's own."""
    ct = Conntrack(Sysctl(nf_conntrack_acct=1))
    s = logged_in(ct)
    s.line(CLIENT, "PORT 198,18,1,2,195,80\r\n")
    master = s.send(CLIENT, "A").entry
    assert master is not None
    child = data_session(ct, B, A, 20, 50000).send(0, "S", now=T0 + 1).entry
    assert child is not None
    ct.set_mark(master, 0x5A)
    ct.set_labels(master, 1 << 9, 1 << 9)
    now = T0 + 3
    for entry, helper, mst in ((master, "ftp", None), (child, None, master.orig)):
        v = ct.view(entry, now)
        assert (v.id, v.orig, v.reply, v.zone, v.status) == \
            (entry.id, entry.orig, entry.reply, entry.zone, entry.status)
        assert v.proto_state == ("ESTABLISHED" if entry is master else "SYN_SENT")
        assert v.timeout == entry.expires_at - now and v.period == entry.timeout
        assert (v.mark, v.labels, v.helper, v.master) == (entry.mark, entry.labels, helper, mst)
        acct = entry.acct
        assert v.packets == (acct[0], acct[2]) and v.bytes == (acct[1], acct[3])
        assert v.packets[0] > 0 and v.bytes[0] > v.packets[0]
        assert v.protoinfo is not None and v.protoinfo["state"] == v.proto_state
    assert ct.view(master, now).labels_list() == [9] and master.mark == 0x5A


def test_child_gets_the_master_mark() -> None:
    ct = Conntrack()
    s = logged_in(ct)
    res = s.line(CLIENT, "PORT 198,18,1,2,195,80\r\n")
    assert res.entry is not None
    ct.set_mark(res.entry, 0x42)
    child = data_session(ct, B, A, 20, 50000).send(0, "S").entry
    assert child is not None and child.mark == 0x42


def test_other_source_address_does_not_match_the_expectation() -> None:
    ct = Conntrack()
    s = logged_in(ct)
    s.line(CLIENT, "PORT 198,18,1,2,195,80\r\n")
    res = data_session(ct, "198.19.1.3", A, 20, 50000).send(0, "S")
    assert res.ctinfo == IP_CT_NEW
    assert len(ct.expect) == 1


def test_first_line_in_each_direction_is_never_parsed() -> None:
    ct = Conntrack()
    s = control(ct)
    s.line(SERVER, "220 ready\r\n")
    res = s.line(CLIENT, "PORT 198,18,1,2,195,80\r\n")  # the client's first line
    assert res.verdict == ACCEPT and len(ct.expect) == 0
    s.line(SERVER, "200 PORT command successful\r\n")
    s.line(CLIENT, "PORT 198,18,1,2,195,81\r\n")  # second line: parsed
    assert only_expectation(ct).tuple.dport == 50001


def test_first_server_line_is_never_parsed() -> None:
    ct = Conntrack()
    s = control(ct)
    s.line(SERVER, "227 Entering Passive Mode (198,19,1,2,39,16)\r\n")
    assert len(ct.expect) == 0
    s.line(CLIENT, "PASV\r\n")
    s.line(SERVER, "227 Entering Passive Mode (198,19,1,2,39,17)\r\n")
    assert only_expectation(ct).tuple.dport == 10001


def test_a_line_after_a_packet_without_newline_is_not_parsed() -> None:
    ct = Conntrack()
    s = logged_in(ct)
    s.line(CLIENT, "NOOP")  # no newline: the next packet does not start a line
    s.line(CLIENT, "PORT 198,18,1,2,195,80\r\n")
    assert len(ct.expect) == 0
    s.line(CLIENT, "PORT 198,18,1,2,195,81\r\n")
    assert only_expectation(ct).tuple.dport == 50001


def test_commands_are_case_insensitive() -> None:
    ct = Conntrack()
    s = logged_in(ct)
    s.line(CLIENT, "port 198,18,1,2,195,80\r\n")
    assert only_expectation(ct).tuple.dport == 50000


def test_port_naming_another_host_creates_no_expectation() -> None:
    ct = Conntrack()
    s = logged_in(ct)
    res = s.line(CLIENT, "PORT 10,0,0,7,195,80\r\n")
    assert res.verdict == ACCEPT and len(ct.expect) == 0


def test_loose_helper_expects_the_named_host() -> None:
    ct = Conntrack(helpers={"ftp": FtpHelper(loose=True)})
    s = logged_in(ct)
    s.line(CLIENT, "PORT 10,0,0,7,195,80\r\n")
    assert only_expectation(ct).tuple == tup(B, "10.0.0.7", 0, 50000)


def test_partial_match_drops_the_packet_and_keeps_the_line_position() -> None:
    ct = Conntrack()
    s = logged_in(ct)
    bad = s.line(CLIENT, "PORT 198,18,1\r\n")
    assert bad.verdict == DROP and len(ct.expect) == 0
    # The dropped segment is sent again, fixed: still at a line start.
    s.line(CLIENT, "PORT 198,18,1,2,195,80\r\n")
    assert only_expectation(ct).tuple.dport == 50000


def test_short_prefix_of_a_command_is_a_partial_match() -> None:
    ct = Conntrack()
    s = logged_in(ct)
    assert s.line(CLIENT, "PO").verdict == DROP
    assert s.line(CLIENT, "PWD\r\n").verdict == ACCEPT


def test_new_port_command_replaces_the_older_expectation() -> None:
    ct = Conntrack()
    s = logged_in(ct)
    s.line(CLIENT, "PORT 198,18,1,2,195,80\r\n")
    s.line(SERVER, "200 PORT command successful\r\n")
    s.line(CLIENT, "PORT 198,18,1,2,195,81\r\n", now=T0 + 10)
    exp = only_expectation(ct)
    assert exp.tuple.dport == 50001 and exp.expires_at == T0 + 310
    assert s.send(CLIENT, "A").entry.expect_count == 1  # type: ignore[union-attr]


def test_same_data_port_announced_by_two_masters_is_refused() -> None:
    ct = Conntrack()
    first = logged_in(ct, cport=40000)
    first.line(CLIENT, "PORT 198,18,1,2,195,80\r\n")
    second = logged_in(ct, cport=40001)
    res = second.line(CLIENT, "PORT 198,18,1,2,195,80\r\n")
    assert res.verdict == DROP  # nf_ct_expect_related(): -EBUSY, "cannot add expectation"
    assert only_expectation(ct).master is first.send(CLIENT, "A").entry


def test_expectation_expires_after_five_minutes() -> None:
    ct = Conntrack()
    s = logged_in(ct)
    s.line(CLIENT, "PORT 198,18,1,2,195,80\r\n")
    s.send(CLIENT, "A", now=T0 + 299)  # the control connection stays alive
    assert ct.next_deadline() is not None
    ct.expire(T0 + 299)
    assert len(ct.expect) == 1
    ct.expire(T0 + 300)
    assert len(ct.expect) == 0
    res = data_session(ct, B, A, 20, 50000).send(0, "S", now=T0 + 300)
    assert res.ctinfo == IP_CT_NEW


def test_expired_expectation_is_not_used_even_before_collection() -> None:
    ct = Conntrack()
    s = logged_in(ct)
    s.line(CLIENT, "PORT 198,18,1,2,195,80\r\n")
    s.send(CLIENT, "A", now=T0 + 301)
    res = data_session(ct, B, A, 20, 50000).send(0, "S", now=T0 + 301)
    assert res.ctinfo == IP_CT_NEW


def test_destroying_the_master_removes_its_expectations() -> None:
    ct = Conntrack()
    s = logged_in(ct)
    res = s.line(CLIENT, "PORT 198,18,1,2,195,80\r\n")
    assert res.entry is not None
    ct.kill(res.entry, T0)
    assert len(ct.expect) == 0


def test_seq_pickup_parses_the_first_packet_after_a_failover() -> None:
    ct = Conntrack()
    s = control(ct)
    entry = s.send(CLIENT, "A").entry
    assert entry is not None
    HELPERS["ftp"].from_nlattr(entry)  # as for an entry injected by a failover daemon
    assert isinstance(entry.helper_data, FtpState)
    s.line(CLIENT, "PORT 198,18,1,2,195,80\r\n")
    assert only_expectation(ct).tuple.dport == 50000


# ---------------------------------------------------------------- EPRT / PASV / EPSV

def test_eprt_ipv4() -> None:
    ct = Conntrack()
    s = logged_in(ct)
    s.line(CLIENT, "EPRT |1|198.18.1.2|50000|\r\n")
    assert only_expectation(ct).tuple == tup(B, A, 0, 50000)


def test_eprt_ipv6() -> None:
    ct = Conntrack()
    s = logged_in(ct, v6=True)
    s.line(CLIENT, "EPRT |2|2001:db8:1::2|50000|\r\n")
    exp = only_expectation(ct)
    assert exp.tuple == tup(B6, A6, 0, 50000)
    assert exp.src_any_port and not exp.src_any_addr
    assert "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" in str(exp.to_dict(T0)["mask"])
    child = data_session(ct, B6, A6, 20, 50000).send(0, "S")
    assert child.ctinfo == IP_CT_RELATED


def test_eprt_of_the_wrong_family_is_a_partial_match() -> None:
    ct = Conntrack()
    s = logged_in(ct)
    assert s.line(CLIENT, "EPRT |2|2001:db8:1::2|50000|\r\n").verdict == DROP


def test_eprt_ipv6_naming_another_host_creates_nothing() -> None:
    ct = Conntrack()
    s = logged_in(ct, v6=True)
    s.line(CLIENT, "EPRT |2|2001:db8:1::99|50000|\r\n")
    assert len(ct.expect) == 0


def test_pasv_227_expects_the_client_to_the_announced_server_port() -> None:
    ct = Conntrack()
    s = logged_in(ct)
    s.line(CLIENT, "PASV\r\n")
    s.line(SERVER, "227 Entering Passive Mode (198,19,1,2,39,16).\r\n")
    exp = only_expectation(ct)
    assert exp.tuple == tup(A, B, 0, 10000) and exp.src_any_port and not exp.src_any_addr
    data = data_session(ct, A, B, 45000, 10000)
    syn = data.send(0, "S")
    assert syn.ctinfo == IP_CT_RELATED and syn.direction == ORIGINAL
    assert syn.entry is not None and syn.entry.master is s.send(CLIENT, "A").entry
    assert data.send(1, "SA").ctinfo == IP_CT_ESTABLISHED_REPLY
    assert data.send(0, "A").ctinfo == IP_CT_ESTABLISHED


def test_pasv_227_without_parentheses() -> None:
    ct = Conntrack()
    s = logged_in(ct)
    s.line(CLIENT, "PASV\r\n")
    s.line(SERVER, "227 Entering Passive Mode 198,19,1,2,39,16\r\n")
    assert only_expectation(ct).tuple.dport == 10000


def test_pasv_naming_another_server_creates_nothing() -> None:
    ct = Conntrack()
    s = logged_in(ct)
    s.line(CLIENT, "PASV\r\n")
    s.line(SERVER, "227 Entering Passive Mode (198,19,1,9,39,16)\r\n")
    assert len(ct.expect) == 0


@pytest.mark.parametrize("v6", [False, True])
def test_epsv_229_expects_the_server_address_of_the_control_connection(v6: bool) -> None:
    ct = Conntrack()
    s = logged_in(ct, v6=v6)
    s.line(CLIENT, "EPSV\r\n")
    s.line(SERVER, "229 Entering Extended Passive Mode (|||6446|)\r\n")
    exp = only_expectation(ct)
    assert exp.tuple == (tup(A6, B6, 0, 6446) if v6 else tup(A, B, 0, 6446))
    child = data_session(ct, *((A6, B6) if v6 else (A, B)), 45000, 6446).send(0, "S")
    assert child.ctinfo == IP_CT_RELATED


def test_client_commands_are_not_looked_for_in_server_lines() -> None:
    ct = Conntrack()
    s = logged_in(ct)
    s.line(SERVER, "PORT 198,19,1,2,195,80\r\n")
    s.line(CLIENT, "227 Entering Passive Mode (198,18,1,2,39,16)\r\n")
    assert len(ct.expect) == 0


def test_helper_on_a_non_standard_port() -> None:
    ct = Conntrack()
    s = logged_in(ct, port=2121)
    s.line(CLIENT, "PORT 198,18,1,2,195,80\r\n")
    assert only_expectation(ct).master.orig.dport == 2121


def test_no_helper_no_expectation() -> None:
    ct = Conntrack()
    s = logged_in(ct, helper=None)
    s.line(CLIENT, "PORT 198,18,1,2,195,80\r\n")
    assert len(ct.expect) == 0


def test_expectation_lives_in_the_master_zone() -> None:
    ct = Conntrack()
    s = logged_in(ct, zone=7)
    s.line(CLIENT, "PORT 198,18,1,2,195,80\r\n")
    exp = only_expectation(ct)
    assert exp.zone == 7 and exp.to_dict(T0)["zone"] == 7
    other_zone = data_session(ct, B, A, 20, 50000, zone=0).send(0, "S")
    assert other_zone.ctinfo == IP_CT_NEW
    res = data_session(ct, B, A, 20, 50000, zone=7).send(0, "S")
    assert res.ctinfo == IP_CT_RELATED and res.entry is not None and res.entry.zone == 7


def test_same_session_in_two_zones_has_two_expectations() -> None:
    ct = Conntrack()
    for zone in (1, 2):
        logged_in(ct, zone=zone).line(CLIENT, "PORT 198,18,1,2,195,80\r\n")
    assert sorted(e.zone for e in ct.expect) == [1, 2]


# ---------------------------------------------------------------- expectation table

def test_uncommitted_lookup_can_keep_the_expectation() -> None:
    ct = Conntrack()
    s = logged_in(ct)
    s.line(CLIENT, "PORT 198,18,1,2,195,80\r\n")
    t = tup(B, A, 20, 50000)
    assert ct.expect.take(t, 0, T0, unlink=False) is not None
    assert len(ct.expect) == 1
    assert ct.expect.take(t, 0, T0) is not None
    assert len(ct.expect) == 0


def test_expectation_of_an_unconfirmed_master_is_not_used() -> None:
    ct = Conntrack()
    res = ct.track(udp(A, B, 4000, 69, b"\x00\x01f\x00octet\x00"), T0, Template(helper="tftp"))
    assert ct.help(res, udp(A, B, 4000, 69, b"\x00\x01f\x00octet\x00"), T0) == ACCEPT
    assert len(ct.expect) == 1
    assert ct.expect.take(tup(B, A, 3000, 4000, IPPROTO_UDP), 0, T0) is None


def test_table_limit_refuses_expectations() -> None:
    ct = Conntrack()
    ct.expect.max_entries = 1
    logged_in(ct, cport=40000).line(CLIENT, "PORT 198,18,1,2,195,80\r\n")
    res = logged_in(ct, cport=40001).line(CLIENT, "PORT 198,18,1,2,195,81\r\n")
    assert res.verdict == DROP and len(ct.expect) == 1


def test_related_reports_ebusy_for_a_clash_with_another_master() -> None:
    ct = Conntrack()
    s1 = logged_in(ct, cport=40000)
    s1.line(CLIENT, "PORT 198,18,1,2,195,80\r\n")
    exp = only_expectation(ct)
    other = logged_in(ct, cport=40001).send(CLIENT, "A").entry
    assert other is not None
    clone = Expectation(exp.tuple, False, True, other, None, T0 + 300, 300)
    assert ct.expect.related(clone, 1, T0) == EBUSY


# ---------------------------------------------------------------- TFTP

def rrq(name: str = "boot.img", opcode: int = 1) -> bytes:
    return opcode.to_bytes(2, "big") + name.encode() + b"\x00octet\x00"


def test_tftp_read_request_expects_the_server_from_any_port() -> None:
    ct = Conntrack()
    res = ct.commit(udp(A, B, 4000, 69, rrq()), T0, Template(helper="tftp"))
    assert res.ctinfo == IP_CT_NEW and res.entry is not None
    assert res.entry.helper == "tftp" and res.entry.status & IPS_HELPER
    exp = only_expectation(ct)
    assert exp.tuple == tup(B, A, 0, 4000, IPPROTO_UDP)
    assert exp.src_any_port and not exp.src_any_addr and exp.timeout == 300
    assert "'sport': 0" in str(exp.to_dict(T0)["mask"])


@pytest.mark.parametrize("opcode", [1, 2])
def test_tftp_answer_from_a_new_port_is_related_and_the_server_originates(opcode: int) -> None:
    ct = Conntrack()
    master = ct.commit(udp(A, B, 4000, 69, rrq(opcode=opcode)), T0, Template(helper="tftp"))
    answer = ct.commit(udp(B, A, 3333, 4000, b"\x00\x03\x00\x01data"), T0 + 0.1)
    assert answer.ctinfo == IP_CT_RELATED and answer.direction == ORIGINAL
    child = answer.entry
    assert child is not None and child.master is master.entry
    assert child.orig == tup(B, A, 3333, 4000, IPPROTO_UDP)
    assert child.status & IPS_EXPECTED and child.helper is None
    ack = ct.commit(udp(A, B, 4000, 3333, b"\x00\x04\x00\x01"), T0 + 0.2)
    assert ack.entry is child and ack.direction == REPLY
    assert ack.ctinfo == IP_CT_ESTABLISHED_REPLY


def test_tftp_data_and_ack_opcodes_expect_nothing() -> None:
    ct = Conntrack()
    for payload in (b"\x00\x03\x00\x01", b"\x00\x04\x00\x01", b"\x00\x05\x00\x01oops\x00",
                    b"\x00"):
        ct.commit(udp(A, B, 4000, 69, payload), T0, Template(helper="tftp"))
    assert len(ct.expect) == 0


def test_tftp_repeated_request_restarts_the_expectation() -> None:
    ct = Conntrack()
    ct.commit(udp(A, B, 4000, 69, rrq()), T0, Template(helper="tftp"))
    ct.commit(udp(A, B, 4000, 69, rrq()), T0 + 5, Template(helper="tftp"))
    exp = only_expectation(ct)
    assert exp.expires_at == T0 + 305 and exp.master.expect_count == 1


def test_tftp_zone_carries_over_to_the_child() -> None:
    ct = Conntrack()
    ct.commit(udp(A, B, 4000, 69, rrq()), T0, Template(zone=3, helper="tftp"))
    assert only_expectation(ct).zone == 3
    assert ct.commit(udp(B, A, 3333, 4000, b"\x00\x03"), T0).ctinfo == IP_CT_NEW  # zone 0
    assert len(ct.expect) == 1
    answer = ct.commit(udp(B, A, 3333, 4000, b"\x00\x03"), T0, Template(zone=3))
    assert answer.ctinfo == IP_CT_RELATED and answer.entry is not None
    assert answer.entry.zone == 3 and len(ct.expect) == 0


def test_tftp_expectation_expires() -> None:
    ct = Conntrack()
    ct.commit(udp(A, B, 4000, 69, rrq()), T0, Template(helper="tftp"))
    ct.expire(T0 + 30)  # the UDP master times out after 30 s and takes it along
    assert len(ct.expect) == 0
    assert ct.commit(udp(B, A, 3333, 4000, b"\x00\x03"), T0 + 30).ctinfo == IP_CT_NEW


def test_tftp_helper_object_is_the_registered_one() -> None:
    assert isinstance(HELPERS["tftp"], TftpHelper) and isinstance(HELPERS["ftp"], FtpHelper)


# ---------------------------------------------------------------- kernel oracle

ORACLE = Path(__file__).resolve().parents[1] / "fixtures" / "oracle" / "results"
HELPER_PORTS = {"ftp": (IPPROTO_TCP, 21), "tftp": (IPPROTO_UDP, 69)}


def _oracle_cases() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name in ("ftp.json", "tftp.json"):
        path = ORACLE / name
        if path.exists():
            out += [(f"{name[:-5]}:{c['name']}", c) for c in json.loads(path.read_text())["cases"]]
    return out


def _oracle_template(settings: dict[str, Any], pkt: Packet, zone: int) -> Template:
    """R's raw table: `-p P --dport N -j CT --helper H [--zone Z]` rules, then the zone rule."""
    items = ([settings["helper"]] if "helper" in settings else []) + settings.get("helpers", [])
    for item in items:
        name, (proto, port) = (item, HELPER_PORTS[item]) if isinstance(item, str) else \
            (item["name"], ({"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP}[item["proto"]], item["port"]))
        if pkt.proto == proto and isinstance(pkt.l4, Tcp | Udp) and pkt.l4.dport == port:
            return Template(zone=zone, helper=name)
    return Template(zone=zone)


def _oracle_step(ct: Conntrack, settings: dict[str, Any], raw: dict[str, Any],
                 now: float) -> dict[str, Any]:
    """One packet the way R handles it: conntrack in PREROUTING, classified in
    mangle, then helper and confirmation in POSTROUTING."""
    pkt = parse(bytes.fromhex(raw["ip_hex"]))
    zone = raw.get("zone", settings.get("zone", 0))
    res = ct.track(pkt, now, _oracle_template(settings, pkt, zone))
    if res.verdict == DROP:
        state, direction = "NONE", None
    elif res.entry is None:
        state, direction = "INVALID", None
    else:
        state, direction = CTINFO_STATE[res.ctinfo], ("REPLY" if res.direction else "ORIGINAL")
    delivered = res.verdict != DROP
    if res.entry is not None:
        delivered = ct.commit_tracked(res, pkt, now).verdict != DROP \
            if hasattr(ct, "commit_tracked") else \
            ct.help(res, pkt, now) == ACCEPT and ct.confirm(res, now).verdict != DROP
    entry = ct.find(tuple_of(pkt), zone)
    view = ct.view(entry, now) if entry is not None else None
    return {
        "ctstate": state, "ctdir": direction, "delivered": delivered,
        "status": sorted(view.status_list()) if view else None,
        "helper": view.helper if view else None,
        "orig": view.orig.to_dict() if view else None,
        "reply": view.reply.to_dict() if view else None,
        "master": view.master.to_dict() if view and view.master else None,
        "expectations": sorted(json.dumps({k: e.to_dict(now)[k] for k in EXP_KEYS},
                                          sort_keys=True) for e in ct.expect),
        "exp_timeouts": sorted(e.to_dict(now)["timeout"] for e in ct.expect),
    }


EXP_KEYS = ("master", "tuple", "mask", "zone", "helper", "flags", "class")


@pytest.mark.parametrize("case", [c for _, c in _oracle_cases()],
                         ids=[n for n, _ in _oracle_cases()])
def test_helpers_match_the_kernel_oracle(case: dict[str, Any]) -> None:
    settings = case.get("settings") or {}
    ct = Conntrack(Sysctl().with_values(settings.get("sysctl", {})))
    now = T0
    problems = []
    for i, raw in enumerate(case["packets"]):
        if "sleep" in raw:
            now += raw["sleep"]
            continue
        ct.expire(now)
        ours = _oracle_step(ct, settings, raw, now)
        kernel = dict(raw["kernel"])
        kernel["status"] = sorted(kernel["status"]) if kernel["status"] is not None else None
        kernel["expectations"] = sorted(json.dumps({k: e[k] for k in EXP_KEYS}, sort_keys=True)
                                        for e in kernel["expectations"])
        kernel["exp_timeouts"] = sorted(e["timeout"] for e in raw["kernel"]["expectations"])
        for key in ("ctstate", "ctdir", "delivered", "status", "helper", "orig", "reply",
                    "master", "expectations"):
            if ours[key] != kernel[key]:
                problems.append(f"packet {i} {key}: kernel {kernel[key]!r}, ctlab {ours[key]!r}")
        if len(ours["exp_timeouts"]) == len(kernel["exp_timeouts"]) and any(
                abs(a - b) > 2 for a, b in zip(ours["exp_timeouts"], kernel["exp_timeouts"],
                                               strict=True)):
            problems.append(f"packet {i} expectation timeouts: kernel {kernel['exp_timeouts']}, "
                            f"ctlab {ours['exp_timeouts']}")
    assert not problems, "\n".join(problems)
