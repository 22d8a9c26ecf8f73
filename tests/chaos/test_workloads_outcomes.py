"""Clients record what they can know: fail only when the operation certainly did not happen."""

from __future__ import annotations

import random
import socket

import pytest

from kalamdb.chaos.history import HistoryRecorder
from kalamdb.chaos.workloads import (
    ClientContext,
    Definite,
    Indefinite,
    RegisterWorkload,
    classify_error,
    make_workloads,
    run_sql,
)
from kalamdb.client import Client, Response


def _err(code: str, details: str | None = None) -> Response:
    return Response({"status": "error", "error": {"code": code, "message": "m", "details": details}})


@pytest.mark.parametrize(("code", "details", "kind"), [
    ("NOT_LEADER", "definite: the write was not applied", Definite),
    ("LEADER_NOT_AVAILABLE", None, Definite),
    ("CLUSTER_UNAVAILABLE", "indefinite: the write may or may not have been applied", Indefinite),
    ("FORWARD_FAILED", "indefinite: the write may or may not have been applied", Indefinite),
    ("FORWARD_FAILED", "definite: the write was not applied", Definite),
    ("SQL_EXECUTION_ERROR", None, Definite),
    ("INTERNAL_ERROR", None, Indefinite),  # no verdict: the only safe guess is "maybe"
])
def test_error_codes_map_to_definite_or_indefinite(code, details, kind):
    assert isinstance(classify_error(_err(code, details)), kind)


def test_refused_connection_is_definite():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: the kernel refuses, nothing was sent
    with Client(f"http://127.0.0.1:{port}", timeout=2) as c, pytest.raises(Definite):
        run_sql(c, "SELECT 1")


def test_no_answer_after_sending_is_indefinite_and_the_client_becomes_a_new_process():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshake; nobody ever answers
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        rec = HistoryRecorder()
        ctx = ClientContext(1, 1, url, "", random.Random(3), n_clients=4, timeout=0.3)
        wl = RegisterWorkload(read_share=0.0, cas_share=0.0)  # writes only: they stay open on timeout
        wl.operation(ctx, rec)
        assert [e.type for e in rec.events] == ["invoke", "info"]
        assert rec.events[0].process == 1 and ctx.process == 5
        ops = rec.operations()
        assert len(ops) == 1 and ops[0].indeterminate
    finally:
        silent.close()


def test_register_keys_rotate_and_stay_inside_the_preloaded_rows():
    wl = RegisterWorkload(keys=4, ops_per_key=10, capacity=40)
    rng = random.Random(5)
    keys = [wl._key(rng) for _ in range(2000)]
    assert min(keys) == 0 and max(keys) < 40
    assert set(keys[:40]) <= {0, 1, 2, 3}
    assert set(keys[40:80]) <= {4, 5, 6, 7}


def test_unknown_workload_is_refused():
    with pytest.raises(ValueError, match="unknown workload 'queue'"):
        make_workloads(["register", "queue"])
