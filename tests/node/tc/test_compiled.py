"""The generated classifier (node.tc.compiled, flower's match_source) against the
interpreting one and against a plain reading of the flower keys: same verdicts,
same traces, same statistics, on random rule sets and packets."""

from __future__ import annotations

import io
import random
from unittest import mock

import pytest

from node.conntrack.table import Conntrack, Template
from node.datapath import Datapath, Outcome
from node.packet import IPPROTO_ICMP, IPPROTO_ICMPV6, Icmp, Packet, Tcp, Udp, icmp_echo, tcp, udp
from node.tc import compiled as compiled_module
from node.tc.args import ETH_P_ALL, ETH_P_IP, ETH_P_IPV6
from node.tc.block import Block
from node.tc.cli import run_batch_text
from node.tc.cls_flower import (
    KEY_FLAGS_FRAG_IS_FIRST,
    KEY_FLAGS_IS_FRAGMENT,
    FlowerKey,
    compile_key,
)
from node.tc.parse import Options
from node.tc.skb import CT_ESTABLISHED, CT_INVALID, CT_NEW, CT_REPLY, CT_TRACKED, Skb


# ---------------------------------------------------------------- flower keys
def reference_match(key: FlowerKey, skb: Skb) -> bool:
    """Each key read as cls_flower documents it, one after the other."""
    pkt = skb.pkt
    if key.eth_type is not None and key.eth_type != ETH_P_ALL:
        family = {ETH_P_IP: 4, ETH_P_IPV6: 6}.get(key.eth_type)
        if family is None or pkt.family != family:
            return False
    if key.vlan_id is not None or key.vlan_prio is not None or key.vlan_ethtype is not None:
        return False
    if key.indev is not None and skb.dev != key.indev:
        return False
    for got, want in ((skb.dst_mac, key.eth_dst), (skb.src_mac, key.eth_src)):
        if want is not None:
            mac = got or bytes(6)
            if bytes(a & m for a, m in zip(mac, want[1], strict=True)) != \
                    bytes(a & m for a, m in zip(want[0], want[1], strict=True)):
                return False
    if key.ip_proto is not None and pkt.proto != key.ip_proto:
        return False
    if key.ip_tos is not None and pkt.tos & key.ip_tos[1] != key.ip_tos[0] & key.ip_tos[1]:
        return False
    if key.ip_ttl is not None and pkt.ttl & key.ip_ttl[1] != key.ip_ttl[0] & key.ip_ttl[1]:
        return False
    for addr, want_ip in ((pkt.dst, key.dst_ip), (pkt.src, key.src_ip)):
        if want_ip is not None:
            _, value, mask = want_ip
            if len(addr) != len(value):
                return False
            m = int.from_bytes(mask, "big")
            if int.from_bytes(addr, "big") & m != int.from_bytes(value, "big") & m:
                return False
    l4 = pkt.l4
    ports = (l4.sport, l4.dport) if isinstance(l4, Tcp | Udp) and not pkt.frag_offset else None
    for index, single, rng in ((1, key.dst_port, key.dst_port_range),
                               (0, key.src_port, key.src_port_range)):
        if single is not None and (ports is None or
                                   ports[index] & single[1] != single[0] & single[1]):
            return False
        if rng is not None and (ports is None or not rng[0] <= ports[index] <= rng[1]):
            return False
    if key.tcp_flags is not None:
        fv, fm = key.tcp_flags
        if not isinstance(l4, Tcp) or l4.flags & 0xFFF & fm != fv & fm:
            return False
    if key.icmp_type is not None or key.icmp_code is not None:
        if not isinstance(l4, Icmp) or pkt.proto not in (IPPROTO_ICMP, IPPROTO_ICMPV6):
            return False
        tv, tm = key.icmp_type or (0, 0)
        cv, cm = key.icmp_code or (0, 0)
        if l4.type & tm != tv & tm or l4.code & cm != cv & cm:
            return False
    if key.ip_flags is not None:
        flags = 0
        if pkt.is_fragment:
            flags = KEY_FLAGS_IS_FRAGMENT | (0 if pkt.frag_offset else KEY_FLAGS_FRAG_IS_FIRST)
        if flags & key.ip_flags[1] != key.ip_flags[0] & key.ip_flags[1]:
            return False
    state, zone, mark, labels = skb.ct_key()
    if key.ct_state is not None and skb.ct_state & key.ct_state[1] != \
            key.ct_state[0] & key.ct_state[1]:
        return False
    if key.ct_zone is not None and zone & key.ct_zone[1] != key.ct_zone[0] & key.ct_zone[1]:
        return False
    if key.ct_mark is not None and mark & key.ct_mark[1] != key.ct_mark[0] & key.ct_mark[1]:
        return False
    if key.ct_label is not None:
        lv = int.from_bytes(key.ct_label[0], "little")
        lm = int.from_bytes(key.ct_label[1], "little")
        if labels & lm != lv & lm:
            return False
    return state is not None


