"""What the peer transport reports: the counters behind `PeerTransport.stats` (updated by the
listener, the handshakes and the outbound links alike) and the rate-limited warnings that keep a
connection flood from becoming a log flood. Shared by `transport.py`, `inbound.py`, `outbound.py`
and `handshake.py`, so none of them imports another for bookkeeping."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass(slots=True)
class TransportCounters:
    """Monotonic counters of one transport; `PeerTransport.stats` publishes them."""

    frames_sent: int = 0
    bytes_sent: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # what we refused, by reason
    dropped: Counter[str] = field(default_factory=Counter)  # frames dropped, by reason
    refused_by_peer: Counter[str] = field(default_factory=Counter)  # what the other side told us
    reconnects: int = 0
    connect_failures: int = 0
    callback_errors: int = 0
    write_stalls: int = 0


class LogThrottle:
    """At most one log line per key and interval; the next line says how many were left out. A
    port anyone can reach must not turn a connection flood into a disk-filling log flood."""

    def __init__(self, logger: logging.Logger, every_s: float):
        self._log = logger
        self._every_s = every_s
        self._last: dict[Hashable, float] = {}
        self._suppressed: Counter[Hashable] = Counter()

    def warning(self, key: Hashable, msg: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._every_s:
            self._suppressed[key] += 1
            return
        if len(self._last) > 1024:  # keys are bounded in practice (reasons); never grow without end
            self._last.clear()
        self._last[key] = now
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            msg += f" ({skipped} similar message(s) suppressed in the last {self._every_s:g} s)"
        self._log.warning(msg, *args)


def describe(exc: BaseException) -> str:
    """An exception as a short log phrase: its type, and its message if it has one."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
