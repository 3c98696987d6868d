"""The software classifier as generated Python: each filter, each chain and each
block becomes one function, so that a packet's tc run costs one call for the whole
block (plus a call per action the code does not carry inline) instead of a call
per proto, per match and per action list.

What is generated is exactly what the interpreting code does (Block.interpret,
Proto.classify, action.exec_actions, the kind's act):
  a filter   its classifier's match (inline when the kind gives the source, as
             flower's match_source() does; else a call of its predicate), then
             Stats.use and the trace entry (fl_classify), then tcf_action_exec
             unrolled: pipe goes on to the next action, a repeat or jump verb hands
             over to action.exec_graph, a goto to a chain that is gone drops. An
             action whose kind gives its source (inline(): gact without a random
             fallback; ct and mirred for the parameters they have when the code is
             made, a packet without a ct and no flow table for ct) runs inline
             behind a guard that checks those conditions at run time; otherwise, and
             when the guard fails, its act() is called.
  a chain    its protos in priority order: the protocol check, then (fl_classify)
             the first filter of the proto whose match holds decides; a verdict >= 0
             ends the chain, "continue" goes on with the next proto. A proto with a
             skip_sw filter keeps the interpreted lookup (its mask is passed over).
  a block    Block.classify from chain 0: its chains' code in one function and the
             step between them (reclassify, goto chain, the 16-restart limit).
Nothing is cached but code and the objects it names: every value an action or a
later match reads (params, control, goto chain, skb fields) is read at run time.
A chain's program, and its block's, are dropped when its protos or their filters
change (Chain.insert/remove, Proto's regrouping); a block's too when a chain comes
or goes; both are generated again on first use.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from node.tc.action import ACT_FLAGS_SKIP_SW, exec_actions, exec_graph
from node.tc.args import ETH_P_ALL, ETH_P_IP, ETH_P_IPV6
from node.tc.verdict import (
    MAX_RECLASSIFY_LOOP,
    TC_ACT_EXT_SHIFT,
    TC_ACT_EXT_VAL_MASK,
    TC_ACT_GOTO_CHAIN,
    TC_ACT_JUMP,
    TC_ACT_OK,
    TC_ACT_PIPE,
    TC_ACT_RECLASSIFY,
    TC_ACT_REPEAT,
    TC_ACT_SHOT,
    TC_ACT_UNSPEC,
    TC_ACT_VALUE_MAX,
)

if TYPE_CHECKING:
    from node.tc.block import Block
    from node.tc.chain import Chain, Filter
    from node.tc.skb import Env, Skb

NOMATCH = -2  # a filter's run(): it does not match (no TC_ACT_* value is -2)
MAX_UNROLLED = 8  # longer action lists run through exec_actions
MAX_INLINE = 16  # a proto with more filters loops over their run() functions
MAX_PROTOS = 256  # a chain with more protos is not generated: _loop_program()
MAX_CHAINS = 16  # a block with more chains runs chain by chain (Block.classify's loop)
_OPCODE = 0xFFFFFFFF & ~TC_ACT_EXT_VAL_MASK
_NAME = re.compile(r"\b_k(\d+)\b")
_PKT = re.compile(r"(?<![.\w])pkt\b")  # the local `pkt` (not skb.pkt)

FilterRun = Callable[["Skb", "Env"], int]
ChainProgram = Callable[["Skb", "Env", int], int]
BlockProgram = Callable[["Skb", "Env"], int]


def _match(flt: Filter, tag: str, names: dict[str, Any], ipv4: bool = False) -> str:
    """The filter's match as an expression over `skb` and `pkt`; its names are
    renamed `_<tag>k<N>` and added to `names`. `ipv4`: only IPv4 packets get here."""
    source_of = getattr(flt.proto.kind, "match_source", None)
    if source_of is None:
        names[f"_{tag}m"] = flt.match
        return f"_{tag}m(skb)"
    expr, own = source_of(flt.key, ipv4) if ipv4 else source_of(flt.key)
    for name, value in own.items():
        names[f"_{tag}k{name[2:]}"] = value
    return _NAME.sub(lambda m: f"_{tag}k{m.group(1)}", expr)


def _body(flt: Filter, tag: str, names: dict[str, Any], pad: str,
          ipv4: bool = False) -> list[str]:
    """Statements for a filter that matched: its statistics and trace entry, then
    its actions; they leave the verdict in `ret`. `ipv4`: the code runs under a
    protocol check that passes IPv4 packets only."""
    names[f"_{tag}s"], names[f"_{tag}w"] = flt.stats, (flt.where,)
    names[f"_{tag}l"] = flt.actions
    s = f"_{tag}s"
    lines = [f"{pad}{s}.bytes += ln", f"{pad}{s}.packets += 1",
             f"{pad}{s}.lastuse = now", f"{pad}if {s}.firstuse is None:",
             f"{pad}    {s}.firstuse = now", f"{pad}skb.trace += _{tag}w"]
    actions = flt.actions
    if not actions:
        return [*lines, f"{pad}ret = {TC_ACT_OK}"]
    if len(actions) > MAX_UNROLLED or any(a.flags & ACT_FLAGS_SKIP_SW for a in actions):
        names["_exec"] = exec_actions
        return [*lines, f"{pad}ret = _exec(_{tag}l, skb, env)"]
    names["_graph"] = exec_graph

    def action(i: int, pad: str) -> list[str]:
        a = actions[i]
        an, rn = f"_{tag}a{i}", f"_{tag}r{i}"
        names[an], names[rn] = a, a.run
        inline = getattr(a.kind, "inline", None)
        body = inline(a, an, names, ipv4) if inline is not None else None
        if body is None:
            out = [f"{pad}ret = {rn}({an}, skb, env)"]
        else:  # the kind's own source for its common case, else its act()
            out = [pad + line for line in body]
            out += [f"{pad}else:", f"{pad}    ret = {rn}({an}, skb, env)"]
        # (a verdict in [0, TC_ACT_REPEAT) is neither repeat, jump nor goto)
        # (ret >> 28 & 15 is the opcode: ret & 0xF0000000 shifted down)
        verdict = [f"if ret >= {TC_ACT_REPEAT} or ret < 0:",
                   f"    op = ret >> {TC_ACT_EXT_SHIFT} & {_OPCODE >> TC_ACT_EXT_SHIFT}",
                   f"    if op == {TC_ACT_GOTO_CHAIN >> TC_ACT_EXT_SHIFT}:",
                   f"        if {an}.goto_chain is None:",
                   f"            ret = {TC_ACT_SHOT}",
                   f"    elif ret == {TC_ACT_REPEAT} or op == {TC_ACT_JUMP >> TC_ACT_EXT_SHIFT}:",
                   f"        ret = _graph(_{tag}l, skb, env, {i}, ret)"]
        if i == len(actions) - 1:
            return out + [pad + v for v in verdict]
        return [*out, f"{pad}if ret == {TC_ACT_PIPE}:", *action(i + 1, pad + "    "),
                f"{pad}else:", *[pad + "    " + v for v in verdict]]

    return lines + action(0, pad)


def _build(source: str, names: dict[str, Any], what: str) -> Any:
    exec(compile(source, f"<{what}>", "exec"), names)
    return names["fn"]


def compile_filter(flt: Filter) -> FilterRun:
    """Filter.run: NOMATCH, or the verdict its actions give (exec_actions')."""
    names: dict[str, Any] = {}
    expr = _match(flt, "f", names)
    lines = ["def fn(skb, env):", "    pkt = skb.pkt", f"    if not ({expr}):",
             f"        return {NOMATCH}", "    now = env.now", "    ln = skb.len",
             *_body(flt, "f", names, "    "), "    return ret"]
    run: FilterRun = _build("\n".join(lines) + "\n", names, f"filter {flt.where}")
    return run


def _chain_lines(chain: Chain, prefix: str, names: dict[str, Any], pad: str,
                 decided: list[str], undecided: list[str]) -> list[str]:
    """The chain's protos in priority order as statements at `pad`, with the
    locals skb, env, eth, now and ln: `decided` runs when a proto gives a verdict
    (>= 0, in `ret`), `undecided` at the end. Names get the prefix `_<prefix>`."""
    lines: list[str] = []

    def done(at: str) -> list[str]:
        return [f"{at}if ret >= 0:", *[f"{at}    {line}" for line in decided]]

    guard = ETH_P_ALL  # the protocol check the lines are under (consecutive protos share it)
    for j, tp in enumerate(chain.protos):
        at = pad
        if tp.protocol != ETH_P_ALL:
            if tp.protocol != guard:
                lines.append(f"{pad}if eth == {tp.protocol}:")
            at = pad + "    "
        guard = tp.protocol
        flat = tp.flat
        if flat is None:  # a skip_sw filter: the interpreted lookup
            names[f"_{prefix}p{j}"] = tp
            lines += [f"{at}ret = _{prefix}p{j}.classify(skb, env)", *done(at)]
            continue
        if not flat:
            lines.append(f"{at}pass")
            continue
        if len(flat) > MAX_INLINE:  # (a long if/elif would be deep for the compiler)
            names[f"_{prefix}p{j}l"] = flat
            lines += [f"{at}for flt in _{prefix}p{j}l:", f"{at}    ret = flt.run(skb, env)",
                      f"{at}    if ret != {NOMATCH}:", f"{at}        break",
                      f"{at}else:", f"{at}    ret = -1", *done(at)]
            continue
        ipv4 = tp.protocol == ETH_P_IP
        tests = []
        for k, flt in enumerate(flat):
            tag = f"{prefix}p{j}f{k}"
            expr = _match(flt, tag, names, ipv4)
            tests.append(f"{at}{'if' if k == 0 else 'elif'} {expr}:")
            tests += _body(flt, tag, names, at + "    ", ipv4)
            tests += done(at + "    ")
        if any(_PKT.search(line) for line in tests):  # (only if the local is read)
            lines.append(f"{at}pkt = skb.pkt")
        lines += tests
    return lines + [pad + line for line in undecided]


def compile_chain(chain: Chain) -> ChainProgram:
    """Chain.program(skb, env, eth): the chain's verdict (>= 0), or -1 when no
    proto decided (no match, or "continue" to the end)."""
    if len(chain.protos) > MAX_PROTOS:
        return _loop_program(chain)
    names: dict[str, Any] = {}
    lines = ["def fn(skb, env, eth):", "    now = env.now", "    ln = skb.len",
             *_chain_lines(chain, "", names, "    ", ["return ret"], ["return -1"])]
    program: ChainProgram = _build("\n".join(lines) + "\n", names, f"chain {chain.index}")
    return program


def compile_block(block: Block) -> BlockProgram | None:
    """Block.program(skb, env): __tcf_classify from chain 0 as one function, the
    chains' programs inline and the step from one chain to the next (reclassify,
    goto chain, the 16-restart limit) written out as Block.classify does it. None
    when the block has no chain 0 or is too large (Block.classify then runs the
    chain programs one by one)."""
    chains = block.chains
    if 0 not in chains or len(chains) > MAX_CHAINS \
            or any(len(chain.protos) > MAX_PROTOS for chain in chains.values()):
        return None
    names: dict[str, Any] = {"_known": frozenset(chains)}
    lines = ["def fn(skb, env):",
             f"    eth = {ETH_P_IP} if skb.pkt.family == 4 else {ETH_P_IPV6}",
             "    now = env.now", "    ln = skb.len", "    idx = 0", "    resets = 0",
             "    while True:"]
    for n, (index, chain) in enumerate(chains.items()):
        lines += [f"        {'if' if n == 0 else 'elif'} idx == {index}:",
                  "            while True:  # (break: the chain is done, its verdict in err)",
                  *_chain_lines(chain, f"c{n}", names, "                ",
                                ["err = ret", "break"], ["err = -1", "break"])]
    lines += [
        # (err >> 28 & 15 == 2: err & 0xF0000000 == TC_ACT_GOTO_CHAIN)
        f"        if err < {TC_ACT_RECLASSIFY + 1}:",
        "            if err < 0:",
        f"                return {TC_ACT_UNSPEC}",
        f"            if err != {TC_ACT_RECLASSIFY}:",
        "                return err",
        "            idx = 0",
        f"        elif err <= {TC_ACT_VALUE_MAX}:",
        "            return err",
        f"        elif err >> {TC_ACT_EXT_SHIFT} & {_OPCODE >> TC_ACT_EXT_SHIFT}"
        f" == {TC_ACT_GOTO_CHAIN >> TC_ACT_EXT_SHIFT}:",
        f"            idx = err & {TC_ACT_EXT_VAL_MASK}",
        "        else:",
        "            return err",
        f"        if resets >= {MAX_RECLASSIFY_LOOP}:",
        "            skb.drop_reason = 'TC_RECLASSIFY_LOOP'",
        f"            return {TC_ACT_SHOT}",
        "        if idx not in _known:",
        f"            return {TC_ACT_UNSPEC}",
        "        resets += 1"]
    program: BlockProgram = _build("\n".join(lines) + "\n", names, f"block {block.index}")
    return program


def _loop_program(chain: Chain) -> ChainProgram:
    """A chain program that loops over the protos (for chains too long to generate)."""
    protos = tuple(chain.protos)

    def program(skb: Skb, env: Env, eth: int) -> int:
        for tp in protos:
            if tp.protocol != eth and tp.protocol != ETH_P_ALL:
                continue
            flat = tp.flat
            if flat is None:
                ret = tp.classify(skb, env)
            else:
                ret = -1
                for flt in flat:
                    ret = flt.run(skb, env)
                    if ret != NOMATCH:
                        break
            if ret >= 0:
                return ret
        return -1

    return program


__all__ = ["NOMATCH", "BlockProgram", "ChainProgram", "FilterRun", "compile_block",
           "compile_chain", "compile_filter"]