def random_key(rng: random.Random) -> FlowerKey:
    def some(p: float = 0.3) -> bool:
        return rng.random() < p

    v4 = rng.random() < 0.6
    width = 4 if v4 else 16
    fields: dict[str, object] = {}
    if some(0.8):
        fields["eth_type"] = rng.choice([ETH_P_IP, ETH_P_IPV6, ETH_P_IP if v4 else ETH_P_IPV6])
    if some(0.05):
        fields["eth_type"] = 0x0806
    if some(0.1):
        fields["indev"] = rng.choice(["eth0", "eth1"])
    if some(0.1):
        fields["eth_dst"] = (bytes(rng.randrange(256) for _ in range(6)),
                             rng.choice([b"\xff" * 6, b"\x00" * 6, b"\xff\x00" * 3]))
    if some(0.5):
        fields["ip_proto"] = rng.choice([6, 17, 1, 58])
    if some(0.1):
        fields["ip_tos"] = (rng.randrange(256), rng.choice([0xFF, 0xFC, 0]))
    if some(0.1):
        fields["ip_ttl"] = (rng.choice([1, 64, 255]), rng.choice([0xFF, 0xF0]))
    for name in ("dst_ip", "src_ip"):
        if some(0.25):
            prefix = rng.choice([width * 8, width * 8, 8, 0, 24 if v4 else 64])
            mask = ((1 << prefix) - 1) << (width * 8 - prefix)
            addr = bytes([10, 0, 0, rng.choice([1, 2])]) if v4 else \
                bytes([0x20, 1, 0xd, 0xb8] + [0] * 11 + [rng.choice([1, 2])])
            fields[name] = (4 if v4 else 6, addr, mask.to_bytes(width, "big"))
    for name in ("dst_port", "src_port"):
        if some(0.3):
            fields[name] = (rng.choice([80, 443, 1000, 53]), rng.choice([0xFFFF, 0xFF00, 0]))
        elif some(0.1):
            lo = rng.choice([1, 80, 1000])
            fields[name + "_range"] = (lo, lo + rng.choice([1, 100, 60000]))
    if some(0.15):
        fields["tcp_flags"] = (rng.choice([0x2, 0x10, 0x12, 0x1]), rng.choice([0x17, 0x12, 0x2]))
    if some(0.1):
        fields["icmp_type"] = (rng.choice([8, 0, 128, 3]), 0xFF)
    if some(0.05):
        fields["icmp_code"] = (0, rng.choice([0xFF, 0]))
    if some(0.1):
        fields["ip_flags"] = (rng.choice([0, 1, 3]), rng.choice([1, 2, 3]))
    if some(0.6):
        fields["ct_state"] = (rng.choice([0, CT_TRACKED, CT_TRACKED | CT_ESTABLISHED,
                                          CT_TRACKED | CT_NEW, CT_TRACKED | CT_INVALID]),
                              rng.choice([CT_TRACKED, CT_TRACKED | CT_ESTABLISHED | CT_NEW,
                                          0x3F, CT_TRACKED | CT_INVALID]))
    if some(0.2):
        fields["ct_zone"] = (rng.choice([0, 1, 5]), rng.choice([0xFFFF, 0x1]))
    if some(0.2):
        fields["ct_mark"] = (rng.choice([0, 7, 0xbb]), rng.choice([0xFFFFFFFF, 0xF]))
    if some(0.1):
        fields["ct_label"] = (bytes([rng.randrange(4)]) + bytes(15),
                              rng.choice([b"\xff" * 16, b"\x03" + bytes(15)]))
    return FlowerKey(**fields)  # type: ignore[arg-type]


