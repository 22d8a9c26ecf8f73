"""verify_data_consistency on a real cluster, for a query that fails on every node alike."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.cluster


def test_a_missing_table_is_reported_as_the_same_error_everywhere_not_as_a_divergence(cluster, unique_ns):
    report = cluster.verify_data_consistency(f"SELECT * FROM {unique_ns}.not_yet")
    assert not report and not report.diverged and report.failed_everywhere
    assert report.failed_nodes == [n.node_id for n in cluster.running_nodes()]
    assert report.error.startswith("TABLE_NOT_FOUND") and "not a divergence" in str(report)
