"""The live-query service of one node: subscriptions of this node's WebSocket clients, served from
this node's own applied state, in log order, whichever node took the write.

The engine's change feed publishes every applied batch after it committed (on the applying thread);
the listener only hands the event to the event loop, where one task dispatches events in order:
each change goes to the subscriptions of its (table, owner), is tested once per distinct WHERE and
encoded once per projection, and queued on each subscriber's connection.

Exactly once, no gap, in order (see docs/live.md for the argument):
- Initial rows: the subscription is registered (buffering) BEFORE its first page is read at a
  consistent applied index A (`read_at`); afterwards only changes with index > A are delivered.
  Later pages are read at later indexes A_k: rows changed after A are recognised by their `_seq`
  (every change after A has a new `_seq`) and replaced by the version they had at A (the change's
  `old` row), so every page is a page of the state at A.
- Resume (`from`) and recovery after a snapshot install: changes after the cursor come from the
  durable change log page by page; live changes that arrive meanwhile are buffered and delivered
  after the log, those the log already gave (`_seq` <= cursor) dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from kalamdb.engine.changes import Applied, Change, ChangeFeed, FeedEvent, Reset, ResumeTooOld, TableDropped
from kalamdb.errors import KalamError
from kalamdb.live import protocol as p
from kalamdb.live.connection import LiveConnection
from kalamdb.live.filter import FilterCache
from kalamdb.live.query import LiveError, SubscriptionQuery, analyze, page_sql
from kalamdb.live.rows import SEQ, TableShape, change_template, full_row, make_shape, match_row, result_rows
from kalamdb.live.subscription import (
    MAX_BUFFERED_CHANGES,
    SYSTEM_LIVE_COLUMNS,
    State,
    Subscription,
    SubscriptionIndex,
)

log = logging.getLogger("kalamdb.live")

ADMIN_ROLES = ("dba", "system")
LOG_PAGE = 1000  # changes read from the change log per round trip
DISPATCH_SLICE = 1024  # deliveries between yields to the event loop (~2 ms: Raft ticks must not wait long)
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


class LiveService:
    def __init__(self, db: LiveSource, *, node_id: int):
        self.db = db
        self.node_id = node_id
        self.index = SubscriptionIndex()
        self.connections: set[LiveConnection] = set()
        self.filters = FilterCache()
        self.unsafe = unsafe_mode()
        self.processed_index = 0
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
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:
                pass  # the loop is closed: the process is stopping

        self._unsubscribe = self.db.feed.subscribe(listener)
        self.processed_index = self.db.applied_index
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

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ connections
    def add_connection(self, conn: LiveConnection) -> None:
        self.connections.add(conn)

    def remove_connection(self, conn: LiveConnection) -> None:
        self.connections.discard(conn)
        for sub in list(conn.subs.values()):
            self._drop(sub)
        conn.subs.clear()

    def _drop(self, sub: Subscription) -> None:
        sub.state = State.CLOSED
        sub.buffer = None
        self.index.remove(sub)
        if sub.conn.subs.get(sub.id) is sub:
            del sub.conn.subs[sub.id]

    def _fail(self, sub: Subscription, code: str, message: str) -> None:
        if sub.state is State.CLOSED:
            return
        self._drop(sub)
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
            self._drop(old)
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
                await self._load_system(sub)
            elif opts is not None and opts.from_seq is not None:
                await self._resume(sub, opts.from_seq)
            else:
                await self._load_first(sub)
        except LiveError as err:
            self._fail(sub, err.code, err.message)
        except Exception as exc:
            log.exception("subscription %s of connection %s failed", sid, conn.id)
            self._fail(sub, p.SUBSCRIPTION_FAILED, f"Subscription failed: {type(exc).__name__}: {exc}")

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

    async def _read(self, prepared: Any) -> tuple[int, list[dict]]:
        assert self._reads is not None
        async with self._reads:
            return await asyncio.get_running_loop().run_in_executor(None, self.db.read_at, prepared)

    async def _read_page(self, sub: Subscription, after: int, limit: int, *, newest_first: bool = False
                         ) -> tuple[int, list[tuple[int, dict]], int]:
        """Rows of the subscription with `_seq` > after, read through the engine as the subscriber
        (its compiled-query checks scope USER rows and refuse what the role may not read), at one
        applied index; with the index and the newest `_seq` of the table's visible rows then."""
        cols = list(sub.query.projection) if sub.query.projection is not None else list(sub.shape.columns)
        sql = page_sql(sub.query, cols, after=after, limit=limit, newest_first=newest_first)
        try:
            prepared = self.db.prepare(sql, None, None, sub.conn.principal)
            index, results = await self._read(prepared)
        except KalamError as err:
            raise _as_live_error(err, sub.query) from None
        rows = result_rows(results[0], stream=sub.shape.table_type == "STREAM",
                           projected=sub.query.projection is not None)
        newest = results[1]["rows"][0][0] if len(results) > 1 and results[1].get("rows") else None
        return index, rows, int(newest) if newest is not None else 0

    async def _load_system(self, sub: Subscription) -> None:
        """System tables: initial rows only (they have no `_seq` and no change events, as upstream)."""
        where = f" WHERE {sub.query.where_sql}" if sub.query.where is not None else ""
        cols = "*" if sub.query.projection is None else ", ".join(f'"{c}"' for c in sub.query.projection)
        try:
            prepared = self.db.prepare(f"SELECT {cols} FROM system.{sub.query.table}{where}", None, None,
                                       sub.conn.principal)
            _, results = await self._read(prepared)
        except KalamError as err:
            raise _as_live_error(err, sub.query) from None
        res = results[0]
        names = [c["name"] for c in res.get("schema") or []]
        control = p.batch_control(0, False, None)
        sub.conn.send_message(p.subscription_ack(sub.id, control, res.get("schema") or []))
        if sub.options is not None:
            rows = [dict(zip(names, r, strict=True)) for r in res.get("rows") or []]
            sub.conn.send_message(p.initial_data_batch(sub.id, rows[: sub.batch_size], control))
        sub.buffer = None
        sub.state = State.LIVE

    async def _load_first(self, sub: Subscription) -> None:
        opts = sub.options
        schema = sub.shape.schema(sub.query.projection)
        if opts is None:
            # ack only: live from the index of a (validating) read of the newest row
            index, _, newest = await self._read_page(sub, -(2**63), 1, newest_first=True)
            sub.base_index = index
            sub.cursor = await self._boundary(sub, newest, index)
            # upstream sends no last_seq_id here; ours is the exact resume point of "from now on"
            sub.conn.send_message(p.subscription_ack(sub.id, p.batch_control(0, False, sub.cursor), schema))
            self._go_live(sub)
            return
        if opts.last_rows is not None:
            index, rows, newest = await self._read_page(sub, -(2**63), max(opts.last_rows, 1), newest_first=True)
            rows = rows[: opts.last_rows]
            rows.reverse()
            page, has_more, after = rows, False, rows[-1][0] if rows else 0
        else:
            index, rows, newest = await self._read_page(sub, -(2**63), sub.batch_size + 1)
            page, has_more, after = self._cut(rows, rows, [], -(2**63), sub.batch_size)
        sub.base_index = index
        sub.base_seq = newest
        sub.page_after = after
        await self._send_batch(sub, page, has_more, schema=schema)

    @staticmethod
    def _cut(raw: list[tuple[int, dict]], kept: list[tuple[int, dict]], olds: list[tuple[int, dict]],
             after: int, n: int) -> tuple[list[tuple[int, dict]], bool, int]:
        """One page of the snapshot. `raw` is what the read returned (at most n+1 current rows after
        `after`, by `_seq`); `kept` those of them that existed at the snapshot, `olds` the snapshot's
        versions of rows changed since. Every snapshot row with `_seq` in (after, bound] is among
        kept + olds, where bound is the last raw row's `_seq` when the read was cut by its LIMIT.
        Returns at most n rows, whether more may follow, and the `_seq` the next page starts after."""
        bound = raw[-1][0] if len(raw) > n else None
        candidates = kept + [o for o in olds if bound is None or o[0] <= bound]
        candidates.sort(key=lambda r: r[0])
        if len(candidates) > n:
            page = candidates[:n]
            return page, True, page[-1][0]
        if bound is not None:
            return candidates, True, bound  # everything up to bound is in this page
        return candidates, False, candidates[-1][0] if candidates else after

    async def _send_batch(self, sub: Subscription, page: list[tuple[int, dict]], has_more: bool, *,
                          schema: list[dict] | None = None) -> None:
        last = page[-1][0] if page else None
        if not has_more:
            # the final batch carries the exact resume point of the snapshot (see _boundary)
            last = await self._boundary(sub, max(last or 0, sub.base_seq), sub.base_index)
            sub.cursor = last
        control = p.batch_control(sub.batch_num, has_more, last)
        if sub.state is State.CLOSED:
            return
        if schema is not None:
            sub.conn.send_message(p.subscription_ack(sub.id, control, schema))
        sub.conn.send_message(p.initial_data_batch(sub.id, [r for _, r in page], control))
        if not has_more:
            self._go_live(sub)

    async def _boundary(self, sub: Subscription, known: int, index: int) -> int:
        """The `_seq` resume point of a snapshot read at `index`: the greatest `_seq` of this table's
        (and owner's) changes with a log index <= `index` (`known` is a lower bound: the newest row
        of the snapshot). A client that resumes from it gets exactly the changes after the snapshot."""
        cursor = known
        loop = asyncio.get_running_loop()
        while True:
            try:
                assert self._reads is not None
                async with self._reads:
                    _, page = await loop.run_in_executor(None, self.db.changes_since, sub.shape.table_id,
                                                         sub.owner, cursor, LOG_PAGE)
            except ResumeTooOld as old:
                cursor = max(cursor, old.oldest_kept)  # what is gone is older than any snapshot's edge
                continue
            for c in page:
                if c.index > index:
                    return cursor
                cursor = c.seq
            if len(page) < LOG_PAGE:
                return cursor

    def _go_live(self, sub: Subscription) -> None:
        """Deliver what was buffered during the load (index > base_index, seq > cursor), then live."""
        if sub.state is State.CLOSED:
            return
        if sub.overflowed:
            self._fail(sub, p.SUBSCRIPTION_FAILED, f"More than {MAX_BUFFERED_CHANGES} changes arrived during the "
                       "initial load; subscribe again (a smaller batch_size or last_rows loads faster)")
            return
        buffered = sub.take_buffer()
        sub.state = State.LIVE
        if self.unsafe == "drop-buffered":
            buffered = []
        for c in buffered:
            self._deliver_one(sub, c)

    # ------------------------------------------------------------------ next_batch
    async def next_batch(self, conn: LiveConnection, msg: p.NextBatch) -> None:
        sub = conn.subs.get(msg.subscription_id)
        if sub is None:
            conn.send_message(p.error(msg.subscription_id, p.BATCH_FETCH_FAILED,
                                      f"Subscription not found: {msg.subscription_id}"))
            return
        if sub.state is not State.LOADING:
            conn.send_message(p.error(sub.id, p.BATCH_FETCH_FAILED,
                                      f"Subscription '{sub.id}' has no more initial data to fetch"))
            return
        try:
            index, rows, _ = await self._read_page(sub, sub.page_after, sub.batch_size + 1)
            await self._processed(index)
            if sub.state is not State.LOADING:
                return
            if sub.overflowed:
                raise LiveError(p.BATCH_FETCH_FAILED, f"More than {MAX_BUFFERED_CHANGES} changes arrived during the "
                                "initial load; subscribe again (a smaller batch_size or last_rows loads faster)")
            kept, olds = self._as_of_base(sub, rows, index)
            page, has_more, after = self._cut(rows, kept, olds, sub.page_after, sub.batch_size)
        except LiveError as err:
            self._fail(sub, err.code, err.message)
            return
        sub.batch_num += 1
        sub.page_after = after
        await self._send_batch(sub, page, has_more)

    def _as_of_base(self, sub: Subscription, rows: list[tuple[int, dict]], index: int
                    ) -> tuple[list[tuple[int, dict]], list[tuple[int, dict]]]:
        """Turn rows read at `index` into rows as they were at `base_index`: a row whose `_seq` was
        written by a change after base_index is dropped, and the version a change overwrote (its
        `old`, when that version existed at base_index and matches) is put back."""
        changed = [c for c in sub.buffer or () if sub.base_index < c.index <= index]
        if not changed:
            return rows, []
        written = {c.seq for c in changed}
        kept = [r for r in rows if r[0] not in written]
        olds = []
        for c in changed:
            old = c.old
            if c.op == "insert" or old is None or old.get("_deleted"):
                continue
            seq = int(old[SEQ])
            if seq in written or seq <= sub.page_after:
                continue
            if sub.filter is not None and not sub.filter.matches(old):
                continue
            olds.append((seq, full_row(sub.shape, old, seq, False, sub.query.projection)))
        return kept, olds

    async def _processed(self, index: int) -> None:
        """Wait until the dispatcher has handled every feed event up to `index`."""
        if self.processed_index >= index:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((index, fut))
        try:
            await asyncio.wait_for(fut, APPLIED_WAIT_S)
        except TimeoutError:
            raise LiveError(p.BATCH_FETCH_FAILED, f"The change feed did not reach index {index} within "
                            f"{APPLIED_WAIT_S:.0f} s; subscribe again") from None

    # ------------------------------------------------------------------ resume
    async def _resume(self, sub: Subscription, from_seq: int) -> None:
        control = p.batch_control(0, False, from_seq)
        await self._read_page(sub, 2**63 - 1, 1)  # validates the SQL and the permission, reads no row
        sub.conn.send_message(p.subscription_ack(sub.id, control, sub.shape.schema(sub.query.projection)))
        sub.conn.send_message(p.initial_data_batch(sub.id, [], control))
        if self.unsafe == "skip-resume":  # deliberately forget what the client missed: live from now
            sub.base_index = self.processed_index
            sub.take_buffer()
            sub.state = State.LIVE
            return
        await self._catch_up(sub, from_seq)

    async def _catch_up(self, sub: Subscription, cursor: int) -> None:
        """Deliver the change log after `cursor`, then what arrived meanwhile, then go live."""
        sub.state = State.CATCHING_UP
        sub.cursor = cursor
        if sub.buffer is None:
            sub.buffer = []
        loop = asyncio.get_running_loop()
        while sub.state is State.CATCHING_UP:
            sub.overflowed = False
            try:
                assert self._reads is not None
                async with self._reads:
                    _, page = await loop.run_in_executor(None, self.db.changes_since, sub.shape.table_id,
                                                         sub.owner, sub.cursor, LOG_PAGE)
            except ResumeTooOld as old:
                self._fail(sub, p.RESUME_TOO_OLD, f"{old.message}")
                return
            if sub.state is not State.CATCHING_UP:
                return
            for c in page:
                if c.seq > sub.cursor:
                    sub.cursor = c.seq
                    self._send_change(sub, c)
            if sub.buffer is not None:
                sub.buffer = [c for c in sub.buffer if c.seq > sub.cursor]
            if len(page) >= LOG_PAGE:
                await sub.conn.drained(below=LOG_PAGE)
                continue
            if sub.overflowed:
                continue  # the buffer lost changes: the log has them, read it again
            buffered = sub.take_buffer()
            sub.state = State.LIVE
            if self.unsafe == "drop-buffered":
                buffered = []
            for c in buffered:
                self._deliver_one(sub, c)

    # ------------------------------------------------------------------ unsubscribe / kill
    def unsubscribe(self, conn: LiveConnection, subscription_id: str) -> None:
        sub = conn.subs.get(subscription_id)
        if sub is not None:
            self._drop(sub)

    def kill(self, live_id: str, principal: Any) -> dict:
        """KILL LIVE QUERY <live_id> (dba/system): the subscription ends; its client is not told."""
        if principal.role not in ADMIN_ROLES:
            raise KalamError("PERMISSION_DENIED", "KILL LIVE QUERY requires role dba or system")
        sub = self.index.by_live_id(live_id)
        if sub is None:
            raise KalamError("NOT_FOUND", f"Live query not found: {live_id} (live queries are local to the node "
                             "that serves them: run KILL LIVE QUERY on that node)")
        self._drop(sub)
        return {"row_count": 1, "message": f"Live query killed: {live_id}", "as_user": principal.username}

    # ------------------------------------------------------------------ dispatch
    async def _dispatch_loop(self) -> None:
        assert self._events is not None
        events = self._events
        while True:
            event = await events.get()
            try:
                if isinstance(event, Applied):
                    await self._on_applied(event)
                    self._advance(event.last_index)
                elif isinstance(event, Reset):
                    self._on_reset(event)
                    self._advance(event.index)
                elif isinstance(event, TableDropped):
                    for sub in self.index.on_table(event.table):
                        ns, _, t = event.table.partition(".")
                        self._fail(sub, p.NOT_FOUND, f"Not found: Table not found: {ns}:{t} (it was dropped)")
                    self._advance(event.index)
            except Exception:
                log.exception("live dispatch of %r failed", event)

    def _advance(self, index: int) -> None:
        self.processed_index = max(self.processed_index, index)
        if self._waiters:
            still = []
            for i, fut in self._waiters:
                if i <= self.processed_index:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    still.append((i, fut))
            self._waiters = still

    async def _on_applied(self, event: Applied) -> None:
        """Each change to the subscriptions of its (table, owner): tested once per distinct WHERE,
        encoded once per projection, framed per connection in one go."""
        budget = DISPATCH_SLICE
        index = self.index
        now_us = time.time_ns() // 1000
        for change in event.changes:
            subs = index.for_change(change.table, change.owner)
            if not subs:
                continue
            matched: dict[str, bool] = {}
            templates: dict[Any, p.ChangeTemplate] = {}
            outgoing: dict[tuple[LiveConnection, Any], list[Subscription]] = {}
            row = None
            seq, idx = change.seq, change.index
            for sub in subs:
                state = sub.state
                if state is not State.LIVE:
                    if state is not State.CLOSED:
                        sub.hold(change)
                    continue
                if idx <= sub.base_index or seq <= sub.cursor:
                    continue
                sub.cursor = seq
                flt = sub.filter
                if flt is not None:
                    ok = matched.get(flt.key)
                    if ok is None:
                        if row is None:
                            row = match_row(change)
                        ok = matched[flt.key] = flt.matches(row)
                    if not ok:
                        continue
                key = sub.query.projection
                group = outgoing.get((sub.conn, key))
                if group is None:
                    outgoing[(sub.conn, key)] = [sub]
                    if key not in templates:
                        templates[key] = change_template(sub.shape, change, key)
                else:
                    group.append(sub)
            for (conn, key), group in outgoing.items():
                conn.push_changes(templates[key], group)
                for sub in group:
                    sub.delivered += 1
                    sub.last_update_us = now_us
                self.delivered += len(group)
                budget -= len(group)
            if budget <= 0:
                budget = DISPATCH_SLICE
                await asyncio.sleep(0)  # let Raft and other connections run between slices

    def _on_reset(self, event: Reset) -> None:
        """The state was replaced by a snapshot: the changes in between were never published, but
        the change log in the snapshot has them."""
        for sub in self.index.all():
            if sub.state is State.LIVE:
                sub.buffer = []
                sub.state = State.CATCHING_UP
                self._spawn(self._recover(sub), f"live-recover-{sub.id}")
            elif sub.state is State.CATCHING_UP:
                sub.overflowed = True  # its buffer misses changes: read the log again
            elif sub.state is State.LOADING:
                self._fail(sub, p.SUBSCRIPTION_FAILED, "This node installed a snapshot during the initial load; "
                           "subscribe again")

    async def _recover(self, sub: Subscription) -> None:
        try:
            await self._catch_up(sub, sub.cursor)
        except Exception as exc:
            log.exception("recovering subscription %s after a snapshot failed", sub.live_id)
            self._fail(sub, p.SUBSCRIPTION_FAILED, f"Subscription failed: {type(exc).__name__}: {exc}")

    def _deliver_one(self, sub: Subscription, c: Change) -> None:
        """A buffered change, with the same marks and tests as the dispatcher applies."""
        if c.index <= sub.base_index or c.seq <= sub.cursor:
            return
        sub.cursor = c.seq
        self._send_change(sub, c)

    def _send_change(self, sub: Subscription, c: Change) -> None:
        if sub.filter is not None and not sub.filter.matches(match_row(c)):
            return
        self._emit(sub, change_template(sub.shape, c, sub.projection_key))

    def _emit(self, sub: Subscription, tpl: p.ChangeTemplate) -> None:
        sub.conn.push_changes(tpl, [sub])
        sub.delivered += 1
        sub.last_update_us = time.time_ns() // 1000
        self.delivered += 1

    # ------------------------------------------------------------------ system.live
    def _system_rows(self) -> list[tuple]:
        return [s.system_row(self.node_id) for s in self.index.all()]

    def stats(self) -> dict[str, int]:
        from kalamdb.live import connection

        return {"live_connections": len(self.connections), "live_subscriptions": len(self.index),
                "live_notifications_total": self.delivered,
                "live_slow_consumers_closed_total": connection.slow_consumers_closed}


def _as_live_error(err: KalamError, q: SubscriptionQuery) -> LiveError:
    """An engine error on the subscription's SQL, as upstream's LiveError codes."""
    if err.code == "TABLE_NOT_FOUND":
        return LiveError(p.NOT_FOUND, f"Not found: Table not found: {q.namespace}:{q.table}")
    if err.code == "PERMISSION_DENIED":
        return LiveError(p.UNAUTHORIZED, f"Permission denied: {err.message}")
    if err.code in ("INVALID_SQL", "SQL_EXECUTION_ERROR", "INVALID_PARAMETER"):
        return LiveError(p.INVALID_SQL, f"Invalid SQL: {err.message}")
    return LiveError(p.SUBSCRIPTION_FAILED, f"{err.code}: {err.message}")
