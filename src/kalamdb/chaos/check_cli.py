"""`kalamdb check FILE`: the verdict on a recorded history, with the exit code a script can act on.

Single-object models (`register`, `kv`) are checked for linearizability (0 linearizable, 1 not,
3 unknown); transactional models (`list-append`, `rw-register`) for isolation anomalies in the
manner of Elle (0 valid, 1 an anomaly the consistency model forbids, 3 unknown). 2: the file or
the options are wrong (the message names file and line)."""

from __future__ import annotations

import re
import sys

import click

from kalamdb.chaos.elle.check import DEFAULT_MAX_EDGES, TXN_MODELS, check_txns
from kalamdb.chaos.elle.consistency import DEFAULT_MODEL, MODELS
from kalamdb.chaos.elle.history import parse_txn_history, read_text
from kalamdb.chaos.history import HistoryError
from kalamdb.chaos.linearizability import DEFAULT_MAX_STATES, Verdict, check_operations
from kalamdb.chaos.models import guess_model, model_for
from kalamdb.chaos.parsers import load_history

EXIT_CODES = {Verdict.LINEARIZABLE: 0, Verdict.NOT_LINEARIZABLE: 1, Verdict.UNKNOWN: 3}
TXN_EXIT_CODES = {"VALID": 0, "INVALID": 1, "UNKNOWN": 3}
EXIT_USAGE = 2


# Functions of `kalamdb chaos` workloads that no linearizability model checks (set, bank, txn), and
# those of the other model.
OTHER_WORKLOAD_FUNCTIONS = frozenset({"add", "set-read", "transfer", "bank-read", "read", "write", "cas",
                                      "get", "put", "append", "txn", "rw-txn"})
_TXN_HINT = re.compile(r'"f"\s*:\s*"(?:rw-)?txn"|:f\s+:txn|:value\s+\[\[:(?:append|r|w)\s')


def sniff_txn_model(text: str) -> str | None:
    """list-append or rw-register when the history holds transactions (looked for in its first
    megabyte), else None."""
    head = text[:1 << 20]
    if not _TXN_HINT.search(head):
        return None
    if re.search(r'"f"\s*:\s*"txn"', head) or ":f :txn" in head or ":value [[:" in head:
        return "list-append" if re.search(r'"append"|:append\b', head) else "rw-register"
    return "rw-register"


@click.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--model", "model_name", type=click.Choice(["auto", "register", "kv", *TXN_MODELS]), default="auto",
              show_default=True, help="what the history's operations mean (auto: list-append or rw-register for "
              "transactions, kv if the history has get/put/append, else register)")
@click.option("--format", "fmt", type=click.Choice(["auto", "jepsen", "edn", "jsonl"]), default="auto",
              show_default=True, help="history format (auto: from the first line; .gz files are decompressed "
              "for the transactional models)")
@click.option("--timeout", type=click.FloatRange(min=0.0, min_open=True), default=60.0, show_default=True,
              help="seconds of search before answering UNKNOWN")
@click.option("--max-states", type=click.IntRange(min=1), default=DEFAULT_MAX_STATES, show_default=True,
              help="linearizability: memoized search states before answering UNKNOWN (bounds memory)")
@click.option("--consistency", type=click.Choice(list(MODELS)), default=DEFAULT_MODEL, show_default=True,
              help="transactional models: the consistency model the history must satisfy")
@click.option("--cycle-search-timeout", type=click.FloatRange(min=0.0, min_open=True), default=1.0,
              show_default=True, help="transactional models: seconds to look for one anomaly class in one "
              "strongly connected component before falling back to any cycle there")
@click.option("--max-edges", type=click.IntRange(min=1), default=DEFAULT_MAX_EDGES, show_default=True,
              help="transactional models: dependency-graph edges before answering UNKNOWN (bounds memory)")
@click.option("--assume", default=None, metavar="LIST",
              help="rw-register: comma-separated version-order assumptions, from wfr and linearizable "
              "(default: what --consistency guarantees; empty for none)")
@click.option("--limit", type=click.IntRange(min=0), default=5, show_default=True,
              help="transactional models: explained cases shown per anomaly")
def check_command(file: str, model_name: str, fmt: str, timeout: float, max_states: int, consistency: str,
                  cycle_search_timeout: float, max_edges: int, assume: str | None, limit: int) -> None:
    """Check the history in FILE: linearizability (register, kv) or transactional isolation
    anomalies (list-append, rw-register)."""
    if model_name in TXN_MODELS or model_name == "auto":
        try:
            text = read_text(file)
        except HistoryError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        txn_model = model_name if model_name in TXN_MODELS else sniff_txn_model(text)
        if txn_model is not None:
            _check_txns(file, text, txn_model, fmt, consistency, timeout, cycle_search_timeout, max_edges,
                        assume, limit)
    _check_linearizable(file, model_name, fmt, timeout, max_states)


def _check_txns(file: str, text: str, model: str, fmt: str, consistency: str, timeout: float,
                cycle_search_timeout: float, max_edges: int, assume: str | None, limit: int) -> None:
    if fmt == "jepsen":
        click.echo(f"error: {file}: the jepsen log format cannot hold transactions; use edn or jsonl", err=True)
        sys.exit(EXIT_USAGE)
    try:
        txns, skipped = parse_txn_history(text, fmt, file, model)
    except HistoryError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    if skipped:
        click.echo(f"{file}: checking the {len(txns)} txn operations; skipped {skipped} events of other "
                   "workloads", err=True)
    if not txns:
        click.echo(f"error: {file}: no txn operation to check", err=True)
        sys.exit(EXIT_USAGE)
    assumptions = None if assume is None else [a.strip() for a in assume.split(",") if a.strip()]
    try:
        result = check_txns(txns, model=model, consistency=consistency, timeout=timeout,
                            cycle_search_timeout=cycle_search_timeout, max_edges=max_edges, assumptions=assumptions)
    except ValueError as exc:
        click.echo(f"error: {file}: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    click.echo(f"{file}: {result.summary()}")
    details = result.format(limit=limit)
    if details:
        click.echo(details)
    sys.exit(TXN_EXIT_CODES[result.verdict])


def _check_linearizable(file: str, model_name: str, fmt: str, timeout: float, max_states: int) -> None:
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
