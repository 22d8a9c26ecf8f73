"""Topics on a real engine: messages are made while applying (same offsets and bytes on every
replica), consumer offsets are replicated writes, routes follow the statements that change them,
and everything a rolled-back statement did to a topic is rolled back with it."""

from __future__ import annotations

import json

import pytest
from harness import ROOT, Node

from kalamdb.engine import Principal
from kalamdb.engine.topics import ClaimBook, _partition
from kalamdb.errors import KalamError

SERVICE = Principal("svc", "svc", "service")
USER = Principal("u1", "u1", "user")


@pytest.fixture
def node(tmp_path):
    n = Node(tmp_path / "db")
    n.sql("CREATE NAMESPACE app")
    n.sql("CREATE TABLE app.t (id INT PRIMARY KEY, name TEXT, big BIGINT, ok BOOLEAN)")
    n.sql("CREATE TOPIC app.tp")
    yield n
    n.close()


def consume(node: Node, text: str, who: Principal = ROOT) -> list[dict]:
    res = node.sql(text, who=who)[-1]
    names = [c["name"] for c in res["schema"]]
    out = []
    for r in res["rows"]:
        d = dict(zip(names, r, strict=True))
        d["data"] = json.loads(bytes(d["payload"]))
        out.append(d)
    return out


def test_messages_carry_upstream_payloads_and_offsets(node):
    node.sql("ALTER TOPIC app.tp ADD SOURCE app.t ON INSERT")
    node.sql("ALTER TOPIC app.tp ADD SOURCE app.t ON UPDATE")
    node.sql("ALTER TOPIC app.tp ADD SOURCE app.t ON DELETE")
    node.sql("INSERT INTO app.t (id, name, big, ok) VALUES (1, 'a', 9007199254740993, true)")
    node.sql("UPDATE app.t SET name = 'b' WHERE id = 1")
    node.sql("DELETE FROM app.t WHERE id = 1")
    msgs = consume(node, "CONSUME FROM app.tp FROM EARLIEST")
    assert [(m["offset"], m["op"], m["key"]) for m in msgs] == [("0", "insert", "1"), ("1", "update", "1"),
                                                                 ("2", "delete", "1")]
    ins, upd, dele = (m["data"] for m in msgs)
    assert ins["id"] == 1 and ins["name"] == "a" and ins["big"] == "9007199254740993" and ins["ok"] is True
    assert ins["_deleted"] is False and ins["_table"] == "app:t" and ins["_seq"].isdigit()
    assert int(ins["_commit_seq"]) < int(upd["_commit_seq"]) < int(dele["_commit_seq"])
    assert upd["name"] == "b" and upd["big"] == "9007199254740993"  # the whole new row
    assert dele["name"] == "b" and dele["_deleted"] is True and int(dele["_seq"]) > int(upd["_seq"])
    assert all(m["user_id"] is None and m["partition_id"] == 0 for m in msgs)  # a SHARED table


def test_only_routed_operations_and_tables_publish(node):
    node.sql("CREATE TABLE app.other (id INT PRIMARY KEY)")
    node.sql("ALTER TOPIC app.tp ADD SOURCE app.t ON DELETE")
    node.sql("INSERT INTO app.t (id, name) VALUES (1, 'a'), (2, 'b')")
    node.sql("INSERT INTO app.other (id) VALUES (1)")
    node.sql("DELETE FROM app.t WHERE id = 2")
    msgs = consume(node, "CONSUME FROM app.tp FROM EARLIEST")
    assert [(m["op"], m["data"]["id"]) for m in msgs] == [("delete", 2)]


def test_payload_modes(node):
    node.sql("CREATE TOPIC app.keys")
    node.sql("ALTER TOPIC app.keys ADD SOURCE app.t ON INSERT WITH (payload = 'key')")
    node.sql("ALTER TOPIC app.tp ADD SOURCE app.t ON INSERT WITH (payload = 'diff')")
    node.sql("INSERT INTO app.t (id, name) VALUES (7, 'x')")
    key = consume(node, "CONSUME FROM app.keys FROM EARLIEST")[0]["data"]
    full = consume(node, "CONSUME FROM app.tp FROM EARLIEST")[0]["data"]
    assert "_table" not in key and key["id"] == 7
    assert full == {**key, "_table": "app:t"}


