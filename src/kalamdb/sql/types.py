"""KalamDB column types: how a SQL type name maps to a canonical data_type, how it is stored in
SQLite (STRICT tables) and how a stored value is encoded into the API's JSON cells."""

from __future__ import annotations

import base64
import datetime as _dt
import json
import re
import uuid

from kalamdb.errors import KalamError

# SQL spelling -> canonical data_type (the API's schema names)
TYPE_ALIASES: dict[str, str] = {
    "SMALLINT": "SmallInt", "INT2": "SmallInt",
    "INT": "Int", "INTEGER": "Int", "INT4": "Int",
    "BIGINT": "BigInt", "INT8": "BigInt",
    "FLOAT": "Float", "REAL": "Float", "FLOAT4": "Float",
    "DOUBLE": "Double", "FLOAT8": "Double",
    "BOOLEAN": "Boolean", "BOOL": "Boolean",
    "TEXT": "Text", "VARCHAR": "Text", "STRING": "Text", "CHAR": "Text",
    "BYTES": "Bytes", "BLOB": "Bytes", "BYTEA": "Bytes",
    "DATE": "Date", "TIME": "Time", "TIMESTAMP": "Timestamp", "DATETIME": "DateTime",
    "JSON": "Json", "JSONB": "Json", "UUID": "Uuid", "DECIMAL": "Decimal", "NUMERIC": "Decimal",
    "EMBEDDING": "Embedding", "FILE": "File",
    # serial types are BIGINT with DEFAULT SNOWFLAKE_ID()
    "SERIAL": "BigInt", "BIGSERIAL": "BigInt",
}
SERIAL_TYPES = {"SERIAL", "BIGSERIAL"}

STORAGE: dict[str, str] = {
    "SmallInt": "INTEGER", "Int": "INTEGER", "BigInt": "INTEGER", "Timestamp": "INTEGER",
    "Boolean": "INTEGER", "Float": "REAL", "Double": "REAL", "Decimal": "TEXT",
    "Text": "TEXT", "Date": "TEXT", "Time": "TEXT", "Json": "TEXT", "Uuid": "TEXT", "Bytes": "BLOB",
    "DateTime": "INTEGER", "Embedding": "TEXT", "File": "TEXT",
}

# canonical data_type -> its SQL spelling (upstream's sql_name; parameterised types add their arguments)
SQL_NAMES: dict[str, str] = {
    "SmallInt": "SMALLINT", "Int": "INT", "BigInt": "BIGINT", "Float": "FLOAT", "Double": "DOUBLE",
    "Boolean": "BOOLEAN", "Text": "TEXT", "Bytes": "BYTES", "Date": "DATE", "Time": "TIME",
    "Timestamp": "TIMESTAMP", "DateTime": "DATETIME", "Json": "JSON", "Uuid": "UUID", "Decimal": "DECIMAL",
    "Embedding": "EMBEDDING", "File": "FILE",
}
EMBEDDING_MAX_DIM = 8192


def sql_name(data_type: str, type_args: list | None = None) -> str:
    base = SQL_NAMES.get(data_type, data_type.upper())
    if type_args:
        return f"{base}({', '.join(str(a) for a in type_args)})"
    return base

# types whose values go through a checking SQLite function on write (name of the function)
COERCE_FN: dict[str, str] = {
    "SmallInt": "kdb_smallint", "Int": "kdb_int", "Timestamp": "kdb_timestamp", "Boolean": "kdb_bool",
    "Decimal": "kdb_decimal", "Date": "kdb_date", "Time": "kdb_time", "Json": "kdb_json",
    "Uuid": "kdb_uuid", "Bytes": "kdb_bytes", "DateTime": "kdb_timestamp", "Embedding": "kdb_embedding",
    "File": "kdb_file",
}


def canonical_type(name: str) -> str:
    t = TYPE_ALIASES.get(name.upper())
    if t is None:
        raise KalamError("INVALID_SQL", f"Unsupported data type '{name}'")
    return t


def _bad(value, type_name: str) -> KalamError:
    shown = repr(value) if not isinstance(value, bytes) else f"<{len(value)} bytes>"
    return KalamError("SQL_EXECUTION_ERROR", f"Invalid value {shown} for type {type_name}")


def _int_range(lo: int, hi: int, type_name: str):
    def coerce(v):
        if v is None:
            return None
        if isinstance(v, bool):
            v = int(v)
        if isinstance(v, float):
            if not v.is_integer():
                raise _bad(v, type_name)
            v = int(v)
        if isinstance(v, str):
            try:
                v = int(v.strip())
            except ValueError:
                raise _bad(v, type_name) from None
        if not isinstance(v, int):
            raise _bad(v, type_name)
        if not lo <= v <= hi:
            raise KalamError("SQL_EXECUTION_ERROR", f"Value {v} out of range for type {type_name}")
        return v

    return coerce


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


