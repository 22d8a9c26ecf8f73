"""The one ordered change feed (ARCHITECTURE.md decision 13).

Applying a command yields the row changes it made, in order. They are written to the change log
(`_kdb_changes`, in the same transaction as the changes themselves, so every replica holds the same
log) and, once the batch has committed, published to in-process listeners. Live queries and topics
both read this feed; any replica can serve any subscriber from its own applied state, in Raft log
order, and a subscriber that reconnects (to any node) resumes from the log by `_seq`.

Retention is bounded and deterministic: the log keeps changes younger than CHANGE_RETENTION_S by
the command's clock (a `_seq` encodes its millisecond) and at most CHANGE_RETENTION_ROWS of them;
it is pruned at fixed log indexes, so replicas prune identically. A resume point older than what is
kept raises `ResumeTooOld` (never a silent gap).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import msgpack

from kalamdb.engine.ids import SNOWFLAKE_EPOCH_MS
from kalamdb.errors import KalamError

log = logging.getLogger("kalamdb.engine.changes")

CHANGE_RETENTION_S = 24 * 3600
CHANGE_RETENTION_ROWS = 1_000_000
PRUNE_EVERY = 1024  # the log is pruned when a command's index is a multiple of this


def prunes_at(index: int) -> bool:
    """Is the change log pruned when the command at log index `index` is applied?"""
    return index % PRUNE_EVERY == 0

CHANGES_SQL = [
    # keyed by seq alone, so each change is an append to one b-tree; a resume scans from its seq
    # to the end (resumes are recent, and the log is bounded)
    """CREATE TABLE IF NOT EXISTS _kdb_changes (seq INTEGER PRIMARY KEY, idx INTEGER NOT NULL,
        tbl TEXT NOT NULL, owner TEXT NOT NULL, op TEXT NOT NULL, data BLOB NOT NULL) STRICT""",
]

OPS = ("insert", "update", "delete")


class Change(NamedTuple):
    """One row changed by one applied command (a tuple: made for every row written, so cheap)."""

    index: int  # type: ignore[assignment]  # the command's Raft log index (shadows tuple.index, unused)
    seq: int  # the row's new `_seq` (insert, update) or its tombstone's (delete); unique, increasing
    table: str  # "ns.t"
    table_type: str  # USER | SHARED | STREAM
    op: str  # insert | update | delete
    owner: str | None  # the owning user id of USER and STREAM rows; None for SHARED tables
    row: dict | None  # insert, update: the row after (user columns, `_seq`, `_deleted`)
    old: dict | None  # update, delete: the row before (user columns, `_seq`, `_deleted`)

    def encode(self) -> bytes:
        return msgpack.packb([self.table_type, self.row, self.old], use_bin_type=True)

    @staticmethod
    def decode(seq: int, idx: int, tbl: str, owner: str, op: str, data: bytes) -> Change:
        table_type, row, old = msgpack.unpackb(data, raw=False)
        return Change(idx, seq, tbl, table_type, op, owner or None, row, old)


@dataclass(frozen=True, slots=True)
class Applied:
    """A batch of commands applied and committed: `changes` in log order (possibly empty)."""

    first_index: int
    last_index: int
    changes: tuple[Change, ...]


@dataclass(frozen=True, slots=True)
class Reset:
    """The whole state was replaced (a snapshot installed) at `index`: listeners must re-read what
    they need from the database (or the change log) instead of expecting the changes in between."""

    index: int


@dataclass(frozen=True, slots=True)
class TableDropped:
    """`table` no longer exists as of `index` (dropped, or its namespace dropped)."""

    index: int
    table: str


FeedEvent = Applied | Reset | TableDropped


class ResumeTooOld(KalamError):
    """The change log no longer holds every change after the requested `_seq`."""

    def __init__(self, table: str, after_seq: int, oldest_kept: int):
        super().__init__("RESUME_TOO_OLD", f"Cannot resume {table} from _seq {after_seq}: changes up to "
                         f"_seq {oldest_kept} are no longer kept (retention {CHANGE_RETENTION_S} s / "
                         f"{CHANGE_RETENTION_ROWS} changes); subscribe again without `from` to reload")
        self.oldest_kept = oldest_kept


class ChangeFeed:
    """In-process publish/subscribe of FeedEvents, in log order.

    Listeners run on the thread that applied the batch (the apply thread or the event loop), right
    after it committed, in the order they subscribed: they must be quick and must not block (hand
    the event to your own loop with `loop.call_soon_threadsafe`). A listener that raises is logged
    and dropped, so one broken subscriber cannot stop the others or the apply loop."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[FeedEvent], None]] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Callable[[FeedEvent], None]) -> Callable[[], None]:
        """Start delivering events to `listener`; returns the function that stops it."""
        with self._lock:
            self._listeners = [*self._listeners, listener]

        def unsubscribe() -> None:
            with self._lock:
                self._listeners = [x for x in self._listeners if x is not listener]

        return unsubscribe

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    def publish(self, event: FeedEvent) -> None:
        for listener in self._listeners:  # a copy-on-write list: safe against (un)subscribe meanwhile
            try:
                listener(event)
            except Exception:  # a subscriber's bug must not stop applying
                log.exception("change feed listener %r failed and was removed", listener)
                with self._lock:
                    self._listeners = [x for x in self._listeners if x is not listener]


def seq_floor(now_us: int, seconds_ago: int) -> int:
    """The smallest `_seq` a change made `seconds_ago` before `now_us` can have."""
    ms = now_us // 1000 - seconds_ago * 1000 - SNOWFLAKE_EPOCH_MS
    return max(ms, 0) << 22
