"""The TFTP helper (Linux 6.18 net/netfilter/nf_conntrack_tftp.c).

A read or write request (opcode 1 RRQ, 2 WRQ) announces that the server will
answer from a new port: the expectation is the master's reply tuple with the
source port as a wildcard, "server address, any port -> client address and
port" (nf_ct_expect_init() with the reply tuple's addresses, src port NULL).
The first answer creates a child entry whose originator is the server.

Unlike FTP there is no ctinfo gate: every packet of the entry carrying an
RRQ/WRQ opcode (re)announces the expectation, the first (NEW) one included;
a repeated request replaces the identical expectation, restarting its timer.
Policy: max_expected 1, timeout 5 minutes. A refused expectation drops the
packet. NAT of the expectation (nf_nat_tftp) is not modelled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from node.conntrack.expect import NF_CT_EXPECT_CLASS_DEFAULT, Expectation
from node.conntrack.l4proto import ACCEPT, DROP
from node.conntrack.tuple import Tuple
from node.packet import IPPROTO_UDP

if TYPE_CHECKING:
    from node.conntrack.entry import Entry
    from node.conntrack.table import Conntrack
    from node.packet import Packet

TFTP_PORT = 69
TFTP_OPCODE_READ = 1
TFTP_OPCODE_WRITE = 2
TFTP_OPCODE_DATA = 3
TFTP_OPCODE_ACK = 4
TFTP_OPCODE_ERROR = 5


class TftpHelper:
    """nf_conntrack_tftp: name "tftp", UDP, port 69."""

    name = "tftp"
    proto = IPPROTO_UDP
    port = TFTP_PORT
    max_expected = 1  # tftp_exp_policy
    timeout = 5 * 60

    def from_nlattr(self, entry: Entry) -> None:
        """An entry injected from user space: TFTP keeps no per-entry state."""

    def help(self, ct: Conntrack, entry: Entry, pkt: Packet, direction: int, ctinfo: int,
             now: float) -> int:
        data = pkt.payload
        if len(data) < 2:
            return ACCEPT  # no tftphdr
        opcode = (data[0] << 8) | data[1]
        if opcode != TFTP_OPCODE_READ and opcode != TFTP_OPCODE_WRITE:
            return ACCEPT  # DATA, ACK, ERROR and unknown opcodes
        reply = entry.reply
        exp = Expectation(
            tuple=Tuple(reply.family, IPPROTO_UDP, reply.src, reply.dst, 0, reply.dport),
            src_any_addr=False, src_any_port=True, master=entry, helper=None,
            expires_at=now + self.timeout, timeout=self.timeout,
            cls=NF_CT_EXPECT_CLASS_DEFAULT)
        if ct.expect.related(exp, self.max_expected, now) != 0:
            return DROP  # "cannot add expectation"
        return ACCEPT
