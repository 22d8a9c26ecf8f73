"""`agreed_leader` decides from health answers alone; these are the ways a naive helper would
return a wrong leader, written as the health answers real nodes give in those moments."""

from __future__ import annotations

from kalamdb.testing.cluster import agreed_leader


def h(node_id: int, leader_id: int | None, term: int, *, leads: bool = False, voters=(1, 2, 3)) -> dict:
    return {"node_id": node_id, "leader_id": leader_id, "is_leader": leads, "current_term": term,
            "voters": list(voters)}


def test_one_leader_everyone_names_is_the_answer():
    assert agreed_leader({1: h(1, 1, 4, leads=True), 2: h(2, 1, 4), 3: h(3, 1, 4)}) == (1, "")


def test_two_claimants_in_different_terms_give_no_answer():
    # node 1 was paused while leader of term 4; nodes 2 and 3 elected node 2 in term 5
    lid, why = agreed_leader({1: h(1, 1, 4, leads=True), 2: h(2, 2, 5, leads=True), 3: h(3, 2, 5)})
    assert lid is None
    assert "2 nodes claim leadership" in why and "node 1 in term 4" in why and "node 2 in term 5" in why


def test_a_leader_of_an_old_term_is_not_returned_while_a_node_is_in_a_newer_term():
    lid, why = agreed_leader({1: h(1, 1, 4, leads=True), 2: h(2, 1, 4), 3: h(3, 1, 6)})
    assert lid is None and "newer terms" in why and "3" in why


def test_a_lone_leader_cut_off_from_its_majority_is_not_confirmed():
    lid, why = agreed_leader({1: h(1, 1, 4, leads=True), 2: OSError("timed out"), 3: OSError("timed out")})
    assert lid is None and "majority" in why and "[2, 3]" in why


def test_a_named_leader_that_does_not_lead_or_answer_is_not_returned():
    assert agreed_leader({2: h(2, 1, 4), 3: h(3, 1, 4)})[0] is None  # node 1 silent
    lid, why = agreed_leader({1: h(1, 1, 4), 2: h(2, 1, 4), 3: h(3, 1, 4)})
    assert lid is None and "does not say it leads" in why


def test_disagreement_and_no_leader_are_explained():
    lid, why = agreed_leader({1: h(1, 1, 4, leads=True), 2: h(2, 1, 4), 3: h(3, None, 4)})
    assert lid is None and "disagree" in why
    lid, why = agreed_leader({1: h(1, None, 4), 2: h(2, None, 4)})
    assert lid is None and "no node knows a leader" in why
    assert agreed_leader({})[0] is None


def test_nodes_outside_the_configuration_have_no_say():
    # node 4 started but has not joined (no configuration, no leader); node 5 was removed and still
    # runs with its old view, naming nobody
    fresh = {"node_id": 4, "leader_id": None, "is_leader": False, "current_term": 0, "voters": [], "learners": []}
    removed = h(5, None, 4, voters=(1, 2, 3, 5))
    assert agreed_leader({1: h(1, 1, 4, leads=True), 2: h(2, 1, 4), 3: h(3, 1, 4), 4: fresh, 5: removed}) == (1, "")
    # but a removed node that still claims to lead in a newer term than the others is no leader either
    lid, _ = agreed_leader({1: h(1, 1, 4, leads=True), 2: h(2, 1, 4), 5: h(5, 5, 6, leads=True, voters=(5,))})
    assert lid is None
