"""Assembles an API server: store, watch caches, registry, collector, compactor, gRPC.

The server can start before etcd answers: the caches keep retrying with
back-off and requests fail with UNAVAILABLE until etcd is back, so the API
server recovers by itself when it loses its peer.
"""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from apiserver import encryption, podsecurity
from apiserver.access import AccessService
from apiserver.auth import Authenticator, Authorizer, Gate, TokenAuthenticator
from apiserver.authz.escalation import EscalationCheck
from apiserver.garbagecollector import GarbageCollector
from apiserver.registry import SYSTEM_NAMESPACES, Registry
from apiserver.service import SERVICE_NAME, ObjectService
from apiserver.serviceip import DEFAULT_NODE_PORT_RANGE, DEFAULT_SERVICE_CIDR, ServiceAllocator
from apiserver.store import EtcdStore, Store, StoreError
from apiserver.streams import StreamService
from apiserver.watchcache import WatchCache
from machinery import errors, kinds
from machinery.api import access_pb2, access_pb2_grpc, api_pb2, streams_pb2, streams_pb2_grpc
from machinery.clock import Clock, RealClock, parse_rfc3339
from machinery.log import get_logger
from machinery.pki import KeyPair

log = get_logger("apiserver")

MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ServingTLS:
    """The server's certificate, and the CA whose client certificates it trusts."""

    serving: KeyPair
    client_ca: bytes
    # The API server's client certificate towards kubelets (logs, exec), and the CA
    # their serving certificates are checked against.
    kubelet_client: KeyPair | None = None
    kubelet_ca: bytes = b""


@dataclasses.dataclass
class ServerConfig:
    etcd_endpoints: list[str]
    listen: str = "127.0.0.1:6443"  # comma-separated for several addresses
    prefix: str = "/registry"
    watch_cache_capacity: int = 10_000
    bookmark_interval: float = 30.0
    # Every interval, compact etcd at the revision seen one interval earlier, as
    # Kubernetes does; 0 turns compaction off.
    compaction_interval: float = 300.0
    # Events are deleted this long after they last happened, as Kubernetes' --event-ttl.
    event_ttl: float = 3600.0
    # Services' clusterIPs and nodePorts come from these (kube-apiserver's
    # --service-cluster-ip-range and --service-node-port-range).
    service_cidr: str = DEFAULT_SERVICE_CIDR
    node_port_range: str = DEFAULT_NODE_PORT_RANGE
    # Seconds between passes that free leaked Service allocations; 0 turns them off.
    service_ip_repair_interval: float = 60.0
    # Keys Secrets are encrypted with in etcd (--encryption-key-file), the write key
    # first; none: Secrets are stored in plaintext, with a warning at start.
    encryption_keys: tuple[encryption.EncryptionKey, ...] = ()
    # Pod Security level of a namespace without the pod-security.kubernetes.io/enforce
    # label (privileged, baseline or restricted); kube-system is labelled privileged.
    pod_security_default_level: str = podsecurity.BASELINE
    # Without TLS the server listens in plaintext and asks no one for credentials:
    # only for a server embedded in a trusted process. With it, `listen` requires a
    # client certificate signed by client_ca, and `token_listen` (if set) serves TLS
    # without one, for clients that authenticate with a bearer token.
    tls: ServingTLS | None = None
    token_listen: str = ""
    # A CSV file of static bearer tokens (token,user,uid,"group1,group2").
    token_auth_file: str = ""


