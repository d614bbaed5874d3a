"""Server-side defaults, applied in place before validation, as Kubernetes applies them.

`apply_defaults(obj)` fills every field Kubernetes would fill when it decodes
an object of that kind (its SetDefaults_* functions) plus what its registry
sets on every write (the namespace of a namespaced object, the "kubernetes"
finalizer of a Namespace). Consumers can then read a defaulted field without
guessing: a Pod's restartPolicy, a container's imagePullPolicy, a Service
port's targetPort are always there.

Invariants:
- idempotent: a second call changes nothing, so the server may apply defaults
  to an object read back from the store;
- only missing fields are filled; a value the client gave is never replaced
  (exceptions, as in Kubernetes: a Namespace's kubernetes.io/metadata.name
  label always equals its name; a CertificateSigningRequest's status is
  dropped, see _default_csr);
- never raises on a malformed object: anything of the wrong type is left
  alone for validation to report;
- JSON nulls in objects are dropped first, as Kubernetes' decoder treats an
  explicit null as an absent field (`creationTimestamp: null` in
  `kubectl create --dry-run -o yaml` output).

Some Kubernetes defaults are Pod-only and not applied to pod templates inside
ReplicaSets and Deployments, exactly as there: requests copied from limits,
enableServiceLinks, hostPort = containerPort under hostNetwork. A Pod made
from a template gets them when it is itself created.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from machinery import kinds

_Obj = dict[str, Any]

DEFAULT_NAMESPACE = "default"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
DEFAULT_FILE_MODE = 0o644  # 420, the mode of files projected from ConfigMaps and Secrets
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
SECRET_TYPE_OPAQUE = "Opaque"


def apply_defaults(obj: _Obj) -> None:
    """Fill in the defaults of `obj`'s kind, in place; unknown kinds are left as they are."""
    if not isinstance(obj, dict):
        return
    _drop_nulls(obj)
    kind_name = obj.get("kind")
    kind = kinds.by_kind(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        return
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        _default_namespace(meta, kind)
    handler = _KIND_DEFAULTS.get(kind.kind)
    if handler is not None:
        handler(obj)


def _drop_nulls(node: Any) -> None:
    if isinstance(node, dict):
        for key in [k for k, v in node.items() if v is None]:
            del node[key]
        for value in node.values():
            _drop_nulls(value)
    elif isinstance(node, list):
        for item in node:
            _drop_nulls(item)


def _default_namespace(meta: _Obj, kind: kinds.Kind) -> None:
    if kind.namespaced:
        if not meta.get("namespace"):
            meta["namespace"] = DEFAULT_NAMESPACE
    elif meta.get("namespace") == "":
        # Kubernetes clears the namespace of a cluster-scoped object; a non-empty one is
        # left for validation to reject, since it shows a client's misunderstanding.
        del meta["namespace"]


# -- helpers ---------------------------------------------------------------------------------


def _child(parent: _Obj, key: str) -> _Obj | None:
    """parent[key] when it is an object, else None (malformed, left for validation)."""
    value = parent.get(key)
    return value if isinstance(value, dict) else None


def _items(parent: _Obj, key: str) -> list[_Obj]:
    value = parent.get(key)
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


# -- pods ------------------------------------------------------------------------------------


def _pull_policy(image: str) -> str:
    """Always for `:latest` or an untagged name, else IfNotPresent (digests included)."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]  # a registry host:port is not a tag
    tag = last.partition(":")[2] if ":" in last else ("" if digest else "latest")
    return "Always" if tag == "latest" else "IfNotPresent"


def _default_http_get(action: _Obj | None) -> None:
    if action is not None:
        action.setdefault("path", "/")
        action.setdefault("scheme", "HTTP")


def _default_probe(probe: _Obj | None) -> None:
    if probe is None:
        return
    probe.setdefault("timeoutSeconds", 1)
    probe.setdefault("periodSeconds", 10)
    probe.setdefault("successThreshold", 1)
    probe.setdefault("failureThreshold", 3)
    _default_http_get(_child(probe, "httpGet"))
    grpc = _child(probe, "grpc")
    if grpc is not None:
        grpc.setdefault("service", "")


def _default_env(container: _Obj) -> None:
    for var in _items(container, "env"):
        source = _child(var, "valueFrom")
        field_ref = _child(source, "fieldRef") if source is not None else None
        if field_ref is not None:
            field_ref.setdefault("apiVersion", "v1")


def _default_container(c: _Obj) -> None:
    image = c.get("image")
    if isinstance(image, str) and image:
        c.setdefault("imagePullPolicy", _pull_policy(image))
    c.setdefault("terminationMessagePath", TERMINATION_MESSAGE_PATH)
    c.setdefault("terminationMessagePolicy", "File")
    for port in _items(c, "ports"):
        port.setdefault("protocol", "TCP")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        _default_probe(_child(c, probe))
    lifecycle = _child(c, "lifecycle")
    if lifecycle is not None:
        for hook in ("postStart", "preStop"):
            handler = _child(lifecycle, hook)
            if handler is not None:
                _default_http_get(_child(handler, "httpGet"))
    _default_env(c)


def _default_downward_items(source: _Obj | None) -> None:
    for item in _items(source or {}, "items"):
        ref = _child(item, "fieldRef")
        if ref is not None:
            ref.setdefault("apiVersion", "v1")


def _default_volume(vol: _Obj) -> None:
    sources = ("emptyDir", "hostPath", "configMap", "secret", "downwardAPI", "projected")
    if not any(s in vol for s in sources):
        vol["emptyDir"] = {}
    host_path = _child(vol, "hostPath")
    if host_path is not None:
        host_path.setdefault("type", "")
    for source in ("configMap", "secret", "downwardAPI", "projected"):
        spec = _child(vol, source)
        if spec is not None:
            spec.setdefault("defaultMode", DEFAULT_FILE_MODE)
    _default_downward_items(_child(vol, "downwardAPI"))
    for projection in _items(_child(vol, "projected") or {}, "sources"):
        _default_downward_items(_child(projection, "downwardAPI"))


def _default_pod_spec(spec: _Obj) -> None:
    """What every pod spec gets, in a Pod or in a template (SetDefaults_PodSpec)."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    for field in ("initContainers", "containers"):
        for container in _items(spec, field):
            _default_container(container)
    for vol in _items(spec, "volumes"):
        _default_volume(vol)


def _default_pod_only(spec: _Obj) -> None:
    """What Kubernetes defaults on a Pod but not on a template (SetDefaults_Pod)."""
    spec.setdefault("enableServiceLinks", True)
    host_network = spec.get("hostNetwork") is True
    for field in ("initContainers", "containers"):
        for container in _items(spec, field):
            _requests_from_limits(container)
            if host_network:
                for port in _items(container, "ports"):
                    if "containerPort" in port:
                        port.setdefault("hostPort", port["containerPort"])


def _requests_from_limits(container: _Obj) -> None:
    """A resource limited but not requested is requested at its limit."""
    resources = _child(container, "resources")
    limits = _child(resources, "limits") if resources is not None else None
    if resources is None or not limits:
        return
    requests = resources.setdefault("requests", {})
    if isinstance(requests, dict):
        for name, amount in limits.items():
            requests.setdefault(name, amount)


def _default_pod(obj: _Obj) -> None:
    spec = _child(obj, "spec")
    if spec is not None:
        _default_pod_spec(spec)
        _default_pod_only(spec)


def _default_template(spec: _Obj) -> None:
    template = _child(spec, "template")
    pod_spec = _child(template, "spec") if template is not None else None
    if pod_spec is not None:
        _default_pod_spec(pod_spec)


# -- workloads -------------------------------------------------------------------------------


def _default_replica_set(obj: _Obj) -> None:
    spec = _child(obj, "spec")
    if spec is not None:
        spec.setdefault("replicas", 1)
        _default_template(spec)


def _default_deployment(obj: _Obj) -> None:
    spec = _child(obj, "spec")
    if spec is None:
        return
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    spec.setdefault("minReadySeconds", 0)
    strategy = spec.setdefault("strategy", {})
    if isinstance(strategy, dict):
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            if isinstance(rolling, dict):
                rolling.setdefault("maxUnavailable", "25%")
                rolling.setdefault("maxSurge", "25%")
    _default_template(spec)


# -- networking ------------------------------------------------------------------------------


def _default_service(obj: _Obj) -> None:
    spec = _child(obj, "spec")
    if spec is None:
        return
    svc_type = spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    for port in _items(spec, "ports"):
        port.setdefault("protocol", "TCP")
        if "port" in port and port.get("targetPort") in (None, 0, ""):
            port["targetPort"] = port["port"]
    if svc_type != "ExternalName":
        spec.setdefault("internalTrafficPolicy", "Cluster")
    if svc_type in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if svc_type == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)
    if spec.get("sessionAffinity") == "ClientIP":
        config = spec.setdefault("sessionAffinityConfig", {})
        client_ip = config.setdefault("clientIP", {}) if isinstance(config, dict) else None
        if isinstance(client_ip, dict):
            client_ip.setdefault("timeoutSeconds", 10800)  # three hours


