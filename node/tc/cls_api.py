"""Filter and chain requests, as net/sched/cls_api.c serves them.

tc_new_tfilter, tc_del_tfilter, tc_get_tfilter, tc_dump_tfilter, tc_ctl_chain
and tc_dump_chain over the model's devices and blocks, with the kernel's
extack messages ("Parent Qdisc doesn't exists", "Filter with specified
priority/protocol not found", "Filter already exists", ...).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import TYPE_CHECKING

from node.tc.act_api import init_actions, release
from node.tc.action import InitEnv
from node.tc.block import Block
from node.tc.chain import Chain, Filter, Proto
from node.tc.cls_flower import (
    CLS_FLAGS_IN_HW,
    CLS_FLAGS_NOT_IN_HW,
    CLS_FLAGS_SKIP_HW,
    CLS_FLAGS_SKIP_SW,
)
from node.tc.errors import KernelError
from node.tc.verdict import TC_ACT_EXT_VAL_MASK

if TYPE_CHECKING:
    from node.tc.model import TcModel
    from node.tc.parse import FilterCmd

Where = tuple[str | None, int, int]  # (device or None for a shared block, block index, parent)


def find_block(model: TcModel, cmd: FilterCmd) -> tuple[Block, Where]:
    """__tcf_qdisc_find + __tcf_qdisc_cl_find + __tcf_block_find."""
    if cmd.block:
        block = model.blocks.get(cmd.block)
        if block is None:
            raise KernelError(errno.EINVAL, "Block of given index was not found")
        return block, (None, block.index, 0)
    dev = model.devices.get(cmd.dev) if cmd.dev else None
    if dev is None:
        raise KernelError(errno.ENODEV)
    parent = cmd.parent
    if not parent or (parent >> 16) != 0xFFFF or dev.qdisc is None:
        if not parent:
            raise KernelError(errno.EINVAL, "Qdisc not classful")
        raise KernelError(errno.EINVAL, "Parent Qdisc doesn't exists")
    if dev.qdisc == "clsact" and parent & 0xFFFF and parent & 0xFFFF not in (0xFFF2, 0xFFF3):
        raise KernelError(errno.ENOENT, "Specified class doesn't exist")
    block = dev.block_for(parent)
    if block is None:
        raise KernelError(errno.EINVAL)
    if block.shared:
        raise KernelError(errno.EOPNOTSUPP, "This filter block is shared. Please use the "
                                            "block index to manipulate the filters")
    return block, (dev.name, 0, parent)


def find_proto(chain: Chain, prio: int, protocol: int, must: bool = False) -> Proto | None:
    """tcf_chain_tp_find: the proto at `prio`; another protocol there is EINVAL,
    none at all is ENOENT when `must`."""
    tp = chain.find(prio)
    if tp is not None and protocol and tp.protocol != protocol:
        raise KernelError(errno.EINVAL, "Filter with specified priority/protocol not found")
    if tp is None and must:
        raise KernelError(errno.ENOENT, "Filter with specified priority/protocol not found")
    return tp


def _chain_index(cmd: FilterCmd) -> int:
    index = cmd.chain or 0
    if index > TC_ACT_EXT_VAL_MASK:
        raise KernelError(errno.EINVAL, "Specified chain index exceeds upper limit")
    return index


def new_filter(model: TcModel, cmd: FilterCmd, create: bool, excl: bool) -> Filter:
    """tc_new_tfilter (add: create+excl, replace: create, change: neither)."""
    spec = cmd.spec
    prio = cmd.prio
    auto = False
    if not prio:
        if not create:
            raise KernelError(errno.ENOENT, "Invalid filter command with priority of zero")
        auto = True
    block, where = find_block(model, cmd)
    kind_name = spec.kind if spec is not None else None
    if kind_name is not None and len(kind_name) >= 16:
        raise KernelError(errno.EINVAL, "Specified TC filter name too long")
    block.classid = where[2]
    chain = block.chain(_chain_index(cmd), create=True)
    assert chain is not None
    try:
        return _new_in_chain(model, block, chain, cmd, prio, auto, create, excl)
    finally:
        block.gc_chain(chain)


def _new_in_chain(model: TcModel, block: Block, chain: Chain, cmd: FilterCmd, prio: int,
                  auto: bool, create: bool, excl: bool) -> Filter:
    spec = cmd.spec
    protocol = cmd.protocol
    tp: Proto | None
    if auto:
        if any(t.prio == 0x8000 for t in chain.protos):
            raise KernelError(errno.EINVAL, "Filter with specified priority/protocol not found")
        tp, prio = None, chain.auto_prio()
    else:
        tp = find_proto(chain, prio, protocol)
    tp_created = False
    if tp is None:
        if spec is None or spec.kind is None or not protocol:
            raise KernelError(errno.EINVAL, "Filter kind and protocol must be specified")
        if not create:
            raise KernelError(errno.ENOENT, "Need both RTM_NEWTFILTER and NLM_F_CREATE to "
                                            "create a new filter")
        cls = model.classifiers.get(spec.kind)
        if cls is None:
            raise KernelError(errno.ENOENT, "TC classifier not found")
        tp, tp_created = Proto(chain, prio, protocol, cls), True
    if spec is not None and spec.kind is not None and spec.kind != tp.kind.kind:
        raise KernelError(errno.EINVAL, "Specified filter kind does not match existing one")
    handle = spec.handle if spec is not None and spec.handle else 0
    old = tp.filters.get(handle) if handle else None
    if old is None and not create:
        raise KernelError(errno.ENOENT, "Need both RTM_NEWTFILTER and NLM_F_CREATE to "
                                        "create a new filter")
    if old is not None and excl:
        raise KernelError(errno.EEXIST, "Filter already exists")
    if spec is None:
        raise KernelError(errno.EINVAL)
    flt = _change(model, block, tp, handle, cmd, old)
    if tp_created:
        chain.insert(tp)
    return flt


def _change(model: TcModel, block: Block, tp: Proto, handle: int, cmd: FilterCmd,
            old: Filter | None) -> Filter:
    """fl_change: flags, actions, key, uniqueness, hardware, insertion."""
    spec = cmd.spec
    assert spec is not None
    flags = spec.flags & ~(CLS_FLAGS_IN_HW | CLS_FLAGS_NOT_IN_HW)
    if flags & CLS_FLAGS_SKIP_HW and flags & CLS_FLAGS_SKIP_SW:
        raise KernelError(errno.EINVAL)
    tp.kind.pre_change(tp, spec.key)  # the classifier's checks before the actions
    env = InitEnv(model.helpers, model.dev_exists, bind=True)
    actions = init_actions(model.actions, model.action_kinds, spec.actions, env, model.now,
                           block)
    try:
        tp.kind.change(spec.key, flags)
        if tp.duplicate(spec.key, old):
            raise KernelError(errno.EEXIST)
        new = Filter(tp, handle or (old.handle if old else tp.alloc_handle()), spec.key, flags,
                     spec.classid, actions, tp.kind.compile(spec.key), model.now)
        if not flags & CLS_FLAGS_SKIP_HW:
            offload = block.offload
            if offload is None and flags & CLS_FLAGS_SKIP_SW:
                raise KernelError(errno.EOPNOTSUPP)
            new.in_hw_count = offload.replace(block, new) if offload is not None else 0
            if flags & CLS_FLAGS_SKIP_SW and not new.in_hw_count:
                raise KernelError(errno.EINVAL)
        new.flags |= CLS_FLAGS_IN_HW if new.in_hw_count else CLS_FLAGS_NOT_IN_HW
    except KernelError:
        for action in actions:
            release(model.actions, action, bind=True)
        raise
    if old is not None:
        _destroy(model, block, tp, old)
    tp.add(new)
    return new


def _destroy(model: TcModel, block: Block, tp: Proto, flt: Filter) -> None:
    tp.remove(flt)
    if flt.in_hw_count and block.offload is not None:
        block.offload.destroy(block, flt)
    for action in flt.actions:
        release(model.actions, action, bind=True)


def remove_proto(model: TcModel, block: Block, chain: Chain, tp: Proto) -> None:
    for flt in list(tp.filters.values()):
        _destroy(model, block, tp, flt)
    chain.remove(tp)


def flush_chain(model: TcModel, block: Block, chain: Chain) -> None:
    for tp in list(chain.protos):
        remove_proto(model, block, chain, tp)


def del_filter(model: TcModel, cmd: FilterCmd) -> None:
    """tc_del_tfilter: pref 0 flushes the chain, no handle removes the proto."""
    spec = cmd.spec
    prio, protocol = cmd.prio, cmd.protocol
    handle = spec.handle if spec is not None and spec.handle else 0
    kind = spec.kind if spec is not None else None
    if not prio and (protocol or handle or kind):
        raise KernelError(errno.ENOENT, "Cannot flush filters with protocol, handle or kind set")
    block, _ = find_block(model, cmd)
    chain = block.chain(_chain_index(cmd))
    if chain is None:
        if not prio:
            return
        raise KernelError(errno.ENOENT, "Cannot find specified filter chain")
    if not prio:
        flush_chain(model, block, chain)
        block.gc_chain(chain)
        return
    tp = find_proto(chain, prio, protocol, must=True)
    assert tp is not None
    if kind is not None and kind != tp.kind.kind:
        raise KernelError(errno.EINVAL, "Specified filter kind does not match existing one")
    if not handle:
        remove_proto(model, block, chain, tp)
    else:
        flt = tp.filters.get(handle)
        if flt is None:
            raise KernelError(errno.ENOENT, "Specified filter handle not found")
        _destroy(model, block, tp, flt)
        if not tp.filters:
            chain.remove(tp)
    block.gc_chain(chain)


def get_filter(model: TcModel, cmd: FilterCmd) -> tuple[Block, Where, Proto, Filter]:
    """tc_get_tfilter."""
    if not cmd.prio:
        raise KernelError(errno.ENOENT, "Invalid filter command with priority of zero")
    block, where = find_block(model, cmd)
    chain = block.chain(_chain_index(cmd))
    if chain is None:
        raise KernelError(errno.EINVAL, "Cannot find specified filter chain")
    tp = find_proto(chain, cmd.prio, cmd.protocol, must=True)
    assert tp is not None
    spec = cmd.spec
    if spec is not None and spec.kind is not None and spec.kind != tp.kind.kind:
        raise KernelError(errno.EINVAL, "Specified filter kind does not match existing one")
    flt = tp.filters.get(spec.handle if spec is not None and spec.handle else 0)
    if flt is None:
        raise KernelError(errno.ENOENT, "Specified filter handle not found")
    return block, where, tp, flt


def walk(block: Block, chain_index: int | None, prio: int,
         protocol: int) -> Iterator[tuple[Proto, Filter | None]]:
    """tcf_chain_dump over the block: (proto, None) headers, then its filters."""
    for chain in list(block.chains.values()):
        if chain_index is not None and chain.index != chain_index:
            continue
        for tp in chain.protos:
            if (prio and tp.prio != prio) or (protocol and tp.protocol != protocol):
                continue
            yield tp, None
            for flt in tp.sorted_filters():
                yield tp, flt


def ctl_chain(model: TcModel, cmd: FilterCmd, op: str) -> tuple[Block, Where, Chain]:
    """tc_ctl_chain (add, del, get)."""
    block, where = find_block(model, cmd)
    index = _chain_index(cmd)
    chain = block.chains.get(index)
    if op == "add":
        if chain is not None and not chain.held_by_acts_only():
            raise KernelError(errno.EEXIST, "Filter chain already exists")
        if cmd.spec is not None and cmd.spec.kind is not None:
            raise KernelError(errno.EOPNOTSUPP,
                              "Chain templates are not supported with specified classifier")
        chain = block.chain(index, create=True)
        assert chain is not None
        chain.explicitly_created = True
        return block, where, chain
    if chain is None or chain.held_by_acts_only():
        raise KernelError(errno.EINVAL, "Cannot find specified filter chain")
    if op == "del":
        flush_chain(model, block, chain)
        chain.explicitly_created = False
        block.gc_chain(chain)
    return block, where, chain
