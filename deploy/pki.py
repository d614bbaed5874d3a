"""The certificates a bring-up issues, the client configs that point at them, join tokens.

A cluster's PKI lives in one directory (`<state>/pki` on one host, the
server role's state directory across VMs):

    ca.crt ca.key                      the cluster CA (clients, the API server, nodes)
    apiserver.crt/.key                 serving; SANs: its names and every listen address
    apiserver-kubelet-client.crt/.key  what the API server shows kubelets (logs, exec)
    scheduler controller-manager proxy dns admin .crt/.key   one identity each
    etcd-ca.crt etcd-ca.key            the etcd CA (multi-server etcd only; see below)
    etcd-<member>.crt/.key             an etcd member's serving and peer certificate
    apiserver-etcd-client.crt/.key     the API server towards etcd

Every `ensure_*` is idempotent: a pair already on disk is reused while it is
signed by the CA, names the wanted identity and at least the wanted SANs, and
has more than RENEW_BEFORE left; otherwise it is issued anew, and the reason
is returned so the caller can say what changed (a bridge that moved to
another subnet re-issues the serving certificate, nothing else). Keys are
written 0600, certificates 0644, each replaced atomically.

etcd has a CA of its own: etcd trusts every client certificate its CA
signed, so a node certificate from the cluster CA must not be one of them.

Join tokens have the bootstrap-token shape (`<6>.<16>` of [a-z0-9]); the
Secret that makes one valid is created through the API by the caller, after
the API server is up (bootstrap_token_secret).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import ipaddress
import pathlib
import secrets
import string
from collections.abc import Sequence

import yaml
from cryptography import x509

from machinery import auth, pki
from machinery.pki import KeyPair, Subject

CA = "ca"
ETCD_CA = "etcd-ca"
APISERVER = "apiserver"
APISERVER_KUBELET_CLIENT = "apiserver-kubelet-client"
APISERVER_ETCD_CLIENT = "apiserver-etcd-client"
ADMIN = "admin"
# Certificates are re-issued once less than this is left of them.
RENEW_BEFORE = datetime.timedelta(days=30)

# The components with a client certificate of their own, and who each one is.
COMPONENTS: dict[str, Subject] = {
    "scheduler": Subject(auth.SCHEDULER_USER),
    "controller-manager": Subject(auth.CONTROLLER_MANAGER_USER),
    "proxy": Subject(auth.PROXY_USER),
    "dns": Subject(auth.DNS_USER),
    ADMIN: Subject(auth.ADMIN_USER, (auth.MASTERS,)),
}
# Names every API server certificate carries: what Pods and clients dial.
API_NAMES = (
    "127.0.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


class PKIError(Exception):
    """The PKI directory cannot be used as it is; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Want:
    """The certificate a name in the PKI directory should hold."""

    subject: Subject
    client: bool = True
    server: bool = False
    alt_names: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Issued:
    """One ensure step: which pair, and why it was issued ("" when it was reused)."""

    name: str
    reason: str = ""


def node_subject(node: str) -> Subject:
    return Subject(auth.node_user(node), (auth.NODES_GROUP,))


def first_service_ip(service_cidr: str) -> str:
    """The `kubernetes` Service's address: the first of the Service range."""
    return str(ipaddress.ip_network(service_cidr).network_address + 1)


def apiserver_names(addresses: Sequence[str], *, service_cidr: str) -> tuple[str, ...]:
    """The serving certificate's SANs: the usual names, the first Service IP, addresses."""
    hosts = [a.rsplit(":", 1)[0] if a.count(":") == 1 else a for a in addresses]
    return tuple(dict.fromkeys((*API_NAMES, first_service_ip(service_cidr), *hosts)))


# -- reading what is there ---------------------------------------------------------------


def _alt_names(cert_pem: bytes) -> set[str]:
    cert = pki.load_cert(cert_pem)
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names = {str(n) for n in ext.get_values_for_type(x509.DNSName)}
    return names | {str(n) for n in ext.get_values_for_type(x509.IPAddress)}


def _usages(cert_pem: bytes) -> tuple[bool, bool]:
    cert = pki.load_cert(cert_pem)
    try:
        ext = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False, False
    oids = set(ext)
    return (
        x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in oids,
        x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in oids,
    )


