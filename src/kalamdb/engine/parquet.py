"""Table rows as Arrow columns for Parquet files: each KalamDB type as the Arrow type upstream
uses for it (system.datatypes), so other tools read flushed files with the right types."""

from __future__ import annotations

import datetime as _dt
import json

import pyarrow as pa

from kalamdb.engine import catalog as cat


def arrow_type(col) -> pa.DataType:
    t = col.data_type
    if t == "Decimal" and col.type_args and len(col.type_args) == 2:
        return pa.decimal128(int(col.type_args[0]), int(col.type_args[1]))
    if t == "Embedding" and col.type_args:
        return pa.list_(pa.float32(), int(col.type_args[0]))
    return {
        "SmallInt": pa.int16(), "Int": pa.int32(), "BigInt": pa.int64(), "Float": pa.float32(),
        "Double": pa.float64(), "Boolean": pa.bool_(), "Text": pa.string(), "Bytes": pa.binary(),
        "Timestamp": pa.timestamp("us"), "DateTime": pa.timestamp("us", tz="UTC"), "Date": pa.date32(),
        "Time": pa.time64("us"), "Json": pa.string(), "Uuid": pa.string(), "Decimal": pa.string(),
        "File": pa.string(), "Embedding": pa.list_(pa.float32()),
    }.get(t, pa.string())


def arrow_schema(info: cat.TableInfo) -> pa.Schema:
    fields = [pa.field(c.name, arrow_type(c), nullable=not c.not_null) for c in info.columns]
    fields += [pa.field("_seq", pa.int64(), nullable=False), pa.field("_deleted", pa.bool_(), nullable=False)]
    return pa.schema(fields)


def _convert(col, values: list) -> list:
    t = col.data_type
    if t == "Date":
        return [None if v is None else _dt.date.fromisoformat(v) for v in values]
    if t == "Time":
        return [None if v is None else _dt.time.fromisoformat(v) for v in values]
    if t == "Boolean":
        return [None if v is None else bool(v) for v in values]
    if t == "Embedding":
        return [None if v is None else json.loads(v) for v in values]
    if t == "Decimal" and col.type_args and len(col.type_args) == 2:
        from decimal import Decimal

        return [None if v is None else Decimal(v) for v in values]
    return values


def to_arrow_columns(info: cat.TableInfo, rows: list[tuple]) -> list[pa.Array]:
    """Rows of (declared columns..., _seq, _deleted) as Arrow arrays in arrow_schema's order."""
    n = len(info.columns)
    columns = list(zip(*rows, strict=True)) if rows else [()] * (n + 2)
    out = []
    for i, col in enumerate(info.columns):
        out.append(pa.array(_convert(col, list(columns[i])), type=arrow_type(col)))
    out.append(pa.array(list(columns[n]), type=pa.int64()))
    out.append(pa.array([bool(v) for v in columns[n + 1]], type=pa.bool_()))
    return out
