"""The Deployment controller (with the ReplicaSet controller) against a real API server.

Rolling updates are checked on every state the Pods pass through: a watch
records a snapshot after each Pod event, and every snapshot must hold
replicas + maxSurge Pods or fewer and replicas - maxUnavailable ready Pods
or more. Pods are made ready by the test (no kubelet runs here).
"""

from __future__ import annotations

import pytest

from controllers.deployment import (
    DESIRED_REPLICAS,
    HASH_LABEL,
    MAX_REPLICAS,
    REVISION,
    REVISION_HISTORY,
    fenceposts,
    new_rs_replicas,
    proportional_sizes,
    template_hash,
)
from machinery import meta
from machinery.client import ApiClient
from machinery.clock import FakeClock, rfc3339
from tests import objects as o
from tests.controllers.workload_harness import (
    Controllers,
    Readier,
    Recorder,
    events_for,
    eventually,
    image_of,
    owned_by,
    wait_for_object,
)

# -- pure arithmetic ---------------------------------------------------------------------------


def _deploy(replicas: int, surge: object = "25%", unavailable: object = "25%", **spec) -> dict:
    d = o.deployment("web", replicas=replicas)
    d["metadata"]["generation"] = 1
    d["spec"]["strategy"] = {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable},
    }
    d["spec"].update(spec)
    return d


FENCEPOSTS = [
    pytest.param(_deploy(4), (1, 1), id="25-percent-of-4"),
    pytest.param(_deploy(3), (1, 0), id="surge-rounds-up-unavailable-down"),
    pytest.param(_deploy(10, "30%", "15%"), (3, 1), id="other-percentages"),
    pytest.param(_deploy(3, 2, 0), (2, 0), id="absolute"),
    pytest.param(_deploy(1, "0%", "10%"), (0, 1), id="both-round-to-zero-unavailable-becomes-1"),
]


@pytest.mark.parametrize(("d", "want"), FENCEPOSTS)
def test_fenceposts(d: dict, want: tuple[int, int]) -> None:
    assert fenceposts(d) == want


def test_template_hash_is_stable_safe_and_moves_with_the_collision_count() -> None:
    template = o.template({"app": "web"})
    first = template_hash(template)
    assert first == template_hash(o.copy_of(template))
    assert len(first) == 7 and all(c in "bcdfghjkmnpqrstvwxz2456789" for c in first)
    assert template_hash(template, 1) != first
    assert template_hash(o.template({"app": "web"}, image="nginx")) != first


def _rs(name: str, size: int, *, max_replicas: int | None = None, age: float = 0) -> dict:
    rs = o.replicaset(name, replicas=size)
    rs["metadata"]["uid"] = name
    rs["metadata"]["creationTimestamp"] = rfc3339(1_700_000_000 + age)
    if max_replicas is not None:
        rs["metadata"]["annotations"] = {MAX_REPLICAS: str(max_replicas)}
    return rs


PROPORTIONS = [
    pytest.param(
        _deploy(20, 3, 2),
        [_rs("old", 8, max_replicas=13), _rs("new", 5, max_replicas=13, age=1)],
        {"old": 14, "new": 9},
        id="grow-10-to-20-mid-rollout",
    ),
    pytest.param(
        _deploy(5, 3, 2),
        [_rs("old", 8, max_replicas=13), _rs("new", 5, max_replicas=13, age=1)],
        {"old": 5, "new": 3},
        id="shrink-10-to-5-mid-rollout",
    ),
    pytest.param(
        _deploy(0, 3, 2),
        [_rs("old", 8, max_replicas=13), _rs("new", 5, max_replicas=13, age=1)],
        {"old": 0, "new": 0},
        id="to-zero",
    ),
    pytest.param(
        _deploy(7, 1, 0),
        [_rs("a", 2, max_replicas=4), _rs("b", 2, max_replicas=4, age=1)],
        {"a": 4, "b": 4},
        id="equal-shares",
    ),
    pytest.param(
        _deploy(4, 0, 1),
        [_rs(n, 1, max_replicas=3, age=i) for i, n in enumerate("abc")],
        {"a": 1, "b": 1, "c": 2},
        id="rounding-leftover-goes-to-the-newest-of-the-largest",
    ),
]


@pytest.mark.parametrize(("d", "active", "want"), PROPORTIONS)
def test_proportional_scaling(d: dict, active: list[dict], want: dict[str, int]) -> None:
    sizes = {meta.name(rs): size for rs, size in proportional_sizes(d, active)}
    assert sizes == want


