"""engine/localviews.py's process readings, which system.stats and system.cluster show: taken
without psutil, whose import was 0.8 MB of a node's idle RSS."""

import sys
import threading
import time

from kalamdb.engine.localviews import CpuMeter, rss_bytes


def test_the_cpu_meter_counts_this_process_busy_and_idle():
    meter = CpuMeter()
    end = time.monotonic() + 0.1
    while time.monotonic() < end:  # one thread busy
        pass
    busy = meter.percent()
    threading.Event().wait(0.1)  # blocked: no CPU used (the idleness measured, not a wait for state)
    idle = meter.percent()
    assert 20 <= busy <= 110, busy
    assert idle < 20 <= busy, (busy, idle)


def test_the_resident_size_is_this_processs():
    rss = rss_bytes()
    assert 5 << 20 < rss < 4 << 30
    block = bytearray(64 << 20)  # touched: resident
    for i in range(0, len(block), 4096):
        block[i] = 1
    assert rss_bytes() - rss > 48 << 20
    del block


def test_a_node_does_not_load_psutil():
    import subprocess

    code = ("import sys, kalamdb.server.runtime, kalamdb.node.cluster_node, kalamdb.server.standalone;"
            "print('psutil' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
