"""Informers and work queues against a real API server and etcd."""

from __future__ import annotations

import asyncio

from apiserver.server import ApiServer, ServerConfig
from deploy.etcd import free_port
from machinery.client import ApiClient
from machinery.clock import FakeClock
from machinery.informer import Handlers, Informer
from machinery.workqueue import WorkQueue
from tests import objects as o


async def eventually(check, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_informer_lists_then_follows_changes(client: ApiClient) -> None:
    await client.create("configmaps", o.configmap("before"))
    informer = Informer(client, "configmaps")
    seen: list[tuple[str, str]] = []
    informer.add_handlers(
        Handlers(
            on_add=lambda obj: seen.append(("add", obj["metadata"]["name"])),
            on_update=lambda old, new: seen.append(("update", new["metadata"]["name"])),
            on_delete=lambda obj: seen.append(("delete", obj["metadata"]["name"])),
        )
    )
    informer.start()
    try:
        await informer.wait_synced(10)
        assert informer.get("before", "default") is not None
        created = await client.create("configmaps", o.configmap("after"))
        created["data"] = {"changed": "yes"}
        await client.update("configmaps", created)
        await client.delete("configmaps", "before")
        await eventually(lambda: ("delete", "before") in seen and ("update", "after") in seen)
        assert seen.index(("add", "after")) < seen.index(("update", "after"))
        assert informer.get("before", "default") is None
        assert informer.get("after", "default")["data"] == {"changed": "yes"}
        assert [c["metadata"]["name"] for c in informer.list(namespace="default")] == ["after"]
    finally:
        await informer.stop()


async def test_informer_index_by_node(client: ApiClient) -> None:
    informer = Informer(client, "pods")
    informer.add_index("node", lambda pod: [pod["spec"].get("nodeName", "")])
    informer.start()
    try:
        await informer.wait_synced(10)
        await client.create("pods", o.pod("p1", node="node-a"))
        await client.create("pods", o.pod("p2", node="node-b"))
        await client.create("pods", o.pod("p3"))
        await eventually(lambda: len(informer) == 3)
        assert [p["metadata"]["name"] for p in informer.by_index("node", "node-a")] == ["p1"]
        assert [p["metadata"]["name"] for p in informer.by_index("node", "")] == ["p3"]
    finally:
        await informer.stop()


async def test_informer_survives_api_server_restart_and_misses_nothing(
    etcd, etcd_prefix, cluster_pki
) -> None:
    port = free_port()
    tls = cluster_pki.server_settings()
    config = ServerConfig(
        [etcd.endpoint],
        listen=f"127.0.0.1:{port}",
        prefix=etcd_prefix,
        compaction_interval=0,
        **tls,
    )
    admin = cluster_pki.admin_credentials
    first = ApiServer(config)
    await first.start()
    await asyncio.wait_for(first.ready.wait(), 30)
    api = ApiClient([f"127.0.0.1:{port}"], timeout=5, credentials=admin)
    informer = Informer(api, "configmaps")
    informer.start()
    try:
        await informer.wait_synced(20)
        await api.create("configmaps", o.configmap("kept"))
        await api.create("configmaps", o.configmap("removed"))
        await eventually(lambda: len(informer) == 2)
        await first.stop(grace=0)

        # While this server is down, another one changes the store.
        other = ApiServer(
            ServerConfig(
                [etcd.endpoint],
                listen="127.0.0.1:0",
                prefix=etcd_prefix,
                compaction_interval=0,
                **tls,
            )
        )
        await other.start()
        await asyncio.wait_for(other.ready.wait(), 30)
        async with ApiClient([f"127.0.0.1:{other.port}"], credentials=admin) as side:
            await side.delete("configmaps", "removed")
            await side.create("configmaps", o.configmap("added-while-down"))
            changed = await side.get("configmaps", "kept")
            changed["data"] = {"while": "down"}
            await side.update("configmaps", changed)
        await other.stop(grace=0)

        second = ApiServer(config)
        await second.start()
        try:
            await eventually(
                lambda: informer.get("added-while-down", "default") is not None, timeout=30
            )
            await eventually(lambda: informer.get("removed", "default") is None)
            assert informer.get("kept", "default")["data"] == {"while": "down"}
            assert sorted(informer.keys()) == ["default/added-while-down", "default/kept"]
        finally:
            await informer.stop()
            await second.stop(grace=0)
    finally:
        await api.close()


async def test_workqueue_deduplicates_and_never_hands_a_key_to_two_workers() -> None:
    queue = WorkQueue()
    for key in ("a", "b", "a", "a"):
        queue.add(key)
    assert len(queue) == 2
    first = await queue.get()
    queue.add(first)  # re-added while being processed: held back until done
    second = await queue.get()
    assert {first, second} == {"a", "b"}
    assert len(queue) == 0
    queue.done(first)
    assert await queue.get() == first


async def test_workqueue_rate_limited_retries_back_off_exponentially() -> None:
    clock = FakeClock()
    queue = WorkQueue(clock=clock, base_delay=1.0, max_delay=4.0)
    delays = [queue.add_rate_limited("k") for _ in range(4)]
    assert delays == [1.0, 2.0, 4.0, 4.0]
    await clock.advance(0.5)
    assert len(queue) == 0
    await clock.advance(0.6)
    assert len(queue) == 1
    queue.forget("k")
    assert queue.failures("k") == 0
