"""Small SQL helpers shared by cluster tests (tables of ids written through chosen nodes)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor


def setup_table(c, ns: str) -> None:
    c.execute_sql_on_leader(f"CREATE NAMESPACE {ns}").raise_for_error()
    c.execute_sql_on_leader(f"CREATE SHARED TABLE {ns}.t (id BIGINT PRIMARY KEY, v TEXT)").raise_for_error()


def insert_ids(c, ns: str, ids: list[int], nodes=None, clients: int = 8) -> list[int]:
    """Insert one row per id through the given nodes (round robin, `clients` threads each with
    its own connection); return the ids acknowledged."""
    nodes = nodes or [n for n in c.nodes if n.is_running()]

    def work(k: int) -> list[int]:
        node = nodes[k % len(nodes)]
        acked = []
        with node.client() as cl:
            for i in ids[k::clients]:
                r = cl.sql(f"INSERT INTO {ns}.t (id, v) VALUES ($1, 'x')", [i])
                if r.ok:
                    acked.append(i)
        return acked

    with ThreadPoolExecutor(clients) as pool:
        return sorted(i for part in pool.map(work, range(clients)) for i in part)


def local_ids(node, ns: str, index: int) -> list[int]:
    """The ids in node's own applied state once it applied `index`."""
    r = node.sql(f"SELECT id FROM {ns}.t ORDER BY id", consistency="local", min_applied_index=index)
    return [int(x[0]) for x in r.raise_for_error().rows]
