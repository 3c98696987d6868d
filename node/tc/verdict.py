"""Control verbs: the TC_ACT_* values an action returns, and their iproute2 names.

Values from include/uapi/linux/pkt_cls.h (Linux 6.18); names and parsing from
iproute2 tc/tc_util.c (action_a2n, action_n2a, parse_action_control,
print_action_control).
"""

from __future__ import annotations

from node.tc.args import Args, get_u32, matches
from node.tc.errors import CmdFailed
from node.tc.out import PRINT_ANY, Out

TC_ACT_UNSPEC = -1  # "continue": stop the actions, try the next filter
TC_ACT_OK = 0  # "pass"/"ok"
TC_ACT_RECLASSIFY = 1
TC_ACT_SHOT = 2  # "drop"/"shot"
TC_ACT_PIPE = 3
TC_ACT_STOLEN = 4
TC_ACT_QUEUED = 5
TC_ACT_REPEAT = 6
TC_ACT_REDIRECT = 7
TC_ACT_TRAP = 8
TC_ACT_VALUE_MAX = TC_ACT_TRAP
TC_ACT_CONSUMED = TC_ACT_VALUE_MAX + 1  # kernel-internal (skb consumed)

TC_ACT_EXT_SHIFT = 28
TC_ACT_EXT_VAL_MASK = (1 << TC_ACT_EXT_SHIFT) - 1
TC_ACT_JUMP = 1 << TC_ACT_EXT_SHIFT
TC_ACT_GOTO_CHAIN = 2 << TC_ACT_EXT_SHIFT
TC_ACT_EXT_OPCODE_MAX = TC_ACT_GOTO_CHAIN

TCA_ACT_MAX_PRIO = 32  # actions per filter, and the jump TTL
MAX_RECLASSIFY_LOOP = 16  # cls_api.c max_reclassify_loop
REPEAT_TTL = 32

# action_a2n's table, in its order (prefix matching takes the first hit)
A2N: tuple[tuple[str, int], ...] = (
    ("continue", TC_ACT_UNSPEC), ("drop", TC_ACT_SHOT), ("shot", TC_ACT_SHOT),
    ("pass", TC_ACT_OK), ("ok", TC_ACT_OK), ("reclassify", TC_ACT_RECLASSIFY),
    ("pipe", TC_ACT_PIPE), ("goto", TC_ACT_GOTO_CHAIN), ("jump", TC_ACT_JUMP),
    ("trap", TC_ACT_TRAP))
N2A = {TC_ACT_UNSPEC: "continue", TC_ACT_OK: "pass", TC_ACT_SHOT: "drop",
       TC_ACT_RECLASSIFY: "reclassify", TC_ACT_PIPE: "pipe", TC_ACT_STOLEN: "stolen",
       TC_ACT_TRAP: "trap"}


def ext_cmp(value: int, opcode: int) -> bool:
    """TC_ACT_EXT_CMP on the 32-bit value."""
    return (value & 0xFFFFFFFF & ~TC_ACT_EXT_VAL_MASK) == opcode


def is_goto(value: int) -> bool:
    return ext_cmp(value, TC_ACT_GOTO_CHAIN)


def is_jump(value: int) -> bool:
    return ext_cmp(value, TC_ACT_JUMP)


def goto_chain(index: int) -> int:
    return TC_ACT_GOTO_CHAIN | index


def action_a2n(word: str, allow_num: bool = False) -> int | None:
    for name, value in A2N:
        if matches(word, name):
            return value
    if allow_num:
        try:
            return int(word, 10)
        except ValueError:
            return None
    return None


def action_n2a(value: int) -> str:
    if is_goto(value):
        return "goto"
    if is_jump(value):
        return "jump"
    return N2A.get(value, str(value))


def parse_control(args: Args, allow_num: bool = False, quiet: bool = False) -> int | None:
    """__parse_action_control: the verb at the cursor (and its chain index or
    jump count); the cursor moves past it. None (cursor unmoved) when the word
    is not a verb; "Bad action type" unless `quiet`. Bad numbers are errors."""
    if not args:
        return None
    value = action_a2n(args.cur, allow_num)
    if value is None:
        if not quiet:
            args.err(f"Bad action type {args.cur}\n")
        return None
    if value == TC_ACT_GOTO_CHAIN:
        args.next_arg()
        if not matches(args.cur, "chain"):
            args.err('"chain index" expected\n')
            raise CmdFailed(-1)
        chain = get_u32(args.next_arg(), 10)
        if chain is None or chain > TC_ACT_EXT_VAL_MASK:
            args.err('Illegal "chain index"\n')
            raise CmdFailed(-1)
        value |= chain
    elif value == TC_ACT_JUMP:
        count = get_u32(args.next_arg(), 10)
        if count is None or count > TC_ACT_EXT_VAL_MASK:
            args.err(f'Invalid "jump count" ({args.cur})\n')
            raise CmdFailed(-1)
        value |= count
    args.fwd()
    return value


def parse_control_dflt(args: Args, default: int) -> int:
    """parse_action_control_dflt: the verb, or `default` when there is none."""
    got = parse_control(args, quiet=True)
    return default if got is None else got


def print_control(out: Out, prefix: str, value: int, suffix: str) -> None:
    """print_action_control: text "<prefix><verb>[ chain N| N]<suffix>"; JSON
    {"control_action": {"type": .., "chain"|"jump": N}}."""
    out.fp(prefix)
    out.open_object("control_action")
    out.string("type", action_n2a(value), action_n2a(value))
    if is_goto(value):
        n = value & TC_ACT_EXT_VAL_MASK
        out.uint("chain", f" chain {n}", n, PRINT_ANY)
    if is_jump(value):
        n = value & TC_ACT_EXT_VAL_MASK
        out.uint("jump", f" {n}", n, PRINT_ANY)
    out.close_object()
    out.fp(suffix)


def control_valid(value: int) -> bool:
    """act_api.c tcf_action_check_ctrlact()'s validity test (signed int opcode)."""
    opcode = value & ~TC_ACT_EXT_VAL_MASK
    if not opcode:
        return value <= TC_ACT_VALUE_MAX
    return opcode <= TC_ACT_EXT_OPCODE_MAX or value == TC_ACT_UNSPEC
