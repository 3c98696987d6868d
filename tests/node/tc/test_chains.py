"""Chains, priorities and control verbs through the datapath: the lookup order
of cls_api.c __tcf_classify and act_api.c tcf_action_exec (pipe, continue,
pass, drop, reclassify, jump, goto chain, trap), the 16-reset limit, and the
chain a goto creates."""

from __future__ import annotations

from node.datapath import Datapath
from node.packet import udp

from .conftest import Tc

PKT = udp("198.18.0.1", "198.18.0.2", 1000, 53, b"query")


def node(rules: str, ports: tuple[str, ...] = ("eth0", "eth1")) -> tuple[Datapath, Tc]:
    dp = Datapath(ports)
    t = Tc(dp.tc)
    res = t.batch("qdisc add dev eth0 ingress\n" + rules)
    assert res.code == 0, res.err
    return dp, t


def test_no_filter_and_no_match_pass() -> None:
    dp, _ = node("")
    out = dp.receive("eth0", PKT, 1.0)
    assert (out.verdict, out.code, out.chains) == ("pass", -1, ())
    dp, _ = node("filter add dev eth0 ingress pref 1 protocol ip flower ip_proto tcp "
                 "action drop\n")
    assert dp.receive("eth0", PKT, 1.0).verdict == "pass"


def test_priorities_are_tried_in_order_whatever_the_insertion_order() -> None:
    dp, t = node("filter add dev eth0 ingress pref 20 protocol ip flower action drop\n"
                 "filter add dev eth0 ingress pref 10 protocol ip flower action pass\n")
    out = dp.receive("eth0", PKT, 1.0)
    assert out.verdict == "pass" and out.chains == ((0, 10, 1),)
    shown = t.ok("filter show dev eth0 ingress")
    assert shown.index("pref 10") < shown.index("pref 20")


def test_protocol_all_and_protocol_mismatch() -> None:
    dp, _ = node("filter add dev eth0 ingress pref 1 protocol ipv6 flower action drop\n"
                 "filter add dev eth0 ingress pref 2 protocol all flower action pass\n")
    out = dp.receive("eth0", PKT, 1.0)
    assert out.verdict == "pass" and out.chains == ((0, 2, 1),)


def test_continue_tries_the_next_filter_and_pipe_runs_the_next_action() -> None:
    dp, _ = node("filter add dev eth0 ingress pref 1 protocol ip flower "
                 "action skbedit mark 7 pipe action continue\n"
                 "filter add dev eth0 ingress pref 2 protocol ip flower action drop\n")
    out = dp.receive("eth0", PKT, 1.0)
    assert out.verdict == "drop" and out.chains == ((0, 1, 1), (0, 2, 1)) and out.mark == 7


def test_a_filter_without_actions_passes() -> None:
    dp, _ = node("filter add dev eth0 ingress pref 1 protocol ip flower ip_proto udp\n"
                 "filter add dev eth0 ingress pref 2 protocol ip flower action drop\n")
    out = dp.receive("eth0", PKT, 1.0)
    assert out.verdict == "pass" and out.code == 0 and out.chains == ((0, 1, 1),)


def test_goto_chain_and_a_missing_chain_is_created_empty() -> None:
    dp, t = node("filter add dev eth0 ingress pref 1 protocol ip flower action goto chain 5\n")
    out = dp.receive("eth0", PKT, 1.0)
    assert out.verdict == "pass" and out.code == -1  # chain 5 is empty: continue = pass
    assert t.ok("chain show dev eth0 ingress") == "chain parent ffff: chain 0 \n"
    t.ok("filter add dev eth0 ingress pref 1 chain 5 protocol ip flower action drop")
    out = dp.receive("eth0", PKT, 1.0)
    assert out.verdict == "drop" and out.chains == ((0, 1, 1), (5, 1, 1))
    assert "chain 5" in t.ok("chain show dev eth0 ingress")


def test_the_chain_a_goto_holds_goes_away_with_the_filter() -> None:
    dp, t = node("filter add dev eth0 ingress pref 1 protocol ip flower action goto chain 5\n")
    t.ok("filter del dev eth0 ingress pref 1")
    assert 5 not in dp.tc.devices["eth0"].ingress.chains  # type: ignore[union-attr]


def test_reclassify_loops_at_most_16_times() -> None:
    dp, t = node("filter add dev eth0 ingress pref 1 protocol ip flower "
                 "action gact reclassify\n")
    out = dp.receive("eth0", PKT, 1.0)
    assert out.verdict == "drop" and out.drop_reason == "TC_RECLASSIFY_LOOP"
    assert len(out.chains) == 17  # the first pass and 16 resets
    frame = PKT.length + 14
    assert f"Sent {17 * frame} bytes 17 pkt" in t.ok("-s filter show dev eth0 ingress")


def test_goto_loop_is_dropped_too() -> None:
    dp, _ = node("filter add dev eth0 ingress pref 1 protocol ip flower action goto chain 1\n"
                 "filter add dev eth0 ingress pref 1 chain 1 protocol ip flower "
                 "action goto chain 0\n")
    out = dp.receive("eth0", PKT, 1.0)
    assert out.verdict == "drop" and out.drop_reason == "TC_RECLASSIFY_LOOP"


def test_reclassify_restarts_at_chain_zero() -> None:
    dp, _ = node("filter add dev eth0 ingress pref 1 protocol ip flower ct_state -trk "
                 "action ct zone 1 pipe action goto chain 1\n"
                 "filter add dev eth0 ingress pref 1 chain 1 protocol ip flower "
                 "ct_state +trk+new action ct clear reclassify\n"
                 "filter add dev eth0 ingress pref 2 chain 1 protocol ip flower action drop\n")
    out = dp.receive("eth0", PKT, 1.0)
    # ct, clear, reclassify: chain 0 sees -trk again, forever, until the limit
    assert out.chains[:4] == ((0, 1, 1), (1, 1, 1), (0, 1, 1), (1, 1, 1))
    assert out.verdict == "drop" and out.drop_reason == "TC_RECLASSIFY_LOOP"


