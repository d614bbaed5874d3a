"""The DNS server's view of Services and Endpoints, updated by the informer wiring.

Each upsert parses the API object into a small value (refusing a malformed
one with InvalidObject, which names the object and field, and keeping the
previous value); lookups read these values directly, so an answer always
reflects the latest change the informers delivered. Only ready addresses of
Endpoints are kept: a name never resolves to a Pod that fails its readiness
probe. `serial` counts changes and becomes the zone's SOA serial.

Everything runs on the event loop thread: the informers and the server share
it, so no locking is needed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
KINDS = ("Service", "Endpoints")
Key = tuple[str, str]


class InvalidObject(ValueError):
    """An API object the DNS server cannot serve, with the object and field named."""


@dataclasses.dataclass(frozen=True)
class Port:
    name: str
    protocol: str
    port: int


@dataclasses.dataclass(frozen=True)
class DnsService:
    """cluster_ip is None for a headless Service; external_name set for type ExternalName."""

    namespace: str
    name: str
    cluster_ip: str | None
    ports: tuple[Port, ...] = ()
    external_name: str | None = None

    @property
    def headless(self) -> bool:
        return self.cluster_ip is None and self.external_name is None


@dataclasses.dataclass(frozen=True)
class DnsEndpoint:
    """One ready address; `label` is its name under the Service: hostname, or the dashed IP."""

    ip: str
    hostname: str | None
    ports: tuple[Port, ...]

    @property
    def label(self) -> str:
        return self.hostname or self.ip.replace(".", "-")


class ClusterRecords:
    def __init__(self) -> None:
        self._services: dict[Key, DnsService] = {}
        self._endpoints: dict[Key, tuple[DnsEndpoint, ...]] = {}
        self._namespaces: Counter[str] = Counter()
        self.serial = 1

    # Changes from the informers; each returns whether the view changed.

    def upsert_service(self, obj: Mapping[str, Any]) -> bool:
        svc = parse_service(obj)
        key = (svc.namespace, svc.name)
        old = self._services.get(key)
        if old == svc:
            return False
        if old is None:
            self._namespaces[svc.namespace] += 1
        self._services[key] = svc
        return self._changed()

    def delete_service(self, obj: Mapping[str, Any]) -> bool:
        key = _identity(obj, "Service")
        if self._services.pop(key, None) is None:
            return False
        self._namespaces[key[0]] -= 1
        if self._namespaces[key[0]] <= 0:
            del self._namespaces[key[0]]
        return self._changed()

    def upsert_endpoints(self, obj: Mapping[str, Any]) -> bool:
        key = _identity(obj, "Endpoints")
        ready = parse_endpoints(obj)
        if self._endpoints.get(key) == ready:
            return False
        self._endpoints[key] = ready
        return self._changed()

    def delete_endpoints(self, obj: Mapping[str, Any]) -> bool:
        if self._endpoints.pop(_identity(obj, "Endpoints"), None) is None:
            return False
        return self._changed()

    def apply(self, event: Mapping[str, Any]) -> bool:
        """One watch event {"type": ADDED|MODIFIED|DELETED|BOOKMARK, "object": {...}}."""
        event_type, obj = event.get("type"), event.get("object")
        if event_type == "BOOKMARK":
            return False
        if not isinstance(obj, Mapping) or obj.get("kind") not in KINDS:
            kind = obj.get("kind") if isinstance(obj, Mapping) else None
            raise InvalidObject(
                f"watch event {event_type}: object.kind: must be one of {KINDS}, got {kind!r}"
            )
        service = obj["kind"] == "Service"
        if event_type in ("ADDED", "MODIFIED"):
            return self.upsert_service(obj) if service else self.upsert_endpoints(obj)
        if event_type == "DELETED":
            return self.delete_service(obj) if service else self.delete_endpoints(obj)
        raise InvalidObject(
            f"watch event: type: must be ADDED, MODIFIED, DELETED or BOOKMARK, got {event_type!r}"
        )

    # Lookups for the zone.

    def service(self, namespace: str, name: str) -> DnsService | None:
        return self._services.get((namespace, name))

    def endpoints(self, namespace: str, name: str) -> tuple[DnsEndpoint, ...]:
        return self._endpoints.get((namespace, name), ())

    def has_namespace(self, namespace: str) -> bool:
        return namespace in self._namespaces

    def _changed(self) -> bool:
        self.serial = self.serial + 1 if self.serial < 2**32 - 1 else 1
        return True


# Parsing.


def parse_service(obj: Mapping[str, Any]) -> DnsService:
    namespace, name = _identity(obj, "Service")
    where = f"Service {namespace}/{name}"
    spec = obj.get("spec") or {}
    if not isinstance(spec, Mapping):
        raise InvalidObject(f"{where}: spec: must be an object")
    if spec.get("type") == "ExternalName":
        target = spec.get("externalName")
        if not isinstance(target, str) or not _is_domain(target):
            raise InvalidObject(f"{where}: spec.externalName: not a DNS name: {target!r}")
        return DnsService(namespace, name, None, external_name=target.rstrip(".").lower())
    return DnsService(
        namespace=namespace,
        name=name,
        cluster_ip=_cluster_ip(spec.get("clusterIP"), where),
        ports=_ports(spec.get("ports"), where, "spec.ports"),
    )


def parse_endpoints(obj: Mapping[str, Any]) -> tuple[DnsEndpoint, ...]:
    """Ready addresses of every subset, sorted by address, each with its subset's ports."""
    namespace, name = _identity(obj, "Endpoints")
    where = f"Endpoints {namespace}/{name}"
    out: dict[str, DnsEndpoint] = {}
    for i, subset in enumerate(_list(obj.get("subsets"), where, "subsets")):
        if not isinstance(subset, Mapping):
            raise InvalidObject(f"{where}: subsets[{i}]: must be an object")
        ports = _ports(subset.get("ports"), where, f"subsets[{i}].ports")
        for j, addr in enumerate(_list(subset.get("addresses"), where, f"subsets[{i}].addresses")):
            path = f"subsets[{i}].addresses[{j}]"
            if not isinstance(addr, Mapping):
                raise InvalidObject(f"{where}: {path}: must be an object")
            ip = _ipv4(addr.get("ip"), where, f"{path}.ip")
            hostname = addr.get("hostname") or None
            if hostname is not None and (
                not isinstance(hostname, str) or not _LABEL.match(hostname)
            ):
                raise InvalidObject(f"{where}: {path}.hostname: not a DNS label: {hostname!r}")
            known = out.get(ip)
            merged = (known.ports if known else ()) + ports
            out[ip] = DnsEndpoint(
                ip=ip, hostname=hostname or (known.hostname if known else None), ports=merged
            )
    return tuple(out[ip] for ip in sorted(out, key=lambda a: ipaddress.IPv4Address(a)))


