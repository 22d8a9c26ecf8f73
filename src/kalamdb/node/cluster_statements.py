"""The CLUSTER statements (CLUSTER JOIN, LEAVE, SNAPSHOT, PURGE, STEPDOWN, TRANSFER LEADER, ...):
what a dba asks of the Raft group, answered as result rows (node/cluster_results.py).

Membership changes are recorded as replicated metadata entries (node/cluster_membership.py), and
a statement waits, within a bound, for the reconciler to make them true. Leadership operations
need this node to lead; a follower answers NOT_LEADER with the leader's address, so the HTTP
layer forwards the statement.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from kalamdb.errors import KalamError
from kalamdb.node import cluster_results
from kalamdb.node.cluster_membership import AddressBook
from kalamdb.node.config import ClusterConfig, Peer, split_hostport
from kalamdb.node.driver import RaftDriver
from kalamdb.node.proposals import WriteOutcomeUnknown, definite_not_leader
from kalamdb.raft.core import NotLeader, ProposalRejected

if TYPE_CHECKING:
    from kalamdb.engine import ClusterOp, Principal


class ClusterStatements:
    """Runs CLUSTER statements against this node's driver and address book."""

    def __init__(self, cfg: ClusterConfig, driver: RaftDriver, book: AddressBook):
        self.cfg = cfg
        self.driver = driver
        self.book = book
        self.node_id = cfg.node_id

    async def run(self, op: ClusterOp, principal: Principal) -> list[dict]:
        if principal.role not in ("dba", "system"):
            raise KalamError("PERMISSION_DENIED", f"CLUSTER {op.op.upper()} requires role dba or system")
        name = op.op
        d = self.driver
        if name in ("list", "status"):
            raise KalamError("INVALID_SQL", f"CLUSTER {name.upper()} is not supported; "
                             "query the system.cluster table instead: SELECT * FROM system.cluster")
        if name == "snapshot":
            index = await d.take_snapshot()
            return [cluster_results.group_action("snapshot", snapshot_index=index, snapshots_dir=d.snapshots.dir)]
        if name == "rebalance":
            # Upstream spreads the leaders of its data groups over the nodes; kalamdb has one group,
            # whose leader stays where it is (CLUSTER TRANSFER LEADER moves it).
            return [cluster_results.group_action("rebalance")]
        if name == "clear":
            return [cluster_results.clear(d.snapshots.clear_old())]
        if name == "purge":
            upto = op.upto if op.upto is not None else d.applied_index
            covered = d.last_snapshot_index
            if covered < min(upto, d.applied_index):
                covered = await d.take_snapshot()
            return [_msg(f"Log purged up to index {min(upto, covered)} on node {self.node_id}")]
        if name == "trigger_election":
            await d.call(d.core.campaign)
            return [_msg(f"Election triggered on node {self.node_id}")]
        if name == "stepdown":
            await self._leader_or_raise()
            await d.call(d.core.step_down)
            return [_msg(f"Node {self.node_id} stepped down")]
        if name == "transfer_leader":
            await self._leader_or_raise()
            target = op.node_id
            if target not in d.core.membership.voters:
                raise KalamError("INVALID_PARAMETER", f"node {target} is not a voter of this cluster")
            await d.call(d.core.transfer_leadership, target)
            ok = await self._wait(lambda: d.leader_id == target, self.cfg.election_timeout_ms[1] * 4 / 1000)
            if not ok:
                raise KalamError("CLUSTER_UNAVAILABLE", f"leadership did not move to node {target} in time",
                                 status=503)
            return [_msg(f"Leadership transferred to node {target}")]
        if name == "join":
            return [await self._join(op)]
        if name == "leave":
            return [await self._leave(op.node_id)]
        raise KalamError("INVALID_SQL", f"unsupported CLUSTER operation {name}")

    async def _join(self, op: ClusterOp) -> dict:
        await self._leader_or_raise()
        nid = op.node_id
        if nid is None or not 1 <= nid <= 1023:
            raise KalamError("INVALID_PARAMETER", "CLUSTER JOIN needs a node id between 1 and 1023")
        rpc_addr, api_addr = op.rpc_addr, op.api_addr
        if rpc_addr is None or api_addr is None:  # the parser asks for both
            raise KalamError("INVALID_PARAMETER", "CLUSTER JOIN needs the node's rpc and api addresses")
        split_hostport(rpc_addr, "rpc_addr")
        api = api_addr if "://" in api_addr else f"http://{api_addr}"
        peer = Peer(nid, rpc_addr, api)
        self.book.removed.discard(nid)
        await self._propose_meta({"op": "peer", "id": nid, "rpc": peer.rpc_addr, "api": peer.api_addr},
                                 f"CLUSTER JOIN {nid}")
        ok = await self._wait(lambda: nid in self.driver.core.membership.voters, 30.0)
        if not ok:
            raise KalamError("CLUSTER_UNAVAILABLE", f"node {nid} joined as a learner but did not catch up "
                             "within 30 s; it will be promoted when it does", status=503,
                             details="indefinite: the node is a member and will become a voter once caught up")
        return _msg(f"Node {nid} joined the cluster as a voter")

    async def _leave(self, nid: int | None) -> dict:
        await self._leader_or_raise()
        m = self.driver.core.membership
        if nid not in m.members:
            raise KalamError("INVALID_PARAMETER", f"node {nid} is not a member of this cluster")
        await self._propose_meta({"op": "remove", "id": nid}, f"CLUSTER LEAVE {nid}")
        ok = await self._wait(lambda: nid not in self.driver.core.membership.members
                              or not self.driver.is_leader, 30.0)
        if not ok:
            raise KalamError("CLUSTER_UNAVAILABLE", f"node {nid} could not be removed in time", status=503,
                             details="indefinite: the removal was recorded and may still take effect")
        return _msg(f"Node {nid} removed from the cluster")

    async def _propose_meta(self, meta: dict, what: str) -> None:
        """Replicate a membership entry. A refusal is definite (nothing was appended); no commit
        within the write timeout is not: the entry may still commit and take effect (indefinite,
        like a write's timeout, never an internal error)."""
        try:
            fut = self.driver.propose_meta(meta)
            await asyncio.wait_for(asyncio.shield(fut), self.cfg.write_timeout_ms / 1000)
        except (NotLeader, ProposalRejected) as exc:
            raise definite_not_leader(f"cannot change membership now: {exc}", self.leader_api()) from None
        except TimeoutError:
            raise WriteOutcomeUnknown(
                f"{what} was proposed but not committed within {self.cfg.write_timeout_ms} ms (no quorum "
                "reachable?); it may still take effect: check system.cluster") from None

    async def _wait(self, pred: Callable[[], bool], timeout: float) -> bool:
        """Wait for a predicate on Raft state; it changes only when the Raft loop runs, so this
        re-checks once per tick (a condition with a deadline, never a fixed sleep)."""
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(self.driver.tick_s)
        return True

    def leader_api(self) -> str | None:
        """The leader's HTTP address, when this node knows one (a NOT_LEADER answer carries it)."""
        return self.book.api_addr(self.driver.leader_id)

    async def _leader_or_raise(self) -> None:
        """Return if this node leads; else raise NOT_LEADER (forwardable) or LEADER_NOT_AVAILABLE."""
        driver = self.driver
        if driver.is_leader:
            return
        leader = driver.leader_id or await driver.wait_for_leader(self.cfg.leader_wait_ms / 1000)
        if leader == self.node_id and driver.is_leader:
            return
        if leader:
            raise definite_not_leader(f"node {self.node_id} is not the leader; the leader is node {leader}",
                                      self.leader_api())
        raise KalamError("LEADER_NOT_AVAILABLE",
                         f"no leader elected within {self.cfg.leader_wait_ms} ms (is a majority of the "
                         "cluster reachable?)", status=503, details="definite: the write was not applied")


def _msg(message: str) -> dict:
    return {"row_count": 0, "message": message}