def test_jump_skips_from_the_start_of_the_action_list() -> None:
    dp, _ = node("filter add dev eth0 ingress pref 1 protocol ip flower "
                 "action skbedit mark 1 jump 2 action skbedit mark 2 drop "
                 "action skbedit mark 3 pass\n")
    out = dp.receive("eth0", PKT, 1.0)
    assert out.verdict == "pass" and out.mark == 3


def test_a_jump_past_the_end_stops_the_pipeline_with_ok() -> None:
    dp, _ = node("filter add dev eth0 ingress pref 1 protocol ip flower "
                 "action gact jump 7 action drop\n"
                 "filter add dev eth0 ingress pref 2 protocol ip flower action drop\n")
    out = dp.receive("eth0", PKT, 1.0)
    assert out.verdict == "pass" and out.code == 0


def test_trap_and_stolen_are_consumed() -> None:
    dp, _ = node("filter add dev eth0 ingress pref 1 protocol ip flower action trap\n")
    out = dp.receive("eth0", PKT, 1.0)
    assert out.verdict == "stolen"


def test_skip_sw_filters_are_not_run_in_software() -> None:
    dp, t = node("")
    res = t("filter add dev eth0 ingress pref 1 protocol ip flower skip_sw action drop")
    assert res.code == 2  # no offload card on this port
    assert res.err == ("RTNETLINK answers: Operation not supported\n"
                       "We have an error talking to the kernel\n")
    t.ok("filter add dev eth0 ingress pref 1 protocol ip flower skip_hw action drop")
    assert dp.receive("eth0", PKT, 1.0).verdict == "drop"
    assert "  skip_hw\n  not_in_hw\n" in t.ok("filter show dev eth0 ingress")


def test_skbedit_mark_with_mask() -> None:
    dp, t = node("filter add dev eth0 ingress pref 1 protocol ip flower "
                 "action skbedit mark 0x12/0xf0 pass\n")
    out = dp.receive("eth0", PKT, 1.0, mark=0x0F)
    assert out.mark == 0x1F
    assert "action order 1: skbedit  mark 18/0xf0 pass\n\t index 1 ref 1 bind 1\n" in t.ok(
        "filter show dev eth0 ingress")


# ------------------------------------------------------------------ mirred
def test_redirect_runs_the_egress_block_of_the_target() -> None:
    dp, _ = node("qdisc add dev eth1 clsact\n"
                 "filter add dev eth0 ingress pref 1 protocol ip flower "
                 "action mirred egress redirect dev eth1\n"
                 "filter add dev eth1 egress pref 1 protocol ip flower "
                 "action skbedit mark 9 pass\n")
    out = dp.receive("eth0", PKT, 1.0)
    assert out.verdict == "stolen" and out.ports == ("eth1",)
    (eg,) = out.egress
    assert (eg.how, eg.direction, eg.sent, eg.chains, eg.mark) == \
        ("redirect", "egress", True, ((0, 1, 1),), 9)


def test_egress_drop_means_not_sent() -> None:
    dp, _ = node("qdisc add dev eth1 clsact\n"
                 "filter add dev eth0 ingress pref 1 protocol ip flower "
                 "action mirred egress redirect dev eth1\n"
                 "filter add dev eth1 egress pref 1 protocol ip flower action drop\n")
    out = dp.receive("eth0", PKT, 1.0)
    assert out.verdict == "stolen" and out.ports == () and not out.egress[0].sent


def test_mirror_sends_a_copy_and_goes_on() -> None:
    dp, _ = node("filter add dev eth0 ingress pref 1 protocol ip flower "
                 "action mirred egress mirror dev eth1 action drop\n")
    out = dp.receive("eth0", PKT, 1.0)
    assert out.verdict == "drop"
    assert [(e.port, e.how, e.sent) for e in out.egress] == [("eth1", "mirror", True)]


def test_redirect_to_an_ingress_runs_its_ingress_block() -> None:
    dp, _ = node("qdisc add dev eth1 ingress\n"
                 "filter add dev eth0 ingress pref 1 protocol ip flower "
                 "action mirred ingress redirect dev eth1\n"
                 "filter add dev eth1 ingress pref 1 protocol ip flower action pass\n")
    out = dp.receive("eth0", PKT, 1.0)
    assert out.egress[0].direction == "ingress" and out.egress[0].chains == ((0, 1, 1),)


def test_mirred_nesting_is_limited() -> None:
    dp, _ = node("qdisc add dev eth1 ingress\n"
                 "filter add dev eth0 ingress pref 1 protocol ip flower "
                 "action mirred ingress redirect dev eth1\n"
                 "filter add dev eth1 ingress pref 1 protocol ip flower "
                 "action mirred ingress redirect dev eth0\n")
    out = dp.receive("eth0", PKT, 1.0)
    assert [e.port for e in out.egress] == ["eth0", "eth1", "eth0", "eth1"]
    assert not out.egress[0].sent  # the innermost redirect was dropped at the limit


def test_mirred_to_a_device_that_does_not_exist(tc: Tc) -> None:
    dp = Datapath(["eth0"])
    t = Tc(dp.tc)
    t.ok("qdisc add dev eth0 ingress")
    res = t("filter add dev eth0 ingress protocol ip pref 1 flower "
            "action mirred egress redirect dev nope")
    assert res.code == 1
    assert res.err.startswith('Cannot find device "nope"\nbad action parsing\n')
