"""Python clients for the HTTP API: `Client` (blocking, keep-alive `http.client`) and `AsyncClient`
(aiohttp). Both return `Response`, the API's JSON as a dict with convenient accessors.

Example::

    with kalamdb.Client("http://127.0.0.1:8080") as db:
        db.login("root", "")
        db.sql("CREATE NAMESPACE IF NOT EXISTS app")
        print(db.sql("SELECT * FROM app.items WHERE id = $1", [1]).rows)          # as on the wire
        print(db.sql("SELECT * FROM app.items WHERE id = $1", [1]).typed_rows())  # int, datetime, ...
"""

from __future__ import annotations

import base64
import http.client
import socket
import time
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

import orjson

if TYPE_CHECKING:
    import aiohttp

    from kalamdb.live.client import LiveSubscription

from kalamdb.cells import typed_rows
from kalamdb.errors import KalamError

SQL_PATH = "/v1/api/sql"
LOGIN_PATH = "/v1/api/auth/login"
HEALTH_PATH = "/v1/api/healthcheck"
# well below aiohttp's 75 s server keep-alive: an idle connection is replaced, never found dead
IDLE_RECONNECT_S = 15.0


class Response(dict):
    """One API answer. `ok` is True for `"status": "success"`; `rows`/`row_count` are those of the
    first result (most requests have one statement), as the wire encodes them (BigInt as a string,
    Timestamp as microseconds); `typed_rows()` decodes them. `http_status` is the HTTP status code."""

    http_status: int = 0
    node_id: int | None = None  # which node answered, when the test kit asked (testing/nodes.py)

    @property
    def ok(self) -> bool:
        if "status" in self:
            return self["status"] == "success"
        return 200 <= self.http_status < 300 and "error" not in self

    @property
    def results(self) -> list[dict]:
        return self.get("results") or []

    @property
    def rows(self) -> list[list]:
        results = self.results
        return (results[0].get("rows") or []) if results else []

    @property
    def row_count(self) -> int:
        results = self.results
        return int(results[0].get("row_count", 0)) if results else 0

    @property
    def error(self) -> dict | None:
        return self.get("error")

    @property
    def raft_index(self) -> int | None:
        return self.get("raft_index")

    @property
    def columns(self) -> list[str]:
        results = self.results
        return [c["name"] for c in (results[0].get("schema") or [])] if results else []

    def dicts(self) -> list[dict]:
        """The first result's rows as {column: value} dicts."""
        names = self.columns
        return [dict(zip(names, row, strict=False)) for row in self.rows]

    def typed_rows(self) -> list[list]:
        """The first result's rows with Python values instead of the wire's encoding: int for
        BigInt (a JSON string on the wire), an aware UTC datetime for Timestamp (microseconds),
        date, time, Decimal, UUID, bytes, parsed JSON: see `kalamdb.cells`. `rows` stays raw."""
        results = self.results
        if not results:
            return []
        return typed_rows(results[0].get("schema") or [], results[0].get("rows") or [])

    def typed_dicts(self) -> list[dict]:
        """`typed_rows()` as {column: value} dicts."""
        names = self.columns
        return [dict(zip(names, row, strict=False)) for row in self.typed_rows()]

    def raise_for_error(self) -> Response:
        """Return self on success, else raise the API error as a KalamError."""
        if not self.ok:
            err = self.error or {"code": "INTERNAL_ERROR", "message": "no error in a failed response"}
            raise KalamError(err.get("code", "INTERNAL_ERROR"), err.get("message", ""),
                             status=self.http_status or None, details=err.get("details"))
        return self


def _decode(status: int, body: bytes) -> Response:
    try:
        data = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        text = body[:200].decode("utf-8", "replace")
        data = {"status": "error", "results": [],
                "error": {"code": "INVALID_RESPONSE", "message": f"HTTP {status}: non-JSON answer: {text}"}}
    resp = Response(data)
    resp.http_status = status
    return resp


def _sql_body(text: str, params: list | None, namespace_id: str | None, extra: dict) -> bytes:
    body: dict[str, Any] = {"sql": text}
    if params is not None:
        body["params"] = list(params)
    if namespace_id is not None:
        body["namespace_id"] = namespace_id
    body.update(extra)
    return orjson.dumps(body)


class _Credentials:
    def __init__(self, user: str | None, password: str | None, token: str | None):
        self.token = token
        self.user, self.password = user, password
        self.basic = None
        if user is not None:
            raw = f"{user}:{password or ''}".encode()
            self.basic = "Basic " + base64.b64encode(raw).decode("ascii")

    def header(self) -> dict[str, str]:
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        if self.basic:
            return {"Authorization": self.basic}
        return {}