def test_partitions_by_primary_key_hash(node):
    node.sql("CREATE TOPIC app.parts PARTITIONS 4")
    node.sql("ALTER TOPIC app.parts ADD SOURCE app.t ON INSERT")
    node.sql("ALTER TOPIC app.parts ADD SOURCE app.t ON UPDATE")
    for i in range(20):
        node.sql(f"INSERT INTO app.t (id, name) VALUES ({i}, 'v')")
    node.sql("UPDATE app.t SET name = 'w' WHERE id = 3")
    seen = {}
    for p in range(4):
        prepared = node.db.prepare("CONSUME FROM app.parts FROM EARLIEST LIMIT 100", None, None, ROOT)
        prepared.statements[0].partition = p
        res = node.db.execute_read(prepared)[0]
        offsets = [int(r[2]) for r in res["rows"]]
        assert offsets == list(range(len(offsets)))  # each partition numbers its own messages from 0
        for r in res["rows"]:
            seen.setdefault(r[3], set()).add(p)
            assert p == _partition(r[3], 4)
    assert len(seen) == 20 and all(len(ps) == 1 for ps in seen.values())  # one key, one partition
    assert len({p for ps in seen.values() for p in ps}) > 1


def test_user_tables_record_the_owner(node):
    node.sql("CREATE USER alice WITH PASSWORD 'AlicePass123!' ROLE user")
    node.sql("CREATE USER TABLE app.mine (id INT PRIMARY KEY, v TEXT)")
    node.sql("ALTER TOPIC app.tp ADD SOURCE app.mine ON INSERT")
    alice = node.login("alice", "AlicePass123!")
    node.sql("INSERT INTO app.mine (id, v) VALUES (1, 'hers')", who=alice)
    msgs = consume(node, "CONSUME FROM app.tp FROM EARLIEST")
    assert msgs[0]["user_id"] == "alice" and msgs[0]["data"]["v"] == "hers"


def test_group_consume_commits_what_it_returns(node):
    node.sql("ALTER TOPIC app.tp ADD SOURCE app.t ON INSERT")
    for i in range(5):
        node.sql(f"INSERT INTO app.t (id) VALUES ({i})")
    first = consume(node, "CONSUME FROM app.tp GROUP 'g' FROM EARLIEST LIMIT 2")
    second = consume(node, "CONSUME FROM app.tp GROUP 'g' FROM EARLIEST LIMIT 2")
    assert [m["offset"] for m in first + second] == ["0", "1", "2", "3"]
    assert node.rows("SELECT last_acked_offset FROM system.topic_offsets WHERE group_id = 'g'") == [["3"]]
    assert node.sql("ACK app.tp GROUP 'g' UPTO OFFSET 1")[0]["rows"] == [["app.tp", "g", 0, "1"]]
    assert [m["offset"] for m in consume(node, "CONSUME FROM app.tp GROUP 'g' FROM EARLIEST")] == ["2", "3", "4"]
    assert consume(node, "CONSUME FROM app.tp GROUP 'g'") == []


def test_latest_positions_a_new_group_after_what_exists(node):
    node.sql("ALTER TOPIC app.tp ADD SOURCE app.t ON INSERT")
    node.sql("INSERT INTO app.t (id) VALUES (1), (2)")
    assert consume(node, "CONSUME FROM app.tp GROUP 'late'") == []
    node.sql("INSERT INTO app.t (id) VALUES (3)")
    assert [m["data"]["id"] for m in consume(node, "CONSUME FROM app.tp GROUP 'late'")] == [3]
    assert consume(node, "CONSUME FROM app.tp") == []  # without a group: LATEST is the end
    assert [m["offset"] for m in consume(node, "CONSUME FROM app.tp FROM 1")] == ["1", "2"]


def test_rolled_back_statements_publish_nothing(node):
    node.sql("ALTER TOPIC app.tp ADD SOURCE app.t ON INSERT")
    node.sql("BEGIN; INSERT INTO app.t (id) VALUES (1); ROLLBACK")
    node.error("INSERT INTO app.t (id) VALUES (2), (2)")  # a primary key violation undoes the statement
    node.error("BEGIN; INSERT INTO app.t (id) VALUES (3); INSERT INTO app.t (nope) VALUES (1); COMMIT")
    node.sql("INSERT INTO app.t (id) VALUES (4)")
    assert [(m["offset"], m["data"]["id"]) for m in consume(node, "CONSUME FROM app.tp FROM EARLIEST")] == [("0", 4)]


