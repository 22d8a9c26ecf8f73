"""Subscription SQL: exactly what upstream allows, refused with its code and message; the WHERE
filter judged with SQLite's semantics (column affinity included); payload rows as upstream's."""

import pytest

from kalamdb.engine.changes import Change
from kalamdb.live.filter import FilterCache
from kalamdb.live.query import LiveError, analyze, page_sql
from kalamdb.live.rows import change_template, make_shape

ONLY = "Only SELECT ... FROM ... [WHERE ...] is supported."
REFUSED = [
    ("SELECT * FROM n.t ORDER BY a", f"Subscription query does not support ORDER BY. {ONLY}"),
    ("WITH x AS (SELECT 1) SELECT * FROM n.t", f"Subscription query does not support WITH clauses. {ONLY}"),
    ("SELECT * FROM n.t LIMIT 3", "Subscription query supports only SELECT ... FROM ... [WHERE ...]."),
    ("SELECT DISTINCT a FROM n.t", "Subscription query supports only SELECT ... FROM ... [WHERE ...]."),
    ("SELECT a FROM n.t GROUP BY a", f"Subscription query does not support GROUP BY. {ONLY}"),
    ("SELECT a FROM n.t HAVING a > 1", "Subscription query supports only SELECT ... FROM ... [WHERE ...]."),
    ("SELECT * FROM n.t JOIN n.u ON n.t.a = n.u.a", f"Subscription query does not support JOIN clauses. {ONLY}"),
    ("SELECT * FROM n.t, n.u", "Subscription query requires exactly one table in the FROM clause."),
    ("SELECT * FROM (SELECT 1) q", "Subscription query requires a direct table reference in FROM."),
    ("SELECT 1 UNION SELECT 2", "Subscription query supports only simple SELECT statements."),
    ("SELECT _seq FROM n.t", "Subscription query cannot project system columns '_seq' or '_deleted'."),
    ("SELECT a, _deleted FROM n.t", "Subscription query cannot project system columns '_seq' or '_deleted'."),
    ("INSERT INTO n.t VALUES (1)", "Only SELECT queries are supported for subscriptions"),
    ("SELECT * FROM n.t; SELECT * FROM n.t", "Subscription query must contain exactly one SELECT statement"),
    ("   ", "Empty SQL statement"),
    # ours: what upstream would accept and then deliver wrongly
    ("SELECT * FROM n.t WHERE a IN (SELECT b FROM n.u)", "Subscription query does not support subqueries in WHERE."),
    ("SELECT * FROM n.t WHERE a = $1", "Subscription query cannot use parameters: write the value into the SQL."),
    ("SELECT COUNT(*) FROM n.t", ("Subscription query projections must be column names of the table; "
                                 "'COUNT(*)' is not")),
]


@pytest.mark.parametrize(("sql", "detail"), REFUSED)
def test_refused_with_upstreams_code_and_message(sql, detail):
    with pytest.raises(LiveError) as e:
        analyze(sql)
    assert e.value.code == "INVALID_SQL"
    assert e.value.message == f"Invalid SQL: Invalid SQL: {detail}"


def test_unqualified_table_and_parse_errors():
    with pytest.raises(LiveError) as e:
        analyze("SELECT * FROM messages")
    assert e.value.message == "Invalid SQL: Query must use namespace.table format"
    with pytest.raises(LiveError) as e:
        analyze("SELECT * FROM n.t WHERE (")
    assert e.value.code == "INVALID_SQL" and e.value.message.startswith("Invalid SQL: Parse error: Failed to parse SQL")


def test_accepted_parts_and_page_sql():
    q = analyze("SELECT Body, q.id FROM Chat.Msgs AS q WHERE q.room = 'a' AND author = CURRENT_USER()")
    assert (q.namespace, q.table, q.projection) == ("chat", "msgs", ("body", "id"))
    assert q.where_sql == "\"room\" = 'a' AND \"author\" = CURRENT_USER"
    sql = page_sql(q, ["body", "id"], after=7, limit=11)
    assert sql.startswith('SELECT "body", "id", _seq, _deleted FROM "chat"."msgs" WHERE ("room" = \'a\' AND')
    assert "_seq > 7 ORDER BY _seq ASC LIMIT 11" in sql and sql.endswith('SELECT MAX(_seq) FROM "chat"."msgs"')
    assert analyze("SELECT t.* FROM n.t").projection is None


