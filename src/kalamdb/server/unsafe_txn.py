"""Deliberately broken transactions, to prove that the transactional checkers bite. Never use
outside checker tests: the node logs UNSAFE MODE at CRITICAL when one is on.

`KALAMDB_UNSAFE_TXN=stale-reads`: the SELECTs of a write transaction (a request with BEGIN, reads
and writes) are answered from this node's local state *before* the rest of the request is
proposed: they run outside the transaction's snapshot, so transactions that commit in between
are missed (lost updates, read skew) and the transaction does not see its own earlier writes.

`KALAMDB_UNSAFE_TXN=split-writes`: every statement of such a transaction is proposed as its own
Raft command, so other transactions interleave with it (not atomic), and an error in the middle
leaves the earlier statements applied while the client hears that the request failed.

Safe requests (no BEGIN, read-only, or with ROLLBACK) take the normal path.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING

from kalamdb.node.clock import clock

if TYPE_CHECKING:
    from kalamdb.engine import Database, Prepared
    from kalamdb.node.api import Node
from kalamdb.sql import statements as st

log = logging.getLogger("kalamdb.unsafe")

ENV = "KALAMDB_UNSAFE_TXN"
MODES = ("stale-reads", "split-writes")


def _is_read(s: st.Statement) -> bool:
    return isinstance(s, st.Query) and not s.is_write


class UnsafeTxn:
    """One planted bug; `run` answers a request the broken way."""

    def __init__(self, mode: str):
        if mode not in MODES:
            raise ValueError(f"{ENV} must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode

    @classmethod
    def from_env(cls) -> UnsafeTxn | None:
        mode = os.environ.get(ENV, "").strip()
        if not mode:
            return None
        unsafe = cls(mode)
        log.critical("UNSAFE MODE: %s=%s -- transactions are deliberately broken; never use this outside "
                     "checker tests", ENV, mode)
        return unsafe

    def applies(self, prepared: Prepared) -> bool:
        stmts = prepared.statements
        if not prepared.is_write or not any(isinstance(s, st.Begin) for s in stmts):
            return False
        if any(isinstance(s, st.Rollback) for s in stmts):
            return False
        if self.mode == "stale-reads":
            return any(_is_read(s) for s in stmts)
        return sum(not isinstance(s, (st.Begin, st.Commit)) for s in stmts) > 1

    async def run(self, db: Database, node: Node, prepared: Prepared) -> tuple[list, int | None]:
        if self.mode == "stale-reads":
            return await self._stale_reads(db, node, prepared)
        return await self._split_writes(db, node, prepared)

    async def _stale_reads(self, db: Database, node: Node, prepared: Prepared) -> tuple[list, int | None]:
        stmts = prepared.statements
        reads = [i for i, s in enumerate(stmts) if _is_read(s)]
        rest = [i for i in range(len(stmts)) if i not in set(reads)]
        local = db.execute_read(dataclasses.replace(prepared, statements=[stmts[i] for i in reads], is_write=False))
        command = db.to_command(dataclasses.replace(prepared, statements=[stmts[i] for i in rest]),
                                now_us=clock.now_us(), node_id=node.node_id)
        index, outcome = await node.submit(command)
        if outcome.error is not None:
            raise outcome.error
        results: list = [None] * len(stmts)
        for i, r in zip(reads, local, strict=True):
            results[i] = r
        for i, r in zip(rest, outcome.results, strict=True):
            results[i] = r
        return results, index

    async def _split_writes(self, db: Database, node: Node, prepared: Prepared) -> tuple[list, int | None]:
        results: list = []
        index = None
        for s in prepared.statements:
            if isinstance(s, (st.Begin, st.Commit)):
                message = "Transaction started" if isinstance(s, st.Begin) else "Transaction committed"
                results.append({"row_count": 0, "message": message, "as_user": prepared.principal.username})
                continue
            command = db.to_command(dataclasses.replace(prepared, statements=[s], is_write=s.is_write),
                                    now_us=clock.now_us(), node_id=node.node_id)
            index, outcome = await node.submit(command)
            if outcome.error is not None:
                raise outcome.error
            results.extend(outcome.results)
        return results, index
