"""Microbenchmark of the engine's write path: prepare + to_command + apply_batch of 64 one-row
INSERTs per group commit (what a Raft leader does per batch), reported per insert in microseconds.

    .venv/bin/python -m kalamdb.bench.engine_micro [--batches 50] [--durable/--no-durable] [--literal]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from kalamdb.engine import Database, Principal

ROOT = Principal("root", "root", "system")


def run(batches: int, batch_size: int, durable: bool, literal: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="kdb-bench-") as tmp:
        db = Database(tmp, durable=durable)
        try:
            now = time.time_ns() // 1000
            setup = db.prepare("CREATE TABLE bench (id BIGINT PRIMARY KEY, v TEXT, n INT)", None, None, ROOT)
            db.apply(1, db.to_command(setup, now_us=now, node_id=1))
            index, key = 1, 0
            prep_us, cmd_us, apply_us = [], [], []
            for _ in range(batches):
                t0 = time.perf_counter()
                prepared = []
                for _ in range(batch_size):
                    key += 1
                    if literal:
                        prepared.append(db.prepare(f"INSERT INTO bench (id, v, n) VALUES ({key}, 'value {key}', {key % 100})",
                                                   None, None, ROOT))
                    else:
                        prepared.append(db.prepare("INSERT INTO bench (id, v, n) VALUES ($1, $2, $3)",
                                                   [key, f"value {key}", key % 100], None, ROOT))
                t1 = time.perf_counter()
                items = []
                for p in prepared:
                    index += 1
                    items.append((index, db.to_command(p, now_us=now, node_id=1)))
                t2 = time.perf_counter()
                outcomes = db.apply_batch(items)
                t3 = time.perf_counter()
                assert all(o.error is None for o in outcomes)
                prep_us.append((t1 - t0) / batch_size * 1e6)
                cmd_us.append((t2 - t1) / batch_size * 1e6)
                apply_us.append((t3 - t2) / batch_size * 1e6)
            rows = db.execute_read(db.prepare("SELECT COUNT(*) FROM bench", None, None, ROOT))[0]["rows"]
            assert rows == [[str(batches * batch_size)]]
        finally:
            db.close()
            fsync_us = _fsync_p50_us(tmp)
    med = statistics.median
    return {"fsync_p50_us": fsync_us, "batch_apply_ms": med(apply_us) * batch_size / 1000, "prepare_us": med(prep_us), "to_command_us": med(cmd_us), "apply_us": med(apply_us),
            "total_us": med(prep_us) + med(cmd_us) + med(apply_us)}


def _fsync_p50_us(directory: str, rounds: int = 30) -> float:
    """The disk's fsync latency right now, in the same run: durable apply is bounded below by it."""
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        samples = []
        for _ in range(rounds):
            os.write(fd, b"x" * 128)
            t = time.perf_counter()
            os.fsync(fd)
            samples.append((time.perf_counter() - t) * 1e6)
    finally:
        os.close(fd)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--no-durable", action="store_true", help="synchronous=OFF (cluster mode)")
    ap.add_argument("--literal", action="store_true", help="distinct literal SQL per insert (parse cache misses)")
    args = ap.parse_args(argv)
    r = run(args.batches, args.batch_size, not args.no_durable, args.literal)
    mode = f"durable={not args.no_durable} literal={args.literal} batch={args.batch_size}x{args.batches}"
    print(f"engine_micro {mode}: per insert prepare {r['prepare_us']:.1f} us, to_command "
          f"{r['to_command_us']:.1f} us, apply_batch {r['apply_us']:.1f} us, total {r['total_us']:.1f} us "
          f"(~{1e6 / r['total_us']:.0f} inserts/s on one core); one apply_batch of {args.batch_size} "
          f"{r['batch_apply_ms']:.2f} ms, disk fsync p50 {r['fsync_p50_us']:.0f} us")


if __name__ == "__main__":
    main()
