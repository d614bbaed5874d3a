"""The cluster's certificate authority: keys, certificates and signing requests.

Everything is PEM bytes in and out, so callers keep certificates in files,
Secrets or objects without caring about the library. Keys are ECDSA P-256:
small, and quick to make, which matters when a bring-up issues a dozen.

A certificate names an identity the way Kubernetes reads it: the subject's
common name is the user, each organization a group (a node is
`CN=system:node:<name>, O=system:nodes`).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import pathlib
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from machinery.files import write_private

CA_DAYS = 3650
CERT_DAYS = 365
# Backdating covers clocks that differ a little between hosts.
_BACKDATE = datetime.timedelta(minutes=5)


class PKIError(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class KeyPair:
    cert: bytes  # PEM
    key: bytes  # PEM

    def write(self, directory: pathlib.Path, name: str) -> tuple[pathlib.Path, pathlib.Path]:
        """Write <name>.crt and <name>.key (mode 0600) into directory."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
        write_private(key_path, self.key)
        write_private(cert_path, self.cert, mode=0o644)
        return cert_path, key_path

    @classmethod
    def read(cls, directory: pathlib.Path, name: str) -> KeyPair:
        return cls(
            (directory / f"{name}.crt").read_bytes(), (directory / f"{name}.key").read_bytes()
        )


@dataclasses.dataclass(frozen=True)
class Subject:
    """Who a certificate names: the user and the groups."""

    user: str
    groups: tuple[str, ...] = ()


def new_key() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as err:
        raise PKIError(f"not a PEM private key: {err}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError("the private key is not an ECDSA key")
    return key


def load_cert(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as err:
        raise PKIError(f"not a PEM certificate: {err}") from None


def _name(subject: Subject) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in subject.groups]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, subject.user))
    return x509.Name(attrs)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """ECDSA keys sign; a CA's also signs certificates and revocation lists."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def new_ca(common_name: str, *, days: int = CA_DAYS) -> KeyPair:
    """A self-signed CA that may sign leaf certificates only."""
    key_pem = new_key()
    key = _load_key(key_pem)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), key_pem)


def _sans(names: Iterable[str]) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = []
    for name in dict.fromkeys(n for n in names if n):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    return sans


def _leaf(
    ca: KeyPair,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    *,
    client: bool,
    server: bool,
    alt_names: Sequence[str],
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> bytes:
    ca_cert, ca_key = load_cert(ca.cert), _load_key(ca.key)
    usages = ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else []) + (
        [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    )
    if not usages:
        raise PKIError("a certificate needs client or server usage")
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(min(not_after, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    sans = _sans(alt_names)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def issue(
    ca: KeyPair,
    subject: Subject,
    *,
    client: bool = True,
    server: bool = False,
    alt_names: Sequence[str] = (),
    days: float = CERT_DAYS,
    not_before: datetime.datetime | None = None,
) -> KeyPair:
    """A new key and a certificate for it, signed by ca."""
    key_pem = new_key()
    start = not_before or (_now() - _BACKDATE)
    cert = _leaf(
        ca,
        _name(subject),
        _load_key(key_pem).public_key(),
        client=client,
        server=server,
        alt_names=alt_names,
        not_before=start,
        not_after=start + _BACKDATE + datetime.timedelta(days=days),
    )
    return KeyPair(cert, key_pem)


def new_csr(key_pem: bytes, subject: Subject, *, alt_names: Sequence[str] = ()) -> bytes:
    """A PEM certificate signing request for key_pem naming subject."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(_name(subject))
    sans = _sans(alt_names)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(_load_key(key_pem), hashes.SHA256()).public_bytes(
        serialization.Encoding.PEM
    )


@dataclasses.dataclass(frozen=True)
class Request:
    """What a signing request asks for."""

    subject: Subject
    alt_names: tuple[str, ...]
    public_key: ec.EllipticCurvePublicKey


def read_csr(pem: bytes) -> Request:
    """The parsed request; PKIError if it is not one, or its signature is wrong."""
    try:
        csr = x509.load_pem_x509_csr(pem)
    except ValueError as err:
        raise PKIError(f"not a PEM certificate signing request: {err}") from None
    if not csr.is_signature_valid:
        raise PKIError("the certificate signing request's signature does not verify")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise PKIError("the certificate signing request's key is not an ECDSA key")
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        alt = tuple(str(v) for v in ext.value.get_values_for_type(x509.DNSName)) + tuple(
            str(v) for v in ext.value.get_values_for_type(x509.IPAddress)
        )
    except x509.ExtensionNotFound:
        alt = ()
    return Request(_subject_of(csr.subject), alt, key)


def sign(
    ca: KeyPair,
    request: Request,
    *,
    client: bool = True,
    server: bool = False,
    days: float = CERT_DAYS,
) -> bytes:
    """A certificate for a parsed signing request."""
    start = _now() - _BACKDATE
    return _leaf(
        ca,
        _name(request.subject),
        request.public_key,
        client=client,
        server=server,
        alt_names=request.alt_names,
        not_before=start,
        not_after=start + _BACKDATE + datetime.timedelta(days=days),
    )


def _subject_of(name: x509.Name) -> Subject:
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    user = str(cns[0].value) if cns else ""
    groups = tuple(str(a.value) for a in name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))
    return Subject(user, groups)


def subject_of(cert_pem: bytes) -> Subject:
    return _subject_of(load_cert(cert_pem).subject)


def validity(cert_pem: bytes) -> tuple[datetime.datetime, datetime.datetime]:
    cert = load_cert(cert_pem)
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def signed_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    """Whether ca_pem's key signed cert_pem."""
    cert, ca = load_cert(cert_pem), load_cert(ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
