"""Who is calling: Bearer JWT (HS256) or Basic credentials, turned into an engine Principal.

Password hashes are deliberately slow (argon2, tens of ms), so a successful Basic verification is
cached under a keyed hash (BLAKE2b with a per-process key) of the credentials: the hot path costs a
few microseconds, the plaintext is never kept, entries live at most CACHE_TTL_S, and the whole cache
is dropped whenever users change.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jwt

from kalamdb.errors import KalamError
from kalamdb.node.clock import clock

if TYPE_CHECKING:
    from kalamdb.engine import Principal
    from kalamdb.server.logins import LoginPolicy, Logins

log = logging.getLogger("kalamdb.auth")

ISSUER = "kalamdb"
_CACHE_LIMIT = 10_000
# Defence in depth: even without a change signal, a cached verification is trusted this long at most.
CACHE_TTL_S = 60.0
REFRESH_FACTOR = 7  # a refresh token lives 7 times as long as an access token (upstream)
LOCAL_ADDRESSES = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


def is_local_address(remote: str | None) -> bool:
    return remote is not None and (remote in LOCAL_ADDRESSES or remote.startswith("127."))


class Authenticator:
    """Verifies credentials against the engine's users and issues access tokens."""

    def __init__(
        self,
        *,
        verify_password: Callable[[str, str], Principal],
        principal_for: Callable[[str], Principal | None],
        jwt_secret: str,
        jwt_expiry_hours: float = 24.0,
        users_version: Callable[[], object] | None = None,
        policy: LoginPolicy | None = None,
    ):
        self._verify_password = verify_password
        self._principal_for = principal_for
        self._secret = jwt_secret
        self._expiry_s = jwt_expiry_hours * 3600.0
        self._cache_key = secrets.token_bytes(32)  # per process: cache keys mean nothing elsewhere
        # key -> (principal, trusted until (monotonic)); token cache: token -> (principal, exp, until)
        self._basic_cache: dict[bytes, tuple[Principal, float]] = {}
        self._inflight: dict[bytes, asyncio.Future[Principal]] = {}  # credentials being verified right now
        self._token_cache: dict[str, tuple[Principal, float, float]] = {}
        # A counter the storage bumps whenever users change (on every replica); None = not offered,
        # then only users_changed() and the TTL invalidate.
        self._users_version = users_version
        self._seen_version = users_version() if users_version is not None else None
        self._generation = 0  # bumped by every invalidation
        #: the login rules (server/logins.py LoginPolicy); None: only the checks in this module
        self.policy = policy
        #: throttling, lockout, setup state and token stamps (server/logins.py), installed with the
        #: auth routes; None in unit tests that build an Authenticator alone
        self.logins: Logins | None = None
        self._stamp_key = hmac.new(jwt_secret.encode(), b"kalamdb-credential-stamp", hashlib.sha256).digest()

    def install_logins(self, logins: Logins) -> None:
        self.logins = logins

    def stamp(self, user_id: str) -> str | None:
        """The user's current credential stamp (None without the login rules installed)."""
        return self.logins.stamp(user_id, self._stamp_key) if self.logins is not None else None

    # ---- tokens -------------------------------------------------------------------------------
    def issue_token(self, principal: Principal, *, now: float | None = None, token_type: str = "access") -> tuple[str, float]:
        """An access (or refresh: 7 times as long, as upstream) token for `principal` and its
        expiry (unix seconds). It carries the user's credential stamp: a password or role change
        invalidates it."""
        now = clock.time() if now is None else now
        exp = now + self._expiry_s * (REFRESH_FACTOR if token_type == "refresh" else 1)
        claims = {
            "iss": ISSUER,
            "sub": principal.user_id,
            "username": principal.username,
            "role": principal.role.lower(),
            "token_type": token_type,
            "iat": int(now),
            "exp": int(exp),
        }
        stamp = self.stamp(principal.user_id)
        if stamp is not None:
            claims["cst"] = stamp
        return jwt.encode(claims, self._secret, algorithm="HS256"), float(int(exp))

    def decode(self, token: str, token_type: str) -> dict:
        """The claims of a valid, unexpired token of the given type (signature and issuer checked)."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                issuer=ISSUER,
                # expiry is judged by the node clock (kalamdb.node.clock), not by PyJWT reading time.time()
                options={"require": ["exp", "sub", "iss"], "verify_exp": False, "verify_iat": False},
            )
            if not isinstance(claims["exp"], int | float) or claims["exp"] <= clock.time():
                raise jwt.ExpiredSignatureError("Signature has expired")
        except jwt.ExpiredSignatureError:
            raise KalamError("TOKEN_EXPIRED", "Token has expired; log in again") from None
        except jwt.InvalidTokenError as exc:
            raise KalamError("INVALID_TOKEN", f"Invalid token: {exc}") from None
        if claims.get("token_type", "access") != token_type:
            raise KalamError("INVALID_TOKEN", f"Invalid token: not an {token_type} token" if token_type == "access"
                             else f"Invalid token: not a {token_type} token")
        return claims

    def check_stamp(self, claims: dict) -> None:
        """Refuse a token issued before its user's password or role changed."""
        if self.logins is None:
            return
        current = self.stamp(str(claims["sub"]))
        if current is None or not isinstance(claims.get("cst"), str) or not hmac.compare_digest(claims["cst"], current):
            raise KalamError("INVALID_TOKEN", "Invalid token: the user's password or role changed since it was "
                             "issued; log in again")

    def verify_token(self, token: str) -> Principal:
        self._check_version()
        cached = self._token_cache.get(token)
        if cached is not None:
            principal, exp, until = cached
            if clock.time() >= exp:
                self._token_cache.pop(token, None)
                raise KalamError("TOKEN_EXPIRED", "Token has expired; log in again")
            if time.monotonic() < until:
                return principal
        claims = self.decode(token, "access")
        found = self._principal_for(str(claims["sub"]))
        if found is None:
            raise KalamError("INVALID_TOKEN", "Invalid token: the user no longer exists")
        self.check_stamp(claims)
        self._remember(self._token_cache, token, (found, float(claims["exp"]), time.monotonic() + CACHE_TTL_S))
        return found

    # ---- passwords ----------------------------------------------------------------------------
    async def verify_credentials(self, username: str, password: str, *, remote: str | None) -> Principal:
        """Principal for (username, password); the slow hash runs off the event loop."""
        key = self._key(f"{username}\0{password}", remote)
        cached = self._cached(key)
        if cached is not None:
            return cached
        return await self._verify(key, username, password, remote)

    async def authenticate(self, header: str | None, *, remote: str | None) -> Principal:
        """Principal for an `Authorization` header value."""
        if not header:
            raise KalamError("MISSING_AUTHORIZATION", "Missing Authorization header (Bearer <token> or Basic)")
        scheme, _, value = header.strip().partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer":
            if not value:
                raise KalamError("MISSING_AUTHORIZATION", "Empty Bearer token")
            return self.verify_token(value)
        if scheme == "basic":
            # hot path: the cache is keyed on the header itself, so a hit decodes nothing
            key = self._key(value, remote)
            cached = self._cached(key)
            if cached is not None:
                return cached
            username, password = _decode_basic(value)
            return await self._verify(key, username, password, remote)
        raise KalamError("MISSING_AUTHORIZATION", f"Unsupported Authorization scheme '{scheme}' (use Bearer or Basic)")

    def _key(self, secret_material: str, remote: str | None) -> bytes:
        """A keyed hash (BLAKE2b, ~4x cheaper than HMAC-SHA256 here); local and remote callers get
        different keys because an empty password is valid only from localhost."""
        where = "l" if is_local_address(remote) else "r"
        return hashlib.blake2b(f"{secret_material}\0{where}".encode(), key=self._cache_key, digest_size=16).digest()

    def _cached(self, key: bytes) -> Principal | None:
        self._check_version()
        cached = self._basic_cache.get(key)
        if cached is not None and time.monotonic() < cached[1]:
            return cached[0]
        return None

    async def _verify(self, key: bytes, username: str, password: str, remote: str | None) -> Principal:
        """Concurrent checks of the same credentials (a client opening many connections at once)
        share one verification: one argon2 run, one throttling token."""
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Principal] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            principal = await self._verify_once(key, username, password, remote)
            fut.set_result(principal)
            return principal
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved here: nobody else may be waiting
            raise
        finally:
            self._inflight.pop(key, None)

    async def _verify_once(self, key: bytes, username: str, password: str, remote: str | None) -> Principal:
        generation = self._generation
        if self.logins is not None:  # throttling, lockout, setup state, no name enumeration
            principal = await self.logins.verify(username, password, remote, is_local=is_local_address(remote))
        else:
            if not username:
                raise KalamError("INVALID_CREDENTIALS", "Invalid username or password")
            if password == "" and not is_local_address(remote):
                raise KalamError("INVALID_CREDENTIALS", "An empty password is accepted only from localhost")
            loop = asyncio.get_running_loop()
            principal = await loop.run_in_executor(None, self._verify_password, username, password)
        self._check_version()
        if generation == self._generation:  # users did not change while we were verifying
            self._remember(self._basic_cache, key, (principal, time.monotonic() + CACHE_TTL_S))
        return principal

    def _check_version(self) -> None:
        if self._users_version is not None:
            version = self._users_version()
            if version != self._seen_version:
                self._seen_version = version
                self.users_changed()

    def users_changed(self) -> None:
        """Forget every cached verification (a password, role or user may have changed)."""
        self._generation += 1
        self._basic_cache.clear()
        self._token_cache.clear()

    @staticmethod
    def _remember(cache: dict, key: Any, value: Any) -> None:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[key] = value


def _decode_basic(value: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise KalamError("INVALID_CREDENTIALS", "Malformed Basic credentials (expected base64 user:password)") from None
    username, sep, password = decoded.partition(":")
    if not sep:
        raise KalamError("INVALID_CREDENTIALS", "Malformed Basic credentials (expected user:password)")
    return username, password
