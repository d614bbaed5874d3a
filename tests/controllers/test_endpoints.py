"""The Endpoints controller: what a Service's Endpoints hold, and that it follows changes.

The table cases check the computation on its own; the rest run the controller
against a real API server and etcd.
"""

from __future__ import annotations

from typing import Any

import pytest

from controllers.endpoints import EndpointsController, desired_subsets
from machinery.client import ApiClient
from machinery.events import EventRecorder
from machinery.informer import InformerFactory
from tests import objects as o
from tests.controllers.harness import eventually, gone, running, set_pod_running


def pod(
    name: str,
    ip: str = "",
    *,
    ready: bool = True,
    ports: list[dict] | None = None,
    labels: dict | None = None,
    deleting: bool = False,
    phase: str = "Running",
) -> dict[str, Any]:
    obj = o.pod(name, labels=labels or {"app": "web"}, node="node-1")
    obj["metadata"]["uid"] = f"uid-{name}"
    if ports:
        obj["spec"]["containers"][0]["ports"] = ports
    if deleting:
        obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {"phase": phase}
    if ip:
        status["podIP"] = ip
    status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
    obj["status"] = status
    return obj


def service(*ports: dict, publish: bool = False) -> dict[str, Any]:
    obj = o.service("web")
    obj["spec"]["ports"] = list(ports) or [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]
    if publish:
        obj["spec"]["publishNotReadyAddresses"] = True
    return obj


def addr(name: str, ip: str) -> dict[str, Any]:
    return {
        "ip": ip,
        "nodeName": "node-1",
        "targetRef": {"kind": "Pod", "namespace": "default", "name": name, "uid": f"uid-{name}"},
    }


