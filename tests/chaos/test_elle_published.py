"""Outside ground truth for the transactional checker: the example histories that ship with
Jepsen's Elle (copied into tests/data/elle with their licence), with the verdicts Elle's own tests
expect; and the 10,000-transaction time budget."""

from __future__ import annotations

import time
from pathlib import Path

from kalamdb.chaos.elle import check_txns, load_txn_history

DATA = Path(__file__).resolve().parent.parent / "data" / "elle"


def test_paper_example_is_the_g_single_of_the_elle_paper():
    txns, _ = load_txn_history(DATA / "paper-example.edn")
    r = check_txns(txns)
    assert r.forbidden == ["G-single"], r.format()
    case = r.anomalies["G-single"][0]
    assert sorted(t["index"] for t in case["txns"]) == [3, 5, 7]
    texts = " | ".join(s["text"] for s in case["steps"])
    assert "did not observe T2's append of 8 to 255" in texts
    assert "observed T2's append of 8 to key 255" in texts
    assert "appended 3 after T3 appended 4 to 256" in texts


def test_si_without_g_single_is_g2_item_only():
    txns, _ = load_txn_history(DATA / "si-without-g-single.edn")
    assert check_txns(txns, consistency="snapshot-isolation").verdict == "VALID"
    rr = check_txns(txns, consistency="repeatable-read")
    assert rr.forbidden == ["G2-item"], rr.format()
    assert len(rr.anomalies["G2-item"][0]["txns"]) == 3


def test_huge_scc_is_invalid_within_the_time_budget():
    started = time.process_time()
    txns, skipped = load_txn_history(DATA / "huge-scc.edn.gz")
    r = check_txns(txns)
    cpu = time.process_time() - started
    assert len(txns) == 10_254 and skipped == 0
    assert r.verdict == "INVALID" and r.stats["largest_scc"] > 1000, r.summary()
    assert any(name.endswith("-realtime") for name in r.forbidden), r.summary()
    assert cpu < 10, f"{cpu:.1f} s CPU for 10,254 txns: {r.summary()}"
