"""The software classifier as generated Python: each filter, and each chain, becomes
one function, so that a packet's tc run costs a call per chain and per action
instead of a call per proto, per match and per action list.

What is generated is exactly what the interpreting code does (Block.interpret,
Proto.classify, action.exec_actions, the kind's act):
  a filter   its classifier's match (inline when the kind gives the source, as
             flower's match_source() does; else a call of its predicate), then
             Stats.use and the trace entry (fl_classify), then tcf_action_exec
             unrolled: pipe goes on to the next action, a repeat or jump verb hands
             over to action.exec_graph, a goto to a chain that is gone drops. A plain
             gact (no random fallback) is inlined; other actions are called.
  a chain    its protos in priority order: the protocol check, then (fl_classify)
             the first filter of the proto whose match holds decides; a verdict >= 0
             ends the chain, "continue" goes on with the next proto. A proto with a
             skip_sw filter keeps the interpreted lookup (its mask is passed over).
Nothing is cached but code and the objects it names: every value an action or a
later match reads (params, control, goto chain, skb fields) is read at run time.
A chain's program is dropped when its protos or their filters change
(Chain.insert/remove, Proto's regrouping) and generated again on first use.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from node.tc.act_gact import PGACT_NONE
from node.tc.action import ACT_FLAGS_SKIP_SW, exec_actions, exec_graph
from node.tc.args import ETH_P_ALL
from node.tc.verdict import (
    TC_ACT_EXT_VAL_MASK,
    TC_ACT_GOTO_CHAIN,
    TC_ACT_JUMP,
    TC_ACT_OK,
    TC_ACT_PIPE,
    TC_ACT_REPEAT,
    TC_ACT_SHOT,
)

if TYPE_CHECKING:
    from node.tc.chain import Chain, Filter
    from node.tc.skb import Env, Skb

NOMATCH = -2  # a filter's run(): it does not match (no TC_ACT_* value is -2)
MAX_UNROLLED = 8  # longer action lists run through exec_actions
MAX_INLINE = 16  # a proto with more filters loops over their run() functions
MAX_PROTOS = 256  # a chain with more protos is not generated: _loop_program()
_OPCODE = 0xFFFFFFFF & ~TC_ACT_EXT_VAL_MASK
_NAME = re.compile(r"\b_k(\d+)\b")

FilterRun = Callable[["Skb", "Env"], int]
ChainProgram = Callable[["Skb", "Env", int], int]


def _match(flt: Filter, tag: str, names: dict[str, Any]) -> str:
    """The filter's match as an expression over `skb` and `pkt`; its names are
    renamed `_<tag>k<N>` and added to `names`."""
    source_of = getattr(flt.proto.kind, "match_source", None)
    if source_of is None:
        names[f"_{tag}m"] = flt.match
        return f"_{tag}m(skb)"
    expr, own = source_of(flt.key)
    for name, value in own.items():
        names[f"_{tag}k{name[2:]}"] = value
    return _NAME.sub(lambda m: f"_{tag}k{m.group(1)}", expr)


def _body(flt: Filter, tag: str, names: dict[str, Any], pad: str) -> list[str]:
    """Statements for a filter that matched: its statistics and trace entry, then
    its actions; they leave the verdict in `ret`."""
    names[f"_{tag}s"], names[f"_{tag}w"] = flt.stats, flt.where
    names[f"_{tag}l"] = flt.actions
    s = f"_{tag}s"
    lines = [f"{pad}{s}.bytes += skb.len", f"{pad}{s}.packets += 1",
             f"{pad}{s}.lastuse = now", f"{pad}if {s}.firstuse is None:",
             f"{pad}    {s}.firstuse = now", f"{pad}skb.trace.append(_{tag}w)"]
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
        if a.name == "gact":  # tcf_gact_act without a random fallback, inline
            out = [f"{pad}if {an}.params.ptype == {PGACT_NONE}:",
                   f"{pad}    st = {an}.stats",
                   f"{pad}    st.bytes += skb.len",
                   f"{pad}    st.packets += 1",
                   f"{pad}    st.lastuse = now",
                   f"{pad}    if st.firstuse is None:",
                   f"{pad}        st.firstuse = now",
                   f"{pad}    ret = {an}.control",
                   f"{pad}    if ret == {TC_ACT_SHOT}:",
                   f"{pad}        st.drops += 1",
                   f"{pad}else:",
                   f"{pad}    ret = {rn}({an}, skb, env)"]
        else:
            out = [f"{pad}ret = {rn}({an}, skb, env)"]
        verdict = [f"if ret == {TC_ACT_REPEAT} or ret & {_OPCODE} == {TC_ACT_JUMP}:",
                   f"    ret = _graph(_{tag}l, skb, env, {i}, ret)",
                   f"elif ret & {_OPCODE} == {TC_ACT_GOTO_CHAIN} and {an}.goto_chain is None:",
                   f"    ret = {TC_ACT_SHOT}"]
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
             f"        return {NOMATCH}", "    now = env.now",
             *_body(flt, "f", names, "    "), "    return ret"]
    run: FilterRun = _build("\n".join(lines) + "\n", names, f"filter {flt.where}")
    return run


def compile_chain(chain: Chain) -> ChainProgram:
    """Chain.program(skb, env, eth): the chain's verdict (>= 0), or -1 when no
    proto decided (no match, or "continue" to the end)."""
    if len(chain.protos) > MAX_PROTOS:
        return _loop_program(chain)
    names: dict[str, Any] = {}
    lines = ["def fn(skb, env, eth):", "    now = env.now"]
    for j, tp in enumerate(chain.protos):
        pad = "    "
        if tp.protocol != ETH_P_ALL:
            lines.append(f"    if eth == {tp.protocol}:")
            pad = "        "
        flat = tp.flat
        if flat is None:  # a skip_sw filter: the interpreted lookup
            names[f"_p{j}"] = tp
            lines += [f"{pad}ret = _p{j}.classify(skb, env)", f"{pad}if ret >= 0:",
                      f"{pad}    return ret"]
            continue
        if not flat:
            lines.append(f"{pad}pass")
            continue
        if len(flat) > MAX_INLINE:  # (a long if/elif would be deep for the compiler)
            names[f"_p{j}l"] = flat
            lines += [f"{pad}for flt in _p{j}l:", f"{pad}    ret = flt.run(skb, env)",
                      f"{pad}    if ret != {NOMATCH}:", f"{pad}        break",
                      f"{pad}else:", f"{pad}    ret = -1",
                      f"{pad}if ret >= 0:", f"{pad}    return ret"]
            continue
        lines.append(f"{pad}pkt = skb.pkt")
        for k, flt in enumerate(flat):
            tag = f"p{j}f{k}"
            expr = _match(flt, tag, names)
            lines.append(f"{pad}{'if' if k == 0 else 'elif'} {expr}:")
            lines += _body(flt, tag, names, pad + "    ")
            lines += [f"{pad}    if ret >= 0:", f"{pad}        return ret"]
    lines.append("    return -1")
    program: ChainProgram = _build("\n".join(lines) + "\n", names, f"chain {chain.index}")
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


__all__ = ["NOMATCH", "ChainProgram", "FilterRun", "compile_chain", "compile_filter"]
