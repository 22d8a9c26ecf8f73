"""Proof that the checkers bite: with KALAMDB_UNSAFE_LOCAL_READS=1 followers answer reads from
their own state, so a follower cut off by a partition serves stale values while the majority keeps
writing; the linearizability checker must find it (exit 1 with a counterexample), and the same
seed in the safe mode must pass (exit 0).

Clients are pinned to nodes (two per node), so the isolated follower's clients keep reading from it.
The seed is fixed (override with KALAMDB_SEED); docs/RELIABILITY.md reports the detection
rate over many seeds."""

from __future__ import annotations

import os

import pytest

from kalamdb.chaos.pytest_support import chaos_run_fixture, describe_failure  # noqa: F401 (fixture chaos_run)
from kalamdb.chaos.runner import EXIT_PASS, EXIT_VIOLATION, ChaosConfig, schedule_for

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]

SEED = int(os.environ.get("KALAMDB_SEED", "7"))
SCENARIO = {"time": 15, "workloads": ["register"], "faults": ["partition", "pause"], "seed": SEED}


def test_unsafe_local_reads_are_caught_and_the_safe_mode_passes(chaos_run):
    steps = schedule_for(ChaosConfig(**SCENARIO))
    assert any(s.kind == "partition" for s in steps), f"seed {SEED}: the scenario needs a partition"
    unsafe = chaos_run(**SCENARIO, unsafe_local_reads=True)
    assert unsafe.exit_code == EXIT_VIOLATION, describe_failure(unsafe)
    lin = next(c for c in unsafe.results["checkers"] if c["name"] == "linearizability")
    assert lin["verdict"] == "NOT_LINEARIZABLE"
    assert "cannot linearize" in lin["counterexample"] and "read" in lin["counterexample"]
    assert "counterexample" in (unsafe.out / "report.html").read_text()
    logs = "".join(p.read_text(errors="replace") for p in (unsafe.out / "logs").iterdir())
    assert "UNSAFE MODE" in logs, "the unsafe mode must be loudly logged"

    safe = chaos_run(**SCENARIO)
    assert safe.exit_code == EXIT_PASS, describe_failure(safe)
    assert [w["kind"] for w in safe.results["windows"]] == [w["kind"] for w in unsafe.results["windows"]]
