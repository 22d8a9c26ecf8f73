"""Durable Raft log: entries, hard state and snapshot metadata in one append-only stream of segment
files, so that a single fdatasync per `sync()` makes everything written since the last one durable
(group commit), and `kill -9` at any instant loses nothing `sync()` returned for.

Everything is a record in the stream (see `wal.py` for framing):

* CHECKPOINT  first record of every segment: the whole non-entry state plus the log bounds at the
              moment the segment was opened, so older segments can be deleted once their entries are
              compacted without losing hard state or snapshot metadata.
* ENTRIES     one append batch `[first_index, [[term, kind, data], ...]]`. A batch whose first index is
              at or below the last index replaces the suffix; replay does the same, so a synced
              truncation can never be resurrected, and the truncation costs no extra write.
* HARD_STATE  `[term, vote, commit]`.
* SNAPSHOT    `[meta, keep_log, compact]`: the log either matches the snapshot (keep what follows it)
              or is discarded, as in the Raft paper's InstallSnapshot; the decision is recorded so
              replay never has to re-derive it.
* COMPACT     `[upto_index, upto_term]`: entries up to there are gone; whole segments holding only
              such entries are deleted after the next sync.

Opening a log replays it (`log_replay.py`: torn tails cut off, real damage refused) into the
in-memory `LogState` (`log_state.py`) that every write here keeps current; the record types, file
names and errors are `log_format.py`'s. The storage is single-threaded by design: the driver calls it
from one thread, except for the fdatasync of a sync split in three (`begin_sync` on that thread,
`run_sync` on any, `end_sync` back on it), so that a slow disk does not stop the thread that runs
Raft (raftio/log_sync.py).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from typing import Self

import msgpack

from kalamdb.raft.types import Entry, HardState, PersistentState, SnapshotMeta
from kalamdb.raftio import wal
from kalamdb.raftio.log_format import (
    KINDS,
    R_CHECKPOINT,
    R_COMPACT,
    R_ENTRIES,
    R_HARD_STATE,
    R_SNAPSHOT,
    SEGMENT_BYTES,
    LogCorruptError,
    Segment,
    StorageError,
    StoragePoisonedError,
    location,
    segment_name,
    split_location,
)
from kalamdb.raftio.log_replay import decoded, replay
from kalamdb.raftio.log_state import LogState
from kalamdb.raftio.wal import Failpoints

__all__ = [
    "SEGMENT_BYTES",
    "Failpoints",
    "LogCorruptError",
    "LogStorage",
    "StorageError",
    "StoragePoisonedError",
]

log = logging.getLogger("kalamdb.raftio.storage")

_packb = msgpack.packb


class SyncTicket:
    """One fdatasync started by `begin_sync`: the segment it syncs, how many writes it covers, and
    the compaction that becomes durable with it."""

    __slots__ = ("compact_index", "fd", "writes")

    def __init__(self, fd: int, writes: int, compact_index: int):
        self.fd, self.writes, self.compact_index = fd, writes, compact_index


class LogStorage:
    """The durable Raft log of one node. Use `LogStorage.open(directory)`."""

    def __init__(self, directory: str, failpoints: Failpoints | None, segment_bytes: int):
        self.directory = directory
        self.failpoints = failpoints if failpoints is not None else Failpoints()
        self._segment_bytes = segment_bytes
        self._state = LogState()
        self._fd = -1
        self._size = 0  # where the next record goes in the active segment
        self._seg_start = 0  # where the active segment's first record after its checkpoint went
        self._read_fds: dict[int, int] = {}
        self._writes = 0  # records written so far ...
        self._synced_writes = 0  # ... and how many of them a finished fdatasync covers
        self._in_flight: SyncTicket | None = None  # a split sync's fdatasync, running on another thread
        self._retired_fds: list[int] = []  # sealed segments' fds that fdatasync still uses: closed after it
        self._durable_compact = 0
        self._poisoned: str | None = None
        self._closed = False
        self._lock_fd = -1
        self._replayed: list[Entry | None] | None = None  # entries decoded at open, until load()

    # ------------------------------------------------------------------ open

    @classmethod
    def open(cls, directory: str | os.PathLike, *, failpoints: Failpoints | None = None,
             segment_bytes: int = SEGMENT_BYTES) -> LogStorage:
        """Open (creating if needed) the log in `directory` and replay it. Raises LogCorruptError on
        damage that is not a torn tail, StorageError if another process holds the directory."""
        if segment_bytes < 64:
            raise ValueError("segment_bytes must be at least 64")
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        self = cls(directory, failpoints, segment_bytes)
        self._lock()
        try:
            self._recover()
        except BaseException:
            self._release()
            raise
        return self

    def _lock(self) -> None:
        fd = os.open(os.path.join(self.directory, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StorageError(f"Raft log directory {self.directory} is already open "
                               f"(another process or another LogStorage holds its lock)") from None
        self._lock_fd = fd

    def _recover(self) -> None:
        """Replay the segments (log_replay.py) and continue writing the newest, or start the first."""
        found = replay(self.directory, self._segment_bytes, self._state)
        if found is None:
            self._replayed = []
            self._start_segment(1)
            return
        self._replayed = found.entries
        seg = self._state.segments[-1]
        self._fd = os.open(seg.path, os.O_RDWR)
        self._size, self._seg_start = found.end, found.start
        # what a killed process wrote but never synced is still in the page cache and was just
        # loaded: make it durable now, or the core could acknowledge entries a power cut then erases
        os.fdatasync(self._fd)
        self._durable_compact = self._state.compact_index

    # ------------------------------------------------------------------ properties

    @property
    def first_index(self) -> int:
        return self._state.first_index

    @property
    def last_index(self) -> int:
        return self._state.last_index

    @property
    def last_term(self) -> int:
        return self._state.last_term

    @property
    def hard_state(self) -> HardState:
        return self._state.hs

    @property
    def snapshot(self) -> SnapshotMeta | None:
        return self._state.snap

    @property
    def poisoned(self) -> bool:
        return self._poisoned is not None

    def term(self, index: int) -> int:
        """Term of the entry at `index` (the compaction point's term for first_index - 1)."""
        return self._state.term(index)

    # ------------------------------------------------------------------ reads

    def load(self) -> PersistentState:
        """Everything that survived: hard state, snapshot metadata and the live entries."""
        self._check_usable()
        if self._replayed is not None:
            entries, self._replayed = decoded(self._replayed), None  # the caller keeps its own copy
        else:
            entries = self.entries(self.first_index, self.last_index + 1)
        return PersistentState(self._state.hs, self._state.snap, entries)

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi (half-open, like etcd's Storage.Entries)."""
        self._check_usable()
        if not (self.first_index <= lo <= hi <= self.last_index + 1):
            raise IndexError(f"entries [{lo}, {hi}) outside the log [{self.first_index}, "
                             f"{self.last_index + 1})")
        if self._replayed is not None:
            base = self._state.compact_index + 1
            return decoded(self._replayed[lo - base : hi - base])
        out: list[Entry] = []
        cur_loc, batch_first = -1, 0
        rows: list = []
        base = self._state.compact_index + 1
        locs = self._state.locs
        for index in range(lo, hi):
            loc = locs[index - base]
            if loc != cur_loc:
                batch_first, rows = self._read_batch(loc)
                cur_loc = loc
            t, kind, data = rows[index - batch_first]
            out.append(Entry(t, index, KINDS[kind], data))
        return out

    def _read_batch(self, loc: int) -> tuple[int, list]:
        seq, offset = split_location(loc)
        fd = self._read_fds.get(seq)
        if fd is None:
            fd = self._read_fds[seq] = os.open(os.path.join(self.directory, segment_name(seq)), os.O_RDONLY)
        head = os.pread(fd, wal.HEADER_SIZE, offset)
        length = int.from_bytes(head[4:8], "little") if len(head) == wal.HEADER_SIZE else 0
        data = head + os.pread(fd, length, offset + wal.HEADER_SIZE)
        parsed = wal.parse_at(data, 0)
        path = os.path.join(self.directory, segment_name(seq))
        if isinstance(parsed, str):
            raise LogCorruptError(path, offset, f"record unreadable after it was written: {parsed}")
        rtype, payload, _ = parsed
        if rtype != R_ENTRIES:
            raise LogCorruptError(path, offset, f"expected an entries record, found type {rtype}")
        first, rows = msgpack.unpackb(payload)
        return first, rows

    # ------------------------------------------------------------------ writes

    def append(self, entries: list[Entry], hard_state: HardState | None = None) -> None:
        """Write a batch of contiguous entries, and then `hard_state` if given, with one write(). An
        index at or below the last index replaces the suffix from there (Raft conflict overwrite).
        Durable only after sync()."""
        self._check_usable()
        if not entries:
            if hard_state is not None:
                self.set_hard_state(hard_state)
            return
        st = self._state
        first = entries[0].index
        if not st.compact_index < first <= st.last_index + 1:
            raise ValueError(f"append at index {first}: must be within "
                             f"{st.compact_index + 1}..{st.last_index + 1} (compacted up to "
                             f"{st.compact_index})")
        if st.snap is not None and first <= st.snap.index:
            raise ValueError(f"append at index {first}: entries up to the snapshot at {st.snap.index} "
                             f"are committed and may not be replaced")
        prev_term = st.term(first - 1)
        rows = []
        terms = []
        expect = first
        for e in entries:
            if e.index != expect:
                raise ValueError(f"append batch not contiguous: index {e.index} where {expect} was due")
            if e.term < prev_term:
                raise ValueError(f"entry {e.index} has term {e.term} below the previous entry's {prev_term}")
            if not isinstance(e.data, bytes):
                raise TypeError(f"entry {e.index} data must be bytes, not {type(e.data).__name__}")
            rows.append([e.term, int(e.kind), e.data])
            terms.append(e.term)
            prev_term = e.term
            expect += 1
        record = wal.frame(R_ENTRIES, _packb([first, rows]))
        hs_record = self._hard_state_record(hard_state) if hard_state is not None else None
        loc = self._write(record + hs_record if hs_record else record)  # the entries' record starts it
        self._replayed = None
        st.apply_entries(first, terms, loc, st.segments[-1])
        if hard_state is not None and hs_record:
            st.hs = hard_state

    def set_hard_state(self, hs: HardState) -> None:
        """Record term/vote/commit (durable after sync(); a vote must not be answered before)."""
        self._check_usable()
        record = self._hard_state_record(hs)
        if record is not None:
            self._write(record)
            self._state.hs = hs

    def _hard_state_record(self, hs: HardState) -> bytes | None:
        """The record of a new hard state; None when it is the one already recorded."""
        if hs == self._state.hs:
            return None
        if hs.term < self._state.hs.term:
            raise ValueError(f"hard state term may not go backwards ({self._state.hs.term} -> {hs.term})")
        return wal.frame(R_HARD_STATE, _packb(hs.to_wire()))

    def save_snapshot_meta(self, meta: SnapshotMeta, *, compact: bool = True) -> None:
        """Record that a snapshot up to meta.index exists. If the log holds meta.index with meta.term
        the entries after it are kept (and, with `compact`, those up to it dropped); otherwise the
        whole log is discarded and the next append starts at meta.index + 1."""
        self._check_usable()
        st = self._state
        if st.snap is not None and meta.index < st.snap.index:
            raise ValueError(f"snapshot at {meta.index} is older than the saved one at {st.snap.index}")
        if meta.index < st.compact_index:
            raise ValueError(f"snapshot at {meta.index} is below the compaction point {st.compact_index}")
        keep = meta.index <= st.last_index and st.term(meta.index) == meta.term
        action = self.failpoints.hit("log.snapshot")
        if action is not None:
            raise ValueError(f"failpoint action {action!r} does not apply to log.snapshot")
        self._write(wal.frame(R_SNAPSHOT, _packb([meta.to_wire(), keep, compact])))
        self._replayed = None
        st.apply_snapshot(meta, keep, compact)

    def compact(self, upto_index: int) -> None:
        """Drop entries <= upto_index (at most the snapshot index). Segments holding only dropped
        entries are deleted after the next sync() makes this compaction durable."""
        self._check_usable()
        st = self._state
        if upto_index <= st.compact_index:
            return
        limit = st.snap.index if st.snap is not None else 0
        if upto_index > limit or upto_index > st.last_index:
            raise ValueError(f"cannot compact to {upto_index}: only entries covered by the snapshot "
                             f"(up to {limit}) and present (up to {st.last_index}) may be dropped")
        term = st.term(upto_index)
        self._write(wal.frame(R_COMPACT, _packb([upto_index, term])))
        self._replayed = None
        st.apply_compact(upto_index, term)

    def sync(self) -> None:
        """One fdatasync making everything written since the last sync durable (group commit).
        A failure poisons the storage: the page cache may have dropped the data, so only a restart
        may tell what is really on disk. Allowed while a split sync is in flight (a snapshot
        recorded on the Raft thread during the Ready loop's fsync): it syncs everything itself."""
        self._check_usable()
        if self._unsynced:
            self._sync_active()
            self._delete_compacted_segments()

    @property
    def _unsynced(self) -> bool:
        return self._writes != self._synced_writes

    def _sync_active(self) -> None:
        """fdatasync the active segment: every write so far is durable (sealed segments were
        synced when sealed), and so is the compaction recorded so far."""
        writes, compact_index = self._writes, self._state.compact_index
        self._fdatasync(self._fd)
        self._synced_writes = writes
        self._durable_compact = max(self._durable_compact, compact_index)

    def begin_sync(self) -> SyncTicket | None:
        """The first of a sync's three steps: what an fdatasync started now makes durable (None when
        everything written is durable already). Then `run_sync(ticket)` on any thread, then
        `end_sync(ticket)` on this one. Writes made meanwhile (a compaction, a segment rotation,
        which syncs the sealed segment itself) stay pending for the next sync."""
        self._check_usable()
        if not self._unsynced:
            return None
        if self._in_flight is not None:
            raise StorageError("a sync is already in flight: end_sync() it before beginning another")
        self._in_flight = SyncTicket(self._fd, self._writes, self._state.compact_index)
        return self._in_flight

    def run_sync(self, ticket: SyncTicket) -> None:
        """The fdatasync itself (any thread: it touches nothing but the file). Poisons on failure."""
        self._fdatasync(ticket.fd)

    def end_sync(self, ticket: SyncTicket) -> None:
        """After `run_sync` returned: the writes it covered are durable, and so is its compaction
        (whole compacted segments are deleted now)."""
        if ticket is not self._in_flight:
            raise StorageError("end_sync() of a ticket that is not the one in flight")
        self._in_flight = None
        self._close_retired()
        self._synced_writes = max(self._synced_writes, ticket.writes)
        self._durable_compact = max(self._durable_compact, ticket.compact_index)
        self._delete_compacted_segments()

    def _close_retired(self) -> None:
        for fd in self._retired_fds:
            os.close(fd)
        self._retired_fds.clear()

    def close(self) -> None:
        """Sync (unless poisoned) and release files and the directory lock. Idempotent. No other
        thread may be running `run_sync` any more: a sync begun and never ended is redone here."""
        if self._closed:
            return
        self._in_flight = None
        try:
            if self._poisoned is None and self._fd >= 0:
                self.sync()
        finally:
            self._release()

    def _release(self) -> None:
        self._closed = True
        for fd in [self._fd, self._lock_fd, *self._read_fds.values(), *self._retired_fds]:
            if fd >= 0:
                os.close(fd)
        self._fd = self._lock_fd = -1
        self._read_fds.clear()
        self._retired_fds.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ file plumbing

    def _check_usable(self) -> None:
        if self._poisoned is not None:
            raise StoragePoisonedError(f"Raft log {self.directory} refuses further use after "
                                       f"{self._poisoned}; restart the node to recover from disk")
        if self._closed:
            raise StorageError(f"Raft log {self.directory} is closed")

    def _poison(self, why: str) -> None:
        self._poisoned = why
        log.error("Raft log %s poisoned: %s", self.directory, why)

    def _write(self, record: bytes) -> int:
        """Append framed records (one, or entries and a hard state) to the active segment with one
        write(); returns the location of the first."""
        if self._size + len(record) > self._segment_bytes and self._size > self._seg_start:
            self._rotate()  # a record larger than a whole segment gets a segment of its own
        offset = self._size
        if self.failpoints.hit("log.append") == "torn":
            wal.write_all(self._fd, record[: max(1, len(record) // 2)], offset)
            os._exit(wal.CRASH_EXIT_CODE)
        try:
            wal.write_all(self._fd, record, offset)
        except OSError as exc:
            # cut any partial record off, so that a later append cannot strand garbage mid-file
            try:
                os.ftruncate(self._fd, offset)
            except OSError as exc2:
                self._poison(f"a failed write ({exc}) that could not be undone ({exc2})")
            raise
        self._size = offset + len(record)
        self._writes += 1
        return location(self._state.segments[-1].seq, offset)

    def _fdatasync(self, fd: int) -> None:
        try:
            self.failpoints.hit("log.fsync")
            os.fdatasync(fd)
        except OSError as exc:
            self._poison(f"a failed fsync ({exc})")
            raise
        self.failpoints.hit("log.fsync.after")

    def _checkpoint_record(self) -> bytes:
        st = self._state
        return wal.frame(R_CHECKPOINT, _packb([
            st.hs.to_wire(), st.snap.to_wire() if st.snap is not None else None,
            st.compact_index, st.compact_term, st.last_index, st.last_term]))

    def _start_segment(self, seq: int) -> None:
        checkpoint = self._checkpoint_record()
        fd = wal.create_file_durably(self.directory, segment_name(seq), checkpoint, self._segment_bytes)
        self._state.segments.append(Segment(seq, os.path.join(self.directory, segment_name(seq))))
        self._fd = fd
        self._size = self._seg_start = len(checkpoint)

    def _rotate(self) -> None:
        """Seal the full segment (made durable now, it will never be written again) and start the
        next one with a checkpoint of the current state."""
        if self._unsynced:
            self._sync_active()
        old = self._fd
        try:
            self._start_segment(self._state.segments[-1].seq + 1)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                self._poison(f"a failed segment creation ({exc})")
            raise
        if self._in_flight is not None and self._in_flight.fd == old:
            self._retired_fds.append(old)  # another thread's fdatasync still uses it
        else:
            os.close(old)
        self._delete_compacted_segments()

    def _delete_compacted_segments(self) -> None:
        """Delete the oldest sealed segments whose every entry is durably compacted; their other
        records are superseded by the checkpoint that opens the next segment."""
        removed = False
        segments = self._state.segments
        while len(segments) > 1 and segments[0].max_index <= self._durable_compact:
            seg = segments.pop(0)
            fd = self._read_fds.pop(seg.seq, None)
            if fd is not None:
                os.close(fd)
            os.unlink(seg.path)
            removed = True
        if removed:
            wal.fsync_dir(self.directory)
