"""Liveness, readiness and startup probes on a real kubelet: exec probes, httpGet against
busybox httpd inside the Pod (from within the Pod's network namespace), tcpSocket."""

from __future__ import annotations

import asyncio

import pytest

from tests.kubelet.conftest import (
    condition,
    container,
    container_status,
    events_for,
    pod,
    running,
    sh,
    wait_event,
    wait_pod,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]


def probe(handler: dict, **fields) -> dict:
    return {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1, **handler, **fields}


def ready(p) -> bool:
    return running(p) and bool(container_status(p, "main").get("ready"))


async def test_failing_liveness_probe_restarts_the_container(client, kubelet):
    node = kubelet.config.node_name
    # Healthy while /tmp/healthy exists; the container removes it after a moment.
    script = "touch /tmp/healthy; sleep 2; rm /tmp/healthy; sleep 3600"
    liveness = probe({"exec": {"command": ["cat", "/tmp/healthy"]}}, failureThreshold=2)
    await client.create("pods", pod("sick", node, sh("main", script, livenessProbe=liveness)))
    current = await wait_pod(
        client,
        "sick",
        lambda p: container_status(p, "main").get("restartCount", 0) >= 1,
        what="restarted by its liveness probe",
    )
    assert container_status(current, "main")["lastState"]["terminated"]
    unhealthy = await wait_event(client, "sick", "Unhealthy")
    assert unhealthy["message"].startswith("Liveness probe failed")
    killing = [e for e in await events_for(client, "sick") if e["reason"] == "Killing"]
    assert any("failed liveness probe" in e["message"] for e in killing)


async def test_http_readiness_probe_against_httpd_in_the_pod(client, kubelet):
    node = kubelet.config.node_name
    readiness = probe({"httpGet": {"path": "/index.html", "port": 80}})
    web = container(
        "main",
        image="httpd",
        readinessProbe=readiness,
        ports=[{"name": "http", "containerPort": 80}],
    )
    await client.create("pods", pod("web", node, web))
    current = await wait_pod(client, "web", ready, what="ready")
    assert condition(current, "Ready")["status"] == "True"
    assert condition(current, "ContainersReady")["status"] == "True"


async def test_failing_readiness_keeps_the_pod_unready_without_restarts(client, kubelet):
    node = kubelet.config.node_name
    readiness = probe({"httpGet": {"path": "/missing", "port": "http"}})
    web = container(
        "main",
        image="httpd",
        readinessProbe=readiness,
        ports=[{"name": "http", "containerPort": 80}],
    )
    await client.create("pods", pod("notready", node, web))
    await wait_event(client, "notready", "Unhealthy")
    current = await wait_pod(client, "notready", running, what="Running")
    entry = container_status(current, "main")
    assert entry["ready"] is False and entry["restartCount"] == 0
    ready_condition = condition(current, "Ready")
    assert ready_condition["status"] == "False"
    assert ready_condition["reason"] == "ContainersNotReady"

    # Early failures may be "connection refused" (httpd still starting); then the 404.
    async def saw_404() -> None:
        while not any(
            e["reason"] == "Unhealthy" and "statuscode: 404" in e["message"]
            for e in await events_for(client, "notready")
        ):
            await asyncio.sleep(0.2)

    await asyncio.wait_for(saw_404(), 30)


async def test_tcp_startup_probe_gates_liveness_and_readiness(client, kubelet):
    node = kubelet.config.node_name
    # The server only listens after 2 s; the startup probe allows for it, and liveness
    # (which would fail before that) only starts once startup succeeded.
    script = "sleep 2; exec httpd -f -p 8080 -h /tmp"
    spec = sh(
        "main",
        script,
        startupProbe=probe({"tcpSocket": {"port": 8080}}, failureThreshold=30),
        livenessProbe=probe({"tcpSocket": {"port": 8080}}),
        readinessProbe=probe({"tcpSocket": {"port": 8080}}),
    )
    await client.create("pods", pod("slow", node, spec))
    current = await wait_pod(client, "slow", ready, what="started and ready")
    entry = container_status(current, "main")
    assert entry["started"] is True
    assert entry["restartCount"] == 0


async def test_startup_probe_failure_restarts_the_container(client, kubelet):
    node = kubelet.config.node_name
    spec = sh(
        "main",
        "sleep 3600",
        startupProbe=probe({"exec": {"command": ["false"]}}, failureThreshold=2),
    )
    await client.create("pods", pod("neverstarts", node, spec))
    current = await wait_pod(
        client,
        "neverstarts",
        lambda p: container_status(p, "main").get("restartCount", 0) >= 1,
        what="restarted by its startup probe",
    )
    assert container_status(current, "main")["started"] is False
