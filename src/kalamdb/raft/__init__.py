"""kalamdb.raft: the sans-IO Raft core (see docs/design/raft.md). No sockets, files, clocks or global
randomness here: the log storage and the peer transport are `kalamdb.raftio`, the driver that runs
the core is `kalamdb.node.driver`, and tests/test_layers.py keeps it so."""

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
