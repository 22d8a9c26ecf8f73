"""Topics hold copies of other users' rows (every routed change, as JSON): a regular user must not
reach them by any statement: not CONSUME or ACK (service+), not the topic tables by any spelling
or SQL shape, and not by changing routes (dba+)."""

from __future__ import annotations

import pytest
from harness import ROOT
from test_isolation_probes import READ_SHAPES, reveals, run
from world import ALICE_ROWS, leaked

from kalamdb.errors import KalamError

TOPIC_TABLES = ["_kdb_topic_messages", '"_kdb_topic_messages"', "main._kdb_topic_messages", "_kdb_topics",
                "_kdb_topic_offsets", "_kdb_topic_partitions", "TEMP._kdb_topic_messages"]


@pytest.fixture
def topic_world(world):
    world.sql("CREATE TOPIC chat.feed", who=ROOT)
    for op in ("INSERT", "UPDATE", "DELETE"):
        world.sql(f"ALTER TOPIC chat.feed ADD SOURCE chat.m ON {op}", who=ROOT)
    world.sql("ALTER TOPIC chat.feed ADD SOURCE chat.p ON INSERT", who=ROOT)
    world.sql("UPDATE chat.m SET body = body || '!' WHERE id = 1", who=world.alice)
    world.sql("DELETE FROM chat.m WHERE id = 2", who=world.alice)
    world.sql("INSERT INTO chat.p (id, body) VALUES (900, 'SECRET-of-alice-shared')", who=ROOT)
    rows = world.rows("CONSUME FROM chat.feed FROM EARLIEST LIMIT 100", who=ROOT)
    assert any(leaked(bytes(r[4])) for r in rows) and len(rows) == 3  # the feed does hold secrets
    return world


@pytest.mark.parametrize("text", [
    "CONSUME FROM chat.feed FROM EARLIEST", "CONSUME FROM chat.feed GROUP 'bob' FROM EARLIEST",
    "ACK chat.feed GROUP 'bob' UPTO OFFSET 0", "CLEAR TOPIC chat.feed", "DROP TOPIC chat.feed",
    "CREATE TOPIC chat.mine_too", "ALTER TOPIC chat.feed ADD SOURCE chat.mine ON INSERT",
    "EXECUTE AS USER 'alice' (SELECT * FROM chat.m)",
])
def test_topic_statements_are_refused_to_a_regular_user(topic_world, text):
    with pytest.raises(KalamError) as info:
        topic_world.sql(text, who=topic_world.bob)
    assert info.value.status in (400, 403)
    assert len(topic_world.rows("CONSUME FROM chat.feed FROM EARLIEST LIMIT 100", who=ROOT)) == 3


@pytest.mark.parametrize("src", TOPIC_TABLES)
def test_topic_tables_are_refused_outright(topic_world, src):
    with pytest.raises(KalamError):
        topic_world.sql(f"SELECT * FROM {src}", who=topic_world.bob)


@pytest.mark.parametrize("shape", READ_SHAPES)
def test_no_read_shape_reaches_the_topic_tables(topic_world, shape):
    for src in TOPIC_TABLES:
        sql = shape.format(src=src)
        assert (why := reveals(run(topic_world, sql))) is None, f"{sql} revealed {why}"


def test_system_topic_views_hold_no_row_data(topic_world):
    for view in ("system.topics", "system.topic_offsets"):
        for row in topic_world.rows(f"SELECT * FROM {view}", who=ROOT):
            assert not any(leaked(cell) for cell in row)
    assert ALICE_ROWS  # the world is the shared one (alice's rows in chat.m, chat.s and chat.p)
