"""Devices, their ingress/clsact qdiscs, and the filter blocks behind them.

Kernel: net/sched/cls_api.c (tcf_block, __tcf_classify), sch_ingress.c
(ingress: one block; clsact: an ingress and an egress block; "ingress_block N"
/ "egress_block N" share a block between devices by index).

`Block.classify` is __tcf_classify: start at chain 0, try the protos in
priority order (matching protocol or "all"), a verdict >= 0 ends the lookup,
"continue" (-1) tries the next proto; reclassify restarts at chain 0 and goto
chain N at chain N, at most 16 times (the 17th reset drops the packet).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from node.tc.action import exec_actions
from node.tc.args import ETH_P_ALL, ETH_P_IP, ETH_P_IPV6
from node.tc.chain import Chain
from node.tc.compiled import BlockProgram, compile_block
from node.tc.verdict import (
    MAX_RECLASSIFY_LOOP,
    TC_ACT_EXT_VAL_MASK,
    TC_ACT_GOTO_CHAIN,
    TC_ACT_RECLASSIFY,
    TC_ACT_SHOT,
    TC_ACT_UNSPEC,
    TC_ACT_VALUE_MAX,
)

_OPCODE = 0xFFFFFFFF & ~TC_ACT_EXT_VAL_MASK

if TYPE_CHECKING:
    from node.tc.chain import Filter
    from node.tc.skb import Env, Skb


class BlockOffload(Protocol):
    """What an offload card plugs into a block (the flow_block_cb seam).

    `replace` is asked for every filter without skip_hw; it returns how many
    devices took the filter into hardware (0: software only). `destroy` is told
    when such a filter goes away. A skip_sw filter that no device takes is
    refused (EOPNOTSUPP/EINVAL), as the kernel does."""

    def replace(self, block: Block, flt: Filter) -> int: ...

    def destroy(self, block: Block, flt: Filter) -> None: ...


class Block:
    """struct tcf_block: chains in creation order."""

    def __init__(self, index: int = 0) -> None:
        self.index = index  # shared block index; 0 for a device's private block
        self.chains: dict[int, Chain] = {}
        self.classid = 0  # the parent the last filter was added with (block->classid)
        self.offload: BlockOffload | None = None
        self.users = 0  # qdiscs bound to a shared block
        # classify() from chain 0 as one generated function (node.tc.compiled), made
        # on first use and dropped whenever a chain comes or goes or a chain's
        # program is dropped (Chain.invalidate); False: none can be made.
        self.program: BlockProgram | bool | None = None

    @property
    def shared(self) -> bool:
        return self.index != 0

    def chain(self, index: int, create: bool = False) -> Chain | None:
        chain = self.chains.get(index)
        if chain is None and create:
            chain = self.chains[index] = Chain(self, index)
            self.program = None
        return chain

    def gc_chain(self, chain: Chain) -> None:
        """tcf_chain_put: a chain with nothing holding it disappears."""
        if not chain.alive() and self.chains.get(chain.index) is chain:
            del self.chains[chain.index]
            self.program = None

    def compile(self) -> BlockProgram | bool:
        program = self.program = compile_block(self) or False
        return program

    def chain_hold_by_act(self, index: int) -> Chain:
        chain = self.chain(index, create=True)
        assert chain is not None
        chain.act_refs += 1
        return chain

    def chain_put_by_act(self, chain: Chain) -> None:
        chain.act_refs -= 1
        self.gc_chain(chain)

    def classify(self, skb: Skb, env: Env, chain: Chain | None = None, resets: int = 0,
                 pos: int = 0) -> int:
        """__tcf_classify from chain 0 (or from `chain` at its proto `pos`, after
        `resets` chain restarts): from chain 0, the block's generated program
        (node.tc.compiled) does it all; otherwise each chain runs as its generated
        program, reclassify restarts at chain 0, goto chain N at chain N, at most
        16 restarts."""
        if pos:
            return self.interpret(skb, env, chain, resets, pos)
        if chain is None:
            whole = self.program
            if whole is None:
                whole = self.compile()
            if whole:
                return whole(skb, env)  # type: ignore[operator]
            chain = self.chains.get(0)
            if chain is None:
                return TC_ACT_UNSPEC
        eth = ETH_P_IP if skb.pkt.family == 4 else ETH_P_IPV6
        while True:
            program = chain.program
            if program is None:
                program = chain.compile()
            err = program(skb, env, eth)
            if err < 0:
                return TC_ACT_UNSPEC
            # _next_chain(), inline
            if err == TC_ACT_RECLASSIFY:
                nxt = self.chains.get(0)
            elif err > TC_ACT_VALUE_MAX and err & _OPCODE == TC_ACT_GOTO_CHAIN:
                nxt = self.chains.get(err & TC_ACT_EXT_VAL_MASK)
            else:
                return err
            if resets >= MAX_RECLASSIFY_LOOP:
                skb.drop_reason = "TC_RECLASSIFY_LOOP"
                return TC_ACT_SHOT
            if nxt is None:
                return TC_ACT_UNSPEC
            chain = nxt
            resets += 1

    def _next_chain(self, err: int, skb: Skb, resets: int) -> Chain | int:
        """After a chain's verdict: the chain to go on in (reclassify restarts at
        chain 0, goto chain N), or the final verdict, with the 16-reset limit of
        tcf_classify (a goto to a chain that is gone ends as UNSPEC)."""
        if err == TC_ACT_RECLASSIFY:
            chain = self.chains.get(0)
        elif err & _OPCODE == TC_ACT_GOTO_CHAIN:
            chain = self.chains.get(err & TC_ACT_EXT_VAL_MASK)
        else:
            return err
        if resets >= MAX_RECLASSIFY_LOOP:
            skb.drop_reason = "TC_RECLASSIFY_LOOP"
            return TC_ACT_SHOT
        return TC_ACT_UNSPEC if chain is None else chain

    def interpret(self, skb: Skb, env: Env, chain: Chain | None = None, resets: int = 0,
                  pos: int = 0) -> int:
        """classify() without generated code: __tcf_classify's loop over the protos,
        each proto's lookup fl_classify (Proto.classify: the filters' matches, then
        exec_actions). The reference the generated programs must equal; used for
        a packet resuming in the middle of a chain."""
        if chain is None:
            chain = self.chains.get(0)
            if chain is None:
                return TC_ACT_UNSPEC
        eth = ETH_P_IP if skb.pkt.family == 4 else ETH_P_IPV6
        while True:
            for tp in chain.protos[pos:] if pos else chain.protos:
                protocol = tp.protocol
                if protocol != eth and protocol != ETH_P_ALL:
                    continue
                err = tp.classify(skb, env)
                if err >= 0:
                    break
            else:
                return TC_ACT_UNSPEC
            nxt = self._next_chain(err, skb, resets)
            if isinstance(nxt, int):
                return nxt
            chain = nxt
            resets += 1
            pos = 0

    def resume(self, skb: Skb, env: Env, chain: Chain | None, pos: int = 0,
               flt: Filter | None = None, act_index: int = 0) -> int:
        """tcf_classify for a packet the card handed to software (tc_skb_ext):
        classification goes on in `chain` at its proto `pos` (mlx5 restores the
        chain); with `flt` (act_miss), that filter's actions run from `act_index`
        (tcf_exts_exec_ex) and then the protos after `pos`, as the kernel does."""
        if flt is None:
            return TC_ACT_UNSPEC if chain is None else self.classify(skb, env, chain, 0, pos)
        err = exec_actions(flt.actions, skb, env, act_index)
        if err < 0:
            assert chain is not None
            return self.classify(skb, env, chain, 0, pos + 1)
        if err == TC_ACT_RECLASSIFY:
            target = self.chains.get(0)
        elif err & _OPCODE == TC_ACT_GOTO_CHAIN:
            target = self.chains.get(err & TC_ACT_EXT_VAL_MASK)
        else:
            return err
        return TC_ACT_UNSPEC if target is None else self.classify(skb, env, target, 1)


class Device:
    """A network device as tc sees it: its qdisc and the blocks behind it."""

    def __init__(self, name: str, ifindex: int) -> None:
        self.name = name
        self.ifindex = ifindex
        self.up = True
        self.qdisc: str | None = None  # "ingress" | "clsact"
        self.ingress: Block | None = None
        self.egress: Block | None = None
        self.offload: BlockOffload | None = None  # the card behind this port, if any

    def block_for(self, parent: int) -> Block | None:
        """The block a filter parent (ffff:fff2, ffff:fff3, ffff:) selects."""
        if self.qdisc == "ingress":
            return self.ingress
        if self.qdisc == "clsact":
            minor = parent & 0xFFFF
            if minor == 0xFFF2:
                return self.ingress
            if minor == 0xFFF3:
                return self.egress
        return None
