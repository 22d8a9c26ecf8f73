"""Readers on their own threads and connections while the writer thread applies batches."""

from __future__ import annotations

import threading

from kalamdb.engine import Principal

ROOT = Principal("root", "root", "system")


def test_reads_see_whole_batches_and_never_block_or_fail(node):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY)")
    batch_size, batches = 10, 30
    commands = []
    for i in range(batch_size * batches):
        commands.append(node.command("INSERT INTO t (id) VALUES ($1)", [i]))
    base = node.db.applied_index
    seen: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def reader():
        try:
            prepared = node.db.prepare("SELECT COUNT(*) FROM t", None, None, ROOT)
            while not done.is_set():
                seen.append(int(node.db.execute_read(prepared)[0]["rows"][0][0]))
            seen.append(int(node.db.execute_read(prepared)[0]["rows"][0][0]))
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for b in range(batches):
            chunk = commands[b * batch_size:(b + 1) * batch_size]
            items = [(base + b * batch_size + j + 1, c) for j, c in enumerate(chunk)]
            assert all(o.error is None for o in node.db.apply_batch(items))
    finally:
        done.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors
    assert seen and seen[-1] == batch_size * batches
    assert all(n % batch_size == 0 for n in seen), "a reader saw part of a group commit"


def test_digest_with_index_is_a_consistent_pair(make_node):
    """A digest taken while the writer runs must belong to the index reported with it."""
    a, b = make_node("a"), make_node("b")
    a.sql("CREATE TABLE t (id INT PRIMARY KEY)")
    b.db.apply(1, a.log[0][1])
    cmds = [(i + 2, a.command("INSERT INTO t (id) VALUES ($1)", [i])) for i in range(40)]
    by_index = {1: b.db.digest()}
    for index, cmd in cmds:  # reference digests, one per index
        b.db.apply(index, cmd)
        by_index[index] = b.db.digest()
    pairs = []
    errors: list[BaseException] = []
    done = threading.Event()

    def reader():
        try:
            while not done.is_set():
                pairs.append(a.db.digest_with_index())
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    t = threading.Thread(target=reader)
    a.db.apply(1, a.log[0][1])
    t.start()
    try:
        for index, cmd in cmds:
            a.db.apply(index, cmd)
    finally:
        done.set()
        t.join(timeout=30)
    assert not errors, errors
    assert pairs and all(by_index[i] == d for i, d in pairs)
