"""Leadership transfer: fast hand-over, catch-up of a lagging target, refusal of proposals meanwhile,
and abandonment after an election timeout when the target cannot take over."""

from __future__ import annotations

import pytest

from kalamdb.raft.core import NotLeader, ProposalRejected, Role
from tests.raft.memnet import MemCluster


def test_transfer_hands_leadership_over_well_within_an_election_timeout():
    c = MemCluster([1, 2, 3], seed=1, voters=[1, 2, 3])
    old = c.elect()
    target = next(i for i in (1, 2, 3) if i != old)
    c.core(old).transfer_leadership(target)
    ticks = c.run_until(lambda: c.core(target).role is Role.LEADER, max_ticks=20, what="transfer")
    assert ticks <= 1  # TimeoutNow makes the target campaign at once, bypassing the lease
    assert c.core(old).role is Role.FOLLOWER and c.core(old).leader_id == target
    idx = c.propose(b"after")
    c.wait_applied(idx)


def test_transfer_to_a_lagging_target_catches_it_up_first_and_refuses_proposals_meanwhile():
    c = MemCluster([1, 2, 3], seed=2, voters=[1, 2, 3])
    old = c.elect()
    target = next(i for i in (1, 2, 3) if i != old)
    c.partition([i for i in (1, 2, 3) if i != target], [target])
    for k in range(20):
        c.propose(b"w%d" % k)
    c.stabilize()
    assert c.core(target).last_index < c.core(old).last_index
    c.core(old).transfer_leadership(target)
    with pytest.raises(ProposalRejected):
        c.core(old).propose(b"refused")
    c.heal()
    c.run_until(lambda: c.core(target).role is Role.LEADER, max_ticks=5, what="transfer after catch-up")
    new_leader = c.core(target)
    assert b"w19" in [e.data for e in new_leader.entries(1, new_leader.last_index)]
    assert b"refused" not in [e.data for e in new_leader.entries(1, new_leader.last_index)]


def test_transfer_to_a_dead_target_is_abandoned_after_an_election_timeout():
    c = MemCluster([1, 2, 3], seed=3, voters=[1, 2, 3])
    old = c.elect()
    target = next(i for i in (1, 2, 3) if i != old)
    c.crash(target)
    c.core(old).transfer_leadership(target)
    assert c.core(old).lead_transferee == target
    c.run_until(lambda: c.core(old).lead_transferee is None, max_ticks=c.core(old).cfg.election_ticks + 1,
                what="transfer abandoned")
    assert c.core(old).role is Role.LEADER  # the other follower keeps it in quorum
    idx = c.core(old).propose(b"accepted again")
    c.wait_applied(idx, ids=[i for i in (1, 2, 3) if i != target])


def test_transfer_requires_leadership_and_a_voter_target():
    c = MemCluster([1, 2, 3, 4], seed=4, voters=[1, 2, 3])
    lid = c.elect()
    follower = next(i for i in (1, 2, 3) if i != lid)
    with pytest.raises(NotLeader) as err:
        c.core(follower).transfer_leadership(lid)
    assert err.value.leader_id == lid
    with pytest.raises(ValueError):
        c.core(lid).transfer_leadership(4)  # not a member at all
