"""Raft's safety properties, checked continuously while the simulation runs.

Each hook is called by the simulated drivers at the moment the fact becomes observable; the first
broken rule raises `SafetyViolation`, which stops the run with the seed and the recent trace.
"Committed" here means known committed: applied by some node (the only way the outside world learns).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from kalamdb.raft.messages import Message, MsgType
from kalamdb.raft.types import Entry

if TYPE_CHECKING:
    from kalamdb.sim.disk import SimDisk


class SafetyViolation(Exception):
    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{rule}: {message}")
        self.rule = rule
        self.message = message


class LogView(Protocol):
    def term_at(self, index: int) -> int | None: ...  # None: compacted away or beyond the log
    @property
    def first_index(self) -> int: ...  # first index still held as an entry
    @property
    def last_index(self) -> int: ...


class SafetyChecker:
    __slots__ = ("acked", "applied", "committed", "key_acked", "leaders", "max_committed")

    def __init__(self) -> None:
        self.leaders: dict[int, int] = {}  # term -> the one node that led it
        self.committed: dict[int, Entry] = {}  # index -> the entry every node must apply there
        self.max_committed = 0
        self.acked: dict[int, int] = {}  # op_id -> index of its first application (client was told)
        self.key_acked: dict[int, int] = {}  # key -> highest index of an acknowledged write
        self.applied: dict[tuple[int, int], int] = {}  # (node, incarnation) -> last applied index

    # --- election safety + leader completeness -----------------------------------------------------
    def on_leader(self, node: int, term: int, log: LogView) -> None:
        other = self.leaders.setdefault(term, node)
        if other != node:
            raise SafetyViolation("election-safety", f"two leaders in term {term}: n{other} and n{node}")
        # Leader completeness: every entry known committed must be in the new leader's log.
        # By log matching it suffices to check the highest known-committed entry the log still holds
        # (anything at or below the leader's compaction point was committed when it was compacted).
        first, last = log.first_index, log.last_index
        if self.max_committed > last:
            raise SafetyViolation(
                "leader-completeness",
                f"n{node} leads term {term} with last index {last} < committed index {self.max_committed}")
        for index in range(max(first, 1), self.max_committed + 1):
            want = self.committed.get(index)
            if want is not None and log.term_at(index) != want.term:
                raise SafetyViolation(
                    "leader-completeness",
                    f"n{node} leads term {term} but holds term {log.term_at(index)} at committed index "
                    f"{index} (committed term {want.term})")

    # --- state-machine safety + monotonic apply ----------------------------------------------------
    def on_apply(self, node: int, incarnation: int, entry: Entry) -> None:
        key = (node, incarnation)
        last = self.applied.get(key, 0)
        index = entry.index
        if index <= last:
            raise SafetyViolation("applied-monotonic", f"n{node} applied {index} after {last}")
        self.applied[key] = index
        seen = self.committed.get(index)
        if seen is None:
            self.committed[index] = entry
            self.max_committed = max(self.max_committed, index)
        elif seen is not entry and seen != entry:
            raise SafetyViolation(
                "state-machine-safety",
                f"n{node} applied {entry!r:.120} at {index}, another node applied {seen!r:.120}")

    def on_restore(self, node: int, incarnation: int, index: int, term: int) -> None:
        """A node's state machine jumped to a snapshot taken at (index, term)."""
        key = (node, incarnation)
        last = self.applied.get(key, 0)
        if index < last:
            raise SafetyViolation("applied-monotonic", f"n{node} restored snapshot {index} after applying {last}")
        self.applied[key] = index
        seen = self.committed.get(index)
        if seen is not None and seen.term != term:
            raise SafetyViolation("state-machine-safety",
                                  f"n{node} restored a snapshot at {index} term {term}; committed term {seen.term}")

    # --- the Ready contract: what a message promises is durable before it leaves -------------------
    def on_promise(self, node: int, msg: Message, disk: SimDisk) -> None:
        if msg.type == MsgType.APP_RESP:  # "I hold entries up to msg.index" (unless a later term took over)
            if disk.last_index() < msg.index and disk.hard_state.term <= msg.term:
                raise SafetyViolation(
                    "durability-promise",
                    f"n{node} acked index {msg.index} to n{msg.to} with only {disk.last_index()} synced")
        else:  # VOTE_RESP grant: that vote (or a later term, where this one can no longer be recast)
            hs = disk.hard_state
            if hs.term > msg.term or (hs.term == msg.term and hs.vote == msg.to):
                return
            raise SafetyViolation(
                "durability-promise",
                f"n{node} granted its term-{msg.term} vote to n{msg.to} with term {hs.term} vote {hs.vote} synced")

    # --- client-visible guarantees ------------------------------------------------------------------
    def on_ack(self, op_id: int, key: int, index: int) -> None:
        self.acked[op_id] = index
        if index > self.key_acked.get(key, 0):
            self.key_acked[key] = index

    def read_floor(self, key: int) -> int:
        """The index of the newest write to `key` acknowledged so far (call when a read begins)."""
        return self.key_acked.get(key, 0)

    def on_read(self, node: int, key: int, floor: int, got_index: int) -> None:
        if got_index < floor:
            raise SafetyViolation(
                "stale-read",
                f"ReadIndex read of key {key} on n{node} returned the write at {got_index}, "
                f"older than the write at {floor} acknowledged before the read began")

    def check_acked_present(self, node: int, first_index_of: Callable[[int], int | None]) -> None:
        """Every acknowledged write is in this node's state, at the index it was acknowledged at."""
        for op_id, index in self.acked.items():
            got = first_index_of(op_id)
            if got != index:
                raise SafetyViolation(
                    "lost-acknowledged-write",
                    f"n{node}: op {op_id} acknowledged at index {index}, state has it at {got}")

    # --- log matching -------------------------------------------------------------------------------
    def check_log_matching(self, logs: dict[int, LogView]) -> None:
        """If two logs hold the same term at an index, they agree on every entry up to it.
        Checked pairwise from the newest common index down (cheap: stops at the first match)."""
        nodes = sorted(logs)
        for i, a in enumerate(nodes):
            la = logs[a]
            for b in nodes[i + 1:]:
                lb = logs[b]
                lo = max(la.first_index, lb.first_index)
                hi = min(la.last_index, lb.last_index)
                matched = False
                for index in range(hi, lo - 1, -1):
                    ta, tb = la.term_at(index), lb.term_at(index)
                    if matched:
                        if ta != tb:
                            raise SafetyViolation(
                                "log-matching",
                                f"n{a} and n{b} agree at a later index but differ at {index}: "
                                f"term {ta} vs {tb}")
                    elif ta == tb and ta is not None:
                        matched = True
