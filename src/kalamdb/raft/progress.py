"""The leader's view of one follower: how far it matches, what to send next, and how to send it.

States follow etcd: PROBE sends one AppendEntries at a time until the follower's log position is
found; REPLICATE streams optimistically, bounded by a window of in-flight messages; SNAPSHOT waits
for an InstallSnapshot transfer to finish.
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum

from kalamdb.raft.types import SnapshotMeta


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Progress:
    __slots__ = (
        "inflight",
        "is_learner",
        "match",
        "max_inflight",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "snapshot_idle_ticks",
        "snapshot_meta",
        "snapshot_offset",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int, is_learner: bool = False):
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight: deque[int] = deque()  # last index of each AppendEntries in flight
        self.max_inflight = max_inflight
        self.recent_active = False
        self.pending_snapshot = 0
        self.snapshot_meta: SnapshotMeta | None = None  # the snapshot being sent while in SNAPSHOT state
        self.snapshot_offset = 0  # next byte the follower expects
        self.snapshot_idle_ticks = 0
        self.is_learner = is_learner

    def __repr__(self) -> str:
        return (f"Progress(match={self.match}, next={self.next}, state={self.state.name}, "
                f"inflight={len(self.inflight)}, active={self.recent_active})")

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflight.clear()

    def become_snapshot(self, meta: SnapshotMeta) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = meta.index
        self.snapshot_meta = meta
        self.snapshot_offset = 0
        self.snapshot_idle_ticks = 0
        self.probe_sent = False
        self.inflight.clear()

    def snapshot_in_flight(self) -> SnapshotMeta:
        """The snapshot being sent; asked only in SNAPSHOT state, which become_snapshot entered with it."""
        meta = self.snapshot_meta
        if meta is None or self.state != ProgressState.SNAPSHOT:
            raise RuntimeError(f"no snapshot is being sent ({self!r})")
        return meta

    @property
    def paused(self) -> bool:
        s = self.state
        if s == ProgressState.REPLICATE:
            return len(self.inflight) >= self.max_inflight
        if s == ProgressState.PROBE:
            return self.probe_sent
        return True

    def sent(self, last_index: int, n_entries: int) -> None:
        """Record an AppendEntries whose last entry is `last_index`."""
        if self.state == ProgressState.REPLICATE:
            if n_entries:
                self.next = last_index + 1
                self.inflight.append(last_index)
        else:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """Follower acknowledged up to `index`; True if that is news."""
        updated = False
        if index > self.match:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        infl = self.inflight
        while infl and infl[0] <= index:
            infl.popleft()
        return updated

    def maybe_decrease_to(self, rejected: int, match_hint: int) -> bool:
        """Follower rejected an append at `rejected`; move `next` back. False if the reject is stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True
