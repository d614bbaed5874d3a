"""ClusterIP and NodePort allocation, done inside the API server's Service writes.

A Service comes back from its create with its clusterIP and nodePorts already
set, as in Kubernetes. The invariant is that no two Services ever hold the
same IP or the same node port, even with several API servers on one etcd.

Design: every allocated value is one etcd key, `<prefix>/ranges/serviceips/<ip>`
and `<prefix>/ranges/servicenodeports/<port>`, whose value names the owning
Service (namespace, name, uid). Taking a value is the store's create-if-absent,
so two API servers racing for one IP cannot both win: the loser sees KeyExists
and tries another. The set of used values each API server keeps in memory is
only a hint that saves round trips; etcd is the truth.

A write that takes values and then fails (invalid, conflict, store down) gives
them back at once. What a crash leaks between taking a value and storing the
Service, or between deleting a Service and releasing its values, the repair
pass fixes: a key whose owner is not among the Services for two passes in a
row is released (two, so that a Service being written right now is never
robbed), and a Service holding a value without a key gets its key back.

Reserved: the first address of the range belongs to the `kubernetes` Service
and the tenth to the cluster DNS Service; they are never handed out unasked,
only to a Service that requests them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import random
from collections.abc import Callable, Iterable
from typing import Any

from apiserver import store as st
from machinery import errors
from machinery.clock import Clock, RealClock
from machinery.log import get_logger

log = get_logger("apiserver.serviceip")

DEFAULT_SERVICE_CIDR = "10.96.0.0/12"
DEFAULT_NODE_PORT_RANGE = "30000-32767"
IPS, PORTS = "serviceips", "servicenodeports"
_NODE_PORT_TYPES = ("NodePort", "LoadBalancer")

Obj = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Owner:
    namespace: str
    name: str
    uid: str

    @classmethod
    def of(cls, service: Obj) -> Owner:
        meta = service.get("metadata", {})
        return cls(meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", ""))

    def encode(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Owner | None:
        try:
            data = json.loads(raw)
            return cls(str(data["namespace"]), str(data["name"]), str(data["uid"]))
        except (ValueError, KeyError, TypeError):
            return None


@dataclasses.dataclass
class Allocation:
    """What one Service write took (give back if it fails) and gave up (release once it lands)."""

    taken: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    freed: list[tuple[str, str]] = dataclasses.field(default_factory=list)


class IPRange:
    """The assignable addresses of a CIDR: the network and broadcast addresses excluded."""

    def __init__(self, cidr: str) -> None:
        try:
            network = ipaddress.ip_network(cidr, strict=True)
        except ValueError as err:
            raise ValueError(f"invalid service CIDR {cidr!r}: {err}") from None
        if not isinstance(network, ipaddress.IPv4Network):
            raise ValueError(f"invalid service CIDR {cidr!r}: only IPv4 is supported")
        if network.num_addresses < 16:
            raise ValueError(
                f"invalid service CIDR {cidr!r}: needs at least 16 addresses (a /28), "
                "room for the kubernetes and DNS addresses and some Services"
            )
        self.cidr = cidr
        self.network = network
        self._first = int(network.network_address) + 1
        self.size = network.num_addresses - 2

    def nth(self, index: int) -> str:
        return str(ipaddress.IPv4Address(self._first + index))

    def contains(self, ip: str) -> bool:
        try:
            value = int(ipaddress.IPv4Address(ip))
        except ValueError:
            return False
        return self._first <= value < self._first + self.size


class PortRange:
    def __init__(self, text: str) -> None:
        low, sep, high = text.partition("-")
        try:
            self.low, self.high = int(low), int(high if sep else low)
        except ValueError:
            raise ValueError(f"invalid node port range {text!r}: must be LOW-HIGH") from None
        if not 1 <= self.low <= self.high <= 65535:
            raise ValueError(f"invalid node port range {text!r}: must be within 1-65535")
        self.text = f"{self.low}-{self.high}"
        self.size = self.high - self.low + 1

    def nth(self, index: int) -> str:
        return str(self.low + index)

    def contains(self, port: str) -> bool:
        return port.isdigit() and self.low <= int(port) <= self.high


def needs_cluster_ip(spec: Obj) -> bool:
    return spec.get("type", "ClusterIP") != "ExternalName" and spec.get("clusterIP") != "None"


def needs_node_ports(spec: Obj) -> bool:
    svc_type = spec.get("type", "ClusterIP")
    if svc_type == "LoadBalancer":
        return spec.get("allocateLoadBalancerNodePorts", True) is not False
    return svc_type == "NodePort"


class ServiceAllocator:
    def __init__(
        self,
        store: st.Store,
        *,
        prefix: str = "/registry",
        service_cidr: str = DEFAULT_SERVICE_CIDR,
        node_port_range: str = DEFAULT_NODE_PORT_RANGE,
        rng: random.Random | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._clock = clock or RealClock()
        self._prefix = f"{prefix.rstrip('/')}/ranges"
        self.ips = IPRange(service_cidr)
        self.ports = PortRange(node_port_range)
        self._rng = rng or random.Random()
        self._used: dict[str, set[str]] = {IPS: set(), PORTS: set()}
        self._loaded = False
        self._load_lock = asyncio.Lock()
        self._suspects: set[tuple[str, str, int]] = set()

    @property
    def kubernetes_ip(self) -> str:
        """The address kept for the `kubernetes` Service: the range's first."""
        return self.ips.nth(0)

    @property
    def dns_ip(self) -> str:
        """The address kept for the cluster DNS Service: the range's tenth."""
        return self.ips.nth(9)

    def _key(self, space: str, value: str) -> str:
        return f"{self._prefix}/{space}/{value}"

    # -- create ---------------------------------------------------------------------------

    async def allocate(self, service: Obj, *, dry_run: bool = False) -> Allocation:
        """Fill in the Service's clusterIP and nodePorts, taking each value in the store.

        Requested values are checked (in range, free) and taken; missing ones are
        chosen. A dry run checks the requested values and takes nothing.
        """
        owner = Owner.of(service)
        spec = service.setdefault("spec", {})
        done = Allocation()
        try:
            if needs_cluster_ip(spec):
                await self._fill_cluster_ip(spec, owner, done, dry_run=dry_run)
            if needs_node_ports(spec):
                await self._fill_node_ports(spec, owner, done, keep=set(), dry_run=dry_run)
        except BaseException:
            await self.release(done.taken)
            raise
        return done

    async def _fill_cluster_ip(
        self, spec: Obj, owner: Owner, done: Allocation, *, dry_run: bool
    ) -> None:
        requested = spec.get("clusterIP") or ""
        if requested:
            self._check_ip(requested, owner)
            if dry_run:
                await self._check_free(IPS, requested, owner, field="spec.clusterIP")
            else:
                await self._take(IPS, requested, owner, field="spec.clusterIP")
                done.taken.append((IPS, requested))
        elif not dry_run:
            requested = await self._take_any(IPS, owner, reserved={self.kubernetes_ip, self.dns_ip})
            done.taken.append((IPS, requested))
        if requested:
            spec["clusterIP"] = requested
            spec["clusterIPs"] = [requested]

    async def _fill_node_ports(
        self, spec: Obj, owner: Owner, done: Allocation, *, keep: set[str], dry_run: bool
    ) -> None:
        """Give every port a nodePort; values in keep already belong to this Service."""
        # One node port may serve a port's TCP and UDP sides, never two of one protocol.
        mine: dict[str, set[str]] = {}
        ports = _ports(spec)
        for i, port in enumerate(ports):
            field = f"spec.ports[{i}].nodePort"
            value = str(port.get("nodePort") or "")
            if not value:
                continue
            protocol = str(port.get("protocol", "TCP"))
            if protocol in mine.get(value, set()):
                raise errors.Invalid.for_causes(
                    "Service",
                    owner.name,
                    [errors.Cause(field, "FieldValueDuplicate", f"Duplicate value: {value}")],
                )
            seen = value in mine or value in keep
            mine.setdefault(value, set()).add(protocol)
            if seen:
                continue
            if not self.ports.contains(value):
                raise _invalid(
                    owner,
                    field,
                    int(value),
                    f"provided port is not in the valid range. The range of valid ports is "
                    f"{self.ports.text}",
                )
            if dry_run:
                await self._check_free(PORTS, value, owner, field=field)
            else:
                await self._take(PORTS, value, owner, field=field)
                done.taken.append((PORTS, value))
        if dry_run:
            return
        for port in ports:
            if not port.get("nodePort"):
                value = await self._take_any(PORTS, owner, reserved=set())
                done.taken.append((PORTS, value))
                port["nodePort"] = int(value)

    def _check_ip(self, ip: str, owner: Owner) -> None:
        if not self.ips.contains(ip):
            raise _invalid(
                owner,
                "spec.clusterIP",
                ip,
                f"failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. "
                f"The range of valid IPs is {self.ips.cidr}",
            )

    # -- update ---------------------------------------------------------------------------

    async def reallocate(self, old: Obj, new: Obj, *, dry_run: bool = False) -> Allocation:
        """Carry the old Service's values into new where it omits them; take or free the rest.

        As in Kubernetes, an update need not repeat the allocated values; a change
        of type that no longer needs them drops the ones left unchanged.
        """
        owner = Owner.of(old)
        old_spec, spec = old.get("spec") or {}, new.setdefault("spec", {})
        _drop_type_dependent(old_spec, spec)
        done = Allocation()
        try:
            await self._reallocate_ip(old_spec, spec, owner, done, dry_run=dry_run)
            held = {str(p.get("nodePort")) for p in _ports(old_spec) if p.get("nodePort")}
            if needs_node_ports(spec):
                _carry_node_ports(old_spec, spec)
                await self._fill_node_ports(spec, owner, done, keep=held, dry_run=dry_run)
            wanted = {str(p.get("nodePort")) for p in _ports(spec) if p.get("nodePort")}
            done.freed.extend((PORTS, v) for v in sorted(held - wanted))
        except BaseException:
            await self.release(done.taken)
            raise
        return done

    async def _reallocate_ip(
        self, old_spec: Obj, spec: Obj, owner: Owner, done: Allocation, *, dry_run: bool
    ) -> None:
        old_ip = old_spec.get("clusterIP") or ""
        keeps_ip = spec.get("type", "ClusterIP") != "ExternalName"
        if keeps_ip and old_ip and not spec.get("clusterIP"):
            spec["clusterIP"] = old_ip
            spec["clusterIPs"] = list(old_spec.get("clusterIPs") or [old_ip])
        held = old_ip if old_ip and old_ip != "None" else ""
        if needs_cluster_ip(spec):
            # With an IP held, a different one is a change validation refuses (immutable).
            if not held:
                await self._fill_cluster_ip(spec, owner, done, dry_run=dry_run)
        elif held:
            done.freed.append((IPS, held))

    # -- taking and giving back ---------------------------------------------------------------

    async def _load(self) -> None:
        """Read every allocated value from the store into the local hint."""
        async with self._load_lock:
            fresh: dict[str, set[str]] = {IPS: set(), PORTS: set()}
            for kv in await self._list_all():
                space, _, value = kv.key.removeprefix(self._prefix + "/").partition("/")
                if space in fresh:
                    fresh[space].add(value)
            self._used = fresh
            self._loaded = True

    async def _list_all(self) -> list[st.KeyValue]:
        items: list[st.KeyValue] = []
        start = ""
        while True:
            try:
                page = await self._store.list(self._prefix + "/", limit=10_000, start=start)
            except st.StoreUnavailable as err:
                raise errors.Unavailable(str(err)) from err
            items.extend(page.items)
            if not page.more or not page.items:
                return items
            start = page.items[-1].key + "\0"

    async def _take(self, space: str, value: str, owner: Owner, *, field: str) -> None:
        try:
            await self._store.create(self._key(space, value), owner.encode())
        except st.KeyExists:
            self._used[space].add(value)
            raise _already_allocated(space, value, owner, field) from None
        except st.StoreUnavailable as err:
            raise errors.Unavailable(str(err)) from err
        self._used[space].add(value)

    async def _check_free(self, space: str, value: str, owner: Owner, *, field: str) -> None:
        try:
            await self._store.get(self._key(space, value))
        except st.KeyNotFound:
            return
        except st.StoreUnavailable as err:
            raise errors.Unavailable(str(err)) from err
        raise _already_allocated(space, value, owner, field)

    async def _take_any(self, space: str, owner: Owner, *, reserved: set[str]) -> str:
        span: IPRange | PortRange = self.ips if space == IPS else self.ports
        if not self._loaded:
            await self._load()
        for attempt in range(2):
            if attempt:
                await self._load()  # the hint may hold values others have released since
            start = self._rng.randrange(span.size)
            for i in range(span.size):
                value = span.nth((start + i) % span.size)
                if value in reserved or value in self._used[space]:
                    continue
                try:
                    await self._store.create(self._key(space, value), owner.encode())
                except st.KeyExists:
                    self._used[space].add(value)  # another API server took it
                    continue
                except st.StoreUnavailable as err:
                    raise errors.Unavailable(str(err)) from err
                self._used[space].add(value)
                return value
        what = "service IP" if space == IPS else "node port"
        text = self.ips.cidr if space == IPS else self.ports.text
        raise errors.InternalError(
            f"failed to allocate a {what} for Service {owner.namespace}/{owner.name}: "
            f"the range {text} is full",
            kind="Service",
            name=owner.name,
        )

    async def release(self, values: Iterable[tuple[str, str]], owner: Owner | None = None) -> None:
        """Give values back; with an owner, only those the store says it still holds."""
        for space, value in values:
            key = self._key(space, value)
            try:
                kv = await self._store.get(key)
                held_by = Owner.decode(kv.value)
                if owner is not None and held_by is not None and held_by.uid != owner.uid:
                    continue
                await self._store.delete(key, expected_revision=kv.mod_revision)
            except (st.KeyNotFound, st.RevisionMismatch):
                pass  # gone already, or taken again since: either way not ours to free
            except st.StoreUnavailable as err:
                raise errors.Unavailable(str(err)) from err
            self._used[space].discard(value)

    async def release_service(self, service: Obj) -> None:
        """Free what a deleted Service held."""
        await self.release(held_by(service), Owner.of(service))

    # -- repair ---------------------------------------------------------------------------

    async def repair(self, services: Iterable[Obj]) -> tuple[int, int]:
        """One repair pass against the Services as they are now: (released, restored)."""
        live: dict[tuple[str, str], Owner] = {}
        for service in services:
            for held in held_by(service):
                live.setdefault(held, Owner.of(service))
        kvs = await self._list_all()
        present: set[tuple[str, str]] = set()
        released = 0
        suspects: set[tuple[str, str, int]] = set()
        for kv in kvs:
            space, _, value = kv.key.removeprefix(self._prefix + "/").partition("/")
            present.add((space, value))
            recorded = Owner.decode(kv.value)
            holder = live.get((space, value))
            if holder is not None and (recorded is None or holder.uid == recorded.uid):
                continue
            mark = (space, value, kv.mod_revision)
            if mark in self._suspects:
                await self._release_leaked(kv, recorded)
                released += 1
            else:
                suspects.add(mark)
        self._suspects = suspects
        restored = 0
        for (space, value), holder in live.items():
            if (space, value) not in present and await self._restore(space, value, holder):
                restored += 1
        return released, restored

    async def _release_leaked(self, kv: st.KeyValue, owner: Owner | None) -> None:
        try:
            await self._store.delete(kv.key, expected_revision=kv.mod_revision)
        except (st.KeyNotFound, st.RevisionMismatch):
            return
        space, _, value = kv.key.removeprefix(self._prefix + "/").partition("/")
        self._used.get(space, set()).discard(value)
        who = f"{owner.namespace}/{owner.name}" if owner else "unknown"
        log.info("released leaked allocation", key=kv.key, owner=who)

    async def _restore(self, space: str, value: str, owner: Owner) -> bool:
        try:
            await self._store.create(self._key(space, value), owner.encode())
        except st.KeyExists:
            return False
        self._used[space].add(value)
        log.warning(
            "restored missing allocation",
            key=self._key(space, value),
            owner=f"{owner.namespace}/{owner.name}",
        )
        return True

    async def repair_forever(self, services: Callable[[], Iterable[Obj]], interval: float) -> None:
        """Repair every interval; services() gives the current Services (the watch cache)."""
        while True:
            await self._clock.sleep(interval)
            try:
                released, restored = await self.repair(list(services()))
                if released or restored:
                    log.info("repaired service allocations", released=released, restored=restored)
            except (errors.ApiError, st.StoreError) as err:
                log.warning("failed to repair service allocations", err=err)


