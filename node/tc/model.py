"""The in-memory ``tc``: devices, qdiscs, blocks, the action table, and the
execution of tc command lines against them (tc.c do_cmd and the do_qdisc /
do_filter / do_chain / do_action front ends).

`TcModel.run(argv, opts)` is one ``tc`` invocation without its global options:
it returns (exit code, stdout, stderr) exactly as iproute2 would for the same
kernel state. The datapath shares the model (devices, blocks, actions); `now`
is the model's clock, which the datapath advances.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from typing import Any

from node.tc import ACTIONS, CLASSIFIERS, act_api, cls_api, show
from node.tc.action import ActionTable, InitEnv
from node.tc.args import Args, matches
from node.tc.block import Block, Device
from node.tc.errors import CliExit, CmdFailed, KernelError
from node.tc.m_action import ACT_USAGE, parse_action_ref, parse_actions
from node.tc.out import Out
from node.tc.parse import (
    TC_USAGE,
    FilterCmd,
    Options,
    QdiscCmd,
    parse_filter,
    parse_qdisc,
)

TALK = "We have an error talking to the kernel\n"


class TcModel:
    """One network namespace's tc state."""

    def __init__(self, *, auto_devices: bool = True, helpers: Mapping[str, Any] | None = None,
                 action_kinds: Mapping[str, Any] = ACTIONS,
                 classifiers: Mapping[str, Any] = CLASSIFIERS,
                 action_hw_line: bool = False) -> None:
        self.devices: dict[str, Device] = {}
        self.blocks: dict[int, Block] = {}  # shared blocks by index
        self.actions = ActionTable()
        self.action_kinds = action_kinds
        self.classifiers = classifiers
        self.auto_devices = auto_devices  # offline use: every device name exists
        if helpers is None:
            from node.conntrack.helpers import HELPERS

            helpers = HELPERS
        self.helpers: Mapping[str, Any] = helpers
        self.action_hw_line = action_hw_line
        self.now = 0.0

    # ------------------------------------------------------------ devices
    def add_device(self, name: str) -> Device:
        dev = self.devices.get(name)
        if dev is None:
            dev = self.devices[name] = Device(name, len(self.devices) + 1)
        return dev

    def dev_exists(self, name: str) -> bool:
        if name in self.devices:
            return True
        if self.auto_devices and name:
            self.add_device(name)
            return True
        return False

    # ------------------------------------------------------------ commands
    def run(self, argv: list[str], opts: Options) -> tuple[int, str, str]:
        """do_cmd for one command line; CliExit propagates (the process ends)."""
        err_parts: list[str] = []
        out = Out(json=opts.json, pretty=opts.pretty, oneline=opts.oneline)
        args = Args(argv, err_parts.append, self.dev_exists)
        try:
            code = self._do_cmd(args, opts, out)
        except CmdFailed as exc:
            code = exc.code
        except CliExit as exc:
            exc.stdout, exc.stderr = out.getvalue(), "".join(err_parts)
            raise
        return code & 0xFF, out.getvalue(), "".join(err_parts)

    def _do_cmd(self, args: Args, opts: Options, out: Out) -> int:
        if not args:
            args.err(TC_USAGE)
            return 0
        obj = args.cur
        args.fwd()
        for name, handler in (("qdisc", self._do_qdisc), ("class", self._do_class),
                              ("filter", self._do_filter), ("chain", self._do_chain),
                              ("actions", self._do_action)):
            if matches(obj, name):
                return handler(args, opts, out)
        if matches(obj, "help"):
            args.err(TC_USAGE)
            return 0
        args.err(f'Object "{obj}" is unknown, try "tc help".\n')
        return -1

    def _kernel(self, args: Args, exc: KernelError, talk: str = TALK) -> None:
        args.err(exc.render())
        if talk:
            args.err(talk)

    # ------------------------------------------------------------ qdisc
    def _do_qdisc(self, args: Args, opts: Options, out: Out) -> int:
        if not args:
            return self._qdisc_show(args, out)
        word = args.cur
        for name, op in (("add", "add"), ("change", "change"), ("replace", "replace"),
                         ("link", "link"), ("delete", "del")):
            if matches(word, name):
                args.fwd()
                return self._qdisc_modify(args, parse_qdisc(args, op))
        if matches(word, "show") or matches(word, "list") or matches(word, "lst"):
            args.fwd()
            return self._qdisc_show(args, out)
        if matches(word, "help"):
            args.err("Usage: tc qdisc [ add | del | replace | change | show ] dev STRING\n")
            return 0
        args.err(f'Command "{word}" is unknown, try "tc qdisc help".\n')
        return -1

    def _qdisc_modify(self, args: Args, cmd: QdiscCmd) -> int:
        if cmd.dev and not self.dev_exists(cmd.dev):
            args.err(f'Cannot find device "{cmd.dev}"\n')
            return 1
        try:
            self._qdisc_kernel(cmd)
        except KernelError as exc:
            self._kernel(args, exc, talk="")
            return 2
        return 0

    def _qdisc_kernel(self, cmd: QdiscCmd) -> None:
        """tc_modify_qdisc / tc_get_qdisc(RTM_DELQDISC) for ingress and clsact."""
        dev = self.devices.get(cmd.dev) if cmd.dev else None
        if dev is None:
            raise KernelError(errno.ENODEV)
        if cmd.op == "del":
            if dev.qdisc is None or cmd.parent not in (0xFFFFFFF1,):
                raise KernelError(errno.ENOENT,
                                  "Cannot find specified qdisc on specified device")
            if cmd.kind and cmd.kind != dev.qdisc:
                raise KernelError(errno.EINVAL, "Invalid qdisc name")
            self._qdisc_destroy(dev)
            return
        if cmd.kind not in ("ingress", "clsact"):
            raise KernelError(errno.ENOENT, "Specified qdisc kind is unknown")
        if cmd.kind == "ingress" and cmd.egress_block:
            raise KernelError(errno.EOPNOTSUPP, "Egress block sharing is not supported")
        if dev.qdisc is not None:
            if cmd.op == "add":
                raise KernelError(errno.EEXIST, "Exclusivity flag on, cannot modify")
            if cmd.op in ("change", "link") and cmd.kind != dev.qdisc:
                raise KernelError(errno.EINVAL, "Invalid qdisc name")
            if cmd.kind == dev.qdisc:
                if cmd.ingress_block or cmd.egress_block:
                    raise KernelError(errno.EOPNOTSUPP, "Change of blocks is not supported")
                return
            self._qdisc_destroy(dev)
        elif cmd.op in ("change", "link"):
            raise KernelError(errno.ENOENT, "Specified qdisc not found")
        dev.qdisc = cmd.kind
        dev.ingress = self._block_get(cmd.ingress_block, dev)
        dev.egress = self._block_get(cmd.egress_block, dev) if cmd.kind == "clsact" else None

    def _block_get(self, index: int, dev: Device) -> Block:
        if not index:
            block = Block()
            block.offload = dev.offload
            return block
        shared = self.blocks.get(index)
        if shared is None:
            shared = self.blocks[index] = Block(index)
            shared.offload = dev.offload
        shared.users += 1
        return shared

    def _qdisc_destroy(self, dev: Device) -> None:
        for block in (dev.ingress, dev.egress):
            if block is None:
                continue
            if block.shared:
                block.users -= 1
                if block.users > 0:
                    continue
                del self.blocks[block.index]
            for chain in list(block.chains.values()):
                cls_api.flush_chain(self, block, chain)
        dev.qdisc, dev.ingress, dev.egress = None, None, None

    def _qdisc_show(self, args: Args, out: Out) -> int:
        dev_name = ""
        while args:
            if args.cur == "dev":
                dev_name = args.next_arg()
            elif args.cur in ("ingress", "clsact", "root", "invisible"):
                pass
            elif args.cur in ("handle", "parent"):
                args.next_arg()
            else:
                args.err(f'What is "{args.cur}"? Try "tc qdisc help".\n')
                return -1
            args.fwd()
        if dev_name and not self.dev_exists(dev_name):
            args.err(f'Cannot find device "{dev_name}"\n')
            return 1
        out.new_json_obj()
        for dev in self.devices.values():
            if dev_name and dev.name != dev_name:
                continue
            if dev.qdisc is not None:
                ib = dev.ingress.index if dev.ingress is not None else 0
                eb = dev.egress.index if dev.egress is not None else 0
                show.print_qdisc(out, dev.name, dev.qdisc, not dev_name, ib, eb)
        out.delete_json_obj()
        return 0

    def _do_class(self, args: Args, opts: Options, out: Out) -> int:
        if not args or matches(args.cur, "show") or matches(args.cur, "list"):
            out.new_json_obj()
            out.delete_json_obj()
            return 0
        args.err(KernelError(errno.EOPNOTSUPP).render())
        return 2

    # ------------------------------------------------------------ filter / chain
    def _do_filter(self, args: Args, opts: Options, out: Out) -> int:
        from node.tc.filter_cmds import do_filter

        return do_filter(self, args, opts, out)

    def _do_chain(self, args: Args, opts: Options, out: Out) -> int:
        from node.tc.filter_cmds import do_chain

        return do_chain(self, args, opts, out)

    def parse_filter(self, args: Args, op: str, obj: str) -> FilterCmd:
        return parse_filter(args, op, obj, self.classifiers, self.action_kinds)

    # ------------------------------------------------------------ actions
    def _do_action(self, args: Args, opts: Options, out: Out) -> int:
        """do_action: sub-commands until the words run out."""
        sopts = show.ShowOpts(bool(opts.stats), opts.brief, self.action_hw_line)
        while args:
            word = args.cur
            if matches(word, "add") or matches(word, "change") or matches(word, "replace"):
                replace = not matches(word, "add")
                args.fwd()
                try:
                    specs = parse_actions(args, self.action_kinds)
                except CmdFailed:
                    args.err('Illegal "action"\n')
                    return -1
                try:
                    env = InitEnv(self.helpers, self.dev_exists, bind=False)
                    act_api.init_actions(self.actions, self.action_kinds, tuple(specs), env,
                                         self.now, replace=replace)
                except KernelError as exc:
                    self._kernel(args, exc)
                    return -1
            elif matches(word, "delete") or matches(word, "get"):
                get = matches(word, "get")
                args.fwd()
                refs = parse_action_ref(args, self.action_kinds)
                try:
                    if get:
                        found = [act_api.lookup(self.actions, k, i) for k, i in refs]
                        out.new_json_obj()
                        show.print_action_dump(out, found, sopts, self.now, 0, first=1)
                        out.delete_json_obj()
                    else:
                        act_api.delete(self.actions, refs)
                except KernelError as exc:
                    self._kernel(args, exc)
                    return 1
            elif matches(word, "list") or matches(word, "show") or matches(word, "lst") \
                    or matches(word, "flush"):
                flush = matches(word, "flush")
                if args.argc <= 2:
                    args.err(ACT_USAGE)
                    raise CliExit(255)
                args.fwd()
                args.fwd()
                return self._act_list_or_flush(args, flush, sopts, out)
            elif matches(word, "help"):
                args.err(ACT_USAGE)
                raise CliExit(255)
            else:
                args.err(f'Command "{word}" is unknown, try "tc actions help".\n')
                return -1
        return 0

    def _act_list_or_flush(self, args: Args, flush: bool, sopts: show.ShowOpts,
                           out: Out) -> int:
        kind = args.cur[:15]
        if kind not in self.action_kinds:
            kind = "gact"
        args.fwd()
        if args and args.cur == "since":
            args.next_arg()
        if flush:
            try:
                _, warning = act_api.flush(self.actions, kind)
            except KernelError as exc:
                args.err(exc.render())
                args.err("We have an error flushing\n")
                return 1
            if warning:
                args.err(f"Warning: {warning}.\n")
            return 0
        actions = self.actions.of_kind(kind)
        out.new_json_obj()
        if actions:
            show.print_action_dump(out, actions, sopts, self.now, len(actions), first=0)
        out.delete_json_obj()
        return 0
