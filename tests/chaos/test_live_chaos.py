"""Proof that the live checker bites: with KALAMDB_UNSAFE_LIVE=drop-buffered the nodes drop the
changes that arrive while a subscription loads its initial rows (or catches up), and with
skip-resume a reconnecting subscriber gets only what happens after it came back; the checker must
report gaps (or, for skip-resume, duplicates: see the test) and exit 1. The same seed in the safe
mode passes, subscribers reconnecting through kills and pauses. The seed is fixed (override with KALAMDB_SEED)."""

from __future__ import annotations

import os

import pytest

from kalamdb.chaos.pytest_support import chaos_run_fixture, describe_failure  # noqa: F401 (fixture chaos_run)
from kalamdb.chaos.runner import EXIT_PASS, EXIT_VIOLATION, ChaosConfig, schedule_for

# 15 s chaos runs (two in the first test): `make test-slow` (the live checker's own tests, tests/chaos/test_live_check.py
# and tests/live/, run in `make test`)
pytestmark = [pytest.mark.cluster, pytest.mark.chaos, pytest.mark.slow]

SEED = int(os.environ.get("KALAMDB_SEED", "7"))
SCENARIO = {"time": 15, "workloads": ["live"], "faults": ["kill", "pause", "partition"], "seed": SEED}


def live_checker(run) -> dict:
    return next(c for c in run.results["checkers"] if c["workload"] == "live")


def test_the_live_checker_catches_planted_bugs_and_the_safe_mode_passes(chaos_run):
    steps = schedule_for(ChaosConfig(**SCENARIO))
    assert any(s.kind == "kill" for s in steps), f"seed {SEED}: the scenario needs a kill (subscribers reconnect)"
    dropped = chaos_run(**SCENARIO, unsafe_live="drop-buffered")
    assert dropped.exit_code == EXIT_VIOLATION, describe_failure(dropped)
    assert "gap" in live_checker(dropped)["anomalies"]
    report = (dropped.out / "report.html").read_text()
    assert "id='live-streams'" in report and "gap" in report
    logs = "".join(p.read_text(errors="replace") for p in (dropped.out / "logs").iterdir())
    assert "UNSAFE MODE: KALAMDB_UNSAFE_LIVE=drop-buffered" in logs

    safe = chaos_run(**SCENARIO)
    assert safe.exit_code == EXIT_PASS, describe_failure(safe)
    stats = live_checker(safe)["stats"]
    assert stats["delivered"] > 0 and stats["reconnects"] > 0, stats


# A pause longer than the client's heartbeat check (kalamdb.live.client.HEARTBEAT_S): the paused
# node's subscribers give up on it and resume on another node while the other two keep committing,
# so skip-resume always has something to skip. (With kills and short pauses they reconnect within
# milliseconds and skip-resume often has nothing to lose: CI once saw a run pass.)
LONG_PAUSE = {"time": 15, "workloads": ["live"], "faults": ["pause"], "active": (7.0, 9.0), "seed": SEED}


def test_skip_resume_is_caught(chaos_run):
    steps = schedule_for(ChaosConfig(**LONG_PAUSE))
    assert any(s.kind == "pause" and s.duration > 6 for s in steps), f"seed {SEED}: the scenario needs a long pause"
    skipped = chaos_run(**LONG_PAUSE, unsafe_live="skip-resume")
    assert skipped.exit_code == EXIT_VIOLATION, describe_failure(skipped)
    # the subscriber loses what it missed (a gap) or, when it came back through a node that had
    # not yet applied what it had already seen, gets those changes again (a duplicate): CI saw
    # both; either is skip-resume's planted fault and the checker must name it
    live = live_checker(skipped)
    assert {"gap", "duplicate"} & set(live["anomalies"]), live["anomalies"]
    assert live["stats"]["reconnects"] > 0
