"""A kubelet that is restarted, or killed with SIGKILL, adopts what runs: the same container
(same ID, same process), the same restart count, and the exit code and logs of a container
that exited while no kubelet was running."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.registry import free_port
from kubelet.config import KubeletConfig
from kubelet.runtime.interface import ContainerState
from kubelet.runtime.native import NativeRuntime, RuntimeOptions
from machinery import errors
from machinery.client import ApiClient
from tests.conftest import ROOT
from tests.kubelet.conftest import (
    container_status,
    events_for,
    phase_is,
    pod,
    running,
    sh,
    streams_for,
    wait_pod,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

FINISHER = "echo waiting; until [ -e /trigger/go ]; do sleep 0.1; done; echo finishing; exit 3"


def pods_for(node: str, trigger: Path) -> list[dict]:
    keeper = pod("keeper", node, sh("main", "echo kept; sleep 3600"))
    finisher = pod(
        "finisher",
        node,
        sh("main", FINISHER, volumeMounts=[{"name": "trigger", "mountPath": "/trigger"}]),
        restartPolicy="Never",
        volumes=[{"name": "trigger", "hostPath": {"path": str(trigger), "type": "Directory"}}],
    )
    return [keeper, finisher]


def runtime_view(config: KubeletConfig) -> NativeRuntime:
    """A second handle on the kubelet's runtime state, to look at processes directly."""
    return NativeRuntime(
        RuntimeOptions(state_dir=config.state_dir / "runtime", cgroup_root=config.cgroup_root)
    )


def container_pid(runtime: NativeRuntime, container_id: str) -> int | None:
    return runtime.container_status(container_id.removeprefix("kubelite://")).pid


async def wait_exited(runtime: NativeRuntime, container_id: str, timeout: float = 30) -> None:
    async def poll() -> None:
        cid = container_id.removeprefix("kubelite://")
        while runtime.container_status(cid).state != ContainerState.EXITED:  # type: ignore[arg-type]
            await asyncio.sleep(0.1)

    await asyncio.wait_for(poll(), timeout)


async def started_count(client, name: str) -> int:
    """Started Events, counting repeats the recorder folded into one Event's count."""
    events = await events_for(client, name)
    return sum(e.get("count", 1) for e in events if e["reason"] == "Started")


async def logs_of(client: ApiClient, name: str) -> str:
    streams = streams_for(client)
    try:
        return b"".join([chunk async for chunk in streams.logs("default", name)]).decode()
    finally:
        await streams.close()


async def test_restarted_kubelet_adopts_running_and_exited_containers(client, nodes, tmp_path):
    trigger = tmp_path / "trigger"
    trigger.mkdir()
    config = nodes.config()
    first = await nodes.start(config)
    for spec in pods_for(config.node_name, trigger):
        await client.create("pods", spec)
    keeper = await wait_pod(client, "keeper", running, what="Running")
    finisher = await wait_pod(client, "finisher", running, what="Running")
    keeper_id = container_status(keeper, "main")["containerID"]
    finisher_id = container_status(finisher, "main")["containerID"]
    pid = container_pid(first.runtime.runtime, keeper_id)
    assert pid is not None
    started_events = await started_count(client, "keeper")

    await nodes.stop(first)
    (trigger / "go").touch()
    view = runtime_view(config)
    try:
        await wait_exited(view, finisher_id)
    finally:
        view.close()

    second = await nodes.start(config)
    done = await wait_pod(client, "finisher", phase_is("Failed"), what="Failed")
    terminated = container_status(done, "main")["state"]["terminated"]
    assert terminated["exitCode"] == 3
    assert terminated["containerID"] == finisher_id
    kept = await client.get("pods", "keeper", namespace="default")
    entry = container_status(kept, "main")
    assert entry["containerID"] == keeper_id and entry["restartCount"] == 0
    assert container_pid(second.runtime.runtime, keeper_id) == pid
    assert await started_count(client, "keeper") == started_events
    assert "finishing" in await logs_of(client, "finisher")