def random_skb(rng: random.Random, ct: Conntrack) -> Skb:
    v4 = rng.random() < 0.6
    a, b = ("198.18.0.1", "198.18.0.2") if v4 else ("2001:db8::1", "2001:db8::2")
    kind = rng.choice(["tcp", "udp", "icmp", "frag"])
    sport, dport = rng.choice([80, 443, 1000, 53, 40000]), rng.choice([80, 443, 1000, 53])
    pkt: Packet
    if kind == "tcp":
        pkt = tcp(a, b, sport, dport, rng.choice(["S", "SA", "A", "FA", "R"]), seq=1, ack=1)
    elif kind == "udp":
        pkt = udp(a, b, sport, dport, b"x")
    elif kind == "icmp":
        pkt = icmp_echo(a, b, id=1, seq=1, reply=rng.random() < 0.5)
    else:
        pkt = udp(a, b, sport, dport, b"x", frag_offset=rng.choice([0, 8]), more_frags=True)
    skb = Skb(pkt, rng.choice(["eth0", "eth1"]), rng.randrange(4))
    skb.dst_mac = rng.choice([None, bytes(6), b"\xff" * 6])
    mode = rng.random()
    if mode < 0.3:
        res = ct.commit(pkt, 1.0, Template(zone=rng.choice([0, 1, 5])))
        if res.entry is not None:
            res.entry.mark = rng.choice([0, 7, 0xbb])
            res.entry.labels = rng.randrange(4)
            skb.set_ct(res.entry, res.ctinfo)
            skb.set_post_ct(True, res.entry.zone)
    elif mode < 0.5:
        skb.set_post_ct(True, rng.choice([0, 1, 5]))  # a ct action found nothing: +trk+inv
    elif mode < 0.6:
        skb.ct_state = CT_TRACKED | CT_ESTABLISHED | CT_REPLY  # a ct from elsewhere, no entry
    return skb


def test_compiled_flower_keys_match_as_the_keys_read() -> None:
    rng = random.Random(4)
    ct = Conntrack()
    skbs = [random_skb(rng, ct) for _ in range(60)]
    for _ in range(400):
        key = random_key(rng)
        match = compile_key(key)
        for skb in skbs:
            assert match(skb) == reference_match(key, skb), (key, skb.pkt, skb.ct_state)


# ---------------------------------------------------------------- chains
VERBS = ["pass", "drop", "continue", "pipe", "reclassify", "goto chain 1", "goto chain 2",
         "jump 1", "goto chain 0"]
ACTIONS = ["gact {verb}", "skbedit mark 0x5/0xf {verb}", "ct zone 1 {verb}",
           "ct zone 1 commit {verb}", "mirred egress redirect dev eth1",
           "mirred egress mirror dev eth1 {verb}", "gact pass random determ drop 2",
           "gact pipe random determ {verb} 3", "ct clear {verb}", "ct zone 2 nat {verb}"]
KEYS = ["", "ip_proto tcp", "ip_proto udp dst_port 53", "ct_state -trk", "ct_state +trk+est",
        "ct_state +trk+new", "ct_state +trk+inv", "dst_port 80", "skip_sw", "skip_hw",
        "src_ip 198.18.0.1", "ip_flags frag"]


def random_rules(rng: random.Random) -> str:
    lines = ["qdisc add dev eth0 ingress", "qdisc add dev eth1 clsact"]
    for _ in range(rng.randrange(2, 9)):
        dev, parent = rng.choice([("eth0", "ingress"), ("eth0", "ingress"), ("eth1", "egress")])
        chain = rng.choice([0, 0, 1, 2])
        pref = rng.randrange(1, 5)
        proto = rng.choice(["ip", "ip", "all", "ipv6"])
        if rng.random() < 0.15:
            head = f"filter add dev {dev} {parent} chain {chain} pref {pref} matchall"
        else:
            keys = rng.choice(KEYS) if proto != "all" else rng.choice(["", "skip_hw"])
            head = f"filter add dev {dev} {parent} chain {chain} pref {pref} " \
                   f"protocol {proto} flower {keys}"
        acts = " ".join("action " + rng.choice(ACTIONS).format(verb=rng.choice(VERBS))
                        for _ in range(rng.randrange(0, 4)))
        lines.append(f"{head} {acts}")
    return "\n".join(lines) + "\n"


def stats_of(dp: Datapath) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for dev in dp.tc.devices.values():
        for block in (dev.ingress, dev.egress):
            if block is None:
                continue
            for chain in block.chains.values():
                for tp in chain.protos:
                    for flt in tp.sorted_filters():
                        s = flt.stats
                        out.append((flt.where, s.packets, s.bytes, s.drops, s.firstuse))
                        for a in flt.actions:
                            t = a.stats
                            out.append((a.name, a.index, t.packets, t.bytes, t.drops,
                                        t.overlimits, t.lastuse, a.state))
    return out


def twin(rules: str) -> Datapath:
    dp = Datapath(["eth0", "eth1"])
    run_batch_text(dp.tc, Options(force=True), "rules", rules, io.StringIO(), io.StringIO())
    return dp


