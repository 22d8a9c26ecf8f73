"""What a topic route costs on the write path: apply time per INSERT into a table with no topic,
and into one routed to a 4-partition topic (messages made while applying), alternating runs.

    python -m kalamdb.bench.topics_micro [--rows 3000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from kalamdb.engine import Database, Principal

ROOT = Principal("root", "root", "system")
BATCH = 64  # commands per apply_batch, as the group committer applies them under load


def _run(routed: bool, rows: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(tmp, durable=False)
        now = [1_750_000_000_000_000]

        def command(text: str) -> bytes:
            now[0] += 1_000
            return db.to_command(db.prepare(text, None, None, ROOT), now_us=now[0], node_id=1)

        setup = ["CREATE NAMESPACE app", "CREATE TABLE app.t (id BIGINT PRIMARY KEY, name TEXT, v DOUBLE)"]
        if routed:
            setup += ["CREATE TOPIC app.tp PARTITIONS 4", "ALTER TOPIC app.tp ADD SOURCE app.t ON INSERT"]
        for text in setup:
            db.apply(db.applied_index + 1, command(text))
        cmds = [command(f"INSERT INTO app.t (id, name, v) VALUES ({i}, 'name-{i}', {i}.5)") for i in range(rows)]
        base = db.applied_index
        t0 = time.perf_counter()
        for k in range(0, rows, BATCH):
            db.apply_batch([(base + 1 + j, c) for j, c in enumerate(cmds[k:k + BATCH], k)])
        took = time.perf_counter() - t0
        db.close()
    return took / rows * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    res: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for routed in (False, True):
            res[routed].append(_run(routed, args.rows))
    plain_us, routed_us = statistics.median(res[False]), statistics.median(res[True])
    print(f"apply per INSERT (median of {args.rounds}): no topic {plain_us:.1f} us, routed to a 4-partition topic "
          f"{routed_us:.1f} us (+{routed_us - plain_us:.1f} us, x{routed_us / plain_us:.2f})")


if __name__ == "__main__":
    main()
