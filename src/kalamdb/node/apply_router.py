"""Where a committed batch is applied: on the caller's (HTTP) loop when it is light and the apply
thread is idle, else on the apply thread. Every batch and every apply-thread job passes through here,
on the caller's loop, in the order the Raft thread handed them over.

Why: for the commonest write (a plain INSERT … VALUES) the two thread hand-offs Raft thread → apply
thread → HTTP loop cost more than the apply itself, on a loaded 2-core machine each one a wake-up
waiting for a core. Applying on the HTTP loop makes it one hand-off, and the write's answer leaves
right after. It must stay cheap there, since every request and WebSocket of the node waits while it
runs: the state machine says which batches are light (`StateMachine.light_batch`: bounded by their
size, engine/light.py), and the driver adds that no snapshot is due after it.

Order: the apply thread may still be applying or holding batches and jobs handed to it earlier.
A batch is applied here only when it has finished all of them (`Applier.completed` equals the
number handed over, counted here); otherwise it is handed over too, behind them. Because the Raft
thread hands everything to this loop (never straight to the apply thread), nothing can overtake.

Coalescing: the Raft thread queues what it hands over here and wakes the loop only when no drain is
already due. When the loop gets to it, every batch that queued up meanwhile is applied together, in
ONE transaction, if the whole run is light (else each batch is routed alone, as it came). Under load
a busy loop finds several batches waiting, and each transaction costs a fixed ~0.5 ms of SQLite work
(locks, WAL frames, the change log, the applied index) on this machine, whatever its size.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from kalamdb.node.applier import Applier, Job
from kalamdb.raft.types import Entry


class ApplyRouter:
    def __init__(self, applier: Applier, *, light: Callable[[list[Entry]], bool],
                 post: Callable[..., None]):
        """`light(entries)`: may they be applied on the caller's loop (called there); `post(fn,
        *args)`: run fn(*args) on the caller's loop soon, in the order posted, from any thread."""
        self._applier = applier
        self._light = light
        self._post = post
        self._lock = threading.Lock()
        self._queued: list[list[Entry] | Job] = []  # handed over, not yet routed (guarded by _lock)
        self._drain_due = False  # a drain is posted and has not taken the queue yet (guarded by _lock)
        self._handed = 0  # batches and jobs handed to the apply thread (caller's loop only)
        self.inline_batches = 0  # transactions applied on the caller's loop
        self.handed_batches = 0  # batches applied on the apply thread
        self.coalesced_batches = 0  # batches that shared an inline transaction with the one before

    # ------------------------------------------------------------------ any thread
    def submit(self, entries: list[Entry]) -> None:
        """Committed entries, to be applied after everything submitted before them."""
        self._enqueue(entries)

    def run(self, fn: Callable[..., Any], *args: Any) -> Future:
        """`fn(*args)` on the apply thread, after every batch and job submitted before it."""
        fut: Future = Future()
        self._enqueue(Job(fn, args, fut))
        return fut

    def _enqueue(self, item: list[Entry] | Job) -> None:
        with self._lock:
            self._queued.append(item)
            if self._drain_due:
                return  # the drain already posted takes this one too
            self._drain_due = True
        self._post(self._drain)

    # ------------------------------------------------------------------ the caller's loop
    @property
    def apply_thread_idle(self) -> bool:
        """The apply thread finished everything handed to it."""
        return self._applier.completed == self._handed

    def _drain(self) -> None:
        with self._lock:
            items, self._queued, self._drain_due = self._queued, [], False
        run: list[list[Entry]] = []  # consecutive batches, routed together
        for item in items:
            if isinstance(item, Job):
                self._route_batches(run)
                run = []
                self._handed += 1
                self._applier.run(item.fn, *item.args, future=item.future)
            else:
                run.append(item)
        self._route_batches(run)

    def _route_batches(self, batches: list[list[Entry]]) -> None:
        if not batches:
            return
        if len(batches) > 1 and self.apply_thread_idle:
            merged = [e for b in batches for e in b]
            if self._light(merged):
                self.inline_batches += 1
                self.coalesced_batches += len(batches) - 1
                self._applier.apply_now(merged)
                return
        for entries in batches:
            self._route(entries)

    def _route(self, entries: list[Entry]) -> None:
        if self.apply_thread_idle and self._light(entries):
            self.inline_batches += 1
            self._applier.apply_now(entries)
            return
        self._handed += 1
        self.handed_batches += 1
        self._applier.submit(entries)
