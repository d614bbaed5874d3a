"""The kubelet's certificates: its client identity towards the API server, and the serving
certificate of its logs/exec endpoint.

Client identity, at start:
  1. --kubeconfig exists and its client certificate is signed by its CA, unexpired and
     matches its key: the kubelet uses it.
  2. Otherwise, with --bootstrap-kubeconfig (a bootstrap token user), it makes a key and a
     CertificateSigningRequest for `CN=system:node:<node>, O=system:nodes` (signer
     kubernetes.io/kube-apiserver-client-kubelet), waits until the controller manager has
     approved and signed it, writes the pair under --cert-dir and writes --kubeconfig (the
     bootstrap cluster's CA and mutual-TLS `servers`, the new pair by path). The token is
     used for that request and nothing else.
A refused token, an unreachable server or a slow approver are retried with back-off; the
kubelet never gives up on joining by itself.

Rotation: at a jittered 70-90% of a certificate's lifetime a task asks for a new one with a
new key, authenticating with the current certificate. A new client certificate goes into
the kubeconfig and the ApiClient (set_credentials: new calls and re-opened watches present
it); a new serving certificate goes to the running gRPC server through its certificate
fetcher, which gRPC consults at every handshake, so neither needs a restart. A client
certificate that expired with no replacement falls back to the bootstrap kubeconfig.
Signers backdate certificates for clock skew, so the lifetime of a certificate just
received counts from when it arrived; otherwise a short certificate would be due at once.

Files under --cert-dir (keys 0600, every file replaced atomically):
  kubelet-client-<serial>.crt/.key    client pairs; the kubeconfig names the current one
  kubelet-server-<serial>.crt/.key    serving pairs; the newest usable one is served
  kubelet-<kind>.pending.key          the key of a request still in flight
Invariants: a key is written before its certificate, and the kubeconfig is rewritten only
after both, so a crash leaves the old identity or the new one, never half of one. A
pending key is kept across restarts, so a restarted kubelet resumes waiting on the same
request (the request's name is a hash of the key) instead of filing a second one.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import pathlib
import random
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import yaml
from cryptography.hazmat.primitives import serialization

from kubelet.config import Backoff, KubeletConfig
from machinery import auth, config, errors, pki
from machinery.client import ApiClient
from machinery.clock import Clock
from machinery.credentials import Credentials
from machinery.log import get_logger
from machinery.pki import KeyPair

log = get_logger("kubelet.certificates")

CSR_RESOURCE = "certificatesigningrequests"
CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
SERVING_SIGNER = "kubernetes.io/kubelet-serving"
CLIENT_USAGES = ("digital signature", "client auth")
SERVING_USAGES = ("digital signature", "server auth")
# Where in a certificate's lifetime it is renewed, as a range for jitter.
ROTATE_FROM, ROTATE_TO = 0.7, 0.9


class CertificateError(Exception):
    """The kubelet cannot get an identity from its configuration (nothing to retry)."""


class RequestRefused(Exception):
    """A certificate signing request was denied or failed; the message says why."""


# -- what a request asks for -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CertificateSpec:
    kind: str  # "client" or "server": the file names and the log field
    signer: str
    usages: tuple[str, ...]
    subject: pki.Subject
    alt_names: tuple[str, ...] = ()


def client_spec(node: str) -> CertificateSpec:
    subject = pki.Subject(auth.node_user(node), (auth.NODES_GROUP,))
    return CertificateSpec("client", CLIENT_SIGNER, CLIENT_USAGES, subject)


def serving_spec(node: str, addresses: tuple[str, ...]) -> CertificateSpec:
    subject = pki.Subject(auth.node_user(node), (auth.NODES_GROUP,))
    return CertificateSpec("server", SERVING_SIGNER, SERVING_USAGES, subject, (*addresses, node))


def request_name(spec: CertificateSpec, key_pem: bytes) -> str:
    """A name fixed by the key and signer, so asking again for the same key finds the
    request already filed."""
    public = (
        serialization.load_pem_private_key(key_pem, password=None)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    digest = hashlib.sha256(public + spec.signer.encode()).hexdigest()[:16]
    return f"node-csr-{digest}" if spec.kind == "client" else f"node-serving-csr-{digest}"


def csr_object(spec: CertificateSpec, key_pem: bytes) -> dict[str, Any]:
    request = pki.new_csr(key_pem, spec.subject, alt_names=spec.alt_names)
    return {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": request_name(spec, key_pem)},
        "spec": {
            "request": base64.b64encode(request).decode(),
            "signerName": spec.signer,
            "usages": list(spec.usages),
        },
    }


# -- judging certificates --------------------------------------------------------------------


def unusable_reason(pair: KeyPair, ca: bytes, now: float) -> str:
    """Why pair cannot serve as an identity checked against ca at now; "" if it can."""
    try:
        not_before, not_after = pki.validity(pair.cert)
        if not pki.signed_by(pair.cert, ca):
            return "its certificate is not signed by the cluster CA"
        if not _key_matches(pair):
            return "its key does not belong to its certificate"
    except (pki.PKIError, ValueError) as err:
        return str(err)
    if now >= not_after.timestamp():
        return f"its certificate expired at {not_after.isoformat()}"
    if now < not_before.timestamp():
        return f"its certificate is not valid before {not_before.isoformat()}"
    return ""


def _key_matches(pair: KeyPair) -> bool:
    key = serialization.load_pem_private_key(pair.key, password=None)
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    cert_key = pki.load_cert(pair.cert).public_key()
    return key.public_key().public_bytes(*der) == cert_key.public_bytes(*der)


def rotation_deadline(cert_pem: bytes, *, fraction: float, received_at: float = 0.0) -> float:
    """Wall time at which to renew: fraction of the way from the start of the certificate's
    lifetime (its notBefore, or received_at if later) to its notAfter."""
    not_before, not_after = pki.validity(cert_pem)
    start = max(not_before.timestamp(), received_at)
    return start + fraction * (not_after.timestamp() - start)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """Where a request stands: signed (certificate), refused (reason), or still waiting."""

    certificate: bytes = b""
    refused: str = ""
    approved: bool = False


def outcome_of(csr: dict[str, Any]) -> Outcome:
    status = csr.get("status") or {}
    approved = False
    for cond in status.get("conditions") or []:
        if cond.get("type") in ("Denied", "Failed") and cond.get("status", "True") == "True":
            reason = cond.get("reason") or cond["type"]
            message = cond.get("message") or ""
            return Outcome(
                refused=f"{cond['type']}: {reason}" + (f": {message}" if message else "")
            )
        approved = approved or cond.get("type") == "Approved"
    if status.get("certificate"):
        return Outcome(certificate=base64.b64decode(status["certificate"]), approved=True)
    return Outcome(approved=approved)


# -- asking for a certificate ----------------------------------------------------------------


async def request_certificate(
    client: ApiClient, spec: CertificateSpec, key_pem: bytes, *, wait_s: float
) -> bytes:
    """File (or find) the request for key_pem and wait for its certificate.

    Raises RequestRefused when it is denied or failed, TimeoutError when nobody acted
    within wait_s (asking again for the same key resumes the wait), and ApiError when
    the API server refuses or cannot be reached.
    """
    obj = csr_object(spec, key_pem)
    name = obj["metadata"]["name"]
    bound = log.bind(csr=name, signer=spec.signer)
    try:
        current = await client.create(CSR_RESOURCE, obj)
        bound.info("requested certificate", subject=spec.subject.user)
    except errors.AlreadyExists:
        current = await client.get(CSR_RESOURCE, name)
        if not _same_key(current, key_pem):
            raise RequestRefused(
                f"certificate signing request {name} exists for another key"
            ) from None
        bound.info("waiting on earlier certificate request")
    async with asyncio.timeout(wait_s):
        return await _wait_issued(client, current, bound)


def _same_key(csr: dict[str, Any], key_pem: bytes) -> bool:
    try:
        filed = pki.read_csr(base64.b64decode((csr.get("spec") or {}).get("request", "")))
    except (pki.PKIError, ValueError):
        return False
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ours = serialization.load_pem_private_key(key_pem, password=None).public_key()
    return filed.public_key.public_bytes(*der) == ours.public_bytes(*der)


async def _wait_issued(client: ApiClient, csr: dict[str, Any], bound: Any) -> bytes:
    name = csr["metadata"]["name"]
    approved_seen = False
    while True:
        found = outcome_of(csr)
        if found.refused:
            raise RequestRefused(f"certificate signing request {name} was refused: {found.refused}")
        if found.certificate:
            bound.info("certificate issued")
            return found.certificate
        if found.approved and not approved_seen:
            approved_seen = True
            bound.info("certificate request approved, waiting for the signer")
        csr = await _next_version(client, csr)


async def _next_version(client: ApiClient, csr: dict[str, Any]) -> dict[str, Any]:
    """The request as it is after its next change (or as it is now, after a lost watch)."""
    name = csr["metadata"]["name"]
    try:
        async for event in client.watch(
            CSR_RESOURCE,
            field_selector=f"metadata.name={name}",
            resource_version=csr["metadata"].get("resourceVersion", ""),
        ):
            if event.type == "MODIFIED":
                return event.object
            if event.type == "DELETED":
                raise RequestRefused(f"certificate signing request {name} was deleted")
    except (errors.Expired, errors.Unavailable, errors.Timeout):
        await asyncio.sleep(1.0)  # a real pause: the server is away; the caller bounds the wait
    return await client.get(CSR_RESOURCE, name)


# -- files -----------------------------------------------------------------------------------


def write_pair(directory: pathlib.Path, kind: str, pair: KeyPair) -> tuple[pathlib.Path, ...]:
    """kubelet-<kind>-<serial>.crt/.key, the key first; returns (cert, key) paths."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    serial = format(pki.load_cert(pair.cert).serial_number, "x")[:20]
    stem = f"kubelet-{kind}-{serial}"
    key_path, cert_path = directory / f"{stem}.key", directory / f"{stem}.crt"
    pki.write_private(key_path, pair.key)
    pki.write_private(cert_path, pair.cert, mode=0o644)
    return cert_path, key_path


