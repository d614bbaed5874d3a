"""Services and Endpoints as the proxy sees them: small frozen values parsed from API objects.

The API serves Kubernetes-shaped dicts; the proxy turns each into a value once,
when the informer hands it over, and never looks at the dict again. Parsing
checks every field the rules depend on and raises InvalidObject naming the
object and the field, so that one malformed object is refused on its own
instead of breaking the rules of every other Service.

Only what the data plane needs is kept: the ClusterIP, the ports, the
session affinity of a Service; the ready addresses and ports of its Endpoints
(notReadyAddresses never receive traffic, so they are dropped here).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections.abc import Mapping
from typing import Any

PROTOCOLS = ("TCP", "UDP", "SCTP")
SERVICE_TYPES = ("ClusterIP", "NodePort")
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds, the API's default for ClientIP affinity
MAX_AFFINITY_TIMEOUT = 86400


class InvalidObject(ValueError):
    """An API object the proxy cannot program, with the object and field named."""


@dataclasses.dataclass(frozen=True)
class ServicePort:
    name: str
    protocol: str
    port: int
    node_port: int | None = None


@dataclasses.dataclass(frozen=True)
class Service:
    """A Service's data-plane view.

    cluster_ip is None for a headless Service (clusterIP: None) and for one whose
    address is not allocated yet; neither gets rules.
    """

    namespace: str
    name: str
    cluster_ip: str | None
    type: str = "ClusterIP"
    ports: tuple[ServicePort, ...] = ()
    affinity_timeout: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True)
class EndpointPort:
    name: str
    port: int
    protocol: str


@dataclasses.dataclass(frozen=True)
class Endpoints:
    """Ready endpoints per Service port, merged over every subset and sorted.

    `ports` maps (port name, protocol) to (ip, port) pairs, sorted by address
    then port, as a tuple of pairs so that the value stays immutable and equal
    Endpoints compare equal whatever order the subsets listed them in.
    """

    namespace: str
    name: str
    ports: tuple[tuple[tuple[str, str], tuple[tuple[str, int], ...]], ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def ready(self, port_name: str, protocol: str) -> tuple[tuple[str, int], ...]:
        """The (ip, port) pairs serving the Service port of that name and protocol."""
        for key, pairs in self.ports:
            if key == (port_name, protocol):
                return pairs
        return ()


def parse_service(obj: Mapping[str, Any]) -> Service:
    """The data-plane view of a Service object; raises InvalidObject naming the bad field."""
    namespace, name = _identity(obj, "Service")
    where = f"Service {namespace}/{name}"
    spec = _mapping(obj.get("spec", {}), where, "spec")
    svc_type = spec.get("type") or "ClusterIP"
    if svc_type not in SERVICE_TYPES:
        raise InvalidObject(f"{where}: spec.type: must be one of {SERVICE_TYPES}, got {svc_type!r}")
    ports = tuple(
        _service_port(p, where, f"spec.ports[{i}]")
        for i, p in enumerate(_list(spec, "ports", where))
    )
    _check_unique_port_names(ports, where)
    if svc_type != "NodePort":
        # A nodePort left on a port after the type changed back must not keep
        # a port open on every node.
        ports = tuple(dataclasses.replace(p, node_port=None) for p in ports)
    return Service(
        namespace=namespace,
        name=name,
        cluster_ip=_cluster_ip(spec.get("clusterIP"), where),
        type=svc_type,
        ports=ports,
        affinity_timeout=_affinity_timeout(spec, where),
    )


def parse_endpoints(obj: Mapping[str, Any]) -> Endpoints:
    """The ready addresses of an Endpoints object; raises InvalidObject naming the bad field."""
    namespace, name = _identity(obj, "Endpoints")
    where = f"Endpoints {namespace}/{name}"
    merged: dict[tuple[str, str], set[tuple[str, int]]] = {}
    for i, raw in enumerate(_list(obj, "subsets", where)):
        addresses, ports = _subset(raw, where, f"subsets[{i}]")
        for port in ports:
            merged.setdefault((port.name, port.protocol), set()).update(
                (ip, port.port) for ip in addresses
            )
    return Endpoints(
        namespace=namespace,
        name=name,
        ports=tuple(
            (key, tuple(sorted(pairs, key=_endpoint_order)))
            for key, pairs in sorted(merged.items())
        ),
    )


def object_key(obj: Mapping[str, Any], kind: str) -> tuple[str, str]:
    """(namespace, name) of an API object, for deletes that need nothing else."""
    return _identity(obj, kind)


# Field parsers. Each takes `where` (the object) and the field path, so that
# the error says exactly which value was refused.


def _identity(obj: Mapping[str, Any], kind: str) -> tuple[str, str]:
    if not isinstance(obj, Mapping):
        raise InvalidObject(f"{kind}: expected an object, got {type(obj).__name__}")
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        raise InvalidObject(f"{kind}: metadata: missing or not an object")
    name, namespace = meta.get("name"), meta.get("namespace") or "default"
    if not isinstance(name, str) or not name:
        raise InvalidObject(f"{kind}: metadata.name: missing or empty")
    if not isinstance(namespace, str):
        raise InvalidObject(f"{kind} {name}: metadata.namespace: must be a string")
    return namespace, name


def _mapping(value: Any, where: str, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidObject(f"{where}: {path}: must be an object, got {type(value).__name__}")
    return value


def _list(parent: Mapping[str, Any], field: str, where: str, path: str = "") -> list[Any]:
    value = parent.get(field) or []
    if not isinstance(value, list):
        name = f"{path}.{field}" if path else field
        raise InvalidObject(f"{where}: {name}: must be a list, got {type(value).__name__}")
    return value


def _port_number(value: Any, where: str, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidObject(f"{where}: {path}: must be an integer 1-65535, got {value!r}")
    return value


def _protocol(value: Any, where: str, path: str) -> str:
    protocol = value or "TCP"
    if protocol not in PROTOCOLS:
        raise InvalidObject(f"{where}: {path}: must be one of {PROTOCOLS}, got {protocol!r}")
    return protocol


def _ipv4(value: Any, where: str, path: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise InvalidObject(f"{where}: {path}: not an IPv4 address: {value!r}") from None


def _cluster_ip(value: Any, where: str) -> str | None:
    if value in (None, "", "None"):
        return None
    return _ipv4(value, where, "spec.clusterIP")


def _service_port(raw: Any, where: str, path: str) -> ServicePort:
    port = _mapping(raw, where, path)
    name = port.get("name") or ""
    if not isinstance(name, str):
        raise InvalidObject(f"{where}: {path}.name: must be a string, got {name!r}")
    node_port = port.get("nodePort")
    return ServicePort(
        name=name,
        protocol=_protocol(port.get("protocol"), where, f"{path}.protocol"),
        port=_port_number(port.get("port"), where, f"{path}.port"),
        node_port=_port_number(node_port, where, f"{path}.nodePort") if node_port else None,
    )


def _check_unique_port_names(ports: tuple[ServicePort, ...], where: str) -> None:
    seen: set[tuple[str, str]] = set()
    for i, port in enumerate(ports):
        if (port.name, port.protocol) in seen:
            raise InvalidObject(
                f"{where}: spec.ports[{i}].name: {port.name!r}/{port.protocol} is listed twice"
            )
        seen.add((port.name, port.protocol))


def _affinity_timeout(spec: Mapping[str, Any], where: str) -> int | None:
    affinity = spec.get("sessionAffinity") or "None"
    if affinity == "None":
        return None
    if affinity != "ClientIP":
        raise InvalidObject(
            f"{where}: spec.sessionAffinity: must be None or ClientIP, got {affinity!r}"
        )
    config = _mapping(spec.get("sessionAffinityConfig") or {}, where, "spec.sessionAffinityConfig")
    client_ip = _mapping(config.get("clientIP") or {}, where, "sessionAffinityConfig.clientIP")
    timeout = client_ip.get("timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int):
        timeout = -1
    if not 1 <= timeout <= MAX_AFFINITY_TIMEOUT:
        raise InvalidObject(
            f"{where}: spec.sessionAffinityConfig.clientIP.timeoutSeconds: must be an integer "
            f"1-{MAX_AFFINITY_TIMEOUT}, got {client_ip.get('timeoutSeconds')!r}"
        )
    return timeout


def _endpoint_order(pair: tuple[str, int]) -> tuple[bytes, int]:
    return (socket.inet_aton(pair[0]), pair[1])


def _subset(raw: Any, where: str, path: str) -> tuple[tuple[str, ...], tuple[EndpointPort, ...]]:
    subset = _mapping(raw, where, path)
    addresses = tuple(
        _address(a, where, f"{path}.addresses[{i}]")
        for i, a in enumerate(_list(subset, "addresses", where, path))
    )
    ports = tuple(
        _endpoint_port(p, where, f"{path}.ports[{i}]")
        for i, p in enumerate(_list(subset, "ports", where, path))
    )
    return addresses, ports


def _address(raw: Any, where: str, path: str) -> str:
    return _ipv4(_mapping(raw, where, path).get("ip"), where, f"{path}.ip")


def _endpoint_port(raw: Any, where: str, path: str) -> EndpointPort:
    port = _mapping(raw, where, path)
    name = port.get("name") or ""
    if not isinstance(name, str):
        raise InvalidObject(f"{where}: {path}.name: must be a string, got {name!r}")
    return EndpointPort(
        name=name,
        port=_port_number(port.get("port"), where, f"{path}.port"),
        protocol=_protocol(port.get("protocol"), where, f"{path}.protocol"),
    )
