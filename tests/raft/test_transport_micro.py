"""The transport micro benchmark still runs and its numbers are self-consistent (tiny sizes)."""

from __future__ import annotations

from kalamdb.bench.transport_micro import bulk, round_trips, small_frames


async def test_small_frame_runs_deliver_every_frame():
    for use_send_many in (False, True):
        r = await small_frames(3000, 100, use_send_many)
        assert r["frames"] == 3000 and r["frames_per_s"] > 0 and r["seconds"] > 0


async def test_round_trip_and_bulk_runs_report_sane_figures():
    rt = await round_trips(50)
    assert 0 < rt["p50_us"] <= rt["p99_us"]
    b = await bulk(3, 1 << 20)
    assert b["chunks"] == 3 and b["mb_per_s"] > 0
