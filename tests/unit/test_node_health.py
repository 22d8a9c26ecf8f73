"""node/health.py: fail-stop as every part of the driver sees it (refuse mode; the exit mode is
tests/faults_cluster/test_fail_stop.py's, with real processes)."""

from __future__ import annotations

import pytest

from kalamdb.errors import KalamError
from kalamdb.node.health import NodeHealth
from kalamdb.raft.core import RaftSafetyError


def _health() -> tuple[NodeHealth, list[KalamError]]:
    ended: list[KalamError] = []
    return NodeHealth(4, exit_on_failure=False, on_fatal=ended.append), ended


def test_a_running_node_takes_work():
    health, ended = _health()
    health.check_alive()
    assert not health.closed and health.fatal is None and ended == []


def test_a_failure_closes_the_node_and_ends_every_wait_once_as_indefinite():
    health, ended = _health()
    err = OSError(5, "Input/output error")
    health.fail(err)
    health.fail(RuntimeError("a second failure changes nothing"))
    assert health.fatal is err and health.closed
    assert len(ended) == 1
    assert ended[0].status == 503 and "storage failure on node 4" in ended[0].message
    assert ended[0].details.startswith("indefinite")
    with pytest.raises(KalamError) as e:
        health.check_alive()
    assert e.value.status == 503 and "after a failure" in e.value.message


def test_a_safety_violation_is_named_as_one():
    health, ended = _health()
    health.fail(RaftSafetyError("two leaders in term 3"))
    assert "Raft safety violation on node 4" in ended[0].message


def test_a_stopping_node_refuses_new_work_but_is_not_failed():
    health, ended = _health()
    health.stopping = True
    assert health.closed and health.fatal is None and ended == []
    with pytest.raises(KalamError) as e:
        health.check_alive()
    assert "shutting down" in e.value.message
