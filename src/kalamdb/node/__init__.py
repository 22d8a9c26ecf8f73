"""Cluster glue: a Raft-backed node behind the same interface as the single-node server."""
