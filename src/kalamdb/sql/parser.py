"""Parse one statement of the KalamDB dialect into a Statement: the entry point and its dispatch.
SELECT/INSERT/UPDATE/DELETE go to sqlglot through the parse cache (sql/parse_cache.py), with their
literals lifted into parameters first (sql/templates.py); everything else has KalamDB's own grammar,
read by a token cursor (sql/tokens.py): namespaces and tables (sql/ddl_grammar.py), users
(sql/user_grammar.py), storages (sql/storage_grammar.py), operator commands (sql/admin_grammar.py)
and topics (sql/topics.py)."""

from __future__ import annotations

import re

from sqlglot import exp

from kalamdb.errors import KalamError
from kalamdb.sql import statements as st
from kalamdb.sql.admin_grammar import parse_cluster, parse_kill_job, parse_kill_live
from kalamdb.sql.ddl_grammar import parse_alter, parse_create, parse_drop, parse_show
from kalamdb.sql.parse_cache import ParseCache
from kalamdb.sql.storage_grammar import parse_storage_maintenance
from kalamdb.sql.templates import (
    MAX_IN_LIST_ITEMS,
    longest_in_list,
    parameterize_conditions,
    parameterize_values,
)
from kalamdb.sql.tokens import Cursor, check_name, qualified
from kalamdb.sql.topics import parse_topic_statement, starts_topic_statement
from kalamdb.sql.user_grammar import USERNAME_RE

__all__ = ["ParseCache", "parse_query", "parse_query_text", "parse_statement"]

_QUERY_START = {"SELECT", "WITH", "INSERT", "UPDATE", "DELETE", "VALUES"}
_FIRST_WORD = re.compile(r"\s*\(*\s*([A-Za-z]+)")


def parse_statement(sql: str, cache: ParseCache) -> st.Statement:
    """Parse one statement (no trailing `;`)."""
    m = _FIRST_WORD.match(sql)
    if m is not None and m.group(1).upper() in _QUERY_START:
        return parse_query(sql, cache)  # the hot path: no tokenizing of our own
    c = Cursor(sql)
    if c.done():
        raise KalamError("EMPTY_SQL", "SQL statement is empty")
    head = c.current()
    first = head.upper
    if first in _QUERY_START or (head.kind == "op" and head.text == "("):
        return parse_query(sql, cache)
    if starts_topic_statement(c):
        return parse_topic_statement(c)
    if first == "CREATE":
        return parse_create(c)
    if first == "DROP":
        return parse_drop(c)
    if first == "ALTER":
        return parse_alter(c)
    if first == "SHOW":
        return parse_show(c)
    if first in ("DESCRIBE", "DESC"):
        c.i += 1
        c.accept("TABLE")
        ns, name = qualified(c)
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
        return parse_cluster(c)
    if first == "KILL" and c.at("KILL", "LIVE", "QUERY"):
        return parse_kill_live(c)
    if first == "KILL" and c.at("KILL", "JOB"):
        return parse_kill_job(c)
    if first == "STORAGE":
        return parse_storage_maintenance(c)
    raise KalamError("INVALID_SQL", f"Unsupported statement: {sql[:60]!r}")


def parse_query(sql: str, cache: ParseCache) -> st.Query:
    """A query, as a template with its lifted literals when there are any."""
    m = _FIRST_WORD.match(sql)
    first = m.group(1).upper() if m is not None else ""
    if len(sql) > 2 * MAX_IN_LIST_ITEMS:  # a shorter text cannot hold a list that long
        n = longest_in_list(sql)
        if n > MAX_IN_LIST_ITEMS:
            raise KalamError("INVALID_SQL", (
                f"An IN list has {n} items; at most {MAX_IN_LIST_ITEMS} are accepted (limits.max_in_list_items). "
                "Split the statement, or load the values into a table and use IN (SELECT ...)"))
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
    """A query's text as it is (already a template, or nothing to lift), with its kind."""
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


def _parse_execute_as(c: Cursor, cache: ParseCache) -> st.ExecuteAs:
    """`EXECUTE AS USER 'name' ( <one query> )`: here because the inner statement is parsed again."""
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
