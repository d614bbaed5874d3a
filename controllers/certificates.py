"""Certificate signing requests: the approver and the signer of the controller manager.

The approver (CSRApprovingController) approves, without a human, exactly the
requests a node makes for itself and nothing else:

* a node client certificate (signer kubernetes.io/kube-apiserver-client-kubelet)
  whose subject is exactly CN=system:node:<x>, O=system:nodes, with no
  subject alternative names and client usages only, sent either by a
  bootstrap token (group system:bootstrappers: the node joining) or by
  system:node:<x> itself (the node renewing its own certificate);
* a kubelet serving certificate (signer kubernetes.io/kubelet-serving) sent
  by system:node:<x> for CN=system:node:<x>, O=system:nodes, naming only DNS
  names and IP addresses, with server usages only.

Anything else is left alone for an administrator (`kctl certificate approve`);
the approver never denies. Which rule fits is decided by `assess`, a pure
function returning a Verdict, so the rules are testable without a cluster.

The signer (CSRSigningController) signs Approved requests of the
kube-apiserver-client-kubelet, kubelet-serving and kube-apiserver-client
signers with the cluster CA, for min(spec.expirationSeconds, the configured
duration), and writes status.certificate. It re-checks each request against
its signer's rules first (an administrator may approve anything), and a
request it cannot sign gets a Failed condition saying why. Requests for other
signers are someone else's and are left alone.

The cleaner (CSRCleaner) deletes a request an hour after it was decided
(issued, denied or failed), a day after it was made if nobody decides, or as
soon as its certificate has expired, so a year of rotations leaves no trail.

Invariants: the approver and the signer write only through the status subresource, pinned to the
resourceVersion they read, so a second worker or a lagging informer can never
approve or sign twice; a request with a Denied or Failed condition, or a
certificate, is final.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import re
from typing import Any

from cryptography import x509

from controllers.base import QueueController
from machinery import auth, errors, pki
from machinery.client import ApiClient
from machinery.clock import Clock, parse_rfc3339, rfc3339
from machinery.events import NORMAL, WARNING, EventRecorder
from machinery.informer import Handlers, InformerFactory
from machinery.log import Logger

Obj = dict[str, Any]

KUBELET_CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
KUBELET_SERVING_SIGNER = "kubernetes.io/kubelet-serving"
APISERVER_CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client"
SIGNERS = (KUBELET_CLIENT_SIGNER, KUBELET_SERVING_SIGNER, APISERVER_CLIENT_SIGNER)

# The usages each kind of certificate may ask for; the first set's member is required.
_CLIENT_USAGES = frozenset({"client auth", "digital signature", "key encipherment"})
_SERVING_USAGES = frozenset({"server auth", "digital signature", "key encipherment"})
DEFAULT_SIGNING_DURATION = 8760 * 3600.0  # a year, as kube-controller-manager's default


# -- reading a request ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Requested:
    """A CSR object as the rules read it: who sent it, and what its PEM asks for."""

    signer: str
    usages: frozenset[str]
    username: str
    groups: tuple[str, ...]
    subject: pki.Subject
    dns_and_ip_names: tuple[str, ...]
    # Alternative names of other kinds (email, URI, ...): no node certificate has any.
    other_names: tuple[str, ...]
    expiration_seconds: int | None
    pem: bytes


def read_request(csr: Obj) -> Requested | str:
    """The request's contents, or why it cannot be read."""
    spec = csr.get("spec") or {}
    try:
        pem = base64.b64decode(spec.get("request", ""), validate=True)
        parsed = pki.read_csr(pem)
    except (binascii.Error, ValueError, TypeError):
        return "spec.request is not base64"
    except pki.PKIError as err:
        return f"spec.request: {err}"
    expiration = spec.get("expirationSeconds")
    return Requested(
        signer=spec.get("signerName", ""),
        usages=frozenset(spec.get("usages") or ()),
        username=spec.get("username", ""),
        groups=tuple(spec.get("groups") or ()),
        subject=parsed.subject,
        dns_and_ip_names=parsed.alt_names,
        other_names=_other_names(pem),
        expiration_seconds=expiration if isinstance(expiration, int) else None,
        pem=pem,
    )


