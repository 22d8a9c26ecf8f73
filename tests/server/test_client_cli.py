"""`kalamdb sql` against a real server: tables on success, exit status 1 on an API error."""

from __future__ import annotations

import os
import subprocess
import sys


def kalamdb_sql(server, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALAMDB_")}
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "kalamdb", "sql", "--url", server.url, *args], check=False,
                          capture_output=True, text=True, input=stdin, env=env, timeout=60)


def test_one_statement_prints_a_table(server, unique_ns):
    assert server.sql(f"CREATE NAMESPACE {unique_ns}; CREATE SHARED TABLE {unique_ns}.t (id INT PRIMARY KEY, "
                      f"name TEXT); INSERT INTO {unique_ns}.t (id, name) VALUES (7, 'seven')").ok
    done = kalamdb_sql(server, f"SELECT id, name FROM {unique_ns}.t")
    assert done.returncode == 0, done.stderr
    assert "seven" in done.stdout and "name" in done.stdout and "(1 row(s))" in done.stdout


def test_json_output_and_stdin(server):
    done = kalamdb_sql(server, "--json", "-", stdin="SELECT 1 AS one")
    assert done.returncode == 0, done.stderr
    assert '"status": "success"' in done.stdout


def test_api_error_exits_one_with_the_code(server):
    done = kalamdb_sql(server, "SELECT * FROM no_such_ns.t")
    assert done.returncode == 1
    assert "TABLE_NOT_FOUND" in done.stdout


def test_wrong_password_exits_one(server):
    done = kalamdb_sql(server, "--password", "wrong", "SELECT 1")
    assert done.returncode == 1 and "INVALID_CREDENTIALS" in done.stdout


def test_unreachable_server_is_a_clear_error(server):
    done = subprocess.run([sys.executable, "-m", "kalamdb", "sql", "--url", "http://127.0.0.1:1", "SELECT 1"],
                          check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "cannot reach" in done.stderr


def test_interactive_shell_runs_statements_across_lines_and_use(server, unique_ns, capsys):
    from kalamdb.client_cli import shell

    lines = iter([f"CREATE NAMESPACE {unique_ns};", f"USE {unique_ns};",
                  "CREATE SHARED TABLE t (id INT PRIMARY KEY,", "name TEXT);",
                  "INSERT INTO t (id, name) VALUES (1, 'from-shell');", "SELECT name FROM t;", "\\q",
                  "SELECT 'never reached';"])
    with server.client() as client:
        shell(client, None, False, read_line=lambda prompt: next(lines))
    out = capsys.readouterr().out
    assert "from-shell" in out and "Inserted 1 row(s)" in out
    assert next(lines) == "SELECT 'never reached';"  # \q stopped the shell
