"""The action table's operations, as net/sched/act_api.c performs them.

- `init_actions`: tcf_action_init for a filter (bind) or ``tc actions add``:
  an index that exists is shared when binding (parameters unchanged), refused
  with EEXIST on a plain add, updated on replace; new instances get the given
  index or the lowest free one.
- `release`: tcf_action_put (bind/refcount drop; the last reference frees the
  action and its goto-chain reference).
- `delete`, `flush`: RTM_DELACTION (bound actions cannot be deleted: EPERM).
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from node.tc.action import Action, ActionTable, ActSpec, InitEnv, check_control
from node.tc.errors import KernelError
from node.tc.stats import Stats
from node.tc.verdict import TC_ACT_EXT_VAL_MASK, is_goto

if TYPE_CHECKING:
    from node.tc.block import Block


def init_actions(table: ActionTable, kinds: Mapping[str, Any], specs: tuple[ActSpec, ...],
                 env: InitEnv, now: float, block: Block | None = None,
                 replace: bool = False) -> list[Action]:
    """Instantiate (or bind to) the actions of `specs`; all or nothing."""
    done: list[tuple[Action, str]] = []  # (action, "new"|"bound"|"replaced")
    try:
        for spec in specs:
            kind = kinds[spec.kind]
            ks = spec.spec
            existing = table.get(spec.kind, ks.index) if ks.index else None
            if existing is not None:
                if env.bind:
                    existing.refcnt += 1
                    existing.bindcnt += 1
                    done.append((existing, "bound"))
                    continue
                if not replace:
                    raise KernelError(errno.EEXIST)
                check_control(ks.control, bound=False)
                existing.params = kind.init(ks, env)
                existing.control = ks.control
                if spec.cookie is not None:
                    existing.cookie = spec.cookie
                done.append((existing, "replaced"))
                continue
            check_control(ks.control, bound=env.bind)
            params = kind.init(ks, env)
            action = Action(kind, ks.index or table.alloc_index(spec.kind), params, ks.control,
                            Stats.created(now), spec.cookie, spec.flags, spec.hw_stats,
                            refcnt=1, bindcnt=1 if env.bind else 0)
            if is_goto(ks.control) and block is not None:
                action.goto_chain = block.chain_hold_by_act(ks.control & TC_ACT_EXT_VAL_MASK)
            table.insert(action)
            done.append((action, "new"))
    except KernelError:
        for action, how in reversed(done):
            if how != "replaced":
                release(table, action, bind=env.bind)
        raise
    return [a for a, _ in done]


def release(table: ActionTable, action: Action, bind: bool) -> bool:
    """__tcf_idr_release: drop one reference; True when the action is gone."""
    if bind:
        action.bindcnt -= 1
    action.refcnt -= 1
    if action.refcnt > 0:
        return False
    table.remove(action)
    chain = action.goto_chain
    if chain is not None:
        chain.block.chain_put_by_act(chain)
        action.goto_chain = None
    return True


def lookup(table: ActionTable, kind: str, index: int) -> Action:
    """tcf_action_get_1's lookup."""
    action = table.get(kind, index)
    if action is None:
        raise KernelError(errno.ENOENT, "TC action with specified index not found")
    return action


def delete(table: ActionTable, refs: tuple[tuple[str, int], ...]) -> None:
    """tca_action_gd(RTM_DELACTION): every referenced action must exist and be
    unbound; then they are released."""
    actions = [lookup(table, kind, index) for kind, index in refs]
    for action in actions:
        if action.bindcnt:
            raise KernelError(errno.EPERM)
    for action in actions:
        release(table, action, bind=False)


def flush(table: ActionTable, kind: str) -> tuple[int, str | None]:
    """tcf_del_walker: release every unbound action of `kind` in index order,
    stopping at the first bound one. Returns (count, warning)."""
    count = 0
    for action in table.of_kind(kind):
        if action.bindcnt > 0:
            if count:
                return count, "Unable to flush all TC actions"
            raise KernelError(errno.EINVAL)
        release(table, action, bind=False)
        count += 1
    return count, None
