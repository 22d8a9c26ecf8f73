"""The replay harness: upstream KalamDB's own test scenarios, restated as data and run against a
real kalamdb server process over HTTP.

A scenario is a list of steps taken from one upstream test (its file is named in `source`): each
step sends one request (SQL or another endpoint) as one actor and checks what upstream's test
asserts about the answer. Steps after a failing one still run, so the report counts steps as well
as scenarios; a scenario passes only when all its steps pass.

Names in statements and expectations are written as `{name}` placeholders: each scenario run gets
its own suffix (`{ns}` becomes `ns_<suffix>`), so scenarios share one server without seeing each
other's namespaces, tables or users, the way upstream's `unique_namespace()` helpers do. Values a
step captures (`capture=`) are placeholders for the steps after it. Literal braces are doubled.
"""

from __future__ import annotations

import base64
import http.client as httpclient
import itertools
import json
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

USER_PASSWORD = "UserPass123!"  # the password the harness gives every user it creates
ROOT_PASSWORD = "UpstreamRoot123!"  # root's password on the servers the replay starts
# the replay's logins come fast from one address: allow more than upstream's default 20/s
SERVER_CONFIG = {"rate_limit": {"max_auth_requests_per_ip_per_sec": 200}}
OUTCOMES: list[Outcome] = []  # every scenario run in this session, for the report
_run_ids = itertools.count(1)
_WHOLE = re.compile(r"^\{(\w+)\}$")


# ------------------------------------------------------------------------------------------ answers


@dataclass
class Answer:
    """One HTTP answer: status, headers and the JSON body (None when the body is not JSON)."""

    status: int
    headers: dict[str, str]
    body: Any
    raw: bytes

    @property
    def ok(self) -> bool:
        return isinstance(self.body, dict) and self.body.get("status") == "success"

    @property
    def error(self) -> dict:
        err = self.body.get("error") if isinstance(self.body, dict) else None
        return err if isinstance(err, dict) else {}

    def result(self, i: int = 0) -> dict:
        results = self.body.get("results") if isinstance(self.body, dict) else None
        if not results or i >= len(results):
            return {}
        return results[i]

    def rows(self, i: int = 0) -> list[dict]:
        """Rows of result i as dicts keyed by column name."""
        res = self.result(i)
        names = [c["name"] for c in res.get("schema") or []]
        return [dict(zip(names, r)) for r in res.get("rows") or []]

    def short(self) -> str:
        text = self.raw.decode("utf-8", "replace")
        return f"HTTP {self.status}: {text[:400]}"


class Http:
    """A small keep-alive HTTP client (http.client) that also keeps the cookies it is given."""

    def __init__(self, url: str, timeout: float = 30.0):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self._conn: httpclient.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                raw_body: bytes | None = None) -> Answer:
        data = raw_body if raw_body is not None else (None if body is None else json.dumps(body).encode())
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        hdrs.update(headers or {})
        for attempt in range(2):
            if self._conn is None:
                self._conn = httpclient.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=data, headers=hdrs)
                resp = self._conn.getresponse()
                raw = resp.read()
                break
            except (ConnectionError, httpclient.HTTPException, OSError):
                self.close()
                if attempt:
                    raise
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        headers_out: dict[str, str] = {}
        for k, v in resp.getheaders():
            key = k.lower()
            headers_out[key] = f"{headers_out[key]}\n{v}" if key in headers_out else v
        return Answer(resp.status, headers_out, parsed, raw)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# ------------------------------------------------------------------------------------------ run state


