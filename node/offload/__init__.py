"""The emulated offload card: act_ct's flow tables in front of an mlx5-like CT
table in hardware. Pure (no clock, no I/O): time is the `now` argument.

  policy.py     should_offload(): which connections enter the flow table
  flowtable.py  the per-zone flow tables, NF_FLOW_* flags, the conntrack fixups
  hwtable.py    the card's CT table: slots, capacity, insertion rate, counters
  card.py       Card: lookup / sw_lookup / offer / poll / install_synced / touch
  work.py       the 1 s GC step and the add / delete / stats commands
  faults.py     netdevsim-style knobs (capacity, rate, latency, injected failures)
  outcomes.py   the values the card returns
  bench.py      the hw_pps, poll_1m_s and bytes_per_conn measurements
"""

from node.offload.card import Card
from node.offload.faults import FaultError, Faults, read_knobs, set_knob
from node.offload.hwtable import HwState
from node.offload.outcomes import (
    FlowInfo,
    HwHit,
    HwMiss,
    InsertDone,
    InsertFailed,
    MissReason,
    PollResult,
    SwHit,
    Teardown,
)
from node.offload.policy import Direction, should_offload, unsupported

__all__ = ["Card", "Direction", "FaultError", "Faults", "FlowInfo", "HwHit", "HwMiss",
           "HwState", "InsertDone", "InsertFailed", "MissReason", "PollResult", "SwHit",
           "Teardown", "read_knobs", "set_knob", "should_offload", "unsupported"]
