"""Volumes and environment on a real kubelet: emptyDir shared by two containers, emptyDir on
tmpfs, hostPath with subPath and readOnly, configMap files with items and modes refreshed
on change, env and envFrom from ConfigMaps and the downward API, and what a missing
ConfigMap does to a Pod."""

from __future__ import annotations

import asyncio
import base64

import pytest

from kubelet.mounts import mountpoints_under
from machinery.client import ApiClient
from tests.kubelet.conftest import (
    container_status,
    pod,
    running,
    sh,
    streams_for,
    wait_event,
    wait_pod,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]


async def exec_output(
    client: ApiClient, name: str, *command: str, container: str = ""
) -> tuple[str, int]:
    streams = streams_for(client)
    try:
        async with streams.exec("default", name, list(command), container=container) as session:
            out, err, code = await session.collect()
    finally:
        await streams.close()
    return (out + err).decode(), code


async def until_output(
    client,
    name: str,
    command: list[str],
    expected: str,
    *,
    container: str = "",
    timeout: float = 30,
) -> str:
    last = [""]

    async def poll() -> str:
        while True:
            last[0], _ = await exec_output(client, name, *command, container=container)
            if expected in last[0]:
                return last[0]
            await asyncio.sleep(0.2)

    try:
        return await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        pytest.fail(f"{command} in {name} never printed {expected!r}; last: {last[0]!r}")


async def test_empty_dir_is_shared_by_the_containers_of_a_pod(client, kubelet):
    node = kubelet.config.node_name
    mounts = [{"name": "shared", "mountPath": "/shared"}]
    spec = pod(
        "pair",
        node,
        sh("writer", "echo from-writer > /shared/note; sleep 3600", volumeMounts=mounts),
        sh("reader", "sleep 3600", volumeMounts=mounts),
        volumes=[{"name": "shared", "emptyDir": {}}],
    )
    await client.create("pods", spec)
    await wait_pod(client, "pair", running, what="Running")
    out = await until_output(
        client, "pair", ["cat", "/shared/note"], "from-writer", container="reader"
    )
    assert out.strip() == "from-writer"


