"""Node lifecycle: lease expiry taints a node and evicts its Pods after their toleration.

The API server and the controller share one FakeClock, so deletionTimestamps,
taint timeAdded and the controller's deadlines are on the same timeline and
every step is exact: most tests drive the controller's monitor pass and
sync() by hand between clock steps; one runs it whole with run().
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from apiserver.server import ApiServer, ServerConfig
from controllers.nodelifecycle import (
    FOREVER,
    NOT_READY,
    STOPPED_POSTING,
    UNREACHABLE,
    NodeLifecycleController,
    tolerates,
    toleration_time,
    with_default_tolerations,
)
from machinery import errors
from machinery.client import ApiClient
from machinery.clock import FakeClock, rfc3339, rfc3339_micro
from machinery.events import EventRecorder
from machinery.informer import InformerFactory
from tests import objects as o
from tests.controllers.harness import eventually, gone, running, set_pod_running

GRACE = 40.0
DEFAULT_TOLERATION = 120.0

# -- tolerations, table-driven -----------------------------------------------------------------

UNREACHABLE_NE = {"key": UNREACHABLE, "effect": "NoExecute"}
DEDICATED = {"key": "dedicated", "value": "gpu", "effect": "NoExecute"}

TOLERATES = [
    pytest.param({"key": UNREACHABLE, "operator": "Exists"}, UNREACHABLE_NE, True, id="exists"),
    pytest.param({"operator": "Exists"}, DEDICATED, True, id="empty-key-exists-tolerates-all"),
    pytest.param({"key": "dedicated", "value": "gpu"}, DEDICATED, True, id="equal-value"),
    pytest.param({"key": "dedicated", "value": "cpu"}, DEDICATED, False, id="other-value"),
    pytest.param(
        {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"},
        DEDICATED,
        False,
        id="other-effect",
    ),
    pytest.param({"key": "other", "operator": "Exists"}, DEDICATED, False, id="other-key"),
    pytest.param({"value": "gpu"}, DEDICATED, False, id="empty-key-equal-matches-nothing"),
]


@pytest.mark.parametrize(("toleration", "taint", "want"), TOLERATES)
def test_tolerates(toleration, taint, want) -> None:
    assert tolerates(toleration, taint) is want


def _tol(key: str, seconds: int | None = None) -> dict[str, Any]:
    tol: dict[str, Any] = {"key": key, "operator": "Exists", "effect": "NoExecute"}
    if seconds is not None:
        tol["tolerationSeconds"] = seconds
    return tol


TIMES = [
    pytest.param([], [UNREACHABLE_NE], 300.0, id="default-toleration"),
    pytest.param([_tol(UNREACHABLE, 30)], [UNREACHABLE_NE], 30.0, id="own-seconds"),
    pytest.param([_tol(UNREACHABLE)], [UNREACHABLE_NE], FOREVER, id="own-forever"),
    pytest.param([_tol(UNREACHABLE, -5)], [UNREACHABLE_NE], 0.0, id="negative-is-now"),
    pytest.param([], [UNREACHABLE_NE, DEDICATED], 0.0, id="untolerated-taint-is-now"),
    pytest.param(
        [_tol("dedicated", 60), _tol(UNREACHABLE)],
        [UNREACHABLE_NE, DEDICATED],
        60.0,
        id="shortest-of-the-used-tolerations",
    ),
    pytest.param([{"operator": "Exists"}], [UNREACHABLE_NE, DEDICATED], FOREVER, id="wildcard"),
]


@pytest.mark.parametrize(("tolerations", "taints", "want"), TIMES)
def test_toleration_time(tolerations, taints, want) -> None:
    pod = {"spec": {"tolerations": tolerations}}
    assert toleration_time(with_default_tolerations(pod, 300.0), taints) == want


# -- against a real API server on the same fake clock -------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=float(int(time.time())))


@pytest.fixture
async def api(etcd, etcd_prefix, cluster_pki, clock):
    server = ApiServer(
        ServerConfig(
            etcd_endpoints=[etcd.endpoint],
            listen="127.0.0.1:0",
            prefix=etcd_prefix,
            compaction_interval=0,
            service_ip_repair_interval=0,
            event_ttl=0,  # the fake clock jumps hours; the Events must stay
            **cluster_pki.server_settings(),
        ),
        clock=clock,
    )
    await server.start()
    await asyncio.wait_for(server.ready.wait(), 30)
    client = ApiClient(
        [f"127.0.0.1:{server.port}"], timeout=10, credentials=cluster_pki.admin_credentials
    )
    yield client
    await client.close()
    await server.stop(grace=0)


def make_controller(client: ApiClient, clock: FakeClock, **settings: Any):
    factory = InformerFactory(client)
    recorder = EventRecorder(client, component="nodelifecycle-test", clock=clock)
    ctrl = NodeLifecycleController(
        client,
        factory,
        recorder,
        clock=clock,
        grace_period=GRACE,
        default_toleration_seconds=DEFAULT_TOLERATION,
        eviction_rate=0,
        **settings,
    )
    return factory, recorder, ctrl


@contextlib.asynccontextmanager
async def informers(factory: InformerFactory):
    factory.start()
    await factory.wait_synced(30)
    try:
        yield
    finally:
        await factory.stop()


async def add_node(client: ApiClient, clock: FakeClock, name: str, ready: str = "True") -> None:
    node = o.node(name)
    node["status"]["conditions"] = [_ready(clock, ready)]
    await client.create("nodes", node)
    await client.create("leases", _lease(name, clock))


def _ready(clock: FakeClock, status: str) -> dict[str, Any]:
    stamp = rfc3339(clock.now())
    return {
        "type": "Ready",
        "status": status,
        "reason": "KubeletReady" if status == "True" else "KubeletNotReady",
        "message": "kubelet is posting ready status",
        "lastHeartbeatTime": stamp,
        "lastTransitionTime": stamp,
    }


def _lease(name: str, clock: FakeClock) -> dict[str, Any]:
    lease = o.lease(name)
    lease["spec"]["renewTime"] = rfc3339_micro(clock.now())
    return lease


async def renew(client: ApiClient, ctrl: NodeLifecycleController, clock: FakeClock, name: str):
    """Renew the node's Lease as its kubelet would, and wait until the controller saw it."""
    lease = await client.get("leases", name, namespace="kube-node-lease")
    lease["spec"]["renewTime"] = rfc3339_micro(clock.now())
    renewed = await client.update("leases", lease)
    await synced_to(ctrl.leases, name, renewed, namespace="kube-node-lease")