def packets(rng: random.Random) -> list[Packet]:
    out: list[Packet] = []
    for _ in range(25):
        v4 = rng.random() < 0.8
        a, b = ("198.18.0.1", "198.18.0.2") if v4 else ("2001:db8::1", "2001:db8::2")
        if rng.random() < 0.5:
            out.append(tcp(a, b, 1000 + rng.randrange(3), rng.choice([80, 22]),
                           rng.choice(["S", "A", "SA"]), seq=1, ack=1))
        else:
            out.append(udp(a, b, 1000, rng.choice([53, 80]), b"q",
                           frag_offset=rng.choice([0, 0, 0, 8])))
    return out


@pytest.mark.parametrize("shape", ["inline", "filter-loop", "chain-loop", "chain-by-chain"])
@pytest.mark.parametrize("seed", range(40))
def test_generated_chains_do_what_the_interpreter_does(seed: int, shape: str) -> None:
    """inline: the block program as generated for small blocks; filter-loop: every
    proto loops over its filters' run(); chain-loop: the looping chain program;
    chain-by-chain: no block program, Block.classify runs the chain programs."""
    rng = random.Random(seed)
    rules = random_rules(rng)
    compiled, interpreted = twin(rules), twin(rules)
    limits = {"inline": {"MAX_INLINE": 16}, "filter-loop": {"MAX_INLINE": 0},
              "chain-loop": {"MAX_PROTOS": 0}, "chain-by-chain": {"MAX_CHAINS": 0}}[shape]
    with mock.patch.multiple(compiled_module, **limits):  # type: ignore[arg-type]
        for i, pkt in enumerate(packets(rng)):
            now = 1.0 + i / 100
            a: Outcome = compiled.receive("eth0", pkt, now)
            with mock.patch.object(Block, "classify", Block.interpret):
                b: Outcome = interpreted.receive("eth0", pkt, now)
            assert a == b, (rules, pkt)
    assert stats_of(compiled) == stats_of(interpreted), rules


def test_a_chain_program_follows_filter_changes() -> None:
    dp = twin("qdisc add dev eth0 ingress\n"
              "filter add dev eth0 ingress pref 5 protocol ip flower action drop\n")
    pkt = udp("198.18.0.1", "198.18.0.2", 1, 2, b"x")
    assert dp.receive("eth0", pkt, 1.0).verdict == "drop"
    run_batch_text(dp.tc, Options(), "x", "filter add dev eth0 ingress pref 1 protocol ip "
                   "flower ip_proto udp action pass\n", io.StringIO(), io.StringIO())
    assert dp.receive("eth0", pkt, 2.0).verdict == "pass"
    run_batch_text(dp.tc, Options(), "x", "filter del dev eth0 ingress pref 1\n",
                   io.StringIO(), io.StringIO())
    assert dp.receive("eth0", pkt, 3.0).verdict == "drop"
    run_batch_text(dp.tc, Options(), "x", "filter replace dev eth0 ingress pref 5 handle 1 "
                   "protocol ip flower action pass\n", io.StringIO(), io.StringIO())
    assert dp.receive("eth0", pkt, 4.0).verdict == "pass"
    run_batch_text(dp.tc, Options(), "x", "actions add action gact drop index 50\n"
                   "filter add dev eth0 ingress pref 1 protocol ip flower action gact index 50\n"
                   "actions replace action gact pass index 50\n", io.StringIO(), io.StringIO())
    assert dp.receive("eth0", pkt, 5.0).chains == ((0, 1, 1),)
    assert dp.receive("eth0", pkt, 6.0).verdict == "pass"  # the replaced verb, read at run time


@pytest.mark.parametrize(("filters", "prios"), [(200, 1), (1, 300), (20, 20)])
def test_large_chains_and_protos(filters: int, prios: int) -> None:
    """Many filters at one prio (OVS style) and many prios: the generated code
    loops instead of growing without bound, with the same answers."""
    lines = ["qdisc add dev eth0 ingress"]
    for prio in range(1, prios + 1):
        for i in range(filters):
            lines.append(f"filter add dev eth0 ingress pref {prio} protocol ip flower "
                         f"ip_proto udp dst_port {prio * 200 + i} action gact pass")
    lines.append(f"filter add dev eth0 ingress pref {prios + 1} protocol ip flower "
                 "action drop")
    rules = "\n".join(lines) + "\n"
    compiled, interpreted = twin(rules), twin(rules)
    for port in (200 + filters - 1, prios * 200 + filters - 1, 7):
        pkt = udp("198.18.0.1", "198.18.0.2", 5, port, b"x")
        a = compiled.receive("eth0", pkt, 1.0)
        with mock.patch.object(Block, "classify", Block.interpret):
            b = interpreted.receive("eth0", pkt, 1.0)
        assert a == b
    assert a.verdict == "drop"


