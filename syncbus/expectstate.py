"""A master's expectations to replication records and back.

conntrackd's ExpectationSync: the expectations a helper created on the active
travel to the standby, so that the connection they announce (FTP's data
connection) is RELATED there too after a failover. They ride on their
master's record (CtUpsert.expects): a record always lists the master's whole
set, masters go before the connections they expect in a snapshot, and a
master is republished whenever its expectations change
(ExpectTable.take_changed()).

Pure and engine-facing, like ctstate: reads and builds
node.conntrack.expect.Expectation objects.
"""

from __future__ import annotations

from node.conntrack.entry import Entry
from node.conntrack.expect import Expectation
from node.conntrack.table import Conntrack
from syncbus.messages import ExpectInfo

_new = tuple.__new__


def expect_infos(entry: Entry, now: float) -> tuple[ExpectInfo, ...]:
    """The records of `entry`'s expectations (oldest first); () for most entries."""
    exps = entry.expectations
    if not exps:
        return ()
    return tuple(_new(ExpectInfo, (
        e.tuple, e.src_any_addr, e.src_any_port, e.helper, max(e.expires_at - now, 0.0),
        e.timeout, e.flags, e.cls, e.fn)) for e in exps if e.expires_at > now)


def expectation(info: ExpectInfo, master: Entry, now: float) -> Expectation:
    return Expectation(tuple=info.tuple, src_any_addr=info.src_any_addr,
                       src_any_port=info.src_any_port, master=master, helper=info.helper,
                       expires_at=now + info.timeout, timeout=info.period, flags=info.flags,
                       cls=info.cls, fn=info.fn)


def apply_expects(ct: Conntrack, entry: Entry, infos: tuple[ExpectInfo, ...], now: float,
                  replace: bool) -> int:
    """Install a peer's expectations of `entry` (a master in the local table).
    With `replace` (one writer: the record lists the whole set) the ones it no
    longer lists go; otherwise (merging writers) they are only added. Returns
    how many are in the table (a clash with another master's is refused)."""
    if not infos and not (replace and entry.expect_count):
        return 0
    return ct.expect.sync(entry, [expectation(i, entry, now) for i in infos], now, replace)


__all__ = ["apply_expects", "expect_infos", "expectation"]
