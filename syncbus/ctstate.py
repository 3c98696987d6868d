"""Conntrack entries to replication records and back, and the TCP merge rule.

Pure and engine-facing: reads and builds node.conntrack Entry / TcpConn /
NatBinding objects. The TCP block mirrors TcpTracker.export()/restore() field
for field (tests check that export() of a rebuilt entry equals the original's),
but is read and written directly: this runs once per replicated event.

What a receiver keeps for itself: the IPS_OFFLOAD / IPS_HW_OFFLOAD bits belong
to its own card (the sender's are in CtUpsert.offload), and IPS_DYING /
IPS_TEMPLATE never describe a live replicated entry.
"""

from __future__ import annotations

import struct
from typing import Any

from node.conntrack.entry import (
    IPS_DYING,
    IPS_HW_OFFLOAD,
    IPS_OFFLOAD,
    IPS_SRC_NAT_DONE,
    IPS_TEMPLATE,
    Entry,
)
from node.conntrack.nat import NatBinding, NatRange, register
from node.conntrack.table import Conntrack
from node.conntrack.tcp import (
    PACKED,
    PACKED_FIELDS,
    TcpConn,
    freeze,
    packed_state,
    packed_values,
    thaw,
)
from node.conntrack.tcp_table import (
    IP_CT_TCP_FLAG_BE_LIBERAL,
    IP_CT_TCP_FLAG_CLOSE_INIT,
    sCL,
    sCW,
    sES,
    sFW,
    sLA,
    sNO,
    sS2,
    sSR,
    sSS,
    sTW,
)
from node.conntrack.tuple import Tuple
from syncbus import codec
from syncbus.expectstate import apply_expects, expect_infos
from syncbus.messages import (
    OFFLOAD_HW,
    OFFLOAD_NONE,
    OFFLOAD_SW,
    ConnId,
    CtDelete,
    CtUpsert,
    NatInfo,
    NatRangeInfo,
    TcpDir,
    TcpInfo,
)

LOCAL_BITS = IPS_OFFLOAD | IPS_HW_OFFLOAD  # the receiver's own card decides these
DROP_BITS = IPS_DYING | IPS_TEMPLATE
IPPROTO_TCP = 6
_new = tuple.__new__  # builds a NamedTuple in C, without its Python __new__
_M = 0xFFFFFFFF
_H = 0x80000000

# "Most advanced state wins" (pfsync_upd_tcp()): a rank that only grows over a
# connection's life, in the order conntrack's state table moves through them
# (tcp_conntracks: a FIN makes FIN_WAIT, an ACK then CLOSE_WAIT, the other
# side's FIN LAST_ACK, never backwards). Two members that each saw one side's
# FIN (asymmetric paths) hold FIN_WAIT / CLOSE_WAIT with CLOSE_INIT set in
# different directions: joined, that is LAST_ACK (merge_tcp()).
TCP_RANK = {sNO: 0, sSS: 1, sS2: 2, sSR: 3, sES: 4, sFW: 5, sCW: 6, sLA: 7, sTW: 8, sCL: 9}
_CLOSE_INIT = IP_CT_TCP_FLAG_CLOSE_INIT


# ---------------------------------------------------------------- entry -> record
def offload_state(status: int) -> int:
    if status & IPS_HW_OFFLOAD:
        return OFFLOAD_HW
    return OFFLOAD_SW if status & IPS_OFFLOAD else OFFLOAD_NONE


# TcpInfo's fields in its order, as TcpConn's flat slots (td_end0 is
# seen[ORIGINAL].td_end), read with one C call per connection; a flow table's
# connection has them packed in this order (node.conntrack.tcp.freeze()).
TCP_FIELDS = PACKED_FIELDS
tcp_values = packed_values


def tcp_block(proto: TcpConn | bytes | None) -> tuple[int, ...]:
    """The TCP block's values (TCP_FIELDS) of a TCP entry's `entry.proto`."""
    if proto.__class__ is bytes:
        return packed_state(proto)
    return tcp_values(proto if proto is not None else _NO_TCP)


def tcp_info(conn: TcpConn | bytes | None) -> TcpInfo:
    """The record of a TCP entry's state (`entry.proto`). TcpConn keeps both
    directions' struct ip_ct_tcp_state as flat slots suffixed with the direction
    (td_end0 is seen[ORIGINAL].td_end), as TcpInfo does; they are read directly."""
    return _new(TcpInfo, tcp_block(conn))


def nat_info(binding: Any) -> NatInfo | None:
    if not isinstance(binding, NatBinding) or (binding.src is None and binding.dst is None):
        return None
    return NatInfo(_range_info(binding.src), _range_info(binding.dst))


def _range_info(rng: NatRange | None) -> NatRangeInfo | None:
    if rng is None:
        return None
    return NatRangeInfo(rng.kind, rng.min_addr, rng.max_addr, rng.min_port, rng.max_port,
                        rng.flags)


