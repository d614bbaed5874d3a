"""The Kubelet: one object that wires the node agent's parts and runs them.

    kubelet = Kubelet(config)          # or with runtime=, puller=, network=, clock= seams
    await kubelet.start()              # serve, register, list, adopt, run
    ...
    await kubelet.stop()               # containers keep running: a new kubelet adopts them

With a kubeconfig the node's identity comes first (kubelet/certificates.py: the client
certificate, loaded or bootstrapped, and the serving certificate), as every later step
uses it. Start-up order matters for adoption: the Kubelet service starts next (its port
goes into the Node's daemonEndpoints), the Node is registered, then the informers (Pods
bound to this node by field selector spec.nodeName, Services, this Node) must have synced
before any Pod worker runs, so that a sandbox is never judged an orphan from a cache that
is still empty. Then every Pod gets a worker, once the ConfigMaps and Secrets it reads were
fetched by name (kubelet/sources.py), so that one is never judged missing for not having
been asked for; sandboxes in the runtime whose Pod is not in the API get a worker that
removes them.

Loops after start: the relist (every relist_interval, 1 s: a container that died wakes its
Pod's worker), the node status and Lease loops, usage for `kctl top`, and housekeeping
(image garbage collection above --image-gc-high, logs of deleted Pods removed after
log_retention, Pod directories nothing owns any more), and certificate rotation.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import shutil
import time
from typing import Any

from kubelet import labels as kl
from kubelet.backoff import Backoff
from kubelet.certificates import CertificateManager, configured_servers
from kubelet.config import KubeletConfig
from kubelet.cri import AsyncRuntime, PodRuntime, RuntimeSnapshot
from kubelet.dns import read_host_resolv
from kubelet.imagemanager import ImageManager
from kubelet.images import (
    GCPolicy,
    ImagePuller,
    ImageStore,
    PrometheusImageMetrics,
    collect_garbage,
)
from kubelet.metrics import KubeletMetrics
from kubelet.network import LoopbackNetwork, PodNetwork
from kubelet.node import NodeAgent
from kubelet.podworker import RETENTION_MARK, PodWorker, WorkerContext
from kubelet.probes import ProbeManager
from kubelet.runtime.interface import ContainerRuntime, ContainerState
from kubelet.server import KubeletServer, KubeletService
from kubelet.sources import DEFAULT_TTL_S, SourceRef, Sources
from kubelet.statusmanager import StatusManager
from kubelet.usage import UsageReporter
from kubelet.volumes import VolumeManager
from machinery import auth, errors
from machinery.client import ApiClient
from machinery.clock import Clock, RealClock
from machinery.events import WARNING, EventRecorder
from machinery.informer import Handlers, Informer
from machinery.log import get_logger
from machinery.registry import RegistryHosts, read_auth_file

log = get_logger("kubelet")


def registry_hosts(config: KubeletConfig) -> RegistryHosts:
    """How the puller reaches registries: credentials from --registry-auth-file, and
    --registry-ca-file for the default registry and every registry that file names."""
    credentials = (
        read_auth_file(str(config.registry_auth_file)) if config.registry_auth_file else {}
    )
    ca_files = {}
    if config.registry_ca_file is not None:
        ca_files = {r: str(config.registry_ca_file) for r in {config.registry, *credentials}}
    return RegistryHosts(
        insecure=frozenset(config.insecure_registries), credentials=credentials, ca_files=ca_files
    )


Obj = dict[str, Any]


def objects_used(pod: Obj) -> set[tuple[str, str]]:
    """The ("ConfigMap"|"Secret", name) a Pod reads, from volumes, env and envFrom."""
    spec = pod.get("spec", {})
    used: set[tuple[str, str]] = set()
    for volume in spec.get("volumes") or []:
        used.add(("ConfigMap", (volume.get("configMap") or {}).get("name", "")))
        used.add(("Secret", (volume.get("secret") or {}).get("secretName", "")))
        for source in (volume.get("projected") or {}).get("sources") or []:
            used.add(("ConfigMap", (source.get("configMap") or {}).get("name", "")))
            used.add(("Secret", (source.get("secret") or {}).get("name", "")))
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        for var in container.get("env") or []:
            source = var.get("valueFrom") or {}
            used.add(("ConfigMap", (source.get("configMapKeyRef") or {}).get("name", "")))
            used.add(("Secret", (source.get("secretKeyRef") or {}).get("name", "")))
        for source in container.get("envFrom") or []:
            used.add(("ConfigMap", (source.get("configMapRef") or {}).get("name", "")))
            used.add(("Secret", (source.get("secretRef") or {}).get("name", "")))
    return {(kind, name) for kind, name in used if name}


def sources_of(pod: Obj) -> set[SourceRef]:
    """The (kind, namespace, name) of every ConfigMap and Secret a Pod reads."""
    namespace = pod.get("metadata", {}).get("namespace", "")
    return {(kind, namespace, name) for kind, name in objects_used(pod)}


def new_runtime(config: KubeletConfig) -> ContainerRuntime:
    from kubelet.runtime.native import NativeRuntime, RuntimeOptions

    options = RuntimeOptions(state_dir=config.state_dir / "runtime", cgroup_root=config.cgroup_root)
    if config.runtime == "runc":
        from kubelet.runtime.oci import RuncRuntime

        return RuncRuntime(options)
    return NativeRuntime(options)


def runtime_view(held: PodRuntime) -> frozenset[tuple[str, str]]:
    """What a relist says of one Pod, to compare with what its worker last acted on."""
    return frozenset(
        [(c.id, c.state.value) for c in held.containers]
        + [("sandbox:" + s.id, s.state.value) for s in held.sandboxes]
    )


class Kubelet:
    def __init__(
        self,
        config: KubeletConfig,
        *,
        client: ApiClient | None = None,
        runtime: ContainerRuntime | None = None,
        store: ImageStore | None = None,
        puller: ImagePuller | None = None,
        network: PodNetwork | None = None,
        clock: Clock | None = None,
        metrics: KubeletMetrics | None = None,
        source_ttl_s: float = DEFAULT_TTL_S,
    ) -> None:
        self.config = config
        self.clock = clock or RealClock()
        self.metrics = metrics or KubeletMetrics()
        self._owns_client = client is None
        self.client = client or ApiClient(list(configured_servers(config)), timeout=15)
        # With a kubeconfig the kubelet is the node's identity: the manager puts its
        # certificate into self.client at start and keeps it (and the serving one) renewed.
        self.certificates = (
            CertificateManager(config, client=self.client, clock=self.clock)
            if config.secure
            else None
        )
        if self.certificates is not None:
            for kind in ("client", "server"):
                self.metrics.certificate_expiration.labels(kind).set_function(
                    functools.partial(self.certificates.expires_at, kind)
                )
        self._owns_runtime = runtime is None
        self.runtime = AsyncRuntime(
            runtime or new_runtime(config), self.metrics, threads=config.runtime_threads
        )
        self._owns_puller = puller is None
        self.store = store or ImageStore(config.state_dir / "images", clock=self.clock)
        self._hosts: RegistryHosts | None = None
        if puller is None:
            self._hosts = registry_hosts(config)
            puller = ImagePuller(
                self.store,
                self._hosts,
                default_registry=config.registry,
                clock=self.clock,
                metrics=PrometheusImageMetrics(self.metrics.registry),
            )
        self.puller = puller
        self.network = network or LoopbackNetwork()
        self.recorder = EventRecorder(
            self.client, component="kubelet", host=config.node_name, clock=self.clock
        )
        self.node = NodeAgent(
            self.client, config, runtime=self.runtime, network=self.network, clock=self.clock
        )
        self.pods = Informer(
            self.client,
            "pods",
            field_selector=f"spec.nodeName={config.node_name}",
            clock=self.clock,
        )
        self.pods.add_index("uid", lambda o: [o.get("metadata", {}).get("uid", "")])
        # ConfigMaps and Secrets are fetched by name, only those this node's Pods use: all
        # node restriction allows, and all a node needs (kubelet/sources.py).
        self.sources = Sources(
            self.client, clock=self.clock, ttl=source_ttl_s, changed=self._source_changed
        )
        # Pods whose ConfigMaps and Secrets are being fetched before their worker starts.
        self._fetching: dict[str, Obj] = {}
        self._fetch_tasks: set[asyncio.Task[None]] = set()
        self.service_informer = Informer(self.client, "services", clock=self.clock)
        sources = self.sources
        self.node_informer = Informer(
            self.client,
            "nodes",
            field_selector=f"metadata.name={config.node_name}",
            clock=self.clock,
        )
        self.statuses = StatusManager(
            self.client,
            clock=self.clock,
            current_pod=self._pod_by_uid,
            writers=config.status_writers,
        )
        self.probes = ProbeManager(
            self.runtime,
            clock=self.clock,
            metrics=self.metrics,
            wake=self.wake,
            event=self.recorder.event,
        )
        self.volumes = VolumeManager(config.pods_dir, sources)
        self.images = ImageManager(
            self.puller,
            self.store,
            backoff=Backoff(config.image_backoff, clock=self.clock),
            metrics=self.metrics,
            event=self.recorder.event,
            blocking=self.runtime.blocking,
        )
        self.context = WorkerContext(
            config=config,
            client=self.client,
            runtime=self.runtime,
            images=self.images,
            volumes=self.volumes,
            network=self.network,
            probes=self.probes,
            statuses=self.statuses,
            recorder=self.recorder,
            clock=self.clock,
            metrics=self.metrics,
            configmaps=sources,
            restart_backoff=Backoff(config.restart_backoff, clock=self.clock),
            node=self.node.facts,
            services=self._services_for,
            host_resolv=lambda: read_host_resolv(config.resolv_conf),
        )
        self.service = KubeletService(
            pods=self._pod_by_name,
            runtime=self.runtime,
            allowed_peer=auth.APISERVER_KUBELET_CLIENT if config.secure else "",
        )
        self.server = KubeletServer(self.service, address=config.bind_address, port=config.port)
        self.usage = UsageReporter(
            self.client,
            self.runtime,
            node_name=config.node_name,
            clock=self.clock,
            interval_s=config.usage_interval_s,
            cpus=self.node.machine.cpus,
        )
        self.workers: dict[str, PodWorker] = {}
        self._finished: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._rejected: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._previous: dict[str, tuple[str, str]] = {}
        self._synced = False
        self.started = asyncio.Event()

    # -- lookups -----------------------------------------------------------------------------

    def _pod_by_uid(self, uid: str) -> Obj | None:
        found = self.pods.by_index("uid", uid)
        return found[0] if found else None

    def _services_for(self, namespace: str) -> list[Obj]:
        """Services whose links a Pod of namespace gets: its own, and default/kubernetes."""
        services = self.service_informer.list(namespace=namespace)
        api = self.service_informer.get("kubernetes", "default")
        if api is not None and namespace != "default":
            services.append(api)
        return services

    def _pod_by_name(self, namespace: str, name: str) -> Obj | None:
        return self.pods.get(name, namespace)

    @property
    def port(self) -> int:
        return self.server.port

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        info = await self.runtime.info()
        log.info(
            "starting kubelet",
            node=self.config.node_name,
            runtime=info.name,
            cgroup_version=info.cgroup_version,
        )
        serving = None
        if self.certificates is not None:
            serving = await self.certificates.start()  # the node identity first: all else uses it
        self.node.port = await self.server.start(serving)
        await self.node.register()
        try:
            await self.node.renew_lease()  # alive for the node lifecycle controller at once
        except errors.ApiError as err:
            log.warning("failed to take the node lease, the lease loop retries", err=err)
        self.node_informer.add_handlers(
            Handlers(on_add=self.node.observe, on_update=lambda _o, n: self.node.observe(n))
        )
        informers = (self.node_informer, self.service_informer, self.pods)
        for informer in informers:
            informer.start()
        await asyncio.gather(*(informer.wait_synced() for informer in informers))
        self.statuses.start()
        self._synced = True
        self.pods.add_handlers(
            Handlers(
                on_add=self._pod_changed,
                on_update=lambda _old, new: self._pod_changed(new),
                on_delete=self._pod_deleted,
            )
        )
        await self._adopt_orphans(await self.runtime.fresh())
        loops = [
            self._relist_forever,
            self.node.run_status,
            self.node.run_lease,
            self.usage.run,
            self._housekeeping_forever,
            self._refresh_sources_forever,
        ]
        if self.certificates is not None:
            loops.append(self.certificates.run_rotation)
        for loop in loops:
            self._tasks.append(asyncio.create_task(loop(), name=loop.__name__))
        self.started.set()
        log.info(
            "kubelet started", node=self.config.node_name, port=self.port, pods=len(self.workers)
        )

    async def stop(self) -> None:
        """Stop the kubelet itself; the containers it runs keep running."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for worker in list(self.workers.values()):
            await worker.stop()
        self.workers.clear()
        self.probes.stop_all()
        for task in list(self._fetch_tasks):
            task.cancel()
        await asyncio.gather(*self._fetch_tasks, return_exceptions=True)
        await self.sources.close()
        for informer in (self.pods, self.service_informer, self.node_informer):
            await informer.stop()
        await self.statuses.stop()
        await self.server.stop()
        try:
            await asyncio.wait_for(self.recorder.flush(), 5)
        except TimeoutError:
            pass
        if self._owns_puller:
            self.puller.close()
            if self._hosts is not None:
                self._hosts.close()
        self.runtime.close()
        if self._owns_runtime:
            self.runtime.runtime.close()
        if self._owns_client:
            await self.client.close()

    # -- dispatch -----------------------------------------------------------------------------

    def wake(self, uid: str) -> None:
        worker = self.workers.get(uid)
        if worker is not None:
            worker.wake()

    def _pod_changed(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if worker is not None:
            worker.update(pod)
            return
        if uid in self._finished or uid in self._rejected:
            return
        if uid in self._fetching:
            self._fetching[uid] = pod  # the worker starts with the latest copy
            return
        refs = sources_of(pod)
        if self.sources.fresh(refs):
            self._admit_and_spawn(uid, pod)
            return
        self._fetching[uid] = pod
        task = asyncio.get_running_loop().create_task(
            self._spawn_when_fetched(uid, refs), name=f"pod-sources-{uid[:8]}"
        )
        self._fetch_tasks.add(task)
        task.add_done_callback(self._fetch_tasks.discard)

    async def _spawn_when_fetched(self, uid: str, refs: set[SourceRef]) -> None:
        """Start a new Pod's worker once what it reads was fetched (or failed to be)."""
        await self.sources.fetch(refs)
        pod = self._fetching.pop(uid, None)
        if pod is not None and uid not in self.workers:
            self._admit_and_spawn(uid, pod)

    def _admit_and_spawn(self, uid: str, pod: Obj) -> None:
        if self._admit(pod):
            self._spawn(uid, pod)

    def _pod_deleted(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        self._rejected.discard(uid)
        self._fetching.pop(uid, None)
        worker = self.workers.get(uid)
        if worker is not None:
            worker.update(None)

    def _spawn(self, uid: str, pod: Obj | None) -> PodWorker:
        worker = PodWorker(uid, self.context, pod)
        self.workers[uid] = worker
        worker.start()
        assert worker.task is not None
        worker.task.add_done_callback(lambda _t: self._worker_done(uid, worker))
        self.metrics.pod_workers.set(len(self.workers))
        return worker

    def _worker_done(self, uid: str, worker: PodWorker) -> None:
        if self.workers.get(uid) is worker:
            del self.workers[uid]
            self._finished[uid] = None
            while len(self._finished) > 4096:
                self._finished.popitem(last=False)
        self.metrics.pod_workers.set(len(self.workers))

    def _admit(self, pod: Obj) -> bool:
        """Refuse a Pod beyond --pods, as Kubernetes does (phase Failed, reason OutOfpods)."""
        status = pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed") or pod["metadata"].get(
            "deletionTimestamp"
        ):
            return True
        snapshot = self.runtime.snapshot
        if snapshot is not None and pod["metadata"]["uid"] in snapshot.pods:
            return True  # already running here: never refuse what exists
        active = sum(
            1
            for w in self.workers.values()
            if w.pod is not None
            and (w.pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        )
        if active < self.config.max_pods:
            return True
        uid = pod["metadata"]["uid"]
        self._rejected.add(uid)
        message = "Pod was rejected: Node didn't have enough resource: pods"
        self.statuses.set(
            uid, {**status, "phase": "Failed", "reason": "OutOfpods", "message": message}
        )
        self.recorder.event(pod, WARNING, "OutOfpods", message)
        return False

    def _source_changed(self, kind: str, namespace: str, name: str) -> None:
        """A ConfigMap or Secret changed (or appeared, or went): wake the Pods that read it."""
        if not self._synced:
            return
        key = (kind, name)
        for worker in self.workers.values():
            pod = worker.pod
            if pod is None or pod["metadata"].get("namespace") != namespace:
                continue
            if key in objects_used(pod):
                worker.wake()

    async def _refresh_sources_forever(self) -> None:
        """Fetch again, once per ttl, what the Pods here use, so a change reaches them."""
        while True:
            await self.clock.sleep(self.sources.ttl)
            used: set[SourceRef] = set()
            for pod in [w.pod for w in self.workers.values()] + list(self._fetching.values()):
                if pod is not None:
                    used |= sources_of(pod)
            self.sources.retain(used)
            await self.sources.fetch(used)

    async def _adopt_orphans(self, snapshot: RuntimeSnapshot) -> None:
        """Workers that remove what the runtime holds for Pods the API no longer has."""
        for uid, held in snapshot.pods.items():
            if uid in self.workers or self._pod_by_uid(uid) is not None:
                continue
            if not held.sandboxes and not held.containers:
                continue
            log.info("removing pod no longer in the API", uid=uid)
            self._spawn(uid, None)

    # -- relist ---------------------------------------------------------------------------------

    async def _relist_forever(self) -> None:
        while True:
            await self.clock.sleep(self.config.relist_interval_s)
            try:
                snapshot = await self.runtime.fresh()
            except Exception as err:  # the runtime's own failure types and OS errors alike
                log.warning("failed to relist the runtime", err=err)
                continue
            self._notice_changes(snapshot)
            await self._adopt_orphans(snapshot)

    def _notice_changes(self, snapshot: RuntimeSnapshot) -> None:
        current: dict[str, tuple[str, str]] = {}
        running_pods = 0
        states: collections.Counter[str] = collections.Counter()
        for uid, held in snapshot.pods.items():
            if held.ready_sandbox() is not None:
                running_pods += 1
            for container in held.containers:
                current[container.id] = (uid, container.state.value)
                states[container.state.value] += 1
            for sandbox in held.sandboxes:
                current["sandbox:" + sandbox.id] = (uid, sandbox.state.value)
        changed = {
            uid for key, (uid, state) in current.items() if self._previous.get(key) != (uid, state)
        }
        changed |= {uid for key, (uid, _) in self._previous.items() if key not in current}
        self._previous = current
        for uid in changed:
            worker = self.workers.get(uid)
            # A worker that already saw exactly this (it made the change itself) is left be.
            if worker is not None and worker.seen != runtime_view(snapshot.pod(uid)):
                worker.wake()
        self.metrics.running_pods.set(running_pods)
        for state in ContainerState:
            self.metrics.running_containers.labels(state.value).set(states.get(state.value, 0))

    # -- housekeeping ---------------------------------------------------------------------------

    async def _housekeeping_forever(self) -> None:
        while True:
            await self.clock.sleep(self.config.housekeeping_interval_s)
            try:
                await self.housekeeping()
            except Exception as err:  # housekeeping must never stop the kubelet
                log.warning("housekeeping failed", err=err)

    async def housekeeping(self) -> None:
        snapshot = await self.runtime.fresh()
        await self._collect_images(snapshot)
        known = set(self.workers) | set(snapshot.pods)
        for uid in await self.runtime.blocking(self.volumes.pod_uids_on_disk):
            if uid not in known:
                await self.runtime.blocking(self.volumes.teardown, uid)
        await self.runtime.blocking(self._expire_logs, known)

    async def _collect_images(self, snapshot: RuntimeSnapshot) -> None:
        in_use = set()
        for held in snapshot.pods.values():
            for container in held.containers:
                in_use.add(container.annotations.get(kl.IMAGE, ""))
                in_use.add(container.annotations.get(kl.IMAGE_ID, ""))
        in_use.discard("")
        policy = GCPolicy(self.config.image_gc_high_percent, self.config.image_gc_low_percent)
        result = await self.runtime.blocking(
            lambda: collect_garbage(self.store, in_use=in_use, policy=policy, clock=self.clock)
        )
        if result.removed:
            log.info("removed unused images", count=len(result.removed), freed=result.freed_bytes)
        if not result.ok:
            node = {
                "kind": "Node",
                "apiVersion": "v1",
                "metadata": {"name": self.config.node_name, "uid": self.node.uid},
            }
            self.recorder.event(node, WARNING, "ImageGCFailed", result.message)

    def _expire_logs(self, known: set[str]) -> None:
        directory = self.config.log_dir
        if not directory.is_dir():
            return
        now = time.time()
        for entry in directory.iterdir():
            uid = entry.name.rsplit("_", 1)[-1]
            if uid in known or not entry.is_dir():
                continue
            mark = entry / RETENTION_MARK
            if not mark.exists():
                mark.touch()  # a Pod removed while no kubelet ran: its retention starts now
            elif now - mark.stat().st_mtime >= self.config.log_retention_s:
                shutil.rmtree(entry, ignore_errors=True)
