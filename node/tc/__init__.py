"""Linux TC as it landed with connection tracking: blocks, chains, cls_flower with
ct keys, act_ct/gact/mirred/skbedit, and iproute2's ``tc`` syntax and output.

One module per kernel concept, named as the kernel and tc(8) name them (the
layout of pyroute2's tcmsg/). The registries below are explicit dicts; nothing
registers itself at import time.

The contract of an action kind (act_<kind>.py is the kernel's
net/sched/act_<kind>.c; iproute2's tc/m_<kind>.c lives in the same module, or in
m_<kind>.py when it is large, as for ct)::

    kind: str                                     # "ct"
    parse(args: Args) -> KindSpec                 # m_<kind>.c parse_<kind>()
    init(spec: KindSpec, env: InitEnv) -> params  # tcf_<kind>_init(): KernelError if refused
    print(out: Out, action: Action | None, now, stats)   # m_<kind>.c print_<kind>()
    act(action: Action, skb: Skb, env: Env) -> int       # tcf_<kind>_act(): a TC_ACT_* verb

The contract of a classifier kind (cls_<kind>.py; iproute2's f_<kind>.c is in
the same module, or f_<kind>.py and f_<kind>_show.py for flower)::

    kind: str                                     # "flower"
    parse(args, protocol, parse_actions) -> dict  # f_<kind>.c parse_fopt (key, flags,
                                                  #   classid, actions)
    pre_change(tp, key) -> None                   # ->change()'s checks before the actions
    change(key, flags) -> None                    # ->change()'s key validation
    compile(key) -> Callable[[Skb], bool]         # the key as one match function
    print(out, flt, opts, now)                    # f_<kind>.c print_fopt
    parse_handle(args, text) -> int               # optional: the kind's own handle words

Other modules: verdict (TC_ACT_* and control words), action/act_api (the action
table, bind/replace/release), chain/block/cls_api (filters, chains, blocks and
the kernel's filter verbs), skb (the packet as the classifier sees it), stats,
args/parse/m_action (iproute2's grammar), show/out (text and JSON printers),
filter_cmds/model (the `tc` state machine), cli (`ctlab tc`).

compiled: the software lookup as generated Python (one function per chain and
per filter; Block.interpret is the plain loop it must equal). offload: the
card's tc driver (block.BlockOffload): which filters go into the card, running
them there (act_miss / chain restore on a miss), and their hardware counters,
which `tc -s` prints as "Sent hardware". node/datapath.py puts the card
(node/offload) in front of the software path.
"""

from __future__ import annotations

from typing import Any

from node.tc.act_ct import KIND as CT
from node.tc.act_gact import KIND as GACT
from node.tc.act_mirred import KIND as MIRRED
from node.tc.act_skbedit import KIND as SKBEDIT
from node.tc.cls_flower import KIND as FLOWER
from node.tc.cls_matchall import KIND as MATCHALL

# Action kinds by tc(8) name (tc_lookup_action_n / iproute2 get_action_kind).
ACTIONS: dict[str, Any] = {
    "ct": CT,
    "gact": GACT,
    "mirred": MIRRED,
    "skbedit": SKBEDIT,
}

# Classifier kinds by tc(8) name (tcf_proto_lookup_ops / get_filter_kind).
CLASSIFIERS: dict[str, Any] = {
    "flower": FLOWER,
    "matchall": MATCHALL,
}

__all__ = ["ACTIONS", "CLASSIFIERS"]
