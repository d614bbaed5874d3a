"""Fixtures for the kubelet tests: a real registry with the default images, a real API server
(tests/conftest.py), and kubelets on the real runtime.

Every kubelet is its node's identity, as in a cluster: a kubeconfig with a client
certificate `system:node:<name>` (group system:nodes) from the session CA, and a serving
certificate issued beforehand for its logs/exec endpoint, which the API server dials with
its kubelet client certificate. So the kubelet tests pass through the node authorizer.

The session starts one docker-registry on a free loopback port and pushes the busybox and
httpd images built from busybox-static (deploy/images); one image store and puller are
shared by every in-process kubelet of the session, so each image is pulled once. Every
kubelet gets a unique node name and cgroup root (kltest-<pid>-<random>) and its state
under the test's tmp_path; teardown stops the kubelets, removes every sandbox and container
through a fresh runtime on the same state, the cgroup root, and any mount left under the
test's directories, even when the test failed.

Waiting is bounded and never timed as an assertion: wait_pod() follows a watch until a
predicate holds and, on timeout, fails with the last status it saw.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.images.build import build_default_images, inspect_busybox, push_default_images
from deploy.registry import RunningRegistry, start_registry
from kubelet.agent import Kubelet
from kubelet.config import Backoff, KubeletConfig
from kubelet.images import ImagePuller, ImageStore
from kubelet.mounts import mountpoints_under, unmount
from kubelet.runtime.cgroups import detect
from kubelet.runtime.native import NativeRuntime, RuntimeOptions
from machinery import errors
from machinery.client import ApiClient
from machinery.registry import RegistryHosts
from machinery.streams import StreamsClient
from tests.tls import ClusterPKI

Obj = dict[str, Any]


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (namespaces, cgroups, mounts)"
    if not Path("/bin/busybox").exists():
        return "needs /bin/busybox (Debian package busybox-static)"
    if not Path("/usr/bin/docker-registry").exists():
        return "needs docker-registry (Debian package docker-registry)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = _skip_reason()
    for item in items:
        if "tests/kubelet" in str(item.fspath) and item.get_closest_marker("root") and reason:
            item.add_marker(pytest.mark.skip(reason=reason))


# -- the registry and the images, once per session -----------------------------------------


@pytest.fixture(scope="session")
def kubelet_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    work = tmp_path_factory.mktemp("kubelet-registry")
    running = start_registry(storage=work / "storage", workdir=work)
    hosts = RegistryHosts()
    try:
        images = build_default_images(inspect_busybox(), epoch=0)
        push_default_images(hosts, running.address, images, tags=("latest",))
        yield running
    finally:
        hosts.close()
        running.stop()


@pytest.fixture(scope="session")
def image_cache(
    kubelet_registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ImageStore, ImagePuller]]:
    store = ImageStore(tmp_path_factory.mktemp("kubelet-images"))
    hosts = RegistryHosts()
    puller = ImagePuller(store, hosts, default_registry=kubelet_registry.address)
    yield store, puller
    puller.close()
    hosts.close()


# -- kubelets --------------------------------------------------------------------------------


def unique(prefix: str = "kltest") -> str:
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def kubelet_config(
    tmp: Path, server: str, registry: str, *, name: str = "", **overrides: Any
) -> KubeletConfig:
    name = name or unique("node")
    values: dict[str, Any] = {
        "node_name": name,
        "node_ip": "127.0.0.1",
        "servers": (server,),
        "state_dir": tmp / name / "state",
        "root_dir": tmp / name / "root",
        "cgroup_root": unique(),
        "port": 0,
        "bind_address": "127.0.0.1",
        "registry": registry,
        "restart_backoff": Backoff(initial_s=0.5, maximum_s=2.0, reset_after_s=600),
        "image_backoff": Backoff(initial_s=0.5, maximum_s=2.0, reset_after_s=600),
        "status_update_interval_s": 1.0,
        "lease_renew_interval_s": 1.0,
        "usage_interval_s": 2.0,
        "housekeeping_interval_s": 3600.0,
    }
    values.update(overrides)
    return KubeletConfig(**values)


def clean_node(config: KubeletConfig, extra_dirs: tuple[Path, ...] = ()) -> None:
    """Remove everything a kubelet of this config left on the host."""
    runtime_dir = config.state_dir / "runtime"
    if runtime_dir.exists():
        runtime = NativeRuntime(
            RuntimeOptions(state_dir=runtime_dir, cgroup_root=config.cgroup_root)
        )
        try:
            for sandbox in runtime.list_sandboxes():
                runtime.remove_sandbox(sandbox.id)
            for container in runtime.list_containers():
                runtime.remove_container(container.id)
        finally:
            runtime.close()
    detect().remove(config.cgroup_root)
    for directory in (config.state_dir, config.root_dir, *extra_dirs):
        for point in mountpoints_under(directory):
            unmount(point)


def node_identity(pki: ClusterPKI, tmp: Path, name: str, server: str) -> dict[str, Any]:
    """The KubeletConfig fields that make a kubelet its node: a kubeconfig with the node's
    client certificate, and a serving pair for its endpoint."""
    directory = tmp / name / "identity"
    kubeconfig = pki.kubeconfig(directory / "kubeconfig", [server], pki.node_credentials(name))
    cert, key = pki.kubelet_serving(name).write(directory, "kubelet-serving")
    return {"kubeconfig": kubeconfig, "tls_cert_file": cert, "tls_private_key_file": key}


class Nodes:
    """Starts in-process kubelets for a test and cleans up after them."""

    def __init__(
        self, tmp: Path, server: str, registry: str, images: tuple, *, pki: ClusterPKI
    ) -> None:
        self.tmp = tmp
        self.server = server
        self.registry = registry
        self.store, self.puller = images
        self.pki = pki
        self.kubelets: list[Kubelet] = []
        self.configs: list[KubeletConfig] = []

    def config(self, **overrides: Any) -> KubeletConfig:
        """A kubelet's configuration, with its node identity unless overrides give one."""
        overrides.setdefault("name", unique("node"))
        if "kubeconfig" not in overrides:
            identity = node_identity(self.pki, self.tmp, overrides["name"], self.server)
            overrides = {**identity, **overrides}
        config = kubelet_config(self.tmp, self.server, self.registry, **overrides)
        self.configs.append(config)
        return config

    async def start(self, config: KubeletConfig | None = None, **overrides: Any) -> Kubelet:
        config = config or self.config(**overrides)
        if config not in self.configs:
            self.configs.append(config)
        kubelet = Kubelet(config, store=self.store, puller=self.puller)
        self.kubelets.append(kubelet)
        await asyncio.wait_for(kubelet.start(), 60)
        return kubelet

    async def stop(self, kubelet: Kubelet) -> None:
        if kubelet in self.kubelets:
            self.kubelets.remove(kubelet)
            await kubelet.stop()

    async def close(self) -> None:
        for kubelet in list(self.kubelets):
            await self.stop(kubelet)
        for config in self.configs:
            await asyncio.to_thread(clean_node, config)


