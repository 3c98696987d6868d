"""A progress bar on stderr while a run goes: redrawn in place on a terminal,
a plain line every few seconds otherwise (CI logs)."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

WIDTH = 28
PLAIN_EVERY = 5.0


class Progress:
    def __init__(self, name: str, total: float, *, enabled: bool = True,
                 stream: TextIO | None = None) -> None:
        self.name = name
        self.total = max(total, 1e-9)
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_plain = float("-inf")
        self._drawn = False

    def line(self, done: float, **info: Any) -> str:
        frac = min(max(done / self.total, 0.0), 1.0)
        fill = round(frac * WIDTH)
        bar = "█" * fill + "·" * (WIDTH - fill)
        extra = "  ".join(f"{k}={v}" for k, v in info.items())
        return f"{self.name} [{bar}] {done:5.1f}/{self.total:g}s  {extra}"

    def update(self, done: float, **info: Any) -> None:
        if not self.enabled:
            return
        text = self.line(done, **info)
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self._drawn = True
        else:
            now = time.monotonic()
            if now - self._last_plain < PLAIN_EVERY:
                return
            self._last_plain = now
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


__all__ = ["Progress"]
