"""A write workload for fault scenarios: clients insert unique ids while faults happen, remember
which inserts were acknowledged, and the check proves every acknowledged row survived everywhere."""

from __future__ import annotations

import itertools
import random
import threading
import time
from typing import Self

import pytest

from kalamdb.testing.cluster import ClusterTestServer

# parametrize a scenario over both network modes: @pytest.mark.parametrize("network", BOTH_MODES, indirect=True)
BOTH_MODES = ["proxy", pytest.param("netns", marks=pytest.mark.netns)]


def make_table(c: ClusterTestServer, prefix: str) -> str:
    ns = c.unique_namespace(prefix)
    c.execute_sql_on_leader(f"CREATE NAMESPACE {ns}").raise_for_error()
    c.execute_sql_on_leader(f"CREATE SHARED TABLE {ns}.t (id BIGINT PRIMARY KEY, v TEXT)").raise_for_error()
    return ns


class Writers:
    """`clients` threads inserting rows with unique ids through random running nodes until stopped.

    A row counts as acknowledged only on a success answer; errors and timeouts are indefinite (the
    row may or may not exist) and are only counted."""

    def __init__(self, c: ClusterTestServer, ns: str, clients: int = 4, seed: int = 0, timeout: float = 5.0):
        self.c, self.ns, self.timeout = c, ns, timeout
        self.acked: set[int] = set()
        self.attempted: set[int] = set()
        self.errors = 0
        self.latencies: list[float] = []
        self.avoid: set = set()  # nodes (handles) clients stop choosing (e.g. a known-isolated node)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(random.Random(seed + k),), daemon=True)
                         for k in range(clients)]

    def __enter__(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 10)

    def wait_for_acks(self, n: int, timeout: float) -> None:
        """Until at least n more writes are acknowledged (progress), or fail at the deadline."""
        with self._lock:
            target = len(self.acked) + n
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                have = len(self.acked)
            if have >= target:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"no progress: {have} of {target} acknowledged after {timeout:.1f}s "
                                     f"({self.errors} errors)")
            self._stop.wait(0.02)  # polling another thread's counter, bounded by the deadline

    def _run(self, rng: random.Random) -> None:
        clients: dict[int, object] = {}
        try:
            while not self._stop.is_set():
                nodes = [n for n in self.c.nodes if n.is_up() and n not in self.avoid]
                if not nodes:
                    self._stop.wait(0.05)
                    continue
                node = rng.choice(nodes)
                with self._lock:
                    i = next(self._ids)
                    self.attempted.add(i)
                t0 = time.monotonic()
                try:
                    cl = clients.get(node.node_id)
                    if cl is None:
                        cl = clients[node.node_id] = node.client(timeout=self.timeout)
                    ok = cl.sql(f"INSERT INTO {self.ns}.t (id, v) VALUES ($1, 'x')", [i]).ok
                except OSError:
                    clients.pop(node.node_id, None)
                    ok = False
                with self._lock:
                    if ok:
                        self.acked.add(i)
                        self.latencies.append(time.monotonic() - t0)
                    else:
                        self.errors += 1
        finally:
            for cl in clients.values():
                cl.close()


def assert_converged_and_nothing_lost(c: ClusterTestServer, ns: str, acked: set[int], attempted: set[int] | None = None,
                                      timeout: float = 30.0) -> None:
    """Heal has happened: one leader, every node applied the same log, same rows, same digest, and
    every acknowledged id present (and nothing that was never attempted)."""
    c.leader(timeout)
    report = c.verify_data_consistency(f"SELECT id FROM {ns}.t ORDER BY id", timeout=timeout)
    assert report, report
    digests = c.verify_state_digest(timeout=timeout)
    assert digests, digests
    node = c.get_node(0)
    rows = node.sql(f"SELECT id FROM {ns}.t ORDER BY id", consistency="local", min_applied_index=report.index)
    have = {int(r[0]) for r in rows.raise_for_error().rows}
    missing = acked - have
    assert not missing, f"{len(missing)} acknowledged writes lost: {sorted(missing)[:20]}"
    if attempted is not None:
        assert have <= attempted, f"rows nobody wrote: {sorted(have - attempted)[:20]}"
