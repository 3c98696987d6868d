"""The workload: emulated clients and servers that open, use and close flows
at the rates of the scenario's traffic profiles. Pure: time is an argument,
randomness comes from the seed, packets are node.packet values.

    gen = TrafficGen(profiles, seed)
    for send in gen.next_packets(now):        # Send(flow_id, direction, packet, side)
        ...carry send.packet through the cluster...
        gen.deliver(send.flow_id, send.direction, arrived_packet, now, via="a", path="hw")
        # or gen.lost(send.flow_id, send.direction, send.packet, now, where="a")
    gen.next_deadline()                       # when next_packets() has work again
    gen.take_ops()                            # history operations (open/close/...)

`direction` is the connection's: ORIG from its originator, REPLY from the
responder. `side` is where the sender sits: clients inside (198.18.0.0/16 by
default), servers outside (198.19.0.0/16); an active-mode FTP data connection
is opened from outside. The far end answers what it was delivered, so
addresses translated by the cluster (NAT) are followed.

TCP is a small but real implementation: SYN/SYN-ACK/ACK with MSS, window
scaling and SACK-permitted options; in-order delivery with cumulative ACKs,
delayed ACKs, go-back-N retransmission on an exponential timer, and FIN
handshakes. Every segment it sends is one the kernel's window tracking
(tcp_in_window, as node.conntrack models it) accepts: the tests run the
packets through Conntrack.commit and the library firewall. A flow whose
retransmissions run out (the path stayed dead) is broken.

UDP and ICMP echo flows are request/response with the same timer; FTP runs a
control session (USER, PASS, then PASV or PORT + RETR per transfer, QUIT)
whose transfers each open a data connection the FTP helper expects (RELATED).
"""

from __future__ import annotations

import collections
import heapq
import ipaddress
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from node.conntrack import tuple_of
from node.packet import (
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    Icmp,
    Packet,
    Tcp,
    TcpOptions,
    Udp,
    ip_bytes,
    ip_str,
    tcp,
)
from scenarios.model import (
    F_CLOSE,
    F_OPEN,
    F_STALL,
    F_TRANSFER,
    Op,
    TrafficProfile,
    flow_key,
)

ORIG, REPLY = 0, 1
INSIDE, OUTSIDE = "inside", "outside"
PENDING, OPENING, ESTABLISHED, CLOSING, CLOSED, BROKEN = (
    "pending", "opening", "established", "closing", "closed", "broken")

M, H = 0xFFFFFFFF, 0x80000000
MSS, WSCALE = 1460, 7
SYN_WINDOW = (64240, 65160)  # what Linux clients and servers put in their SYN / SYN-ACK
WINDOW = 502  # 502 << 7 = 64256 bytes, the scaled window after the handshake
SYN_OPTIONS = TcpOptions(mss=MSS, wscale=WSCALE, sackok=True)
SA, PA, FA = TCP_SYN | TCP_ACK, TCP_PSH | TCP_ACK, TCP_FIN | TCP_ACK
MAX_IN_FLIGHT = 4  # segments a sender has unacknowledged
FTP_SEGMENTS = 4  # data segments per FTP transfer
CLIENT_PORTS = range(10000, 60000)
_FILL = bytes(range(256)) * 6


@dataclass(frozen=True)
class Timing:
    """Retransmission and ACK timers (seconds). A flow is broken when a
    segment or request is still unanswered after `retries` retransmissions:
    with the defaults, about 11 s without progress."""

    rto: float = 0.2  # Linux TCP_RTO_MIN: the least RTO, whatever the RTT
    rto_max: float = 1.0
    retries: int = 12
    ack_delay: float = 0.04  # Linux TCP_DELACK_MIN


class RttEstimator:
    """RFC 6298 (as Linux's tcp_rtt_estimator): SRTT and RTTVAR from samples of
    segments sent once (Karn), RTO = SRTT + 4 * RTTVAR. One estimator for the
    whole workload: every flow crosses the same cluster, and most flows are
    too idle to keep an estimate of their own. Under load (a queue in a node)
    the RTO grows with the RTT instead of retransmitting what is only late."""

    __slots__ = ("rttvar", "samples", "srtt")

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.samples = 0

    def sample(self, r: float) -> None:
        if r < 0:
            return
        self.samples += 1
        if self.srtt is None:
            self.srtt, self.rttvar = r, r / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)
            self.srtt = 0.875 * self.srtt + 0.125 * r

    def rto(self, floor: float) -> float:
        return floor if self.srtt is None else max(floor, self.srtt + 4 * self.rttvar)


@dataclass(frozen=True, slots=True)
class Send:
    flow_id: str
    direction: int  # ORIG or REPLY
    packet: Packet
    side: str  # INSIDE or OUTSIDE: where the sender is


