"""What the control API shows, pure: a Node (and the bus status) in, JSON-able
values or text out. Nothing here changes state."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from node.conntrack.entry import (
    IP_CT_ESTABLISHED,
    IP_CT_NEW,
    IPS_HW_OFFLOAD,
    IPS_OFFLOAD,
    IPS_SEEN_REPLY,
    Entry,
    status_names,
)
from node.conntrack.events import DESTROY, CtEvent, CtView
from node.conntrack.listing import format_entry
from node.conntrack.tuple import Tuple
from node.daemon.metrics import Metrics
from node.daemon.node import Node
from node.datapath import PATHS, Outcome
from node.offload.flowtable import FLOW_USED
from node.offload.hwtable import ABSENT, DYING, IN_HW, PENDING, HwState
from node.offload.policy import should_offload
from node.packet import build, ip_str
from node.tc.skb import ct_state_str
from syncbus.messages import ROLES

EVENT_TAGS = {"NEW": "[NEW]", "UPDATE": "[UPDATE]", "DESTROY": "[DESTROY]"}


def tuple_json(t: Tuple | None) -> dict[str, Any] | None:
    if t is None:
        return None
    return {"family": t.family, "proto": t.proto, "src": ip_str(t.src), "dst": ip_str(t.dst),
            "sport": t.sport, "dport": t.dport}


def view_json(v: CtView) -> dict[str, Any]:
    return {"id": v.id, "orig": tuple_json(v.orig), "reply": tuple_json(v.reply),
            "zone": v.zone, "status": status_names(v.status), "state": v.proto_state,
            "timeout": round(v.timeout, 3), "period": v.period, "mark": v.mark,
            "labels": v.labels,
            "helper": v.helper, "flags": v.flags, "packets": list(v.packets),
            "bytes": list(v.bytes)}


def conntrack_json(node: Node, now: float) -> list[dict[str, Any]]:
    """Every entry with its card flow and where it came from."""
    out = []
    meta = node.core.replica.meta
    for v in node.ct.dump(now):
        d = view_json(v)
        d["offload"] = ("hw" if v.status & IPS_HW_OFFLOAD else
                        "sw" if v.status & IPS_OFFLOAD else None)
        entry = node.ct.find(v.orig, v.zone)
        info = node.card.inspect(entry) if entry is not None else None
        d["card"] = None if info is None else {
            "flags": info.flags, "hw": [s.name for s in info.hw],
            "installed": any(s.name == "IN_HW" for s in info.hw)
            and all(s.name in ("IN_HW", "DYING", "ABSENT") for s in info.hw),
            "packets": list(info.packets), "timeout": round(info.timeout - now, 3)}
        m = meta.get(v.id)
        d["synced_from"] = m.origin if m is not None else None
        out.append(d)
    return out


def conntrack_text(node: Node, now: float) -> str:
    counters = bool(node.ct.sysctl.nf_conntrack_acct)
    lines = [format_entry(v, counters=counters) for v in node.ct.dump(now)]
    return "".join(line + "\n" for line in lines)


def brief_event_json(seq: int, ev: CtEvent) -> dict[str, Any]:
    """event_json() without the entry's details: what a history recorder needs."""
    return {"seq": seq, "type": ev.type,
            "reason": (ev.reason or "kill") if ev.type == DESTROY else None,
            "timeout": ev.entry.period, "orig": tuple_json(ev.entry.orig)}


def event_json(seq: int, ev: CtEvent) -> dict[str, Any]:
    """One event. "reason" says why a DESTROY happened ("timeout", "early_drop",
    "flush", "rst", "reopen", "synced", "kill"; None for NEW/UPDATE) and "timeout"
    is the entry's timeout setting in seconds (entry.period; entry.timeout is
    the seconds it had left)."""
    return {"seq": seq, "type": ev.type, "at": ev.at, "bits": ev.bit_names,
            "reason": (ev.reason or "kill") if ev.type == DESTROY else None,
            "timeout": ev.entry.period, "entry": view_json(ev.entry), "text": event_text(ev)}


def event_text(ev: CtEvent) -> str:
    """One `conntrack -E` line."""
    return f"{EVENT_TAGS.get(ev.type, ev.type):>9} {format_entry(ev.entry)}"


