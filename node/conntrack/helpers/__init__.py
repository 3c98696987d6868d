"""Connection tracking helpers (ALGs): explicit registry, name -> helper."""

from __future__ import annotations

from typing import Any

HELPERS: dict[str, Any] = {}
