"""The live-query service of one node: subscriptions of this node's WebSocket clients, served from
this node's own applied state, in log order, whichever node took the write.

The engine's change feed publishes every applied batch after it committed (on the applying thread);
the listener only hands the event to the event loop, where one task dispatches events in order.
This module holds the service's state and its life: subscribing (checks and registration), the
dispatch loop, unsubscribe and KILL LIVE QUERY, system.live. Beside it, by concept (docs/live.md has
the exactly-once argument): loading.py (initial data consistent with one applied index, next_batch,
the start of a resume), catch_up.py (the change log after a cursor: resume, and recovery after a
snapshot install), delivery.py (the fan-out of applied changes and delivery of one change).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any, Protocol

from kalamdb.engine.changes import Applied, Change, ChangeFeed, FeedEvent, Reset, TableDropped
from kalamdb.errors import KalamError
from kalamdb.live import loading
from kalamdb.live import protocol as p
from kalamdb.live.catch_up import LOG_PAGE, on_reset
from kalamdb.live.connection import LiveConnection
from kalamdb.live.delivery import on_applied
from kalamdb.live.filter import FilterCache
from kalamdb.live.query import LiveError, SubscriptionQuery, analyze
from kalamdb.live.rows import TableShape, make_shape
from kalamdb.live.subscription import (
    SYSTEM_LIVE_COLUMNS,
    State,
    Subscription,
    SubscriptionIndex,
)

log = logging.getLogger("kalamdb.live")

ADMIN_ROLES = ("dba", "system")
READ_CONCURRENCY = 8  # initial-data and change-log reads in flight per node
APPLIED_WAIT_S = 10.0
UNSAFE_ENV = "KALAMDB_UNSAFE_LIVE"
UNSAFE_MODES = ("drop-buffered", "skip-resume")


class LiveSource(Protocol):
    """What the live layer needs from the engine (kalamdb.engine.Database)."""

    @property
    def feed(self) -> ChangeFeed: ...

    @property
    def applied_index(self) -> int: ...

    def prepare(self, sql: str, params: list | None, namespace: str | None, principal: Any) -> Any: ...

    def read_at(self, prepared: Any) -> tuple[int, list[dict]]: ...

    def changes_since(self, table: str, owner: str | None, after_seq: int, limit: int
                      ) -> tuple[int, list[Change]]: ...

    def principal_for(self, user_id: str) -> Any: ...

    @property
    def users_version(self) -> int: ...

    def register_system_table(self, name: str, columns: list[tuple[str, str]],
                              rows: Callable[[], list[tuple]]) -> None: ...

    @property
    def published_catalog(self) -> Any:
        """The applied catalog (`.tables[(ns, name)]` -> a TableInfo)."""


def unsafe_mode() -> str | None:
    """A deliberately broken delivery (for proving the live checker bites), from KALAMDB_UNSAFE_LIVE."""
    mode = os.environ.get(UNSAFE_ENV) or None
    if mode is not None and mode not in UNSAFE_MODES:
        raise ValueError(f"{UNSAFE_ENV}={mode!r}: expected one of {', '.join(UNSAFE_MODES)}")
    return mode


def event_index(event: FeedEvent) -> int:
    """The last log index a feed event covers."""
    return event.last_index if isinstance(event, Applied) else event.index


class LiveService:
    def __init__(self, db: LiveSource, *, node_id: int):
        self.db = db
        self.node_id = node_id
        self.index = SubscriptionIndex()
        self.connections: set[LiveConnection] = set()
        self.filters = FilterCache()
        self.unsafe = unsafe_mode()
        self._processed_index = 0  # the dispatcher handled every event up to here (this loop only)
        self._skipped_index = 0  # events up to here went by while nothing listened (applying thread only)
        self._enqueued = 0  # events handed to the dispatcher (applying thread only)
        self._dispatched = 0  # of them, handled (this loop only)
        self.delivered = 0
        self._events: asyncio.Queue[FeedEvent] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._tasks: list[asyncio.Task] = []
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self._reads: asyncio.Semaphore | None = None
        self._background: set[asyncio.Task] = set()
        db.register_system_table("live", SYSTEM_LIVE_COLUMNS, self._system_rows)

    # ------------------------------------------------------------------ life
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._events = asyncio.Queue()
        self._reads = asyncio.Semaphore(READ_CONCURRENCY)
        queue = self._events

        def listener(event: FeedEvent) -> None:  # on the applying thread, right after commit
            if self._idle():
                # Nobody subscribes, waits or has events in flight: waking the event loop for this
                # event would do nothing but move `processed_index` (on a follower without
                # subscribers that was a wake-up of its HTTP loop per applied batch). A subscriber
                # that registers after this check reads a snapshot that already holds the event.
                self._skipped_index = event_index(event)
                if self._idle():
                    return
                # A waiter or subscriber came meanwhile: it is told of this event the usual way.
            self._enqueued += 1
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:
                pass  # the loop is closed: the process is stopping

        self._unsubscribe = self.db.feed.subscribe(listener)
        self._processed_index = self.db.applied_index
        if self.unsafe:
            log.critical("UNSAFE MODE: %s=%s -- live queries deliberately lose changes; never use this "
                         "outside checker tests", UNSAFE_ENV, self.unsafe)
        self._tasks = [loop.create_task(self._dispatch_loop(), name="live-dispatch")]

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for conn in list(self.connections):
            conn.close(p.CLOSE_GOING_AWAY, "Server shutting down")
        for conn in list(self.connections):
            await conn.wait_closed()
        for t in [*self._tasks, *self._background]:
            t.cancel()
        for t in [*self._tasks, *self._background]:
            with contextlib.suppress(BaseException):
                await t
        self.filters.close()

    def spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ connections
    def add_connection(self, conn: LiveConnection) -> None:
        self.connections.add(conn)

    def remove_connection(self, conn: LiveConnection) -> None:
        self.connections.discard(conn)
        for sub in list(conn.subs.values()):
            self.drop(sub)
        conn.subs.clear()

    def drop(self, sub: Subscription) -> None:
        sub.state = State.CLOSED
        sub.buffer = None
        self.index.remove(sub)
        if sub.conn.subs.get(sub.id) is sub:
            del sub.conn.subs[sub.id]

    def fail(self, sub: Subscription, code: str, message: str) -> None:
        if sub.state is State.CLOSED:
            return
        self.drop(sub)
        sub.conn.send_message(p.error(sub.id, code, message))

    # ------------------------------------------------------------------ subscribe
    async def subscribe(self, conn: LiveConnection, msg: p.Subscribe) -> None:
        sid = msg.id
        if not sid.strip():
            conn.send_message(p.error("invalid_subscription", p.INVALID_SUBSCRIPTION_ID,
                                      "Subscription ID cannot be empty"))
            return
        if len(sid) > p.MAX_SUBSCRIPTION_ID_CHARS:
            conn.send_message(p.error("invalid_subscription", p.INVALID_SUBSCRIPTION_ID,
                                      f"Subscription ID is longer than {p.MAX_SUBSCRIPTION_ID_CHARS} characters"))
            return
        old = conn.subs.get(sid)
        if old is not None:  # the same id again replaces the subscription (upstream overwrites it)
            self.drop(old)
        if self.index.user_count(conn.user_id) >= p.MAX_SUBSCRIPTIONS_PER_USER:
            conn.send_message(p.error(sid, p.SUBSCRIPTION_LIMIT_EXCEEDED, "Maximum subscriptions reached"))
            return
        opts = msg.options
        batch_size = p.MAX_ROWS_PER_BATCH if opts is None or opts.batch_size is None else opts.batch_size
        if not 1 <= batch_size <= p.MAX_BATCH_SIZE:
            conn.send_message(p.error(sid, p.UNSUPPORTED, f"batch_size ({batch_size}) must be between 1 and "
                                      f"{p.MAX_BATCH_SIZE}"))
            return
        if opts is not None and opts.last_rows is not None and opts.last_rows > batch_size:
            conn.send_message(p.error(sid, p.UNSUPPORTED, f"last_rows ({opts.last_rows}) cannot exceed batch_size "
                                      f"({batch_size}); paginated last_rows replay is not supported"))
            return
        if len(conn.subs) >= p.MAX_SUBSCRIPTIONS_PER_CONNECTION:
            conn.send_message(p.error(sid, p.UNSUPPORTED, "Invalid operation: Maximum subscriptions "
                                      f"({p.MAX_SUBSCRIPTIONS_PER_CONNECTION}) per connection exceeded"))
            return
        try:
            query = analyze(msg.sql)
            shape = await self._shape(conn, query)
        except LiveError as err:
            conn.send_message(p.error(sid, err.code, err.message))
            return
        principal = conn.principal
        flt = None
        if query.where is not None and shape.table_type != "SYSTEM":
            try:
                flt = self.filters.get(shape.table_id, query.where, query.where_sql, principal.username,
                                       shape.affinity)
            except Exception as exc:  # noqa: BLE001 - SQLite refusing the condition
                conn.send_message(p.error(sid, p.INVALID_SQL, f"Invalid SQL: {exc}"))
                return
        owner = principal.user_id if shape.owned else None
        sub = Subscription(conn, sid, query, shape, flt, opts, owner, batch_size)
        if conn.closed:
            return
        # registered before any read: every change committed from now on reaches its buffer
        conn.subs[sid] = sub
        self.index.add(sub)
        try:
            if shape.table_type == "SYSTEM":
                await loading.load_system(self, sub)
            elif opts is not None and opts.from_seq is not None:
                await loading.resume(self, sub, opts.from_seq)
            else:
                await loading.load_first(self, sub)
        except LiveError as err:
            self.fail(sub, err.code, err.message)
        except Exception as exc:
            log.exception("subscription %s of connection %s failed", sid, conn.id)
            self.fail(sub, p.SUBSCRIPTION_FAILED, f"Subscription failed: {type(exc).__name__}: {exc}")

    async def _shape(self, conn: LiveConnection, q: SubscriptionQuery) -> TableShape:
        role = conn.principal.role
        tid = f"{q.namespace}:{q.table}"
        if q.namespace == "system":
            if role not in ADMIN_ROLES:
                raise LiveError(p.UNAUTHORIZED, f"Permission denied: Cannot subscribe to system table '{tid}': "
                                "insufficient privileges. Only DBA and system roles can subscribe to system tables.")
            return TableShape(q.table_id, "SYSTEM", (), {})
        info = self.db.published_catalog.tables.get((q.namespace, q.table))  # the applied catalog
        if info is None:
            raise LiveError(p.NOT_FOUND, f"Not found: Table not found: {tid}")
        columns = [dict(c.__dict__) for c in info.columns]
        shape = make_shape(q.table_id, info.table_type, columns, info.primary_key, info.options)
        if shape.table_type == "SHARED":
            level = (shape.access_level or "PRIVATE").lower()
            allowed = {"public": ("user", "service", "dba", "system"), "dba": ADMIN_ROLES}.get(
                level, ("service", "dba", "system"))
            if role not in allowed:
                raise LiveError(p.UNAUTHORIZED, f"Permission denied: Cannot subscribe to shared table '{tid}': "
                                f"access level '{level}' requires elevated privileges.")
        referenced = list(q.projection or ()) + (q.where_columns if q.where is not None else [])
        unknown = [c for c in referenced if c not in shape.types]
        if unknown:
            raise LiveError(p.INVALID_SQL, f"Invalid SQL: Column '{unknown[0]}' does not exist in table {q.table_id}")
        return shape

    async def read(self, prepared: Any) -> tuple[int, list[dict]]:
        assert self._reads is not None
        async with self._reads:
            return await asyncio.get_running_loop().run_in_executor(None, self.db.read_at, prepared)

    async def read_changes(self, sub: Subscription, after_seq: int) -> tuple[int, list[Change]]:
        """Up to LOG_PAGE changes of the subscription's table (and owner) after `after_seq` from the
        durable change log, on the same bounded pool as the reads; raises ResumeTooOld."""
        assert self._reads is not None
        async with self._reads:
            return await asyncio.get_running_loop().run_in_executor(None, self.db.changes_since, sub.shape.table_id,
                                                                    sub.owner, after_seq, LOG_PAGE)

    @property
    def processed_index(self) -> int:
        """Every feed event up to here was dispatched, or went by while nobody could want it."""
        return max(self._processed_index, self._skipped_index)

    def _idle(self) -> bool:
        """(applying thread) No subscription, no waiter and no event in flight to the dispatcher."""
        return not self._waiters and self._enqueued == self._dispatched and self.index.empty()

    async def wait_processed(self, index: int) -> None:
        """Wait until the dispatcher has handled every feed event up to `index`."""
        if self.processed_index >= index:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((index, fut))
        if self.processed_index >= index:
            # Skipped by the applying thread between the check above and the append (`listener`
            # re-checks for waiters after moving `_skipped_index`, so one of the two sees the other).
            self._waiters.remove((index, fut))
            return
        try:
            await asyncio.wait_for(fut, APPLIED_WAIT_S)
        except TimeoutError:
            raise LiveError(p.BATCH_FETCH_FAILED, f"The change feed did not reach index {index} within "
                            f"{APPLIED_WAIT_S:.0f} s; subscribe again") from None

    # ------------------------------------------------------------------ next_batch
    async def next_batch(self, conn: LiveConnection, msg: p.NextBatch) -> None:
        await loading.next_batch(self, conn, msg)

    # ------------------------------------------------------------------ unsubscribe / kill
    def unsubscribe(self, conn: LiveConnection, subscription_id: str) -> None:
        sub = conn.subs.get(subscription_id)
        if sub is not None:
            self.drop(sub)

    def kill(self, live_id: str, principal: Any) -> dict:
        """KILL LIVE QUERY <live_id> (dba/system): the subscription ends; its client is not told."""
        if principal.role not in ADMIN_ROLES:
            raise KalamError("PERMISSION_DENIED", "KILL LIVE QUERY requires role dba or system")
        sub = self.index.by_live_id(live_id)
        if sub is None:
            raise KalamError("NOT_FOUND", f"Live query not found: {live_id} (live queries are local to the node "
                             "that serves them: run KILL LIVE QUERY on that node)")
        self.drop(sub)
        return {"row_count": 1, "message": f"Live query killed: {live_id}", "as_user": principal.username}

    # ------------------------------------------------------------------ dispatch
    async def _dispatch_loop(self) -> None:
        assert self._events is not None
        events = self._events
        while True:
            event = await events.get()
            try:
                if isinstance(event, Applied):
                    await on_applied(self, event)
                    self._advance(event.last_index)
                elif isinstance(event, Reset):
                    on_reset(self, event)
                    self._advance(event.index)
                elif isinstance(event, TableDropped):
                    for sub in self.index.on_table(event.table):
                        ns, _, t = event.table.partition(".")
                        self.fail(sub, p.NOT_FOUND, f"Not found: Table not found: {ns}:{t} (it was dropped)")
                    self._advance(event.index)
            except Exception:
                log.exception("live dispatch of %r failed", event)
            self._dispatched += 1

    def _advance(self, index: int) -> None:
        self._processed_index = max(self._processed_index, index)
        if self._waiters:
            still = []
            for i, fut in self._waiters:
                if i <= self.processed_index:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    still.append((i, fut))
            self._waiters = still

    # ------------------------------------------------------------------ system.live
    def _system_rows(self) -> list[tuple]:
        return [s.system_row(self.node_id) for s in self.index.all()]

    def stats(self) -> dict[str, int]:
        from kalamdb.live import connection

        return {"live_connections": len(self.connections), "live_subscriptions": len(self.index),
                "live_notifications_total": self.delivered,
                "live_slow_consumers_closed_total": connection.slow_consumers_closed}
