"""Resource limits of one statement (engine/limits.py): each answers quickly with an error that
names the limit, and the engine keeps serving afterwards."""

from __future__ import annotations

import time

import pytest

from kalamdb.errors import KalamError


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
