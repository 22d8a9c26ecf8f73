"""A small EDN reader: enough of the format for Jepsen and Elle histories (maps, vectors, lists,
sets, keywords, strings, numbers, nil/true/false, symbols, comments, `#_` discards and tagged
literals such as `#jepsen.history.Op{...}`, whose tag is dropped).

Jepsen writes a history as one map a line, or as one vector of maps; both read as a sequence of
top-level forms. A regular expression tokenizer does the scanning (a per-character loop in Python
is several times slower on multi-megabyte histories); errors name the line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any


class Keyword(str):
    """An EDN keyword (`:append`): a str of its name, shown with its colon. Kept distinct from a
    string so a key `:x` and a key `"x"` stay different keys."""

    __slots__ = ()

    def __repr__(self) -> str:
        return ":" + self


class Symbol(str):
    """An EDN symbol (`...`, `foo/bar`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


class EdnError(ValueError):
    def __init__(self, message: str, line: int):
        super().__init__(f"line {line}: {message}")
        self.line = line


_TOKEN = re.compile(r"""
    (?P<ws>[\s,]+|;[^\n]*)
  | (?P<open>\#\{|[\[({])
  | (?P<close>[\])}])
  | "(?P<str>(?:[^"\\]|\\.)*)"
  | (?P<discard>\#_)
  | (?P<tag>\#[A-Za-z][\w.\-/*+!?<>=]*)
  | (?P<char>\\(?:newline|space|tab|return|u[0-9a-fA-F]{4}|.))
  | (?P<atom>[^\s,;\[\](){}"\\]+)
""", re.VERBOSE)
_INT = re.compile(r"[+-]?\d+N?")
_FLOAT = re.compile(r"[+-]?(?:\d+\.\d*(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+)M?")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f"}
_CHARS = {"newline": "\n", "space": " ", "tab": "\t", "return": "\r"}
_CLOSER = {"[": "]", "(": ")", "{": "}", "#{": "}"}


def _atom(text: str, line: int) -> Any:
    if text == "nil":
        return None
    if text == "true":
        return True
    if text == "false":
        return False
    if text[0] == ":":
        if len(text) == 1:
            raise EdnError("a keyword needs a name after ':'", line)
        return Keyword(text[1:])
    if text[0].isdigit() or (text[0] in "+-" and len(text) > 1 and text[1].isdigit()):
        if _INT.fullmatch(text):
            return int(text.rstrip("N"))
        if _FLOAT.fullmatch(text):
            return float(text.rstrip("M"))
        raise EdnError(f"cannot read number {text!r}", line)
    return Symbol(text)


def _unescape(body: str, line: int) -> str:
    if "\\" not in body:
        return body
    out = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt == "u":
            out.append(chr(int(body[i + 2:i + 6], 16)))
            i += 6
        elif nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            raise EdnError(f"unknown string escape \\{nxt}", line)
    return "".join(out)


def _freeze(x: Any) -> Any:
    """Hashable form of a value used as a map key or set element."""
    if isinstance(x, list):
        return tuple(_freeze(v) for v in x)
    if isinstance(x, dict):
        return tuple(sorted(((_freeze(k), _freeze(v)) for k, v in x.items()), key=repr))
    if isinstance(x, (set, frozenset)):
        return frozenset(_freeze(v) for v in x)
    return x


def read_all(text: str) -> Iterator[tuple[Any, int]]:
    """Every top-level form of `text` with the line it starts on."""
    line = 1
    # stack of (kind, items, start line); kind is "[", "(", "{", "#{"
    stack: list[tuple[str, list, int]] = []
    pending_tags = 0  # tags waiting for their value (dropped)
    discards: list[int] = []  # stack depths at which the next form is discarded
    pos = 0
    n = len(text)
    match = _TOKEN.match
    top_start = 1
    while pos < n:
        m = match(text, pos)
        if m is None:
            raise EdnError(f"cannot read {text[pos:pos + 20]!r}", line)
        kind = m.lastgroup
        assert kind is not None  # every alternative of _TOKEN is a named group
        tok = m.group(kind)
        pos = m.end()
        if kind == "ws":
            line += tok.count("\n")
            continue
        if kind == "tag":
            pending_tags += 1
            continue
        if kind == "discard":
            discards.append(len(stack))
            continue
        if kind == "open":
            if not stack:
                top_start = line
            stack.append((tok, [], line))
            continue
        if kind == "close":
            if not stack:
                raise EdnError(f"unbalanced {tok!r}", line)
            opener, items, start = stack.pop()
            if _CLOSER[opener] != tok:
                raise EdnError(f"{opener!r} opened on line {start} is closed by {tok!r}", line)
            if opener == "{":
                if len(items) % 2:
                    raise EdnError(f"map opened on line {start} has an odd number of forms", line)
                value: Any = {_freeze(items[i]): items[i + 1] for i in range(0, len(items), 2)}
            elif opener == "#{":
                value = {_freeze(v) for v in items}
            else:
                value = items
        elif kind == "str":
            value = _unescape(tok, line)
            line += tok.count("\n")
        elif kind == "char":
            body = tok[1:]
            value = _CHARS.get(body, chr(int(body[1:], 16)) if body.startswith("u") and len(body) == 5 else body)
        else:
            if not stack:
                top_start = line
            value = _atom(tok, line)
        if pending_tags:
            pending_tags -= 1  # `#tag value`: keep the value
        if discards and discards[-1] == len(stack):
            discards.pop()
            continue
        if stack:
            stack[-1][1].append(value)
        else:
            yield value, top_start
    if stack:
        raise EdnError(f"{stack[-1][0]!r} opened here is never closed", stack[-1][2])


def loads(text: str) -> Any:
    """The single form in `text`."""
    forms = [f for f, _ in read_all(text)]
    if len(forms) != 1:
        raise EdnError(f"expected one form, found {len(forms)}", 1)
    return forms[0]
