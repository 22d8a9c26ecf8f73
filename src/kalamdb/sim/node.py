"""One simulated node: the real RaftCore driven by a driver that follows the Ready contract exactly
(docs/design/raft.md): stage snapshot chunks, install a snapshot, write entries + hard state, fsync
(on the simulated disk, possibly slowly), and only THEN send messages, apply, serve reads, answer
snapshot requests and advance. A crash drops the core and everything unsynced; a restart builds a
new core from what the disk kept, exactly like a real process restart.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import msgpack

from kalamdb.raft.core import RaftConfig, RaftCore, Ready, Role
from kalamdb.raft.messages import Message, MsgType
from kalamdb.raft.types import Membership
from kalamdb.sim.disk import SimDisk
from kalamdb.sim.statemachine import KVStateMachine

if TYPE_CHECKING:
    from kalamdb.sim.simulation import Simulation

_LEADER = Role.LEADER
_PROMISES = (MsgType.VOTE_RESP, MsgType.APP_RESP)


class SimNode:
    __slots__ = (
        "_core",
        "busy",
        "crash_point",
        "disk",
        "id",
        "incarnation",
        "last_term_led",
        "reads",
        "removed",
        "rng",
        "sent_early",
        "sim",
        "since_snapshot",
        "slow_disk",
        "sm",
        "snap_bytes",
        "staging",
        "up",
        "waiting_reads",
    )

    def __init__(self, node_id: int, sim: Simulation, rng: random.Random) -> None:
        self.id = node_id
        self.sim = sim
        self.disk = SimDisk()
        self.rng = rng  # this node's branch of the seed tree (core jitter, fsync times, crash loss)
        self._core: RaftCore | None = None  # None while the node is down (crashed or never started)
        self.sm = KVStateMachine()
        self.incarnation = 0
        self.busy = False  # an fsync is in flight: the outstanding Ready is not yet advanced
        self.up = False
        self.removed = False  # decommissioned after leaving the cluster: never restarted
        self.staging = bytearray()  # incoming snapshot chunks
        self.snap_bytes = b""  # the encoded state-machine image of disk.snapshot
        self.reads: dict[bytes, tuple[int, int]] = {}  # ctx -> (key, floor) awaiting a ReadState
        self.waiting_reads: list[tuple[int, bytes, int, int]] = []  # (index, ctx, key, floor)
        self.slow_disk = False
        self.sent_early = False  # the Ready being persisted already sent its messages
        self.since_snapshot = 0
        self.last_term_led = 0
        self.crash_point: tuple[int, int] | None = None  # (message type, down time): crash right after sending

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self, bootstrap: Membership | None = None) -> None:
        p = self.sim.params
        cfg = RaftConfig(self.id, election_ticks=p.election_ticks, heartbeat_ticks=p.heartbeat_ticks,
                         pre_vote=p.pre_vote, check_quorum=p.check_quorum,
                         max_inflight_msgs=p.max_inflight, max_entries_per_msg=p.max_entries_per_msg,
                         snapshot_chunk_bytes=p.snapshot_chunk_bytes)
        state = self.disk.load()
        self.sm = KVStateMachine.from_snapshot(
            msgpack.unpackb(self.disk.snapshot_data, strict_map_key=False) if self.disk.snapshot_data else None)
        self.snap_bytes = self.disk.snapshot_data or b""
        core = self._core = RaftCore(cfg, state, random.Random(self.rng.getrandbits(64)))
        if bootstrap is not None:
            core.bootstrap(bootstrap)
        self.incarnation += 1
        self.up = True
        self.busy = False
        self.staging = bytearray()
        self.reads = {}
        self.waiting_reads = []
        self.since_snapshot = 0
        self.sim.trace.add(self.id, "start", f"incarnation {self.incarnation} from disk: term "
                           f"{state.hard_state.term} vote {state.hard_state.vote} commit {state.hard_state.commit}"
                           f" snapshot {state.snapshot.index if state.snapshot else 0} last {self.disk.last_index()}")
        loop = self.sim.loop
        loop.after(self.rng.randint(1, p.tick_phase), self._tick, self.incarnation)
        self.drain()

    def crash(self) -> None:
        """Power loss: the process and everything unsynced are gone."""
        if not self.up:
            return
        self.up = False
        self._core = None
        self.incarnation += 1  # every event of the old incarnation is now ignored
        self.disk.crash(self.rng)
        self.sim.trace.add(self.id, "crash", f"durable: term {self.disk.hard_state.term} "
                           f"vote {self.disk.hard_state.vote} last {self.disk.last_index()}")

    @property
    def core(self) -> RaftCore:
        """The running core; only an up node has one (the simulation asks only up nodes)."""
        core = self._core
        if core is None:
            raise RuntimeError(f"node {self.id} is down: it has no Raft core")
        return core

    # --- inputs -----------------------------------------------------------------------------------
    def _tick(self, incarnation: int) -> None:
        if incarnation != self.incarnation:
            return
        self.core.tick()
        self.sim.loop.after(self.sim.params.tick, self._tick, incarnation)
        if not self.busy:
            self.drain()
        else:
            self._send_while_syncing()

    def receive(self, msg: Message) -> None:
        self.core.step(msg)
        if not self.busy:
            self.drain()
        else:
            self._send_while_syncing()

    def _send_while_syncing(self) -> None:
        """During an fsync, send what may leave before it ends (the real driver does the same,
        node/raft_loops.py): a durable leader's messages when its Ready already went out early,
        anyone's heartbeat responses and ReadIndex requests."""
        if not self.sim.params.send_while_syncing:
            return
        core, disk = self.core, self.disk.hard_state
        durable = self.sent_early and (core.term, core.vote) == (disk.term, disk.vote)
        self._send_all(core.take_early_messages(leader_durable=durable))

    def kick(self) -> None:
        """Handle the core's output now unless an fsync is in flight (then right after it)."""
        if self.up and not self.busy:
            self.drain()

    # --- the Ready/Advance driver ---------------------------------------------------------------
    def drain(self) -> None:
        """Take Readies until the core has nothing more or one needs an fsync (asynchronous:
        inputs keep arriving and accumulate in the core meanwhile)."""
        core = self.core
        while core.has_ready():
            rd = core.ready()
            if core.role is _LEADER and core.term != self.last_term_led:
                self.last_term_led = core.term
                self.sim.checker.on_leader(self.id, core.term, core)
            early = self._leader_sends_early(rd)
            if early:
                self._send_all(rd.messages)
                rd.messages = []  # sent: finish() must not send them again
            self.sent_early = early
            if self.persist(rd):
                self.busy = True
                p = self.sim.params
                delay = p.slow_fsync if self.slow_disk else self.rng.randint(p.fsync_min, p.fsync_max)
                self.sim.loop.after(delay, self._synced, self.incarnation, rd)
                return
            self.finish(rd)
            if self._core is not core:
                return  # decommissioned while applying

    def _leader_sends_early(self, rd: Ready) -> bool:
        """The real driver's optimisation (node/raft_loops.py): a leader whose term and vote are already
        durable sends before its own fsync, so its disk write overlaps the followers'."""
        hs, disk = rd.hard_state, self.disk.hard_state
        return (self.sim.params.leader_early_send and self.core.role is _LEADER and rd.snapshot is None
                and not rd.snapshot_chunks and (hs is None or (hs.term, hs.vote) == (disk.term, disk.vote)))

    def _send_all(self, messages: list[Message]) -> None:
        send, me = self.sim.send, self.id
        for m in messages:
            send(me, m)

    def _synced(self, incarnation: int, rd: Ready) -> None:
        if incarnation != self.incarnation:
            return  # crashed during the fsync: whatever was unsynced is decided by disk.crash()
        self.disk.sync()
        self.busy = False
        self.finish(rd)
        if self._core is not None:
            self.drain()

    def persist(self, rd: Ready) -> bool:
        """Steps 1-4 of the contract (unsynced writes); returns True if an fsync is needed."""
        disk = self.disk
        wrote = False
        for ch in rd.snapshot_chunks:
            if ch.offset == 0:
                self.staging = bytearray()
            self.staging += ch.data
        if rd.snapshot is not None:
            data = bytes(self.staging)
            self.staging = bytearray()
            self.sm = KVStateMachine.from_snapshot(msgpack.unpackb(data, strict_map_key=False))
            self.snap_bytes = data
            disk.write_snapshot(rd.snapshot, data)
            self.sim.checker.on_restore(self.id, self.incarnation, rd.snapshot.index, rd.snapshot.term)
            self.sim.trace.add(self.id, "install", rd.snapshot)
            self.since_snapshot = 0
            self.serve_reads()
            wrote = True
        if rd.entries:
            disk.write_entries(rd.entries)
            wrote = True
        if rd.hard_state is not None:
            disk.write_hard_state(rd.hard_state)
            wrote = True
        return wrote

    def finish(self, rd: Ready) -> None:
        """Steps 5-10: everything that may only happen once the writes are durable."""
        sim = self.sim
        send = sim.send
        me = self.id
        for m in rd.messages:
            send(me, m)
        if rd.messages and (self.crash_point is not None or sim.params.crash_on_promise):
            self._check_crash_point(rd.messages)
        if rd.committed:
            self.apply(rd.committed)
        core = self.core
        for rs in rd.read_states:
            req = self.reads.pop(rs.context, None)
            if req is not None:
                self.waiting_reads.append((rs.index, rs.context, req[0], req[1]))
        if self.waiting_reads:
            self.serve_reads()
        for sreq in rd.snapshot_requests:
            snap = self.disk.snapshot
            if snap is None or snap.index != sreq.meta.index or not self.snap_bytes:
                core.report_snapshot(sreq.to, ok=False)
                continue
            data = self.snap_bytes[sreq.offset: sreq.offset + sreq.max_bytes]
            core.provide_snapshot_chunk(sreq.to, sreq.meta.index, sreq.offset, data,
                                        sreq.offset + len(data) >= len(self.snap_bytes))
        if rd.soft_state is not None:
            sim.trace.add(me, "role", f"{rd.soft_state.role.name} term {core.term} leader {rd.soft_state.leader_id}")
        core.advance(rd)
        p = sim.params
        if p.snapshot_every and self.since_snapshot >= p.snapshot_every:
            self.take_snapshot()

    def _check_crash_point(self, messages: list) -> None:
        """Crash right after a message that promises durability (a vote, an append ack) went out:
        either an armed one-shot crash point or, with probability `crash_on_promise`, any promise."""
        p = self.sim.params
        point = self.crash_point
        for m in messages:
            if m.reject:
                continue
            if point is not None and m.type == point[0]:
                down = point[1]
            elif m.type in _PROMISES and p.crash_on_promise and self.rng.random() < p.crash_on_promise:
                down = self.rng.randint(p.down_time_min, 4 * p.down_time_min)
            else:
                continue
            self.crash_point = None
            self.sim.trace.add(self.id, "fault", f"crash point: right after sending {m.type.name} to n{m.to}")
            self.sim.loop.after(0, self.sim.nemesis.crash_now, self.id, self.incarnation, down)
            return

    def apply(self, entries: list) -> None:
        sim = self.sim
        checker = sim.checker
        sm = self.sm
        me, inc = self.id, self.incarnation
        on_applied = sim.client.on_applied
        for e in entries:
            checker.on_apply(me, inc, e)
            op = sm.apply(e)
            if op is not None:
                on_applied(self, op)
            elif e.kind == 2:  # CONFIG
                sim.on_config_applied(self, e)
        self.since_snapshot += len(entries)
        sim.trace.add(me, "apply", f"{entries[0].index}..{entries[-1].index}")

    def serve_reads(self) -> None:
        applied = self.sm.applied
        keep = []
        for item in self.waiting_reads:
            index, ctx, key, floor = item
            if index <= applied:
                got = self.sm.read(key)[1]
                self.sim.trace.add(self.id, "read", f"{ctx!r} key {key} at {index}: write@{got} floor {floor}")
                self.sim.checker.on_read(self.id, key, floor, got)
            else:
                keep.append(item)
        self.waiting_reads = keep

    def take_snapshot(self) -> None:
        """Snapshot the state machine at the applied index, store it durably, compact the log."""
        core = self.core
        index = core.applied_index
        if index <= core.log.snap_index or self.sm.applied != index:
            return
        meta = core.snapshot_meta_at(index)
        data = msgpack.packb(self.sm.snapshot())
        self.disk.write_snapshot(meta, data)
        self.disk.sync()
        self.snap_bytes = data
        core.compact(meta)
        self.since_snapshot = 0
        self.sim.trace.add(self.id, "snapshot", f"at {index} term {meta.term} ({len(data)} bytes)")
