"""Proposals forwarded from a follower to the leader inside the peer transport (etcd's MsgProp).

A write that reaches a follower is prepared there (parse, permissions, the command's fixed
non-deterministic values) and its command bytes travel to the leader on the Raft connection that
already exists, instead of as a second HTTP request. The leader only appends it to its log and says
at which (index, term) it did; the follower then learns the write's fate the way every replica
does, by applying its own log: the entry it applies at that index has that term (the write
committed, and the follower answers with its own apply's outcome, so a read on the same node sees
the write at once) or another term (the write was lost in a leader change: definitely not applied).

Three payloads ride next to Raft's messages on the same connections (a Raft message is a list of
16 values; these start with a string tag, so the two never mix):

| payload | direction | meaning |
|---|---|---|
| `["prop", ctx, command]` | follower -> leader | please append `command` |
| `["prop_ok", ctx, index, term]` | leader -> follower | appended at (index, term) |
| `["prop_no", ctx, code, leader_id]` | leader -> follower | refused, nothing was appended (definite) |

`ctx` is the follower's own request number. Messages on a connection arrive in order, so a
`prop_ok` always arrives before the entry it names can be committed on the follower.
"""

from __future__ import annotations

from dataclasses import dataclass

PROPOSE = "prop"
ACCEPTED = "prop_ok"
REFUSED = "prop_no"

# Why the leader refused (sent as `code`): either way nothing was appended.
NOT_LEADER = "NOT_LEADER"
NOT_ACCEPTING = "LEADER_NOT_AVAILABLE"  # leadership transfer in progress, node stopping, overloaded
REFUSAL_CODES = frozenset({NOT_LEADER, NOT_ACCEPTING})

MAX_CTX = (1 << 63) - 1


def is_proposal_payload(payload: object) -> bool:
    """Whether a transport payload is one of ours (tagged) rather than a Raft message."""
    return type(payload) is list and len(payload) > 0 and type(payload[0]) is str


@dataclass(frozen=True, slots=True)
class Propose:
    ctx: int
    command: bytes


@dataclass(frozen=True, slots=True)
class Accepted:
    ctx: int
    index: int
    term: int


@dataclass(frozen=True, slots=True)
class Refused:
    ctx: int
    code: str
    leader_id: int


def _uint(value: object, what: str, hi: int = MAX_CTX) -> int:
    if type(value) is not int or not 0 <= value <= hi:
        raise ValueError(f"{what} must be an integer in [0, {hi}], got {value!r:.40}")
    return value


def decode(payload: list) -> Propose | Accepted | Refused:
    """Check a tagged payload's shape and types; ValueError says what is wrong."""
    tag = payload[0]
    if tag == PROPOSE and len(payload) == 3:
        if type(payload[2]) is not bytes or not payload[2]:
            raise ValueError("a proposal's command must be non-empty bytes")
        return Propose(_uint(payload[1], "ctx"), payload[2])
    if tag == ACCEPTED and len(payload) == 4:
        return Accepted(_uint(payload[1], "ctx"), _uint(payload[2], "index"), _uint(payload[3], "term"))
    if tag == REFUSED and len(payload) == 4:
        if payload[2] not in REFUSAL_CODES:
            raise ValueError(f"unknown refusal code {payload[2]!r:.40}")
        return Refused(_uint(payload[1], "ctx"), payload[2], _uint(payload[3], "leader id"))
    raise ValueError(f"unknown proposal message {tag!r:.20} with {len(payload)} fields")


def propose(ctx: int, command: bytes) -> list:
    return [PROPOSE, ctx, command]


def accepted(ctx: int, index: int, term: int) -> list:
    return [ACCEPTED, ctx, index, term]


def refused(ctx: int, code: str, leader_id: int) -> list:
    return [REFUSED, ctx, code, leader_id]
