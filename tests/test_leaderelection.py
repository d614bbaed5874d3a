"""Leader election on a real Lease: one leader at a time, failover when it dies."""

from __future__ import annotations

import asyncio

from machinery.client import ApiClient
from machinery.leaderelection import LeaderElector


def elector(client: ApiClient, identity: str) -> LeaderElector:
    return LeaderElector(
        client,
        name="test-lock",
        identity=identity,
        lease_duration=2.0,
        renew_deadline=1.5,
        retry_period=0.2,
    )


async def test_one_leader_then_failover(client: ApiClient) -> None:
    leading: list[str] = []
    overlaps: list[tuple[str, ...]] = []

    def work(identity: str):
        async def lead() -> None:
            leading.append(identity)
            try:
                while True:
                    if len(leading) > 1:
                        overlaps.append(tuple(leading))
                    await asyncio.sleep(0.05)
            finally:
                leading.remove(identity)

        return lead

    first, second = elector(client, "first"), elector(client, "second")
    task_a = asyncio.create_task(first.run(work("first")))
    await asyncio.sleep(0.5)
    task_b = asyncio.create_task(second.run(work("second")))
    await asyncio.sleep(1.0)
    assert leading == ["first"] and not second.is_leader

    # The leader dies without releasing: the standby takes over once the lease expires.
    task_a.cancel()
    await asyncio.gather(task_a, return_exceptions=True)
    for _ in range(100):
        if second.is_leader:
            break
        await asyncio.sleep(0.1)
    assert second.is_leader and leading == ["second"]
    lease = await client.get("leases", "test-lock", namespace="kube-system")
    assert lease["spec"]["holderIdentity"] == "second"
    assert lease["spec"]["leaseTransitions"] == 1
    assert not overlaps
    task_b.cancel()
    await asyncio.gather(task_b, return_exceptions=True)


async def test_release_hands_over_at_once(client: ApiClient) -> None:
    first, second = elector(client, "a"), elector(client, "b")
    started = asyncio.Event()

    async def lead() -> None:
        started.set()
        await asyncio.Event().wait()

    task_a = asyncio.create_task(first.run(lead))
    await asyncio.wait_for(started.wait(), 10)
    task_a.cancel()
    await asyncio.gather(task_a, return_exceptions=True)
    await first.release()
    became = asyncio.Event()

    async def lead_b() -> None:
        became.set()
        await asyncio.Event().wait()

    task_b = asyncio.create_task(second.run(lead_b))
    await asyncio.wait_for(became.wait(), 5)
    task_b.cancel()
    await asyncio.gather(task_b, return_exceptions=True)
