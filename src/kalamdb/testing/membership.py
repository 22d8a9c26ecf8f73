"""Membership changes of a kit cluster that report their outcome instead of insisting on success:
what a chaos nemesis needs while the network and the processes fail (`c.membership`).

Each change goes through the SQL a user would send to the leader (CLUSTER JOIN, CLUSTER LEAVE,
CLUSTER TRANSFER LEADER) and ends as a `Change` whose `outcome` is Jepsen's: "ok" (it happened),
"fail" (it certainly did not: refused before anything was proposed, or a definite error such as
NOT_LEADER), or "info" (indeterminate: a timeout, a lost connection, CLUSTER_UNAVAILABLE -- it may
still take effect). The kit keeps every node whose fate is open running; `reconcile()` settles the
kit's node list against the configuration the cluster really has once the faults are healed.

`ClusterTestServer.add_node` / `remove_node` are the strict versions for tests that expect success.
"""

from __future__ import annotations

import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from kalamdb.client import Response
from kalamdb.testing.nodes import ClusterError

if TYPE_CHECKING:
    from kalamdb.testing.cluster import ClusterTestServer
    from kalamdb.testing.ops import NodeRef
    from kalamdb.testing.process import NodeProcess

# refused before anything was proposed: the change certainly did not happen
DEFINITE_CODES = ("NOT_LEADER", "LEADER_NOT_AVAILABLE", "INVALID_PARAMETER", "INVALID_SQL", "PERMISSION_DENIED")
JOIN_TIMEOUT_S = 40.0  # CLUSTER JOIN answers once the node is a voter (the node waits up to 30 s)


@dataclass
class Change:
    """One membership change and what came of it (times: monotonic seconds)."""

    op: str  # "add" | "remove" | "replace" | "transfer"
    node_id: int | None = None  # the node removed, replaced or made leader
    new_node_id: int | None = None  # the node added (add, replace)
    outcome: str = "info"  # "ok" | "fail" | "info"
    error: str | None = None
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    voters_after: list[int] | None = None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Config:
    """The configuration the agreed leader reports."""

    leader: int
    voters: list[int]
    learners: list[int]

    @property
    def members(self) -> list[int]:
        return sorted({*self.voters, *self.learners})


def outcome_of(resp: Response) -> tuple[str, str | None]:
    """ok / fail / info for a membership statement's answer, and the error text."""
    if resp.ok:
        return "ok", None
    err = resp.error or {}
    text = f"{err.get('code')}: {err.get('message')}"
    if str(err.get("details") or "").startswith("definite") or err.get("code") in DEFINITE_CODES:
        return "fail", text
    return "info", text


