"""Real traffic through the proxy's rules, in a small cluster made of network namespaces.

Topology (every namespace and link created here, removed afterwards):

    node   bridge br0 10.244.0.1/24, the service CIDR routed to it
      |-- pod-a 10.244.0.11   tiny TCP servers on :8080 answering their own name
      |-- pod-b 10.244.0.12
      |-- pod-c 10.244.0.13
      `-- client 10.244.0.20  connects to ClusterIPs and NodePorts (PREROUTING path)

The proxy programs the node namespace; the node itself connects too (OUTPUT
path), and pod-a connects to its own Service (hairpin: half the time it is
sent to itself and must be masqueraded to get the reply).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from machinery.clock import FakeClock
from proxy.config import ProxyConfig
from proxy.iptables import IptablesCommand
from proxy.state import ProxyState
from proxy.sync import SyncRunner
from tests.proxy.builders import endpoints, port, service
from tests.proxy.conftest import Namespaces, ns_run

pytestmark = pytest.mark.root

BACKENDS = {"pod-a": "10.244.0.11", "pod-b": "10.244.0.12", "pod-c": "10.244.0.13"}
CLIENT_IP = "10.244.0.20"
NODE_IP = "10.244.0.1"

SERVER = """
import socket, sys
name = sys.argv[1]
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("0.0.0.0", 8080))
sock.listen(128)
print("ready", flush=True)
while True:
    conn, _ = sock.accept()
    conn.sendall(name.encode() + b"\\n")
    conn.close()
"""

CLIENT = """
import json, socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seen = {}
for _ in range(count):
    try:
        with socket.create_connection((host, port), timeout=5) as conn:
            key = conn.makefile().readline().strip() or "empty"
    except ConnectionRefusedError:
        key = "refused"
    except socket.timeout:
        key = "timeout"
    except OSError as exc:
        key = f"error: {exc}"
    seen[key] = seen.get(key, 0) + 1
print(json.dumps(seen))
"""


def connect(netns: str, host: str, port_number: int, count: int) -> Counter:
    out = ns_run(netns, sys.executable, "-c", CLIENT, host, str(port_number), str(count))
    return Counter(json.loads(out))


def add_pod(namespaces: Namespaces, node: str, name: str, ip: str, index: int) -> str:
    pod = namespaces.create(name)
    link = f"vp{index}"
    ns_run(node, "ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", pod)
    ns_run(node, "ip", "link", "set", link, "master", "br0", "up")
    # Hairpin: the bridge may send a frame back out of the port it came in on,
    # which is how a Pod reaches itself through its own Service.
    ns_run(node, "ip", "link", "set", link, "type", "bridge_slave", "hairpin", "on")
    ns_run(pod, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
    ns_run(pod, "ip", "link", "set", "eth0", "up")
    ns_run(pod, "ip", "route", "add", "default", "via", NODE_IP)
    return pod


@pytest.fixture
def cluster(namespaces: Namespaces):
    node = namespaces.create("node")
    ns_run(node, "ip", "link", "add", "br0", "type", "bridge")
    ns_run(node, "ip", "addr", "add", f"{NODE_IP}/24", "dev", "br0")
    ns_run(node, "ip", "link", "set", "br0", "up")
    # ClusterIPs need a route for the node's own connections (OUTPUT is
    # routed before it is DNATed); a node has its default route for that.
    ns_run(node, "ip", "route", "add", "10.96.0.0/12", "dev", "br0")
    ns_run(node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    # The REJECT test sends several port-unreachables in a row to one client;
    # the kernel's per-peer ICMP rate limit would turn some into timeouts.
    ns_run(node, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0")
    # Replies between Pods on the bridge must pass conntrack to be un-DNATed.
    ns_run(node, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
    pods = {
        name: add_pod(namespaces, node, name, ip, i)
        for i, (name, ip) in enumerate(BACKENDS.items())
    }
    client = add_pod(namespaces, node, "client", CLIENT_IP, len(BACKENDS))
    servers = []
    try:
        for name, pod in pods.items():
            proc = subprocess.Popen(
                ["ip", "netns", "exec", pod, sys.executable, "-c", SERVER, name],
                stdout=subprocess.PIPE,
                text=True,
            )
            servers.append(proc)
            assert proc.stdout.readline().strip() == "ready", f"server in {name} did not start"
        yield {"node": node, "client": client, **pods}
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()


async def program(node: str) -> None:
    clock = FakeClock()
    state = ProxyState(clock=clock)
    web_ports = [port(80, name="http", target=8080, node_port=30080)]
    state.upsert_service(service("web", cluster_ip="10.96.0.10", ports=web_ports, node_port=True))
    state.upsert_endpoints(
        endpoints("web", ips=list(BACKENDS.values()), ports=[{"name": "http", "port": 8080}])
    )
    state.upsert_service(service("empty", cluster_ip="10.96.0.30", ports=[port(80)]))
    state.mark_listed("Service")
    state.mark_listed("Endpoints")
    config = ProxyConfig(cluster_cidr="10.244.0.0/16")
    result = await SyncRunner(state, IptablesCommand(netns=node), config=config, clock=clock).sync()
    assert result.ok, result.error


def assert_spread(seen: Counter, total: int) -> None:
    assert set(seen) == set(BACKENDS), seen
    # Each of three backends gets a third on average; 15% leaves a wide margin
    # for the randomness of the statistic match.
    assert all(n >= 0.15 * total for n in seen.values()), seen


async def test_cluster_ip_spreads_over_every_backend(cluster):
    await program(cluster["node"])
    assert_spread(connect(cluster["client"], "10.96.0.10", 80, 200), 200)  # PREROUTING
    assert_spread(connect(cluster["node"], "10.96.0.10", 80, 200), 200)  # OUTPUT


async def test_node_port_reaches_every_backend(cluster):
    await program(cluster["node"])
    seen = connect(cluster["client"], NODE_IP, 30080, 90)
    assert set(seen) == set(BACKENDS), seen


async def test_pod_reaches_itself_through_its_service(cluster):
    await program(cluster["node"])
    seen = connect(cluster["pod-a"], "10.96.0.10", 80, 90)
    assert set(seen) == set(BACKENDS), seen  # pod-a among them: hairpin works


async def test_service_without_endpoints_refuses_connections(cluster):
    await program(cluster["node"])
    assert connect(cluster["client"], "10.96.0.30", 80, 5) == Counter(refused=5)
    assert connect(cluster["node"], "10.96.0.30", 80, 5) == Counter(refused=5)
