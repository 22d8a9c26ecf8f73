"""Light commands (engine/light.py): which committed batches a node may apply on its request loop,
and the WAL checkpoints the writer now runs itself so that such a batch never runs one."""

from __future__ import annotations

import os

import pytest
from harness import Node

from kalamdb.engine import database as dbmod
from kalamdb.engine.changes import PRUNE_EVERY
from kalamdb.engine.light import MAX_COMMAND_BYTES, plain_values_insert
from kalamdb.sql.parse_cache import ParseCache


@pytest.fixture
def node(tmp_path):
    n = Node(tmp_path / "db", durable=False)
    n.sql("CREATE NAMESPACE app")
    n.sql("CREATE TABLE app.t (id BIGINT PRIMARY KEY, v TEXT)")
    n.sql("CREATE TABLE app.u (id BIGINT PRIMARY KEY, v TEXT)")
    yield n
    n.close()


@pytest.mark.parametrize(("sql", "light"), [
    ("INSERT INTO app.t (id, v) VALUES ($1, $2)", True),
    ("INSERT INTO app.t (id, v) VALUES (1, 'a'), (-2, NULL), (3, 'c')", True),
    ("INSERT INTO app.t VALUES (TRUE, -4.5)", True),
    ("INSERT INTO app.t (id, v) VALUES (1, 'a') RETURNING id", True),
    ("INSERT INTO app.t (id, v) VALUES (1, randomblob($1))", False),
    ("INSERT INTO app.t (id, v) VALUES (1 + 1, 'a')", False),
    ("INSERT INTO app.t (id, v) VALUES ((SELECT max(id) FROM app.u), 'a')", False),
    ("INSERT INTO app.t SELECT * FROM app.u", False),
    ("INSERT INTO app.t (id, v) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET v = 'b'", False),
    ("INSERT INTO app.t (id, v) VALUES (1, 'a') ON CONFLICT (id) DO NOTHING", False),
    ("UPDATE app.t SET v = 'x'", False),
    ("DELETE FROM app.t", False),
])
def test_plain_values_insert(sql, light):
    assert plain_values_insert(ParseCache().parse(sql)) is light


def _items(node: Node, *texts: str, params=None) -> list[tuple[int, bytes]]:
    first = node.db.applied_index + 1
    return [(first + i, node.command(t, params)) for i, t in enumerate(texts)]


def test_a_batch_of_plain_inserts_is_light_anything_costlier_is_not(node):
    db = node.db
    assert db.light_batch(_items(node, "INSERT INTO app.t (id, v) VALUES ($1, $2)", params=[1, "a"]))
    assert db.light_batch([(db.applied_index + 1, db.noop_command())])
    two = "INSERT INTO app.t (id, v) VALUES (1, 'a'); INSERT INTO app.u (id, v) VALUES (2, 'b')"
    assert db.light_batch(_items(node, two))
    for heavy in ("DELETE FROM app.t", "UPDATE app.t SET v = 'x'", "INSERT INTO app.t SELECT * FROM app.u",
                  "INSERT INTO app.t (id, v) VALUES (1, upper('a'))", "CREATE TABLE app.w (id INT PRIMARY KEY)",
                  "INSERT INTO app.t (id, v) VALUES (1, 'a'); DELETE FROM app.u"):
        first = db.applied_index + 1
        mixed = [(first, node.command("INSERT INTO app.t (id, v) VALUES ($1, $2)", [1, "a"])),
                 (first + 1, node.command(heavy))]
        assert not db.light_batch(mixed), heavy


