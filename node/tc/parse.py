"""iproute2's tc command-line grammar into typed command values.

Transcribes tc/tc.c (global options), tc/tc_qdisc.c, tc/tc_filter.c (filter and
chain); the action words (tc/m_action.c) are node/tc/m_action.py. Each parser
reads an `Args` cursor and returns a frozen command value; iproute2's own
refusals surface as CmdFailed/CliExit with its messages on stderr. What the
kernel would refuse is left to the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from node.tc.args import ETH_P_ALL, Args, get_u32, ll_proto_a2n, matches
from node.tc.chain import PARENT_EGRESS, PARENT_INGRESS, TC_H_ROOT, FilterSpec
from node.tc.errors import CliExit, CmdFailed
from node.tc.m_action import parse_actions

FILTER_USAGE = (
    "Usage: tc filter [ add | del | change | replace | show ] [ dev STRING ]\n"
    "       tc filter [ add | del | change | replace | show ] [ block BLOCK_INDEX ]\n"
    "       tc filter get dev STRING parent CLASSID protocol PROTO handle FILTERID "
    "pref PRIO FILTER_TYPE\n"
    "       tc filter get block BLOCK_INDEX protocol PROTO handle FILTERID pref PRIO "
    "FILTER_TYPE\n"
    "       [ pref PRIO ] protocol PROTO [ chain CHAIN_INDEX ]\n"
    "       [ estimator INTERVAL TIME_CONSTANT ]\n"
    "       [ root | ingress | egress | parent CLASSID ]\n"
    "       [ handle FILTERID ] [ [ FILTER_TYPE ] [ help | OPTIONS ] ]\n\n"
    "       tc filter show [ dev STRING ] [ root | ingress | egress | parent CLASSID ]\n"
    "       tc filter show [ block BLOCK_INDEX ]\n"
    "Where:\nFILTER_TYPE := { rsvp | u32 | bpf | fw | route | etc. }\n"
    "FILTERID := ... format depends on classifier, see there\n"
    "OPTIONS := ... try tc filter add <desired FILTER_KIND> help\n")
TC_USAGE = (
    "Usage:\ttc [ OPTIONS ] OBJECT { COMMAND | help }\n"
    "\ttc [-force] -batch filename\n"
    "where  OBJECT := { qdisc | class | filter | chain |\n"
    "\t\t    action | monitor | exec }\n"
    "       OPTIONS := { -V[ersion] | -s[tatistics] | -d[etails] | -r[aw] |\n"
    "\t\t    -o[neline] | -j[son] | -p[retty] | -c[olor]\n"
    "\t\t    -b[atch] [filename] | -n[etns] name | -N[umeric] |\n"
    "\t\t     -nm | -nam[es] | { -cf | -conf } path\n"
    "\t\t     -br[ief] }\n")


@dataclass(slots=True)
class Options:
    """tc's global options."""

    stats: int = 0
    details: int = 0
    json: bool = False
    pretty: bool = False
    brief: bool = False
    oneline: bool = False
    force: bool = False
    batch: str | None = None


def parse_options(args: Args, opts: Options) -> str | None:
    """tc.c main()'s option loop. Returns "version"/"help" for those words."""
    table = (("-stats", "stats"), ("-statistics", "stats"), ("-details", "details"),
             ("-raw", None), ("-pretty", "pretty"), ("-graph", None), ("-Version", "V"),
             ("-iec", None), ("-help", "H"), ("-force", "force"), ("-batch", "batch"),
             ("-netns", "netns"), ("-Numeric", None), ("-names", None), ("-nm", None),
             ("-cf", "conf"), ("-conf", "conf"), ("-color", None), ("-timestamp", None),
             ("-tshort", None), ("-json", "json"), ("-oneline", "oneline"),
             ("-brief", "brief"), ("-echo", None))
    while args and args.cur.startswith("-"):
        word = args.cur
        hit = next((what for name, what in table if matches(word, name)), "unknown")
        if word.startswith("-color="):
            hit = None
        if hit == "unknown":
            args.err(f'Option "{word}" is unknown, try "tc -help".\n')
            raise CmdFailed(-1)
        if hit == "V":
            return "version"
        if hit == "H":
            return "help"
        if hit in ("batch", "netns", "conf"):
            value = args.next_arg() if hit != "batch" else _batch_file(args)
            if hit == "batch":
                opts.batch = value
        elif hit == "stats":
            opts.stats += 1
        elif hit == "details":
            opts.details += 1
        elif hit in ("pretty", "json", "oneline", "brief", "force"):
            setattr(opts, hit, True)
        args.fwd()
    return None


