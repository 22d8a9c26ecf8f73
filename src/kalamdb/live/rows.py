"""Rows as subscribers receive them (upstream's kalamdb-live notification.rs), from the engine's
`Change` (storage values) and from initial-data reads (already API cells):

- insert: `rows` = [every column + `_seq` + `_deleted: false`] (STREAM tables: no `_deleted`);
- update: `rows` = [new `_seq` + primary key + every other column whose new value is not null],
  `old_values` = [old `_seq` + old primary key + the old value of every column that changed];
- delete: `old_values` = [every column + the tombstone's `_seq` + `_deleted: true`]; on a STREAM
  table (a hard delete) `[{"row_id": "<user>:<seq>"}]`;
- with a projection: `_seq` + the projected columns (update: + the primary key).

Cells are encoded as the SQL API encodes them (`encode_cell`: BIGINT as a string, TIMESTAMP as
microseconds, booleans as booleans), so a row reads the same over HTTP and over the WebSocket.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kalamdb.engine.changes import Change
from kalamdb.live.protocol import ChangeTemplate
from kalamdb.sql.types import STORAGE, encode_cell, infer_type

SEQ, DELETED = "_seq", "_deleted"
SYSTEM_TYPES = {SEQ: "BigInt", DELETED: "Boolean"}


@dataclass(frozen=True)
class TableShape:
    """What payloads need to know about a table: its kind, columns in order, types, primary key."""

    table_id: str  # ns.t
    table_type: str  # USER | SHARED | STREAM | SYSTEM
    columns: tuple[str, ...]
    types: Mapping[str, str]  # column -> data_type (user and system columns)
    primary_key: str | None = None
    not_null: frozenset[str] = frozenset()
    access_level: str | None = None  # SHARED: PUBLIC | PRIVATE | RESTRICTED | DBA
    affinity: Mapping[str, str] = field(default_factory=dict)  # column -> SQLite storage type

    @property
    def owned(self) -> bool:
        return self.table_type in ("USER", "STREAM")

    def cell(self, column: str, value: Any) -> Any:
        t = self.types.get(column)
        if t is None and value is not None:
            t = infer_type(value)  # a column added after the subscription started
        return encode_cell(value, t)

    def schema(self, projection: tuple[str, ...] | None) -> list[dict]:
        """The ack's schema: the projected columns, or every column then `_seq`, `_deleted`."""
        if projection is not None:
            names = list(projection)
        else:
            names = list(self.columns) + ([SEQ] if self.table_type == "STREAM" else [SEQ, DELETED])
        out = []
        for i, name in enumerate(names):
            f: dict[str, Any] = {"name": name, "data_type": self.types.get(name, "Text"), "index": i}
            if name == self.primary_key:
                f["flags"] = ["pk", "nn", "uq"]
            elif name in self.not_null or name in SYSTEM_TYPES:
                f["flags"] = ["nn"]
            out.append(f)
        return out


def make_shape(table_id: str, table_type: str, columns: list[dict], primary_key: str | None,
               options: Mapping[str, Any]) -> TableShape:
    """From the catalog's column definitions (`{name, data_type, not_null, ...}` as system.tables
    holds them)."""
    names = tuple(c["name"] for c in columns)
    types = {c["name"]: c["data_type"] for c in columns} | SYSTEM_TYPES
    affinity = {n: STORAGE.get(t, "TEXT") for n, t in types.items()}
    not_null = frozenset(c["name"] for c in columns if c.get("not_null"))
    level = options.get("ACCESS_LEVEL") if table_type == "SHARED" else None
    return TableShape(table_id, table_type, names, types, primary_key, not_null,
                      str(level).upper() if level else None, affinity)


def _user_columns(row: Mapping[str, Any]) -> list[str]:
    return [k for k in row if not k.startswith("_")]


def full_row(shape: TableShape, row: Mapping[str, Any], seq: int, deleted: bool,
             projection: tuple[str, ...] | None) -> dict:
    """A row for `rows` (insert, initial data) or a delete's `old_values`."""
    out: dict[str, Any] = {}
    if projection is None:
        for k in _user_columns(row):
            out[k] = shape.cell(k, row[k])
        out[SEQ] = str(seq)
        if shape.table_type != "STREAM":
            out[DELETED] = deleted
        return out
    out[SEQ] = str(seq)
    for k in projection:
        out[k] = shape.cell(k, row.get(k))
    return out


def update_rows(shape: TableShape, new: Mapping[str, Any], old: Mapping[str, Any],
                projection: tuple[str, ...] | None) -> tuple[dict, dict]:
    """(new delta, old delta) of an update, as upstream's project_update_delta."""
    pk = shape.primary_key
    new_map: dict[str, Any] = {SEQ: str(new[SEQ])}
    old_map: dict[str, Any] = {SEQ: str(old[SEQ])}
    if pk is not None:
        if pk in new:
            new_map[pk] = shape.cell(pk, new[pk])
        if pk in old:
            old_map[pk] = shape.cell(pk, old[pk])
    cols = _user_columns(new) if projection is None else list(projection)
    for k in cols:
        if k.startswith("_") or k == pk:
            continue
        nv = new.get(k)
        if nv is not None:
            new_map[k] = shape.cell(k, nv)
        if k in new and k in old and old[k] != nv:  # a changed column: its old value
            old_map[k] = shape.cell(k, old[k])
    return new_map, old_map


def change_template(shape: TableShape, change: Change, projection: tuple[str, ...] | None) -> ChangeTemplate:
    """The change message of `change` for subscribers with this projection."""
    if change.op == "insert":
        assert change.row is not None
        return ChangeTemplate("insert", [full_row(shape, change.row, change.seq, False, projection)], None)
    if change.op == "update":
        assert change.row is not None and change.old is not None
        new, old = update_rows(shape, change.row, change.old, projection)
        return ChangeTemplate("update", [new], [old])
    assert change.old is not None
    if shape.table_type == "STREAM":
        return ChangeTemplate("delete", None, [{"row_id": f"{change.owner}:{change.old.get(SEQ)}"}])
    return ChangeTemplate("delete", None, [full_row(shape, change.old, change.seq, True, projection)])


def match_row(change: Change) -> Mapping[str, Any]:
    """The row a subscription's WHERE is tested on: the new row, or for a delete the tombstone
    (the old values; upstream tests the new row only)."""
    if change.op == "delete":
        assert change.old is not None
        return {**change.old, SEQ: change.seq, DELETED: True}
    assert change.row is not None
    return change.row


def result_rows(result: dict, *, stream: bool, projected: bool) -> list[tuple[int, dict]]:
    """Initial-data rows from an engine SELECT result (`schema` + `rows` of API cells) as
    (`_seq`, row dict) pairs, keeping `_deleted` only where upstream shows it."""
    names = [c["name"] for c in result.get("schema") or []]
    seq_at = names.index(SEQ)
    out = []
    for cells in result.get("rows") or []:
        row = dict(zip(names, cells, strict=True))
        if stream or projected:
            row.pop(DELETED, None)
        if projected:  # upstream puts `_seq` first in projected rows
            row = {SEQ: row.pop(SEQ), **row}
        out.append((int(cells[seq_at]), row))
    return out
