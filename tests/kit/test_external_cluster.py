"""External mode: the kit drives a cluster it did not start, given only URLs and the root password.

The "external" cluster here is a real one started by the kit itself (and, in the last test, by
`kalamdb cluster up`): the external code path only ever sees its URLs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from kalamdb.testing.cluster import ClusterError, start_cluster_server
from kalamdb.testing.external import connect_external_cluster, parse_cluster_urls
from kalamdb.testing.ports import free_port_block

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def kit_cluster():
    """One kit-started cluster that this module treats as external (none of its tests stop nodes)."""
    c = start_cluster_server(3, log_level="warn")
    try:
        yield c
    finally:
        c.shutdown()


def _urls(c) -> str:
    return ",".join(n.url for n in c.nodes)


def test_everything_but_process_control_works_on_an_external_cluster(kit_cluster):
    ext = connect_external_cluster(_urls(kit_cluster), kit_cluster.root_password)
    try:
        assert [n.node_id for n in ext.nodes] == [1, 2, 3]
        assert ext.leader().node_id == kit_cluster.leader().node_id
        ns = ext.unique_namespace("ext")
        r = ext.execute_sql_on_random(f"CREATE NAMESPACE {ns}")
        assert r.ok, r
        ext.execute_sql_on(1, f"CREATE SHARED TABLE {ns}.t (id BIGINT PRIMARY KEY)").raise_for_error()
        ext.execute_sql_on_leader(f"INSERT INTO {ns}.t (id) VALUES (1), (2)").raise_for_error()
        assert ext.verify_data_consistency(f"SELECT id FROM {ns}.t ORDER BY id").rows == [("1",), ("2",)]
        assert ext.verify_state_digest()
        st = ext.node_stats(0)
        assert st.running and st.term >= 1 and st.applied_index >= 1 and st.rss_mb > 0, st
        # process control, network faults and pressure are not things the kit has over it
        for control in ("processes", "net", "pressure", "add_node", "remove_node"):
            assert not hasattr(ext, control), control
    finally:
        ext.shutdown()
    assert kit_cluster.leader().is_leader()  # shutting the external view down left the cluster alone


def test_outside_pytest_process_control_is_simply_absent(kit_cluster, monkeypatch):
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    with (connect_external_cluster(_urls(kit_cluster), kit_cluster.root_password) as ext,
          pytest.raises(AttributeError, match="processes")):
        ext.processes.kill(0)


def test_bad_urls_and_dead_nodes_get_clear_errors(kit_cluster):
    with pytest.raises(ValueError, match="not an http://host:port URL"):
        parse_cluster_urls("http://127.0.0.1:1,ftp://x")
    with pytest.raises(ValueError, match="empty"):
        parse_cluster_urls(" , ")
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    try:
        with pytest.raises(ClusterError, match="does not answer"):
            connect_external_cluster(f"{kit_cluster.nodes[0].url},http://127.0.0.1:{dead.getsockname()[1]}",
                                     kit_cluster.root_password)
    finally:
        dead.close()
    url = kit_cluster.nodes[0].url
    with pytest.raises(ClusterError, match="same node twice"):
        connect_external_cluster(f"{url},{url}", kit_cluster.root_password)


SUITE = textwrap.dedent('''
    import pytest

    pytestmark = pytest.mark.cluster

    def test_sql_runs_on_the_external_cluster(cluster):
        assert type(cluster).__name__ == "ExternalCluster"
        ns = cluster.unique_namespace("x")
        r = cluster.execute_sql_on_random(f"CREATE NAMESPACE {ns}")
        assert r.ok, r
        assert cluster.verify_data_consistency("SHOW NAMESPACES")

    @pytest.mark.process_control
    def test_killing_a_node_is_skipped(cluster):
        cluster.processes.kill(0)

    def test_a_fresh_cluster_is_skipped(fresh_cluster):
        raise AssertionError("must not run")
''')


def _run_suite(tmp_path, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    (tmp_path / "test_ext.py").write_text(SUITE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KALAMDB_", "PYTEST_"))}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           "-p", "no:hypothesispytest", "test_ext.py"],
                          check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_the_plugin_fixtures_use_kalamdb_cluster_urls(kit_cluster, tmp_path):
    run = _run_suite(tmp_path, {"KALAMDB_CLUSTER_URLS": _urls(kit_cluster),
                                "KALAMDB_ROOT_PASSWORD": kit_cluster.root_password})
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "1 passed, 2 skipped" in out, out
    assert "test_killing_a_node_is_skipped needs process control" in out, out
    assert "a fresh cluster needs process control" in out, out
    # nothing of the kit ran any process: the cluster is the one we started, still whole
    assert kit_cluster.verify_data_consistency("SHOW NAMESPACES")


def test_external_mode_against_kalamdb_cluster_up(tmp_path):
    base = free_port_block(6)
    password = "up-root-pw"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALAMDB_")}
    env["KALAMDB_ROOT_PASSWORD"] = password
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen([sys.executable, "-m", "kalamdb", "cluster", "up", "--nodes", "3",
                             "--data-dir", str(tmp_path / "data"), "--base-port", str(base),
                             "--rpc-base-port", str(base + 3), "--log-level", "warn"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while "Cluster ready" not in (tmp_path / "up.log").read_text():
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.05)  # polling another process's output, bounded by the deadline
        urls = ",".join(f"http://127.0.0.1:{base + i}" for i in range(3))
        run = _run_suite(tmp_path, {"KALAMDB_CLUSTER_URLS": urls, "KALAMDB_ROOT_PASSWORD": password})
        out = run.stdout + run.stderr
        assert run.returncode == 0 and "1 passed, 2 skipped" in out, out
    finally:
        proc.send_signal(signal.SIGTERM)  # `cluster up` stops its nodes on SIGTERM
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
