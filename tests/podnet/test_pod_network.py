"""The Pod network on real namespaces, veths, routes and iptables (see conftest for the layout).

Each test builds its own cluster of node namespaces on a fabric bridge, runs the
plugin inside each node as a kubelet would, and checks traffic with tiny TCP and
UDP servers that answer with the address they saw the client come from, so that
"not NATed" and "masqueraded" are observed, not inferred from the rules.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.podnet.conftest import (
    FABRIC_IP,
    UPLINK_MTU,
    Node,
    Topology,
    connect,
    ns_run,
    pod_spec,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]


def links(netns: str) -> dict[str, dict]:
    return {link["ifname"]: link for link in json.loads(ns_run(netns, "ip", "-j", "link"))}


def routes(netns: str, *args: str) -> list[dict]:
    return json.loads(ns_run(netns, "ip", "-j", "-4", "route", "show", *args))


def our_routes(node: Node) -> dict[str, str]:
    return {r["dst"]: r["gateway"] for r in routes(node.netns, "proto", "75")}


def iptables_rules(netns: str) -> list[str]:
    """Every rule and user-defined chain, for before/after comparisons (an empty table that
    iptables made on first use stays, as iptables cannot remove one)."""
    saved = ns_run(netns, "iptables-save").splitlines()
    return sorted(line for line in saved if line.startswith("-A ") or line.endswith(" - [0:0]"))


def held_ips(node: Node) -> list[str]:
    """The addresses the node's state directory holds."""
    directory = node.state_dir / "ips"
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def apply_routes(topology: Topology, nodes: list[Node]) -> None:
    objects = [n.object() for n in nodes]
    for node in nodes:
        answer = node.agent.call("routes", node_name=node.name, nodes=objects)
        assert answer["failed"] == [], answer


