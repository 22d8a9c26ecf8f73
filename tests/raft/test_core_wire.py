"""Message wire format: round trips exactly, and every malformed input is a ValueError (never a crash
of another kind, never a half-valid Message reaching the core)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kalamdb.raft.messages import Message, MsgType, encode_membership
from kalamdb.raft.types import Entry, EntryKind, Membership, SnapshotMeta


def sample_messages() -> list[Message]:
    m = Membership(frozenset({1, 2, 3}), frozenset({4}))
    return [
        Message(MsgType.APP, 2, 1, 5, 4, 10, 9, entries=[
            Entry(4, 11, EntryKind.NORMAL, b"a"), Entry(5, 12, EntryKind.NOOP, b""),
            Entry(5, 13, EntryKind.CONFIG, encode_membership(m))]),
        Message(MsgType.APP_RESP, 1, 2, 5, index=10, reject=True, hint_index=7, hint_term=3),
        Message(MsgType.PRE_VOTE, 3, 1, 6, 5, 13, context=b"transfer"),
        Message(MsgType.SNAPSHOT, 2, 1, 5, snapshot=SnapshotMeta(100, 4, m), offset=4096, data=b"x" * 10,
                done=True),
        Message(MsgType.READ_INDEX_RESP, 2, 1, 5, index=77, context=b"\x00ctx"),
    ]


@pytest.mark.parametrize("msg", sample_messages(), ids=lambda m: m.type.name)
def test_round_trip_through_msgpack(msg):
    back = Message.from_wire(msgpack.unpackb(msgpack.packb(msg.to_wire())))
    assert back == msg


def good_wire() -> list:
    return sample_messages()[0].to_wire()


def mutate(i: int, value) -> list:
    w = good_wire()
    w[i] = value
    return w


MALFORMED = {
    "not a list": {"type": 1},
    "short": good_wire()[:15],
    "long": [*good_wire(), 0],
    "unknown type": mutate(0, 99),
    "type as str": mutate(0, "APP"),
    "to zero": mutate(1, 0),
    "negative term": mutate(3, -1),
    "huge index": mutate(5, 2**64),
    "float commit": mutate(6, 1.5),
    "bool as term": mutate(3, True),
    "reject not bool": mutate(7, 1),
    "context str": mutate(10, "ctx"),
    "entries dict": mutate(11, {}),
    "entry short": mutate(11, [[5, 11, 0]]),
    "entry bad kind": mutate(11, [[5, 11, 9, b""]]),
    "entry data str": mutate(11, [[5, 11, 0, "x"]]),
    "entry gap": mutate(11, [[5, 11, 0, b""], [5, 13, 0, b""]]),
    "entry term decreases": mutate(11, [[5, 11, 0, b""], [4, 12, 0, b""]]),
    "entry not after prev": mutate(11, [[5, 12, 0, b""]]),
    "entry term below prev": mutate(11, [[3, 11, 0, b""]]),
    "config garbage": mutate(11, [[5, 11, 2, b"\xc1\xc1"]]),
    "config wrong shape": mutate(11, [[5, 11, 2, msgpack.packb({"voters": [1]})]]),
    "snapshot bad": mutate(12, [1, 2]),
    "snapshot voter zero": mutate(12, [1, 1, [[0], [], []]]),
    "snapshot missing on SNAPSHOT": [9, *good_wire()[1:11], [], None, 0, b"", False],
    "done not bool": mutate(15, "yes"),
}


@pytest.mark.parametrize("wire", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_messages_are_rejected_with_value_error(wire):
    with pytest.raises(ValueError):
        Message.from_wire(wire)


wire_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.binary(max_size=8) | st.text(max_size=4),
    lambda children: st.lists(children, max_size=6),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(wire_values, min_size=16, max_size=16))
def test_random_garbage_never_escapes_as_another_error(w):
    try:
        msg = Message.from_wire(w)
    except ValueError:
        return
    assert isinstance(msg.type, MsgType)  # it really was well formed


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 15), wire_values)
def test_single_field_corruption_is_valueerror_or_valid(i, value):
    w = good_wire()
    w[i] = value
    try:
        msg = Message.from_wire(w)
    except ValueError:
        return
    assert msg.to_wire()[i] == value or isinstance(value, (list, type(None)))