def test_routes_apply_from_the_statement_after_they_are_added(node):
    node.sql("INSERT INTO app.t (id) VALUES (1); ALTER TOPIC app.tp ADD SOURCE app.t ON INSERT; "
             "INSERT INTO app.t (id) VALUES (2)")
    assert [m["data"]["id"] for m in consume(node, "CONSUME FROM app.tp FROM EARLIEST")] == [2]
    node.error("ALTER TOPIC app.tp ADD SOURCE app.t ON INSERT; INSERT INTO app.nope (id) VALUES (1)")
    node.sql("ALTER TOPIC app.tp ADD SOURCE app.t ON UPDATE")  # the failed request's route is gone too
    routes = json.loads(node.rows("SELECT routes FROM system.topics")[0][0])
    assert [(r["table_id"], r["op"]) for r in routes] == [("app.t", "insert"), ("app.t", "update")]


def test_clear_keeps_offsets_growing_and_drop_removes_everything(node):
    node.sql("ALTER TOPIC app.tp ADD SOURCE app.t ON INSERT")
    node.sql("INSERT INTO app.t (id) VALUES (1), (2)")
    node.sql("ACK app.tp GROUP 'g' UPTO OFFSET 1")
    msg = node.sql("CLEAR TOPIC app.tp")[0]["message"]
    assert msg.startswith("Scheduled cleanup job [TC-") and msg.endswith("] for topic 'app.tp'")
    assert consume(node, "CONSUME FROM app.tp FROM EARLIEST") == []
    assert node.rows("SELECT * FROM system.topic_offsets") == []
    node.sql("INSERT INTO app.t (id) VALUES (3)")
    assert [m["offset"] for m in consume(node, "CONSUME FROM app.tp FROM EARLIEST")] == ["2"]
    msg = node.sql("DROP TOPIC app.tp")[0]["message"]
    assert msg.startswith("Dropped topic 'app.tp' and scheduled cleanup job [TC-")
    assert node.rows("SELECT * FROM system.topics") == []
    assert node.db.reader()[0].execute("SELECT COUNT(*) FROM _kdb_topic_messages").fetchone() == (0,)
    node.sql("INSERT INTO app.t (id) VALUES (4)")  # no routes left: nothing is published
    assert node.db.reader()[0].execute("SELECT COUNT(*) FROM _kdb_topic_messages").fetchone() == (0,)


@pytest.mark.parametrize("text,fragment", [
    ("CREATE TOPIC plain", "namespace-qualified"),
    ("CREATE TOPIC nope.t", "Namespace 'nope' does not exist"),
    ("CREATE TOPIC app.tp", "already exists"),
    ("CREATE TOPIC app.x PARTITIONS 0", "positive integer"),
    ("ALTER TOPIC app.tp ADD SOURCE app.missing ON INSERT", "not found"),
    ("ALTER TOPIC app.tp ADD SOURCE app.t ON MERGE", "Invalid operation"),
    ("ALTER TOPIC app.tp ADD SOURCE app.t ON INSERT WITH (payload = 'all')", "Invalid payload mode"),
    ("ALTER TOPIC app.nope ADD SOURCE app.t ON INSERT", "does not exist"),
    ("CONSUME FROM app.nope", "Topic 'app.nope' does not exist"),
    ("ACK app.tp UPTO OFFSET 1", "GROUP"),
    ("ACK app.tp GROUP 'g' UPTO OFFSET -1", "non-negative"),
    ("ACK app.tp GROUP 'g'", "UPTO OFFSET"),
    ("DROP TOPIC app.nope", "does not exist"),
])
def test_clear_errors(node, text, fragment):
    assert fragment in node.error(text).message


def test_duplicate_route_is_refused(node):
    node.sql("ALTER TOPIC app.tp ADD SOURCE app.t ON INSERT")
    err = node.error("ALTER TOPIC app.tp ADD SOURCE app.t ON INSERT")
    assert "Route for app.t ON Insert already exists in topic 'app.tp'" in err.message


