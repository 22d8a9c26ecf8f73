"""The `/v1/ws` wire protocol, exactly as upstream KalamDB speaks it (KALAMDB_REALTIME.md section 1):
client messages parsed and checked into typed objects, server messages built as dicts, and frames
encoded (JSON or msgpack, gzip over 512 bytes). Pure: no sockets, no clock, no engine.

Upstream's rules followed here, with where they come from:
- `authenticate` needs `method` ("jwt"), `token` and `protocol` (serde: all required).
- A frame that is not a valid client message closes the connection with 1011 "Invalid message: ...".
- `auth_success`, `auth_error` and `error` are always JSON; acks, batches and changes follow the
  negotiated serialization (msgpack: binary frames).
- Payloads of 512 bytes or more are gzipped (fast level) and sent as binary frames when that makes
  them smaller, unless the connection asked for `?compress=false`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import msgpack
import orjson

# limits and timings (upstream's defaults)
AUTH_TIMEOUT_S = 3.0
HEARTBEAT_TIMEOUT_S = 10.0
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_MESSAGES_PER_S = 50
MAX_SUBSCRIPTIONS_PER_USER = 10
MAX_SUBSCRIPTIONS_PER_CONNECTION = 100
MAX_ROWS_PER_BATCH = 1000
COMPRESSION_THRESHOLD = 512
# our own bounds (upstream has none): a batch is at most this many rows, an id this long
MAX_BATCH_SIZE = 10_000
MAX_SUBSCRIPTION_ID_CHARS = 256

# close codes
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_ERROR = 1011

# error codes (upstream's WsErrorCode) and our additions
AUTH_REQUIRED = "AUTH_REQUIRED"
INVALID_SUBSCRIPTION_ID = "INVALID_SUBSCRIPTION_ID"
SUBSCRIPTION_LIMIT_EXCEEDED = "SUBSCRIPTION_LIMIT_EXCEEDED"
UNAUTHORIZED = "UNAUTHORIZED"
NOT_FOUND = "NOT_FOUND"
INVALID_SQL = "INVALID_SQL"
UNSUPPORTED = "UNSUPPORTED"
SUBSCRIPTION_FAILED = "SUBSCRIPTION_FAILED"
CONVERSION_ERROR = "CONVERSION_ERROR"
BATCH_FETCH_FAILED = "BATCH_FETCH_FAILED"
MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
UNSUPPORTED_DATA = "UNSUPPORTED_DATA"
# ours: resume point older than the change log keeps; a subscriber that stopped reading; token expiry
RESUME_TOO_OLD = "RESUME_TOO_OLD"
SLOW_CONSUMER = "SLOW_CONSUMER"
TOKEN_EXPIRED = "TOKEN_EXPIRED"

JSON = "json"
MSGPACK = "msgpack"


class InvalidMessage(ValueError):
    """A frame that is not a client message: the connection is closed with 1011 and this text."""

    def __init__(self, detail: str):
        super().__init__(f"Invalid message: {detail}")


@dataclass(frozen=True, slots=True)
class Protocol:
    serialization: str = JSON  # json | msgpack
    compression: str = "gzip"  # gzip | none (only echoed, as upstream: ?compress=false decides)

    def to_json(self) -> dict:
        return {"serialization": self.serialization, "compression": self.compression}


@dataclass(frozen=True, slots=True)
class Authenticate:
    token: str
    protocol: Protocol


@dataclass(frozen=True, slots=True)
class Options:
    batch_size: int | None = None
    last_rows: int | None = None
    from_seq: int | None = None

    def to_json(self) -> dict:
        out: dict[str, int] = {}
        if self.batch_size is not None:
            out["batch_size"] = self.batch_size
        if self.last_rows is not None:
            out["last_rows"] = self.last_rows
        if self.from_seq is not None:
            out["from"] = self.from_seq
        return out


@dataclass(frozen=True, slots=True)
class Subscribe:
    id: str
    sql: str
    options: Options | None  # None: ack only, no initial data


@dataclass(frozen=True, slots=True)
class NextBatch:
    subscription_id: str
    last_seq_id: int | None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    subscription_id: str


@dataclass(frozen=True, slots=True)
class Ping:
    pass


ClientMessage = Authenticate | Subscribe | NextBatch | Unsubscribe | Ping


def protocol_from_query(query: dict[str, str]) -> Protocol:
    """The protocol of a connection authenticated on the upgrade (`?serialization=msgpack`,
    `?compression=none`); unknown values keep the defaults, as upstream."""
    ser = MSGPACK if query.get("serialization", "").lower() == MSGPACK else JSON
    comp = "none" if query.get("compression", "").lower() == "none" else "gzip"
    return Protocol(ser, comp)


def compression_enabled(query_string: str) -> bool:
    """Upstream: any `compress=false` pair (case-insensitive) in the query string disables gzip."""
    return not any(kv.lower() == "compress=false" for kv in query_string.split("&"))


def decode_text(text: str | bytes) -> ClientMessage:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage(str(exc)) from None
    return parse_message(data)


def decode_binary(data: bytes) -> ClientMessage:
    """A binary frame of a msgpack connection (optionally gzipped, as upstream accepts)."""
    if data[:2] == b"\x1f\x8b":
        try:
            d = zlib.decompressobj(47)  # gzip or zlib header
            data = d.decompress(data, MAX_MESSAGE_BYTES + 1)
            if d.unconsumed_tail or len(data) > MAX_MESSAGE_BYTES:
                raise InvalidMessage("decompressed message exceeds the size limit")
        except zlib.error:
            raise InvalidMessage("Failed to decompress binary msgpack") from None
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types on hostile input
        raise InvalidMessage(f"Invalid MessagePack: {exc}") from None
    return parse_message(obj)


def _field(obj: dict, name: str, kind: type | tuple[type, ...], *, where: str) -> Any:
    if name not in obj:
        raise InvalidMessage(f"missing field `{name}` in {where}")
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise InvalidMessage(f"field `{name}` of {where} has the wrong type")
    return value


def _opt_int(obj: dict, name: str, *, where: str, lo: int, hi: int) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())  # a seq id sent as a string (JSON clients that fear 2^53)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidMessage(f"field `{name}` of {where} must be an integer")
    if not lo <= value <= hi:
        raise InvalidMessage(f"field `{name}` of {where} must be between {lo} and {hi}")
    return value


def parse_message(obj: Any) -> ClientMessage:
    if not isinstance(obj, dict):
        raise InvalidMessage("expected an object with a `type` field")
    kind = obj.get("type")
    if kind == "authenticate":
        method = _field(obj, "method", str, where="authenticate")
        if method != "jwt":
            raise InvalidMessage(f"unknown variant `{method}`, expected `jwt`")
        token = _field(obj, "token", str, where="authenticate")
        proto = _field(obj, "protocol", dict, where="authenticate")
        ser = _field(proto, "serialization", str, where="protocol")
        comp = _field(proto, "compression", str, where="protocol")
        if ser not in (JSON, MSGPACK):
            raise InvalidMessage(f"unknown variant `{ser}`, expected `json` or `msgpack`")
        if comp not in ("gzip", "none"):
            raise InvalidMessage(f"unknown variant `{comp}`, expected `gzip` or `none`")
        return Authenticate(token, Protocol(ser, comp))
    if kind == "subscribe":
        sub = _field(obj, "subscription", dict, where="subscribe")
        sid = _field(sub, "id", str, where="subscription")
        sql = _field(sub, "sql", str, where="subscription")
        raw = sub.get("options")
        options = None
        if raw is not None:
            if not isinstance(raw, dict):
                raise InvalidMessage("field `options` of subscription must be an object")
            from_key = "from" if "from" in raw else "from_seq_id"
            options = Options(
                batch_size=_opt_int(raw, "batch_size", where="options", lo=0, hi=2**63 - 1),
                last_rows=_opt_int(raw, "last_rows", where="options", lo=0, hi=2**32 - 1),
                from_seq=_opt_int(raw, from_key, where="options", lo=-(2**63), hi=2**63 - 1))
        return Subscribe(sid, sql, options)
    if kind == "next_batch":
        sid = _field(obj, "subscription_id", str, where="next_batch")
        return NextBatch(sid, _opt_int(obj, "last_seq_id", where="next_batch", lo=-(2**63), hi=2**63 - 1))
    if kind == "unsubscribe":
        return Unsubscribe(_field(obj, "subscription_id", str, where="unsubscribe"))
    if kind == "ping":
        return Ping()
    if kind is None:
        raise InvalidMessage("missing field `type`")
    shown = kind if isinstance(kind, str) else repr(kind)
    raise InvalidMessage(f"unknown variant `{str(shown)[:64]}`, expected one of `authenticate`, "
                         "`subscribe`, `next_batch`, `unsubscribe`, `ping`")


# ------------------------------------------------------------------------------- server messages

def auth_success(user_id: str, role: str, protocol: Protocol) -> dict:
    return {"type": "auth_success", "user": user_id, "role": role, "protocol": protocol.to_json()}


def auth_error(message: str) -> dict:
    return {"type": "auth_error", "message": message}


def batch_control(batch_num: int, has_more: bool, last_seq_id: int | None) -> dict:
    """Upstream's BatchControl::new: loading (batch 0, more to come), loading_batch, ready."""
    if has_more:
        status = "loading" if batch_num == 0 else "loading_batch"
    else:
        status = "ready"
    return {"batch_num": batch_num, "has_more": has_more, "status": status, "last_seq_id": last_seq_id}