HTTP = [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
HTTP_ALT = [{"name": "http", "containerPort": 9090, "protocol": "TCP"}]
P8080 = {"port": 8080, "protocol": "TCP"}

CASES = [
    pytest.param(
        service(),
        [pod("a", "10.0.0.1"), pod("b", "10.0.0.2", ready=False)],
        [
            {
                "addresses": [addr("a", "10.0.0.1")],
                "notReadyAddresses": [addr("b", "10.0.0.2")],
                "ports": [P8080],
            }
        ],
        id="ready-and-not-ready-apart",
    ),
    pytest.param(
        service(),
        [
            pod("a", "10.0.0.1"),
            pod("no-ip"),
            pod("going", "10.0.0.3", deleting=True),
            pod("done", "10.0.0.4", phase="Succeeded"),
        ],
        [{"addresses": [addr("a", "10.0.0.1")], "ports": [P8080]}],
        id="pods-without-ip-terminating-or-finished-left-out",
    ),
    pytest.param(
        service(publish=True),
        [pod("a", "10.0.0.1", ready=False), pod("going", "10.0.0.3", deleting=True)],
        [{"addresses": [addr("a", "10.0.0.1"), addr("going", "10.0.0.3")], "ports": [P8080]}],
        id="publish-not-ready-lists-every-pod-as-ready",
    ),
    pytest.param(
        service({"port": 80, "targetPort": "http", "protocol": "TCP"}),
        [
            pod("a", "10.0.0.1", ports=HTTP),
            pod("b", "10.0.0.2", ports=HTTP_ALT),
            pod("c", "10.0.0.3"),
        ],
        [
            {"addresses": [addr("a", "10.0.0.1")], "ports": [P8080]},
            {"addresses": [addr("b", "10.0.0.2")], "ports": [{"port": 9090, "protocol": "TCP"}]},
        ],
        id="named-target-port-resolved-per-pod-and-pod-without-it-left-out",
    ),
    pytest.param(
        service(
            {"name": "web", "port": 80, "targetPort": "http", "protocol": "TCP"},
            {"name": "metrics", "port": 9100, "targetPort": 9100, "protocol": "TCP"},
        ),
        [pod("a", "10.0.0.1", ports=HTTP), pod("c", "10.0.0.3")],
        [
            {
                "addresses": [addr("c", "10.0.0.3")],
                "ports": [{"name": "metrics", "port": 9100, "protocol": "TCP"}],
            },
            {
                "addresses": [addr("a", "10.0.0.1")],
                "ports": [
                    {"name": "metrics", "port": 9100, "protocol": "TCP"},
                    {"name": "web", "port": 8080, "protocol": "TCP"},
                ],
            },
        ],
        id="pod-lacking-a-named-port-still-serves-the-others",
    ),
    pytest.param(
        service({"port": 53, "targetPort": "dns", "protocol": "UDP"}),
        [pod("a", "10.0.0.1", ports=[{"name": "dns", "containerPort": 53, "protocol": "TCP"}])],
        [],
        id="named-port-must-match-protocol",
    ),
    pytest.param(
        service(),
        [],
        [],
        id="no-pods-no-subsets",
    ),
]


@pytest.mark.parametrize(("svc", "pods", "want"), CASES)
def test_desired_subsets(svc, pods, want) -> None:
    assert desired_subsets(svc, pods) == want


def test_subsets_do_not_depend_on_pod_order() -> None:
    pods = [pod(n, f"10.0.0.{i}") for i, n in enumerate("dcba", start=1)]
    assert desired_subsets(service(), pods) == desired_subsets(service(), pods[::-1])


# -- against the API server ----------------------------------------------------------------


async def _endpoints(client: ApiClient, name: str = "web") -> dict:
    return await client.get("endpoints", name, namespace="default")


def ips(endpoints: dict, field: str = "addresses") -> list[str]:
    return sorted(a["ip"] for s in endpoints.get("subsets") or [] for a in s.get(field) or [])


@pytest.fixture
async def controller(client: ApiClient):
    factory = InformerFactory(client)
    recorder = EventRecorder(client, component="endpoints-test")
    ctrl = EndpointsController(client, factory, recorder, workers=2)
    async with running(factory, ctrl):
        yield ctrl


async def test_endpoints_follow_pods_and_service_ports(client: ApiClient, controller) -> None:
    svc = o.service("web")
    svc["spec"]["ports"] = [{"port": 80, "targetPort": "http"}]
    await client.create("services", svc)
    for name, ip, ready in (("a", "10.244.0.5", True), ("b", "10.244.0.6", False)):
        p = o.pod(name, labels={"app": "web"}, node="node-1")
        p["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": 8080}]
        await client.create("pods", p)
        await set_pod_running(client, name, ip=ip, ready=ready)

    async def split():
        ep = await _endpoints(client)
        return (
            ep
            if (ips(ep), ips(ep, "notReadyAddresses")) == (["10.244.0.5"], ["10.244.0.6"])
            else None
        )

    ep = await eventually(split, what="ready and not-ready addresses apart")
    assert ep["subsets"][0]["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert ep["subsets"][0]["addresses"][0]["targetRef"]["name"] == "a"

    # b turns ready; a's labels change so it leaves the Service.
    await set_pod_running(client, "b", ip="10.244.0.6", ready=True)
    await client.patch("pods", "a", {"metadata": {"labels": {"app": "other"}}}, namespace="default")

    async def moved():
        ep = await _endpoints(client)
        return ep if (ips(ep), ips(ep, "notReadyAddresses")) == (["10.244.0.6"], []) else None

    await eventually(moved, what="a gone, b ready")

    # A port change in the Service shows up in its Endpoints.
    current = await client.get("services", "web", namespace="default")
    current["spec"]["ports"] = [{"port": 80, "targetPort": 9999}]
    await client.update("services", current)

    async def repointed():
        ep = await _endpoints(client)
        ports = [p["port"] for s in ep.get("subsets") or [] for p in s.get("ports") or []]
        return ports == [9999]

    await eventually(repointed, what="the new target port")

    # Deleting the Service deletes its Endpoints.
    await client.delete("services", "web", namespace="default")
    await eventually(lambda: gone(client, "endpoints", "web", "default"), what="endpoints deleted")


async def test_unchanged_endpoints_are_not_rewritten(client: ApiClient, controller) -> None:
    await client.create("services", o.service("quiet"))
    await client.create("pods", o.pod("q1", labels={"app": "quiet"}, node="node-1"))
    await set_pod_running(client, "q1", ip="10.244.0.9")
    ep = await eventually(
        lambda: _with_ips(client, "quiet", ["10.244.0.9"]), what="the endpoints of quiet"
    )
    # A change the Endpoints do not show (an annotation) must not rewrite them.
    await client.patch(
        "pods", "q1", {"metadata": {"annotations": {"note": "x"}}}, namespace="default"
    )
    await client.patch(
        "services", "quiet", {"metadata": {"annotations": {"n": "1"}}}, namespace="default"
    )
    # Another Service's sync after both changes proves the queue moved past them.
    await client.create("services", o.service("marker"))
    await eventually(lambda: _endpoints(client, "marker"), what="the marker's endpoints")
    await eventually(lambda: _idle(controller), what="an idle queue")
    after = await _endpoints(client, "quiet")
    assert after["metadata"]["resourceVersion"] == ep["metadata"]["resourceVersion"]


async def test_service_without_selector_is_left_alone(client: ApiClient, controller) -> None:
    svc = o.service("manual")
    del svc["spec"]["selector"]
    await client.create("services", svc)
    await client.create("endpoints", o.endpoints("manual"))
    await client.create("services", o.service("marker"))
    await eventually(lambda: _endpoints(client, "marker"), what="the marker's endpoints")
    await eventually(lambda: _idle(controller), what="an idle queue")
    manual = await _endpoints(client, "manual")
    assert ips(manual) == ["10.244.1.5"]


async def _with_ips(client: ApiClient, name: str, want: list[str]) -> dict | None:
    ep = await _endpoints(client, name)
    return ep if ips(ep) == want else None


async def _idle(ctrl: EndpointsController) -> bool:
    return len(ctrl.queue) == 0 and not ctrl.queue._processing
