"""Hollow nodes against a real API server: register, renew, run Pods, finish them."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import sys

import pytest

from hollow.nodes import HOLLOW_LABEL, HollowConfig, HollowNodes
from hollow.pipeline import Pipeline
from machinery.client import ApiClient
from machinery.clock import FakeClock
from tests import objects as o
from tests.controllers.harness import eventually, gone

ORDERS = [
    pytest.param(0, ["D1"], ["P1", "P2"], ["P1", "P2", "D1"], id="renewal-with-slack-waits"),
    pytest.param(6, ["D1"], ["P1", "P2"], ["D1", "P1", "P2"], id="renewal-past-slack-first"),
    pytest.param(
        6,
        ["D1", "D2", "D3", "D4", "D5"],
        ["P1", "P2"],
        ["D1", "D2", "D3", "P1", "D4", "D5", "P2"],
        id="pods-keep-a-share-when-renewals-are-late",
    ),
]


@pytest.mark.parametrize(("wait", "deferrable", "prompt", "want"), ORDERS)
async def test_pipeline_order(wait, deferrable, prompt, want) -> None:
    clock = FakeClock()
    pipeline = Pipeline(1, clock=clock)
    ran: list[str] = []

    def job(name: str):
        async def run() -> None:
            ran.append(name)

        return run

    for name in deferrable:
        pipeline.submit(job(name), slack=5.0)
    await clock.advance(wait)
    for name in prompt:
        pipeline.submit(job(name))
    pipeline.start()
    await pipeline.drain()
    await pipeline.stop()
    assert ran == want


@pytest.fixture
async def hollow(client: ApiClient):
    clock = FakeClock()
    nodes = HollowNodes(client, HollowConfig(nodes=3, labels={"pool": "bench"}), clock=clock)
    await nodes.start()
    await nodes.wait_synced(30)
    yield nodes, clock
    await nodes.stop()


async def test_nodes_register_ready_with_leases(client: ApiClient, hollow) -> None:
    nodes, _ = hollow
    listed = (await client.list("nodes", label_selector=f"{HOLLOW_LABEL}=true")).items
    assert sorted(n["metadata"]["name"] for n in listed) == ["hollow-0", "hollow-1", "hollow-2"]
    node = await client.get("nodes", "hollow-1")
    assert node["metadata"]["labels"]["pool"] == "bench"
    assert node["status"]["capacity"] == {"cpu": "4", "memory": "16Gi", "pods": "110"}
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert {a["type"] for a in node["status"]["addresses"]} == {"InternalIP", "Hostname"}
    for name in nodes.names:
        lease = await client.get("leases", name, namespace="kube-node-lease")
        assert lease["spec"]["holderIdentity"] == name


async def test_leases_are_renewed_every_interval(client: ApiClient, hollow) -> None:
    nodes, clock = hollow
    before = {
        n: (await client.get("leases", n, namespace="kube-node-lease"))["spec"]["renewTime"]
        for n in nodes.names
    }
    await clock.advance(10)

    async def all_renewed():
        for name in nodes.names:
            lease = await client.get("leases", name, namespace="kube-node-lease")
            if lease["spec"]["renewTime"] == before[name]:
                return False
        return True

    await eventually(all_renewed, what="every lease renewed")
    assert nodes.stats.leases_renewed >= 3


async def test_bound_pods_run_with_an_ip_from_the_pod_cidr_and_finish(client, hollow) -> None:
    nodes, _ = hollow
    await client.patch(
        "nodes", "hollow-0", {"spec": {"podCIDR": "10.244.7.0/24", "podCIDRs": ["10.244.7.0/24"]}}
    )

    async def cidr_learned():
        node = nodes.node_informer.get("hollow-0")
        return node is not None and node["spec"].get("podCIDR") == "10.244.7.0/24"

    await eventually(cidr_learned, what="the node informer to see the podCIDR")
    await client.create("pods", o.pod("web-a", node="hollow-0"))
    await client.create("pods", o.pod("web-b", node="hollow-0"))
    await client.create("pods", o.pod("other", node="hollow-2"))
    await client.create("pods", o.pod("elsewhere", node="real-node"))
    unbound = await client.create("pods", o.pod("pending"))
    await client.bind("pending", "hollow-1")

    async def running(name: str):
        pod = await client.get("pods", name, namespace="default")
        return pod if pod["status"].get("phase") == "Running" else None

    a, b = await running_all(running, "web-a", "web-b")
    assert ipaddress.ip_address(a["status"]["podIP"]) in ipaddress.ip_network("10.244.7.0/24")
    assert a["status"]["podIP"] != b["status"]["podIP"]
    conds = {c["type"]: c["status"] for c in a["status"]["conditions"]}
    assert conds == dict.fromkeys(
        ("PodScheduled", "Initialized", "ContainersReady", "Ready"), "True"
    )
    assert a["status"]["containerStatuses"][0]["ready"] is True
    assert a["status"]["startTime"] and a["status"]["hostIP"]
    pending = await eventually(lambda: running("pending"), what="the bound pending pod running")
    assert pending["metadata"]["uid"] == unbound["metadata"]["uid"]
    other = await eventually(lambda: running("other"), what="hollow-2's pod running")
    # A node without a podCIDR uses its fallback /24, by index.
    assert other["status"]["podIP"].startswith("10.128.2.")
    assert (await client.get("pods", "elsewhere", namespace="default"))["status"]["phase"] == (
        "Pending"
    )

    # A graceful delete is finished at once, and the IP is given to the next Pod.
    freed = a["status"]["podIP"]
    await client.delete("pods", "web-a", namespace="default")
    await eventually(lambda: gone(client, "pods", "web-a", "default"), what="web-a finished")
    await eventually(lambda: asyncio.sleep(0, result=freed not in _held(nodes)), what="IP freed")


async def running_all(probe, *names: str):
    return [await eventually(lambda n=n: probe(n), what=f"{n} running") for n in names]


def _held(nodes: HollowNodes) -> set[str]:
    return {ip for _, ip in nodes._ips.values()}


async def test_ready_set_by_someone_else_is_posted_again(client: ApiClient, hollow) -> None:
    node = await client.get("nodes", "hollow-2")
    for cond in node["status"]["conditions"]:
        if cond["type"] == "Ready":
            cond.update(status="Unknown", reason="NodeStatusUnknown")
    await client.update_status("nodes", node)

    async def ready_again():
        current = await client.get("nodes", "hollow-2")
        ready = next(c for c in current["status"]["conditions"] if c["type"] == "Ready")
        return ready["status"] == "True"

    await eventually(ready_again, what="hollow-2 Ready again")


async def test_a_second_run_takes_over_existing_nodes(client: ApiClient) -> None:
    first = HollowNodes(client, HollowConfig(nodes=2, prefix="again-"), clock=FakeClock())
    await first.start()
    await first.wait_synced(30)
    await client.create("pods", o.pod("kept", node="again-1"))

    async def kept_running():
        pod = await client.get("pods", "kept", namespace="default")
        return pod if pod["status"].get("phase") == "Running" else None

    ip = (await eventually(kept_running))["status"]["podIP"]
    await first.stop()
    second = HollowNodes(client, HollowConfig(nodes=2, prefix="again-"), clock=FakeClock())
    await second.start()
    await second.wait_synced(30)
    try:
        assert second.stats.registered == 2
        await client.create("pods", o.pod("new", node="again-1"))

        async def new_running():
            pod = await client.get("pods", "new", namespace="default")
            return pod if pod["status"].get("phase") == "Running" else None

        assert (await eventually(new_running))["status"]["podIP"] != ip
    finally:
        await second.stop(delete=True)
    assert await gone(client, "nodes", "again-0")


async def test_command_line_runs_until_signalled(admin_kubeconfig, client: ApiClient) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hollow",
        "--nodes",
        "2",
        "--prefix",
        "cli-",
        "--kubeconfig",
        str(admin_kubeconfig),
        "--delete-on-exit",
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ},
    )
    try:
        await eventually(lambda: client.get("leases", "cli-1", namespace="kube-node-lease"))
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert "registered hollow nodes" in err.decode()
    assert await gone(client, "nodes", "cli-0")