def test_new_replicaset_grows_within_the_surge_counting_pods_not_yet_gone() -> None:
    d = _deploy(4, 1, 1)
    old = _rs("old", 3)
    old["status"] = {"replicas": 4}  # scaled down from 4, its fourth Pod not yet deleted
    new = _rs("new", 1)
    assert new_rs_replicas(d, [old, new], new) == 1  # 4 + 1 Pods already: no room
    old["status"] = {"replicas": 3}
    assert new_rs_replicas(d, [old, new], new) == 2


# -- against the API server --------------------------------------------------------------------


def _complete(want: int, image: str | None = None):
    def check(d: dict) -> bool:
        status = d.get("status") or {}
        return (
            status.get("observedGeneration") == d["metadata"]["generation"]
            and status.get("updatedReplicas") == want
            and status.get("replicas") == want
            and status.get("availableReplicas") == want
            and (image is None or d["spec"]["template"]["spec"]["containers"][0]["image"] == image)
        )

    return check


def _condition(d: dict, kind: str) -> dict:
    return next(c for c in d["status"].get("conditions", []) if c["type"] == kind)


async def _set_image(client: ApiClient, name: str, image: str) -> None:
    d = await client.get("deployments", name)
    d["spec"]["template"]["spec"]["containers"][0]["image"] = image
    await client.update("deployments", d)


async def _replicasets(client: ApiClient, d: dict) -> dict[str, dict]:
    """The Deployment's ReplicaSets by the image they run."""
    return {image_of(rs["spec"]["template"]): rs for rs in await owned_by(client, "replicasets", d)}


async def test_creation_makes_one_replicaset_named_by_the_template_hash(client: ApiClient) -> None:
    async with Controllers(client), Readier(client):
        d = await client.create("deployments", o.deployment("web", replicas=3))
        d = await wait_for_object(client, "deployments", "web", _complete(3))
        [rs] = await owned_by(client, "replicasets", d)
        pod_hash = template_hash(d["spec"]["template"])
        assert rs["metadata"]["name"] == f"web-{pod_hash}"
        assert rs["metadata"]["labels"] == {"app": "web", HASH_LABEL: pod_hash}
        assert rs["spec"]["selector"]["matchLabels"] == {"app": "web", HASH_LABEL: pod_hash}
        assert rs["spec"]["template"]["metadata"]["labels"][HASH_LABEL] == pod_hash
        annotations = rs["metadata"]["annotations"]
        assert annotations[REVISION] == "1"
        assert (annotations[DESIRED_REPLICAS], annotations[MAX_REPLICAS]) == ("3", "4")
        pods = await owned_by(client, "pods", rs)
        assert len(pods) == 3 and all(p["metadata"]["labels"][HASH_LABEL] == pod_hash for p in pods)

        assert d["metadata"]["annotations"][REVISION] == "1"
        status = d["status"]
        assert (status["readyReplicas"], status["unavailableReplicas"]) == (3, 0)
        available, progressing = _condition(d, "Available"), _condition(d, "Progressing")
        assert (available["status"], available["reason"]) == ("True", "MinimumReplicasAvailable")
        assert (progressing["status"], progressing["reason"]) == ("True", "NewReplicaSetAvailable")
        assert progressing["message"] == f'ReplicaSet "web-{pod_hash}" has successfully progressed.'
    messages = [
        e["message"] for e in await events_for(client, d) if e["reason"] == "ScalingReplicaSet"
    ]
    assert messages == [f"Scaled up replica set web-{pod_hash} to 3"]


ROLLING = [
    pytest.param(4, "25%", "25%", 1, 1, id="percent-25-of-4"),
    pytest.param(5, "40%", "20%", 2, 1, id="percent-rounding"),
    pytest.param(3, 2, 0, 2, 0, id="absolute-surge-only"),
    pytest.param(4, 0, 2, 0, 2, id="absolute-unavailable-only"),
]


@pytest.mark.parametrize(("replicas", "surge", "unavailable", "max_extra", "max_down"), ROLLING)
async def test_rolling_update_stays_within_surge_and_availability_on_every_state(
    client: ApiClient, replicas: int, surge, unavailable, max_extra: int, max_down: int
) -> None:
    spec = o.deployment("web", replicas=replicas, image="httpd:1")
    spec["spec"]["strategy"] = {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable},
    }
    async with Controllers(client), Readier(client):
        await client.create("deployments", spec)
        await wait_for_object(client, "deployments", "web", _complete(replicas))
        async with Recorder(client, "app=web") as seen:
            await _set_image(client, "web", "httpd:2")
            d = await wait_for_object(client, "deployments", "web", _complete(replicas, "httpd:2"))
            await eventually(lambda: seen.last.by_image == {"httpd:2": replicas})
    assert len(seen.snapshots) > 2 * replicas  # it saw the Pods come and go
    for state in seen.snapshots:
        assert state.total <= replicas + max_extra, state
        assert state.ready >= replicas - max_down, state
    old, new = (
        (await _replicasets(client, d))["httpd:1"],
        (await _replicasets(client, d))["httpd:2"],
    )
    assert (old["spec"]["replicas"], new["spec"]["replicas"]) == (0, replicas)
    assert new["metadata"]["annotations"][REVISION] == "2"
    assert d["metadata"]["annotations"][REVISION] == "2"