@pytest.mark.parametrize("text,who", [
    ("CREATE TOPIC app.x", SERVICE), ("DROP TOPIC app.tp", SERVICE), ("CLEAR TOPIC app.tp", SERVICE),
    ("ALTER TOPIC app.tp ADD SOURCE app.t ON INSERT", SERVICE),
    ("CONSUME FROM app.tp FROM EARLIEST", USER), ("CONSUME FROM app.tp GROUP 'g'", USER),
    ("ACK app.tp GROUP 'g' UPTO OFFSET 0", USER),
])
def test_roles(node, text, who):
    with pytest.raises(KalamError) as info:
        node.db.prepare(text, None, None, who)
    assert info.value.code == "PERMISSION_DENIED"


def test_service_may_consume_and_ack(node):
    node.sql("ALTER TOPIC app.tp ADD SOURCE app.t ON INSERT")
    node.sql("INSERT INTO app.t (id) VALUES (1)")
    assert len(consume(node, "CONSUME FROM app.tp GROUP 's' FROM EARLIEST", who=SERVICE)) == 1
    node.sql("ACK app.tp GROUP 's' UPTO OFFSET 0", who=SERVICE)


def test_retention_prunes_old_messages_deterministically(node, monkeypatch):
    from kalamdb.engine import topics

    monkeypatch.setattr(topics, "PRUNE_EVERY", 4)
    monkeypatch.setattr(topics, "MAX_PARTITION_MESSAGES", 5)
    node.sql("ALTER TOPIC app.tp ADD SOURCE app.t ON INSERT")
    for i in range(12):
        node.sql(f"INSERT INTO app.t (id) VALUES ({i})")
    offsets = [int(m["offset"]) for m in consume(node, "CONSUME FROM app.tp FROM EARLIEST")]
    assert offsets == list(range(7, 12))  # pruned at offset 12: only the newest 5 are kept
    assert [int(m["offset"]) for m in consume(node, "CONSUME FROM app.tp FROM 0")] == offsets


def test_replicas_hold_identical_topics(tmp_path):
    a, b = Node(tmp_path / "a"), Node(tmp_path / "b", node_id=2)
    try:
        for text in ["CREATE NAMESPACE app", "CREATE TABLE app.t (id INT PRIMARY KEY, v TEXT)",
                     "CREATE TOPIC app.tp PARTITIONS 3", "ALTER TOPIC app.tp ADD SOURCE app.t ON INSERT",
                     "ALTER TOPIC app.tp ADD SOURCE app.t ON DELETE",
                     "INSERT INTO app.t (id, v) VALUES (1, 'x'), (2, 'y'), (3, 'z')",
                     "DELETE FROM app.t WHERE id = 2", "CONSUME FROM app.tp GROUP 'g' FROM EARLIEST",
                     "ACK app.tp GROUP 'h' PARTITION 2 UPTO OFFSET 0", "CLEAR TOPIC app.tp",
                     "INSERT INTO app.t (id, v) VALUES (4, 'w')"]:
            a.sql(text)
        for index, cmd in a.log:
            b.db.apply(index, cmd)
        assert a.db.digest_with_index() == b.db.digest_with_index()
    finally:
        a.close()
        b.close()


def test_routes_survive_reopen(tmp_path):
    n = Node(tmp_path / "db")
    n.sql("CREATE NAMESPACE app")
    n.sql("CREATE TABLE app.t (id INT PRIMARY KEY)")
    n.sql("CREATE TOPIC app.tp")
    n.sql("ALTER TOPIC app.tp ADD SOURCE app.t ON INSERT")
    n.close()
    n = Node(tmp_path / "db")
    try:
        n.now_us += 10_000_000
        n.sql("INSERT INTO app.t (id) VALUES (1)")
        assert len(consume(n, "CONSUME FROM app.tp FROM EARLIEST")) == 1
    finally:
        n.close()


def test_claims_hand_out_each_offset_once_until_acked_or_expired():
    book = ClaimBook(timeout_s=60)
    key = ("t", "g", 0)
    assert book.window(key, 0, None, 10, now=0.0) == (0, 10)
    book.claim(key, 0, 9, now=0.0)
    assert book.window(key, 0, None, 10, now=1.0) == (10, 10)  # a second poller gets the next range
    book.claim(key, 10, 14, now=1.0)
    assert book.window(key, 0, 10, 10, now=2.0) == (15, 10)  # 0..9 acked: their claim is done
    assert book.window(key, 0, 10, 10, now=62.0) == (10, 10)  # 10..14 expired: handed out again
    assert book.window(key, 0, 15, 3, now=63.0) == (15, 3)