def subscription_ack(subscription_id: str, control: dict, schema: list[dict]) -> dict:
    # total_rows is always 0 upstream (counting would cost a scan)
    return {"type": "subscription_ack", "subscription_id": subscription_id, "total_rows": 0,
            "batch_control": control, "schema": schema}


def initial_data_batch(subscription_id: str, rows: list[dict], control: dict) -> dict:
    return {"type": "initial_data_batch", "subscription_id": subscription_id, "rows": rows,
            "batch_control": control}


def error(subscription_id: str, code: str, message: str) -> dict:
    return {"type": "error", "subscription_id": subscription_id, "code": code, "message": message}


# ------------------------------------------------------------------------------- encoding

def gzip_bytes(data: bytes) -> bytes:
    c = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: gzip container; level 1 as upstream's fast()
    return c.compress(data) + c.flush()


@dataclass(frozen=True, slots=True)
class Frame:
    data: bytes
    binary: bool


def frame_for(payload: bytes, *, binary: bool, compress: bool) -> Frame:
    """Upstream's send_data / send_data_binary: gzip from 512 bytes when it helps (then binary)."""
    if compress and len(payload) >= COMPRESSION_THRESHOLD:
        packed = gzip_bytes(payload)
        if len(packed) < len(payload):
            return Frame(packed, True)
    return Frame(payload, binary)


