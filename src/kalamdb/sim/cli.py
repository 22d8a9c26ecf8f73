"""`kalamdb sim`: run deterministic cluster simulations, one seed or many.

    kalamdb sim --seed 42 --trace          # replay one run, printing every event (same bytes every run)
    kalamdb sim --seeds 2000 --start 0     # swarm: seeds 0..1999, each drawing its own parameters
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from kalamdb.sim.simulation import SimResult


def _replay_command(seed: int, nodes: int | None, seconds: float | None, profile: str) -> str:
    cmd = f"kalamdb sim --seed {seed}"
    if profile != "swarm":
        cmd += f" --profile {profile}"
    if nodes is not None:
        cmd += f" --nodes {nodes}"
    if seconds is not None:
        cmd += f" --time {seconds:g}"
    return cmd + " --trace"


def _run_quiet(seed: int, nodes: int | None, seconds: float | None, profile: str) -> SimResult:
    from kalamdb.sim.simulation import run_seed

    result = run_seed(seed, nodes=nodes, seconds=seconds, profile=profile)
    result.params = None  # keep what crosses the process boundary small
    return result


@click.command("sim")
@click.option("--seed", type=int, default=None, help="Run exactly this seed (replay).")
@click.option("--seeds", "count", type=click.IntRange(1), default=None, help="Run this many seeds.")
@click.option("--start", type=click.IntRange(0), default=0, show_default=True, help="First seed of --seeds.")
@click.option("--nodes", type=click.IntRange(3, 7), default=None, help="Cluster size (default: drawn per seed).")
@click.option("--time", "seconds", type=click.FloatRange(0.1, 3600), default=None,
              help="Simulated seconds of faults and load per seed (default 10).")
@click.option("--trace", is_flag=True, help="Print every event of the run (with --seed, or each seed).")
@click.option("--profile", type=click.Choice(["swarm", "aggressive", "membership"]), default="swarm",
              show_default=True, help="Fault shape on top of the drawn parameters.")
@click.option("--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes for --seeds (results stay in seed order).")
def sim_command(seed: int | None, count: int | None, start: int, nodes: int | None, seconds: float | None,
                trace: bool, profile: str, jobs: int) -> None:
    """Deterministic simulation of a Raft cluster under faults; checks safety and liveness."""
    from kalamdb.sim.simulation import run_seed

    if seed is not None and count is not None:
        raise click.UsageError("give either --seed S or --seeds N, not both")
    seeds = [seed] if seed is not None else list(range(start, start + (count or 1)))
    echo = (lambda line: click.echo(line)) if trace else None

    t0 = time.perf_counter()
    failures = []
    results: Iterator[SimResult]
    if len(seeds) == 1 or trace:
        results = (run_seed(s, nodes=nodes, seconds=seconds, echo=echo, profile=profile) for s in seeds)
        for result in results:
            if not result.ok:
                failures.append(result)
                break
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns = (TextColumn("[bold]sim"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[rate]}"))
        pool = None
        if jobs > 1:
            import multiprocessing

            pool = multiprocessing.get_context("fork").Pool(jobs)
            run_one = functools.partial(_run_quiet, nodes=nodes, seconds=seconds, profile=profile)
            results = pool.imap(run_one, seeds, chunksize=2)
        else:
            results = (run_seed(s, nodes=nodes, seconds=seconds, profile=profile) for s in seeds)
        try:
            with Progress(*columns, transient=False) as progress:
                task = progress.add_task("sim", total=len(seeds), rate="")
                for done, result in enumerate(results, 1):
                    elapsed = time.perf_counter() - t0
                    progress.update(task, advance=1, rate=f"{done / elapsed * 60:.0f} seeds/min")
                    if not result.ok:
                        failures.append(result)
                        break
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    elapsed = time.perf_counter() - t0
    ran = len(seeds) if not failures else seeds.index(failures[0].seed) + 1
    # wall-clock timing goes to stderr: stdout (the trace) stays byte-identical for one seed
    click.echo(f"{ran} seed(s) in {elapsed:.1f}s: {ran / elapsed * 60:.0f} seeds/min", err=True)
    if failures:
        result = failures[0]
        click.echo(f"\nFAILED seed {result.seed}: {result.failure}", err=True)
        click.echo(f"replay: {_replay_command(result.seed, nodes, seconds, profile)}", err=True)
        click.echo(f"last {len(result.trace_tail)} events before the failure:", err=True)
        for line in result.trace_tail:
            click.echo("  " + line, err=True)
        sys.exit(1)
    click.echo("all seeds passed")