class Run:
    """One scenario run: its placeholder values, the server and the actors' credentials."""

    def __init__(self, url: str, root_password: str):
        self.url = url
        self.http = Http(url)
        self.suffix = f"{next(_run_ids)}{secrets.token_hex(3)}"
        self.vars: dict[str, Any] = {"root": "root"}
        self.passwords: dict[str, str] = {"root": root_password}
        self.tokens: dict[str, str] = {}

    def fmt(self, value: Any) -> Any:
        """Fill `{name}` placeholders (recursively in lists and dicts)."""
        if isinstance(value, str):
            whole = _WHOLE.match(value)
            if whole and not isinstance(self.vars.get(whole.group(1), ""), str):
                return self.vars[whole.group(1)]  # a captured number stays a number
            return value.format_map(_Names(self))
        if isinstance(value, list):
            return [self.fmt(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self.fmt(v) for v in value)
        if isinstance(value, dict):
            return {self.fmt(k): self.fmt(v) for k, v in value.items()}
        return value

    def name(self, key: str) -> str:
        if key not in self.vars:
            self.vars[key] = f"{key}_{self.suffix}"
        return str(self.vars[key])

    def token(self, actor: str) -> str:
        """A Bearer token for an actor, from the login endpoint (as upstream's clients do)."""
        user = self.name(actor)
        if user not in self.tokens:
            for _ in range(5):  # a throttled login (429) is retried after its Retry-After, as clients do
                ans = self.http.request("POST", "/v1/api/auth/login",
                                        {"user": user, "password": self.passwords.get(user, USER_PASSWORD)})
                if ans.status != 429:
                    break
                time.sleep(min(5.0, float(ans.headers.get("retry-after", "1"))))
            token = ans.body.get("access_token") if isinstance(ans.body, dict) else None
            if ans.status != 200 or not token:
                raise StepFailed(f"login as {user!r} failed: {ans.short()}")
            self.tokens[user] = token
        return self.tokens[user]

    def forget(self, actor: str) -> None:
        self.tokens.pop(self.name(actor), None)


class _Names(dict):
    def __init__(self, run: Run):
        super().__init__()
        self.run = run

    def __missing__(self, key: str) -> str:
        return self.run.name(key)


class StepFailed(AssertionError):
    pass


# ------------------------------------------------------------------------------------------ checks

Check = Callable[[Answer, Run], None]


def same(got: Any, want: Any) -> bool:
    """Cell equality as upstream's tests judge it: 64-bit integers may come as strings."""
    if isinstance(want, bool) or want is None:
        return got is want or got == want
    if isinstance(want, int) and isinstance(got, str):
        try:
            return int(got) == want
        except ValueError:
            return False
    if isinstance(want, float) and isinstance(got, (int, float, str)) and not isinstance(got, bool):
        try:
            return abs(float(got) - want) < 1e-9
        except ValueError:
            return False
    if isinstance(want, str) and isinstance(got, (int, float)) and not isinstance(got, bool):
        return str(got) == want
    return got == want


def ok() -> Check:
    def check(a: Answer, run: Run) -> None:
        if not a.ok:
            raise StepFailed(f"expected success, got {a.short()}")
    check.expects_error = False  # type: ignore[attr-defined]
    return check


def err(*contains: str, code: str | None = None, status: int | None = None, any_of: Sequence[str] = ()) -> Check:
    """An error answer whose message contains every `contains` (case-insensitive) and, when given,
    one of `any_of`, with the given code and HTTP status."""
    def check(a: Answer, run: Run) -> None:
        if a.ok or a.status < 400:
            raise StepFailed(f"expected an error, got {a.short()}")
        msg = str(a.error.get("message", "")).lower()
        for c in contains:
            if run.fmt(c).lower() not in msg:
                raise StepFailed(f"error message lacks {run.fmt(c)!r}: {a.short()}")
        if any_of and not any(run.fmt(c).lower() in msg for c in any_of):
            raise StepFailed(f"error message has none of {list(any_of)}: {a.short()}")
        if code is not None and a.error.get("code") != code:
            raise StepFailed(f"expected code {code}: {a.short()}")
        if status is not None and a.status != status:
            raise StepFailed(f"expected HTTP {status}: {a.short()}")
    check.expects_error = True  # type: ignore[attr-defined]
    return check


def rows(n: int, result: int = 0) -> Check:
    def check(a: Answer, run: Run) -> None:
        got = len(a.rows(result))
        if got != n:
            raise StepFailed(f"expected {n} row(s), got {got}: {a.short()}")
    return check


def min_rows(n: int, result: int = 0) -> Check:
    def check(a: Answer, run: Run) -> None:
        got = len(a.rows(result))
        if got < n:
            raise StepFailed(f"expected at least {n} row(s), got {got}: {a.short()}")
    return check


def cell(column: str, want: Any, row: int = 0, result: int = 0) -> Check:
    def check(a: Answer, run: Run) -> None:
        rs = a.rows(result)
        if row >= len(rs):
            raise StepFailed(f"no row {row}: {a.short()}")
        if column not in rs[row]:
            raise StepFailed(f"no column {column!r} in {list(rs[row])}")
        w = run.fmt(want)
        if not same(rs[row][column], w):
            raise StepFailed(f"{column} = {rs[row][column]!r}, expected {w!r}")
    return check


def has_row(**want: Any) -> Check:
    """Some row has all the given column values."""
    def check(a: Answer, run: Run) -> None:
        w = run.fmt(want)
        for r in a.rows():
            if all(k in r and same(r[k], v) for k, v in w.items()):
                return
        raise StepFailed(f"no row with {w}: {a.short()}")
    return check


def no_row(**want: Any) -> Check:
    def check(a: Answer, run: Run) -> None:
        w = run.fmt(want)
        for r in a.rows():
            if all(k in r and same(r[k], v) for k, v in w.items()):
                raise StepFailed(f"unexpected row with {w}: {a.short()}")
    return check


def column_values(column: str, want: Sequence[Any]) -> Check:
    """The column's values, in order."""
    def check(a: Answer, run: Run) -> None:
        got = [r.get(column) for r in a.rows()]
        w = run.fmt(list(want))
        if len(got) != len(w) or not all(same(g, x) for g, x in zip(got, w)):
            raise StepFailed(f"{column} values {got}, expected {w}")
    return check


def columns(*names: str) -> Check:
    """The result's schema has these columns (others may follow)."""
    def check(a: Answer, run: Run) -> None:
        got = [c["name"] for c in a.result().get("schema") or []]
        missing = [n for n in names if n not in got]
        if missing:
            raise StepFailed(f"columns {missing} missing from {got}")
    return check


def message(*contains: str, result: int = 0) -> Check:
    def check(a: Answer, run: Run) -> None:
        msg = str(a.result(result).get("message", ""))
        for c in contains:
            if run.fmt(c) not in msg:
                raise StepFailed(f"message {msg!r} lacks {run.fmt(c)!r}")
    return check


def row_count(n: int, result: int = 0) -> Check:
    def check(a: Answer, run: Run) -> None:
        got = a.result(result).get("row_count")
        if got != n:
            raise StepFailed(f"row_count {got!r}, expected {n}: {a.short()}")
    return check


def status(code: int) -> Check:
    def check(a: Answer, run: Run) -> None:
        if a.status != code:
            raise StepFailed(f"expected HTTP {code}, got {a.short()}")
    check.expects_error = code >= 400  # type: ignore[attr-defined]
    return check


def body(predicate: Callable[[Any], bool], what: str) -> Check:
    """An arbitrary condition on the JSON body."""
    def check(a: Answer, run: Run) -> None:
        try:
            good = predicate(a.body)
        except (KeyError, TypeError, IndexError, ValueError, AttributeError):
            good = False
        if not good:
            raise StepFailed(f"expected {what}: {a.short()}")
    return check


def satisfies(predicate: Callable[[Answer, Run], bool], what: str, *, error: bool = False) -> Check:
    """An arbitrary condition on the answer; `error=True` when it is about an error answer (then
    success is not required)."""
    def check(a: Answer, run: Run) -> None:
        try:
            good = predicate(a, run)
        except (KeyError, TypeError, IndexError, ValueError, AttributeError):
            good = False
        if not good:
            raise StepFailed(f"expected {what}: {a.short()}")
    if error:
        check.expects_error = True  # type: ignore[attr-defined]
    return check


# ------------------------------------------------------------------------------------------ steps


@dataclass
class Step:
    describe: str
    action: Callable[[Run], Answer]
    checks: tuple[Check, ...]
    capture: dict[str, Callable[[Answer], Any]] = field(default_factory=dict)
    retry_s: float = 0.0  # > 0: repeat until the checks pass or this many seconds have gone

    def run(self, r: Run) -> None:
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                answer = self.action(r)
                checks = self.checks or (ok(),)
                if not any(getattr(c, "expects_error", None) is not None for c in checks):
                    checks = (ok(), *checks)
                for c in checks:
                    c(answer, r)
                for name, get in self.capture.items():
                    r.vars[name] = get(answer)
                return
            except (StepFailed, KeyError, IndexError, TypeError, ValueError) as e:
                if time.monotonic() >= deadline:
                    if isinstance(e, StepFailed):
                        raise
                    raise StepFailed(f"{type(e).__name__}: {e}") from None
                time.sleep(0.05)  # polling a server-side condition (a job, a feed) with a deadline


def _auth_header(r: Run, actor: str | None, auth: str) -> dict[str, str]:
    if actor is None or auth == "none":
        return {}
    if auth == "basic":
        user = r.name(actor)
        cred = base64.b64encode(f"{user}:{r.passwords.get(user, USER_PASSWORD)}".encode()).decode()
        return {"Authorization": f"Basic {cred}"}
    return {"Authorization": f"Bearer {r.token(actor)}"}


def sql(text: str, *checks: Check, as_: str = "root", params: list | None = None,
        namespace: str | None = None, capture: dict | None = None, retry_s: float = 0.0,
        auth: str = "bearer") -> Step:
    """One POST /v1/api/sql as `as_` (a placeholder name, or "root")."""
    def action(r: Run) -> Answer:
        body: dict[str, Any] = {"sql": r.fmt(text)}
        if params is not None:
            body["params"] = r.fmt(params)
        if namespace is not None:
            body["namespace_id"] = r.fmt(namespace)
        return r.http.request("POST", "/v1/api/sql", body, _auth_header(r, as_, auth))
    return Step(f"[{as_}] {text}", action, checks, capture or {}, retry_s)


def http(method: str, path: str, *checks: Check, json_body: Any = None, as_: str | None = None,
         headers: dict[str, str] | None = None, capture: dict | None = None, retry_s: float = 0.0,
         auth: str = "bearer", raw_body: bytes | None = None) -> Step:
    """Any other request; `as_=None` sends no credentials."""
    def action(r: Run) -> Answer:
        hdrs = _auth_header(r, as_, auth)
        hdrs.update(r.fmt(headers or {}))
        return r.http.request(method, r.fmt(path), r.fmt(json_body), hdrs, raw_body=raw_body)
    return Step(f"{method} {path}", action, checks, capture or {}, retry_s)


def user(name: str, role: str = "user", password: str = USER_PASSWORD, email: bool = True) -> Step:
    """CREATE USER as root (upstream's tests make their users with a helper; here it is a step)."""
    def action(r: Run) -> Answer:
        uid = r.name(name)
        r.passwords[uid] = password
        r.tokens.pop(uid, None)
        mail = f" EMAIL '{uid}@example.com'" if email else ""
        return r.http.request("POST", "/v1/api/sql", {
            "sql": f"CREATE USER '{uid}' WITH PASSWORD '{password}' ROLE {role}{mail}"},
            _auth_header(r, "root", "bearer"))
    return Step(f"create user {name} ({role})", action, ())


def relogin(name: str) -> Step:
    """Forget an actor's token so the next request logs in again."""
    def action(r: Run) -> Answer:
        r.forget(name)
        return Answer(200, {}, {"status": "success"}, b"")
    return Step(f"forget token of {name}", action, ())


# ------------------------------------------------------------------------------------------ scenarios


@dataclass
class Scenario:
    name: str
    source: str  # the upstream test file (and test function) the steps come from
    steps: list[Step]
    fresh: bool = False  # needs a server of its own (e.g. it changes root's password)
    server_options: dict = field(default_factory=dict)  # for fresh servers: start_server(**options)


@dataclass
class Outcome:
    scenario: str
    source: str
    steps: int
    passed: int
    failures: list[str]

    @property
    def ok(self) -> bool:
        return self.passed == self.steps


def run_scenario(s: Scenario, url: str, root_password: str) -> Outcome:
    r = Run(url, root_password)
    failures: list[str] = []
    passed = 0
    try:
        for i, step in enumerate(s.steps, 1):
            try:
                step.run(r)
                passed += 1
            except (StepFailed, OSError) as e:
                failures.append(f"step {i} {r.fmt(step.describe)[:160]!r}: {e}")
    finally:
        r.http.close()
    return Outcome(s.name, s.source, len(s.steps), passed, failures)
