"""The node's injected wall clock: real time shifted by an offset and skewed by a drift, so that
fault tests can give each node a wrong clock without touching the machine's.

Set once at process start from the environment:

* ``KALAMDB_CLOCK_OFFSET_MS``: added to every wall-clock reading (may be negative);
* ``KALAMDB_CLOCK_DRIFT_PPM``: the clock runs fast (positive) or slow (negative) by this many parts
  per million, measured from process start. The same factor stretches the Raft tick period, so a
  drifting node also times elections and heartbeats by its drifting clock.

Everything in a node that reads wall time goes through ``clock``: command timestamps (NOW(),
``_seq``), the stream-expiry cut-off, JWT issue and expiry checks. Monotonic deadlines for waits stay
on ``time.monotonic`` on purpose: they bound how long *this* process waits, not what time it is.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

OFFSET_ENV = "KALAMDB_CLOCK_OFFSET_MS"
DRIFT_ENV = "KALAMDB_CLOCK_DRIFT_PPM"
MAX_DRIFT_PPM = 500_000  # +-50 %: beyond that "drift" is a broken configuration


class Clock:
    """Wall time = real time at start + offset + elapsed real time * (1 + drift)."""

    def __init__(self, offset_ms: float = 0.0, drift_ppm: float = 0.0):
        if not -MAX_DRIFT_PPM <= drift_ppm <= MAX_DRIFT_PPM:
            raise ValueError(f"{DRIFT_ENV} must be within +-{MAX_DRIFT_PPM} ppm, got {drift_ppm}")
        self.offset_ms = float(offset_ms)
        self.drift_ppm = float(drift_ppm)
        self._rate = 1.0 + self.drift_ppm / 1e6
        self._wall0 = time.time()
        self._mono0 = time.monotonic()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Clock:
        env = os.environ if env is None else env
        values = []
        for name in (OFFSET_ENV, DRIFT_ENV):
            raw = env.get(name, "").strip()
            try:
                values.append(float(raw) if raw else 0.0)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {raw!r}") from None
        return cls(*values)

    @property
    def skewed(self) -> bool:
        return self.offset_ms != 0.0 or self.drift_ppm != 0.0

    def time(self) -> float:
        """Seconds since the epoch, as this node believes."""
        if not self.skewed:
            return time.time()
        elapsed = time.monotonic() - self._mono0
        return self._wall0 + self.offset_ms / 1000.0 + elapsed * self._rate

    def now_us(self) -> int:
        """Microseconds since the epoch (command timestamps, stream expiry)."""
        if not self.skewed:
            return time.time_ns() // 1000
        return int(self.time() * 1_000_000)

    def period(self, seconds: float) -> float:
        """How long a timer of `seconds` by this clock lasts in real time (a fast clock fires early)."""
        return seconds / self._rate


clock = Clock.from_env()
"""The process-wide clock; read by every call site that needs wall time."""
