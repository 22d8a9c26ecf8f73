"""The grammar of operator commands: CLUSTER ... (snapshots, elections, membership), KILL LIVE QUERY
and KILL JOB. The node layer executes CLUSTER commands; live/ and engine/storage.py the kills."""

from __future__ import annotations

import re

from kalamdb.errors import KalamError
from kalamdb.sql import statements as st
from kalamdb.sql.tokens import Cursor

_LIVE_ID_RE = re.compile(r"^[A-Za-z0-9_.@:-]{1,600}$")


def parse_kill_live(c: Cursor) -> st.KillLiveQuery:
    """`KILL LIVE QUERY <live_id>`: the id (`{user_id}-{connection_id}-{subscription_id}`) is the
    rest of the statement, optionally quoted."""
    c.i += 3
    t = c.peek()
    if t is None:
        raise KalamError("INVALID_SQL", "KILL LIVE QUERY needs a live query id (see system.live)")
    text = c.sql[t.pos:].strip()
    if t.kind == "str" and len(c.toks) == c.i + 1:  # quoted: any subscription id (no control characters)
        text = str(t.value)
        ok = 0 < len(text) <= 600 and text.isprintable()
    else:
        ok = _LIVE_ID_RE.match(text) is not None
    if not ok:
        raise KalamError("INVALID_SQL", f"Invalid live query id {text[:80]!r} (see system.live for the ids)")
    return st.KillLiveQuery(text)


def parse_kill_job(c: Cursor) -> st.KillJob:
    """`KILL JOB <job_id>`: the id is the rest of the statement, optionally quoted."""
    c.i += 2
    t = c.peek()
    job_id = str(t.value) if t is not None and t.kind == "str" and len(c.toks) == c.i + 1 else (
        c.sql[t.pos:].strip() if t is not None else "")
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", job_id):
        raise KalamError("INVALID_SQL", f"Invalid job id {job_id[:80]!r}")
    return st.KillJob(job_id)


def parse_cluster(c: Cursor) -> st.ClusterStatement:
    """`CLUSTER SNAPSHOT | PURGE n | TRIGGER ELECTION | TRANSFER LEADER n | STEPDOWN | JOIN id rpc api |
    LEAVE id | REBALANCE | CLEAR | LIST | STATUS`."""
    c.expect("CLUSTER")

    def number(what: str) -> int:
        t = c.peek()
        if t is None or t.kind != "num" or not isinstance(t.value, int) or t.value < 0:
            raise KalamError("INVALID_SQL", f"CLUSTER needs a non-negative integer {what}")
        c.i += 1
        return t.value

    def addr(what: str) -> str:
        start = c.peek()
        if start is None:
            raise KalamError("INVALID_SQL", f"CLUSTER JOIN needs {what}")
        if start.kind == "str":
            c.i += 1
            return start.value
        # an unquoted address like 127.0.0.1:9188 or http://127.0.0.1:8080: glue adjacent tokens
        text = ""
        end_pos = start.pos
        while not c.done() and c.current().pos == end_pos:
            t = c.current()
            text += t.text
            end_pos = t.pos + len(t.text)
            c.i += 1
        return text

    if c.accept("SNAPSHOT"):
        op = st.ClusterOp("snapshot")
    elif c.accept("PURGE"):
        op = st.ClusterOp("purge", upto=number("log index"))
    elif c.accept("TRIGGER", "ELECTION"):
        op = st.ClusterOp("trigger_election")
    elif c.accept("TRANSFER", "LEADER") or c.accept("TRANSFER", "LEADERSHIP"):
        op = st.ClusterOp("transfer_leader", node_id=number("node id"))
    elif c.accept("STEPDOWN") or c.accept("STEP", "DOWN"):
        op = st.ClusterOp("stepdown")
    elif c.accept("JOIN"):
        node_id = number("node id")
        op = st.ClusterOp("join", node_id=node_id, rpc_addr=addr("an rpc address"), api_addr=addr("an api address"))
    elif c.accept("LEAVE"):
        op = st.ClusterOp("leave", node_id=number("node id"))
    elif c.accept("REBALANCE"):
        op = st.ClusterOp("rebalance")  # upstream's; the node layer decides what it does
    elif c.accept("CLEAR"):
        op = st.ClusterOp("clear")
    elif c.accept("LIST"):
        op = st.ClusterOp("list")
    elif c.accept("STATUS"):
        op = st.ClusterOp("status")
    else:
        raise KalamError("INVALID_SQL", "Unknown CLUSTER command (SNAPSHOT, PURGE n, TRIGGER ELECTION, "
                         "TRANSFER LEADER n, STEPDOWN, JOIN id rpc api, LEAVE id, REBALANCE, CLEAR, LIST, STATUS)")
    c.end()
    return st.ClusterStatement(op)
