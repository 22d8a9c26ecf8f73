"""A node's failpoints: the Raft log's disk failpoints plus the two the driver owns (state apply and
snapshot write), and what a node does after a storage failure.

Switched on at start by ``KALAMDB_FAILPOINTS="log.fsync=1*eio;state.apply=delay(5)"`` or at run time
through ``/v1/api/admin/failpoints`` (server/admin_routes.py). One object per node, shared by the log
storage and the driver, so a run-time change reaches every point at once.

After a failed fsync (or a failed apply, a Raft safety violation, a Raft loop that died) nothing on
this node can be trusted: the page cache
may have dropped the data the kernel said it would write. Like etcd, the node then logs CRITICAL and
exits with ``STORAGE_FAILURE_EXIT_CODE`` instead of lingering half-broken; it never acknowledged the
write it could not make durable (Raft answers only after persist), and on restart it recovers from
what really is on disk while the others replicate anything it misses. ``KALAMDB_ON_STORAGE_FAILURE=
refuse`` keeps the process alive but refusing every request (health "unhealthy", 503s) for debugging.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from kalamdb.raftio.wal import CRASH_EXIT_CODE, Failpoints

FAILPOINTS_ENV = "KALAMDB_FAILPOINTS"
ON_FAILURE_ENV = "KALAMDB_ON_STORAGE_FAILURE"
STORAGE_FAILURE_EXIT_CODE = 87
"""Exit status of a node that stopped itself after a storage failure (86 is a "crash" failpoint)."""
FAILPOINT_CRASH_EXIT_CODE = CRASH_EXIT_CODE


class NodeFailpoints(Failpoints):
    """Failpoints of the log storage plus ``state.apply`` (before the engine applies a batch),
    ``snapshot.write`` (before a state-machine snapshot is written) and ``raft.ready`` (each turn of
    the Raft thread's Ready loop: an error there stands for any bug that kills the loop)."""

    POINTS = (*Failpoints.POINTS, "state.apply", "snapshot.write", "raft.ready")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> NodeFailpoints:
        env = os.environ if env is None else env
        text = env.get(FAILPOINTS_ENV, "")
        try:
            return cls.from_string(text)
        except ValueError as exc:
            raise ValueError(f"{FAILPOINTS_ENV}={text!r}: {exc}") from None


def exit_on_storage_failure(env: Mapping[str, str] | None = None) -> bool:
    """Whether a storage failure ends the process (the default) rather than leaving it refusing."""
    env = os.environ if env is None else env
    mode = env.get(ON_FAILURE_ENV, "exit").strip().lower()
    if mode not in ("exit", "refuse"):
        raise ValueError(f"{ON_FAILURE_ENV} must be exit or refuse, got {mode!r}")
    return mode == "exit"


def die(node_id: int, exc: BaseException, what: str = "storage failure") -> None:
    """Log CRITICAL, flush the logs and end the process at once (no cleanup that could touch disk)."""
    logging.getLogger("kalamdb.node").critical(
        "node %d: %s (%r); exiting with status %d so that nothing half-broken lingers: "
        "restart the node to recover from what is on disk", node_id, what, exc, STORAGE_FAILURE_EXIT_CODE)
    logging.shutdown()
    os._exit(STORAGE_FAILURE_EXIT_CODE)
