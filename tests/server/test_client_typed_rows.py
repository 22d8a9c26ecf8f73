"""Typed rows: the wire keeps upstream's encoding (BigInt strings, Timestamp microseconds), and
`Response.typed_rows()` gives Python values, decoded by each column's data_type, from a real server."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest

from kalamdb.cells import iso_utc, typed_cell, typed_rows


def test_a_real_answer_decodes_to_python_values_and_the_wire_stays_raw(server, unique_ns):
    ts = "2026-12-01T06:20:00.123456Z"
    server.sql(
        f"CREATE NAMESPACE {unique_ns}; CREATE SHARED TABLE {unique_ns}.t (id BIGINT PRIMARY KEY, s SMALLINT, "
        "d DOUBLE, b BOOLEAN, at TIMESTAMP, day DATE, tm TIME, dec DECIMAL(10,2), u UUID, j JSON, raw BYTES, "
        f"name TEXT); INSERT INTO {unique_ns}.t VALUES (9007199254740993, 7, 1.5, true, '{ts}', '2026-12-01', "
        "'06:20:00', '12.50', '0190a5b4-8c3e-7f00-a000-000000000001', '{\"k\": [1, 2]}', 'hi', 'x'), "
        "(2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)").raise_for_error()
    resp = server.sql(f"SELECT * FROM {unique_ns}.t ORDER BY id DESC").raise_for_error()
    raw = resp.rows[0]
    assert raw[0] == "9007199254740993" and raw[4] == 1796106000123456  # the wire: unchanged
    row = resp.typed_dicts()[0]
    assert row["id"] == 9007199254740993  # beyond 2**53: exact, never through a float
    assert row["at"] == dt.datetime(2026, 12, 1, 6, 20, 0, 123456, tzinfo=dt.UTC)
    assert (row["s"], row["d"], row["b"]) == (7, 1.5, True)
    assert row["day"] == dt.date(2026, 12, 1) and row["tm"] == dt.time(6, 20)
    assert row["dec"] == Decimal("12.50") and row["u"] == uuid.UUID("0190a5b4-8c3e-7f00-a000-000000000001")
    assert row["j"] == {"k": [1, 2]} and row["raw"] == b"hi" and row["name"] == "x"
    second = resp.typed_dicts()[1]
    assert second.pop("_deleted") is False and isinstance(second.pop("_seq"), int)  # SELECT * ends with them
    assert set(second.values()) == {2, None}  # NULL stays None
    count = server.sql(f"SELECT COUNT(*) AS n FROM {unique_ns}.t").raise_for_error()
    assert count.rows == [["2"]] and count.typed_rows() == [[2]]


def test_iso_display_and_clear_errors():
    assert iso_utc(0) == "1970-01-01T00:00:00.000000Z"
    assert iso_utc(-1) == "1969-12-31T23:59:59.999999Z"
    assert iso_utc(10**18) == str(10**18)  # beyond year 9999: shown raw rather than hidden
    with pytest.raises(ValueError, match=r"column 'at' \(Timestamp\): cannot decode"):
        typed_cell(10**18, "Timestamp", "at")
    with pytest.raises(ValueError, match=r"column 'n' \(BigInt\)"):
        typed_cell("12x", "BigInt", "n")
    assert typed_cell("v", "SomeFutureType") == "v"
    assert typed_rows([{"name": "a", "data_type": "BigInt"}], [["1", "extra"]]) == [[1, "extra"]]
