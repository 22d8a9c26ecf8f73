"""A short chaos run with membership churn and leadership transfers (on top of partitions and
kills) passes every checker; each change is in the history with its outcome and in the report."""

from __future__ import annotations

import json

import pytest

from kalamdb.chaos.pytest_support import chaos_run_fixture, describe_failure  # noqa: F401 (fixture chaos_run)
from kalamdb.chaos.runner import EXIT_PASS

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]


@pytest.mark.chaos(time=20, workloads=["register", "set"], faults=["membership", "transfer", "partition", "kill"])
def test_membership_churn_and_transfers_under_partitions_and_kills_pass(chaos_run):
    result = chaos_run(seed=6)  # its schedule replaces a node, adds one and partitions within 20 s
    assert result.exit_code == EXIT_PASS, describe_failure(result)
    res = result.results
    membership = next(c for c in res["checkers"] if c["name"] == "membership")
    assert membership["valid"], membership
    changes = res["membership"]
    assert changes and all(ch["outcome"] in ("ok", "fail", "info") for ch in changes), changes
    assert any(ch["op"] in ("add", "replace") and ch["outcome"] == "ok" for ch in changes), changes
    events = [json.loads(line) for line in (result.out / "history.jsonl").read_text().splitlines()]
    nemesis = [e for e in events if e["process"] == "nemesis"]
    assert [e["type"] for e in nemesis][::2] == ["invoke"] * len(changes)  # each change: invoke, then its outcome
    assert [e["type"] for e in nemesis][1::2] == [ch["outcome"] for ch in changes]
    # the final checks ran on every member of the final configuration, and only on them
    final = res["configurations"][-1]["voters"]
    assert {f"node{n}.log" for n in final} <= {p.name for p in (result.out / "logs").iterdir()}
    assert f"nodes={len(final)}" in next(c["summary"] for c in res["checkers"] if c["name"] == "final-state")
    report = (result.out / "report.html").read_text()
    assert "Configuration over time" in report and "Membership changes" in report
