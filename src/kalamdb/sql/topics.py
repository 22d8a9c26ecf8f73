"""Topic statements (upstream KalamDB's change-feed topics) and their grammar:

    CREATE TOPIC ns.name [PARTITIONS n]
    ALTER TOPIC t ADD SOURCE [ns.]table ON INSERT|UPDATE|DELETE [WHERE expr] [WITH (payload = 'key|full|diff')]
    DROP TOPIC t          CLEAR TOPIC t
    CONSUME FROM t [GROUP 'g'] [FROM EARLIEST|LATEST|n] [LIMIT n]
    ACK t GROUP 'g' [PARTITION p] UPTO OFFSET n

The parser reads the tokens of kalamdb.sql.tokens' cursor; execution is engine/topics.py."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kalamdb.errors import KalamError
from kalamdb.sql import statements as st

_NAME = re.compile(r"^[A-Za-z0-9_]+$")
GROUP_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
MAX_PARTITIONS = 256
MAX_OFFSET = (1 << 63) - 1
OPS = ("insert", "update", "delete")
PAYLOAD_MODES = ("key", "full", "diff")
MAX_FILTER_CHARS = 4096


class TopicStatement(st.Statement):
    """Marker base of the statements engine/topics.py executes."""


@dataclass
class CreateTopic(TopicStatement):
    tag: ClassVar[str] = "create_topic"
    writes: ClassVar[bool] = True
    topic: str  # "ns.name"
    partitions: int = 1


@dataclass
class DropTopic(TopicStatement):
    tag: ClassVar[str] = "drop_topic"
    writes: ClassVar[bool] = True
    topic: str


@dataclass
class ClearTopic(TopicStatement):
    tag: ClassVar[str] = "clear_topic"
    writes: ClassVar[bool] = True
    topic: str


@dataclass
class AddTopicSource(TopicStatement):
    tag: ClassVar[str] = "add_topic_source"
    writes: ClassVar[bool] = True
    topic: str
    namespace: str
    table: str
    op: str  # insert | update | delete
    payload_mode: str = "full"
    filter_expr: str | None = None  # stored and shown, not applied (as upstream)


@dataclass
class Consume(TopicStatement):
    """Read a topic partition. With a GROUP (SQL) the offset of the last message returned is
    committed in the same log entry, so the statement is a write; without one it is a read. The
    HTTP endpoint sets `claims`: a read that records node-local claims instead of committing."""

    tag: ClassVar[str] = "consume"
    reads_data: ClassVar[bool] = True
    topic: str
    group: str | None = None
    position: Any = "latest"  # "earliest" | "latest" | offset (int)
    limit: int | None = None
    partition: int = 0
    claims: bool = field(default=False, metadata={"wire": False})

    @property
    def is_write(self) -> bool:
        return self.group is not None and not self.claims


@dataclass
class Ack(TopicStatement):
    tag: ClassVar[str] = "ack_topic"
    writes: ClassVar[bool] = True
    topic: str
    group: str
    partition: int
    offset: int


st.register(CreateTopic, DropTopic, ClearTopic, AddTopicSource, Consume, Ack)


def starts_topic_statement(c: Any) -> bool:
    """Whether the cursor is at one of the statements above."""
    first = c.peek().upper if c.peek() is not None else ""
    if first in ("CONSUME", "ACK"):
        return True
    return first in ("CREATE", "DROP", "ALTER", "CLEAR") and c.at(first, "TOPIC")


def parse_topic_statement(c: Any) -> TopicStatement:
    if c.accept("CREATE", "TOPIC"):
        topic = _topic(c)
        if "." not in topic:
            raise KalamError("INVALID_SQL", "Topic name must be namespace-qualified: <namespace>.<topic>")
        partitions = 1
        if c.accept("PARTITIONS"):
            partitions = _int(c, "Partition count must be a positive integer", low=1)
            if partitions > MAX_PARTITIONS:
                raise KalamError("INVALID_SQL", f"A topic may have at most {MAX_PARTITIONS} partitions")
        c.end()
        return CreateTopic(topic, partitions)
    if c.accept("DROP", "TOPIC"):
        topic = _topic(c)
        c.end()
        return DropTopic(topic)
    if c.accept("CLEAR", "TOPIC"):
        topic = _topic(c)
        c.end()
        return ClearTopic(topic)
    if c.accept("ALTER", "TOPIC"):
        return _parse_add_source(c)
    if c.accept("CONSUME"):
        return _parse_consume(c)
    c.expect("ACK")
    topic = _topic(c)
    if not c.accept("GROUP"):
        raise KalamError("INVALID_SQL", "ACK requires GROUP clause")
    group = _group(c)
    partition = 0
    if c.accept("PARTITION"):
        partition = _int(c, "PARTITION must be a non-negative integer")
    if not c.accept("UPTO", "OFFSET"):
        raise KalamError("INVALID_SQL", "ACK requires UPTO OFFSET clause")
    offset = _int(c, "Invalid offset: must be a non-negative integer")
    c.end()
    return Ack(topic, group, partition, offset)


def _parse_add_source(c: Any) -> AddTopicSource:
    topic = _topic(c)
    c.expect("ADD", "SOURCE")
    first = _name(c, "table name")
    if c.accept_op("."):
        namespace, table = first, _name(c, "table name")
    else:
        namespace, table = "default", first
    c.expect("ON")
    t = c.peek()
    op = t.upper.lower() if t is not None else ""
    if op not in OPS:
        raise KalamError("INVALID_SQL", f"Invalid operation '{t.text if t else ''}'. Expected INSERT, UPDATE, "
                         "or DELETE")
    c.i += 1
    filter_expr = None
    if c.accept("WHERE"):
        start = c.peek()
        if start is None:
            raise KalamError("INVALID_SQL", "Expected a condition after WHERE")
        depth, end_pos = 0, len(c.sql)
        while not c.done():
            t = c.peek()
            if t.kind == "op" and t.text == "(":
                depth += 1
            elif t.kind == "op" and t.text == ")":
                depth -= 1
            elif depth == 0 and t.upper == "WITH":
                end_pos = t.pos
                break
            c.i += 1
        filter_expr = c.sql[start.pos:end_pos].strip()
        if len(filter_expr) > MAX_FILTER_CHARS:
            raise KalamError("INVALID_SQL", f"A source filter may have at most {MAX_FILTER_CHARS} characters")
    payload = "full"
    if c.accept("WITH"):
        c.expect_op("(")
        key = c.name("option").lower()
        if key != "payload":
            raise KalamError("INVALID_SQL", "Expected 'payload' parameter in WITH clause")
        c.expect_op("=")
        t = c.peek()
        if t is None or t.kind not in ("str", "word"):
            raise KalamError("INVALID_SQL", "Expected a payload mode: 'key', 'full' or 'diff'")
        c.i += 1
        payload = str(t.value).lower()
        if payload not in PAYLOAD_MODES:
            raise KalamError("INVALID_SQL", f"Invalid payload mode '{t.value}'. Expected 'key', 'full', or 'diff'")
        c.expect_op(")")
    c.end()
    return AddTopicSource(topic, namespace, table, op, payload, filter_expr)


def _parse_consume(c: Any) -> Consume:
    c.expect("FROM")
    topic = _topic(c)
    group = None
    position: Any = "latest"
    limit = None
    while not c.done():
        if c.accept("GROUP"):
            group = _group(c)
        elif c.accept("FROM"):
            t = c.peek()
            if t is not None and t.upper in ("EARLIEST", "LATEST"):
                position = t.upper.lower()
                c.i += 1
            else:
                position = _int(c, "Invalid offset after FROM: use EARLIEST, LATEST or a number")
        elif c.accept("LIMIT"):
            limit = _int(c, "LIMIT must be a positive integer", low=1)
        else:
            raise KalamError("INVALID_SQL", f"Unexpected {c.peek().text!r} in CONSUME (expected GROUP, FROM or LIMIT)")
    return Consume(topic, group, position, limit)


def _name(c: Any, what: str) -> str:
    name = c.name(what)
    if not _NAME.match(name):
        raise KalamError("INVALID_SQL", f"Invalid {what} '{name}': use letters, digits and underscore")
    return name.lower()


def _topic(c: Any) -> str:
    first = _name(c, "topic name")
    if c.accept_op("."):
        return f"{first}.{_name(c, 'topic name')}"
    return first


def _group(c: Any) -> str:
    t = c.peek()
    if t is None or t.kind not in ("str", "word"):
        raise KalamError("INVALID_SQL", "Expected a consumer group id after GROUP")
    c.i += 1
    group = str(t.value)
    if not GROUP_RE.match(group):
        raise KalamError("INVALID_SQL", "A consumer group id is 1-128 letters, digits or _ . : @ -")
    return group


def _int(c: Any, message: str, low: int = 0) -> int:
    t = c.peek()
    if t is None or t.kind != "num" or not isinstance(t.value, int) or not low <= t.value <= MAX_OFFSET:
        raise KalamError("INVALID_SQL", message)
    c.i += 1
    return t.value
