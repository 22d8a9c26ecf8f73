"""kalamdb.raftio: what the pure Raft core (`kalamdb.raft`) needs from the world, kept apart from it.

`storage` (the durable log: segment files, group-commit fdatasync, replay) over `wal` (record
framing, failpoints), and `transport` (authenticated TCP links between peers) over `frames` (its
sans-IO wire format). The driver (`kalamdb.node.driver`) joins these to the core; see
docs/design/layers.md for what may import what.
"""
