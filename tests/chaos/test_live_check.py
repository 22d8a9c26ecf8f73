"""The live-exactly-once checker on hand-made streams: it accepts exact streams (with reconnects and
paged loads) and names every kind of violation: gap, duplicate, phantom, unmatched, snapshot."""

from kalamdb.chaos.live_check import Committed, Stream, check_live

TRUTH = [
    Committed(10, 1, "insert", 1, 100, 1),
    Committed(11, 2, "insert", 2, 200, 2),
    Committed(12, 3, "update", 1, 101, 1),
    Committed(13, 4, "insert", 3, 300, 1),
    Committed(14, 5, "delete", 2, None, 2),
    Committed(15, 6, "update", 3, 301, 1),
]


def row(k, v, seq, grp=1):
    return {"k": str(k), "v": str(v), "grp": grp, "_seq": str(seq), "_deleted": False}


def ins(k, v, seq):
    return {"type": "change", "change_type": "insert", "rows": [row(k, v, seq)]}


def upd(k, v, seq, old_seq):
    return {"type": "change", "change_type": "update", "rows": [{"_seq": str(seq), "k": str(k), "v": str(v)}],
            "old_values": [{"_seq": str(old_seq), "k": str(k)}]}


def dele(k, seq):
    return {"type": "change", "change_type": "delete", "old_values": [{"k": str(k), "_seq": str(seq)}]}


def load(rows, point, more=()):
    out = [{"type": "subscription_ack"}]
    for batch in more:
        out.append({"type": "initial_data_batch", "rows": batch, "batch_control": {"has_more": True}})
    out.append({"type": "initial_data_batch", "rows": rows, "batch_control": {"has_more": False,
                                                                               "last_seq_id": point}})
    return out


def stream(events, grp=None, complete=True):
    return Stream("s", grp, [(i, e) for i, e in enumerate(events)], complete)


def verdict(*streams, failed=frozenset()):
    return check_live(TRUTH, list(streams), failed_values=set(failed))


def test_exact_streams_pass():
    full = load([row(1, 100, 10)], 10) + [ins(2, 200, 11), upd(1, 101, 12, 10), ins(3, 300, 13), dele(2, 14),
                                          upd(3, 301, 15, 13)]
    paged = load([row(2, 200, 11, 2)], 12, more=[[row(1, 101, 12)]]) + [ins(3, 300, 13), dele(2, 14),
                                                                          upd(3, 301, 15, 13)]
    resumed = load([], 11) + [upd(1, 101, 12, 10), {"type": "reconnected", "from": 12},
                              {"type": "subscription_ack"},
                              {"type": "initial_data_batch", "rows": [], "batch_control": {"has_more": False,
                                                                                           "last_seq_id": 12}},
                              ins(3, 300, 13), upd(3, 301, 15, 13)]
    resumed[1]["rows"] = [row(1, 100, 10)]
    filtered = load([row(1, 101, 12)], 12, ) + [ins(3, 300, 13), upd(3, 301, 15, 13)]
    res = verdict(stream(full), stream(paged), stream(resumed, grp=1), stream(filtered, grp=1))
    assert res.valid, res.anomalies


def test_gap_duplicate_phantom_unmatched_and_snapshot_are_named():
    gap = load([row(1, 100, 10)], 10) + [ins(2, 200, 11), ins(3, 300, 13), dele(2, 14), upd(3, 301, 15, 13)]
    assert set(verdict(stream(gap)).anomalies) == {"gap"}  # 12 (update of 1) never came
    dup = load([row(1, 100, 10)], 10) + [ins(2, 200, 11), ins(2, 200, 11), upd(1, 101, 12, 10), ins(3, 300, 13),
                                         dele(2, 14), upd(3, 301, 15, 13)]
    assert set(verdict(stream(dup)).anomalies) == {"duplicate"}
    phantom = load([row(1, 100, 10)], 10) + [ins(9, 999, 99)]
    res = verdict(stream(phantom, complete=False), failed={999})
    assert set(res.anomalies) == {"phantom"} and "definitely failed" in res.anomalies["phantom"][0]["why"]
    unmatched = load([row(1, 101, 12)], 12) + [ins(3, 300, 13), dele(2, 14), upd(3, 301, 15, 13)]
    assert set(verdict(stream(unmatched, grp=1)).anomalies) == {"unmatched"}
    stale = load([row(1, 100, 10)], 12) + [ins(3, 300, 13), dele(2, 14), upd(3, 301, 15, 13)]
    res = verdict(stream(stale))
    assert set(res.anomalies) == {"snapshot"}
    assert res.anomalies["snapshot"][0]["stale"] == [1] and res.anomalies["snapshot"][0]["missing"] == [2]


def test_tail_gap_only_for_streams_kept_open():
    short = load([row(1, 100, 10)], 10) + [ins(2, 200, 11)]
    assert verdict(stream(short, complete=False)).valid
    res = verdict(stream(short, complete=True))
    assert set(res.anomalies) == {"gap"} and res.anomalies["gap"][0]["lost_count"] == 4


def test_reload_starts_over():
    events = load([row(1, 100, 10)], 10) + [{"type": "reload", "reason": "x"}] + load(
        [row(1, 101, 12), row(2, 200, 11, 2)], 12) + [ins(3, 300, 13), dele(2, 14), upd(3, 301, 15, 13)]
    res = verdict(stream(events))
    assert res.valid and res.stats["reloads"] == 1
