"""Topics on a real 3-node cluster: messages are made on every replica while applying, so any node
serves a consumer; a group's offset is a replicated write, so polls on one node and acks on another
agree, and after the leader is killed the group resumes exactly after its last ack, losing nothing."""

from __future__ import annotations

import base64
import json

import orjson
import pytest

from tests.cluster.helpers import insert_ids, setup_table

pytestmark = pytest.mark.cluster


def poll(node, topic: str, group: str, partition: int, limit: int = 50) -> list[dict]:
    r = node._request("POST", "/v1/api/topics/consume", orjson.dumps(
        {"topic_id": topic, "group_id": group, "start": "Earliest", "limit": limit, "partition_id": partition}))
    assert r.http_status == 200, r
    return [{**m, "id": int(json.loads(base64.b64decode(m["payload"]))["id"])} for m in r["messages"]]


def ack(node, topic: str, group: str, partition: int, offset: int) -> None:
    r = node._request("POST", "/v1/api/topics/ack", orjson.dumps(
        {"topic_id": topic, "group_id": group, "partition_id": partition, "upto_offset": offset}))
    assert r.http_status == 200 and r["acknowledged_offset"] == offset, r


def drain(nodes, topic: str, group: str, partitions: int, delivered: dict, rounds: int | None = None) -> None:
    """Poll on one node and ack on the next, round robin, until a full round brings nothing."""
    k = 0
    while True:
        got = 0
        for p in range(partitions):
            msgs = poll(nodes[k % len(nodes)], topic, group, p)
            if msgs:
                got += len(msgs)
                for m in msgs:
                    delivered.setdefault(p, []).append((m["offset"], m["id"]))
                ack(nodes[(k + 1) % len(nodes)], topic, group, p, msgs[-1]["offset"])
            k += 1
        if rounds is not None:
            rounds -= 1
            if rounds == 0:
                return
        if not got:
            return


def test_a_group_resumes_from_its_acked_offset_after_the_leader_is_killed(fresh_cluster):
    c = fresh_cluster
    ns = c.unique_namespace("tp")
    setup_table(c, ns)
    topic = f"{ns}.feed"
    c.execute_sql_on_leader(f"CREATE TOPIC {topic} PARTITIONS 2").raise_for_error()
    c.execute_sql_on_leader(f"ALTER TOPIC {topic} ADD SOURCE {ns}.t ON INSERT").raise_for_error()
    acked = insert_ids(c, ns, list(range(300)))
    assert len(acked) == 300
    c.wait_for_replication()

    delivered: dict[int, list] = {}
    drain(c.nodes, topic, "g", 2, delivered, rounds=2)  # part of the feed, every batch acked
    before = {p: list(v) for p, v in delivered.items()}
    assert 0 < sum(len(v) for v in before.values()) < 300

    leader = c.leader()
    c.processes.kill(leader)
    survivors = [n for n in c.nodes if n is not leader]
    c.leader(timeout=20, among=survivors)
    more = insert_ids(c, ns, list(range(300, 400)), nodes=survivors)
    assert len(more) == 100
    # the group's offsets are on the survivors too: the next poll starts right after the last ack
    for p, msgs in before.items():
        offsets = survivors[0].sql(f"SELECT last_acked_offset FROM system.topic_offsets WHERE topic_id = "
                                   f"'{topic}' AND group_id = 'g' AND partition_id = {p}").raise_for_error().rows
        assert int(offsets[0][0]) == msgs[-1][0]
    drain(survivors, topic, "g", 2, delivered)

    for p, msgs in delivered.items():
        assert [o for o, _ in msgs] == list(range(len(msgs))), f"partition {p}: gaps or redeliveries"
    ids = sorted(i for msgs in delivered.values() for _, i in msgs)
    assert ids == sorted(acked + more), "every acknowledged insert is delivered exactly once"

    c.processes.start(leader)
    c.wait_for_replication(timeout=30)
    assert c.verify_state_digest()  # messages and offsets are identical on all three replicas


def test_an_unacked_poll_is_delivered_again_by_another_node(fresh_cluster):
    """Claims are node-local: a consumer that polled on one node and vanished without acking gets
    its messages from any other node at once (at-least-once), and the committed offset still wins."""
    c = fresh_cluster
    ns = c.unique_namespace("tq")
    setup_table(c, ns)
    topic = f"{ns}.feed"
    c.execute_sql_on_leader(f"CREATE TOPIC {topic}").raise_for_error()
    c.execute_sql_on_leader(f"ALTER TOPIC {topic} ADD SOURCE {ns}.t ON INSERT").raise_for_error()
    assert len(insert_ids(c, ns, list(range(10)))) == 10
    a, b, _ = c.nodes
    first = poll(a, topic, "g", 0, limit=5)
    assert [m["offset"] for m in first] == [0, 1, 2, 3, 4]
    assert [m["offset"] for m in poll(a, topic, "g", 0, limit=5)] == [5, 6, 7, 8, 9]  # claimed on a
    assert [m["offset"] for m in poll(b, topic, "g", 0, limit=3)] == [0, 1, 2]  # b never saw the claims
    ack(b, topic, "g", 0, 6)
    assert [m["offset"] for m in poll(b, topic, "g", 0, limit=10)] == [7, 8, 9]
    rows = c.get_node(2).sql(f"CONSUME FROM {topic} GROUP 'g' FROM EARLIEST").raise_for_error().rows
    assert [int(r[2]) for r in rows] == [7, 8, 9]  # SQL CONSUME with a GROUP commits what it returns
    assert poll(a, topic, "g", 0) == []
