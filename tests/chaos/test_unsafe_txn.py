"""The planted transaction bugs (KALAMDB_UNSAFE_TXN) behave as documented on a real server, and the
safe server does not: stale-reads answers a transaction's SELECTs before its writes are applied
(it does not see its own append), split-writes applies statements one by one (a failure in the
middle leaves the earlier ones applied). The chaos-level proof that the checker catches them is
tests/chaos/test_unsafe_txn_chaos.py."""

from __future__ import annotations

import pytest

from kalamdb.server.unsafe_txn import ENV, UnsafeTxn
from kalamdb.testing.single import start_server

SETUP = ["CREATE NAMESPACE IF NOT EXISTS chaos",
         "CREATE SHARED TABLE IF NOT EXISTS chaos.lists (k BIGINT PRIMARY KEY, v TEXT)",
         "INSERT INTO chaos.lists (k, v) VALUES (1, ''), (2, '')"]
READ_OWN_APPEND = ("BEGIN; UPDATE chaos.lists SET v = v || ' 7' WHERE k = 1; SELECT v FROM chaos.lists WHERE k = 1; "
                   "COMMIT")
HALF_FAILING = ("BEGIN; UPDATE chaos.lists SET v = v || ' 8' WHERE k = 2; INSERT INTO chaos.lists (k, v) "
                "VALUES (1, 'a duplicate key'); COMMIT")


def _run(mode: str | None) -> tuple[str, bool, str, str]:
    env = {ENV: mode} if mode else {}
    with start_server(env=env, log_level="info") as srv:
        for sql in SETUP:
            assert srv.sql(sql).ok
        own = srv.sql(READ_OWN_APPEND)
        assert own.ok, own
        half = srv.sql(HALF_FAILING)
        after = srv.sql("SELECT v FROM chaos.lists WHERE k = 2")
        return own.results[2]["rows"][0][0], half.ok, after.rows[0][0], srv.log_tail(200)


def test_safe_server_keeps_transactions_whole():
    seen, half_ok, after, log = _run(None)
    assert seen == " 7" and not half_ok and after == ""
    assert "UNSAFE MODE" not in log


def test_stale_reads_do_not_see_the_transactions_own_write():
    seen, _, _, log = _run("stale-reads")
    assert seen == ""  # read before the append was even proposed
    assert "UNSAFE MODE" in log


def test_split_writes_leave_the_first_statement_applied_when_the_second_fails():
    seen, half_ok, after, log = _run("split-writes")
    assert seen == " 7"  # statements still run in order
    assert not half_ok and after == " 8"  # the client heard "failed", yet the first append stayed
    assert "UNSAFE MODE" in log


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="must be one of stale-reads, split-writes"):
        UnsafeTxn("sometimes")