async def test_memory_empty_dir_is_a_sized_tmpfs(client, kubelet):
    node = kubelet.config.node_name
    spec = pod(
        "ram",
        node,
        sh("main", "sleep 3600", volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}]),
        volumes=[{"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}}],
    )
    created = await client.create("pods", spec)
    await wait_pod(client, "ram", running, what="Running")
    volume_dir = kubelet.volumes.pod_dir(created["metadata"]["uid"])
    assert len(mountpoints_under(volume_dir)) == 1
    out, code = await exec_output(client, "ram", "df", "-k", "/scratch")
    assert code == 0
    assert "tmpfs" in out and "8192" in out


async def test_host_path_sub_path_and_read_only(client, kubelet, tmp_path):
    node = kubelet.config.node_name
    data = tmp_path / "data"
    (data / "inner").mkdir(parents=True)
    (data / "inner" / "file").write_text("hello from the node\n")
    mounts = [
        {"name": "data", "mountPath": "/ro", "readOnly": True},
        {"name": "data", "mountPath": "/inner", "subPath": "inner"},
    ]
    spec = pod(
        "hostdata",
        node,
        sh("main", "sleep 3600", volumeMounts=mounts),
        volumes=[{"name": "data", "hostPath": {"path": str(data), "type": "Directory"}}],
    )
    await client.create("pods", spec)
    await wait_pod(client, "hostdata", running, what="Running")
    out, _ = await exec_output(client, "hostdata", "cat", "/inner/file")
    assert out == "hello from the node\n"
    _, code = await exec_output(client, "hostdata", "touch", "/ro/nope")
    assert code != 0
    assert not (data / "nope").exists()


async def test_host_path_type_mismatch_is_failed_mount(client, kubelet, tmp_path):
    node = kubelet.config.node_name
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    spec = pod(
        "badmount",
        node,
        sh("main", "sleep 3600", volumeMounts=[{"name": "d", "mountPath": "/d"}]),
        volumes=[{"name": "d", "hostPath": {"path": str(not_a_dir), "type": "Directory"}}],
    )
    await client.create("pods", spec)
    event = await wait_event(client, "badmount", "FailedMount")
    assert "is not a directory" in event["message"]
    current = await wait_pod(
        client,
        "badmount",
        lambda p: (
            container_status(p, "main").get("state", {}).get("waiting", {}).get("reason")
            == "ContainerCreating"
        ),
        what="waiting in ContainerCreating",
    )
    assert current["status"]["phase"] == "Pending"


async def test_config_map_volume_and_env(client, kubelet):
    node = kubelet.config.node_name
    await client.create(
        "configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "default"},
            "data": {"color": "blue", "size": "large", "app.conf": "mode=fast\n"},
        },
    )
    main = sh(
        "main",
        "sleep 3600",
        volumeMounts=[{"name": "config", "mountPath": "/config"}],
        env=[
            {
                "name": "COLOR",
                "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "color"}},
            },
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {
                "name": "MEM_MI",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
            {"name": "SUMMARY", "value": "$(COLOR)-$(POD_NAME)"},
        ],
        envFrom=[{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
        resources={"limits": {"memory": "64Mi"}},
    )
    spec = pod(
        "configured",
        node,
        main,
        volumes=[
            {
                "name": "config",
                "configMap": {
                    "name": "settings",
                    "defaultMode": 0o640,
                    "items": [
                        {"key": "app.conf", "path": "conf/app.conf"},
                        {"key": "color", "path": "color", "mode": 0o600},
                    ],
                },
            }
        ],
    )
    await client.create("pods", spec)
    await wait_pod(client, "configured", running, what="Running")
    env, _ = await exec_output(client, "configured", "env")
    variables = dict(line.split("=", 1) for line in env.splitlines() if "=" in line)
    assert variables["COLOR"] == "blue"
    assert variables["POD_NAME"] == "configured"
    assert variables["NODE"] == node
    assert variables["HOST_IP"] == "127.0.0.1"
    assert variables["MEM_MI"] == "64"
    assert variables["SUMMARY"] == "blue-configured"
    assert variables["CFG_size"] == "large"
    files, _ = await exec_output(
        client,
        "configured",
        "sh",
        "-c",
        "cat /config/conf/app.conf /config/color; echo; ls /config",
    )
    assert files.splitlines()[:2] == ["mode=fast", "blue"]
    assert "size" not in files.split()  # only the listed items
    modes, _ = await exec_output(
        client,
        "configured",
        "stat",
        "-L",
        "-c",
        "%a %n",
        "/config/color",
        "/config/conf/app.conf",
    )
    assert modes.split() == ["600", "/config/color", "640", "/config/conf/app.conf"]

    # An update of the ConfigMap reaches the volume (not the environment, as in Kubernetes).
    await client.patch("configmaps", "settings", {"data": {"color": "green"}}, namespace="default")
    await until_output(client, "configured", ["cat", "/config/color"], "green")
    env, _ = await exec_output(client, "configured", "sh", "-c", "echo $COLOR")
    assert env.strip() == "blue"


async def test_missing_config_map_waits_then_starts_once_it_exists(client, kubelet):
    node = kubelet.config.node_name
    main = sh(
        "main",
        "sleep 3600",
        env=[{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "later", "key": "x"}}}],
    )
    await client.create("pods", pod("patient", node, main))

    def reason(p):
        return container_status(p, "main").get("state", {}).get("waiting", {}).get("reason")

    current = await wait_pod(
        client,
        "patient",
        lambda p: reason(p) == "CreateContainerConfigError",
        what="CreateContainerConfigError",
    )
    message = container_status(current, "main")["state"]["waiting"]["message"]
    assert message == 'configmap "later" not found'
    await client.create(
        "configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "later", "namespace": "default"},
            "data": {"x": "1"},
        },
    )
    await wait_pod(client, "patient", running, what="Running once the ConfigMap exists")


