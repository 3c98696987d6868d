"""The node daemon's exceptions: one root, one type per boundary.

  DaemonError   the root
  ConfigError   a configuration the daemon refuses (file, field, tc script):
                the message names the field; `ctlab node` prints it, exit 2
  RequestError  a control API request the daemon refuses (-> 4xx + JSON)
"""

from __future__ import annotations


class DaemonError(Exception):
    """Root of every node daemon error."""


class ConfigError(DaemonError):
    """A bad node configuration; str() names the field."""


class RequestError(DaemonError):
    """A bad control API request; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
