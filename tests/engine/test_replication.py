"""The state machine as Raft uses it: same log in -> byte-identical state out, group commit with
per-command atomicity, exactly-once apply across restarts, snapshots."""

from __future__ import annotations

import random

import pytest

from kalamdb.engine import Database, Principal
from kalamdb.errors import KalamError

ROOT = Principal("root", "root", "system")

WORKLOAD = [
    "CREATE NAMESPACE app",
    ("CREATE TABLE app.acct (id BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID(), name TEXT, bal INT, at TIMESTAMP "
    "DEFAULT NOW(), u TEXT DEFAULT UUID_V7(), l TEXT DEFAULT ULID(), r DOUBLE)"),
    "CREATE USER TABLE app.notes (id INT PRIMARY KEY, body TEXT)",
    "CREATE USER alice WITH PASSWORD 'pw' ROLE user",
    "CREATE STREAM TABLE app.ev (id INT, body TEXT) WITH (TTL_SECONDS=60)",
]


def _dump(db: Database) -> list[str]:
    return list(db._wconn.iterdump())


def _proposals(seed: int, path) -> list[bytes]:
    """A seeded random history of requests, turned into commands by one proposer."""
    rng = random.Random(seed)
    tmp = Database(path)
    try:
        cmds = []
        now = 1_750_000_000_000_000
        for sql in WORKLOAD:
            now += 1000
            cmds.append(tmp.to_command(tmp.prepare(sql, None, None, ROOT), now_us=now, node_id=1))
        for i in range(60):
            now += rng.randint(0, 3000)
            kind = rng.choice(["ins", "ins", "upd", "del", "note", "dup", "ev", "txn"])
            if kind == "ins":
                sql = f"INSERT INTO app.acct (name, bal, r) VALUES ('n{i}', {rng.randint(0, 99)}, RANDOM())"
            elif kind == "upd":
                sql = f"UPDATE app.acct SET bal = bal + 1, r = RANDOM() WHERE bal < {rng.randint(0, 99)}"
            elif kind == "del":
                sql = f"DELETE FROM app.acct WHERE bal > {rng.randint(50, 99)}"
            elif kind == "note":
                sql = f"EXECUTE AS USER 'alice' (INSERT INTO app.notes (id, body) VALUES ({rng.randint(1, 20)}, 'x'))"
            elif kind == "dup":
                sql = "INSERT INTO app.notes (id, body) VALUES (1, 'a'); INSERT INTO app.notes (id, body) VALUES (1, 'b')"
            elif kind == "ev":
                sql = f"INSERT INTO app.ev (id, body) VALUES ({i}, 'e')"
            else:
                sql = f"BEGIN; INSERT INTO app.acct (name, bal) VALUES ('t{i}', 1); {rng.choice(['COMMIT', 'ROLLBACK'])}"
            node_id = rng.randint(1, 3)  # leadership moves between proposers
            cmds.append(tmp.to_command(tmp.prepare(sql, None, None, ROOT), now_us=now, node_id=node_id))
        return cmds
    finally:
        tmp.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_log_gives_identical_state(tmp_path, seed):
    cmds = _proposals(seed, tmp_path / "proposer")
    entries = list(enumerate(cmds, 1))
    a = Database(tmp_path / "a", node_id=1)
    b = Database(tmp_path / "b", node_id=2, durable=False)
    try:
        a_out = a.apply_batch(entries)  # one big group commit
        b_out = [b.apply(i, c) for i, c in entries]  # one entry at a time
        assert [o.error.message if o.error else None for o in a_out] == \
            [o.error.message if o.error else None for o in b_out], f"seed={seed}"
        assert any(o.error for o in a_out), "the workload should contain failing commands"
        assert a.applied_index == b.applied_index == len(cmds)
        assert a.digest() == b.digest(), f"seed={seed}"
        assert _dump(a) == _dump(b), f"seed={seed}"
    finally:
        a.close()
        b.close()


def test_digest_changes_with_state_and_ignores_node_local_config(tmp_path):
    a = Database(tmp_path / "a", node_id=1, root_password="x")
    b = Database(tmp_path / "b", node_id=7, root_password="y", durable=False)
    try:
        assert a.digest() == b.digest()  # fresh replicas start byte-identical
        cmd = a.to_command(a.prepare("CREATE NAMESPACE z", None, None, ROOT), now_us=5, node_id=1)
        a.apply(1, cmd)
        assert a.digest() != b.digest()
        b.apply(1, cmd)
        assert a.digest() == b.digest()
    finally:
        a.close()
        b.close()


def test_apply_batch_rolls_back_only_the_failing_command(node):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY)")
    base = node.db.applied_index
    good1 = node.command("INSERT INTO t (id) VALUES (1)")
    bad = node.command("INSERT INTO t (id) VALUES (2), (1)")
    good2 = node.command("INSERT INTO t (id) VALUES (3)")
    garbage = b"\xc1 not msgpack"
    outcomes = node.db.apply_batch([(base + 1, good1), (base + 2, bad), (base + 3, garbage), (base + 4, good2)])
    assert [o.error is None for o in outcomes] == [True, False, False, True]
    assert "Primary key violation" in outcomes[1].error.message
    assert outcomes[2].error.code == "INTERNAL_ERROR"
    assert node.db.applied_index == base + 4  # failing commands still advance the index
    assert node.rows("SELECT id FROM t ORDER BY id") == [[1], [3]]


