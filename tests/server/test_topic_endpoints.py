"""POST /v1/api/topics/consume and /ack over real HTTP: upstream's request and answer shapes, its
error shape ({"error", "code"}), roles service and up, and bad input refused with a clear 400."""

from __future__ import annotations

import base64
import json

import orjson
import pytest

from tests.server.helpers import basic, post_raw

CONSUME, ACK = "/v1/api/topics/consume", "/v1/api/topics/ack"


@pytest.fixture
def topic(server, unique_ns):
    with server.client() as c:
        for text in (f"CREATE NAMESPACE {unique_ns}", f"CREATE TABLE {unique_ns}.t (id INT PRIMARY KEY, v TEXT)",
                     f"CREATE TOPIC {unique_ns}.feed", f"ALTER TOPIC {unique_ns}.feed ADD SOURCE {unique_ns}.t ON INSERT",
                     f"INSERT INTO {unique_ns}.t (id, v) VALUES (1, 'a'), (2, 'b'), (3, 'c')"):
            c.sql(text).raise_for_error()
    return f"{unique_ns}.feed"


def call(server, path: str, body, auth: str | None = None):
    auth = auth or basic("root", server.config.get("auth", {}).get("root_password") or "")
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return post_raw(server, path, raw, {"Authorization": auth} if auth != "-" else {})


def test_consume_then_ack(server, topic):
    r = call(server, CONSUME, {"topic_id": topic, "group_id": "g1", "start": "Earliest", "limit": 2})
    assert r.http_status == 200 and r["has_more"] is True and r["next_offset"] == 2
    m = r["messages"][0]
    assert set(m) == {"topic_id", "partition_id", "offset", "payload", "key", "timestamp_ms", "op"}
    assert (m["topic_id"], m["partition_id"], m["offset"], m["key"], m["op"]) == (topic, 0, 0, "1", "Insert")
    data = json.loads(base64.b64decode(m["payload"]))
    assert data["v"] == "a" and data["_table"] == topic.replace(".feed", ":t") and data["_deleted"] is False
    assert call(server, ACK, {"topic_id": topic, "group_id": "g1", "upto_offset": 1}) == \
        {"success": True, "acknowledged_offset": 1}
    r = call(server, CONSUME, {"topic_id": topic, "group_id": "g1", "start": {"Offset": 0}})
    assert [m["offset"] for m in r["messages"]] == [2] and r["has_more"] is False
    r = call(server, CONSUME, {"topic_id": topic, "group_id": "other", "start": "Latest"})
    assert r["messages"] == [] and r["next_offset"] == 3


def test_errors_have_upstreams_shape(server, topic, unique_ns):
    with server.client() as c:
        c.sql(f"CREATE USER {unique_ns}_u WITH PASSWORD 'UserPass123!' ROLE user").raise_for_error()
    user = basic(f"{unique_ns}_u", "UserPass123!")
    r = call(server, CONSUME, {"topic_id": topic, "group_id": "g"}, auth=user)
    assert r.http_status == 403 and r == {"error": "Topic consumption requires service, dba, or system role",
                                          "code": "FORBIDDEN"}
    r = call(server, ACK, {"topic_id": topic, "group_id": "g", "upto_offset": 0}, auth=user)
    assert r.http_status == 403 and r["code"] == "FORBIDDEN"
    r = call(server, CONSUME, {"topic_id": f"{unique_ns}.nope", "group_id": "g"})
    assert r.http_status == 404 and r == {"error": f"Topic '{unique_ns}.nope' does not exist", "code": "NOT_FOUND"}
    r = call(server, ACK, {"topic_id": f"{unique_ns}.nope", "group_id": "g", "upto_offset": 3})
    assert r.http_status == 404 and r["code"] == "NOT_FOUND"
    assert call(server, CONSUME, {"topic_id": topic, "group_id": "g"}, auth="-").http_status == 401


@pytest.mark.parametrize("path,body,fragment", [
    (CONSUME, {"group_id": "g"}, "topic_id"),
    (CONSUME, {"topic_id": "x.y"}, "group_id"),
    (CONSUME, {"topic_id": "x.y", "group_id": "g", "start": "Middle"}, "Latest"),
    (CONSUME, {"topic_id": "x.y", "group_id": "g", "start": {"Offset": -1}}, "Offset"),
    (CONSUME, {"topic_id": "x.y", "group_id": "g", "limit": "10"}, "limit"),
    (CONSUME, {"topic_id": "x.y", "group_id": "g", "limit": 10**9}, "limit"),
    (CONSUME, {"topic_id": "x.y", "group_id": "g" * 500}, "group_id"),
    (ACK, {"topic_id": "x.y", "group_id": "g"}, "upto_offset"),
    (ACK, {"topic_id": "x.y", "group_id": "g", "upto_offset": 2**63}, "upto_offset"),
    (ACK, {"topic_id": "x.y", "group_id": "g", "upto_offset": 1, "partition_id": -2}, "partition_id"),
    (CONSUME, [1, 2], "object"),
    (CONSUME, b"{not json", "JSON"),
])
def test_bad_input_is_a_clear_400(server, path, body, fragment):
    r = call(server, path, body)
    assert r.http_status == 400, r
    assert fragment.lower() in (r.get("error") or r.get("error", {})).__str__().lower(), r


def test_limit_zero_and_a_missing_partition(server, topic):
    r = call(server, CONSUME, {"topic_id": topic, "group_id": "z", "limit": 0})
    assert r.http_status == 200 and r["messages"] == []
    r = call(server, CONSUME, {"topic_id": topic, "group_id": "z", "partition_id": 3})
    assert r.http_status == 400 and "no partition 3" in r["error"]
