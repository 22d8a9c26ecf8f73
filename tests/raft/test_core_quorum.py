"""Property tests of majority and joint quorum rules against brute-force definitions."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kalamdb.raft.quorum import VoteResult, committed_index, has_quorum, vote_result
from kalamdb.raft.types import Membership

node_sets = st.frozensets(st.integers(1, 7), min_size=1, max_size=5)


def brute_committed(voters, acked):
    """Largest i such that a strict majority of voters acked >= i."""
    best = 0
    for i in sorted(set(acked.values()) | {0}):
        if sum(1 for v in voters if acked.get(v, 0) >= i) * 2 > len(voters):
            best = max(best, i)
    return best


@settings(max_examples=200, deadline=None)
@given(node_sets, node_sets, st.booleans(), st.dictionaries(st.integers(1, 7), st.integers(0, 20)))
def test_committed_index_is_the_max_index_held_by_a_quorum_of_each_half(a, b, joint, acked):
    m = Membership(a, frozenset(), b if joint else frozenset())
    got = committed_index(m, acked)
    want = brute_committed(a, acked)
    if joint:
        want = min(want, brute_committed(b, acked))
    assert got == want


@settings(max_examples=200, deadline=None)
@given(node_sets, st.frozensets(st.integers(8, 9)), st.dictionaries(st.integers(1, 9), st.integers(0, 20)))
def test_learners_never_count(voters, learners, acked):
    with_learners = Membership(voters, learners)
    assert committed_index(with_learners, acked) == committed_index(Membership(voters), acked)
    votes = {n: True for n in learners}
    assert vote_result(with_learners, votes) != VoteResult.WON


@settings(max_examples=200, deadline=None)
@given(node_sets, node_sets, st.booleans(),
       st.dictionaries(st.integers(1, 7), st.booleans()))
def test_vote_result_matches_definition(a, b, joint, votes):
    m = Membership(a, frozenset(), b if joint else frozenset())
    halves = [a, b] if joint else [a]

    def half(voters):
        yes = sum(1 for v in voters if votes.get(v) is True)
        no = sum(1 for v in voters if votes.get(v) is False)
        if yes * 2 > len(voters):
            return VoteResult.WON
        if no * 2 >= len(voters):
            return VoteResult.LOST
        return VoteResult.PENDING

    results = [half(h) for h in halves]
    if all(r == VoteResult.WON for r in results):
        want = VoteResult.WON
    elif any(r == VoteResult.LOST for r in results):
        want = VoteResult.LOST
    else:
        want = VoteResult.PENDING
    assert vote_result(m, votes) == want


@settings(max_examples=100, deadline=None)
@given(node_sets, st.frozensets(st.integers(1, 7)), st.frozensets(st.integers(1, 7)))
def test_two_quorums_always_intersect(voters, q1, q2):
    m = Membership(voters)
    if has_quorum(m, q1) and has_quorum(m, q2):
        assert q1 & q2 & voters  # the property Raft's safety rests on


def test_joint_requires_both_majorities():
    m = Membership(frozenset({4, 5, 6}), frozenset(), frozenset({1, 2, 3}))
    assert not has_quorum(m, {1, 2, 3})
    assert not has_quorum(m, {4, 5, 6})
    assert has_quorum(m, {1, 2, 4, 5})
