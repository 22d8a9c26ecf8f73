"""The sqlglot dialects kalamdb reads SQL in (postgres) and writes it out in (sqlite), loaded once,
when this module is imported, and then passed around as instances instead of by name.

Why: sqlglot loads a dialect lazily the first time it is named, and its class registers itself in
sqlglot's dialect registry *before* it has its tokenizer, parser and generator (sqlglot
`dialects/dialect.py`, `_Dialect.__new__`). A second thread that names the same dialect during that
moment gets the half-built class: it parses with sqlglot's base tokenizer, which reads `$1` as a
column named `$1`, not a parameter. A node parses on two threads at once (requests on the event
loop, committed entries on the apply thread), and statements are cached by text
(`ParseCache`), so one unlucky first parse made every later apply of that statement fail on that
node alone ("You did not supply a value for binding parameter :1") while the other replicas
applied it: the replicas diverged (chaos seeds 302 and 319, docs/chaos.md). Importing this module
builds both dialects under Python's import lock, before any thread parses, and the instances below
are complete objects that no later lookup by name can swap for a half-built one.
"""

from __future__ import annotations

from sqlglot.dialects.dialect import Dialect
from sqlglot.dialects.sqlite import SQLite


class SQLiteBacktickIdentifiers(SQLite):
    """SQLite, with identifiers written in backticks instead of double quotes.

    SQLite reads a double-quoted name that matches no column as a string literal (its "DQS"
    misfeature, on in Python's build and not switchable from Python 3.11): `SELECT "nope" FROM t`
    answered the text 'nope' on every row, and `INSERT … VALUES (1, "abc")` stored 'abc', where
    PostgreSQL and upstream KalamDB say the column does not exist. A backquoted name is only ever
    a name, so compiled SQL keeps the user's meaning and SQLite reports the missing column."""

    class Tokenizer(SQLite.Tokenizer):
        # the first is what the generator writes; sqlglot reads this class attribute when it
        # builds the dialect
        IDENTIFIERS = ["`", '"', ("[", "]")]  # noqa: RUF012


#: the dialect user SQL is parsed in ($1 parameters, double-quoted identifiers)
POSTGRES: Dialect = Dialect.get_or_raise("postgres")
#: the dialect compiled SQL is generated in (what SQLite runs)
SQLITE: Dialect = SQLiteBacktickIdentifiers()

__all__ = ["POSTGRES", "SQLITE"]
