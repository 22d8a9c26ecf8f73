"""Every password check (login, refresh's user check, Basic credentials) goes through `Logins`:

1. Throttling: a token bucket per client address (upstream's `max_auth_requests_per_ip_per_sec`,
   default 20) and one per user name; every check spends a token of both and a successful one
   gives them back; over either, 429 `RATE_LIMIT_EXCEEDED` with Retry-After.
2. Lockout: a user with `max_failed_logins` (5) failures is locked for `lockout_minutes` (15): 401
   `ACCOUNT_LOCKED` before any password is checked. Failures and the reset after a success are
   replicated commands (engine/logins.py), so a lockout holds on every node and shows in
   system.users. Names that are no user are locked the same way, node-locally, so a lockout does
   not tell which names exist.
3. No username enumeration: an unknown (or dropped) name costs one argon2 verification against a
   dummy hash, as a real user's wrong password does.
4. Root without a password: an empty password answers 428 `SETUP_REQUIRED` (use
   POST /v1/api/auth/setup), unless `auth.allow_empty_root_on_localhost` is set (what `make run`
   does) and the caller is on this machine.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kalamdb.engine import logins as elogins
from kalamdb.engine.passwords import hash_password, verify_password
from kalamdb.engine.types import Prepared, Principal
from kalamdb.errors import KalamError, RetryLater
from kalamdb.node.clock import clock

if TYPE_CHECKING:
    from kalamdb.engine import Database
    from kalamdb.node.api import Node

log = logging.getLogger("kalamdb.auth")

ROOT = Principal("root", "root", "system")
_BOOKS_LIMIT = 50_000  # buckets and unknown-name counters kept per node (least recently used go first)


@dataclass
class LoginPolicy:
    allow_empty_root_on_localhost: bool = False
    max_failed_logins: int = 5
    lockout_minutes: int = 15
    auth_requests_per_ip_per_sec: int = 20
    auth_requests_per_user_per_sec: int = 10
    allow_remote_setup: bool = False

    @classmethod
    def from_config(cls, cfg: Any) -> LoginPolicy:
        a = cfg.auth
        return cls(a.allow_empty_root_on_localhost, a.max_failed_logins, a.lockout_minutes,
                   cfg.rate_limit.max_auth_requests_per_ip_per_sec, a.max_login_attempts_per_user_per_sec,
                   a.allow_remote_setup)


class Throttle:
    """Token buckets by key: `rate` requests per second, bursts up to `rate`."""

    def __init__(self, rate: int):
        self.rate = max(1, rate)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None, *, consume: bool = True) -> float:
        """0 if a request may go now (using up one token when `consume`), else the seconds until
        one may."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._buckets.pop(key, (float(self.rate), now))
            tokens = min(float(self.rate), tokens + (now - at) * self.rate)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
            if wait == 0.0 and consume:
                tokens -= 1.0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > _BOOKS_LIMIT:
                self._buckets.popitem(last=False)
            return wait

    def refund(self, key: str) -> None:
        """Give back the token of an attempt that succeeded."""
        with self._lock:
            if key in self._buckets:
                tokens, at = self._buckets[key]
                self._buckets[key] = (min(float(self.rate), tokens + 1.0), at)


def rate_limited(wait_s: float) -> RetryLater:
    return RetryLater("RATE_LIMIT_EXCEEDED", "Too many authentication attempts. Please retry shortly.",
                      retry_after=max(1, math.ceil(wait_s)))