async def test_recreate_removes_every_old_pod_before_the_first_new_one(client: ApiClient) -> None:
    spec = o.deployment("web", replicas=3, image="httpd:1")
    spec["spec"]["strategy"] = {"type": "Recreate"}
    async with Controllers(client), Readier(client):
        await client.create("deployments", spec)
        await wait_for_object(client, "deployments", "web", _complete(3))
        async with Recorder(client, "app=web") as seen:
            await _set_image(client, "web", "httpd:2")
            await wait_for_object(client, "deployments", "web", _complete(3, "httpd:2"))
            await eventually(lambda: seen.last.by_image == {"httpd:2": 3})
    for state in seen.snapshots:
        assert len(state.by_image) <= 1, state  # never old and new Pods together
    assert any(state.total == 0 for state in seen.snapshots)


async def test_paused_deployment_scales_but_does_not_roll_out(client: ApiClient) -> None:
    async with Controllers(client), Readier(client):
        d = await client.create("deployments", o.deployment("web", replicas=2, image="httpd:1"))
        await wait_for_object(client, "deployments", "web", _complete(2))
        await client.patch("deployments", "web", {"spec": {"paused": True}})
        d = await wait_for_object(
            client,
            "deployments",
            "web",
            lambda d: _condition(d, "Progressing")["reason"] == "DeploymentPaused",
        )
        assert _condition(d, "Progressing")["status"] == "Unknown"

        await _set_image(client, "web", "httpd:2")
        await client.patch("deployments", "web", {"spec": {"replicas": 4}})
        d = await wait_for_object(
            client,
            "deployments",
            "web",
            lambda d: (
                d["status"]["observedGeneration"] == d["metadata"]["generation"]
                and d["status"]["availableReplicas"] == 4
            ),
        )
        sets = await _replicasets(client, d)
        assert list(sets) == ["httpd:1"] and sets["httpd:1"]["spec"]["replicas"] == 4
        assert d["status"]["updatedReplicas"] == 0

        await client.patch("deployments", "web", {"spec": {"paused": False}})
        d = await wait_for_object(client, "deployments", "web", _complete(4, "httpd:2"))
        assert (await _replicasets(client, d))["httpd:1"]["spec"]["replicas"] == 0


async def test_scaling_mid_rollout_is_proportional(client: ApiClient) -> None:
    spec = o.deployment("web", replicas=10, image="httpd:1")
    spec["spec"]["strategy"] = {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 3, "maxUnavailable": 2},
    }
    # Only Pods of the first image ever become ready: the rollout gets stuck half way.
    async with Controllers(client), Readier(client, wanted=lambda p: image_of(p) == "httpd:1"):
        d = await client.create("deployments", spec)
        await wait_for_object(client, "deployments", "web", _complete(10))
        await _set_image(client, "web", "httpd:broken")

        async def sizes() -> dict[str, int] | None:
            found = {i: rs["spec"]["replicas"] for i, rs in (await _replicasets(client, d)).items()}
            return found if found == {"httpd:1": 8, "httpd:broken": 5} else None

        await eventually(sizes)
        await client.patch("deployments", "web", {"spec": {"replicas": 20}})

        async def grown() -> bool:
            found = {i: rs["spec"]["replicas"] for i, rs in (await _replicasets(client, d)).items()}
            return found == {"httpd:1": 14, "httpd:broken": 9}

        await eventually(grown)
        d = await wait_for_object(
            client, "deployments", "web", lambda d: d["status"].get("replicas") == 23
        )
        assert d["status"]["updatedReplicas"] == 9


