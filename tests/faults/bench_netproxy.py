"""Cost of the proxy: echo round trip and pipelined frame rate, direct vs through one link.

Run: .venv/bin/python tests/faults/bench_netproxy.py   (compare the two lines of one run only)
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from faults_frames import FrameServer, frame, read_frame

from kalamdb.testing.netproxy import NetworkController


async def measure(label: str, addr) -> None:
    r, w = await asyncio.open_connection(*addr)
    lat = []
    for _ in range(2000):
        t = time.perf_counter()
        w.write(frame(b"x" * 64))
        await read_frame(r)
        lat.append(time.perf_counter() - t)
    lat.sort()
    n = 50000

    async def drain_replies():
        for _ in range(n):
            await read_frame(r)

    t = time.perf_counter()
    replies = asyncio.create_task(drain_replies())
    for i in range(n):
        w.write(frame(b"y" * 64))
        if i % 256 == 0:
            await w.drain()
    await replies
    elapsed = time.perf_counter() - t
    print(f"{label:>6}: echo RTT p50 {lat[len(lat) // 2] * 1e3:.3f} ms, p99 {lat[int(len(lat) * 0.99)] * 1e3:.3f} ms;"
          f" pipelined 64-byte frames {n / elapsed:,.0f}/s each way")
    w.close()


async def main() -> None:
    srv = FrameServer(echo=True)
    await srv.start()
    net = NetworkController(seed=1)
    try:
        await measure("direct", srv.addr)
        await measure("proxy", net.add_link(1, 2, srv.addr))
    finally:
        net.close()
        await srv.stop()


if __name__ == "__main__":
    asyncio.run(main())