def held_by(service: Obj) -> list[tuple[str, str]]:
    """The allocated values a stored Service holds."""
    spec = service.get("spec") or {}
    values = []
    ip = spec.get("clusterIP") or ""
    if ip and ip != "None":
        values.append((IPS, ip))
    for port in sorted({str(p["nodePort"]) for p in _ports(spec) if p.get("nodePort")}):
        values.append((PORTS, port))
    return values


def _ports(spec: Obj) -> list[Obj]:
    return [p for p in spec.get("ports") or [] if isinstance(p, dict)]


def _carry_node_ports(old_spec: Obj, spec: Obj) -> None:
    """A port the update lists without a nodePort keeps the one it had (same port, protocol)."""
    if not needs_node_ports(old_spec):
        return
    had = {
        (p.get("port"), p.get("protocol", "TCP")): p["nodePort"]
        for p in _ports(old_spec)
        if p.get("nodePort")
    }
    for port in _ports(spec):
        if not port.get("nodePort"):
            kept = had.get((port.get("port"), port.get("protocol", "TCP")))
            if kept:
                port["nodePort"] = kept


def _drop_type_dependent(old_spec: Obj, spec: Obj) -> None:
    """A type change drops the values the new type has no use for, if the user left them."""
    if needs_node_ports(old_spec) and not needs_node_ports(spec):
        had = {(p.get("port"), p.get("nodePort")) for p in _ports(old_spec)}
        for port in _ports(spec):
            if (port.get("port"), port.get("nodePort")) in had:
                port.pop("nodePort", None)
    # Fields defaulted for the old type only would make the new one invalid.
    old_type, new_type = old_spec.get("type", "ClusterIP"), spec.get("type", "ClusterIP")
    for field, types in (
        ("externalTrafficPolicy", _NODE_PORT_TYPES),
        ("allocateLoadBalancerNodePorts", ("LoadBalancer",)),
    ):
        left = field in spec and spec[field] == old_spec.get(field)
        if old_type in types and new_type not in types and left:
            spec.pop(field)
    to_external = spec.get("type") == "ExternalName" != old_spec.get("type")
    if to_external and spec.get("clusterIP") in (old_spec.get("clusterIP"), None, ""):
        spec.pop("clusterIP", None)
        spec.pop("clusterIPs", None)


def _already_allocated(space: str, value: str, owner: Owner, field: str) -> errors.Invalid:
    what = "IP" if space == IPS else "port"
    shown: Any = value if space == IPS else int(value)
    return _invalid(owner, field, shown, f"provided {what} is already allocated")


def _invalid(owner: Owner, field: str, value: Any, message: str) -> errors.Invalid:
    text = f"Invalid value: {json.dumps(value)}: {message}"
    cause = errors.Cause(field, "FieldValueInvalid", text)
    return errors.Invalid.for_causes("Service", owner.name, [cause])
