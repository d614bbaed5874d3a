"""Routes between nodes kept in step with Node objects held by a real API server.

Three node namespaces, one RouteController per node watching Nodes through an
informer, each managing its node's routing table from this process (RouteSyncer
with netns_path) while the plugin runs inside the nodes. Joining, a podCIDR
arriving late, and a node's deletion are all driven through the API.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable

import pytest

from kubelet.podnet import RouteController, RouteSyncer
from machinery.client import ApiClient
from machinery.informer import Informer
from tests.podnet.conftest import NETNS_DIR, Node, Topology, connect

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]


async def create_node(client: ApiClient, node: Node, *, pod_cidr: bool = True) -> None:
    obj = node.object()
    status = obj.pop("status")
    if not pod_cidr:
        obj["spec"] = {}
    await client.create("nodes", obj)
    await client.patch("nodes", node.name, {"status": status}, status=True)


async def eventually(check: Callable[[], bool], what: str, *, attempts: int = 300) -> None:
    """Wait for a state the controllers reach asynchronously; bounded, not timed."""
    for _ in range(attempts):
        if await asyncio.to_thread(check):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never reached: {what}")


async def test_routes_follow_nodes_joining_and_leaving(
    topology: Topology, client: ApiClient
) -> None:
    nodes = [topology.add_node(i) for i in (1, 2, 3)]
    pods = [topology.add_pod(node, f"p{i}") for i, node in enumerate(nodes, start=1)]
    for pod in pods:
        topology.serve(pod.netns, 8080)
    syncers = [RouteSyncer(node_name=n.name, netns_path=f"{NETNS_DIR}/{n.netns}") for n in nodes]
    informer = Informer(client, "nodes")
    controllers = [RouteController(informer, s, resync_period=3600) for s in syncers]
    informer.start()
    tasks = [asyncio.create_task(c.run()) for c in controllers]
    try:
        for node in nodes[:2]:
            await create_node(client, node)
        await create_node(client, nodes[2], pod_cidr=False)

        def routes_are(expected: list[dict]) -> Callable[[], bool]:
            return lambda: (
                [{str(k): str(v) for k, v in s.current().items()} for s in syncers] == (expected)
            )

        # node-3 has no podCIDR yet: nobody routes to it, and it routes to the others.
        r1, r2, r3 = ({n.pod_cidr: n.ip} for n in nodes)
        await eventually(routes_are([r2, r1, {**r1, **r2}]), "routes between node-1 and node-2")
        assert connect(pods[0].netns, pods[1].ip, 8080) == pods[0].ip
        assert controllers[0].last_result.skipped[0].reason == "no spec.podCIDR yet"

        current = await client.get("nodes", nodes[2].name)
        updated = copy.deepcopy(current)
        updated["spec"]["podCIDR"] = nodes[2].pod_cidr
        await client.update("nodes", updated)
        await eventually(routes_are([{**r2, **r3}, {**r1, **r3}, {**r1, **r2}]), "full mesh")
        for client_pod in pods:
            for server in pods:
                if client_pod is not server:
                    got = await asyncio.to_thread(connect, client_pod.netns, server.ip, 8080)
                    assert got == client_pod.ip

        # A heartbeat-like status change syncs nothing; a deletion removes the routes.
        before = [c.syncs for c in controllers]
        await client.patch("nodes", nodes[0].name, {"metadata": {"labels": {"x": "y"}}})
        await client.delete("nodes", nodes[2].name)
        await eventually(routes_are([r2, r1, {**r1, **r2}]), "node-3's routes removed")
        assert [c.syncs for c in controllers][:2] == [b + 1 for b in before[:2]]
        got = await asyncio.to_thread(connect, pods[0].netns, pods[2].ip, 8080, timeout=1)
        assert got.startswith("error")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await informer.stop()
