"""A discrete-event loop on simulated time: one heap of (time, seq, fn, args).

Simulated time is an integer count of microseconds. The sequence number breaks ties in insertion
order, so two runs that schedule the same things in the same order run them in the same order:
nothing depends on wall clock, object ids or hash order.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappop, heappush
from typing import Any

MS = 1_000  # microseconds per simulated millisecond
SECOND = 1_000_000


class EventBudgetExceeded(RuntimeError):
    """The run executed more events than its budget: a message storm or a livelock."""


class EventLoop:
    __slots__ = ("_heap", "_seq", "events_run", "max_events", "now")

    def __init__(self, max_events: int = 10_000_000) -> None:
        self.max_events = max_events
        self.now = 0
        self._heap: list[tuple[int, int, Callable[..., Any], tuple]] = []
        self._seq = 0
        self.events_run = 0

    def at(self, time: int, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) at simulated time `time` (never in the past)."""
        time = max(time, self.now)
        self._seq += 1
        heappush(self._heap, (time, self._seq, fn, args))

    def after(self, delay: int, fn: Callable[..., Any], *args: Any) -> None:
        self._seq += 1
        heappush(self._heap, (self.now + delay, self._seq, fn, args))

    def run_until(self, end: int, stop: Callable[[], bool] | None = None) -> bool:
        """Run events with time <= end. Returns True if `stop()` became true (checked after each
        event when given), False when the horizon was reached."""
        heap = self._heap
        n = 0
        budget = self.max_events - self.events_run
        try:
            while heap and heap[0][0] <= end:
                time, _, fn, args = heappop(heap)
                self.now = time
                fn(*args)
                n += 1
                if n >= budget:
                    raise EventBudgetExceeded(
                        f"more than {self.max_events} events by {time / 1000:.3f} ms simulated: a storm")
                if stop is not None and stop():
                    return True
            self.now = max(self.now, end)
            return False
        finally:
            self.events_run += n

    def __len__(self) -> int:
        return len(self._heap)
