"""Chaos runs inside pytest: the `chaos_run` fixture runs one scenario and returns its RunResult;
options come from a `@pytest.mark.chaos(...)` marker on the test (ChaosConfig fields) and can be
overridden per call. The seed is `KALAMDB_SEED` if set, else random, and is printed, so a
failing run replays with `KALAMDB_SEED=<seed>` or `kalamdb chaos --seed <seed>`.

    from kalamdb.chaos.pytest_support import chaos_run_fixture  # noqa: F401 (provides chaos_run)

    @pytest.mark.chaos(time=15, workloads=["register"], faults=["partition"])
    def test_partitions(chaos_run):
        result = chaos_run()
        assert result.valid, result.results
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kalamdb.chaos.runner import ChaosConfig, RunResult, run_chaos
from kalamdb.testing.seeds import default_seed


def chaos_seed() -> int:
    return default_seed()


def describe_failure(result: RunResult) -> str:
    """A test failure message: verdicts, the counterexample and where the run folder is."""
    lines = [f"chaos run seed={result.results.get('seed')} exit={result.exit_code} folder={result.out}"]
    for c in result.results.get("checkers", []):
        lines.append(f"  {'ok  ' if c['valid'] else 'FAIL'} {c['summary']}")
        if c.get("counterexample"):
            lines.append(c["counterexample"])
    if result.results.get("nemesis_errors"):
        lines.append("nemesis errors: " + "; ".join(result.results["nemesis_errors"]))
    return "\n".join(lines)


@pytest.fixture(name="chaos_run")
def chaos_run_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., RunResult]:
    """Call it (with ChaosConfig overrides) to run a scenario; each call gets its own folder."""
    marker = request.node.get_closest_marker("chaos")
    defaults = dict(marker.kwargs) if marker is not None else {}
    calls = [0]

    def run(**overrides: Any) -> RunResult:
        opts = {"time": 15.0, "log_level": "info", **defaults, **overrides}
        opts.setdefault("seed", chaos_seed())
        calls[0] += 1
        opts.setdefault("out", str(tmp_path / f"chaos-{calls[0]}-seed-{opts['seed']}"))
        cfg = ChaosConfig(**opts)
        print(f"chaos run seed={cfg.seed} (replay: KALAMDB_SEED={cfg.seed} or kalamdb chaos --seed {cfg.seed}) "
              f"-> {cfg.out}")
        return run_chaos(cfg)

    return run
