"""Delivery of changes to subscribers: the fan-out of each applied batch (each change to the
subscriptions of its (table, owner), tested once per distinct WHERE, encoded once per projection,
framed per connection in one go), and the delivery of one buffered or logged change with the same
marks and tests. Every path skips changes at or before a subscription's base index or cursor, which
is what makes delivery exactly once (docs/live.md)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from kalamdb.engine.changes import Applied, Change
from kalamdb.live import protocol as p
from kalamdb.live.connection import LiveConnection
from kalamdb.live.rows import change_template, match_row
from kalamdb.live.subscription import State, Subscription

if TYPE_CHECKING:
    from kalamdb.live.service import LiveService

DISPATCH_SLICE = 1024  # deliveries between yields to the event loop (~2 ms: Raft ticks must not wait long)


async def on_applied(svc: LiveService, event: Applied) -> None:
    """Each change to the subscriptions of its (table, owner): tested once per distinct WHERE,
    encoded once per projection, framed per connection in one go."""
    budget = DISPATCH_SLICE
    index = svc.index
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
            svc.delivered += len(group)
            budget -= len(group)
        if budget <= 0:
            budget = DISPATCH_SLICE
            await asyncio.sleep(0)  # let Raft and other connections run between slices


def deliver_one(svc: LiveService, sub: Subscription, c: Change) -> None:
    """A buffered change, with the same marks and tests as the dispatcher applies."""
    if c.index <= sub.base_index or c.seq <= sub.cursor:
        return
    sub.cursor = c.seq
    send_change(svc, sub, c)


def send_change(svc: LiveService, sub: Subscription, c: Change) -> None:
    if sub.filter is not None and not sub.filter.matches(match_row(c)):
        return
    emit(svc, sub, change_template(sub.shape, c, sub.projection_key))


def emit(svc: LiveService, sub: Subscription, tpl: p.ChangeTemplate) -> None:
    sub.conn.push_changes(tpl, [sub])
    sub.delivered += 1
    sub.last_update_us = time.time_ns() // 1000
    svc.delivered += 1
