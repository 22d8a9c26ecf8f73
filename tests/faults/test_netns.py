"""The namespace backend with real processes in real namespaces (root only; skipped otherwise)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from kalamdb.testing import netns

REASON = netns.unavailable_reason()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=f"netns backend unavailable: {REASON}"),
              pytest.mark.timeout(90)]

ECHO_SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000))
s.listen()
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(c.recv(100))
    c.close()
"""

DIAL = r"""
import socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[2]))
try:
    s.connect((sys.argv[1], 7000))
    s.sendall(b"ping")
    print(s.recv(100).decode())
except OSError as e:
    print(type(e).__name__)
"""

# Every node sends UDP to every other for a window and reports whom it heard.
UDP_AGENT = r"""
import json, socket, sys, time
me, peers, window = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7100))
s.settimeout(0.02)
print("ready", flush=True)
sys.stdin.readline()  # start together: no agent's window may end before another's begins
heard = set()
end = time.monotonic() + window
while time.monotonic() < end:
    for ip in peers:
        s.sendto(me.encode(), (ip, 7100))
    try:
        heard.add(s.recv(64).decode())
    except OSError:
        pass
print(json.dumps(sorted(heard)))
"""


def ip_out(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def make_net():
    nets = []

    def make(nodes, **kw):
        n = netns.NetnsNetwork(nodes, **kw)
        nets.append(n)
        return n

    try:
        yield make
    finally:
        for n in nets:
            n.close()


@pytest.fixture
def echo_in_node_1(make_net):
    net = make_net([1, 2, 3])
    server = net.popen(1, [sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        yield net
    finally:
        server.kill()
        server.wait(10)
        server.stdout.close()


def dial(net, src: int, dst: int, timeout: float = 0.5) -> str:
    out = net.run(src, [sys.executable, "-c", DIAL, net.ip(dst), str(timeout)], capture_output=True, text=True)
    return out.stdout.strip()


def test_namespaces_have_their_own_ips_and_close_removes_everything(make_net):
    net = make_net([1, 2])
    assert net.ip(1) in net.run(1, ["ip", "-4", "addr", "show", "eth0"], capture_output=True, text=True).stdout
    names = ip_out("netns", "list")
    assert net.ns(1) in names and net.ns(2) in names and net.hub in names
    net.close()
    names = ip_out("netns", "list")
    assert net.tag not in names


def test_cut_is_a_silent_timeout_one_way_and_heal_restores(echo_in_node_1):
    net = echo_in_node_1
    assert dial(net, 2, 1) == "ping"
    net.cut(2, 1)  # SYNs from 2 vanish
    assert dial(net, 2, 1) == "TimeoutError"  # not refused: silence
    assert dial(net, 3, 1) == "ping"
    net.heal()
    net.cut(1, 2)  # only the replies vanish: still a timeout for the dialler
    assert dial(net, 2, 1) == "TimeoutError"
    net.uncut(1, 2)
    assert dial(net, 2, 1) == "ping"
    assert all(net.reachability().values())


def test_partitions_match_the_matrix_with_real_udp_traffic(make_net):
    net = make_net([1, 2, 3])
    net.partition_majorities_ring()
    expected = net.reachability()
    assert expected == {(1, 2): True, (2, 3): True, (3, 1): True, (2, 1): False, (3, 2): False, (1, 3): False}
    agents = {i: net.popen(i, [sys.executable, "-c", UDP_AGENT, str(i),
                               json.dumps([net.ip(j) for j in net.nodes if j != i]), "0.8"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for i in net.nodes}
    heard = {}
    try:
        for p in agents.values():
            assert p.stdout.readline().strip() == "ready"
        for p in agents.values():
            p.stdin.write("go\n")
            p.stdin.flush()
        for i, p in agents.items():
            heard[i] = set(json.loads(p.communicate(timeout=30)[0]))
    finally:
        for p in agents.values():
            p.kill()
            p.wait(10)
    for (a, b), reachable in expected.items():
        assert (str(a) in heard[b]) == reachable, (a, b, heard)


def test_host_access_reaches_nodes_from_the_test_process(make_net):
    net = make_net([1], subnet="10.214.7.0/24", host_access=True)
    server = net.popen(1, [sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        with socket.create_connection((net.ip(1), 7000), timeout=5) as c:
            c.sendall(b"hi")
            assert c.recv(10) == b"hi"
    finally:
        server.kill()
        server.wait(10)
        server.stdout.close()
    veth = net.host_veth
    net.close()
    assert veth not in ip_out("link")


def test_bad_input_is_refused_and_leaves_nothing_behind():
    before = ip_out("netns", "list")
    with pytest.raises(ValueError, match="node ids"):
        netns.NetnsNetwork([0, 1])
    with netns.NetnsNetwork([1, 2]) as net, pytest.raises(ValueError, match="unknown node"):
        net.cut(1, 9)
    assert ip_out("netns", "list") == before
