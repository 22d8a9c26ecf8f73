"""Values shared by the Raft core, its storage, the driver and the simulator.

Plain frozen dataclasses: cheap to build, hashable, and easy to encode as msgpack lists
(see `to_wire`/`from_wire`), which is how storage and transport carry them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class EntryKind(IntEnum):
    NORMAL = 0  # state-machine command (opaque bytes)
    NOOP = 1  # opens every leader term (commits earlier terms' entries, Figure 8)
    CONFIG = 2  # membership change; data is Membership.to_wire() msgpack-encoded


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""

    def to_wire(self) -> list:
        return [self.term, self.index, int(self.kind), self.data]

    @classmethod
    def from_wire(cls, w: list) -> Entry:
        term, index, kind, data = w
        if not (isinstance(term, int) and isinstance(index, int) and isinstance(data, bytes)):
            raise ValueError(f"malformed entry: {w!r:.200}")  # noqa: TRY004 - wire errors are ValueError
        return cls(term, index, EntryKind(kind), data)


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before a vote is answered or an append acknowledged."""

    term: int = 0
    vote: int = 0  # 0 = voted for nobody in `term`
    commit: int = 0

    def to_wire(self) -> list:
        return [self.term, self.vote, self.commit]

    @classmethod
    def from_wire(cls, w: list) -> HardState:
        term, vote, commit = w
        return cls(int(term), int(vote), int(commit))


@dataclass(frozen=True, slots=True)
class Membership:
    """Voters (and, during joint consensus, the outgoing voters) plus non-voting learners."""

    voters: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()
    voters_outgoing: frozenset[int] = frozenset()  # non-empty only in a joint configuration

    @property
    def is_joint(self) -> bool:
        return bool(self.voters_outgoing)

    @property
    def members(self) -> frozenset[int]:
        return self.voters | self.learners | self.voters_outgoing

    def to_wire(self) -> list:
        return [sorted(self.voters), sorted(self.learners), sorted(self.voters_outgoing)]

    @classmethod
    def from_wire(cls, w: list) -> Membership:
        voters, learners, outgoing = w
        return cls(frozenset(voters), frozenset(learners), frozenset(outgoing))


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Where a snapshot ends: the last log entry it covers and the membership at that point."""

    index: int
    term: int
    membership: Membership = field(default_factory=Membership)

    def to_wire(self) -> list:
        return [self.index, self.term, self.membership.to_wire()]

    @classmethod
    def from_wire(cls, w: list) -> SnapshotMeta:
        index, term, membership = w
        return cls(int(index), int(term), Membership.from_wire(membership))


@dataclass(slots=True)
class PersistentState:
    """What storage hands the core at start: everything that survived on disk."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta | None = None
    entries: list[Entry] = field(default_factory=list)  # contiguous, first index = snapshot.index + 1
