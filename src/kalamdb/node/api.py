"""The one interface the HTTP layer has to a node, single (server/standalone.py) or Raft-backed
(node/cluster_node.py). The server calls only these, and never asks what kind of node it has.

SQL itself (prepare, command, execute) is not here: the server runs it on its worker threads
(server/admission.py). The node decides what a write or a read needs from the cluster.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from kalamdb.engine import ClusterOp, Outcome, Prepared, Principal
    from kalamdb.node.failpoints import NodeFailpoints


class Node(Protocol):
    node_id: int

    @property
    def applied_index(self) -> int:
        """The last log index applied to this node's state."""

    def applied_at(self, index: int) -> float | None:
        """When this node applied `index` (`time.monotonic()`, comparable across processes of one
        machine only; node/apply_times.py), None if not yet or too long ago to remember."""

    @property
    def is_leader(self) -> bool: ...

    @property
    def failpoints(self) -> NodeFailpoints | None:
        """Run-time disk failpoints (cluster nodes), None where there are none."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def submit(self, command: bytes) -> tuple[int, Outcome]:
        """Make `command` durable and applied here; (log index, engine Outcome). Errors say in
        `details` whether the write may have happened (definite / indefinite)."""

    async def read_barrier(self, prepared: Prepared, *, consistency: str | None = None,
                           min_applied_index: int | None = None) -> None:
        """Return once this node's applied state may serve `prepared` at that consistency."""

    async def wait_applied(self, index: int, timeout_s: float) -> bool:
        """True once `index` is applied here, False at the deadline."""

    async def cluster(self, op: ClusterOp, principal: Principal) -> list[dict]:
        """Execute a CLUSTER statement."""

    def health(self) -> dict[str, Any]:
        """The body of /v1/api/cluster/health (without the version)."""

    def stats(self) -> dict[str, int | float]:
        """Counters and gauges for /metrics: name -> value (`*_total` are counters)."""
