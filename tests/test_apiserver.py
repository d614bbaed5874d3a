"""The API server against a real etcd: verbs, concurrency, watch, deletion, limits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest

from machinery import errors
from machinery.client import ApiClient
from machinery.clock import rfc3339
from tests import objects as o
from tests.tls import ClusterPKI


@contextlib.asynccontextmanager
async def own_server(pki: ClusterPKI, endpoint: str, prefix: str = "/registry", **settings):
    """An API server of the test's own, with settings the shared fixture does not use; TLS
    and a client certificate as everywhere, the client is admin."""
    from apiserver.server import ApiServer, ServerConfig

    settings.setdefault("compaction_interval", 0)
    settings = {**pki.server_settings(), **settings}
    server = ApiServer(ServerConfig([endpoint], listen="127.0.0.1:0", prefix=prefix, **settings))
    await server.start()
    api = ApiClient([f"127.0.0.1:{server.port}"], timeout=10, credentials=pki.admin_credentials)
    try:
        await asyncio.wait_for(server.ready.wait(), 30)
        yield api
    finally:
        await api.close()
        await server.stop(grace=0)


ROUND_TRIP = [
    pytest.param("pods", o.pod("web"), id="pod"),
    pytest.param("deployments", o.deployment("web"), id="deployment"),
    pytest.param("replicasets", o.replicaset("web"), id="replicaset"),
    pytest.param("services", o.service("web"), id="service"),
    pytest.param("endpoints", o.endpoints("web"), id="endpoints"),
    pytest.param("configmaps", o.configmap("web"), id="configmap"),
    pytest.param("nodes", o.node("node-1"), id="node"),
    pytest.param("namespaces", o.namespace("team-a"), id="namespace"),
    pytest.param("events", o.event("web.1"), id="event"),
    pytest.param("leases", o.lease("node-1"), id="lease"),
]


@pytest.mark.parametrize(("resource", "obj"), ROUND_TRIP)
async def test_round_trip_every_kind(client: ApiClient, resource: str, obj: dict) -> None:
    created = await client.create(resource, obj)
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and int(meta["resourceVersion"]) > 0
    got = await client.get(resource, meta["name"], namespace=meta.get("namespace", ""))
    assert got == created
    listed = await client.list(resource, namespace=meta.get("namespace", ""))
    assert created["metadata"]["uid"] in [i["metadata"]["uid"] for i in listed.items]
    await client.delete(resource, meta["name"], namespace=meta.get("namespace", ""))
    if resource != "namespaces":  # a namespace waits for its finalizer
        with pytest.raises(errors.NotFound):
            await client.get(resource, meta["name"], namespace=meta.get("namespace", ""))


async def test_server_side_defaults_are_applied(client: ApiClient) -> None:
    created = await client.create("deployments", o.deployment("web"))
    spec = created["spec"]
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
    }
    assert spec["revisionHistoryLimit"] == 10
    pod_spec = spec["template"]["spec"]
    assert pod_spec["restartPolicy"] == "Always"
    assert pod_spec["dnsPolicy"] == "ClusterFirst"
    assert pod_spec["terminationGracePeriodSeconds"] == 30
    assert pod_spec["containers"][0]["imagePullPolicy"] == "Always"
    assert pod_spec["containers"][0]["ports"][0]["protocol"] == "TCP"
    svc = await client.create("services", o.service("web", port=8080))
    assert svc["spec"]["ports"][0]["targetPort"] == 8080
    assert svc["spec"]["type"] == "ClusterIP"
    bare = o.pod("bare")
    del bare["metadata"]["namespace"]
    assert (await client.create("pods", bare))["metadata"]["namespace"] == "default"


async def test_invalid_object_reports_every_field(client: ApiClient) -> None:
    bad = o.deployment("Web_App")
    bad["spec"]["template"]["spec"]["containers"][0].pop("image")
    bad["spec"]["replicas"] = -1
    with pytest.raises(errors.Invalid) as caught:
        await client.create("deployments", bad)
    fields = {c.field for c in caught.value.causes}
    assert {"metadata.name", "spec.template.spec.containers[0].image", "spec.replicas"} <= fields
    text = str(caught.value)
    assert 'metadata.name: Invalid value: "Web_App"' in text
    assert "spec.template.spec.containers[0].image: Required value" in text


async def test_unknown_field_is_rejected(client: ApiClient) -> None:
    bad = o.pod("web")
    bad["spec"]["containers"][0]["imagee"] = "typo"
    with pytest.raises(errors.Invalid) as caught:
        await client.create("pods", bad)
    assert any(c.field == "spec.containers[0].imagee" for c in caught.value.causes)


async def test_create_existing_name_fails_already_exists(client: ApiClient) -> None:
    await client.create("configmaps", o.configmap("once"))
    with pytest.raises(errors.AlreadyExists, match='configmaps "once" already exists'):
        await client.create("configmaps", o.configmap("once"))


async def test_generate_name_picks_unique_names(client: ApiClient) -> None:
    template = o.configmap("unused")
    del template["metadata"]["name"]
    template["metadata"]["generateName"] = "web-"
    names = {(await client.create("configmaps", template))["metadata"]["name"] for _ in range(20)}
    assert len(names) == 20
    assert all(n.startswith("web-") and len(n) == len("web-") + 5 for n in names)


async def test_concurrent_updates_one_wins_one_conflicts(client: ApiClient) -> None:
    created = await client.create("configmaps", o.configmap("race"))
    first, second = o.copy_of(created), o.copy_of(created)
    first["data"] = {"writer": "first"}
    second["data"] = {"writer": "second"}
    results = await asyncio.gather(
        client.update("configmaps", first),
        client.update("configmaps", second),
        return_exceptions=True,
    )
    conflicts = [r for r in results if isinstance(r, errors.Conflict)]
    wins = [r for r in results if isinstance(r, dict)]
    assert len(conflicts) == 1 and len(wins) == 1
    assert "the object has been modified" in str(conflicts[0])
    assert (await client.get("configmaps", "race"))["data"] == wins[0]["data"]


async def test_delete_with_stale_resource_version_conflicts(client: ApiClient) -> None:
    created = await client.create("configmaps", o.configmap("stale"))
    created["data"] = {"v": "2"}
    await client.update("configmaps", created)
    with pytest.raises(errors.Conflict):
        await client.delete(
            "configmaps", "stale", resource_version=created["metadata"]["resourceVersion"]
        )
    with pytest.raises(errors.Conflict):
        await client.delete("configmaps", "stale", uid="not-the-uid")
    await client.delete("configmaps", "stale")


async def test_status_and_spec_are_written_apart(client: ApiClient) -> None:
    created = await client.create("deployments", o.deployment("split"))
    assert created["metadata"]["generation"] == 1
    with_status = o.copy_of(created)
    with_status["status"] = {"replicas": 2, "observedGeneration": 1}
    with_status["spec"]["replicas"] = 9  # ignored by a status write
    after_status = await client.update_status("deployments", with_status)
    assert after_status["spec"]["replicas"] == 2
    assert after_status["status"]["replicas"] == 2
    assert after_status["metadata"]["generation"] == 1
    spec_change = o.copy_of(after_status)
    spec_change["spec"]["replicas"] = 5
    spec_change["status"] = {"replicas": 0}  # ignored by a spec write
    after_spec = await client.update("deployments", spec_change)
    assert after_spec["spec"]["replicas"] == 5
    assert after_spec["status"]["replicas"] == 2
    assert after_spec["metadata"]["generation"] == 2
    label_only = o.copy_of(after_spec)
    label_only["metadata"]["labels"] = {"tier": "web"}
    assert (await client.update("deployments", label_only))["metadata"]["generation"] == 2


async def test_merge_patch(client: ApiClient) -> None:
    await client.create("configmaps", o.configmap("patched", data={"a": "1", "b": "2"}))
    patched = await client.patch("configmaps", "patched", {"data": {"a": None, "c": "3"}})
    assert patched["data"] == {"b": "2", "c": "3"}


async def test_binding_sets_node_once(client: ApiClient) -> None:
    await client.create("pods", o.pod("bind-me"))
    bound = await client.bind("bind-me", "node-1")
    assert bound["spec"]["nodeName"] == "node-1"
    assert {"type": "PodScheduled", "status": "True"}.items() <= bound["status"]["conditions"][
        0
    ].items()
    with pytest.raises(errors.Conflict, match='already assigned to node "node-1"'):
        await client.bind("bind-me", "node-2")
    moved = await client.get("pods", "bind-me")
    moved["spec"]["nodeName"] = "node-2"
    with pytest.raises(errors.Invalid):
        await client.update("pods", moved)


async def test_object_over_one_mebibyte_is_refused(client: ApiClient) -> None:
    big = o.configmap("big", data={"blob": "x" * (1024 * 1024 + 10)})
    with pytest.raises(errors.TooLarge, match="too large"):
        await client.create("configmaps", big)
    with pytest.raises(errors.NotFound):
        await client.get("configmaps", "big")


async def test_create_in_missing_namespace_fails(client: ApiClient) -> None:
    with pytest.raises(errors.NotFound, match='namespaces "nowhere" not found'):
        await client.create("pods", o.pod("lost", namespace="nowhere"))


async def test_unknown_resource_and_bad_selector_are_client_errors(client: ApiClient) -> None:
    with pytest.raises(errors.BadRequest):
        await client.list("widgets")
    with pytest.raises(errors.BadRequest, match="label selector"):
        await client.list("pods", label_selector="a in (")
    with pytest.raises(errors.BadRequest, match="field label not supported"):
        await client.list("pods", field_selector="spec.color=red")


async def test_list_with_label_and_field_selectors(client: ApiClient) -> None:
    await client.create("pods", o.pod("a", labels={"app": "web", "tier": "front"}))
    await client.create("pods", o.pod("b", labels={"app": "web", "tier": "back"}))
    await client.create("pods", o.pod("c", labels={"app": "db"}, node="node-1"))
    names = lambda page: sorted(p["metadata"]["name"] for p in page.items)  # noqa: E731
    assert names(await client.list("pods", label_selector="app=web")) == ["a", "b"]
    assert names(await client.list("pods", label_selector="app=web,tier!=front")) == ["b"]
    assert names(await client.list("pods", label_selector="tier")) == ["a", "b"]
    assert names(await client.list("pods", field_selector="spec.nodeName=node-1")) == ["c"]
    assert names(await client.list("pods", field_selector="spec.nodeName=")) == ["a", "b"]
    assert names(await client.list("pods", field_selector="metadata.name=b")) == ["b"]
    # resourceVersion "0" reads the watch cache, which may lag the writes a moment.
    for _ in range(200):
        cached = await client.list("pods", resource_version="0", label_selector="app=db")
        if cached.items:
            break
        await asyncio.sleep(0.02)
    assert names(cached) == ["c"]


async def test_pagination_returns_everything_once_at_one_version(client: ApiClient) -> None:
    for i in range(23):
        await client.create("configmaps", o.configmap(f"page-{i:02d}"))
    seen, token, versions = [], "", set()
    while True:
        page = await client.list("configmaps", limit=5, continue_token=token)
        assert len(page.items) <= 5
        seen += [c["metadata"]["name"] for c in page.items]
        versions.add(page.resource_version)
        if not page.continue_token:
            break
        token = page.continue_token
        if len(seen) == 10:  # a write in the middle does not show up in this list
            await client.create("configmaps", o.configmap("page-late"))
    assert seen == [f"page-{i:02d}" for i in range(23)]
    assert len(versions) == 1
    with pytest.raises(errors.BadRequest):
        await client.list("configmaps", continue_token="garbage")


async def collect(client: ApiClient, count: int, **kwargs) -> list:
    events = []
    async for event in client.watch("configmaps", **kwargs):
        if event.type != "BOOKMARK":
            events.append(event)
        if len(events) == count:
            break
    return events


async def test_watch_from_version_sees_exactly_later_events_in_order(client: ApiClient) -> None:
    first = await client.create("configmaps", o.configmap("w-0"))
    start = first["metadata"]["resourceVersion"]
    expected = []
    for i in range(1, 6):
        expected.append(
            ("ADDED", f"w-{i}", (await client.create("configmaps", o.configmap(f"w-{i}"))))
        )
    changed = o.copy_of(expected[0][2])
    changed["data"] = {"k": "changed"}
    expected.append(("MODIFIED", "w-1", await client.update("configmaps", changed)))
    expected.append(("DELETED", "w-2", await client.delete("configmaps", "w-2")))
    events = await asyncio.wait_for(collect(client, len(expected), resource_version=start), 20)
    assert [(e.type, e.object["metadata"]["name"]) for e in events] == [
        (t, n) for t, n, _ in expected
    ]
    assert [e.resource_version for e in events] == [
        o_["metadata"]["resourceVersion"] for *_, o_ in expected
    ]
    versions = [int(e.resource_version) for e in events]
    assert versions == sorted(versions) and min(versions) > int(start)


async def test_watch_without_version_starts_with_current_state(client: ApiClient) -> None:
    await client.create("configmaps", o.configmap("now-1"))
    await client.create("configmaps", o.configmap("now-2"))
    events = await asyncio.wait_for(collect(client, 2), 20)
    assert sorted((e.type, e.object["metadata"]["name"]) for e in events) == [
        ("ADDED", "now-1"),
        ("ADDED", "now-2"),
    ]


async def test_watch_with_label_selector_sees_objects_leave_it(client: ApiClient) -> None:
    created = await client.create("configmaps", o.configmap("mover"))
    start = created["metadata"]["resourceVersion"]
    labelled = o.copy_of(created)
    labelled["metadata"]["labels"] = {"watched": "yes"}
    labelled = await client.update("configmaps", labelled)
    unlabelled = o.copy_of(labelled)
    unlabelled["metadata"]["labels"] = {}
    await client.update("configmaps", unlabelled)
    events = await asyncio.wait_for(
        collect(client, 2, resource_version=start, label_selector="watched=yes"), 20
    )
    assert [e.type for e in events] == ["ADDED", "DELETED"]


async def test_bookmarks_carry_the_current_version(client: ApiClient) -> None:
    created = await client.create("configmaps", o.configmap("marked"))
    async for event in client.watch(
        "configmaps", resource_version=created["metadata"]["resourceVersion"]
    ):
        if event.type == "BOOKMARK":
            assert int(event.resource_version) >= int(created["metadata"]["resourceVersion"])
            break


async def test_watch_from_compacted_version_is_too_old(etcd, etcd_prefix, cluster_pki) -> None:
    async with own_server(cluster_pki, etcd.endpoint, etcd_prefix, compaction_interval=0.3) as api:
        old = (await api.create("configmaps", o.configmap("old")))["metadata"]["resourceVersion"]
        for i in range(5):
            await api.create("configmaps", o.configmap(f"newer-{i}"))
        with pytest.raises(errors.Expired, match="too old"):
            for _ in range(200):
                # Compaction happens on the server's own schedule; poll until it has.
                async for _event in api.watch("configmaps", resource_version=old):
                    break
                await asyncio.sleep(0.1)
        with pytest.raises(errors.Expired):
            await api.list("configmaps", resource_version=old)


async def test_watch_window_overflow_is_too_old(etcd, etcd_prefix, cluster_pki) -> None:
    async with own_server(cluster_pki, etcd.endpoint, etcd_prefix, watch_cache_capacity=10) as api:
        old = (await api.create("configmaps", o.configmap("first")))["metadata"]["resourceVersion"]
        for i in range(15):
            await api.create("configmaps", o.configmap(f"more-{i}"))
        with pytest.raises(errors.Expired, match="too old resource version"):
            async for _event in api.watch("configmaps", resource_version=old):
                break


async def wait_gone(client: ApiClient, resource: str, name: str, timeout: float = 20) -> None:
    async def poll() -> None:
        while True:
            try:
                await client.get(resource, name)
            except errors.NotFound:
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)


async def owned_tree(client: ApiClient, name: str) -> tuple[dict, dict, dict]:
    from machinery.meta import owner_reference

    deploy = await client.create("deployments", o.deployment(name))
    rs = await client.create(
        "replicasets", o.replicaset(f"{name}-rs", owner=owner_reference(deploy))
    )
    pod = await client.create("pods", o.pod(f"{name}-pod", owner=owner_reference(rs)))
    return deploy, rs, pod


async def test_background_delete_collects_dependents(client: ApiClient) -> None:
    await owned_tree(client, "bg")
    await client.delete("deployments", "bg")
    await wait_gone(client, "replicasets", "bg-rs")
    await wait_gone(client, "pods", "bg-pod")


async def test_foreground_delete_removes_dependents_first(client: ApiClient) -> None:
    await owned_tree(client, "fg")
    marked = await client.delete("deployments", "fg", propagation_policy="Foreground")
    assert marked["metadata"]["deletionTimestamp"]
    assert "foregroundDeletion" in marked["metadata"]["finalizers"]
    await wait_gone(client, "deployments", "fg")
    for resource, name in (("replicasets", "fg-rs"), ("pods", "fg-pod")):
        with pytest.raises(errors.NotFound):
            await client.get(resource, name)


async def test_orphan_delete_keeps_dependents_without_owner(client: ApiClient) -> None:
    await owned_tree(client, "or")
    await client.delete("deployments", "or", propagation_policy="Orphan")
    await wait_gone(client, "deployments", "or")
    for _ in range(200):
        rs = await client.get("replicasets", "or-rs")
        if not rs["metadata"].get("ownerReferences"):
            break
        await asyncio.sleep(0.05)
    assert not rs["metadata"].get("ownerReferences")
    assert (await client.get("pods", "or-pod"))["metadata"]["ownerReferences"]


async def test_finalizers_hold_deletion_until_removed(client: ApiClient) -> None:
    cm = o.configmap("held")
    cm["metadata"]["finalizers"] = ["example.com/hold"]
    await client.create("configmaps", cm)
    marked = await client.delete("configmaps", "held")
    assert marked["metadata"]["deletionTimestamp"]
    assert (await client.get("configmaps", "held"))["metadata"]["deletionTimestamp"]
    await client.patch("configmaps", "held", {"metadata": {"finalizers": None}})
    with pytest.raises(errors.NotFound):
        await client.get("configmaps", "held")


async def test_bound_pod_deletion_is_graceful(client: ApiClient) -> None:
    await client.create("pods", o.pod("graceful", node="node-1"))
    marked = await client.delete("pods", "graceful")
    assert marked["metadata"]["deletionGracePeriodSeconds"] == 30
    assert (await client.get("pods", "graceful"))["metadata"]["deletionTimestamp"]
    await client.delete("pods", "graceful", grace_period_seconds=0)
    with pytest.raises(errors.NotFound):
        await client.get("pods", "graceful")
    await client.create("pods", o.pod("unbound"))
    await client.delete("pods", "unbound")
    with pytest.raises(errors.NotFound):
        await client.get("pods", "unbound")


async def test_status_detail_survives_the_wire(client: ApiClient) -> None:
    bad = o.configmap("UPPER")
    with pytest.raises(errors.Invalid) as caught:
        await client.create("configmaps", bad)
    assert caught.value.reason == "Invalid"
    assert caught.value.kind == "ConfigMap"
    assert caught.value.causes[0].field == "metadata.name"
    assert json.dumps(caught.value.causes[0].message)


async def test_events_expire_after_their_ttl(etcd, etcd_prefix, cluster_pki) -> None:
    async with own_server(cluster_pki, etcd.endpoint, etcd_prefix, event_ttl=1.0) as api:
        old = o.event("old.1")
        old["lastTimestamp"] = "2020-01-01T00:00:00Z"
        await api.create("events", old)
        fresh = o.event("fresh.1")
        fresh["lastTimestamp"] = rfc3339(time.time() + 3600)
        await api.create("events", fresh)
        await wait_gone(api, "events", "old.1")
        assert (await api.get("events", "fresh.1"))["reason"] == "Scheduled"


def test_apiserver_command_line_parses_every_flag() -> None:
    from apiserver.main import parse_args

    args = parse_args(["--etcd-servers=a:1,b:2", "--event-ttl=5", "--compaction-interval=0"])
    assert (args.etcd_servers, args.event_ttl, args.compaction_interval) == ("a:1,b:2", 5.0, 0.0)


async def test_api_server_rides_out_an_etcd_restart(tmp_path, cluster_pki) -> None:
    from apiserver.server import ApiServer, ServerConfig
    from deploy.etcd import free_port, start_etcd

    client_port, peer_port = free_port(), free_port()
    etcd = start_etcd(tmp_path / "etcd", client_port=client_port, peer_port=peer_port)
    server = ApiServer(
        ServerConfig(
            [etcd.endpoint],
            listen="127.0.0.1:0",
            compaction_interval=0,
            **cluster_pki.server_settings(),
        )
    )
    await server.start()
    api = ApiClient(
        [f"127.0.0.1:{server.port}"], timeout=5, credentials=cluster_pki.admin_credentials
    )
    try:
        await asyncio.wait_for(server.ready.wait(), 30)
        before = await api.create("configmaps", o.configmap("before"))
        etcd.stop()
        with pytest.raises(errors.Unavailable):
            await api.create("configmaps", o.configmap("during"))
        etcd = start_etcd(tmp_path / "etcd", client_port=client_port, peer_port=peer_port)

        async def recovered() -> dict:
            while True:
                try:
                    return await api.create("configmaps", o.configmap("after"))
                except errors.Unavailable:
                    await asyncio.sleep(0.2)

        after = await asyncio.wait_for(recovered(), 60)
        # The watch cache follows again: a watch from before the outage sees the new object.
        events = await asyncio.wait_for(
            collect(api, 1, resource_version=before["metadata"]["resourceVersion"]), 30
        )
        assert events[0].object["metadata"]["name"] == "after"
        assert events[0].resource_version == after["metadata"]["resourceVersion"]
    finally:
        await api.close()
        await server.stop(grace=0)
        etcd.stop()
