"""HollowNodes: N simulated nodes behind one API client and one Pipeline.

What each hollow node does, as a kubelet would, but with no containers:

* registers its Node (labels, capacity and allocatable, Ready and the
  pressure conditions, addresses, nodeInfo); an existing Node of the same
  name is taken over, so the tool can be restarted;
* keeps a Lease named after the node in kube-node-lease, renewed every
  lease_interval; one ticker renews a slice of the nodes every tick so that
  renewals are spread evenly over the interval;
* marks each Pod bound to it Running: podIP from its spec.podCIDR (or, until
  IPAM gives it one, from a fallback /24 chosen by the node's index), every
  container running and ready, the Pod conditions True, startTime;
* finishes a Pod marked for deletion at once (delete with grace 0), frees its
  IP when it is gone;
* posts Ready=True again when someone (the node lifecycle controller, while
  this process was stalled) set it otherwise.

Pods come from one informer on all Pods (no field selector: one watch for
the whole tool, filtered here by node name); Nodes from one informer on the
hollow label. Informer handlers only record work and submit it to the
Pipeline; a job reads the latest cached object when it runs, so a burst of
events about one Pod costs one write.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import time
from typing import Any

from hollow.pipeline import Pipeline
from machinery import errors, meta
from machinery.client import ApiClient, retry
from machinery.clock import Clock, RealClock, rfc3339, rfc3339_micro
from machinery.informer import Handlers, Informer, InformerFactory, object_key
from machinery.log import get_logger

log = get_logger("hollow")

Obj = dict[str, Any]

HOLLOW_LABEL = "kubelite.io/hollow"
LEASE_NAMESPACE = "kube-node-lease"
KUBELET_VERSION = "v1.31.0-hollow"
_MIN_TICK = 0.05  # never more than twenty ticks a second, however many nodes


@dataclasses.dataclass(frozen=True)
class HollowConfig:
    nodes: int
    prefix: str = "hollow-"
    first_index: int = 0
    cpu: str = "4"
    memory: str = "16Gi"
    max_pods: int = 110
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    lease_interval: float = 10.0
    lease_duration: int = 40
    concurrency: int = 64
    # A Node without spec.podCIDR yet takes /24 number <index> of this range.
    fallback_pod_cidr: str = "10.128.0.0/9"
    # Node <index> gets the address <index>+1 of this range as its InternalIP.
    node_ip_cidr: str = "10.64.0.0/12"

    def __post_init__(self) -> None:
        if self.nodes < 0:
            raise ValueError(f"--nodes must not be negative, got {self.nodes}")
        if self.lease_interval <= 0:
            raise ValueError(f"--lease-interval must be positive, got {self.lease_interval}")
        for flag, cidr in (
            ("--fallback-pod-cidr", self.fallback_pod_cidr),
            ("--node-ip-cidr", self.node_ip_cidr),
        ):
            try:
                ipaddress.IPv4Network(cidr)
            except ValueError as err:
                raise ValueError(f"{flag}: invalid CIDR {cidr!r}: {err}") from None


@dataclasses.dataclass
class Stats:
    registered: int = 0
    leases_renewed: int = 0
    lease_failures: int = 0
    pods_started: int = 0
    pods_finished: int = 0
    node_reposts: int = 0
    max_renew_lag: float = 0.0  # seconds from a renewal's tick to its write landing


@dataclasses.dataclass
class _Node:
    name: str
    index: int
    ip: str
    cidr: ipaddress.IPv4Network
    lease: Obj | None = None
    renewing: bool = False
    renew_due: float = 0.0
    reposting: bool = False
    used: set[str] = dataclasses.field(default_factory=set)
    cursor: int = 2  # host offset to try next: .0 is the network, .1 the bridge gateway

    def take_ip(self) -> str:
        span = self.cidr.num_addresses
        base = int(self.cidr.network_address)
        for step in range(max(span - 3, 1)):
            offset = 2 + (self.cursor - 2 + step) % max(span - 3, 1)
            ip = str(ipaddress.IPv4Address(base + offset))
            if ip not in self.used:
                self.used.add(ip)
                self.cursor = offset + 1
                return ip
        raise RuntimeError(f"node {self.name}: no free Pod IP left in {self.cidr}")


class HollowNodes:
    def __init__(
        self,
        client: ApiClient,
        config: HollowConfig,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.client = client
        self.config = config
        self.clock = clock or RealClock()
        self.stats = Stats()
        self.pipeline = Pipeline(config.concurrency, clock=self.clock)
        self._nodes: dict[str, _Node] = {}
        for i in range(config.first_index, config.first_index + config.nodes):
            name = f"{config.prefix}{i}"
            self._nodes[name] = _Node(
                name, i, _nth_address(config.node_ip_cidr, i + 1), self._fallback(i)
            )
        self._ips: dict[str, tuple[str, str]] = {}  # pod uid -> (node, ip)
        self._queued: set[str] = set()  # pod keys with a status job waiting
        self._finishing: set[str] = set()  # pod uids with a delete job waiting
        self._factory = InformerFactory(client)
        self.pods: Informer = self._factory.informer("pods")
        self.node_informer: Informer = self._factory.informer(
            "nodes", label_selector=f"{HOLLOW_LABEL}=true"
        )
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def names(self) -> list[str]:
        return list(self._nodes)

    def _fallback(self, index: int) -> ipaddress.IPv4Network:
        network = ipaddress.IPv4Network(self.config.fallback_pod_cidr)
        prefix = max(network.prefixlen, 24)
        count = 1 << (prefix - network.prefixlen)
        base = int(network.network_address) + (index % count) * (1 << (32 - prefix))
        return ipaddress.IPv4Network(f"{ipaddress.IPv4Address(base)}/{prefix}")

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Register every node and its Lease, then follow Pods and renew Leases."""
        self.pipeline.start()
        started = time.perf_counter()
        for node in self._nodes.values():
            self.pipeline.submit(functools.partial(self._register, node))
        await self.pipeline.drain()
        log.info(
            "registered hollow nodes",
            nodes=self.stats.registered,
            of=len(self._nodes),
            duration_ms=round((time.perf_counter() - started) * 1000),
        )
        self.pods.add_handlers(
            Handlers(
                on_add=self._pod_changed,
                on_update=lambda _, cur: self._pod_changed(cur),
                on_delete=self._pod_gone,
            )
        )
        self.node_informer.add_handlers(
            Handlers(on_add=self._node_changed, on_update=lambda _, cur: self._node_changed(cur))
        )
        self._factory.start()
        self._tasks.append(asyncio.create_task(self._renew_forever(), name="hollow-leases"))

    async def wait_synced(self, timeout: float | None = None) -> None:
        await self._factory.wait_synced(timeout)

    async def stop(self, *, delete: bool = False) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._factory.stop()
        if delete:
            for name in self._nodes:
                self.pipeline.submit(functools.partial(self._unregister, name))
            await self.pipeline.drain()
        await self.pipeline.stop()

    # -- registration -----------------------------------------------------------------------

    def node_object(self, node: _Node) -> Obj:
        cfg = self.config
        labels = {
            "kubernetes.io/hostname": node.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            HOLLOW_LABEL: "true",
            **cfg.labels,
        }
        resources = {"cpu": cfg.cpu, "memory": cfg.memory, "pods": str(cfg.max_pods)}
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node.name, "labels": labels},
            "spec": {},
            "status": {
                "capacity": dict(resources),
                "allocatable": dict(resources),
                "conditions": self._conditions(),
                "addresses": [
                    {"type": "InternalIP", "address": node.ip},
                    {"type": "Hostname", "address": node.name},
                ],
                "nodeInfo": {
                    "machineID": f"hollow-{node.index}",
                    "systemUUID": f"hollow-{node.index}",
                    "bootID": f"hollow-{node.index}",
                    "kernelVersion": "hollow",
                    "osImage": "kubelite hollow node",
                    "containerRuntimeVersion": "hollow://1",
                    "kubeletVersion": KUBELET_VERSION,
                    "kubeProxyVersion": KUBELET_VERSION,
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            },
        }

    def _conditions(self) -> list[Obj]:
        stamp = rfc3339(self.clock.now())
        return [
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": stamp,
            }
            for kind, status, reason, message in (
                ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
                (
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                (
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                ),
                (
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                ),
            )
        ]

    async def _register(self, node: _Node) -> None:
        async def once() -> None:
            wanted = self.node_object(node)
            try:
                registered = await self.client.create("nodes", wanted)
            except errors.AlreadyExists:
                current = await self.client.get("nodes", node.name)
                current["status"] = wanted["status"]
                registered = await self.client.update_status("nodes", current)
            self._learn_cidr(node, registered)
            node.lease = await self._ensure_lease(node)

        await retry(once, attempts=10, clock=self.clock, retry_on=(errors.Conflict,))
        self.stats.registered += 1

    async def _ensure_lease(self, node: _Node) -> Obj:
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": node.name, "namespace": LEASE_NAMESPACE},
            "spec": {
                "holderIdentity": node.name,
                "leaseDurationSeconds": self.config.lease_duration,
                "renewTime": rfc3339_micro(self.clock.now()),
            },
        }
        try:
            return await self.client.create("leases", lease)
        except errors.AlreadyExists:
            current = await self.client.get("leases", node.name, namespace=LEASE_NAMESPACE)
            current["spec"] = lease["spec"]
            return await self.client.update("leases", current)

    async def _unregister(self, name: str) -> None:
        for resource, namespace in (("nodes", ""), ("leases", LEASE_NAMESPACE)):
            try:
                await self.client.delete(resource, name, namespace=namespace)
            except errors.NotFound:
                pass

    # -- leases -----------------------------------------------------------------------------

    async def _renew_forever(self) -> None:
        nodes = list(self._nodes.values())
        if not nodes:
            return
        interval = self.config.lease_interval
        # A renewal landing half an interval late still leaves the Lease three intervals
        # of margin before the node lifecycle controller's grace period.
        slack = interval / 2
        slots = max(1, min(len(nodes), int(interval / _MIN_TICK)))
        tick = interval / slots
        buckets = [nodes[i::slots] for i in range(slots)]
        start = self.clock.monotonic()
        turn = 0
        while True:
            turn += 1
            await self.clock.sleep(start + turn * tick - self.clock.monotonic())
            for node in buckets[turn % slots]:
                if node.renewing:
                    continue  # the last renewal has not landed yet: do not pile up
                node.renewing = True
                node.renew_due = self.clock.monotonic()
                self.pipeline.submit(functools.partial(self._renew, node), slack=slack)

    async def _renew(self, node: _Node) -> None:
        try:
            lease = node.lease or await self.client.get(
                "leases", node.name, namespace=LEASE_NAMESPACE
            )
            node.lease = await self._renewed(lease)
            self.stats.leases_renewed += 1
            lag = self.clock.monotonic() - node.renew_due
            self.stats.max_renew_lag = max(self.stats.max_renew_lag, lag)
        except errors.Conflict:
            node.lease = None  # read it afresh next time
            self.stats.lease_failures += 1
        except errors.NotFound:
            node.lease = await self._ensure_lease(node)
        except errors.ApiError:
            self.stats.lease_failures += 1
            raise
        finally:
            node.renewing = False

    async def _renewed(self, lease: Obj) -> Obj:
        lease = {**lease, "spec": {**lease.get("spec", {})}}
        lease["spec"]["renewTime"] = rfc3339_micro(self.clock.now())
        return await self.client.update("leases", lease)

    # -- nodes ------------------------------------------------------------------------------

    def _learn_cidr(self, node: _Node, obj: Obj) -> None:
        cidr = (obj.get("spec") or {}).get("podCIDR")
        if cidr and str(node.cidr) != cidr:
            try:
                node.cidr = ipaddress.IPv4Network(cidr)
            except ValueError:
                return
            node.cursor = 2

    def _node_changed(self, obj: Obj) -> None:
        node = self._nodes.get(meta.name(obj))
        if node is None:
            return
        self._learn_cidr(node, obj)
        ready = meta.condition(obj, "Ready")
        if (ready or {}).get("status") != "True" and not node.reposting:
            node.reposting = True
            self.pipeline.submit(lambda: self._repost(node))

    async def _repost(self, node: _Node) -> None:
        """Post the node's conditions afresh, as a kubelet does when its status was changed."""
        try:
            for _ in range(3):
                current = await self.client.get("nodes", node.name)
                current.setdefault("status", {})["conditions"] = self._conditions()
                try:
                    await self.client.update_status("nodes", current)
                    self.stats.node_reposts += 1
                    return
                except errors.Conflict:
                    continue
        finally:
            node.reposting = False

    # -- pods -------------------------------------------------------------------------------

    def _pod_changed(self, pod: Obj) -> None:
        node = self._nodes.get((pod.get("spec") or {}).get("nodeName") or "")
        if node is None:
            return
        uid = meta.uid(pod)
        ip = (pod.get("status") or {}).get("podIP")
        if ip and uid not in self._ips:
            # Started by an earlier run of the tool: its IP is taken before any new Pod's.
            node.used.add(ip)
            self._ips[uid] = (node.name, ip)
        if meta.is_deleting(pod):
            if uid not in self._finishing:
                self._finishing.add(uid)
                self.pipeline.submit(lambda: self._finish(pod))
            return
        if _needs_start(pod):
            key = object_key(pod)
            if key not in self._queued:
                self._queued.add(key)
                self.pipeline.submit(lambda: self._start(key))

    def _pod_gone(self, pod: Obj) -> None:
        uid = meta.uid(pod)
        self._finishing.discard(uid)
        held = self._ips.pop(uid, None)
        if held is not None:
            node = self._nodes.get(held[0])
            if node is not None:
                node.used.discard(held[1])

    async def _finish(self, pod: Obj) -> None:
        try:
            await self.client.delete(
                "pods",
                meta.name(pod),
                namespace=meta.namespace(pod),
                uid=meta.uid(pod),
                grace_period_seconds=0,
            )
            self.stats.pods_finished += 1
        except (errors.NotFound, errors.Conflict):
            pass
        except errors.ApiError:
            self._finishing.discard(meta.uid(pod))  # let the next event try again
            raise

    async def _start(self, key: str) -> None:
        self._queued.discard(key)
        pod = self.pods.get_by_key(key)
        for _ in range(3):
            if pod is None or meta.is_deleting(pod) or not _needs_start(pod):
                return
            node = self._nodes.get(pod["spec"].get("nodeName", ""))
            if node is None:
                return
            updated = meta.deep_copy(pod)
            updated["status"] = self._running_status(pod, node)
            try:
                await self.client.update_status("pods", updated)
                self.stats.pods_started += 1
                return
            except errors.Conflict:
                namespace, _, name = key.partition("/")
                pod = await self.client.get("pods", name, namespace=namespace)
            except errors.NotFound:
                return

    def _pod_ip(self, pod: Obj, node: _Node) -> str:
        uid = meta.uid(pod)
        held = self._ips.get(uid)
        if held is not None:
            return held[1]
        ip = node.take_ip()
        self._ips[uid] = (node.name, ip)
        return ip

    def _running_status(self, pod: Obj, node: _Node) -> Obj:
        status = meta.deep_copy(pod.get("status") or {})
        stamp = rfc3339(self.clock.now())
        ip = self._pod_ip(pod, node)
        started = status.get("startTime") or stamp
        status.update(
            phase="Running",
            hostIP=node.ip,
            hostIPs=[{"ip": node.ip}],
            podIP=ip,
            podIPs=[{"ip": ip}],
            startTime=started,
        )
        previous = {c.get("type"): c for c in status.get("conditions") or []}
        status["conditions"] = [
            {
                "type": kind,
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": (
                    previous[kind].get("lastTransitionTime")
                    if previous.get(kind, {}).get("status") == "True"
                    else stamp
                )
                or stamp,
            }
            for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        spec = pod.get("spec") or {}
        status["containerStatuses"] = [
            _container_status(c, meta.uid(pod), started) for c in spec.get("containers") or []
        ]
        if spec.get("initContainers"):
            status["initContainerStatuses"] = [
                _init_status(c, meta.uid(pod), started) for c in spec["initContainers"]
            ]
        return status


def _needs_start(pod: Obj) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return False
    if status.get("phase") != "Running" or not status.get("podIP"):
        return True
    return any(
        (meta.condition(pod, kind) or {}).get("status") != "True"
        for kind in ("Ready", "ContainersReady")
    )


def _container_status(container: Obj, uid: str, started: str) -> Obj:
    image = container.get("image", "")
    return {
        "name": container.get("name", ""),
        "image": image,
        "imageID": f"hollow://{image}",
        "containerID": f"hollow://{uid}/{container.get('name', '')}",
        "ready": True,
        "started": True,
        "restartCount": 0,
        "state": {"running": {"startedAt": started}},
    }


def _init_status(container: Obj, uid: str, started: str) -> Obj:
    status = _container_status(container, uid, started)
    status.update(
        ready=True,
        started=False,
        state={
            "terminated": {
                "exitCode": 0,
                "reason": "Completed",
                "startedAt": started,
                "finishedAt": started,
            }
        },
    )
    return status


def _nth_address(cidr: str, n: int) -> str:
    network = ipaddress.IPv4Network(cidr)
    return str(ipaddress.IPv4Address(int(network.network_address) + n % network.num_addresses))
