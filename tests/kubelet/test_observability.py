"""What operators see of a kubelet: usage figures for `kctl top`, Prometheus metrics, and
the refusal of Pods beyond --pods."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from kubelet.usage import ANNOTATION
from tests.conftest import ROOT
from tests.kubelet.conftest import phase_is, pod, running, sh, wait_pod

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]


def kctl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "--config", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


async def test_usage_reaches_kctl_top_through_the_node(client, kubelet, admin_kubeconfig):
    node = kubelet.config.node_name
    # A container that keeps a CPU busy for a while, so its figure is not zero.
    await client.create("pods", pod("busy", node, sh("main", "while true; do :; done")))
    await wait_pod(client, "busy", running, what="Running")

    async def published() -> dict:
        while True:
            annotations = (await client.get("nodes", node))["metadata"].get("annotations") or {}
            usage = json.loads(annotations.get(ANNOTATION, "{}"))
            figures = usage.get("pods", {}).get("default/busy", {}).get("containers", {})
            if "cpu" in figures.get("main", {}):
                return usage
            await asyncio.sleep(0.2)

    usage = await asyncio.wait_for(published(), 60)
    assert usage["node"]["memory"].endswith("Mi")
    cpu = usage["pods"]["default/busy"]["containers"]["main"]["cpu"]
    assert cpu.endswith("m") and int(cpu[:-1]) > 100  # a spinning shell uses most of a core

    pods = await asyncio.to_thread(kctl, admin_kubeconfig, "top", "pod", "--containers")
    assert pods.returncode == 0, pods.stderr
    header, *rows = pods.stdout.splitlines()
    assert header.split() == ["NAME", "CONTAINER", "CPU(cores)", "MEMORY(bytes)"]
    assert any(row.split()[:2] == ["busy", "main"] for row in rows)
    nodes = await asyncio.to_thread(kctl, admin_kubeconfig, "top", "node", node)
    assert nodes.returncode == 0, nodes.stderr
    assert nodes.stdout.splitlines()[1].split()[0] == node
    assert nodes.stdout.splitlines()[1].split()[2].endswith("%")


async def test_metrics_count_pod_starts_and_runtime_calls(client, kubelet):
    await client.create("pods", pod("counted", kubelet.config.node_name))
    await wait_pod(client, "counted", running, what="Running")

    async def relisted() -> str:
        while True:
            text = generate_latest(kubelet.metrics.registry).decode()
            if "kubelite_kubelet_running_pods 1.0" in text and (
                'kubelite_kubelet_running_containers{container_state="running"} 1.0' in text
            ):
                return text
            await asyncio.sleep(0.2)

    text = await asyncio.wait_for(relisted(), 30)
    assert "kubelite_kubelet_pod_start_duration_seconds_count 1.0" in text
    assert "kubelite_kubelet_pod_start_since_creation_seconds_count 1.0" in text
    assert (
        "kubelite_kubelet_runtime_operations_duration_seconds_count{operation_type="
        '"run_podsandbox"} 1.0' in text
    )
    assert 'kubelite_kubelet_running_containers{container_state="running"} 1.0' in text

    # The session's image store already has busybox: a missing image shows a failed pull.
    await client.create(
        "pods",
        pod(
            "nopull", kubelet.config.node_name, {"name": "main", "image": "kubelite-test/absent:1"}
        ),
    )

    async def failed_pull() -> None:
        while 'kubelite_kubelet_image_pulls_total{result="failure"} 1.0' not in (
            generate_latest(kubelet.metrics.registry).decode()
        ):
            await asyncio.sleep(0.2)

    await asyncio.wait_for(failed_pull(), 30)


async def test_pods_beyond_the_limit_are_refused(client, nodes):
    kubelet = await nodes.start(max_pods=1)
    node = kubelet.config.node_name
    await client.create("pods", pod("first", node))
    await wait_pod(client, "first", running, what="Running")
    await client.create("pods", pod("second", node, sh("main", "sleep 3600")))
    refused = await wait_pod(client, "second", phase_is("Failed"), what="refused")
    assert refused["status"]["reason"] == "OutOfpods"
    assert "pods" in refused["status"]["message"]
    assert (await client.get("pods", "first", namespace="default"))["status"]["phase"] == "Running"
