"""Prometheus text exposition (format 0.0.4), pure: samples in, text out.

    m = Metrics()
    m.counter("ctlab_packets_total", "Packets by path", 12, path="hw")
    m.histogram("ctlab_sync_install_latency_seconds", "...", hist)
    text = m.render()

Families are written in the order they are first added; samples of one family
are kept together (the format requires it). Label values are escaped.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

# 0.5 ms .. 10 s: the create->installed figure's range (targets: p99 5 ms .. 50 ms)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
                   5.0, 10.0)


class Histogram:
    """Cumulative buckets, count and sum, plus the last samples for quantiles."""

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS, keep: int = 10000) -> None:
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0
        self.keep = keep
        self.recent: list[float] = []

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value
        self.recent.append(value)
        if len(self.recent) > 2 * self.keep:
            del self.recent[:-self.keep]

    def quantile(self, q: float) -> float | None:
        """Over the last `keep` samples (None when there are none)."""
        xs = sorted(self.recent[-self.keep:])
        if not xs:
            return None
        return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _value(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


class Metrics:
    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def _family(self, name: str, kind: str, help_text: str) -> list[str]:
        fam = self._families.get(name)
        if fam is None:
            fam = self._families[name] = (kind, help_text, [])
        return fam[2]

    def gauge(self, name: str, help_text: str, value: float, **labels: str) -> None:
        self._family(name, "gauge", help_text).append(f"{name}{_labels(labels)} {_value(value)}")

    def counter(self, name: str, help_text: str, value: float, **labels: str) -> None:
        self._family(name, "counter", help_text).append(
            f"{name}{_labels(labels)} {_value(value)}")

    def histogram(self, name: str, help_text: str, h: Histogram, **labels: str) -> None:
        lines = self._family(name, "histogram", help_text)
        total = 0
        for bound, n in zip((*h.bounds, math.inf), h.counts, strict=True):
            total += n
            le = "+Inf" if math.isinf(bound) else repr(bound)
            lines.append(f"{name}_bucket{_labels({**labels, 'le': le})} {total}")
        lines.append(f"{name}_sum{_labels(labels)} {_value(h.sum)}")
        lines.append(f"{name}_count{_labels(labels)} {h.count}")

    def render(self) -> str:
        out: list[str] = []
        for name, (kind, help_text, lines) in self._families.items():
            out.append(f"# HELP {name} {help_text.replace(chr(10), ' ')}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(lines)
        return "\n".join(out) + "\n"


__all__ = ["LATENCY_BUCKETS", "Histogram", "Metrics"]
