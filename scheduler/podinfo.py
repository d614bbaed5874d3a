"""A Pod as the scheduler needs it: everything parsed once, when the Pod is seen.

Scheduling a Pod evaluates it against hundreds of nodes, so nothing on the hot
path may parse a quantity or walk the Pod's JSON again. PodInfo.of() reads the
object once and keeps integers and small tuples: the effective requests, the
non-zero requests used for scoring, host ports, tolerations, the compiled node
selector and affinity, the owning controller. Quantity strings repeat across
Pods ("100m", "128Mi"), so their parses are memoised.

Effective requests follow Kubernetes: a container's request defaults to its
limit when only the limit is given; the Pod needs the larger of (a) the sum
of its app containers plus its sidecars (init containers with restartPolicy
Always) and (b) the largest init container, counting the sidecars started
before it; spec.overhead is added on top. For scoring, a container that sets
no cpu or memory request counts as 100m cpu and 200Mi memory, so that
request-less Pods still spread.

PodInfo.of never raises: malformed fields are listed in `errors` with their
field paths, and the scheduling framework refuses such a Pod with a status
that quotes them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, NewType

from machinery.quantity import QuantityError, cpu_millis, to_bytes
from scheduler import nodeselector, taints
from scheduler.nodeselector import NodeSelector, PreferredTerm
from scheduler.taints import Toleration

PodUID = NewType("PodUID", str)

CPU = "cpu"
MEMORY = "memory"
EPHEMERAL_STORAGE = "ephemeral-storage"
PODS = "pods"

DEFAULT_CPU_MILLIS = 100  # what a container without a cpu request counts as, for scoring
DEFAULT_MEMORY_BYTES = 200 * 1024 * 1024

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


@dataclasses.dataclass(frozen=True, slots=True)
class Requests:
    """Resource amounts: cpu in millicores, the rest in bytes or units."""

    cpu: int = 0
    memory: int = 0
    ephemeral_storage: int = 0
    scalar: tuple[tuple[str, int], ...] = ()  # extended resources, sorted by name


@dataclasses.dataclass(frozen=True, slots=True)
class HostPort:
    protocol: str
    host_ip: str
    port: int


@dataclasses.dataclass(frozen=True, slots=True)
class PodInfo:
    obj: dict[str, Any]
    key: str  # namespace/name, the form logs and messages use
    uid: PodUID
    priority: int
    node_name: str
    scheduler_name: str
    phase: str
    requests: Requests
    nonzero_cpu: int
    nonzero_memory: int
    host_ports: tuple[HostPort, ...]
    tolerations: tuple[Toleration, ...]
    node_selector: tuple[tuple[str, str], ...]
    required_affinity: NodeSelector | None
    preferred_affinity: tuple[PreferredTerm, ...]
    owner: str  # the controller's uid, or "" when the Pod has no controller
    errors: tuple[str, ...] = ()

    @classmethod
    def of(cls, pod: Mapping[str, Any]) -> PodInfo:
        errors: list[str] = []
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        requests, nonzero_cpu, nonzero_memory = pod_requests(spec, errors)
        required, preferred = _node_affinity(spec, errors)
        key = f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}"
        return cls(
            obj=dict(pod),
            key=key,
            uid=PodUID(meta.get("uid") or key),
            priority=_priority(spec, errors),
            node_name=spec.get("nodeName") or "",
            scheduler_name=spec.get("schedulerName") or "",
            phase=(pod.get("status") or {}).get("phase") or "",
            requests=requests,
            nonzero_cpu=nonzero_cpu,
            nonzero_memory=nonzero_memory,
            host_ports=_host_ports(spec, errors),
            tolerations=taints.parse_tolerations(
                spec.get("tolerations"), "spec.tolerations", errors
            ),
            node_selector=_node_selector(spec, errors),
            required_affinity=required,
            preferred_affinity=preferred,
            owner=_controller_owner(meta),
            errors=tuple(errors),
        )

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES

    @property
    def signature(self) -> tuple[Any, ...]:
        """Everything a node-local plugin may read from the Pod: two Pods with equal
        signatures get the same filter and score answers from the same node."""
        return (
            self.requests,
            self.nonzero_cpu,
            self.nonzero_memory,
            self.host_ports,
            self.tolerations,
            self.node_selector,
            self.required_affinity,
            self.preferred_affinity,
            self.owner,
            self.node_name,
        )

    def with_node(self, node_name: str) -> PodInfo:
        """The same Pod as if bound to `node_name` (the assumed form)."""
        return dataclasses.replace(self, node_name=node_name)


# Resource requests --------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _parse(resource: str, value: str | int | float) -> int:
    return cpu_millis(value) if resource == CPU else to_bytes(value)


def _amounts(raw: Any, path: str, errors: list[str]) -> dict[str, int]:
    if not isinstance(raw, Mapping):
        errors.append(f"{path}: must map resource names to quantities, got {raw!r}")
        return {}
    amounts: dict[str, int] = {}
    for name, value in raw.items():
        try:
            amounts[name] = _parse(name, value)
        except (QuantityError, TypeError) as exc:
            errors.append(f"{path}.{name}: {exc}")
    return amounts


def _container_requests(
    container: Mapping[str, Any], path: str, errors: list[str]
) -> tuple[dict[str, int], int, int]:
    """(requests by resource, non-zero cpu, non-zero memory) of one container."""
    resources = container.get("resources") or {}
    limits = _amounts(resources.get("limits") or {}, f"{path}.resources.limits", errors)
    requests = _amounts(resources.get("requests") or {}, f"{path}.resources.requests", errors)
    amounts = {**limits, **requests}  # a request defaults to its limit
    nonzero_cpu = amounts.get(CPU, DEFAULT_CPU_MILLIS)
    nonzero_memory = amounts.get(MEMORY, DEFAULT_MEMORY_BYTES)
    return amounts, nonzero_cpu, nonzero_memory


def _add(into: dict[str, int], amounts: Mapping[str, int]) -> None:
    for name, value in amounts.items():
        into[name] = into.get(name, 0) + value


def _take_max(into: dict[str, int], amounts: Mapping[str, int]) -> None:
    for name, value in amounts.items():
        if value > into.get(name, 0):
            into[name] = value


def pod_requests(spec: Mapping[str, Any], errors: list[str]) -> tuple[Requests, int, int]:
    """(effective Requests, non-zero cpu, non-zero memory) of a Pod spec."""
    # Each accumulator holds resources plus two pseudo-resources for the non-zero sums.
    apps: dict[str, int] = {}
    for i, container in enumerate(spec.get("containers") or []):
        _add(apps, _with_nonzero(container, f"spec.containers[{i}]", errors))
    sidecars: dict[str, int] = {}
    init_peak: dict[str, int] = {}
    for i, container in enumerate(spec.get("initContainers") or []):
        amounts = _with_nonzero(container, f"spec.initContainers[{i}]", errors)
        if container.get("restartPolicy") == "Always":
            _add(sidecars, amounts)
            _take_max(init_peak, sidecars)
        else:
            running = dict(sidecars)
            _add(running, amounts)
            _take_max(init_peak, running)
    total = dict(apps)
    _add(total, sidecars)
    _take_max(total, init_peak)
    overhead = _amounts(spec.get("overhead") or {}, "spec.overhead", errors)
    _add(total, overhead)
    nonzero_cpu = total.pop(_NONZERO_CPU, 0) + overhead.get(CPU, 0)
    nonzero_memory = total.pop(_NONZERO_MEMORY, 0) + overhead.get(MEMORY, 0)
    return _as_requests(total), nonzero_cpu, nonzero_memory


_NONZERO_CPU = " nonzero-cpu"  # a space keeps them apart from any real resource name
_NONZERO_MEMORY = " nonzero-memory"


def _with_nonzero(container: Mapping[str, Any], path: str, errors: list[str]) -> dict[str, int]:
    amounts, nonzero_cpu, nonzero_memory = _container_requests(container, path, errors)
    amounts[_NONZERO_CPU] = nonzero_cpu
    amounts[_NONZERO_MEMORY] = nonzero_memory
    return amounts


def _as_requests(total: Mapping[str, int]) -> Requests:
    scalar = tuple(
        sorted(
            (name, value)
            for name, value in total.items()
            if name not in (CPU, MEMORY, EPHEMERAL_STORAGE, PODS) and value > 0
        )
    )
    return Requests(
        cpu=total.get(CPU, 0),
        memory=total.get(MEMORY, 0),
        ephemeral_storage=total.get(EPHEMERAL_STORAGE, 0),
        scalar=scalar,
    )


# Other scheduling inputs --------------------------------------------------------------------


def _priority(spec: Mapping[str, Any], errors: list[str]) -> int:
    priority = spec.get("priority", 0)
    if priority is None:
        return 0
    if isinstance(priority, bool) or not isinstance(priority, int):
        errors.append(f"spec.priority: must be an integer, got {priority!r}")
        return 0
    return priority


def _host_ports(spec: Mapping[str, Any], errors: list[str]) -> tuple[HostPort, ...]:
    found: list[HostPort] = []
    containers = [(f"spec.containers[{i}]", c) for i, c in enumerate(spec.get("containers") or [])]
    containers += [
        (f"spec.initContainers[{i}]", c)
        for i, c in enumerate(spec.get("initContainers") or [])
        if c.get("restartPolicy") == "Always"
    ]
    for path, container in containers:
        for j, port in enumerate(container.get("ports") or []):
            host_port = port.get("hostPort") or 0
            if host_port == 0:
                continue
            here = f"{path}.ports[{j}].hostPort"
            if isinstance(host_port, bool) or not isinstance(host_port, int):
                errors.append(f"{here}: must be an integer, got {host_port!r}")
            elif not 1 <= host_port <= 65535:
                errors.append(f"{here}: must be from 1 to 65535, got {host_port}")
            else:
                protocol = port.get("protocol") or "TCP"
                found.append(HostPort(protocol, port.get("hostIP") or "0.0.0.0", host_port))
    return tuple(found)


def _node_selector(spec: Mapping[str, Any], errors: list[str]) -> tuple[tuple[str, str], ...]:
    selector = spec.get("nodeSelector") or {}
    if not isinstance(selector, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in selector.items()
    ):
        errors.append(f"spec.nodeSelector: must map strings to strings, got {selector!r}")
        return ()
    return tuple(sorted(selector.items()))


def _node_affinity(
    spec: Mapping[str, Any], errors: list[str]
) -> tuple[NodeSelector | None, tuple[PreferredTerm, ...]]:
    affinity = ((spec.get("affinity") or {}).get("nodeAffinity")) or {}
    path = "spec.affinity.nodeAffinity"
    required = None
    raw_required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
    if raw_required is not None:
        required = nodeselector.compile_selector(
            raw_required, f"{path}.requiredDuringSchedulingIgnoredDuringExecution", errors
        )
    preferred = nodeselector.compile_preferred(
        affinity.get("preferredDuringSchedulingIgnoredDuringExecution"),
        f"{path}.preferredDuringSchedulingIgnoredDuringExecution",
        errors,
    )
    return required, preferred


def _controller_owner(meta: Mapping[str, Any]) -> str:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid") or f"{ref.get('kind')}/{ref.get('name')}"
    return ""
