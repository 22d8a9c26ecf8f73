"""STREAM rows expire by a replicated command: the proposing node's clock decides once, and every
replica applies the same deletion, so replicas never diverge on what has expired."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from kalamdb.errors import KalamError
from kalamdb.node.clock import clock

log = logging.getLogger("kalamdb.node.expiry")


async def expire_streams_forever(db: Any, submit: Callable[[bytes], Awaitable[Any]], interval_s: float,
                                 should_propose: Callable[[], bool] = lambda: True) -> None:
    """Every `interval_s`, propose the deletion of expired STREAM rows (until cancelled)."""
    while True:
        await asyncio.sleep(interval_s)  # a period, not a wait for a state
        if not should_propose():
            continue
        try:
            command = db.expiry_command(clock.now_us())
            if command is not None:
                await submit(command)
        except asyncio.CancelledError:
            raise
        except KalamError as exc:
            if exc.status != 503:  # 503: no leader or shutting down; the next period tries again
                log.warning("stream expiry failed: %s", exc.message)
        except Exception:
            log.exception("stream expiry failed")
