"""kalamdb.raftio: what the pure Raft core (`kalamdb.raft`) needs from the world, kept apart from it.

`storage` (the durable log: segment files, group-commit fdatasync; with `log_replay` recovering it
at open, `log_state` its in-memory picture and `log_format` its record types and errors) over `wal`
(record framing, failpoints), and `transport` (authenticated TCP links between peers: the `inbound`
listener, the `outbound` per-peer links, the `handshake`, the `links` context both share, the `transport_stats` counters) over
`frames` (its sans-IO wire format). The driver (`kalamdb.node.driver`) joins these to the core; see
docs/design/layers.md for what may import what.
"""