def _default_endpoints(obj: _Obj) -> None:
    for subset in _items(obj, "subsets"):
        for port in _items(subset, "ports"):
            port.setdefault("protocol", "TCP")


# -- cluster objects -------------------------------------------------------------------------


def _default_namespace_kind(obj: _Obj) -> None:
    meta = _child(obj, "metadata")
    name = meta.get("name") if meta is not None else None
    if meta is not None and isinstance(name, str) and name:
        labels = meta.setdefault("labels", {})
        if isinstance(labels, dict):
            labels[NAMESPACE_NAME_LABEL] = name  # always the name, as in Kubernetes
    spec = obj.setdefault("spec", {})
    if isinstance(spec, dict):
        # Only when missing: the namespace controller removes it (leaving []) to finish.
        spec.setdefault("finalizers", ["kubernetes"])
    status = obj.setdefault("status", {})
    if isinstance(status, dict):
        status.setdefault("phase", "Active")


def _default_node(obj: _Obj) -> None:
    status = _child(obj, "status")
    capacity = status.get("capacity") if status is not None else None
    if status is not None and isinstance(capacity, dict) and "allocatable" not in status:
        status["allocatable"] = dict(capacity)


def _default_secret(obj: _Obj) -> None:
    """type Opaque, and stringData folded into data, as Kubernetes' v1 decoding does.

    stringData is write-only: each value is stored base64-encoded under data, replacing
    a data value of the same key, and stringData itself is dropped. It is left in place
    (for validation to report) when it or data is malformed. Line breaks in data values
    are dropped, as Kubernetes' base64 decoder ignores them.
    """
    if obj.get("type") in (None, ""):
        obj["type"] = SECRET_TYPE_OPAQUE
    data = obj.get("data", {})
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        if isinstance(value, str) and ("\n" in value or "\r" in value):
            data[key] = value.replace("\n", "").replace("\r", "")
    string_data = obj.get("stringData")
    if not isinstance(string_data, dict):
        return
    try:
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in string_data.items()}
    except (AttributeError, UnicodeEncodeError):
        return  # a non-string or unencodable value: validation names it
    if encoded:
        obj["data"] = {**data, **encoded}
    del obj["stringData"]


