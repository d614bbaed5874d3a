"""The scheduler process's loop: informers in, decisions, bindings and reasons out.

One task pops Pods and decides, one decision at a time, never awaiting
between the snapshot and the assumption (SchedulerCore.schedule). Bindings
go out concurrently (bounded), so a slow API round trip never holds up the
next decision; the assumed-Pods cache lets that next decision see this one.
A Pod that fits nowhere gets PodScheduled=False with the counted reasons
and a FailedScheduling Event, written only when the message changes.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from machinery import errors, events
from machinery.client import ApiClient
from machinery.clock import Clock, RealClock
from machinery.events import EventRecorder
from machinery.informer import Handlers, InformerFactory
from machinery.log import get_logger
from scheduler.cycle import FAILED_SCHEDULING_REASON, SCHEDULED_REASON, Decision, SchedulerCore
from scheduler.handlers import EventHandlers

log = get_logger("scheduler")

ATTEMPTS = Counter(
    "kubelite_scheduler_schedule_attempts_total", "Scheduling attempts by result.", ["result"]
)
DECISION_LATENCY = Histogram(
    "kubelite_scheduler_decision_duration_seconds",
    "Time of one scheduling decision (filter, score, assume).",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)
BIND_LATENCY = Histogram(
    "kubelite_scheduler_binding_duration_seconds",
    "Time of one binding call.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
PENDING = Gauge(
    "kubelite_scheduler_pending_pods", "Pods waiting in the scheduling queue.", ["queue"]
)


class Scheduler:
    def __init__(
        self,
        client: ApiClient,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        scheduler_name: str = "default-scheduler",
        percentage_of_nodes_to_score: int = 0,
        bind_concurrency: int = 64,
    ) -> None:
        self.client = client
        self.clock = clock or RealClock()
        self.core = SchedulerCore.build(
            clock=self.clock,
            rng=rng or random.Random(),
            percentage_of_nodes_to_score=percentage_of_nodes_to_score,
        )
        self.factory = InformerFactory(client, clock=self.clock)
        self.recorder = EventRecorder(client, component="default-scheduler", clock=self.clock)
        handlers = EventHandlers(
            cache=self.core.cache, queue=self.core.queue, scheduler_name=scheduler_name
        )
        self.pods = self.factory.informer("pods")
        self.pods.add_handlers(
            Handlers(handlers.on_pod_add, handlers.on_pod_update, handlers.on_pod_delete)
        )
        self.nodes = self.factory.informer("nodes")
        self.nodes.add_handlers(
            Handlers(handlers.on_node_add, handlers.on_node_update, handlers.on_node_delete)
        )
        self._binds = asyncio.Semaphore(bind_concurrency)
        self._inflight: set[asyncio.Task[None]] = set()
        self._reported: dict[str, str] = {}
        self.pods.add_handlers(Handlers(on_delete=self._forget_reported))

    def _forget_reported(self, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata", {})
        self._reported.pop(f"{meta.get('namespace', 'default')}/{meta.get('name', '')}", None)

    async def run(self) -> None:
        self.factory.start()
        await self.factory.wait_synced()
        log.info("informers synced, scheduling", nodes=len(self.nodes), pods=len(self.pods))
        tasks = [
            asyncio.create_task(self.core.queue.run(), name="scheduling-queue"),
            asyncio.create_task(self._expire_forever(), name="assumed-expiry"),
            asyncio.create_task(self._schedule_forever(), name="scheduling-loop"),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks + list(self._inflight):
                task.cancel()
            await self.factory.stop()

    async def _expire_forever(self) -> None:
        while True:
            await self.clock.sleep(1.0)
            self.core.expire_assumed()
            for name, length in self.core.queue.lengths().items():
                PENDING.labels(name).set(length)

    async def _schedule_forever(self) -> None:
        while True:
            queued = await self.core.queue.pop()
            if queued is None:
                return
            started = time.perf_counter()
            decision = self.core.schedule(queued)
            DECISION_LATENCY.observe(time.perf_counter() - started)
            if decision.skipped:
                ATTEMPTS.labels("skipped").inc()
            elif decision.node_name is not None:
                ATTEMPTS.labels("scheduled").inc()
                await self._binds.acquire()
                task = asyncio.create_task(self._bind(decision))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            else:
                ATTEMPTS.labels("unschedulable" if decision.result.fit_error else "error").inc()
                await self._report_unschedulable(decision)

    async def _bind(self, decision: Decision) -> None:
        pod = decision.pod
        namespace, _, name = pod.key.partition("/")
        started = time.perf_counter()
        try:
            await self.client.bind(name, decision.node_name or "", namespace=namespace, uid=pod.uid)
        except errors.ApiError as err:
            self.core.bind_failed(decision)
            log.warning("failed to bind pod", pod=pod.key, node=decision.node_name, err=err)
            self.recorder.event(
                pod.obj, events.WARNING, FAILED_SCHEDULING_REASON, f"Binding rejected: {err}"
            )
        else:
            self.core.bound(decision)
            self._reported.pop(pod.key, None)
            log.debug("bound pod", pod=pod.key, node=decision.node_name)
            self.recorder.event(pod.obj, events.NORMAL, SCHEDULED_REASON, decision.message)
        finally:
            BIND_LATENCY.observe(time.perf_counter() - started)
            self._binds.release()

    async def _report_unschedulable(self, decision: Decision) -> None:
        pod = decision.pod
        message = decision.message
        if self._reported.get(pod.key) == message:
            return
        self._reported[pod.key] = message
        log.info("pod unschedulable", pod=pod.key, reason=message)
        self.recorder.event(pod.obj, events.WARNING, FAILED_SCHEDULING_REASON, message)
        namespace, _, name = pod.key.partition("/")
        current: dict[str, Any] | None = self.pods.get(name, namespace)
        if current is None or current.get("spec", {}).get("nodeName"):
            return
        status = dict(current.get("status") or {})
        conditions = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
        status["conditions"] = [*conditions, decision.condition(self.clock.now())]
        try:
            await self.client.update_status("pods", {**current, "status": status})
        except errors.ApiError as err:
            # The next attempt writes it again; a Conflict only means the Pod changed.
            self._reported.pop(pod.key, None)
            log.debug("failed to record unschedulable condition", pod=pod.key, err=err)
