"""Set-full, bank, monotonic reads, final-state and digest checkers: one anomaly per test."""

from __future__ import annotations

from kalamdb.chaos.bank import check_bank
from kalamdb.chaos.history import Operation
from kalamdb.chaos.replicas import check_digests, check_final_states, check_monotonic_reads
from kalamdb.chaos.set_full import check_set_full


def op(f, value=None, output=None, call=0, ret=1, node=None, key=None):
    return Operation(0, 0, f, key, value, output, call, ret, node)


def adds(*elements_and_times):
    return [op("add", e, e, c, r) for e, c, r in elements_and_times]


def test_set_full_all_elements_stable():
    h = adds((1, 0, 1), (2, 2, 3)) + [op("read", output=[1, 2], call=4, ret=5), op("read", output=[2, 1], call=6, ret=7)]
    r = check_set_full(h)
    assert r.valid and r.stats["stable"] == 2


def test_set_full_lost_acknowledged_element():
    h = adds((1, 0, 1), (2, 0, 1)) + [op("read", output=[1, 2], call=2, ret=3), op("read", output=[2], call=4, ret=5)]
    r = check_set_full(h)
    assert not r.valid and r.anomalies["lost"] == [1]


def test_set_full_acknowledged_but_never_seen_is_lost():
    h = adds((1, 0, 1)) + [op("read", output=[], call=2, ret=3)]
    assert check_set_full(h).anomalies["lost"] == [1]


def test_set_full_stale_read_then_seen_again():
    h = adds((1, 0, 1)) + [op("read", output=[], call=2, ret=3), op("read", output=[1], call=4, ret=5)]
    r = check_set_full(h)
    assert r.anomalies["stale"] == [1] and not r.valid
    assert check_set_full(h, linearizable=False).valid  # stale is allowed without that promise


def test_set_full_duplicates_unexpected_and_never_read():
    h = adds((1, 0, 1), (3, 10, 11)) + [op("read", output=[1, 1, 9], call=2, ret=3)]
    r = check_set_full(h)
    assert r.anomalies["duplicated"] == {1: 2}
    assert r.anomalies["unexpected"] == [9]
    assert r.anomalies["never_read"] == [3]
    assert not r.valid


def test_set_full_indeterminate_add_may_not_have_happened():
    h = [op("add", 5, None, 0, None), op("read", output=[], call=2, ret=3)]
    assert check_set_full(h).valid
    seen = [op("add", 5, None, 0, None), op("read", output=[5], call=2, ret=3), op("read", output=[], call=4, ret=5)]
    assert check_set_full(seen).anomalies["lost"] == [5]


def test_bank_constant_total_and_no_negative_balance():
    good = [op("read", output={"a": 60, "b": 40}), op("transfer", {"from": "a", "to": "b", "amount": 5}),
            op("read", output={"a": 55, "b": 45})]
    assert check_bank(good, total=100, accounts=["a", "b"]).valid
    wrong = check_bank([op("read", output={"a": 60, "b": 45})], total=100)
    assert not wrong.valid and wrong.anomalies["wrong_total"][0]["total"] == 105
    negative = check_bank([op("read", output={"a": 110, "b": -10})], total=100)
    assert negative.anomalies["negative"][0]["negative"] == {"b": -10}
    assert check_bank([op("read", output={"a": 110, "b": -10})], total=100, negative_allowed=True).valid
    junk = check_bank([op("read", output="oops"), op("read", output={"z": 100})], total=100, accounts=["a"])
    assert len(junk.anomalies["malformed"]) == 1 and junk.anomalies["unexpected_accounts"][0]["accounts"] == ["z"]


def test_monotonic_reads_per_node():
    h = [
        op("read", output=5, call=0, ret=1, node="n1"),
        op("read", output=3, call=2, ret=3, node="n2"),  # other node: allowed to lag
        op("read", output=4, call=0, ret=3, node="n1"),  # overlaps the first: allowed
        op("read", output=6, call=4, ret=5, node="n1"),
    ]
    assert check_monotonic_reads(h).valid
    h.append(op("read", output=2, call=6, ret=7, node="n1"))
    r = check_monotonic_reads(h)
    assert not r.valid
    (v,) = r.anomalies["went_backwards"]
    assert (v["node"], v["went_from"], v["to"]) == ("n1", 6, 2)


def test_final_states_name_the_diverged_node_and_keys():
    same = {"t": [(1, "a")], "u": []}
    r = check_final_states({"n1": same, "n2": dict(same), "n3": {"t": [(1, "b")], "u": []}})
    assert not r.valid and r.anomalies["diverged"] == {"n3": {"differing_keys": ["t"]}}
    assert check_final_states({"n1": same, "n2": dict(same)}).valid
    assert not check_final_states({}).valid


def test_digests_must_match_at_one_applied_index():
    assert check_digests({"n1": (10, "abc"), "n2": (10, "abc"), "n3": (10, "abc")}).valid
    bad = check_digests({"n1": (10, "abc"), "n2": (10, "abd"), "n3": (10, "abc")})
    assert not bad.valid and bad.anomalies["mismatched"] == {"abc": ["n1", "n3"], "abd": ["n2"]}
    lag = check_digests({"n1": (10, "abc"), "n2": (9, "zzz"), "n3": (10, "abc")})
    assert not lag.valid and lag.anomalies["lagging"] == {"n2": 9}
    assert "INVALID" in lag.summary()
