"""The transactional workloads: Elle's key generator, the SQL of a transaction, and how answers
become completed micro-operations (anything that does not fit is indeterminate, never failed)."""

from __future__ import annotations

import random

import pytest
from click.testing import CliRunner

from kalamdb.chaos.check_cli import check_command, sniff_txn_model
from kalamdb.chaos.txn_workloads import AppendWorkload, RwRegisterWorkload, UnexpectedAnswer, _Keys
from kalamdb.chaos.workloads import WORKLOAD_NAMES, make_workloads
from kalamdb.client import Response

from .test_elle_published import DATA


def test_key_generator_gives_unique_values_and_retires_keys():
    keys = _Keys(keys=3, writes_per_key=4, capacity=50)
    rng = random.Random(7)
    txns = [keys.txn(rng, "append", 4) for _ in range(200)]
    values = [v for t in txns for f, _, v in t if f == "append"]
    assert len(values) == len(set(values)) and values  # unique, as list-append needs
    per_key: dict[int, int] = {}
    for t in txns:
        assert 1 <= len(t) <= 4
        for f, k, _ in t:
            if f == "append":
                per_key[k] = per_key.get(k, 0) + 1
    assert max(per_key) >= 10  # keys moved on ...
    assert all(n <= 4 for k, n in per_key.items() if k < max(per_key) - 3)  # ... after 4 writes each


def test_append_sql_and_answers():
    wl = AppendWorkload()
    mops = [["r", 3, None], ["append", 5, 12]]
    assert wl._sql(mops) == ("BEGIN; SELECT v FROM chaos.lists WHERE k = 3; UPDATE chaos.lists SET v = v || ' 12' "
                             "WHERE k = 5; COMMIT")
    ok = Response({"status": "success", "results": [
        {"row_count": 0, "message": "Transaction started"}, {"rows": [[" 1 7 4"]], "row_count": 1},
        {"row_count": 1}, {"row_count": 0, "message": "Transaction committed"}]})
    assert wl._completed(mops, ok) == [["r", 3, [1, 7, 4]], ["append", 5, 12]]
    missing_row = Response({"status": "success", "results": [{}, {"rows": [], "row_count": 0}, {"row_count": 1}, {}]})
    with pytest.raises(UnexpectedAnswer, match="returned 0 rows"):
        wl._completed(mops, missing_row)
    no_update = Response({"status": "success", "results": [{}, {"rows": [[""]]}, {"row_count": 0}, {}]})
    with pytest.raises(UnexpectedAnswer, match="changed 0 rows"):
        wl._completed(mops, no_update)


def test_rw_register_sql_and_answers():
    wl = RwRegisterWorkload()
    mops = [["w", 2, 9], ["r", 2, None]]
    assert wl._sql(mops) == "BEGIN; UPDATE chaos.rw_registers SET v = 9 WHERE k = 2; SELECT v FROM chaos.rw_registers WHERE k = 2; COMMIT"
    ok = Response({"status": "success", "results": [{}, {"row_count": 1}, {"rows": [[None]]}, {}]})
    assert wl._completed(mops, ok) == [["w", 2, 9], ["r", 2, None]]
    assert wl.f == "rw-txn" and AppendWorkload.f == "txn"


def test_workloads_are_registered():
    assert {"append", "rw-register"} <= set(WORKLOAD_NAMES)
    assert [type(w).__name__ for w in make_workloads(["append", "rw-register"])] == ["AppendWorkload",
                                                                                   "RwRegisterWorkload"]


def test_model_is_recognized_from_the_history():
    assert sniff_txn_model('{"type":"invoke","process":0,"f":"txn","value":[["append",1,2]]}') == "list-append"
    assert sniff_txn_model('{"type":"invoke","process":0,"f":"rw-txn","value":[["w",1,2]]}') == "rw-register"
    assert sniff_txn_model('{"type":"invoke","process":0,"f":"write","value":1}') is None
    assert sniff_txn_model((DATA / "paper-example.edn").read_text()) == "list-append"
    r = CliRunner().invoke(check_command, [str(DATA / "paper-example.edn")])
    assert r.exit_code == 1 and "INVALID: G-single x1" in r.output
