"""Group-commit throughput of LogStorage: batches of 64 entries of 64 bytes, one sync() each.

The disk is shared with everything else on the machine, so absolute rates swing; the assertion
compares against a bare pwrite+fdatasync of the same bytes interleaved in the same loop (so both see
the same disk), and the CPU cost of append without fsync. Run with -s to see the figures."""

from __future__ import annotations

import os
import statistics
import time

from kalamdb.raft.types import Entry, HardState
from kalamdb.raftio import wal
from kalamdb.raftio.storage import LogStorage

BATCHES = 400
BATCH = 64
PAYLOAD = bytes(range(64))


def test_group_commit_throughput(tmp_path):
    store = LogStorage.open(tmp_path / "log")
    raw_fd = os.open(tmp_path / "raw", os.O_RDWR | os.O_CREAT)
    wal.preallocate(raw_fd, 0, 64 << 20)
    try:
        raw_buf = bytes(5000)  # about the size of one framed batch
        raw_off = 0
        store_lat, raw_lat = [], []
        index = 1
        for _ in range(BATCHES):
            batch = [Entry(1, index + k, data=PAYLOAD) for k in range(BATCH)]
            t0 = time.perf_counter()
            store.append(batch)
            store.set_hard_state(HardState(1, 1, index - 1))
            store.sync()
            t1 = time.perf_counter()
            os.pwrite(raw_fd, raw_buf, raw_off)
            os.fdatasync(raw_fd)
            t2 = time.perf_counter()
            raw_off += len(raw_buf)
            index += BATCH
            store_lat.append(t1 - t0)
            raw_lat.append(t2 - t1)
        # CPU cost alone: append without sync
        batches = [[Entry(2, index + b * BATCH + k, data=PAYLOAD) for k in range(BATCH)] for b in range(500)]
        c0 = time.perf_counter()
        for batch in batches:
            store.append(batch)
        cpu_rate = 500 * BATCH / (time.perf_counter() - c0)
    finally:
        store.close()
        os.close(raw_fd)
    rate = BATCHES * BATCH / sum(store_lat)
    raw_rate = BATCHES * BATCH / sum(raw_lat)
    print(f"\nLogStorage: {rate:,.0f} entries/s ({BATCHES / sum(store_lat):,.0f} syncs/s), "
          f"p50 {statistics.median(store_lat) * 1e3:.3f} ms per batch; bare pwrite+fdatasync: "
          f"{raw_rate:,.0f} entries/s-equivalent, p50 {statistics.median(raw_lat) * 1e3:.3f} ms; "
          f"append without sync: {cpu_rate:,.0f} entries/s")
    assert cpu_rate > 200_000, f"append alone only reaches {cpu_rate:,.0f} entries/s"
    # one fdatasync per batch and little else: within 2x of the bare syscall pair on the same disk
    assert rate > raw_rate / 2, f"LogStorage {rate:,.0f}/s vs bare fdatasync {raw_rate:,.0f}/s"
