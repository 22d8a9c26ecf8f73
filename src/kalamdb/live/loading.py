"""The initial data of a subscription, consistent with one applied index: the subscription is
registered (buffering) BEFORE its first page is read at applied index A (`read_at`); afterwards only
changes with index > A are delivered. Later pages (`next_batch`) are read at later indexes A_k: rows
changed after A are recognised by their `_seq` (every change after A has a new `_seq`) and replaced
by the version they had at A (the change's `old` row), so every page is a page of the state at A.
The last page carries the exact `_seq` resume point of A; then what was buffered is delivered and
the subscription goes live. Also the start of a resume (`from`) and of a system-table subscription."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kalamdb.engine.changes import ResumeTooOld
from kalamdb.errors import KalamError
from kalamdb.live import protocol as p
from kalamdb.live.catch_up import LOG_PAGE, catch_up
from kalamdb.live.connection import LiveConnection
from kalamdb.live.delivery import deliver_one
from kalamdb.live.query import LiveError, SubscriptionQuery, page_sql
from kalamdb.live.rows import SEQ, full_row, result_rows
from kalamdb.live.subscription import MAX_BUFFERED_CHANGES, State, Subscription

if TYPE_CHECKING:
    from kalamdb.live.service import LiveService


async def read_page(svc: LiveService, sub: Subscription, after: int, limit: int, *,
                    newest_first: bool = False) -> tuple[int, list[tuple[int, dict]], int]:
    """Rows of the subscription with `_seq` > after, read through the engine as the subscriber
    (its compiled-query checks scope USER rows and refuse what the role may not read), at one
    applied index; with the index and the newest `_seq` of the table's visible rows then."""
    cols = list(sub.query.projection) if sub.query.projection is not None else list(sub.shape.columns)
    sql = page_sql(sub.query, cols, after=after, limit=limit, newest_first=newest_first)
    try:
        prepared = svc.db.prepare(sql, None, None, sub.conn.principal)
        index, results = await svc.read(prepared)
    except KalamError as err:
        raise _as_live_error(err, sub.query) from None
    rows = result_rows(results[0], stream=sub.shape.table_type == "STREAM",
                       projected=sub.query.projection is not None)
    newest = results[1]["rows"][0][0] if len(results) > 1 and results[1].get("rows") else None
    return index, rows, int(newest) if newest is not None else 0


async def load_system(svc: LiveService, sub: Subscription) -> None:
    """System tables: initial rows only (they have no `_seq` and no change events, as upstream)."""
    where = f" WHERE {sub.query.where_sql}" if sub.query.where is not None else ""
    cols = "*" if sub.query.projection is None else ", ".join(f'"{c}"' for c in sub.query.projection)
    try:
        prepared = svc.db.prepare(f"SELECT {cols} FROM system.{sub.query.table}{where}", None, None,
                                   sub.conn.principal)
        _, results = await svc.read(prepared)
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


async def load_first(svc: LiveService, sub: Subscription) -> None:
    opts = sub.options
    schema = sub.shape.schema(sub.query.projection)
    if opts is None:
        # ack only: live from the index of a (validating) read of the newest row
        index, _, newest = await read_page(svc, sub, -(2**63), 1, newest_first=True)
        sub.base_index = index
        sub.cursor = await boundary(svc, sub, newest, index)
        # upstream sends no last_seq_id here; ours is the exact resume point of "from now on"
        sub.conn.send_message(p.subscription_ack(sub.id, p.batch_control(0, False, sub.cursor), schema))
        go_live(svc, sub)
        return
    if opts.last_rows is not None:
        index, rows, newest = await read_page(svc, sub, -(2**63), max(opts.last_rows, 1), newest_first=True)
        rows = rows[: opts.last_rows]
        rows.reverse()
        page, has_more, after = rows, False, rows[-1][0] if rows else 0
    else:
        index, rows, newest = await read_page(svc, sub, -(2**63), sub.batch_size + 1)
        page, has_more, after = cut(rows, rows, [], -(2**63), sub.batch_size)
    sub.base_index = index
    sub.base_seq = newest
    sub.page_after = after
    await send_batch(svc, sub, page, has_more, schema=schema)


