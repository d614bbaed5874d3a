"""Node IPAM: each Node its own pod CIDR, never one held by a live Node.

Small cluster CIDRs (a /22 of /24s is four subnets) make exhaustion and reuse
reachable with a handful of Nodes.
"""

from __future__ import annotations

import contextlib

import pytest

from controllers.nodeipam import CidrSet, NodeIpamController
from machinery.client import ApiClient
from machinery.events import EventRecorder
from machinery.informer import InformerFactory
from tests import objects as o
from tests.controllers.harness import eventually, running

BAD_SETTINGS = [
    pytest.param("10.244.0.0/33", 24, "invalid cluster CIDR", id="bad-cidr"),
    pytest.param("10.244.0.1/16", 24, "has host bits set", id="host-bits"),
    pytest.param("fd00::/64", 80, "only IPv4", id="ipv6"),
    pytest.param("10.244.0.0/16", 8, "must be between", id="mask-shorter-than-cluster"),
    pytest.param("10.244.0.0/16", 31, "must be between", id="mask-too-long"),
]


@pytest.mark.parametrize(("cidr", "mask", "error"), BAD_SETTINGS)
def test_bad_settings_are_refused_with_the_reason(cidr, mask, error) -> None:
    with pytest.raises(ValueError, match=error):
        CidrSet(cidr, mask)


def test_cidr_set_round_robin_and_release() -> None:
    cidrs = CidrSet("10.244.0.0/22", 24)
    got = [cidrs.allocate(f"n{i}") for i in range(4)]
    assert got == [f"10.244.{i}.0/24" for i in range(4)]
    assert cidrs.allocate("n4") is None
    assert cidrs.allocate("n1") == "10.244.1.0/24"  # asking again gives what it holds
    assert cidrs.release("n1") == "10.244.1.0/24"
    assert cidrs.allocate("n4") == "10.244.1.0/24"
    assert cidrs.occupy("10.244.2.0/24", "other") == "10.244.2.0/24 is already held by node n2"
    assert "not a /24 subnet" in (cidrs.occupy("10.245.0.0/24", "x") or "")


def test_round_robin_gives_a_released_subnet_last() -> None:
    cidrs = CidrSet("10.244.0.0/22", 24)
    for i in range(3):
        cidrs.allocate(f"n{i}")
    cidrs.release("n0")
    assert cidrs.allocate("n3") == "10.244.3.0/24"
    assert cidrs.allocate("n4") == "10.244.0.0/24"


@contextlib.asynccontextmanager
async def ipam(client: ApiClient, cidr: str):
    factory = InformerFactory(client)
    recorder = EventRecorder(client, component="nodeipam-test")
    ctrl = NodeIpamController(client, factory, recorder, cluster_cidr=cidr, node_mask=24)
    async with running(factory, ctrl):
        yield ctrl


async def pod_cidr(client: ApiClient, name: str) -> str:
    node = await client.get("nodes", name)
    spec = node.get("spec") or {}
    if spec.get("podCIDR"):
        assert spec["podCIDRs"] == [spec["podCIDR"]]
    return spec.get("podCIDR", "")


async def live_cidrs(client: ApiClient) -> list[str]:
    nodes = (await client.list("nodes")).items
    return [n["spec"]["podCIDR"] for n in nodes if n.get("spec", {}).get("podCIDR")]


async def test_nodes_get_distinct_cidrs_and_wait_when_the_range_is_full(client: ApiClient) -> None:
    async with ipam(client, "10.244.0.0/22"):
        for i in range(4):
            await client.create("nodes", o.node(f"n{i}"))
        got = [await eventually(lambda n=f"n{i}": pod_cidr(client, n)) for i in range(4)]
        assert sorted(got) == [f"10.244.{i}.0/24" for i in range(4)]

        await client.create("nodes", o.node("late"))

        async def exhausted():
            events = await client.list(
                "events", namespace="default", field_selector="involvedObject.name=late"
            )
            return [e for e in events.items if e["reason"] == "CIDRNotAvailable"]

        event = (await eventually(exhausted, what="a CIDRNotAvailable event"))[0]
        assert event["type"] == "Warning"
        assert await pod_cidr(client, "late") == ""

        # Deleting a node frees its subnet, and the waiting node gets exactly that one.
        freed = got[2]
        await client.delete("nodes", "n2")
        assert await eventually(lambda: pod_cidr(client, "late"), what="late's CIDR") == freed
        live = await live_cidrs(client)
        assert len(live) == len(set(live)) == 4


async def test_a_restarted_controller_never_reuses_a_live_cidr(client: ApiClient) -> None:
    # Nodes that already hold subnets: the first one a fresh allocator would pick, one
    # outside the range (ignored), and one the first controller assigned.
    held = o.node("held")
    held["spec"] = {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]}
    await client.create("nodes", held)
    outside = o.node("outside")
    outside["spec"] = {"podCIDR": "192.168.7.0/24", "podCIDRs": ["192.168.7.0/24"]}
    await client.create("nodes", outside)
    async with ipam(client, "10.244.0.0/22"):
        await client.create("nodes", o.node("first"))
        assert await eventually(lambda: pod_cidr(client, "first")) == "10.244.1.0/24"

    # Delete one and add others while no controller runs; a new one starts afterwards.
    await client.delete("nodes", "first")
    await client.create("nodes", o.node("second"))
    await client.create("nodes", o.node("third"))
    async with ipam(client, "10.244.0.0/22"):
        second = await eventually(lambda: pod_cidr(client, "second"))
        third = await eventually(lambda: pod_cidr(client, "third"))
    # One worker takes the Nodes in list order; held's 10.244.0.0/24 was marked first.
    assert (second, third) == ("10.244.1.0/24", "10.244.2.0/24")
    live = await live_cidrs(client)
    assert "10.244.0.0/24" in live and len(live) == len(set(live))
    assert await pod_cidr(client, "outside") == "192.168.7.0/24"


async def test_re_added_node_gets_a_cidr_and_no_two_nodes_share_one(client: ApiClient) -> None:
    async with ipam(client, "10.244.0.0/22"):
        for name in ("a", "b"):
            await client.create("nodes", o.node(name))
            await eventually(lambda n=name: pod_cidr(client, n))
        await client.delete("nodes", "a")
        await client.create("nodes", o.node("a"))
        await client.create("nodes", o.node("c"))
        await eventually(lambda: pod_cidr(client, "a"), what="the re-added node's CIDR")
        await eventually(lambda: pod_cidr(client, "c"), what="c's CIDR")
        live = await live_cidrs(client)
        assert len(live) == len(set(live)) == 3
