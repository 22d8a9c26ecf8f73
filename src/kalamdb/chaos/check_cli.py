"""`kalamdb check FILE`: the linearizability verdict on a recorded history, with the exit code a
script can act on (0 linearizable, 1 not, 3 unknown, 2 the file or the options are wrong)."""

from __future__ import annotations

import sys

import click

from kalamdb.chaos.history import HistoryError
from kalamdb.chaos.linearizability import DEFAULT_MAX_STATES, Verdict, check_operations
from kalamdb.chaos.models import guess_model, model_for
from kalamdb.chaos.parsers import load_history

EXIT_CODES = {Verdict.LINEARIZABLE: 0, Verdict.NOT_LINEARIZABLE: 1, Verdict.UNKNOWN: 3}
EXIT_USAGE = 2


# Functions of `kalamdb chaos` workloads that no linearizability model checks (set, bank), and
# those of the other model.
OTHER_WORKLOAD_FUNCTIONS = frozenset({"add", "set-read", "transfer", "bank-read", "read", "write", "cas",
                                      "get", "put", "append"})


@click.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--model", "model_name", type=click.Choice(["auto", "register", "kv"]), default="auto",
              show_default=True, help="sequential specification (auto: kv if the history has get/put/append)")
@click.option("--format", "fmt", type=click.Choice(["auto", "jepsen", "edn", "jsonl"]), default="auto",
              show_default=True, help="history format (auto: from the first line)")
@click.option("--timeout", type=click.FloatRange(min=0.0, min_open=True), default=60.0, show_default=True,
              help="seconds of search before answering UNKNOWN")
@click.option("--max-states", type=click.IntRange(min=1), default=DEFAULT_MAX_STATES, show_default=True,
              help="memoized search states before answering UNKNOWN (bounds memory)")
def check_command(file: str, model_name: str, fmt: str, timeout: float, max_states: int) -> None:
    """Check that the history in FILE is linearizable."""
    try:
        ops = load_history(file, fmt)
    except HistoryError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    model = guess_model(ops) if model_name == "auto" else model_for(model_name)
    # A chaos run records several workloads in one history: check the operations this model speaks
    # and skip those of the other workloads (unknown functions still fail with their line).
    other = sorted({op.f for op in ops if op.f in OTHER_WORKLOAD_FUNCTIONS and op.f not in model.functions})
    if other:
        ops = [op for op in ops if op.f not in other]
        click.echo(f"{file}: checking the {len(ops)} {'/'.join(sorted(model.functions))} operations; "
                   f"skipped other workloads' operations ({', '.join(other)})", err=True)
        if not ops:
            click.echo(f"error: {file}: no operation the {model.name} model checks", err=True)
            sys.exit(EXIT_USAGE)
    try:
        result = check_operations(ops, model, timeout=timeout, max_states=max_states)
    except ValueError as exc:  # an operation the model cannot express
        click.echo(f"error: {file}: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    click.echo(f"{file}: {result.summary()} [model {model.name}]")
    if result.counterexample is not None:
        click.echo(result.counterexample.format())
    sys.exit(EXIT_CODES[result.verdict])
