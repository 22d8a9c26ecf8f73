"""SQL work runs on a bounded pool of worker threads, behind admission control.

Parsing, compiling and executing SQL is the only work a request can make arbitrarily expensive, so
none of it runs on the event loop that serves HTTP (health checks stay answerable) nor on the Raft
thread (heartbeats and acknowledgements never wait behind a query; node/driver.py). Three bounds,
each answered at once and with a message that says what to do, never by queueing without end:

- one user may have at most `max_requests_per_user` requests in flight (parsing, waiting for a
  worker, waiting for Raft): beyond that 429 RATE_LIMIT_EXCEEDED with `Retry-After`;
- one user may occupy at most `workers - 1` of the worker threads at once (at least one), so a user
  running the heaviest query they can write cannot starve everyone else: their next statement waits
  for their own earlier one, inside their in-flight allowance;
- at most `max_queued` requests may wait for a worker: beyond that 503 SERVER_BUSY (definite: nothing
  was run).

Counters live on the event loop (no locks); the pool's threads only run the functions handed to them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from kalamdb.errors import KalamError

T = TypeVar("T")

RETRY_AFTER_S = 1


class Overloaded(KalamError):
    """Refused before any work was done: definite, safe to retry after `retry_after_s`."""

    def __init__(self, code: str, message: str, status: int):
        super().__init__(code, message, status=status, details="definite: the request was not run")
        self.retry_after_s = RETRY_AFTER_S


class SqlWorkers:
    def __init__(self, *, workers: int = 2, max_queued: int = 512, max_requests_per_user: int = 128):
        if workers < 1 or max_queued < 1 or max_requests_per_user < 1:
            raise ValueError("workers, max_queued and max_requests_per_user must be >= 1")
        self.workers = workers
        self.max_queued = max_queued
        self.max_requests_per_user = max_requests_per_user
        self.per_user_workers = max(1, workers - 1)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="sql-worker")
        self._in_flight: dict[str, int] = {}
        self._user_slots: dict[str, asyncio.Semaphore] = {}
        self.queued = 0  # waiting for a worker or running on one
        self.refused_per_user = 0
        self.refused_busy = 0

    @contextlib.contextmanager
    def admit(self, user: str) -> Iterator[None]:
        """Hold one of `user`'s in-flight places for the request's whole life."""
        n = self._in_flight.get(user, 0)
        if n >= self.max_requests_per_user:
            self.refused_per_user += 1
            raise Overloaded("RATE_LIMIT_EXCEEDED", f"too many requests in flight for this user ({n}, the limit "
                             f"is {self.max_requests_per_user}: limits.max_requests_per_user); wait for answers "
                             f"before sending more, or retry after {RETRY_AFTER_S} s", 429)
        self._in_flight[user] = n + 1
        try:
            yield
        finally:
            left = self._in_flight[user] - 1
            if left:
                self._in_flight[user] = left
            else:  # the user's last request: nothing of theirs can hold or await a worker slot
                del self._in_flight[user]
                self._user_slots.pop(user, None)

    async def run(self, user: str, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on a worker thread, within `user`'s share of the workers (call inside `admit`)."""
        if self.queued >= self.max_queued + self.workers:
            self.refused_busy += 1
            raise Overloaded("SERVER_BUSY", f"the server is overloaded: {self.queued} SQL requests are waiting "
                             f"for a worker (limits.max_queued_requests = {self.max_queued}); retry after "
                             f"{RETRY_AFTER_S} s", 503)
        slots = self._user_slots.get(user)
        if slots is None:
            slots = self._user_slots[user] = asyncio.Semaphore(self.per_user_workers)
        self.queued += 1
        try:
            async with slots:
                return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self.queued -= 1

    def stats(self) -> dict[str, int]:
        return {"sql_workers": self.workers, "sql_queue_depth": self.queued,
                "sql_refused_per_user_total": self.refused_per_user, "sql_refused_busy_total": self.refused_busy}

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
