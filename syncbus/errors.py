"""The syncbus exceptions: one root, one type per boundary.

  SyncbusError   the root
  CodecError     anything malformed, forged or oversized on the wire (codec.py)
  TopicError     a bad node/cluster name or a topic that is not ours (topics.py)
  BusError       the transport (bus.py): not connected, publish failed, bad URL
  BrokerError    starting or stopping a broker (broker.py)
"""

from __future__ import annotations


class SyncbusError(Exception):
    """Root of every syncbus error."""


class CodecError(SyncbusError):
    """A message that cannot be encoded or must not be accepted: malformed,
    truncated, oversized, of an unknown version or type, unauthenticated or
    wrongly authenticated. The receiver counts it and drops the message."""


class TopicError(SyncbusError):
    """A node or cluster name that is not allowed, or a topic outside ours."""


class BusError(SyncbusError):
    """The MQTT transport failed or is not connected."""


class BrokerError(SyncbusError):
    """A broker could not be started or stopped."""
