"""node/apply_times.py: when an index was applied, or None when that is not known."""

from __future__ import annotations

import gc
import threading
import time

from kalamdb.node.apply_times import ApplyTimes


def test_an_index_gets_the_time_of_the_first_batch_that_reached_it():
    times = ApplyTimes(applied_index=10)
    t0 = time.monotonic()
    times.record(12)  # a batch of 11..12
    t1 = time.monotonic()
    times.record(15)  # 13..15
    first, second = times.applied_at(11), times.applied_at(14)
    assert first is not None and second is not None
    assert t0 <= first <= t1 <= second <= time.monotonic()
    assert times.applied_at(12) == first and times.applied_at(13) == times.applied_at(15) == second


def test_an_index_not_applied_yet_or_applied_before_the_record_has_no_time():
    times = ApplyTimes(applied_index=10)
    times.record(12)
    assert times.applied_at(13) is None, "not applied yet"
    assert times.applied_at(10) is None and times.applied_at(1) is None, "applied before this process"
    assert times.applied_at(0) is None


def test_what_falls_out_of_the_record_has_no_time_any_more():
    times = ApplyTimes(applied_index=0, capacity=3)
    for last in (2, 4, 6, 8):  # the batch 1..2 falls out
        times.record(last)
    assert times.applied_at(2) is None and times.applied_at(1) is None
    assert times.applied_at(3) is not None and times.applied_at(8) is not None


def test_a_reader_on_another_thread_never_gets_a_wrong_batch():
    times = ApplyTimes(applied_index=0, capacity=64)  # small: batches fall out while the reader reads
    done = threading.Event()
    latest = [0]
    seen: list[tuple[int, float]] = []

    failures: list[BaseException] = []

    def reader() -> None:
        try:
            while not done.is_set():
                top = latest[0]
                for index in range(max(1, top - 80), top + 2):  # some fell out, some are not there yet
                    at = times.applied_at(index)
                    if at is not None:
                        seen.append((index, at))
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)

    class Cycle:  # garbage whose collection runs Python code that lets another thread in
        def __init__(self) -> None:
            self.me = self

        def __del__(self) -> None:
            time.sleep(0)

    t = threading.Thread(target=reader)
    thresholds = gc.get_threshold()
    gc.set_threshold(100, 1, 1)  # collections (and Cycle.__del__) often, during a copy too
    try:
        t.start()
        stamps = {}
        for last in range(1, 5_000):
            times.record(last)
            stamps[last] = times.applied_at(last)
            latest[0] = last
            Cycle()
            if last % 100 == 0:
                time.sleep(0)  # let the reader have the GIL now and then
    finally:
        done.set()
        t.join()
        gc.set_threshold(*thresholds)
    assert not failures, f"the reader failed: {failures[0]!r}"
    assert len(seen) > 100, f"the reader saw {len(seen)} times: too little was tested"
    for index, at in seen:
        assert at == stamps[index], f"index {index} was given the time of another batch"
