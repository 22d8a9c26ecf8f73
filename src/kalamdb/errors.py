"""One error type for every layer, carrying the API's code and HTTP status, so a failure deep in
the engine reaches the client as the documented JSON without translation tables in between."""

from __future__ import annotations

# code -> HTTP status (KALAMDB_API.md)
STATUS_BY_CODE: dict[str, int] = {
    "INVALID_SQL": 400,
    "SQL_EXECUTION_ERROR": 400,
    "TABLE_NOT_FOUND": 400,
    "INVALID_PARAMETER": 400,
    "EMPTY_SQL": 400,
    "PARAMS_WITH_BATCH": 400,
    "INVALID_INPUT": 400,
    "PAYLOAD_TOO_LARGE": 413,
    "MISSING_AUTHORIZATION": 401,
    "INVALID_CREDENTIALS": 401,
    "INVALID_TOKEN": 401,
    "TOKEN_EXPIRED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RATE_LIMIT_EXCEEDED": 429,
    "NOT_LEADER": 503,
    "FORWARD_FAILED": 503,
    "CLUSTER_UNAVAILABLE": 503,
    "LEADER_NOT_AVAILABLE": 503,
    "INTERNAL_ERROR": 500,
}


class KalamError(Exception):
    """An error with an API code, an HTTP status and a message that says what to fix."""

    def __init__(self, code: str, message: str, *, status: int | None = None, details: str | None = None,
                 sensitive: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else STATUS_BY_CODE.get(code, 400)
        self.details = details
        #: the message may reveal what the caller must not learn (names of tables they cannot see,
        #: raw engine errors): answered to non-admins as upstream's generic message (engine/types.py)
        self.sensitive = sensitive

    def to_dict(self) -> dict:
        out = {"code": self.code, "message": self.message}
        if self.details is not None:
            out["details"] = self.details
        return out

    @classmethod
    def from_dict(cls, data: dict) -> KalamError:
        return cls(data["code"], data["message"], details=data.get("details"))

    def __repr__(self) -> str:
        return f"KalamError({self.code!r}, {self.message!r}, status={self.status})"


class NotLeaderError(KalamError):
    """NOT_LEADER: this node cannot take the write; `leader_api` is the leader's HTTP address when
    known, so the server can forward the request there instead of answering the error."""

    def __init__(self, message: str, leader_api: str | None = None, *, details: str | None = None):
        super().__init__("NOT_LEADER", message, status=503, details=details)
        self.leader_api = leader_api


class RetryLater(KalamError):
    """A refusal that passes with time (throttling): the answer carries `Retry-After: retry_after`."""

    def __init__(self, code: str, message: str, *, retry_after: int, status: int = 429):
        super().__init__(code, message, status=status)
        self.retry_after = retry_after
