"""The log's fsync split in three (LogStorage.begin_sync / run_sync / end_sync) and run on the sync
thread (raftio/log_sync.py): a sync covers exactly what was written before it began, a segment
sealed meanwhile stays open until it ends, and a failure poisons the log and reaches the waiter."""

from __future__ import annotations

import asyncio
import errno
import os
import threading

import pytest

from kalamdb.raft.types import Entry, EntryKind, HardState
from kalamdb.raftio.log_sync import LogSyncer
from kalamdb.raftio.storage import LogStorage, StoragePoisonedError
from kalamdb.raftio.wal import Failpoints


def ents(lo: int, hi: int, term: int = 1, size: int = 8) -> list[Entry]:
    return [Entry(term, i, EntryKind.NORMAL, b"%d" % i + b"x" * size) for i in range(lo, hi + 1)]


def test_a_sync_covers_what_was_written_before_it_began_and_no_more(tmp_path):
    store = LogStorage.open(tmp_path)
    assert store.begin_sync() is None  # a fresh log's first segment is durable from its creation
    store.append(ents(1, 3))
    ticket = store.begin_sync()
    assert ticket is not None
    store.append(ents(4, 5), HardState(1, 1, 3))  # written while the fdatasync runs elsewhere
    store.run_sync(ticket)
    store.end_sync(ticket)
    later = store.begin_sync()
    assert later is not None, "what was written during the sync is still pending"
    store.run_sync(later)
    store.end_sync(later)
    assert store.begin_sync() is None  # everything durable: nothing to sync
    store.close()
    with LogStorage.open(tmp_path) as again:
        state = again.load()
        assert [e.index for e in state.entries] == [1, 2, 3, 4, 5] and state.hard_state.commit == 3


def test_a_segment_sealed_during_a_sync_stays_open_until_the_sync_ends(tmp_path):
    store = LogStorage.open(tmp_path, segment_bytes=512)
    store.sync()
    store.append(ents(1, 2))
    ticket = store.begin_sync()
    inode = os.fstat(ticket.fd).st_ino
    store.append(ents(3, 40, size=64))  # fills the segment: it is sealed (and synced) and a new one begun
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".log")]) > 1
    assert os.fstat(ticket.fd).st_ino == inode, "the sealed segment's fd is still the one being synced"
    store.run_sync(ticket)
    store.end_sync(ticket)
    try:
        assert os.fstat(ticket.fd).st_ino != inode  # closed now (or the number reused by another file)
    except OSError as exc:
        assert exc.errno == errno.EBADF
    store.sync()
    store.close()
    with LogStorage.open(tmp_path, segment_bytes=512) as again:
        assert again.load().entries[-1].index == 40


def test_a_second_sync_may_not_begin_before_the_first_ends_and_close_redoes_an_unended_one(tmp_path):
    store = LogStorage.open(tmp_path)
    store.append(ents(1, 2))
    ticket = store.begin_sync()
    store.append(ents(3, 3))
    with pytest.raises(Exception, match="already in flight"):
        store.begin_sync()
    assert ticket is not None
    store.close()  # the waiter went away (a stop): close syncs everything itself
    with LogStorage.open(tmp_path) as again:
        assert [e.index for e in again.load().entries] == [1, 2, 3]


def test_a_failed_fdatasync_poisons_the_log(tmp_path):
    fp = Failpoints()
    store = LogStorage.open(tmp_path, failpoints=fp)
    store.append(ents(1, 1))
    ticket = store.begin_sync()
    fp.set("log.fsync", "1*eio")
    with pytest.raises(OSError):
        store.run_sync(ticket)
    with pytest.raises(StoragePoisonedError):
        store.append(ents(2, 2))
    store.close()


async def test_the_syncer_runs_the_fdatasync_on_its_own_thread_and_hands_back_its_error(tmp_path):
    fp = Failpoints()
    store = LogStorage.open(tmp_path, failpoints=fp)
    syncer = LogSyncer("raft-sync-test")
    try:
        ran_on: list[str] = []
        real = store.run_sync

        def run_sync(ticket):
            ran_on.append(threading.current_thread().name)
            real(ticket)

        store.run_sync = run_sync  # type: ignore[method-assign]
        store.append(ents(1, 2))
        ticket = store.begin_sync()
        ticks = 0

        async def ticker():  # the caller's loop keeps running while the disk works
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        fp.set("log.fsync", "1*delay(100)")
        t = asyncio.ensure_future(ticker())
        await asyncio.wait_for(syncer.sync(store, ticket), 5)
        t.cancel()
        store.end_sync(ticket)
        assert ran_on == ["raft-sync-test"]
        assert ticks >= 5, "the loop was free during a 100 ms fsync"
        store.append(ents(3, 3))
        ticket = store.begin_sync()
        fp.set("log.fsync", "1*eio")
        with pytest.raises(OSError):
            await asyncio.wait_for(syncer.sync(store, ticket), 5)
    finally:
        syncer.close(5)
        store.close()


def test_a_plain_sync_during_a_split_one_syncs_everything_itself(tmp_path):
    """The snapshotter records a snapshot and syncs on the Raft thread, which may happen while the
    Ready loop's fsync is on the sync thread: the plain sync must not refuse (that stopped a node
    in a benchmark) and must cover what the split one does not."""
    store = LogStorage.open(tmp_path)
    store.append(ents(1, 3))
    ticket = store.begin_sync()
    store.append(ents(4, 4))  # written after the split sync began
    store.sync()
    assert store.begin_sync() is None  # nothing is pending: the plain sync covered it all
    store.run_sync(ticket)
    store.end_sync(ticket)
    assert store.begin_sync() is None
    store.close()
    with LogStorage.open(tmp_path) as again:
        assert [e.index for e in again.load().entries] == [1, 2, 3, 4]
