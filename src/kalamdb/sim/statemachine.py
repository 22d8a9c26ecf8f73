"""The replicated state machine of the simulation: a tiny key-value store with exactly-once writes.

A command is b"<op_id>,<key>": "set key to op_id". Clients retry a write until it is acknowledged,
so the same op may be committed more than once; only its first application counts (deterministic,
because every replica sees the same log). Each key remembers the log index that wrote it, which is
what the ReadIndex freshness check compares.
"""

from __future__ import annotations

from kalamdb.raft.types import Entry, EntryKind

_MASK = (1 << 61) - 1


def encode_command(op_id: int, key: int) -> bytes:
    return b"%d,%d" % (op_id, key)


def decode_command(data: bytes) -> tuple[int, int]:
    op, _, key = data.partition(b",")
    return int(op), int(key)


class KVStateMachine:
    __slots__ = ("applied", "digest", "first_index", "kv")

    def __init__(self) -> None:
        self.applied = 0
        self.kv: dict[int, tuple[int, int]] = {}  # key -> (op_id, index that wrote it)
        self.first_index: dict[int, int] = {}  # op_id -> index of its first (effective) application
        self.digest = 0  # rolling hash of every effective write, to compare replicas cheaply

    def apply(self, entry: Entry) -> int | None:
        """Apply one committed entry; returns the op id for a client command, else None."""
        self.applied = entry.index
        if entry.kind != EntryKind.NORMAL or not entry.data:
            return None
        op_id, key = decode_command(entry.data)
        if op_id not in self.first_index:
            self.first_index[op_id] = entry.index
            self.kv[key] = (op_id, entry.index)
            self.digest = (self.digest * 1_000_003 + op_id * 7919 + entry.index) & _MASK
        return op_id

    def read(self, key: int) -> tuple[int, int]:
        """(op_id, index) of the write the key holds, (0, 0) if never written."""
        return self.kv.get(key, (0, 0))

    def snapshot(self) -> tuple:
        return (self.applied, dict(self.kv), dict(self.first_index), self.digest)

    @classmethod
    def from_snapshot(cls, data: tuple | None) -> KVStateMachine:
        sm = cls()
        if data is not None:
            applied, kv, first, digest = data
            sm.applied, sm.kv, sm.first_index, sm.digest = applied, dict(kv), dict(first), digest
        return sm
