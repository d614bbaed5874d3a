"""The ReplicaSet controller against a real API server and etcd.

Covers: exact scale up and down with Events; no overshoot while the Pod watch
is held back; adoption of matching orphans and release of Pods relabelled
away; the scale-down victim order (table-driven over the ranking function,
and once end to end); availability after minReadySeconds on a FakeClock;
slow-start batches that stop at the first failed create.
"""

from __future__ import annotations

import asyncio

import pytest

from controllers.replicaset import pick_victims
from controllers.util import EXPECTATIONS_TTL, Expectations
from machinery import errors, meta
from machinery.client import ApiClient
from machinery.clock import FakeClock, rfc3339
from machinery.credentials import Credentials
from tests import objects as o
from tests.controllers.workload_harness import (
    Controllers,
    GatedWatchClient,
    Readier,
    Recorder,
    events_for,
    eventually,
    owned_by,
    ready_status,
    wait_for_object,
)


def _server(client: ApiClient) -> list[str]:
    return list(client.servers)


async def _pods_of(client: ApiClient, rs: dict) -> list[dict]:
    return [p for p in await owned_by(client, "pods", rs) if not meta.is_deleting(p)]


async def _scale(client: ApiClient, name: str, replicas: int) -> None:
    await client.patch("replicasets", name, {"spec": {"replicas": replicas}}, namespace="default")


async def _status_replicas(client: ApiClient, name: str, want: int) -> dict:
    return await wait_for_object(
        client,
        "replicasets",
        name,
        lambda rs: (
            rs.get("status", {}).get("replicas") == want
            and rs["status"].get("observedGeneration") == rs["metadata"]["generation"]
        ),
    )


async def test_scales_up_and_down_to_exactly_replicas(client: ApiClient) -> None:
    async with Controllers(client, deployments=False), Recorder(client, "app=web") as seen:
        rs = await client.create("replicasets", o.replicaset("web", replicas=3))
        await _status_replicas(client, "web", 3)
        pods = await _pods_of(client, rs)
        assert len(pods) == 3
        for pod in pods:
            assert pod["metadata"]["name"].startswith("web-")
            assert pod["metadata"]["labels"] == {"app": "web"}
            assert meta.controller_of(pod)["uid"] == rs["metadata"]["uid"]

        await _scale(client, "web", 5)
        await _status_replicas(client, "web", 5)
        assert len(await _pods_of(client, rs)) == 5
        await _scale(client, "web", 1)
        await _status_replicas(client, "web", 1)
        assert len(await _pods_of(client, rs)) == 1
        await _scale(client, "web", 0)
        await _status_replicas(client, "web", 0)
        assert await _pods_of(client, rs) == []
    assert max(s.total for s in seen.snapshots) == 5

    events = await events_for(client, rs)
    created = [e for e in events if e["reason"] == "SuccessfulCreate"]
    deleted = [e for e in events if e["reason"] == "SuccessfulDelete"]
    assert len(created) == 5 and len(deleted) == 5
    assert all(e["message"].startswith("Created pod: web-") for e in created)
    assert all(e["message"].startswith("Deleted pod: web-") for e in deleted)


async def test_never_overshoots_while_the_pod_watch_lags(client: ApiClient) -> None:
    slow = GatedWatchClient(_server(client), "pods", credentials=client.credentials)
    try:
        controllers = Controllers(client, informer_client=slow, deployments=False)
        synced: list[tuple[str, int]] = []
        inner = controllers.replicaset.sync

        async def counting_sync(key: str) -> None:
            await inner(key)
            rs = controllers.replicaset.replicasets.get_by_key(key)
            if rs is not None:
                pokes = int(meta.annotations_of(rs).get("poke", "0"))
                synced.append((key, pokes * 1000 + rs["spec"]["replicas"]))

        controllers.replicaset.sync = counting_sync  # type: ignore[method-assign]
        async with controllers, Recorder(client, "app=web") as seen:
            slow.gate.clear()  # from here on the controller hears nothing about Pods
            rs = await client.create("replicasets", o.replicaset("web", replicas=4))
            await eventually(lambda: len(seen.pods) == 4)

            # Many more syncs, each seeing no Pods in its cache, and a scale-up on top:
            # none of them may create a Pod while the four creations are unobserved.
            for poke in range(1, 6):
                await client.patch(
                    "replicasets", "web", {"metadata": {"annotations": {"poke": str(poke)}}}
                )
            await _scale(client, "web", 6)
            await eventually(lambda: ("default/web", 5006) in synced)
            assert len(await _pods_of(client, rs)) == 4
            cached = controllers.replicaset.pods.by_index("controller-uid", rs["metadata"]["uid"])
            assert cached == []  # the informer really has seen none of them

            slow.gate.set()
            await _status_replicas(client, "web", 6)
            await eventually(lambda: seen.last.total == 6)
        assert max(s.total for s in seen.snapshots) == 6
        assert len(await _pods_of(client, rs)) == 6
    finally:
        await slow.close()


