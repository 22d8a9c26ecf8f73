"""A generated family of isolation probes: every SQL shape we could think of (CTE shadowing, nested
and recursive CTEs, scalar subqueries, UNION, JOIN, EXISTS, INSERT ... VALUES/SELECT, UPDATE SET,
DELETE WHERE), aimed by a regular user at every object holding someone else's data (USER, STREAM and
PRIVATE SHARED tables, their storage tables and row views, the catalog and its password hashes,
sqlite_master), spelled every way (quoted, dotted, upper case, schema-qualified).

Each probe must either be refused or reveal nothing: its answer, and everything bob can read back
afterwards, holds no secret, no password hash, and no count or id that only alice's rows produce.
The first version of this suite failed on the CTE-shadowing and VALUES-subquery shapes (issue 11)."""

from __future__ import annotations

import re

import pytest
from world import ALICE_ROWS, leaked

from kalamdb.errors import KalamError

# what bob may legitimately name (he sees only his own rows there) ...
SCOPED = ["chat.m", "CHAT.M", '"chat"."m"', "chat.s", "Chat.S"]
# ... and what he must never reach (raw storage, row views, catalog, SQLite's schema, private tables)
FORBIDDEN = ['"chat.m"', '"chat.m@v"', 'chat."m@v"', 'main."chat.m"', '"chat.s"', '"chat.s@v"',
             "_kdb_users", '"_kdb_users"', "main._kdb_users", "_kdb_meta", "_kdb_tables",
             "sqlite_master", "sqlite_schema", "main.sqlite_master", 'temp.sqlite_master',
             '"system.users"', "system.users", "chat.p", "CHAT.P", '"chat.p"', '"chat.p@v"', 'chat."p"',
             # upstream's system tables (dba/system only): the manifest and audit log name other users
             "system.manifest", "system.audit_log", "system.jobs", "information_schema.columns",
             '"information_schema.columns"', "_kdb_manifest", "_kdb_audit", "_kdb_jobs"]

READ_SHAPES = [
    "SELECT * FROM {src}",
    "SELECT * FROM {src} WHERE EXISTS (WITH {src} AS (SELECT 1) SELECT 1 FROM {src})",
    "SELECT * FROM {src} WHERE EXISTS (WITH x AS (SELECT 1) SELECT 1 FROM x)",
    "WITH x AS (SELECT * FROM {src}) SELECT * FROM x",
    "WITH x AS (SELECT 1 AS one) SELECT * FROM {src} JOIN x ON 1 = 1",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 1) SELECT * FROM {src}, r",
    "SELECT (SELECT COUNT(*) FROM {src})",
    "SELECT id FROM chat.mine UNION ALL SELECT COUNT(*) FROM {src}",
    "SELECT * FROM chat.mine JOIN {src} ON 1 = 1",
    "SELECT * FROM chat.mine WHERE (SELECT COUNT(*) FROM {src}) >= 2",
    "SELECT * FROM (SELECT * FROM {src}) AS t",
    "SELECT * FROM chat.mine AS {src}",
]
WRITE_SHAPES = [
    "INSERT INTO chat.mine (id, v) VALUES (200, (SELECT COUNT(*) FROM {src}))",
    "INSERT INTO chat.mine (id, v) SELECT 300, COUNT(*) FROM {src}",
    "INSERT INTO chat.mine (id, v) WITH x AS (SELECT COUNT(*) AS c FROM {src}) SELECT 400, c FROM x",
    "UPDATE chat.mine SET v = (SELECT COUNT(*) FROM {src}) WHERE id = 1",
    "UPDATE chat.mine SET v = 'x' WHERE id = 1 AND (SELECT COUNT(*) FROM {src}) >= 2",
    "DELETE FROM chat.mine WHERE id = 1 AND (SELECT COUNT(*) FROM {src}) >= 2",
    "UPDATE {src} SET body = 'overwritten'",
    "DELETE FROM {src}",
    "INSERT INTO {src} (id, body) VALUES (500, 'planted')",
]
_NUMBER = re.compile(r"^\d+$")


def _cells(results) -> list:
    out = []
    for r in results or []:
        for row in r.get("rows") or []:
            out.extend(row)
    return out


def reveals(results) -> str | None:
    """Why these results reveal alice's data (None when they do not)."""
    for cell in _cells(results):
        if leaked(cell) or (isinstance(cell, str) and ("alice" in cell or "CREATE TABLE" in cell)):
            return f"cell {cell!r}"
        value = cell if isinstance(cell, int) else (int(cell) if isinstance(cell, str) and _NUMBER.match(cell) else None)
        if value is not None and 2 <= value < 100:  # alice's ids are 1..7, her counts 6..8; bob's own id is 100
            return f"number {cell!r}"
    return None


