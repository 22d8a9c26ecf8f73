"""Small helpers for HTTP-level server tests: raw requests and 'still serving' checks."""

from __future__ import annotations

import base64
import http.client

import orjson

from kalamdb.client import Response, _decode
from kalamdb.server.metrics import parse
from kalamdb.testing.single import ServerProcess
from kalamdb.testing.waiting import wait_for  # noqa: F401 - re-exported for the server tests


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def post_raw(server: ServerProcess, path: str, body: bytes, headers: dict[str, str] | None = None) -> Response:
    """POST exact bytes (for malformed bodies the Client would never produce)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        raw = conn.getresponse()
        return _decode(raw.status, raw.read())
    finally:
        conn.close()


def post_sql(server: ServerProcess, body: dict, auth: str | None = "root") -> Response:
    headers = {"Authorization": basic("root", "")} if auth == "root" else ({"Authorization": auth} if auth else {})
    return post_raw(server, "/v1/api/sql", orjson.dumps(body), headers)


def assert_error(resp: Response, status: int, code: str, *fragments: str) -> None:
    assert resp.http_status == status, resp
    assert resp.get("status") == "error", resp
    assert resp.error["code"] == code, resp
    assert resp["results"] == [] and isinstance(resp["took"], float), resp
    for fragment in fragments:
        assert fragment.lower() in resp.error["message"].lower(), resp.error


def assert_serving(server: ServerProcess) -> None:
    """The process is alive and still answers both health and SQL."""
    assert server.is_running()
    with server.client() as c:
        assert c.health()["status"] == "healthy"
        resp = c.sql("SELECT COUNT(*) AS n FROM system.namespaces")
        assert resp.ok, resp


def scrape(server: ServerProcess) -> dict[str, float]:
    """The server's /metrics as {name: value}."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type", "").startswith("text/plain")
        return parse(resp.read().decode())
    finally:
        conn.close()