def outcome_json(out: Outcome) -> dict[str, Any]:
    return {"verdict": out.verdict, "code": out.code, "path": out.path, "why": out.why,
            "chains": [list(c) for c in out.chains], "ct_state": ct_state_str(out.ct_state),
            "zone": out.zone, "mark": out.mark, "drop_reason": out.drop_reason,
            "forwarded": out.forwarded, "ports": list(out.ports),
            "egress": [{"port": e.port, "how": e.how, "direction": e.direction,
                        "sent": e.sent, "hex": build(e.pkt).hex()} for e in out.egress],
            "pkt": build(out.pkt).hex()}


def quantiles(samples: Any, qs: tuple[float, ...] = (0.5, 0.99)) -> list[float | None]:
    xs = sorted(itertools.islice(reversed(samples), 10000))
    if not xs:
        return [None for _ in qs]
    return [xs[min(len(xs) - 1, int(q * len(xs)))] for q in qs]


def _ms(x: float | None) -> float | None:
    return None if x is None else round(1000 * x, 3)


def _installed_ids(node: Node) -> set[int]:
    """Ids of the conntrack entries whose flow is in the card: at least one
    hardware entry IN_HW, none pending or failed (the conntrack listing's rule)."""
    return _card_ids(node)[0]


def _card_ids(node: Node) -> tuple[set[int], set[int]]:
    """(installed, in flight): ids of the conntrack entries whose flow is in the
    card (_installed_ids), and of those whose insert the card has accepted and
    not completed yet (a hardware entry PENDING, none failed)."""
    ok, flying, cookies = _card_masks(node)
    return set(cookies[ok].tolist()), set(cookies[flying].tolist())


def _card_masks(node: Node) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """_card_ids() as boolean masks over the flow ids, and the flows' cookies."""
    flows, hw = node.card.flows, node.card.hw
    n = len(flows.owners)
    st = hw.state_v[:2 * n].reshape(-1, 2)
    used = (flows.flags_v[:n] & FLOW_USED).astype(bool)
    ok = _IS_IN_HW[st].any(axis=1) & _IS_DONE[st].all(axis=1) & used
    flying = _IS_PENDING[st].any(axis=1) & _IS_FLYING[st].all(axis=1) & used & ~ok
    return ok, flying, flows.cookie_v[:n]


def _state_set(*states: int) -> np.ndarray:
    """A lookup table over the hardware states (a uint8 array indexes it)."""
    table = np.zeros(256, bool)
    table[list(states)] = True
    return table


_IS_DONE = _state_set(IN_HW, DYING, ABSENT)
_IS_FLYING = _state_set(PENDING, IN_HW, DYING, ABSENT)
_IS_IN_HW = _state_set(IN_HW)
_IS_PENDING = _state_set(PENDING)
_STATE_NAMES = {int(s): s.name for s in HwState}


def offload_json(node: Node) -> dict[str, int]:
    """{"eligible": conntrack entries act_ct's offload rule (policy.should_offload)
    would put in the card (not in a software-only zone), "installed": how many of
    them have their hardware entries IN_HW, "pending": how many more the card has
    accepted, landing `insert_latency` later}. One pass over the table."""
    ids, flying = _card_ids(node)
    eligible = installed = pending = 0
    for entry in _eligible(node, node.ct.entries()):
        eligible += 1
        if entry.id in ids:
            installed += 1
        elif entry.id in flying:
            pending += 1
    return {"eligible": eligible, "installed": installed, "pending": pending}


def _eligible(node: Node, entries: Iterable[Entry]) -> Iterator[Entry]:
    sw_only = node.card.sw_only_zones
    offload = should_offload
    for entry in entries:
        if offload(entry, IP_CT_ESTABLISHED if entry.status & IPS_SEEN_REPLY else IP_CT_NEW) \
                is not None and not (sw_only and entry.zone in sw_only):
            yield entry


class OffloadCount:
    """offload_json() without a pass over the table now, for the moment a node
    takes the active role (a node stalled for a pass over 200k entries forwards
    nothing meanwhile) and for /state on a big table (TableCount): `installed`
    and `pending` (flows whose hardware entries are IN_HW / accepted) are counted
    on the card's arrays at once, into `record`; the
    conntrack entries the offload rule makes eligible are counted afterwards,
    1024 entries a step (under a millisecond) between packets (step() until it
    returns True), on a copy of the table's hash taken at that moment."""

    def __init__(self, node: Node, record: dict[str, Any]) -> None:
        self.node = node
        self.record = record
        ok, flying, _ = _card_masks(node)
        record.update(installed=int(np.count_nonzero(ok)), pending=int(np.count_nonzero(flying)),
                      eligible=None)
        self._entries = node.ct.frozen_entries()
        self._eligible = 0

    def step(self, n: int = 1024) -> bool:
        """Count up to `n` more entries; True when done (record["eligible"] set)."""
        chunk = list(itertools.islice(self._entries, n))
        self._eligible += sum(1 for _ in _eligible(self.node, chunk))
        if len(chunk) == n:
            return False
        self.record["eligible"] = self._eligible
        return True


