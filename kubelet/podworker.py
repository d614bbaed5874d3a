"""One asyncio task per Pod drives what the node runs towards the Pod's spec.

A worker is woken by a change of its Pod (the informer), of a container (the relist), of
a probe result, of a ConfigMap the Pod uses, or by a timer it set itself (a back-off that
ends); each wake-up runs one sync, which is idempotent: it looks at what the runtime holds
for the Pod *now* and does the next steps, then computes the status and hands it to the
status manager. Because a sync decides from the runtime's state alone (labels carry the
Pod UID, the container name, the attempt number and the spec hash), a kubelet that was
restarted or killed adopts everything it finds: a running container whose hash matches
its spec is simply left running, an exited one keeps its exit code and logs, and the
restart count is the attempt number recorded in the runtime.

One sync, in order:
1. The Pod is being deleted (deletionTimestamp) or gone from the API: stop every
   container gracefully (preStop hook, stop signal, grace period, SIGKILL), write the
   final status, remove sandboxes, network and volumes, then delete the Pod from the API
   with grace period 0; the worker then ends.
2. The Pod is terminal (Succeeded/Failed): make sure nothing runs, stop the sandbox, keep
   exited containers for logs until the Pod is deleted.
3. Volumes are set up (and configMap volumes refreshed); a failure is FailedMount.
4. A ready sandbox is found, or made (with the Pod network and DNS).
5. Init containers, in order, one at a time; a failing one restarts per policy (never
   under Never, which fails the Pod).
6. App containers: start what has no instance, restart what exited per restartPolicy
   with back-off, kill what failed its liveness/startup probe or whose spec changed.
7. Status.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubelet import containers as cspec
from kubelet import dns as kdns
from kubelet import labels as kl
from kubelet import status as podstatus
from kubelet import termination
from kubelet.backoff import Backoff
from kubelet.config import KubeletConfig
from kubelet.cri import AsyncRuntime, PodRuntime
from kubelet.envvars import EnvContext, EnvError, Sources, container_env
from kubelet.imagemanager import ImageManager, ImageWaiting
from kubelet.metrics import KubeletMetrics
from kubelet.network import NetworkError, PodNetwork, PodNetworkRequest, PortMapping
from kubelet.probes import Outcome, ProbeManager, ProbeTarget, run_probe
from kubelet.runtime.interface import (
    ContainerId,
    ContainerState,
    ContainerStatus,
    RuntimeFailure,
    SandboxStatus,
)
from kubelet.statusmanager import StatusManager
from kubelet.volumes import Volume, VolumeError, VolumeManager
from machinery import errors
from machinery.client import ApiClient
from machinery.clock import Clock, parse_rfc3339
from machinery.events import NORMAL, WARNING, EventRecorder
from machinery.log import get_logger

log = get_logger("kubelet")

MIN_GRACE_AFTER_HOOK_S = 2.0  # Kubernetes' minimum for the stop signal after a preStop hook
RETRY_S = (1.0, 2.0, 5.0, 10.0)  # after a sync that failed unexpectedly


@dataclasses.dataclass(frozen=True)
class NodeFacts:
    """What a worker needs to know of its node (kept current by the node agent)."""

    host_ips: tuple[str, ...]
    pod_cidrs: tuple[str, ...]
    cpu_millis: int
    memory_bytes: int  # allocatable
    ephemeral_bytes: int
    memory_capacity_bytes: int


@dataclasses.dataclass
class WorkerContext:
    config: KubeletConfig
    client: ApiClient
    runtime: AsyncRuntime
    images: ImageManager
    volumes: VolumeManager
    network: PodNetwork
    probes: ProbeManager
    statuses: StatusManager
    recorder: EventRecorder
    clock: Clock
    metrics: KubeletMetrics
    configmaps: Sources  # ConfigMaps and Secrets, from the informers
    restart_backoff: Backoff
    node: Callable[[], NodeFacts]  # kept current by the node agent
    services: Callable[[str], list[dict[str, Any]]]  # a namespace's Services, for env
    host_resolv: Callable[[], kdns.HostResolv]

    def log_dir(self, pod: dict[str, Any]) -> Path:
        meta = pod["metadata"]
        return self.config.log_dir / f"{meta.get('namespace')}_{meta['name']}_{meta['uid']}"


class PodWorker:
    def __init__(self, uid: str, ctx: WorkerContext, pod: dict[str, Any] | None) -> None:
        self.uid = uid
        self.ctx = ctx
        self.pod = pod
        self.last_pod = pod
        self._wakeup = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        self._first_seen = time.monotonic()
        self._start_recorded = False
        self._waiting: dict[str, tuple[str, str]] = {}
        self._attempt_floor: dict[str, int] = {}
        self._seeded = False
        self._terminal_done = False
        self._failures = 0
        self._created: list[ContainerId] = []  # made in this sync, not yet in `state`
        self.seen: frozenset[tuple[str, str]] = frozenset()  # the runtime state last acted on
        self._messages = termination.Messages()
        self.finished = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.log = log.bind(pod=self._ref(pod), uid=uid)

    @staticmethod
    def _ref(pod: dict[str, Any] | None) -> str:
        if pod is None:
            return "?"
        meta = pod.get("metadata", {})
        return f"{meta.get('namespace', '')}/{meta.get('name', '')}"

    # -- driving -------------------------------------------------------------------------------

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"pod-worker-{self.uid[:8]}")
        self.wake()

    def update(self, pod: dict[str, Any] | None) -> None:
        self.pod = pod
        if pod is not None:
            self.last_pod = pod
        self.wake()

    def wake(self) -> None:
        self._wakeup.set()

    def wake_after(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + max(0.0, delay)
        pending = self._timer is not None and self._timer_due > loop.time()
        if pending and self._timer_due <= due:
            return  # an earlier wake-up is already due
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        self._timer = loop.call_at(due, self.wake)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def run(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                try:
                    if await self.sync():
                        return
                    self._failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception as err:
                    delay = RETRY_S[min(self._failures, len(RETRY_S) - 1)]
                    self._failures += 1
                    self.log.error(
                        "failed to sync pod, retrying",
                        err=err,
                        delay_s=delay,
                        exc_info=not isinstance(err, RuntimeFailure | errors.ApiError),
                    )
                    self.wake_after(delay)
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self.finished.set()

    # -- one sync ------------------------------------------------------------------------------

    async def sync(self) -> bool:
        """One pass; True when the Pod is gone from the node and the worker can end."""
        pod = self.pod
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return await self.terminate()
        state = (await self.ctx.runtime.fresh()).pod(self.uid)
        if self._terminal_done or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            await self._finish_terminal(state)
            return False
        if not self._seeded:
            self._seed_probes(pod, state)
        if await self._enforce_deadline(pod, state):
            return False

        # Volumes, then the sandbox.
        volumes = await self._setup_volumes(pod, state)
        if volumes is None:
            return False
        ready = await self._ensure_sandbox(pod, state)
        if ready is None:
            return False
        sandbox, state = ready

        # Containers: init in order, then the app containers; then the status.
        changed = False
        if not self._init_done(pod, state, sandbox):
            changed = await self._sync_init(pod, state, sandbox, volumes)
        if self._init_done(pod, state, sandbox):
            changed = await self._sync_app(pod, state, sandbox, volumes) or changed
        if changed or self._created:
            state = await self.ctx.runtime.refresh(state, self._created)
            self._created.clear()
        status = self._publish(pod, state, sandbox)
        if status["phase"] in ("Succeeded", "Failed"):
            await self._finish_terminal(state)
        return False

    async def _enforce_deadline(self, pod: dict[str, Any], state: PodRuntime) -> bool:
        """End the Pod past its activeDeadlineSeconds (True), else wake up when it comes."""
        left = self._deadline_left(pod)
        if left is None:
            return False
        if left <= 0:
            await self._deadline_exceeded(pod, state)
            return True
        self.wake_after(left)
        return False

    async def _setup_volumes(
        self, pod: dict[str, Any], state: PodRuntime
    ) -> dict[str, Volume] | None:
        try:
            return await self.ctx.runtime.blocking(
                self.ctx.volumes.setup, pod, self._env_context(pod, state.ready_sandbox())
            )
        except (VolumeError, OSError) as err:
            self._event(WARNING, "FailedMount", f"MountVolume.SetUp failed: {err}")
            self._publish(pod, state, None)
            self.wake_after(2.0)
            return None

    async def _ensure_sandbox(
        self, pod: dict[str, Any], state: PodRuntime
    ) -> tuple[SandboxStatus, PodRuntime] | None:
        """The ready sandbox and the state with it; None when there is none to run in."""
        sandbox = state.ready_sandbox()
        if sandbox is not None:
            return sandbox, state
        if state.containers and pod["spec"].get("restartPolicy") == "Never":
            # The sandbox went away (a node reboot) after the containers ran: under Never
            # nothing runs again, and the Pod ends with what its containers did.
            self._publish(pod, state, None, final=True)
            await self._finish_terminal(state)
            return None
        sandbox = await self._new_sandbox(pod, state)
        if sandbox is None:
            self._publish(pod, (await self.ctx.runtime.fresh()).pod(self.uid), None)
            self.wake_after(2.0)
            return None
        if state.sandboxes:
            return sandbox, (await self.ctx.runtime.fresh()).pod(self.uid)  # a kept stale box
        return sandbox, PodRuntime((sandbox,), ())

    def _deadline_left(self, pod: dict[str, Any]) -> float | None:
        """Seconds the Pod may still run under activeDeadlineSeconds, or None without one."""
        deadline = pod.get("spec", {}).get("activeDeadlineSeconds")
        if not deadline:
            return None
        started = ((self.ctx.statuses.wanted(self.uid) or {}).get("startTime")) or (
            (pod.get("status") or {}).get("startTime")
        )
        begun = parse_rfc3339(started) if started else self.ctx.clock.now()
        return begun + deadline - self.ctx.clock.now()

    async def _deadline_exceeded(self, pod: dict[str, Any], state: PodRuntime) -> None:
        message = "Pod was active on the node longer than the specified deadline"
        self._event(WARNING, "DeadlineExceeded", message)
        specs = {c["name"]: c for c in _all_containers(pod)}
        sandbox = state.ready_sandbox()
        await asyncio.gather(
            *(
                self._kill(
                    pod,
                    specs.get(c.labels.get(kl.CONTAINER_NAME, "")),
                    c,
                    _grace(pod),
                    f"Stopping container {c.labels.get(kl.CONTAINER_NAME, c.name)}",
                    sandbox=sandbox,
                )
                for c in state.running()
            )
        )
        stopped = (await self.ctx.runtime.fresh()).pod(self.uid)
        self._publish(pod, stopped, None, failure=("DeadlineExceeded", message))
        await self._finish_terminal(stopped)

    def _init_done(self, pod: dict[str, Any], state: PodRuntime, sandbox: SandboxStatus) -> bool:
        spec = pod.get("spec", {})
        if any(state.latest(c["name"], sandbox=sandbox.id) for c in spec.get("containers", [])):
            return True
        for container in spec.get("initContainers") or []:
            latest = state.latest(container["name"], sandbox=sandbox.id)
            if latest is None or latest.state != ContainerState.EXITED or latest.exit_code != 0:
                return False
        return True

    # -- sandbox -------------------------------------------------------------------------------

    async def _new_sandbox(self, pod: dict[str, Any], state: PodRuntime) -> SandboxStatus | None:
        await self._retire_stale_sandboxes(pod, state)
        spec = pod.get("spec", {})
        node = self.ctx.node()
        dns = kdns.pod_dns(
            pod,
            cluster_dns=self.ctx.config.cluster_dns,
            cluster_domain=self.ctx.config.cluster_domain,
            host=self.ctx.host_resolv(),
        )
        log_dir = self.ctx.log_dir(pod)
        await self.ctx.runtime.blocking(lambda: log_dir.mkdir(parents=True, exist_ok=True))
        config = cspec.sandbox_config(
            pod, dns=dns, host_aliases=kdns.host_aliases(pod), log_directory=str(log_dir)
        )
        try:
            sandbox_id = await self.ctx.runtime.run_sandbox(config)
        except RuntimeFailure as err:
            self._event(WARNING, "FailedCreatePodSandBox", f"Failed to create pod sandbox: {err}")
            return None
        sandbox = await self.ctx.runtime.sandbox_status(sandbox_id)
        if spec.get("hostNetwork"):
            ips = node.host_ips
        else:
            try:
                result = await self.ctx.runtime.blocking(
                    self.ctx.network.setup, self._network_request(pod, sandbox)
                )
            except (NetworkError, OSError) as err:
                self._event(
                    WARNING,
                    "FailedCreatePodSandBox",
                    f"Failed to set up the network of the pod sandbox {sandbox_id}: {err}",
                )
                await self._remove_sandbox(pod, sandbox)
                return None
            ips = result.ips
        self.log.info("started pod sandbox", sandbox=sandbox_id, ips=",".join(ips) or "none")
        if not ips:
            return sandbox
        await self.ctx.runtime.set_sandbox_ips(sandbox_id, tuple(ips))
        return await self.ctx.runtime.sandbox_status(sandbox_id)

    def _network_request(self, pod: dict[str, Any], sandbox: SandboxStatus) -> PodNetworkRequest:
        meta = pod["metadata"] if pod else {}
        mappings = []
        for container in (pod or {}).get("spec", {}).get("containers") or []:
            for port in container.get("ports") or []:
                if port.get("hostPort"):
                    mappings.append(
                        PortMapping(
                            host_port=port["hostPort"],
                            container_port=port["containerPort"],
                            protocol=port.get("protocol", "TCP"),
                            host_ip=port.get("hostIP", ""),
                        )
                    )
        return PodNetworkRequest(
            namespace=meta.get("namespace", sandbox.namespace),
            name=meta.get("name", sandbox.name),
            uid=self.uid,
            sandbox_id=sandbox.id,
            netns_path=sandbox.network_namespace_path or "",
            pod_cidrs=self.ctx.node().pod_cidrs,
            port_mappings=tuple(mappings),
        )

    async def _retire_stale_sandboxes(self, pod: dict[str, Any], state: PodRuntime) -> None:
        """Sandboxes that are no longer ready (the node rebooted, a namespace was lost):
        stopped and unwired; the newest is kept with its exited containers, so that their
        exit codes still show as lastState and their logs as --previous."""
        for container in state.containers:
            name = container.labels.get(kl.CONTAINER_NAME, "")
            self._attempt_floor[name] = max(self._attempt_floor.get(name, -1), container.attempt)
        for index, sandbox in enumerate(state.sandboxes):
            for container in state.containers:
                if container.sandbox_id == sandbox.id and container.state == ContainerState.RUNNING:
                    await self.ctx.runtime.stop_container(container.id, 0)
            if index == 0:
                await self._stop_sandbox(pod, sandbox)
            else:
                await self._remove_sandbox(pod, sandbox)

    async def _stop_sandbox(self, pod: dict[str, Any] | None, sandbox: SandboxStatus) -> None:
        await self.ctx.runtime.stop_sandbox(sandbox.id)
        if sandbox.network_namespace_path:
            await self.ctx.runtime.blocking(
                self.ctx.network.teardown, self._network_request(pod or {}, sandbox)
            )

    async def _remove_sandbox(self, pod: dict[str, Any] | None, sandbox: SandboxStatus) -> None:
        await self._stop_sandbox(pod, sandbox)
        await self.ctx.runtime.remove_sandbox(sandbox.id)

    # -- containers ----------------------------------------------------------------------------

    async def _sync_init(
        self,
        pod: dict[str, Any],
        state: PodRuntime,
        sandbox: SandboxStatus,
        volumes: dict[str, Volume],
    ) -> bool:
        """Advance the first init container that has not succeeded; True if anything ran."""
        policy = pod["spec"].get("restartPolicy", "Always")
        for container in pod["spec"].get("initContainers") or []:
            latest = state.latest(container["name"], sandbox=sandbox.id)
            if latest is None:
                return await self._start(pod, container, state, sandbox, volumes, kind="init")
            if latest.state == ContainerState.CREATED:
                await self.ctx.runtime.start_container(latest.id)
                return True
            if latest.state == ContainerState.RUNNING:
                return False
            if latest.exit_code == 0:
                continue
            if policy == "Never":
                self._waiting.pop(container["name"], None)
                return False
            return await self._restart(pod, container, latest, state, sandbox, volumes, "init")
        return False

    async def _sync_app(
        self,
        pod: dict[str, Any],
        state: PodRuntime,
        sandbox: SandboxStatus,
        volumes: dict[str, Volume],
    ) -> bool:
        changed = False
        policy = pod["spec"].get("restartPolicy", "Always")
        for container in pod["spec"].get("containers") or []:
            name = container["name"]
            latest = state.latest(name, sandbox=sandbox.id)
            if latest is None:
                changed = (
                    await self._start(pod, container, state, sandbox, volumes, "app") or changed
                )
            elif latest.state == ContainerState.CREATED:
                await self.ctx.runtime.start_container(latest.id)
                changed = True
            elif latest.state == ContainerState.RUNNING:
                changed = await self._check_running(pod, container, latest, sandbox) or changed
            elif _should_restart(policy, latest.exit_code):
                changed = (
                    await self._restart(pod, container, latest, state, sandbox, volumes, "app")
                    or changed
                )
            else:
                self._waiting.pop(name, None)
        return changed

    async def _check_running(
        self,
        pod: dict[str, Any],
        container: dict[str, Any],
        latest: ContainerStatus,
        sandbox: SandboxStatus,
    ) -> bool:
        """Kill a running container whose spec changed or that failed its probes."""
        name = container["name"]
        grace = _grace(pod)
        if latest.annotations.get(kl.CONTAINER_HASH) != kl.container_hash(container):
            message = f"Container {name} definition changed, will be restarted"
            await self._kill(pod, container, latest, grace, message, sandbox=sandbox)
            return True
        failure = self.ctx.probes.failure(latest.id)
        if failure is not None:
            restart = pod["spec"].get("restartPolicy", "Always") != "Never"
            message = f"Container {name} {failure}" + (", will be restarted" if restart else "")
            await self._kill(pod, container, latest, grace, message, sandbox=sandbox)
            return True
        ips = self._pod_ips(pod, sandbox)
        target = ProbeTarget(
            container_id=latest.id,
            netns_path=sandbox.network_namespace_path,
            pod_ip=ips[0] if ips else "",
            ports=_named_ports(container),
        )
        self.ctx.probes.ensure(pod, container, target, latest.started_at or latest.created_at)
        return False

    async def _restart(
        self,
        pod: dict[str, Any],
        container: dict[str, Any],
        latest: ContainerStatus,
        state: PodRuntime,
        sandbox: SandboxStatus,
        volumes: dict[str, Volume],
        kind: str,
    ) -> bool:
        """Start the container again, or report CrashLoopBackOff while the back-off holds."""
        name = container["name"]
        key = (self.uid, name)
        finished = latest.finished_at or self.ctx.clock.now()
        remaining = self.ctx.restart_backoff.remaining_since(key, finished)
        if remaining > 0:
            delay = self.ctx.restart_backoff.delay(key)
            meta = pod["metadata"]
            message = (
                f"back-off {_duration(delay)} restarting failed container={name} "
                f"pod={meta['name']}_{meta.get('namespace')}({self.uid})"
            )
            if self._waiting.get(name, ("",))[0] != "CrashLoopBackOff":
                self._event(WARNING, "BackOff", f"Back-off restarting failed container {name}")
            self._waiting[name] = ("CrashLoopBackOff", message)
            self.wake_after(remaining)
            return False
        ran = finished - (latest.started_at or finished)
        self.ctx.restart_backoff.next(key, event_time=finished, ran_s=ran)
        return await self._start(pod, container, state, sandbox, volumes, kind)

    def _next_attempt(self, name: str, state: PodRuntime) -> int:
        seen = [c.attempt for c in state.instances(name)]
        return max([*seen, self._attempt_floor.get(name, -1)]) + 1

    async def _start(
        self,
        pod: dict[str, Any],
        container: dict[str, Any],
        state: PodRuntime,
        sandbox: SandboxStatus,
        volumes: dict[str, Volume],
        kind: str,
    ) -> bool:
        """Pull, configure, create and start one container instance; True if it started."""
        name = container["name"]
        image = await self.ctx.images.ensure(pod, container)
        if isinstance(image, ImageWaiting):
            self._waiting[name] = (image.reason, image.message)
            if image.retry_in_s:
                self.wake_after(image.retry_in_s)
            return False
        attempt = self._next_attempt(name, state)
        node = self.ctx.node()
        try:
            env = container_env(
                pod,
                container,
                context=self._env_context(pod, sandbox),
                configmaps=self.ctx.configmaps,
                services=self.ctx.services(pod["metadata"].get("namespace", "default")),
            )
            mounts = await self.ctx.runtime.blocking(
                self.ctx.volumes.mounts_for, container, volumes, env
            )
            message_mount = await self.ctx.runtime.blocking(
                termination.prepare, self.ctx.volumes.pod_dir(self.uid), container, attempt
            )
            mounts = (*mounts, message_mount)
            config = cspec.container_config(
                pod,
                container,
                kind=kind,
                attempt=attempt,
                layers=image.layers,
                image=image.config,
                image_name=image.name,
                image_id=image.image_id,
                env=env,
                mounts=mounts,
                memory_capacity=node.memory_capacity_bytes,
            )
        except (EnvError, VolumeError, cspec.ConfigError) as err:
            reason = getattr(err, "reason", "CreateContainerConfigError")
            self._waiting[name] = (reason, str(err))
            self._event(WARNING, "Failed", f"Error: {err}")
            self.wake_after(5.0)
            return False
        try:
            container_id = await self.ctx.runtime.create_container(sandbox.id, config)
        except RuntimeFailure as err:
            self._waiting[name] = ("CreateContainerError", str(err))
            self._event(WARNING, "Failed", f"Error: {err}")
            self.wake_after(5.0)
            return False
        self._created.append(container_id)
        self._event(NORMAL, "Created", f"Created container {name}")
        try:
            await self.ctx.runtime.start_container(container_id)
        except RuntimeFailure as err:
            self._waiting.pop(name, None)
            self._event(WARNING, "Failed", f"Error: {err}")
            await self._collect_old(name, state, keep=container_id)
            return True
        self._waiting.pop(name, None)
        self._event(NORMAL, "Started", f"Started container {name}")
        await self._post_start(pod, container, container_id, sandbox)
        await self._collect_old(name, state, keep=container_id)
        return True

    async def _post_start(
        self,
        pod: dict[str, Any],
        container: dict[str, Any],
        container_id: str,
        sandbox: SandboxStatus,
    ) -> None:
        hook = ((container.get("lifecycle") or {}).get("postStart")) or None
        if not hook:
            return
        outcome = await self._run_hook(hook, container, container_id, sandbox, _grace(pod))
        if not outcome.success:
            self._event(WARNING, "FailedPostStartHook", f"PostStartHook failed: {outcome.message}")
            status = await self.ctx.runtime.container_status(container_id)  # type: ignore[arg-type]
            message = f"Container {container['name']} failed its postStart hook"
            await self._kill(pod, container, status, _grace(pod), message, hooks=False)

    async def _collect_old(self, name: str, state: PodRuntime, *, keep: str) -> None:
        """Keep the new instance and the one before it (lastState, logs --previous)."""
        before = [c for c in state.instances(name) if c.id != keep]
        for instance in before[1:]:
            if instance.state != ContainerState.RUNNING:
                await self.ctx.runtime.remove_container(instance.id)
        if self.pod is not None and before:
            await self.ctx.runtime.blocking(
                _prune_logs, self.ctx.log_dir(self.pod) / name, before[0].attempt
            )

    async def _run_hook(
        self,
        hook: dict[str, Any],
        container: dict[str, Any],
        container_id: str,
        sandbox: SandboxStatus | None,
        grace: float,
    ) -> Outcome:
        if "sleep" in hook:
            await self.ctx.clock.sleep(min(float(hook["sleep"].get("seconds", 0)), grace))
            return Outcome(True)
        target = ProbeTarget(
            container_id=container_id,  # type: ignore[arg-type]
            netns_path=sandbox.network_namespace_path if sandbox else None,
            pod_ip=sandbox.ips[0] if sandbox and sandbox.ips else "",
            ports=_named_ports(container),
        )
        return await run_probe(
            {**hook, "timeoutSeconds": max(1, int(grace))}, target, self.ctx.runtime
        )

    async def _kill(
        self,
        pod: dict[str, Any] | None,
        container: dict[str, Any] | None,
        status: ContainerStatus,
        grace: float,
        message: str,
        *,
        hooks: bool = True,
        sandbox: SandboxStatus | None = None,
    ) -> None:
        """Stop one container: preStop hook, stop signal, grace period, then SIGKILL."""
        self.ctx.probes.stop_container(status.id)
        self._event(NORMAL, "Killing", message)
        started = time.monotonic()
        hook = ((container or {}).get("lifecycle") or {}).get("preStop") if hooks else None
        remaining = grace
        if hook and grace > 0:
            try:
                outcome = await asyncio.wait_for(
                    self._run_hook(hook, container or {}, status.id, sandbox, grace), grace
                )
                if not outcome.success:
                    self._event(
                        WARNING, "FailedPreStopHook", f"PreStopHook failed: {outcome.message}"
                    )
            except TimeoutError:
                self._event(
                    WARNING, "FailedPreStopHook", f"PreStopHook did not finish within {grace:g}s"
                )
            remaining = max(grace - (time.monotonic() - started), MIN_GRACE_AFTER_HOOK_S)
        await self.ctx.runtime.stop_container(status.id, max(0.0, remaining))

    # -- terminal and deleted Pods ---------------------------------------------------------------

    async def _finish_terminal(self, state: PodRuntime) -> None:
        if self._terminal_done:
            return
        for container in state.running():
            await self.ctx.runtime.stop_container(container.id, _grace(self.pod))
        for sandbox in state.sandboxes:
            await self.ctx.runtime.stop_sandbox(sandbox.id)
            if sandbox.network_namespace_path:
                await self.ctx.runtime.blocking(
                    self.ctx.network.teardown, self._network_request(self.pod or {}, sandbox)
                )
        self.ctx.probes.stop_pod(self.uid)
        self._terminal_done = True
        self.log.info("pod finished, sandbox stopped")

    async def terminate(self) -> bool:
        """Stop and remove everything of the Pod; delete it from the API. True when done."""
        pod, known = self.pod, self.last_pod
        state = (await self.ctx.runtime.fresh()).pod(self.uid)
        grace = _deletion_grace(pod, state)
        sandbox = state.ready_sandbox()
        specs = {c["name"]: c for c in _all_containers(known)}
        kills = [
            self._kill(
                known,
                specs.get(c.labels.get(kl.CONTAINER_NAME, "")),
                c,
                grace,
                f"Stopping container {c.labels.get(kl.CONTAINER_NAME, c.name)}",
                sandbox=sandbox,
            )
            for c in state.running()
        ]
        await asyncio.gather(*kills)
        self.ctx.probes.stop_pod(self.uid)
        if pod is not None and not self._terminal_done:
            stopped = (await self.ctx.runtime.fresh()).pod(self.uid)
            self._publish(pod, stopped, None, final=True)
            await self.ctx.statuses.flush(self.uid)
        for box in state.sandboxes:
            await self._remove_sandbox(known, box)
        for container in state.containers:
            await self.ctx.runtime.remove_container(container.id)
        await self.ctx.runtime.blocking(self.ctx.volumes.teardown, self.uid)
        if pod is not None:
            meta = pod["metadata"]
            try:
                await self.ctx.client.delete(
                    "pods",
                    meta["name"],
                    namespace=meta["namespace"],
                    uid=self.uid,
                    grace_period_seconds=0,
                )
            except (errors.NotFound, errors.Conflict):
                pass  # already gone, or the name belongs to a new Pod now
        if known is not None:
            await self.ctx.runtime.blocking(_mark_for_retention, self.ctx.log_dir(known))
        self.ctx.statuses.forget(self.uid)
        self.ctx.restart_backoff.forget_prefix(self.uid)
        self.ctx.images.forget_pod(self.uid)
        self.log.info("pod removed from the node")
        return True

    # -- status --------------------------------------------------------------------------------

    def _env_context(self, pod: dict[str, Any], sandbox: SandboxStatus | None) -> EnvContext:
        node = self.ctx.node()
        return EnvContext(
            pod_ips=self._pod_ips(pod, sandbox),
            host_ips=node.host_ips,
            node_cpu_millis=node.cpu_millis,
            node_memory_bytes=node.memory_bytes,
            node_ephemeral_bytes=node.ephemeral_bytes,
        )

    def _pod_ips(self, pod: dict[str, Any], sandbox: SandboxStatus | None) -> tuple[str, ...]:
        if pod.get("spec", {}).get("hostNetwork"):
            return self.ctx.node().host_ips
        return tuple(sandbox.ips) if sandbox is not None else ()

    def _views(
        self, pod: dict[str, Any], state: PodRuntime, field: str, *, init_done: bool
    ) -> list[podstatus.ContainerView]:
        views = []
        pod_dir = self.ctx.volumes.pod_dir(self.uid)
        for container in pod.get("spec", {}).get(field) or []:
            name = container["name"]
            instances = state.instances(name)
            latest = instances[0] if instances else None
            previous = instances[1] if len(instances) > 1 else None
            waiting = self._waiting.get(name)
            if latest is not None and latest.state == ContainerState.RUNNING:
                waiting = None
            if waiting is None and latest is None:
                initializing = not init_done or field == "initContainers"
                waiting = ("PodInitializing" if initializing else "ContainerCreating", "")
            running = latest is not None and latest.state == ContainerState.RUNNING
            started = running and self.ctx.probes.started(latest.id, container)  # type: ignore[union-attr]
            ready = started and self.ctx.probes.ready(latest.id, container)  # type: ignore[union-attr]
            views.append(
                podstatus.ContainerView(
                    spec=container,
                    latest=latest,
                    previous=previous,
                    waiting=waiting,
                    ready=ready,
                    started=started,
                    image=(latest.annotations.get(kl.IMAGE) if latest else "")
                    or self.ctx.images.normalized(container.get("image", "")),
                    image_id=latest.annotations.get(kl.IMAGE_ID, "") if latest else "",
                    latest_message=self._messages.of(pod_dir, container, latest),
                    previous_message=self._messages.of(pod_dir, container, previous),
                )
            )
        return views

    def _publish(
        self,
        pod: dict[str, Any],
        state: PodRuntime,
        sandbox: SandboxStatus | None,
        *,
        final: bool = False,
        failure: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        """Compute and hand over the status; `final` ends the Pod by what its containers
        did, `failure` (reason, message) ends it Failed for the kubelet's own reason."""
        base = dict(pod)
        base["status"] = self.ctx.statuses.wanted(self.uid) or pod.get("status") or {}
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            base["status"] = pod["status"]
        init_views = self._views(pod, state, "initContainers", init_done=True)
        app_views = self._views(pod, state, "containers", init_done=True)
        done = podstatus.init_done(init_views, app_views)
        if not done:
            app_views = self._views(pod, state, "containers", init_done=False)
        final_phase = None
        if final:
            final_phase = (
                "Succeeded" if app_views and all(v.succeeded for v in app_views) else ("Failed")
            )
        if failure is not None:
            final_phase = "Failed"
        status = podstatus.pod_status(
            base,
            init=init_views,
            app=app_views,
            sandbox_ready=sandbox is not None,
            pod_ips=self._pod_ips(pod, sandbox) if sandbox is not None else (),
            host_ips=self.ctx.node().host_ips,
            start_time=self.ctx.clock.now(),
            qos_class=cspec.qos_class(pod),
            now=self.ctx.clock.now(),
            final_phase=final_phase,
        )
        if failure is not None:
            status["reason"], status["message"] = failure
        self.ctx.statuses.set(self.uid, status)
        if (
            not self._start_recorded
            and status["phase"] == "Running"
            and all(v.running for v in app_views)
        ):
            self._start_recorded = True
            self.ctx.metrics.pod_start.observe(time.monotonic() - self._first_seen)
            created = pod["metadata"].get("creationTimestamp")
            if created:
                since = max(0.0, self.ctx.clock.now() - parse_rfc3339(created))
                self.ctx.metrics.pod_start_since_creation.observe(since)
        return status

    def _seed_probes(self, pod: dict[str, Any], state: PodRuntime) -> None:
        """Carry readiness and startup over from the last status for adopted containers."""
        self._seeded = True
        reported = {
            entry.get("containerID"): entry
            for entry in (pod.get("status") or {}).get("containerStatuses") or []
        }
        for container in state.running():
            entry = reported.get(podstatus.container_id(container))
            if entry is not None:
                self.ctx.probes.seed(
                    container.id, ready=bool(entry.get("ready")), started=bool(entry.get("started"))
                )

    def _event(self, kind: str, reason: str, message: str) -> None:
        pod = self.pod or self.last_pod
        if pod is not None:
            self.ctx.recorder.event(pod, kind, reason, message)


