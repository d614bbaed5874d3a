"""Running the ReplicaSet and Deployment controllers in a test, and standing in for the kubelet.

No kubelet runs in these tests, so `Readier` plays its part for readiness
only: it watches Pods and marks the ones it is told to as Running and Ready
(through the status subresource, as a kubelet would). `Recorder` keeps a
copy of every Pod from a watch and takes a snapshot after every event, so a
test can assert an invariant on each state the cluster passed through.
`GatedWatchClient` is a real client whose watch of one resource can be held
back, for a slow informer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from controllers.deployment import DeploymentController
from controllers.replicaset import ReplicaSetController
from machinery import errors
from machinery.client import ApiClient, resolve_kind
from machinery.clock import Clock, FakeClock, RealClock, rfc3339
from machinery.credentials import Credentials
from machinery.events import EventRecorder
from machinery.informer import InformerFactory
from machinery.labels import Selector

Obj = dict[str, Any]


async def eventually(
    check: Callable[[], Any], *, timeout: float = 30.0, clock: FakeClock | None = None
) -> Any:
    """Wait until check() (sync or async) returns something truthy, and return it.

    With a FakeClock, time moves a little on every turn so that retries with
    back-off still happen; a test that needs a long jump advances it itself.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {check}")
        if clock is not None:
            await clock.advance(0.02)
        await asyncio.sleep(0.02)


class GatedWatchClient(ApiClient):
    """An ApiClient whose watch events for one resource wait while `gate` is clear."""

    def __init__(
        self, servers: list[str], resource: str, *, credentials: Credentials | None = None
    ) -> None:
        super().__init__(servers, timeout=10, credentials=credentials)
        self.resource = resolve_kind(resource).resource
        self.gate = asyncio.Event()
        self.gate.set()

    async def watch(self, resource: Any, **kwargs: Any):  # type: ignore[override]
        held = resolve_kind(resource).resource == self.resource
        async for event in super().watch(resource, **kwargs):
            if held:
                await self.gate.wait()
            yield event


class Controllers:
    """The ReplicaSet and Deployment controllers on one shared informer factory."""

    def __init__(
        self,
        client: ApiClient,
        *,
        informer_client: ApiClient | None = None,
        clock: Clock | None = None,
        deployments: bool = True,
    ) -> None:
        self.client = client
        self.factory = InformerFactory(informer_client or client)
        self.recorder = EventRecorder(client, component="controller-manager")
        self.replicaset = ReplicaSetController(client, self.factory, self.recorder, clock=clock)
        self.deployment = (
            DeploymentController(client, self.factory, self.recorder, clock=clock)
            if deployments
            else None
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Controllers:
        self.factory.start()
        await self.factory.wait_synced(30)
        self._tasks.append(asyncio.create_task(self.replicaset.run()))
        if self.deployment is not None:
            self._tasks.append(asyncio.create_task(self.deployment.run()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.factory.stop()
        await self.recorder.flush()


def ready_status(pod: Obj, now: float) -> Obj:
    stamp = rfc3339(now)
    containers = pod["spec"].get("containers", [])
    return {
        "phase": "Running",
        "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": stamp},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": stamp},
        ],
        "containerStatuses": [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": stamp}},
            }
            for c in containers
        ],
    }


def is_ready(pod: Obj) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in pod.get("status", {}).get("conditions") or []
    )


