"""A Pod's status as Kubernetes reports it, computed from what the node holds.

Pure functions: the Pod worker gathers one ContainerView per container of the spec (the
latest runtime instance, the one before it, the waiting reason the worker decided, probe
results) and pod_status() turns them into the status object, phase and conditions
included; merge() keeps what other writers own (PodScheduled, nominatedNodeName, any
condition type the kubelet does not set). Transition times come from the previous status:
a condition keeps its lastTransitionTime while its status stays the same.

Phase, as Kubernetes' kubelet decides it:
- Pending while an init container has not succeeded (Failed instead when one failed under
  restartPolicy Never), or while any app container waits without having run;
- Running while one runs, or all have stopped and the policy restarts them;
- Succeeded when all stopped with 0 and will not restart; Failed when all stopped, one
  with non-zero, and the policy does not restart them (Never).
A waiting container that has run before counts as stopped (it is between restarts).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kubelet.runtime.interface import ContainerState, ContainerStatus
from machinery.clock import rfc3339

KUBELET_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady")
ID_PREFIX = "kubelite://"


@dataclasses.dataclass(frozen=True)
class ContainerView:
    spec: dict[str, Any]
    latest: ContainerStatus | None = None
    previous: ContainerStatus | None = None
    waiting: tuple[str, str] | None = None  # (reason, message) decided by the worker
    ready: bool = False
    started: bool = False
    image: str = ""
    image_id: str = ""
    latest_message: str = ""  # termination messages (termination.py) of the two instances
    previous_message: str = ""

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def running(self) -> bool:
        return self.latest is not None and self.latest.state == ContainerState.RUNNING

    @property
    def exited(self) -> bool:
        return self.latest is not None and self.latest.state == ContainerState.EXITED

    @property
    def succeeded(self) -> bool:
        return self.exited and self.latest is not None and self.latest.exit_code == 0


def container_id(status: ContainerStatus) -> str:
    return ID_PREFIX + status.id


def terminated(status: ContainerStatus, message: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {
        "exitCode": status.exit_code if status.exit_code is not None else 0,
        "reason": status.reason or ("Completed" if status.exit_code == 0 else "Error"),
        "containerID": container_id(status),
    }
    if message or status.message:
        out["message"] = message or status.message
    if status.started_at is not None:
        out["startedAt"] = rfc3339(status.started_at)
    if status.finished_at is not None:
        out["finishedAt"] = rfc3339(status.finished_at)
    return out


def container_status(view: ContainerView) -> dict[str, Any]:
    latest, previous = view.latest, view.previous
    state: dict[str, Any]
    last: dict[str, Any] = {}
    if latest is None:
        reason, message = view.waiting or ("ContainerCreating", "")
        state = {"waiting": _waiting(reason, message)}
    elif latest.state == ContainerState.RUNNING:
        state = {"running": {"startedAt": rfc3339(latest.started_at or latest.created_at)}}
        if previous is not None and previous.state == ContainerState.EXITED:
            last = {"terminated": terminated(previous, view.previous_message)}
    elif latest.state == ContainerState.EXITED:
        if view.waiting is not None:
            state = {"waiting": _waiting(*view.waiting)}
            last = {"terminated": terminated(latest, view.latest_message)}
        else:
            state = {"terminated": terminated(latest, view.latest_message)}
            if previous is not None and previous.state == ContainerState.EXITED:
                last = {"terminated": terminated(previous, view.previous_message)}
    else:
        reason, message = view.waiting or ("ContainerCreating", "")
        state = {"waiting": _waiting(reason, message)}
    out: dict[str, Any] = {
        "name": view.name,
        "state": state,
        "lastState": last,
        "ready": bool(view.ready and view.running),
        "restartCount": latest.attempt if latest is not None else 0,
        "image": view.image or view.spec.get("image", ""),
        "imageID": view.image_id,
        "started": bool(view.started and view.running),
    }
    if latest is not None:
        out["containerID"] = container_id(latest)
    return out


def _waiting(reason: str, message: str) -> dict[str, str]:
    return {"reason": reason, "message": message} if message else {"reason": reason}


def init_done(init: list[ContainerView], app: list[ContainerView]) -> bool:
    """Every init container succeeded (or app containers already exist: init is behind us)."""
    if any(view.latest is not None for view in app):
        return True
    return all(view.succeeded for view in init)


def phase(restart_policy: str, init: list[ContainerView], app: list[ContainerView]) -> str:
    if not init_done(init, app):
        failed = any(v.exited and not v.succeeded and v.waiting is None for v in init)
        return "Failed" if restart_policy == "Never" and failed else "Pending"
    waiting = running = stopped = succeeded = 0
    for view in app:
        if view.running:
            running += 1
        elif view.exited and view.waiting is None:
            stopped += 1
            succeeded += 1 if view.succeeded else 0
        elif view.latest is not None and view.latest.state == ContainerState.EXITED:
            stopped += 1  # waiting to restart after a run
        elif view.waiting is not None and view.previous is not None:
            stopped += 1
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if stopped == len(app) and app:
        if restart_policy == "Always":
            return "Running"
        if succeeded == stopped:
            return "Succeeded"
        return "Running" if restart_policy == "OnFailure" else "Failed"
    return "Pending"


def _condition(kind: str, ok: bool, reason: str = "", message: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"type": kind, "status": "True" if ok else "False"}
    if not ok and reason:
        out["reason"] = reason
    if not ok and message:
        out["message"] = message
    return out


def conditions(
    pod: dict[str, Any],
    *,
    pod_phase: str,
    sandbox_ready: bool,
    init: list[ContainerView],
    app: list[ContainerView],
) -> list[dict[str, Any]]:
    initialized = init_done(init, app)
    incomplete = [v.name for v in init if not v.succeeded]
    unready = [v.name for v in app if not (v.ready and v.running)]
    out = [_condition("PodReadyToStartContainers", sandbox_ready)]
    out.append(
        _condition(
            "Initialized",
            initialized,
            "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(incomplete)}]",
        )
    )
    if pod_phase in ("Succeeded", "Failed"):
        out.append(_condition("Ready", False, "PodCompleted"))
        out.append(_condition("ContainersReady", False, "PodCompleted"))
        return out
    containers_ready = not unready
    message = f"containers with unready status: [{' '.join(unready)}]"
    gates = _unready_gates(pod)
    if containers_ready and gates:
        ready = _condition(
            "Ready",
            False,
            "ReadinessGatesNotReady",
            f'corresponding condition of pod readiness gate "{gates[0]}" does not exist.',
        )
    else:
        ready = _condition("Ready", containers_ready, "ContainersNotReady", message)
    out.append(ready)
    out.append(_condition("ContainersReady", containers_ready, "ContainersNotReady", message))
    return out


def _unready_gates(pod: dict[str, Any]) -> list[str]:
    current = {
        c.get("type"): c.get("status") for c in (pod.get("status") or {}).get("conditions") or []
    }
    return [
        gate.get("conditionType", "")
        for gate in pod.get("spec", {}).get("readinessGates") or []
        if current.get(gate.get("conditionType")) != "True"
    ]


def pod_status(
    pod: dict[str, Any],
    *,
    init: list[ContainerView],
    app: list[ContainerView],
    sandbox_ready: bool,
    pod_ips: tuple[str, ...],
    host_ips: tuple[str, ...],
    start_time: float,
    qos_class: str,
    now: float,
    final_phase: str | None = None,
) -> dict[str, Any]:
    """The status the kubelet wants the Pod to have, merged over its current one."""
    restart_policy = pod.get("spec", {}).get("restartPolicy", "Always")
    current = pod.get("status") or {}
    pod_phase = final_phase or phase(restart_policy, init, app)
    if current.get("phase") in ("Succeeded", "Failed"):
        pod_phase = current["phase"]  # a terminal phase is never left
    status: dict[str, Any] = {
        "phase": pod_phase,
        "conditions": conditions(
            pod, pod_phase=pod_phase, sandbox_ready=sandbox_ready, init=init, app=app
        ),
        "hostIP": host_ips[0] if host_ips else "",
        "hostIPs": [{"ip": ip} for ip in host_ips],
        "startTime": current.get("startTime") or rfc3339(start_time),
        "containerStatuses": [container_status(v) for v in app],
        "qosClass": qos_class,
    }
    if init:
        status["initContainerStatuses"] = [container_status(v) for v in init]
    if pod_ips:
        status["podIP"] = pod_ips[0]
        status["podIPs"] = [{"ip": ip} for ip in pod_ips]
    return merge(current, status, now=now)


def merge(current: dict[str, Any], wanted: dict[str, Any], *, now: float) -> dict[str, Any]:
    """wanted, keeping what others own in current and stable transition times."""
    out = dict(wanted)
    for key in ("nominatedNodeName", "message", "reason"):
        if key in current and key not in out:
            out[key] = current[key]
    if "podIP" not in out and current.get("podIP"):
        out["podIP"], out["podIPs"] = current["podIP"], current.get("podIPs", [])
    previous = {c.get("type"): c for c in current.get("conditions") or []}
    merged = []
    for condition in wanted.get("conditions") or []:
        old = previous.get(condition["type"])
        stamp = (
            old.get("lastTransitionTime")
            if old is not None and old.get("status") == condition["status"]
            else None
        )
        merged.append(
            {**condition, "lastProbeTime": None, "lastTransitionTime": stamp or rfc3339(now)}
        )
    owned = {c["type"] for c in merged}
    for kind, condition in previous.items():
        if kind not in owned and kind not in KUBELET_CONDITIONS:
            merged.append(condition)
    if "PodScheduled" not in previous:
        merged.append(
            {
                "type": "PodScheduled",
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": rfc3339(now),
            }
        )
    out["conditions"] = merged
    return out


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two statuses say the same (transition times included, probe times not)."""
    return _normal(a) == _normal(b)


def _normal(status: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in status.items() if v not in (None, "", [], {})}
    conditions = sorted(
        (
            {k: v for k, v in c.items() if k != "lastProbeTime" and v is not None}
            for c in status.get("conditions") or []
        ),
        key=lambda c: c.get("type", ""),
    )
    out["conditions"] = conditions
    for key in ("containerStatuses", "initContainerStatuses"):
        if key in out:
            out[key] = [
                {k: v for k, v in entry.items() if v not in (None, "", {})} for entry in out[key]
            ]
    return out
