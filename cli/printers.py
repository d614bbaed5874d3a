"""Output of kctl get: aligned columns per kind, or yaml, json and name.

Columns follow kubectl's for the same kind, so scripts and eyes used to
kubectl read the output unchanged. Several objects in -o json or -o yaml are
wrapped in a List with items, as kubectl does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import yaml

from machinery.clock import parse_rfc3339
from machinery.kinds import Kind

Obj = dict[str, Any]
Row = list[str]


def age(timestamp: str | None, now: float | None = None) -> str:
    """A duration the way kubectl prints one: 45s, 3m12s, 15m, 3h4m, 2d3h, 400d."""
    if not timestamp:
        return "<unknown>"
    seconds = int((now or time.time()) - parse_rfc3339(timestamp))
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        rest = seconds % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if days < 8:
        rest = hours % 24
        return f"{days}d{rest}h" if rest else f"{days}d"
    return f"{days}d"


def _meta(obj: Obj) -> dict[str, Any]:
    return obj.get("metadata", {})


def _age(obj: Obj) -> str:
    return age(_meta(obj).get("creationTimestamp"))


def pod_status(pod: Obj) -> str:
    """The STATUS column: the most telling of deletion, reasons and phase."""
    status = pod.get("status", {})
    if _meta(pod).get("deletionTimestamp"):
        return "Terminating"
    reason = status.get("reason") or status.get("phase") or "Pending"
    for c in status.get("initContainerStatuses") or []:
        state = c.get("state", {})
        if state.get("terminated", {}).get("exitCode", 0) != 0:
            return "Init:" + (state["terminated"].get("reason") or "Error")
        if state.get("waiting", {}).get("reason") not in (None, "PodInitializing"):
            return "Init:" + state["waiting"]["reason"]
        if not state.get("terminated"):
            total = len(pod.get("spec", {}).get("initContainers") or [])
            done = sum(
                1
                for x in status.get("initContainerStatuses") or []
                if x.get("state", {}).get("terminated")
            )
            return f"Init:{done}/{total}"
    for c in status.get("containerStatuses") or []:
        state = c.get("state", {})
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif state.get("terminated", {}).get("reason"):
            reason = state["terminated"]["reason"]
    return reason


def _pod_row(pod: Obj, wide: bool) -> Row:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    total = len(pod.get("spec", {}).get("containers") or [])
    ready = sum(1 for c in statuses if c.get("ready"))
    restarts = sum(int(c.get("restartCount", 0)) for c in statuses)
    row = [_meta(pod)["name"], f"{ready}/{total}", pod_status(pod), str(restarts), _age(pod)]
    if wide:
        row += [
            pod.get("status", {}).get("podIP") or "<none>",
            pod.get("spec", {}).get("nodeName") or "<none>",
        ]
    return row


def _deployment_row(d: Obj, wide: bool) -> Row:
    spec, status = d.get("spec", {}), d.get("status", {})
    row = [
        _meta(d)["name"],
        f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 0)}",
        str(status.get("updatedReplicas", 0)),
        str(status.get("availableReplicas", 0)),
        _age(d),
    ]
    if wide:
        containers = spec.get("template", {}).get("spec", {}).get("containers") or []
        labels = (spec.get("selector") or {}).get("matchLabels") or {}
        row += [
            ",".join(c["name"] for c in containers),
            ",".join(c.get("image", "") for c in containers),
            ",".join(f"{k}={v}" for k, v in labels.items()),
        ]
    return row


def _replicaset_row(rs: Obj, wide: bool) -> Row:
    spec, status = rs.get("spec", {}), rs.get("status", {})
    return [
        _meta(rs)["name"],
        str(spec.get("replicas", 0)),
        str(status.get("replicas", 0)),
        str(status.get("readyReplicas", 0)),
        _age(rs),
    ]


def _service_ports(svc: Obj) -> str:
    parts = []
    for p in svc.get("spec", {}).get("ports") or []:
        text = str(p.get("port"))
        if p.get("nodePort"):
            text += f":{p['nodePort']}"
        parts.append(f"{text}/{p.get('protocol', 'TCP')}")
    return ",".join(parts) or "<none>"


def _service_row(svc: Obj, wide: bool) -> Row:
    spec = svc.get("spec", {})
    external = ",".join(spec.get("externalIPs") or []) or "<none>"
    row = [
        _meta(svc)["name"],
        spec.get("type", "ClusterIP"),
        spec.get("clusterIP") or "<none>",
        external,
        _service_ports(svc),
        _age(svc),
    ]
    if wide:
        row.append(
            ",".join(f"{k}={v}" for k, v in (spec.get("selector") or {}).items()) or "<none>"
        )
    return row


def _endpoints_row(ep: Obj, wide: bool) -> Row:
    addresses = []
    for subset in ep.get("subsets") or []:
        for a in subset.get("addresses") or []:
            for p in subset.get("ports") or [{}]:
                addresses.append(f"{a['ip']}:{p['port']}" if p.get("port") else a["ip"])
    shown = ",".join(addresses[:3]) + (
        f" + {len(addresses) - 3} more..." if len(addresses) > 3 else ""
    )
    return [_meta(ep)["name"], shown or "<none>", _age(ep)]


def _configmap_row(cm: Obj, wide: bool) -> Row:
    return [
        _meta(cm)["name"],
        str(len(cm.get("data") or {}) + len(cm.get("binaryData") or {})),
        _age(cm),
    ]


def _secret_row(secret: Obj, wide: bool) -> Row:
    data = secret.get("data") or {}
    return [_meta(secret)["name"], secret.get("type") or "Opaque", str(len(data)), _age(secret)]


def node_status(node: Obj) -> str:
    ready = next(
        (c for c in node.get("status", {}).get("conditions") or [] if c.get("type") == "Ready"),
        None,
    )
    text = (
        "Ready" if ready and ready.get("status") == "True" else "NotReady" if ready else "Unknown"
    )
    if ready and ready.get("status") == "Unknown":
        text = "NotReady"
    if node.get("spec", {}).get("unschedulable"):
        text += ",SchedulingDisabled"
    return text


def _node_row(node: Obj, wide: bool) -> Row:
    labels = _meta(node).get("labels") or {}
    roles = sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/"))
    info = node.get("status", {}).get("nodeInfo", {})
    row = [
        _meta(node)["name"],
        node_status(node),
        ",".join(roles) or "<none>",
        _age(node),
        info.get("kubeletVersion") or "<none>",
    ]
    if wide:
        addresses = node.get("status", {}).get("addresses") or []
        internal = next(
            (a["address"] for a in addresses if a.get("type") == "InternalIP"), "<none>"
        )
        row += [
            internal,
            info.get("osImage") or "<unknown>",
            info.get("kernelVersion") or "<unknown>",
            info.get("containerRuntimeVersion") or "<unknown>",
        ]
    return row


def _namespace_row(ns: Obj, wide: bool) -> Row:
    return [_meta(ns)["name"], ns.get("status", {}).get("phase", "Active"), _age(ns)]


def _event_row(ev: Obj, wide: bool) -> Row:
    involved = ev.get("involvedObject", {})
    last = ev.get("lastTimestamp") or ev.get("eventTime") or _meta(ev).get("creationTimestamp")
    return [
        age(last),
        ev.get("type", ""),
        ev.get("reason", ""),
        f"{involved.get('kind', '').lower()}/{involved.get('name', '')}",
        ev.get("message", ""),
    ]


def _lease_row(lease: Obj, wide: bool) -> Row:
    return [
        _meta(lease)["name"],
        lease.get("spec", {}).get("holderIdentity") or "<none>",
        _age(lease),
    ]


def _serviceaccount_row(sa: Obj, wide: bool) -> Row:
    return [_meta(sa)["name"], str(len(sa.get("secrets") or [])), _age(sa)]


def csr_condition(csr: Obj) -> str:
    """Pending, Approved, Denied, Failed, joined as kubectl shows them (Approved,Issued)."""
    status = csr.get("status") or {}
    types = [c.get("type", "") for c in status.get("conditions") or [] if isinstance(c, dict)]
    shown = [t for t in ("Approved", "Denied", "Failed") if t in types]
    if status.get("certificate"):
        shown.append("Issued")
    return ",".join(shown) or "Pending"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int):
        return "<none>"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _csr_row(csr: Obj, wide: bool) -> Row:
    spec = csr.get("spec") or {}
    return [
        _meta(csr)["name"],
        _age(csr),
        spec.get("signerName") or "<none>",
        spec.get("username") or "<none>",
        _duration(spec.get("expirationSeconds")),
        csr_condition(csr),
    ]


def _role_row(role: Obj, wide: bool) -> Row:
    return [_meta(role)["name"], _meta(role).get("creationTimestamp") or "<none>"]


def _subjects(binding: Obj, kind: str) -> str:
    names = []
    for s in binding.get("subjects") or []:
        if isinstance(s, dict) and s.get("kind") == kind:
            name = s.get("name", "")
            names.append(f"{s['namespace']}/{name}" if s.get("namespace") else name)
    return ", ".join(names)


def _binding_row(binding: Obj, wide: bool) -> Row:
    ref = binding.get("roleRef") or {}
    row = [_meta(binding)["name"], f"{ref.get('kind', '')}/{ref.get('name', '')}", _age(binding)]
    if wide:
        row += [_subjects(binding, kind) for kind in ("User", "Group", "ServiceAccount")]
    return row


Printer = tuple[list[str], list[str], Callable[[Obj, bool], Row]]
TABLES: dict[str, Printer] = {
    "pods": (["NAME", "READY", "STATUS", "RESTARTS", "AGE"], ["IP", "NODE"], _pod_row),
    "deployments": (
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        ["CONTAINERS", "IMAGES", "SELECTOR"],
        _deployment_row,
    ),
    "replicasets": (["NAME", "DESIRED", "CURRENT", "READY", "AGE"], [], _replicaset_row),
    "services": (
        ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"],
        ["SELECTOR"],
        _service_row,
    ),
    "endpoints": (["NAME", "ENDPOINTS", "AGE"], [], _endpoints_row),
    "configmaps": (["NAME", "DATA", "AGE"], [], _configmap_row),
    "secrets": (["NAME", "TYPE", "DATA", "AGE"], [], _secret_row),
    "nodes": (
        ["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
        ["INTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"],
        _node_row,
    ),
    "namespaces": (["NAME", "STATUS", "AGE"], [], _namespace_row),
    "events": (["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"], [], _event_row),
    "leases": (["NAME", "HOLDER", "AGE"], [], _lease_row),
    "serviceaccounts": (["NAME", "SECRETS", "AGE"], [], _serviceaccount_row),
    "roles": (["NAME", "CREATED AT"], [], _role_row),
    "clusterroles": (["NAME", "CREATED AT"], [], _role_row),
    "rolebindings": (
        ["NAME", "ROLE", "AGE"],
        ["USERS", "GROUPS", "SERVICEACCOUNTS"],
        _binding_row,
    ),
    "clusterrolebindings": (
        ["NAME", "ROLE", "AGE"],
        ["USERS", "GROUPS", "SERVICEACCOUNTS"],
        _binding_row,
    ),
    "certificatesigningrequests": (
        ["NAME", "AGE", "SIGNERNAME", "REQUESTOR", "REQUESTEDDURATION", "CONDITION"],
        [],
        _csr_row,
    ),
}


def table(
    kind: Kind,
    items: list[Obj],
    *,
    wide: bool = False,
    all_namespaces: bool = False,
    headers: bool = True,
) -> str:
    columns, wide_columns, row_of = TABLES[kind.resource]
    header = columns + (wide_columns if wide else [])
    rows = [row_of(item, wide) for item in items]
    if all_namespaces and kind.namespaced:
        header = ["NAMESPACE", *header]
        rows = [
            [_meta(item).get("namespace", ""), *row] for item, row in zip(items, rows, strict=True)
        ]
    return align(([header] if headers else []) + rows)


def align(rows: list[Row]) -> str:
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(len(r) for r in rows))]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def as_list(items: list[Obj]) -> Obj:
    return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items}


def render(items: list[Obj], output: str, *, single: bool) -> str:
    data: Any = items[0] if single and len(items) == 1 else as_list(items)
    if output == "json":
        return json.dumps(data, indent=4)
    if output == "yaml":
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip()
    raise ValueError(output)


def name_of(kind: Kind, obj: Obj) -> str:
    group = f".{kind.group}" if kind.group else ""
    return f"{kind.singular}{group}/{_meta(obj).get('name', '')}"
