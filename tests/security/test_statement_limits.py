"""Resource limits of one statement (engine/limits.py): each answers quickly with an error that
names the limit, and the engine keeps serving afterwards."""

from __future__ import annotations

import time

import pytest

from kalamdb.errors import KalamError
from kalamdb.sql.templates import MAX_IN_LIST_ITEMS


@pytest.mark.parametrize("expr", ["printf('%.*c', 2000000000, 'x')", "format('%2000000000d', 1)",
                                  "printf('%.*c', 200000, 'x')"])
def test_printf_with_a_huge_width_is_refused_at_once(world, expr):
    started = time.monotonic()
    with pytest.raises(KalamError) as info:
        world.sql(f"SELECT {expr}", who=world.bob)
    assert "width or precision" in info.value.message
    assert time.monotonic() - started < 1.0


def test_printf_still_formats(world):
    assert world.rows("SELECT printf('%05d-%s', 42, 'x'), format('%.2f', 3.14159)", who=world.bob) == \
        [["00042-x", "3.14"]]


BIG_REPLACE = "replace(printf('%.*c', 90000, 'x'), 'x', printf('%.*c', 100, 'y'))"


@pytest.mark.parametrize("expr", ["zeroblob(50000000)", BIG_REPLACE])
def test_oversized_values_are_refused_before_they_are_built(world, expr):
    started = time.monotonic()
    with pytest.raises(KalamError) as info:
        world.sql(f"INSERT INTO chat.mine (id, v) VALUES (900, {expr})", who=world.bob)
    assert "too big" in info.value.message and "bytes" in info.value.message
    assert time.monotonic() - started < 2.0
    assert world.rows("SELECT COUNT(*) FROM chat.mine", who=world.bob) == [["1"]]


def test_an_in_list_at_the_limit_is_answered_correctly_within_seconds(world):
    """Issue 11: 10,000 IN items took 13.7 s to compile (quadratic), and later 1.6 s, because every
    item was lifted into a named parameter and SQLite looks each name up among the ones before it.
    Beyond MAX_LIFTED the literals stay in the text, and the whole statement costs ~0.5 s."""
    items = ",".join(str(i) for i in range(1, MAX_IN_LIST_ITEMS + 1))
    world.sql("INSERT INTO chat.mine (id, v) VALUES (2, 'two'), (3, 'three')", who=world.bob)
    started = time.monotonic()
    assert world.rows(f"SELECT COUNT(*) FROM chat.mine WHERE id IN ({items})", who=world.bob) == [["3"]]
    world.sql(f"DELETE FROM chat.mine WHERE id IN ({items}) AND id > 1", who=world.bob)
    assert time.monotonic() - started < 8.0  # ~1 s on a quiet machine; the quadratic path took 3+
    assert world.rows("SELECT id FROM chat.mine", who=world.bob) == [["1"]]


@pytest.mark.parametrize("n", [MAX_IN_LIST_ITEMS + 1, 100_000])
@pytest.mark.parametrize("shape", ["SELECT id FROM chat.mine WHERE id IN ({})",
                                   "DELETE FROM chat.mine WHERE id IN ({})",
                                   "UPDATE chat.mine SET v = 'x' WHERE id NOT IN ({}) AND id > 5",
                                   "SELECT id FROM chat.mine WHERE $1 = 1 AND id IN ({})"])
def test_a_longer_in_list_is_refused_before_it_is_parsed(world, n, shape):
    items = ",".join(str(i) for i in range(n))
    started = time.monotonic()
    with pytest.raises(KalamError) as info:
        world.sql(shape.format(items), who=world.bob)
    assert info.value.code == "INVALID_SQL"
    assert f"has {n} items; at most {MAX_IN_LIST_ITEMS}" in info.value.message
    assert time.monotonic() - started < 2.0  # 100,000 items took 47-94 s before the limit
    assert world.rows("SELECT v FROM chat.mine", who=world.bob) == [["start"]]
