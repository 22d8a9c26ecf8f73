"""The payloads a follower and the leader exchange for a forwarded proposal (node/forwarding.py):
every shape that is not exactly one of the three is refused with a reason, never half-read."""

from __future__ import annotations

import msgpack
import pytest

from kalamdb.node import forwarding as fw
from kalamdb.raft.messages import Message, MsgType


def roundtrip(payload: list) -> object:
    return msgpack.unpackb(msgpack.packb(payload, use_bin_type=True), raw=False)


def test_the_three_payloads_survive_the_wire():
    assert fw.decode(roundtrip(fw.propose(7, b"cmd"))) == fw.Propose(7, b"cmd")
    assert fw.decode(roundtrip(fw.accepted(7, 120, 3))) == fw.Accepted(7, 120, 3)
    assert fw.decode(roundtrip(fw.refused(7, fw.NOT_LEADER, 2))) == fw.Refused(7, fw.NOT_LEADER, 2)


def test_a_raft_message_is_never_taken_for_a_proposal():
    wire = roundtrip(Message(MsgType.APP, to=2, frm=1, term=3).to_wire())
    assert not fw.is_proposal_payload(wire)
    assert fw.is_proposal_payload(roundtrip(fw.propose(1, b"x")))


@pytest.mark.parametrize("payload", [
    ["prop", 1],                              # too short
    ["prop", 1, b""],                         # empty command
    ["prop", 1, "text, not bytes"],
    ["prop", -1, b"x"],                       # negative ctx
    ["prop", True, b"x"],                     # a bool is not an id
    ["prop", 1 << 64, b"x"],
    ["prop_ok", 1, 2],
    ["prop_ok", 1, "2", 3],
    ["prop_no", 1, "TEAPOT", 0],              # unknown refusal
    ["prop_no", 1, "NOT_LEADER", None],
    ["hello", 1, 2, 3],
])
def test_malformed_payloads_are_refused_with_a_reason(payload):
    with pytest.raises(ValueError, match=r"\w"):
        fw.decode(payload)
