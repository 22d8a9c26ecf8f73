"""`kalamdb sql`: run one statement (or a batch) and print the answer, or an interactive shell.

Answers print as tables. A table wider than the terminal switches to the expanded display, one
field per line (psql's `\\x auto`); `--expanded` (or `\\x on` in the shell) always uses it. TIMESTAMP
cells show as ISO 8601 in UTC. `--json` (the raw answer, wire encoding unchanged) and `--csv` are
for scripts.
"""

from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass

import click

from kalamdb.cells import iso_utc
from kalamdb.client import Client, Response

FORMATS = ("table", "json", "csv")
EXPANDED_MODES = ("auto", "on", "off")


@dataclass
class Display:
    """How answers are printed: `fmt` table | json | csv; `expanded` auto (one field per line when
    a table would not fit the width) | on | off; `width` the terminal's unless given."""

    fmt: str = "table"
    expanded: str = "auto"
    width: int | None = None


def format_cell(value: object, data_type: str | None) -> str:
    """A cell as the shell shows it: NULL, true/false, ISO 8601 UTC for a TIMESTAMP, else its text."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if data_type == "Timestamp" and isinstance(value, int):
        return iso_utc(value)
    return str(value)


def render(resp: Response, display: Display | None = None, *, console=None) -> int:
    """Print a response; returns the exit code (1 on an API error)."""
    display = display or Display()
    if display.fmt == "json":
        import orjson

        click.echo(orjson.dumps(dict(resp), option=orjson.OPT_INDENT_2).decode())
        return 0 if resp.ok else 1
    if display.fmt == "csv":
        return _render_csv(resp)
    from rich.console import Console
    from rich.markup import escape

    console = console or Console(width=display.width)
    if not resp.ok:
        err = resp.error or {}
        console.print(f"[bold red]{escape(str(err.get('code', 'ERROR')))}[/]: ", end="")
        console.print(err.get("message", ""), markup=False, highlight=False)
        if err.get("details"):
            console.print(f"  {err['details']}", markup=False, highlight=False)
        return 1
    for result in resp.results:
        schema = result.get("schema")
        if schema is not None and "rows" in result:
            _render_rows(console, schema, result["rows"], display.expanded)
            console.print(f"[dim]({result.get('row_count', len(result['rows']))} row(s))[/]")
        elif result.get("message"):
            console.print(result["message"], markup=False, highlight=False)
    extra = f", raft index {resp.raft_index}" if resp.raft_index is not None else ""
    console.print(f"[dim]took {resp.get('took', 0):.3f} ms{extra}[/]")
    return 0


def _render_rows(console, schema: list[dict], rows: list[list], expanded: str) -> None:
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    types = [c.get("data_type") for c in schema]
    cells = [[format_cell(v, types[i] if i < len(types) else None) for i, v in enumerate(row)] for row in rows]
    table = Table(show_lines=False)
    for col in schema:
        header = Text(col["name"])
        header.append(f"\n{col.get('data_type', '')}", style="dim")
        table.add_column(header)
    for row in cells:
        table.add_row(*(Text(c) for c in row))  # Text: a value is never read as rich markup
    if expanded == "auto":
        natural = Measurement.get(console, console.options.update_width(1 << 20), table).maximum
        expanded = "on" if natural > console.width and len(schema) > 1 else "off"
    if expanded == "off":
        console.print(table)
        return
    names = [c["name"] for c in schema]
    name_width = max(len(n) for n in names)
    value_width = max([len(c) for row in cells for c in row] + [1])
    total = min(name_width + 3 + value_width, console.width)
    for number, row in enumerate(cells, 1):
        head = f"-[ RECORD {number} ]"
        if len(head) <= name_width + 1:  # a '+' above the ' | ' separator, as psql draws it
            head = head.ljust(name_width + 1, "-") + "+"
        head = head.ljust(max(total, len(head) + 1), "-")
        console.print(head, markup=False, highlight=False, soft_wrap=True)
        for name, value in zip(names, row, strict=False):
            console.print(f"{name.ljust(name_width)} | {value}", markup=False, highlight=False, soft_wrap=True)


def _render_csv(resp: Response) -> int:
    """Each result's rows as CSV on stdout (header first; NULL as an empty field); messages and
    errors on stderr, so stdout holds only the data."""
    if not resp.ok:
        err = resp.error or {}
        click.echo(f"{err.get('code', 'ERROR')}: {err.get('message', '')}", err=True)
        return 1
    out = csv.writer(sys.stdout, lineterminator="\n")
    for result in resp.results:
        schema = result.get("schema")
        if schema is not None and "rows" in result:
            types = [c.get("data_type") for c in schema]
            out.writerow([c["name"] for c in schema])
            for row in result["rows"]:
                out.writerow(["" if v is None else format_cell(v, types[i] if i < len(types) else None)
                              for i, v in enumerate(row)])
        elif result.get("message"):
            click.echo(result["message"], err=True)
    sys.stdout.flush()
    return 0


def _expanded_command(display: Display, args: list[str]) -> str:
    """`\\x` toggles the expanded display; `\\x on|off|auto` sets it. Returns what to tell the user."""
    if not args:
        display.expanded = "off" if display.expanded == "on" else "on"
    elif len(args) == 1 and args[0].lower() in EXPANDED_MODES:
        display.expanded = args[0].lower()
    else:
        return "usage: \\x [on|off|auto]"
    if display.expanded == "auto":
        return "Expanded display is used automatically."
    return f"Expanded display is {display.expanded}."


def shell(client: Client, namespace: str | None, display: Display | None = None, read_line=input) -> None:
    """Read statements ending with ';' and run them; `\\q` or EOF quits, `USE ns` switches namespace,
    `\\x [on|off|auto]` sets the expanded display, `\\subscribe <sql>` watches a live query."""
    display = display or Display()
    buffer: list[str] = []
    while True:
        try:
            line = read_line(f"kalamdb{'/' + namespace if namespace else ''}{'>' if not buffer else '.'} ")
        except (EOFError, KeyboardInterrupt):
            click.echo()
            return
        if not buffer and line.strip() in ("\\q", "quit", "exit"):
            return
        if not buffer and line.strip().startswith("\\"):
            word, *args = line.strip().split()
            if word == "\\x":
                click.echo(_expanded_command(display, args))
            elif word == "\\subscribe":
                _subscribe_command(client, line.strip()[len(word):])
            else:
                click.echo(f"unknown command {word}: \\x [on|off|auto] sets the expanded display, "
                           "\\subscribe <sql> watches a live query, \\q quits")
            continue
        buffer.append(line)
        text = "\n".join(buffer).strip()
        if not text.endswith(";"):
            continue
        buffer.clear()
        words = text.rstrip(";").split()
        if len(words) == 2 and words[0].upper() == "USE":
            namespace = words[1]
        try:
            render(client.sql(text, namespace_id=namespace), display)
        except OSError as exc:
            click.echo(f"connection failed: {exc}", err=True)


def _subscribe_command(client: Client, sql: str) -> None:
    """`\\subscribe SELECT ... FROM ns.table [WHERE ...]`: print rows and changes until Ctrl-C."""
    from kalamdb.live.watch import run_watch

    sql = sql.strip().rstrip(";").strip()
    if not sql:
        click.echo("usage: \\subscribe SELECT * FROM namespace.table [WHERE ...]")
        return
    creds = client.credentials
    run_watch(client.url, sql, user=creds.user, password=creds.password, token=creds.token, out=click.echo)


@click.command("sql")
@click.argument("statement", required=False)
@click.option("--url", default=lambda: os.environ.get("KALAMDB_URL", "http://127.0.0.1:8080"),
              show_default="KALAMDB_URL or http://127.0.0.1:8080", help="Server URL.")
@click.option("--user", "-u", default="root", show_default=True)
@click.option("--password", "-p", envvar="KALAMDB_PASSWORD", default="",
              help="Password (or env KALAMDB_PASSWORD).")
@click.option("--namespace", "-n", help="Namespace for unqualified table names.")
@click.option("--expanded", "-x", is_flag=True,
              help="One field per line, always (default: only when a table is wider than the terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON answer (wire encoding).")
@click.option("--csv", "as_csv", is_flag=True, help="Print rows as CSV (messages and errors on stderr).")
def sql_command(statement, url, user, password, namespace, expanded, as_json, as_csv) -> None:
    """Run STATEMENT (use '-' to read it from stdin), or start an interactive shell (where
    `\\subscribe <sql>` watches a live query)."""
    if as_json and as_csv:
        raise click.UsageError("give either --json or --csv, not both")
    display = Display(fmt="json" if as_json else "csv" if as_csv else "table", expanded="on" if expanded else "auto")
    client = Client(url, user=user, password=password)
    try:
        if statement is None and sys.stdin.isatty():
            shell(client, namespace, display)
            return
        text = sys.stdin.read() if statement in (None, "-") else statement
        try:
            resp = client.sql(text, namespace_id=namespace)
        except OSError as exc:
            raise click.ClickException(f"cannot reach {url}: {exc}") from None
        sys.exit(render(resp, display))
    finally:
        client.close()
