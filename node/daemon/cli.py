"""The daemon's commands (wired into `ctlab` by scenarios/cli.py):

    ctlab node --config FILE [--log-level L]   run a node until SIGTERM/SIGINT;
                                               prints one JSON line when ready
                                               (node, control URL, broker URL)
    ctlab broker [--host H] [--port P]         the embedded amqtt broker
    ctlab conntrack -L|-E [--node URL]         conntrack-tools style output from a
                                               running node's control API

Exit codes: 0 done, 1 runtime failure (node unreachable ...), 2 bad usage or
configuration (one line naming the field, never a traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Sequence

from node.daemon.errors import ConfigError

DEFAULT_NODE_URL = "http://127.0.0.1:8001"


# ================================================================ ctlab node
def node_main(argv: Sequence[str]) -> int:
    from node.daemon import config

    ap = argparse.ArgumentParser(
        prog="ctlab node", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run one ctlab node until SIGTERM or SIGINT. It prints one JSON line when "
                    "ready (node, control URL, broker URL).",
        epilog="The config file (YAML, or JSON for a .json name); node, cluster and ports "
               "are required, the rest\nhas defaults, and an unknown field is an error:\n\n"
               + textwrap.indent(config.reference(), "  ")
               + "\n\nAn active-standby pair on loopback: node/daemon/examples/ (its README).\n"
                 "Exit codes: 0 stopped, 1 a runtime failure, 2 bad usage or configuration (one "
                 "line naming\nthe field, never a traceback).")
    ap.add_argument("--config", required=True, metavar="FILE", help="YAML or JSON config")
    ap.add_argument("--log-level", default="WARNING",
                    choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = ap.parse_args(list(argv))
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = config.load(args.config)
    except ConfigError as exc:
        print(f"ctlab node: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_node(cfg))
    except ConfigError as exc:
        print(f"ctlab node: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


async def _node(cfg: object) -> None:
    from node.daemon.config import NodeConfig
    from node.daemon.service import install_signals, run

    assert isinstance(cfg, NodeConfig)
    stop = asyncio.Event()
    install_signals(stop)

    def ready(info: dict[str, object]) -> None:
        print(json.dumps({"ready": True, **info}), flush=True)

    try:
        await run(cfg, stop=stop, on_ready=ready)
    except* ConfigError as eg:
        raise eg.exceptions[0] from None


# ================================================================ ctlab broker
def broker_main(argv: Sequence[str]) -> int:
    from syncbus.broker import main

    return main(list(argv))


# ================================================================ ctlab conntrack
def conntrack_main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="ctlab conntrack",
                                 description="conntrack-tools style output from a running node")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("-L", "--dump", action="store_true", help="list the connection table")
    mode.add_argument("-E", "--event", action="store_true", help="print events as they happen")
    ap.add_argument("--node", default=DEFAULT_NODE_URL, metavar="URL",
                    help=f"the node's control API (default {DEFAULT_NODE_URL})")
    ap.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
    ap.add_argument("--count", type=int, default=0,
                    help="-E: stop after this many events (0: until interrupted)")
    args = ap.parse_args(list(argv))
    base = args.node.rstrip("/")
    try:
        if args.dump:
            body = _get(f"{base}/conntrack?format=text", args.timeout)
            sys.stdout.write(body)
            n = body.count("\n")
            print(f"conntrack v1.4.8 (ctlab): {n} flow entries have been shown.",
                  file=sys.stderr)
            return 0
        return _events(base, args.timeout, args.count)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"ctlab conntrack: {base}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _get(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


def _events(base: str, timeout: float, count: int) -> int:
    since = json.loads(_get(f"{base}/events?since=0", timeout))["next"]
    shown = 0
    while True:
        got = json.loads(_get(f"{base}/events?since={since}&wait=10", timeout + 10))
        for ev in got["events"]:
            print(ev["text"], flush=True)
            shown += 1
            if count and shown >= count:
                return 0
        since = max(since, got["next"])


__all__ = ["broker_main", "conntrack_main", "node_main"]