AT_ONCE = 8192  # entries /state counts in one pass (a few milliseconds)


class TableCount:
    """offload_json() for /state on a table of any size. Up to AT_ONCE entries
    it is that pass; above, a pass would stop the node (about 0.65 us an entry:
    130 ms at 200k, every time a scenario runner reads /state), so installed and
    pending are counted on the card's flows at once and eligible is the last
    complete count, made in steps between packets (OffloadCount, queued with
    `submit`); each read that finds no count running starts one, and says how
    old the eligible figure is."""

    def __init__(self, node: Node, submit: Callable[[OffloadCount], None]) -> None:
        self.node = node
        self.submit = submit
        self.latest: dict[str, Any] | None = None
        self.running: OffloadCount | None = None

    def read(self, now: float) -> dict[str, Any]:
        node = self.node
        if len(node.ct) <= AT_ONCE:
            return dict(offload_json(node))
        if self.running is not None and self.running.record["eligible"] is not None:
            self.latest, self.running = self.running.record, None
        if self.running is None:
            self.running = OffloadCount(node, {"at": now})
            self.submit(self.running)
        ok, flying, _ = _card_masks(node)
        last = self.latest
        return {"eligible": None if last is None else last["eligible"],
                "installed": int(np.count_nonzero(ok)), "pending": int(np.count_nonzero(flying)),
                "eligible_counted_at": None if last is None else last["at"]}


def card_entries_json(node: Node) -> list[dict[str, Any]]:
    """The card's hardware CT entries (one per offloaded direction, any state but
    ABSENT): the connection's orig tuple and zone, the direction, the state."""
    card = node.card
    flows, hw = card.flows, card.hw
    n = 2 * len(flows.owners)
    out = []
    orig: dict[str, Any] | None = None
    last = -1
    for slot in np.flatnonzero(hw.state_v[:n] != ABSENT).tolist():
        fid = slot >> 1
        if not flows.flags[fid] & FLOW_USED:
            continue
        entry = flows.owners[fid]
        if fid != last:  # both directions of a flow share the tuple
            orig, last = tuple_json(entry.orig), fid
        out.append({"orig": orig, "zone": entry.zone, "id": entry.id,
                    "direction": "reply" if slot & 1 else "original",
                    "state": _STATE_NAMES[hw.state[slot]], "packets": hw.packets[slot]})
    return out


def brief_state_json(node: Node) -> dict[str, Any]:
    """The part of /state a poller needs every tick: no pass over the table."""
    core = node.core
    el = core.election
    return {"node": node.cfg.node, "epoch": node.epoch, "role": el.role, "term": el.term,
            "fault": el.fault, "gate": {"state": el.gate.state},
            "tables": {"conntrack": len(node.ct), "card_entries": node.card.hw.entries},
            "counters": dict(node.counters), "bad_messages": core.stats["bad_messages"],
            "outbox": {"items": core.outbox.stats.get("items", 0)},
            "replica": {"items": core.replica.stats.get("items", 0)},
            "promotion": node.promotions[-1] if node.promotions else None}