class Client:
    """Blocking client over one keep-alive connection. Not thread-safe: one per thread."""

    def __init__(self, url: str = "http://127.0.0.1:8080", *, user: str | None = "root",
                 password: str | None = "", token: str | None = None, timeout: float = 30.0):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected an http://host:port URL, got {url!r}")
        self.url = url.rstrip("/")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._timeout = timeout
        self._creds = _Credentials(user, password, token)
        self._conn: http.client.HTTPConnection | None = None
        self._last_used = 0.0

    @property
    def token(self) -> str | None:
        return self._creds.token

    @property
    def credentials(self) -> _Credentials:
        """What this client authenticates with (user and password, or a token)."""
        return self._creds

    def _request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Response:
        """One request. Never retried: after a connection error nobody knows whether a write was
        applied, so the error goes to the caller. Connections idle for a while are replaced before
        use, so a server-side keep-alive timeout does not surface as an error."""
        headers = {"Content-Type": "application/json", **headers}
        now = time.monotonic()
        if self._conn is not None and now - self._last_used > IDLE_RECONNECT_S:
            self.close()
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            self._conn.request(method, path, body=body, headers=headers)
            raw = self._conn.getresponse()
            data = raw.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        self._last_used = time.monotonic()
        if raw.getheader("Connection", "").lower() == "close":
            self.close()
        return _decode(raw.status, data)

    def sql(self, text: str, params: list | None = None, namespace_id: str | None = None,
            **extra: Any) -> Response:
        """Run SQL; `extra` adds request fields (e.g. consistency="local", min_applied_index=12)."""
        return self._request("POST", SQL_PATH, _sql_body(text, params, namespace_id, extra), self._creds.header())

    def login(self, user: str, password: str) -> Response:
        """Exchange credentials for a JWT; later requests use it."""
        resp = self._request("POST", LOGIN_PATH, orjson.dumps({"user": user, "password": password}), {})
        if resp.ok and "access_token" in resp:
            self._creds.token = resp["access_token"]
        return resp

    def health(self) -> Response:
        return self._request("GET", HEALTH_PATH, None, {})

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """asyncio client (aiohttp); many concurrent requests share one connection pool."""

    def __init__(self, url: str = "http://127.0.0.1:8080", *, user: str | None = "root",
                 password: str | None = "", token: str | None = None, timeout: float = 30.0,
                 connections: int = 100):
        self.url = url.rstrip("/")
        self._creds = _Credentials(user, password, token)
        self._timeout = timeout
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None  # made on first use (aiohttp loads lazily)

    @property
    def token(self) -> str | None:
        return self._creds.token

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections, family=socket.AF_INET),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
        return self._session

    async def _request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Response:
        headers = {"Content-Type": "application/json", **headers}
        async with self._get_session().request(method, self.url + path, data=body, headers=headers) as raw:
            return _decode(raw.status, await raw.read())

    async def sql(self, text: str, params: list | None = None, namespace_id: str | None = None,
                  **extra: Any) -> Response:
        return await self._request("POST", SQL_PATH, _sql_body(text, params, namespace_id, extra),
                                   self._creds.header())

    async def login(self, user: str, password: str) -> Response:
        resp = await self._request("POST", LOGIN_PATH, orjson.dumps({"user": user, "password": password}), {})
        if resp.ok and "access_token" in resp:
            self._creds.token = resp["access_token"]
        return resp

    async def health(self) -> Response:
        return await self._request("GET", HEALTH_PATH, None, {})

    def subscribe(self, sql: str, *, urls: list[str] | None = None, **options: Any) -> LiveSubscription:
        """A live query (`kalamdb.live.client.LiveSubscription`): use it as `async with` and iterate
        its events. It authenticates with this client's token, or logs in with its user and password
        (again when the token expires); `urls` lists the nodes it may reconnect to (default: this
        client's URL). Options: batch_size, last_rows, from_seq, initial_data, subscription_id,
        serialization ("json" | "msgpack"), compress, reconnect."""
        from kalamdb.live.client import LiveSubscription

        creds = self._creds
        auth: dict[str, Any] = {"token": creds.token}
        if creds.user is not None:
            auth.update(user=creds.user, password=creds.password)
        return LiveSubscription(urls or [self.url], sql, **auth, **options)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
