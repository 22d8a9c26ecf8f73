"""Transactional workloads, checked by the Elle-style checker (`kalamdb.chaos.elle`):

- `append`: list-append over `chaos.lists (k BIGINT PRIMARY KEY, v TEXT)`, one row per key
  holding its list as space-separated elements. A transaction of 1-4 micro-operations is one
  request, `BEGIN; SELECT v FROM chaos.lists WHERE k = 3; UPDATE chaos.lists SET v = v || ' 12'
  WHERE k = 5; COMMIT`, sent to the client's own node (followers forward it to the leader).
- `rw-register`: the same over `chaos.rw_registers (k BIGINT PRIMARY KEY, v BIGINT)` with
  `SELECT v ...` and `UPDATE ... SET v = 12 ...`.

Keys follow Elle's generator: a window of `keys` active keys, the first ones more likely
(exponential), each retired after `writes_per_key` writes for a fresh one, so every key's history
stays short; appended and written values are unique (one counter). Rows for `capacity` keys are
created up front (no upsert in the dialect); past that the last window stays in use.

History: `f = "txn"` (Elle's; `rw-txn` for rw-register, so one run can hold both), the invoke's value is the micro-operations with reads nil
(`[["r", 3, null], ["append", 5, 12]]`), the ok's value the same with what each read returned. After
the recovery barrier every node reads every key it touched in one read-only transaction, so an
acknowledged append that was lost shows up as an anomaly against real time.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kalamdb.chaos.elle import check_txns
from kalamdb.chaos.elle.history import RW_TXN_F, TXN_F, pair_txn_events
from kalamdb.chaos.history import Event, HistoryRecorder, Operation
from kalamdb.chaos.workloads import NAMESPACE, ClientContext, Definite, Indefinite, Workload, _create, run_sql
from kalamdb.client import Client, Response

MAX_CASES_IN_RESULTS = 5  # explained cases per anomaly kept in results.json and the report
SETUP_BATCH = 200
SETUP_ATTEMPTS = 20
SETUP_RETRY_S = 0.25


class UnexpectedAnswer(Exception):
    """The server said success but the answer does not fit the request: recorded as info (the
    transaction may have committed), never as fail."""


@dataclass
class _Keys:
    """Elle's key generator (shared by all clients of a workload)."""

    keys: int
    writes_per_key: int
    capacity: int
    active: list[int] = field(default_factory=list)
    writes: dict[int, int] = field(default_factory=dict)
    next_key: int = 0
    next_value: int = 0
    used: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.active = list(range(self.keys))
        self.next_key = self.keys

    def txn(self, rng: random.Random, write_f: str, max_mops: int) -> list[list]:
        with self.lock:
            mops: list[list] = []
            for _ in range(rng.randint(1, max_mops)):
                i = min(int(rng.expovariate(0.7)), len(self.active) - 1)
                k = self.active[i]
                self.used.add(k)
                if rng.random() < 0.5:
                    mops.append(["r", k, None])
                    continue
                self.next_value += 1
                mops.append([write_f, k, self.next_value])
                self.writes[k] = self.writes.get(k, 0) + 1
                if self.writes[k] >= self.writes_per_key and self.next_key < self.capacity:
                    self.active[i] = self.next_key
                    self.next_key += 1
            return mops


