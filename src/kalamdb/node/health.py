"""Whether a node's Raft still does work: running, stopping, or stopped for good by a failure.

Fail-stop (node/failpoints.py): after a failed fsync or apply, a Raft safety violation or a dead
Raft loop nothing on the node can be trusted. By default the process exits at once (status 87);
with `KALAMDB_ON_STORAGE_FAILURE=refuse` it stays up refusing all work, every waiting write ends
with an indefinite error, and the reason shows in its health. Every part of the driver asks this
one object, so a failure seen on any thread closes them all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from kalamdb.errors import KalamError
from kalamdb.node.failpoints import die
from kalamdb.raft.core import RaftSafetyError

log = logging.getLogger("kalamdb.raft.driver")


class NodeHealth:
    def __init__(self, node_id: int, *, exit_on_failure: bool, on_fatal: Callable[[KalamError], None]):
        """`on_fatal(err)` (any thread) ends every wait with `err`, once, when the node refuses on."""
        self.node_id = node_id
        self.fatal: BaseException | None = None
        self.stopping = False
        self._exit_on_failure = exit_on_failure
        self._on_fatal = on_fatal

    @property
    def closed(self) -> bool:
        """Stopped by a failure, or stopping: no new work is taken."""
        return self.fatal is not None or self.stopping

    def check_alive(self) -> None:
        """Raise the 503 a caller gets from a node that takes no new work."""
        if self.fatal is not None:
            raise KalamError("CLUSTER_UNAVAILABLE", f"node stopped serving after a failure: {self.fatal!r}",
                             status=503)
        if self.stopping:
            raise KalamError("CLUSTER_UNAVAILABLE", "node is shutting down", status=503)

    def fail(self, exc: BaseException) -> None:
        """(any thread) Nothing on this node can be trusted any more: exit (default), or refuse all
        work until restarted."""
        if self.fatal is not None:
            return
        self.fatal = exc
        kind = ("Raft safety violation" if isinstance(exc, RaftSafetyError)
                else "storage failure" if isinstance(exc, OSError) else "fatal error")
        if self._exit_on_failure:
            die(self.node_id, exc, kind)
        log.critical("node %d: %s, refusing all further work until restarted: %r", self.node_id, kind, exc)
        self._on_fatal(KalamError("CLUSTER_UNAVAILABLE", f"{kind} on node {self.node_id}: {exc}", status=503,
                                  details="indefinite: the write may or may not have been applied"))
