"""The clients: writes retried until acknowledged (so every write must eventually commit once the
cluster heals) and ReadIndex reads, sent to random nodes, stale leaders included.

A write is acknowledged when the node the client sent it to applies it: committed and applied, as
the server does before answering. The checker then holds the cluster to that answer forever.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from kalamdb.raft.core import NotLeader, ProposalRejected
from kalamdb.sim.statemachine import encode_command

if TYPE_CHECKING:
    from kalamdb.sim.node import SimNode
    from kalamdb.sim.simulation import Simulation


class Client:
    __slots__ = (
        "acked",
        "keys",
        "next_op",
        "next_read",
        "pending",
        "reads_started",
        "rng",
        "running",
        "sim",
    )

    def __init__(self, sim: Simulation, rng: random.Random) -> None:
        self.sim = sim
        self.rng = rng
        self.next_op = 1
        self.keys: dict[int, int] = {}  # op_id -> key
        self.pending: dict[int, tuple[int, int, int]] = {}  # op_id -> (node, incarnation, attempt)
        self.running = False
        self.acked = 0
        self.reads_started = 0
        self.next_read = 1

    def start(self) -> None:
        self.running = True
        p = self.sim.params
        self.sim.loop.after(self._gap(p.propose_interval), self._write_loop)
        self.sim.loop.after(self._gap(p.read_interval), self._read_loop)

    def _gap(self, mean: int) -> int:
        return 1 + int(self.rng.expovariate(1.0 / mean))

    # --- writes -----------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        if not self.running:
            return
        p = self.sim.params
        if len(self.pending) < p.max_pending:
            op = self.next_op
            self.next_op += 1
            self.keys[op] = self.rng.randrange(p.keys)
            self._submit(op, 1)
        self.sim.loop.after(self._gap(p.propose_interval), self._write_loop)

    def _submit(self, op: int, attempt: int) -> None:
        sim = self.sim
        node = sim.pick_leader(self.rng)
        retry = sim.params.retry_after
        if node is None:
            self.pending[op] = (0, 0, attempt)
            sim.loop.after(retry // 4, self._retry, op, attempt)
            return
        try:
            index = node.core.propose(encode_command(op, self.keys[op]))
        except (NotLeader, ProposalRejected) as exc:
            self.pending[op] = (0, 0, attempt)
            sim.trace.add(node.id, "refused", f"op {op}: {exc}")
            sim.loop.after(retry // 4, self._retry, op, attempt)
            return
        self.pending[op] = (node.id, node.incarnation, attempt)
        sim.trace.add(node.id, "propose", f"op {op} key {self.keys[op]} -> index {index} (attempt {attempt})")
        node.kick()
        sim.loop.after(retry, self._retry, op, attempt)

    def _retry(self, op: int, attempt: int) -> None:
        p = self.pending.get(op)
        if p is not None and p[2] == attempt:
            self._submit(op, attempt + 1)

    def on_applied(self, node: SimNode, op: int) -> None:
        p = self.pending.get(op)
        if p is not None and p[0] == node.id and p[1] == node.incarnation:
            del self.pending[op]
            self.acked += 1
            index = node.sm.first_index[op]
            self.sim.checker.on_ack(op, self.keys[op], index)
            self.sim.trace.add(node.id, "ack", f"op {op} at {index}")

    # --- reads ------------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        if not self.running:
            return
        sim = self.sim
        up = [n for n in sim.node_list if n.up]
        if up:
            node = self.rng.choice(up)
            key = self.rng.randrange(sim.params.keys)
            ctx = b"r%d" % self.next_read
            self.next_read += 1
            floor = sim.checker.read_floor(key)
            try:
                node.core.read_index(ctx)
            except NotLeader:
                pass
            else:
                self.reads_started += 1
                node.reads[ctx] = (key, floor)
                sim.trace.add(node.id, "read-idx", f"{ctx!r} key {key} floor {floor}")
                node.kick()
        sim.loop.after(self._gap(sim.params.read_interval), self._read_loop)