def test_size_count_prune_and_topic_routes_make_a_batch_heavy(node):
    db = node.db
    big = "x" * MAX_COMMAND_BYTES
    assert not db.light_batch(_items(node, "INSERT INTO app.t (id, v) VALUES ($1, $2)", params=[1, big]))
    one = node.command("INSERT INTO app.t (id, v) VALUES ($1, $2)", [1, "a"])
    first = db.applied_index + 1
    fit = min(dbmod.MAX_LIGHT_ENTRIES, dbmod.MAX_LIGHT_BATCH_BYTES // len(one))
    assert db.light_batch([(first + i, one) for i in range(fit)])
    assert not db.light_batch([(first + i, one) for i in range(fit + 1)])
    rows = node.command("INSERT INTO app.t (id, v) VALUES " + ", ".join(f"({k}, 'row {k}')" for k in range(60)))
    assert len(rows) < MAX_COMMAND_BYTES and db.light_batch([(first, rows)])
    many = [(first + i, rows) for i in range(dbmod.MAX_LIGHT_BATCH_BYTES // len(rows) + 1)]
    assert len(many) < dbmod.MAX_LIGHT_ENTRIES and not db.light_batch(many)  # too many rows together
    at_prune = (first // PRUNE_EVERY + 1) * PRUNE_EVERY
    assert not db.light_batch([(at_prune, one)])  # the change log is pruned at this index
    assert db.light_batch([(at_prune + 1, one)])
    node.sql("CREATE TOPIC app.tp")
    node.sql("ALTER TOPIC app.tp ADD SOURCE app.t ON INSERT")
    assert not db.light_batch([(db.applied_index + 1, one)])


def test_a_statement_text_the_parse_cache_does_not_hold_is_not_light(tmp_path):
    proposer, replica = Node(tmp_path / "a", durable=False), Node(tmp_path / "b", durable=False)
    try:
        for n in (proposer, replica):
            n.sql("CREATE NAMESPACE app")
            n.sql("CREATE TABLE app.t (id BIGINT PRIMARY KEY, v TEXT)")
        text = "INSERT INTO app.t (id, v) VALUES ($1, $2)"
        cmd = proposer.command(text, [1, "a"])
        index = replica.db.applied_index + 1
        assert not replica.db.light_batch([(index, cmd)])  # would parse on the request loop
        assert replica.db.apply(index, cmd).error is None  # the apply thread parses it
        assert replica.db.light_batch([(index + 1, proposer.command(text, [2, "b"]))])
    finally:
        proposer.close()
        replica.close()


def test_the_writer_checkpoints_the_wal_itself_and_no_light_batch_runs_one(node, monkeypatch):
    monkeypatch.setattr(dbmod, "CHECKPOINT_COMMITS", 50)
    wal = node.db.path.with_name(node.db.path.name + "-wal")
    text = "INSERT INTO app.t (id, v) VALUES ($1, $2)"
    sizes = []
    due_seen = 0
    for k in range(400):
        items = _items(node, text, params=[k, "v" * 200])
        if not node.db.light_batch(items):
            due_seen += 1
        assert node.db.apply(*items[0]).error is None
        sizes.append(os.path.getsize(wal))
    assert due_seen >= 400 // 50 - 1  # each due checkpoint kept the batch before it off the request loop
    # the WAL is reused from its start after each checkpoint: it stops growing
    assert max(sizes[200:]) == max(sizes[:200]) or max(sizes) < 2 << 20, sizes[::50]



def test_the_apply_after_a_light_verdict_reuses_the_decoded_command(node, monkeypatch):
    from kalamdb.engine import commands

    calls = 0
    real = commands.decode_command

    def counting(command: bytes) -> dict:
        nonlocal calls
        calls += 1
        return real(command)

    monkeypatch.setattr(commands, "decode_command", counting)
    items = _items(node, "INSERT INTO app.t (id, v) VALUES ($1, $2)", params=[7, "seven"])
    assert node.db.light_batch(items)
    assert calls == 1
    assert node.db.apply_batch(items)[0].error is None
    assert calls == 1  # decoded once, by the light check
    assert node.rows("SELECT v FROM app.t WHERE id = 7") == [["seven"]]
    # a command that is not the very object checked is decoded as usual
    again = _items(node, "INSERT INTO app.t (id, v) VALUES ($1, $2)", params=[8, "eight"])
    assert node.db.light_batch(again)
    copy = [(i, bytes(bytearray(c))) for i, c in again]
    assert node.db.apply_batch(copy)[0].error is None
    assert calls == 3
