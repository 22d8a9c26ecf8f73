"""Catching up from the durable change log: a resume (`from`) and the recovery of live
subscriptions after this node installed a snapshot (whose changes were never published). The log is
read page by page after the subscription's cursor; live changes that arrive meanwhile are buffered,
and delivered after the log, those the log already gave (`_seq` <= cursor) dropped."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kalamdb.engine.changes import Reset, ResumeTooOld
from kalamdb.live import protocol as p
from kalamdb.live.delivery import deliver_one, send_change
from kalamdb.live.subscription import State, Subscription

if TYPE_CHECKING:
    from kalamdb.live.service import LiveService

log = logging.getLogger("kalamdb.live")

LOG_PAGE = 1000  # changes read from the change log per round trip


async def catch_up(svc: LiveService, sub: Subscription, cursor: int) -> None:
    """Deliver the change log after `cursor`, then what arrived meanwhile, then go live."""
    sub.state = State.CATCHING_UP
    sub.cursor = cursor
    if sub.buffer is None:
        sub.buffer = []
    while sub.state is State.CATCHING_UP:
        sub.overflowed = False
        try:
            _, page = await svc.read_changes(sub, sub.cursor)
        except ResumeTooOld as old:
            svc.fail(sub, p.RESUME_TOO_OLD, f"{old.message}")
            return
        if sub.state is not State.CATCHING_UP:
            return
        for c in page:
            if c.seq > sub.cursor:
                sub.cursor = c.seq
                send_change(svc, sub, c)
        if sub.buffer is not None:
            sub.buffer = [c for c in sub.buffer if c.seq > sub.cursor]
        if len(page) >= LOG_PAGE:
            await sub.conn.drained(below=LOG_PAGE)
            continue
        if sub.overflowed:
            continue  # the buffer lost changes: the log has them, read it again
        buffered = sub.take_buffer()
        sub.state = State.LIVE
        if svc.unsafe == "drop-buffered":
            buffered = []
        for c in buffered:
            deliver_one(svc, sub, c)


def on_reset(svc: LiveService, event: Reset) -> None:
    """The state was replaced by a snapshot: the changes in between were never published, but
    the change log in the snapshot has them."""
    for sub in svc.index.all():
        if sub.state is State.LIVE:
            sub.buffer = []
            sub.state = State.CATCHING_UP
            svc.spawn(recover(svc, sub), f"live-recover-{sub.id}")
        elif sub.state is State.CATCHING_UP:
            sub.overflowed = True  # its buffer misses changes: read the log again
        elif sub.state is State.LOADING:
            svc.fail(sub, p.SUBSCRIPTION_FAILED, "This node installed a snapshot during the initial load; "
                     "subscribe again")


async def recover(svc: LiveService, sub: Subscription) -> None:
    try:
        await catch_up(svc, sub, sub.cursor)
    except Exception as exc:
        log.exception("recovering subscription %s after a snapshot failed", sub.live_id)
        svc.fail(sub, p.SUBSCRIPTION_FAILED, f"Subscription failed: {type(exc).__name__}: {exc}")
