"""The scheduling cycle end to end without the API: watch events in, decisions out."""

from __future__ import annotations

import random

from machinery.clock import FakeClock
from scheduler.cycle import SchedulerCore
from scheduler.framework import Action
from scheduler.handlers import EventHandlers, node_changes
from tests.scheduler.builders import make_node, make_pod


def new_scheduler() -> tuple[SchedulerCore, EventHandlers, FakeClock]:
    clock = FakeClock()
    core = SchedulerCore.build(clock=clock, rng=random.Random(3))
    return core, EventHandlers(cache=core.cache, queue=core.queue), clock


def bound_copy(pod: dict, node: str) -> dict:
    copy = {**pod, "spec": {**pod["spec"], "nodeName": node}}
    return copy


def schedule_next(core: SchedulerCore):
    queued = core.queue.pop_nowait()
    assert queued is not None, "nothing to schedule"
    return core.schedule(queued)


def test_pending_pod_is_scheduled_assumed_and_confirmed_by_the_watch() -> None:
    core, handlers, _ = new_scheduler()
    handlers.on_node_add(make_node("a"))
    pod = make_pod("web-1", cpu="1")
    handlers.on_pod_add(pod)

    decision = schedule_next(core)
    assert decision.node_name == "a"
    assert core.cache.is_assumed(decision.pod.uid)
    assert decision.binding() == {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": "web-1", "namespace": "default", "uid": "uid-web-1"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "a"},
    }
    core.bound(decision)
    handlers.on_pod_update(pod, bound_copy(pod, "a"))  # the watch catches up
    assert not core.cache.is_assumed(decision.pod.uid)
    assert core.cache.node_info("a").req_cpu == 1000
    assert len(core.queue) == 0


def test_failed_bind_rolls_back_and_retries_after_backoff() -> None:
    core, handlers, _ = new_scheduler()
    handlers.on_node_add(make_node("a", cpu="1"))
    handlers.on_pod_add(make_pod("web-1", cpu="1"))
    decision = schedule_next(core)
    core.bind_failed(decision)
    assert core.cache.node_info("a").req_cpu == 0
    assert core.queue.where(decision.pod.uid) == "backoff"


async def test_unschedulable_pod_waits_and_a_new_node_brings_it_back() -> None:
    core, handlers, clock = new_scheduler()
    handlers.on_node_add(make_node("small", cpu="1"))
    handlers.on_pod_add(make_pod("big", cpu="2"))
    decision = schedule_next(core)
    assert decision.node_name is None
    assert decision.message == "0/1 nodes are available: 1 Insufficient cpu."
    condition = decision.condition(clock.now())
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "PodScheduled",
        "False",
        "Unschedulable",
    )
    assert core.queue.where(decision.pod.uid) == "unschedulable"

    # A label change cannot help a Pod refused for cpu; a bigger node can.
    handlers.on_node_update(
        make_node("small", cpu="1"), make_node("small", cpu="1", labels={"x": "y"})
    )
    assert core.queue.where(decision.pod.uid) == "unschedulable"
    handlers.on_node_add(make_node("big", cpu="4"))
    await clock.advance(1)
    core.queue.flush_backoff_completed()
    assert schedule_next(core).node_name == "big"


def test_deleting_a_bound_pod_frees_room_for_a_waiting_one() -> None:
    core, handlers, _ = new_scheduler()
    handlers.on_node_add(make_node("a", cpu="1"))
    first = make_pod("first", cpu="1", node_name="a")
    handlers.on_pod_add(first)
    handlers.on_pod_add(make_pod("second", cpu="1"))
    assert schedule_next(core).node_name is None
    handlers.on_pod_delete(first)
    assert core.queue.where("uid-second") in ("backoff", "active")
    assert core.cache.node_info("a").req_cpu == 0


def test_pods_for_another_scheduler_or_finished_are_ignored() -> None:
    core, handlers, _ = new_scheduler()
    other = make_pod("other")
    other["spec"]["schedulerName"] = "my-scheduler"
    handlers.on_pod_add(other)
    handlers.on_pod_add(make_pod("done", phase="Succeeded"))
    assert len(core.queue) == 0


async def test_assumption_never_confirmed_expires_and_frees_the_node() -> None:
    core, handlers, clock = new_scheduler()
    handlers.on_node_add(make_node("a"))
    handlers.on_pod_add(make_pod("web-1", cpu="1"))
    decision = schedule_next(core)
    core.bound(decision)
    await clock.advance(31)
    assert [p.uid for p in core.expire_assumed()] == [decision.pod.uid]
    assert core.cache.node_info("a").req_cpu == 0


def test_node_changes_names_what_changed() -> None:
    before = make_node("a")
    heartbeat = make_node("a")
    heartbeat["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-01-01T00:00:00Z"
    assert node_changes(before, heartbeat) == Action(0)
    after = make_node(
        "a", cpu="8", labels={"x": "y"}, taints=["a=b:NoSchedule"], ready=False, unschedulable=True
    )
    assert node_changes(before, after) == (
        Action.UPDATE_ALLOCATABLE
        | Action.UPDATE_LABEL
        | Action.UPDATE_TAINT
        | Action.UPDATE_CONDITION
        | Action.UPDATE_UNSCHEDULABLE
    )


def test_bind_reported_failed_after_the_watch_showed_it_bound_keeps_the_pod() -> None:
    core, handlers, _ = new_scheduler()
    handlers.on_node_add(make_node("a"))
    pod = make_pod("web-1", cpu="1")
    handlers.on_pod_add(pod)
    decision = schedule_next(core)
    handlers.on_pod_update(pod, bound_copy(pod, "a"))  # bound after all, e.g. a late timeout
    core.bind_failed(decision)
    assert core.cache.node_info("a").req_cpu == 1000
    assert core.queue.where(decision.pod.uid) is None


def test_pod_being_deleted_is_skipped_not_placed() -> None:
    core, handlers, _ = new_scheduler()
    handlers.on_node_add(make_node("a"))
    pod = make_pod("leaving")
    pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    handlers.on_pod_add(pod)
    decision = schedule_next(core)
    assert decision.skipped and decision.node_name is None
    assert core.cache.pod_count() == 0 and core.queue.where(decision.pod.uid) is None


def test_relisted_pod_is_not_scheduled_twice() -> None:
    core, handlers, _ = new_scheduler()
    handlers.on_node_add(make_node("a"))
    pod = make_pod("web-1", cpu="1")
    handlers.on_pod_add(pod)
    queued = core.queue.pop_nowait()
    handlers.on_pod_add(pod)  # the informer re-lists while the Pod is being scheduled
    assert core.queue.pop_nowait() is None
    decision = core.schedule(queued)
    handlers.on_pod_add(pod)  # and again while it is being bound
    assert core.queue.pop_nowait() is None
    assert core.cache.is_assumed(decision.pod.uid)