async def synced_to(informer, name: str, obj: dict, namespace: str = "") -> None:
    want = int(obj["metadata"]["resourceVersion"])

    async def caught_up():
        cached = informer.get(name, namespace)
        return cached is not None and int(cached["metadata"]["resourceVersion"]) >= want

    await eventually(caught_up, what=f"the informer to see {name} at {want}")


async def sync_fresh(client: ApiClient, ctrl: NodeLifecycleController, name: str) -> None:
    """sync() the node once the informers hold its latest version and its Pods'."""
    await synced_to(ctrl.nodes, name, await client.get("nodes", name))
    for pod in (await client.list("pods", field_selector=f"spec.nodeName={name}")).items:
        await synced_to(ctrl.pods, pod["metadata"]["name"], pod, "default")
    await ctrl.sync(name)


async def add_pod(client: ApiClient, name: str, node: str, tolerations=None) -> None:
    pod = o.pod(name, node=node)
    if tolerations is not None:
        pod["spec"]["tolerations"] = tolerations
    await client.create("pods", pod)
    await set_pod_running(client, name, ip=f"10.244.0.{len(name)}", now=0)


async def deleting(client: ApiClient, name: str) -> bool:
    pod = await client.get("pods", name, namespace="default")
    return bool(pod["metadata"].get("deletionTimestamp"))


def condition_taints(node: dict) -> set[tuple[str, str]]:
    return {
        (t["key"], t["effect"])
        for t in node["spec"].get("taints") or []
        if t["key"] in (UNREACHABLE, NOT_READY)
    }


async def events_about(client: ApiClient, name: str, reason: str) -> list[dict]:
    found = await client.list(
        "events", namespace="default", field_selector=f"involvedObject.name={name}"
    )
    return [e for e in found.items if e["reason"] == reason]


