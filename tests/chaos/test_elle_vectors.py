"""One constructed history per anomaly class the transactional checker names, in Elle's compact
notation (`ax1` append 1 to x, `rx12` read x = [1 2], `wx3` write 3 to x, `rx_` read x = nil),
with the verdict and the explanation it must give; and histories that must pass."""

from __future__ import annotations

import pytest

from kalamdb.chaos.elle import check_txns
from kalamdb.chaos.elle.edn import Keyword
from kalamdb.chaos.elle.history import Txn, pair_txn_events
from kalamdb.chaos.history import Event


def _mop(token: str, model: str, completed: bool) -> list:
    f, key, rest = token[0], Keyword(token[1]), token[2:]
    if f == "a":
        return ["append", key, int(rest)]
    if f == "w":
        return ["w", key, int(rest)]
    if not completed:
        return ["r", key, None]
    if model == "list-append":
        return ["r", key, None if rest == "_" else [int(c) for c in rest]]
    return ["r", key, None if rest in ("", "_") else int(rest)]


def history(text: str, model: str = "list-append") -> list[Txn]:
    """Lines `process type mops...`; an ok/fail/info line without a pending invoke gets one just
    before it (a transaction that ran alone)."""
    events: list[Event] = []
    pending: set[str] = set()
    for n, line in enumerate(text.strip().splitlines(), 1):
        process, type_, *tokens = line.split()
        if type_ != "invoke" and process not in pending:
            events.append(Event("invoke", process, "txn", None, [_mop(t, model, False) for t in tokens], None,
                                None, n))
        pending.discard(process)
        if type_ == "invoke":
            pending.add(process)
        events.append(Event(type_, process, "txn", None, [_mop(t, model, type_ == "ok") for t in tokens], None,
                            None, n))
    txns, skipped = pair_txn_events(events)
    assert skipped == 0
    return txns


def check(text: str, model: str = "list-append", **kwargs):
    return check_txns(history(text, model), model=model, **kwargs)


def only(result, *names: str) -> None:
    assert result.verdict == "INVALID", result.format()
    assert set(result.forbidden) == set(names), result.format()


# ------------------------------------------------------------------------------ list-append cycles
def test_g0_write_cycle():
    r = check("""
        1 invoke ax1 ay1
        2 invoke ax2 ay2
        1 ok ax1 ay1
        2 ok ax2 ay2
        3 ok rx12 ry21
    """)
    only(r, "G0")
    text = r.anomalies["G0"][0]["text"]
    assert "appended 2 after T" in text and "appended 1 to :x" in text
    assert text.count("[ww]") == 2 and "a contradiction!" in text


def test_g1c_circular_information_flow():
    r = check("""
        1 invoke ax1 ry
        2 invoke ay1 rx
        1 ok ax1 ry1
        2 ok ay1 rx1
    """)
    only(r, "G1c")
    steps = r.anomalies["G1c"][0]["steps"]
    assert [s["rel"] for s in steps] == ["wr", "wr"]
    assert "observed T1's append of 1 to key" in steps[0]["text"] or "observed T2's" in steps[0]["text"]


def test_g_single_read_skew():
    r = check("""
        1 invoke ax1 ay1
        2 invoke rx ry
        1 ok ax1 ay1
        2 ok rx1 ry
        3 invoke ry
        3 ok ry1
    """, consistency="serializable")
    only(r, "G-single")
    case = r.anomalies["G-single"][0]
    assert sorted(s["rel"] for s in case["steps"]) == ["rw", "wr"]
    assert any("did not observe" in s["text"] or "initial (empty) state" in s["text"] for s in case["steps"])


def test_g_nonadjacent():
    r = check("""
        1 invoke ax1
        2 invoke rx ry
        3 invoke ay1
        4 invoke ry rx
        1 ok ax1
        2 ok rx1 ry
        3 ok ay1
        4 ok ry1 rx
    """, consistency="serializable")
    only(r, "G-nonadjacent")
    rels = [s["rel"] for s in r.anomalies["G-nonadjacent"][0]["steps"]]
    assert rels.count("rw") == 2 and len(rels) == 4