@dataclass(frozen=True)
class FlowView:
    """A flow's state and the fate of its packets, as the generator saw them."""

    id: str
    profile: str
    proto: str  # tcp, udp, icmp, ftp (the control connection), ftp-data
    key: str  # model.flow_key of its original tuple ("" before it opened)
    state: str
    opened_at: float | None
    established_at: float | None
    closed_at: float | None
    reason: str  # why it broke
    sent: int
    delivered: int
    lost: int
    hw: int  # deliveries reported as forwarded in hardware
    sw: int
    retransmits: int
    translated: bool  # the far end saw other addresses than were sent (NAT)
    parent: str | None = None


def _segment(src: bytes, dst: bytes, sport: int, dport: int, flags: int, seq: int, ack: int,
             window: int, payload: bytes) -> Packet:
    """node.packet.tcp() for a segment without options, built straight in its
    parsed form (the constructors' round trip through the codec costs most of
    the generator's time; the tests check the two agree)."""
    if flags & TCP_SYN:
        return Packet(4, src, dst, IPPROTO_TCP,
                      Tcp(sport, dport, seq, ack, flags, window, 0, _SYN.options,
                          _SYN.raw_options), payload,
                      length=40 + len(_SYN.raw_options) + len(payload))
    return Packet(4, src, dst, IPPROTO_TCP, Tcp(sport, dport, seq, ack, flags, window),
                  payload, length=40 + len(payload))


_SYN: Tcp = tcp("198.18.0.1", "198.19.0.1", 1, 1, TCP_SYN, options=SYN_OPTIONS).l4  # type: ignore[assignment]