class MembershipChanges:
    """`c.membership`: add, remove, replace and leadership transfer with outcomes, and the
    reconciliation of the kit's node list with the cluster's configuration."""

    def __init__(self, cluster: ClusterTestServer):
        self._c = cluster
        self.history: list[Change] = []
        # planted-bug runs (KALAMDB_UNSAFE_REMOVED_VOTES): removed nodes keep running ("ghosts")
        self.keep_removed = False
        self.ghosts: list[NodeProcess] = []

    def config(self, timeout: float = 10.0) -> Config:
        lead = self._c.leader(timeout)
        h = lead.health(timeout=5.0)
        return Config(lead.node_id, list(h.get("voters") or []), list(h.get("learners") or []))

    def _done(self, ch: Change) -> Change:
        ch.ended = time.monotonic()
        self.history.append(ch)
        return ch

    def _leader(self, timeout: float) -> tuple[NodeProcess | None, str | None]:
        try:
            return self._c.leader(timeout=min(timeout, 5.0)), None
        except ClusterError as exc:
            return None, f"no leader to send it to: {str(exc).splitlines()[0]}"

    def _on_leader(self, sql: str, timeout: float, lead: NodeProcess | None = None) -> tuple[str, str | None]:
        if lead is None:
            lead, why = self._leader(timeout)
            if lead is None:
                return "fail", why
        try:
            with lead.client(timeout=timeout) as cl:
                return outcome_of(cl.sql(sql))
        except OSError as exc:  # sent, and the answer was lost: it may have happened
            return "info", f"{type(exc).__name__}: {exc}"

    # ---- changes ----------------------------------------------------------------------------------
    def add(self, timeout: float = JOIN_TIMEOUT_S) -> Change:
        """Start a fresh node (a new id) and CLUSTER JOIN it: learner, catch up, voter."""
        ch = Change("add")
        lead, why = self._leader(timeout)  # before the new node runs: it knows no leader until it joins
        if lead is None:
            ch.outcome, ch.error = "fail", why
            return self._done(ch)
        try:
            n = self._c.new_node(timeout=min(timeout, 30.0))
        except ClusterError as exc:
            ch.outcome, ch.error = "fail", f"the new node did not start: {str(exc).splitlines()[0]}"
            return self._done(ch)
        ch.new_node_id = n.node_id
        ch.outcome, ch.error = self._on_leader(f"CLUSTER JOIN {n.node_id} '{n.rpc_addr}' '{n.listen_url}'",
                                               timeout, lead)
        if ch.outcome == "fail":  # certainly not a member: the process goes
            n.terminate(signal.SIGKILL)
            self._c._drop(n)
        return self._done(ch)

    def remove(self, node: NodeRef, timeout: float = 30.0) -> Change:
        """CLUSTER LEAVE the node (the leader included); its process stops once the removal is
        acknowledged (and keeps running while the outcome is open)."""
        n = self._c.get_node(node)
        ch = Change("remove", node_id=n.node_id)
        ch.outcome, ch.error = self._on_leader(f"CLUSTER LEAVE {n.node_id}", timeout)
        if ch.outcome == "ok":
            self._retire(n)
        return self._done(ch)

    def _retire(self, n: NodeProcess) -> None:
        if self.keep_removed:
            self.ghosts.append(n)  # still running; stopped at shutdown
        else:
            n.terminate(signal.SIGTERM, timeout=10)
        self._c._drop(n)

    def replace(self, node: NodeRef, timeout: float = JOIN_TIMEOUT_S) -> Change:
        """Remove the node, wipe its data, and add a fresh node under a new id."""
        n = self._c.get_node(node)
        ch = Change("replace", node_id=n.node_id)
        removed = self.remove(n, timeout)
        self.history.remove(removed)
        if removed.outcome != "ok":
            ch.outcome, ch.error = removed.outcome, f"remove: {removed.error}"
            return self._done(ch)
        shutil.rmtree(n.data_dir, ignore_errors=True)
        added = self.add(timeout)
        self.history.remove(added)
        ch.new_node_id, ch.outcome, ch.error = added.new_node_id, added.outcome, added.error
        if added.outcome == "fail":  # the removal happened: the change as a whole did, only in part
            ch.outcome, ch.error = "info", f"removed, but the add failed: {added.error}"
        return self._done(ch)

    def transfer(self, node: NodeRef, timeout: float = 10.0) -> Change:
        """CLUSTER TRANSFER LEADER to the node."""
        n = self._c.get_node(node)
        ch = Change("transfer", node_id=n.node_id)
        ch.outcome, ch.error = self._on_leader(f"CLUSTER TRANSFER LEADER {n.node_id}", timeout)
        return self._done(ch)

    # ---- after the faults --------------------------------------------------------------------------
    def reconcile(self, timeout: float = 60.0) -> Config:
        """Once healed: wait until the configuration has no learner left (caught-up learners are
        promoted by the leader), stop and drop kit nodes that are not members, check every member
        is a kit node and running, and wait until all members agree on the voters."""
        deadline = time.monotonic() + timeout
        c = self._c

        def settled() -> tuple[bool, str]:
            cfg = self.config(timeout=max(1.0, deadline - time.monotonic()))
            return not cfg.learners, f"learners still catching up: {cfg.learners} (voters {cfg.voters})"

        c.wait_until("a configuration without learners", settled, max(1.0, deadline - time.monotonic()))
        cfg = self.config()
        for n in [n for n in c.nodes if n.node_id not in cfg.members]:
            self._retire(n)
        unknown = sorted(set(cfg.members) - {n.node_id for n in c.nodes})
        if unknown:
            raise ClusterError(f"the configuration has members the kit does not run: {unknown} (voters {cfg.voters})")
        c.processes.start("all", timeout=max(1.0, deadline - time.monotonic()))
        c.wait_for_voters(set(cfg.voters), timeout=max(1.0, deadline - time.monotonic()))
        return cfg
