"""The Endpoints controller: for each Service with a selector, where its Pods answer.

A sync of a Service computes its Endpoints from the cached Pods its selector
matches and writes the object of the same name only when it differs:

* a Pod is listed when it has a podIP, is not finished (Succeeded/Failed)
  and is not being deleted; ready Pods go under `addresses`, the others under
  `notReadyAddresses`. With spec.publishNotReadyAddresses every listed Pod,
  terminating ones included, is under `addresses`, as Kubernetes does for
  StatefulSet peer discovery;
* each Service port resolves per Pod: a numeric targetPort as is, a named one
  through the Pod's container ports of the same protocol; a Pod without that
  port name is left out of that port only;
* addresses sharing the same resolved ports form one subset, so every subset
  is a plain cross product of addresses and ports; subsets, addresses and
  ports are sorted, so the same Pods always give the same object and an
  unchanged result is never written.

Services without a selector are left alone (their Endpoints are the user's);
deleting a Service deletes its Endpoints. Triggers: Service changes, Pod
changes (the Services whose selector matched the Pod's old or new labels)
and changes to an Endpoints object made by someone else (set back).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from controllers import util
from controllers.base import QueueController, split_key
from machinery import errors, meta
from machinery.client import ApiClient
from machinery.clock import Clock
from machinery.events import WARNING, EventRecorder
from machinery.informer import Handlers, InformerFactory, object_key

Obj = dict[str, Any]


@dataclasses.dataclass(frozen=True, order=True)
class EndpointPort:
    name: str
    port: int
    protocol: str
    app_protocol: str = ""

    def as_dict(self) -> Obj:
        out: Obj = {"port": self.port, "protocol": self.protocol}
        if self.name:
            out["name"] = self.name
        if self.app_protocol:
            out["appProtocol"] = self.app_protocol
        return out


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def service_selector(service: Obj) -> dict[str, str] | None:
    """The Service's selector; None for a Service whose Endpoints are managed by hand."""
    selector = (service.get("spec") or {}).get("selector")
    return selector or None


def resolve_port(pod: Obj, service_port: Obj) -> int | None:
    """The Pod's port number for a Service port, or None when the Pod has no such port."""
    target = service_port.get("targetPort", service_port.get("port"))
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    protocol = service_port.get("protocol", "TCP")
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == target and port.get("protocol", "TCP") == protocol:
                return int(port["containerPort"])
    return None


def pod_address(pod: Obj, service: Obj) -> Obj:
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    address: Obj = {"ip": status["podIP"]}
    # A Pod with a hostname in the Service's subdomain gets a DNS name of its own.
    if spec.get("hostname") and spec.get("subdomain") == meta.name(service):
        address["hostname"] = spec["hostname"]
    if spec.get("nodeName"):
        address["nodeName"] = spec["nodeName"]
    address["targetRef"] = {
        "kind": "Pod",
        "namespace": meta.namespace(pod),
        "name": meta.name(pod),
        "uid": meta.uid(pod),
    }
    return address


def _listed(pod: Obj, publish_not_ready: bool) -> bool:
    status = pod.get("status") or {}
    if not status.get("podIP") or status.get("phase") in ("Succeeded", "Failed"):
        return False
    return publish_not_ready or not meta.is_deleting(pod)


def desired_subsets(service: Obj, pods: list[Obj]) -> list[Obj]:
    """The Endpoints subsets of a Service over the Pods its selector matches."""
    spec = service.get("spec") or {}
    publish = bool(spec.get("publishNotReadyAddresses"))
    service_ports = [p for p in spec.get("ports") or [] if isinstance(p, dict)]
    # Group addresses by the exact set of ports they serve, ready and not apart.
    groups: dict[tuple[EndpointPort, ...], tuple[dict[str, Obj], dict[str, Obj]]] = {}
    for pod in pods:
        if not _listed(pod, publish):
            continue
        ports = []
        for sp in service_ports:
            number = resolve_port(pod, sp)
            if number is not None:
                ports.append(
                    EndpointPort(
                        sp.get("name", ""),
                        number,
                        sp.get("protocol", "TCP"),
                        sp.get("appProtocol", ""),
                    )
                )
        if service_ports and not ports:
            continue
        ready, not_ready = groups.setdefault(tuple(sorted(set(ports))), ({}, {}))
        address = pod_address(pod, service)
        (ready if publish or util.is_pod_ready(pod) else not_ready)[_address_key(address)] = address
    subsets = []
    for served, (ready, not_ready) in sorted(groups.items()):
        subset: Obj = {}
        if ready:
            subset["addresses"] = [ready[k] for k in sorted(ready)]
        if not_ready:
            subset["notReadyAddresses"] = [not_ready[k] for k in sorted(not_ready)]
        if served:
            subset["ports"] = [p.as_dict() for p in served]
        subsets.append(subset)
    return subsets


