"""Cluster membership as this node keeps it: the address book of every node's addresses, the
replicated metadata entries that change it, and the leader's step that moves the Raft membership
toward it.

Formation (OpenRaft style): node 1 bootstraps alone; the leader adds every known peer as a learner
and promotes it to voter once it has caught up (`Reconciler`). `CLUSTER JOIN`/`LEAVE`
(node/cluster_statements.py) only record a peer or its removal in the log; the reconciler does the
rest, one membership step at a time.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from kalamdb.node.config import Peer
from kalamdb.node.driver import RaftDriver
from kalamdb.node.proposing import meta_command

log = logging.getLogger("kalamdb.node")

RECONCILE_EVERY_S = 0.05
CATCH_UP_SLACK = 16  # a learner within this many entries of the commit index is promoted


class AddressBook:
    """Node id -> (rpc, api) addresses: from configuration, then from replicated metadata entries,
    kept in a node-local file so a restarted node remembers peers that joined at run time."""

    def __init__(self, path: Path, own: Peer, configured: list[Peer]):
        self.path = path
        self.peers: dict[int, Peer] = {own.node_id: own}
        self.removed: set[int] = set()
        self.configured = {p.node_id for p in configured} | {own.node_id}
        for p in configured:
            self.peers[p.node_id] = p
        try:
            saved = json.loads(path.read_text())
            for nid, rpc, api in saved.get("peers", []):
                self.peers.setdefault(int(nid), Peer(int(nid), rpc, api))
            self.removed = {int(x) for x in saved.get("removed", [])}
        except FileNotFoundError:
            pass
        except (ValueError, TypeError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"peers": [[p.node_id, p.rpc_addr, p.api_addr] for p in self.peers.values()],
                                   "removed": sorted(self.removed)}))
        os.replace(tmp, self.path)

    def wanted(self) -> set[int]:
        return set(self.peers) - self.removed

    def api_addr(self, node_id: int) -> str | None:
        """The HTTP address of a node, if known (0, no leader, is never known)."""
        peer = self.peers.get(node_id)
        return peer.api_addr if peer else None


def apply_meta(book: AddressBook, driver: RaftDriver, meta: dict) -> None:
    """A replicated metadata entry was applied (same order on every node)."""
    op = meta.get("op")
    if op == "peer":
        peer = Peer(int(meta["id"]), str(meta["rpc"]), str(meta["api"]))
        book.removed.discard(peer.node_id)
        # This node's own configuration wins: it may route a peer through a proxy or another
        # interface than the address the peer announced.
        if peer.node_id not in book.configured:
            book.peers[peer.node_id] = peer
            driver.set_peer(peer.node_id, peer.rpc_hostport)
    elif op == "remove":
        book.removed.add(int(meta["id"]))
    elif op == "peers":
        for nid, rpc, api in meta.get("peers", []):
            if int(nid) not in book.peers:
                peer = Peer(int(nid), rpc, api)
                book.peers[peer.node_id] = peer
                driver.set_peer(peer.node_id, peer.rpc_hostport)
    book.save()


class Reconciler:
    """The leader's membership upkeep (the driver's maintenance step, on the Raft thread)."""

    def __init__(self, book: AddressBook, driver: RaftDriver):
        self.book = book
        self.driver = driver
        self._published_book: tuple | None = None

    def step(self) -> None:
        """(Raft thread, every RECONCILE_EVERY_S on the leader) move the membership one step toward
        the address book: remove, add as learner, promote a caught-up learner, publish addresses."""
        d = self.driver
        core = d.core
        m = core.membership
        if m.is_joint or core.commit_index < core.last_index - 1000:
            return
        wanted = self.book.wanted()
        for nid in sorted(m.members - wanted):
            if nid in m.voters:
                core.change_membership(set(m.voters) - {nid})
            else:
                core.remove_learner(nid)
            return
        for nid in sorted(wanted - m.members):
            core.add_learner(nid)
            return
        progress = core.progress
        for nid in sorted(m.learners & wanted):
            pr = progress.get(nid)
            # caught up, and alive: promoting a learner that never answered would cost the quorum
            if pr is not None and pr.recent_active and pr.match > 0 and pr.match >= core.commit_index - CATCH_UP_SLACK:
                log.info("promoting node %d to voter (match %d, commit %d)", nid, pr.match, core.commit_index)
                core.change_membership(set(m.voters) | {nid})
                return
        book = tuple(sorted((p.node_id, p.rpc_addr, p.api_addr) for p in self.book.peers.values()))
        if book != self._published_book:
            self._published_book = book
            core.propose(meta_command({"op": "peers", "peers": [list(b) for b in book]}))