async def resume(svc: LiveService, sub: Subscription, from_seq: int) -> None:
    control = p.batch_control(0, False, from_seq)
    await read_page(svc, sub, 2**63 - 1, 1)  # validates the SQL and the permission, reads no row
    sub.conn.send_message(p.subscription_ack(sub.id, control, sub.shape.schema(sub.query.projection)))
    sub.conn.send_message(p.initial_data_batch(sub.id, [], control))
    if svc.unsafe == "skip-resume":  # deliberately forget what the client missed: live from now
        sub.base_index = svc.processed_index
        sub.take_buffer()
        sub.state = State.LIVE
        return
    await catch_up(svc, sub, from_seq)


def cut(raw: list[tuple[int, dict]], kept: list[tuple[int, dict]], olds: list[tuple[int, dict]],
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


async def send_batch(svc: LiveService, sub: Subscription, page: list[tuple[int, dict]], has_more: bool, *,
                     schema: list[dict] | None = None) -> None:
    last = page[-1][0] if page else None
    if not has_more:
        # the final batch carries the exact resume point of the snapshot (see _boundary)
        last = await boundary(svc, sub, max(last or 0, sub.base_seq), sub.base_index)
        sub.cursor = last
    control = p.batch_control(sub.batch_num, has_more, last)
    if sub.state is State.CLOSED:
        return
    if schema is not None:
        sub.conn.send_message(p.subscription_ack(sub.id, control, schema))
    sub.conn.send_message(p.initial_data_batch(sub.id, [r for _, r in page], control))
    if not has_more:
        go_live(svc, sub)


async def boundary(svc: LiveService, sub: Subscription, known: int, index: int) -> int:
    """The `_seq` resume point of a snapshot read at `index`: the greatest `_seq` of this table's
    (and owner's) changes with a log index <= `index` (`known` is a lower bound: the newest row
    of the snapshot). A client that resumes from it gets exactly the changes after the snapshot."""
    cursor = known
    while True:
        try:
            _, page = await svc.read_changes(sub, cursor)
        except ResumeTooOld as old:
            cursor = max(cursor, old.oldest_kept)  # what is gone is older than any snapshot's edge
            continue
        for c in page:
            if c.index > index:
                return cursor
            cursor = c.seq
        if len(page) < LOG_PAGE:
            return cursor


def go_live(svc: LiveService, sub: Subscription) -> None:
    """Deliver what was buffered during the load (index > base_index, seq > cursor), then live."""
    if sub.state is State.CLOSED:
        return
    if sub.overflowed:
        svc.fail(sub, p.SUBSCRIPTION_FAILED, f"More than {MAX_BUFFERED_CHANGES} changes arrived during the "
                 "initial load; subscribe again (a smaller batch_size or last_rows loads faster)")
        return
    buffered = sub.take_buffer()
    sub.state = State.LIVE
    if svc.unsafe == "drop-buffered":
        buffered = []
    for c in buffered:
        deliver_one(svc, sub, c)


async def next_batch(svc: LiveService, conn: LiveConnection, msg: p.NextBatch) -> None:
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
        index, rows, _ = await read_page(svc, sub, sub.page_after, sub.batch_size + 1)
        await svc.wait_processed(index)
        if sub.state is not State.LOADING:
            return
        if sub.overflowed:
            raise LiveError(p.BATCH_FETCH_FAILED, f"More than {MAX_BUFFERED_CHANGES} changes arrived during the "
                            "initial load; subscribe again (a smaller batch_size or last_rows loads faster)")
        kept, olds = as_of_base(sub, rows, index)
        page, has_more, after = cut(rows, kept, olds, sub.page_after, sub.batch_size)
    except LiveError as err:
        svc.fail(sub, err.code, err.message)
        return
    sub.batch_num += 1
    sub.page_after = after
    await send_batch(svc, sub, page, has_more)


def as_of_base(sub: Subscription, rows: list[tuple[int, dict]], index: int
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


def _as_live_error(err: KalamError, q: SubscriptionQuery) -> LiveError:
    """An engine error on the subscription's SQL, as upstream's LiveError codes."""
    if err.code == "TABLE_NOT_FOUND":
        return LiveError(p.NOT_FOUND, f"Not found: Table not found: {q.namespace}:{q.table}")
    if err.code == "PERMISSION_DENIED":
        return LiveError(p.UNAUTHORIZED, f"Permission denied: {err.message}")
    if err.code in ("INVALID_SQL", "SQL_EXECUTION_ERROR", "INVALID_PARAMETER"):
        return LiveError(p.INVALID_SQL, f"Invalid SQL: {err.message}")
    return LiveError(p.SUBSCRIPTION_FAILED, f"{err.code}: {err.message}")