def _other_names(pem: bytes) -> tuple[str, ...]:
    """Subject alternative names that are neither DNS names nor IP addresses."""
    try:
        ext = x509.load_pem_x509_csr(pem).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
    except x509.ExtensionNotFound:
        return ()
    return tuple(
        str(name.value) for name in ext.value if not isinstance(name, x509.DNSName | x509.IPAddress)
    )


def conditions(csr: Obj) -> dict[str, Obj]:
    return {
        c.get("type", ""): c
        for c in (csr.get("status") or {}).get("conditions") or []
        if isinstance(c, dict)
    }


def is_approved(csr: Obj) -> bool:
    found = conditions(csr)
    return "Approved" in found and "Denied" not in found


def is_final(csr: Obj) -> bool:
    """Denied, Failed or already issued: nobody acts on it any more."""
    found = conditions(csr)
    return (
        "Denied" in found or "Failed" in found or bool((csr.get("status") or {}).get("certificate"))
    )


# -- the rules -------------------------------------------------------------------------------


def node_client_problem(req: Requested) -> str | None:
    """Why req is not a node client certificate request; None if it is one."""
    if not req.subject.user.startswith(auth.NODE_USER_PREFIX) or req.subject.user == (
        auth.NODE_USER_PREFIX
    ):
        return f'the subject\'s common name "{req.subject.user}" is not system:node:<name>'
    if req.subject.groups != (auth.NODES_GROUP,):
        return f"the subject's organizations {list(req.subject.groups)} are not [system:nodes]"
    if req.dns_and_ip_names or req.other_names:
        return "a node client certificate names no subject alternative names"
    return _usage_problem(req.usages, _CLIENT_USAGES, "client auth")


def node_serving_problem(req: Requested) -> str | None:
    """Why req is not a kubelet serving certificate request; None if it is one."""
    if not req.subject.user.startswith(auth.NODE_USER_PREFIX) or req.subject.user == (
        auth.NODE_USER_PREFIX
    ):
        return f'the subject\'s common name "{req.subject.user}" is not system:node:<name>'
    if req.subject.groups != (auth.NODES_GROUP,):
        return f"the subject's organizations {list(req.subject.groups)} are not [system:nodes]"
    if req.other_names:
        return f"a serving certificate names only DNS names and IPs, not {list(req.other_names)}"
    if not req.dns_and_ip_names:
        return "a serving certificate must name at least one DNS name or IP address"
    return _usage_problem(req.usages, _SERVING_USAGES, "server auth")


def apiserver_client_problem(req: Requested) -> str | None:
    if not req.subject.user:
        return "the subject has no common name (the user the certificate is for)"
    return _usage_problem(req.usages, _CLIENT_USAGES, "client auth")


def _usage_problem(usages: frozenset[str], allowed: frozenset[str], required: str) -> str | None:
    if required not in usages:
        return f'the usages {sorted(usages)} lack "{required}"'
    extra = usages - allowed
    if extra:
        return f"the usages {sorted(extra)} are not allowed for this signer"
    return None


@dataclasses.dataclass(frozen=True)
class Verdict:
    """approve: the approver approves it (reason, message for the condition); otherwise
    message says why it is left for an administrator."""

    approve: bool
    reason: str = ""
    message: str = ""


def _leave(why: str) -> Verdict:
    return Verdict(False, message=why)


def assess(req: Requested) -> Verdict:
    """Whether the approver approves a request, by the rules in the module docstring."""
    if req.signer == KUBELET_CLIENT_SIGNER:
        problem = node_client_problem(req)
        if problem:
            return _leave(problem)
        if auth.BOOTSTRAPPERS_GROUP in req.groups:
            return Verdict(True, "AutoApproved", "node client certificate for a joining node")
        if req.username == req.subject.user and auth.NODES_GROUP in req.groups:
            return Verdict(True, "AutoApproved", "renewal of a node's own client certificate")
        return _leave(f'requested by "{req.username}", neither a bootstrapper nor the node')
    if req.signer == KUBELET_SERVING_SIGNER:
        problem = node_serving_problem(req)
        if problem:
            return _leave(problem)
        if req.username == req.subject.user and auth.NODES_GROUP in req.groups:
            return Verdict(True, "AutoApproved", "serving certificate of a node for itself")
        return _leave(f'requested by "{req.username}", not by the node it names')
    return _leave(f'signer "{req.signer}" is never approved automatically')