def upsert_of(entry: Entry, conn: ConnId, now: float) -> CtUpsert:
    """The replication record of `entry`'s current state."""
    status = entry.status
    master = entry.master
    nat = entry.nat
    return _new(CtUpsert, (
        conn, entry.orig, entry.reply, entry.zone, status & ~DROP_BITS,
        max(entry.expires_at - now, 0.0), entry.timeout, max(now - entry.created, 0.0),
        entry.mark, entry.labels, entry.helper, master.orig if master is not None else None,
        tcp_info(entry.proto) if entry.orig.proto == IPPROTO_TCP else None,
        nat_info(nat) if nat is not None else None, offload_state(status),
        expect_infos(entry, now)))


_NO_TCP = TcpConn()  # what a TCP entry without tracker state publishes (never written)


def pack_entry(entry: Entry, conn: ConnId, now: float, origin: str, epoch: int) -> bytes:
    """codec.pack_item(upsert_of(entry, conn, now), origin, epoch), without
    building the record for the common case (the sender's own connection, no
    labels, helper, master or NAT binding): the send path runs it per event."""
    ext = entry.ext  # labels, helper, master, expectations and NAT live there
    if conn.creator != origin or conn.epoch != epoch or (ext is not None and (
            ext.labels or ext.helper is not None or ext.master is not None or ext.expects
            or (ext.nat is not None and nat_info(ext.nat) is not None))):
        return codec.pack_item(upsert_of(entry, conn, now), origin, epoch)
    orig = entry.orig
    tcp = tcp_block(entry.proto) if orig[1] == IPPROTO_TCP else None
    status = entry.status
    return codec.pack_own_upsert(
        conn.id, orig, entry.reply, entry.zone, status & ~DROP_BITS,
        entry.expires_at - now, entry.timeout, now - entry.created, entry.mark,
        offload_state(status), tcp)


def delete_of(conn: ConnId, orig: Any, reply: Any, zone: int) -> CtDelete:
    return CtDelete(conn, orig, reply, zone)


# ---------------------------------------------------------------- record -> entry
def _fill(c: TcpConn, info: TcpInfo) -> TcpConn:
    """Write the record's TCP state into `c`, every slot."""
    (c.state, c.td_end0, c.td_maxend0, c.td_maxwin0, c.td_maxack0, c.td_scale0, c.flags0,
     c.td_end1, c.td_maxend1, c.td_maxwin1, c.td_maxack1, c.td_scale1, c.flags1,
     c.last_dir, c.last_index, c.last_seq, c.last_ack, c.last_end, c.last_win, c.last_wscale,
     c.last_flags, c.retrans) = info
    return c


def _inject(c: TcpConn, info: TcpInfo) -> TcpConn:
    _fill(c, info)
    c.flags0 |= IP_CT_TCP_FLAG_BE_LIBERAL
    c.flags1 |= IP_CT_TCP_FLAG_BE_LIBERAL
    return c


def tcp_conn(info: TcpInfo) -> TcpConn:
    """A TcpConn equal to what TcpTracker.restore() builds from export()."""
    return _fill(TcpConn.__new__(TcpConn), info)


def injected_tcp(info: TcpInfo) -> TcpConn:
    """tcp_conn() for an entry the replica writes: BE_LIBERAL in both
    directions, as conntrackd forces on what it injects (ctd_force_tcp_be_liberal()).
    The record's windows are those of the last event that published them (events
    are not per packet): data sent since is out of window here, and a standby that
    took over would drop it (connections that are never offloaded, like FTP's
    control connection, have no card to carry them; the card sets it as well)."""
    return _inject(TcpConn.__new__(TcpConn), info)


def packed_tcp(info: TcpInfo) -> bytes | TcpConn:
    """A replica's TCP state as it stores it: the record packed as it came
    (node.conntrack.tcp.PACKED, the TCP block's layout), which reads as
    injected_tcp(info) (a packed state is BE_LIBERAL in both directions). The
    first packet or merge that writes it unpacks it (tcp.thaw()); until then a
    standby's connection costs 91 bytes of TCP state, and its card install
    (tcf_ct_flow_table_add(): BE_LIBERAL, then packed) has nothing to do. A
    record that does not fit the kernel's widths (the codec checks them, so
    only a caller building its own) gets a TcpConn."""
    try:
        return PACKED.pack(*info)
    except struct.error:
        return injected_tcp(info)


def write_injected_tcp(entry: Entry, info: TcpInfo) -> None:
    """entry.proto = injected_tcp(info), into the entry's TcpConn when it has
    one: a standby follows its active's updates without a new object per
    update (each would outlive a young collection, and the old generation's
    growth is what triggers the full collections that stop a node with a
    large table for a large fraction of a second)."""
    c = entry.proto
    if c.__class__ is TcpConn:
        _inject(c, info)
    elif c.__class__ is bytes:  # packed (packed_tcp(), tcp.freeze()): liberal when read
        entry.proto = packed_tcp(info)
    else:
        entry.proto = injected_tcp(info)