def _batch_file(args: Args) -> str:
    args.fwd()
    if not args:
        args.err(TC_USAGE)
        raise CliExit(0)
    return args.cur


# ---------------------------------------------------------------- qdisc
@dataclass(frozen=True, slots=True)
class QdiscCmd:
    op: str  # add | del | replace | change | show
    dev: str = ""
    kind: str = ""
    parent: int = 0
    handle: int = 0
    ingress_block: int = 0
    egress_block: int = 0


def parse_qdisc(args: Args, op: str) -> QdiscCmd:
    """tc_qdisc_modify's argument loop (the part ingress/clsact use)."""
    d = k = ""
    parent = handle = iblock = eblock = 0
    while args:
        w = args.cur
        if w == "dev":
            name = args.next_arg()
            if d:
                raise args.duparg("dev", name)
            if not name or len(name) >= 16 or "/" in name:
                raise args.invarg("not a valid ifname", name)
            d = name
        elif w == "handle":
            if handle:
                raise args.duparg("handle", args.argv[args.pos + 1]
                                  if args.argc > 1 else "")
            text = args.next_arg()
            maj = _qdisc_handle(text)
            if maj is None:
                raise args.invarg("invalid qdisc ID", text)
            handle = maj
        elif w == "root":
            if parent:
                args.err('Error: "root" is duplicate parent ID\n')
                raise CmdFailed(-1)
            parent = TC_H_ROOT
        elif w in ("clsact", "ingress"):
            if parent:
                args.err(f'Error: "{w}" is a duplicate parent ID\n')
                raise CmdFailed(-1)
            parent, k, handle = 0xFFFFFFF1, w, 0xFFFF0000
            args.fwd()
            break
        elif w == "parent":
            text = args.next_arg()
            if parent:
                raise args.duparg("parent", text)
            from node.tc.act_skbedit import get_tc_classid

            got = get_tc_classid(text)
            if got is None:
                raise args.invarg("invalid parent ID", text)
            parent = got
        elif args.m("ingress_block") or args.m("egress_block"):
            ingress = args.m("ingress_block")
            text = args.next_arg()
            got = get_u32(text, 0)
            if not got:
                raise args.invarg(f"invalid {'ingress' if ingress else 'egress'} block "
                                  "index value", text)
            if ingress:
                iblock = got
            else:
                eblock = got
        elif args.m("help"):
            args.err("Usage: tc qdisc [ add | del | replace | change | show ] dev STRING\n")
            raise CliExit(255)
        else:
            k = w[:15]
            args.fwd()
            break
        args.fwd()
    if k in ("ingress", "clsact") and args:
        if k == "ingress" and args.cur == "handle":
            args.next_arg()
            args.fwd()
        if args:
            args.err(f'What is "{args.cur}"?\n')
            args.err(f"Usage: ... {k}\n")
            raise CmdFailed(1)
    elif k and args:
        args.err(f"Unknown qdisc \"{k}\", hence option \"{args.cur}\" is unparsable\n")
        raise CmdFailed(1)
    return QdiscCmd(op, d, k, parent, handle, iblock, eblock)


def _qdisc_handle(text: str) -> int | None:
    """get_qdisc_handle: "MAJ:" or "none"."""
    if text == "none":
        return 0
    maj_s, _, rest = text.partition(":")
    try:
        maj = int(maj_s, 16)
    except ValueError:
        return None
    if maj >= 1 << 16 or rest:
        return None
    return maj << 16


# ---------------------------------------------------------------- filter / chain
@dataclass(frozen=True, slots=True)
class FilterCmd:
    op: str  # add | change | replace | del | get | show (filter); +chain ops
    obj: str = "filter"  # "filter" | "chain"
    dev: str = ""
    block: int = 0
    parent: int = 0
    prio: int = 0
    protocol: int = 0
    chain: int | None = None
    spec: FilterSpec | None = None
    handle_text: str | None = None


