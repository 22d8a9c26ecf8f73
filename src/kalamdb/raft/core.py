"""The sans-IO Raft state machine (etcd's Ready/Advance model).

Inputs are method calls (`tick`, `step`, `propose`, ...); outputs accumulate until the caller takes
them with `ready()`, persists and sends them, and hands them back with `advance()`. The core never
touches a clock, a socket or a file, and all election jitter comes from the injected `rng`, so the
asyncio driver and the deterministic simulator run exactly the same algorithm.
See docs/design/raft.md for the contract with the caller.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum

from kalamdb.raft import quorum
from kalamdb.raft.log import RaftLog
from kalamdb.raft.messages import CAMPAIGN_TRANSFER, Message, MsgType, decode_membership, encode_membership
from kalamdb.raft.progress import Progress, ProgressState
from kalamdb.raft.types import Entry, EntryKind, HardState, Membership, PersistentState, SnapshotMeta

_APP = MsgType.APP
_APP_RESP = MsgType.APP_RESP
_HEARTBEAT = MsgType.HEARTBEAT
_COMMIT = MsgType.COMMIT
_FROM_LEADER = frozenset({MsgType.APP, MsgType.HEARTBEAT, MsgType.COMMIT, MsgType.SNAPSHOT})
# what a node that is not a durable leader may send while its Ready is being persisted: these claim
# nothing about its log or its vote (`take_early_messages`)
_CLAIM_FREE = frozenset({MsgType.HEARTBEAT_RESP, MsgType.READ_INDEX})
_NORMAL = EntryKind.NORMAL


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class RaftError(Exception):
    """Base of the errors the core raises to its caller."""


class NotLeader(RaftError):
    """This node cannot accept the request; `leader_id` is where to go (None when unknown)."""

    def __init__(self, leader_id: int | None):
        super().__init__(f"not the leader (leader: {leader_id})")
        self.leader_id = leader_id


class ProposalRejected(RaftError):
    """The leader refused the proposal for now (transfer or membership change in progress)."""


class RaftSafetyError(RaftError):
    """A peer asked for something that would break a Raft invariant (e.g. overwrite a committed
    entry): a bug or corruption somewhere. The message is refused and nothing changes; the driver
    should log it loudly and may stop the node (fail-stop, like etcd's panic)."""


@dataclass(slots=True)
class RaftConfig:
    node_id: int
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_inflight_msgs: int = 256
    max_entries_per_msg: int = 1024
    max_bytes_per_msg: int = 1 << 20
    snapshot_chunk_bytes: int = 1 << 20
    # PLANTED BUG for the chaos membership checks (KALAMDB_UNSAFE_REMOVED_VOTES=1, never in
    # production): a leader keeps replicating to the voters of earlier configurations in its log
    # and counts their acks toward the commit majority, so a removed node keeps "voting" for commits.
    unsafe_removed_votes: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.node_id, int) and self.node_id > 0):
            raise ValueError("node_id must be a positive integer")
        if self.heartbeat_ticks < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")
        if min(self.max_inflight_msgs, self.max_entries_per_msg, self.max_bytes_per_msg,
               self.snapshot_chunk_bytes) < 1:
            raise ValueError("message and window limits must be >= 1")


