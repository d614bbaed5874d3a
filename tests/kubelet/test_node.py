"""The kubelet's Node: registration fields, labels and taints, the Lease heartbeat,
re-registration that keeps others' changes, and riding out a lost API server."""

from __future__ import annotations

import asyncio

import pytest

from apiserver.server import ApiServer, ServerConfig
from deploy.registry import free_port
from kubelet.config import parse_taints
from machinery import quantity
from machinery.client import ApiClient
from machinery.clock import parse_rfc3339
from tests.kubelet.conftest import pod, running, sh, wait_pod

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]


async def test_node_registers_with_machine_capacity_labels_taints_and_info(client, nodes):
    kubelet = await nodes.start(
        node_labels={"zone": "lab", "tier": "edge"},
        register_with_taints=parse_taints("dedicated=ci:NoSchedule"),
        system_reserved={"cpu": "500m", "memory": "256Mi"},
        max_pods=17,
    )
    name = kubelet.config.node_name
    node = await client.get("nodes", name)
    labels = node["metadata"]["labels"]
    assert labels["kubernetes.io/hostname"] == name
    assert labels["kubernetes.io/os"] == "linux"
    assert labels["kubernetes.io/arch"] == kubelet.node.machine.architecture
    assert labels["zone"] == "lab" and labels["tier"] == "edge"
    assert node["spec"]["taints"] == [{"key": "dedicated", "value": "ci", "effect": "NoSchedule"}]
    status = node["status"]
    capacity, allocatable = status["capacity"], status["allocatable"]
    assert capacity["cpu"] == str(len(__import__("os").sched_getaffinity(0)))
    assert capacity["pods"] == allocatable["pods"] == "17"
    assert quantity.cpu_millis(allocatable["cpu"]) == quantity.cpu_millis(capacity["cpu"]) - 500
    reserved = quantity.to_bytes("256Mi") + quantity.to_bytes("100Mi")
    assert quantity.to_bytes(allocatable["memory"]) == quantity.to_bytes(capacity["memory"]) - (
        reserved
    )
    assert quantity.to_bytes(capacity["ephemeral-storage"]) > quantity.to_bytes(
        allocatable["ephemeral-storage"]
    )
    assert status["addresses"] == [
        {"type": "InternalIP", "address": "127.0.0.1"},
        {"type": "Hostname", "address": name},
    ]
    assert status["daemonEndpoints"]["kubeletEndpoint"]["Port"] == kubelet.port
    info = status["nodeInfo"]
    assert info["operatingSystem"] == "linux"
    assert info["containerRuntimeVersion"].startswith("kubelite-native://")
    assert info["kubeletVersion"].startswith("v")
    assert info["kernelVersion"] and info["osImage"] and info["architecture"]
    kinds = {c["type"]: c for c in status["conditions"]}
    assert set(kinds) == {"Ready", "MemoryPressure", "DiskPressure", "PIDPressure"}
    assert kinds["Ready"]["status"] == "True" and kinds["Ready"]["reason"] == "KubeletReady"
    for condition in kinds.values():
        assert condition["lastHeartbeatTime"] and condition["lastTransitionTime"]


async def test_lease_is_renewed_in_kube_node_lease(client, kubelet):
    name = kubelet.config.node_name
    first = await client.get("leases", name, namespace="kube-node-lease")
    assert first["spec"]["holderIdentity"] == name
    assert first["spec"]["leaseDurationSeconds"] == 40
    owner = first["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "Node" and owner["name"] == name

    async def renewed() -> dict:
        while True:
            lease = await client.get("leases", name, namespace="kube-node-lease")
            if parse_rfc3339(lease["spec"]["renewTime"]) > parse_rfc3339(
                first["spec"]["renewTime"]
            ):
                return lease
            await asyncio.sleep(0.2)

    await asyncio.wait_for(renewed(), 30)


async def test_reregistration_keeps_what_others_changed(client, nodes):
    config = nodes.config()
    first = await nodes.start(config)
    name = config.node_name
    await client.patch("nodes", name, {"spec": {"unschedulable": True}})
    await nodes.stop(first)
    await nodes.start(config)
    node = await client.get("nodes", name)
    assert node["spec"]["unschedulable"] is True
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == name


async def test_kubelet_rides_out_a_lost_api_server(etcd, etcd_prefix, cluster_pki, nodes):
    port = free_port()

    def server() -> ApiServer:
        return ApiServer(
            ServerConfig(
                etcd_endpoints=[etcd.endpoint],
                listen=f"127.0.0.1:{port}",
                prefix=etcd_prefix,
                bookmark_interval=1.0,
                compaction_interval=0,
                **cluster_pki.server_settings(),
            )
        )

    api = server()
    await api.start()
    await asyncio.wait_for(api.ready.wait(), 30)
    nodes.server = f"127.0.0.1:{port}"
    client = ApiClient([nodes.server], timeout=5, credentials=cluster_pki.admin_credentials)
    try:
        kubelet = await nodes.start()
        node = kubelet.config.node_name
        await client.create("pods", pod("steady", node, sh("main", "sleep 3600")))
        before = await wait_pod(client, "steady", running, what="Running")
        await api.stop(grace=0)

        # While the API server is gone, the container keeps running and the kubelet retries.
        await asyncio.sleep(3)
        assert (await kubelet.runtime.fresh()).pod(before["metadata"]["uid"]).running()

        api = server()
        await api.start()
        await asyncio.wait_for(api.ready.wait(), 30)
        renewals = kubelet.node.lease_renewals

        async def renewed_again() -> None:
            while kubelet.node.lease_renewals <= renewals:
                await asyncio.sleep(0.2)

        await asyncio.wait_for(renewed_again(), 30)
        await client.create("pods", pod("after", node, sh("main", "sleep 3600")))
        await wait_pod(client, "after", running, what="Running after the API server returned")
        same = await client.get("pods", "steady", namespace="default")
        assert same["status"]["containerStatuses"] == before["status"]["containerStatuses"]
    finally:
        await nodes.close()
        await client.close()
        await api.stop(grace=0)