async def test_lease_expiry_taints_then_evicts_each_pod_after_its_toleration(api, clock) -> None:
    client = api
    factory, recorder, ctrl = make_controller(client, clock)
    await add_node(client, clock, "sick")
    await add_node(client, clock, "healthy")
    await add_pod(client, "short", "sick", [_tol(UNREACHABLE, 30)])
    await add_pod(client, "default-tol", "sick")
    await add_pod(client, "forever", "sick", [_tol(UNREACHABLE)])
    await add_pod(client, "wildcard", "sick", [{"operator": "Exists"}])
    await add_pod(client, "elsewhere", "healthy")
    async with informers(factory):
        assert ctrl.monitor_once() == []  # everything fresh: nothing to do

        # One second short of the grace period nothing happens; past it the node is due.
        await clock.advance(GRACE - 1)
        await renew(client, ctrl, clock, "healthy")
        assert "sick" not in ctrl.monitor_once()
        await clock.advance(2)
        await renew(client, ctrl, clock, "healthy")
        assert ctrl.monitor_once() == ["sick"]
        tainted_at = clock.now()
        await sync_fresh(client, ctrl, "sick")

        node = await client.get("nodes", "sick")
        ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"], ready["message"]) == (
            "Unknown",
            "NodeStatusUnknown",
            STOPPED_POSTING,
        )
        assert condition_taints(node) == {(UNREACHABLE, "NoExecute"), (UNREACHABLE, "NoSchedule")}
        no_execute = next(t for t in node["spec"]["taints"] if t["effect"] == "NoExecute")
        assert no_execute["timeAdded"] == rfc3339(tainted_at)
        pod = await client.get("pods", "default-tol", namespace="default")
        assert (
            next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")["status"]
            == "False"
        )
        assert not condition_taints(await client.get("nodes", "healthy"))

        # "short" tolerates 30 s: not a second before, exactly at.
        await clock.advance(29)
        await sync_fresh(client, ctrl, "sick")
        assert not await deleting(client, "short")
        await clock.advance(1)
        await sync_fresh(client, ctrl, "sick")
        assert await deleting(client, "short")
        evicted = await client.get("pods", "short", namespace="default")
        target = next(c for c in evicted["status"]["conditions"] if c["type"] == "DisruptionTarget")
        assert target["reason"] == "DeletionByTaintManager"

        # Its kubelet cannot finish it: once its grace period (30 s) is over, it goes.
        await clock.advance(29)
        await sync_fresh(client, ctrl, "sick")
        assert not await gone(client, "pods", "short", "default")
        await clock.advance(1)
        await sync_fresh(client, ctrl, "sick")
        assert await gone(client, "pods", "short", "default")

        # The cluster default (120 s here) applies to a Pod without its own toleration.
        await clock.advance(DEFAULT_TOLERATION - 60 - 1)
        await sync_fresh(client, ctrl, "sick")
        assert not await deleting(client, "default-tol")
        await clock.advance(1)
        await sync_fresh(client, ctrl, "sick")
        assert await deleting(client, "default-tol")

        # Tolerating forever means never.
        await clock.advance(10_000)
        await sync_fresh(client, ctrl, "sick")
        for name in ("forever", "wildcard", "elsewhere"):
            assert not await deleting(client, name), name

        await recorder.flush()
        assert await events_about(client, "sick", "NodeNotReady")
        assert await events_about(client, "short", "TaintManagerEviction")


async def test_a_node_that_comes_back_is_untainted(api, clock) -> None:
    client = api
    factory, recorder, ctrl = make_controller(client, clock)
    await add_node(client, clock, "flaky")
    await add_node(client, clock, "steady")
    async with informers(factory):
        ctrl.monitor_once()
        await clock.advance(GRACE + 1)
        await renew(client, ctrl, clock, "steady")
        ctrl.monitor_once()
        await sync_fresh(client, ctrl, "flaky")
        assert condition_taints(await client.get("nodes", "flaky"))

        # The kubelet is back: it renews its Lease and posts Ready=True.
        await renew(client, ctrl, clock, "flaky")
        node = await client.get("nodes", "flaky")
        node["status"]["conditions"] = [_ready(clock, "True")]
        await client.update_status("nodes", node)
        await synced_to(ctrl.nodes, "flaky", await client.get("nodes", "flaky"))
        assert "flaky" in ctrl.monitor_once()
        await sync_fresh(client, ctrl, "flaky")
        assert not condition_taints(await client.get("nodes", "flaky"))
        await recorder.flush()
        assert await events_about(client, "flaky", "NodeReady")


async def test_kubelet_reporting_not_ready_gets_the_not_ready_taint(api, clock) -> None:
    client = api
    factory, _, ctrl = make_controller(client, clock)
    await add_node(client, clock, "unwell", ready="False")
    await add_node(client, clock, "fine")
    async with informers(factory):
        assert ctrl.monitor_once() == ["unwell"]
        await sync_fresh(client, ctrl, "unwell")
        node = await client.get("nodes", "unwell")
        assert condition_taints(node) == {(NOT_READY, "NoExecute"), (NOT_READY, "NoSchedule")}


