"""From a Pod's spec to the runtime's configs: SandboxConfig and ContainerConfig.

Pure functions over plain values: the Pod (a dict as the API serves it), the image's
config and layers, the environment and mounts already resolved. The process is the
container's command/args/env/workingDir merged with the image's Entrypoint/Cmd/Env/
WorkingDir (kubelet/images' resolve_process, Kubernetes' rules), after $(VAR) expansion of
command and args against the container's environment. Security settings merge the Pod's
securityContext under the container's. The QoS class decides oom_score_adj as Kubernetes
does (Guaranteed -997, BestEffort 1000, Burstable in between by memory request).
"""

from __future__ import annotations

import signal
from typing import Any

from kubelet import labels as kl
from kubelet.envvars import expand
from kubelet.images import ImageConfig, ImageConfigError, resolve_process
from kubelet.runtime.interface import (
    ContainerConfig,
    DnsConfig,
    HostAlias,
    Mount,
    NamespaceMode,
    NamespaceOptions,
    Resources,
    SandboxConfig,
    Security,
)
from machinery import quantity


class ConfigError(Exception):
    """The container's config cannot be built; reason is the waiting reason to report."""

    def __init__(self, message: str, *, reason: str = "CreateContainerConfigError") -> None:
        super().__init__(message)
        self.reason = reason


def qos_class(pod: dict[str, Any]) -> str:
    """Guaranteed, Burstable or BestEffort, from the containers' requests and limits."""
    containers = (pod.get("spec", {}).get("containers") or []) + (
        pod.get("spec", {}).get("initContainers") or []
    )
    any_set = False
    guaranteed = True
    for container in containers:
        resources = container.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        if requests or limits:
            any_set = True
        for name in ("cpu", "memory"):
            if not _equal_request_and_limit(requests, limits, name):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def _equal_request_and_limit(requests: dict, limits: dict, name: str) -> bool:
    limit = limits.get(name)
    request = requests.get(name, limit)
    if limit is None or request is None:
        return False
    return quantity.parse_quantity(limit) == quantity.parse_quantity(request)


def oom_score_adj(pod: dict[str, Any], container: dict[str, Any], memory_capacity: int) -> int:
    qos = qos_class(pod)
    if qos == "Guaranteed":
        return -997
    if qos == "BestEffort":
        return 1000
    request = ((container.get("resources") or {}).get("requests") or {}).get("memory")
    if not request or memory_capacity <= 0:
        return 999
    score = 1000 - (1000 * quantity.to_bytes(request)) // memory_capacity
    return int(min(max(score, 2), 999))


def container_resources(container: dict[str, Any]) -> Resources:
    resources = container.get("resources") or {}
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    return Resources(
        cpu_limit_millis=quantity.cpu_millis(limits["cpu"]) if "cpu" in limits else None,
        cpu_request_millis=quantity.cpu_millis(requests["cpu"]) if "cpu" in requests else None,
        memory_limit_bytes=quantity.to_bytes(limits["memory"]) if "memory" in limits else None,
    )


def pod_resources(pod: dict[str, Any]) -> Resources | None:
    """Pod cgroup limits: the sum over containers, set only when every container sets it."""
    containers = pod.get("spec", {}).get("containers") or []
    each = [container_resources(c) for c in containers]
    if not each:
        return None
    cpu = [r.cpu_limit_millis for r in each]
    memory = [r.memory_limit_bytes for r in each]
    requests = [r.cpu_request_millis or 0 for r in each]
    return Resources(
        cpu_limit_millis=sum(cpu) if all(v is not None for v in cpu) else None,  # type: ignore[arg-type]
        cpu_request_millis=sum(requests) or None,
        memory_limit_bytes=sum(memory) if all(v is not None for v in memory) else None,  # type: ignore[arg-type]
    )


def sandbox_config(
    pod: dict[str, Any],
    *,
    dns: DnsConfig,
    host_aliases: tuple[HostAlias, ...],
    log_directory: str,
) -> SandboxConfig:
    meta, spec = pod["metadata"], pod.get("spec", {})
    namespaces = NamespaceOptions(
        network=NamespaceMode.NODE if spec.get("hostNetwork") else NamespaceMode.POD,
        pid=(
            NamespaceMode.NODE
            if spec.get("hostPID")
            else NamespaceMode.POD
            if spec.get("shareProcessNamespace")
            else NamespaceMode.CONTAINER
        ),
        ipc=NamespaceMode.NODE if spec.get("hostIPC") else NamespaceMode.POD,
    )
    return SandboxConfig(
        name=meta["name"],
        namespace=meta.get("namespace", "default"),
        uid=meta["uid"],
        hostname=(spec.get("hostname") or meta["name"])[:63],
        dns=dns,
        host_aliases=host_aliases,
        namespaces=namespaces,
        log_directory=log_directory,
        resources=pod_resources(pod),
        labels=kl.pod_labels(pod),
        annotations={},
    )


