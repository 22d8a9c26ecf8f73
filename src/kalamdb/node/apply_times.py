"""When this node applied what: the replication-lag figure that no HTTP round trip distorts.

A lag probe that asks a busy follower "have you applied N yet?" measures its own request's queueing
as much as replication (docs/PERFORMANCE.md: on saturated followers the bare round trip was most of
the figure). So each node remembers, for its last applied batches, the batch's last index and the
`time.monotonic()` reading taken right after it was applied, and `/v1/api/cluster/wait` answers with
the time index N was applied. On one machine CLOCK_MONOTONIC is the same clock in every process, so
a follower's time minus the leader's is the lag itself (the bench's lag scenario, bench/cluster.py);
between machines the readings are not comparable.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import deque

CAPACITY = 2048  # batches remembered (a batch is one or more entries): seconds of history under load, ~0.2 MB


class ApplyTimes:
    """(last index, monotonic seconds) of the last `capacity` applied batches, oldest first.
    Written by whichever thread applies (one at a time), read by any, under a lock: copying a
    deque is not atomic (the copy's allocation can run the garbage collector, and with it
    another thread)."""

    def __init__(self, applied_index: int, capacity: int = CAPACITY):
        """`applied_index`: what was applied before this record started (its times are unknown)."""
        self._batches: deque[tuple[int, float]] = deque(maxlen=capacity)
        self._floor = applied_index  # indexes up to here were applied at a time not remembered
        self._lock = threading.Lock()

    def record(self, last_index: int) -> None:
        """Everything up to `last_index` is applied, as of now (a batch, or a snapshot installed)."""
        now = time.monotonic()
        with self._lock:
            batches = self._batches
            if len(batches) == batches.maxlen:
                self._floor = batches[0][0]  # the append evicts it
            batches.append((last_index, now))

    def applied_at(self, index: int) -> float | None:
        """When `index` was applied here: the time of the first batch that reached it. None when it
        is not applied yet, or was applied before the oldest batch remembered."""
        with self._lock:
            batches, floor = tuple(self._batches), self._floor
        if index <= floor:
            return None
        i = bisect_left(batches, index, key=lambda b: b[0])
        return batches[i][1] if i < len(batches) else None
