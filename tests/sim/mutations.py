"""Deliberately broken Raft rules and drivers, to prove the simulator catches each of them.

Each mutation is a context manager that patches the real core (or swaps the simulated driver) for
the duration of a `with` block, plus the name of the safety rule it is expected to break.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from kalamdb.raft import core as core_mod
from kalamdb.raft.core import RaftCore, ReadState
from kalamdb.raft.log import RaftLog
from kalamdb.raft.types import HardState
from kalamdb.sim.node import SimNode
from kalamdb.sim.params import aggressive  # noqa: F401  (re-exported for the hunts)


def _commit_by_counting(self) -> bool:
    """Figure 8 broken: commit whatever a quorum holds, even an entry of an earlier term."""
    c = core_mod.quorum.committed_index(self.membership, {n: p.match for n, p in self.prs.items()})
    if c <= self.commit:
        return False
    self.commit = c
    self._after_commit_config()
    return True


def _read_without_quorum(self, ctx: bytes, frm: int) -> None:
    """ReadIndex broken: answer at once from the local commit index, no heartbeat round."""
    if frm == self.id:
        self._read_states.append(ReadState(ctx, self.commit))
    else:
        self._send(core_mod.Message(core_mod.MsgType.READ_INDEX_RESP, frm, self.id, self.term,
                                    index=self.commit, context=ctx))


def _everything_early(self, *, leader_durable: bool) -> list:
    """take_early_messages broken: every queued message leaves during the fsync, a follower's
    acknowledgements and votes included (seeds drawing `send_while_syncing`)."""
    if self._outstanding is None:
        return []
    msgs, self._msgs = self._msgs, []
    return msgs


class VoteNotPersisted(SimNode):
    """Driver broken: the vote is not written before the vote response goes out."""

    __slots__ = ()

    def persist(self, rd) -> bool:
        hs = rd.hard_state
        if hs is not None and hs.vote:
            on_disk = self.disk.hard_state
            rd.hard_state = HardState(hs.term, on_disk.vote if on_disk.term == hs.term else 0, hs.commit)
        return super().persist(rd)


class SendBeforePersist(SimNode):
    """Driver broken: messages (votes, append acks) leave before the fsync that backs them."""

    __slots__ = ()

    def persist(self, rd) -> bool:
        send = self.sim.send
        for m in rd.messages:
            send(self.id, m)
        rd.messages = []
        return super().persist(rd)


@contextlib.contextmanager
def _patch(obj, name: str, value) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


# name -> (context manager factory, node factory, rules it may break)
MUTATIONS = {
    "figure8": (lambda: _patch(RaftCore, "_maybe_commit", _commit_by_counting), SimNode,
                {"state-machine-safety", "leader-completeness", "lost-acknowledged-write", "log-matching",
                 "stale-read"}),
    "read-without-quorum": (lambda: _patch(RaftCore, "_leader_read", _read_without_quorum), SimNode,
                            {"stale-read"}),
    "vote-up-to-date-ignored": (lambda: _patch(RaftLog, "is_up_to_date", lambda self, i, t: True), SimNode,
                                {"state-machine-safety", "leader-completeness", "lost-acknowledged-write",
                                 "log-matching", "stale-read"}),
    "vote-not-persisted": (contextlib.nullcontext, VoteNotPersisted,
                           {"durability-promise", "election-safety", "state-machine-safety", "leader-completeness",
                            "lost-acknowledged-write", "log-matching"}),
    "send-before-persist": (contextlib.nullcontext, SendBeforePersist,
                            {"durability-promise", "election-safety", "state-machine-safety", "leader-completeness",
                             "lost-acknowledged-write", "log-matching", "stale-read"}),
    "early-acks": (lambda: _patch(RaftCore, "take_early_messages", _everything_early), SimNode,
                   {"durability-promise", "election-safety", "state-machine-safety", "leader-completeness",
                    "lost-acknowledged-write", "log-matching", "stale-read"}),
}


MUTATIONS["none"] = (contextlib.nullcontext, SimNode, set())


def _become_leader_without_noop(self) -> None:
    """Leaders do not open their term with a NOOP (alone this only delays commits)."""
    self._reset(self.term)
    self.role = core_mod.Role.LEADER
    self.leader_id = self.id
    self._sync_progress()
    me = self.prs[self.id]
    me.match = self.log.unstable_from - 1
    me.recent_active = True
    self.pending_conf_index = self.log.last_index
    self._bcast_pending = True


@contextlib.contextmanager
def _figure8_without_noop() -> Iterator[None]:
    with _patch(RaftCore, "_maybe_commit", _commit_by_counting), \
            _patch(RaftCore, "_become_leader", _become_leader_without_noop):
        yield


MUTATIONS["figure8-no-noop"] = (_figure8_without_noop, SimNode,
                                {"state-machine-safety", "leader-completeness", "lost-acknowledged-write",
                                 "log-matching", "stale-read"})


# --- bugs the simulator found in the core, re-introduced to prove their regression seeds still
# --- reach the scenario (tests/sim/test_regressions.py)

def _promotable_before_2e43133(self) -> bool:
    m = self.membership
    return self.id in m.voters or self.id in m.voters_outgoing


MUTATIONS["removed-never-campaigns"] = (
    lambda: _patch(RaftCore, "promotable", property(_promotable_before_2e43133)), SimNode, set())


def _before_5756cfb():
    """The leader's append-response handler as it was before 5756cfb: after a commit whose
    auto-leave config removed the acking peer, it still sends to that peer (KeyError)."""
    import inspect
    import textwrap

    src = textwrap.dedent(inspect.getsource(RaftCore._handle_append_response))
    fixed = "if self.role is not Role.LEADER or m.frm not in self.prs:"
    if fixed not in src:
        raise RuntimeError("core changed: update the bug-A mutation")
    namespace: dict = {}
    exec(src.replace(fixed, "if self.role is not Role.LEADER:"), vars(core_mod), namespace)  # noqa: S102
    old_handler = namespace["_handle_append_response"]
    current_send = RaftCore._send_append

    def strict_send_append(self, to, send_if_empty=True):
        self.prs[to]
        return current_send(self, to, send_if_empty)

    stack = contextlib.ExitStack()
    stack.enter_context(_patch(RaftCore, "_handle_append_response", old_handler))
    stack.enter_context(_patch(RaftCore, "_send_append", strict_send_append))
    return stack


MUTATIONS["append-to-removed-peer"] = (_before_5756cfb, SimNode, set())


def _snapshot_resp_before_fix(self, m) -> None:
    """The leader's SNAPSHOT_RESP handler before the bug-C fix: every answer, duplicated or stale,
    asks for another chunk, so each duplicate starts a chunk stream of its own."""
    pr = self.prs.get(m.frm)
    if pr is None or pr.state != core_mod.ProgressState.SNAPSHOT or m.index != pr.pending_snapshot:
        return
    pr.recent_active = True
    pr.snapshot_idle_ticks = 0
    pr.snapshot_offset = m.offset
    self._snap_requests.append(core_mod.SnapshotRequest(m.frm, pr.snapshot_meta, m.offset,
                                                        self.cfg.snapshot_chunk_bytes))


MUTATIONS["snapshot-streams-multiply"] = (
    lambda: _patch(RaftCore, "_handle_snapshot_response", _snapshot_resp_before_fix), SimNode, set())