def test_g2_item_write_skew():
    r = check("""
        1 invoke rx ry ax1
        2 invoke rx ry ay1
        1 ok rx ry ax1
        2 ok rx ry ay1
        3 ok rx1 ry1
    """, consistency="serializable")
    only(r, "G2-item")
    assert [s["rel"] for s in r.anomalies["G2-item"][0]["steps"]] == ["rw", "rw"]


def test_write_skew_is_allowed_under_snapshot_isolation():
    r = check("""
        1 invoke rx ry ax1
        2 invoke rx ry ay1
        1 ok rx ry ax1
        2 ok rx ry ay1
        3 ok rx1 ry1
    """, consistency="snapshot-isolation")
    assert r.verdict == "VALID", r.format()


def test_lost_update():
    r = check("""
        1 invoke rx ax1
        2 invoke rx ax2
        1 ok rx ax1
        2 ok rx ax2
        3 ok rx12
    """, consistency="serializable")
    assert r.verdict == "INVALID"
    assert "lost-update" in r.forbidden and "G-single" in r.forbidden, r.format()
    assert "2 committed txns read key :x = []" in r.anomalies["lost-update"][0]["text"]


# ------------------------------------------------------------------------------ process and real time
def test_stale_read_is_g_single_realtime_and_only_strict_serializability_forbids_it():
    text = """
        1 ok ax1
        2 ok rx
        3 ok rx1
    """
    strict = check(text)
    only(strict, "G-single-realtime")
    steps = strict.anomalies["G-single-realtime"][0]["steps"]
    assert {s["rel"] for s in steps} == {"rw", "rt"}
    assert any("completed (line 1) before T" in s["text"] and "was invoked (line 2)" in s["text"] for s in steps)
    assert check(text, consistency="serializable").verdict == "VALID"


def test_read_your_writes_violation_is_g_single_process():
    r = check("""
        1 ok ax1
        1 ok rx
    """, consistency="strong-session-serializable")
    only(r, "G-single-process")
    assert any(s["rel"] == "process" for s in r.anomalies["G-single-process"][0]["steps"])
    assert check("1 ok ax1\n2 ok rx", consistency="strong-session-serializable").verdict == "VALID"


def test_g0_realtime_and_g1c_realtime():
    g0 = check("""
        1 ok ax1
        2 ok ax2
        3 ok rx21
    """)
    only(g0, "G0-realtime")
    g1c = check("""
        1 ok ax1 ry1
        2 ok ay1
    """)
    only(g1c, "G1c-realtime")


# ------------------------------------------------------------------------------ without cycles
def test_g1a_aborted_read_and_dirty_update():
    r = check("""
        1 fail ax1
        2 ok ax2
        3 ok rx12
    """)
    assert {"G1a", "dirty-update"} <= set(r.forbidden), r.format()
    assert "appended by failed txn" in r.anomalies["G1a"][0]["text"]


def test_g1b_intermediate_read():
    r = check("""
        1 invoke ax1 ax2
        2 invoke rx
        2 ok rx1
        1 ok ax1 ax2
    """)
    assert "G1b" in r.forbidden, r.format()
    assert "intermediate append" in r.anomalies["G1b"][0]["text"]


def test_internal_inconsistency():
    r = check("1 ok ax1 rx")
    assert r.forbidden == ["internal"], r.format()
    assert "imply [... 1]" in r.anomalies["internal"][0]["text"]
    assert check("1 ok rx ax1 rx1").verdict == "VALID"


def test_future_read():
    r = check("1 ok rx1 ax1")
    assert "future-read" in r.forbidden, r.format()


def test_incompatible_order():
    r = check("""
        1 invoke ax1
        2 invoke ax2
        1 ok ax1
        2 ok ax2
        3 ok rx12
        4 ok rx21
    """)
    assert "incompatible-order" in r.forbidden, r.format()
    assert "neither is a prefix" in r.anomalies["incompatible-order"][0]["text"]


def test_duplicate_elements_and_garbage_read():
    r = check("""
        1 ok ax1
        2 ok rx11
        3 ok ry9
    """)
    assert {"duplicate-elements", "garbage-read"} <= set(r.forbidden), r.format()