def _identity(obj: Mapping[str, Any], kind: str) -> Key:
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(meta, Mapping):
        raise InvalidObject(f"{kind}: metadata: missing or not an object")
    name, namespace = meta.get("name"), meta.get("namespace") or "default"
    if not isinstance(name, str) or not name:
        raise InvalidObject(f"{kind}: metadata.name: missing or empty")
    if not isinstance(namespace, str):
        raise InvalidObject(f"{kind} {name}: metadata.namespace: must be a string")
    return namespace.lower(), name.lower()


def _list(value: Any, where: str, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidObject(f"{where}: {path}: must be a list, got {type(value).__name__}")
    return value


def _ipv4(value: Any, where: str, path: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise InvalidObject(f"{where}: {path}: not an IPv4 address: {value!r}") from None


def _cluster_ip(value: Any, where: str) -> str | None:
    if value in (None, "", "None"):
        return None
    return _ipv4(value, where, "spec.clusterIP")


def _ports(value: Any, where: str, path: str) -> tuple[Port, ...]:
    out = []
    for i, raw in enumerate(_list(value, where, path)):
        if not isinstance(raw, Mapping):
            raise InvalidObject(f"{where}: {path}[{i}]: must be an object")
        number = raw.get("port")
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
            raise InvalidObject(
                f"{where}: {path}[{i}].port: must be an integer 1-65535, got {number!r}"
            )
        protocol = raw.get("protocol") or "TCP"
        if protocol not in ("TCP", "UDP", "SCTP"):
            raise InvalidObject(
                f"{where}: {path}[{i}].protocol: must be TCP, UDP or SCTP, got {protocol!r}"
            )
        out.append(Port(name=str(raw.get("name") or "").lower(), protocol=protocol, port=number))
    return tuple(out)


def _is_domain(name: str) -> bool:
    labels = name.rstrip(".").lower().split(".")
    return bool(name) and all(_LABEL.match(label) for label in labels)
