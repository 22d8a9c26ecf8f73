"""Real process lifecycle: graceful SIGTERM, crash (SIGKILL) durability, restart keeps tokens valid."""

from __future__ import annotations

import random
import signal
import threading
import time

import pytest

from kalamdb.client import Client
from kalamdb.testing.single import start_server
from tests.server.helpers import scrape, wait_for


def create_table(server, ns: str) -> str:
    assert server.sql(f"CREATE NAMESPACE {ns}").ok
    assert server.sql(f"CREATE SHARED TABLE {ns}.acked (id INT PRIMARY KEY, v TEXT)").ok
    return f"{ns}.acked"


def ids_in(server, table: str) -> set[int]:
    resp = server.sql(f"SELECT id FROM {table}")
    assert resp.ok, resp
    return {int(row[0]) for row in resp.rows}


def write_until_stopped(server, table: str, start: int, acked: list[int], stop: threading.Event) -> None:
    """Insert ids start, start+1, ... recording each acknowledged one, until told to stop or cut off."""
    with Client(server.url, timeout=10) as c:
        i = start
        while not stop.is_set():
            try:
                resp = c.sql(f"INSERT INTO {table} (id, v) VALUES ($1, 'v')", [i])
            except OSError:
                return  # the server went away mid-request: that write was never acknowledged
            if resp.ok:
                acked.append(i)
            elif resp.http_status != 503:
                raise AssertionError(resp)
            i += 1


@pytest.mark.parametrize("seed", [11, 12])
def test_acknowledged_writes_survive_sigkill(fresh_server, seed):
    rng = random.Random(seed)
    table = create_table(fresh_server, "crash")
    acked: list[int] = []
    for round_no in range(3):
        stop = threading.Event()
        writers = [threading.Thread(target=write_until_stopped,
                                    args=(fresh_server, table, (round_no * 8 + w) * 100_000, acked, stop))
                   for w in range(8)]
        for t in writers:
            t.start()
        target = len(acked) + rng.randint(20, 200)
        wait_for(lambda target=target: len(acked) >= target, what=f"{target} acknowledged writes (seed={seed})")
        fresh_server.kill()  # SIGKILL while writers are mid-flight
        stop.set()
        for t in writers:
            t.join(timeout=30)
        fresh_server.restart()
        missing = set(acked) - ids_in(fresh_server, table)
        assert not missing, f"seed={seed} round={round_no}: acknowledged writes lost: {sorted(missing)[:10]}"


def test_single_write_then_immediate_sigkill(fresh_server):
    table = create_table(fresh_server, "single")
    for i in range(3):
        assert fresh_server.sql(f"INSERT INTO {table} (id, v) VALUES ($1, 'x')", [i]).ok
        fresh_server.kill()
        fresh_server.restart()
        assert i in ids_in(fresh_server, table)


def test_sigterm_finishes_in_flight_writes_and_exits_zero(fresh_server):
    table = create_table(fresh_server, "graceful")
    acked: list[int] = []
    stop = threading.Event()
    writers = [threading.Thread(target=write_until_stopped, args=(fresh_server, table, w * 100_000, acked, stop))
               for w in range(4)]
    for t in writers:
        t.start()
    wait_for(lambda: len(acked) >= 100, what="100 acknowledged writes")
    fresh_server.proc.send_signal(signal.SIGTERM)
    assert fresh_server.proc.wait(timeout=30) == 0
    stop.set()
    for t in writers:
        t.join(timeout=30)
    assert "stopped cleanly" in fresh_server.log_tail()
    fresh_server.restart()
    assert set(acked) <= ids_in(fresh_server, table)


HEAVY_READ = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


def test_sigterm_stops_a_long_read_at_once_with_a_clear_503(fresh_server):
    """A read may run for its whole time budget (15 s); a stop must not wait for it."""
    answers: list = []
    started = threading.Event()

    def read() -> None:
        with Client(fresh_server.url, timeout=60) as c:
            started.set()
            answers.append(c.sql(HEAVY_READ))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    started.wait(10)
    wait_for(lambda: scrape(fresh_server).get("kalamdb_sql_queue_depth", 0) >= 1, what="the heavy read running")
    t0 = time.monotonic()
    fresh_server.proc.send_signal(signal.SIGTERM)
    assert fresh_server.proc.wait(timeout=30) == 0
    took = time.monotonic() - t0
    reader.join(timeout=10)
    assert took < 5.0, f"the stop waited {took:.1f} s for a running read"
    (resp,) = answers
    assert resp.http_status == 503 and resp.error["code"] == "CLUSTER_UNAVAILABLE", resp
    assert "shutting down" in resp.error["message"] and "definite" in resp.error.get("details", ""), resp
    assert "stopped cleanly" in fresh_server.log_tail()


def test_token_survives_a_restart(fresh_server):
    with Client(fresh_server.url, user=None) as c:
        token = c.login("root", "")["access_token"]
    fresh_server.restart()
    with Client(fresh_server.url, user=None, token=token) as c:
        assert c.sql("SELECT 1 AS one").ok


def test_stream_rows_expire_through_a_replicated_command(tmp_path):
    server = start_server(tmp_path / "data", expiry_interval_ms=50)
    try:
        assert server.sql("CREATE NAMESPACE s").ok
        assert server.sql("CREATE STREAM TABLE s.ev (id INT PRIMARY KEY, body TEXT) WITH (TTL_SECONDS = 1)").ok
        inserted = server.sql("INSERT INTO s.ev (id, body) VALUES (1, 'short-lived')")
        assert inserted.ok and server.sql("SELECT id FROM s.ev").rows == [[1]]
        wait_for(lambda: server.sql("SELECT id FROM s.ev").rows == [], timeout=15, what="the row to expire")
        # the deletion was a command in the log, not a local clock decision at read time
        later = server.sql("CREATE NAMESPACE s2")
        assert later.raft_index >= inserted.raft_index + 2
    finally:
        server.kill()


def test_port_in_use_is_a_clear_startup_error(fresh_server, tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "kalamdb", "serve", "--data-dir", str(tmp_path / "other"),
                           "--host", "127.0.0.1", "--port", str(fresh_server.port)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "cannot listen" in done.stderr, done.stderr
    assert fresh_server.sql("SELECT 1 AS one").ok


def test_unreadable_database_file_is_a_clear_startup_error(tmp_path):
    import subprocess
    import sys

    data = tmp_path / "data"
    data.mkdir()
    (data / "state.sqlite").write_bytes(b"this is not a sqlite database" * 400)
    done = subprocess.run([sys.executable, "-m", "kalamdb", "serve", "--data-dir", str(data), "--port", "0"],
                          check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "cannot open the database" in done.stderr, done.stderr
