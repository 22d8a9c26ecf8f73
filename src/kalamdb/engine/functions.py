"""The SQL functions the engine adds to SQLite, and the per-connection state that feeds them.

Everything a replica could disagree on (the clock, random numbers, ids, who is asking) comes from
the command being applied, never from the replica itself: `FnState` holds those fixed inputs and
the per-statement budgets, and every connection (the writer and each reader thread's) has one."""

from __future__ import annotations

import random
import re
import sqlite3
import threading
import time
from typing import TYPE_CHECKING

from kalamdb.engine import limits
from kalamdb.engine.ids import next_snowflake, ulid, uuid_v7
from kalamdb.errors import KalamError
from kalamdb.sql.types import COERCERS

if TYPE_CHECKING:
    from kalamdb.engine.authorizer import Guard


class FnState:
    """Inputs of the SQL functions that would otherwise be non-deterministic, and budgets."""

    def __init__(self, seq_source, node_id: int, reads_stopped: threading.Event | None = None):
        #: the writer's snowflake counter (an object with `next_seq(now_ms, node_id)`); None on readers
        self.seq_source = seq_source
        #: set when the node shuts down: a running read stops at its next progress check (never a
        #: write: a write's outcome must be the same on every replica, so only its counted budget stops it)
        self.reads_stopped = reads_stopped
        self.now_us = 0
        self.node_id = node_id
        self.seed: int | None = None  # None: a fresh unseeded RNG (reads)
        self._rng: random.Random | None = None
        self.username = ""
        self.owner = ""  # the user id whose rows USER and STREAM tables show (kdb_owner())
        self.last_error: KalamError | None = None
        self.steps = 0
        self.step_budget = 0  # 0: no step limit
        self.deadline = 0.0  # 0: no time limit
        self.guard: Guard | None = None

    def start_statement(self, *, steps: int = 0, seconds: float = 0.0) -> None:
        self.steps = 0
        self.step_budget = steps
        self.deadline = time.monotonic() + seconds if seconds else 0.0

    def end_statement(self) -> None:
        self.step_budget = 0
        self.deadline = 0.0

    def over_budget(self) -> int:
        if self.step_budget:
            self.steps += limits.PROGRESS_EVERY
            return 1 if self.steps > self.step_budget else 0
        if not self.deadline:
            return 0
        if self.reads_stopped is not None and self.reads_stopped.is_set():
            return 1
        return 1 if time.monotonic() > self.deadline else 0

    def stopped_by_shutdown(self) -> bool:
        return self.reads_stopped is not None and self.reads_stopped.is_set()

    def reset(self, now_us: int, seed: int | None) -> None:
        self.now_us, self.seed, self._rng = now_us, seed, None

    @property
    def rng(self) -> random.Random:
        """Seeded from the command on first use (seeding costs more than most statements)."""
        if self._rng is None:
            self._rng = random.Random(self.seed)
        return self._rng


# ------------------------------------------------------------------------------------- printf

_SPEC = re.compile(r"%([-+ 0#,!]*)(\*|\d+)?(?:\.(\*|\d+))?([a-zA-Z%])")
_printf_conn = threading.local()


def bounded_printf(fmt, *args):
    """SQLite's printf(), refusing widths and precisions that would make one call run for seconds
    (`printf('%.*c', 2e9, 'x')` loops two billion times outside the progress handler)."""
    if fmt is None:
        return None
    text = fmt if isinstance(fmt, str) else str(fmt)
    i = 0
    for m in _SPEC.finditer(text):
        if m.group(4) == "%":
            continue
        for part in (m.group(2), m.group(3)):
            if part is None:
                continue
            if part == "*":
                value = args[i] if i < len(args) else 0
                i += 1
                try:
                    n = abs(int(value))
                except (TypeError, ValueError):
                    n = 0
            else:
                n = int(part)
            if n > limits.MAX_PRINTF_WIDTH:
                raise KalamError("SQL_EXECUTION_ERROR", f"printf()/format() width or precision {n} exceeds the "
                                 f"limit of {limits.MAX_PRINTF_WIDTH}")
        i += 1
    conn = getattr(_printf_conn, "conn", None)
    if conn is None:
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, limits.MAX_INTERMEDIATE_BYTES)
        _printf_conn.conn = conn
    marks = ", ".join("?" for _ in range(len(args) + 1))
    return conn.execute(f"SELECT printf({marks})", (text, *args)).fetchone()[0]


# ------------------------------------------------------------------------------------- registration

def register(conn: sqlite3.Connection, state: FnState) -> None:
    def guarded(fn):
        def call(*args):
            try:
                return fn(*args)
            except KalamError as e:
                state.last_error = e
                raise
        return call

    def seq():
        src = state.seq_source
        if src is None:
            raise KalamError("INTERNAL_ERROR", "SNOWFLAKE_ID() is only available when writing")
        return src.next_seq(state.now_us // 1000, state.node_id)

    def snowflake_read():
        return next_snowflake(0, time.time_ns() // 1_000_000, state.node_id)

    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, limits.MAX_INTERMEDIATE_BYTES)
    conn.setlimit(sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH, limits.MAX_LIKE_PATTERN)
    conn.set_progress_handler(state.over_budget, limits.PROGRESS_EVERY)
    conn.create_function("kdb_seq", 0, guarded(seq))
    conn.create_function("kdb_snowflake", 0, guarded(seq if state.seq_source is not None else snowflake_read))
    conn.create_function("kdb_now", 0, lambda: state.now_us)
    conn.create_function("kdb_random", 0, lambda: state.rng.random())
    conn.create_function("kdb_uuid7", 0, lambda: uuid_v7(state.rng, state.now_us // 1000))
    conn.create_function("kdb_ulid", 0, lambda: ulid(state.rng, state.now_us // 1000))
    conn.create_function("kdb_current_user", 0, lambda: state.username)
    conn.create_function("kdb_owner", 0, lambda: state.owner)
    conn.create_function("kdb_printf", -1, guarded(bounded_printf))
    for name, fn in COERCERS.items():
        conn.create_function(name, 1, guarded(fn), deterministic=True)