def kubelet_command(config: KubeletConfig, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kubelet.main",
        "--server",
        ",".join(config.servers),
        *identity_flags(config),
        "--node-name",
        config.node_name,
        "--node-ip",
        config.node_ip,
        "--address",
        "127.0.0.1",
        "--port",
        str(port),
        "--state-dir",
        str(config.state_dir),
        "--root-dir",
        str(config.root_dir),
        "--cgroup-root",
        config.cgroup_root,
        "--registry",
        config.registry,
        "--backoff-initial",
        "0.5",
        "--backoff-max",
        "2",
    ]


def identity_flags(config: KubeletConfig) -> list[str]:
    """The node's certificates as the kubelet command line takes them."""
    if config.kubeconfig is None:
        return []
    assert config.tls_cert_file is not None and config.tls_private_key_file is not None
    return [
        "--kubeconfig",
        str(config.kubeconfig),
        "--tls-cert-file",
        str(config.tls_cert_file),
        "--tls-private-key-file",
        str(config.tls_private_key_file),
    ]


class KubeletProcess:
    def __init__(self, config: KubeletConfig, log_path: Path) -> None:
        self.command = kubelet_command(config, free_port())
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "KUBELITE_LOG_LEVEL": "INFO"},
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def tail(self) -> str:
        return self.log_path.read_text()[-3000:] if self.log_path.exists() else ""


async def test_kubelet_killed_with_sigkill_comes_back_and_adopts(client, nodes, tmp_path):
    trigger = tmp_path / "trigger"
    trigger.mkdir()
    config = nodes.config()
    kubelet = KubeletProcess(config, tmp_path / "kubelet.log")
    kubelet.start()
    try:
        for spec in pods_for(config.node_name, trigger):
            await client.create("pods", spec)
        try:
            keeper = await wait_pod(client, "keeper", running, timeout=90, what="Running")
            finisher = await wait_pod(client, "finisher", running, timeout=30, what="Running")
        except BaseException:
            print(kubelet.tail())
            raise
        keeper_id = container_status(keeper, "main")["containerID"]
        finisher_id = container_status(finisher, "main")["containerID"]
        view = runtime_view(config)
        try:
            pid = container_pid(view, keeper_id)
            kubelet.kill()
            (trigger / "go").touch()
            await wait_exited(view, finisher_id)
            assert container_pid(view, keeper_id) == pid  # the kubelet's death killed nothing

            kubelet.start()
            try:
                done = await wait_pod(client, "finisher", phase_is("Failed"), what="Failed")
            except BaseException:
                print(kubelet.tail())
                raise
            assert container_status(done, "main")["state"]["terminated"]["exitCode"] == 3
            kept = container_status(await client.get("pods", "keeper", namespace="default"), "main")
            assert kept["containerID"] == keeper_id and kept["restartCount"] == 0
            assert kept["ready"] is True
            assert container_pid(view, keeper_id) == pid
        finally:
            view.close()
        assert "finishing" in await logs_of(client, "finisher")
    finally:
        kubelet.kill()


async def test_pod_deleted_while_the_kubelet_was_down_is_removed_on_return(client, nodes):
    config = nodes.config()
    first = await nodes.start(config)
    await client.create("pods", pod("orphan", config.node_name, sh("main", "sleep 3600")))
    await wait_pod(client, "orphan", running, what="Running")
    await nodes.stop(first)
    await client.delete("pods", "orphan", namespace="default", grace_period_seconds=0)
    with pytest.raises(errors.NotFound):
        await client.get("pods", "orphan", namespace="default")
    second = await nodes.start(config)

    async def emptied() -> None:
        while (await second.runtime.fresh()).pods:
            await asyncio.sleep(0.2)

    await asyncio.wait_for(emptied(), 30)