def coerce_timestamp(v):
    """Integers are microseconds since the epoch; strings are ISO-8601 (UTC unless an offset is given)."""
    if v is None:
        return None
    if isinstance(v, bool):
        raise _bad(v, "Timestamp")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        s = v.strip()
        if re.fullmatch(r"-?\d+", s):
            return int(s)
        try:
            d = _dt.datetime.fromisoformat(s)
        except ValueError:
            raise _bad(v, "Timestamp") from None
        if d.tzinfo is None:
            d = d.replace(tzinfo=_dt.UTC)
        delta = d - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    raise _bad(v, "Timestamp")


def coerce_bool(v):
    if v is None:
        return None
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int) and v in (0, 1):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false", "t", "f", "1", "0"):
        return 1 if v.strip().lower() in ("true", "t", "1") else 0
    raise _bad(v, "Boolean")


def coerce_decimal(v):
    if v is None:
        return None
    from decimal import Decimal, InvalidOperation

    if isinstance(v, (bool, bytes)):
        raise _bad(v, "Decimal")
    try:
        d = Decimal(str(v).strip())
    except InvalidOperation:
        raise _bad(v, "Decimal") from None
    if not d.is_finite():
        raise _bad(v, "Decimal")
    return str(d)


def coerce_date(v):
    if v is None:
        return None
    if isinstance(v, str):
        try:
            return _dt.date.fromisoformat(v.strip()).isoformat()
        except ValueError:
            pass
    raise _bad(v, "Date")


def coerce_time(v):
    if v is None:
        return None
    if isinstance(v, str):
        try:
            return _dt.time.fromisoformat(v.strip()).isoformat()
        except ValueError:
            pass
    raise _bad(v, "Time")


def coerce_json(v):
    if v is None:
        return None
    if isinstance(v, str):
        try:
            return json.dumps(json.loads(v), separators=(",", ":"), sort_keys=True)
        except ValueError:
            raise _bad(v, "Json") from None
    if isinstance(v, (int, float)):
        return json.dumps(v)
    raise _bad(v, "Json")


def coerce_uuid(v):
    if v is None:
        return None
    if isinstance(v, str):
        try:
            return str(uuid.UUID(v.strip()))
        except ValueError:
            pass
    raise _bad(v, "Uuid")


def coerce_bytes(v):
    """Bytes arrive as BLOBs, or as text (stored as its UTF-8 encoding)."""
    if v is None or isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode()
    raise _bad(v, "Bytes")


def coerce_embedding(v):
    """A vector: a JSON array of numbers (its dimension is checked per column), stored as JSON text."""
    if v is None:
        return None
    if isinstance(v, str):
        try:
            items = json.loads(v)
        except ValueError:
            raise _bad(v, "Embedding") from None
        if isinstance(items, list) and items and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in items):
            return json.dumps([float(x) for x in items], separators=(",", ":"))
    raise _bad(v, "Embedding")


def coerce_file(v):
    """A file reference: a JSON object (upstream's FileRef: id, sub, name, size, mime, sha256)."""
    if v is None:
        return None
    if isinstance(v, str):
        try:
            obj = json.loads(v)
        except ValueError:
            raise _bad(v, "File") from None
        if isinstance(obj, dict):
            return json.dumps(obj, separators=(",", ":"), sort_keys=True)
    raise _bad(v, "File")


COERCERS = {
    "kdb_smallint": _int_range(-(2**15), 2**15 - 1, "SmallInt"),
    "kdb_int": _int_range(-(2**31), 2**31 - 1, "Int"),
    "kdb_timestamp": coerce_timestamp,
    "kdb_bool": coerce_bool,
    "kdb_decimal": coerce_decimal,
    "kdb_date": coerce_date,
    "kdb_time": coerce_time,
    "kdb_json": coerce_json,
    "kdb_uuid": coerce_uuid,
    "kdb_bytes": coerce_bytes,
    "kdb_embedding": coerce_embedding,
    "kdb_file": coerce_file,
}


def encode_cell(value, data_type: str | None):
    """A stored value as the API's JSON cell: 64-bit integers as strings, booleans as booleans."""
    if value is None:
        return None
    if data_type == "Boolean":
        return bool(value)
    if data_type in ("Embedding", "File") and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, int):
        if data_type in ("SmallInt", "Int", "Timestamp", "DateTime", "Float", "Double"):
            return value
        return str(value)  # BigInt and untyped integers (COUNT(*), SUM, ...)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if data_type == "Decimal" and isinstance(value, str):
        return value
    return value


def infer_type(value) -> str:
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, int):
        return "BigInt"
    if isinstance(value, float):
        return "Double"
    if isinstance(value, bytes):
        return "Bytes"
    return "Text"
