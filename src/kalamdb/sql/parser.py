"""Parse one statement of the KalamDB dialect into a Statement. DDL, users, namespaces and cluster
commands use a small token parser (their grammar is KalamDB's own); SELECT/INSERT/UPDATE/DELETE go
to sqlglot, whose parse is cached by statement text because it costs ~120 us."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from kalamdb.errors import KalamError
from kalamdb.sql import statements as st
from kalamdb.sql.dialects import POSTGRES
from kalamdb.sql.topics import parse_topic_statement, starts_topic_statement
from kalamdb.sql.types import EMBEDDING_MAX_DIM, SERIAL_TYPES, canonical_type

# sqlglot warns on stderr for every statement it cannot parse fully; our callers get a KalamError
logging.getLogger("sqlglot").setLevel(logging.ERROR)

NAME_RE = re.compile(r"^[a-zA-Z0-9_]+$")
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")
ROLES = ("user", "service", "dba", "system")
ROLE_ALIASES = {"admin": "dba", "developer": "service", "analyst": "service", "viewer": "user", "readonly": "user"}
TABLE_TYPES = ("USER", "SHARED", "STREAM")
TABLE_OPTIONS = ("TYPE", "STORAGE_ID", "TTL_SECONDS", "ACCESS_LEVEL", "FLUSH_POLICY")
DEFAULT_FUNCTIONS = ("NOW", "CURRENT_TIMESTAMP", "SNOWFLAKE_ID", "UUID_V7", "ULID", "CURRENT_USER")

# groups: 1 string, 2 quoted identifier, 3 number, 4 word, 5 punctuation, 6 any other character
# (unrolled-loop string patterns: linear time even on an unterminated quote)
_TOKEN_RE = re.compile(
    r"""('[^']*(?:''[^']*)*')|("[^"]*(?:""[^"]*)*"|`[^`]*`)|(-?\d+(?:\.\d+)?)"""
    r"""|([A-Za-z_][A-Za-z0-9_$]*)|([(),.=*;:-])|(\S)"""
)
_KINDS = (None, "str", "qid", "num", "word", "op", "other")


class Tok:
    __slots__ = ("kind", "pos", "text", "value")

    def __init__(self, kind: str, text: str, value, pos: int):
        self.kind, self.text, self.value, self.pos = kind, text, value, pos

    @property
    def upper(self) -> str:
        return self.text.upper() if self.kind == "word" else ""


def tokenize(sql: str) -> list[Tok]:
    toks: list[Tok] = []
    append = toks.append
    for m in _TOKEN_RE.finditer(sql):
        kind = _KINDS[m.lastindex]
        text = m.group()
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


class _Cursor:
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
        t = self.peek()
        if t is None or t.kind != "str":
            raise KalamError("INVALID_SQL", f"Expected {what} as a quoted string")
        self.i += 1
        return t.value

    def done(self) -> bool:
        return self.i >= len(self.toks)

    def end(self) -> None:
        if not self.done():
            raise KalamError("INVALID_SQL", f"Unexpected {self.peek().text!r} at end of statement")


def check_name(name: str, what: str) -> str:
    if not NAME_RE.match(name):
        raise KalamError("INVALID_SQL", f"Invalid {what} name '{name}': use letters, digits and underscore")
    return name


def _qualified(c: _Cursor, what: str = "table") -> tuple[str | None, str]:
    first = c.name(f"{what} name")
    if c.accept_op("."):
        second = c.name(f"{what} name")
        return check_name(first.lower(), "namespace"), check_name(second.lower(), what)
    return None, check_name(first.lower(), what)


# ---------------------------------------------------------------------------------------- caching


class ParseCache:
    """LRU of sqlglot parse results by statement text. Every caller gets the same tree: never modify
    it (the compiler works on a copy). Parsed with the preloaded dialect (sql/dialects.py): a tree
    parsed wrong would be served for that text for as long as the process lives."""

    def __init__(self, capacity: int = 2048):
        self.capacity = capacity
        self._items: OrderedDict[str, exp.Expression] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def parse(self, sql: str) -> exp.Expression:
        with self._lock:
            ast = self._items.get(sql)
            if ast is not None:
                self._items.move_to_end(sql)
                self.hits += 1
                return ast
            self.misses += 1
        try:
            ast = sqlglot.parse_one(_space_params(sql), read=POSTGRES)
        except (ParseError, TokenError) as e:
            raise KalamError("INVALID_SQL", f"Syntax error: {_first_line(str(e))}") from None
        except Exception as e:  # noqa: BLE001 - sqlglot raises assorted errors on hostile input
            raise KalamError("INVALID_SQL", f"Syntax error: {_first_line(str(e))}") from None
        with self._lock:
            self._items[sql] = ast
            if len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return ast


_PARAM_OR_QUOTED = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|\$\d+""")


def _space_params(sql: str) -> str:
    """sqlglot's tokenizer reads `$1,$2` as the start of a dollar-quoted string; a space after each
    `$n` (outside quotes) avoids that without changing the statement."""
    if "$" not in sql:
        return sql
    return _PARAM_OR_QUOTED.sub(lambda m: m.group(0) + " " if m.group(0)[0] == "$" else m.group(0), sql)


def _first_line(s: str) -> str:
    s = re.sub(r"\x1b\[[0-9;]*m", "", s)
    return s.strip().splitlines()[0] if s.strip() else "invalid statement"


# ---------------------------------------------------------------------------------------- parsing

_QUERY_START = {"SELECT", "WITH", "INSERT", "UPDATE", "DELETE", "VALUES"}


_FIRST_WORD = re.compile(r"\s*\(*\s*([A-Za-z]+)")


def parse_statement(sql: str, cache: ParseCache) -> st.Statement:
    """Parse one statement (no trailing `;`)."""
    m = _FIRST_WORD.match(sql)
    if m is not None and m.group(1).upper() in _QUERY_START:
        return parse_query(sql, cache)  # the hot path: no tokenizing of our own
    c = _Cursor(sql)
    if c.done():
        raise KalamError("EMPTY_SQL", "SQL statement is empty")
    first = c.peek().upper
    if first in _QUERY_START or (c.peek().kind == "op" and c.peek().text == "("):
        return parse_query(sql, cache)
    if starts_topic_statement(c):
        return parse_topic_statement(c)
    if first == "CREATE":
        return _parse_create(c)
    if first == "DROP":
        return _parse_drop(c)
    if first == "ALTER":
        return _parse_alter(c)
    if first == "SHOW":
        return _parse_show(c)
    if first in ("DESCRIBE", "DESC"):
        c.i += 1
        c.accept("TABLE")
        ns, name = _qualified(c)
        c.end()
        return st.DescribeTable(ns, name)
    if first == "USE":
        c.i += 1
        c.accept("NAMESPACE")
        name = check_name(c.name("namespace name").lower(), "namespace")
        c.end()
        return st.UseNamespace(name)
    if first in ("BEGIN", "START"):
        c.i += 1
        if first == "START":
            c.expect("TRANSACTION")
        else:
            c.accept("TRANSACTION") or c.accept("WORK")
        c.end()
        return st.Begin()
    if first in ("COMMIT", "END"):
        c.i += 1
        c.accept("TRANSACTION") or c.accept("WORK")
        c.end()
        return st.Commit()
    if first == "ROLLBACK":
        c.i += 1
        c.accept("TRANSACTION") or c.accept("WORK")
        c.end()
        return st.Rollback()
    if first == "EXECUTE":
        return _parse_execute_as(c, cache)
    if first == "CLUSTER":
        return _parse_cluster(c)
    if first == "KILL" and c.at("KILL", "LIVE", "QUERY"):
        return _parse_kill_live(c)
    if first == "KILL" and c.at("KILL", "JOB"):
        c.i += 2
        t = c.peek()
        job_id = str(t.value) if t is not None and t.kind == "str" and len(c.toks) == c.i + 1 else (
            c.sql[t.pos:].strip() if t is not None else "")
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", job_id):
            raise KalamError("INVALID_SQL", f"Invalid job id {job_id[:80]!r}")
        return st.KillJob(job_id)
    if first == "STORAGE":
        return _parse_storage_maintenance(c)
    raise KalamError("INVALID_SQL", f"Unsupported statement: {sql[:60]!r}")


_LIVE_ID_RE = re.compile(r"^[A-Za-z0-9_.@:-]{1,600}$")


def _parse_kill_live(c: _Cursor) -> st.KillLiveQuery:
    """`KILL LIVE QUERY <live_id>`: the id (`{user_id}-{connection_id}-{subscription_id}`) is the
    rest of the statement, optionally quoted."""
    c.i += 3
    t = c.peek()
    if t is None:
        raise KalamError("INVALID_SQL", "KILL LIVE QUERY needs a live query id (see system.live)")
    text = c.sql[t.pos:].strip()
    if t.kind == "str" and len(c.toks) == c.i + 1:  # quoted: any subscription id (no control characters)
        text = str(t.value)
        ok = 0 < len(text) <= 600 and text.isprintable()
    else:
        ok = _LIVE_ID_RE.match(text) is not None
    if not ok:
        raise KalamError("INVALID_SQL", f"Invalid live query id {text[:80]!r} (see system.live for the ids)")
    return st.KillLiveQuery(text)


def parameterize_values(sql: str) -> tuple[str, list] | None:
    """Turn the literal values of `INSERT ... VALUES (...)` into `$n` parameters, so that inserts
    that differ only in their values share one parse and one compilation (on every replica: the
    command carries the template). Only whole values directly inside a VALUES tuple are replaced,
    so expressions keep their meaning. Returns None when there is nothing to gain."""
    if "$" in sql:
        return None
    toks = tokenize(sql)
    start = None
    depth = 0
    for i, t in enumerate(toks):
        if t.kind == "op" and t.text == "(":
            depth += 1
        elif t.kind == "op" and t.text == ")":
            depth -= 1
        elif depth == 0 and t.upper == "VALUES":
            start = i + 1
            break
    if start is None:
        return None
    pieces: list[str] = []
    values: list = []
    last = 0
    depth = 0
    for i in range(start, len(toks)):
        t = toks[i]
        if t.kind == "op" and t.text == "(":
            depth += 1
            continue
        if t.kind == "op" and t.text == ")":
            depth -= 1
            if depth < 0:
                break
            continue
        if depth != 1 or not (0 < i < len(toks) - 1):
            if depth == 0 and not (t.kind == "op" and t.text == ","):
                break  # the VALUES list has ended (ON CONFLICT, RETURNING, ...)
            continue
        before, after = toks[i - 1], toks[i + 1]
        if not (before.kind == "op" and before.text in "(," and after.kind == "op" and after.text in ",)"):
            continue
        if t.kind == "str":
            value = t.value
        elif t.kind == "num":
            value = t.value
            if isinstance(value, int) and not -(2**63) <= value < 2**63:
                continue
        elif t.upper in ("TRUE", "FALSE", "NULL"):
            value = {"TRUE": True, "FALSE": False, "NULL": None}[t.upper]
        else:
            continue
        values.append(value)
        pieces.append(sql[last:t.pos])
        pieces.append(f"${len(values)} ")
        last = t.pos + len(t.text)
    if not values or len(values) > 10_000:
        return None
    pieces.append(sql[last:])
    return "".join(pieces), values


_REGION_ON = {"WHERE", "HAVING", "SET"}
_REGION_OFF = {"SELECT", "FROM", "ORDER", "GROUP", "LIMIT", "OFFSET", "RETURNING", "WINDOW", "UNION",
               "EXCEPT", "INTERSECT", "VALUES", "JOIN", "ON"}


def parameterize_conditions(sql: str) -> tuple[str, list] | None:
    """Lift literals out of WHERE/HAVING/SET clauses: the operand of a comparison, LIKE, arithmetic,
    or an element of an IN list. Never in a select list (result column names come from its text),
    GROUP/ORDER BY (integers are column positions there) or LIMIT."""
    if "$" in sql:
        return None
    toks = tokenize(sql)
    on = False
    stack: list[tuple[bool, bool]] = []
    in_list = False
    pieces: list[str] = []
    values: list = []
    last = 0
    for i, t in enumerate(toks):
        if t.kind == "op" and t.text == "(":
            stack.append((on, in_list))
            in_list = i > 0 and toks[i - 1].upper == "IN"
            continue
        if t.kind == "op" and t.text == ")":
            if stack:
                on, in_list = stack.pop()
            continue
        word = t.upper
        if word in _REGION_ON:
            on = True
            continue
        if word in _REGION_OFF:
            on = False
            continue
        if not on or t.kind not in ("str", "num") or i == 0:
            continue
        prev = toks[i - 1]
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if nxt is not None and nxt.text in ("(", "."):
            continue
        p = prev.text
        comparison = p in ("=", "<", ">", "+", "-", "*", "/", "%") or prev.upper in ("LIKE", "ILIKE")
        listed = in_list and p in ("(", ",")
        if not (comparison or listed):
            continue
        if isinstance(t.value, int) and not -(2**63) <= t.value < 2**63:
            continue
        values.append(t.value)
        pieces.append(sql[last:t.pos])
        pieces.append(f"${len(values)} ")
        last = t.pos + len(t.text)
    if not values:
        return None
    pieces.append(sql[last:])
    return "".join(pieces), values


def parse_query(sql: str, cache: ParseCache) -> st.Query:
    m = _FIRST_WORD.match(sql)
    first = m.group(1).upper() if m is not None else ""
    templated = None
    if first == "INSERT":
        templated = parameterize_values(sql)
    elif first in ("SELECT", "UPDATE", "DELETE", "WITH"):
        templated = parameterize_conditions(sql)
    if templated is not None:
        template, values = templated
        q = parse_query_text(template, cache)
        q.params = values
        return q
    return parse_query_text(sql, cache)


def parse_query_text(sql: str, cache: ParseCache) -> st.Query:
    ast = cache.parse(sql)
    if isinstance(ast, (exp.Select, exp.Union, exp.Intersect, exp.Except, exp.Subquery, exp.Values)):
        kind = "select"
    elif isinstance(ast, exp.Insert):
        kind = "insert"
    elif isinstance(ast, exp.Update):
        kind = "update"
    elif isinstance(ast, exp.Delete):
        kind = "delete"
    else:
        raise KalamError("INVALID_SQL", f"Unsupported statement: {sql[:60]!r}")
    return st.Query(sql, kind, ast)


def _parse_create(c: _Cursor) -> st.Statement:
    c.expect("CREATE")
    if c.accept("NAMESPACE"):
        ine = c.accept("IF", "NOT", "EXISTS")
        name = check_name(c.name("namespace name").lower(), "namespace")
        c.end()
        return st.CreateNamespace(name, ine)
    prefix = None
    if c.at("USER", "TABLE") or c.at("SHARED", "TABLE") or c.at("STREAM", "TABLE"):
        prefix = c.peek().upper
        c.i += 1
    if c.accept("TABLE"):
        return _parse_create_table(c, prefix)
    if c.accept("USER"):
        return _parse_create_user(c)
    if c.accept("STORAGE"):
        return _parse_create_storage(c)
    raise KalamError("INVALID_SQL", "Expected NAMESPACE, TABLE, USER or STORAGE after CREATE")


def _parse_default(c: _Cursor) -> dict:
    t = c.peek()
    if t is None:
        raise KalamError("INVALID_SQL", "Expected a value after DEFAULT")
    if t.kind in ("str", "num"):
        c.i += 1
        return {"lit": t.value}
    if t.kind == "op" and t.text == "-" and c.peek(1) is not None and c.peek(1).kind == "num":
        c.i += 2
        return {"lit": -c.toks[c.i - 1].value}
    word = t.upper
    if word in ("TRUE", "FALSE"):
        c.i += 1
        return {"lit": word == "TRUE"}
    if word == "NULL":
        c.i += 1
        return {"lit": None}
    if word in DEFAULT_FUNCTIONS:
        c.i += 1
        if c.accept_op("("):
            c.expect_op(")")
        return {"fn": "NOW" if word == "CURRENT_TIMESTAMP" else word}
    raise KalamError("INVALID_SQL", f"Unsupported DEFAULT value {t.text!r}: use a literal, NOW(), "
                     "CURRENT_TIMESTAMP, SNOWFLAKE_ID(), UUID_V7(), ULID() or CURRENT_USER()")


def parse_column_def(c: _Cursor) -> st.ColumnDef:
    raw_name = c.name("column name")
    name = check_name(raw_name.lower(), "column")
    if name.startswith("_"):
        raise KalamError("INVALID_SQL", f"Column name '{name}' is reserved: names starting with '_' "
                         "belong to system columns")
    type_tok = c.peek()
    if type_tok is None or type_tok.kind != "word":
        raise KalamError("INVALID_SQL", f"Expected a data type for column '{name}'")
    c.i += 1
    type_word = type_tok.upper
    if type_word == "DOUBLE":
        c.accept("PRECISION")
    data_type = canonical_type(type_word)
    type_args = None
    if c.accept_op("("):
        type_args = []
        while True:
            t = c.peek()
            if t is None or t.kind != "num":
                raise KalamError("INVALID_SQL", f"Expected a number in the type of column '{name}'")
            type_args.append(t.value)
            c.i += 1
            if c.accept_op(")"):
                break
            c.expect_op(",")
    if data_type == "Embedding" and not (type_args and len(type_args) == 1 and isinstance(type_args[0], int)
                                         and 1 <= type_args[0] <= EMBEDDING_MAX_DIM):
        raise KalamError("INVALID_SQL", f"EMBEDDING dimension must be between 1 and {EMBEDDING_MAX_DIM}, "
                             f"got {type_args[0] if type_args else 'none'} (column '{name}')")
    col = st.ColumnDef(name, data_type,
                       type_args=type_args if data_type in ("Decimal", "Embedding") else None)
    if type_word in SERIAL_TYPES:
        col.default = {"fn": "SNOWFLAKE_ID"}
    while not c.done() and not (c.peek().kind == "op" and c.peek().text in ",)"):
        if c.accept("NOT", "NULL"):
            col.not_null = True
        elif c.accept("NULL"):
            col.not_null = False
        elif c.accept("PRIMARY", "KEY"):
            col.primary_key = True
        elif c.accept("DEFAULT"):
            col.default = _parse_default(c)
        elif c.accept("AUTO_INCREMENT") or c.accept("AUTOINCREMENT"):
            col.default = {"fn": "SNOWFLAKE_ID"}
        elif c.accept("UNIQUE"):
            pass  # accepted for compatibility; only the primary key is enforced
        else:
            raise KalamError("INVALID_SQL", f"Unexpected {c.peek().text!r} in definition of column '{name}'")
    if col.primary_key:
        col.not_null = True
    return col


def _parse_create_table(c: _Cursor, prefix: str | None) -> st.CreateTable:
    ine = c.accept("IF", "NOT", "EXISTS")
    ns, name = _qualified(c)
    c.expect_op("(")
    columns: list[st.ColumnDef] = []
    table_pk: list[str] = []
    while True:
        if c.accept("PRIMARY", "KEY"):
            c.expect_op("(")
            while True:
                table_pk.append(c.name("primary key column").lower())
                if c.accept_op(")"):
                    break
                c.expect_op(",")
        else:
            columns.append(parse_column_def(c))
        if c.accept_op(")"):
            break
        c.expect_op(",")
    options: dict = {}
    if c.accept("WITH"):
        c.expect_op("(")
        while True:
            key = c.name("table option").upper()
            if key not in TABLE_OPTIONS:
                raise KalamError("INVALID_SQL", f"Unknown table option '{key}' (known: "
                                 f"{', '.join(TABLE_OPTIONS)})")
            c.expect_op("=")
            t = c.peek()
            if t is None or t.kind not in ("str", "num", "word"):
                raise KalamError("INVALID_SQL", f"Expected a value for table option {key}")
            c.i += 1
            options[key] = t.value
            if c.accept_op(")"):
                break
            c.expect_op(",")
    c.end()
    seen = set()
    for col in columns:
        if col.name in seen:
            raise KalamError("INVALID_SQL", f"Duplicate column '{col.name}'")
        seen.add(col.name)
    pk_cols = [col.name for col in columns if col.primary_key] + table_pk
    if len(pk_cols) > 1:
        raise KalamError("INVALID_SQL", "A table must have a single-column PRIMARY KEY "
                         f"(found {', '.join(pk_cols)})")
    if table_pk:
        match = [col for col in columns if col.name == table_pk[0]]
        if not match:
            raise KalamError("INVALID_SQL", f"PRIMARY KEY column '{table_pk[0]}' is not defined")
        match[0].primary_key = match[0].not_null = True
    type_opt = options.get("TYPE")
    if type_opt is not None:
        type_opt = str(type_opt).upper()
        if type_opt not in TABLE_TYPES:
            raise KalamError("INVALID_SQL", f"Invalid table TYPE '{options['TYPE']}': use USER, SHARED or STREAM")
        if prefix is not None and prefix != type_opt:
            raise KalamError("INVALID_SQL", f"Table type conflict: CREATE {prefix} TABLE with TYPE='{type_opt}'")
        options["TYPE"] = type_opt
    table_type = prefix or type_opt or "SHARED"
    options.pop("TYPE", None)
    if "TTL_SECONDS" in options:
        ttl = options["TTL_SECONDS"]
        if isinstance(ttl, str) and ttl.isdigit():
            ttl = int(ttl)
        if not isinstance(ttl, int) or ttl <= 0:
            raise KalamError("INVALID_SQL", "TTL_SECONDS must be a positive integer")
        options["TTL_SECONDS"] = ttl
    if "ACCESS_LEVEL" in options:
        level = str(options["ACCESS_LEVEL"]).upper()
        if level not in _ACCESS_LEVELS:
            raise KalamError("INVALID_SQL", _ACCESS_LEVEL_HELP)
        options["ACCESS_LEVEL"] = level
        if (prefix or type_opt or "SHARED") != "SHARED":
            raise KalamError("INVALID_SQL", "ACCESS_LEVEL is only supported for SHARED tables")
    if table_type in ("USER", "SHARED") and not pk_cols:
        raise KalamError("INVALID_SQL", f"{table_type.title()} tables require a single-column PRIMARY KEY")
    if table_type == "STREAM" and "TTL_SECONDS" not in options:
        raise KalamError("INVALID_SQL", "Stream tables require TTL_SECONDS")
    if not columns:
        raise KalamError("INVALID_SQL", "A table needs at least one column")
    return st.CreateTable(ns, name, table_type, columns, pk_cols[0] if pk_cols else None, options, ine)


def _parse_role(c: _Cursor) -> str:
    role = c.name("role").lower()
    role = ROLE_ALIASES.get(role, role)
    if role not in ROLES:
        raise KalamError("INVALID_SQL", f"Invalid role '{role}': valid roles are dba, admin, developer, analyst, "
                         "viewer, readonly, user, service, system")
    return role


def _oauth_data(payload: str | None) -> str:
    """Upstream's OAuth identity: a JSON object with provider and subject."""
    if payload is None:
        raise KalamError("SQL_EXECUTION_ERROR", "OAuth user requires JSON payload with provider and subject")
    try:
        obj = json.loads(payload)
    except ValueError as e:
        raise KalamError("SQL_EXECUTION_ERROR", f"Invalid OAuth JSON: {e}") from None
    if not isinstance(obj, dict):
        raise KalamError("SQL_EXECUTION_ERROR", "Invalid OAuth JSON: expected an object")
    for key in ("provider", "subject"):
        if not isinstance(obj.get(key), str):
            raise KalamError("SQL_EXECUTION_ERROR", f"OAuth user requires '{key}' field")
    return json.dumps({"provider_type": obj["provider"].lower(), "issuer": obj["provider"],
                       "subject": obj["subject"]}, sort_keys=True, separators=(",", ":"))


def _username(c: _Cursor) -> str:
    name = c.name("user name")
    if not USERNAME_RE.match(name):
        raise KalamError("INVALID_SQL", f"Invalid user name '{name}'")
    return name


def _parse_create_user(c: _Cursor) -> st.CreateUser:
    ine = c.accept("IF", "NOT", "EXISTS")
    if ine:
        raise KalamError("INVALID_SQL", "CREATE USER IF NOT EXISTS is not supported")
    name = _username(c)
    password = role = email = auth_data = None
    auth_type = None
    c.accept("WITH")
    while not c.done():
        if c.accept("PASSWORD"):
            password = c.string("password")
            auth_type = "password"
        elif c.accept("OAUTH"):
            payload = c.string("OAuth payload") if c.peek() is not None and c.peek().kind == "str" else None
            auth_type, auth_data = "oauth", _oauth_data(payload)
        elif c.accept("INTERNAL"):
            auth_type = "internal"
        elif c.accept("ROLE"):
            role = _parse_role(c)
        elif c.accept("EMAIL"):
            email = c.string("email")
        else:
            raise KalamError("INVALID_SQL", f"Unexpected {c.peek().text!r} in CREATE USER")
    if auth_type is None:
        raise KalamError("INVALID_SQL", "Expected PASSWORD, OAUTH, or INTERNAL after WITH: CREATE USER name "
                         "WITH PASSWORD 'pass' | OAUTH '{\"provider\": ..., \"subject\": ...}' | INTERNAL ROLE role")
    return st.CreateUser(name, role or "user", email, password=password, auth_type=auth_type, auth_data=auth_data)


def _parse_drop(c: _Cursor) -> st.Statement:
    c.expect("DROP")
    if c.accept("NAMESPACE"):
        ie = c.accept("IF", "EXISTS")
        name = check_name(c.name("namespace name").lower(), "namespace")
        cascade = c.accept("CASCADE")
        c.end()
        return st.DropNamespace(name, ie, cascade)
    prefix = None
    if c.at("USER", "TABLE") or c.at("SHARED", "TABLE") or c.at("STREAM", "TABLE"):
        prefix = c.peek().upper
        c.i += 1
    if c.accept("TABLE"):
        ie = c.accept("IF", "EXISTS")
        ns, name = _qualified(c)
        c.end()
        return st.DropTable(ns, name, prefix, ie)
    if c.accept("USER"):
        ie = c.accept("IF", "EXISTS")
        name = _username(c)
        c.end()
        return st.DropUser(name, ie)
    if c.accept("STORAGE"):
        ie = c.accept("IF", "EXISTS")
        storage_id = _storage_id(c)
        c.end()
        return st.DropStorage(storage_id, ie)
    raise KalamError("INVALID_SQL", "Expected NAMESPACE, TABLE, USER or STORAGE after DROP")


def _parse_alter(c: _Cursor) -> st.Statement:
    c.expect("ALTER")
    if c.accept("TABLE"):
        ns, name = _qualified(c)
        if c.accept("ADD"):
            c.accept("COLUMN")
            col = parse_column_def(c)
            c.end()
            if col.primary_key:
                raise KalamError("INVALID_SQL", "ALTER TABLE cannot add a PRIMARY KEY column")
            return st.AlterTableAddColumn(ns, name, col)
        if c.at("DROP", "INDEX") or c.at("DROP", "VECTOR", "INDEX"):
            c.i += 2 if c.at("DROP", "INDEX") else 3
            col_name = check_name(c.name("column name").lower(), "column")
            c.end()
            return st.AlterTable(ns, name, "drop_index", col_name)
        if c.accept("DROP"):
            c.accept("COLUMN")
            col_name = check_name(c.name("column name").lower(), "column")
            c.end()
            return st.AlterTableDropColumn(ns, name, col_name)
        return _parse_alter_table_op(c, ns, name)
    if c.accept("USER"):
        name = _username(c)
        c.expect("SET")
        if c.accept("PASSWORD"):
            pw = c.string("password")
            c.end()
            return st.AlterUser(name, password=pw)
        if c.accept("ROLE"):
            role = _parse_role(c)
            c.end()
            return st.AlterUser(name, role=role)
        if c.accept("EMAIL"):
            email = c.string("email")
            c.end()
            return st.AlterUser(name, email=email)
        raise KalamError("INVALID_SQL", "Expected PASSWORD, ROLE, or EMAIL after SET")
    if c.accept("STORAGE"):
        return _parse_alter_storage(c)
    raise KalamError("INVALID_SQL", "Expected TABLE, USER or STORAGE after ALTER")


def _parse_show(c: _Cursor) -> st.Statement:
    c.expect("SHOW")
    if c.accept("NAMESPACES"):
        c.end()
        return st.ShowNamespaces()
    if c.accept("STORAGES"):
        c.end()
        return st.ShowStorages()
    if c.accept("TABLES"):
        ns = None
        if c.accept("IN") or c.accept("FROM"):
            ns = check_name(c.name("namespace name").lower(), "namespace")
        c.end()
        return st.ShowTables(ns)
    raise KalamError("INVALID_SQL", "SHOW supports NAMESPACES and TABLES [IN ns]")


_ACCESS_LEVELS = ("PUBLIC", "PRIVATE", "RESTRICTED", "DBA")
_ACCESS_LEVEL_HELP = "ACCESS_LEVEL must be PUBLIC, PRIVATE, RESTRICTED or DBA"
_VECTOR_METRICS = ("COSINE", "L2", "DOT")


def _parse_alter_table_op(c: _Cursor, ns: str | None, name: str) -> st.AlterTable:
    """MODIFY COLUMN, ALTER COLUMN SET/DROP NOT NULL|DEFAULT, RENAME COLUMN, SET ACCESS LEVEL,
    SET TBLPROPERTIES (ACCESS_LEVEL = ...), CREATE [VECTOR] INDEX."""
    if c.accept("MODIFY"):
        c.accept("COLUMN")
        start = c.i
        col = parse_column_def(c)
        c.end()
        if col.default is not None or col.primary_key:
            raise KalamError("INVALID_SQL", "MODIFY COLUMN takes a type and NULL / NOT NULL only")
        words = [t.upper for t in c.toks[start:]]
        nullable = False if col.not_null else (True if "NULL" in words else None)
        return st.AlterTable(ns, name, "modify", col.name, col.data_type, col.type_args, nullable)
    if c.accept("ALTER"):
        c.accept("COLUMN")
        col = check_name(c.name("column name").lower(), "column")
        if c.accept("SET", "NOT", "NULL"):
            op, default = "set_not_null", None
        elif c.accept("DROP", "NOT", "NULL"):
            op, default = "drop_not_null", None
        elif c.accept("SET", "DEFAULT"):
            op, default = "set_default", _parse_default(c)
        elif c.accept("DROP", "DEFAULT"):
            op, default = "drop_default", None
        else:
            raise KalamError("INVALID_SQL", "ALTER COLUMN supports SET NOT NULL, DROP NOT NULL, SET DEFAULT x "
                             "and DROP DEFAULT")
        c.end()
        return st.AlterTable(ns, name, op, col, default=default)
    if c.accept("RENAME"):
        c.accept("COLUMN")
        old = check_name(c.name("column name").lower(), "column")
        c.expect("TO")
        new = check_name(c.name("new column name").lower(), "column")
        c.end()
        return st.AlterTable(ns, name, "rename", old, new_name=new)
    if c.accept("SET", "ACCESS", "LEVEL"):
        level = c.name("access level").upper()
        c.end()
        if level not in _ACCESS_LEVELS:
            raise KalamError("INVALID_SQL", _ACCESS_LEVEL_HELP)
        return st.AlterTable(ns, name, "access_level", level=level)
    if c.accept("SET", "TBLPROPERTIES"):
        c.expect_op("(")
        props = {}
        while True:
            key = c.name("property").upper()
            c.expect_op("=")
            props[key] = str(c.name("property value"))
            if c.accept_op(")"):
                break
            c.expect_op(",")
        c.end()
        if set(props) != {"ACCESS_LEVEL"}:
            raise KalamError("INVALID_SQL", "ACCESS_LEVEL property is required for SET ACCESS LEVEL "
                             "(SET TBLPROPERTIES supports ACCESS_LEVEL only)")
        level = props["ACCESS_LEVEL"].upper()
        if level not in _ACCESS_LEVELS:
            raise KalamError("INVALID_SQL", _ACCESS_LEVEL_HELP)
        return st.AlterTable(ns, name, "access_level", level=level)
    if c.at("CREATE", "INDEX") or c.at("CREATE", "VECTOR", "INDEX"):
        c.i += 2 if c.at("CREATE", "INDEX") else 3
        col = check_name(c.name("column name").lower(), "column")
        metric = "COSINE"
        if c.accept("USING"):
            metric = c.name("metric").upper()
            if metric not in _VECTOR_METRICS:
                raise KalamError("INVALID_SQL", f"Unsupported vector index metric '{metric}'")
        c.end()
        return st.AlterTable(ns, name, "create_index", col, metric=metric)
    raise KalamError("INVALID_SQL", "Unsupported ALTER TABLE operation: use ADD COLUMN, DROP COLUMN, MODIFY COLUMN, "
                     "ALTER COLUMN, RENAME COLUMN, SET ACCESS LEVEL, SET TBLPROPERTIES or CREATE/DROP INDEX")


_STORAGE_TYPES = ("filesystem", "s3", "gcs", "azure")
_STORAGE_WORDS = ("TYPE", "NAME", "DESCRIPTION", "PATH", "BASE_DIRECTORY", "BUCKET", "REGION",
                  "SHARED_TABLES_TEMPLATE", "USER_TABLES_TEMPLATE", "CREDENTIALS", "CONFIG")


def _storage_id(c: _Cursor) -> str:
    storage_id = c.name("storage id")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", storage_id):
        raise KalamError("INVALID_SQL", f"Invalid storage id '{storage_id[:80]}': use letters, digits, _ and -")
    return storage_id


def _parse_create_storage(c: _Cursor) -> st.CreateStorage:
    storage_id = _storage_id(c)
    opts: dict[str, str] = {}
    while not c.done():
        key = c.name("storage option").upper()
        if key not in _STORAGE_WORDS:
            raise KalamError("INVALID_SQL", f"Unknown CREATE STORAGE option {key} (known: {', '.join(_STORAGE_WORDS)})")
        t = c.peek()
        if t is None or t.kind not in ("str", "word"):
            raise KalamError("INVALID_SQL", f"Expected a value after {key}")
        c.i += 1
        opts[key] = str(t.value)
    storage_type = opts.get("TYPE", "").lower()
    if storage_type not in _STORAGE_TYPES:
        raise KalamError("INVALID_SQL", f"Invalid storage type '{storage_type}'. Must be 'filesystem', 's3', "
                         "'gcs', or 'azure'")
    base = opts.get("PATH") or opts.get("BASE_DIRECTORY")
    if storage_type == "s3" and "BUCKET" in opts:
        base = opts["BUCKET"] if opts["BUCKET"].startswith("s3://") else f"s3://{opts['BUCKET']}"
    if not base:
        raise KalamError("INVALID_SQL", "CREATE STORAGE needs PATH or BASE_DIRECTORY '...'")
    return st.CreateStorage(storage_id, storage_type, base, opts.get("NAME"), opts.get("DESCRIPTION"),
                            opts.get("SHARED_TABLES_TEMPLATE"), opts.get("USER_TABLES_TEMPLATE"),
                            opts.get("CREDENTIALS"), opts.get("CONFIG"))


def _parse_alter_storage(c: _Cursor) -> st.AlterStorage:
    storage_id = _storage_id(c)
    sets: dict[str, str] = {}
    fields = {"NAME": "storage_name", "DESCRIPTION": "description", "SHARED_TABLES_TEMPLATE": "shared_tables_template",
              "USER_TABLES_TEMPLATE": "user_tables_template", "CONFIG": "config_json"}
    while not c.done():
        c.accept_op(",")
        c.expect("SET")
        key = c.name("storage setting").upper()
        if key not in fields:
            raise KalamError("INVALID_SQL", f"ALTER STORAGE can SET {', '.join(fields)}")
        c.accept_op("=")
        sets[fields[key]] = c.string(key)
    if not sets:
        raise KalamError("INVALID_SQL", "ALTER STORAGE needs SET NAME|DESCRIPTION|SHARED_TABLES_TEMPLATE|"
                         "USER_TABLES_TEMPLATE|CONFIG '...'")
    return st.AlterStorage(storage_id, **sets)


def _parse_storage_maintenance(c: _Cursor) -> st.Statement:
    """STORAGE FLUSH TABLE t | STORAGE FLUSH ALL [IN [NAMESPACE] ns] (and the same for COMPACT)."""
    c.expect("STORAGE")
    if c.accept("FLUSH"):
        cls: type = st.StorageFlush
    elif c.accept("COMPACT"):
        cls = st.StorageCompact
    else:
        raise KalamError("INVALID_SQL", "Expected FLUSH or COMPACT after STORAGE")
    if c.accept("TABLE"):
        ns, name = _qualified(c)
        c.end()
        return cls(ns, name, False)
    c.expect("ALL")
    ns = None
    if c.accept("IN"):
        c.accept("NAMESPACE")
        ns = check_name(c.name("namespace name").lower(), "namespace")
    c.end()
    return cls(ns, None, True)


def _parse_execute_as(c: _Cursor, cache: ParseCache) -> st.ExecuteAs:
    c.expect("EXECUTE", "AS", "USER")
    t = c.peek()
    if t is None or t.kind not in ("str", "word"):
        raise KalamError("INVALID_SQL", "EXECUTE AS USER needs a user name")
    if not USERNAME_RE.match(str(t.value)):  # the id may name rows and directories: a plain name only
        raise KalamError("INVALID_SQL", f"Invalid user id {str(t.value)[:80]!r} in EXECUTE AS USER")
    c.i += 1
    open_tok = c.peek()
    if open_tok is None or open_tok.text != "(" or c.toks[-1].text != ")":
        raise KalamError("INVALID_SQL", "EXECUTE AS USER 'name' ( <one statement> ) needs parentheses")
    inner_sql = c.sql[open_tok.pos + 1 : c.toks[-1].pos].strip()
    if not inner_sql:
        raise KalamError("INVALID_SQL", "EXECUTE AS USER has an empty statement")
    inner = parse_statement(inner_sql, cache)
    if not isinstance(inner, st.Query):
        raise KalamError("INVALID_SQL", "EXECUTE AS USER wraps one SELECT, INSERT, UPDATE or DELETE")
    return st.ExecuteAs(str(t.value), inner)


def _parse_cluster(c: _Cursor) -> st.ClusterStatement:
    c.expect("CLUSTER")

    def number(what: str) -> int:
        t = c.peek()
        if t is None or t.kind != "num" or not isinstance(t.value, int) or t.value < 0:
            raise KalamError("INVALID_SQL", f"CLUSTER needs a non-negative integer {what}")
        c.i += 1
        return t.value

    def addr(what: str) -> str:
        start = c.peek()
        if start is None:
            raise KalamError("INVALID_SQL", f"CLUSTER JOIN needs {what}")
        if start.kind == "str":
            c.i += 1
            return start.value
        # an unquoted address like 127.0.0.1:9188 or http://127.0.0.1:8080: glue adjacent tokens
        text = ""
        end_pos = start.pos
        while not c.done() and c.peek().pos == end_pos:
            t = c.peek()
            text += t.text
            end_pos = t.pos + len(t.text)
            c.i += 1
        return text

    if c.accept("SNAPSHOT"):
        op = st.ClusterOp("snapshot")
    elif c.accept("PURGE"):
        op = st.ClusterOp("purge", upto=number("log index"))
    elif c.accept("TRIGGER", "ELECTION"):
        op = st.ClusterOp("trigger_election")
    elif c.accept("TRANSFER", "LEADER") or c.accept("TRANSFER", "LEADERSHIP"):
        op = st.ClusterOp("transfer_leader", node_id=number("node id"))
    elif c.accept("STEPDOWN") or c.accept("STEP", "DOWN"):
        op = st.ClusterOp("stepdown")
    elif c.accept("JOIN"):
        node_id = number("node id")
        op = st.ClusterOp("join", node_id=node_id, rpc_addr=addr("an rpc address"), api_addr=addr("an api address"))
    elif c.accept("LEAVE"):
        op = st.ClusterOp("leave", node_id=number("node id"))
    elif c.accept("REBALANCE"):
        op = st.ClusterOp("rebalance")  # upstream's; the node layer decides what it does
    elif c.accept("CLEAR"):
        op = st.ClusterOp("clear")
    elif c.accept("LIST"):
        op = st.ClusterOp("list")
    elif c.accept("STATUS"):
        op = st.ClusterOp("status")
    else:
        raise KalamError("INVALID_SQL", "Unknown CLUSTER command (SNAPSHOT, PURGE n, TRIGGER ELECTION, "
                         "TRANSFER LEADER n, STEPDOWN, JOIN id rpc api, LEAVE id, REBALANCE, CLEAR, LIST, STATUS)")
    c.end()
    return st.ClusterStatement(op)
