"""What the node, namespace and endpoints controller tests share: running a controller
against the test's API server, waiting for a state, and playing the kubelet's part.

`eventually` polls for a state rather than sleeping a fixed time; its timeout only
stops a broken test from hanging, it is not a speed assertion.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from machinery import errors
from machinery.client import ApiClient
from machinery.clock import rfc3339
from machinery.informer import InformerFactory

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]], *, what: str = "the expected state", timeout: float = 30.0
) -> T:
    """Call probe until it returns something truthy (or stops raising NotFound); that value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        try:
            last = await probe()
            if last:
                return last
        except errors.NotFound as err:
            last = err
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")
        await asyncio.sleep(0.02)


async def gone(client: ApiClient, resource: str, name: str, namespace: str = "") -> bool:
    try:
        await client.get(resource, name, namespace=namespace)
    except errors.NotFound:
        return True
    return False


@contextlib.asynccontextmanager
async def running(factory: InformerFactory, *controllers: Any) -> AsyncIterator[None]:
    """Start the shared informers, wait for them, run the controllers; stop all after."""
    factory.start()
    await factory.wait_synced(30)
    tasks = [asyncio.create_task(c.run()) for c in controllers]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await factory.stop()


async def play_kubelet(client: ApiClient, namespace: str, name: str) -> None:
    """Finish a Pod once it is marked for deletion, as its kubelet would."""

    async def marked():
        pod = await client.get("pods", name, namespace=namespace)
        return bool(pod["metadata"].get("deletionTimestamp"))

    await eventually(marked, what=f"{namespace}/{name} marked for deletion")
    await client.delete("pods", name, namespace=namespace, grace_period_seconds=0)


async def set_pod_running(
    client: ApiClient,
    name: str,
    *,
    ip: str,
    ready: bool = True,
    namespace: str = "default",
    now: float = 1_700_000_000.0,
) -> dict[str, Any]:
    """Write the status a kubelet would for a started Pod."""
    pod = await client.get("pods", name, namespace=namespace)
    stamp = rfc3339(now)
    flag = "True" if ready else "False"
    pod["status"] = {
        **pod.get("status", {}),
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": stamp,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp},
            {"type": "Initialized", "status": "True", "lastTransitionTime": stamp},
            {"type": "ContainersReady", "status": flag, "lastTransitionTime": stamp},
            {"type": "Ready", "status": flag, "lastTransitionTime": stamp},
        ],
    }
    return await client.update_status("pods", pod)