def signer_problem(req: Requested) -> str | None:
    """Why the signer refuses to sign an Approved request; None if it signs it."""
    if req.signer == KUBELET_CLIENT_SIGNER:
        return node_client_problem(req)
    if req.signer == KUBELET_SERVING_SIGNER:
        return node_serving_problem(req)
    if req.signer == APISERVER_CLIENT_SIGNER:
        return apiserver_client_problem(req)
    return f'"{req.signer}" is not a signer of this controller'


def signing_seconds(req: Requested, limit: float) -> float:
    """How long the certificate is valid: what was asked, at most limit."""
    if req.expiration_seconds is None:
        return limit
    return min(float(req.expiration_seconds), limit)


def parse_duration(text: str) -> float:
    """Seconds from a Go-style duration (8760h, 30m, 1h30m, 90s) or a plain number of seconds;
    ValueError naming the text otherwise."""
    value = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"invalid duration {text!r}: use e.g. 8760h, 30m or 90s")
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0}
    seconds = sum(float(n) * scale[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: must be positive")
    return seconds


def with_condition(csr: Obj, condition_type: str, *, reason: str, message: str, now: float) -> Obj:
    """A copy of csr with one more condition (status True, stamped now)."""
    status = dict(csr.get("status") or {})
    status["conditions"] = [
        *[c for c in status.get("conditions") or [] if c.get("type") != condition_type],
        {
            "type": condition_type,
            "status": "True",
            "reason": reason,
            "message": message,
            "lastUpdateTime": rfc3339(now),
            "lastTransitionTime": rfc3339(now),
        },
    ]
    return {**csr, "status": status}


# -- the controllers ---------------------------------------------------------------------------


class _CSRController(QueueController):
    """What both share: a CSR informer, and a sync that reads the request once."""

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
        self.csrs = factory.informer("certificatesigningrequests")
        self.csrs.add_handlers(
            Handlers(on_add=self.enqueue, on_update=lambda _, cur: self.enqueue(cur))
        )

    async def run(self) -> None:
        await self.csrs.synced.wait()
        await super().run()

    async def _write_status(self, csr: Obj) -> Obj:
        return await self.client.update_status("certificatesigningrequests", csr)


class CSRApprovingController(_CSRController):
    name = "csrapproving"

    async def sync(self, key: str) -> None:
        csr = self.csrs.get_by_key(key)
        if csr is None or is_final(csr) or "Approved" in conditions(csr):
            return
        log = self.log.bind(csr=key)
        req = read_request(csr)
        if isinstance(req, str):
            log.debug("left for an administrator", reason=req)
            return
        verdict = assess(req)
        if not verdict.approve:
            log.debug("left for an administrator", reason=verdict.message)
            return
        approved = with_condition(
            csr, "Approved", reason=verdict.reason, message=verdict.message, now=self.clock.now()
        )
        await self._write_status(approved)
        log.info("approved", user=req.subject.user, signer=req.signer, requester=req.username)
        self.recorder.event(csr, NORMAL, "Approved", f"{verdict.message}: {req.subject.user}")


class CSRSigningController(_CSRController):
    name = "csrsigning"

    def __init__(
        self,
        client: ApiClient,
        factory: InformerFactory,
        recorder: EventRecorder,
        *,
        ca: pki.KeyPair,
        duration: float = DEFAULT_SIGNING_DURATION,
        clock: Clock | None = None,
        workers: int = 2,
    ) -> None:
        super().__init__(client, factory, recorder, clock=clock, workers=workers)
        self.ca = ca
        self.duration = duration

    async def sync(self, key: str) -> None:
        csr = self.csrs.get_by_key(key)
        if csr is None or not is_approved(csr) or is_final(csr):
            return
        signer = (csr.get("spec") or {}).get("signerName", "")
        if signer not in SIGNERS:
            return  # another signer's request
        log = self.log.bind(csr=key, signer=signer)
        req = read_request(csr)
        if isinstance(req, str):
            await self._fail(csr, req, log)
            return
        problem = signer_problem(req)
        if problem is not None:
            await self._fail(csr, problem, log)
            return
        seconds = signing_seconds(req, self.duration)
        try:
            # Signing is CPU work of a few milliseconds; keep it off the event loop anyway.
            cert = await asyncio.to_thread(self._sign, req, seconds)
        except pki.PKIError as err:
            await self._fail(csr, f"failed to sign: {err}", log)
            return
        status = dict(csr.get("status") or {})
        status["certificate"] = base64.b64encode(cert).decode()
        await self._write_status({**csr, "status": status})
        not_after = pki.validity(cert)[1]
        log.info("signed", user=req.subject.user, not_after=not_after.isoformat())
        self.recorder.event(
            csr, NORMAL, "Signed", f"issued a certificate for {req.subject.user} until {not_after}"
        )

    def _sign(self, req: Requested, seconds: float) -> bytes:
        parsed = pki.read_csr(req.pem)
        return pki.sign(
            self.ca,
            parsed,
            client="client auth" in req.usages,
            server="server auth" in req.usages,
            days=seconds / 86400.0,
        )

    async def _fail(self, csr: Obj, why: str, log: Logger) -> None:
        failed = with_condition(
            csr, "Failed", reason="SignerValidationFailure", message=why, now=self.clock.now()
        )
        try:
            await self._write_status(failed)
        except errors.NotFound:
            return
        log.warning("refused to sign", reason=why)
        self.recorder.event(csr, WARNING, "SigningFailed", why)


def load_ca(cert_file: str, key_file: str) -> pki.KeyPair:
    """The signing CA from its files; ValueError naming the file that is wrong."""
    try:
        with open(cert_file, "rb") as f:
            cert = f.read()
        with open(key_file, "rb") as f:
            key = f.read()
    except OSError as err:
        raise ValueError(f"failed to read the cluster signing CA: {err}") from None
    try:
        pki.load_cert(cert)
    except pki.PKIError as err:
        raise ValueError(f"{cert_file}: {err}") from None
    ca = pki.KeyPair(cert, key)
    # Sign a throwaway request now, so a key that does not match the certificate stops the
    # start instead of failing every request later.
    try:
        probe = pki.read_csr(pki.new_csr(pki.new_key(), pki.Subject("probe")))
        issued = pki.sign(ca, probe, days=1)
    except pki.PKIError as err:
        raise ValueError(f"{key_file}: {err}") from None
    if not pki.signed_by(issued, cert):
        raise ValueError(f"{key_file} is not the key of the certificate {cert_file}")
    return ca


# -- the cleaner ----------------------------------------------------------------------------------

# How long a finished or abandoned request is kept, as kube-controller-manager keeps them.
ISSUED_TTL = 3600.0
DENIED_TTL = 3600.0
PENDING_TTL = 24 * 3600.0


def _stamp(text: Any) -> float | None:
    try:
        return parse_rfc3339(text) if isinstance(text, str) and text else None
    except ValueError:
        return None


def expires_at(csr: Obj) -> float | None:
    """When the cleaner deletes csr: an hour after it was decided (issued, denied,
    failed), a day after it was made if nobody decides, or when its certificate
    expires, whichever is first; None if its times cannot be read."""
    found = conditions(csr)
    created = _stamp((csr.get("metadata") or {}).get("creationTimestamp"))
    if created is None:
        return None
    deadline = created + PENDING_TTL
    decided = [
        _stamp(c.get("lastUpdateTime")) or created
        for t, c in found.items()
        if t in ("Denied", "Failed")
        or (t == "Approved" and (csr.get("status") or {}).get("certificate"))
    ]
    if decided:
        deadline = min(
            deadline, max(decided) + (DENIED_TTL if "Approved" not in found else ISSUED_TTL)
        )
    certificate = (csr.get("status") or {}).get("certificate")
    if isinstance(certificate, str) and certificate:
        try:
            not_after = pki.validity(base64.b64decode(certificate))[1].timestamp()
            deadline = min(deadline, not_after)
        except (ValueError, binascii.Error, pki.PKIError):
            pass
    return deadline


class CSRCleaner(_CSRController):
    """Deletes CertificateSigningRequests once nobody needs them, so every rotation of
    every node does not leave one more object behind for good."""

    name = "csrcleaner"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("workers", 1)
        super().__init__(*args, **kwargs)

    async def sync(self, key: str) -> None:
        csr = self.csrs.get_by_key(key)
        if csr is None:
            return
        deadline = expires_at(csr)
        if deadline is None:
            return
        remaining = deadline - self.clock.now()
        if remaining > 0:
            self.queue.add_after(key, remaining)
            return
        try:
            await self.client.delete(
                "certificatesigningrequests", key, uid=(csr.get("metadata") or {}).get("uid", "")
            )
        except (errors.NotFound, errors.Conflict):
            return
        self.log.info("deleted certificate signing request", csr=key)
