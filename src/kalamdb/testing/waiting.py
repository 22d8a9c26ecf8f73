"""Waiting for a condition with a deadline: the one way tests here wait for state they cannot
subscribe to (another process, a counter in another thread). Never a fixed sleep: the short poll
only spaces the checks, and the deadline turns a hang into a failure that says what it waited for."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

POLL_S = 0.002


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition",
             poll_s: float = POLL_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll_s)


async def async_wait_for(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition",
                         poll_s: float = POLL_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(poll_s)