# ------------------------------------------------------------------------------ valid and unknown
def test_serial_and_concurrent_serializable_histories_pass():
    serial = check("""
        1 ok ax1 ry
        2 ok rx1 ay1
        1 ok rx1 ry1 ax2
        3 ok rx12 ry1
    """)
    assert serial.verdict == "VALID", serial.format()
    concurrent = check("""
        1 invoke ax1 ry
        2 invoke ay1 rx
        1 ok ax1 ry
        2 ok ay1 rx1
        3 ok rx1 ry1
    """)
    assert concurrent.verdict == "VALID", concurrent.format()


def test_indeterminate_txns_may_or_may_not_have_committed():
    assert check("1 info ax1\n2 ok rx1").verdict == "VALID"
    assert check("1 info ax1\n2 ok rx").verdict == "VALID"
    # but an info txn that was seen is ordered like any other
    r = check("""
        1 info ax1 ay1
        2 ok rx1 ry
        3 ok ry1
    """, consistency="serializable")
    only(r, "G-single")


def test_duplicate_appends_make_the_history_uncheckable():
    r = check("1 ok ax1\n2 ok ax1")
    assert r.verdict == "UNKNOWN" and "appended to key :x more than once" in r.unknown_reasons[0]


def test_edge_budget_answers_unknown():
    r = check("1 ok ax1\n2 ok rx1 ay1\n3 ok ry1", max_edges=1)
    assert r.verdict == "UNKNOWN" and "more than 1 edges" in r.unknown_reasons[0]


# ------------------------------------------------------------------------------ rw-register
def reg(text: str, **kwargs):
    return check(text, "rw-register", **kwargs)


def test_register_g1a_g1b_internal_garbage():
    assert "G1a" in reg("1 fail wx1\n2 ok rx1").forbidden
    assert "G1b" in reg("1 invoke wx1 wx2\n2 ok rx1\n1 ok wx1 wx2").forbidden
    assert reg("1 ok wx1 rx2\n2 ok wx2").forbidden == ["internal"]
    assert "garbage-read" in reg("1 ok rx9").forbidden


def test_register_g1c():
    r = reg("""
        1 invoke wx1 ry
        2 invoke wy1 rx
        1 ok wx1 ry1
        2 ok wy1 rx1
    """)
    only(r, "G1c")


def test_register_read_skew_is_g_single():
    r = reg("""
        1 invoke wx1 wy1
        2 invoke rx ry
        1 ok wx1 wy1
        2 ok rx1 ry_
    """, consistency="serializable")
    only(r, "G-single")
    assert any("came later in the version order (every value follows the initial nil)" in s["text"]
               for s in r.anomalies["G-single"][0]["steps"])


def test_register_lost_update_and_write_skew():
    r = reg("""
        1 invoke rx wx1
        2 invoke rx wx2
        1 ok rx_ wx1
        2 ok rx_ wx2
    """, consistency="serializable")
    assert {"lost-update", "G2-item"} <= set(r.forbidden), r.format()


def test_register_stale_read_needs_real_time():
    text = "1 ok wx1\n2 ok rx_"
    # the stale read also contradicts the real-time version order Elle infers for linearizable keys
    only(reg(text), "G-single-realtime", "cyclic-versions")
    assert reg(text, consistency="serializable").verdict == "VALID"


def test_register_cyclic_versions_when_keys_are_not_linearizable():
    r = reg("""
        1 ok wx1
        2 ok wx2
        3 ok rx1
    """)
    assert "cyclic-versions" in r.forbidden, r.format()
    assert "linearizable" in r.anomalies["cyclic-versions"][0]["text"]


def test_register_version_order_from_writes_follow_reads():
    # T2 read 1 and wrote 2, so 1 < 2; T3 read 2 then T4 saw 1: G-single under serializability
    r = reg("""
        1 ok wx1
        2 ok rx1 wx2
        3 invoke rx ry
        4 invoke wy1
        4 ok wy1
        3 ok rx2 ry_
    """, consistency="serializable")
    assert r.verdict == "VALID", r.format()
    assert reg("1 ok wx1\n2 ok rx1 wx2", consistency="serializable").stats["version_sources"] == ["initial", "wfr"]


@pytest.mark.parametrize("model", ["list-append", "rw-register"])
def test_a_serial_register_history_passes(model):
    if model == "list-append":
        assert check("1 ok ax1\n2 ok rx1 ax2\n3 ok rx12").verdict == "VALID"
    else:
        assert reg("1 ok wx1\n2 ok rx1 wx2\n3 ok rx2").verdict == "VALID"
