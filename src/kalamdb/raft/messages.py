"""Raft messages: one slotted dataclass for every RPC, and a strict msgpack-list wire form.

Peers are not trusted to send well-formed data (a bug, a version skew or an attacker who got past
the handshake), so `Message.from_wire` checks every field's type and range and raises ValueError
instead of letting a malformed value reach the state machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from kalamdb.raft.types import Entry, EntryKind, Membership, SnapshotMeta

MAX_NODE_ID = 2**63 - 1
MAX_INDEX = 2**63 - 1

# Vote context that marks an election started by leadership transfer (TimeoutNow): voters grant it
# even while they still believe in a live leader (the leader asked for it).
CAMPAIGN_TRANSFER = b"transfer"


class MsgType(IntEnum):
    APP = 1  # AppendEntries: index/log_term = previous entry, entries, commit
    APP_RESP = 2  # index = last matching index; reject + hint_index/hint_term on mismatch
    VOTE = 3  # RequestVote: index/log_term = candidate's last entry
    VOTE_RESP = 4
    PRE_VOTE = 5  # like VOTE but term = candidate's term + 1 and nothing changes on the voter
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7  # commit; index = read-index round (0 = none)
    HEARTBEAT_RESP = 8  # index = read-index round echoed back
    SNAPSHOT = 9  # InstallSnapshot chunk: snapshot meta, offset, data, done
    SNAPSHOT_RESP = 10  # index = snapshot index, offset = next expected offset; reject = restart
    TIMEOUT_NOW = 11  # leadership transfer: campaign now, skipping pre-vote
    READ_INDEX = 12  # follower -> leader: context identifies the read
    READ_INDEX_RESP = 13  # leader -> follower: index = read index for context (reject = failed)
    COMMIT = 14  # leader -> follower: commit, for a follower that holds (index, log_term); no answer


@dataclass(slots=True)
class Message:
    type: MsgType
    to: int
    frm: int
    term: int
    log_term: int = 0
    index: int = 0
    commit: int = 0
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0
    context: bytes = b""
    entries: list[Entry] = field(default_factory=list)
    snapshot: SnapshotMeta | None = None
    offset: int = 0
    data: bytes = b""
    done: bool = False

    def to_wire(self) -> list:
        snap = self.snapshot
        return [
            int(self.type), self.to, self.frm, self.term, self.log_term, self.index, self.commit,
            self.reject, self.hint_index, self.hint_term, self.context,
            [[e.term, e.index, int(e.kind), e.data] for e in self.entries],
            None if snap is None else snap.to_wire(), self.offset, self.data, self.done,
        ]

    @classmethod
    def from_wire(cls, w: object) -> Message:
        """Decode and validate; raise ValueError on anything malformed."""
        if not isinstance(w, (list, tuple)) or len(w) != 16:
            raise ValueError("message must be a list of 16 fields")
        (mtype, to, frm, term, log_term, index, commit, reject, hint_index, hint_term, context,
         entries, snap, offset, data, done) = w
        try:
            mt = MsgType(_int(mtype, "type", 1, 255))
        except ValueError:
            raise ValueError(f"unknown message type {mtype!r:.40}") from None
        to = _int(to, "to", 1, MAX_NODE_ID)
        frm = _int(frm, "frm", 1, MAX_NODE_ID)
        term = _int(term, "term", 0, MAX_INDEX)
        log_term = _int(log_term, "log_term", 0, MAX_INDEX)
        index = _int(index, "index", 0, MAX_INDEX)
        commit = _int(commit, "commit", 0, MAX_INDEX)
        hint_index = _int(hint_index, "hint_index", 0, MAX_INDEX)
        hint_term = _int(hint_term, "hint_term", 0, MAX_INDEX)
        offset = _int(offset, "offset", 0, MAX_INDEX)
        reject = _bool(reject, "reject")
        done = _bool(done, "done")
        context = _bytes(context, "context")
        data = _bytes(data, "data")
        if not isinstance(entries, (list, tuple)):
            raise ValueError("entries must be a list")  # noqa: TRY004 - wire errors are ValueError
        decoded = _entries(entries, index, log_term)
        meta = None if snap is None else _snapshot_meta(snap)
        if mt == MsgType.SNAPSHOT and meta is None:
            raise ValueError("SNAPSHOT message without snapshot meta")
        return cls(mt, to, frm, term, log_term, index, commit, reject, hint_index, hint_term, context,
                   decoded, meta, offset, data, done)


def _int(v: object, name: str, lo: int, hi: int) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise ValueError(f"field {name} must be an integer in [{lo}, {hi}], got {v!r:.40}")
    return v


def _bool(v: object, name: str) -> bool:
    if type(v) is not bool:
        raise ValueError(f"field {name} must be a boolean, got {v!r:.40}")
    return v


def _bytes(v: object, name: str) -> bytes:
    if not isinstance(v, bytes):
        raise ValueError(f"field {name} must be bytes, got {type(v).__name__}")  # noqa: TRY004
    return v


_KINDS = {int(k): k for k in EntryKind}


def _entries(ws: list | tuple, prev_index: int, prev_term: int) -> list[Entry]:
    """Decode entries that must directly follow (prev_index, prev_term): contiguous indexes,
    non-decreasing terms. One tight loop: this is the replication hot path."""
    out = []
    expect = prev_index + 1
    last_term = prev_term
    config = EntryKind.CONFIG
    for w in ws:
        if type(w) not in (list, tuple) or len(w) != 4:
            raise ValueError("entry must be a list [term, index, kind, data]")
        term, index, kind, data = w
        if type(term) is not int or not last_term <= term <= MAX_INDEX:
            raise ValueError(f"entry term {term!r:.40} is not an integer >= the previous term")
        if type(index) is not int or index != expect:
            raise ValueError(f"entry index {index!r:.40} breaks contiguity (expected {expect})")
        k = _KINDS.get(kind) if type(kind) is int else None
        if k is None:
            raise ValueError(f"unknown entry kind {kind!r:.40}")
        if type(data) is not bytes:
            raise ValueError("entry data must be bytes")
        if k is config:
            decode_membership(data)  # a config entry the core could not read would wedge every node
        out.append(Entry(term, index, k, data))
        expect += 1
        last_term = term
    return out


def _id_set(w: object, name: str) -> frozenset[int]:
    if not isinstance(w, (list, tuple)):
        raise ValueError(f"{name} must be a list of node ids")  # noqa: TRY004
    return frozenset(_int(x, name, 1, MAX_NODE_ID) for x in w)


def _snapshot_meta(w: object) -> SnapshotMeta:
    if not isinstance(w, (list, tuple)) or len(w) != 3:
        raise ValueError("snapshot meta must be [index, term, membership]")
    index = _int(w[0], "snapshot.index", 0, MAX_INDEX)
    term = _int(w[1], "snapshot.term", 0, MAX_INDEX)
    m = w[2]
    if not isinstance(m, (list, tuple)) or len(m) != 3:
        raise ValueError("membership must be [voters, learners, voters_outgoing]")
    membership = Membership(_id_set(m[0], "voters"), _id_set(m[1], "learners"), _id_set(m[2], "outgoing"))
    return SnapshotMeta(index, term, membership)


def decode_membership(data: bytes) -> Membership:
    """Membership from a CONFIG entry's data (msgpack of Membership.to_wire()); ValueError if bad."""
    import msgpack

    try:
        w = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types for garbage
        raise ValueError(f"undecodable membership: {exc}") from None
    return _snapshot_meta([0, 0, w]).membership


def encode_membership(m: Membership) -> bytes:
    import msgpack

    return msgpack.packb(m.to_wire())
