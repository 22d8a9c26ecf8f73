"""Outside ground truth: Porcupine's verdicts on 102 Jepsen etcd histories and 6 kv histories
(copied into tests/data with their MIT licence; see the README there)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kalamdb.chaos.linearizability import Verdict, check_operations
from kalamdb.chaos.models import model_for
from kalamdb.chaos.parsers import load_history

DATA = Path(__file__).resolve().parent.parent / "data" / "linearizability"
EXPECTED = {"linearizable": Verdict.LINEARIZABLE, "not-linearizable": Verdict.NOT_LINEARIZABLE}


def _cases(folder: str, model: str) -> list:
    cases = []
    for line in (DATA / folder / "VERDICTS.txt").read_text().splitlines():
        if line.strip():
            name, verdict = line.split()
            cases.append(pytest.param(DATA / folder / name, model, EXPECTED[verdict], id=name))
    return cases


ETCD = _cases("jepsen-etcd", "register")
KV = _cases("kv", "kv")


def test_all_vectors_are_present():
    assert len(ETCD) == 102 and len(KV) == 6


@pytest.mark.parametrize(("path", "model", "expected"), ETCD + KV)
def test_verdict_matches_porcupine(path, model, expected):
    ops = load_history(path)
    result = check_operations(ops, model_for(model), timeout=30, minimize_timeout=2)
    assert result.verdict is expected, result.summary()
    if expected is Verdict.NOT_LINEARIZABLE:
        cex = result.counterexample
        assert cex is not None and cex.ops
        assert {o.call_line for o in cex.ops} <= {o.call_line for o in ops}
        # the witness is itself a non-linearizable history
        again = check_operations(cex.ops, model_for(model), timeout=10, counterexample=False)
        assert again.verdict is Verdict.NOT_LINEARIZABLE
