"""The kubelet's ConfigMap and Secret sources under node restriction, with a FakeClock.

kubelet/sources.py gets each object by name as the node's own identity (a list
or watch would be refused), keeps the copy for ttl and fetches it again after;
time only moves when the test says so. The API server is the test's real one.
"""

from __future__ import annotations

from typing import Any

import pytest

from kubelet.sources import Sources
from machinery import auth
from machinery.client import ApiClient
from machinery.clock import FakeClock

NODE = "node-s"
TTL = 10.0
CONFIG = ("ConfigMap", "default", "c1")
SECRET = ("Secret", "default", "s1")
OTHER = ("Secret", "default", "not-for-this-node")


@pytest.fixture
async def pod_on_node(client: ApiClient, settled: Any) -> None:
    await client.create("nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    await client.create(
        "configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1"}, "data": {"k": "1"}},
        namespace="default",
    )
    pod = await client.create(
        "pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "reader"},
            "spec": {
                "nodeName": NODE,
                "containers": [
                    {
                        "name": "c",
                        "image": "busybox",
                        "envFrom": [
                            {"configMapRef": {"name": "c1"}},
                            {"secretRef": {"name": "s1"}},
                        ],
                    }
                ],
            },
        },
        namespace="default",
    )
    await settled(pod)


@pytest.fixture
def changes() -> list[tuple[str, str, str]]:
    return []


@pytest.fixture
def sources(connect: Any, changes: list[tuple[str, str, str]]) -> tuple[Sources, FakeClock]:
    clock = FakeClock()
    node_client = connect(auth.node_user(NODE), (auth.NODES_GROUP,))
    made = Sources(
        node_client, clock=clock, ttl=TTL, changed=lambda *ref: changes.append(tuple(ref))
    )
    return made, clock


async def test_fetch_then_serve_the_copy_until_ttl(
    pod_on_node: None, sources: tuple[Sources, FakeClock], client: ApiClient, changes: list
) -> None:
    src, clock = sources
    await src.fetch([CONFIG, SECRET])
    assert src.fresh([CONFIG, SECRET])
    assert src.configmap("default", "c1")["data"] == {"k": "1"}
    assert src.secret("default", "s1") is None  # absent: a definite answer, kept for ttl
    assert changes == [CONFIG]  # the first copy is news to whoever read nothing before

    # A change is not seen while the copy is fresh...
    current = await client.get("configmaps", "c1", namespace="default")
    await client.update("configmaps", {**current, "data": {"k": "2"}})
    await src.fetch([CONFIG])
    assert src.configmap("default", "c1")["data"] == {"k": "1"}

    # ...and is once it is older than ttl: a read answers the old copy and fetches.
    await clock.advance(TTL)
    assert not src.fresh([CONFIG])
    assert src.configmap("default", "c1")["data"] == {"k": "1"}
    await src.fetch([CONFIG])  # joins the read's fetch
    assert src.configmap("default", "c1")["data"] == {"k": "2"}
    assert changes == [CONFIG, CONFIG]


async def test_an_object_that_appears_is_reported(
    pod_on_node: None, sources: tuple[Sources, FakeClock], client: ApiClient, changes: list
) -> None:
    src, clock = sources
    await src.fetch([SECRET])
    assert src.secret("default", "s1") is None and changes == []
    await client.create(
        "secrets",
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1"}, "data": {"k": "dg=="}},
        namespace="default",
    )
    await clock.advance(TTL)
    await src.fetch([SECRET])
    assert src.secret("default", "s1")["data"] == {"k": "dg=="}
    assert changes == [SECRET]


async def test_a_refused_get_is_retried_soon(
    pod_on_node: None, sources: tuple[Sources, FakeClock], client: ApiClient
) -> None:
    """No Pod here uses that Secret: node restriction refuses it, and the kubelet carries on
    without it, asking again after a second rather than a whole ttl."""
    await client.create(
        "secrets",
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": OTHER[2]}, "data": {}},
        namespace="default",
    )
    src, clock = sources
    await src.fetch([OTHER])
    assert src.secret("default", OTHER[2]) is None
    assert src.fresh([OTHER])
    await clock.advance(1.0)
    assert not src.fresh([OTHER])


async def test_retain_forgets_objects_no_pod_uses(
    pod_on_node: None, sources: tuple[Sources, FakeClock]
) -> None:
    src, _ = sources
    await src.fetch([CONFIG, SECRET])
    src.retain([SECRET])
    assert src.fresh([SECRET]) and not src.fresh([CONFIG])
