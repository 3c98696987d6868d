"""Action instances, the per-kind index tables, and running an action list.

Transcribes net/sched/act_api.c: tcf_idr_check_alloc/tcf_idr_create (an index
table per kind, indexes from 1), binding (a filter that names an existing
index shares that action, its parameters unchanged), refcnt/bindcnt, and
tcf_action_exec (pipe, jump with its TTL, goto chain, repeat).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from node.tc.errors import KernelError
from node.tc.stats import Stats
from node.tc.verdict import (
    REPEAT_TTL,
    TC_ACT_EXT_VAL_MASK,
    TC_ACT_GOTO_CHAIN,
    TC_ACT_JUMP,
    TC_ACT_OK,
    TC_ACT_PIPE,
    TC_ACT_REPEAT,
    TC_ACT_SHOT,
    TCA_ACT_MAX_PRIO,
    control_valid,
    ext_cmp,
)

if TYPE_CHECKING:
    from node.tc.args import Args
    from node.tc.out import Out
    from node.tc.skb import Env, Skb

# TCA_ACT_FLAGS_* (include/uapi/linux/pkt_cls.h)
ACT_FLAGS_NO_PERCPU_STATS = 1 << 0
ACT_FLAGS_SKIP_HW = 1 << 1
ACT_FLAGS_SKIP_SW = 1 << 2
ACT_FLAGS_YES_PERCPU = 1 << 16  # not a kernel flag: see parse.py (tdc case 3991)
# TCA_ACT_HW_STATS_*
HW_STATS_IMMEDIATE = 1 << 0
HW_STATS_DELAYED = 1 << 1
HW_STATS_ANY = HW_STATS_IMMEDIATE | HW_STATS_DELAYED
HW_STATS_ITEMS = (("immediate", HW_STATS_IMMEDIATE), ("delayed", HW_STATS_DELAYED),
                  ("disabled", 0))


@dataclass(frozen=True, slots=True)
class KindSpec:
    """What a kind's iproute2 parser produced: its options, index and verb."""

    params: Any
    index: int = 0
    control: int = TC_ACT_PIPE


@dataclass(frozen=True, slots=True)
class ActSpec:
    """One parsed ``action <kind> ...`` (a TCA_ACT_* nest)."""

    kind: str
    spec: KindSpec
    cookie: bytes | None = None
    hw_stats: int | None = None
    flags: int = 0


class ActionKind(Protocol):
    kind: str

    def parse(self, args: Args) -> KindSpec: ...

    def init(self, spec: KindSpec, env: InitEnv) -> Any: ...

    def print(self, out: Out, action: Action | None, now: float, stats: bool) -> None: ...

    def act(self, action: Action, skb: Skb, env: Env) -> int: ...


@dataclass(slots=True)
class InitEnv:
    """What tcf_<kind>_init() may consult: conntrack helpers, devices, binding."""

    helpers: Mapping[str, Any] = field(default_factory=dict)
    dev_exists: Callable[[str], bool] = lambda name: True
    bind: bool = False


@dataclass(slots=True)
class Action:
    """struct tc_action: one instance, standalone or bound to filters."""

    kind: ActionKind
    index: int
    params: Any
    control: int
    stats: Stats
    cookie: bytes | None = None
    flags: int = 0
    hw_stats: int | None = None
    refcnt: int = 1
    bindcnt: int = 0
    goto_chain: Any = None  # the Chain a "goto chain N" verb holds (tcf_chain_get_by_act)
    in_hw_count: int = 0
    used_hw_stats: int | None = None  # what the card reports it counts with (TCA_ACT_USED_HW_STATS)
    state: Any = None  # per-instance runtime state of the kind (gact determ counter ...)
    run: Any = field(default=None, repr=False, compare=False)  # kind.act, bound once

    def __post_init__(self) -> None:
        self.run = self.kind.act

    @property
    def name(self) -> str:
        return self.kind.kind