@pytest.fixture
async def nodes(
    apiserver: Any,
    cluster_pki: ClusterPKI,
    tmp_path: Path,
    kubelet_registry: RunningRegistry,
    image_cache: tuple,
) -> AsyncIterator[Nodes]:
    made = Nodes(
        tmp_path,
        f"127.0.0.1:{apiserver.port}",
        kubelet_registry.address,
        image_cache,
        pki=cluster_pki,
    )
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def kubelet(nodes: Nodes) -> Kubelet:
    return await nodes.start()


# -- objects and waiting ---------------------------------------------------------------------


def container(name: str = "main", *command: str, image: str = "busybox", **fields: Any) -> Obj:
    out: Obj = {"name": name, "image": image, "imagePullPolicy": "IfNotPresent", **fields}
    if command:
        out["command"] = list(command)
    return out


def sh(name: str, script: str, **fields: Any) -> Obj:
    return container(name, "sh", "-c", script, **fields)


def pod(name: str, node: str, *containers: Obj, **spec: Any) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 2,
            "containers": list(containers) or [sh("main", "sleep 3600")],
            **spec,
        },
    }


def streams_for(client: ApiClient) -> StreamsClient:
    """A logs/exec client to the API server client talks to, with the same credentials."""
    return StreamsClient(client.servers, credentials=client.credentials)


def container_status(pod_obj: Obj, name: str, *, init: bool = False) -> Obj:
    key = "initContainerStatuses" if init else "containerStatuses"
    for entry in (pod_obj.get("status") or {}).get(key) or []:
        if entry["name"] == name:
            return entry
    return {}


def condition(pod_obj: Obj, kind: str) -> Obj:
    for entry in (pod_obj.get("status") or {}).get("conditions") or []:
        if entry["type"] == kind:
            return entry
    return {}


async def wait_pod(
    client: ApiClient,
    name: str,
    predicate: Callable[[Obj], bool],
    *,
    namespace: str = "default",
    timeout: float = 60.0,
    what: str = "",
) -> Obj:
    """The Pod once predicate(pod) holds, following a watch so that no written state is
    missed; fails with the last status seen."""
    last: dict[str, Obj] = {}

    async def follow() -> Obj:
        while True:
            try:
                current = await client.get("pods", name, namespace=namespace)
            except errors.NotFound:
                await asyncio.sleep(0.1)
                continue
            last["pod"] = current
            if predicate(current):
                return current
            try:
                async for event in client.watch(
                    "pods",
                    namespace=namespace,
                    field_selector=f"metadata.name={name}",
                    resource_version=current["metadata"]["resourceVersion"],
                ):
                    if event.type in ("ADDED", "MODIFIED"):
                        last["pod"] = event.object
                        if predicate(event.object):
                            return event.object
            except (errors.Expired, errors.Unavailable):
                pass

    try:
        return await asyncio.wait_for(follow(), timeout)
    except TimeoutError:
        status = (last.get("pod") or {}).get("status")
        pytest.fail(f"pod {name} never became {what or 'as expected'}; last status: {status}")


async def wait_gone(
    client: ApiClient, name: str, *, namespace: str = "default", timeout: float = 60.0
) -> None:
    async def follow() -> None:
        while True:
            try:
                await client.get("pods", name, namespace=namespace)
            except errors.NotFound:
                return
            await asyncio.sleep(0.1)

    try:
        await asyncio.wait_for(follow(), timeout)
    except TimeoutError:
        pytest.fail(f"pod {name} was not deleted by its kubelet")


def running(pod_obj: Obj) -> bool:
    return (pod_obj.get("status") or {}).get("phase") == "Running"


def phase_is(*phases: str) -> Callable[[Obj], bool]:
    return lambda p: (p.get("status") or {}).get("phase") in phases


async def events_for(client: ApiClient, name: str) -> list[Obj]:
    listing = await client.list(
        "events", namespace="default", field_selector=f"involvedObject.name={name}"
    )
    return listing.items


async def wait_event(client: ApiClient, name: str, reason: str, *, timeout: float = 30.0) -> Obj:
    async def follow() -> Obj:
        while True:
            for event in await events_for(client, name):
                if event.get("reason") == reason:
                    return event
            await asyncio.sleep(0.2)

    try:
        return await asyncio.wait_for(follow(), timeout)
    except TimeoutError:
        seen = sorted({e.get("reason") for e in await events_for(client, name)})
        pytest.fail(f"no {reason} event for pod {name}; saw {seen}")