class _TxnWorkload(Workload):
    """What the two transactional workloads share: setup, the request, final reads, the check."""

    model = "list-append"
    write_f = "append"
    f = TXN_F
    table = ""
    column_type = "TEXT"
    initial = "''"
    name = "txn"

    def __init__(self, keys: int = 6, writes_per_key: int = 24, capacity: int = 2000, max_mops: int = 4):
        self.max_mops = max_mops
        self.capacity = capacity
        self.gen = _Keys(keys, writes_per_key, capacity)

    def setup(self, admin: Client) -> None:
        _create(admin, f"CREATE SHARED TABLE IF NOT EXISTS {self.table} (k BIGINT PRIMARY KEY, v {self.column_type})")
        for start in range(0, self.capacity, SETUP_BATCH):
            end = min(self.capacity, start + SETUP_BATCH)
            rows = ", ".join(f"({k}, {self.initial})" for k in range(start, end))
            self._setup_batch(admin, f"INSERT INTO {self.table} (k, v) VALUES {rows}",
                              f"SELECT COUNT(*) FROM {self.table} WHERE k >= {start} AND k < {end}", end - start)

    @staticmethod
    def _setup_batch(admin: Client, insert: str, count: str, expected: int) -> None:
        """One batch of key rows, retried while leadership settles (a new cluster may still elect):
        a retry first counts the rows, so a batch that did apply is not inserted twice."""
        for attempt in range(SETUP_ATTEMPTS):
            try:
                if attempt and int(run_sql(admin, count).rows[0][0]) == expected:
                    return
                run_sql(admin, insert)
                return
            except (Definite, Indefinite):
                if attempt == SETUP_ATTEMPTS - 1:
                    raise
                time.sleep(SETUP_RETRY_S)  # a retry after an error, not a wait for replication

    def _statement(self, f: str, k: int, v: Any) -> str:
        raise NotImplementedError

    def _decode(self, cell: Any) -> Any:
        raise NotImplementedError

    def _sql(self, mops: list[list]) -> str:
        return "BEGIN; " + "; ".join(self._statement(f, k, v) for f, k, v in mops) + "; COMMIT"

    def _completed(self, mops: list[list], resp: Response) -> list[list]:
        results = resp.results
        if len(results) != len(mops) + 2:
            raise UnexpectedAnswer(f"{len(results)} results for a transaction of {len(mops)} statements")
        out = []
        for (f, k, v), res in zip(mops, results[1:-1], strict=True):
            if f == "r":
                rows = res.get("rows") or []
                if len(rows) != 1:
                    raise UnexpectedAnswer(f"read of key {k} returned {len(rows)} rows")
                out.append([f, k, self._decode(rows[0][0])])
            else:
                if int(res.get("row_count", 0)) != 1:
                    raise UnexpectedAnswer(f"write of key {k} changed {res.get('row_count')} rows")
                out.append([f, k, v])
        return out

    def operation(self, ctx: ClientContext, rec: HistoryRecorder) -> None:
        mops = self.gen.txn(ctx.rng, self.write_f, self.max_mops)
        sql = self._sql(mops)

        def txn(c: Client) -> Any:
            return self._completed(mops, run_sql(c, sql))
        self._call(ctx, rec, self.f, None, mops, txn)

    def final_reads(self, clients: dict[int, Client], rec: HistoryRecorder) -> None:
        keys = sorted(self.gen.used)
        if not keys:
            return
        mops = [["r", k, None] for k in keys]
        sql = f"SELECT k, v FROM {self.table} WHERE k <= {keys[-1]} ORDER BY k"
        wanted = set(keys)

        def read_all(c: Client) -> Any:
            rows = {int(k): self._decode(v) for k, v in run_sql(c, sql).rows if int(k) in wanted}
            if set(rows) != wanted:
                raise UnexpectedAnswer(f"final read is missing keys {sorted(wanted - set(rows))[:5]}")
            return [["r", k, rows[k]] for k in keys]
        for node_id, client in clients.items():
            ctx = ClientContext(-1, node_id, client.url, "", random.Random(0), 1, client=client)
            self._call(ctx, rec, self.f, None, mops, read_all, process=f"final-{self.name}-{node_id}")

    def check(self, ops: list[Operation], *, timeout: float, events: Sequence[Event] = ()) -> list[dict]:
        txns, _ = pair_txn_events(events, functions=frozenset({self.f}))
        res = check_txns(txns, model=self.model, timeout=timeout)
        anomalies = {name: [{k: v for k, v in case.items() if k != "txn"} for case in cases[:MAX_CASES_IN_RESULTS]]
                     for name, cases in res.anomalies.items()}
        out = {"name": "elle", "workload": self.name, "valid": res.verdict == "VALID", "verdict": res.verdict,
               "unknown": res.verdict == "UNKNOWN", "summary": f"elle {self.model}: {res.summary()}",
               "anomalies": anomalies, "counts": res.counts, "forbidden": res.forbidden,
               "stats": res.stats, "unknown_reasons": res.unknown_reasons}
        if res.verdict != "VALID":
            out["counterexample"] = res.format(limit=2)
        return [out]


class AppendWorkload(_TxnWorkload):
    model = "list-append"
    write_f = "append"
    table = f"{NAMESPACE}.lists"
    column_type = "TEXT"
    initial = "''"
    name = "append"

    def _statement(self, f: str, k: int, v: Any) -> str:
        if f == "r":
            return f"SELECT v FROM {self.table} WHERE k = {int(k)}"
        return f"UPDATE {self.table} SET v = v || ' {int(v)}' WHERE k = {int(k)}"

    def _decode(self, cell: Any) -> Any:
        return [int(x) for x in str(cell or "").split()]


class RwRegisterWorkload(_TxnWorkload):
    model = "rw-register"
    write_f = "w"
    f = RW_TXN_F
    table = f"{NAMESPACE}.rw_registers"
    column_type = "BIGINT"
    initial = "NULL"
    name = "rw-register"

    def _statement(self, f: str, k: int, v: Any) -> str:
        if f == "r":
            return f"SELECT v FROM {self.table} WHERE k = {int(k)}"
        return f"UPDATE {self.table} SET v = {int(v)} WHERE k = {int(k)}"

    def _decode(self, cell: Any) -> Any:
        return None if cell is None else int(cell)