class ApiServer:
    def __init__(
        self, config: ServerConfig, *, store: Store | None = None, clock: Clock | None = None
    ) -> None:
        self.config = config
        self._clock = clock or RealClock()
        self.store = store or EtcdStore(config.etcd_endpoints)
        sealer = encryption.transformer_for(config.encryption_keys)
        transformers = {r: sealer for r in encryption.ENCRYPTED_RESOURCES}
        self.caches = {
            k.resource: WatchCache(
                self.store,
                resource=k.resource,
                prefix=f"{config.prefix.rstrip('/')}/{k.resource}/",
                capacity=config.watch_cache_capacity,
                clock=self._clock,
                transformer=transformers.get(k.resource),
            )
            for k in kinds.KINDS
        }
        self.service_ips = ServiceAllocator(
            self.store,
            prefix=config.prefix,
            service_cidr=config.service_cidr,
            node_port_range=config.node_port_range,
            clock=self._clock,
        )
        self.registry = Registry(
            self.store,
            prefix=config.prefix,
            clock=self._clock,
            caches=self.caches,
            service_ips=self.service_ips,
            transformers=transformers,
            pod_security=podsecurity.PodSecurity(default_level=config.pod_security_default_level),
        )
        self.collector = GarbageCollector(self.registry, self.caches, clock=self._clock)
        self.gate: Gate | None = None
        if config.tls is not None:
            self.gate = Gate(Authenticator(self._token_authenticators()), self._authorizers())
        escalation = None
        if self.gate is not None:
            escalation = EscalationCheck(self.gate.authorize, self.caches, key_of=self._key_of)
        self._service = ObjectService(
            self.registry,
            self.caches,
            bookmark_interval=config.bookmark_interval,
            gate=self.gate,
            escalation=escalation,
        )
        self._streams = StreamService(
            self.registry, credentials=_kubelet_credentials(config.tls), gate=self.gate
        )
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.port = 0
        self.ready = asyncio.Event()

    async def start(self) -> None:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers((self._service.handler(),))
        streams_pb2_grpc.add_StreamsServicer_to_server(self._streams, server)
        access_pb2_grpc.add_AccessServicer_to_server(AccessService(self.gate), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (
                api_pb2.DESCRIPTOR.services_by_name["Objects"].full_name,
                streams_pb2.DESCRIPTOR.services_by_name["Streams"].full_name,
                access_pb2.DESCRIPTOR.services_by_name["Access"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        tls = self.config.tls
        for address in _addresses(self.config.listen):
            if tls is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(
                    address,
                    grpc.ssl_server_credentials(
                        [(tls.serving.key, tls.serving.cert)],
                        root_certificates=tls.client_ca,
                        require_client_auth=True,
                    ),
                )
            if port == 0:
                raise RuntimeError(f"failed to listen on {address}: address in use or invalid")
            self.port = self.port or port
        self.token_port = 0
        for address in _addresses(self.config.token_listen):
            if tls is None:
                raise RuntimeError("a token listener needs TLS: give the server a certificate")
            port = server.add_secure_port(
                address, grpc.ssl_server_credentials([(tls.serving.key, tls.serving.cert)])
            )
            if port == 0:
                raise RuntimeError(f"failed to listen on {address}: address in use or invalid")
            self.token_port = self.token_port or port
        await server.start()
        self._server = server
        for cache in self.caches.values():
            cache.start()
        if not self.config.encryption_keys:
            log.warning(
                "Secrets are stored in etcd in plaintext: no --encryption-key-file given",
                resources=",".join(encryption.ENCRYPTED_RESOURCES),
            )
        else:
            log.info(
                "encrypting at rest",
                resources=",".join(encryption.ENCRYPTED_RESOURCES),
                write_key=self.config.encryption_keys[0].name,
                keys=len(self.config.encryption_keys),
            )
        self._tasks.append(asyncio.create_task(self._become_ready(), name="apiserver-ready"))
        if self.config.compaction_interval > 0:
            self._tasks.append(asyncio.create_task(self._compact_forever(), name="compactor"))
        if self.config.event_ttl > 0:
            self._tasks.append(asyncio.create_task(self._expire_events_forever(), name="event-ttl"))
        log.info(
            "API server listening",
            address=self.config.listen,
            port=self.port,
            etcd=",".join(self.config.etcd_endpoints),
        )

    def _token_authenticators(self) -> list[TokenAuthenticator]:
        """Bootstrap tokens and ServiceAccount tokens from the Secrets cache, then the
        static token file if one is configured (read now: a bad file stops the start)."""
        from apiserver import tokens

        def key_of(resource: str, namespace: str, name: str) -> str:
            kind = kinds.by_resource(resource)
            assert kind is not None
            return self.registry.key(kind, namespace, name)

        found: list[TokenAuthenticator] = [
            tokens.BootstrapTokens(self.caches["secrets"], key_of=key_of, clock=self._clock),
            tokens.ServiceAccountTokens(
                self.caches["secrets"], self.caches["serviceaccounts"], key_of=key_of
            ),
        ]
        if self.config.token_auth_file:
            found.append(tokens.StaticTokenFile.read(self.config.token_auth_file))
        return found

    def _authorizers(self) -> list[Authorizer]:
        """The node authorizer first (it decides everything a node identity asks), then
        RBAC; both answer from the watch caches."""
        from apiserver.authz.node import NodeAuthorizer
        from apiserver.authz.rbac import RBACAuthorizer

        return [
            NodeAuthorizer(self.caches, key_of=self._key_of),
            RBACAuthorizer(self.caches, key_of=self._key_of),
        ]

    def _key_of(self, resource: str, namespace: str, name: str) -> str:
        """The watch cache key of an object, for the authorizers."""
        kind = kinds.by_resource(resource)
        assert kind is not None
        return self.registry.key(kind, namespace, name)

    async def _become_ready(self) -> None:
        """Serve health once every cache has listed, then start the collector."""
        await self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await asyncio.gather(*(c.ready.wait() for c in self.caches.values()))
        await self._ensure_system_namespaces()
        if self.gate is not None:
            # Before serving: a component that connects must find its role already there.
            # A server without TLS authorizes nobody, so it writes no policy.
            from apiserver.authz import bootstrap

            await bootstrap.reconcile(self.registry, clock=self._clock)
            await bootstrap.until_cached(self.caches, key_of=self._key_of)
        self.collector.start()
        if self.config.service_ip_repair_interval > 0:
            services = self.caches["services"]
            self._tasks.append(
                asyncio.create_task(
                    self.service_ips.repair_forever(
                        lambda: [c.obj for c in services.objects()],
                        self.config.service_ip_repair_interval,
                    ),
                    name="service-ip-repair",
                )
            )
        await self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.ready.set()
        log.info("API server ready")

    async def _ensure_system_namespaces(self) -> None:
        ns_kind = kinds.by_kind("Namespace")
        assert ns_kind is not None
        for name in SYSTEM_NAMESPACES:
            meta: dict = {"name": name}
            if name == "kube-system":  # the cluster's own components may need the node
                meta["labels"] = {podsecurity.ENFORCE_LABEL: podsecurity.PRIVILEGED}
            delay = 0.1
            while True:
                try:
                    await self.registry.create(
                        ns_kind, "", {"apiVersion": "v1", "kind": "Namespace", "metadata": {**meta}}
                    )
                    break
                except errors.AlreadyExists:
                    break
                except errors.Unavailable as err:
                    log.warning(
                        "failed to create system namespace, retrying", namespace=name, err=err
                    )
                    await self._clock.sleep(delay)
                    delay = min(delay * 2, 5)

    async def _compact_forever(self) -> None:
        interval = self.config.compaction_interval
        previous = 0
        while True:
            await self._clock.sleep(interval)
            try:
                current = await self.store.current_revision()
                if previous:
                    await self.store.compact(previous)
                    for cache in self.caches.values():
                        cache.forget_before(previous)
                    log.info("compacted etcd", revision=previous)
                previous = current
            except StoreError as err:
                log.warning("failed to compact etcd", err=err)

    async def _expire_events_forever(self) -> None:
        ttl = self.config.event_ttl
        events = kinds.by_kind("Event")
        assert events is not None
        cache = self.caches[events.resource]
        while True:
            await self._clock.sleep(min(60.0, ttl / 2))
            cutoff = self._clock.now() - ttl
            expired = [
                c.obj
                for c in list(cache.objects())
                if _last_seen(c.obj) is not None and _last_seen(c.obj) < cutoff  # type: ignore[operator]
            ]
            for event in expired:
                meta = event["metadata"]
                try:
                    await self.registry.delete(events, meta["namespace"], meta["name"])
                except errors.NotFound:
                    pass
                except errors.ApiError as err:
                    log.warning(
                        "failed to expire event", key=f"{meta['namespace']}/{meta['name']}", err=err
                    )
                    break
            if expired:
                log.debug("expired events", count=len(expired))

    async def stop(self, grace: float = 1.0) -> None:
        for task in self._tasks:
            task.cancel()
        await self.collector.stop()
        for cache in self.caches.values():
            await cache.stop()
        if self._server is not None:
            await self._server.stop(grace)
        await self._streams.close()
        await self.store.close()
        log.info("API server stopped")


def _addresses(listen: str) -> list[str]:
    return [a.strip() for a in listen.split(",") if a.strip()]


def _kubelet_credentials(tls: ServingTLS | None) -> grpc.ChannelCredentials | None:
    if tls is None or tls.kubelet_client is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=tls.kubelet_ca or tls.client_ca,
        private_key=tls.kubelet_client.key,
        certificate_chain=tls.kubelet_client.cert,
    )


def _last_seen(event: dict) -> float | None:
    stamp = (
        event.get("lastTimestamp")
        or event.get("eventTime")
        or event["metadata"].get("creationTimestamp")
    )
    try:
        return parse_rfc3339(stamp) if stamp else None
    except ValueError:
        return None
