"""In-process clusters of real RaftDrivers (real Raft threads, fsynced log storage, TCP transport)
over a toy state machine, for tests of the driver's own behaviour: forwarding, fail-stop."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

from kalamdb.node.driver import RaftDriver
from kalamdb.testing.waiting import async_wait_for

SECRET = b"driver-test-secret-0123456789"
HEAVY_APPLY_S = 0.05


class ListMachine:
    """A state machine that appends each command to a list; its outcome is (node, position).
    Commands starting with b"heavy" are not light; `threads` records which thread applied each."""

    def __init__(self, node_id: int):
        self.node_id = node_id
        self.items: list[bytes] = []
        self.threads: list[str] = []
        self.batches: list[list[bytes]] = []  # the commands of each apply_batch call (one transaction)
        self.applied_index = 0

    def noop_command(self) -> bytes:
        return b"noop"

    def light_batch(self, items: list[tuple[int, bytes]]) -> bool:
        return not any(cmd.startswith(b"heavy") for _, cmd in items)

    def apply_batch(self, items: list[tuple[int, bytes]]) -> list:
        self.batches.append([cmd for _, cmd in items])
        out = []
        for index, cmd in items:
            self.applied_index = index
            if cmd != b"noop":
                if cmd.startswith(b"heavy"):
                    time.sleep(HEAVY_APPLY_S)  # a costly command: the apply thread stays busy a while
                self.items.append(cmd)
                self.threads.append(threading.current_thread().name)
            out.append(("applied on", self.node_id, len(self.items)))
        return out

    def snapshot_to(self, path: Path) -> int:
        Path(path).write_text(json.dumps({"i": self.applied_index, "items": [x.hex() for x in self.items]}))
        return self.applied_index

    def restore_from(self, path: Path) -> None:
        d = json.loads(Path(path).read_text())
        self.applied_index, self.items = d["i"], [bytes.fromhex(x) for x in d["items"]]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


async def start_cluster(tmp: Path, n: int = 3, seed: int = 0) -> list[RaftDriver]:
    """n drivers, node 1 bootstraps, the others join as learners and are promoted."""
    ports = free_ports(n)
    addrs = {i + 1: ("127.0.0.1", ports[i]) for i in range(n)}
    drivers = []
    for nid, addr in addrs.items():
        d = RaftDriver(node_id=nid, raft_dir=tmp / f"n{nid}", db=ListMachine(nid), transport_secret=SECRET,
                       rpc_listen=addr, cluster_id="driver-test",
                       peers={p: a for p, a in addrs.items() if p != nid}, tick_ms=10, heartbeat_ticks=2,
                       election_ticks=15, bootstrap=nid == 1, seed=seed * 100 + nid)
        await d.start()
        drivers.append(d)
    lead = drivers[0]
    await async_wait_for(lambda: lead.is_leader, 5, "node 1 to lead")
    for nid in list(addrs)[1:]:
        await lead.call(lead.core.add_learner, nid)
        await async_wait_for(lambda nid=nid: (pr := lead.core.progress.get(nid)) is not None
                             and pr.match >= lead.core.commit_index, 5, f"node {nid} to catch up")
        voters = set(lead.core.membership.voters) | {nid}
        await lead.call(lead.core.change_membership, voters)
        await async_wait_for(lambda voters=voters: lead.core.membership.voters == voters
                             and lead.core.commit_index >= lead.core.last_index, 5, f"node {nid} to vote")
    await async_wait_for(lambda: all(d.leader_id == 1 for d in drivers), 5, "everyone to know the leader")
    return drivers


async def stop_all(drivers: list[RaftDriver]) -> None:
    for d in drivers:
        await d.stop()

