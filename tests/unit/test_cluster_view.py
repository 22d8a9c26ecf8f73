"""ClusterView.merge and parse without processes: which cell comes from which report, how old it
is, and that live knowledge is never replaced by a report."""

from __future__ import annotations

import pytest

from kalamdb.node.cluster_status import CLUSTER_COLUMNS
from kalamdb.node.cluster_view import BadReport, ClusterView, member_token

COLUMNS = [c for c, _ in CLUSTER_COLUMNS[:-1]]


def row(nid: int, **cells) -> tuple:
    base = dict.fromkeys(COLUMNS)
    base.update({"node_id": nid, "status": "unknown", **cells})
    return tuple(base[c] for c in COLUMNS)


def as_dicts(rows: list[tuple]) -> dict[int, dict]:
    names = [c for c, _ in CLUSTER_COLUMNS]
    return {r[1]: dict(zip(names, r, strict=True)) for r in rows}


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def make_view(node_id: int, leading: bool, clock: Clock) -> ClusterView:
    return ClusterView(node_id=node_id, cluster_id="c", secret="s", columns=COLUMNS, own_rows=list,
                       peers=dict, term=lambda: 3, is_leader=lambda: leading, clock=clock)


def report(view: ClusterView, nid: int, is_leader: bool, rows: list[dict], term: int = 3):
    view.reports = {**view.reports, nid: view.parse(nid, {"node_id": nid, "term": term, "is_leader": is_leader,
                                                          "rows": rows})}


def test_a_follower_fills_status_and_lag_from_the_leader_and_figures_from_each_node():
    clock = Clock()
    v = make_view(2, False, clock)
    report(v, 1, True, [{"node_id": 1, "status": "active", "replication_lag": 0, "memory_usage_mb": 50.0,
                         "uptime_seconds": 9, "leader_last_log_index": 40},
                        {"node_id": 2, "status": "active", "replication_lag": 1, "leader_last_log_index": 40},
                        {"node_id": 3, "status": "offline", "replication_lag": 7, "leader_last_log_index": 40}])
    clock.now += 0.25
    report(v, 3, False, [{"node_id": 3, "status": "active", "memory_usage_mb": 70.5, "uptime_seconds": 8}])
    clock.now += 0.5
    own = [row(1), row(2, status="active", memory_usage_mb=60.0, uptime_seconds=9), row(3)]
    got = as_dicts(v.merge(own))
    assert got[1]["status"] == "active" and got[1]["memory_usage_mb"] == 50.0 and got[1]["info_age_ms"] == 750
    # its own status is live; its lag is the leader's view of it
    assert got[2]["status"] == "active" and got[2]["replication_lag"] == 1 and got[2]["memory_usage_mb"] == 60.0
    assert got[2]["info_age_ms"] == 750
    # node 3's status is the leader's ("offline"), never its own claim; the oldest source gives the age
    assert got[3]["status"] == "offline" and got[3]["memory_usage_mb"] == 70.5 and got[3]["info_age_ms"] == 750


def test_without_reports_cells_stay_empty_and_the_age_is_null():
    v = make_view(2, False, Clock())
    got = as_dicts(v.merge([row(1), row(2, status="active", memory_usage_mb=60.0)]))
    assert got[1]["status"] == "unknown" and got[1]["memory_usage_mb"] is None and got[1]["info_age_ms"] is None
    assert got[2]["info_age_ms"] is None  # its lag is the leader's knowledge, which it lacks


def test_the_leaders_live_knowledge_is_never_replaced_and_its_own_row_is_age_zero():
    clock = Clock()
    v = make_view(1, True, clock)
    report(v, 2, False, [{"node_id": 2, "status": "active", "replication_lag": 99, "memory_usage_mb": 61.0}])
    clock.now += 1.5
    got = as_dicts(v.merge([row(1, status="active", replication_lag=0, memory_usage_mb=50.0),
                            row(2, status="catching_up", replication_lag=20)]))
    assert got[1]["info_age_ms"] == 0
    assert got[2]["status"] == "catching_up" and got[2]["replication_lag"] == 20
    assert got[2]["memory_usage_mb"] == 61.0 and got[2]["info_age_ms"] == 1500


def test_the_highest_terms_leader_report_wins():
    clock = Clock()
    v = make_view(3, False, clock)
    report(v, 1, True, [{"node_id": 3, "status": "active", "replication_lag": 5}], term=4)
    report(v, 2, True, [{"node_id": 3, "status": "active", "replication_lag": 1}], term=3)
    assert as_dicts(v.merge([row(3, status="active")]))[3]["replication_lag"] == 5


def test_parse_refuses_malformed_reports_and_drops_ill_typed_cells():
    v = make_view(1, False, Clock())
    for bad in (None, [], {"node_id": 3, "term": 1, "is_leader": False, "rows": []},
                {"node_id": 2, "term": "1", "is_leader": False, "rows": []},
                {"node_id": 2, "term": 1, "is_leader": False, "rows": ["x"]}):
        with pytest.raises(BadReport):
            v.parse(2, bad)
    r = v.parse(2, {"node_id": 2, "term": 1, "is_leader": True, "rows": [
        {"node_id": 2, "status": 5, "replication_lag": True, "memory_usage_mb": "a lot", "uptime_seconds": 3}]})
    assert r.rows == {2: {"uptime_seconds": 3}}


def test_member_tokens_are_checked_per_cluster_and_node():
    v = make_view(1, False, Clock())
    assert v.is_member(member_token("s", "c", 2)) and v.is_member(member_token("s", "c", 1))
    assert not v.is_member(member_token("other", "c", 2)) and not v.is_member(member_token("s", "d", 2))
    assert not v.is_member(None) and not v.is_member("") and not v.is_member("-1:00")
    assert not v.is_member("2:" + member_token("s", "c", 3).split(":")[1])
