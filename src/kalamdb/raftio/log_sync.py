"""The Raft log's fdatasync on a thread of its own, so that the thread running Raft keeps running
while the disk works.

An fdatasync is 0.1-0.5 ms on a quiet disk, but when the disk is busy (three nodes' logs and
SQLite's page writes on one device, ext4 ordering each journal commit behind other files' data) it
takes 100-170 ms at the 99th percentile (docs/PERFORMANCE.md, step 20). Done on the Raft thread, that
froze its ticks, its heartbeats and its answers: a leader's followers saw nothing for longer than an
election timeout. Here the Raft thread writes the records itself (`LogStorage.append`, a page-cache
copy), hands the fdatasync to this thread and awaits it, stepping messages and ticking meanwhile;
the core says what may leave before the fsync ends (`RaftCore.take_early_messages`). The Ready
contract is unchanged: an acknowledgement or a vote still leaves only after its fsync.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any

from kalamdb.raftio.storage import LogStorage, SyncTicket


def _settle(fut: asyncio.Future, exc: BaseException | None) -> None:
    if fut.done():  # the waiter was cancelled (the node is stopping)
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)


class LogSyncer:
    """One thread running the log's fdatasyncs, one at a time, for one event loop's waiters."""

    def __init__(self, name: str):
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    async def sync(self, storage: LogStorage, ticket: SyncTicket) -> None:
        """Run `storage.run_sync(ticket)` on the sync thread and wait for it (its OSError is raised
        here). Cancelling the wait does not stop the fdatasync: `close` waits for it."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._requests.put((storage, ticket, loop, fut))
        await fut

    def close(self, timeout: float | None = None) -> None:
        """Finish the fdatasync in flight, if any, and end the thread (before the storage closes)."""
        self._requests.put(None)
        self._thread.join(timeout)

    def _serve(self) -> None:
        while True:
            item = self._requests.get()
            if item is None:
                return
            storage, ticket, loop, fut = item
            exc: BaseException | None = None
            try:
                storage.run_sync(ticket)
            except BaseException as e:  # noqa: BLE001 - handed to the waiter, which stops the node
                exc = e
            try:
                loop.call_soon_threadsafe(_settle, fut, exc)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass
