"""compare_results on answers shaped like the API's: what counts as equal, and what a report says."""

from __future__ import annotations

from kalamdb.testing.consistency import DigestReport, canonical, compare_results, query_orders


def ok(*rows) -> dict:
    return {"status": "success", "results": [{"rows": [list(r) for r in rows]}]}


def test_equal_answers_make_a_truthy_report_with_the_rows():
    report = compare_results("SELECT id FROM t ORDER BY id", 7, {1: ok(("1",), ("2",)), 2: ok(("1",), ("2",))})
    assert report and report.rows == [("1",), ("2",)] and report.row_counts == {1: 2, 2: 2}
    assert "all 2 nodes agree" in str(report)


def test_values_compare_by_type_not_by_python_equality():
    assert canonical(1) != canonical(True) != canonical("1") and canonical(1) != canonical(1.0)
    report = compare_results("SELECT v FROM t", 3, {1: ok((1,)), 2: ok((1,)), 3: ok((True,))})
    assert not report and report.differing_nodes == [3]


def test_order_matters_only_when_the_query_orders():
    a, b = ok(("1",), ("2",)), ok(("2",), ("1",))
    assert compare_results("SELECT id FROM t", 1, {1: a, 2: b})
    ordered = compare_results("SELECT id FROM t ORDER BY id", 1, {1: a, 2: a, 3: b})
    assert not ordered and ordered.diff_for(3).order_differs
    assert not query_orders("SELECT id FROM (SELECT id FROM t ORDER BY id LIMIT 3) s")
    assert query_orders("SELECT id, ROW_NUMBER() OVER (ORDER BY id) FROM t ORDER BY 1")


def test_a_report_names_missing_extra_and_different_rows_of_the_minority_node():
    ref = ok(("1", "a"), ("2", "b"), ("3", "c"))
    bad = ok(("1", "a"), ("2", "tampered"), ("4", "new"))
    report = compare_results("SELECT id, v FROM t ORDER BY id", 9, {1: ref, 2: bad, 3: ref})
    assert report.reference_nodes == [1, 3] and report.differing_nodes == [2]
    d = report.diff_for(2)
    assert d.different == [(("2", "tampered"), ("2", "b"))]
    assert d.missing == [("3", "c")] and d.extra == [("4", "new")]
    text = str(report)
    assert "replicas DIFFER" in text and "node 2" in text and "'tampered'" in text and "index 9" in text


def test_an_error_answer_is_a_difference():
    err = {"status": "error", "error": {"code": "NOT_FOUND", "message": "no table"}}
    report = compare_results("SELECT 1", 2, {1: ok(("1",)), 2: err})
    assert not report and "node 2: error NOT_FOUND: no table" in str(report)


def test_digest_report_names_the_odd_node():
    same = {"applied_index": 5, "digest": "aa"}
    report = DigestReport(5, {1: same, 2: {"applied_index": 5, "digest": "bb"}, 3: same})
    assert not report and report.differing_nodes == [2] and "DIFFER" in str(report)
    assert DigestReport(5, {1: same, 3: same}) and DigestReport(5, {1: same}).differing_nodes == []


def test_the_same_error_on_every_node_is_said_plainly_and_is_not_a_divergence():
    err = {"status": "error", "error": {"code": "TABLE_NOT_FOUND", "message": "Table 'app.t' not found"}}
    report = compare_results("SELECT * FROM app.t", 4, {1: err, 2: err, 3: err})
    assert report.failed_everywhere and not report.diverged and report.differing_nodes == []
    assert not report  # falsy all the same: no rows were compared
    assert report.error == "TABLE_NOT_FOUND: Table 'app.t' not found" and report.failed_nodes == [1, 2, 3]
    text = str(report)
    assert "failed on every node" in text and "not a divergence" in text and "TABLE_NOT_FOUND" in text
    assert "DIFFER" not in text


def test_different_errors_or_an_error_beside_answers_are_a_divergence():
    a = {"status": "error", "error": {"code": "TABLE_NOT_FOUND", "message": "no table"}}
    b = {"status": "error", "error": {"code": "TIMEOUT", "message": "too slow"}}
    mixed = compare_results("SELECT 1", 2, {1: a, 2: b, 3: a})
    assert mixed.diverged and not mixed.failed_everywhere and mixed.differing_nodes == [1, 2, 3]
    assert "replicas DIFFER" in str(mixed) and "different errors" in str(mixed)
    one_fails = compare_results("SELECT 1", 2, {1: a, 2: ok(("1",)), 3: a})
    assert one_fails.diverged and one_fails.reference_nodes == [2] and one_fails.differing_nodes == [1, 3]