def why_reissue(pair: KeyPair | None, want: Want, ca: KeyPair, *, now: datetime.datetime) -> str:
    """Why pair will not do for want (a reason to issue it anew), or "" to keep it."""
    if pair is None:
        return "missing"
    try:
        if not pki.signed_by(pair.cert, ca.cert):
            return "signed by another CA"
        if pki.subject_of(pair.cert) != want.subject:
            return f"names {pki.subject_of(pair.cert)}, not {want.subject}"
        if _usages(pair.cert) != (want.client, want.server):
            return "has other usages"
        lacking = set(want.alt_names) - _alt_names(pair.cert)
        if lacking:
            return f"lacks {', '.join(sorted(lacking))}"
        if pki.validity(pair.cert)[1] - now < RENEW_BEFORE:
            return "expires soon"
    except pki.PKIError as err:
        return f"unreadable: {err}"
    return ""


def _read_pair(directory: pathlib.Path, name: str) -> KeyPair | None:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    if not cert.exists() or not key.exists():
        return None
    return KeyPair.read(directory, name)


# -- making what is missing --------------------------------------------------------------


def ensure_ca(
    directory: pathlib.Path, *, name: str = CA, common_name: str
) -> tuple[KeyPair, Issued]:
    """The CA in directory, made on first use; a half-present CA is an error."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    if cert.exists() and key.exists():
        return KeyPair.read(directory, name), Issued(name)
    if cert.exists() or key.exists():
        present, absent = (cert, key) if cert.exists() else (key, cert)
        raise PKIError(
            f"{present} exists without {absent}: restore it, or remove {present} to make a "
            "new CA (every certificate it signed stops working)"
        )
    ca = pki.new_ca(common_name)
    ca.write(directory, name)
    return ca, Issued(name, "missing")


def install_ca(directory: pathlib.Path, source: pathlib.Path, *, name: str = CA) -> KeyPair:
    """Copy a CA (<name>.crt and <name>.key) from source, a directory another server made."""
    for suffix in (".crt", ".key"):
        if not (source / f"{name}{suffix}").exists():
            raise PKIError(
                f"--ca-dir {source}: no {name}{suffix} there (copy it from the first server)"
            )
    given = KeyPair.read(source, name)
    try:
        pki.load_cert(given.cert)
    except pki.PKIError as err:
        raise PKIError(f"--ca-dir {source}/{name}.crt: {err}") from None
    if source.resolve() != directory.resolve():
        current = _read_pair(directory, name)
        if current is not None and current.cert != given.cert:
            raise PKIError(
                f"{directory / (name + '.crt')} holds another CA than {source}: a server "
                "keeps the CA it was installed with"
            )
        given.write(directory, name)
    return given


def ensure_pair(directory: pathlib.Path, name: str, want: Want, ca: KeyPair) -> Issued:
    """<name>.crt/.key as want says, reused when they already do (see the module docstring)."""
    now = datetime.datetime.now(datetime.UTC)
    reason = why_reissue(_read_pair(directory, name), want, ca, now=now)
    if reason:
        pki.issue(
            ca, want.subject, client=want.client, server=want.server, alt_names=want.alt_names
        ).write(directory, name)
    return Issued(name, reason)


def ensure_control_plane(
    directory: pathlib.Path, *, cluster: str, server_names: Sequence[str]
) -> list[Issued]:
    """The CA, the API server's certificates and every component's; what was issued
    (the CA's step first)."""
    ca, made = ensure_ca(directory, common_name=f"{cluster}-ca")
    wants = {
        APISERVER: Want(
            Subject("kube-apiserver"), client=False, server=True, alt_names=tuple(server_names)
        ),
        APISERVER_KUBELET_CLIENT: Want(Subject(auth.APISERVER_KUBELET_CLIENT)),
        **{component: Want(subject) for component, subject in COMPONENTS.items()},
    }
    return [made, *(ensure_pair(directory, name, want, ca) for name, want in wants.items())]


REGISTRY = "registry"


def ensure_registry(directory: pathlib.Path, *, addresses: Sequence[str]) -> Issued:
    """The image registry's serving certificate, from the cluster CA, for its addresses."""
    ca = KeyPair.read(directory, CA)
    want = Want(Subject("kubelite-registry"), client=False, server=True, alt_names=tuple(addresses))
    return ensure_pair(directory, REGISTRY, want, ca)


def ensure_etcd(
    directory: pathlib.Path, *, cluster: str, member: str, addresses: Sequence[str]
) -> list[Issued]:
    """The etcd CA, this member's serving+peer certificate, the API server's etcd client."""
    ca, made = ensure_ca(directory, name=ETCD_CA, common_name=f"{cluster}-etcd-ca")
    names = tuple(dict.fromkeys((*addresses, "127.0.0.1", "localhost")))
    return [
        made,
        ensure_pair(
            directory,
            f"etcd-{member}",
            Want(Subject(member), client=True, server=True, alt_names=names),
            ca,
        ),
        ensure_pair(
            directory, APISERVER_ETCD_CLIENT, Want(Subject("kube-apiserver-etcd-client")), ca
        ),
    ]


def reissued(steps: Sequence[Issued]) -> list[str]:
    """The "name: reason" lines of the steps that issued something."""
    return [f"{s.name}: {s.reason}" for s in steps if s.reason]


# -- client configs ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Kubeconfig:
    """A client config with one cluster, one user and one context (machinery.config format).

    Files are named by absolute path, so rotating a certificate in place needs no
    rewrite. A token user gets `token`; a bootstrap config lists both `servers`
    (for the certificate it will get) and `token-servers` (for the token).
    """

    cluster: str
    servers: tuple[str, ...]
    ca_file: pathlib.Path
    user: str
    cert_file: pathlib.Path | None = None
    key_file: pathlib.Path | None = None
    token: str = ""
    token_servers: tuple[str, ...] = ()

    def document(self) -> dict:
        cluster: dict = {"servers": list(self.servers), "certificate-authority": str(self.ca_file)}
        if self.token_servers:
            cluster["token-servers"] = list(self.token_servers)
        user: dict = {}
        if self.cert_file is not None and self.key_file is not None:
            user = {"client-certificate": str(self.cert_file), "client-key": str(self.key_file)}
        if self.token:
            user["token"] = self.token
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": self.cluster,
            "clusters": [{"name": self.cluster, "cluster": cluster}],
            "users": [{"name": self.user, "user": user}],
            "contexts": [
                {"name": self.cluster, "context": {"cluster": self.cluster, "user": self.user}}
            ],
        }

    def write(self, path: pathlib.Path) -> pathlib.Path:
        """Write the file (0600: a token is a secret), only when its content changes."""
        text = yaml.safe_dump(self.document(), sort_keys=False).encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_bytes() != text:
            pki.write_private(path, text)
        return path


