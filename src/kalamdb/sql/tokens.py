"""The tokens and read cursor of KalamDB's own grammar (DDL, users, storage, cluster, topics): one
regular expression splits a statement into strings, quoted identifiers, numbers, words and
punctuation, and the cursor walks them with helpers that raise INVALID_SQL. Queries never come here:
sqlglot parses those (sql/parse_cache.py)."""

from __future__ import annotations

import re
from typing import Any

from kalamdb.errors import KalamError

NAME_RE = re.compile(r"^[a-zA-Z0-9_]+$")

# groups: 1 string, 2 quoted identifier, 3 number, 4 word, 5 punctuation, 6 any other character
# (unrolled-loop string patterns: linear time even on an unterminated quote)
_TOKEN_RE = re.compile(
    r"""('[^']*(?:''[^']*)*')|("[^"]*(?:""[^"]*)*"|`[^`]*`)|(-?\d+(?:\.\d+)?)"""
    r"""|([A-Za-z_][A-Za-z0-9_$]*)|([(),.=*;:-])|(\S)"""
)
_KINDS = ("", "str", "qid", "num", "word", "op", "other")


class Tok:
    """One token: its kind (str, num, word, op, other; a quoted identifier is a word), its text as
    written, its value (a string's content, a number, a word's text) and its offset in the statement."""

    __slots__ = ("kind", "pos", "text", "value")

    def __init__(self, kind: str, text: str, value: Any, pos: int):
        self.kind, self.text, self.value, self.pos = kind, text, value, pos

    @property
    def upper(self) -> str:
        return self.text.upper() if self.kind == "word" else ""


def tokenize(sql: str) -> list[Tok]:
    toks: list[Tok] = []
    append = toks.append
    for m in _TOKEN_RE.finditer(sql):
        kind = _KINDS[m.lastindex or 0]  # every alternative is a group: lastindex is always set
        text = m.group()
        value: Any
        if kind == "word" or kind == "op" or kind == "other":
            value = text
        elif kind == "num":
            value = float(text) if "." in text else int(text)
        elif kind == "str":
            value = text[1:-1].replace("''", "'")
        else:
            value = text[1:-1].replace('""', '"') if text[0] == '"' else text[1:-1]
            kind = "word"
        append(Tok(kind, text, value, m.start()))
    return toks


class Cursor:
    """A read position over the tokens of one statement, with helpers that raise INVALID_SQL."""

    def __init__(self, sql: str):
        self.sql = sql
        self.toks = tokenize(sql)
        self.i = 0

    def peek(self, k: int = 0) -> Tok | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def at(self, *words: str) -> bool:
        for k, w in enumerate(words):
            t = self.peek(k)
            if t is None or t.upper != w:
                return False
        return True

    def accept(self, *words: str) -> bool:
        if self.at(*words):
            self.i += len(words)
            return True
        return False

    def expect(self, *words: str) -> None:
        if not self.accept(*words):
            got = self.peek()
            raise KalamError("INVALID_SQL", f"Expected {' '.join(words)} but found "
                             f"{repr(got.text) if got else 'end of statement'}")

    def accept_op(self, op: str) -> bool:
        t = self.peek()
        if t is not None and t.kind == "op" and t.text == op:
            self.i += 1
            return True
        return False

    def expect_op(self, op: str) -> None:
        if not self.accept_op(op):
            got = self.peek()
            raise KalamError("INVALID_SQL", f"Expected '{op}' but found "
                             f"{repr(got.text) if got else 'end of statement'}")

    def name(self, what: str) -> str:
        t = self.peek()
        if t is None or t.kind not in ("word", "str"):
            raise KalamError("INVALID_SQL", f"Expected {what} but found "
                             f"{repr(t.text) if t else 'end of statement'}")
        self.i += 1
        return str(t.value)

    def string(self, what: str) -> str:
        """A quoted string's content."""
        t = self.peek()
        if t is None or t.kind != "str":
            raise KalamError("INVALID_SQL", f"Expected {what} as a quoted string")
        self.i += 1
        return t.value

    def current(self) -> Tok:
        """The token at the read position, for callers that checked done() (or at()) first."""
        t = self.peek()
        if t is None:
            raise KalamError("INVALID_SQL", "Unexpected end of statement")
        return t

    def done(self) -> bool:
        return self.i >= len(self.toks)

    def end(self) -> None:
        if not self.done():
            raise KalamError("INVALID_SQL", f"Unexpected {self.current().text!r} at end of statement")


def check_name(name: str, what: str) -> str:
    """A namespace, table or column name: letters, digits and underscore only."""
    if not NAME_RE.match(name):
        raise KalamError("INVALID_SQL", f"Invalid {what} name '{name}': use letters, digits and underscore")
    return name


def qualified(c: Cursor, what: str = "table") -> tuple[str | None, str]:
    """`name` or `namespace.name`, lower-cased and checked."""
    first = c.name(f"{what} name")
    if c.accept_op("."):
        second = c.name(f"{what} name")
        return check_name(first.lower(), "namespace"), check_name(second.lower(), what)
    return None, check_name(first.lower(), what)
