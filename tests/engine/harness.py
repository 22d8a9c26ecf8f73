"""A real Database (SQLite files) driven the way a node drives it: prepare on the proposer, turn
writes into commands, apply them in log order. Shared by tests/engine and tests/security."""

from __future__ import annotations

import pytest

from kalamdb.engine import Database, Principal
from kalamdb.errors import KalamError

ROOT = Principal("root", "root", "system")
CLOCK_START_US = 1_750_000_000_000_000


class Node:
    """One replica plus the log it has applied; `sql` proposes and applies like a one-node cluster."""

    def __init__(self, path, node_id: int = 1, **kwargs):
        self.path = path
        self.node_id = node_id
        self.db = Database(path, node_id=node_id, **kwargs)
        self.log: list[tuple[int, bytes]] = []
        self.now_us = CLOCK_START_US

    def tick(self) -> int:
        self.now_us += 1_000
        return self.now_us

    def command(self, text: str, params=None, ns=None, who: Principal = ROOT) -> bytes:
        prepared = self.db.prepare(text, params, ns, who)
        assert prepared.is_write, text
        return self.db.to_command(prepared, now_us=self.tick(), node_id=self.node_id)

    def sql(self, text: str, params=None, ns=None, who: Principal = ROOT) -> list[dict]:
        prepared = self.db.prepare(text, params, ns, who)
        if not prepared.is_write:
            return self.db.execute_read(prepared)
        cmd = self.db.to_command(prepared, now_us=self.tick(), node_id=self.node_id)
        index = self.db.applied_index + 1
        self.log.append((index, cmd))
        outcome = self.db.apply(index, cmd)
        if outcome.error is not None:
            raise outcome.error
        return outcome.results

    def rows(self, text: str, params=None, ns=None, who: Principal = ROOT) -> list[list]:
        return self.sql(text, params, ns, who)[-1]["rows"]

    def error(self, text: str, params=None, ns=None, who: Principal = ROOT) -> KalamError:
        with pytest.raises(KalamError) as info:
            self.sql(text, params, ns, who)
        return info.value

    def login(self, username: str, password: str) -> Principal:
        return self.db.authenticate(username, password)

    def close(self) -> None:
        self.db.close()
