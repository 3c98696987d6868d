"""The runner's client for the nodes' control API (node/daemon/control.py):
HTTP/1.1 over asyncio streams, one request per connection, JSON both ways.
Errors are ControlError (unreachable, timeout, a 4xx/5xx answer)."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

DEFAULT_TIMEOUT = 2.0


class ControlError(RuntimeError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


async def request(base: str, method: str, path: str, body: Any = None,
                  timeout: float = DEFAULT_TIMEOUT) -> Any:
    u = urlsplit(base)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    payload = b"" if body is None else json.dumps(body).encode()
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(head.encode() + payload)
                await writer.drain()
                raw = await reader.read()
            finally:
                writer.close()
    except TimeoutError:
        raise ControlError(f"{base}{path}: no answer in {timeout:g}s") from None
    except OSError as exc:
        raise ControlError(f"{base}{path}: {exc.strerror or exc}") from None
    head_b, _, data = raw.partition(b"\r\n\r\n")
    try:
        status = int(head_b.split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise ControlError(f"{base}{path}: not an HTTP answer") from None
    try:
        value = json.loads(data) if data.strip() else None
    except ValueError:
        value = data.decode(errors="replace")
    if status >= 400:
        err = value.get("error") if isinstance(value, dict) else value
        raise ControlError(f"{base}{path}: {status}: {err}", status)
    return value


async def get(base: str, path: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
    return await request(base, "GET", path, timeout=timeout)


async def post(base: str, path: str, body: Any, timeout: float = DEFAULT_TIMEOUT) -> Any:
    return await request(base, "POST", path, body, timeout)


__all__ = ["ControlError", "get", "post", "request"]