def test_filter_uses_column_affinity_and_current_user():
    cache = FilterCache()
    q = analyze("SELECT * FROM n.t WHERE id = '5' AND owner = CURRENT_USER() AND name LIKE 'a%'")
    f = cache.get("n.t", q.where, q.where_sql, "alice", {"id": "INTEGER", "owner": "TEXT", "name": "TEXT"})
    assert f.matches({"id": 5, "owner": "alice", "name": "ab"})
    assert not f.matches({"id": 5, "owner": "bob", "name": "ab"})
    assert not f.matches({"id": None, "owner": "alice", "name": "ab"})  # NULL is not true
    other = cache.get("n.t", q.where, q.where_sql, "bob", {"id": "INTEGER", "owner": "TEXT", "name": "TEXT"})
    assert other is not f and other.matches({"id": 5, "owner": "bob", "name": "ab"})
    with pytest.raises(LiveError):
        analyze("SELECT * FROM n.t WHERE randomblob(4) = x'00'")


SHAPE = make_shape("n.t", "SHARED", [{"name": "id", "data_type": "BigInt", "not_null": True},
                                     {"name": "body", "data_type": "Text"},
                                     {"name": "n", "data_type": "Int"}], "id", {})


def test_insert_update_delete_payloads_as_upstream():
    ins = Change(5, 100, "n.t", "SHARED", "insert", None, {"id": 1, "body": "a", "n": None, "_seq": 100,
                                                             "_deleted": False}, None)
    assert change_template(SHAPE, ins, None).message("s") == {
        "type": "change", "subscription_id": "s", "change_type": "insert",
        "rows": [{"id": "1", "body": "a", "n": None, "_seq": "100", "_deleted": False}]}
    upd = Change(6, 101, "n.t", "SHARED", "update", None,
                 {"id": 1, "body": "b", "n": None, "_seq": 101, "_deleted": False},
                 {"id": 1, "body": "a", "n": 3, "_seq": 100, "_deleted": False})
    m = change_template(SHAPE, upd, None).message("s")
    assert m["rows"] == [{"_seq": "101", "id": "1", "body": "b"}]  # non-null new values + pk + _seq
    assert m["old_values"] == [{"_seq": "100", "id": "1", "body": "a", "n": 3}]  # changed columns' old values
    dele = Change(7, 102, "n.t", "SHARED", "delete", None, None,
                  {"id": 1, "body": "b", "n": None, "_seq": 101, "_deleted": False})
    assert change_template(SHAPE, dele, None).message("s")["old_values"] == [
        {"id": "1", "body": "b", "n": None, "_seq": "102", "_deleted": True}]  # the tombstone's _seq
    assert change_template(SHAPE, dele, ("body",)).message("s")["old_values"] == [{"_seq": "102", "body": "b"}]
    assert change_template(SHAPE, upd, ("n",)).message("s")["rows"] == [{"_seq": "101", "id": "1"}]


def test_stream_payloads():
    shape = make_shape("n.s", "STREAM", [{"name": "id", "data_type": "BigInt"}], "id", {})
    ins = Change(5, 100, "n.s", "STREAM", "insert", "u1", {"id": 1, "_seq": 100, "_deleted": False}, None)
    assert change_template(shape, ins, None).message("s")["rows"] == [{"id": "1", "_seq": "100"}]
    dele = Change(6, 101, "n.s", "STREAM", "delete", "u1", None, {"id": 1, "_seq": 100, "_deleted": False})
    assert change_template(shape, dele, None).message("s")["old_values"] == [{"row_id": "u1:100"}]
    assert [f["name"] for f in shape.schema(None)] == ["id", "_seq"]
