"""The control API: a small HTTP/1.1 server on asyncio streams, JSON in and out.

    GET  /health                       {"ok": true, ...}
    GET  /state[?brief=1]              role, term, epoch, readiness gate, peers,
                                       table sizes, sync lag, counters (brief: role,
                                       term, epoch, gate, tables, counters: cheap
                                       enough to poll at 10 Hz); "now" (this
                                       node's clock), "mechanisms" (the config's
                                       switches), "offload" {"eligible": N,
                                       "installed": M, "pending": P; above 8192
                                       entries eligible is the last count made in
                                       steps, and "eligible_counted_at" says when},
                                       "gc" (collector pauses), "nemesis" (as GET
                                       /nemesis)
    GET  /conntrack[?format=text]      the table (conntrack -L lines with text); each
                                       entry: "orig" tuple, "state" (protocol state
                                       name, e.g. ESTABLISHED), "timeout" (seconds
                                       left), "period" (its timeout setting) ...
    GET  /tc[?json=1]                  tc -s qdisc show + tc -s filter show per port
    GET  /card[?entries=1]             card statistics and fault knobs (+ "entries")
    GET  /card/entries                 {"entries": [{"orig": TUPLE, "zone": Z, "id": ID,
                                       "direction": "original"|"reply", "state":
                                       "IN_HW"|"PENDING"|"DYING"|..., "packets": N}]}:
                                       the card's hardware CT entries
    POST /card/fault                   {"knob": value, ...} (node.offload.faults.KNOBS)
    GET  /nemesis                      the nemesis settings and counters (nemesis.py)
    POST /nemesis                      {"sync": {...} | null, "broker_link": "cut"|"up",
                                       "data": "cut"|"up", "clock_offset": S} (any
                                       subset; all validated before any is applied)
    POST /inject                       {"port": P, "hex": RAW_L3} -> the Outcome (a
                                       data link cut drops it: "drop_reason" NEMESIS)
    GET  /capture                      packets sent out of ports since the last read
    GET  /events?since=N[&wait=S]      CtEvents after seq N (long poll up to S s);
                                       &format=text: conntrack -E lines; &brief=1:
                                       seq, type, reason, timeout and orig only. A DESTROY's
                                       "reason": timeout, early_drop, flush, rst,
                                       reopen, synced, kill; "timeout": the entry's
                                       timeout setting (s)
    GET  /metrics                      Prometheus text format

One request per connection (Connection: close). A bad request gets a 4xx and
{"error": ...}; a handler bug gets a 500; neither stops the node. Every
connection is a child of the server's TaskGroup.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from node.daemon import nemesis, views
from node.daemon.config import Addr
from node.daemon.errors import ConfigError, RequestError
from node.offload.faults import FaultError, read_knobs
from node.tc.parse import Options

if TYPE_CHECKING:
    from node.daemon.service import Daemon

log = logging.getLogger("node.daemon.control")

MAX_BODY = 1 << 20
MAX_HEAD = 16 * 1024
MAX_CONNECTIONS = 128
HEAD_TIMEOUT = 10.0
MAX_WAIT = 30.0
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 411: "Length Required", 413: "Payload Too Large",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           501: "Not Implemented", 503: "Service Unavailable"}


class Request(NamedTuple):
    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def json(self) -> Any:
        if not self.body:
            raise RequestError(400, "a JSON body is required")
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"the body is not JSON: {exc}") from None


class Response(NamedTuple):
    status: int
    body: bytes
    content_type: str = "application/json"


def ok(value: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(value, indent=1).encode() + b"\n")


def text(value: str, content_type: str = "text/plain; charset=utf-8") -> Response:
    return Response(200, value.encode(), content_type)


def error(status: int, message: str) -> Response:
    return ok({"error": message, "status": status}, status)


Handler = Callable[["Daemon", Request], Awaitable[Response]]


# ================================================================ handlers
async def health(d: Daemon, req: Request) -> Response:
    n = d.node
    return ok({"ok": True, "node": n.cfg.node, "role": n.core.role, "epoch": n.epoch,
               "bus_connected": d.bus.connected})


async def state(d: Daemon, req: Request) -> Response:
    if req.arg("brief", "0") not in ("0", "", "false"):
        return ok(views.brief_state_json(d.node))
    now = d.clock()
    st = views.state_json(d.node, now, d.bus.status(), d.table_count.read(now))
    st["ports"] = d.port_stats()
    st["control"] = d.control_url
    st["nemesis"] = nemesis.state(d)
    return ok(st)


async def conntrack(d: Daemon, req: Request) -> Response:
    fmt = req.arg("format", "json")
    if fmt == "text":
        return text(views.conntrack_text(d.node, d.clock()))
    if fmt != "json":
        raise RequestError(400, f"format must be json or text, not {fmt!r}")
    return ok({"entries": views.conntrack_json(d.node, d.clock())})


async def tc_show(d: Daemon, req: Request) -> Response:
    as_json = req.arg("json", "0") not in ("0", "", "false")
    model = d.node.datapath.tc
    opts = Options(stats=1, json=as_json)
    cmds = [("qdisc", ["qdisc", "show"])]
    for port in d.node.ports:
        for hook in ("ingress", "egress"):
            cmds.append((f"{port} {hook}", ["filter", "show", "dev", port, hook]))
    outputs: dict[str, Any] = {}
    chunks = []
    for name, argv in cmds:
        _, out, err = model.run(argv, opts)
        if as_json:
            outputs[name] = json.loads(out) if out.strip() else []
        else:
            chunks.append(out + err)
    return ok(outputs) if as_json else text("".join(chunks))


async def card(d: Daemon, req: Request) -> Response:
    c = d.node.card
    out: dict[str, Any] = {"stats": c.stats, "knobs": read_knobs(c.faults),
                           "sw_only_zones": sorted(c.sw_only_zones)}
    if req.arg("entries", "0") not in ("0", "", "false"):
        out["entries"] = views.card_entries_json(d.node)
    return ok(out)


async def card_entries(d: Daemon, req: Request) -> Response:
    return ok({"entries": views.card_entries_json(d.node)})


async def nemesis_get(d: Daemon, req: Request) -> Response:
    return ok(nemesis.state(d))


async def nemesis_post(d: Daemon, req: Request) -> Response:
    try:
        change = nemesis.parse(req.json())
    except nemesis.NemesisError as exc:
        raise RequestError(400, str(exc)) from None
    nemesis.apply(d, change)
    return ok(nemesis.state(d))


async def card_fault(d: Daemon, req: Request) -> Response:
    body = req.json()
    if not isinstance(body, dict) or not body:
        raise RequestError(400, 'expected {"knob": value, ...}')
    try:
        knobs = d.node.set_faults(body)
    except FaultError as exc:
        raise RequestError(400, str(exc)) from None
    return ok({"knobs": knobs})


async def inject(d: Daemon, req: Request) -> Response:
    body = req.json()
    if not isinstance(body, dict):
        raise RequestError(400, 'expected {"port": NAME, "hex": PACKET}')
    port, raw = body.get("port"), body.get("hex")
    if not isinstance(port, str) or port not in d.ports:
        raise RequestError(400, f"port must be one of {sorted(d.ports)}, not {port!r}")
    if not isinstance(raw, str):
        raise RequestError(400, "hex must be a string of hex digits")
    try:
        data = bytes.fromhex(raw)
    except ValueError:
        raise RequestError(400, "hex is not hex") from None
    if d.ports[port].cut:  # the data link is cut: it never arrives
        d.ports[port].stats["nemesis_drops"] += 1
        return ok({"verdict": "drop", "code": -1, "path": None, "why": "nemesis",
                   "chains": [], "ct_state": "", "zone": 0, "mark": 0,
                   "drop_reason": "NEMESIS_DATA_CUT", "forwarded": False, "ports": [],
                   "egress": [], "pkt": raw, "sent": []})
    got = await d.inject(port, data)
    if got.outcome is None:
        raise RequestError(400, got.error)
    out = views.outcome_json(got.outcome)
    out["sent"] = [{"port": p, "hex": b.hex(), "path": path} for p, b, path in got.sends
                   if p in d.ports and not d.ports[p].cut]
    return ok(out)


async def capture(d: Daemon, req: Request) -> Response:
    return ok({"packets": d.node.take_capture()})


async def events(d: Daemon, req: Request) -> Response:
    try:
        since = int(req.arg("since", "0") or 0)
        wait = min(float(req.arg("wait", "0") or 0), MAX_WAIT)
    except ValueError:
        raise RequestError(400, "since must be an integer and wait a number") from None
    node = d.node
    if wait > 0 and node.event_seq <= since:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait), d.events:
                await d.events.wait_for(lambda: node.event_seq > since)
    got = node.events_since(since)
    if req.arg("format") == "text":
        return text("".join(views.event_text(ev) + "\n" for _, ev in got))
    if req.arg("brief", "0") not in ("0", "", "false"):
        return ok({"events": [views.brief_event_json(seq, ev) for seq, ev in got],
                   "next": node.event_seq})
    return ok({"events": [views.event_json(seq, ev) for seq, ev in got],
               "next": node.event_seq})


async def metrics(d: Daemon, req: Request) -> Response:
    return text(views.metrics_text(d.node, d.clock(), d.bus.status(), d.port_stats()),
                "text/plain; version=0.0.4; charset=utf-8")


ROUTES: dict[str, dict[str, Handler]] = {
    "/health": {"GET": health},
    "/state": {"GET": state},
    "/conntrack": {"GET": conntrack},
    "/tc": {"GET": tc_show},
    "/card": {"GET": card},
    "/card/entries": {"GET": card_entries},
    "/card/fault": {"POST": card_fault},
    "/nemesis": {"GET": nemesis_get, "POST": nemesis_post},
    "/inject": {"POST": inject},
    "/capture": {"GET": capture},
    "/events": {"GET": events},
    "/metrics": {"GET": metrics},
}


async def dispatch(d: Daemon, req: Request) -> Response:
    methods = ROUTES.get(req.path.rstrip("/") or "/")
    if methods is None:
        return error(404, f"no such endpoint {req.path!r} (try {', '.join(ROUTES)})")
    handler = methods.get(req.method)
    if handler is None:
        return error(405, f"{req.method} not allowed on {req.path} "
                          f"(allowed: {', '.join(methods)})")
    try:
        return await handler(d, req)
    except RequestError as exc:
        return error(exc.status, exc.message)


# ================================================================ HTTP
async def read_request(reader: asyncio.StreamReader) -> Request:
    try:
        async with asyncio.timeout(HEAD_TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise RequestError(431, "request head too large") from None
    except asyncio.IncompleteReadError:
        raise RequestError(400, "incomplete request") from None
    except TimeoutError:
        raise RequestError(408, "request head not received in time") from None
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise RequestError(400, "malformed request line") from None
    if not version.startswith("HTTP/1.") or not method.isalpha():
        raise RequestError(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise RequestError(400, "malformed header line")
        headers[name.lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise RequestError(501, "Transfer-Encoding is not supported: send Content-Length")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise RequestError(400, "bad Content-Length") from None
    if length < 0:
        raise RequestError(400, "bad Content-Length")
    if length > MAX_BODY:
        raise RequestError(413, f"body larger than {MAX_BODY} bytes")
    try:
        async with asyncio.timeout(HEAD_TIMEOUT):
            body = await reader.readexactly(length) if length else b""
    except (asyncio.IncompleteReadError, TimeoutError):
        raise RequestError(400, "body shorter than Content-Length") from None
    parts = urlsplit(target)
    return Request(method, parts.path or "/", parse_qs(parts.query), body)


async def write_response(writer: asyncio.StreamWriter, resp: Response) -> None:
    head = (f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Status')}\r\n"
            f"Content-Type: {resp.content_type}\r\nContent-Length: {len(resp.body)}\r\n"
            "Connection: close\r\n\r\n")
    writer.write(head.encode() + resp.body)
    await writer.drain()


async def connection(d: Daemon, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
    """One request; never raises (but for cancellation)."""
    try:
        try:
            req = await read_request(reader)
            resp = await dispatch(d, req)
        except RequestError as exc:
            resp = error(exc.status, exc.message)
        except Exception as exc:
            log.exception("control API handler failed")
            resp = error(500, f"{type(exc).__name__}: {exc}")
        await write_response(writer, resp)
    except (ConnectionError, TimeoutError):
        pass
    except Exception:
        log.exception("control API connection failed")
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def serve(d: Daemon, listen: Addr, listening: asyncio.Event) -> None:
    """Serve until cancelled; sets d.control_url and `listening` once bound."""
    pending: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = \
        asyncio.Queue(MAX_CONNECTIONS)

    def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            pending.put_nowait((reader, writer))
        except asyncio.QueueFull:
            writer.close()

    try:
        server = await asyncio.start_server(accepted, listen[0], listen[1], limit=MAX_HEAD)
    except OSError as exc:
        raise ConfigError(f"control.listen: cannot listen on {listen[0]}:{listen[1]}: "
                          f"{exc.strerror or exc}") from None
    host, port = server.sockets[0].getsockname()[:2]
    d.control_url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    listening.set()
    try:
        async with asyncio.TaskGroup() as tg:
            while True:
                reader, writer = await pending.get()
                tg.create_task(connection(d, reader, writer))
    finally:
        server.close()


__all__ = ["ROUTES", "Request", "Response", "dispatch", "read_request", "serve"]
