"""The API's JSON cells as Python values, by the column's `data_type` (client side).

The wire format is upstream KalamDB's and stays so: BIGINT is a JSON string (JavaScript numbers
lose precision past 2**53), TIMESTAMP an integer of microseconds since the epoch, BYTES base64,
DECIMAL a string. A program usually wants Python values instead; `typed_cell` gives them:

    BigInt -> int          Timestamp -> datetime (aware, UTC)   Date -> date   Time -> time
    Decimal -> Decimal     Uuid -> UUID    Bytes -> bytes    Json -> the parsed value
    SmallInt, Int -> int   Float, Double -> float   Boolean -> bool   Text -> str

NULL stays None, and a type this module does not know (a newer server's) passes through unchanged.
A cell that does not fit its type (a timestamp beyond year 9999) raises ValueError naming it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import uuid
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def timestamp_from_micros(micros: int) -> dt.datetime:
    """Microseconds since the epoch as an aware UTC datetime (exact: no float on the way)."""
    return EPOCH + dt.timedelta(microseconds=micros)


def iso_utc(micros: int) -> str:
    """A TIMESTAMP cell as ISO 8601 in UTC with microseconds, e.g. 2026-12-01T06:20:00.123456Z.
    Out of datetime's range (years 1-9999) it stays the raw number, so nothing is hidden."""
    try:
        return timestamp_from_micros(micros).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    except OverflowError:
        return str(micros)


def _int(v: Any) -> int:
    if isinstance(v, bool):
        raise TypeError("a boolean is not an integer")
    return int(v)


def _float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError("not a number")
    return float(v)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError("not a boolean")
    return v


def _timestamp(v: Any) -> dt.datetime:
    try:
        return timestamp_from_micros(_int(v))
    except OverflowError:
        raise ValueError("outside datetime's range (years 1-9999)") from None


def _decimal(v: Any) -> Decimal:
    try:
        return Decimal(str(v))
    except InvalidOperation:
        raise ValueError("not a decimal number") from None


def _bytes(v: Any) -> bytes:
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, TypeError):
        raise ValueError("not base64") from None


def _json(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v


DECODERS: dict[str, Callable[[Any], Any]] = {
    "SmallInt": _int, "Int": _int, "BigInt": _int,
    "Float": _float, "Double": _float, "Boolean": _bool,
    "Timestamp": _timestamp, "Date": lambda v: dt.date.fromisoformat(v), "Time": lambda v: dt.time.fromisoformat(v),
    "Decimal": _decimal, "Uuid": lambda v: uuid.UUID(v), "Bytes": _bytes, "Json": _json,
}


def typed_cell(value: Any, data_type: str | None, column: str = "?") -> Any:
    """One cell as a Python value (see the module docstring)."""
    if value is None:
        return None
    decode = DECODERS.get(data_type or "")
    if decode is None:
        return value
    try:
        return decode(value)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"column {column!r} ({data_type}): cannot decode {value!r}: {exc}") from None


def typed_rows(schema: list[dict], rows: list[list]) -> list[list]:
    """Every row's cells decoded by their column's data_type (`schema` as the API sends it)."""
    columns = [(c.get("name", "?"), c.get("data_type")) for c in schema]
    out = []
    for row in rows:
        out.append([typed_cell(v, columns[i][1], columns[i][0]) if i < len(columns) else v
                    for i, v in enumerate(row)])
    return out
