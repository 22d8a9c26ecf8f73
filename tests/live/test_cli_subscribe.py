"""`\\subscribe <sql>` in the `kalamdb sql` shell: initial rows then one line per change."""

import threading

import pytest

from kalamdb.client import Client
from kalamdb.client_cli import shell
from kalamdb.live.watch import run_watch
from kalamdb.testing.waiting import wait_for


def test_watch_prints_rows_and_changes(server, unique_ns):
    table = f"{unique_ns}.t"
    assert server.sql(f"CREATE NAMESPACE {unique_ns}").ok
    assert server.sql(f"CREATE SHARED TABLE {table} (id BIGINT PRIMARY KEY, body TEXT)").ok
    assert server.sql(f"INSERT INTO {table} (id, body) VALUES (1, 'first')").ok
    lines: list[str] = []

    def writer() -> None:
        wait_for(lambda: any(line.startswith("+ ") for line in lines), timeout=10, what="the initial row")
        assert server.sql(f"INSERT INTO {table} (id, body) VALUES (2, 'a  b')").ok
        assert server.sql(f"UPDATE {table} SET body = 'second' WHERE id = 2").ok
        assert server.sql(f"DELETE FROM {table} WHERE id = 1").ok

    t = threading.Thread(target=writer)
    t.start()
    run_watch(server.url, f"SELECT * FROM {table}", user="root", password="", token=None, out=lines.append,
              max_events=3)
    t.join()
    assert lines == ["subscribed (id, body); Ctrl-C stops",
                     '+ {"id":"1","body":"first"}',
                     '+ {"id":"2","body":"a  b"}',
                     '~ {"id":"2","body":"second"}  was {"id":"2","body":"a  b"}',
                     '- {"id":"1","body":"first"}']


def test_shell_subscribe_errors_return_to_the_prompt(server, capsys):
    lines = iter(["\\subscribe SELECT * FROM nowhere", "\\subscribe", "\\q"])
    with Client(server.url) as client:
        shell(client, None, read_line=lambda prompt: next(lines))
    out = capsys.readouterr().out
    assert "error: INVALID_SQL: Invalid SQL: Query must use namespace.table format" in out
    assert "usage: \\subscribe SELECT * FROM namespace.table [WHERE ...]" in out


@pytest.fixture(autouse=True)
def _no_ambient_url(monkeypatch):
    monkeypatch.delenv("KALAMDB_URL", raising=False)
