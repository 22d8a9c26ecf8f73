"""kalamdb.engine: the replicated state machine (SQLite) behind every node."""

from kalamdb.engine.database import Database, Outcome, Prepared, Principal
from kalamdb.sql.statements import ClusterOp

__all__ = ["ClusterOp", "Database", "Outcome", "Prepared", "Principal"]
