"""Hypothesis state machine: LogStorage (real files, tiny segments so rotation and segment deletion
happen constantly) against a plain in-memory model, across appends with conflicts, hard state,
snapshots (matching and not), compaction, syncs and reopens."""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kalamdb.raft.types import Entry, EntryKind, HardState, Membership, SnapshotMeta
from kalamdb.raftio.storage import LogStorage

SEGMENT_BYTES = 400


class LogModel:
    """What the log must contain: a compaction point (index, term) and the entries after it."""

    def __init__(self):
        self.compact_index = 0
        self.compact_term = 0
        self.entries: list[Entry] = []
        self.hard_state = HardState()
        self.snapshot: SnapshotMeta | None = None

    @property
    def last_index(self) -> int:
        return self.compact_index + len(self.entries)

    def term(self, index: int) -> int:
        return self.compact_term if index == self.compact_index else self.entries[index - self.compact_index - 1].term


class StorageMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="kalamdb-storage-model-")
        self.store = LogStorage.open(self.dir, segment_bytes=SEGMENT_BYTES)
        self.model = LogModel()

    def teardown(self):
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(pos=st.floats(0, 1), count=st.integers(1, 8), bump=st.integers(0, 2), size=st.integers(0, 40))
    def append(self, pos, count, bump, size):
        m = self.model
        lo = max(m.compact_index, m.snapshot.index if m.snapshot else 0) + 1  # never into the snapshot
        if lo > m.last_index + 1:
            return
        at = lo + int(pos * (m.last_index + 1 - lo) + 0.5)  # anywhere from there to last+1
        term = m.term(at - 1) + bump
        batch = [Entry(term, i, EntryKind(i % 3), bytes([i % 251]) * size) for i in range(at, at + count)]
        self.store.append(batch)
        del m.entries[at - m.compact_index - 1 :]
        m.entries.extend(batch)

    @rule(bump=st.integers(0, 2), vote=st.integers(0, 5), commit=st.integers(0, 100))
    def set_hard_state(self, bump, vote, commit):
        hs = HardState(self.model.hard_state.term + bump, vote, commit)
        self.store.set_hard_state(hs)
        self.model.hard_state = hs

    @rule(pos=st.floats(0, 1.2), matching=st.booleans(), compact=st.booleans())
    def save_snapshot(self, pos, matching, compact):
        m = self.model
        lo = m.snapshot.index if m.snapshot else m.compact_index
        lo = max(lo, m.compact_index)
        index = lo + int(pos * (m.last_index - lo))  # may go past the last index
        in_log = index <= m.last_index
        term = m.term(index) if in_log and matching else (m.term(index) if in_log else m.hard_state.term) + 1
        meta = SnapshotMeta(index, term, Membership(frozenset({1, index % 4 + 2})))
        self.store.save_snapshot_meta(meta, compact=compact)
        m.snapshot = meta
        if in_log and m.term(index) == term:
            if compact:
                del m.entries[: index - m.compact_index]
                m.compact_index, m.compact_term = index, term
        else:
            m.entries = []
            m.compact_index, m.compact_term = index, term

    @precondition(lambda self: self.model.snapshot is not None)
    @rule(pos=st.floats(0, 1))
    def compact(self, pos):
        m = self.model
        hi = min(m.snapshot.index, m.last_index)
        if hi <= m.compact_index:
            return
        upto = m.compact_index + 1 + int(pos * (hi - m.compact_index - 1))
        self.store.compact(upto)
        m.compact_term = m.term(upto)
        del m.entries[: upto - m.compact_index]
        m.compact_index = upto

    @rule()
    def sync(self):
        self.store.sync()

    @rule(sync_first=st.booleans())
    def reopen(self, sync_first):
        if sync_first:
            self.store.sync()
        self.store.close()
        self.store = LogStorage.open(self.dir, segment_bytes=SEGMENT_BYTES)
        state = self.store.load()
        assert state.entries == self.model.entries
        assert state.hard_state == self.model.hard_state
        assert state.snapshot == self.model.snapshot

    @invariant()
    def agrees_with_model(self):
        m, s = self.model, self.store
        assert (s.first_index, s.last_index) == (m.compact_index + 1, m.last_index)
        assert s.last_term == (m.entries[-1].term if m.entries else m.compact_term)
        assert s.entries(s.first_index, s.last_index + 1) == m.entries
        assert s.hard_state == m.hard_state and s.snapshot == m.snapshot


TestStorageAgainstModel = StorageMachine.TestCase
TestStorageAgainstModel.settings = settings(
    max_examples=100, stateful_step_count=50, deadline=None, derandomize=False,
    suppress_health_check=[HealthCheck.too_slow])