def read_pairs(directory: pathlib.Path, kind: str) -> list[tuple[KeyPair, pathlib.Path]]:
    """The complete pairs of kind under directory, newest notAfter first."""
    found = []
    for cert_path in directory.glob(f"kubelet-{kind}-*.crt"):
        key_path = cert_path.with_suffix(".key")
        try:
            pair = KeyPair(cert_path.read_bytes(), key_path.read_bytes())
            expires = pki.validity(pair.cert)[1]
        except (OSError, pki.PKIError):
            continue
        found.append((expires, pair, cert_path))
    found.sort(key=lambda item: item[0], reverse=True)
    return [(pair, path) for _, pair, path in found]


def remove_pairs_except(directory: pathlib.Path, kind: str, keep: pathlib.Path) -> None:
    for cert_path in directory.glob(f"kubelet-{kind}-*.crt"):
        if cert_path != keep:
            cert_path.with_suffix(".key").unlink(missing_ok=True)
            cert_path.unlink(missing_ok=True)


def pending_key(directory: pathlib.Path, kind: str) -> bytes:
    """The key of the request in flight for kind, made (and kept) if there is none."""
    path = directory / f"kubelet-{kind}.pending.key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = pki.new_key()
        pki.write_private(path, key)
        return key


def drop_pending_key(directory: pathlib.Path, kind: str) -> None:
    (directory / f"kubelet-{kind}.pending.key").unlink(missing_ok=True)