def _security(pod: dict[str, Any], container: dict[str, Any], image_user: str) -> dict:
    pod_ctx = pod.get("spec", {}).get("securityContext") or {}
    ctx = container.get("securityContext") or {}
    run_as_user = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
    run_as_group = ctx.get("runAsGroup", pod_ctx.get("runAsGroup"))
    if ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")):
        _check_non_root(run_as_user, image_user)
    caps = ctx.get("capabilities") or {}
    profile = ctx.get("seccompProfile") or pod_ctx.get("seccompProfile")
    seccomp = None
    if profile:
        seccomp = profile.get("type")
        if seccomp == "Localhost":
            seccomp = f"localhost/{profile.get('localhostProfile', '')}"
    security = Security(
        privileged=bool(ctx.get("privileged")),
        add_capabilities=tuple(caps.get("add") or ()),
        drop_capabilities=tuple(caps.get("drop") or ()),
        read_only_root_filesystem=bool(ctx.get("readOnlyRootFilesystem")),
        allow_privilege_escalation=bool(ctx.get("allowPrivilegeEscalation", False)),
        seccomp_profile=seccomp,
    )
    return {
        "run_as_user": run_as_user,
        "run_as_group": run_as_group,
        "supplemental_groups": tuple(pod_ctx.get("supplementalGroups") or ()),
        "security": security,
    }


def _check_non_root(run_as_user: int | None, image_user: str) -> None:
    if run_as_user is not None:
        if run_as_user == 0:
            raise ConfigError("container's runAsUser breaks non-root policy (runAsNonRoot)")
        return
    user = image_user.partition(":")[0]
    if not user or user == "0" or user == "root":
        raise ConfigError("container has runAsNonRoot and image will run as root")
    if not user.isdigit():
        raise ConfigError(
            f"container has runAsNonRoot and image has non-numeric user ({user}), "
            "cannot verify user is non-root"
        )


def stop_signal(image: ImageConfig) -> int:
    text = (image.stop_signal or "").upper()
    if not text:
        return int(signal.SIGTERM)
    if text.isdigit():
        return int(text)
    name = text if text.startswith("SIG") else f"SIG{text}"
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ConfigError(f"image StopSignal {image.stop_signal!r} is not a signal") from None


def container_config(
    pod: dict[str, Any],
    container: dict[str, Any],
    *,
    kind: str,
    attempt: int,
    layers: tuple,
    image: ImageConfig,
    image_name: str,
    image_id: str,
    env: dict[str, str],
    mounts: tuple[Mount, ...],
    memory_capacity: int,
) -> ContainerConfig:
    name = container["name"]
    try:
        process = resolve_process(
            image,
            command=[expand(part, env) for part in container.get("command") or []],
            args=[expand(part, env) for part in container.get("args") or []],
            env=list(env.items()),
            working_dir=container.get("workingDir", ""),
        )
    except ImageConfigError as err:
        raise ConfigError(str(err), reason="CreateContainerError") from None
    merged_env = dict(item.partition("=")[::2] for item in process.env)
    grace = pod.get("spec", {}).get("terminationGracePeriodSeconds", 30)
    return ContainerConfig(
        name=name,
        layers=tuple(layers),
        argv=process.argv,
        env=merged_env,
        working_dir=process.cwd,
        image_user=process.user,
        mounts=mounts,
        resources=container_resources(container),
        tty=bool(container.get("tty")),
        stop_signal=stop_signal(image),
        oom_score_adj=oom_score_adj(pod, container, memory_capacity),
        log_path=f"{name}/{attempt}.log",
        attempt=attempt,
        labels={**kl.pod_labels(pod), kl.CONTAINER_NAME: name},
        annotations={
            kl.CONTAINER_HASH: kl.container_hash(container),
            kl.RESTART_COUNT: str(attempt),
            kl.CONTAINER_KIND: kind,
            kl.IMAGE: image_name,
            kl.IMAGE_ID: image_id,
            kl.TERMINATION_GRACE: str(grace),
        },
        **_security(pod, container, process.user),
    )
