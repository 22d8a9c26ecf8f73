"""Regression: the first parses of a process, made on two threads at once, must parse `$1` as a
parameter (membership chaos seeds 302 and 319: replicas diverged).

sqlglot registers a dialect class before giving it its tokenizer, so a thread that names the
dialect while another is still loading it parsed with the base tokenizer: `$1` became a column.
The parse cache kept that tree, and every later apply of the statement failed on that node alone.
The window is a few microseconds; these tests widen it deterministically by slowing sqlglot's
registry right after a dialect registers (a fresh interpreter per case, since dialects load once).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SLOW_REGISTRY = textwrap.dedent("""
    import threading, time
    from sqlglot.dialects import dialect as d

    REGISTERED = threading.Event()

    class SlowRegistry(dict):
        # a dialect is visible to every thread from here on, before its set-up is finished:
        # say so, and let the other threads run into that moment
        def __setitem__(self, key, value):
            super().__setitem__(key, value)
            if key == "postgres":
                REGISTERED.set()
                time.sleep(0.5)

    d._Dialect._classes = SlowRegistry(d._Dialect._classes)
    FIRST = "SELECT id FROM chaos.elements WHERE id = $1 "
    LATER = ["INSERT INTO chaos.elements (id) VALUES ($1 )", "UPDATE chaos.register SET v = $2 WHERE k = $1 ",
             "DELETE FROM chaos.bank WHERE id = $1 "]

    def in_threads(parse):
        \"\"\"One thread makes the process's first parse; the others parse while the dialect it loads
        is registered but not yet set up (if it is loaded then at all).\"\"\"
        trees = {}

        def first():
            trees[FIRST] = parse(FIRST)

        def later(sql):
            REGISTERED.wait(5)
            trees[sql] = parse(sql)

        threads = [threading.Thread(target=first)] + [threading.Thread(target=later, args=(s,)) for s in LATER]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return trees

    def columns_named_like_parameters(trees):
        from sqlglot import exp
        return sorted(sql for sql, tree in trees.items()
                      if any(c.name.startswith("$") for c in tree.find_all(exp.Column)))
""")


def _run(body: str) -> str:
    proc = subprocess.run([sys.executable, "-c", SLOW_REGISTRY + textwrap.dedent(body)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_the_widened_window_breaks_parsing_by_dialect_name():
    """The mutation (what the parse cache did before: name the dialect at first use, on whichever
    thread comes first) must go wrong under the widened window, else the next test proves nothing."""
    out = _run("""
        import sqlglot
        print(columns_named_like_parameters(in_threads(lambda sql: sqlglot.parse_one(sql, read="postgres"))))
    """)
    if out == "[]":
        pytest.skip("this sqlglot no longer publishes half-built dialects: the race is gone upstream")
    assert "$1" in out, out


def test_statements_first_parsed_while_another_thread_loads_the_dialect_keep_their_parameters():
    out = _run("""
        from kalamdb.sql.parser import ParseCache  # loads the dialects (sql/dialects.py)

        cache = ParseCache()
        trees = in_threads(cache.parse)
        print(columns_named_like_parameters(trees))
        from sqlglot import exp
        print(sorted(len(list(t.find_all(exp.Parameter))) for t in trees.values()))
    """)
    wrong, parameters = out.splitlines()
    assert wrong == "[]", f"a statement parsed on a thread read $n as a column: {wrong}"
    assert parameters == "[1, 1, 1, 2]", out