def component_kubeconfig(
    directory: pathlib.Path, component: str, *, cluster: str, servers: Sequence[str]
) -> Kubeconfig:
    """The client config of a component whose pair is <component>.crt/.key in directory."""
    return Kubeconfig(
        cluster=cluster,
        servers=tuple(servers),
        ca_file=directory / f"{CA}.crt",
        user=COMPONENTS[component].user if component in COMPONENTS else component,
        cert_file=directory / f"{component}.crt",
        key_file=directory / f"{component}.key",
    )


# -- join tokens -------------------------------------------------------------------------

_ALPHABET = string.ascii_lowercase + string.digits
TOKEN_NAMESPACE = "kube-system"
TOKEN_SECRET_PREFIX = "bootstrap-token-"
TOKEN_TYPE = "bootstrap.kubernetes.io/token"


@dataclasses.dataclass(frozen=True)
class JoinToken:
    id: str
    secret: str
    expires: datetime.datetime | None = None

    def __str__(self) -> str:
        return f"{self.id}.{self.secret}"

    @property
    def secret_name(self) -> str:
        return TOKEN_SECRET_PREFIX + self.id


def new_join_token(*, ttl: datetime.timedelta | None) -> JoinToken:
    pick = "".join(secrets.choice(_ALPHABET) for _ in range(22))
    expires = None
    if ttl is not None:
        expires = (datetime.datetime.now(datetime.UTC) + ttl).replace(microsecond=0)
    return JoinToken(pick[:6], pick[6:], expires)


def parse_join_token(text: str) -> JoinToken | None:
    token_id, dot, secret = text.strip().partition(".")
    if not dot or len(token_id) != 6 or len(secret) != 16:
        return None
    if not set(token_id + secret) <= set(_ALPHABET):
        return None
    return JoinToken(token_id, secret)


def bootstrap_token_secret(token: JoinToken, *, description: str) -> dict:
    """The Secret that makes token a valid join token (shape of bootstrap tokens)."""
    data = {
        "token-id": token.id,
        "token-secret": token.secret,
        "usage-bootstrap-authentication": "true",
        "description": description,
    }
    if token.expires is not None:
        data["expiration"] = token.expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": token.secret_name, "namespace": TOKEN_NAMESPACE},
        "type": TOKEN_TYPE,
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }
