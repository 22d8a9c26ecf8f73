"""Proof that the simulator bites: plant a safety bug in the real core or in the driver and require
the simulator to report a violation of the right rule within a bounded number of seeds.

Bounds come from measured first detections (see docs/simulator.md) with generous headroom; the
search stops at the first violation, so a test costs only the seeds it needs.
"""

from __future__ import annotations

import pytest

from kalamdb.sim.checker import SafetyChecker
from kalamdb.sim.simulation import run_seed

from .mutations import MUTATIONS, aggressive

# mutation -> max seeds to try (3 nodes, 3 simulated seconds each, fault-heavy profile)
BOUNDS = {
    "vote-up-to-date-ignored": 40,  # election restriction removed: a stale log can win
    "read-without-quorum": 120,  # ReadIndex answered without a heartbeat round: stale reads
    "send-before-persist": 80,  # driver answers before its fsync: acked entries lost on crash
    "vote-not-persisted": 250,  # vote lost on crash: two leaders in one term
    "early-acks": 40,  # acks sent during the fsync (take_early_messages lets all out): first caught at seed 0
}


def _hunt(name: str, bound: int):
    ctx, node_factory, rules = MUTATIONS[name]
    with ctx():
        for seed in range(bound):
            result = run_seed(seed, nodes=3, seconds=3, tweak=aggressive, node_factory=node_factory)
            if not result.ok:
                return seed, result, rules
    return None, None, rules


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_planted_bug_is_caught(name):
    seed, result, rules = _hunt(name, BOUNDS[name])
    assert result is not None, f"mutation {name!r} survived {BOUNDS[name]} seeds: the simulator is blind to it"
    print(f"{name}: caught at seed {seed}: {result.failure.splitlines()[0]}")
    assert result.kind == "safety" or "storm" in result.failure, result.failure
    if result.kind == "safety":
        rule = result.failure.split(":")[1].strip()
        assert rule in rules, f"seed {seed}: unexpected rule for {name}: {result.failure}"
    assert result.trace_tail, "a failure comes with the events that led to it"


def test_unmutated_core_passes_the_same_hunt():
    """The same fault-heavy profile on the real core and driver is clean (no false alarms)."""
    for seed in range(40):
        result = run_seed(seed, nodes=3, seconds=3, tweak=aggressive)
        assert result.ok, f"seed {seed}: {result.failure}"


# Without the direct durability-promise check, the damage itself must still be seen: two leaders in
# one term, a new leader missing committed entries, lost acknowledged writes (or a replication storm
# from a leader that believes an ack the follower's disk no longer backs).
CONSEQUENCE_BOUNDS = {"vote-not-persisted": 250, "send-before-persist": 80, "early-acks": 60}


@pytest.mark.parametrize("name", sorted(CONSEQUENCE_BOUNDS))
def test_consequences_caught_without_the_promise_check(name, monkeypatch):
    monkeypatch.setattr(SafetyChecker, "on_promise", lambda self, node, msg, disk: None)
    seed, result, _rules = _hunt(name, CONSEQUENCE_BOUNDS[name])
    assert result is not None, f"{name!r}: no violation in {CONSEQUENCE_BOUNDS[name]} seeds"
    print(f"{name} (no promise check): caught at seed {seed}: {result.failure.splitlines()[0]}")
    assert "durability-promise" not in result.failure
    assert result.kind == "safety" or "storm" in result.failure, result.failure