def nat_binding(info: NatInfo | None) -> NatBinding | None:
    """Raises ValueError (NatError) for a range the engine refuses."""
    if info is None:
        return None
    return NatBinding(_range(info.src), _range(info.dst))


def _range(r: NatRangeInfo | None) -> NatRange | None:
    if r is None:
        return None
    return NatRange(r.kind, r.min_addr, r.max_addr, r.min_port, r.max_port, r.flags)


def new_entry(up: CtUpsert, ct: Conntrack, now: float) -> Entry:
    """A fresh Entry holding `up`'s state, ready for Conntrack.insert_synced().
    Raises ValueError for a NAT range the engine refuses (nothing is changed)."""
    nat = nat_binding(up.nat)
    entry = new_plain(up.orig, up.reply, up.zone, now, up.status, up.timeout, up.period,
                      up.age, up.mark, None)
    entry.labels = up.labels
    entry.nat = nat
    if up.tcp is not None:
        entry.proto = packed_tcp(up.tcp)
    if up.master is not None:
        entry.master = ct.find(up.master, up.zone)
    if up.helper is not None:
        _set_helper(ct, entry, up.helper)
    return entry


def new_plain(orig: Tuple, reply: Tuple, zone: int, now: float, status: int, timeout: float,
              period: float, age: float, mark: int, tcp: bytes | None) -> Entry:
    """A fresh Entry with the fields every upsert record carries (new_entry()
    adds the rest); `tcp` is a record's TCP block (codec.plain_upsert()), which
    is its packed_tcp()."""
    entry = Entry(orig, reply, zone, now - age, 0)  # (ports: see codec)
    entry.status = status & ~(LOCAL_BITS | DROP_BITS)
    entry.expires_at = now + timeout
    entry.timeout = period
    entry.mark = mark
    if tcp is not None:
        entry.proto = tcp
    return entry


def after_insert(ct: Conntrack, entry: Entry, up: CtUpsert | None = None,
                 now: float = 0.0) -> None:
    """What the engine needs once a synced entry is in the table (built from
    `up`: its expectations go in now that their master is there)."""
    if entry.status & IPS_SRC_NAT_DONE:
        register(ct, entry)  # known to find_appropriate_src(), as ctnetlink does
    if up is not None and up.expects:
        apply_expects(ct, entry, up.expects, now, True)


def _set_helper(ct: Conntrack, entry: Entry, name: str) -> None:
    entry.helper = name
    helper = ct.helpers.get(name)
    from_nlattr = getattr(helper, "from_nlattr", None)
    if from_nlattr is not None:
        from_nlattr(entry)


def replace_state(entry: Entry, up: CtUpsert, ct: Conntrack, now: float) -> None:
    """Overwrite a synced entry with the newer state of the same connection
    (one writer: the standby follows its active). Raises ValueError for a NAT
    range the engine refuses, before changing anything."""
    nat = nat_binding(up.nat) if up.nat is not None else entry.nat
    _write_fields(entry, ct, now, up.status, up.timeout, up.period, up.mark)
    if up.labels or nat is not None or entry.ext is not None:  # (else both stay unset)
        entry.labels = up.labels
        entry.nat = nat
    if up.tcp is not None:
        write_injected_tcp(entry, up.tcp)
    if up.helper is not None and up.helper != entry.helper:
        _set_helper(ct, entry, up.helper)
    if up.expects or entry.expect_count:
        apply_expects(ct, entry, up.expects, now, True)  # the writer's whole set


def replace_plain(entry: Entry, ct: Conntrack, now: float, status: int, timeout: float,
                  period: float, mark: int, tcp: bytes | None) -> None:
    """replace_state() for a plain record's fields (codec.plain_upsert(): no
    labels, helper, NAT ranges or expectations, and the entry has no
    expectations): the same writes, with the TCP block as its packed bytes."""
    _write_fields(entry, ct, now, status, timeout, period, mark)
    if entry.ext is not None:  # the record's labels (none); its NAT binding stays
        entry.labels = 0
    if tcp is not None:
        if entry.proto.__class__ is bytes:  # packed: the block is its packed_tcp()
            entry.proto = tcp
        else:
            write_injected_tcp(entry, _new(TcpInfo, PACKED.unpack(tcp)))


def _write_fields(entry: Entry, ct: Conntrack, now: float, status: int, timeout: float,
                  period: float, mark: int) -> None:
    """What every record from the writer a replica follows overwrites (its
    own card's offload bits stay)."""
    entry.status = (status & ~(LOCAL_BITS | DROP_BITS)) | (entry.status & LOCAL_BITS)
    ct.refresh(entry, timeout, now)  # reschedules in the expiry heap
    entry.timeout = period
    entry.mark = mark


