"""The apply thread: committed entries reach the state machine here, in log order, off the Raft thread.

Applying is user work (a write's SQL runs here, on every replica), so it must never hold up the
thread that sends heartbeats and acknowledgements: the Raft thread only hands committed entries over
and goes on. Everything else that touches the state machine as a whole (taking a snapshot,
installing one) runs as a job on the same thread (`run`), so it is ordered with the entries around
it without any lock: a snapshot installed after entry N sees N applied. Batches and jobs reach it
through node/apply_router.py, which applies light batches itself (`apply_now`) while this thread is
idle, so the one-at-a-time order holds across both.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from kalamdb.node.apply_times import ApplyTimes
from kalamdb.node.state_machine import StateMachine
from kalamdb.raft.types import Entry, EntryKind

log = logging.getLogger("kalamdb.node.applier")

APPLY_BATCH = 1024  # entries per state-machine transaction
META_PREFIX = b"\xc1"  # 0xc1 never starts a msgpack value: marks the driver's own metadata entries


class Job:
    """`fn(*args)` to run on the apply thread, in order with the batches; its result goes to `future`."""

    __slots__ = ("args", "fn", "future")

    def __init__(self, fn: Callable[..., Any], args: tuple, future: Future):
        self.fn, self.args, self.future = fn, args, future


_STOP = object()


class Applier:
    """One thread applying entries; `on_applied(batch, outcomes)` runs on it after each batch."""

    def __init__(self, sm: StateMachine, *, node_id: int,
                 on_applied: Callable[[list[Entry], list[Any]], None],
                 on_failure: Callable[[BaseException], None],
                 before_apply: Callable[[], object] = lambda: None):
        self.sm = sm
        self.applied_index = sm.applied_index
        self.times = ApplyTimes(sm.applied_index)  # when each batch was applied (replication lag)
        self._noop = sm.noop_command()  # what entries that are not state-machine commands apply as
        self._on_applied = on_applied
        self._on_failure = on_failure
        self._before_apply = before_apply
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"raft-apply-{node_id}", daemon=True)
        self._failed = False
        self.batches = 0  # state-machine transactions
        self.entries = 0  # entries applied by them
        #: items (batches and jobs) taken off the queue and finished; written by the apply thread
        #: only, so another thread may compare it with how many it queued (node/apply_router.py)
        self.completed = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, entries: list[Entry]) -> None:
        """Queue committed entries (any thread); they are applied in the order submitted."""
        self._q.put(entries)

    def run(self, fn: Callable[..., Any], *args: Any, future: Future | None = None) -> Future:
        """Run `fn(*args)` on the apply thread after everything queued before it; its result in
        `future` (a new one if not given)."""
        fut: Future = Future() if future is None else future
        self._q.put(Job(fn, args, fut))
        return fut

    def apply_now(self, entries: list[Entry]) -> None:
        """Apply on the calling thread, which must be the only one applying meanwhile: the apply
        thread has finished everything queued (node/apply_router.py checks `completed`)."""
        if not self._failed:
            self._apply_all(entries)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then end the thread."""
        if self._thread.is_alive():
            self._q.put(_STOP)
            self._thread.join(timeout)

    def restore(self, path: Any) -> int:
        """(On the apply thread, as a job) replace the state by a snapshot; the new applied index."""
        self.sm.restore_from(path)
        self.applied_index = self.sm.applied_index
        self.times.record(self.applied_index)
        return self.applied_index

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        carry: Any = None
        while True:
            item = carry if carry is not None else self._q.get()
            carry = None
            if item is _STOP:
                return
            if isinstance(item, Job):
                if item.future.set_running_or_notify_cancel():
                    try:
                        item.future.set_result(item.fn(*item.args))
                    except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the job
                        item.future.set_exception(exc)
                self.completed += 1
                continue
            entries: list[Entry] = item
            taken = 1
            while len(entries) < APPLY_BATCH:  # coalesce what queued up meanwhile: one transaction
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if isinstance(nxt, list):
                    entries = entries + nxt
                    taken += 1
                else:
                    carry = nxt
                    break
            if not self._failed:  # after a failure nothing more is applied (the node is stopping)
                self._apply_all(entries)
            self.completed += taken

    def commands(self, entries: list[Entry]) -> list[tuple[int, bytes]]:
        """(index, command) pairs for the state machine: Raft's own entries (config changes, the
        driver's metadata) apply as its no-op."""
        noop = self._noop
        return [(e.index, e.data if e.kind == EntryKind.NORMAL and not e.data.startswith(META_PREFIX) else noop)
                for e in entries]

    def _apply_all(self, entries: list[Entry]) -> None:
        for lo in range(0, len(entries), APPLY_BATCH):
            if not self._apply(entries[lo:lo + APPLY_BATCH]):
                break

    def _apply(self, entries: list[Entry]) -> bool:
        batch = [e for e in entries if e.index > self.applied_index]
        if not batch:
            return True
        items = self.commands(batch)
        try:
            self._before_apply()
            outcomes = self.sm.apply_batch(items)
        except BaseException as exc:  # noqa: BLE001 - a failed apply stops the node (fail-stop)
            self._failed = True
            self._on_failure(exc)
            return False
        self.applied_index = batch[-1].index
        self.times.record(self.applied_index)
        self.batches += 1
        self.entries += len(batch)
        try:
            self._on_applied(batch, outcomes)
        except BaseException as exc:  # noqa: BLE001 - a bug after apply must stop the node, not this thread
            self._failed = True
            self._on_failure(exc)
            return False
        return True