# -- the kubeconfig files --------------------------------------------------------------------


def mutual_tls_servers(path: pathlib.Path) -> list[str]:
    """The `servers` of the current context's cluster, [] if it names none: a bootstrap
    kubeconfig's token user reaches the token-servers, the certificate the kubelet gets
    reaches these."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise CertificateError(f"--bootstrap-kubeconfig {path}: cannot read it: {err}") from None
    current = data.get("current-context", "")
    context = _named(data.get("contexts"), current).get("context") or {}
    cluster = _named(data.get("clusters"), context.get("cluster", current)).get("cluster") or {}
    return [str(s) for s in cluster.get("servers") or []]


def _named(items: Any, name: str) -> dict[str, Any]:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name:
            return item
    return {}


def _absolute_files(ctx: config.Context, base: pathlib.Path) -> dict[str, str]:
    """ctx.files as absolute paths, so a kubeconfig written elsewhere still finds them."""
    return {k: str((base / pathlib.Path(v).expanduser()).resolve()) for k, v in ctx.files.items()}


def configured_servers(cfg: KubeletConfig) -> tuple[str, ...]:
    """The API servers the kubelet talks to: --server, else the kubeconfig's, else the
    bootstrap kubeconfig cluster's mutual-TLS servers."""
    if cfg.servers:
        return cfg.servers
    if cfg.kubeconfig is not None and cfg.kubeconfig.exists():
        try:
            return tuple(config.load_context(cfg.kubeconfig).servers)
        except config.ConfigError as err:
            if cfg.bootstrap_kubeconfig is None:
                raise CertificateError(f"--kubeconfig: {err}") from None
    if cfg.bootstrap_kubeconfig is not None:
        servers = mutual_tls_servers(cfg.bootstrap_kubeconfig)
        if servers:
            return tuple(servers)
        raise CertificateError(
            f"--bootstrap-kubeconfig {cfg.bootstrap_kubeconfig}: its cluster names no `servers` "
            "(the mutual-TLS addresses the node's certificate is used at, beside the "
            "token-servers); add them or give --server"
        )
    raise CertificateError("no API server: give --server, --kubeconfig or --bootstrap-kubeconfig")