def encode(message: dict, serialization: str, *, compress: bool) -> Frame:
    """A server message as a frame; auth_*/error stay JSON whatever the serialization."""
    if serialization == MSGPACK and message["type"] not in ("auth_success", "auth_error", "error"):
        return frame_for(msgpack.packb(message, use_bin_type=True), binary=True, compress=compress)
    return frame_for(orjson.dumps(message), binary=False, compress=compress)


class ChangeTemplate:
    """One change message encoded once and shared by every subscriber it goes to: the bytes
    around `subscription_id` are fixed, so a subscriber's payload is one concatenation of the
    prefix, its id (encoded once per subscription, see `encode_id`) and the tail."""

    __slots__ = ("_json_tail", "_msgpack_tail", "body")

    def __init__(self, change_type: str, rows: list[dict] | None, old_values: list[dict] | None):
        body: dict[str, Any] = {"change_type": change_type}
        if rows is not None:
            body["rows"] = rows
        if old_values is not None:
            body["old_values"] = old_values
        self.body = body
        self._json_tail: bytes | None = None
        self._msgpack_tail: bytes | None = None

    def message(self, subscription_id: str) -> dict:
        return {"type": "change", "subscription_id": subscription_id, **self.body}

    def json_tail(self) -> bytes:
        """`,"change_type":...}`: what follows the subscription id in the JSON message."""
        tail = self._json_tail
        if tail is None:
            tail = self._json_tail = b"," + orjson.dumps(self.body)[1:]
        return tail

    def msgpack_tail(self) -> bytes:
        tail = self._msgpack_tail
        if tail is None:
            tail = self._msgpack_tail = b"".join(msgpack.packb(k) + msgpack.packb(v, use_bin_type=True)
                                                 for k, v in self.body.items())
        return tail

    def payload(self, subscription_id: str, serialization: str) -> bytes:
        return self.payload_for(encode_id(subscription_id, serialization), serialization)

    def payload_for(self, encoded_id: bytes, serialization: str) -> bytes:
        """The message for a subscription whose id `encode_id` already encoded."""
        if serialization == MSGPACK:
            return bytes([0x80 | (2 + len(self.body))]) + _MP_HEAD + encoded_id + self.msgpack_tail()
        return _JSON_HEAD + encoded_id + self.json_tail()

    def frame(self, subscription_id: str, serialization: str, *, compress: bool) -> Frame:
        return frame_for(self.payload(subscription_id, serialization), binary=serialization == MSGPACK,
                         compress=compress)


def encode_id(subscription_id: str, serialization: str) -> bytes:
    """A subscription id as it sits in a change message (encoded once per subscription)."""
    return msgpack.packb(subscription_id) if serialization == MSGPACK else orjson.dumps(subscription_id)


_JSON_HEAD = b'{"type":"change","subscription_id":'
_MP_HEAD = msgpack.packb("type") + msgpack.packb("change") + msgpack.packb("subscription_id")
