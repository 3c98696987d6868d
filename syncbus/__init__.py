"""syncbus: conntrack replication over MQTT (DESIGN.md sections 4, 5 and 7).

The pure core (no asyncio, no I/O, time passed in), importable from here:

  messages   Envelope and bodies (frozen dataclasses), per-connection records
  codec      encode()/decode(): the only msgpack user; HMAC; CodecError
  topics     topic names and name validation
  ctstate    conntrack Entry <-> records, the "most advanced wins" merge
  coalesce   the dirty set
  outbox     the sending side: seqs, frames within a byte budget, replays, snapshots
  replica    the receiving side: apply(), gaps, epochs, tombstones, pre-install
  aging      distributed aging ("seconds ago" touches)
  election   active-standby roles, the readiness gate, active-active ownership
  core       SyncCore: all of the above for one member; what the daemon drives

The shells (asyncio) are imported explicitly: syncbus.bus (MqttBus, LocalBus:
the only aiomqtt user), syncbus.service (Member: the bus <-> core loop),
syncbus.broker (embedded amqtt, managed Mosquitto), syncbus.bench.
"""

from syncbus.core import SyncConfig, SyncCore
from syncbus.errors import BrokerError, BusError, CodecError, SyncbusError, TopicError
from syncbus.outbox import Publish

__all__ = ["BrokerError", "BusError", "CodecError", "Publish", "SyncConfig", "SyncCore",
           "SyncbusError", "TopicError"]