async def test_adopts_matching_orphans_and_releases_pods_relabelled_away(
    client: ApiClient,
) -> None:
    other_owner = await client.create("configmaps", o.configmap("someone-else"))
    foreign = o.pod("foreign", labels={"app": "web"})
    foreign["metadata"]["ownerReferences"] = [meta.owner_reference(other_owner)]
    await client.create("pods", foreign)
    for name in ("orphan-a", "orphan-b"):
        await client.create("pods", o.pod(name, labels={"app": "web"}))
    await client.create("pods", o.pod("stranger", labels={"app": "db"}))

    async with Controllers(client, deployments=False):
        rs = await client.create("replicasets", o.replicaset("web", replicas=3))
        await _status_replicas(client, "web", 3)
        names = sorted(p["metadata"]["name"] for p in await _pods_of(client, rs))
        assert "orphan-a" in names and "orphan-b" in names and len(names) == 3
        assert "foreign" not in names and "stranger" not in names
        adopted = await client.get("pods", "orphan-a")
        assert meta.controller_of(adopted)["name"] == "web"

        await client.patch("pods", "orphan-a", {"metadata": {"labels": {"app": "elsewhere"}}})
        released = await wait_for_object(
            client, "pods", "orphan-a", lambda p: meta.controller_of(p) is None
        )
        assert meta.owner_references(released) == []
        await eventually(lambda: _count_matching(client, rs, 3))
    foreign_now = await client.get("pods", "foreign")
    assert meta.controller_of(foreign_now)["uid"] == other_owner["metadata"]["uid"]


async def _count_matching(client: ApiClient, rs: dict, want: int) -> bool:
    pods = await _pods_of(client, rs)
    return len(pods) == want and all(p["metadata"]["labels"]["app"] == "web" for p in pods)


# -- which Pods go first --------------------------------------------------------------------


NOW = 1_800_000_000.0


def _pod(name: str, **state: object) -> dict:
    """A Pod in a given state: node, phase, ready_at, restarts, created_at, cost."""
    pod = o.pod(name)
    pod["metadata"]["creationTimestamp"] = rfc3339(float(state.get("created_at", NOW - 1000)))
    if state.get("node"):
        pod["spec"]["nodeName"] = "node-1"
    status: dict = {"phase": state.get("phase", "Running")}
    if state.get("ready_at") is not None:
        status = ready_status(pod, float(state["ready_at"]))  # type: ignore[arg-type]
        status["phase"] = state.get("phase", "Running")
    if state.get("restarts"):
        status.setdefault("containerStatuses", [{"name": "main"}])
        status["containerStatuses"][0]["restartCount"] = state["restarts"]
    if "cost" in state:
        pod["metadata"]["annotations"] = {
            "controller.kubernetes.io/pod-deletion-cost": str(state["cost"])
        }
    pod["status"] = status
    return pod


SCHEDULED_READY = dict(node=True, phase="Running", ready_at=NOW - 500)

VICTIM_CASES = [
    pytest.param(
        _pod("victim", **{**SCHEDULED_READY, "node": False, "phase": "Pending", "ready_at": None}),
        _pod("keeper", **SCHEDULED_READY),
        id="unscheduled-before-scheduled",
    ),
    pytest.param(
        _pod("victim", node=True, phase="Pending"),
        _pod("keeper", node=True, phase="Running"),
        id="pending-before-running",
    ),
    pytest.param(
        _pod("victim", node=True, phase="Pending"),
        _pod("keeper", node=True, phase="Unknown"),
        id="pending-before-unknown",
    ),
    pytest.param(
        _pod("victim", node=True, phase="Unknown"),
        _pod("keeper", node=True, phase="Running"),
        id="unknown-before-running",
    ),
    pytest.param(
        _pod("victim", node=True, phase="Running"),
        _pod("keeper", **SCHEDULED_READY),
        id="not-ready-before-ready",
    ),
    pytest.param(
        _pod("victim", **{**SCHEDULED_READY, "cost": -5}),
        _pod("keeper", **{**SCHEDULED_READY, "cost": 10}),
        id="lower-deletion-cost-first",
    ),
    pytest.param(
        _pod("victim", **{**SCHEDULED_READY, "ready_at": NOW - 10}),
        _pod("keeper", **{**SCHEDULED_READY, "ready_at": NOW - 900}),
        id="ready-more-recently-first",
    ),
    pytest.param(
        _pod("victim", **{**SCHEDULED_READY, "restarts": 7}),
        _pod("keeper", **{**SCHEDULED_READY, "restarts": 1}),
        id="more-restarts-first",
    ),
    pytest.param(
        _pod("victim", **{**SCHEDULED_READY, "created_at": NOW - 60}),
        _pod("keeper", **{**SCHEDULED_READY, "created_at": NOW - 6000}),
        id="newer-before-older",
    ),
    pytest.param(
        # Readiness outranks restarts and age: a fresh, restart-free Pod that is not ready
        # goes before an old ready one that restarted often.
        _pod("victim", node=True, phase="Running", created_at=NOW - 5),
        _pod("keeper", **{**SCHEDULED_READY, "restarts": 40, "created_at": NOW - 9000}),
        id="readiness-outranks-restarts-and-age",
    ),
]


