"""The scheduling queue: order, back-off, unschedulable Pods and the events that free them."""

from __future__ import annotations

import asyncio

import pytest

from machinery.clock import FakeClock
from scheduler.framework import ASSIGNED_POD, NODE, NODE_ADD, Action, ClusterEvent
from scheduler.podinfo import PodInfo
from scheduler.queue import QueuedPodInfo, SchedulingQueue
from tests.scheduler.builders import make_pod

INTERESTS = {
    "NodeResourcesFit": (
        ClusterEvent(NODE, Action.ADD | Action.UPDATE_ALLOCATABLE),
        ClusterEvent(ASSIGNED_POD, Action.DELETE),
    ),
    "NodeAffinity": (ClusterEvent(NODE, Action.ADD | Action.UPDATE_LABEL),),
    "PodSpec": (),
}
LABEL_CHANGE = ClusterEvent(NODE, Action.UPDATE_LABEL)
POD_DELETE = ClusterEvent(ASSIGNED_POD, Action.DELETE)


def new_queue() -> tuple[SchedulingQueue, FakeClock]:
    clock = FakeClock()
    return SchedulingQueue(clock=clock, plugin_events=INTERESTS), clock


def pod(name: str, priority: int | None = None) -> PodInfo:
    return PodInfo.of(make_pod(name, priority=priority))


def drain(queue: SchedulingQueue) -> list[str]:
    names = []
    while (queued := queue.pop_nowait()) is not None:
        names.append(queued.pod.key.split("/")[1])
    return names


def fail(queue: SchedulingQueue, *plugins: str) -> QueuedPodInfo:
    queued = queue.pop_nowait()
    assert queued is not None
    queue.add_unschedulable_if_not_present(queued, unschedulable_plugins=frozenset(plugins))
    return queued


async def test_higher_priority_first_then_arrival_order() -> None:
    queue, clock = new_queue()
    queue.add(pod("low-early", 0))
    await clock.advance(1)
    queue.add(pod("high-late", 100))
    queue.add(pod("low-late", 0))
    queue.add(pod("mid", 50))
    assert drain(queue) == ["high-late", "mid", "low-early", "low-late"]


def test_priority_change_reorders_and_delete_removes() -> None:
    queue, _ = new_queue()
    for name in ("a", "b", "c"):
        queue.add(pod(name))
    queue.update(pod("c", 10))
    queue.delete(pod("a").uid)
    assert drain(queue) == ["c", "b"]
    assert len(queue) == 0


@pytest.mark.parametrize(
    ("attempts", "backoff"),
    [
        pytest.param(1, 1.0, id="first-failure-1s"),
        pytest.param(2, 2.0, id="second-2s"),
        pytest.param(3, 4.0, id="third-4s"),
        pytest.param(4, 8.0, id="fourth-8s"),
        pytest.param(5, 10.0, id="fifth-capped-at-10s"),
        pytest.param(50, 10.0, id="many-stays-capped"),
    ],
)
def test_backoff_doubles_and_caps(attempts: int, backoff: float) -> None:
    queue, _ = new_queue()
    queued = QueuedPodInfo(pod("p"), timestamp=0.0, added=0.0, attempts=attempts)
    assert queue.backoff_duration(queued) == backoff


async def test_failed_pod_waits_out_its_backoff_each_time_longer() -> None:
    queue, clock = new_queue()
    queue.add(pod("p"))
    waits = []
    for _ in range(6):
        queued = queue.pop_nowait()
        assert queued is not None
        queue.add_unschedulable_if_not_present(queued)  # an error: straight to backoff
        waited = 0.0
        while queue.flush_backoff_completed() == 0:
            await clock.advance(0.5)
            waited += 0.5
        waits.append(waited)
    assert waits == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


async def test_event_moves_only_the_pods_it_may_help() -> None:
    queue, clock = new_queue()
    queue.add(pod("needs-cpu"))
    queue.add(pod("needs-label"))
    fail(queue, "NodeResourcesFit")
    fail(queue, "NodeAffinity")
    await clock.advance(20)  # back-offs over: moved Pods go straight to active

    assert queue.move_all_to_active_or_backoff(POD_DELETE) == 1
    assert drain(queue) == ["needs-cpu"]
    assert queue.where(pod("needs-label").uid) == "unschedulable"
    assert queue.move_all_to_active_or_backoff(LABEL_CHANGE) == 1
    assert drain(queue) == ["needs-label"]


async def test_moved_pod_still_backing_off_goes_to_backoff() -> None:
    queue, clock = new_queue()
    queue.add(pod("p"))
    fail(queue, "NodeResourcesFit")
    queue.move_all_to_active_or_backoff(NODE_ADD)
    assert queue.where(pod("p").uid) == "backoff"
    await clock.advance(1)
    queue.flush_backoff_completed()
    assert drain(queue) == ["p"]


async def test_invalid_pod_waits_for_its_own_update_not_for_cluster_events() -> None:
    queue, clock = new_queue()
    queue.add(pod("bad"))
    fail(queue, "PodSpec")
    await clock.advance(20)
    assert queue.move_all_to_active_or_backoff(NODE_ADD) == 0
    fixed = PodInfo.of(make_pod("bad", cpu="1"))  # a spec change
    queue.update(fixed)
    assert drain(queue) == ["bad"]


async def test_unschedulable_pods_are_retried_after_five_minutes_anyway() -> None:
    queue, clock = new_queue()
    queue.add(pod("p"))
    fail(queue, "NodeAffinity")
    await clock.advance(299)
    assert queue.flush_unschedulable_leftover() == 0
    await clock.advance(1)
    assert queue.flush_unschedulable_leftover() == 1
    assert drain(queue) == ["p"]


def test_event_during_the_attempt_is_not_lost() -> None:
    queue, _ = new_queue()
    queue.add(pod("p"))
    queued = queue.pop_nowait()
    queue.move_all_to_active_or_backoff(NODE_ADD)  # a node arrives while "p" is being scheduled
    queue.add_unschedulable_if_not_present(
        queued, unschedulable_plugins=frozenset({"NodeAffinity"})
    )
    assert queue.where(queued.uid) == "backoff"


def test_pod_deleted_while_in_flight_is_not_requeued() -> None:
    queue, _ = new_queue()
    queue.add(pod("p"))
    queued = queue.pop_nowait()
    queue.delete(queued.uid)
    queue.add_unschedulable_if_not_present(
        queued, unschedulable_plugins=frozenset({"NodeAffinity"})
    )
    assert queue.where(queued.uid) is None and len(queue) == 0


async def test_pop_waits_for_a_pod_and_run_flushes_backoff() -> None:
    queue, clock = new_queue()
    runner = asyncio.create_task(queue.run())
    popper = asyncio.create_task(queue.pop())
    await asyncio.sleep(0)
    assert not popper.done()
    queue.add(pod("p"))
    first = await asyncio.wait_for(popper, 5)
    queue.add_unschedulable_if_not_present(first)

    popper = asyncio.create_task(queue.pop())
    await clock.advance(0.9)
    assert not popper.done()
    await clock.advance(0.1)  # the 1 s back-off ends; run() moves it and pop() returns
    again = await asyncio.wait_for(popper, 5)
    assert again.uid == first.uid and again.attempts == 2

    queue.close()
    assert await queue.pop() is None
    await clock.advance(1)
    await asyncio.wait_for(runner, 5)
