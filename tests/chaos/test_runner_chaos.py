"""A short chaos run on a real 3-node cluster passes every checker and writes a complete run folder."""

from __future__ import annotations

import json

import pytest

from kalamdb.chaos.pytest_support import chaos_run_fixture, describe_failure  # noqa: F401 (fixture chaos_run)
from kalamdb.chaos.runner import EXIT_PASS, ChaosConfig, schedule_for

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]


@pytest.mark.chaos(time=15, workloads=["register", "set", "bank"], faults=["partition", "kill", "pause"])
def test_short_run_with_partitions_kills_and_pauses_passes(chaos_run):
    result = chaos_run()
    assert result.exit_code == EXIT_PASS, describe_failure(result)
    res = result.results
    names = {(c["workload"], c["name"]) for c in res["checkers"]}
    assert names == {("register", "linearizability"), ("set", "set-full"), ("set", "monotonic-reads"),
                     ("bank", "bank"), ("replicas", "final-state"), ("replicas", "digest")}
    assert all(c["valid"] for c in res["checkers"])
    # the nemesis really broke something, and nothing it tried failed
    assert res["windows"], "the schedule must have injected faults"
    assert not res["nemesis_errors"]
    assert res["operations"] > 200
    out = result.out
    assert {p.name for p in out.iterdir()} >= {"history.jsonl", "config.json", "schedule.json", "results.json",
                                               "report.html", "logs"}
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["node1.log", "node2.log", "node3.log"]
    cfg = ChaosConfig(**{k: v for k, v in json.loads((out / "config.json").read_text()).items()
                         if k not in ("quiet", "active")})
    replayed = [s.to_json() for s in schedule_for(cfg)]
    assert json.loads((out / "schedule.json").read_text()) == replayed, "config.json + seed replays the schedule"
    lines = (out / "history.jsonl").read_text().splitlines()
    assert len(lines) == res["events"]
    assert "PASS" in (out / "report.html").read_text()
