"""``tc filter`` and ``tc chain``: tc/tc_filter.c's front end over the model.

do_filter / do_chain pick the operation, tc_filter_modify / tc_filter_get /
tc_filter_list check what iproute2 checks ("Cannot find device", "Must specify
filter priority" ...), then the request goes to cls_api and the answer is
printed by show.py. Kernel refusals are "Error: ..." (or "RTNETLINK answers:
...") plus "We have an error talking to the kernel" and exit code 2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from node.tc import cls_api, show
from node.tc.args import Args, matches
from node.tc.block import Block
from node.tc.errors import KernelError
from node.tc.parse import FILTER_USAGE, FilterCmd, Options

if TYPE_CHECKING:
    from node.tc.model import TcModel
    from node.tc.out import Out

TALK = "We have an error talking to the kernel\n"
CHAIN_USAGE = ("Usage: tc chain [ add | del | get | show ] [ dev STRING ]\n"
               "       tc chain [ add | del | get | show ] [ block BLOCK_INDEX ] ]\n")


def _opts(model: TcModel, opts: Options) -> show.ShowOpts:
    return show.ShowOpts(bool(opts.stats), opts.brief, model.action_hw_line)


def do_filter(model: TcModel, args: Args, opts: Options, out: Out) -> int:
    if not args:
        return _list(model, args, "filter", opts, out)
    word = args.cur
    for name, op in (("add", "add"), ("change", "change"), ("replace", "replace"),
                     ("delete", "del"), ("get", "get")):
        if matches(word, name):
            args.fwd()
            cmd = model.parse_filter(args, op, "filter")
            return _get(model, args, cmd, opts, out) if op == "get" else _modify(model, args,
                                                                                  cmd)
    if matches(word, "list") or matches(word, "show") or matches(word, "lst"):
        args.fwd()
        return _list(model, args, "filter", opts, out)
    if matches(word, "help"):
        args.err(FILTER_USAGE)
        return 0
    args.err(f'Command "{word}" is unknown, try "tc filter help".\n')
    return -1


def do_chain(model: TcModel, args: Args, opts: Options, out: Out) -> int:
    if not args:
        return _list(model, args, "chain", opts, out)
    word = args.cur
    if matches(word, "add") or matches(word, "delete"):
        op = "add" if matches(word, "add") else "del"
        args.fwd()
        return _modify(model, args, model.parse_filter(args, op, "chain"))
    if matches(word, "get"):
        args.fwd()
        return _get(model, args, model.parse_filter(args, "get", "chain"), opts, out)
    if matches(word, "list") or matches(word, "show") or matches(word, "lst"):
        args.fwd()
        return _list(model, args, "chain", opts, out)
    if matches(word, "help"):
        args.err(CHAIN_USAGE)
        return 0
    args.err(f'Command "{word}" is unknown, try "tc chain help".\n')
    return -1


def _dev_ok(model: TcModel, args: Args, cmd: FilterCmd) -> bool:
    if cmd.dev and not model.dev_exists(cmd.dev):
        args.err(f'Cannot find device "{cmd.dev}"\n')
        return False
    return True


def _modify(model: TcModel, args: Args, cmd: FilterCmd) -> int:
    """tc_filter_modify (filters and chains)."""
    if not _dev_ok(model, args, cmd):
        return 1
    try:
        if cmd.obj == "chain":
            cls_api.ctl_chain(model, cmd, cmd.op)
        elif cmd.op == "del":
            cls_api.del_filter(model, cmd)
        else:
            cls_api.new_filter(model, cmd, create=cmd.op in ("add", "replace"),
                               excl=cmd.op == "add")
    except KernelError as exc:
        args.err(exc.render())
        args.err(TALK)
        return 2
    return 0


def _get(model: TcModel, args: Args, cmd: FilterCmd, opts: Options, out: Out) -> int:
    """tc_filter_get (filters and chains)."""
    spec = cmd.spec
    if cmd.obj == "filter":
        if not cmd.protocol:
            args.err("Must specify filter protocol\n")
            return 255
        if not cmd.prio:
            args.err("Must specify filter priority\n")
            return 255
    if not cmd.parent:
        args.err("Must specify filter parent\n")
        return 255
    if cmd.obj == "filter" and (spec is None or spec.kind is None):
        args.err("Must specify filter type\n")
        return 255
    if not cmd.dev and not cmd.block:
        args.err('Must specify netdevice "dev" or block index "block"\n')
        return 255
    if not _dev_ok(model, args, cmd):
        return 1
    if cmd.obj == "filter" and cmd.handle_text is None:
        args.err('Must specify filter "handle"\n')
        return 255
    sopts = _opts(model, opts)
    try:
        if cmd.obj == "chain":
            block, where, chain = cls_api.ctl_chain(model, cmd, "get")
            out.new_json_obj()
            shown = show.Shown(dev=cmd.dev or None, block=cmd.block)
            show.print_chain(out, shown, where[0], block.index, 0xFFFF0000, chain.index)
            out.delete_json_obj()
            return 0
        block, where, tp, flt = cls_api.get_filter(model, cmd)
    except KernelError as exc:
        args.err(exc.render())
        args.err(TALK)
        return 2
    out.new_json_obj()
    shown = show.Shown(dev=cmd.dev or None, block=cmd.block)
    show.print_filter(out, shown, where, tp, flt, sopts, model.now)
    out.delete_json_obj()
    return 0


def _list(model: TcModel, args: Args, obj: str, opts: Options, out: Out) -> int:
    """tc_filter_list (filters and chains)."""
    cmd = model.parse_filter(args, "show", obj)
    if cmd.dev:
        if not model.dev_exists(cmd.dev):
            args.err(f'Cannot find device "{cmd.dev}"\n')
            return 1
    elif cmd.block and cmd.block not in model.blocks:
        args.err(f'Cannot find block "{cmd.block}"\n')
        return 1
    shown = show.Shown(dev=cmd.dev or None, parent=cmd.parent or None, prio=cmd.prio,
                       protocol=cmd.protocol, chain=cmd.chain, block=cmd.block)
    sopts = _opts(model, opts)
    out.new_json_obj()
    located = _dump_block(model, cmd)
    if located is not None:
        block, where = located
        if obj == "chain":
            for chain in list(block.chains.values()):
                if cmd.chain is not None and chain.index != cmd.chain:
                    continue
                if chain.held_by_acts_only():
                    continue
                show.print_chain(out, shown, where[0], block.index, 0xFFFF0000, chain.index)
        else:
            for tp, flt in cls_api.walk(block, cmd.chain, cmd.prio, cmd.protocol):
                show.print_filter(out, shown, where, tp, flt, sopts, model.now)
    out.delete_json_obj()
    return 0


def _dump_block(model: TcModel, cmd: FilterCmd) -> tuple[Block, cls_api.Where] | None:
    """tc_dump_tfilter's block lookup: anything missing dumps nothing."""
    if cmd.block:
        block = model.blocks.get(cmd.block)
        return None if block is None else (block, (None, block.index, 0))
    dev = model.devices.get(cmd.dev)
    if dev is None or not cmd.parent or cmd.parent >> 16 != 0xFFFF:
        return None
    if dev.qdisc == "clsact" and cmd.parent & 0xFFFF not in (0, 0xFFF2, 0xFFF3):
        return None
    block = dev.block_for(cmd.parent)
    if block is None:
        return None
    if block.shared:
        return block, (None, block.index, 0)
    return block, (dev.name, 0, block.classid or cmd.parent)
