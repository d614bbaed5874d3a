"""The scheduler process's loop against a real API server: binding, spreading, reasons."""

from __future__ import annotations

import asyncio
import random

import pytest

from machinery.client import ApiClient
from scheduler.server import Scheduler
from tests import objects as o


def ready_node(name: str, *, cpu: str = "2", taints: list | None = None) -> dict:
    node = o.node(name, cpu=cpu)
    node["status"]["conditions"] = [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]
    if taints:
        node["spec"]["taints"] = taints
    return node


def cpu_pod(name: str, cpu: str, **kwargs) -> dict:
    pod = o.pod(name, **kwargs)
    pod["spec"]["containers"][0]["resources"] = {"requests": {"cpu": cpu}}
    return pod


@pytest.fixture
async def scheduler(client: ApiClient):
    sched = Scheduler(client, rng=random.Random(7))
    task = asyncio.create_task(sched.run())
    yield sched
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def wait_for(check, timeout: float = 20.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_pods_are_bound_and_spread_across_nodes(client: ApiClient, scheduler) -> None:
    from machinery.meta import owner_reference

    for i in range(3):
        await client.create("nodes", ready_node(f"node-{i}"))
    rs = await client.create("replicasets", o.replicaset("spread", replicas=3))
    for i in range(3):
        await client.create("pods", cpu_pod(f"spread-{i}", "100m", owner=owner_reference(rs)))

    async def placed():
        pods = [await client.get("pods", f"spread-{i}") for i in range(3)]
        nodes = [p["spec"].get("nodeName") for p in pods]
        return nodes if all(nodes) else None

    nodes = await wait_for(placed)
    assert sorted(nodes) == ["node-0", "node-1", "node-2"]
    pod = await client.get("pods", "spread-0")
    scheduled = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    assert scheduled["status"] == "True"


async def test_unschedulable_pod_gets_counted_reasons_then_fits_when_a_node_joins(
    client: ApiClient, scheduler
) -> None:
    await client.create("nodes", ready_node("small-1", cpu="1"))
    await client.create("nodes", ready_node("small-2", cpu="1"))
    await client.create(
        "nodes",
        ready_node(
            "control",
            cpu="8",
            taints=[{"key": "node-role", "value": "control-plane", "effect": "NoSchedule"}],
        ),
    )
    await client.create("pods", cpu_pod("big", "2"))
    expected = (
        "0/3 nodes are available: 2 Insufficient cpu, "
        "1 node(s) had untolerated taint {node-role: control-plane}."
    )

    async def reason():
        pod = await client.get("pods", "big")
        cond = next(
            (c for c in pod["status"].get("conditions") or [] if c["type"] == "PodScheduled"), None
        )
        return cond if cond and cond["status"] == "False" else None

    cond = await wait_for(reason)
    assert cond["reason"] == "Unschedulable" and cond["message"] == expected

    async def failed_event():
        evs = (
            await client.list(
                "events", field_selector="involvedObject.name=big,reason=FailedScheduling"
            )
        ).items
        return evs or None

    assert (await wait_for(failed_event))[0]["message"] == expected

    await client.create("nodes", ready_node("large", cpu="4"))

    async def bound():
        return (await client.get("pods", "big"))["spec"].get("nodeName")

    assert await wait_for(bound) == "large"
