"""The conntrack engine: a pure model of Linux nf_conntrack with time passed in."""

from node.conntrack.entry import Entry
from node.conntrack.events import CtEvent, CtView
from node.conntrack.sysctl import Sysctl, SysctlError
from node.conntrack.table import Conntrack, CtResult, Template
from node.conntrack.tuple import Tuple, tuple_of

__all__ = ["Conntrack", "CtEvent", "CtResult", "CtView", "Entry", "Sysctl", "SysctlError",
           "Template", "Tuple", "tuple_of"]
