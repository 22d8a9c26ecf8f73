"""Statements already proven cheap to prepare are prepared right on the event loop.

Preparing SQL runs on the worker threads (server/admission.py) because its cost is unbounded: a
first parse of a 500-byte statement can take 20-80 ms here, a failing one as long every time. But
most traffic repeats a few statement texts with `$n` parameters, and for those a prepare is a
parse-cache hit of tens of microseconds, less than the two thread hand-offs a worker costs (measured:
CPU per write at 64 clients −30 %). So a text joins this set once a worker prepared it successfully
within `max_cpu_s` of CPU time (thread time: waiting for the GIL does not count), and leaves it if
an inline prepare ever takes longer than `max_inline_wall_s` of wall time (a cache miss that parses
again costs 20-80 ms). The inline check reads the wall clock, not thread time: thread time is a
system call, and a system call made while holding the GIL lets a loaded machine's scheduler stop
the thread right there, stalling the Raft and apply threads of the process too (measured: the main
thread of a node spent 20 % of its samples on those two calls at 64 clients, load 7; 1-client p50
−30 % in 3 of 4 alternating rounds, docs/PERFORMANCE.md step 6). A preemption that makes the wall
time overrun only sends the text back to a worker once, which measures its CPU again. Texts that
change users never join (their command hashes a password). Executing SQL always stays on the
workers.
"""

from __future__ import annotations

from collections import OrderedDict

MAX_CPU_S = 0.0005
MAX_INLINE_WALL_S = 0.002
MAX_TEXT_BYTES = 2048
CAPACITY = 4096


class CheapStatements:
    def __init__(self, *, capacity: int = CAPACITY, max_cpu_s: float = MAX_CPU_S,
                 max_text_bytes: int = MAX_TEXT_BYTES, max_inline_wall_s: float = MAX_INLINE_WALL_S):
        self.capacity = capacity
        self.max_cpu_s = max_cpu_s
        self.max_inline_wall_s = max_inline_wall_s
        self.max_text_bytes = max_text_bytes
        self._texts: OrderedDict[str, None] = OrderedDict()
        self.inline = 0  # prepares done on the event loop
        self.offloaded = 0  # prepares done on a worker

    def known(self, sql: str) -> bool:
        if sql in self._texts:
            self._texts.move_to_end(sql)
            return True
        return False

    def learn(self, sql: str, cpu_s: float) -> None:
        """A worker prepared `sql` successfully in `cpu_s` seconds of CPU."""
        if cpu_s <= self.max_cpu_s and len(sql) <= self.max_text_bytes:
            self._texts[sql] = None
            if len(self._texts) > self.capacity:
                self._texts.popitem(last=False)

    def forget(self, sql: str) -> None:
        self._texts.pop(sql, None)