def _datagram(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> Packet:
    """node.packet.udp(), built straight in its parsed form."""
    return Packet(4, src, dst, IPPROTO_UDP, Udp(sport, dport), payload, length=28 + len(payload))


def _echo(src: bytes, dst: bytes, ident: int, seq: int, payload: bytes, reply: bool) -> Packet:
    """node.packet.icmp_echo(), built straight in its parsed form."""
    return Packet(4, src, dst, IPPROTO_ICMP, Icmp(0 if reply else 8, 0, ident, seq), payload,
                  length=28 + len(payload))


def _after(a: int, b: int) -> bool:
    return a != b and ((a - b) & M) < H


# ================================================================ flows
class _Flow:
    """What every flow has: identity, addresses, state and counters."""

    proto = ""

    def __init__(self, gen: TrafficGen, fid: str, prof: TrafficProfile, orig: tuple[bytes, int],
                 resp: tuple[bytes, int], orig_side: str, parent: _Flow | None) -> None:
        self.gen, self.id, self.prof, self.parent = gen, fid, prof, parent
        self.orig, self.resp, self.orig_side = orig, resp, orig_side
        self.reply_to: tuple[bytes, bytes, int, int] | None = None  # learnt at the far end
        self.key = ""
        self.state = PENDING
        self.opened_at: float | None = None
        self.established_at: float | None = None
        self.closed_at: float | None = None
        self.close_at: float | None = None
        self.reason = ""
        self.sent = self.delivered = self.lost = self.hw = self.sw = self.retransmits = 0
        self.translated = False
        self.children = 0
        self.wake = float("inf")  # the earliest wake-up queued for this flow
        self.backlog: _Opener | None = None  # whose handshake backlog it occupies
        self.close_slot = False  # one of the generator's closes under way (close_all)

    @property
    def live(self) -> bool:
        return self.state not in (CLOSED, BROKEN)

    def side(self, direction: int) -> str:
        if direction == ORIG:
            return self.orig_side
        return OUTSIDE if self.orig_side == INSIDE else INSIDE

    def emit(self, direction: int, pkt: Packet) -> None:
        if not self.key and direction == ORIG:
            self.key = flow_key(tuple_of(pkt))
        self.sent += 1
        self.gen.outbox.append(Send(self.id, direction, pkt, self.side(direction)))
        self.gen.touched.add(self)  # its timers may have moved: re-armed after this step

    def learn(self, direction: int, pkt: Packet) -> None:
        """The far end answers what it was delivered (NAT included)."""
        sport, dport = getattr(pkt.l4, "sport", 0), getattr(pkt.l4, "dport", 0)
        if direction == ORIG:
            if self.reply_to is None:
                self.reply_to = (pkt.dst, pkt.src, dport, sport)
            if (pkt.src, pkt.dst) != (self.orig[0], self.resp[0]) or (
                    sport and (sport, dport) != (self.orig[1], self.resp[1])):
                self.translated = True

    def addresses(self, direction: int) -> tuple[bytes, bytes, int, int]:
        if direction == ORIG:
            return self.orig[0], self.resp[0], self.orig[1], self.resp[1]
        assert self.reply_to is not None
        return self.reply_to

    def op(self, type_: str, f: str, now: float, **extra: Any) -> None:
        value: dict[str, Any] = {"key": self.key, "proto": self.proto, "profile": self.prof.name}
        if self.parent is not None:
            value["parent"] = self.parent.id
        value.update(extra)
        self.gen.ops.append(Op(type_, self.id, now, f, value))

    def _handshake_over(self) -> None:
        if self.backlog is not None:
            self.backlog.opening -= 1
            self.backlog = None

    def _ended(self) -> None:
        self._handshake_over()
        if self.close_slot:
            self.close_slot = False
            self.gen.closing -= 1

    def established(self, now: float) -> None:
        if self.established_at is None:
            self.established_at = now
            self.state = ESTABLISHED
            self._handshake_over()
            self.op("ok", F_OPEN, now)

    def start_close(self, now: float) -> None:
        if self.state in (OPENING, ESTABLISHED):
            self.state = CLOSING
            self.op("invoke", F_CLOSE, now)

    def closed(self, now: float) -> None:
        if self.live:
            if self.state != CLOSING:
                self.op("invoke", F_CLOSE, now)
            self.state, self.closed_at = CLOSED, now
            self._ended()
            self.op("ok", F_CLOSE, now)

    def broken(self, now: float, reason: str) -> None:
        if not self.live:
            return
        f = F_OPEN if self.established_at is None else F_CLOSE if self.state == CLOSING \
            else F_TRANSFER
        self.state, self.reason, self.closed_at = BROKEN, reason, now
        self._ended()
        self.op("fail", f, now, reason=reason)

    # the contract of a flow kind
    def open(self, now: float) -> None:
        raise NotImplementedError

    def receive(self, direction: int, pkt: Packet, now: float) -> None:
        raise NotImplementedError

    def tick(self, now: float) -> None:
        raise NotImplementedError

    def deadline(self) -> float | None:
        raise NotImplementedError

    def close(self, now: float) -> None:
        """Begin closing now (the run is ending)."""
        self.close_at = now

    def view(self) -> FlowView:
        return FlowView(self.id, self.prof.name, self.proto, self.key, self.state,
                        self.opened_at, self.established_at, self.closed_at, self.reason,
                        self.sent, self.delivered, self.lost, self.hw, self.sw,
                        self.retransmits, self.translated,
                        self.parent.id if self.parent is not None else None)


# ---------------------------------------------------------------- request/response
class _Datagram(_Flow):
    """UDP or ICMP echo: one request at a time, each answered by the far end;
    an unanswered request is sent again on the retransmission timer."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.proto = self.prof.proto
        self.icmp_id = self.orig[1] & 0xFFFF
        self.seq = 0
        self.waiting_since: float | None = None
        self.retry_at: float | None = None
        self.tries = 0
        self.next_request: float | None = None

    def request(self, now: float) -> None:
        src, dst, sport, dport = self.addresses(ORIG)
        size = self.gen.payload(self.prof)
        self.seq = (self.seq + 1) & 0xFFFF
        if self.proto == "icmp":
            pkt = _echo(src, dst, self.icmp_id, self.seq, _FILL[:size], False)
        else:
            pkt = _datagram(src, dst, sport, dport, _FILL[:size])
        self.emit(ORIG, pkt)
        if self.waiting_since is None:
            self.waiting_since = now
        self.retry_at = now + self.gen.rto(self.tries)

    def open(self, now: float) -> None:
        self.state, self.opened_at = OPENING, now
        self.request(now)
        self.op("invoke", F_OPEN, now)

    def receive(self, direction: int, pkt: Packet, now: float) -> None:
        if direction == ORIG:  # the server answers every request
            src, dst, sport, dport = self.addresses(REPLY)
            size = self.gen.payload(self.prof)
            l4 = pkt.l4
            if isinstance(l4, Icmp):
                answer = _echo(src, dst, l4.id, l4.seq, _FILL[:size], True)
            else:
                answer = _datagram(src, dst, sport, dport, _FILL[:size])
            self.emit(REPLY, answer)
            return
        if self.waiting_since is None:
            return  # an answer to a request already answered
        if self.tries == 0:
            self.gen.rtt.sample(now - self.waiting_since)
        self.waiting_since = self.retry_at = None
        self.tries = 0
        self.established(now)
        if self.prof.packet_rate > 0 and self.state == ESTABLISHED:
            self.next_request = max(now, (self.next_request or now)
                                    + 1.0 / self.prof.packet_rate)

    def tick(self, now: float) -> None:
        if self.retry_at is not None and now >= self.retry_at:
            self.tries += 1
            self.retransmits += 1
            self.op("info", F_STALL, now, retries=self.tries)
            if self.tries > self.gen.timing.retries:
                self.broken(now, f"no answer to {self.tries} requests")
                return
            self.request(now)
        if self.waiting_since is None:
            if self.close_at is not None and now >= self.close_at:
                self.start_close(now)
                self.closed(now)
            elif self.next_request is not None and now >= self.next_request:
                self.request(now)

    def deadline(self) -> float | None:
        waiting = self.waiting_since is not None
        times = [t for t in ((self.retry_at,) if waiting
                             else (self.next_request, self.close_at)) if t is not None]
        return min(times) if times else None


# ---------------------------------------------------------------- TCP
class _Seg:
    __slots__ = ("flags", "payload", "retransmitted", "sent_at", "seq")

    def __init__(self, seq: int, flags: int, payload: bytes) -> None:
        self.seq, self.flags, self.payload = seq, flags, payload
        self.sent_at: float | None = None  # first transmission (RTT samples, Karn)
        self.retransmitted = False

    @property
    def end(self) -> int:
        return (self.seq + len(self.payload) + (self.flags & TCP_SYN) // TCP_SYN
                + (self.flags & TCP_FIN)) & M


class _End:
    """One TCP endpoint: what it sent and what it received."""

    __slots__ = ("ack_at", "ack_sent", "fin_acked", "fin_rcvd", "fin_sent", "queue", "rcv_nxt",
                 "retries", "rto_at", "snd_nxt", "snd_una", "synced", "unacked")

    def __init__(self, isn: int) -> None:
        self.snd_una = self.snd_nxt = isn
        self.rcv_nxt: int | None = None  # set by the peer's SYN
        self.ack_sent: int | None = None  # the last ACK number we sent
        self.unacked: list[_Seg] = []
        self.queue: list[tuple[int, bytes]] = []  # waiting for room in flight
        self.rto_at: float | None = None
        self.ack_at: float | None = None  # a delayed ACK is due
        self.retries = 0
        self.synced = False  # our SYN was acknowledged
        self.fin_sent = self.fin_acked = self.fin_rcvd = False


class _Tcp(_Flow):
    """A TCP connection between two emulated endpoints. Subclasses are the
    applications: what each side says when (hooks below)."""

    proto = "tcp"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        rng = self.gen.rng
        self.ends = (_End(rng.getrandbits(32)), _End(rng.getrandbits(32)))

    # ------------------------------------------------------------ sending
    def segment(self, d: int, seg: _Seg) -> None:
        end = self.ends[d]
        src, dst, sport, dport = self.addresses(d)
        flags = seg.flags
        ack = end.rcv_nxt if flags & TCP_ACK and end.rcv_nxt is not None else 0
        pkt = _segment(src, dst, sport, dport, flags, seg.seq, ack,
                       SYN_WINDOW[d] if flags & TCP_SYN else WINDOW, seg.payload)
        if flags & TCP_ACK:
            end.ack_at, end.ack_sent = None, end.rcv_nxt  # the ACK rides on this segment
        self.emit(d, pkt)

    def send(self, d: int, flags: int, payload: bytes, now: float) -> None:
        """Queue data (and/or SYN/FIN) for sending; sent as the window allows."""
        self.ends[d].queue.append((flags, payload))
        self.push(d, now)

    def push(self, d: int, now: float) -> None:
        end = self.ends[d]
        while end.queue and len(end.unacked) < MAX_IN_FLIGHT:
            flags, payload = end.queue.pop(0)
            seg = _Seg(end.snd_nxt, flags, payload)
            end.snd_nxt = seg.end
            if flags & TCP_FIN:
                end.fin_sent = True
            if seg.end != seg.seq:
                seg.sent_at = now
                end.unacked.append(seg)
                if end.rto_at is None:
                    end.rto_at = now + self.gen.rto(end.retries)
            self.segment(d, seg)

    def ack_now(self, d: int) -> None:
        end = self.ends[d]
        self.segment(d, _Seg(end.snd_nxt, TCP_ACK, b""))

    # ------------------------------------------------------------ receiving
    def open(self, now: float) -> None:
        self.state, self.opened_at = OPENING, now
        self.send(ORIG, TCP_SYN, b"", now)
        self.op("invoke", F_OPEN, now)

    def receive(self, direction: int, pkt: Packet, now: float) -> None:
        th = pkt.l4
        if not isinstance(th, Tcp) or not self.live:
            return
        d = 1 - direction  # the end it arrived at
        end, flags = self.ends[d], th.flags
        if flags & TCP_RST:
            self.broken(now, "reset by the peer")
            return
        if flags & TCP_SYN:
            self.on_syn(d, th, now)
        if flags & TCP_ACK:
            self.on_ack(d, th.ack, now)
        if end.rcv_nxt is None:
            return
        length = len(pkt.payload) + (flags & TCP_FIN)
        if flags & TCP_SYN or not length:
            self.progress(d, now)
            return
        if th.seq != end.rcv_nxt:
            self.ack_now(d)  # a duplicate or a segment after a gap: say where we are
            return
        end.rcv_nxt = (end.rcv_nxt + length) & M
        if flags & TCP_FIN:
            end.fin_rcvd = True
        if pkt.payload:
            self.data(d, pkt.payload, now)
        if flags & TCP_FIN:
            self.peer_fin(d, now)
        if end.ack_sent != end.rcv_nxt and self.live:
            if flags & TCP_FIN:
                self.ack_now(d)  # a FIN is acknowledged at once
            elif end.ack_at is None:
                end.ack_at = now + self.gen.timing.ack_delay
        self.progress(d, now)

    def on_syn(self, d: int, th: Tcp, now: float) -> None:
        end = self.ends[d]
        if end.rcv_nxt is None:
            end.rcv_nxt = (th.seq + 1) & M
            if d == REPLY:
                self.send(REPLY, SA, b"", now)
        elif d == REPLY and not end.synced:
            self.retransmit(REPLY, now)  # the client did not get our SYN-ACK
        elif d == ORIG:
            self.ack_now(ORIG)  # a repeated SYN-ACK: our ACK was lost

    def on_ack(self, d: int, ack: int, now: float) -> None:
        end = self.ends[d]
        if not _after(ack, end.snd_una) or _after(ack, end.snd_nxt):
            return
        end.snd_una = ack
        while end.unacked and not _after(end.unacked[0].end, ack):
            seg = end.unacked.pop(0)
            if not seg.retransmitted and seg.sent_at is not None:
                self.gen.rtt.sample(now - seg.sent_at)
            if seg.flags & TCP_SYN:
                end.synced = True
            if seg.flags & TCP_FIN:
                end.fin_acked = True
        end.retries = 0
        end.rto_at = now + self.gen.rto(0) if end.unacked else None
        self.push(d, now)
        if d == ORIG and end.synced and end.rcv_nxt is not None \
                and self.established_at is None:
            self.ack_now(ORIG)
            self.established(now)
            self.connected(ORIG, now)
        elif d == REPLY and end.synced and not self.responder_up:
            self.responder_up = True
            self.connected(REPLY, now)

    responder_up = False

    def progress(self, d: int, now: float) -> None:
        """After each delivery: is the connection over?"""
        a, b = self.ends
        if a.fin_acked and b.fin_acked and a.fin_rcvd and b.fin_rcvd:
            self.closed(now)
            self.finished(now)

    def retransmit(self, d: int, now: float) -> None:
        end = self.ends[d]
        for seg in end.unacked:
            self.retransmits += 1
            seg.retransmitted = True
            self.segment(d, seg)
        end.rto_at = now + self.gen.rto(end.retries)

    # ------------------------------------------------------------ time
    def tick(self, now: float) -> None:
        for d in (ORIG, REPLY):
            end = self.ends[d]
            if end.rto_at is not None and now >= end.rto_at:
                end.retries += 1
                self.op("info", F_STALL, now, retries=end.retries,
                        side=self.side(d))
                if end.retries > self.gen.timing.retries:
                    self.broken(now, f"{self.side(d)} end: no ACK after {end.retries - 1} "
                                "retransmissions")
                    return
                self.retransmit(d, now)
            if end.ack_at is not None and now >= end.ack_at:
                self.ack_now(d)
        if self.live:
            self.app_tick(now)

    def deadline(self) -> float | None:
        times = [t for e in self.ends for t in (e.rto_at, e.ack_at) if t is not None]
        app = self.app_deadline()
        if app is not None:
            times.append(app)
        return min(times) if times else None

    def shutdown(self, d: int, now: float) -> None:
        """The end `d` closes its side (FIN)."""
        if not self.ends[d].fin_sent and not any(f & TCP_FIN for f, _ in self.ends[d].queue):
            if d == ORIG or self.state != CLOSING:
                self.start_close(now)
            self.send(d, FA, b"", now)

    # ------------------------------------------------------------ application hooks
    def connected(self, d: int, now: float) -> None:
        """The end `d` is established."""

    def data(self, d: int, payload: bytes, now: float) -> None:
        """In-order data arrived at the end `d`."""

    def peer_fin(self, d: int, now: float) -> None:
        """The end `d` got the peer's FIN: close too (a passive close)."""
        self.shutdown(d, now)

    def finished(self, now: float) -> None:
        """Both FINs were exchanged and acknowledged."""

    def app_tick(self, now: float) -> None:
        pass

    def app_deadline(self) -> float | None:
        return None

    def broken(self, now: float, reason: str) -> None:
        super().broken(now, reason)
        for end in self.ends:
            end.rto_at = end.ack_at = None
            end.queue.clear()


class _RequestResponse(_Tcp):
    """The client sends a request `packet_rate` times a second, once the
    previous one is answered; the server answers each."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.next_request: float | None = None
        self.waiting = False

    def connected(self, d: int, now: float) -> None:
        if d == ORIG and self.prof.packet_rate > 0:
            self.next_request = now + self.gen.rng.uniform(0, 1.0 / self.prof.packet_rate)

    def data(self, d: int, payload: bytes, now: float) -> None:
        if d == REPLY:
            self.send(REPLY, PA, _FILL[:max(1, self.gen.payload(self.prof))], now)
        elif self.waiting:
            self.waiting = False
            if self.next_request is not None:
                self.next_request = max(now, self.next_request)

    def app_tick(self, now: float) -> None:
        if self.waiting or self.established_at is None or self.state != ESTABLISHED:
            return
        if self.close_at is not None and now >= self.close_at:
            self.shutdown(ORIG, now)
        elif self.next_request is not None and now >= self.next_request:
            self.waiting = True
            self.next_request = now + 1.0 / self.prof.packet_rate
            self.send(ORIG, PA, _FILL[:max(1, self.gen.payload(self.prof))], now)

    def app_deadline(self) -> float | None:
        if self.waiting or self.state != ESTABLISHED:
            return None
        times = [t for t in (self.next_request, self.close_at) if t is not None]
        return min(times) if times else None


# ---------------------------------------------------------------- FTP
_PASV = re.compile(rb"^227 [^(]*\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)")


def _host_port(addr: bytes, port: int) -> bytes:
    return ",".join([*ip_str(addr).split("."), str(port >> 8), str(port & 0xFF)]).encode()


class _FtpControl(_Tcp):
    """An FTP session: log in, then one transfer (RETR over a data connection)
    every 1/packet_rate seconds (just one with packet_rate 0), QUIT at the end."""

    proto = "ftp"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.next_transfer: float | None = None
        self.busy = False  # a transfer (or the login) is in progress
        self.quitting = False
        self.data_flow: _FtpData | None = None
        self.retr_seen = False  # the server got RETR for the current transfer
        self.port_target: tuple[bytes, int] | None = None  # active mode: the client's PORT
        self.transfers = 0

    def say(self, d: int, line: str, now: float) -> None:
        self.send(d, PA, line.encode() + b"\r\n", now)

    def connected(self, d: int, now: float) -> None:
        if d == REPLY:
            self.say(REPLY, "220 ctlab FTP server ready.", now)
        else:
            self.busy = True  # logging in

    def data(self, d: int, payload: bytes, now: float) -> None:
        if d == REPLY:
            self.server_heard(payload, now)
        else:
            self.client_heard(payload, now)

    def client_heard(self, line: bytes, now: float) -> None:
        code = line[:3]
        if code == b"220":
            self.say(ORIG, "USER anonymous", now)
        elif code == b"331":
            self.say(ORIG, "PASS ctlab@", now)
        elif code == b"230":
            self.busy = False
            self.next_transfer = now
        elif code == b"227" and (m := _PASV.match(line)):
            addr = ip_bytes(".".join(g.decode() for g in m.groups()[:4]))
            port = int(m.group(5)) << 8 | int(m.group(6))
            self.data_flow = self.gen.child(self, (self.orig[0], self.gen.client_port(self)),
                                            (addr, port), INSIDE, now)
        elif code == b"200":
            self.say(ORIG, "RETR ctlab.bin", now)
        elif code in (b"226", b"426"):
            self.busy = False
            self.data_flow = None
            if self.prof.packet_rate > 0:
                self.next_transfer = now + 1.0 / self.prof.packet_rate
        elif code == b"221":
            self.shutdown(ORIG, now)

    def server_heard(self, line: bytes, now: float) -> None:
        word = line.split(b" ", 1)[0].strip().upper()
        if word == b"USER":
            self.say(REPLY, "331 Please specify the password.", now)
        elif word == b"PASS":
            self.say(REPLY, "230 Login successful.", now)
        elif word == b"PASV":
            here = self.addresses(REPLY)[0]
            port = self.gen.server_port(self)
            self.say(REPLY, f"227 Entering Passive Mode ({_host_port(here, port).decode()}).",
                     now)
        elif word == b"PORT":
            nums = [int(x) for x in line[5:].strip().split(b",")]
            self.port_target = (ip_bytes(".".join(map(str, nums[:4]))), nums[4] << 8 | nums[5])
            self.say(REPLY, "200 PORT command successful.", now)
        elif word == b"RETR":
            self.say(REPLY, "150 Opening BINARY mode data connection for ctlab.bin.", now)
            if self.prof.ftp_mode == "active" and self.port_target is not None:
                src = self.addresses(REPLY)[0]
                self.data_flow = self.gen.child(self, (src, 20), self.port_target, OUTSIDE, now)
            elif self.data_flow is not None:
                self.data_flow.start_sending(now)
        elif word == b"QUIT":
            self.say(REPLY, "221 Goodbye.", now)

    def data_ready(self, now: float) -> None:
        """Passive mode: the client's data connection is up; ask for the file."""
        self.say(ORIG, "RETR ctlab.bin", now)

    def data_done(self, ok: bool, now: float) -> None:
        if self.live:
            self.say(REPLY, "226 Transfer complete." if ok else
                     "426 Connection closed; transfer aborted.", now)

    def app_tick(self, now: float) -> None:
        if self.busy or self.quitting or self.state != ESTABLISHED:
            return
        if self.close_at is not None and now >= self.close_at:
            self.quitting = True
            self.say(ORIG, "QUIT", now)
        elif self.next_transfer is not None and now >= self.next_transfer:
            self.busy, self.next_transfer = True, None
            self.transfers += 1
            if self.prof.ftp_mode == "passive":
                self.say(ORIG, "PASV", now)
            else:
                port = self.gen.client_port(self)
                self.say(ORIG, "PORT " + _host_port(self.orig[0], port).decode(), now)

    def app_deadline(self) -> float | None:
        if self.busy or self.quitting or self.state != ESTABLISHED:
            return None
        times = [t for t in (self.next_transfer, self.close_at) if t is not None]
        return min(times) if times else None

    def close(self, now: float) -> None:
        self.close_at = now


class _FtpData(_Tcp):
    """One transfer: the FTP server's end sends FTP_SEGMENTS segments, then
    closes; the other end closes in turn."""

    proto = "ftp-data"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        # The FTP server's end: the responder in passive mode, the originator in active.
        self.sender = REPLY if self.orig_side == INSIDE else ORIG
        self.sending = False
        self.up = False

    def connected(self, d: int, now: float) -> None:
        ctl = self.parent
        assert isinstance(ctl, _FtpControl)
        if d == ORIG and self.sender == REPLY:
            ctl.data_ready(now)
        if d == self.sender:
            self.up = True
            if self.sending or self.sender == ORIG:
                self.start_sending(now)

    def start_sending(self, now: float) -> None:
        self.sending = True
        if not self.up:
            return  # when the connection is up
        for _ in range(FTP_SEGMENTS):
            self.send(self.sender, PA, _FILL[:max(1, self.gen.payload(self.prof))], now)
        self.shutdown(self.sender, now)
        self.sending = False
        self.up = False  # sent: do not send again

    def finished(self, now: float) -> None:
        ctl = self.parent
        if isinstance(ctl, _FtpControl):
            ctl.data_done(True, now)

    def broken(self, now: float, reason: str) -> None:
        was_live = self.live
        super().broken(now, reason)
        ctl = self.parent
        if was_live and isinstance(ctl, _FtpControl):
            ctl.data_done(False, now)

    def close(self, now: float) -> None:
        pass  # a transfer finishes by itself


_KINDS: dict[str, type[_Flow]] = {
    "tcp": _RequestResponse,
    "udp": _Datagram,
    "icmp": _Datagram,
    "ftp": _FtpControl,
}


# ================================================================ the generator
class _Opener:
    """One profile's flow openings: `count` flows, `open_rate` a second."""

    def __init__(self, index: int, prof: TrafficProfile) -> None:
        self.index, self.prof = index, prof
        self.opened = 0
        self.opening = 0  # its flows in their handshake now (at most prof.max_opening)
        self.next_client = 0
        self.next_server_port = 0
        self.hosts = [int(h) for h in ipaddress.IPv4Network(prof.clients).hosts()]

    def due(self) -> float | None:
        """When the next flow opens (None: all opened, or the backlog is full:
        the next open waits for one in its handshake to finish)."""
        if self.opened >= self.prof.count or self.opening >= self.prof.max_opening:
            return None
        return self.prof.start + self.opened / self.prof.open_rate

    def client(self) -> tuple[bytes, int]:
        n = self.next_client
        self.next_client += 1
        host = self.hosts[(n // len(CLIENT_PORTS)) % len(self.hosts)]
        return host.to_bytes(4, "big"), CLIENT_PORTS[n % len(CLIENT_PORTS)]


class TrafficGen:
    """Flows of one or more traffic profiles, deterministic from the seed."""

    def __init__(self, profiles: TrafficProfile | Sequence[TrafficProfile], seed: int = 0,
                 timing: Timing = Timing()) -> None:
        profs = (profiles,) if isinstance(profiles, TrafficProfile) else tuple(profiles)
        self.rng = random.Random(seed)
        self.timing = timing
        self.rtt = RttEstimator()
        self.outbox: list[Send] = []
        self.ops: list[Op] = []
        self.touched: set[_Flow] = set()
        self._openers = [_Opener(i, p) for i, p in enumerate(profs)]
        self._flows: dict[str, _Flow] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._tick = 0
        self._closing_at: float | None = None
        # close_all's backlog: at most max_closing flows closing at once
        self.max_closing = max((p.max_opening for p in profs), default=256)
        self.closing = 0
        self._close_queue: collections.deque[_Flow] = collections.deque()

    # ------------------------------------------------------------ helpers for flows
    def rto(self, retries: int) -> float:
        base = min(self.rtt.rto(self.timing.rto), self.timing.rto_max)
        return min(base * (2 ** retries), self.timing.rto_max)

    def payload(self, prof: TrafficProfile) -> int:
        lo, hi = prof.payload
        return lo if lo == hi else self.rng.randint(lo, hi)

    def _opener(self, flow: _Flow) -> _Opener:
        return next(o for o in self._openers if o.prof is flow.prof)

    def client_port(self, flow: _Flow) -> int:
        return self._opener(flow).client()[1]

    def server_port(self, flow: _Flow) -> int:
        op = self._opener(flow)
        op.next_server_port += 1
        return 50000 + op.next_server_port % 10000

    def child(self, parent: _Flow, orig: tuple[bytes, int], resp: tuple[bytes, int],
              side: str, now: float) -> _FtpData:
        parent.children += 1
        fid = f"{parent.id}.d{parent.children}"
        flow = _FtpData(self, fid, parent.prof, orig, resp, side, parent)
        self._flows[fid] = flow
        flow.open(now)
        self._arm(flow)
        return flow

    def _arm(self, flow: _Flow, after: float | None = None) -> None:
        t = flow.deadline() if flow.live else None
        if t is not None and after is not None and t <= after:
            t = after + 1e-6  # a flow that still has work now: next call (never spin)
        if t is not None and t < flow.wake:
            flow.wake = t
            self._tick += 1
            heapq.heappush(self._heap, (t, self._tick, flow.id))

    def _open(self, opener: _Opener, now: float) -> None:
        prof = opener.prof
        fid = f"{prof.name}-{opener.opened}"
        opener.opened += 1
        client = opener.client()
        server = (ip_bytes(prof.server), prof.port)
        flow = _KINDS[prof.proto](self, fid, prof, client, server, INSIDE, None)
        if prof.duration is not None:
            flow.close_at = now + prof.duration
        if self._closing_at is not None:
            flow.close_at = now
        self._flows[fid] = flow
        flow.backlog = opener
        opener.opening += 1
        flow.open(now)
        self._arm(flow)

    # ------------------------------------------------------------ the API
    def next_packets(self, now: float) -> list[Send]:
        """Everything due by `now`: new flows, requests, answers, ACKs,
        retransmissions, closes."""
        if self._closing_at is None:
            for opener in self._openers:
                while (t := opener.due()) is not None and t <= now:
                    self._open(opener, now)
        elif self._close_queue:
            self._start_closes(now)
        heap = self._heap
        while heap and heap[0][0] <= now:
            t, _, fid = heapq.heappop(heap)
            flow = self._flows[fid]
            if t != flow.wake:
                continue  # superseded by an earlier wake-up
            flow.wake = float("inf")
            if flow.live:
                flow.tick(now)
            self._arm(flow, after=now)
            self._arm_touched(now)
        out, self.outbox = self.outbox, []
        return out

    def _arm_touched(self, now: float) -> None:
        while self.touched:
            self._arm(self.touched.pop(), after=now)

    def deliver(self, flow_id: str, direction: int, packet: Packet, now: float, *,
                via: str = "", path: str = "") -> None:
        """The packet sent in `direction` arrived at the far end as `packet`
        (after the cluster's NAT), through node `via` on `path` (hw or sw)."""
        flow = self._flows[flow_id]
        flow.delivered += 1
        if path == "hw":
            flow.hw += 1
        elif path == "sw":
            flow.sw += 1
        flow.learn(direction, packet)
        flow.receive(direction, packet, now)
        self._arm(flow)
        self._arm_touched(now)

    def lost(self, flow_id: str, direction: int, packet: Packet, now: float,
             where: str = "") -> None:
        """The packet was dropped (by a node, a cut link ...): the flow's
        timers will retransmit."""
        self._flows[flow_id].lost += 1

    def close_all(self, now: float) -> None:
        """The run is ending (Jepsen's final generator): open no more flows and
        close every open one now."""
        self._closing_at = now
        self._close_queue.extend(f for f in self._flows.values() if f.live)
        self._start_closes(now)

    def _start_closes(self, now: float) -> None:
        """Begin the queued closes, at most `max_closing` at once (like the
        openings: thousands of FINs at once would only drown the cluster)."""
        queue = self._close_queue
        while queue and self.closing < self.max_closing:
            flow = queue.popleft()
            if flow.live:
                flow.close(now)
                flow.close_slot = True
                self.closing += 1
                self._arm(flow)

    def next_deadline(self) -> float | None:
        """When next_packets() has work next (None: nothing, ever, unless a
        delivery comes)."""
        times = [] if not self.outbox else [float("-inf")]
        if self._close_queue and self.closing < self.max_closing:
            times.append(float("-inf"))
        if self._heap:
            times.append(self._heap[0][0])
        if self._closing_at is None:
            times += [t for o in self._openers if (t := o.due()) is not None]
        return min(times) if times else None

    def take_ops(self) -> list[Op]:
        ops, self.ops = self.ops, []
        return ops

    def established_at(self, flow_id: str) -> float | None:
        """When the flow was established (None: not yet, or never)."""
        return self._flows[flow_id].established_at

    def flow(self, flow_id: str) -> FlowView:
        return self._flows[flow_id].view()

    def flows(self) -> list[FlowView]:
        return [f.view() for f in self._flows.values()]

    def counts(self) -> dict[str, int]:
        """Flows by state (pending: not opened yet)."""
        out = dict.fromkeys((PENDING, OPENING, ESTABLISHED, CLOSING, CLOSED, BROKEN), 0)
        for f in self._flows.values():
            out[f.state] += 1
        if self._closing_at is None:
            out[PENDING] += sum(o.prof.count - o.opened for o in self._openers)
        return out

    @property
    def finished(self) -> bool:
        """Every flow that will ever open has opened and is closed or broken."""
        c = self.counts()
        return c[PENDING] + c[OPENING] + c[ESTABLISHED] + c[CLOSING] == 0

    def live_flows(self) -> Iterable[str]:
        return (fid for fid, f in self._flows.items() if f.live)


__all__ = ["BROKEN", "CLOSED", "CLOSING", "ESTABLISHED", "INSIDE", "OPENING", "ORIG",
           "OUTSIDE", "PENDING", "REPLY", "FlowView", "RttEstimator", "Send", "Timing",
           "TrafficGen"]
