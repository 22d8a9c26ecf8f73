"""The wire protocol's pure parts: client messages parsed as upstream's serde would (or refused
with 'Invalid message: ...'), batch control statuses, gzip from 512 bytes, change frames."""

import zlib

import msgpack
import orjson
import pytest

from kalamdb.live import protocol as p


def test_authenticate_needs_method_token_and_protocol():
    msg = p.decode_text('{"type":"authenticate","method":"jwt","token":"t",'
                        '"protocol":{"serialization":"msgpack","compression":"none"}}')
    assert msg == p.Authenticate("t", p.Protocol("msgpack", "none"))
    for bad in ('{"type":"authenticate","method":"jwt","token":"t"}',
                '{"type":"authenticate","method":"basic","token":"t","protocol":{}}',
                ('{"type":"authenticate","method":"jwt","token":1,'
                '"protocol":{"serialization":"json","compression":"gzip"}}')):
        with pytest.raises(p.InvalidMessage, match="^Invalid message: "):
            p.decode_text(bad)


def test_subscribe_options_and_from_alias():
    msg = p.decode_text('{"type":"subscribe","subscription":{"id":"s","sql":"SELECT 1",'
                        '"options":{"batch_size":5,"last_rows":2,"from_seq_id":"123"}}}')
    assert msg == p.Subscribe("s", "SELECT 1", p.Options(5, 2, 123))
    assert p.decode_text('{"type":"subscribe","subscription":{"id":"s","sql":"x"}}').options is None
    assert p.decode_text('{"type":"subscribe","subscription":{"id":"s","sql":"x","options":{}}}').options == p.Options()
    with pytest.raises(p.InvalidMessage):
        p.decode_text('{"type":"subscribe","subscription":{"id":"s","sql":"x","options":{"batch_size":-1}}}')
    with pytest.raises(p.InvalidMessage):
        p.decode_text('{"type":"subscribe","subscription":{"id":"s","sql":"x","options":{"from":true}}}')


@pytest.mark.parametrize("text", ["not json", "[]", "{}", '{"type":"nope"}', '{"type":7}', '{"type":"next_batch"}',
                                  '{"type":"unsubscribe","subscription_id":3}', "\x00" * 10])
def test_malformed_messages_are_invalid(text):
    with pytest.raises(p.InvalidMessage, match="^Invalid message: "):
        p.decode_text(text)


def test_msgpack_messages_and_gzip_bombs():
    assert p.decode_binary(msgpack.packb({"type": "ping"})) == p.Ping()
    packed = zlib.compress(msgpack.packb({"type": "unsubscribe", "subscription_id": "a"}), wbits=31)
    assert p.decode_binary(packed) == p.Unsubscribe("a")
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = c.compress(b"\x00" * (p.MAX_MESSAGE_BYTES * 8)) + c.flush()
    with pytest.raises(p.InvalidMessage, match="size limit"):
        p.decode_binary(bomb)
    with pytest.raises(p.InvalidMessage):
        p.decode_binary(b"\xc1\xc1")


def test_batch_control_status_as_upstream():
    assert p.batch_control(0, True, 5)["status"] == "loading"
    assert p.batch_control(3, True, 5)["status"] == "loading_batch"
    assert p.batch_control(0, False, None)["status"] == "ready"
    assert p.batch_control(3, False, 9) == {"batch_num": 3, "has_more": False, "status": "ready", "last_seq_id": 9}


def test_frames_gzip_from_512_bytes_unless_disabled():
    small = p.encode(p.error("s", "X", "m"), p.JSON, compress=True)
    assert not small.binary and orjson.loads(small.data)["code"] == "X"
    big_msg = p.initial_data_batch("s", [{"v": "x" * 600}], p.batch_control(0, False, None))
    big = p.encode(big_msg, p.JSON, compress=True)
    assert big.binary and big.data[:2] == b"\x1f\x8b" and orjson.loads(zlib.decompress(big.data, 47)) == big_msg
    plain = p.encode(big_msg, p.JSON, compress=False)
    assert not plain.binary and orjson.loads(plain.data) == big_msg
    packed = p.encode(big_msg, p.MSGPACK, compress=False)
    assert packed.binary and msgpack.unpackb(packed.data) == big_msg
    # errors and auth messages stay JSON on a msgpack connection
    assert not p.encode(p.error("s", "X", "m"), p.MSGPACK, compress=False).binary


def test_change_template_is_the_message_in_both_serializations():
    tpl = p.ChangeTemplate("update", [{"_seq": "2", "id": "1", "v": "é"}], [{"_seq": "1", "id": "1", "v": None}])
    for sid in ("a", 'quo"te', "x" * 300):
        assert orjson.loads(tpl.payload(sid, p.JSON)) == tpl.message(sid)
        assert msgpack.unpackb(tpl.payload(sid, p.MSGPACK)) == tpl.message(sid)
    ins = p.ChangeTemplate("insert", [{"a": 1}], None)
    assert "old_values" not in orjson.loads(ins.payload("s", p.JSON))


def test_compress_false_and_upgrade_protocol_from_query():
    assert p.compression_enabled("") and p.compression_enabled("serialization=msgpack")
    assert not p.compression_enabled("x=1&COMPRESS=false")
    assert p.protocol_from_query({"serialization": "MSGPACK", "compression": "none"}) == p.Protocol("msgpack", "none")
    assert p.protocol_from_query({"serialization": "avro"}) == p.Protocol()
