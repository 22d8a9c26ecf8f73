"""Proof that the transactional checker bites on a real cluster: with a planted transaction bug
(KALAMDB_UNSAFE_TXN) an `append` chaos run must exit 1 naming a dependency-cycle anomaly and draw
its anomaly graph in the report, and the same seed in the safe mode must exit 0.

The seed is fixed (override with KALAMDB_SEED); docs/RELIABILITY.md reports the detection rate
over many seeds and every fault kind."""

from __future__ import annotations

import os

import pytest

from kalamdb.chaos.pytest_support import chaos_run_fixture, describe_failure  # noqa: F401 (fixture chaos_run)
from kalamdb.chaos.runner import EXIT_PASS, EXIT_VIOLATION

# ~15 s per run, three runs: `make test-slow` (the checker's vector tests and tests/chaos/test_unsafe_txn.py,
# each bug on a real single server, run in `make test`)
pytestmark = [pytest.mark.cluster, pytest.mark.chaos, pytest.mark.slow]

SEED = int(os.environ.get("KALAMDB_SEED", "11"))
SCENARIO = {"time": 12, "workloads": ["append"], "faults": ["partition", "pause"], "seed": SEED}


@pytest.mark.parametrize("mode", ["stale-reads", "split-writes"])
def test_planted_transaction_bug_is_caught(chaos_run, mode):
    run = chaos_run(**SCENARIO, unsafe_txn=mode)
    assert run.exit_code == EXIT_VIOLATION, describe_failure(run)
    elle = next(c for c in run.results["checkers"] if c["name"] == "elle")
    assert elle["verdict"] == "INVALID"
    cycles = [name for name in elle["forbidden"] if name.startswith("G")]
    assert cycles, elle["summary"]
    page = (run.out / "report.html").read_text()
    assert "<section id='anomaly-graph'>" in page and 'class="cycle"' in page
    logs = "".join(p.read_text(errors="replace") for p in (run.out / "logs").iterdir())
    assert "UNSAFE MODE" in logs


def test_safe_mode_passes(chaos_run):
    run = chaos_run(**SCENARIO)
    assert run.exit_code == EXIT_PASS, describe_failure(run)
    elle = next(c for c in run.results["checkers"] if c["name"] == "elle")
    assert elle["verdict"] == "VALID" and elle["stats"]["txns"]["ok"] > 100, elle["summary"]