@pytest.mark.parametrize(("victim", "keeper"), VICTIM_CASES)
def test_scale_down_deletes_the_least_valuable_pod_first(victim: dict, keeper: dict) -> None:
    assert pick_victims([keeper, victim], 1) == [victim]
    assert pick_victims([victim, keeper], 1) == [victim]


def test_victim_order_over_a_mixed_set() -> None:
    pods = [
        _pod("old-ready", **SCHEDULED_READY),
        _pod("unscheduled", phase="Pending"),
        _pod("crashy", **{**SCHEDULED_READY, "restarts": 3}),
        _pod("not-ready", node=True, phase="Running"),
        _pod("pending", node=True, phase="Pending"),
    ]
    order = [p["metadata"]["name"] for p in pick_victims(pods, len(pods))]
    assert order == ["unscheduled", "pending", "not-ready", "crashy", "old-ready"]


async def test_scale_down_keeps_the_ready_pods(client: ApiClient) -> None:
    async with Controllers(client, deployments=False):
        rs = await client.create("replicasets", o.replicaset("web", replicas=4))
        await _status_replicas(client, "web", 4)
        pods = await _pods_of(client, rs)
        keep = sorted(p["metadata"]["name"] for p in pods[:2])
        for pod in pods[:2]:
            pod["status"] = ready_status(pod, NOW)
            await client.update_status("pods", pod)
        await wait_for_object(
            client, "replicasets", "web", lambda r: r["status"].get("readyReplicas") == 2
        )
        await _scale(client, "web", 2)
        await _status_replicas(client, "web", 2)
        assert sorted(p["metadata"]["name"] for p in await _pods_of(client, rs)) == keep


async def test_available_only_after_min_ready_seconds(client: ApiClient) -> None:
    clock = FakeClock()
    async with Controllers(client, clock=clock, deployments=False):
        spec = o.replicaset("web", replicas=2)
        spec["spec"]["minReadySeconds"] = 30
        await client.create("replicasets", spec)
        await _status_replicas(client, "web", 2)
        async with Readier(client, clock=clock):
            rs = await wait_for_object(
                client,
                "replicasets",
                "web",
                lambda r: r["status"].get("readyReplicas") == 2,
                clock=clock,
            )
            assert rs["status"]["availableReplicas"] == 0
            await clock.advance(31)
            rs = await wait_for_object(
                client,
                "replicasets",
                "web",
                lambda r: r["status"].get("availableReplicas") == 2,
                clock=clock,
            )
            assert rs["status"]["fullyLabeledReplicas"] == 2


class FlakyCreates(ApiClient):
    """A real client that fails the Pod creations `refuse` picks, noting how they were batched."""

    def __init__(self, servers: list[str], refuse, *, credentials: Credentials | None) -> None:
        super().__init__(servers, timeout=10, credentials=credentials)
        self.refuse = refuse
        self.calls = 0
        self.finished = 0
        self.started_after: list[int] = []  # calls finished when each call began

    async def create(self, resource, obj, **kwargs):  # type: ignore[override]
        if resource != "pods":
            return await super().create(resource, obj, **kwargs)
        self.calls += 1
        number = self.calls
        self.started_after.append(self.finished)
        try:
            if self.refuse(number):
                await asyncio.sleep(0)  # fail as a server would: after the others set off
                raise errors.Forbidden(f"pods is forbidden: creation {number} refused by the test")
            return await super().create(resource, obj, **kwargs)
        finally:
            self.finished += 1

    def batches(self) -> list[int]:
        """Sizes of the groups of calls that began together (before any of them finished)."""
        sizes: list[int] = []
        previous = None
        for mark in self.started_after:
            if mark == previous:
                sizes[-1] += 1
            else:
                sizes.append(1)
            previous = mark
        return sizes


