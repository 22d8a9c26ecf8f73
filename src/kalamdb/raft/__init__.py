"""kalamdb.raft: a sans-IO Raft core (see docs/design/raft.md) plus its storage, transport and driver."""

from kalamdb.raft.core import (
    NotLeader,
    ProposalRejected,
    RaftConfig,
    RaftCore,
    RaftError,
    RaftSafetyError,
    ReadState,
    Ready,
    Role,
    SnapshotChunk,
    SnapshotRequest,
    SoftState,
)
from kalamdb.raft.messages import Message, MsgType

__all__ = [
    "Message",
    "MsgType",
    "NotLeader",
    "ProposalRejected",
    "RaftConfig",
    "RaftCore",
    "RaftError",
    "RaftSafetyError",
    "ReadState",
    "Ready",
    "Role",
    "SnapshotChunk",
    "SnapshotRequest",
    "SoftState",
]