def _address_key(address: Obj) -> str:
    ref = address.get("targetRef") or {}
    return f"{address['ip']}/{ref.get('name', '')}"


class EndpointsController(QueueController):
    name = "endpoints"

    def __init__(
        self,
        client: ApiClient,
        factory: InformerFactory,
        recorder: EventRecorder,
        *,
        clock: Clock | None = None,
        workers: int = 2,
    ) -> None:
        super().__init__(clock=clock, workers=workers)
        self.client = client
        self.recorder = recorder
        self.services = factory.informer("services")
        self.pods = factory.informer("pods")
        self.endpoints = factory.informer("endpoints")
        self.services.add_handlers(
            Handlers(on_add=self.enqueue, on_update=self._service_updated, on_delete=self.enqueue)
        )
        self.pods.add_handlers(
            Handlers(
                on_add=self._pod_changed,
                on_update=self._pod_updated,
                on_delete=self._pod_changed,
            )
        )
        self.endpoints.add_handlers(
            Handlers(on_update=self._endpoints_updated, on_delete=self.enqueue)
        )

    async def run(self) -> None:
        await asyncio.gather(
            self.services.synced.wait(), self.pods.synced.wait(), self.endpoints.synced.wait()
        )
        await super().run()

    # -- informer events -----------------------------------------------------------------------

    def _service_updated(self, old: Obj, cur: Obj) -> None:
        self.enqueue(cur)

    def _endpoints_updated(self, old: Obj, cur: Obj) -> None:
        if meta.resource_version(old) != meta.resource_version(cur):
            self.enqueue(cur)

    def _services_selecting(self, pod: Obj) -> list[str]:
        labels = meta.labels(pod)
        keys = []
        for service in self.services.list(namespace=meta.namespace(pod)):
            selector = service_selector(service)
            if selector is not None and selector_matches(selector, labels):
                keys.append(object_key(service))
        return keys

    def _pod_changed(self, pod: Obj) -> None:
        for key in self._services_selecting(pod):
            self.queue.add(key)

    def _pod_updated(self, old: Obj, cur: Obj) -> None:
        if _endpoint_view(old) == _endpoint_view(cur):
            return  # nothing an Endpoints object shows changed
        keys = set(self._services_selecting(cur))
        if meta.labels(old) != meta.labels(cur):
            keys.update(self._services_selecting(old))
        for key in keys:
            self.queue.add(key)

    # -- sync ----------------------------------------------------------------------------------

    async def sync(self, key: str) -> None:
        namespace, name = split_key(key)
        service = self.services.get_by_key(key)
        if service is None:
            await self._delete_endpoints(namespace, name)
            return
        selector = service_selector(service)
        if selector is None:
            return
        pods = [
            p
            for p in self.pods.list(namespace=namespace)
            if selector_matches(selector, meta.labels(p))
        ]
        subsets = desired_subsets(service, pods)
        current = self.endpoints.get_by_key(key)
        labels = dict(meta.labels(service))
        if current is None:
            await self._create(service, subsets, labels)
        elif (current.get("subsets") or []) != subsets or meta.labels(current) != labels:
            updated = meta.deep_copy(current)
            updated["subsets"] = subsets
            updated["metadata"]["labels"] = labels
            await self.client.update("endpoints", updated)
            self.log.debug("updated endpoints", key=key, subsets=len(subsets))

    async def _create(self, service: Obj, subsets: list[Obj], labels: dict[str, str]) -> None:
        obj = {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {
                "name": meta.name(service),
                "namespace": meta.namespace(service),
                "labels": labels,
            },
            "subsets": subsets,
        }
        try:
            await self.client.create("endpoints", obj)
        except errors.AlreadyExists:
            # The cache is behind: a retry reads the object and updates it.
            raise errors.Conflict(
                f"endpoints {meta.ref(service)} exists but is not cached yet"
            ) from None
        except errors.ApiError as err:
            if not isinstance(err, errors.Unavailable | errors.Timeout):
                self.recorder.event(
                    service,
                    WARNING,
                    "FailedToCreateEndpoint",
                    f"Failed to create endpoint for service {meta.ref(service)}: {err}",
                )
            raise

    async def _delete_endpoints(self, namespace: str, name: str) -> None:
        # Not only when cached: the cache may not have seen an Endpoints created just now.
        try:
            await self.client.delete("endpoints", name, namespace=namespace)
            self.log.debug("deleted endpoints of deleted service", key=f"{namespace}/{name}")
        except errors.NotFound:
            pass


def _endpoint_view(pod: Obj) -> tuple[Any, ...]:
    """The parts of a Pod an Endpoints object depends on."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    ports = [c.get("ports") for c in spec.get("containers") or []]
    return (
        meta.labels(pod),
        status.get("podIP"),
        status.get("phase"),
        util.is_pod_ready(pod),
        meta.is_deleting(pod),
        spec.get("nodeName"),
        spec.get("hostname"),
        spec.get("subdomain"),
        ports,
    )
