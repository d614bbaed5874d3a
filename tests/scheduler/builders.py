"""Pod and Node builders for scheduler tests: one line per object, in the API's own shape.

    make_pod("web-1", cpu="500m", memory="256Mi", owner="web", tolerations=[...])
    make_node("node-1", cpu="4", memory="8Gi", taints=["node-role=control-plane:NoSchedule"])

Taints may be given in kubectl's `key=value:Effect` form or as dicts; host
ports as integers (TCP on 0.0.0.0) or (port, protocol, hostIP) tuples.
"""

from __future__ import annotations

from typing import Any

DEFAULT_ALLOCATABLE = {"cpu": "4", "memory": "8Gi", "pods": 110}


def make_pod(
    name: str,
    *,
    namespace: str = "default",
    cpu: str | None = None,
    memory: str | None = None,
    limits: dict[str, str] | None = None,
    requests: dict[str, str] | None = None,
    node_selector: dict[str, str] | None = None,
    affinity: dict[str, Any] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
    host_ports: list[int | tuple[int, str, str]] | None = None,
    owner: str | None = None,
    priority: int | None = None,
    node_name: str | None = None,
    phase: str | None = None,
    init_containers: list[dict[str, Any]] | None = None,
    uid: str | None = None,
) -> dict[str, Any]:
    """A Pod with one container requesting `cpu` / `memory` (plus `requests`, `limits`)."""
    resources: dict[str, Any] = {}
    wanted = {**({"cpu": cpu} if cpu else {}), **({"memory": memory} if memory else {})}
    wanted.update(requests or {})
    if wanted:
        resources["requests"] = wanted
    if limits:
        resources["limits"] = dict(limits)
    container: dict[str, Any] = {"name": "main", "image": "busybox", "resources": resources}
    if host_ports:
        container["ports"] = [_port(p) for p in host_ports]
    spec: dict[str, Any] = {"containers": [container]}
    for key, value in (
        ("nodeSelector", node_selector),
        ("affinity", affinity),
        ("tolerations", tolerations),
        ("priority", priority),
        ("nodeName", node_name),
        ("initContainers", init_containers),
    ):
        if value is not None:
            spec[key] = value
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid or f"uid-{name}"}
    if owner:
        meta["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": owner,
                "uid": f"uid-rs-{owner}",
                "controller": True,
            }
        ]
    pod: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
    pod["status"] = {"phase": phase or "Pending"}
    return pod


def make_node(
    name: str,
    *,
    cpu: str = "4",
    memory: str = "8Gi",
    pods: int = 110,
    allocatable: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    taints: list[str | dict[str, str]] | None = None,
    unschedulable: bool = False,
    ready: bool | str = True,
) -> dict[str, Any]:
    """A Node with the given allocatable; `ready` may be True, False or "Unknown"."""
    status = ("True" if ready else "False") if isinstance(ready, bool) else ready
    spec: dict[str, Any] = {}
    if taints:
        spec["taints"] = [_taint(t) for t in taints]
    if unschedulable:
        spec["unschedulable"] = True
    resources = {"cpu": cpu, "memory": memory, "pods": pods, **(allocatable or {})}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        "spec": spec,
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
            "conditions": [{"type": "Ready", "status": status}],
        },
    }


def toleration(
    key: str = "", *, operator: str = "Equal", value: str = "", effect: str = ""
) -> dict[str, Any]:
    tol: dict[str, Any] = {"key": key, "operator": operator}
    if value:
        tol["value"] = value
    if effect:
        tol["effect"] = effect
    return tol


def required_affinity(*terms: list[dict[str, Any]]) -> dict[str, Any]:
    """Node affinity whose required terms (ORed) each hold the given matchExpressions."""
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": list(t)} for t in terms]
            }
        }
    }


def preferred_affinity(*weighted: tuple[int, list[dict[str, Any]]]) -> dict[str, Any]:
    return {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": w, "preference": {"matchExpressions": list(exprs)}}
                for w, exprs in weighted
            ]
        }
    }


def expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    return {"key": key, "operator": operator, "values": list(values)}


def _port(port: int | tuple[int, str, str]) -> dict[str, Any]:
    if isinstance(port, int):
        return {"containerPort": port, "hostPort": port}
    number, protocol, host_ip = port
    return {"containerPort": number, "hostPort": number, "protocol": protocol, "hostIP": host_ip}


def _taint(taint: str | dict[str, str]) -> dict[str, str]:
    if isinstance(taint, dict):
        return dict(taint)
    key_value, _, effect = taint.partition(":")
    key, _, value = key_value.partition("=")
    return {"key": key, "value": value, "effect": effect}
