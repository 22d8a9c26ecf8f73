"""The leader-CPU micro benchmark keeps working (its round asserts every proposal commits)."""

from kalamdb.bench.raft_micro import measure


def test_raft_micro_round_commits_every_proposal():
    r = measure(batch=100, rounds=20, wire=True)
    assert r["rounds"] == 20 and r["p50_us"] > 0
    assert r["entries_per_s"] > 1000  # generous floor: catches accidental quadratic behaviour