class Logins:
    def __init__(self, db: Database, node: Node, policy: LoginPolicy):
        self.db, self.node, self.policy = db, node, policy
        self.by_address = Throttle(policy.auth_requests_per_ip_per_sec)
        self.by_user = Throttle(policy.auth_requests_per_user_per_sec)
        self._unknown: OrderedDict[str, tuple[int, float]] = OrderedDict()  # name -> (failures, locked until)
        self._unknown_lock = threading.Lock()
        self._dummy_hash: str | None = None

    def stamp(self, user_id: str, key: bytes) -> str | None:
        """The credential stamp tokens of this user must carry (engine/logins.py)."""
        return elogins.credential_stamp(self.db, user_id, key)

    # ---- the checks ---------------------------------------------------------------------------
    def admit(self, username: str, remote: str | None) -> None:
        """Throttle an authentication attempt before it costs anything: each attempt spends a
        token of its address and of its user name (none is spent when either has none left)."""
        address = remote or "unknown"
        wait = max(self.by_address.take(address, consume=False),
                   self.by_user.take(username, consume=False) if username else 0.0)
        if wait:
            raise rate_limited(wait)
        self.by_address.take(address)
        if username:
            self.by_user.take(username)

    async def verify(self, username: str, password: str, remote: str | None, *, is_local: bool) -> Principal:
        """A password check. A success gives its tokens back, so clients with the right
        credentials are never held back (concurrent checks of the same credentials are merged
        into one by the Authenticator); guessing spends them."""
        if not isinstance(username, str) or not username or not isinstance(password, str):
            raise _invalid()
        self.admit(username, remote)
        principal = await self._check(username, password, remote, is_local)
        self.by_address.refund(remote or "unknown")
        self.by_user.refund(username)
        return principal

    async def _check(self, username: str, password: str, remote: str | None, is_local: bool) -> Principal:
        loop = asyncio.get_running_loop()
        rec = await loop.run_in_executor(None, elogins.user_by_name, self.db, username)
        if rec is not None and rec.user_id == "root" and not rec.password_hash and not self.db.root_password:
            # root has no password at all: nothing to guess, so nothing to count or lock
            if password == "" and self.policy.allow_empty_root_on_localhost and is_local:
                return ROOT
            if password == "":
                raise KalamError("SETUP_REQUIRED", "Server requires initial setup. Root password is not configured.",
                                 status=428)
            await loop.run_in_executor(None, self._dummy_verify, password)
            raise _invalid()
        self._check_lock(username, rec)
        if rec is None or (not rec.password_hash and rec.user_id != "root"):
            await loop.run_in_executor(None, self._dummy_verify, password)  # as long as a real check
            self._unknown_failed(username)
            raise _invalid()
        try:
            principal = await loop.run_in_executor(None, self.db.authenticate, username, password)
        except KalamError as err:
            if err.code != "INVALID_CREDENTIALS":
                raise
            await self._record(rec.user_id, ok=False)
            raise _invalid() from None
        if rec.failed_login_attempts:
            await self._record(rec.user_id, ok=True)
        return principal

    def _check_lock(self, username: str, rec: Any) -> None:
        now_us = clock.now_us()
        if rec is not None:
            locked_until = rec.locked_until
        else:
            with self._unknown_lock:
                _, until = self._unknown.get(username, (0, 0.0))
            locked_until = until or None
        if locked_until and locked_until > now_us:
            minutes = max(1, math.ceil((locked_until - now_us) / 60_000_000))
            raise KalamError("ACCOUNT_LOCKED", f"Account is locked after too many failed logins. Try again in "
                             f"{minutes} minute(s).", status=401)

    def _unknown_failed(self, username: str) -> None:
        with self._unknown_lock:
            failures, _ = self._unknown.pop(username, (0, 0.0))
            failures += 1
            until = clock.now_us() + self.policy.lockout_minutes * 60_000_000 \
                if failures >= self.policy.max_failed_logins else 0
            self._unknown[username] = (failures, until)
            if len(self._unknown) > _BOOKS_LIMIT:
                self._unknown.popitem(last=False)

    def _dummy_verify(self, password: str) -> None:
        if self._dummy_hash is None:
            self._dummy_hash = hash_password("kalamdb-no-such-user")
        verify_password(self._dummy_hash, password)

    async def _record(self, user_id: str, *, ok: bool) -> None:
        """Replicate a login outcome. Best effort: if the cluster cannot take a write now (no
        leader), the answer to the caller does not wait for it."""
        event = elogins.LoginEvent(user_id, ok, self.policy.max_failed_logins, self.policy.lockout_minutes * 60)
        prepared = Prepared("", [event], [], "default", ROOT, True)
        try:
            command = self.db.to_command(prepared, now_us=clock.now_us(), node_id=self.node.node_id)
            await self.node.submit(command)
        except Exception as exc:  # noqa: BLE001 - a bookkeeping failure must not change the login's answer
            log.warning("could not record a %s login of %s: %s", "successful" if ok else "failed", user_id, exc)


def _invalid() -> KalamError:
    return KalamError("INVALID_CREDENTIALS", "Invalid credentials")
