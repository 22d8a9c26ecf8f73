"""The change log and feed (engine/changes.py): every applied row change, in log order, after commit;
nothing from a failed statement or a rolled-back transaction; a durable log to resume from; and a
retention that refuses a resume point it no longer covers instead of leaving a gap."""

from __future__ import annotations

import sqlite3

import pytest

from kalamdb.engine import Principal, changes
from kalamdb.engine.changes import Applied, Reset, ResumeTooOld, TableDropped


@pytest.fixture
def feed(node):
    events = []
    node.db.feed.subscribe(events.append)
    node.sql("CREATE USER TABLE m (id BIGINT PRIMARY KEY, body TEXT, n INT)")
    node.sql("CREATE USER alice WITH PASSWORD 'alice-password' ROLE user")
    node.alice = node.login("alice", "alice-password")
    events.clear()
    return events


def all_changes(events):
    return [c for e in events if isinstance(e, Applied) for c in e.changes]


def test_insert_update_delete_are_published_with_their_rows(node, feed):
    alice = node.alice
    node.sql("INSERT INTO m (id, body, n) VALUES (1, 'hi', 5), (2, 'yo', 6)", who=alice)
    node.sql("UPDATE m SET body = 'hello' WHERE id = 1", who=alice)
    node.sql("DELETE FROM m WHERE id = 2", who=alice)
    got = all_changes(feed)
    assert [(c.op, c.table, c.owner) for c in got] == [("insert", "default.m", alice.user_id)] * 2 + [
        ("update", "default.m", alice.user_id), ("delete", "default.m", alice.user_id)]
    ins1, ins2, upd, dele = got
    assert ins1.row == {"id": 1, "body": "hi", "n": 5, "_seq": ins1.seq, "_deleted": False} and ins1.old is None
    assert upd.old == {"id": 1, "body": "hi", "n": 5, "_seq": ins1.seq, "_deleted": False}
    assert upd.row == {"id": 1, "body": "hello", "n": 5, "_seq": upd.seq, "_deleted": False}
    assert dele.row is None and dele.old["id"] == 2 and dele.old["_seq"] == ins2.seq
    seqs = [c.seq for c in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    indexes = [c.index for c in got]
    assert indexes == sorted(indexes) and indexes[0] < indexes[2] < indexes[3]
    # the stored _seq is the one the change carries
    assert node.rows("SELECT _seq FROM m WHERE id = 1", who=alice) == [[str(upd.seq)]]


def test_nothing_is_published_for_failed_or_rolled_back_work(node, feed):
    alice = node.alice
    node.sql("INSERT INTO m (id, body) VALUES (1, 'kept')", who=alice)
    feed.clear()
    node.error("INSERT INTO m (id, body) VALUES (2, 'x'), (1, 'duplicate')", who=alice)
    node.sql("BEGIN; INSERT INTO m (id, body) VALUES (3, 'y'); ROLLBACK", who=alice)
    node.error("BEGIN; INSERT INTO m (id, body) VALUES (4, 'z'); INSERT INTO m (id, body) VALUES (1, 'dup'); COMMIT",
               who=alice)
    node.sql("UPDATE m SET body = 'kept' WHERE id = 1", who=alice)  # changes nothing
    assert all_changes(feed) == []
    err = node.error("INSERT INTO m (id, body) VALUES (5, 'a'); INSERT INTO m (id, body) VALUES (1, 'dup')",
                     who=alice)
    assert err.message.startswith("Statement 2 failed")
    assert [c.row["id"] for c in all_changes(feed)] == [5]  # the statement before the failure stays


def test_the_feed_runs_after_commit(node, feed):
    """A listener sees the change already committed: another connection can read it."""
    seen = []

    def listener(event):
        if isinstance(event, Applied) and event.changes:
            other = sqlite3.connect(node.db.path)
            seen.append(other.execute('SELECT COUNT(*) FROM "default.m"').fetchone()[0])
            other.close()

    node.db.feed.subscribe(listener)
    node.sql("INSERT INTO m (id, body) VALUES (1, 'x')", who=node.alice)
    assert seen == [1]


def test_a_failing_listener_is_dropped_and_apply_goes_on(node, feed):
    def broken(event):
        raise RuntimeError("subscriber bug")

    node.db.feed.subscribe(broken)
    node.sql("INSERT INTO m (id, body) VALUES (1, 'x')", who=node.alice)
    node.sql("INSERT INTO m (id, body) VALUES (2, 'y')", who=node.alice)
    assert [c.row["id"] for c in all_changes(feed)] == [1, 2]
    assert node.db.feed.listeners == 1


def test_changes_since_reads_the_durable_log_per_owner(node, feed):
    alice = node.alice
    node.sql("INSERT INTO m (id, body) VALUES (1, 'a'), (2, 'b')", who=alice)
    node.sql("INSERT INTO m (id, body) VALUES (1, 'root row')")
    node.sql("DELETE FROM m WHERE id = 1", who=alice)
    live = all_changes(feed)
    index, logged = node.db.changes_since("default.m", alice.user_id, 0)
    assert index == node.db.applied_index
    assert logged == [c for c in live if c.owner == alice.user_id]
    _, after_first = node.db.changes_since("default.m", alice.user_id, live[0].seq)
    assert [c.seq for c in after_first] == [c.seq for c in logged[1:]]
    assert node.db.changes_since("default.m", "root", 0)[1][0].row["body"] == "root row"


def test_a_resume_point_older_than_the_retention_is_refused(node, feed, monkeypatch):
    monkeypatch.setattr(changes, "CHANGE_RETENTION_ROWS", 3)
    monkeypatch.setattr(changes, "PRUNE_EVERY", 1)  # read by changes.prunes_at
    alice = node.alice
    for i in range(6):
        node.sql(f"INSERT INTO m (id, body) VALUES ({i}, 'v{i}')", who=alice)
    first_seq = all_changes(feed)[0].seq
    with pytest.raises(ResumeTooOld) as info:
        node.db.changes_since("default.m", alice.user_id, first_seq)
    assert info.value.code == "RESUME_TOO_OLD" and "subscribe again" in info.value.message
    newest = all_changes(feed)[-2].seq
    assert [c.row["id"] for c in node.db.changes_since("default.m", alice.user_id, newest)[1]] == [5]


def test_dropping_a_table_ends_its_log_and_is_published_in_order(node, feed):
    node.sql("INSERT INTO m (id, body) VALUES (1, 'x')", who=node.alice)
    node.sql("DROP USER TABLE m")
    kinds = [type(e).__name__ for e in feed if not (isinstance(e, Applied) and not e.changes)]
    assert kinds == ["Applied", "TableDropped"]
    assert next(e for e in feed if isinstance(e, TableDropped)).table == "default.m"
    node.sql("CREATE USER TABLE m (id BIGINT PRIMARY KEY, body TEXT, n INT)")
    assert node.db.changes_since("default.m", node.alice.user_id, 0)[1] == []


def test_replicas_hold_the_same_log_and_restore_publishes_a_reset(make_node, tmp_path):
    a, b = make_node("a"), make_node("b", node_id=2)
    who = Principal("root", "root", "system")
    a.sql("CREATE SHARED TABLE s (id INT PRIMARY KEY, v TEXT)")
    a.sql("INSERT INTO s (id, v) VALUES (1, 'x'), (2, 'y'); UPDATE s SET v = 'z' WHERE id = 1", who=who)
    for index, cmd in a.log:
        b.db.apply(index, cmd)
    assert a.db.digest() == b.db.digest()
    assert a.db.changes_since("default.s", None, 0) == b.db.changes_since("default.s", None, 0)
    events = []
    b.db.feed.subscribe(events.append)
    a.db.snapshot_to(tmp_path / "snap.sqlite")
    b.db.restore_from(tmp_path / "snap.sqlite")
    assert events == [Reset(a.db.applied_index)]
