"""A simulated disk for one node: writes are unsynced until `sync()`; a crash keeps only what was
synced plus a random prefix of the unsynced writes (an ordered log may have flushed some of them,
never out of order).

It holds exactly what a node's storage holds: hard state, the latest snapshot (meta + state-machine
image) and the log suffix after it.
"""

from __future__ import annotations

import random
from typing import Any

from kalamdb.raft.types import Entry, HardState, PersistentState, SnapshotMeta


class SimDisk:
    __slots__ = ("entries", "hard_state", "lost_writes", "pending", "snapshot", "snapshot_data", "syncs")

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snapshot: SnapshotMeta | None = None
        self.snapshot_data: Any = None
        self.entries: list[Entry] = []  # contiguous, first index = snapshot.index + 1 (or 1)
        self.pending: list[tuple] = []
        self.syncs = 0
        self.lost_writes = 0

    # --- writes (unsynced until sync) -------------------------------------------------------------
    def write_entries(self, entries: list[Entry]) -> None:
        self.pending.append(("e", entries))

    def write_hard_state(self, hs: HardState) -> None:
        self.pending.append(("h", hs))

    def write_snapshot(self, meta: SnapshotMeta, data: Any) -> None:
        """Store a snapshot and drop the log it covers (entries after it that agree are kept)."""
        self.pending.append(("s", meta, data))

    def sync(self) -> None:
        self.syncs += 1
        pending, self.pending = self.pending, []
        for op in pending:
            self._apply(op)

    def crash(self, rng: random.Random) -> None:
        """Power loss: a random prefix of the unsynced writes reached the platter, the rest is gone."""
        pending, self.pending = self.pending, []
        keep = rng.randint(0, len(pending)) if pending else 0
        for op in pending[:keep]:
            self._apply(op)
        self.lost_writes += len(pending) - keep

    def _apply(self, op: tuple) -> None:
        kind = op[0]
        if kind == "e":
            self._append(op[1])
        elif kind == "h":
            self.hard_state = op[1]
        else:
            _, meta, data = op
            base = self.snapshot.index if self.snapshot else 0
            last = base + len(self.entries)
            if meta.index <= base:
                return  # older than what we already have
            if meta.index <= last and self.entries[meta.index - base - 1].term == meta.term:
                del self.entries[: meta.index - base]  # compaction: keep the agreeing suffix
            else:
                self.entries.clear()  # installed from the leader: the old log is superseded
            self.snapshot = meta
            self.snapshot_data = data

    def _append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        base = self.snapshot.index if self.snapshot else 0
        first = entries[0].index
        if first <= base:  # the part already covered by the snapshot is dropped
            entries = entries[base + 1 - first:]
            if not entries:
                return
            first = entries[0].index
        pos = first - base - 1
        if pos > len(self.entries):
            raise AssertionError(f"log gap on disk: append at {first}, last {base + len(self.entries)}")
        del self.entries[pos:]
        self.entries.extend(entries)

    # --- reads ------------------------------------------------------------------------------------
    def load(self) -> PersistentState:
        """What a restarting node finds on disk (synced writes only: call after crash())."""
        return PersistentState(self.hard_state, self.snapshot, list(self.entries))

    def last_index(self) -> int:
        return (self.snapshot.index if self.snapshot else 0) + len(self.entries)
