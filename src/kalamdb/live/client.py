"""The Python subscriber: `LiveSubscription`, an async iterator over one live query that survives
disconnects, node deaths and restarts by reconnecting (to the next URL of the list: any node
serves any subscriber) and resuming from the last `_seq` it delivered.

    async with kalamdb.AsyncClient(url) as db:
        async with db.subscribe("SELECT * FROM app.messages WHERE room = 'a'") as sub:
            async for event in sub:
                print(event["type"], event.get("rows"), event.get("old_values"))

Events are the server's messages as dicts (`subscription_ack`, `initial_data_batch`, `change`)
plus two of the client's own:
- `{"type": "reconnected", "url": ..., "from": seq}` before the frames of a resumed connection
  (the ack and the empty batch of the resume, then exactly the changes missed since `from`);
- `{"type": "reload", "reason": ...}`: the subscription starts over with a full initial load
  (the connection broke during the initial load, or the server no longer keeps the changes since
  the resume point: RESUME_TOO_OLD); drop the rows received so far.
Further initial-data batches are requested automatically. The resume point is the greatest of the
final batch's `last_seq_id` and every `_seq` delivered (`last_seq`).
An `error` for the subscription raises `LiveQueryError`; so does a refused authentication, unless
the subscription was given a user and password (then it logs in again: tokens expire).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import socket
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Self

import msgpack
import orjson

log = logging.getLogger("kalamdb.live.client")

WS_PATH = "/v1/ws"
PING_EVERY_S = 3.0  # the server closes a connection silent for 10 s
HEARTBEAT_S = 4.0  # WebSocket pings: a paused or partitioned node is noticed within ~this
CONNECT_TIMEOUT_S = 5.0
RATE_LIMIT_BACKOFF_S = 0.1  # the server allows 50 messages per second per connection
_ids = itertools.count(1)


class LiveQueryError(Exception):
    """The server refused or ended the subscription (`code` as the protocol's error codes)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class _Disconnected(Exception):
    pass


TokenSource = Callable[[str], Awaitable[str]]  # (base url) -> a JWT


def _seq_of(rows: Sequence[dict] | None) -> int | None:
    best = None
    for r in rows or ():
        v = r.get("_seq") if isinstance(r, dict) else None
        if v is not None:
            try:
                s = int(v)
            except (TypeError, ValueError):
                continue
            best = s if best is None or s > best else best
    return best


class LiveSubscription:
    """One live query over one WebSocket at a time. Not thread-safe; one consumer."""

    def __init__(self, urls: str | Sequence[str], sql: str, *, token: str | None = None,
                 user: str | None = None, password: str | None = None, token_source: TokenSource | None = None,
                 batch_size: int | None = None, last_rows: int | None = None, from_seq: int | None = None,
                 initial_data: bool = True, subscription_id: str | None = None, serialization: str = "json",
                 compress: bool = True, reconnect: bool = True, max_backoff_s: float = 2.0,
                 session: Any = None):
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("at least one server URL is needed")
        self.sql = sql
        self.id = subscription_id or f"py-{next(_ids)}-{random.getrandbits(32):08x}"
        self._token = token
        self._user, self._password = user, password
        self._token_source = token_source
        self.batch_size, self.last_rows = batch_size, last_rows
        self.initial_data = initial_data or from_seq is not None
        self.serialization = serialization
        self.compress = compress
        self.reconnect = reconnect
        self.max_backoff_s = max_backoff_s
        self.last_seq: int | None = from_seq
        self.ready = False  # the initial load finished (or was not asked for)
        self.reconnects = 0
        self.url_index = 0
        self._session = session
        self._own_session = session is None
        self._ws: Any = None
        self._pending: deque[dict] = deque()
        self._last_next_batch: dict | None = None
        self._pinger: asyncio.Task | None = None
        self._closed = False
        self._started = False

    # ------------------------------------------------------------------ life
    @property
    def url(self) -> str:
        return self.urls[self.url_index % len(self.urls)]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect and subscribe; raises LiveQueryError if the server refuses the subscription."""
        if self._started:
            return
        self._started = True
        try:
            await self._connect(first=True)
        except _Disconnected as why:
            if not self.reconnect:
                raise LiveQueryError("DISCONNECTED", str(why)) from None
            await self._reconnect(str(why), first=True)

    async def close(self) -> None:
        self._closed = True
        await self._drop_connection(unsubscribe=True)
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> dict:
        if not self._started:
            await self.start()
        while not self._pending:
            if self._closed:
                raise StopAsyncIteration
            try:
                await self._receive()
            except _Disconnected as why:
                if not self.reconnect or self._closed:
                    raise LiveQueryError("DISCONNECTED", str(why)) from None
                await self._reconnect(str(why))
        return self._pending.popleft()

    # ------------------------------------------------------------------ connecting
    async def _token_for(self, url: str, *, fresh: bool = False) -> str:
        if self._token_source is not None:
            return await self._token_source(url)
        if self._token is not None and not fresh:
            return self._token
        if self._user is None:
            if self._token is not None:
                return self._token
            raise LiveQueryError("AUTH_REQUIRED", "a token, or a user and password, is needed to subscribe")
        import aiohttp

        try:
            async with self._get_session().post(url.rstrip("/") + "/v1/api/auth/login",
                                                json={"user": self._user, "password": self._password or ""},
                                                timeout=aiohttp.ClientTimeout(total=CONNECT_TIMEOUT_S)) as resp:
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise _Disconnected(f"login at {url} failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(body, dict) or "access_token" not in body:
            err = (body or {}).get("error") or {}
            raise LiveQueryError(err.get("code", "INVALID_CREDENTIALS"), err.get("message", "login failed"))
        self._token = body["access_token"]
        return self._token

    def _get_session(self) -> Any:
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(family=socket.AF_INET))
        return self._session

    async def _connect(self, *, first: bool, fresh_token: bool = False) -> None:
        import aiohttp

        url = self.url
        token = await self._token_for(url, fresh=fresh_token)
        query = "" if self.compress else "?compress=false"
        if self.serialization == "msgpack":
            query += ("&" if query else "?") + "serialization=msgpack"
        ws_url = url.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1) + WS_PATH + query
        try:
            self._ws = await self._get_session().ws_connect(
                ws_url, headers={"Authorization": f"Bearer {token}"}, heartbeat=HEARTBEAT_S,
                timeout=aiohttp.ClientWSTimeout(ws_close=2.0), max_msg_size=64 * 1024 * 1024,
                autoping=True, compress=0)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _Disconnected(f"connect to {url} failed: {type(exc).__name__}: {exc}") from None
        first_msg = await self._read_message(timeout=CONNECT_TIMEOUT_S)
        if first_msg.get("type") == "auth_error":
            await self._drop_connection()
            if self._user is not None and not fresh_token:
                return await self._connect(first=first, fresh_token=True)
            raise LiveQueryError("INVALID_CREDENTIALS", first_msg.get("message", "auth_error"))
        if first_msg.get("type") != "auth_success":
            raise _Disconnected(f"unexpected first message {first_msg.get('type')!r}")
        self._pinger = asyncio.get_running_loop().create_task(self._ping_forever(self._ws))
        await self._send_subscribe(resume=not first and self.ready)

    async def _send_subscribe(self, *, resume: bool) -> None:
        sub: dict[str, Any] = {"id": self.id, "sql": self.sql}
        if self.initial_data or resume:
            options: dict[str, Any] = {}
            if self.batch_size is not None:
                options["batch_size"] = self.batch_size
            if self.last_seq is not None:
                options["from"] = self.last_seq
            elif self.last_rows is not None:
                options["last_rows"] = self.last_rows
            sub["options"] = options
        await self._send({"type": "subscribe", "subscription": sub})
        if not self.initial_data and not resume:
            self.ready = True

    async def _send(self, message: dict) -> None:
        try:
            if self.serialization == "msgpack":
                await self._ws.send_bytes(msgpack.packb(message))
            else:
                await self._ws.send_str(orjson.dumps(message).decode())
        except (ConnectionError, RuntimeError) as exc:
            raise _Disconnected(f"send failed: {exc}") from None

    async def _ping_forever(self, ws: Any) -> None:
        with contextlib.suppress(Exception):
            while not ws.closed:
                await asyncio.sleep(PING_EVERY_S)
                if self.serialization == "msgpack":
                    await ws.send_bytes(msgpack.packb({"type": "ping"}))
                else:
                    await ws.send_str('{"type":"ping"}')

    async def _drop_connection(self, *, unsubscribe: bool = False) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(BaseException):
                await self._pinger
            self._pinger = None
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                if unsubscribe and not ws.closed:
                    await asyncio.wait_for(self._send_raw(ws, {"type": "unsubscribe", "subscription_id": self.id}),
                                           1.0)
                await asyncio.wait_for(ws.close(), 2.0)

    async def _send_raw(self, ws: Any, message: dict) -> None:
        if self.serialization == "msgpack":
            await ws.send_bytes(msgpack.packb(message))
        else:
            await ws.send_str(orjson.dumps(message).decode())

    async def _reconnect(self, why: str, *, first: bool = False) -> None:
        """Connect again, to the next URL (any node serves any subscriber), until it works or the
        subscription is closed; the events of the new connection follow a marker (none when the
        very first connection failed: nothing was delivered yet)."""
        await self._drop_connection()
        delay = 0.05
        while not self._closed:
            self.url_index += 1
            if not first:
                self.reconnects += 1
            log.info("live subscription %s: %s; reconnecting to %s (from=%s)", self.id, why, self.url, self.last_seq)
            marker: dict[str, Any] | None = None
            if first:
                pass
            elif not self.ready and self.initial_data:
                marker = {"type": "reload", "reason": f"disconnected during the initial load: {why}"}
            else:
                marker = {"type": "reconnected", "url": self.url, "from": self.last_seq}
            if marker is not None:
                self._pending.append(marker)
            try:
                await self._connect(first=first)
                return
            except _Disconnected as exc:
                if marker is not None:
                    self._pending.remove(marker)
                await self._drop_connection()
                why = str(exc)
            await asyncio.sleep(delay * (0.5 + random.random()))  # back off from a dead node
            delay = min(delay * 2, self.max_backoff_s)

    # ------------------------------------------------------------------ receiving
    async def _read_message(self, timeout: float | None = None) -> dict:
        import aiohttp

        ws = self._ws
        if ws is None:
            raise _Disconnected("not connected")
        try:
            msg = await (asyncio.wait_for(ws.receive(), timeout) if timeout else ws.receive())
        except TimeoutError:
            raise _Disconnected("no answer from the server") from None
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            raise _Disconnected(f"receive failed: {exc}") from None
        if msg.type == aiohttp.WSMsgType.TEXT:
            return orjson.loads(msg.data)
        if msg.type == aiohttp.WSMsgType.BINARY:
            data = msg.data
            if data[:2] == b"\x1f\x8b":
                data = zlib.decompress(data, 47)
                if data[:1] == b"{":
                    return orjson.loads(data)
            return msgpack.unpackb(data, raw=False) if self.serialization == "msgpack" else orjson.loads(data)
        code = ws.close_code
        raise _Disconnected(f"connection closed ({code}{': ' + str(msg.extra) if msg.extra else ''})")

    async def _receive(self) -> None:
        msg = await self._read_message()
        kind = msg.get("type")
        if kind == "error":
            code, text = msg.get("code", "ERROR"), msg.get("message", "")
            if code == "RATE_LIMIT_EXCEEDED" and self._last_next_batch is not None and not self.ready:
                # the server dropped our next_batch (50 messages/s per connection): ask again later
                await asyncio.sleep(RATE_LIMIT_BACKOFF_S)
                await self._send(self._last_next_batch)
                return
            if code == "RESUME_TOO_OLD":
                self.last_seq = None
                self.ready = False
                self._pending.append({"type": "reload", "reason": text})
                await self._send_subscribe(resume=False)
                return
            if code == "TOKEN_EXPIRED" and self._user is not None:
                self._token = None
                raise _Disconnected("token expired")
            raise LiveQueryError(code, text)
        if kind == "auth_error":
            raise LiveQueryError("INVALID_CREDENTIALS", msg.get("message", ""))
        if kind in ("subscription_ack", "initial_data_batch"):
            control = msg.get("batch_control") or {}
            if kind == "initial_data_batch":
                if control.get("has_more"):
                    self._last_next_batch = {"type": "next_batch", "subscription_id": self.id,
                                             "last_seq_id": control.get("last_seq_id")}
                    await self._send(self._last_next_batch)
                else:
                    self._mark_ready(control, msg.get("rows"))
            elif not self.initial_data and not control.get("has_more"):
                self._mark_ready(control, None)
        elif kind == "change":
            seq = _seq_of(msg.get("rows"))
            old = _seq_of(msg.get("old_values")) if msg.get("change_type") == "delete" else None
            self._advance(max(s for s in (seq, old) if s is not None) if seq is not None or old is not None else None)
        self._pending.append(msg)

    def _mark_ready(self, control: dict, rows: list | None) -> None:
        self.ready = True
        self._advance(control.get("last_seq_id"))
        self._advance(_seq_of(rows))

    def _advance(self, seq: Any) -> None:
        if seq is None:
            return
        s = int(seq)
        if self.last_seq is None or s > self.last_seq:
            self.last_seq = s
