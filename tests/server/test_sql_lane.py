"""The SQL lane (server/sql_lane.py): which request heads it serves itself and which it hands to
aiohttp, and, on a real server over raw sockets, that both give the same answers, in order, on one
connection — including pipelined requests, a handover in the middle of a connection, and bodies
that arrive in pieces."""

from __future__ import annotations

import socket

import orjson
import pytest
from aiohttp import web

from kalamdb.server.sql_lane import HANDOVER, MAX_HEAD_BYTES, Head, encode_response, parse_head
from tests.server.helpers import basic, scrape

MAX_BODY = 1000
AUTH = basic("root", "")


def sql_request(sql: str, *, extra: bytes = b"", auth: str = AUTH) -> bytes:
    body = orjson.dumps({"sql": sql})
    return (b"POST /v1/api/sql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: " + auth.encode() + b"\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


# ---------------------------------------------------------------- parse_head


def test_a_plain_sql_request_is_served_by_the_lane():
    raw = sql_request("SELECT 1")
    head = parse_head(raw, MAX_BODY)
    assert isinstance(head, Head)
    assert head.length + head.body_length == len(raw)
    assert raw[head.length:] == orjson.dumps({"sql": "SELECT 1"})
    assert head.headers.get("authorization") == AUTH and head.headers.get("AUTHORIZATION") == AUTH
    assert head.close is False


def test_an_incomplete_head_waits_for_more_bytes_and_a_huge_one_is_handed_over():
    raw = sql_request("SELECT 1")
    assert parse_head(raw[:40], MAX_BODY) is None
    assert parse_head(b"POST /v1/api/sql HTTP/1.1\r\nX-Pad: " + b"a" * MAX_HEAD_BYTES, MAX_BODY) == HANDOVER


def test_pipelined_requests_are_parsed_one_head_at_a_time():
    first, second = sql_request("SELECT 1"), sql_request("SELECT 22")
    head = parse_head(first + second, MAX_BODY)
    assert isinstance(head, Head) and head.length + head.body_length == len(first)


def test_repeated_headers_are_joined_and_connection_close_is_seen():
    raw = (b"POST /v1/api/sql HTTP/1.1\r\nX-A: 1\r\nx-a: 2\r\nConnection: keep-alive, Close\r\n"
           b"Content-Length: 0\r\n\r\n")
    head = parse_head(raw, MAX_BODY)
    assert isinstance(head, Head)
    assert head.headers.get("X-A") == "1, 2" and head.close is True and head.body_length == 0


@pytest.mark.parametrize("raw", [
    b"GET /v1/api/sql HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /v1/api/sql?x=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /v1/api/sqlx HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /health HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /v1/api/sql HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}",
    b"POST  /v1/api/sql HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /v1/api/sql HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"POST /v1/api/sql HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /v1/api/sql HTTP/1.1\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /v1/api/sql HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    b"POST /v1/api/sql HTTP/1.1\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /v1/api/sql HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /v1/api/sql HTTP/1.1\r\nContent-Length: +2\r\n\r\n{}",
    b"POST /v1/api/sql HTTP/1.1\r\nContent-Length: 2 2\r\n\r\n{}",
    b"POST /v1/api/sql HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n{}",
    b"POST /v1/api/sql HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n{}",  # a latin-1 superscript two is no digit
    b"POST /v1/api/sql HTTP/1.1\r\nContent-Length: 1001\r\n\r\n{}",  # above max_body_bytes: aiohttp's 413
    b"POST /v1/api/sql HTTP/1.1\r\n\r\n",  # no length at all
    b"POST /v1/api/sql HTTP/1.1\r\nX-Bad: a\x01b\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /v1/api/sql HTTP/1.1\r\nX-Bad: a\nb\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /v1/api/sql HTTP/1.1\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /v1/api/sql HTTP/1.1\r\nX Bad: a\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /v1/api/sql HTTP/1.1\r\nNoColon\r\nContent-Length: 2\r\n\r\n{}",
], ids=lambda raw: raw.split(b"\r\n\r\n")[0][-40:].decode("latin-1"))
def test_anything_unusual_is_handed_over_to_aiohttp(raw):
    assert parse_head(raw, MAX_BODY) == HANDOVER


def test_encode_response_sends_the_handlers_headers_and_a_plain_server_banner():
    response = web.Response(body=b'{"a":1}', status=429, headers={"Content-Type": "application/json",
                                                                 "Retry-After": "1"})
    raw = encode_response(response, close=True)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 429 Too Many Requests" and body == b'{"a":1}'
    headers = dict(line.split(b": ", 1) for line in lines[1:])
    assert headers[b"Content-Type"] == b"application/json" and headers[b"Retry-After"] == b"1"
    assert headers[b"Content-Length"] == b"7" and headers[b"Server"] == b"kalamdb"
    assert headers[b"Connection"] == b"close" and headers[b"Date"].endswith(b" GMT")


class _Transport:
    """What LaneProtocol asks of its transport while it reads a request (no socket needed)."""

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_extra_info(self, name: str) -> None:
        return None

    def pause_reading(self) -> None:
        pass


async def test_a_head_whose_body_comes_in_a_later_read_is_parsed_once(monkeypatch):
    import kalamdb.server.sql_lane as lane_module

    calls = []
    real = lane_module.parse_head
    monkeypatch.setattr(lane_module, "parse_head", lambda buf, limit: calls.append(1) or real(buf, limit))
    served: list[bytes] = []

    async def handler(request):
        served.append(request.body)
        return web.Response(body=b"{}")

    proto = lane_module.SqlLane(handler, lambda: None, max_body_bytes=MAX_BODY).protocol()  # type: ignore[arg-type]
    proto.connection_made(_Transport())  # type: ignore[arg-type]
    raw = sql_request("SELECT 'pieces' AS p")
    cut = raw.index(b"\r\n\r\n") + 4
    for piece in (raw[:cut], raw[cut:-3], raw[-3:]):  # the head, then the body in two reads
        proto.data_received(piece)
    assert len(calls) == 1 and proto.busy
    assert bytes(proto.buf) == b""


# ---------------------------------------------------------------- on a real server


class RawConnection:
    """One HTTP/1.1 connection driven by hand: send any bytes, read whole responses in order."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed by the server; unread: {self.buf!r:.200}")
        self.buf += chunk

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed_by_server(self) -> bool:
        self.sock.settimeout(10)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def conn(server):
    c = RawConnection(server.port)
    yield c
    c.close()


def lane_counts(server) -> tuple[float, float]:
    m = scrape(server)
    return m["kalamdb_http_sql_lane_requests_total"], m["kalamdb_http_sql_lane_handovers_total"]


def without_took(body: bytes) -> dict:
    doc = orjson.loads(body)
    doc.pop("took")
    return doc


def test_the_lane_and_aiohttp_give_the_same_answer(server, conn):
    served, handed = lane_counts(server)
    conn.send(sql_request("SELECT 'one' AS one, 'x' AS two"))
    lane_status, lane_headers, lane_body = conn.response()
    body = orjson.dumps({"sql": "SELECT 'one' AS one, 'x' AS two"})
    chunked = (b"POST /v1/api/sql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: "
               + AUTH.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
    conn.send(chunked)  # same connection: from here on aiohttp serves it
    aio_status, aio_headers, aio_body = conn.response()
    assert lane_status == aio_status == 200
    assert without_took(lane_body) == without_took(aio_body)
    assert without_took(lane_body)["results"][0]["rows"] == [["one", "x"]]
    assert set(lane_headers) == set(aio_headers), (lane_headers, aio_headers)
    for name in ("content-type", "server"):
        assert lane_headers[name] == aio_headers[name]
    assert lane_counts(server) == (served + 1, handed + 2)  # + the chunked request, + this scrape's GET


def test_errors_through_the_lane_keep_their_status_and_envelope(server, conn):
    conn.send(sql_request("SELECT 1", auth=basic("root", "wrong-password")))
    status, _, body = conn.response()
    assert status == 401 and orjson.loads(body)["error"]["code"] in {"INVALID_CREDENTIALS", "UNAUTHORIZED"}
    conn.send(sql_request("SELEKT nonsense"))  # the connection stays usable after an error
    status, _, body = conn.response()
    assert status == 400 and orjson.loads(body)["status"] == "error"


def test_pipelined_requests_are_answered_in_order(server, conn):
    conn.send(b"".join(sql_request(f"SELECT 'n{n}' AS n") for n in range(5)))
    answers = [orjson.loads(conn.response()[2])["results"][0]["rows"] for _ in range(5)]
    assert answers == [[[f"n{n}"]] for n in range(5)]


def test_a_request_for_another_endpoint_after_sql_is_handed_over_on_the_same_connection(server, conn):
    conn.send(sql_request("SELECT 'seven' AS n") + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + sql_request("SELECT 'eight' AS n"))
    first, health, last = conn.response(), conn.response(), conn.response()
    assert orjson.loads(first[2])["results"][0]["rows"] == [["seven"]]
    assert health[0] == 200 and orjson.loads(health[2])["status"] == "healthy"
    assert orjson.loads(last[2])["results"][0]["rows"] == [["eight"]]


def test_a_body_that_arrives_in_pieces_is_read_whole(server, conn):
    raw = sql_request("SELECT 'pieces' AS p")
    for cut in (10, 60, len(raw) - 5):  # in the request line, in the headers, in the body
        conn.send(raw[:cut])  # TCP_NODELAY: each piece leaves as its own segment
        conn.send(raw[cut:])
        status, _, body = conn.response()
        assert status == 200 and orjson.loads(body)["results"][0]["rows"] == [["pieces"]]


def test_connection_close_is_honoured(server, conn):
    conn.send(sql_request("SELECT 1", extra=b"Connection: close\r\n"))
    status, headers, _ = conn.response()
    assert status == 200 and headers.get("connection") == "close"
    assert conn.closed_by_server()


def test_an_oversized_body_gets_the_documented_413_without_being_sent(server, conn):
    limit = 10 * 1024 * 1024
    conn.send(b"POST /v1/api/sql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: "
              + AUTH.encode() + b"\r\nContent-Length: %d\r\n\r\n" % (limit * 10))
    status, _, body = conn.response()
    assert status == 413 and orjson.loads(body)["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_a_malformed_header_gets_aiohttps_400(server, conn):
    conn.send(b"POST /v1/api/sql HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\nContent-Length: 2\r\n\r\n{}")
    status, _, _ = conn.response()
    assert status == 400


def test_a_client_that_disconnects_mid_request_does_not_disturb_the_server(server):
    for cut in (5, 40, 120):
        c = RawConnection(server.port)
        c.send(sql_request("SELECT 1")[:cut])
        c.close()
    with server.client() as client:
        assert client.sql("SELECT 'still' AS n").rows == [["still"]]
