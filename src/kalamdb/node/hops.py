"""How work crosses between a node's two event loops: the Raft thread's own loop, and the caller's
(HTTP) loop on which proposals, reads and their futures live (ARCHITECTURE.md decision 15).

One object knows both loops, so every part of the driver crosses the same way: to the Raft thread
with `call_soon_threadsafe` (a wake-up of that loop), back to the caller's loop the same way from
another thread, or with a plain `call_soon` when already on it (no wake-up to pay for).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

from kalamdb.errors import KalamError
from kalamdb.node.proposals import shutting_down


def _not_started() -> KalamError:
    return KalamError("CLUSTER_UNAVAILABLE", "node is not started", status=503)


class ThreadHops:
    """The Raft thread's loop and the caller's loop, once each has been bound by the driver's start."""

    def __init__(self) -> None:
        self._raft: asyncio.AbstractEventLoop | None = None
        self._caller: asyncio.AbstractEventLoop | None = None
        self._caller_thread = 0

    def bind_caller(self) -> None:
        """(caller's loop) The running loop is the one proposals and reads are answered on."""
        self._caller = asyncio.get_running_loop()
        self._caller_thread = threading.get_ident()

    def bind_raft(self) -> None:
        """(Raft thread) The running loop is the Raft thread's."""
        self._raft = asyncio.get_running_loop()

    @property
    def raft_loop(self) -> asyncio.AbstractEventLoop | None:
        return self._raft

    def caller_loop(self) -> asyncio.AbstractEventLoop:
        """The loop the driver was started on: proposals, reads and their futures live there."""
        loop = self._caller
        if loop is None:
            raise _not_started()
        return loop

    def to_raft(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) on the Raft thread soon (from any thread)."""
        loop = self._raft
        if loop is None:
            raise _not_started()
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the Raft loop is closed: the node is stopping
            raise shutting_down() from None

    def to_caller(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) on the caller's loop soon (from any thread, that loop's own included)."""
        with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits any more
            loop = self.caller_loop()
            if threading.get_ident() == self._caller_thread:
                loop.call_soon(fn, *args)  # no wake-up needed: we are on it
            else:
                loop.call_soon_threadsafe(fn, *args)
