"""What one statement may consume. Every limit answers with an error that names it and says what to
change; docs/security.md lists them with their defaults.

Write limits are counted, never timed, so a write that exceeds one fails identically on every
replica (the outcome is part of the replicated state); the proposing node also checks them before
proposing, so replicas normally never spend the budget at all."""

from __future__ import annotations

from kalamdb.sql import templates

MAX_SQL_BYTES = 1024 * 1024
MAX_PARAMS = 50
MAX_PARAM_BYTES = 512 * 1024
#: items of one IN (...) list (enforced by the parser, before any parse: sql/templates.py)
MAX_IN_LIST_ITEMS = templates.MAX_IN_LIST_ITEMS

#: a written cell (TEXT, BYTES, JSON...) may be at most this big
MAX_VALUE_BYTES = 1024 * 1024
#: any string or blob SQLite builds while evaluating a statement (SQLITE_LIMIT_LENGTH)
MAX_INTERMEDIATE_BYTES = 8 * 1024 * 1024
#: printf()/format() width or precision (one call runs outside the progress handler)
MAX_PRINTF_WIDTH = 100_000
#: LIKE/GLOB pattern length (SQLITE_LIMIT_LIKE_PATTERN_LENGTH)
MAX_LIKE_PATTERN = 10_000

#: SQLite VM steps one write statement may run while finding and computing its rows
WRITE_STEP_BUDGET = 20_000_000
#: rows one write statement may insert, update or delete
MAX_WRITE_ROWS = 100_000

#: wall-clock seconds one read statement may run
READ_SECONDS_BUDGET = 15.0
#: rows and (approximate, as JSON) bytes one read result may hold
MAX_RESULT_ROWS = 1_000_000
MAX_RESULT_BYTES = 64 * 1024 * 1024

PROGRESS_EVERY = 10_000  # VM steps between progress-handler calls