class Readier:
    """Marks Pods Running and Ready as they appear, for those `wanted` accepts.

    `wanted` may be changed while it runs; `ready_all()` catches up on Pods
    already seen.
    """

    def __init__(
        self,
        client: ApiClient,
        *,
        namespace: str = "default",
        wanted: Callable[[Obj], bool] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.wanted = wanted or (lambda pod: True)
        self.clock = clock or RealClock()
        self._task: asyncio.Task[None] | None = None
        self._pods: dict[str, Obj] = {}

    async def __aenter__(self) -> Readier:
        page = await self.client.list("pods", namespace=self.namespace)
        for pod in page.items:
            self._pods[pod["metadata"]["name"]] = pod
        self._task = asyncio.create_task(self._follow(page.resource_version))
        await self.ready_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _follow(self, version: str) -> None:
        async for event in self.client.watch(
            "pods", namespace=self.namespace, resource_version=version
        ):
            if event.type == "BOOKMARK":
                continue
            name = event.object["metadata"]["name"]
            if event.type == "DELETED":
                self._pods.pop(name, None)
                continue
            self._pods[name] = event.object
            await self._maybe_ready(event.object)

    async def ready_all(self) -> None:
        for pod in list(self._pods.values()):
            await self._maybe_ready(pod)

    async def _maybe_ready(self, pod: Obj) -> None:
        if is_ready(pod) or pod["metadata"].get("deletionTimestamp") or not self.wanted(pod):
            return
        fresh = dict(pod)
        fresh["status"] = ready_status(pod, self.clock.now())
        try:
            await self.client.update_status("pods", fresh)
        except (errors.Conflict, errors.NotFound):
            pass  # changed or gone meanwhile; a later event brings it back if needed


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The Pods of one selector after one watch event."""

    total: int
    ready: int
    by_image: dict[str, int]
    ready_by_image: dict[str, int]


def image_of(pod: Obj) -> str:
    return pod["spec"]["containers"][0]["image"]


class Recorder:
    """Every state the Pods matching selector went through, one Snapshot per watch event."""

    def __init__(self, client: ApiClient, selector: str, *, namespace: str = "default") -> None:
        self.client = client
        self.selector = Selector.parse(selector)
        self.namespace = namespace
        self.pods: dict[str, Obj] = {}
        self.snapshots: list[Snapshot] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Recorder:
        page = await self.client.list("pods", namespace=self.namespace)
        for pod in page.items:
            self._apply("ADDED", pod)
        self._snap()
        self._task = asyncio.create_task(self._follow(page.resource_version))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _follow(self, version: str) -> None:
        async for event in self.client.watch(
            "pods", namespace=self.namespace, resource_version=version
        ):
            if event.type == "BOOKMARK":
                continue
            self._apply(event.type, event.object)
            self._snap()

    def _apply(self, event_type: str, pod: Obj) -> None:
        name = pod["metadata"]["name"]
        if event_type == "DELETED" or not self.selector.matches(pod["metadata"].get("labels")):
            self.pods.pop(name, None)
        else:
            self.pods[name] = pod

    def _snap(self) -> None:
        by_image: dict[str, int] = {}
        ready_by_image: dict[str, int] = {}
        for pod in self.pods.values():
            image = image_of(pod)
            by_image[image] = by_image.get(image, 0) + 1
            if is_ready(pod):
                ready_by_image[image] = ready_by_image.get(image, 0) + 1
        self.snapshots.append(
            Snapshot(
                total=len(self.pods),
                ready=sum(ready_by_image.values()),
                by_image=by_image,
                ready_by_image=ready_by_image,
            )
        )

    @property
    def last(self) -> Snapshot:
        return self.snapshots[-1]


async def wait_for_object(
    client: ApiClient,
    resource: str,
    name: str,
    check: Callable[[Obj], bool],
    *,
    namespace: str = "default",
    clock: FakeClock | None = None,
    timeout: float = 30.0,
) -> Obj:
    async def fetch() -> Obj | None:
        try:
            obj = await client.get(resource, name, namespace=namespace)
        except errors.NotFound:
            return None
        return obj if check(obj) else None

    return await eventually(fetch, clock=clock, timeout=timeout)


async def list_names(client: ApiClient, resource: str, selector: str = "") -> list[str]:
    page = await client.list(resource, namespace="default", label_selector=selector)
    return sorted(o["metadata"]["name"] for o in page.items)


async def owned_by(client: ApiClient, resource: str, owner: Obj) -> list[Obj]:
    page = await client.list(resource, namespace=owner["metadata"]["namespace"])
    uid = owner["metadata"]["uid"]
    return [
        o
        for o in page.items
        if any(
            r.get("uid") == uid and r.get("controller")
            for r in o["metadata"].get("ownerReferences") or []
        )
    ]


async def events_for(client: ApiClient, obj: Obj) -> list[Obj]:
    page = await client.list("events", namespace=obj["metadata"]["namespace"])
    return [e for e in page.items if e["involvedObject"].get("uid") == obj["metadata"]["uid"]]


Waiter = Callable[[], Awaitable[Any]]
