"""The `live` chaos workload: writers insert, update and delete rows of one table through every
node while subscribers on every node watch it over `/v1/ws`, through the nemesis' partitions,
kills, pauses and restarts; afterwards every stream is checked against the committed change log
(kalamdb.chaos.live_check).

Per node three subscribers run on one background event loop (each as its own user, so upstream's
limit of 10 subscriptions per user never interferes): one on the whole table, one on `grp = n`
(a column no write changes), and a churning one that subscribes afresh every few seconds with a
small batch size, so paged initial loads keep happening under faults. Subscribers reconnect to the
next node when theirs dies or stalls, and resume from their last `_seq`.

Every write carries a value no other write uses, so a delivered change names the write it came from
(and a write the client was told failed must never be delivered).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kalamdb.chaos.history import Event, HistoryRecorder, Operation
from kalamdb.chaos.live_check import Committed, Stream, check_live, committed_from_changes
from kalamdb.chaos.workloads import NAMESPACE, ClientContext, Definite, Workload, _create, _jsonable, run_sql
from kalamdb.client import Client
from kalamdb.engine.changes import Change

if TYPE_CHECKING:
    from kalamdb.testing.cluster import ClusterTestServer

log = logging.getLogger("kalamdb.chaos.live")

USER_PASSWORD = "chaos-live-subscriber"


@dataclass
class _Subscriber:
    name: str
    user: str
    urls: list[str]
    grp: int | None
    churn: bool = False


@dataclass
class LiveWorkload(Workload):
    keys: int = 24
    insert_share: float = 0.4
    delete_share: float = 0.15
    churn_s: tuple[float, float] = (1.5, 4.0)
    batch_size: int = 4
    name: str = "live"
    table = f"{NAMESPACE}.live"
    _values: Any = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    streams: list[Stream] = field(default_factory=list)
    truth: list[Committed] | None = None
    truth_note: str | None = None
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _arrived: threading.Condition = field(default_factory=threading.Condition)
    _errors: list[str] = field(default_factory=list)

    def setup(self, admin: Client) -> None:
        _create(admin, f"CREATE SHARED TABLE IF NOT EXISTS {self.table} (k BIGINT PRIMARY KEY, v BIGINT, grp INT) "
                       "WITH (ACCESS_LEVEL = 'PUBLIC')")

    # ------------------------------------------------------------------ writers
    def operation(self, ctx: ClientContext, rec: HistoryRecorder) -> None:
        rng = ctx.rng
        with self._lock:
            value = next(self._values) * 1000 + ctx.index  # unique across clients and runs of them
        k = rng.randrange(self.keys)
        roll = rng.random()
        if roll < self.insert_share:
            op, sql, params = "insert", f"INSERT INTO {self.table} (k, v, grp) VALUES ($1, $2, $3)", [k, value, k % 3]
        elif roll < 1.0 - self.delete_share:
            op, sql, params = "update", f"UPDATE {self.table} SET v = $2 WHERE k = $1", [k, value]
        else:
            op, sql, params = "delete", f"DELETE FROM {self.table} WHERE k = $1", [k]

        def write(c: Client) -> Any:
            resp = run_sql(c, sql, params)
            if op == "insert" and resp.row_count != 1:
                raise Definite("insert did not insert")
            return [op, value, resp.row_count]

        self._call(ctx, rec, "live-write", k, [op, value], write)

    # ------------------------------------------------------------------ subscribers
    def begin(self, cluster: ClusterTestServer, seed: int) -> None:
        """Create the subscribers' users and start them on a background event loop."""
        nodes = list(cluster.nodes)
        admin = cluster.leader().client(timeout=30)
        subs: list[_Subscriber] = []
        with admin:
            for n in nodes:
                urls = [n.listen_url] + [m.listen_url for m in nodes if m is not n]
                for kind, grp in (("all", None), (f"grp{n.node_id % 3}", n.node_id % 3), ("churn", None)):
                    user = f"live_n{n.node_id}_{kind}"
                    run_sql(admin, f"CREATE USER {user} WITH PASSWORD '{USER_PASSWORD}' ROLE user")
                    subs.append(_Subscriber(f"n{n.node_id}-{kind}", user, urls, grp, churn=kind == "churn"))
        cluster.wait_for_replication(timeout=30)
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, args=(subs, random.Random(f"{seed}:live"), ready),
                                        name="live-subscribers", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("live subscribers did not start within 30 s")

    def _run_loop(self, subs: list[_Subscriber], rng: random.Random, ready: threading.Event) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            tasks = [asyncio.create_task(self._subscriber(s, random.Random(rng.random()))) for s in subs]
            ready.set()
            await self._stop.wait()
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(BaseException):
                    await t

        try:
            asyncio.run(main())
        except Exception as exc:  # noqa: BLE001 - reported, never silently lost
            self._errors.append(f"subscriber loop: {type(exc).__name__}: {exc}")
            ready.set()

    async def _subscriber(self, s: _Subscriber, rng: random.Random) -> None:
        """One subscriber for the whole run; a churning one starts a new stream every few seconds."""
        for generation in itertools.count():
            stream = Stream(f"{s.name}-{generation}" if s.churn else s.name, s.grp, complete=not s.churn)
            self.streams.append(stream)
            deadline = time.monotonic() + rng.uniform(*self.churn_s) if s.churn else None
            await self._follow(s, stream, rng, deadline)
            if not s.churn:
                return

    async def _follow(self, s: _Subscriber, stream: Stream, rng: random.Random, deadline: float | None) -> None:
        """Record one stream until `deadline` (or the end of the run). A long-lived stream whose
        subscription the server ends or refuses subscribes afresh (a `reload` in the stream)."""
        from kalamdb.live.client import LiveQueryError, LiveSubscription

        where = "" if s.grp is None else f" WHERE grp = {s.grp}"
        while True:
            sub = LiveSubscription(s.urls, f"SELECT * FROM {self.table}{where}", user=s.user, password=USER_PASSWORD,
                                   batch_size=self.batch_size if s.churn else 50, subscription_id=s.name)
            try:
                async with sub:
                    async for event in sub:
                        self._record(stream, event)
                        if deadline is not None and time.monotonic() > deadline:
                            return
            except LiveQueryError as err:
                self._record(stream, {"type": "error", "code": err.code, "message": err.message})
                if s.churn:
                    return
                self._record(stream, {"type": "reload", "reason": f"{err.code}: {err.message}"})
                await asyncio.sleep(rng.uniform(0.05, 0.2))  # refused: do not spin
            except Exception as exc:  # noqa: BLE001 - recorded: the checker sees the stream end
                self._errors.append(f"{stream.name}: {type(exc).__name__}: {exc}")
                self._record(stream, {"type": "error", "code": "CLIENT", "message": str(exc)})
                return

    def _record(self, stream: Stream, event: dict) -> None:
        with self._arrived:
            stream.events.append((time.monotonic_ns(), event))
            self._arrived.notify_all()

    # ------------------------------------------------------------------ the end
    def end(self, cluster: ClusterTestServer, timeout: float) -> None:
        """Read the committed change log, wait until every long-lived stream received all of its
        changes (or the timeout), then stop the subscribers."""
        try:
            self.truth, self.truth_note = read_truth(cluster, self.table)
            deadline = time.monotonic() + timeout
            with self._arrived:
                while not self._caught_up() and (left := deadline - time.monotonic()) > 0:
                    self._arrived.wait(min(left, 1.0))
        finally:
            self.close()

    def _caught_up(self) -> bool:
        truth = self.truth or []
        for s in self.streams:
            if not s.complete:
                continue
            want = max((t.seq for t in truth if s.grp is None or t.grp == s.grp), default=0)
            got = 0
            for _, m in s.events:
                if m.get("type") == "change":
                    row = (m.get("rows") or m.get("old_values") or [{}])[0]
                    got = max(got, int(row.get("_seq", 0)))
                elif m.get("type") == "initial_data_batch" and not (m.get("batch_control") or {}).get("has_more"):
                    got = max(got, int((m.get("batch_control") or {}).get("last_seq_id") or 0))
            if got < want:
                return False
        return True

    def close(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None

    # ------------------------------------------------------------------ the checker
    def check(self, ops: list[Operation], *, timeout: float, events: Sequence[Event] = ()) -> list[dict]:
        failed = {int(e.value[1]) for e in events if e.f == "live-write" and e.type == "fail"
                  and isinstance(e.value, list) and len(e.value) == 2}
        if self.truth is None:
            return [{"name": "live-exactly-once", "workload": self.name, "valid": False, "unknown": True,
                     "summary": f"live-exactly-once: UNKNOWN (no committed change log: {self.truth_note})"}]
        res = check_live(self.truth, self.streams, failed_values=failed)
        res.stats["writes_failed"] = len(failed)
        out = {"name": res.name, "workload": self.name, "valid": res.valid, "summary": res.summary(),
               "anomalies": _jsonable(res.anomalies), "stats": _jsonable(res.stats),
               "streams": [{"name": s.name, "query": "all rows" if s.grp is None else f"grp = {s.grp}",
                            "kept_open": s.complete, **s.stats()} for s in self.streams]}
        if self._errors:
            out["client_errors"] = self._errors[:20]
        if self.truth_note:
            out["note"] = self.truth_note
        return [out]


def read_truth(cluster: ClusterTestServer, table: str) -> tuple[list[Committed] | None, str | None]:
    """The table's committed changes from the change log of every node's state (read-only), which
    must agree; None with the reason when they cannot serve as ground truth."""
    logs: dict[int, list[Committed]] = {}
    for n in cluster.nodes:
        path = Path(n.data_dir) / "state.sqlite"
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            pruned = conn.execute("SELECT value FROM _kdb_meta WHERE key = 'changes_pruned_upto'").fetchone()
            if pruned is not None and int(pruned[0]) > 0:
                return None, f"node {n.node_id} pruned its change log up to _seq {pruned[0]}"
            rows = conn.execute("SELECT seq, idx, tbl, owner, op, data FROM _kdb_changes WHERE tbl = ? ORDER BY seq",
                                (table,)).fetchall()
        finally:
            conn.close()
        logs[n.node_id] = committed_from_changes(Change.decode(*r) for r in rows)
    first = next(iter(logs.values()))
    for nid, changes in logs.items():
        if changes != first:
            return None, (f"the change logs of the nodes differ (node {nid}: {len(changes)} changes, "
                          f"another: {len(first)})")
    return first, None
