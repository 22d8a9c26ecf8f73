"""Workloads over SQL: clients that run register, set and bank operations against real nodes and
record every call and answer, so the checkers can judge what the cluster did.

The outcome of a call is classified the way Jepsen does, from what the client can know:
`ok` (it happened), `fail` (it definitely did not happen: a `definite:` error, a refused
connection, a CAS that matched no row) or `info` (it may have happened: an `indefinite:` error, a
timeout or a connection lost after sending). After an `info` the client continues as a new
process, because its old operation stays open forever in the history.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from kalamdb.chaos.bank import check_bank
from kalamdb.chaos.history import Event, HistoryRecorder, Operation
from kalamdb.chaos.linearizability import check_operations
from kalamdb.chaos.models import model_for
from kalamdb.chaos.replicas import check_monotonic_reads
from kalamdb.chaos.result import CheckerResult
from kalamdb.chaos.set_full import check_set_full
from kalamdb.client import Client, Response

if TYPE_CHECKING:
    from kalamdb.testing.cluster import ClusterTestServer

NAMESPACE = "chaos"
WORKLOAD_NAMES = ("register", "set", "bank", "append", "rw-register", "live")
TRANSPORT_BACKOFF_S = 0.05


class Definite(Exception):
    """The operation certainly did not happen (recorded as `fail`). `backoff` asks the client to
    pause a moment before its next call (nothing listens on the node: do not spin)."""

    def __init__(self, message: str, backoff: float = 0.0):
        super().__init__(message)
        self.backoff = backoff


class Indefinite(Exception):
    """The operation may have happened (recorded as `info`); `backoff` as for Definite."""

    def __init__(self, message: str, backoff: float = 0.0):
        super().__init__(message)
        self.backoff = backoff


def classify_error(resp: Response) -> Exception:
    """Map an API error answer to Definite or Indefinite from its `details` prefix; an error
    without a verdict (e.g. INTERNAL_ERROR) is treated as indefinite, the only safe guess."""
    err = resp.error or {}
    code = err.get("code", "?")
    details = str(err.get("details") or "")
    text = f"{code}: {err.get('message', '')}"
    if details.startswith("definite:") or code in ("NOT_LEADER", "LEADER_NOT_AVAILABLE"):
        return Definite(text)
    if details.startswith("indefinite:"):
        return Indefinite(text)
    if code in ("INVALID_SQL", "SQL_EXECUTION_ERROR", "PERMISSION_DENIED", "INVALID_INPUT", "UNAUTHORIZED"):
        return Definite(text)  # refused before anything was proposed
    return Indefinite(text)


def run_sql(client: Client, sql: str, params: list | None = None) -> Response:
    """One request, with transport failures turned into Definite/Indefinite."""
    try:
        resp = client.sql(sql, params)
    except ConnectionRefusedError as exc:  # nothing was sent
        raise Definite(f"connection refused: {exc}", backoff=TRANSPORT_BACKOFF_S) from None
    except (OSError, http.client.HTTPException) as exc:  # sent (maybe), no answer: unknown
        raise Indefinite(f"{type(exc).__name__}: {exc}", backoff=TRANSPORT_BACKOFF_S) from None
    if not resp.ok:
        raise classify_error(resp)
    return resp


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


@dataclass
class ClientContext:
    """What one client thread owns: its process id (bumped after an `info`), its node and RNG."""

    index: int
    node_id: int
    url: str
    password: str
    rng: random.Random
    n_clients: int
    timeout: float = 5.0
    process: int = 0
    client: Client | None = None
    backoff: float = 0.0
    unexpected: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.process = self.index

    def connection(self) -> Client:
        if self.client is None:
            self.client = Client(self.url, user="root", password=self.password, timeout=self.timeout)
        return self.client

    def crashed(self) -> None:
        """After an indeterminate op the process is 'crashed': continue under a fresh id."""
        self.process += self.n_clients
        if self.client is not None:
            self.client.close()
            self.client = None


class Workload:
    """One workload: schema setup, one random operation per call, final reads and its checkers."""

    name = "workload"
    table: ClassVar[str]  # its table, read back on every node for the final-state comparison

    def setup(self, admin: Client) -> None:
        raise NotImplementedError

    def operation(self, ctx: ClientContext, rec: HistoryRecorder) -> None:
        raise NotImplementedError

    def final_reads(self, clients: dict[int, Client], rec: HistoryRecorder) -> None:
        """Reads through every node after the recovery barrier (recorded in the history)."""

    def begin(self, cluster: ClusterTestServer, seed: int) -> None:
        """Start background activity besides the client operations (the live workload's subscribers)."""

    def end(self, cluster: ClusterTestServer, timeout: float) -> None:
        """After recovery and final reads: finish background activity (let it catch up, then stop)."""

    def close(self) -> None:
        """Stop background activity whatever happened (called when the run ends, even on error)."""

    def check(self, ops: list[Operation], *, timeout: float, events: Sequence[Event] = ()) -> list[dict]:
        """Checker results for this workload; `events` is the raw history (transactional checkers
        need the failed operations that pairing drops)."""
        raise NotImplementedError

    # helper shared by the workloads: record invoke, run, record the outcome
    def _call(self, ctx: ClientContext, rec: HistoryRecorder, f: str, key: Any, value: Any,
              body: Callable[[Client], Any], *, process: Any = None) -> Any:
        proc = ctx.process if process is None else process
        node = str(ctx.node_id)
        rec.invoke(proc, f, key, value, node)
        try:
            out = body(ctx.connection())
        except Definite as exc:
            rec.fail(proc, f, key, value, node)
            ctx.backoff = exc.backoff
            return None
        except Indefinite as exc:
            rec.info(proc, f, key, value, node)
            ctx.backoff = exc.backoff
            if process is None:
                ctx.crashed()
            return None
        except Exception as exc:  # noqa: BLE001 - a client bug must not lose the op: it stays open
            ctx.unexpected.append(f"{f}: {type(exc).__name__}: {exc}")
            rec.info(proc, f, key, value, node)
            if process is None:
                ctx.crashed()
            return None
        rec.ok(proc, f, key, out if f.endswith(("read", "txn")) else value, node)
        return out


def _create(admin: Client, ddl: str) -> None:
    run_sql(admin, f"CREATE NAMESPACE IF NOT EXISTS {NAMESPACE}")
    run_sql(admin, ddl)


# ------------------------------------------------------------------------------------ register
@dataclass
class RegisterWorkload(Workload):
    """Read / write / compare-and-set on rows of a shared table, one register per key.

    Keys rotate: the active window of `keys` keys moves on after `ops_per_key` operations per key,
    so every key's sub-history stays small enough for the WGL search (as Jepsen's independent
    keys do). Values come from a small domain so CAS often matches."""

    keys: int = 4
    ops_per_key: int = 120
    values: int = 5
    read_share: float = 0.5
    cas_share: float = 0.25
    capacity: int = 400
    name: str = "register"
    _counter: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    table = f"{NAMESPACE}.register"

    def setup(self, admin: Client) -> None:
        _create(admin, f"CREATE SHARED TABLE IF NOT EXISTS {self.table} (k BIGINT PRIMARY KEY, v BIGINT)")
        for start in range(0, self.capacity, 100):
            rows = ", ".join(f"({k}, NULL)" for k in range(start, min(self.capacity, start + 100)))
            run_sql(admin, f"INSERT INTO {self.table} (k, v) VALUES {rows}")

    def _key(self, rng: random.Random) -> int:
        with self._lock:
            n = self._counter
            self._counter += 1
        window = min(n // (self.keys * self.ops_per_key), self.capacity // self.keys - 1)
        return window * self.keys + rng.randrange(self.keys)

    def operation(self, ctx: ClientContext, rec: HistoryRecorder) -> None:
        rng = ctx.rng
        key = self._key(rng)
        roll = rng.random()
        if roll < self.read_share:
            def read(c: Client) -> Any:
                rows = run_sql(c, f"SELECT v FROM {self.table} WHERE k = $1", [key]).rows
                if len(rows) != 1:
                    raise Definite(f"register row {key} missing: {rows!r}")
                return _int(rows[0][0])
            self._call(ctx, rec, "read", key, None, read)
        elif roll < self.read_share + self.cas_share:
            old, new = rng.randrange(self.values), rng.randrange(self.values)

            def cas(c: Client) -> Any:
                resp = run_sql(c, f"UPDATE {self.table} SET v = $3 WHERE k = $1 AND v = $2", [key, old, new])
                if resp.row_count != 1:
                    raise Definite("cas did not match")
                return [old, new]
            self._call(ctx, rec, "cas", key, [old, new], cas)
        else:
            value = rng.randrange(self.values)

            def write(c: Client) -> Any:
                resp = run_sql(c, f"UPDATE {self.table} SET v = $2 WHERE k = $1", [key, value])
                if resp.row_count != 1:
                    raise Definite(f"register row {key} missing")
                return value
            self._call(ctx, rec, "write", key, value, write)

    def check(self, ops: list[Operation], *, timeout: float, events: Sequence[Event] = ()) -> list[dict]:
        mine = [o for o in ops if o.f in ("read", "write", "cas")]
        res = check_operations(mine, model_for("register"), timeout=timeout)
        out = {"name": "linearizability", "workload": self.name, "valid": res.verdict.value == "LINEARIZABLE",
               "verdict": res.verdict.value, "summary": res.summary()}
        if res.counterexample is not None:
            out["counterexample"] = res.counterexample.format()
        out["unknown"] = res.verdict.value == "UNKNOWN"
        return [out]


# ------------------------------------------------------------------------------------ set
@dataclass
class SetWorkload(Workload):
    """Unique inserts and whole-set reads; final reads through every node. Checked by set-full
    (lost, stale, duplicated, never-read) and per-node monotonic set size."""

    read_share: float = 0.1
    name: str = "set"
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    table = f"{NAMESPACE}.elements"

    def setup(self, admin: Client) -> None:
        _create(admin, f"CREATE SHARED TABLE IF NOT EXISTS {self.table} (id BIGINT PRIMARY KEY)")

    def _read(self, c: Client) -> list[int]:
        return sorted(int(r[0]) for r in run_sql(c, f"SELECT id FROM {self.table}").rows)

    def operation(self, ctx: ClientContext, rec: HistoryRecorder) -> None:
        if ctx.rng.random() < self.read_share:
            self._call(ctx, rec, "set-read", None, None, self._read)
            return
        with self._lock:
            element = self._next
            self._next += 1

        def add(c: Client) -> Any:
            run_sql(c, f"INSERT INTO {self.table} (id) VALUES ($1)", [element])
            return element
        self._call(ctx, rec, "add", None, element, add)

    def final_reads(self, clients: dict[int, Client], rec: HistoryRecorder) -> None:
        for node_id, client in clients.items():
            ctx = ClientContext(-1, node_id, client.url, "", random.Random(0), 1, client=client)
            self._call(ctx, rec, "set-read", None, None, self._read, process=f"final-set-{node_id}")

    def check(self, ops: list[Operation], *, timeout: float, events: Sequence[Event] = ()) -> list[dict]:
        mine = [o for o in ops if o.f in ("add", "set-read")]
        out = [_result(check_set_full(mine, read="set-read"), self.name)]
        out.append(_result(check_monotonic_reads(mine, version=lambda o: len(o.output or []), read="set-read"),
                           self.name))
        return out


# ------------------------------------------------------------------------------------ bank
@dataclass
class BankWorkload(Workload):
    """Transfers between accounts in BEGIN ... COMMIT; every read must see the constant total."""

    accounts: int = 5
    initial: int = 100
    read_share: float = 0.4
    name: str = "bank"

    table = f"{NAMESPACE}.bank"

    @property
    def total(self) -> int:
        return self.accounts * self.initial

    def setup(self, admin: Client) -> None:
        _create(admin, f"CREATE SHARED TABLE IF NOT EXISTS {self.table} (id BIGINT PRIMARY KEY, balance BIGINT)")
        rows = ", ".join(f"({a}, {self.initial})" for a in range(self.accounts))
        run_sql(admin, f"INSERT INTO {self.table} (id, balance) VALUES {rows}")

    def _read(self, c: Client) -> dict[str, int]:
        return {str(a): int(b) for a, b in run_sql(c, f"SELECT id, balance FROM {self.table}").rows}

    def operation(self, ctx: ClientContext, rec: HistoryRecorder) -> None:
        rng = ctx.rng
        if rng.random() < self.read_share:
            self._call(ctx, rec, "bank-read", None, None, self._read)
            return
        src, dst = rng.sample(range(self.accounts), 2)
        amount = rng.randint(1, 5)
        sql = (f"BEGIN; UPDATE {self.table} SET balance = balance - {amount} WHERE id = {src}; "
               f"UPDATE {self.table} SET balance = balance + {amount} WHERE id = {dst}; COMMIT")

        def transfer(c: Client) -> Any:
            run_sql(c, sql)
            return [src, dst, amount]
        self._call(ctx, rec, "transfer", None, [src, dst, amount], transfer)

    def final_reads(self, clients: dict[int, Client], rec: HistoryRecorder) -> None:
        for node_id, client in clients.items():
            ctx = ClientContext(-1, node_id, client.url, "", random.Random(0), 1, client=client)
            self._call(ctx, rec, "bank-read", None, None, self._read, process=f"final-bank-{node_id}")

    def check(self, ops: list[Operation], *, timeout: float, events: Sequence[Event] = ()) -> list[dict]:
        mine = [o for o in ops if o.f in ("bank-read", "transfer")]
        return [_result(check_bank(mine, total=self.total, accounts=[str(a) for a in range(self.accounts)],
                                   negative_allowed=True, read="bank-read"), self.name)]


def _result(r: CheckerResult, workload: str) -> dict:
    return {"name": r.name, "workload": workload, "valid": r.valid, "summary": r.summary(),
            "anomalies": _jsonable(r.anomalies), "stats": _jsonable(r.stats)}


def _jsonable(x: Any) -> Any:
    if isinstance(x, Operation):
        return x.describe()
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [_jsonable(v) for v in x]
    return x


def make_workloads(names: Sequence[str]) -> list[Workload]:
    """Workload objects by name; unknown names are a clear error."""
    from kalamdb.chaos.live import LiveWorkload
    from kalamdb.chaos.txn_workloads import AppendWorkload, RwRegisterWorkload

    table: dict[str, Callable[[], Workload]] = {
        "register": RegisterWorkload, "set": SetWorkload, "bank": BankWorkload,
        "append": AppendWorkload, "rw-register": RwRegisterWorkload, "live": LiveWorkload}
    out = []
    for n in names:
        if n not in table:
            raise ValueError(f"unknown workload {n!r}; choose from {', '.join(WORKLOAD_NAMES)}")
        out.append(table[n]())
    return out


def client_loop(workloads: Sequence[Workload], ctx: ClientContext, rec: HistoryRecorder,
                stop: threading.Event, pace_s: float = 0.0) -> int:
    """One client thread: random operations of the given workloads until `stop`; returns the count."""
    n = 0
    while not stop.is_set():
        wl = workloads[ctx.rng.randrange(len(workloads))]
        wl.operation(ctx, rec)
        n += 1
        pause = max(pace_s, ctx.backoff)
        ctx.backoff = 0.0
        if pause:
            stop.wait(pause)  # rate limit / back off from a dead node, not a wait for state
    if ctx.client is not None:
        ctx.client.close()
    return n


def now() -> float:
    return time.monotonic()