async def test_rollback_makes_the_old_replicaset_new_under_the_next_revision(
    client: ApiClient,
) -> None:
    async with Controllers(client), Readier(client):
        d = await client.create("deployments", o.deployment("web", replicas=2, image="httpd:1"))
        await wait_for_object(client, "deployments", "web", _complete(2))
        first = (await _replicasets(client, d))["httpd:1"]
        await _set_image(client, "web", "httpd:2")
        await wait_for_object(client, "deployments", "web", _complete(2, "httpd:2"))

        # What `kctl rollout undo` does: the old ReplicaSet's template back into the spec.
        d = await client.get("deployments", "web")
        template = o.copy_of(first["spec"]["template"])
        del template["metadata"]["labels"][HASH_LABEL]
        d["spec"]["template"] = template
        await client.update("deployments", d)
        d = await wait_for_object(client, "deployments", "web", _complete(2, "httpd:1"))

        sets = await _replicasets(client, d)
        assert sets["httpd:1"]["metadata"]["name"] == first["metadata"]["name"]
        assert sets["httpd:1"]["metadata"]["annotations"][REVISION] == "3"
        assert sets["httpd:1"]["metadata"]["annotations"][REVISION_HISTORY] == "1"
        assert sets["httpd:1"]["spec"]["replicas"] == 2
        assert sets["httpd:2"]["spec"]["replicas"] == 0
        assert d["metadata"]["annotations"][REVISION] == "3"


async def test_revision_history_limit_deletes_the_oldest_empty_replicasets(
    client: ApiClient,
) -> None:
    spec = o.deployment("web", replicas=1, image="httpd:1")
    spec["spec"]["revisionHistoryLimit"] = 1
    async with Controllers(client), Readier(client):
        d = await client.create("deployments", spec)
        await wait_for_object(client, "deployments", "web", _complete(1))
        for version in (2, 3, 4):
            await _set_image(client, "web", f"httpd:{version}")
            await wait_for_object(client, "deployments", "web", _complete(1, f"httpd:{version}"))

        async def history() -> dict[str, str] | None:
            sets = await _replicasets(client, d)
            revisions = {i: rs["metadata"]["annotations"][REVISION] for i, rs in sets.items()}
            return revisions if len(revisions) == 2 else None

        assert await eventually(history) == {"httpd:3": "3", "httpd:4": "4"}


async def test_progress_deadline_exceeded_when_pods_never_become_ready(client: ApiClient) -> None:
    clock = FakeClock()
    spec = o.deployment("web", replicas=2)
    spec["spec"]["progressDeadlineSeconds"] = 60
    async with Controllers(client, clock=clock):
        await client.create("deployments", spec)
        d = await wait_for_object(
            client,
            "deployments",
            "web",
            lambda d: (
                d["status"].get("replicas") == 2
                and _condition(d, "Progressing")["reason"]
                in ("ReplicaSetUpdated", "NewReplicaSetCreated")
            ),
            clock=clock,
        )
        assert _condition(d, "Progressing")["status"] == "True"
        await clock.advance(61)
        d = await wait_for_object(
            client,
            "deployments",
            "web",
            lambda d: _condition(d, "Progressing")["reason"] == "ProgressDeadlineExceeded",
            clock=clock,
        )
    progressing, available = _condition(d, "Progressing"), _condition(d, "Available")
    assert progressing["status"] == "False"
    assert progressing["message"].endswith("has timed out progressing.")
    assert (available["status"], available["reason"]) == ("False", "MinimumReplicasUnavailable")


async def test_min_ready_seconds_delays_availability(client: ApiClient) -> None:
    clock = FakeClock()
    spec = o.deployment("web", replicas=2)
    spec["spec"]["minReadySeconds"] = 20
    async with Controllers(client, clock=clock), Readier(client, clock=clock):
        await client.create("deployments", spec)
        d = await wait_for_object(
            client,
            "deployments",
            "web",
            lambda d: d["status"].get("readyReplicas") == 2,
            clock=clock,
        )
        assert d["status"]["availableReplicas"] == 0
        assert _condition(d, "Available")["status"] == "False"
        await clock.advance(21)
        d = await wait_for_object(client, "deployments", "web", _complete(2), clock=clock)
        assert _condition(d, "Available")["status"] == "True"


async def test_a_name_collision_moves_the_hash_on(client: ApiClient) -> None:
    spec = o.deployment("web", replicas=1)
    stored = await client.create("deployments", spec)
    await client.delete("deployments", "web")
    squatter = o.replicaset(f"web-{template_hash(stored['spec']['template'])}")
    squatter["metadata"]["labels"] = {"app": "squatter"}
    squatter["spec"]["selector"] = {"matchLabels": {"app": "squatter"}}
    squatter["spec"]["template"]["metadata"]["labels"] = {"app": "squatter"}
    squatter["spec"]["replicas"] = 0
    await client.create("replicasets", squatter)
    async with Controllers(client), Readier(client):
        await client.create("deployments", spec)
        d = await wait_for_object(client, "deployments", "web", _complete(1))
    assert d["status"]["collisionCount"] == 1
    [rs] = await owned_by(client, "replicasets", d)
    assert rs["metadata"]["name"] == f"web-{template_hash(d['spec']['template'], 1)}"
