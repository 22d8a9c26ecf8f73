"""The netns network mode of a kit cluster (root only; skipped with the reason otherwise): the fault
API works on kernel rules, what the kernel cannot do is refused clearly, and nothing is left behind
-- not even after kill -9 of the process that made the namespaces."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from kalamdb.testing import runs
from kalamdb.testing.cluster import start_cluster_server
from kalamdb.testing.netns_cluster import unavailable_reason
from kalamdb.testing.network import FaultNotSupported
from kalamdb.testing.waiting import wait_for

REASON = unavailable_reason()
pytestmark = [pytest.mark.cluster, pytest.mark.netns,
              pytest.mark.skipif(REASON is not None, reason=f"netns mode unavailable: {REASON}")]


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def test_nodes_have_their_own_ips_and_faults_are_kernel_rules():
    with start_cluster_server(2, network="netns", log_level="warn") as c:
        assert c.network_mode == "netns" and c.net.mode == "netns"
        ips = [n.url.split("//")[1].split(":")[0] for n in c.nodes]
        assert ips[0] != ips[1] and all(ip.startswith("10.213.") for ip in ips), ips
        # the node's peers see its real address
        assert c.leader().health()["nodes"][0]["rpc_addr"].split(":")[0] in ips
        ns = c.unique_namespace("k")
        c.execute_sql_on_leader(f"CREATE NAMESPACE {ns}").raise_for_error()
        c.execute_sql_on_leader(f"CREATE SHARED TABLE {ns}.t (id BIGINT PRIMARY KEY)").raise_for_error()
        c.net.loss(0.1)  # per packet: TCP retransmits, so a loss costs an RTO (>= 200 ms), never data
        acked = [i for i in range(20) if c.execute_sql_on_leader(f"INSERT INTO {ns}.t (id) VALUES ({i})").ok]
        dropped = sum(s.packets_dropped for s in c.net.stats()["kernel"].values())
        assert dropped > 0, c.net.stats()
        c.net.clear()
        c.net.isolate_client(1)
        with c.get_node(1).client(timeout=1.0) as cl, pytest.raises(OSError):
            cl.sql("SELECT 1")
        c.net.heal()
        have = {int(r[0]) for r in c.verify_data_consistency(f"SELECT id FROM {ns}.t ORDER BY id").rows}
        assert set(acked) <= have <= set(range(20)), (acked, have)
        for fault in (lambda: c.net.delay(50), lambda: c.net.clog(0, 1), lambda: c.net.reset(0, 1)):
            with pytest.raises(FaultNotSupported, match="mode 'netns' cannot"):
                fault()
        assert not c.net.supports("delay") and c.net.supports("loss")
        tag = c.launcher.net.tag
    assert tag not in _ip("netns", "list")


KILLED = textwrap.dedent('''
    import threading
    from kalamdb.testing.cluster import start_cluster_server
    c = start_cluster_server(2, network="netns", log_level="warn")
    c.net.partition([[0], [1]])
    net = c.launcher.net
    print(net.tag, net.host_veth, net.subnet, " ".join(str(n.pid) for n in c.nodes), flush=True)
    threading.Event().wait(120)
''')


def test_after_kill_9_the_next_run_removes_namespaces_links_and_routes(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALAMDB_")}
    env["KALAMDB_KIT_RUNS_DIR"] = str(tmp_path / "runs")
    p = subprocess.Popen([sys.executable, "-c", KILLED], env=env, stdout=subprocess.PIPE, text=True)
    try:
        tag, veth, subnet, *pids = p.stdout.readline().split()
        assert tag in _ip("netns", "list") and veth in _ip("link")
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
    # the nodes die with their parent; namespaces and links are kernel objects and outlive it
    wait_for(lambda: not any(_running(int(pid)) for pid in pids), 5, "the killed run's nodes to end")
    assert tag in _ip("netns", "list"), "expected the killed run's namespaces to outlive it"
    os.environ["KALAMDB_KIT_RUNS_DIR"] = str(tmp_path / "runs")
    try:
        done = runs.sweep_stale(force=True)  # what the next kit run does first
    finally:
        del os.environ["KALAMDB_KIT_RUNS_DIR"]
    assert tag not in _ip("netns", "list"), done
    assert veth not in _ip("link"), done
    assert subnet not in _ip("-4", "route", "show"), done
    assert not list((tmp_path / "runs").glob("*.json")), "the dead run's record was not removed"