# -- helpers -------------------------------------------------------------------------------------


def _should_restart(policy: str, exit_code: int | None) -> bool:
    if policy == "Always":
        return True
    if policy == "OnFailure":
        return exit_code != 0
    return False


def _grace(pod: dict[str, Any] | None) -> float:
    if pod is None:
        return 2.0
    return float(pod.get("spec", {}).get("terminationGracePeriodSeconds", 30))


def _deletion_grace(pod: dict[str, Any] | None, state: PodRuntime) -> float:
    """The deletion's grace period; for a Pod already gone from the API, what its containers
    recorded, at most Kubernetes' 2 s minimum (its owner asked for it to be gone)."""
    if pod is not None:
        meta = pod["metadata"]
        if meta.get("deletionGracePeriodSeconds") is not None:
            return float(meta["deletionGracePeriodSeconds"])
        return _grace(pod)
    recorded = [float(c.annotations.get(kl.TERMINATION_GRACE, 2)) for c in state.running()]
    return min([*recorded, 2.0])


def _all_containers(pod: dict[str, Any] | None) -> list[dict[str, Any]]:
    if pod is None:
        return []
    spec = pod.get("spec", {})
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def _named_ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports") or [] if p.get("name")}


def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m0s"
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60)}s"
    return f"{seconds:g}s"


def _prune_logs(directory: Path, keep_from: int) -> None:
    """Remove the logs of attempts before keep_from (rotated files included)."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        attempt = entry.name.split(".", 1)[0]
        if attempt.isdigit() and int(attempt) < keep_from:
            entry.unlink(missing_ok=True)


RETENTION_MARK = ".deleted"


def _mark_for_retention(directory: Path) -> None:
    """Record when the Pod went; housekeeping removes the logs after the retention time."""
    if directory.is_dir():
        (directory / RETENTION_MARK).touch()
