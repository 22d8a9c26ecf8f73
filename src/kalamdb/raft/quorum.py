"""Quorum arithmetic for simple majorities and joint consensus (a majority of BOTH voter sets).

Pure functions over sets and dicts, so the commit and election rules can be property-tested alone.
Learners never appear here: callers pass only voter sets.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum

from kalamdb.raft.types import Membership

# An empty voter set agrees to everything, so a joint config with no outgoing half reduces to the
# incoming majority (the same convention as etcd).
_INFINITE = 2**63


class VoteResult(IntEnum):
    PENDING = 0
    LOST = 1
    WON = 2


def majority_committed(voters: frozenset[int], acked: Mapping[int, int]) -> int:
    """Highest index that a majority of `voters` has acknowledged (missing voters count as 0)."""
    n = len(voters)
    if n == 0:
        return _INFINITE
    if n == 1:
        (v,) = voters
        return acked.get(v, 0)
    vals = sorted((acked.get(v, 0) for v in voters), reverse=True)
    return vals[n // 2]


def committed_index(m: Membership, acked: Mapping[int, int]) -> int:
    """Highest index acknowledged by a quorum of the configuration (both halves when joint)."""
    c = majority_committed(m.voters, acked)
    if m.voters_outgoing:
        c = min(c, majority_committed(m.voters_outgoing, acked))
    return 0 if c == _INFINITE else c


def majority_vote(voters: frozenset[int], votes: Mapping[int, bool]) -> VoteResult:
    if not voters:
        return VoteResult.WON
    granted = rejected = 0
    for v in voters:
        r = votes.get(v)
        if r is True:
            granted += 1
        elif r is False:
            rejected += 1
    q = len(voters) // 2 + 1
    if granted >= q:
        return VoteResult.WON
    if granted + (len(voters) - granted - rejected) >= q:
        return VoteResult.PENDING
    return VoteResult.LOST


def vote_result(m: Membership, votes: Mapping[int, bool]) -> VoteResult:
    a = majority_vote(m.voters, votes)
    if not m.voters_outgoing:
        return a
    b = majority_vote(m.voters_outgoing, votes)
    if a == VoteResult.WON and b == VoteResult.WON:
        return VoteResult.WON
    if a == VoteResult.LOST or b == VoteResult.LOST:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(m: Membership, alive: set[int] | frozenset[int]) -> bool:
    """True when the nodes in `alive` form a quorum of the configuration."""
    return vote_result(m, dict.fromkeys(alive, True)) == VoteResult.WON
