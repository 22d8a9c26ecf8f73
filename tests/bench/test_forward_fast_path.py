"""The follower->leader forwarder's own HTTP/1.1 client (server/forward.py), against real aiohttp
servers on 127.0.0.1: answers pass through unchanged, keep-alive connections are reused, and a
failure says whether the write may have been applied (definite before sending, indefinite after)."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import orjson
from aiohttp import web

from kalamdb.errors import NotLeaderError
from kalamdb.server.forward import FORWARDED_HEADER, Forwarder


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


async def follower_forwarding_to(leader_url: str) -> tuple[web.AppRunner, str, Forwarder]:
    fwd = Forwarder(node_id=2, timeout_s=5)

    async def handler(request: web.Request) -> web.Response:
        err = NotLeaderError("not the leader", leader_url)
        return await fwd.forward(request, err, 0.1)

    app = web.Application()
    app.router.add_post("/v1/api/sql", handler)
    runner, url = await serve(app)
    return runner, url, fwd


async def post(url: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/api/sql", data=orjson.dumps(body),
                                                    headers=headers or {}) as r:
        return r.status, orjson.loads(await r.read())


async def test_answer_passes_through_and_connections_are_reused():
    peers: set[tuple] = set()
    seen: list[dict] = []

    async def leader(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername"))
        seen.append({"auth": request.headers.get("Authorization"), "fwd": request.headers.get(FORWARDED_HEADER),
                     "body": await request.json()})
        return web.json_response({"status": "success", "n": len(seen)}, status=200 if len(seen) < 3 else 409)

    app = web.Application()
    app.router.add_post("/v1/api/sql", leader)
    lr, lurl = await serve(app)
    fr, furl, fwd = await follower_forwarding_to(lurl)
    try:
        answers = [await post(furl, {"sql": f"SELECT {i}"}, {"Authorization": "Basic abc"}) for i in range(3)]
    finally:
        await fwd.close()
        await fr.cleanup()
        await lr.cleanup()
    assert [a[0] for a in answers] == [200, 200, 409]  # the leader's status, unchanged
    assert [a[1]["n"] for a in answers] == [1, 2, 3]
    assert [s["body"]["sql"] for s in seen] == ["SELECT 0", "SELECT 1", "SELECT 2"]
    assert all(s["auth"] == "Basic abc" and s["fwd"] == "2" for s in seen)
    assert len(peers) == 1, f"sequential forwards should share one keep-alive connection, used {peers}"


async def test_chunked_answer_is_reassembled():
    async def leader(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in (b'{"status":', b'"success",', b'"rows":[1,2,3]}'):
            await resp.write(part)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/api/sql", leader)
    lr, lurl = await serve(app)
    fr, furl, fwd = await follower_forwarding_to(lurl)
    try:
        status, body = await post(furl, {"sql": "x"})
    finally:
        await fwd.close()
        await fr.cleanup()
        await lr.cleanup()
    assert status == 200 and body == {"status": "success", "rows": [1, 2, 3]}


async def test_refused_connection_is_definite():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    fr, furl, fwd = await follower_forwarding_to(f"http://127.0.0.1:{port}")
    try:
        status, body = await post(furl, {"sql": "INSERT"})
    finally:
        await fwd.close()
        await fr.cleanup()
    assert status == 503
    assert body["error"]["code"] == "FORWARD_FAILED"
    assert body["error"]["details"].startswith("definite")


async def test_leader_dying_after_the_request_is_indefinite():
    got = asyncio.Event()

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the request reached the "leader"; it dies before answering
        got.set()
        writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    fr, furl, fwd = await follower_forwarding_to(f"http://127.0.0.1:{port}")
    try:
        status, body = await post(furl, {"sql": "INSERT"})
    finally:
        await fwd.close()
        await fr.cleanup()
        server.close()
    assert got.is_set()
    assert status == 503 and body["error"]["code"] == "FORWARD_FAILED"
    assert body["error"]["details"].startswith("indefinite")


async def test_an_already_forwarded_request_is_not_forwarded_again():
    fr, furl, fwd = await follower_forwarding_to("http://127.0.0.1:9")
    try:
        status, body = await post(furl, {"sql": "INSERT"}, {FORWARDED_HEADER: "3"})
    finally:
        await fwd.close()
        await fr.cleanup()
    assert status == 503 and body["error"]["code"] == "NOT_LEADER"
