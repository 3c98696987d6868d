"""The node process: the only asyncio in `node` (DESIGN.md §2).

  config.py   NodeConfig, parsed and validated once (ConfigError names the field)
  wire.py     ports: UdpPort (one raw L3 packet per datagram), MemoryPort; the path
              annotation header (encode_annotation / decode_annotated)
  node.py     Node: conntrack + tc + card + datapath + syncbus core, synchronous
  views.py    what the control API shows (JSON, conntrack -L/-E text, metrics)
  metrics.py  Prometheus text format
  control.py  the HTTP control API (asyncio streams)
  nemesis.py  fault hooks set through the control API: sync impairment, broker
              link and data link cuts, clock offset
  link.py     the data links a node tracks (a port's wire, its interface's state):
              one down puts the node in FAULT (keepalived's track_interface)
  service.py  run(cfg): one TaskGroup of pumps, timers, replication, control
  cli.py      ctlab node | broker | conntrack
"""