async def test_operator_taint_evicts_untolerating_pods_at_once(api, clock) -> None:
    client = api
    factory, _, ctrl = make_controller(client, clock)
    await add_node(client, clock, "gpu")
    await add_node(client, clock, "other")
    await add_pod(client, "plain", "gpu")
    await add_pod(
        client, "patient", "gpu", [{**DEDICATED, "operator": "Equal", "tolerationSeconds": 10}]
    )
    node = await client.get("nodes", "gpu")
    node["spec"]["taints"] = [{**DEDICATED, "timeAdded": rfc3339(clock.now())}]
    await client.update("nodes", node)
    async with informers(factory):
        await sync_fresh(client, ctrl, "gpu")
        assert await deleting(client, "plain")
        assert not await deleting(client, "patient")
        await clock.advance(10)
        await sync_fresh(client, ctrl, "gpu")
        assert await deleting(client, "patient")
        # The node is reachable: its kubelet finishes the Pods, nothing is forced.
        assert not await gone(client, "pods", "plain", "default")
        assert [t["key"] for t in (await client.get("nodes", "gpu"))["spec"]["taints"]] == [
            "dedicated"
        ]


async def test_when_every_node_is_down_nothing_is_evicted(api, clock) -> None:
    client = api
    factory, _, ctrl = make_controller(client, clock)
    for name in ("a", "b"):
        await add_node(client, clock, name)
        await add_pod(client, f"pod-{name}", name)
    async with informers(factory):
        ctrl.monitor_once()
        await clock.advance(GRACE + 1)
        assert sorted(ctrl.monitor_once()) == ["a", "b"]
        assert ctrl.fully_disrupted
        for name in ("a", "b"):
            await sync_fresh(client, ctrl, name)
        await clock.advance(10_000)
        for name in ("a", "b"):
            await sync_fresh(client, ctrl, name)
            node = await client.get("nodes", name)
            assert condition_taints(node) == {(UNREACHABLE, "NoSchedule")}
            assert not await deleting(client, f"pod-{name}")


async def test_pods_of_a_deleted_node_are_removed_after_the_grace_period(api, clock) -> None:
    client = api
    factory, _, ctrl = make_controller(client, clock)
    await add_node(client, clock, "doomed")
    await add_pod(client, "stranded", "doomed")
    await client.delete("nodes", "doomed")
    async with informers(factory):
        assert ctrl.monitor_once() == ["doomed"]
        await ctrl.sync("doomed")
        await clock.advance(GRACE - 1)
        await ctrl.sync("doomed")
        assert not await gone(client, "pods", "stranded", "default")
        await clock.advance(1)
        await ctrl.sync("doomed")
        assert await gone(client, "pods", "stranded", "default")


async def test_running_controller_taints_evicts_and_untaints(api, clock) -> None:
    """The whole loop through run(): the monitor pass and the eviction timer, no manual syncs."""
    client = api
    factory, _, ctrl = make_controller(client, clock, monitor_period=5.0)
    await add_node(client, clock, "lost")
    await add_node(client, clock, "kept")
    await add_pod(client, "victim", "lost", [_tol(UNREACHABLE, 60)])
    async with running(factory, ctrl):

        async def advance(seconds: int) -> None:
            """Let time pass 5 s at a time, with "kept" renewing as its kubelet would."""
            for _ in range(seconds // 5):
                await clock.advance(5)
                await renew(client, ctrl, clock, "kept")

        async def tainted():
            return (UNREACHABLE, "NoExecute") in condition_taints(await client.get("nodes", "lost"))

        await advance(45)
        await eventually(tainted, what="the unreachable taint")
        await advance(65)
        await eventually(lambda: deleting(client, "victim"), what="the eviction")
        await advance(35)
        await eventually(lambda: gone(client, "pods", "victim", "default"), what="the pod gone")

        await renew(client, ctrl, clock, "lost")
        node = await client.get("nodes", "lost")
        node["status"]["conditions"] = [_ready(clock, "True")]
        await client.update_status("nodes", node)

        async def untainted():
            return not condition_taints(await client.get("nodes", "lost"))

        await eventually(untainted, what="the taints removed")


async def test_node_without_lease_or_status_is_marked_never_updated(api, clock) -> None:
    client = api
    factory, _, ctrl = make_controller(client, clock, protect_full_disruption=False)
    await client.create("nodes", o.node("silent"))
    async with informers(factory):
        ctrl.monitor_once()
        await clock.advance(GRACE + 1)
        assert ctrl.monitor_once() == ["silent"]
        await sync_fresh(client, ctrl, "silent")
        node = await client.get("nodes", "silent")
        ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("Unknown", "NodeStatusNeverUpdated")
        with pytest.raises(errors.NotFound):
            await client.get("leases", "silent", namespace="kube-node-lease")