def run(world, sql: str):
    try:
        return world.sql(sql, who=world.bob)
    except KalamError as e:
        assert e.status in (400, 403, 404), f"{sql}: refused with a server error {e.code} {e.message}"
        return None


def check_world_intact(world, probe: str) -> None:
    alice = world.alice
    bodies = world.rows("SELECT body FROM chat.m ORDER BY id", who=alice)
    assert len(bodies) == ALICE_ROWS - 1 and all("SECRET" in b[0] for b in bodies), probe
    assert len(world.rows("SELECT id FROM chat.s", who=alice)) == ALICE_ROWS, probe
    assert len(world.rows("SELECT id FROM chat.p")) == ALICE_ROWS, probe  # root reads the shared table
    mine = world.sql("SELECT * FROM chat.mine ORDER BY id", who=world.bob)
    assert (why := reveals(mine)) is None, f"{probe}: bob's own table now holds {why}"
    assert [1] in [[int(r[0])] for r in mine[0]["rows"]], f"{probe}: bob's row 1 was deleted by a leak"


@pytest.mark.parametrize("shape", READ_SHAPES)
def test_reads_reveal_nothing(world, shape):
    for src in SCOPED + FORBIDDEN:
        sql = shape.format(src=src)
        results = run(world, sql)
        assert (why := reveals(results)) is None, f"{sql} revealed {why}"


@pytest.mark.parametrize("src", FORBIDDEN)
def test_forbidden_objects_are_refused_outright(world, src):
    with pytest.raises(KalamError):
        world.sql(f"SELECT * FROM {src}", who=world.bob)


@pytest.mark.parametrize("shape", WRITE_SHAPES)
def test_writes_reveal_and_change_nothing_of_others(world, shape):
    for src in SCOPED + FORBIDDEN:
        sql = shape.format(src=src)
        run(world, sql)
        check_world_intact(world, sql)


def test_soft_deleted_rows_stay_hidden_from_their_owner_too(world):
    assert [r[0] for r in world.rows("SELECT id FROM chat.m ORDER BY id", who=world.alice)] == \
        [str(i) for i in range(1, ALICE_ROWS)]


def test_execute_as_another_user_is_refused_for_a_regular_user(world):
    with pytest.raises(KalamError) as info:
        world.sql("EXECUTE AS USER 'alice' (SELECT * FROM chat.m)", who=world.bob)
    assert info.value.code == "PERMISSION_DENIED"


@pytest.mark.parametrize("fn", ["fts3_tokenizer('simple')", "load_extension('x')", "sqlite_version()",
                                "randomblob(8)", "changes()", "last_insert_rowid()", "readfile('/etc/passwd')"])
def test_dangerous_and_nondeterministic_functions_are_refused(world, fn):
    with pytest.raises(KalamError) as info:
        world.sql(f"SELECT {fn}", who=world.bob)
    assert info.value.code in ("INVALID_SQL", "PERMISSION_DENIED")


def test_cte_names_that_could_pose_as_internal_views_are_refused(world):
    for name in ['"chat.m@v"', '"system.users"', '"x.y"', '"a b"', '_kdb_users', 'sqlite_master']:
        with pytest.raises(KalamError) as info:
            world.sql(f"WITH {name} AS (SELECT 1) SELECT * FROM {name}", who=world.bob)
        assert info.value.code == "INVALID_SQL"


@pytest.mark.parametrize("src", ['"chat.m"', "_kdb_users", "sqlite_master", '"chat.p"', "chat.m"])
def test_a_rewrite_that_misses_a_table_fails_closed(world, monkeypatch, src):
    """Simulate the bug class itself: a compiler that leaves every table reference untouched (as
    the CTE-scoping bug did for some). SQLite's authorizer must then refuse the raw tables."""
    from kalamdb.engine import compile as compile_module

    monkeypatch.setattr(compile_module, "cte_in_scope", lambda table: True)
    world.db._compile_cache.clear()
    with pytest.raises(KalamError) as info:
        world.sql(f"SELECT * FROM {src}", who=world.bob)
    assert info.value.code in ("PERMISSION_DENIED", "TABLE_NOT_FOUND"), info.value
    for sql in (f"INSERT INTO chat.mine (id, v) VALUES (201, (SELECT COUNT(*) FROM {src}))",
                f"UPDATE chat.mine SET v = (SELECT COUNT(*) FROM {src}) WHERE id = 1"):
        with pytest.raises(KalamError):
            world.sql(sql, who=world.bob)
    monkeypatch.undo()
    world.db._compile_cache.clear()
    check_world_intact(world, src)