def test_replay_after_reopen_is_idempotent(tmp_path):
    path = tmp_path / "r"
    db = Database(path)
    cmds = [db.to_command(db.prepare(s, None, None, ROOT), now_us=10 + i, node_id=1) for i, s in enumerate(
        ["CREATE TABLE t (id INT PRIMARY KEY, v INT)", "INSERT INTO t (id, v) VALUES (1, 1)",
         "UPDATE t SET v = v + 1", "INSERT INTO t (id, v) VALUES (2, 1)"])]
    entries = list(enumerate(cmds, 1))
    db.apply_batch(entries[:3])
    digest_3 = db.digest()
    db.close()
    db = Database(path)
    try:
        assert db.applied_index == 3 and db.digest() == digest_3
        outcomes = db.apply_batch(entries)  # the whole log again: 1..3 skipped, 4 applied once
        assert db.applied_index == 4
        assert [o.results for o in outcomes[:3]] == [[], [], []]
        rows = db.execute_read(db.prepare("SELECT id, v FROM t ORDER BY id", None, None, ROOT))[0]["rows"]
        assert rows == [[1, 2], [2, 1]]  # the UPDATE was not applied twice
    finally:
        db.close()


def test_snowflake_counter_survives_restart(tmp_path):
    path = tmp_path / "s"
    db = Database(path)
    prep = db.prepare("CREATE TABLE t (id BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID(), v INT)", None, None, ROOT)
    db.apply(1, db.to_command(prep, now_us=1_750_000_000_000_000, node_id=1))
    ins = db.prepare("INSERT INTO t (v) VALUES (1)", None, None, ROOT)
    # the clock goes backwards between commands (a new leader with a slower clock): ids still grow
    db.apply(2, db.to_command(ins, now_us=1_750_000_000_000_000, node_id=1))
    db.close()
    db = Database(path)
    try:
        db.apply(3, db.to_command(ins, now_us=1_700_000_000_000_000, node_id=1))
        ids = [int(r[0]) for r in db.execute_read(db.prepare("SELECT id FROM t ORDER BY _seq", None, None, ROOT))[0]["rows"]]
        assert ids[1] > ids[0]
    finally:
        db.close()


def test_snapshot_round_trip(tmp_path, node):
    node.sql("CREATE NAMESPACE app; CREATE TABLE app.t (id INT PRIMARY KEY, v TEXT)")
    node.sql("INSERT INTO app.t (id, v) VALUES (1, 'a'), (2, 'b')")
    snap = tmp_path / "snap.sqlite"
    index = node.db.snapshot_to(snap)
    assert index == node.db.applied_index
    digest = node.db.digest()
    other = Database(tmp_path / "other", node_id=2)
    try:
        other.restore_from(snap)
        assert other.applied_index == index and other.digest() == digest
        rows = other.execute_read(other.prepare("SELECT v FROM app.t ORDER BY id", None, None, ROOT))[0]["rows"]
        assert rows == [["a"], ["b"]]
        # the restored replica continues with the log after the snapshot
        nxt = node.command("INSERT INTO app.t (id, v) VALUES (3, 'c')")
        node.db.apply(index + 1, nxt)
        other.apply(index + 1, nxt)
        assert other.digest() == node.db.digest()
        bogus = tmp_path / "bogus"
        bogus.write_bytes(b"not a database at all" * 100)
        with pytest.raises(KalamError):
            other.restore_from(bogus)
        assert other.digest() == node.db.digest()
    finally:
        other.close()


def test_parse_cache_hits_for_repeated_statements(node):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY)")
    cache = node.db.parse_cache
    node.sql("INSERT INTO t (id) VALUES ($1)", [1])
    misses = cache.misses
    for i in range(2, 12):
        node.sql("INSERT INTO t (id) VALUES ($1)", [i])
    assert cache.misses == misses and cache.hits >= 10
    assert node.rows("SELECT COUNT(*) FROM t") == [["11"]]


def test_noop_commands_only_advance_the_index(node):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY)")
    def state():
        return [line for line in _dump(node.db) if "_kdb_meta" not in line]

    before = state()
    base = node.db.applied_index
    outcomes = node.db.apply_batch([(base + 1, node.db.noop_command()), (base + 2, node.db.noop_command())])
    assert [(o.results, o.error) for o in outcomes] == [([], None), ([], None)]
    assert node.db.applied_index == base + 2
    assert state() == before  # nothing but the applied index changed


@pytest.mark.parametrize("seed", [11, 12])
def test_batch_boundaries_do_not_change_the_state(tmp_path, seed):
    """Replicas group commits differently (whatever was committed when the apply thread woke up):
    any split of the same log must give the same state and the same outcomes."""
    cmds = _proposals(seed, tmp_path / "proposer")
    entries = list(enumerate(cmds, 1))
    rng = random.Random(seed)
    whole = Database(tmp_path / "whole")
    split = Database(tmp_path / "split", durable=False)
    try:
        expected = [o.error.message if o.error else None for o in whole.apply_batch(entries)]
        got: list = []
        i = 0
        while i < len(entries):
            n = rng.randint(1, 9)
            got += [o.error.message if o.error else None for o in split.apply_batch(entries[i:i + n])]
            i += n
        assert got == expected, f"seed={seed}"
        assert split.digest() == whole.digest(), f"seed={seed}"
    finally:
        whole.close()
        split.close()
