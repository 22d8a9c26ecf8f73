"""`kalamdb sql`: run one statement (or a batch) and print the answer, or an interactive shell."""

from __future__ import annotations

import os
import sys

import click

from kalamdb.client import Client, Response


def render(resp: Response, *, as_json: bool) -> int:
    """Print a response as rich tables (or JSON); returns the exit code (1 on an API error)."""
    if as_json:
        import orjson

        click.echo(orjson.dumps(dict(resp), option=orjson.OPT_INDENT_2).decode())
        return 0 if resp.ok else 1
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not resp.ok:
        err = resp.error or {}
        console.print(f"[bold red]{err.get('code', 'ERROR')}[/]: {err.get('message', '')}")
        if err.get("details"):
            console.print(f"  {err['details']}")
        return 1
    for result in resp.results:
        schema = result.get("schema")
        if schema is not None and "rows" in result:
            table = Table(show_lines=False)
            for col in schema:
                table.add_column(f"{col['name']}\n[dim]{col.get('data_type', '')}[/]")
            for row in result["rows"]:
                table.add_row(*("NULL" if v is None else str(v) for v in row))
            console.print(table)
            console.print(f"[dim]({result.get('row_count', len(result['rows']))} row(s))[/]")
        elif result.get("message"):
            console.print(result["message"])
    extra = f", raft index {resp.raft_index}" if resp.raft_index is not None else ""
    console.print(f"[dim]took {resp.get('took', 0):.3f} ms{extra}[/]")
    return 0


def shell(client: Client, namespace: str | None, as_json: bool, read_line=input) -> None:
    """Read statements ending with ';' and run them; `\\q` or EOF quits, `USE ns` switches namespace."""
    buffer: list[str] = []
    while True:
        try:
            line = read_line(f"kalamdb{'/' + namespace if namespace else ''}{'>' if not buffer else '.'} ")
        except (EOFError, KeyboardInterrupt):
            click.echo()
            return
        if not buffer and line.strip() in ("\\q", "quit", "exit"):
            return
        buffer.append(line)
        text = "\n".join(buffer).strip()
        if not text.endswith(";"):
            continue
        buffer.clear()
        words = text.rstrip(";").split()
        if len(words) == 2 and words[0].upper() == "USE":
            namespace = words[1]
        try:
            render(client.sql(text, namespace_id=namespace), as_json=as_json)
        except OSError as exc:
            click.echo(f"connection failed: {exc}", err=True)


@click.command("sql")
@click.argument("statement", required=False)
@click.option("--url", default=lambda: os.environ.get("KALAMDB_URL", "http://127.0.0.1:8080"),
              show_default="KALAMDB_URL or http://127.0.0.1:8080", help="Server URL.")
@click.option("--user", "-u", default="root", show_default=True)
@click.option("--password", "-p", envvar="KALAMDB_PASSWORD", default="",
              help="Password (or env KALAMDB_PASSWORD).")
@click.option("--namespace", "-n", help="Namespace for unqualified table names.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON answer.")
def sql_command(statement, url, user, password, namespace, as_json) -> None:
    """Run STATEMENT (use '-' to read it from stdin), or start an interactive shell."""
    client = Client(url, user=user, password=password)
    try:
        if statement is None and sys.stdin.isatty():
            shell(client, namespace, as_json)
            return
        text = sys.stdin.read() if statement in (None, "-") else statement
        try:
            resp = client.sql(text, namespace_id=namespace)
        except OSError as exc:
            raise click.ClickException(f"cannot reach {url}: {exc}") from None
        sys.exit(render(resp, as_json=as_json))
    finally:
        client.close()