def _default_csr(obj: _Obj) -> None:
    """A signing request arrives without a status, as Kubernetes' registry strategy makes it.

    Defaults run on create and on updates of the main resource only; an update keeps the
    stored status whatever it sends, and the status subresource does not pass here. So a
    requester can never create its request already Approved (which a signer would then
    sign): approval comes only through an update of the status.
    """
    obj.pop("status", None)


def _default_binding(obj: _Obj) -> None:
    """A subject's apiGroup, as Kubernetes' SetDefaults_Subject fills it: the RBAC group
    for users and groups, the core group for ServiceAccounts."""
    for subject in _items(obj, "subjects"):
        if "apiGroup" not in subject and isinstance(subject.get("kind"), str):
            kind = subject["kind"]
            if kind in ("User", "Group"):
                subject["apiGroup"] = "rbac.authorization.k8s.io"
            elif kind == "ServiceAccount":
                subject["apiGroup"] = ""


# Event and Lease have no defaults in Kubernetes' core/v1 and coordination/v1: an Event's
# `type` is left as the writer set it. ConfigMap has none either.
_KIND_DEFAULTS: dict[str, Callable[[_Obj], None]] = {
    "Pod": _default_pod,
    "ReplicaSet": _default_replica_set,
    "Deployment": _default_deployment,
    "Service": _default_service,
    "Endpoints": _default_endpoints,
    "Namespace": _default_namespace_kind,
    "Node": _default_node,
    "Secret": _default_secret,
    "RoleBinding": _default_binding,
    "ClusterRoleBinding": _default_binding,
    "CertificateSigningRequest": _default_csr,
}
