"""Raw WebSocket helpers for live-query tests: a real aiohttp client speaking the wire protocol
frame by frame (the Python LiveSubscription is tested on top of the same server)."""

from __future__ import annotations

import asyncio
import zlib
from typing import Any, Self

import aiohttp
import msgpack
import orjson

RECV_TIMEOUT_S = 10.0


async def login(url: str, user: str = "root", password: str = "") -> str:
    async with aiohttp.ClientSession() as s, s.post(f"{url}/v1/api/auth/login",
                                                    json={"user": user, "password": password}) as r:
        body = await r.json()
    assert "access_token" in body, body
    return body["access_token"]


def create_user(server: Any, name: str, role: str = "user", password: str = "pw-12345678") -> str:
    resp = server.sql(f"CREATE USER {name} WITH PASSWORD '{password}' ROLE {role}")
    assert resp.ok, resp
    return password


class Ws:
    """One raw connection: `send` a dict, `recv` the next message as a dict (gzip/msgpack undone)."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse, msgpack_mode: bool):
        self.session = session
        self.ws = ws
        self.msgpack = msgpack_mode
        self.frames: list[tuple[str, int]] = []  # (TEXT|BINARY, size) of every data frame received

    @classmethod
    async def connect(cls, url: str, token: str | None = None, query: str = "", headers: dict | None = None) -> Ws:
        session = aiohttp.ClientSession()
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        try:
            ws = await session.ws_connect(url.replace("http://", "ws://") + "/v1/ws" + query, headers=hdrs,
                                          autoping=True, max_msg_size=64 << 20)
        except BaseException:
            await session.close()
            raise
        return cls(session, ws, "serialization=msgpack" in query)

    async def send(self, message: dict) -> None:
        await self.ws.send_str(orjson.dumps(message).decode())

    async def send_raw(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)

    async def recv(self, timeout: float = RECV_TIMEOUT_S) -> dict:
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            self.frames.append(("TEXT", len(msg.data)))
            return orjson.loads(msg.data)
        if msg.type == aiohttp.WSMsgType.BINARY:
            self.frames.append(("BINARY", len(msg.data)))
            data = msg.data
            if data[:2] == b"\x1f\x8b":
                data = zlib.decompress(data, 47)
            if data[:1] == b"{":
                return orjson.loads(data)
            return msgpack.unpackb(data, raw=False)
        code = msg.data if msg.type == aiohttp.WSMsgType.CLOSE else self.ws.close_code
        raise ConnectionClosed(code, msg.extra, msg.type)

    async def recv_type(self, kind: str, timeout: float = RECV_TIMEOUT_S) -> dict:
        """The next message of `kind`, failing on anything else (an error included)."""
        msg = await self.recv(timeout)
        assert msg.get("type") == kind, f"expected {kind}, got {msg}"
        return msg

    async def closed(self, timeout: float = RECV_TIMEOUT_S) -> tuple[int | None, str]:
        """Read until the server closes; (close code, reason)."""
        while True:
            try:
                await self.recv(timeout)
            except ConnectionClosed as c:
                return c.code, c.reason

    async def subscribe(self, sid: str, sql: str, options: dict | None = None) -> None:
        sub: dict[str, Any] = {"id": sid, "sql": sql}
        if options is not None:
            sub["options"] = options
        await self.send({"type": "subscribe", "subscription": sub})

    async def load(self, sid: str, sql: str, options: dict | None = None) -> tuple[dict, list[dict], dict]:
        """Subscribe with initial data and fetch every batch: (ack, rows, final batch_control)."""
        await self.subscribe(sid, sql, options if options is not None else {})
        ack = await self.recv_type("subscription_ack")
        rows: list[dict] = []
        control: dict = ack["batch_control"]
        while True:
            batch = await self.recv()
            if batch.get("code") == "RATE_LIMIT_EXCEEDED":  # 50 messages/s per connection: ask again
                await asyncio.sleep(0.1)
                await self.send({"type": "next_batch", "subscription_id": sid, "last_seq_id": control["last_seq_id"]})
                continue
            assert batch.get("type") == "initial_data_batch", batch
            rows += batch["rows"]
            control = batch["batch_control"]
            if not control["has_more"]:
                return ack, rows, control
            await self.send({"type": "next_batch", "subscription_id": sid, "last_seq_id": control["last_seq_id"]})

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class ConnectionClosed(Exception):
    def __init__(self, code: int | None, reason: Any, kind: Any):
        super().__init__(f"closed {code} {reason!r} ({kind})")
        self.code = code
        self.reason = reason if isinstance(reason, str) else (reason.decode() if isinstance(reason, bytes) else "")
        self.kind = kind


class View:
    """A subscriber's materialised rows, keyed by primary key, checked change by change: an insert
    of a key it already has, an update whose old `_seq` is not the row's current `_seq`, or a delete
    of a key it does not have means a gap, a duplicate or a phantom."""

    def __init__(self, pk: str = "id"):
        self.pk = pk
        self.rows: dict[str, dict] = {}
        self.last_seq = 0
        self.problems: list[str] = []

    def load(self, rows: list[dict]) -> None:
        for r in rows:
            self.rows[r[self.pk]] = r

    def apply(self, msg: dict) -> None:
        kind = msg["change_type"]
        if kind == "insert":
            for r in msg["rows"]:
                self._seq(r["_seq"], msg)
                if r[self.pk] in self.rows:
                    self.problems.append(f"insert of a key already held: {msg}")
                self.rows[r[self.pk]] = r
        elif kind == "update":
            for new, old in zip(msg["rows"], msg["old_values"], strict=True):
                self._seq(new["_seq"], msg)
                have = self.rows.get(new[self.pk])
                if have is None or have["_seq"] != old["_seq"]:
                    self.problems.append(f"update of {new[self.pk]} from _seq {old['_seq']}, held "
                                         f"{have and have['_seq']}: {msg}")
                    have = have or {}
                row = {**have, **new}
                for k in old:  # a changed column missing from the new delta became NULL
                    if k not in new and not k.startswith("_"):
                        row[k] = None
                self.rows[new[self.pk]] = row
        else:
            for r in msg["old_values"]:
                self._seq(r["_seq"], msg)
                if self.rows.pop(r[self.pk], None) is None:
                    self.problems.append(f"delete of a key not held: {msg}")

    def _seq(self, seq: str, msg: dict) -> None:
        s = int(seq)
        if s <= self.last_seq:
            self.problems.append(f"_seq {s} not after {self.last_seq}: {msg}")
        self.last_seq = max(self.last_seq, s)

    def user_values(self) -> dict[str, dict]:
        return {k: {c: v for c, v in r.items() if not c.startswith("_")} for k, r in self.rows.items()}
