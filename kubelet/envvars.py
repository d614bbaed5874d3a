"""A container's environment as Kubernetes builds it, and $(VAR) expansion.

Order: every envFrom source in turn (a ConfigMap's keys, with the source's prefix; keys
that are not valid variable names are skipped), then `env` in order, later names
replacing earlier ones. A value may refer to variables defined before it as $(NAME);
`$$` is a literal `$`, and a reference to an undefined name is left as written. The same
expansion applies to command, args and subPathExpr, against the whole environment.

valueFrom sources: configMapKeyRef (optional, or EnvError naming the ConfigMap or key,
which the kubelet reports as CreateContainerConfigError), fieldRef (the Pod's own fields
from the downward API), resourceFieldRef (limits and requests in the divisor's unit; an
unset limit reads as the node's allocatable, as in Kubernetes). secretKeyRef and
secretRef fail clearly: this cluster has no Secrets yet.
"""

from __future__ import annotations

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


class ConfigMaps(Protocol):
    def configmap(self, namespace: str, name: str) -> dict[str, Any] | None: ...


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


def container_env(
    pod: dict[str, Any],
    container: dict[str, Any],
    *,
    context: EnvContext,
    configmaps: ConfigMaps,
) -> dict[str, str]:
    namespace = pod.get("metadata", {}).get("namespace", "default")
    env: dict[str, str] = {}
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
    source: dict[str, Any], namespace: str, configmaps: ConfigMaps, *, where: str
) -> dict[str, str]:
    prefix = source.get("prefix", "")
    if "secretRef" in source:
        raise EnvError(f"{where}: secretRef is not supported (this cluster has no Secrets)")
    ref = source.get("configMapRef") or {}
    name = ref.get("name", "")
    configmap = configmaps.configmap(namespace, name)
    if configmap is None:
        if ref.get("optional"):
            return {}
        raise EnvError(f'configmap "{name}" not found')
    out = {}
    for key, value in (configmap.get("data") or {}).items():
        if _ENV_NAME.match(prefix + key):
            out[prefix + key] = value
    return out


def _value_from(
    pod: dict[str, Any],
    container: dict[str, Any],
    source: dict[str, Any],
    name: str,
    context: EnvContext,
    configmaps: ConfigMaps,
) -> str | None:
    if "configMapKeyRef" in source:
        return _configmap_key(pod, source["configMapKeyRef"], configmaps)
    if "fieldRef" in source:
        return field_value(pod, source["fieldRef"].get("fieldPath", ""), context)
    if "resourceFieldRef" in source:
        return resource_value(pod, container, source["resourceFieldRef"], context)
    if "secretKeyRef" in source:
        raise EnvError(f"env {name}: secretKeyRef is not supported (this cluster has no Secrets)")
    raise EnvError(f"env {name}: valueFrom names no source")


def _configmap_key(pod: dict[str, Any], ref: dict[str, Any], configmaps: ConfigMaps) -> str | None:
    namespace = pod.get("metadata", {}).get("namespace", "default")
    name, key = ref.get("name", ""), ref.get("key", "")
    configmap = configmaps.configmap(namespace, name)
    if configmap is None:
        if ref.get("optional"):
            return None
        raise EnvError(f'configmap "{name}" not found')
    data = configmap.get("data") or {}
    if key not in data:
        if ref.get("optional"):
            return None
        raise EnvError(f"couldn't find key {key} in ConfigMap {namespace}/{name}")
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
    target = container
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