def parse_filter(args: Args, op: str, obj: str, classifiers: Mapping[str, Any],
                 actions: Mapping[str, Any]) -> FilterCmd:
    """tc_filter_modify / tc_filter_get / tc_filter_list (and tc chain)."""
    show = op == "show"
    d = ""
    block = parent = prio = 0
    protocol = ETH_P_ALL if op in ("add", "replace") and obj == "filter" else 0
    protocol_set = False
    chain: int | None = None
    fhandle: str | None = None
    kind = ""
    while args:
        w = args.cur
        if w == "dev":
            name = args.next_arg()
            if d:
                raise args.duparg("dev", name)
            if block:
                args.err('Error: "dev" and "block" are mutually exclusive\n' if not show else
                         'Error: "dev" cannot be used in the same time as "block"\n')
                raise CmdFailed(-1)
            d = name[:15]
        elif args.m("block"):
            text = args.next_arg()
            if block:
                raise args.duparg("block", text)
            if d:
                args.err('Error: "dev" and "block" are mutually exclusive\n' if not show else
                         'Error: "block" cannot be used in the same time as "dev"\n')
                raise CmdFailed(-1)
            got = get_u32(text, 0)
            if not got:
                raise args.invarg("invalid block index value", text)
            block = got
        elif w in ("root", "ingress", "egress"):
            if parent:
                args.err(f'Error: "{w}" is duplicate parent ID\n')
                raise CmdFailed(-1)
            parent = {"root": TC_H_ROOT, "ingress": PARENT_INGRESS, "egress": PARENT_EGRESS}[w]
        elif w == "parent":
            text = args.next_arg()
            if parent:
                raise args.duparg("parent", text)
            from node.tc.act_skbedit import get_tc_classid

            got_p = get_tc_classid(text)
            if got_p is None:
                raise args.invarg("Invalid parent ID" if not show else "invalid parent ID",
                                  text)
            parent = got_p
        elif w == "handle":
            text = args.next_arg()
            if fhandle is not None:
                raise args.duparg("handle", text)
            fhandle = text
        elif args.m("preference") or args.m("priority"):
            text = args.next_arg()
            if prio:
                raise args.duparg("priority", text)
            got_pr = get_u32(text, 0)
            if got_pr is None or (not show and got_pr > 0xFFFF):
                raise args.invarg("invalid priority value" if not show
                                  else "invalid preference", text)
            prio = got_pr
        elif args.m("protocol"):
            text = args.next_arg()
            if protocol_set or (show and protocol):
                raise args.duparg("protocol", text)
            got_proto = ll_proto_a2n(text)
            if got_proto is None:
                raise args.invarg("invalid protocol", text)
            protocol, protocol_set = got_proto, True
        elif args.m("chain"):
            text = args.next_arg()
            if chain is not None:
                raise args.duparg("chain", text)
            got_c = get_u32(text, 0)
            if got_c is None:
                raise args.invarg("invalid chain index value", text)
            chain = got_c
        elif args.m("estimator") and not show:
            args.next_arg()
            args.next_arg()
        elif args.m("help"):
            args.err(FILTER_USAGE)
            if show:
                args.fwd()
                continue
            raise CmdFailed(0)
        elif show:
            args.err(f' What is "{w}"? Try "tc filter help"\n')
            raise CmdFailed(-1)
        else:
            kind = w[:15]
            args.fwd()
            break
        args.fwd()
    spec = None
    if kind or fhandle is not None or (args and not show):
        spec = _filter_spec(args, op, obj, kind, fhandle, protocol, classifiers, actions)
    return FilterCmd(op, obj, d, block, parent, prio, protocol, chain, spec, fhandle)


def _filter_spec(args: Args, op: str, obj: str, kind: str, fhandle: str | None,
                 protocol: int, classifiers: Mapping[str, Any],
                 actions: Mapping[str, Any]) -> FilterSpec:
    cls = classifiers.get(kind) if kind else None
    if cls is None:
        if kind:
            if args:
                args.err(f'Unknown filter "{kind}", hence option "{args.cur}" is unparsable\n')
                raise CmdFailed(1)
            handle = None
            if fhandle is not None:
                handle = get_u32(fhandle, 16)
                if handle is None:
                    args.err(f'Unparsable filter ID "{fhandle}"\n')
                    raise CmdFailed(1)
            return FilterSpec(kind, handle, None, 0, None, ())
        if fhandle is not None:
            args.err('Must specify filter type when using "handle"\n')
            raise CmdFailed(-1)
        if args:
            if args.m("help"):
                args.err(FILTER_USAGE)
            args.err(f'Garbage instead of arguments "{args.cur} ...". '
                     'Try "tc filter help".\n')
            raise CmdFailed(-1)
        return FilterSpec(None, None, None, 0, None, ())
    handle = None
    parse_handle = getattr(cls, "parse_handle", None)
    if fhandle is not None and parse_handle is not None:
        try:
            handle = parse_handle(args, fhandle)
        except CmdFailed as exc:
            raise CmdFailed(1) from exc
    elif fhandle is not None:
        handle = get_u32(fhandle, 0)
        if handle is None:
            args.err('Illegal "handle"\n')
            raise CmdFailed(1)
    try:
        got = cls.parse(args, protocol, lambda a: parse_actions(a, actions))
    except CmdFailed as exc:
        raise CmdFailed(1) from exc
    return FilterSpec(kind, handle, got["key"], got["flags"], got["classid"],
                      tuple(got["actions"]))
