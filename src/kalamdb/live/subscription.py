"""One live subscription's state, and the per-node index the change feed is dispatched through.

A subscription moves LOADING -> LIVE (initial data first) or CATCHING_UP -> LIVE (resume from the
change log), and back to CATCHING_UP when the node's state is replaced by a snapshot. While not
LIVE it buffers the changes the feed brings (bounded), and the service decides, with two marks,
which of them the subscriber already has:

- `base_index`: every change with a log index <= base_index is reflected in the initial rows;
- `cursor`: every change of this table (and owner) with `_seq` <= cursor has been handled.

`_seq` grows strictly in log order on every replica, so both marks say the same thing in different
units: the first comes from the consistent read of the initial rows, the second from the change
log and from what was delivered.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from kalamdb.engine.changes import Change
from kalamdb.live.filter import Filter
from kalamdb.live.protocol import Options
from kalamdb.live.query import SubscriptionQuery
from kalamdb.live.rows import TableShape

if TYPE_CHECKING:
    from kalamdb.live.connection import LiveConnection

#: changes one subscription may hold while loading or catching up (then: a clear error, or a
#: re-read of the change log); bounds memory whatever the write rate
MAX_BUFFERED_CHANGES = 10_000


class State(Enum):
    LOADING = "loading"
    CATCHING_UP = "catching_up"
    LIVE = "live"
    CLOSED = "closed"


@dataclass(eq=False)
class Subscription:
    conn: LiveConnection
    id: str
    query: SubscriptionQuery
    shape: TableShape
    filter: Filter | None
    options: Options | None
    owner: str | None  # USER/STREAM tables: whose rows; SHARED: None
    batch_size: int
    state: State = State.LOADING
    base_index: int = 0
    base_seq: int = 0  # the newest `_seq` of the table's visible rows at base_index
    cursor: int = 0
    buffer: list[Change] | None = field(default_factory=list)
    overflowed: bool = False
    # paged initial load: the next page reads rows with `_seq` > page_after at an index >= base_index
    page_after: int = 0
    batch_num: int = 0
    created_at_us: int = field(default_factory=lambda: time.time_ns() // 1000)
    last_update_us: int = 0
    delivered: int = 0

    _encoded_id: tuple[str, bytes] | None = None

    def encoded_id(self, serialization: str) -> bytes:
        """This subscription's id as change messages carry it (encoded once)."""
        cached = self._encoded_id
        if cached is None or cached[0] != serialization:
            from kalamdb.live.protocol import encode_id

            cached = self._encoded_id = (serialization, encode_id(self.id, serialization))
        return cached[1]

    @property
    def live_id(self) -> str:
        """Upstream's LiveQueryId: `{user_id}-{connection_id}-{subscription_id}`."""
        return f"{self.conn.user_id}-{self.conn.id}-{self.id}"

    @property
    def index_key(self) -> tuple[str, str | None]:
        return (self.shape.table_id, self.owner)

    @property
    def projection_key(self) -> tuple[str, ...] | None:
        return self.query.projection

    def hold(self, change: Change) -> None:
        """Buffer a change that arrived while not LIVE; on overflow forget them and say so."""
        buf = self.buffer
        if buf is None:
            return
        if len(buf) >= MAX_BUFFERED_CHANGES:
            self.overflowed = True
            buf.clear()
            return
        buf.append(change)

    def take_buffer(self) -> list[Change]:
        buf, self.buffer = self.buffer or [], None
        return buf

    def system_row(self, node_id: int) -> tuple:
        """This subscription as a row of system.live (node-local)."""
        c = self.conn
        options = "" if self.options is None else _json(self.options.to_json())
        return (self.live_id, c.id, self.id, self.query.namespace, self.query.table, c.user_id,
                self.query.sql, options, "active" if self.state is not State.CLOSED else "closed",
                self.created_at_us, self.last_update_us or self.created_at_us, self.delivered, node_id,
                int(c.last_inbound_wall * 1_000_000))


SYSTEM_LIVE_COLUMNS = [
    ("live_id", "TEXT"), ("connection_id", "TEXT"), ("subscription_id", "TEXT"), ("namespace_id", "TEXT"),
    ("table_name", "TEXT"), ("user_id", "TEXT"), ("query", "TEXT"), ("options", "TEXT"), ("status", "TEXT"),
    ("created_at", "TIMESTAMP"), ("last_update", "TIMESTAMP"), ("changes", "BIGINT"), ("node_id", "BIGINT"),
    ("last_ping_at", "TIMESTAMP"),
]


def _json(obj: Any) -> str:
    import orjson

    return orjson.dumps(obj).decode()


class SubscriptionIndex:
    """Subscriptions by (table, owner) for dispatch, by live id for KILL and system.live, and the
    per-user count for upstream's limit of 10 per user (on this node)."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str | None], list[Subscription]] = {}
        self._by_live_id: dict[str, Subscription] = {}
        self._per_user: dict[str, int] = {}

    def add(self, sub: Subscription) -> None:
        key = sub.index_key
        # copy-on-write: dispatch iterates a list that is never mutated under it
        self._by_key[key] = [*self._by_key.get(key, ()), sub]
        self._by_live_id[sub.live_id] = sub
        self._per_user[sub.conn.user_id] = self._per_user.get(sub.conn.user_id, 0) + 1

    def remove(self, sub: Subscription) -> None:
        if self._by_live_id.pop(sub.live_id, None) is None:
            return
        key = sub.index_key
        rest = [s for s in self._by_key.get(key, ()) if s is not sub]
        if rest:
            self._by_key[key] = rest
        else:
            self._by_key.pop(key, None)
        n = self._per_user.get(sub.conn.user_id, 1) - 1
        if n > 0:
            self._per_user[sub.conn.user_id] = n
        else:
            self._per_user.pop(sub.conn.user_id, None)

    def for_change(self, table: str, owner: str | None) -> list[Subscription]:
        return self._by_key.get((table, owner), [])

    def on_table(self, table: str) -> list[Subscription]:
        return [s for (t, _), subs in list(self._by_key.items()) if t == table for s in subs]

    def by_live_id(self, live_id: str) -> Subscription | None:
        return self._by_live_id.get(live_id)

    def user_count(self, user_id: str) -> int:
        return self._per_user.get(user_id, 0)

    def empty(self) -> bool:
        """No subscription at all (read from the applying thread: one dict length, no lock needed)."""
        return not self._by_live_id

    def all(self) -> Iterable[Subscription]:
        return list(self._by_live_id.values())  # a copy: safe to read from another thread

    def __len__(self) -> int:
        return len(self._by_live_id)
