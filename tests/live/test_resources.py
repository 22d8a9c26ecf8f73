"""Bad clients cannot hurt the node: a subscriber that stops reading is cut off at a bounded
queue with a clear error; thousands of connect/subscribe/disconnect cycles leave no connection,
task, file descriptor or memory behind; a silent connection is closed after 10 s."""

import asyncio
import re
import time

import aiohttp
import psutil
import pytest

from kalamdb.client import AsyncClient
from tests.live.helpers import Ws, login

pytestmark = pytest.mark.asyncio


async def metrics(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as r:
        text = await r.text()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(kalamdb_\w+) ([0-9.e+-]+)$", text, re.MULTILINE)}


async def wait_metric(url: str, name: str, want: float, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        m = await metrics(url)
        if m.get(name) == want:
            return m
        assert time.monotonic() < deadline, f"{name} = {m.get(name)}, expected {want}"
        await asyncio.sleep(0.05)


async def test_slow_consumer_is_closed_with_a_clear_error(fresh_server):
    srv = fresh_server
    assert srv.sql("CREATE NAMESPACE n").ok
    assert srv.sql("CREATE SHARED TABLE n.t (id BIGINT PRIMARY KEY, body TEXT)").ok
    proc = psutil.Process(srv.pid)
    rss_before = proc.memory_info().rss
    token = await login(srv.url)
    session = aiohttp.ClientSession()
    # a client that never reads: tiny receive buffer, no reading at all
    ws = await session.ws_connect(srv.url.replace("http", "ws") + "/v1/ws?compress=false",
                                  headers={"Authorization": f"Bearer {token}"}, autoping=False)
    await ws.send_str('{"type":"subscribe","subscription":{"id":"s","sql":"SELECT * FROM n.t"}}')

    async def keep_alive() -> None:  # it pings (so no heartbeat timeout), it just never reads
        while True:
            await asyncio.sleep(2)
            await ws.send_str('{"type":"ping"}')

    pinger = asyncio.create_task(keep_alive())
    body = "x" * 8000
    async with AsyncClient(srv.url) as db:
        written = 0
        while (await metrics(srv.url)).get("kalamdb_live_slow_consumers_closed_total", 0) == 0:
            assert written < 10_000, "the server never cut off the client that does not read"
            rows = ", ".join(f"({i}, '{body}')" for i in range(written, written + 50))
            assert (await db.sql(f"INSERT INTO n.t (id, body) VALUES {rows}")).ok
            written += 50
        assert (await db.sql("SELECT COUNT(*) FROM n.t")).rows == [[str(written)]]  # the node kept serving
    # the server's memory stayed bounded (the queue's 16 MB and the socket's buffers)
    assert proc.memory_info().rss - rss_before < 64 * 1024 * 1024
    pinger.cancel()
    # the client reads at last: what was queued before the cut, then the error, then the close
    last, changes = None, 0
    while True:
        msg = await ws.receive(timeout=10)
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        last = msg.json()
        changes += last["type"] == "change"
    assert last is not None and last["code"] == "SLOW_CONSUMER", last
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1008
    assert 0 < changes < written
    m = await wait_metric(srv.url, "kalamdb_live_connections", 0, timeout=20)
    assert m["kalamdb_live_subscriptions"] == 0
    await session.close()


async def test_connect_disconnect_cycles_leak_nothing(fresh_server, cycles=1000):
    await _cycles(fresh_server, cycles)


@pytest.mark.slow
async def test_ten_thousand_connect_disconnect_cycles(fresh_server):
    await _cycles(fresh_server, 10_000)


async def _cycles(srv, cycles: int) -> None:
    assert srv.sql("CREATE NAMESPACE n").ok
    assert srv.sql("CREATE SHARED TABLE n.t (id BIGINT PRIMARY KEY)").ok
    token = await login(srv.url)
    proc = psutil.Process(srv.pid)
    url = srv.url.replace("http", "ws") + "/v1/ws"
    sub = '{"type":"subscribe","subscription":{"id":"s","sql":"SELECT * FROM n.t","options":{}}}'

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        if i % 4 == 3:  # abrupt: the TCP connection just goes away mid-subscription
            ws = await session.ws_connect(url, headers={"Authorization": f"Bearer {token}"})
            await ws.receive()
            await ws.send_str(sub)
            ws._response.connection.transport.abort()
            return
        async with session.ws_connect(url, headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.receive()
            if i % 2:
                await ws.send_str(sub)
                await ws.receive()
                await ws.receive()

    async def warm(n: int) -> None:
        async with aiohttp.ClientSession() as session:
            for i in range(n):
                await one(session, i)

    await warm(200)  # caches, pools and lazily created objects settle first
    await wait_metric(srv.url, "kalamdb_live_connections", 0)
    base = await metrics(srv.url)
    fds, rss = proc.num_fds(), proc.memory_info().rss
    async with aiohttp.ClientSession() as session:
        for i in range(cycles):
            await one(session, i)
    after = await wait_metric(srv.url, "kalamdb_live_connections", 0, timeout=20)
    assert after["kalamdb_live_subscriptions"] == 0
    assert after["kalamdb_event_loop_tasks"] <= base["kalamdb_event_loop_tasks"] + 2
    assert proc.num_fds() <= fds + 5
    grown = proc.memory_info().rss - rss
    assert grown < 20 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MB over {cycles} cycles"
    assert srv.sql("SELECT 1").ok


async def test_heartbeat_timeout_closes_silent_connections_only(server):
    token = await login(server.url)
    async with await Ws.connect(server.url, token) as silent, await Ws.connect(server.url, token) as pinging:
        await silent.recv_type("auth_success")
        await pinging.recv_type("auth_success")
        started = time.monotonic()

        async def keep_pinging() -> None:
            while time.monotonic() - started < 13:
                await pinging.send({"type": "ping"})  # no answer is expected (upstream)
                await asyncio.sleep(2)

        pinger = asyncio.create_task(keep_pinging())
        assert await silent.closed(timeout=15) == (1000, "Heartbeat timeout")
        assert 9.5 < time.monotonic() - started < 12.5
        await pinger
        with pytest.raises(TimeoutError):  # still open after 13 s: pings count as activity
            await pinging.recv(timeout=0.2)