def state_json(node: Node, now: float, bus: dict[str, Any],
               offload: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full /state; `offload` is what TableCount.read() gave (else a pass
    over the table now)."""
    core = node.core
    el = core.election
    g = el.gate
    lag = list(core.replica.sync_lag)
    p50, p99 = quantiles(lag)
    inst = node.installs.latency
    return {
        "node": node.cfg.node, "cluster": node.cfg.cluster, "epoch": node.epoch,
        "role": el.role, "term": el.term, "mode": node.cfg.role.mode,
        "priority": node.cfg.role.priority, "active": el.active(), "eligible": el.eligible(),
        "fault": el.fault, "members": el.members(), "will_grace": el.cfg.will_grace,
        "step_down_isolated": el.cfg.step_down_isolated, "wills": dict(el.wills),
        "quorum": {"of": el.cfg.quorum, "votes": el.votes(now), "quorate": el.quorate(now),
                   "history": [[round(t - node.started, 3), q, why]
                               for t, q, why in el.quorum_log]},
        "witness": el.cfg.witness,
        "gate": {"state": g.state, "reason": g.reason, "timed_out": g.timed_out,
                 "source": g.source, "since": round(now - g.since, 3),
                 "history": [[round(t - node.started, 3), s, r] for t, s, r in g.history]},
        "peers": [{"node": p.node, "alive": p.alive, "role": p.hb.role, "epoch": p.epoch,
                   "priority": p.hb.priority, "term": p.hb.term, "ready": p.hb.ready,
                   "table_size": p.hb.table_size, "heard_ago": round(now - p.heard_at, 3)}
                  for p in sorted(el.peers.values(), key=lambda p: p.node)],
        "tables": {"conntrack": len(node.ct), "card_entries": node.card.hw.entries,
                   "card_flows": len(node.card.flows)},
        "sync_lag_ms": {"p50": _ms(p50), "p99": _ms(p99), "max": _ms(max(lag, default=None)),
                        "samples": len(lag)},
        "install_latency_ms": {"p50": _ms(inst.quantile(0.5)), "p99": _ms(inst.quantile(0.99)),
                               "count": inst.count},
        "counters": dict(node.counters),
        "bad_messages": core.stats["bad_messages"], "bad_reasons": dict(core.bad_reasons),
        "replica": dict(core.replica.stats), "outbox": dict(core.outbox.stats),
        "aging": dict(core.aging.stats), "bus": bus, "uptime": round(now - node.started, 3),
        "now": now, "roles": [[round(t - node.started, 3), what] for t, what in node.role_log],
        "mechanisms": dataclasses.asdict(node.cfg.mechanisms),
        "offload": offload if offload is not None else offload_json(node),
        "promotions": list(node.promotions), "gc": node.gc.summary(),
        "defer": None if core.deferrals is None else {
            **core.deferrals.summary(), "acks_sent": core.stats["acks_sent"],
            "acks_received": core.stats["acks_received"], "active": core.defers()},
    }


def metrics_text(node: Node, now: float, bus: dict[str, Any],
                 ports: dict[str, dict[str, int]]) -> str:
    m = Metrics()
    c = node.counters
    for path in PATHS:
        m.counter("ctlab_packets_total", "Packets through the datapath, by path (hw: the "
                  "card alone; sw-fastpath: act_ct's flow table; sw: conntrack)",
                  c.get("packets_" + path, 0), path=path)
    for why, n in sorted(node.datapath.misses.items()):
        m.counter("ctlab_packets_card_miss_total", "Packets the card sent to software, by "
                  "where it missed", n, reason=why)
    for verdict in ("pass", "drop", "stolen"):
        m.counter("ctlab_packet_verdicts_total", "Packets by tc verdict",
                  c.get("verdict_" + verdict, 0), verdict=verdict)
    m.counter("ctlab_packets_forwarded_total", "Packets redirected out of a port",
              c["forwarded"])
    for reason in sorted({"parse", *node.bad_packets}):
        m.counter("ctlab_bad_packets_total", "Packets dropped before the datapath",
                  node.bad_packets.get(reason, 0), reason=reason)
    for where, n in sorted(node.internal_errors.items()):
        m.counter("ctlab_internal_errors_total", "Bugs caught at a task boundary (see the log)",
                  n, where=where)
    for name, st in sorted(ports.items()):
        for key in ("rx", "tx", "rx_dropped", "tx_dropped", "nemesis_drops"):
            m.counter(f"ctlab_port_{key}_total", f"Port {key} packets", st.get(key, 0),
                      port=name)
    m.gauge("ctlab_conntrack_entries", "Conntrack entries", len(node.ct))
    card = node.card.stats
    m.gauge("ctlab_card_entries", "Hardware CT entries in use", card["entries"])
    m.gauge("ctlab_card_flows", "Flows in the flow tables", card["flows"])
    m.gauge("ctlab_card_capacity", "Hardware CT entries available", card["capacity"])
    m.counter("ctlab_card_inserts_total", "Hardware inserts done", card["inserts"])
    m.counter("ctlab_card_synced_total", "Replicated connections pre-installed",
              card["synced"])
    for reason in sorted({"fault", "table_full", "busy", *card["insert_failures_by_reason"]}):
        m.counter("ctlab_card_insert_failures_total", "Hardware inserts refused, by reason",
                  card["insert_failures_by_reason"].get(reason, 0), reason=reason)
    for reason, n in sorted(card["misses"].items()):
        m.counter("ctlab_card_misses_total", "Packets the card sent to software, by reason",
                  n, reason=reason)
    m.counter("ctlab_card_hw_packets_total", "Packets handled in hardware", card["hw_packets"])
    core = node.core
    m.counter("ctlab_sync_events_published_total", "Connection records published",
              core.outbox.stats["items"])
    m.counter("ctlab_sync_events_applied_total", "Connection records applied from peers",
              core.replica.stats["items"])
    m.counter("ctlab_sync_fast_lane_total",
              "Records applied from their wire fields (no per-record objects)",
              core.replica.stats["fast"])
    m.counter("ctlab_sync_frames_published_total", "ct frames published",
              core.outbox.stats["frames"])
    m.counter("ctlab_sync_bad_messages_total", "Frames dropped: malformed, forged, misplaced",
              core.stats["bad_messages"])
    for key in ("gaps", "resync_requests", "snapshots", "tombstoned", "fenced", "duplicates"):
        m.counter(f"ctlab_sync_{key}_total", f"Replica {key}", core.replica.stats[key])
    m.counter("ctlab_sync_acks_sent_total", "Acks of peers' ct frames sent (defer)",
              core.stats["acks_sent"])
    if core.deferrals is not None:
        d = core.deferrals
        m.gauge("ctlab_defer_held", "Packets held until a peer acknowledges", len(d))
        for how in ("acked", "timeout", "overflow"):
            m.counter("ctlab_defer_released_total", "Held packets released, by why",
                      d.stats[f"released_{how}"], why=how)
    m.histogram("ctlab_sync_install_latency_seconds",
                "Creation on the origin to installed in this node's card",
                node.installs.latency)
    lag = list(core.replica.sync_lag)
    for q, v in zip(("0.5", "0.99"), quantiles(lag), strict=True):
        if v is not None:
            m.gauge("ctlab_sync_lag_seconds", "Batch transit, recent samples", v, quantile=q)
    el = core.election
    for role in ROLES:
        m.gauge("ctlab_role", "This node's role (1 for the current one)",
                int(el.role == role), role=role)
    m.gauge("ctlab_term", "Election term", el.term)
    m.gauge("ctlab_epoch", "This process incarnation", node.epoch)
    m.gauge("ctlab_ready", "Readiness gate passed (snapshot complete)",
            int(el.gate.state == "ready"))
    m.gauge("ctlab_peers_alive", "Peers heard recently",
            sum(1 for p in el.peers.values() if p.alive))
    if el.cfg.quorum:
        m.gauge("ctlab_quorate", "Hears role.quorum members (itself included) and its own "
                "heartbeats: may be active", int(el.quorate(now)))
    for outcome, n in el.wills.items():
        m.counter("ctlab_role_wills_total", "MQTT wills of live peers: received, and taken as "
                  "the peer's death, withdrawn (it reconnected within role.will_grace) or "
                  "voided (this node's broker connection went down first)", n,
                  outcome=outcome)
    m.gauge("ctlab_bus_connected", "Connected to the broker", int(bool(bus.get("connected"))))
    m.counter("ctlab_bus_connects_total", "Broker (re)connections", bus.get("connects", 0))
    m.counter("ctlab_bus_socket_races_total",
              "Socket registrations that met a socket already closed by a dropped link "
              "(aiomqtt's race; ignored)", bus.get("socket_races", 0))
    m.histogram("ctlab_card_poll_seconds", "Card poll (bulk read + GC) duration",
                node.poll_seconds)
    for gen, pauses in node.gc.pauses.items():
        m.histogram("ctlab_gc_pause_seconds", "How long a cyclic garbage collection stopped "
                    "the node, by generation (2: a full one, over every tracked object)",
                    pauses, generation=str(gen))
    m.gauge("ctlab_uptime_seconds", "Seconds since start", now - node.started)
    return m.render()


__all__ = ["card_entries_json", "conntrack_json", "conntrack_text", "event_json", "event_text",
           "metrics_text", "offload_json", "outcome_json", "state_json", "tuple_json",
           "view_json"]
