"""A tiny in-memory Raft cluster for unit tests and examples: synchronous, deterministic, no I/O.

Each node keeps a "disk" (hard state, log, snapshot bytes) that survives `crash()`/`restart()`, and
a toy state machine (the list of applied commands). The harness follows the Ready contract exactly:
chunks and snapshot first, then entries and hard state "persisted", then messages sent, committed
entries applied, and `advance()`. Messages go through msgpack and `Message.from_wire` by default, so
the wire path is exercised too. The big randomized simulator lives in `kalamdb.sim`.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

import msgpack

from kalamdb.raft.core import RaftConfig, RaftCore, ReadState, Role
from kalamdb.raft.messages import Message
from kalamdb.raft.types import Entry, EntryKind, HardState, Membership, PersistentState, SnapshotMeta


class MemNode:
    """One node: the core plus what it has 'on disk' and its applied commands."""

    def __init__(self, node_id: int, cfg: dict, seed: int):
        self.id = node_id
        self.cfg = cfg
        self.seed = seed
        self.hard_state = HardState()
        self.snapshot: SnapshotMeta | None = None
        self.snapshot_data = b""
        self.log: list[Entry] = []  # durable entries after the snapshot
        self.up = True
        self.restarts = 0
        self._start(None)

    def _start(self, applied: int | None) -> None:
        state = PersistentState(self.hard_state, self.snapshot, list(self.log))
        rng = random.Random(self.seed * 7919 + self.id * 104729 + self.restarts)
        self.core = RaftCore(RaftConfig(self.id, **self.cfg), state, rng, applied=applied)
        # the toy state machine is volatile: rebuilt from the snapshot, then re-applied from the log
        self.applied: list[tuple[int, bytes]] = (
            [tuple(x) for x in msgpack.unpackb(self.snapshot_data)] if self.snapshot_data else [])
        self.read_states: list[ReadState] = []
        self.staging = bytearray()

    def restart(self) -> None:
        self.restarts += 1
        self.up = True
        self._start(None)

    def take_snapshot(self) -> SnapshotMeta:
        """Snapshot the state machine at the applied index and compact the log up to it."""
        core = self.core
        meta = core.snapshot_meta_at(core.applied_index)
        self.snapshot = meta
        self.snapshot_data = msgpack.packb([list(x) for x in self.applied])
        self.log = [e for e in self.log if e.index > meta.index]
        core.compact(meta)
        return meta

    @property
    def applied_data(self) -> list[bytes]:
        return [d for _, d in self.applied]

    def handle_ready(self, send: Callable[[Message], None]) -> bool:
        core = self.core
        if not core.has_ready():
            return False
        rd = core.ready()
        for ch in rd.snapshot_chunks:
            if ch.offset == 0:
                self.staging = bytearray()
            self.staging += ch.data
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot
            self.snapshot_data = bytes(self.staging)
            self.log = []
            self.applied = [tuple(x) for x in msgpack.unpackb(self.snapshot_data)]
        if rd.entries:
            first = rd.entries[0].index
            self.log = [e for e in self.log if e.index < first] if self.log and self.log[-1].index >= first \
                else self.log
            self.log.extend(rd.entries)
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state
        for m in rd.messages:
            send(m)
        for e in rd.committed:
            if e.kind is EntryKind.NORMAL:
                assert not self.applied or self.applied[-1][0] < e.index, "applied twice"
                self.applied.append((e.index, e.data))
        self.read_states.extend(rd.read_states)
        for req in rd.snapshot_requests:
            if self.snapshot is None or self.snapshot.index != req.meta.index:
                core.report_snapshot(req.to, ok=False)
                continue
            chunk = self.snapshot_data[req.offset: req.offset + req.max_bytes]
            core.provide_snapshot_chunk(req.to, req.meta.index, req.offset, chunk,
                                        req.offset + len(chunk) >= len(self.snapshot_data))
        core.advance(rd)
        return True


class MemCluster:
    """Nodes wired by an in-memory FIFO network with partitions and a drop filter."""

    def __init__(self, ids: list[int], *, seed: int = 0, voters: list[int] | None = None, wire: bool = True,
                 **cfg):
        self.seed = seed
        self.wire = wire
        self.nodes = {i: MemNode(i, cfg, seed) for i in ids}
        self.queue: deque[Message] = deque()
        self.groups: list[set[int]] | None = None
        self.drop: Callable[[Message], bool] | None = None
        self.reorder: random.Random | None = None  # set to deliver queued messages in random order
        self.delivered = 0
        for i in voters or []:
            self.nodes[i].core.bootstrap(Membership(frozenset(voters)))

    # -- network -------------------------------------------------------------------------------
    def send(self, m: Message) -> None:
        if self.wire:
            m = Message.from_wire(msgpack.unpackb(msgpack.packb(m.to_wire())))
        self.queue.append(m)

    def link_up(self, a: int, b: int) -> bool:
        if not (self.nodes[a].up and self.nodes[b].up):
            return False
        if self.groups is None:
            return True
        return any(a in g and b in g for g in self.groups)

    def partition(self, *groups: set[int] | list[int]) -> None:
        """Only nodes within the same group can talk; nodes in no group are isolated."""
        self.groups = [set(g) for g in groups]

    def heal(self) -> None:
        self.groups = None

    def crash(self, i: int) -> None:
        """Lose everything not on 'disk' (the core, volatile state machine, in-flight messages)."""
        self.nodes[i].up = False
        self.queue = deque(m for m in self.queue if m.to != i and m.frm != i)

    def restart(self, i: int) -> None:
        self.nodes[i].restart()

    # -- driving -------------------------------------------------------------------------------
    def process_readies(self) -> None:
        progress = True
        while progress:
            progress = False
            for n in self.nodes.values():
                if n.up and n.handle_ready(self.send):
                    progress = True

    def stabilize(self, max_steps: int = 200_000) -> None:
        """Deliver messages and process Readies until nothing moves."""
        self.process_readies()
        steps = 0
        while self.queue:
            if self.reorder is not None and len(self.queue) > 1:
                k = self.reorder.randrange(len(self.queue))
                m = self.queue[k]
                del self.queue[k]
            else:
                m = self.queue.popleft()
            steps += 1
            if steps > max_steps:
                raise AssertionError(f"network did not settle (seed={self.seed})")
            if (self.drop is not None and self.drop(m)) or not self.link_up(m.frm, m.to):
                continue
            self.delivered += 1
            node = self.nodes[m.to]
            node.core.step(m)
            node.handle_ready(self.send)
            if not self.queue:
                self.process_readies()

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            for node in self.nodes.values():
                if node.up:
                    node.core.tick()
            self.stabilize()

    def run_until(self, pred: Callable[[], bool], max_ticks: int = 500, what: str = "condition") -> int:
        """Tick until `pred()` holds; fail with the seed if it does not within max_ticks."""
        self.stabilize()
        for t in range(max_ticks + 1):
            if pred():
                return t
            self.tick()
        raise AssertionError(f"{what} not reached within {max_ticks} ticks (seed={self.seed})")

    # -- queries -------------------------------------------------------------------------------
    def core(self, i: int) -> RaftCore:
        return self.nodes[i].core

    def leaders(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.up and n.core.role is Role.LEADER]

    def leader(self) -> int | None:
        """The up leader with the highest term, if any."""
        best = None
        for i in self.leaders():
            if best is None or self.core(i).term > self.core(best).term:
                best = i
        return best

    def elect(self, max_ticks: int = 500) -> int:
        self.run_until(lambda: self.leader() is not None and self._leader_stable(), max_ticks, "a leader")
        return self.leader()

    def _leader_stable(self) -> bool:
        lid = self.leader()
        c = self.core(lid)
        return c.log.term(c.commit) == c.term  # its no-op committed: fully functional

    def propose(self, data: bytes) -> int:
        lid = self.leader()
        if lid is None:
            raise AssertionError(f"no leader (seed={self.seed})")
        return self.core(lid).propose(data)

    def wait_applied(self, index: int, ids: list[int] | None = None, max_ticks: int = 500) -> None:
        ids = ids if ids is not None else [i for i, n in self.nodes.items() if n.up]
        self.run_until(lambda: all(self.core(i).applied_index >= index for i in ids), max_ticks,
                       f"applied index {index} on {ids}")

    def add_node(self, i: int) -> MemNode:
        node = MemNode(i, next(iter(self.nodes.values())).cfg, self.seed)
        self.nodes[i] = node
        return node
