"""What the Raft log looks like on disk, and how it refuses to be used: the record types of the
stream, segment file names, the packed (segment, offset) location of a record, and the errors that
stop a node. Shared by the replay that reads a log (`log_replay.py`) and the storage that writes it
(`storage.py`); the byte framing under the records is `wal.py`'s."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kalamdb.raft.types import EntryKind

SEGMENT_BYTES = 64 << 20

R_CHECKPOINT = 1
R_ENTRIES = 2
R_HARD_STATE = 3
R_SNAPSHOT = 4
R_COMPACT = 5

SEGMENT_NAME = re.compile(r"^wal-(\d{16})\.log$")
LOC_SHIFT = 40  # a location packs (segment seq, record offset) into one int64
KINDS = tuple(EntryKind)


def segment_name(seq: int) -> str:
    return f"wal-{seq:016d}.log"


def location(seq: int, offset: int) -> int:
    """The int64 naming the record at `offset` in segment `seq`."""
    return (seq << LOC_SHIFT) | offset


def split_location(loc: int) -> tuple[int, int]:
    """(segment seq, record offset) of a location made by `location()`."""
    return loc >> LOC_SHIFT, loc & ((1 << LOC_SHIFT) - 1)


@dataclass(slots=True)
class Segment:
    seq: int
    path: str
    max_index: int = 0  # highest entry index ever written here (0 = none)


class StorageError(RuntimeError):
    """The log cannot be used as asked; the node must stop rather than guess. Not an HTTP error:
    nothing a client sent caused it, and the driver fail-stops on it (docs/design/raft.md)."""


class LogCorruptError(StorageError):
    """A damaged record with intact data after it: real loss, never silently skipped."""

    def __init__(self, path: str, offset: int, reason: str):
        super().__init__(f"Raft log corrupt in {path} at byte offset {offset}: {reason}. The node "
                         f"stops instead of discarding data; restore this node from a peer "
                         f"(wipe its data directory and rejoin) or repair the file.")
        self.path = path
        self.offset = offset


class StoragePoisonedError(StorageError):
    """A write or fsync failed in a way that leaves the on-disk state unknown; only a restart
    (which re-reads what really is on disk) may continue."""