def _set_timeout(ct: Conntrack, entry: Entry, up: CtUpsert, now: float) -> None:
    ct.refresh(entry, up.timeout, now)  # reschedules in the expiry heap
    entry.timeout = up.period


def merge_state(entry: Entry, up: CtUpsert, ct: Conntrack, now: float) -> bool:
    """Several writers (active-active, asymmetric paths, an entry this node's
    own traffic also updates): the most advanced state wins, field by field, and
    nothing moves backwards. Status bits accumulate, the expiry only extends,
    and TCP follows merge_tcp(). Returns True if the entry changed."""
    changed = False
    status = entry.status | (up.status & ~(LOCAL_BITS | DROP_BITS))
    if status != entry.status:
        entry.status = status
        changed = True
    if now + up.timeout > entry.expires_at:
        _set_timeout(ct, entry, up, now)
        changed = True
    if up.tcp is not None:
        if entry.proto is None:
            entry.proto = injected_tcp(up.tcp)
            changed = True
        elif entry.proto.__class__ is bytes:  # packed while a flow table holds it
            conn = thaw(entry)
            assert conn is not None
            changed |= merge_tcp(conn, up.tcp)
            freeze(entry)
        else:
            changed |= merge_tcp(entry.proto, up.tcp)
    if up.expects:  # another writer's expectations join this node's
        apply_expects(ct, entry, up.expects, now, False)
    return changed


def _after(a: int, b: int) -> bool:
    """after(a, b) in u32 sequence space."""
    return ((b - a) & _M) >= _H and a != b


def merge_tcp(conn: TcpConn, info: TcpInfo) -> bool:
    """pfsync's stale rule as a join: the state with the higher rank wins (with
    its last-packet fields); each direction's window edges only move forward in
    sequence space, the maximum window only grows, flags accumulate."""
    changed = False
    if TCP_RANK.get(info.state, 0) > TCP_RANK.get(conn.state, 0):
        conn.state = info.state
        conn.last_dir, conn.last_index = info.last_dir, info.last_index
        conn.last_seq, conn.last_ack, conn.last_end = info.last_seq, info.last_ack, info.last_end
        conn.last_win, conn.last_wscale = info.last_win, info.last_wscale
        conn.last_flags, conn.retrans = info.last_flags, info.retrans
        changed = True
    changed |= _merge_dir(conn, "0", info.direction(0))
    changed |= _merge_dir(conn, "1", info.direction(1))
    # A FIN seen in each direction (CLOSE_INIT is set by the FIN that leaves
    # ESTABLISHED, one per member on asymmetric paths), even when a member has not
    # learnt that direction's window yet (td_maxwin 0 after a flow offload fixup).
    for d, theirs in (("0", info.flags0), ("1", info.flags1)):
        name = "flags" + d
        mine = getattr(conn, name)
        if theirs & _CLOSE_INIT and not mine & _CLOSE_INIT:
            setattr(conn, name, mine | _CLOSE_INIT)
            changed = True
    if conn.flags0 & conn.flags1 & _CLOSE_INIT and conn.state in (sFW, sCW):
        conn.state = sLA  # both sides sent their FIN: only the last ACK is missing
        changed = True
    return changed


_DIR_FIELDS = ("td_end", "td_maxend", "td_maxwin", "td_maxack", "td_scale", "flags")


def _merge_dir(c: TcpConn, d: str, theirs: TcpDir) -> bool:
    if not theirs.td_maxwin:
        return False  # the other side has seen nothing from this sender
    names = [f + d for f in _DIR_FIELDS]
    mine = TcpDir(*(getattr(c, n) for n in names))
    if not mine.td_maxwin:
        new = theirs
    else:
        new = TcpDir(
            theirs.td_end if _after(theirs.td_end, mine.td_end) else mine.td_end,
            theirs.td_maxend if _after(theirs.td_maxend, mine.td_maxend) else mine.td_maxend,
            max(theirs.td_maxwin, mine.td_maxwin),
            theirs.td_maxack if _after(theirs.td_maxack, mine.td_maxack) else mine.td_maxack,
            mine.td_scale, mine.flags | theirs.flags)
    if new == mine:
        return False
    for n, v in zip(names, new, strict=True):
        setattr(c, n, v)
    return True


__all__ = ["LOCAL_BITS", "TCP_RANK", "after_insert", "delete_of", "injected_tcp",
           "merge_state", "merge_tcp", "nat_binding", "nat_info", "new_entry", "new_plain",
           "offload_state", "pack_entry", "packed_tcp", "replace_plain", "replace_state",
           "tcp_conn", "tcp_info", "upsert_of", "write_injected_tcp"]
