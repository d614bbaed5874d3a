"""Liveness, readiness and startup probes: exec, httpGet and tcpSocket.

One asyncio task per (container instance, probe kind) runs the probe every periodSeconds
after initialDelaySeconds (counted from the container's start), with timeoutSeconds, and
turns raw outcomes into a result only after successThreshold consecutive successes or
failureThreshold consecutive failures, as Kubernetes does. Liveness and readiness wait
for the startup probe, which stops once it has succeeded. A change of result wakes the
Pod's worker, which decides what to do (restart on a liveness or startup failure, flip
`ready` on readiness); failures are Unhealthy Events.

Where the network probes run: an httpGet or tcpSocket probe connects to the Pod's IP, or to
127.0.0.1 while the Pod has none (loopback-only networking), from *inside the Pod's network
namespace*: a short-lived thread setns()es into the sandbox's namespace file
(SandboxStatus.network_namespace_path), creates the socket there and exits; the socket
stays bound to that namespace, and the connect and the HTTP exchange then run on an
ordinary pool thread. Only that throwaway thread ever changes namespace, so no kubelet
thread is left in a Pod's namespace. With a Pod network this still reaches the Pod at its
own IP; hostNetwork Pods are probed from the node's namespace.

Initial results: readiness False until it succeeds, startup False until it succeeds,
liveness True. A restarted kubelet seeds readiness and startup from the Pod's last
reported status for containers it adopts, so adoption does not flap a ready Pod.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import dataclasses
import http.client
import os
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from kubelet.cri import AsyncRuntime
from kubelet.metrics import KubeletMetrics
from kubelet.runtime.interface import ContainerId, RuntimeFailure
from machinery.clock import Clock
from machinery.log import get_logger

log = get_logger("kubelet.prober")

CLONE_NEWNET = 0x40000000
LIVENESS, READINESS, STARTUP = "Liveness", "Readiness", "Startup"
FIELDS = {LIVENESS: "livenessProbe", READINESS: "readinessProbe", STARTUP: "startupProbe"}
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


@dataclasses.dataclass(frozen=True)
class ProbeTarget:
    container_id: ContainerId
    netns_path: str | None  # None: the node's namespace (hostNetwork)
    pod_ip: str
    ports: dict[str, int]  # named container ports


@dataclasses.dataclass(frozen=True)
class Outcome:
    success: bool
    message: str = ""


# -- running one probe -------------------------------------------------------------------------


def socket_in_netns(netns_path: str | None, family: int = socket.AF_INET) -> socket.socket:
    """A TCP socket created in the network namespace at netns_path (see module docstring)."""
    if netns_path is None:
        return socket.socket(family, socket.SOCK_STREAM)
    box: dict[str, Any] = {}

    def enter_and_create() -> None:
        try:
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {netns_path}: {os.strerror(err)}")
            finally:
                os.close(fd)
            box["socket"] = socket.socket(family, socket.SOCK_STREAM)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=enter_and_create, name="netns-socket", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["socket"]


def _port(value: Any, ports: dict[str, int]) -> int:
    if isinstance(value, int):
        return value
    if str(value).isdigit():
        return int(value)
    if value in ports:
        return ports[value]
    raise ValueError(f"port {value!r} is not a number nor a named container port")


def _connect(target: ProbeTarget, host: str, port: int, timeout: float) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket_in_netns(target.netns_path, family)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _default_host(target: ProbeTarget) -> str:
    return target.pod_ip or "127.0.0.1"


def tcp_probe(action: dict[str, Any], target: ProbeTarget, timeout: float) -> Outcome:
    host = action.get("host") or _default_host(target)
    try:
        port = _port(action.get("port"), target.ports)
        _connect(target, host, port, timeout).close()
    except (OSError, ValueError) as err:
        return Outcome(False, f"dial tcp {host}:{action.get('port')}: {err}")
    return Outcome(True)


class _NamespacedConnection(http.client.HTTPConnection):
    def __init__(self, target: ProbeTarget, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._target = target

    def connect(self) -> None:
        self.sock = _connect(self._target, self.host, self.port, self.timeout)  # type: ignore[arg-type]


class _NamespacedTLSConnection(_NamespacedConnection):
    def connect(self) -> None:
        super().connect()
        context = ssl.create_default_context()
        # Kubernetes does not verify a probe's certificate either.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.sock = context.wrap_socket(self.sock, server_hostname=self.host)


def http_probe(action: dict[str, Any], target: ProbeTarget, timeout: float) -> Outcome:
    host = action.get("host") or _default_host(target)
    path = action.get("path") or "/"
    try:
        port = _port(action.get("port"), target.ports)
    except ValueError as err:
        return Outcome(False, str(err))
    cls = _NamespacedTLSConnection if action.get("scheme") == "HTTPS" else _NamespacedConnection
    connection = cls(target, host, port, timeout)
    headers = {"User-Agent": "kube-probe/kubelite", "Accept": "*/*"}
    for header in action.get("httpHeaders") or []:
        headers[header.get("name", "")] = header.get("value", "")
    try:
        connection.request("GET", path if path.startswith("/") else "/" + path, headers=headers)
        response = connection.getresponse()
        body = response.read(1024)
    except (OSError, http.client.HTTPException) as err:
        return Outcome(False, f'Get "http://{host}:{port}{path}": {err}')
    finally:
        connection.close()
    if 200 <= response.status < 400:
        return Outcome(True)
    detail = body.decode(errors="replace").strip()[:200]
    return Outcome(False, f"HTTP probe failed with statuscode: {response.status} {detail}".strip())


async def run_probe(probe: dict[str, Any], target: ProbeTarget, runtime: AsyncRuntime) -> Outcome:
    """One probe attempt (also used for lifecycle hooks with the same handler shape)."""
    timeout = float(max(1, probe.get("timeoutSeconds", 1)))
    if "exec" in probe:
        argv = tuple(probe["exec"].get("command") or ())
        try:
            result = await runtime.exec_sync(target.container_id, argv, timeout)
        except RuntimeFailure as err:
            return Outcome(False, str(err))
        output = (result.stdout + result.stderr).decode(errors="replace").strip()[:500]
        if result.timed_out:
            return Outcome(False, f"command {list(argv)} timed out after {timeout:g}s")
        if result.exit_code != 0:
            return Outcome(False, output or f"command exited with {result.exit_code}")
        return Outcome(True, output)
    if "httpGet" in probe:
        return await runtime.blocking(http_probe, probe["httpGet"], target, timeout)
    if "tcpSocket" in probe:
        return await runtime.blocking(tcp_probe, probe["tcpSocket"], target, timeout)
    # TODO: grpc probes are not run; a Pod that declares one sees it fail with this message.
    kind = next((k for k in ("grpc",) if k in probe), "none")
    return Outcome(False, f"probe handler {kind!r} is not supported by this kubelet")


# -- the per-container workers ----------------------------------------------------------------


@dataclasses.dataclass
class _State:
    result: bool
    successes: int = 0
    failures: int = 0
    tripped: bool = False  # failureThreshold crossed: the container must be restarted
    message: str = ""


class ProbeManager:
    """Probe workers for running containers, and their current results."""

    def __init__(
        self,
        runtime: AsyncRuntime,
        *,
        clock: Clock,
        metrics: KubeletMetrics,
        wake: Callable[[str], None],
        event: Callable[[dict[str, Any], str, str, str], None],
    ) -> None:
        self._runtime = runtime
        self._clock = clock
        self._metrics = metrics
        self._wake = wake
        self._event = event
        self._workers: dict[tuple[str, str], asyncio.Task[None]] = {}  # (container id, kind)
        self._states: dict[tuple[str, str], _State] = {}
        self._owners: dict[str, str] = {}  # container id -> pod uid
        self._seeds: dict[str, tuple[bool, bool]] = {}

    # -- results -----------------------------------------------------------------------------

    def ready(self, container_id: str, container: dict[str, Any]) -> bool:
        """The readiness result; a container without a readiness probe is ready."""
        return self._result(container_id, container, READINESS)

    def started(self, container_id: str, container: dict[str, Any]) -> bool:
        """The startup result; a container without a startup probe has started."""
        return self._result(container_id, container, STARTUP)

    def _result(self, container_id: str, container: dict[str, Any], kind: str) -> bool:
        if not container.get(FIELDS[kind]):
            return True
        state = self._states.get((container_id, kind))
        if state is None:
            return self._seeds.get(container_id, (False, False))[kind == STARTUP]
        return state.result

    def failure(self, container_id: str) -> str | None:
        """Why the container must be restarted (liveness or startup failed), or None."""
        for kind in (STARTUP, LIVENESS):
            state = self._states.get((container_id, kind))
            if state is not None and state.tripped:
                return f"failed {kind.lower()} probe: {state.message}".rstrip(": ")
        return None

    def seed(self, container_id: str, *, ready: bool, started: bool) -> None:
        """Results to start from for an adopted container (from the Pod's last status)."""
        self._seeds[container_id] = (ready, started)

    # -- workers -------------------------------------------------------------------------------

    def ensure(
        self,
        pod: dict[str, Any],
        container: dict[str, Any],
        target: ProbeTarget,
        started_at: float,
    ) -> None:
        uid = pod["metadata"]["uid"]
        cid = target.container_id
        self._owners[cid] = uid
        ready_seed, started_seed = self._seeds.pop(cid, (False, False))
        for kind, field in FIELDS.items():
            probe = container.get(field)
            key = (cid, kind)
            if not probe or key in self._workers:
                continue
            initial = {LIVENESS: True, READINESS: ready_seed, STARTUP: started_seed}[kind]
            self._states[key] = _State(result=initial)
            if kind == STARTUP and started_seed:
                continue  # already started before this kubelet: nothing left to probe
            self._workers[key] = asyncio.create_task(
                self._run(pod, container, kind, probe, target, started_at),
                name=f"probe-{kind}-{container['name']}",
            )

    def stop_container(self, container_id: str) -> None:
        for kind in FIELDS:
            task = self._workers.pop((container_id, kind), None)
            if task is not None:
                task.cancel()
            self._states.pop((container_id, kind), None)
        self._owners.pop(container_id, None)
        self._seeds.pop(container_id, None)

    def stop_pod(self, uid: str) -> None:
        for cid in [c for c, owner in self._owners.items() if owner == uid]:
            self.stop_container(cid)

    def stop_all(self) -> None:
        for cid in list(self._owners):
            self.stop_container(cid)

    async def _run(
        self,
        pod: dict[str, Any],
        container: dict[str, Any],
        kind: str,
        probe: dict[str, Any],
        target: ProbeTarget,
        started_at: float,
    ) -> None:
        key = (target.container_id, kind)
        period = max(1, probe.get("periodSeconds", 10))
        delay = started_at + probe.get("initialDelaySeconds", 0) - self._clock.now()
        await self._clock.sleep(max(0.0, delay))
        has_startup = bool(container.get("startupProbe"))
        while True:
            started = self._states.get((target.container_id, STARTUP))
            if kind != STARTUP and has_startup and not (started and started.result):
                await self._clock.sleep(period)
                continue
            outcome = await run_probe(probe, target, self._runtime)
            self._metrics.probes.labels(
                kind.lower(), "successful" if outcome.success else "failed"
            ).inc()
            self._record(pod, container, kind, probe, key, outcome)
            state = self._states.get(key)
            if kind == STARTUP and state is not None and state.result:
                return  # done for good; the finished task stays registered until the container goes
            await self._clock.sleep(period)

    def _record(
        self,
        pod: dict[str, Any],
        container: dict[str, Any],
        kind: str,
        probe: dict[str, Any],
        key: tuple[str, str],
        outcome: Outcome,
    ) -> None:
        state = self._states.get(key)
        if state is None:
            return
        before = (state.result, state.tripped)
        if outcome.success:
            state.successes, state.failures = state.successes + 1, 0
            threshold = 1 if kind in (LIVENESS, STARTUP) else probe.get("successThreshold", 1)
            if state.successes >= threshold:
                state.result, state.tripped = True, False
        else:
            state.failures, state.successes = state.failures + 1, 0
            state.message = outcome.message
            self._event(
                pod, "Warning", "Unhealthy", f"{kind} probe failed: {outcome.message}".strip()
            )
            if state.failures >= probe.get("failureThreshold", 3):
                state.result = False
                state.tripped = kind in (LIVENESS, STARTUP)
        if (state.result, state.tripped) != before:
            log.debug(
                "probe result changed",
                pod=f"{pod['metadata'].get('namespace')}/{pod['metadata'].get('name')}",
                container=container["name"],
                probe=kind,
                result=state.result,
            )
            self._wake(pod["metadata"]["uid"])
