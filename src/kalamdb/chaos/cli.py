"""`kalamdb chaos`: one chaos run against a fresh local cluster, with a progress bar; exit 0 only
when every checker passes, 1 on a violation, 3 when a checker ran out of budget (unknown), 2 on a
usage or setup error. The same --seed replays the same nemesis schedule."""

from __future__ import annotations

import random
import sys

import click

from kalamdb.chaos.nemesis import DEFAULT_FAULTS, FAULT_KINDS
from kalamdb.chaos.runner import EXIT_ERROR, ChaosConfig, run_chaos, schedule_for
from kalamdb.chaos.workloads import WORKLOAD_NAMES
from kalamdb.live.service import UNSAFE_MODES as UNSAFE_LIVE_MODES
from kalamdb.server.unsafe_txn import MODES as UNSAFE_TXN_MODES
from kalamdb.testing.cluster import NETWORK_MODES


def _csv(kinds: tuple[str, ...], what: str):
    def parse(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
        items = [v.strip() for v in value.split(",") if v.strip()]
        bad = [v for v in items if v not in kinds]
        if bad:
            raise click.BadParameter(f"unknown {what} {', '.join(bad)}; choose from {', '.join(kinds)}")
        if not items and what == "workload":
            raise click.BadParameter("at least one workload is needed")
        return items
    return parse


@click.command("chaos")
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True, help="cluster size")
@click.option("--time", "time_s", type=click.FloatRange(min=1.0), default=60.0, show_default=True,
              help="seconds of workload under faults")
@click.option("--workload", default="register,set,bank", show_default=True,
              callback=_csv(WORKLOAD_NAMES, "workload"), help="comma-separated workloads")
@click.option("--faults", default=",".join(DEFAULT_FAULTS), show_default=True, callback=_csv(FAULT_KINDS, "fault"),
              help=f"comma-separated fault kinds (empty: none); all kinds: {','.join(FAULT_KINDS)}")
@click.option("--seed", type=int, default=None, help="seed of every random choice (default: random, printed)")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="run folder (default: chaos-runs/seed-<seed>)")
@click.option("--unsafe-local-reads", is_flag=True,
              help="start nodes with KALAMDB_UNSAFE_LOCAL_READS=1 (deliberately unsafe: proves the checkers bite)")
@click.option("--unsafe-txn", type=click.Choice(UNSAFE_TXN_MODES), default=None,
              help="start nodes with a planted transaction bug (KALAMDB_UNSAFE_TXN; proves the append and "
              "rw-register checkers bite)")
@click.option("--unsafe-removed-votes", is_flag=True,
              help="planted bug (KALAMDB_UNSAFE_REMOVED_VOTES=1): removed voters keep running and the leader keeps "
                   "counting their acks toward commits; with membership faults the checkers must catch it")
@click.option("--unsafe-live", type=click.Choice(UNSAFE_LIVE_MODES), default=None,
              help="start nodes with a planted live-query bug (KALAMDB_UNSAFE_LIVE; proves the live checker bites)")
@click.option("--clients-per-node", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--check-timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="linearizability search budget in seconds (then the verdict is unknown)")
@click.option("--network", type=click.Choice(NETWORK_MODES), default="proxy", show_default=True,
              help="proxy: userspace proxies per link (no privileges); netns: each node in its own network "
                   "namespace with its own IP, faults as kernel rules (root; falls back to proxy with a warning)")
@click.option("--print-schedule", is_flag=True, help="print the nemesis schedule for the seed and exit")
def chaos_command(nodes: int, time_s: float, workload: list[str], faults: list[str], seed: int | None,
                  out: str | None, unsafe_local_reads: bool, unsafe_removed_votes: bool, unsafe_txn: str | None,
                  unsafe_live: str | None,
                  clients_per_node: int,
                  check_timeout: float, network: str, print_schedule: bool) -> None:
    """Run workloads against a real local cluster while a seeded nemesis injects faults, then check
    the history (linearizability, set-full, bank, live-exactly-once, replicas) and write a run folder
    with report.html."""
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 31)
    cfg = ChaosConfig(nodes=nodes, time=time_s, workloads=workload, faults=faults, seed=seed,
                      out=out or f"chaos-runs/seed-{seed}", unsafe_local_reads=unsafe_local_reads,
                      unsafe_txn=unsafe_txn, unsafe_live=unsafe_live, unsafe_removed_votes=unsafe_removed_votes,
                      clients_per_node=clients_per_node, check_timeout=check_timeout, network=network)
    if print_schedule:
        for step in schedule_for(cfg):
            click.echo(f"{step.start:7.2f}s +{step.duration:5.2f}s {step.kind:9} {step.target:8} "
                       f"ranking={list(step.ranking)} {dict(step.params)}")
        return
    click.echo(f"chaos seed={seed} nodes={nodes} time={time_s}s workloads={','.join(workload)} "
               f"faults={','.join(faults) or '-'} network={network}"
               f"{' UNSAFE-LOCAL-READS' if unsafe_local_reads else ''}"
               f"{' UNSAFE-TXN=' + unsafe_txn if unsafe_txn else ''}"
               f"{' UNSAFE-REMOVED-VOTES' if unsafe_removed_votes else ''}"
               f"{' UNSAFE-LIVE=' + unsafe_live if unsafe_live else ''} "
               f"-> {cfg.out}")
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                      transient=True) as bar:
            task = bar.add_task("starting", total=1.0)

            def on_progress(phase: str, frac: float) -> None:
                bar.update(task, description=phase, completed=frac)

            result = run_chaos(cfg, on_progress)
    except (ValueError, OSError, AssertionError) as exc:
        click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        click.echo(f"replay: kalamdb chaos --seed {seed} (run folder {cfg.out})", err=True)
        sys.exit(EXIT_ERROR)
    res = result.results
    for c in res.get("checkers", []):
        mark = "ok  " if c["valid"] else ("??  " if c.get("unknown") else "FAIL")
        click.echo(f"  {mark} {c['workload']:9} {c['summary']}")
    for c in res.get("checkers", []):
        if c.get("counterexample"):
            click.echo(c["counterexample"])
    if res.get("skipped_faults"):
        click.echo(f"  skipped faults (not available): {', '.join(res['skipped_faults'])}")
    if res.get("nemesis_errors"):
        click.echo(f"  nemesis errors: {'; '.join(res['nemesis_errors'])}")
    verdict = {0: "PASS", 1: "VIOLATION", 3: "UNKNOWN"}.get(result.exit_code, "ERROR")
    click.echo(f"{verdict}: seed {seed}, {res.get('operations', 0)} operations; report {result.out / 'report.html'}")
    sys.exit(result.exit_code)
