"""Literal lifting (sql/templates.py) and the IN-list measure the parser refuses oversized lists by."""

from __future__ import annotations

import pytest

from kalamdb.sql.templates import MAX_LIFTED, longest_in_list, parameterize_conditions


@pytest.mark.parametrize("sql, n", [
    ("SELECT 1", 0),
    ("SELECT * FROM t WHERE id IN (1)", 1),
    ("SELECT * FROM t WHERE id IN (1, 2, 3) OR v IN ('a', 'b')", 3),
    ("SELECT * FROM t WHERE id IN (f(1, 2), 3)", 2),  # a call's arguments are not items
    ("SELECT * FROM t WHERE id IN (SELECT a FROM u WHERE b IN (1, 2, 3, 4))", 4),
    ("SELECT * FROM t WHERE v IN ('a,b', '(', ')', 'c')", 4),  # commas and parentheses in strings
    ("SELECT * FROM t WHERE id in (1,2)", 2),  # any case
    ("SELECT * FROM t WHERE id IN (1, 2, 3", 3),  # unclosed: still measured
])
def test_longest_in_list_counts_the_items_of_the_longest_list(sql, n):
    assert longest_in_list(sql) == n


def test_literals_are_lifted_up_to_the_limit_and_kept_in_the_text_beyond_it():
    lifted = parameterize_conditions(f"DELETE FROM t WHERE id IN ({','.join(map(str, range(MAX_LIFTED)))})")
    assert lifted is not None and len(lifted[1]) == MAX_LIFTED
    assert parameterize_conditions(f"DELETE FROM t WHERE id IN ({','.join(map(str, range(MAX_LIFTED + 1)))})") is None
