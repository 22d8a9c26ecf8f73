"""A write forwarded by a follower whose leader disappears mid-flight (node/forwarding.py): the
follower cannot know whether the old leader appended it, so it answers 503 `indefinite`, and
whatever it answered, the cluster converges with nothing acknowledged lost."""

from __future__ import annotations

import pytest
from workload import make_table

pytestmark = pytest.mark.cluster


def test_a_follower_that_loses_its_leader_mid_forward_answers_indefinite(faulty, seed):
    c = faulty(3)
    ns = make_table(c, "fwdlost")
    c.wait_for_replication()
    lead = c.leader().index
    follower = next(n.index for n in c.nodes if n.index != lead)
    c.wait_for_replication()
    c.net.isolate(lead)  # the proposal is sent before the follower notices (an election timeout later)
    r = c.execute_sql_on(follower, f"INSERT INTO {ns}.t (id, v) VALUES (1, 'lost leader')")
    assert not r.ok and r.http_status == 503, r
    assert r.error["details"].startswith("indefinite"), r
    assert "changed before it confirmed" in r.error["message"], r
    c.net.heal()
    new = c.leader(timeout=10)
    again = c.execute_sql_on(new.index, f"INSERT INTO {ns}.t (id, v) VALUES (2, 'after heal')")
    assert again.ok, again
    c.wait_for_replication()
    assert c.verify_state_digest()