async def test_creates_in_slow_start_batches_and_stops_at_a_failure(client: ApiClient) -> None:
    flaky = FlakyCreates(
        _server(client), lambda number: number == 4, credentials=client.credentials
    )
    try:
        async with Controllers(flaky, informer_client=client, deployments=False):
            rs = await client.create("replicasets", o.replicaset("web", replicas=10))
            await _status_replicas(client, "web", 10)
            # 1, 2, then 4 of which the 4th call fails: stop; the retry starts again at 1.
            assert flaky.batches() == [1, 2, 4, 1, 2, 1]
            assert len(await _pods_of(client, rs)) == 10
    finally:
        await flaky.close()
    failed = [e for e in await events_for(client, rs) if e["reason"] == "FailedCreate"]
    assert len(failed) == 1 and "refused by the test" in failed[0]["message"]


async def test_failed_creations_show_in_status_then_clear(client: ApiClient) -> None:
    refusing = True
    flaky = FlakyCreates(_server(client), lambda number: refusing, credentials=client.credentials)
    try:
        async with Controllers(flaky, informer_client=client, deployments=False):
            await client.create("replicasets", o.replicaset("web", replicas=2))
            rs = await wait_for_object(
                client,
                "replicasets",
                "web",
                lambda r: any(
                    c["type"] == "ReplicaFailure" for c in r["status"].get("conditions") or []
                ),
            )
            cond = rs["status"]["conditions"][0]
            assert (cond["status"], cond["reason"]) == ("True", "FailedCreate")
            assert "refused by the test" in cond["message"]
            # Each attempt is one failed call: a batch that fails never grows.
            assert set(flaky.batches()) == {1}
            refusing = False
            await wait_for_object(
                client,
                "replicasets",
                "web",
                lambda r: r["status"].get("replicas") == 2 and not r["status"].get("conditions"),
            )
    finally:
        await flaky.close()


# -- expectations and quiet syncs ---------------------------------------------------------------


async def test_expectations_wait_for_every_observation_then_expire() -> None:
    clock = FakeClock()
    expect = Expectations(clock)
    assert expect.satisfied("default/web")  # nothing issued yet
    expect.expect("default/web", creations=2)
    expect.creation_observed("default/web")
    assert not expect.satisfied("default/web") and expect.pending_creations("default/web") == 1
    expect.creation_observed("default/web")
    assert expect.satisfied("default/web")

    expect.expect("default/web", deletions=["default/web-a", "default/web-b"])
    for _ in range(2):  # deletionTimestamp first, DELETED later: the same Pod counts once
        expect.deletion_observed("default/web", "default/web-a")
    assert not expect.satisfied("default/web")
    await clock.advance(EXPECTATIONS_TTL + 1)  # web-b's event was lost: give up waiting
    assert expect.satisfied("default/web") and expect.pending_deletions("default/web") == set()


class CountingStatusWrites(ApiClient):
    """A real client that counts the status writes it sends."""

    writes = 0

    async def update_status(self, resource, obj):  # type: ignore[override]
        self.writes += 1
        return await super().update_status(resource, obj)


async def test_status_is_written_only_when_it_changes(client: ApiClient) -> None:
    counting = CountingStatusWrites(_server(client), timeout=10, credentials=client.credentials)
    controllers = Controllers(counting, informer_client=client, deployments=False)
    seen: list[str] = []
    inner = controllers.replicaset.sync

    async def noting_sync(key: str) -> None:
        await inner(key)
        rs = controllers.replicaset.replicasets.get_by_key(key)
        seen.append(meta.annotations_of(rs).get("note", "") if rs else "")

    controllers.replicaset.sync = noting_sync  # type: ignore[method-assign]
    try:
        async with controllers:
            await client.create("replicasets", o.replicaset("web", replicas=2))
            # Settled: status.replicas counts creations at once, fullyLabeledReplicas only
            # once the Pods are seen, so wait for both before counting writes.
            await wait_for_object(
                client,
                "replicasets",
                "web",
                lambda rs: (
                    rs.get("status", {}).get("replicas") == 2
                    and rs["status"].get("fullyLabeledReplicas") == 2
                    and rs["status"].get("observedGeneration") == rs["metadata"]["generation"]
                ),
            )
            before = counting.writes
            for note in ("one", "two", "three"):  # syncs with nothing new to report
                await client.patch(
                    "replicasets", "web", {"metadata": {"annotations": {"note": note}}}
                )
                await eventually(lambda note=note: note in seen)
            assert counting.writes == before
    finally:
        await counting.close()
