"""The injected clock and the node failpoint configuration, without processes (fast)."""

from __future__ import annotations

import time

import pytest

from kalamdb.node.clock import Clock
from kalamdb.node.failpoints import NodeFailpoints, exit_on_storage_failure


def test_offset_and_drift_shift_and_scale_wall_time():
    c = Clock(offset_ms=5_000, drift_ppm=100_000)  # +5 s, 10 % fast
    c._mono0 -= 10.0  # as if 10 s of real time had passed since start
    c._wall0 -= 10.0
    assert abs(c.time() - (time.time() + 5.0 + 1.0)) < 0.05
    assert abs(c.now_us() / 1e6 - c.time()) < 0.05
    assert c.period(1.1) == pytest.approx(1.0)
    assert Clock().skewed is False and abs(Clock().time() - time.time()) < 0.01


def test_clock_env_errors_are_clear():
    assert Clock.from_env({"KALAMDB_CLOCK_OFFSET_MS": "-250"}).offset_ms == -250
    with pytest.raises(ValueError, match="KALAMDB_CLOCK_DRIFT_PPM"):
        Clock.from_env({"KALAMDB_CLOCK_DRIFT_PPM": "fast"})
    with pytest.raises(ValueError, match="ppm"):
        Clock(drift_ppm=2_000_000)


def test_node_failpoints_add_state_apply_and_snapshot_write():
    fp = NodeFailpoints.from_env({"KALAMDB_FAILPOINTS": "state.apply=1*eio;snapshot.write=delay(1)"})
    assert fp.active() == {"state.apply": "1*eio", "snapshot.write": "delay(1)"}
    with pytest.raises(OSError):
        fp.hit("state.apply")
    assert fp.hit("state.apply") is None  # 1*: fired once, then off
    with pytest.raises(ValueError, match="KALAMDB_FAILPOINTS"):
        NodeFailpoints.from_env({"KALAMDB_FAILPOINTS": "disk.melt=eio"})
    with pytest.raises(ValueError):
        NodeFailpoints().set("state.apply", "torn")
    assert exit_on_storage_failure({}) is True
    assert exit_on_storage_failure({"KALAMDB_ON_STORAGE_FAILURE": "refuse"}) is False
    with pytest.raises(ValueError):
        exit_on_storage_failure({"KALAMDB_ON_STORAGE_FAILURE": "shrug"})
