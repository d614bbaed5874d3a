"""A container's environment as Kubernetes builds it, and $(VAR) expansion.

Order: the service links first (for each Service of the Pod's namespace with a cluster IP,
and the `kubernetes` Service of `default`, Docker-link style variables such as
WEB_SERVICE_HOST and WEB_PORT_80_TCP, unless enableServiceLinks is false), then every
envFrom source in turn (a ConfigMap's keys, with the source's prefix; keys
that are not valid variable names are skipped), then `env` in order, later names
replacing earlier ones. A value may refer to variables defined before it as $(NAME);
`$$` is a literal `$`, and a reference to an undefined name is left as written. The same
expansion applies to command, args and subPathExpr, against the whole environment.

valueFrom sources: configMapKeyRef and secretKeyRef (optional, or EnvError naming the
object or key, which the kubelet reports as CreateContainerConfigError; a Secret's values
are base64 in the API and decoded here), fieldRef (the Pod's own fields from the downward
API), resourceFieldRef (limits and requests in the divisor's unit; an unset limit reads as
the node's allocatable, as in Kubernetes). envFrom takes configMapRef and secretRef.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import re
from fractions import Fraction
from typing import Any, Protocol

from machinery import quantity

_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class EnvError(Exception):
    """The environment cannot be built: a missing ConfigMap or key, an unknown field."""


class Sources(Protocol):
    """Where ConfigMaps and Secrets are read from (the kubelet's informer caches)."""

    def configmap(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...


def object_data(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    """A ConfigMap's data, or a Secret's data decoded (undecodable bytes replaced)."""
    if kind == "secret":
        return {
            key: base64.b64decode(value).decode(errors="replace")
            for key, value in (obj.get("data") or {}).items()
        }
    return dict(obj.get("data") or {})


def _lookup(sources: Sources, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    return (
        sources.secret(namespace, name) if kind == "secret" else sources.configmap(namespace, name)
    )


@dataclasses.dataclass(frozen=True)
class EnvContext:
    pod_ips: tuple[str, ...] = ()
    host_ips: tuple[str, ...] = ()
    node_cpu_millis: int = 0
    node_memory_bytes: int = 0
    node_ephemeral_bytes: int = 0


def expand(text: str, env: dict[str, str]) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            following = text[i + 1]
            if following == "$":
                out.append("$")
                i += 2
                continue
            if following == "(":
                close = text.find(")", i + 2)
                if close != -1:
                    name = text[i + 2 : close]
                    out.append(env[name] if name in env else text[i : close + 1])
                    i = close + 1
                    continue
        out.append(text[i])
        i += 1
    return "".join(out)


def service_env(services: list[dict[str, Any]]) -> dict[str, str]:
    """The Docker-link variables Kubernetes gives a container for each Service."""
    env: dict[str, str] = {}
    for service in sorted(services, key=lambda s: s.get("metadata", {}).get("name", "")):
        spec = service.get("spec") or {}
        ip = spec.get("clusterIP", "")
        ports = spec.get("ports") or []
        if not ip or ip == "None" or not ports:
            continue
        name = service["metadata"]["name"].upper().replace("-", "_")
        env[f"{name}_SERVICE_HOST"] = ip
        env[f"{name}_SERVICE_PORT"] = str(ports[0].get("port"))
        for port in ports:
            if port.get("name"):
                key = port["name"].upper().replace("-", "_")
                env[f"{name}_SERVICE_PORT_{key}"] = str(port.get("port"))
        first = ports[0]
        env[f"{name}_PORT"] = f"{first.get('protocol', 'TCP').lower()}://{ip}:{first.get('port')}"
        for port in ports:
            protocol = port.get("protocol", "TCP")
            prefix = f"{name}_PORT_{port.get('port')}_{protocol}"
            env[prefix] = f"{protocol.lower()}://{ip}:{port.get('port')}"
            env[f"{prefix}_PROTO"] = protocol.lower()
            env[f"{prefix}_PORT"] = str(port.get("port"))
            env[f"{prefix}_ADDR"] = ip
    return env


def container_env(
    pod: dict[str, Any],
    container: dict[str, Any],
    *,
    context: EnvContext,
    configmaps: Sources,
    services: list[dict[str, Any]] | None = None,
) -> dict[str, str]:
    namespace = pod.get("metadata", {}).get("namespace", "default")
    env: dict[str, str] = {}
    if pod.get("spec", {}).get("enableServiceLinks", True) and services:
        env.update(service_env(services))
    for index, source in enumerate(container.get("envFrom") or []):
        env.update(_env_from(source, namespace, configmaps, where=f"envFrom[{index}]"))
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" in var:
            value = _value_from(pod, container, var["valueFrom"], name, context, configmaps)
            if value is None:
                continue  # an optional source that is absent: the variable is not set
            env[name] = value
        else:
            env[name] = expand(var.get("value", ""), env)
    return env


def _env_from(
    source: dict[str, Any], namespace: str, sources: Sources, *, where: str
) -> dict[str, str]:
    prefix = source.get("prefix", "")
    kind = "secret" if "secretRef" in source else "configmap"
    ref = source.get("secretRef" if kind == "secret" else "configMapRef") or {}
    name = ref.get("name", "")
    obj = _lookup(sources, kind, namespace, name)
    if obj is None:
        if ref.get("optional"):
            return {}
        raise EnvError(f'{kind} "{name}" not found')
    out = {}
    for key, value in object_data(kind, obj).items():
        if _ENV_NAME.match(prefix + key):
            out[prefix + key] = value
    return out


def _value_from(
    pod: dict[str, Any],
    container: dict[str, Any],
    source: dict[str, Any],
    name: str,
    context: EnvContext,
    sources: Sources,
) -> str | None:
    if "configMapKeyRef" in source:
        return _key_ref(pod, "configmap", source["configMapKeyRef"], sources)
    if "secretKeyRef" in source:
        return _key_ref(pod, "secret", source["secretKeyRef"], sources)
    if "fieldRef" in source:
        return field_value(pod, source["fieldRef"].get("fieldPath", ""), context)
    if "resourceFieldRef" in source:
        return resource_value(pod, container, source["resourceFieldRef"], context)
    raise EnvError(f"env {name}: valueFrom names no source")


def _key_ref(pod: dict[str, Any], kind: str, ref: dict[str, Any], sources: Sources) -> str | None:
    namespace = pod.get("metadata", {}).get("namespace", "default")
    name, key = ref.get("name", ""), ref.get("key", "")
    obj = _lookup(sources, kind, namespace, name)
    if obj is None:
        if ref.get("optional"):
            return None
        raise EnvError(f'{kind} "{name}" not found')
    data = object_data(kind, obj)
    if key not in data:
        if ref.get("optional"):
            return None
        label = "Secret" if kind == "secret" else "ConfigMap"
        raise EnvError(f"couldn't find key {key} in {label} {namespace}/{name}")
    return data[key]


def field_value(pod: dict[str, Any], path: str, context: EnvContext) -> str:
    meta, spec = pod.get("metadata", {}), pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": context.pod_ips[0] if context.pod_ips else "",
        "status.podIPs": ",".join(context.pod_ips),
        "status.hostIP": context.host_ips[0] if context.host_ips else "",
        "status.hostIPs": ",".join(context.host_ips),
    }
    if path in simple:
        return simple[path]
    match = _SUBSCRIPT.match(path)
    if match:
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise EnvError(f"fieldRef {path!r} is not a supported field")


def resource_value(
    pod: dict[str, Any], container: dict[str, Any], ref: dict[str, Any], context: EnvContext
) -> str:
    target: dict[str, Any] | None = container
    if ref.get("containerName"):
        target = next(
            (
                c
                for c in (pod["spec"].get("containers") or [])
                + (pod["spec"].get("initContainers") or [])
                if c.get("name") == ref["containerName"]
            ),
            None,
        )
        if target is None:
            raise EnvError(f"resourceFieldRef: no container named {ref['containerName']!r}")
    resource = ref.get("resource", "")
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or name not in ("cpu", "memory", "ephemeral-storage"):
        raise EnvError(f"resourceFieldRef: unsupported resource {resource!r}")
    assert target is not None
    amounts = (target.get("resources") or {}).get(kind) or {}
    if name in amounts:
        amount = quantity.parse_quantity(amounts[name])
    elif kind == "limits":
        amount = {
            "cpu": Fraction(context.node_cpu_millis, 1000),
            "memory": Fraction(context.node_memory_bytes),
            "ephemeral-storage": Fraction(context.node_ephemeral_bytes),
        }[name]
    else:
        amount = Fraction(0)
    divisor = quantity.parse_quantity(ref.get("divisor") or "1")
    if divisor <= 0:
        raise EnvError(f"resourceFieldRef {resource}: divisor must be positive")
    return str(math.ceil(amount / divisor))