def _run(dp: Datapath, text: str) -> None:
    err = io.StringIO()
    assert not run_batch_text(dp.tc, Options(), "x", text, io.StringIO(), err), err.getvalue()


def test_the_block_program_follows_chains_coming_and_going() -> None:
    """The block program is made again when a chain appears (a goto to a chain
    that was empty) or goes away, as when a filter changes."""
    dp = twin("qdisc add dev eth0 ingress\n"
              "filter add dev eth0 ingress pref 1 protocol ip flower "
              "action gact goto chain 2\n")
    pkt = udp("198.18.0.1", "198.18.0.2", 1, 2, b"x")
    first = dp.receive("eth0", pkt, 1.0)  # chain 2 is held by the goto, but empty
    assert (first.verdict, first.chains) == ("pass", ((0, 1, 1),))
    _run(dp, "filter add dev eth0 ingress chain 2 pref 1 protocol ip flower action drop\n")
    assert dp.receive("eth0", pkt, 2.0).chains == ((0, 1, 1), (2, 1, 1))
    assert dp.receive("eth0", pkt, 3.0).verdict == "drop"
    _run(dp, "filter add dev eth0 ingress chain 3 pref 1 protocol ip flower action pass\n"
             "filter replace dev eth0 ingress pref 1 handle 1 protocol ip flower "
             "action gact goto chain 3\n")
    assert dp.receive("eth0", pkt, 4.0).chains == ((0, 1, 1), (3, 1, 1))
    _run(dp, "filter del dev eth0 ingress chain 3 pref 1\n")
    assert dp.receive("eth0", pkt, 5.0).chains == ((0, 1, 1),)


def test_inlined_actions_follow_their_replaced_parameters() -> None:
    """ct and mirred run from the generated code for the parameters they had when
    it was made; `tc actions replace` gives them new ones, which run through act()
    (here: another zone, then commit, then another device)."""
    dp = Datapath(["eth0", "eth1", "eth2"])
    _run(dp, "qdisc add dev eth0 ingress\n"
             "actions add action ct zone 1 index 7\n"
             "actions add action mirred egress redirect dev eth1 index 8\n"
             "filter add dev eth0 ingress pref 1 protocol ip flower "
             "action ct index 7 pipe action mirred index 8\n")
    pkt = tcp("198.18.0.1", "198.18.0.2", 1000, 80, "S", seq=1)
    out = dp.receive("eth0", pkt, 1.0)
    assert (out.zone, out.ct_state, out.ports) == (1, CT_TRACKED | CT_NEW, ("eth1",))
    assert not list(dp.conntrack.entries())  # no commit
    _run(dp, "actions replace action ct zone 2 index 7\n")
    assert dp.receive("eth0", pkt, 2.0).zone == 2
    _run(dp, "actions replace action ct zone 3 commit index 7\n"
             "actions replace action mirred egress redirect dev eth2 index 8\n")
    out = dp.receive("eth0", pkt, 3.0)
    assert (out.zone, out.ports) == (3, ("eth2",))
    assert [e.zone for e in dp.conntrack.entries()] == [3]
    ct_act = dp.tc.actions.get("ct", 7)
    mirred = dp.tc.actions.get("mirred", 8)
    assert ct_act is not None and mirred is not None
    assert (ct_act.stats.packets, mirred.stats.packets) == (3, 3)


def test_a_packet_starts_with_a_clean_skb() -> None:
    """receive() reuses its Skb: what a packet left in it (a drop reason, the
    mirred depth, a priority) is gone for the next one."""
    dp = twin("qdisc add dev eth0 ingress\n"
              "filter add dev eth0 ingress pref 1 protocol ip flower ip_proto udp "
              "action skbedit priority 5 pipe action gact reclassify\n"
              "filter add dev eth0 ingress pref 2 protocol ip flower ip_proto tcp "
              "action drop\n")
    looped = dp.receive("eth0", udp("198.18.0.1", "198.18.0.2", 1, 2, b"x"), 1.0)
    assert (looped.verdict, looped.drop_reason) == ("drop", "TC_RECLASSIFY_LOOP")
    dropped = dp.receive("eth0", tcp("198.18.0.1", "198.18.0.2", 1, 2, "S"), 2.0)
    assert (dropped.verdict, dropped.drop_reason) == ("drop", "TC_INGRESS")
    skb = dp._spare
    assert skb is not None and not skb.__dict__
    fresh = Skb(skb.pkt, skb.dev, skb.mark)
    for name in ("priority", "mirred_depth", "post_ct_snat", "post_ct_dnat", "src_mac",
                 "dst_mac"):
        assert getattr(skb, name) == getattr(fresh, name), name
