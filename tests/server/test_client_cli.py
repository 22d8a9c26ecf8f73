"""`kalamdb sql` against a real server: tables on success, exit status 1 on an API error."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys

from kalamdb.client_cli import Display, shell


def kalamdb_sql(server, *args: str, stdin: str | None = None, columns: int = 200) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALAMDB_")}
    env["COLUMNS"] = str(columns)
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
    lines = iter([f"CREATE NAMESPACE {unique_ns};", f"USE {unique_ns};",
                  "CREATE SHARED TABLE t (id INT PRIMARY KEY,", "name TEXT);",
                  "INSERT INTO t (id, name) VALUES (1, 'from-shell');", "SELECT name FROM t;", "\\q",
                  "SELECT 'never reached';"])
    with server.client() as client:
        shell(client, None, read_line=lambda prompt: next(lines))
    out = capsys.readouterr().out
    assert "from-shell" in out and "Inserted 1 row(s)" in out
    assert next(lines) == "SELECT 'never reached';"  # \q stopped the shell


WIDE_COLUMNS = [f"rather_long_column_name_{i}" for i in range(12)]


def _wide_table(server, ns: str) -> str:
    cols = ", ".join(f"{c} TEXT" for c in WIDE_COLUMNS[1:])
    values = ", ".join(f"'value-{i}'" for i in range(1, 12))
    server.sql(f"CREATE NAMESPACE {ns}; CREATE SHARED TABLE {ns}.wide ({WIDE_COLUMNS[0]} INT PRIMARY KEY, {cols}); "
               f"INSERT INTO {ns}.wide VALUES (1, {values})").raise_for_error()
    return f"SELECT * FROM {ns}.wide"


def _field_lines(out: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (line.partition(" | ") for line in out.splitlines()) if _}


def test_a_table_wider_than_the_terminal_switches_to_one_field_per_line(server, unique_ns):
    query = _wide_table(server, unique_ns)
    narrow = kalamdb_sql(server, query, columns=80)
    assert narrow.returncode == 0, narrow.stderr
    assert "-[ RECORD 1 ]" in narrow.stdout and "…" not in narrow.stdout
    fields = _field_lines(narrow.stdout)
    assert fields[WIDE_COLUMNS[0]] == "1" and fields[WIDE_COLUMNS[11]] == "value-11"
    assert "(1 row(s))" in narrow.stdout
    assert all(len(line) <= 80 for line in narrow.stdout.splitlines())
    wide = kalamdb_sql(server, query, columns=400)  # it fits: the usual table
    assert "-[ RECORD" not in wide.stdout and "value-11" in wide.stdout and "┃" in wide.stdout


def test_expanded_flag_always_uses_one_field_per_line(server):
    done = kalamdb_sql(server, "--expanded", "SELECT 1 AS one, 'x' AS two")
    assert done.returncode == 0, done.stderr
    assert "-[ RECORD 1 ]" in done.stdout and _field_lines(done.stdout) == {"one": "1", "two": "x"}


def test_timestamps_show_as_iso_8601_utc_and_json_keeps_the_wire_format(server, unique_ns):
    server.sql(f"CREATE NAMESPACE {unique_ns}; CREATE SHARED TABLE {unique_ns}.ev (id INT PRIMARY KEY, "
               f"at TIMESTAMP); INSERT INTO {unique_ns}.ev VALUES (1, '2026-12-01T06:20:00.123456Z'), "
               "(2, NULL)").raise_for_error()
    query = f"SELECT id, at FROM {unique_ns}.ev ORDER BY id"
    table = kalamdb_sql(server, query)
    assert "2026-12-01T06:20:00.123456Z" in table.stdout and "1796106000123456" not in table.stdout
    assert "NULL" in table.stdout
    raw = kalamdb_sql(server, "--json", query)
    assert "1796106000123456" in raw.stdout  # scripts get upstream's microseconds
    as_csv = kalamdb_sql(server, "--csv", query)
    assert as_csv.returncode == 0 and as_csv.stderr == ""
    assert list(csv.reader(io.StringIO(as_csv.stdout))) == [["id", "at"], ["1", "2026-12-01T06:20:00.123456Z"],
                                                          ["2", ""]]


def test_csv_errors_go_to_stderr_and_json_with_csv_is_refused(server):
    failed = kalamdb_sql(server, "--csv", "SELECT * FROM no_such_ns.t")
    assert failed.returncode == 1 and failed.stdout == "" and "TABLE_NOT_FOUND" in failed.stderr
    both = kalamdb_sql(server, "--csv", "--json", "SELECT 1")
    assert both.returncode == 2 and "either --json or --csv" in both.stderr


def test_shell_expanded_display_command(server, capsys):
    lines = iter(["\\x", "SELECT 1 AS one;", "\\x off", "SELECT 2 AS two;", "\\x sideways", "\\q"])
    display = Display(width=200)
    with server.client() as client:
        shell(client, None, display, read_line=lambda prompt: next(lines))
    out = capsys.readouterr().out
    assert "Expanded display is on." in out and "Expanded display is off." in out
    assert "one | 1" in out and "two | 2" not in out and "usage: \\x [on|off|auto]" in out
    assert display.expanded == "off"


def test_values_are_never_read_as_markup(server):
    done = kalamdb_sql(server, "SELECT '[bold]not bold[/bold]' AS v")
    assert "[bold]not bold[/bold]" in done.stdout
