"""Deleting a Pod leaves nothing on the node: no processes, mounts, cgroups, namespace files,
runtime state or Pod directory; its logs stay for the retention time, then go too."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubelet.mounts import mountpoints_under
from kubelet.podworker import RETENTION_MARK
from tests.kubelet.conftest import pod, running, sh, wait_gone, wait_pod

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]


def cgroup_dirs(cgroup_root: str) -> list[Path]:
    """Every cgroup directory below this kubelet's root, in every mounted hierarchy."""
    found = []
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        base = hierarchy / cgroup_root
        if base.is_dir():
            found += [p for p in base.rglob("*") if p.is_dir()]
    unified = Path("/sys/fs/cgroup") / cgroup_root
    if (Path("/sys/fs/cgroup") / "cgroup.controllers").exists() and unified.is_dir():
        found += [p for p in unified.rglob("*") if p.is_dir()]
    return found


async def test_deleted_pod_leaves_nothing_behind(client, nodes):
    kubelet = await nodes.start(log_retention_s=0.0)
    config = kubelet.config
    await client.create(
        "configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "files", "namespace": "default"},
            "data": {"a": "1"},
        },
    )
    mounts = [
        {"name": "ram", "mountPath": "/ram"},
        {"name": "disk", "mountPath": "/disk"},
        {"name": "files", "mountPath": "/files"},
    ]
    spec = pod(
        "everything",
        config.node_name,
        sh("one", "echo one > /disk/one; sleep 3600", volumeMounts=mounts),
        sh("two", "sleep 3600 & wait", volumeMounts=mounts),
        volumes=[
            {"name": "ram", "emptyDir": {"medium": "Memory", "sizeLimit": "4Mi"}},
            {"name": "disk", "emptyDir": {}},
            {"name": "files", "configMap": {"name": "files"}},
        ],
        shareProcessNamespace=True,
    )
    created = await client.create("pods", spec)
    uid = created["metadata"]["uid"]
    await wait_pod(client, "everything", running, what="Running")
    held = (await kubelet.runtime.fresh()).pod(uid)
    pids = [c.pid for c in held.running() if c.pid]
    assert len(pids) == 2
    assert cgroup_dirs(config.cgroup_root)
    assert mountpoints_under(config.state_dir) and mountpoints_under(config.root_dir)
    log_dir = kubelet.context.log_dir(created)
    assert (log_dir / "one" / "0.log").exists()

    await client.delete("pods", "everything", namespace="default", grace_period_seconds=1)
    await wait_gone(client, "everything")

    assert (await kubelet.runtime.fresh()).pods == {}
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), f"process {pid} of the pod still runs"
    assert cgroup_dirs(config.cgroup_root) == []
    assert mountpoints_under(config.state_dir) == []
    assert mountpoints_under(config.root_dir) == []
    assert not kubelet.volumes.pod_dir(uid).exists()
    runtime_dir = config.state_dir / "runtime"
    assert list((runtime_dir / "sandboxes").iterdir()) == []
    assert list((runtime_dir / "containers").iterdir()) == []

    # The logs stay, marked; housekeeping removes them once the retention time passed.
    assert (log_dir / RETENTION_MARK).exists()
    assert (log_dir / "one" / "0.log").exists()
    await kubelet.housekeeping()
    assert not log_dir.exists()
