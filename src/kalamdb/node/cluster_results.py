"""The result sets of CLUSTER SNAPSHOT, REBALANCE and CLEAR, in upstream KalamDB's columns.

Upstream runs one Raft group for metadata and several for data, and answers each of these statements
with a row per group (action, group_id, success, error, snapshot_index, ...), or for CLEAR one row
about its snapshot directory. kalamdb replicates everything through one group, named `meta` as in
`system.cluster_groups`, so these statements answer one row; clients and tests written against
upstream read the same columns. Both the cluster node and the single node build their answers here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kalamdb.sql.types import encode_cell

#: the name of kalamdb's single Raft group (system.cluster_groups.group_id)
GROUP_ID = "meta"

GROUP_ACTION_SCHEMA = [("action", "Text"), ("group_id", "Text"), ("success", "Boolean"), ("error", "Text"),
                       ("snapshot_index", "BigInt"), ("target_node_id", "BigInt"), ("upto", "BigInt"),
                       ("snapshots_dir", "Text")]

CLEAR_SCHEMA = [("action", "Text"), ("snapshots_dir", "Text"), ("snapshots_dir_exists", "Boolean"),
                ("total_snapshots_found", "BigInt"), ("total_size_bytes", "BigInt"),
                ("snapshots_cleared", "BigInt"), ("cleared_size_bytes", "BigInt"), ("error_count", "BigInt"),
                ("error", "Text")]


@dataclass(frozen=True)
class ClearReport:
    """What CLUSTER CLEAR found in a snapshot directory and what it removed."""

    snapshots_dir: str
    exists: bool
    found: int = 0
    total_bytes: int = 0
    cleared: int = 0
    cleared_bytes: int = 0
    errors: tuple[str, ...] = ()


def group_action(action: str, *, success: bool = True, error: str | None = None,
                 snapshot_index: int | None = None, target_node_id: int | None = None,
                 upto: int | None = None, snapshots_dir: Path | str | None = None) -> dict:
    """One row for kalamdb's one group, as upstream's per-group action rows."""
    row = [action, GROUP_ID, success, error, snapshot_index, target_node_id, upto,
           None if snapshots_dir is None else str(snapshots_dir)]
    return _result(GROUP_ACTION_SCHEMA, [row])


def clear(report: ClearReport) -> dict:
    """One row per error, or one row when there was none (upstream's shape)."""
    errors: list[str | None] = list(report.errors) or [None]
    rows = [["clear", report.snapshots_dir, report.exists, report.found, report.total_bytes, report.cleared,
             report.cleared_bytes, len(report.errors), err] for err in errors]
    return _result(CLEAR_SCHEMA, rows)


def _result(schema: list[tuple[str, str]], rows: list[list]) -> dict:
    encoded = [[encode_cell(v, t) for v, (_, t) in zip(r, schema, strict=True)] for r in rows]
    return {"schema": [{"name": n, "data_type": t, "index": j} for j, (n, t) in enumerate(schema)],
            "rows": encoded, "row_count": len(encoded)}