async def test_secret_downward_and_projected_volumes(client, kubelet):
    node = kubelet.config.node_name
    await client.create(
        "secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": "creds", "namespace": "default"},
            "data": {"password": base64.b64encode(b"s3cr3t").decode()},
        },
    )
    await client.create(
        "configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "plain", "namespace": "default"},
            "data": {"greeting": "hello"},
        },
    )
    mounts = [
        {"name": "creds", "mountPath": "/creds"},
        {"name": "info", "mountPath": "/info"},
        {"name": "all", "mountPath": "/all"},
    ]
    main = sh(
        "main",
        "sleep 3600",
        volumeMounts=mounts,
        env=[
            {
                "name": "PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}},
            },
        ],
    )
    spec = pod(
        "secretive",
        node,
        main,
        volumes=[
            {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
            {
                "name": "info",
                "downwardAPI": {
                    "items": [
                        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                    ]
                },
            },
            {
                "name": "all",
                "projected": {
                    "sources": [
                        {"secret": {"name": "creds", "items": [{"key": "password", "path": "pw"}]}},
                        {"configMap": {"name": "plain"}},
                        {
                            "downwardAPI": {
                                "items": [
                                    {"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}
                                ]
                            }
                        },
                    ]
                },
            },
        ],
    )
    created = await client.create("pods", spec)
    await wait_pod(client, "secretive", running, what="Running")
    out, _ = await exec_output(
        client,
        "secretive",
        "sh",
        "-c",
        "cat /creds/password; echo; stat -L -c %a /creds/password; cat /info/name; echo; "
        "cat /all/pw; echo; cat /all/greeting; echo; cat /all/ns; echo; echo $PASSWORD",
    )
    assert out.split() == ["s3cr3t", "400", "secretive", "s3cr3t", "hello", "default", "s3cr3t"]
    # Secret values live on tmpfs, never on the node's disk.
    secret_dir = kubelet.volumes.pod_dir(created["metadata"]["uid"]) / "volumes"
    assert str(secret_dir / "kubernetes.io~secret" / "creds") in mountpoints_under(secret_dir)

    # The downward API follows the Pod's labels.
    await client.patch(
        "pods",
        "secretive",
        {"metadata": {"labels": {"app": "secretive", "tier": "gold"}}},
        namespace="default",
    )
    await until_output(client, "secretive", ["cat", "/info/labels"], 'tier="gold"')


async def test_service_links_in_the_environment(client, kubelet):
    service = await client.create(
        "services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web-front", "namespace": "default"},
            "spec": {"selector": {"app": "x"}, "ports": [{"name": "http", "port": 80}]},
        },
    )
    ip = service["spec"]["clusterIP"]
    await client.create("pods", pod("linked", kubelet.config.node_name))
    await client.create("pods", pod("unlinked", kubelet.config.node_name, enableServiceLinks=False))
    await wait_pod(client, "linked", running, what="Running")
    await wait_pod(client, "unlinked", running, what="Running")
    env, _ = await exec_output(client, "linked", "env")
    variables = dict(line.split("=", 1) for line in env.splitlines() if "=" in line)
    assert variables["WEB_FRONT_SERVICE_HOST"] == ip
    assert variables["WEB_FRONT_SERVICE_PORT"] == "80"
    assert variables["WEB_FRONT_SERVICE_PORT_HTTP"] == "80"
    assert variables["WEB_FRONT_PORT"] == f"tcp://{ip}:80"
    assert variables["WEB_FRONT_PORT_80_TCP_ADDR"] == ip
    env, _ = await exec_output(client, "unlinked", "env")
    assert "WEB_FRONT_SERVICE_HOST" not in env
