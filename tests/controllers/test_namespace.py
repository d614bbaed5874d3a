"""Namespace deletion: its content goes first, then the Namespace, through a real API server."""

from __future__ import annotations

import asyncio

import pytest

from controllers.namespace import NamespaceController
from machinery import errors
from machinery.client import ApiClient
from machinery.events import EventRecorder
from machinery.informer import InformerFactory
from tests import objects as o
from tests.controllers.harness import eventually, gone, play_kubelet, running
from tests.test_kctl import kctl


@pytest.fixture
async def controller(client: ApiClient):
    factory = InformerFactory(client)
    recorder = EventRecorder(client, component="namespace-test")
    ctrl = NamespaceController(client, factory, recorder, recheck=0.1)
    async with running(factory, ctrl):
        yield ctrl


async def fill(client: ApiClient, ns: str) -> None:
    """One object of every namespaced kind, and a Pod bound to a node (graceful)."""
    await client.create("namespaces", o.namespace(ns))
    await client.create("configmaps", o.configmap("cm", namespace=ns))
    svc = o.service("web", namespace=ns)
    svc["spec"]["clusterIP"] = "10.96.0.77"
    await client.create("services", svc)
    await client.create("endpoints", o.endpoints("web", namespace=ns))
    await client.create("deployments", o.deployment("web", namespace=ns))
    await client.create("replicasets", o.replicaset("web-rs", namespace=ns))
    await client.create("events", o.event("ev", namespace=ns))
    await client.create("leases", o.lease("lock", namespace=ns))
    await client.create("pods", o.pod("loose", namespace=ns))
    await client.create("pods", o.pod("bound", namespace=ns, node="node-1"))


async def test_deleting_a_namespace_empties_it_then_removes_it(client: ApiClient, controller):
    await fill(client, "shop")
    await client.delete("namespaces", "shop")

    ns = await client.get("namespaces", "shop")
    assert ns["status"]["phase"] == "Terminating"
    with pytest.raises(errors.Forbidden, match="being terminated"):
        await client.create("configmaps", o.configmap("late", namespace="shop"))

    async def only_the_bound_pod_left():
        left = [
            (kind, item["metadata"]["name"])
            for kind in (
                "configmaps",
                "services",
                "endpoints",
                "deployments",
                "replicasets",
                "events",
                "leases",
                "pods",
            )
            for item in (await client.list(kind, namespace="shop")).items
        ]
        return left == [("pods", "bound")]

    await eventually(only_the_bound_pod_left, what="everything but the bound Pod deleted")

    async def says_what_remains():
        status = (await client.get("namespaces", "shop"))["status"]
        conds = [
            c for c in status.get("conditions") or [] if c["type"] == "NamespaceContentRemaining"
        ]
        return conds and "pods has 1 resource instances" in conds[0]["message"]

    await eventually(says_what_remains, what="the NamespaceContentRemaining condition")
    assert not await gone(client, "namespaces", "shop")  # the bound Pod holds it

    await play_kubelet(client, "shop", "bound")
    await eventually(lambda: gone(client, "namespaces", "shop"), what="the namespace gone")
    # The Service's clusterIP went with it.
    svc = o.service("again")
    svc["spec"]["clusterIP"] = "10.96.0.77"
    assert (await client.create("services", svc))["spec"]["clusterIP"] == "10.96.0.77"


async def test_kctl_delete_namespace_waits_until_it_is_gone(admin_kubeconfig, client, controller):
    await fill(client, "team")
    kubelet = asyncio.create_task(play_kubelet(client, "team", "bound"))
    code, out, err = await kctl(admin_kubeconfig, "delete", "namespace", "team", "--timeout", "60")
    await kubelet
    assert code == 0, err
    assert out.strip() == "namespace/team deleted"
    assert await gone(client, "namespaces", "team")


async def test_other_finalizers_still_hold_the_namespace(client: ApiClient, controller) -> None:
    ns = o.namespace("held")
    ns["metadata"]["finalizers"] = ["example.com/audit"]
    await client.create("namespaces", ns)
    await client.create("configmaps", o.configmap("cm", namespace="held"))
    await client.delete("namespaces", "held")

    async def ours_removed():
        current = await client.get("namespaces", "held")
        return current["spec"]["finalizers"] == []

    await eventually(ours_removed, what="the kubernetes finalizer removed")
    assert await gone(client, "configmaps", "cm", "held")
    current = await client.get("namespaces", "held")
    assert current["status"]["phase"] == "Terminating"
    await client.patch("namespaces", "held", {"metadata": {"finalizers": None}})
    assert await gone(client, "namespaces", "held")


async def test_registry_holds_a_namespace_until_spec_finalizers_are_empty(client) -> None:
    """The API server's half, without a controller: deletion waits for spec.finalizers."""
    await client.create("namespaces", o.namespace("manual"))
    deleted = await client.delete("namespaces", "manual")
    assert deleted["metadata"]["deletionTimestamp"]
    assert deleted["status"]["phase"] == "Terminating"
    current = await client.get("namespaces", "manual")
    current["metadata"]["labels"]["touched"] = "yes"
    current = await client.update("namespaces", current)  # other updates keep it
    assert not await gone(client, "namespaces", "manual")
    current["spec"]["finalizers"] = []
    await client.update("namespaces", current)
    assert await gone(client, "namespaces", "manual")
