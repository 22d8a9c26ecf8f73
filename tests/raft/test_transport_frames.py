"""The transport's wire format without sockets: framing limits, decoding, handshake MACs."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kalamdb.raftio.frames import (
    HEADER,
    T_DATA,
    FrameDecoder,
    FrameError,
    encode_frame,
    handshake_mac,
    mac_ok,
)

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(payloads=st.lists(values, max_size=20), cuts=st.lists(st.integers(0, 10_000), max_size=10))
def test_decoder_yields_the_same_values_however_the_stream_is_cut(payloads, cuts):
    stream = b"".join(encode_frame([T_DATA, p]) for p in payloads)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    dec = FrameDecoder(1 << 20)
    out = [v for piece in pieces for v in dec.feed(piece)]
    assert out == [[T_DATA, p] for p in payloads]
    assert dec.buffered == 0


def test_oversized_frame_is_refused_from_its_header_alone():
    dec = FrameDecoder(1000)
    with pytest.raises(FrameError) as info:
        list(dec.feed(HEADER.pack(1001)))  # no body bytes needed to decide
    assert info.value.reason == "oversized_frame"


def test_frame_at_the_limit_is_accepted():
    body = msgpack.packb(b"x" * 990, use_bin_type=True)
    dec = FrameDecoder(len(body))
    assert list(dec.feed(HEADER.pack(len(body)) + body)) == [b"x" * 990]


def test_values_before_a_bad_frame_are_delivered_first():
    good = encode_frame([T_DATA, 1])
    bad = HEADER.pack(1) + b"\xc1"  # 0xc1 is never used by msgpack
    seen = []
    with pytest.raises(FrameError) as info:
        for v in FrameDecoder(1 << 10).feed(good + good + bad + good):
            seen.append(v)  # noqa: PERF402 - a loop keeps what came before the error
    assert seen == [[T_DATA, 1], [T_DATA, 1]]
    assert info.value.reason == "malformed_msgpack"


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # reserved byte
        msgpack.packb(1) + msgpack.packb(2),  # two values in one frame
        b"\x92\x01",  # truncated array
        b"\xa2\xff\xfe",  # invalid utf-8 in a str
        b"\xd4\x01\x00",  # extension type: refused, plain data only
        b"\x91" * 5000 + b"\xc0",  # nesting deeper than the unpacker's stack
    ],
    ids=["reserved", "extra-data", "truncated", "bad-utf8", "ext-type", "deep-nesting"],
)
def test_malformed_bodies_raise_frame_error(body):
    with pytest.raises(FrameError) as info:
        list(FrameDecoder(1 << 16).feed(HEADER.pack(len(body)) + body))
    assert info.value.reason == "malformed_msgpack"


def test_mac_binds_role_ids_and_both_nonces():
    args = ("kalamdb", 1, 2, b"s" * 16, b"c" * 16)
    base = handshake_mac(b"secret", "client", *args)
    assert mac_ok(base, handshake_mac(b"secret", "client", *args))
    assert not mac_ok(base, handshake_mac(b"secret", "server", *args))  # no reflection
    assert not mac_ok(base, handshake_mac(b"other", "client", *args))
    for i, changed in enumerate(["other", 3, 3, b"t" * 16, b"d" * 16]):
        mutated = list(args)
        mutated[i] = changed
        assert not mac_ok(base, handshake_mac(b"secret", "client", *mutated)), i
    assert not mac_ok(base, "not bytes")