# -- the manager -----------------------------------------------------------------------------


class _ServingCredentials:
    """The serving pair as gRPC's certificate fetcher hands it out: replace() stores the
    new configuration and the next handshake's fetch() takes it."""

    def __init__(self, pair: KeyPair, client_ca: bytes) -> None:
        self._client_ca = client_ca
        self._next: grpc.ServerCertificateConfiguration | None = None
        self.initial = self._configuration(pair)

    def _configuration(self, pair: KeyPair) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(pair.key, pair.cert)], root_certificates=self._client_ca
        )

    def replace(self, pair: KeyPair) -> None:
        self._next = self._configuration(pair)  # one reference swap: safe against gRPC's thread

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC on its own thread at every handshake; None keeps the current one.
        found, self._next = self._next, None
        return found

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.initial, self.fetch, require_client_authentication=True
        )


@dataclasses.dataclass
class _Held:
    """A certificate in use, and when it arrived (0: loaded from disk)."""

    pair: KeyPair
    received_at: float = 0.0
    path: pathlib.Path | None = None


class CertificateManager:
    """Gets, keeps and renews the kubelet's client and serving certificates.

    start() returns once the client identity is in the ApiClient and the serving pair is
    known; run_rotation() is the background loop (both certificates) for the kubelet's
    task list. It only ever changes credentials through the client it was given.
    """

    def __init__(
        self,
        cfg: KubeletConfig,
        *,
        client: ApiClient,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> None:
        if cfg.kubeconfig is None:
            raise CertificateError("the certificate manager needs --kubeconfig")
        self._cfg = cfg
        self._kubeconfig = cfg.kubeconfig
        self._client = client
        self._clock = clock
        self._rng = rng or random.Random()
        self._dir = cfg.pki_dir
        self._context: config.Context | None = None
        self._client_cert: _Held | None = None
        self._serving_cert: _Held | None = None
        self._serving: _ServingCredentials | None = None
        self.bootstrap_failures = 0
        self.last_error = ""
        self.rotations = {"client": 0, "server": 0}

    @property
    def client_pair(self) -> KeyPair:
        assert self._client_cert is not None, "start() first"
        return self._client_cert.pair

    @property
    def serving_pair(self) -> KeyPair:
        assert self._serving_cert is not None, "start() first"
        return self._serving_cert.pair

    @property
    def ca(self) -> bytes:
        assert self._context is not None and self._context.credentials is not None
        return self._context.credentials.ca

    async def start(self) -> grpc.ServerCredentials:
        """The client identity (loaded or bootstrapped) in use, and the serving credentials
        for the kubelet's endpoint."""
        await self._ensure_client()
        await self._ensure_serving()
        assert self._serving is not None
        return self._serving.server_credentials()

    async def run_rotation(self) -> None:
        if not self._cfg.rotate_certificates:
            return
        loops = [self._rotate_forever("client")]
        if self._cfg.tls_cert_file is None:
            loops.append(self._rotate_forever("server"))
        await asyncio.gather(*loops)

    # -- the client identity -----------------------------------------------------------------

    async def _ensure_client(self) -> None:
        reason = self._load_kubeconfig()
        if reason:
            if self._cfg.bootstrap_kubeconfig is None:
                raise CertificateError(
                    f"--kubeconfig {self._kubeconfig}: {reason}, and no --bootstrap-kubeconfig "
                    "is given to get a new certificate with"
                )
            log.info("bootstrapping node certificate", node=self._cfg.node_name, reason=reason)
            await self._retrying("bootstrap", self._bootstrap)
        assert self._context is not None and self._context.credentials is not None
        await self._client.set_credentials(self._context.credentials)
        subject = pki.subject_of(self.client_pair.cert)
        log.info("using client certificate", user=subject.user, expires=self._expiry("client"))

    def _load_kubeconfig(self) -> str:
        """Take --kubeconfig's identity; the reason it is unusable, or ""."""
        if not self._kubeconfig.exists():
            return f"{self._kubeconfig} does not exist"
        try:
            ctx = config.load_context(self._kubeconfig)
        except config.ConfigError as err:
            return str(err)
        cred = ctx.credentials
        if cred is None or not cred.cert:
            return f"{self._kubeconfig} holds no client certificate"
        reason = unusable_reason(KeyPair(cred.cert, cred.key), cred.ca, self._clock.now())
        if reason:
            return f"the client certificate in {self._kubeconfig} is unusable: {reason}"
        files = _absolute_files(ctx, self._kubeconfig.parent)
        self._context = dataclasses.replace(ctx, files=files)
        self._client_cert = _Held(KeyPair(cred.cert, cred.key))
        return ""

    async def _bootstrap(self) -> None:
        """One attempt at a node certificate with the bootstrap token."""
        path = self._cfg.bootstrap_kubeconfig
        assert path is not None
        try:
            token_ctx = config.load_context(path)
        except config.ConfigError as err:
            raise CertificateError(f"--bootstrap-kubeconfig: {err}") from None
        if token_ctx.credentials is None or not token_ctx.credentials.token:
            raise CertificateError(f"--bootstrap-kubeconfig {path}: its user holds no token")
        # The kubeconfig gets the cluster's own addresses; --server overrides them at run time.
        servers = mutual_tls_servers(path) or list(self._cfg.servers)
        if not servers:
            raise CertificateError(f"--bootstrap-kubeconfig {path}: its cluster names no `servers`")
        files = _absolute_files(token_ctx, path.parent)
        files.pop("token-file", None)
        base = config.Context(token_ctx.name, servers, token_ctx.namespace, None, files)
        async with ApiClient(token_ctx.servers, timeout=15, credentials=token_ctx.credentials) as c:
            pair = await self._obtain(c, client_spec(self._cfg.node_name))
        self._store_client(pair, base, ca=token_ctx.credentials.ca)

    def _store_client(self, pair: KeyPair, base: config.Context, *, ca: bytes) -> None:
        cert_path, key_path = write_pair(self._dir, "client", pair)
        files = {**base.files, "client-certificate": str(cert_path), "client-key": str(key_path)}
        credentials = Credentials(ca=ca, cert=pair.cert, key=pair.key)
        ctx = dataclasses.replace(base, credentials=credentials, files=files)
        config.save_context(ctx, self._kubeconfig)
        drop_pending_key(self._dir, "client")
        remove_pairs_except(self._dir, "client", cert_path)
        self._context = ctx
        self._client_cert = _Held(pair, self._clock.now(), cert_path)

    async def _obtain(self, client: ApiClient, spec: CertificateSpec) -> KeyPair:
        """A signed pair for spec through client, with the pending key of spec.kind."""
        key = pending_key(self._dir, spec.kind)
        try:
            cert = await request_certificate(client, spec, key, wait_s=self._cfg.certificate_wait_s)
        except RequestRefused:
            drop_pending_key(self._dir, spec.kind)  # the next attempt files a new request
            raise
        pair = KeyPair(cert, key)
        reason = unusable_reason(pair, self._ca_for(client), self._clock.now())
        if reason:
            drop_pending_key(self._dir, spec.kind)
            raise RequestRefused(f"the issued {spec.kind} certificate is unusable: {reason}")
        return pair

    def _ca_for(self, client: ApiClient) -> bytes:
        assert client.credentials is not None
        return client.credentials.ca

    async def _renew_client(self) -> None:
        assert self._context is not None
        if self._expired("client") and self._cfg.bootstrap_kubeconfig is not None:
            log.warning("client certificate expired, bootstrapping again", node=self._cfg.node_name)
            await self._bootstrap()
        else:
            pair = await self._obtain(self._client, client_spec(self._cfg.node_name))
            self._store_client(pair, self._context, ca=self.ca)
        assert self._context.credentials is not None
        await self._client.set_credentials(self._context.credentials)

    # -- the serving certificate -------------------------------------------------------------

    async def _ensure_serving(self) -> None:
        client_ca = self._client_ca()
        if self._cfg.tls_cert_file is not None and self._cfg.tls_private_key_file is not None:
            pair = KeyPair(
                self._cfg.tls_cert_file.read_bytes(), self._cfg.tls_private_key_file.read_bytes()
            )
            self._serving_cert = _Held(pair)
        else:
            self._serving_cert = self._usable_serving_pair()
            if self._serving_cert is None:
                await self._retrying("serving certificate", self._renew_serving)
        assert self._serving_cert is not None
        self._serving = _ServingCredentials(self._serving_cert.pair, client_ca)

    def _client_ca(self) -> bytes:
        if self._cfg.client_ca_file is not None:
            try:
                return self._cfg.client_ca_file.read_bytes()
            except OSError as err:
                raise CertificateError(f"--client-ca-file: {err}") from None
        return self.ca

    def _usable_serving_pair(self) -> _Held | None:
        now = self._clock.now()
        for pair, path in read_pairs(self._dir, "server"):
            if not unusable_reason(pair, self.ca, now):
                return _Held(pair, path=path)
        return None

    async def _renew_serving(self) -> None:
        spec = serving_spec(self._cfg.node_name, (self._cfg.node_ip,))
        pair = await self._obtain(self._client, spec)
        cert_path, _ = write_pair(self._dir, "server", pair)
        drop_pending_key(self._dir, "server")
        remove_pairs_except(self._dir, "server", cert_path)
        self._serving_cert = _Held(pair, self._clock.now(), cert_path)
        if self._serving is not None:
            self._serving.replace(pair)

    # -- rotation ----------------------------------------------------------------------------

    def _held(self, kind: str) -> _Held:
        held = self._client_cert if kind == "client" else self._serving_cert
        assert held is not None
        return held

    def _expiry(self, kind: str) -> str:
        return pki.validity(self._held(kind).pair.cert)[1].isoformat()

    def expires_at(self, kind: str) -> float:
        """When the client or server certificate held now expires; 0 if none is held."""
        held = self._client_cert if kind == "client" else self._serving_cert
        return pki.validity(held.pair.cert)[1].timestamp() if held is not None else 0.0

    def _expired(self, kind: str) -> bool:
        return self._clock.now() >= pki.validity(self._held(kind).pair.cert)[1].timestamp()

    def next_rotation(self, kind: str) -> float:
        held = self._held(kind)
        fraction = self._rng.uniform(ROTATE_FROM, ROTATE_TO)
        return rotation_deadline(held.pair.cert, fraction=fraction, received_at=held.received_at)

    async def _rotate_forever(self, kind: str) -> None:
        renew = self._renew_client if kind == "client" else self._renew_serving
        while True:
            deadline = self.next_rotation(kind)
            log.debug("next certificate rotation", kind=kind, at=deadline)
            await self._clock.sleep(deadline - self._clock.now())
            log.info("rotating certificate", kind=kind, expires=self._expiry(kind))
            # A broken bootstrap kubeconfig must not end rotation: it may be fixed in place.
            await self._retrying(f"{kind} certificate rotation", renew, fatal=())
            self.rotations[kind] += 1
            log.info("rotated certificate", kind=kind, expires=self._expiry(kind))

    async def _retrying(
        self,
        what: str,
        attempt: Callable[[], Awaitable[None]],
        *,
        fatal: tuple[type[Exception], ...] = (CertificateError,),
    ) -> None:
        """Run attempt until it succeeds: failures are logged and retried with back-off;
        only a `fatal` one (by default a CertificateError: the configuration itself is
        wrong, as found at start) stops it."""
        policy: Backoff = self._cfg.certificate_backoff
        delay = policy.initial_s
        retried = (errors.ApiError, RequestRefused, TimeoutError, pki.PKIError, OSError)
        while True:
            try:
                await attempt()
                return
            except fatal:
                raise
            except (*retried, CertificateError) as err:
                self.last_error = _describe(err)
                if what == "bootstrap":
                    self.bootstrap_failures += 1
                log.warning("certificate step failed, retrying", step=what, err=self.last_error)
            await self._clock.sleep(delay * (0.5 + self._rng.random()))
            delay = min(delay * 2, policy.maximum_s)


def _describe(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "no certificate was issued in time (is the controller manager's signer running?)"
    if isinstance(err, errors.ApiError):
        return f"{type(err).__name__}: {err.message}"
    return str(err) or type(err).__name__
