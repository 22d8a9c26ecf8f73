"""Column values as they are stored: each written value is checked and converted in Python, to
exactly what the STRICT table will hold, before the write. So the executor knows every stored value
(for the change feed and no-op detection), and a bad value is refused with the column's name."""

from __future__ import annotations

import math
from collections.abc import Callable

from kalamdb.engine import limits
from kalamdb.errors import KalamError
from kalamdb.sql.statements import ColumnDef
from kalamdb.sql.types import COERCE_FN, COERCERS

_INT64 = (-(2**63), 2**63 - 1)
_SHORT = limits.MAX_VALUE_BYTES // 4  # a str this long is within the byte limit in any encoding


def _bad(value, type_name: str) -> KalamError:
    shown = repr(value) if not isinstance(value, bytes) else f"<{len(value)} bytes>"
    return KalamError("SQL_EXECUTION_ERROR", f"Invalid value {shown} for type {type_name}")


def _number_from_text(v: str):
    s = v.strip()
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return None


def to_bigint(v):
    if v is None:
        return None
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, str):
        n = _number_from_text(v)
        if n is None:
            raise _bad(v, "BigInt")
        v = n
    if isinstance(v, float):
        if not v.is_integer():
            raise _bad(v, "BigInt")
        v = int(v)
    if not isinstance(v, int):
        raise _bad(v, "BigInt")
    if not _INT64[0] <= v <= _INT64[1]:
        raise KalamError("SQL_EXECUTION_ERROR", f"Value {v} out of range for type BigInt "
                         f"({_INT64[0]} .. {_INT64[1]})")
    return v


def to_real(type_name: str) -> Callable:
    def coerce(v):
        if v is None:
            return None
        if isinstance(v, str):
            n = _number_from_text(v)
            if n is None:
                raise _bad(v, type_name)
            v = n
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _bad(v, type_name)
        f = float(v)
        if math.isnan(f):
            return None  # SQLite stores NaN as NULL
        return f

    return coerce


def sqlite_real_text(f: float) -> str:
    """A REAL as SQLite renders it into a TEXT column ("%!.15g": 15 significant digits, '.0')."""
    s = f"{f:.15g}"
    if "e" not in s and "." not in s and "inf" not in s and "nan" not in s:
        s += ".0"
    return s


def to_text(v):
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return sqlite_real_text(v)
    raise _bad(v, "Text")


_BY_TYPE: dict[str, Callable] = {"BigInt": to_bigint, "Float": to_real("Float"), "Double": to_real("Double"),
                                 "Text": to_text}
_BY_TYPE.update({t: COERCERS[fn] for t, fn in COERCE_FN.items()})


def coercer(col: ColumnDef) -> Callable:
    """`coerce_column` for one column, with a fast path for the values it stores as they come."""
    lo, hi = _INT64
    if col.data_type == "BigInt":
        return lambda v: v if type(v) is int and lo <= v <= hi else coerce_column(col, v)
    if col.data_type == "Text":
        return lambda v: v if type(v) is str and len(v) <= _SHORT else coerce_column(col, v)
    if col.data_type == "Int":
        return lambda v: v if type(v) is int and -(2**31) <= v < 2**31 else coerce_column(col, v)
    return lambda v: coerce_column(col, v)


def coerce_column(col: ColumnDef, value):
    """`value` as column `col` stores it; errors name the column and the limit."""
    fn = _BY_TYPE.get(col.data_type)
    try:
        out = fn(value) if fn is not None else value
    except KalamError as e:
        raise KalamError(e.code, f"{e.message} in column '{col.name}'") from None
    if out is not None and col.data_type == "Embedding" and col.type_args:
        dim = out.count(",") + 1
        if dim != col.type_args[0]:
            raise KalamError("SQL_EXECUTION_ERROR", f"Embedding for column '{col.name}' has {dim} values; "
                             f"the column is EMBEDDING({col.type_args[0]})")
    if out is None:
        if col.not_null:
            raise KalamError("SQL_EXECUTION_ERROR", f"Column '{col.name}' cannot be NULL")
        return None
    size = len(out) if isinstance(out, bytes) else (len(out) * 4 if isinstance(out, str) else 0)
    if size > limits.MAX_VALUE_BYTES and (isinstance(out, bytes) or len(out.encode()) > limits.MAX_VALUE_BYTES):
        n = len(out) if isinstance(out, bytes) else len(out.encode())
        raise KalamError("SQL_EXECUTION_ERROR", f"Value for column '{col.name}' is {n} bytes; a value may be "
                         f"at most {limits.MAX_VALUE_BYTES} bytes")
    return out