class ActionTable:
    """tcf_idrinfo of every kind: kind -> index -> Action."""

    def __init__(self) -> None:
        self._idr: dict[str, dict[int, Action]] = {}

    def get(self, kind: str, index: int) -> Action | None:
        return self._idr.get(kind, {}).get(index)

    def of_kind(self, kind: str) -> list[Action]:
        idr = self._idr.get(kind, {})
        return [idr[i] for i in sorted(idr)]

    def __iter__(self) -> Iterator[Action]:
        for kind in self._idr:
            yield from self.of_kind(kind)

    def alloc_index(self, kind: str) -> int:
        idr = self._idr.get(kind, {})
        index = 1
        while index in idr:
            index += 1
        return index

    def insert(self, action: Action) -> None:
        self._idr.setdefault(action.name, {})[action.index] = action

    def remove(self, action: Action) -> None:
        self._idr.get(action.name, {}).pop(action.index, None)


def check_control(control: int, bound: bool) -> None:
    """tcf_action_check_ctrlact without the chain part: the verb must be valid,
    and goto needs a filter (a block) to go to."""
    if not control_valid(control):
        raise KernelError(errno.EINVAL, "invalid control action")
    if ext_cmp(control, TC_ACT_GOTO_CHAIN) and not bound:
        raise KernelError(errno.EINVAL, "can't goto NULL proto/chain")


_OPCODE = 0xFFFFFFFF & ~TC_ACT_EXT_VAL_MASK


def exec_actions(actions: list[Action], skb: Skb, env: Env, start: int = 0) -> int:
    """tcf_action_exec: run the list; returns the verdict for the classifier.
    `start` > 0 is tcf_exts_exec_ex(exts, act_index): the actions from that index
    on, as a list of their own (a hardware miss resuming in software)."""
    if start:
        actions = actions[start:]
    ret = TC_ACT_OK
    for i, a in enumerate(actions):  # the common case: no jump, no repeat
        if a.flags & ACT_FLAGS_SKIP_SW:
            continue
        ret = a.run(a, skb, env)
        if ret == TC_ACT_PIPE:
            continue
        if ret == TC_ACT_REPEAT or ret & _OPCODE == TC_ACT_JUMP:
            return exec_graph(actions, skb, env, i, ret)
        if ret & _OPCODE == TC_ACT_GOTO_CHAIN and a.goto_chain is None:
            return TC_ACT_SHOT  # SKB_DROP_REASON_TC_CHAIN_NOTFOUND
        return ret
    return ret


def exec_graph(actions: list[Action], skb: Skb, env: Env, current: int, ret: int) -> int:
    """tcf_action_exec from the first repeat or jump verb on (actions[current]
    returned `ret`): TC_ACT_REPEAT re-runs the action (TTL 32), jump N restarts
    the list N actions in (TTL 32 jumps)."""
    jmp_prgcnt = 0
    jmp_ttl = TCA_ACT_MAX_PRIO
    nr = len(actions)
    skip = current  # resume at actions[current], whose verdict is `ret`
    restart = True
    while restart:
        restart = False
        for i, b in enumerate(actions):
            if skip >= 0:
                if i < skip:
                    continue
                skip = -1
            else:
                if jmp_prgcnt > 0:
                    jmp_prgcnt -= 1
                    continue
                if b.flags & ACT_FLAGS_SKIP_SW:
                    continue
                ret = b.run(b, skb, env)
                if ret == TC_ACT_PIPE:
                    continue
            if ret == TC_ACT_REPEAT:
                ttl = REPEAT_TTL
                while ret == TC_ACT_REPEAT:
                    ttl -= 1
                    if not ttl:
                        return TC_ACT_OK  # "TC_ACT_REPEAT abuse ?"
                    ret = b.run(b, skb, env)
            opcode = ret & _OPCODE
            if opcode == TC_ACT_JUMP:
                jmp_prgcnt = ret & TCA_ACT_MAX_PRIO_MASK
                if not jmp_prgcnt or jmp_prgcnt > nr:
                    return TC_ACT_OK  # faulty opcode, stop pipeline
                jmp_ttl -= 1
                if jmp_ttl <= 0:
                    return TC_ACT_OK  # faulty graph
                restart = True
                break
            if opcode == TC_ACT_GOTO_CHAIN and b.goto_chain is None:
                return TC_ACT_SHOT  # SKB_DROP_REASON_TC_CHAIN_NOTFOUND
            if ret != TC_ACT_PIPE:
                return ret
    return ret


TCA_ACT_MAX_PRIO_MASK = 0x1FF
__all__ = [
    "TC_ACT_EXT_VAL_MASK",
    "ActSpec",
    "Action",
    "ActionTable",
    "InitEnv",
    "KindSpec",
    "exec_actions",
    "exec_graph",
]
