"""The Pod network under the proxy's Service rules, on two node namespaces.

Services are only as good as the network under them: a ClusterIP DNAT to a
Pod on the same bridge needs bridged replies to pass conntrack, one to the Pod
itself needs the hairpin port mode, and one to a Pod on another node needs the
routes. Each chain family must also survive the other's cleanup (the proxy
deletes every KUBELITE-* chain it finds; ours are PODNET-*).
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter

import pytest

from machinery.clock import FakeClock
from proxy.cleanup import cleanup as proxy_cleanup
from proxy.config import ProxyConfig
from proxy.iptables import IptablesCommand
from proxy.state import ProxyState
from proxy.sync import SyncRunner
from tests.podnet.conftest import CLUSTER_CIDR, Node, Topology, connect, ns_run
from tests.proxy.builders import endpoints, port, service

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

CLUSTER_IP = "10.96.0.10"

MANY = """
import socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(count):
    try:
        with socket.create_connection((host, port), timeout=3) as conn:
            print(conn.makefile().readline().strip())
    except OSError as exc:
        print(f"error {type(exc).__name__}")
"""


def connect_many(netns: str, host: str, port_number: int, count: int) -> Counter:
    """Answers of `count` connections, by backend label; each backend also says who called."""
    out = ns_run(netns, sys.executable, "-c", MANY, host, str(port_number), str(count))
    return Counter(tuple(line.split()) for line in out.splitlines())


async def program_proxy(node: Node, backends: list[str]) -> None:
    clock = FakeClock()
    state = ProxyState(clock=clock)
    state.upsert_service(service("web", cluster_ip=CLUSTER_IP, ports=[port(80, target=8080)]))
    state.upsert_endpoints(endpoints("web", ips=backends, ports=[{"port": 8080}]))
    state.mark_listed("Service")
    state.mark_listed("Endpoints")
    runner = SyncRunner(
        state,
        IptablesCommand(netns=node.netns),
        config=ProxyConfig(cluster_cidr=CLUSTER_CIDR),
        clock=clock,
    )
    result = await runner.sync()
    assert result.ok, result.error


async def test_cluster_ip_reaches_pods_on_this_node_itself_and_another_node(
    topology: Topology,
) -> None:
    n1, n2 = topology.add_node(1), topology.add_node(2)
    a, b, c = topology.add_pod(n1, "a"), topology.add_pod(n1, "b"), topology.add_pod(n2, "c")
    for pod in (a, b, c):
        topology.serve(pod.netns, 8080, label=pod.name)
    for node in (n1, n2):
        node.agent.call("routes", node_name=node.name, nodes=[n1.object(), n2.object()])
    await program_proxy(n1, [a.ip, b.ip, c.ip])

    seen = await asyncio.to_thread(connect_many, a.netns, CLUSTER_IP, 80, 60)
    backends = {answer[0] for answer in seen}
    assert backends == {"a", "b", "c"}, seen  # "a": the hairpin through the bridge port
    # Pod to Pod through a Service keeps the client's address, but to itself (the
    # hairpin, masqueraded so that the reply comes back through the node).
    assert {answer for answer in seen if answer[0] != "a"} == {("b", a.ip), ("c", a.ip)}

    # Each side's cleanup leaves the other's chains.
    saved = ns_run(n1.netns, "iptables-save", "-t", "nat")
    assert "KUBELITE-SERVICES" in saved and f"PODNET-{topology.prefix.upper()}-MASQ" in saved
    await proxy_cleanup(IptablesCommand(netns=n1.netns))
    saved = ns_run(n1.netns, "iptables-save", "-t", "nat")
    assert "KUBELITE-" not in saved and f"PODNET-{topology.prefix.upper()}-MASQ" in saved
    assert connect(a.netns, c.ip, 8080) == f"c {a.ip}"
    await program_proxy(n1, [c.ip])
    n1.agent.call("cleanup", prefix=topology.prefix)
    saved = ns_run(n1.netns, "iptables-save", "-t", "nat")
    assert "KUBELITE-SERVICES" in saved and "PODNET" not in saved