def test_pods_on_one_node_reach_each_other_without_nat(topology: Topology) -> None:
    n1 = topology.add_node(1)
    a = topology.add_pod(n1, "a")
    b = topology.add_pod(n1, "b")

    assert a.ip != b.ip and {a.ip, b.ip} <= {f"10.244.1.{i}" for i in range(2, 255)}
    pod_links = links(a.netns)
    assert pod_links["eth0"]["mtu"] == UPLINK_MTU
    assert "UP" in pod_links["lo"]["flags"] and "UP" in pod_links["eth0"]["flags"]
    assert routes(a.netns, "default")[0]["gateway"] == "10.244.1.1"
    bridge = links(n1.netns)[f"{topology.prefix}0"]
    assert bridge["mtu"] == UPLINK_MTU and "UP" in bridge["flags"]
    assert ns_run(n1.netns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"

    topology.serve(b.netns, 8080)
    assert connect(a.netns, b.ip, 8080) == a.ip
    assert connect(n1.netns, b.ip, 8080) == "10.244.1.1"  # the node reaches its Pods


def test_pods_across_nodes_follow_node_routes_and_only_ours_are_touched(
    topology: Topology,
) -> None:
    n1, n2 = topology.add_node(1), topology.add_node(2)
    a, b = topology.add_pod(n1, "a"), topology.add_pod(n2, "b")
    topology.serve(b.netns, 8080)
    topology.serve(a.netns, 8080)
    ns_run(n1.netns, "ip", "route", "add", "10.250.0.0/24", "via", n2.ip, "proto", "static")
    assert connect(a.netns, b.ip, 8080, timeout=1).startswith("error")

    # Both ways, and the server sees the client Pod's own address: no NAT.
    apply_routes(topology, [n1, n2])
    assert our_routes(n1) == {"10.244.2.0/24": n2.ip}
    assert connect(a.netns, b.ip, 8080) == a.ip
    assert connect(b.netns, a.ip, 8080) == b.ip

    # A podCIDR change moves the route; a node gone takes its route with it.
    moved = n2.object()
    moved["spec"]["podCIDR"] = "10.244.22.0/24"
    answer = n1.agent.call("routes", node_name=n1.name, nodes=[n1.object(), moved])
    assert answer["added"] == ["10.244.22.0/24"] and answer["removed"] == ["10.244.2.0/24"]
    answer = n1.agent.call("routes", node_name=n1.name, nodes=[n1.object()])
    assert answer["removed"] == ["10.244.22.0/24"] and our_routes(n1) == {}
    assert connect(a.netns, b.ip, 8080, timeout=1).startswith("error")
    assert routes(n1.netns, "10.250.0.0/24")[0]["gateway"] == n2.ip  # someone else's


def test_pod_traffic_leaving_the_cluster_is_masqueraded(topology: Topology) -> None:
    n1 = topology.add_node(1)
    a = topology.add_pod(n1, "a")
    topology.serve(topology.fabric, 9000)

    assert connect(a.netns, FABRIC_IP, 9000) == n1.ip


def test_three_nodes_full_mesh_without_nat(topology: Topology) -> None:
    nodes = [topology.add_node(i) for i in (1, 2, 3)]
    pods = [topology.add_pod(node, f"p{i}") for i, node in enumerate(nodes, start=1)]
    for pod in pods:
        topology.serve(pod.netns, 8080)
    apply_routes(topology, nodes)

    for client in pods:
        for server in pods:
            if client is not server:
                assert connect(client.netns, server.ip, 8080) == client.ip, (client, server)


def test_ips_are_never_handed_out_twice_by_concurrent_processes(topology: Topology) -> None:
    # A /28 has 13 addresses for Pods (not the network, the gateway, the broadcast):
    # 16 sandboxes set up at once from two processes on one state directory.
    n1 = topology.add_node(1, start_agent=False)
    n1.pod_cidr = "10.244.1.0/28"
    first, second = topology.start_agent(n1), topology.start_agent(n1)
    pods = [topology.add_pod_namespace(n1, f"c{i}") for i in range(16)]
    for i, pod in enumerate(pods):
        (first if i % 2 else second).send("setup", sandbox=pod.sandbox(), pod={})
    answers = [first.receive() for _ in range(8)] + [second.receive() for _ in range(8)]

    ips = [a["ips"][0] for a in answers if a["ok"]]
    refused = [a for a in answers if not a["ok"]]
    assert len(ips) == 13 and len(set(ips)) == 13
    assert set(ips) == {f"10.244.1.{i}" for i in range(2, 15)}
    assert [a["type"] for a in refused] == ["RangeExhausted"] * 3
    assert all(a["retryable"] and "10.244.1.0/28" in a["error"] for a in refused)
    assert held_ips(n1) == sorted(ips)


def test_setup_is_idempotent_and_ips_survive_a_restart(topology: Topology) -> None:
    n1 = topology.add_node(1)
    a, b = topology.add_pod(n1, "a"), topology.add_pod(n1, "b")
    h = topology.add_pod(n1, "h", **pod_spec({"containerPort": 80, "hostPort": 8080}))
    topology.serve(b.netns, 8080)

    again = n1.agent.call("setup", sandbox=a.sandbox(), pod={})
    assert again["ips"] == [a.ip]

    # A new plugin instance on the same state directory: same answers, nothing rewired.
    n1.agent.close()
    restarted = topology.start_agent(n1)
    restarted.call("teardown", sandbox=h.sandbox(), pod={})  # its first call: rules still go
    assert "DNAT" not in ns_run(n1.netns, "iptables-save", "-t", "nat")
    assert h.ip not in held_ips(n1)
    veth_index = {name: link["ifindex"] for name, link in links(n1.netns).items()}
    assert restarted.call("setup", sandbox=a.sandbox(), pod={})["ips"] == [a.ip]
    assert restarted.call("setup", sandbox=b.sandbox(), pod={})["ips"] == [b.ip]
    assert {n: link["ifindex"] for n, link in links(n1.netns).items()} == veth_index
    assert connect(a.netns, b.ip, 8080) == a.ip
    c = topology.add_pod(n1, "c")
    assert c.ip not in (a.ip, b.ip)

    # A half-wired sandbox (its eth0 lost) is repaired by the next setup.
    ns_run(a.netns, "ip", "link", "del", "eth0")
    assert restarted.call("setup", sandbox=a.sandbox(), pod={})["ips"] == [a.ip]
    assert connect(a.netns, b.ip, 8080) == a.ip


def test_host_port_reaches_the_pod_from_its_node_another_node_and_itself(
    topology: Topology,
) -> None:
    n1, n2 = topology.add_node(1), topology.add_node(2)
    ports = pod_spec(
        {"containerPort": 80, "hostPort": 8080},
        {"containerPort": 53, "hostPort": 5353, "protocol": "UDP"},
    )
    a = topology.add_pod(n1, "a", **ports)
    b = topology.add_pod(n1, "b")
    topology.serve(a.netns, 80)
    topology.serve(a.netns, 53, proto="udp")

    assert connect(n1.netns, n1.ip, 8080) == n1.ip  # OUTPUT path
    assert connect(n2.netns, n1.ip, 8080) == n2.ip  # PREROUTING path, client kept
    assert connect(n2.netns, n1.ip, 5353, proto="udp") == n2.ip
    assert connect(b.netns, n1.ip, 8080) == b.ip  # a neighbour Pod through the node
    assert connect(a.netns, n1.ip, 8080) == "10.244.1.1"  # hairpin, masqueraded

    # The port is held: a second Pod asking for it is refused, naming the holder.
    c = topology.add_pod_namespace(n1, "c")
    answer = n1.agent.request(
        "setup", sandbox=c.sandbox(), pod=pod_spec({"containerPort": 81, "hostPort": 8080})
    )
    assert not answer["ok"] and answer["type"] == "HostPortConflict" and answer["retryable"]
    assert "default/a" in answer["error"] and "8080" in answer["error"]
    n1.agent.call("teardown", sandbox=c.sandbox(), pod={})

    n1.agent.call("teardown", sandbox=a.sandbox(), pod=ports)
    assert "DNAT" not in ns_run(n1.netns, "iptables-save", "-t", "nat")
    assert connect(n2.netns, n1.ip, 8080, timeout=1).startswith("error")


UDP_FROM_PORT = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", 40000))
sock.settimeout(1)
try:
    sock.sendto(b"hi", (sys.argv[1], int(sys.argv[2])))
    print(sock.recvfrom(100)[0].decode())
except OSError as exc:
    print(f"error: {type(exc).__name__}")
"""


def test_udp_host_port_reaches_a_client_that_talked_before_the_rules(topology: Topology) -> None:
    # The first datagram, before the Pod exists, leaves a flow that bypasses any later
    # DNAT while the client keeps sending from the same port; setup must forget it.
    n1, n2 = topology.add_node(1), topology.add_node(2)
    assert n1.agent.call("status")["ready"]  # the node's rules, so conntrack, are in place
    before = ns_run(n2.netns, sys.executable, "-c", UDP_FROM_PORT, n1.ip, "5353").strip()
    assert before.startswith("error")
    ports = pod_spec({"containerPort": 53, "hostPort": 5353, "protocol": "UDP"})
    a = topology.add_pod(n1, "a", **ports)
    topology.serve(a.netns, 53, proto="udp")

    after = ns_run(n2.netns, sys.executable, "-c", UDP_FROM_PORT, n1.ip, "5353").strip()
    assert after == n2.ip


def test_forward_policy_drop_is_kept_and_pod_traffic_still_flows(topology: Topology) -> None:
    n1, n2 = (topology.add_node(i, start_agent=False) for i in (1, 2))
    for node in (n1, n2):
        ns_run(node.netns, "iptables", "-P", "FORWARD", "DROP")
        topology.start_agent(node)
    a, b, c = topology.add_pod(n1, "a"), topology.add_pod(n1, "b"), topology.add_pod(n2, "c")
    for pod in (b, c):
        topology.serve(pod.netns, 8080)
    apply_routes(topology, [n1, n2])

    assert connect(a.netns, b.ip, 8080) == a.ip
    assert connect(a.netns, c.ip, 8080) == a.ip
    saved = ns_run(n1.netns, "iptables-save", "-t", "filter")
    assert ":FORWARD DROP" in saved and f"PODNET-{topology.prefix.upper()}-FORWARD" in saved

    n1.agent.call("cleanup", prefix=topology.prefix, state_dir=str(n1.state_dir))
    saved = ns_run(n1.netns, "iptables-save", "-t", "filter")
    assert ":FORWARD DROP" in saved and "PODNET" not in saved


def test_pod_cidr_arrives_later_and_is_kept_in_the_state_directory(topology: Topology) -> None:
    n1 = topology.add_node(1, start_agent=False)
    cidr = n1.pod_cidr
    agent = topology.start_agent(n1, pod_cidr="")
    assert agent.call("status") == {
        "ok": True,
        "ready": True,
        "message": "waiting for the node's podCIDR from the first Pod",
    }
    a = topology.add_pod_namespace(n1, "a")
    early = agent.request("setup", sandbox=a.sandbox(), pod={})
    assert not early["ok"] and early["type"] == "NoPodCidr" and early["retryable"]

    ip = agent.call("setup", sandbox=a.sandbox(), pod={}, pod_cidrs=["fd00::/64", cidr])["ips"]
    assert ip[0].startswith("10.244.1.")
    assert agent.call("status")["message"] == f"bridge {topology.prefix}0 on {cidr}"

    # A restarted plugin knows the range from its state directory, and refuses another.
    agent.close()
    restarted = topology.start_agent(n1, pod_cidr="")
    assert restarted.call("status")["ready"]
    assert restarted.call("setup", sandbox=a.sandbox(), pod={})["ips"] == ip
    moved = restarted.request("setup", sandbox=a.sandbox(), pod={}, pod_cidrs=["10.244.9.0/24"])
    assert not moved["ok"] and "changed from 10.244.1.0/24 to 10.244.9.0/24" in moved["error"]
    restarted.close()
    other = topology.start_agent(n1, pod_cidr="10.244.7.0/24")
    answer = other.call("status")
    assert not answer["ready"] and "holds Pods of podCIDR 10.244.1.0/24" in answer["message"]


@pytest.mark.parametrize(
    ("pod", "sandbox_netns", "expected"),
    [
        pytest.param(
            pod_spec({"containerPort": 80, "hostPort": 80, "protocol": "SCTP"}),
            None,
            "unsupported protocol 'SCTP' in hostPort mapping 0 of Pod default/x",
            id="sctp-host-port",
        ),
        pytest.param(
            pod_spec({"containerPort": 0, "hostPort": 80}),
            None,
            "invalid containerPort 0 in hostPort mapping 0 of Pod default/x",
            id="container-port-zero",
        ),
        pytest.param({}, "/var/run/netns/does-not-exist", "does-not-exist", id="netns-missing"),
    ],
)
def test_bad_setups_are_refused_before_an_ip_is_taken(
    topology: Topology, pod: dict, sandbox_netns: str | None, expected: str
) -> None:
    n1 = topology.add_node(1)
    target = topology.add_pod_namespace(n1, "x")
    sandbox = target.sandbox()
    if sandbox_netns:
        sandbox["netns"] = sandbox_netns
    answer = n1.agent.request("setup", sandbox=sandbox, pod=pod)

    assert not answer["ok"] and expected in answer["error"]
    assert held_ips(n1) == []


def test_teardown_and_cleanup_leave_nothing_behind(topology: Topology) -> None:
    n1, n2 = (topology.add_node(i, start_agent=False) for i in (1, 2))
    baseline = (set(links(n1.netns)), routes(n1.netns), sorted(iptables_rules(n1.netns)))
    for node in (n1, n2):
        topology.start_agent(node)
    a = topology.add_pod(n1, "a", **pod_spec({"containerPort": 80, "hostPort": 8080}))
    b = topology.add_pod(n1, "b")
    gone = topology.add_pod(n1, "gone")
    apply_routes(topology, [n1, n2])

    # Teardown, twice, and once after the sandbox's namespace is already deleted.
    for pod in (a, b):
        n1.agent.call("teardown", sandbox=pod.sandbox(), pod={})
        n1.agent.call("teardown", sandbox=pod.sandbox(), pod={})
    topology.delete_namespace(gone.netns)
    n1.agent.call("teardown", sandbox=gone.sandbox(), pod={})
    assert set(links(n1.netns)) == baseline[0] | {f"{topology.prefix}0"}
    assert set(links(a.netns)) == {"lo"}
    assert held_ips(n1) == [] and list((n1.state_dir / "hostports").iterdir()) == []

    answer = n1.agent.call("cleanup", prefix=topology.prefix, state_dir=str(n1.state_dir))
    assert answer == {"ok": True, "links": 1, "routes": 1, "chains": 2}
    assert (set(links(n1.netns)), routes(n1.netns), sorted(iptables_rules(n1.netns))) == baseline
    assert not Path(n1.state_dir).exists()