@dataclass(frozen=True, slots=True)
class SoftState:
    role: Role
    leader_id: int  # 0 = unknown


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read `context` may be served once the local applied index reaches `index`."""

    context: bytes
    index: int


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """Follower side: bytes of an incoming snapshot to write to a staging file (offset 0 = restart)."""

    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """Leader side: read up to `max_bytes` of snapshot `meta` at `offset`, then call
    `RaftCore.provide_snapshot_chunk(to, meta.index, offset, data, done)`."""

    to: int
    meta: SnapshotMeta
    offset: int
    max_bytes: int


@dataclass(slots=True)
class Ready:
    """Everything the caller must do, in this order: write `snapshot_chunks`; install `snapshot`
    (replace state machine and log); persist `entries` (truncating the log at entries[0].index)
    and `hard_state` durably; then send `messages`, apply `committed`, serve `read_states`,
    answer `snapshot_requests`; finally call `advance(ready)`."""

    hard_state: HardState | None = None
    soft_state: SoftState | None = None
    entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    snapshot: SnapshotMeta | None = None
    snapshot_chunks: list[SnapshotChunk] = field(default_factory=list)
    snapshot_requests: list[SnapshotRequest] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)


class RaftCore:
    def __init__(self, config: RaftConfig, state: PersistentState, rng: random.Random,
                 applied: int | None = None):
        self.cfg = config
        self.id = config.node_id
        self.rng = rng
        snap = state.snapshot
        self._snapshot: SnapshotMeta | None = snap
        self.log = RaftLog(snap.index if snap else 0, snap.term if snap else 0, state.entries)
        hs = state.hard_state
        self.term = hs.term
        self.vote = hs.vote
        self.commit = max(hs.commit, self.log.snap_index)
        if self.commit > self.log.last_index:
            raise ValueError(f"hard state commit {hs.commit} is beyond the last log index "
                             f"{self.log.last_index}: storage lost committed entries")
        self._prev_hs = hs
        # membership: the latest configuration in the log (used as soon as appended, §6)
        self._base_membership = snap.membership if snap else Membership()
        self._configs: list[tuple[int, Membership]] = []
        for e in self.log.entries:
            if e.kind is EntryKind.CONFIG:
                self._configs.append((e.index, decode_membership(e.data)))
        self.membership = self._configs[-1][1] if self._configs else self._base_membership
        self._applied = self.log.snap_index if applied is None else max(applied, self.log.snap_index)
        if self._applied > self.log.last_index:
            raise ValueError(f"applied index {self._applied} is beyond the log ({self.log.last_index})")
        self.commit = max(self.commit, self._applied)
        self._handed = self._applied  # committed entries given to the caller up to here
        self.role = Role.FOLLOWER
        self.leader_id = 0
        self._prev_ss = SoftState(Role.FOLLOWER, 0)
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._randomized_timeout = 0
        self._reset_randomized_timeout()
        self.prs: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.lead_transferee: int | None = None
        self.pending_conf_index = 0
        self._msgs: list[Message] = []
        self._bcast_pending = False
        self._bcast_empty = False
        self._outstanding: Ready | None = None
        # ReadIndex
        self._read_seq = 0
        self._reads: deque[tuple[int, int, bytes, int]] = deque()  # (seq, index, ctx, requester)
        self._read_acks: dict[int, int] = {}
        self._reads_waiting_commit: list[tuple[bytes, int]] = []
        self._read_states: list[ReadState] = []
        self._hb_read_needed = False
        # snapshots
        self._snap_recv: list | None = None  # [meta, next_offset] of an incoming transfer
        self._snap_chunks: list[SnapshotChunk] = []
        self._snap_to_install: SnapshotMeta | None = None
        self._snap_requests: list[SnapshotRequest] = []

    # ------------------------------------------------------------------ properties
    @property
    def node_id(self) -> int:
        return self.id

    @property
    def commit_index(self) -> int:
        return self.commit

    @property
    def last_index(self) -> int:
        return self.log.last_index

    @property
    def last_term(self) -> int:
        return self.log.last_term

    @property
    def first_index(self) -> int:
        return self.log.first_index

    @property
    def applied_index(self) -> int:
        return self._applied

    @property
    def persisted_index(self) -> int:
        return self.log.unstable_from - 1

    @property
    def snapshot(self) -> SnapshotMeta | None:
        return self._snapshot

    @property
    def progress(self) -> dict[int, Progress]:
        """Leader only: per-peer replication progress (read-only; empty on followers)."""
        return dict(self.prs)

    @property
    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.commit)

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    @property
    def promotable(self) -> bool:
        """May campaign: a voter of the latest config, or of the committed one while a config that
        removes us is still uncommitted (else a whole-cluster restart in the middle of our own
        removal can leave no electable node: we hold the newest log but would never run)."""
        m = self.membership
        if self.id in m.voters or self.id in m.voters_outgoing:
            return True
        if self._configs and self._configs[-1][0] > self.commit:
            c = self.membership_at(self.commit)
            return self.id in c.voters or self.id in c.voters_outgoing
        return False

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries lo..hi inclusive still held in memory (for debugging and tests)."""
        lo = max(lo, self.log.first_index)
        hi = min(hi, self.log.last_index)
        return self.log.slice(lo, hi) if lo <= hi else []

    def term_at(self, index: int) -> int | None:
        return self.log.term(index)

    def membership_at(self, index: int) -> Membership:
        m = self._base_membership
        for idx, cm in self._configs:
            if idx > index:
                break
            m = cm
        return m

    def snapshot_meta_at(self, index: int) -> SnapshotMeta:
        """The SnapshotMeta a snapshot of the state machine at `index` must carry."""
        t = self.log.term(index)
        if t is None:
            raise ValueError(f"index {index} is not in the log [{self.log.snap_index}, {self.last_index}]")
        return SnapshotMeta(index, t, self.membership_at(index))

    # ------------------------------------------------------------------ lifecycle
    def bootstrap(self, membership: Membership) -> None:
        """Start a brand-new cluster whose first configuration is `membership` (normally {self})."""
        if self.log.last_index or self.term or self._snapshot is not None:
            raise RuntimeError("bootstrap is only for a brand-new node without state")
        if self.id not in membership.voters or membership.is_joint:
            raise ValueError("bootstrap membership must be a simple config that includes this node")
        e = Entry(1, 1, EntryKind.CONFIG, encode_membership(membership))
        self.log.append(e)
        self._note_config(1, membership)
        self.term = 1
        self.commit = 1  # decided by fiat: every founding node starts from this same entry

    def tick(self) -> None:
        if self.role is Role.LEADER:
            self._tick_leader()
            return
        self.election_elapsed += 1
        if self.election_elapsed >= self._randomized_timeout and self.promotable:
            self._hup(transfer=False)

    def campaign(self) -> None:
        """Start an election now (with pre-vote when configured); no-op for leaders/non-voters."""
        self._hup(transfer=False)

    def step_down(self) -> None:
        if self.role is not Role.FOLLOWER:
            self._become_follower(self.term, 0)

    # ------------------------------------------------------------------ proposals
    def propose(self, data: bytes) -> int:
        """Append a command; returns its log index. Raises NotLeader / ProposalRejected."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id or None)
        if self.lead_transferee is not None:
            raise ProposalRejected("leadership transfer in progress")
        idx = self.log.last_index + 1
        self.log.entries.append(Entry(self.term, idx, _NORMAL, data))
        self._bcast_pending = True
        return idx

    def propose_batch(self, items: list[bytes]) -> int:
        """Append several commands at once; returns the index of the last one."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id or None)
        if self.lead_transferee is not None:
            raise ProposalRejected("leadership transfer in progress")
        term = self.term
        idx = self.log.last_index
        ents = self.log.entries
        for data in items:
            idx += 1
            ents.append(Entry(term, idx, _NORMAL, data))
        self._bcast_pending = True
        return idx

    def add_learner(self, node_id: int) -> int:
        """Add a non-voting member that receives the log; returns the config entry's index."""
        self._check_can_change()
        m = self.membership
        if node_id in m.members:
            raise ValueError(f"node {node_id} is already a member")
        if not (isinstance(node_id, int) and node_id > 0):
            raise ValueError("node id must be a positive integer")
        return self._propose_config(Membership(m.voters, m.learners | {node_id}, m.voters_outgoing))

    def remove_learner(self, node_id: int) -> int:
        self._check_can_change()
        m = self.membership
        if node_id not in m.learners:
            raise ValueError(f"node {node_id} is not a learner")
        return self._propose_config(Membership(m.voters, m.learners - {node_id}, m.voters_outgoing))

    def change_membership(self, voters: set[int] | frozenset[int]) -> int:
        """Make `voters` the voter set: directly when one voter changes, else via joint consensus
        (the leader leaves the joint config by itself once it commits). Removed voters leave the
        cluster; new voters must already be learners. Returns the config entry's index."""
        self._check_can_change()
        new_voters = frozenset(voters)
        m = self.membership
        if not new_voters:
            raise ValueError("the voter set cannot be empty")
        if m.is_joint:
            raise ProposalRejected("a joint configuration is still being left")
        unknown = new_voters - m.members
        if unknown:
            raise ValueError(f"add {sorted(unknown)} as learners first")
        if new_voters == m.voters:
            raise ValueError("voter set unchanged")
        learners = m.learners - new_voters
        if len(new_voters ^ m.voters) <= 1:
            return self._propose_config(Membership(new_voters, learners))
        return self._propose_config(Membership(new_voters, learners, m.voters))

    def transfer_leadership(self, target: int) -> None:
        """Hand leadership to `target`: catch it up, then tell it to campaign (TimeoutNow).
        Proposals are refused meanwhile; the attempt is dropped after an election timeout."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id or None)
        if target == self.id:
            return
        m = self.membership
        if target not in m.voters and target not in m.voters_outgoing:
            raise ValueError(f"node {target} is not a voter")
        if self.lead_transferee == target:
            return
        self.lead_transferee = target
        self.election_elapsed = 0
        pr = self.prs[target]
        if pr.match == self.log.last_index:
            self._send(Message(MsgType.TIMEOUT_NOW, target, self.id, self.term))
        else:
            self._send_append(target)

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read point; the answer arrives as ReadState(ctx, index) in a
        later Ready. Followers forward to the leader; requests can be lost (retry on timeout)."""
        if self.role is Role.LEADER:
            self._leader_read(ctx, self.id)
        elif self.leader_id:
            self._send(Message(MsgType.READ_INDEX, self.leader_id, self.id, self.term, context=ctx))
        else:
            raise NotLeader(None)

    # ------------------------------------------------------------------ snapshots / compaction
    def applied_to(self, index: int) -> None:
        """The state machine has applied up to `index` (e.g. loaded from its own storage)."""
        if index > self.commit:
            raise ValueError(f"cannot apply {index} beyond commit {self.commit}")
        self._applied = max(self._applied, index)
        self._handed = max(self._handed, index)

    def compact(self, meta: SnapshotMeta) -> None:
        """The caller holds a snapshot of the state machine at meta.index: drop log entries up to it.
        Followers too far behind get this snapshot (via Ready.snapshot_requests)."""
        if meta.index > self._applied:
            raise ValueError(f"cannot compact to {meta.index} beyond applied {self._applied}")
        if meta.index <= self.log.snap_index:
            return
        if self.log.term(meta.index) != meta.term:
            raise ValueError(f"snapshot term {meta.term} does not match log at {meta.index}")
        if self.membership_at(meta.index) != meta.membership:
            raise ValueError("snapshot membership differs from the log's; use snapshot_meta_at()")
        self._base_membership = meta.membership
        self._configs = [c for c in self._configs if c[0] > meta.index]
        self.log.compact(meta.index, meta.term)
        self._snapshot = meta

    def restore(self, meta: SnapshotMeta) -> bool:
        """Install a snapshot obtained out of band: the log is replaced unless it already contains
        meta.index. Returns True when Ready.snapshot will ask the caller to install it."""
        if self.role is Role.LEADER:
            raise RuntimeError("a leader cannot restore a snapshot")
        return self._restore(meta)

    def provide_snapshot_chunk(self, to: int, index: int, offset: int, data: bytes, done: bool) -> bool:
        """Answer a SnapshotRequest; returns False (and drops it) if the request is no longer current."""
        pr = self.prs.get(to)
        if (self.role is not Role.LEADER or pr is None or pr.state != ProgressState.SNAPSHOT
                or pr.pending_snapshot != index or pr.snapshot_offset != offset):
            return False
        pr.snapshot_idle_ticks = 0
        self._send(Message(MsgType.SNAPSHOT, to, self.id, self.term, commit=self.commit,
                           snapshot=pr.snapshot_meta, offset=offset, data=data, done=done))
        return True

    def report_snapshot(self, to: int, ok: bool) -> None:
        """The caller failed (ok=False) to produce/send a snapshot for `to`: retry from scratch."""
        pr = self.prs.get(to)
        if pr is not None and pr.state == ProgressState.SNAPSHOT and not ok:
            pr.pending_snapshot = 0
            pr.become_probe()

    def report_unreachable(self, to: int) -> None:
        """Sending to `to` failed: stop streaming optimistically and probe instead."""
        pr = self.prs.get(to)
        if pr is not None and pr.state == ProgressState.REPLICATE:
            pr.become_probe()

    # ------------------------------------------------------------------ Ready / Advance
    def has_ready(self) -> bool:
        if self._outstanding is not None:
            return False
        self._flush()
        return bool(
            self._msgs or self.log.unstable_from <= self.log.last_index or self.commit > self._handed
            or self._read_states or self._snap_chunks or self._snap_to_install is not None
            or self._snap_requests or self._hard_state_changed()
            or self._prev_ss.role is not self.role or self._prev_ss.leader_id != self.leader_id)

    def _hard_state_changed(self) -> bool:
        p = self._prev_hs
        return p.term != self.term or p.vote != self.vote or p.commit != self.commit

    def ready(self) -> Ready:
        if self._outstanding is not None:
            raise RuntimeError("advance() the previous Ready before taking another")
        self._flush()
        rd = Ready()
        if self._hard_state_changed():
            rd.hard_state = HardState(self.term, self.vote, self.commit)
        ss = self._prev_ss
        if ss.role is not self.role or ss.leader_id != self.leader_id:
            rd.soft_state = SoftState(self.role, self.leader_id)
        log = self.log
        if log.unstable_from <= log.last_index:
            rd.entries = log.unstable()
        if self.commit > self._handed:
            rd.committed = log.slice(self._handed + 1, self.commit)
            self._handed = self.commit
        if self._msgs:
            rd.messages = self._msgs
            self._msgs = []
        if self._snap_to_install is not None:
            rd.snapshot = self._snap_to_install
            self._snap_to_install = None
        if self._snap_chunks:
            rd.snapshot_chunks = self._snap_chunks
            self._snap_chunks = []
        if self._snap_requests:
            rd.snapshot_requests = self._snap_requests
            self._snap_requests = []
        if self._read_states:
            rd.read_states = self._read_states
            self._read_states = []
        self._outstanding = rd
        return rd

    def take_early_messages(self, *, leader_durable: bool) -> list[Message]:
        """(between `ready()` and `advance()`, while the caller persists) The queued messages that
        may leave before the outstanding Ready is durable, so that a slow fsync holds back nothing
        that does not depend on it and a leader whose disk stalls keeps its followers' election
        timers reset. A leader's, all of them when `leader_durable` (its term and vote are on disk
        and the outstanding Ready's messages already left: Raft thesis 10.2.1, a leader's messages
        promise nothing about its own disk, as for the early send of a Ready); anyone's heartbeat
        responses and ReadIndex requests, which claim nothing about the log or the vote. The rest
        (acknowledgements, votes) waits for the next Ready. Proposals are not turned into
        appends here: they keep batching into the next Ready."""
        msgs = self._msgs
        if not msgs or self._outstanding is None:
            return []
        if leader_durable and self.role is Role.LEADER:
            self._msgs = []
            return msgs
        early = [m for m in msgs if m.type in _CLAIM_FREE]
        if early:
            self._msgs = [m for m in msgs if m.type not in _CLAIM_FREE]
        return early

    def advance(self, rd: Ready) -> None:
        """The caller has persisted, sent and applied everything in `rd`."""
        if rd is not self._outstanding:
            raise ValueError("advance() must be given the Ready returned by the last ready()")
        self._outstanding = None
        if rd.hard_state is not None:
            self._prev_hs = rd.hard_state
        if rd.soft_state is not None:
            self._prev_ss = rd.soft_state
        if rd.snapshot is not None and rd.snapshot.index > self._applied:
            self._applied = rd.snapshot.index
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
            # the leader counts its own entries only once they are durable
            if (self.role is Role.LEADER and self.prs[self.id].maybe_update(self.log.unstable_from - 1)
                    and self._maybe_commit()):
                self._bcast_empty = True
        if rd.committed:
            i = rd.committed[-1].index
            self._applied = max(self._applied, i)

    # ------------------------------------------------------------------ step
    def step(self, m: Message) -> None:
        """Feed one message received from a peer."""
        if m.to != self.id or m.frm == self.id:
            return
        t = m.type
        if m.term > self.term:
            if t is MsgType.VOTE or t is MsgType.PRE_VOTE:
                in_lease = (self.cfg.check_quorum and self.leader_id != 0
                            and self.election_elapsed < self.cfg.election_ticks)
                if in_lease and m.context != CAMPAIGN_TRANSFER:
                    return  # leader lease: a live leader exists, ignore the disruptive candidate
            if t is MsgType.PRE_VOTE or (t is MsgType.PRE_VOTE_RESP and not m.reject):
                pass  # pre-vote never changes terms
            elif t in _FROM_LEADER:
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, 0)
        elif m.term < self.term:
            if (t is _APP or t is _HEARTBEAT or t is _COMMIT) and (self.cfg.check_quorum or self.cfg.pre_vote):
                # a stale leader (e.g. after a partition) learns our term and steps down
                self._send(Message(_APP_RESP, m.frm, self.id, self.term))
            elif t is MsgType.PRE_VOTE:
                self._send(Message(MsgType.PRE_VOTE_RESP, m.frm, self.id, self.term, reject=True))
            return
        if t is MsgType.VOTE or t is MsgType.PRE_VOTE:
            self._handle_vote_request(m)
            return
        role = self.role
        if role is Role.LEADER:
            self._step_leader(m)
        elif role is Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def _handle_vote_request(self, m: Message) -> None:
        pre = m.type is MsgType.PRE_VOTE
        can_vote = (self.vote == m.frm or (self.vote == 0 and self.leader_id == 0)
                    or (pre and m.term > self.term))
        resp_type = MsgType.PRE_VOTE_RESP if pre else MsgType.VOTE_RESP
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            self._send(Message(resp_type, m.frm, self.id, m.term))
            if not pre:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(resp_type, m.frm, self.id, self.term, reject=True))

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t in _FROM_LEADER:
            self.election_elapsed = 0
            self.leader_id = m.frm
            if t is _APP:
                self._handle_append(m)
            elif t is _COMMIT:
                self._handle_commit(m)
            elif t is _HEARTBEAT:
                self._handle_heartbeat(m)
            else:
                self._handle_snapshot(m)
        elif t is MsgType.TIMEOUT_NOW:
            if self.promotable:
                self._hup(transfer=True)
        elif t is MsgType.READ_INDEX_RESP:
            if not m.reject:
                self._read_states.append(ReadState(m.context, m.index))
        elif t is MsgType.READ_INDEX and self.leader_id:
            # a stale follower asked us; pass it on rather than lose it
            self._send(Message(MsgType.READ_INDEX, self.leader_id, self.id, self.term, context=m.context))

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t in _FROM_LEADER:
            self._become_follower(self.term, m.frm)  # someone won this term
            self._step_follower(m)
            return
        want = MsgType.PRE_VOTE_RESP if self.role is Role.PRE_CANDIDATE else MsgType.VOTE_RESP
        if t is not want:
            return
        self.votes[m.frm] = not m.reject
        res = quorum.vote_result(self.membership, self.votes)
        if res == quorum.VoteResult.WON:
            if self.role is Role.PRE_CANDIDATE:
                self._campaign(transfer=False)
            else:
                self._become_leader()
        elif res == quorum.VoteResult.LOST:
            self._become_follower(self.term, 0)

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t is _APP_RESP:
            self._handle_append_response(m)
        elif t is MsgType.HEARTBEAT_RESP:
            self._handle_heartbeat_response(m)
        elif t is MsgType.SNAPSHOT_RESP:
            self._handle_snapshot_response(m)
        elif t is MsgType.READ_INDEX:
            self._leader_read(m.context, m.frm)

    # ------------------------------------------------------------------ follower handlers
    def _handle_append(self, m: Message) -> None:
        log = self.log
        if m.index < self.commit:
            self._send(Message(_APP_RESP, m.frm, self.id, self.term, index=self.commit))
            return
        if log.term(m.index) == m.log_term:
            ents = m.entries
            if ents:
                ci = log.find_conflict(ents)
                if ci:
                    if ci <= self.commit:
                        raise RaftSafetyError(f"append from {m.frm} (term {m.term}) conflicts at {ci} "
                                              f"with committed index {self.commit}")
                    self._append_entries(ents[ci - ents[0].index:])
            last_new = m.index + len(ents)
            c = min(m.commit, last_new)
            self.commit = max(self.commit, c)
            self._send(Message(_APP_RESP, m.frm, self.id, self.term, index=last_new))
            return
        hint = log.find_conflict_by_term(min(m.index, log.last_index), m.log_term)
        self._send(Message(_APP_RESP, m.frm, self.id, self.term, index=m.index, reject=True,
                           hint_index=hint, hint_term=log.term(hint) or 0))

    def _handle_commit(self, m: Message) -> None:
        """The commit rule of an empty AppendEntries (commit up to the leader's commit, but not past
        an entry known to match the leader's log), without its answer: the leader sends COMMIT only
        to a follower whose answer would tell it nothing new. A follower whose log does not hold
        (index, log_term) ignores it; heartbeats and the next append repair it as before."""
        if m.commit > self.commit and self.log.term(m.index) == m.log_term:
            self.commit = max(self.commit, min(m.commit, m.index))

    def _handle_heartbeat(self, m: Message) -> None:
        c = min(m.commit, self.log.last_index)
        self.commit = max(self.commit, c)
        self._send(Message(MsgType.HEARTBEAT_RESP, m.frm, self.id, self.term, index=m.index))

    def _handle_snapshot(self, m: Message) -> None:
        meta = m.snapshot
        if meta is None:
            return
        if meta.index <= self.commit:
            self._snap_recv = None
            self._send(Message(_APP_RESP, m.frm, self.id, self.term, index=self.commit))
            return
        if m.offset == 0:
            self._snap_recv = [meta, 0]
        rec = self._snap_recv
        if rec is None or rec[0] != meta or rec[1] != m.offset:
            expected = rec[1] if rec is not None and rec[0] == meta else 0
            self._send(Message(MsgType.SNAPSHOT_RESP, m.frm, self.id, self.term, index=meta.index,
                               offset=expected, reject=True))
            return
        rec[1] += len(m.data)
        self._snap_chunks.append(SnapshotChunk(meta, m.offset, m.data, m.done))
        if not m.done:
            self._send(Message(MsgType.SNAPSHOT_RESP, m.frm, self.id, self.term, index=meta.index,
                               offset=rec[1]))
            return
        self._snap_recv = None
        self._restore(meta)
        self._send(Message(_APP_RESP, m.frm, self.id, self.term, index=max(meta.index, self.commit)))

    def _restore(self, meta: SnapshotMeta) -> bool:
        if meta.index <= self.commit:
            return False
        if self.log.term(meta.index) == meta.term:
            self.commit = meta.index  # we hold those entries: fast-forward instead of replacing
            return False
        self.log.reset(meta.index, meta.term)
        self._snapshot = meta
        self._base_membership = meta.membership
        self._configs = []
        self.membership = meta.membership
        self.commit = meta.index
        self._handed = meta.index
        self._snap_to_install = meta
        return True

    def _append_entries(self, ents: list[Entry]) -> None:
        first = ents[0].index
        self.log.truncate_and_append(ents)
        cfgs = self._configs
        if cfgs and cfgs[-1][0] >= first:
            while cfgs and cfgs[-1][0] >= first:
                cfgs.pop()
            self.membership = cfgs[-1][1] if cfgs else self._base_membership
        for e in ents:
            if e.kind is EntryKind.CONFIG:
                self._note_config(e.index, decode_membership(e.data))

    def _note_config(self, index: int, m: Membership) -> None:
        self._configs.append((index, m))
        self.membership = m
        if self.role is Role.LEADER:
            self._sync_progress()

    # ------------------------------------------------------------------ leader handlers
    def _handle_append_response(self, m: Message) -> None:
        pr = self.prs.get(m.frm)
        if pr is None or m.index > self.log.last_index:
            return
        pr.recent_active = True
        if m.reject:
            probe = m.hint_index
            if m.hint_term > 0:
                probe = self.log.find_conflict_by_term(m.hint_index, m.hint_term)
            if pr.maybe_decrease_to(m.index, probe):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        old_paused = pr.paused
        if not pr.maybe_update(m.index):
            return
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        if self._maybe_commit():
            self._bcast_empty = True
            if self.role is not Role.LEADER or m.frm not in self.prs:
                return  # the commit removed us (or the sender) from the cluster
        elif old_paused:
            self._send_append(m.frm)
        while self._send_append(m.frm, send_if_empty=False):
            pass
        if m.frm == self.lead_transferee and pr.match == self.log.last_index:
            self._send(Message(MsgType.TIMEOUT_NOW, m.frm, self.id, self.term))

    def _handle_heartbeat_response(self, m: Message) -> None:
        pr = self.prs.get(m.frm)
        if pr is None:
            return
        pr.recent_active = True
        pr.probe_sent = False
        if pr.state == ProgressState.REPLICATE and len(pr.inflight) >= pr.max_inflight:
            pr.inflight.popleft()  # the follower is alive: let one more append through
        if pr.match < self.log.last_index:
            self._send_append(m.frm)
        if m.index and m.index > self._read_acks.get(m.frm, 0):
            self._read_acks[m.frm] = min(m.index, self._read_seq)
            self._check_reads()

    def _handle_snapshot_response(self, m: Message) -> None:
        pr = self.prs.get(m.frm)
        if pr is None or pr.state != ProgressState.SNAPSHOT or m.index != pr.pending_snapshot:
            return
        pr.recent_active = True
        pr.snapshot_idle_ticks = 0
        # One chunk stream per follower: act only on an ack that moves past the chunk in flight,
        # or on a reject naming another offset than the one in flight. Duplicated or stale answers
        # would otherwise each start a stream of their own, and the streams multiply (sim seed 452).
        if m.offset == pr.snapshot_offset or (not m.reject and m.offset < pr.snapshot_offset):
            return
        pr.snapshot_offset = m.offset
        self._snap_requests.append(SnapshotRequest(m.frm, pr.snapshot_in_flight(), m.offset,
                                                   self.cfg.snapshot_chunk_bytes))

    def _send_append(self, to: int, send_if_empty: bool = True) -> bool:
        pr = self.prs.get(to)
        if pr is None or pr.paused:  # None: removed by a config change made in this same step
            return False
        log = self.log
        last = log.last_index
        pr.next = min(pr.next, last + 1)
        prev = pr.next - 1
        prev_term = log.term(prev)
        if prev_term is None:  # compacted away: only a snapshot can catch this follower up
            meta = self._snapshot
            if meta is None:
                return False
            pr.become_snapshot(meta)
            self._snap_requests.append(SnapshotRequest(to, meta, 0, self.cfg.snapshot_chunk_bytes))
            return False
        if pr.next <= last:
            ents = log.slice_limited(pr.next, self.cfg.max_entries_per_msg, self.cfg.max_bytes_per_msg)
        elif send_if_empty:
            ents = []
        else:
            return False
        self._msgs.append(Message(_APP, to, self.id, self.term, prev_term, prev, self.commit, entries=ents))
        pr.sent(prev + len(ents), len(ents))
        return True

    def _send_commit(self, to: int) -> None:
        """Tell a follower that has been sent every entry about a new commit index. A pipelining
        follower gets COMMIT, which asks for no answer: its answer to an empty AppendEntries would
        only repeat what the leader knows, and at low load it is half the messages of a write
        (each one a wake-up of the leader's Raft thread). A probed follower still gets the empty
        AppendEntries, whose answer the probe needs."""
        pr = self.prs.get(to)
        if pr is None:
            return
        if pr.state != ProgressState.REPLICATE or pr.paused:
            self._send_append(to, send_if_empty=True)
            return
        prev = min(pr.next, self.log.last_index + 1) - 1
        prev_term = self.log.term(prev)
        if prev_term is not None:
            self._msgs.append(Message(_COMMIT, to, self.id, self.term, prev_term, prev, self.commit))

    def _bcast_heartbeat(self) -> None:
        seq = self._read_seq
        commit = self.commit
        for to, pr in self.prs.items():
            if to != self.id:
                self._msgs.append(Message(_HEARTBEAT, to, self.id, self.term,
                                          commit=min(pr.match, commit), index=seq))

    def _flush(self) -> None:
        """Turn batched intents (new entries, commit advance, read rounds) into messages."""
        if self.role is not Role.LEADER:
            return
        if self._bcast_pending or self._bcast_empty:
            empty = self._bcast_empty
            self._bcast_pending = self._bcast_empty = False
            for to in self.prs:
                if to == self.id:
                    continue
                if self._send_append(to, send_if_empty=False):
                    while self._send_append(to, send_if_empty=False):
                        pass
                elif empty:
                    self._send_commit(to)
        if self._hb_read_needed:
            self._hb_read_needed = False
            self._bcast_heartbeat()

    def _maybe_commit(self) -> bool:
        acked = {n: p.match for n, p in self.prs.items()}
        c = quorum.committed_index(self.membership, acked)
        if self.cfg.unsafe_removed_votes and not self.membership.is_joint:  # the planted bug
            need = len(self.membership.voters) // 2 + 1
            voting = sorted((p.match for p in self.prs.values() if not p.is_learner), reverse=True)
            c = max(c, voting[need - 1] if len(voting) >= need else 0)
        if c <= self.commit or self.log.term(c) != self.term:
            return False  # Figure 8: only current-term entries are committed by counting
        first_in_term = self.log.term(self.commit) != self.term
        self.commit = c
        if first_in_term and self._reads_waiting_commit:
            waiting, self._reads_waiting_commit = self._reads_waiting_commit, []
            for ctx, frm in waiting:
                self._leader_read(ctx, frm)
        self._after_commit_config()
        return True

    def _after_commit_config(self) -> None:
        if not self._configs or self._configs[-1][0] > self.commit:
            return
        m = self.membership
        if m.is_joint:
            self._propose_config(Membership(m.voters, m.learners))  # auto-leave the joint config
        elif self.id not in m.voters:
            # we were removed and that is now committed: tell everyone, hand over, step down
            for to in self.prs:
                if to != self.id:
                    self._send_append(to)
            best = max(((p.match, n) for n, p in self.prs.items() if n in m.voters and n != self.id),
                       default=(0, 0))
            if best[1] and best[0] == self.log.last_index:
                self._send(Message(MsgType.TIMEOUT_NOW, best[1], self.id, self.term))
            self._become_follower(self.term, 0)

    def _tick_leader(self) -> None:
        self.election_elapsed += 1
        self.heartbeat_elapsed += 1
        if self.election_elapsed >= self.cfg.election_ticks:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                active = {n for n, p in self.prs.items() if p.recent_active}
                active.add(self.id)
                if not quorum.has_quorum(self.membership, active):
                    self._become_follower(self.term, 0)  # lost contact with a majority
                    return
                for n, p in self.prs.items():
                    if n != self.id:
                        p.recent_active = False
            self.lead_transferee = None  # a transfer that took an election timeout has failed
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat()
        for n, p in self.prs.items():
            if p.state == ProgressState.SNAPSHOT:
                p.snapshot_idle_ticks += 1
                if p.snapshot_idle_ticks >= self.cfg.election_ticks:  # a chunk or its ack was lost
                    p.snapshot_idle_ticks = 0
                    self._snap_requests.append(SnapshotRequest(n, p.snapshot_in_flight(), p.snapshot_offset,
                                                               self.cfg.snapshot_chunk_bytes))

    # ------------------------------------------------------------------ ReadIndex
    def _leader_read(self, ctx: bytes, frm: int) -> None:
        if self.log.term(self.commit) != self.term:
            self._reads_waiting_commit.append((ctx, frm))  # no commit in our term yet
            return
        self._read_seq += 1
        self._reads.append((self._read_seq, self.commit, ctx, frm))
        self._hb_read_needed = True
        self._check_reads()

    def _check_reads(self) -> None:
        reads = self._reads
        if not reads:
            return
        acks = dict(self._read_acks)
        acks[self.id] = self._read_seq
        ok = quorum.committed_index(self.membership, acks)
        while reads and reads[0][0] <= ok:
            _, index, ctx, frm = reads.popleft()
            if frm == self.id:
                self._read_states.append(ReadState(ctx, index))
            else:
                self._send(Message(MsgType.READ_INDEX_RESP, frm, self.id, self.term, index=index,
                                   context=ctx))

    # ------------------------------------------------------------------ role changes
    def _send(self, m: Message) -> None:
        self._msgs.append(m)

    def _reset_randomized_timeout(self) -> None:
        et = self.cfg.election_ticks
        self._randomized_timeout = et + self.rng.randrange(et)

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = 0
        self.leader_id = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self.votes = {}
        self.lead_transferee = None
        self.prs = {}
        self._reads.clear()
        self._read_acks = {}
        self._reads_waiting_commit = []
        self._hb_read_needed = False
        self._bcast_pending = self._bcast_empty = False

    def _become_follower(self, term: int, leader: int) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader_id = leader

    def _hup(self, transfer: bool) -> None:
        if self.role is Role.LEADER or not self.promotable:
            return
        if self.cfg.pre_vote and not transfer:
            self._reset(self.term)
            self.role = Role.PRE_CANDIDATE
            self._request_votes(MsgType.PRE_VOTE, self.term + 1, b"")
        else:
            self._campaign(transfer)

    def _campaign(self, transfer: bool) -> None:
        self._reset(self.term + 1)
        self.role = Role.CANDIDATE
        self.vote = self.id
        self._request_votes(MsgType.VOTE, self.term, CAMPAIGN_TRANSFER if transfer else b"")

    def _request_votes(self, mtype: MsgType, term: int, ctx: bytes) -> None:
        self.votes = {self.id: True}
        if quorum.vote_result(self.membership, self.votes) == quorum.VoteResult.WON:
            if mtype is MsgType.PRE_VOTE:
                self._campaign(transfer=False)
            else:
                self._become_leader()
            return
        m = self.membership
        li, lt = self.log.last_index, self.log.last_term
        for v in sorted(m.voters | m.voters_outgoing):
            if v != self.id:
                self._send(Message(mtype, v, self.id, term, lt, li, context=ctx))

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader_id = self.id
        self._sync_progress()
        self_pr = self.prs[self.id]
        self_pr.match = self.log.unstable_from - 1
        self_pr.recent_active = True
        self.pending_conf_index = self.log.last_index
        idx = self.log.last_index + 1
        self.log.append(Entry(self.term, idx, EntryKind.NOOP))
        self._bcast_pending = True

    def _sync_progress(self) -> None:
        m = self.membership
        members = m.members | {self.id}
        if self.cfg.unsafe_removed_votes:  # the planted bug: voters of earlier configurations stay
            members |= {v for _, c in self._configs for v in c.voters}
        nxt = self.log.last_index + 1
        mi = self.cfg.max_inflight_msgs
        for n in members:
            if n not in self.prs:
                self.prs[n] = Progress(nxt, mi)
            self.prs[n].is_learner = n in m.learners
        for n in [n for n in self.prs if n not in members]:
            if not self.cfg.unsafe_removed_votes:  # the planted bug keeps removed voters' progress
                del self.prs[n]

    def _check_can_change(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id or None)
        if self.lead_transferee is not None:
            raise ProposalRejected("leadership transfer in progress")
        if self.pending_conf_index > self.commit:
            raise ProposalRejected("a membership change is still uncommitted")

    def _propose_config(self, m: Membership) -> int:
        idx = self.log.last_index + 1
        self.log.append(Entry(self.term, idx, EntryKind.CONFIG, encode_membership(m)))
        self.pending_conf_index = idx
        self._note_config(idx, m)
        self._bcast_pending = True
        return idx
