"""An OCI distribution API client: references, manifests, blobs, token auth.

Shared by the kubelet (which pulls) and by kctl and the bring-up (which push
and list). Standard library only: http.client over one small connection pool
per client, so that a pull of many blobs reuses its connections.

Design and invariants:
- A reference is parsed once, the way Docker parses it, into an
  ImageReference whose registry, repository, tag and digest are all filled
  in; short names resolve to a configurable default registry (for kubelite
  the cluster registry): `httpd` is `<default>/library/httpd:latest`.
- Nothing read from a registry is trusted before its digest is checked.
  Manifests and small blobs are checked in memory; large blobs are streamed
  to a temporary file beside their destination, checked, and only then
  renamed into place, so a destination path never holds unverified bytes.
- A registry's own error body ({"errors": [{"code", "message"}]}) is kept
  as RegistryError.code and .message; callers wrap it as "failed to pull
  image X: <message> (<code>)". `retryable` separates a registry that may
  answer later (5xx, 429, a dropped connection) from a request that will
  fail again (an unknown manifest, a bad reference, a digest mismatch).
- Authentication follows the registry's challenge: a 401 with
  `WWW-Authenticate: Bearer realm=...,service=...,scope=...` sends the
  client to the token endpoint (anonymously unless credentials are given)
  and the request is retried once with the token; tokens are cached per
  scope until they expire. `Basic` challenges are answered with the
  credentials when there are some.
- This module raises and does not log (it is a library for components).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import hashlib
import http.client
import ipaddress
import json
import os
import platform as _platform
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

# --------------------------------------------------------------------------------------
# Errors


class InvalidReference(ValueError):
    """An image reference that does not parse; the message names it and says why."""

    def __init__(self, text: str, why: str) -> None:
        super().__init__(f"invalid image reference {text!r}: {why}")
        self.text = text
        self.why = why


class RegistryError(Exception):
    """A registry refused or failed a request.

    `code` is the registry's error code (MANIFEST_UNKNOWN, BLOB_UNKNOWN,
    UNAUTHORIZED, ...) or one of ours (DIGEST_INVALID, CONNECTION_FAILED,
    MANIFEST_INVALID, UNSUPPORTED); `status` the HTTP status or 0.
    """

    def __init__(
        self, message: str, *, code: str = "", status: int = 0, retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.retryable = retryable

    def __str__(self) -> str:
        return f"{self.message} ({self.code})" if self.code else self.message


class DigestMismatch(RegistryError):
    """Content whose digest is not the one it was asked for: refused, never kept."""

    def __init__(self, what: str, *, expected: str, actual: str) -> None:
        super().__init__(
            f"{what}: digest mismatch: expected {expected}, got {actual}", code="DIGEST_INVALID"
        )
        self.expected = expected
        self.actual = actual


# --------------------------------------------------------------------------------------
# References

DOCKER_HUB = "docker.io"
_DOCKER_HUB_ALIASES = {"index.docker.io", "registry-1.docker.io"}
_DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
DEFAULT_TAG = "latest"
_MAX_NAME_LENGTH = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$"
)
_PATH_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_HEX64_RE = re.compile(r"^[a-f0-9]{64}$")
_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha512": 128}


@dataclasses.dataclass(frozen=True)
class ImageReference:
    """A fully qualified image reference: registry, repository, and a tag or a digest.

    A reference parsed from `name:tag@digest` keeps both; the digest is what
    gets pulled (as Docker does), the tag only labels it.
    """

    registry: str
    repository: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """registry/repository, the part that names the image without a version."""
        return f"{self.registry}/{self.repository}"

    @property
    def version(self) -> str:
        """What to ask the registry for: the digest if there is one, else the tag."""
        return self.digest or self.tag

    @property
    def key(self) -> str:
        """The reference as the image store records it: name@digest, else name:tag."""
        return f"{self.name}@{self.digest}" if self.digest else f"{self.name}:{self.tag}"

    def with_digest(self, digest: str) -> ImageReference:
        return ImageReference(self.registry, self.repository, digest=digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str, *, default_registry: str = DOCKER_HUB) -> ImageReference:
    """Parse an image reference as Docker does, with `default_registry` for short names.

    `httpd` and `library/httpd` resolve to `<default_registry>/library/httpd:latest`.
    A first path component is a registry when it has a dot or a colon, is
    `localhost`, or has an upper-case letter; otherwise it is part of the
    repository. Raises InvalidReference naming the reference and the fault.
    """
    if not text:
        raise InvalidReference(text, "the reference is empty")
    if text != text.strip() or any(c.isspace() for c in text):
        raise InvalidReference(text, "the reference contains white space")
    remainder, digest = _split_digest(text)
    name, tag = _split_tag(text, remainder)
    if _HEX64_RE.match(name):
        raise InvalidReference(text, "a 64-character hexadecimal string is an image id, not a name")
    registry, repository, defaulted = _split_registry(name, default_registry)
    _check_registry(text, registry)
    _check_repository(text, repository)
    if (defaulted or registry == DOCKER_HUB) and "/" not in repository:
        repository = f"library/{repository}"
    if len(f"{registry}/{repository}") > _MAX_NAME_LENGTH:
        raise InvalidReference(text, f"the name is longer than {_MAX_NAME_LENGTH} characters")
    if not tag and not digest:
        tag = DEFAULT_TAG
    return ImageReference(registry, repository, tag, digest)


def _split_digest(text: str) -> tuple[str, str]:
    if "@" not in text:
        return text, ""
    remainder, _, digest = text.partition("@")
    if "@" in digest:
        raise InvalidReference(text, "more than one '@'")
    check_digest_format(digest, where=f"image reference {text!r}")
    return remainder, digest


def _split_tag(text: str, remainder: str) -> tuple[str, str]:
    colon = remainder.rfind(":")
    if colon <= remainder.rfind("/"):
        return remainder, ""
    name, tag = remainder[:colon], remainder[colon + 1 :]
    if not _TAG_RE.match(tag):
        raise InvalidReference(
            text,
            f"tag {tag!r} must be 1-128 letters, digits, '_', '.' or '-', not starting "
            "with '.' or '-'",
        )
    return name, tag


def _split_registry(name: str, default_registry: str) -> tuple[str, str, bool]:
    slash = name.find("/")
    first = name[:slash]
    is_registry = slash != -1 and (
        "." in first or ":" in first or first == "localhost" or first.lower() != first
    )
    if not is_registry:
        return default_registry, name, True
    registry = DOCKER_HUB if first in _DOCKER_HUB_ALIASES else first
    return registry, name[slash + 1 :], False


def _check_registry(text: str, registry: str) -> None:
    if not _DOMAIN_RE.match(registry):
        raise InvalidReference(text, f"registry {registry!r} is not a host name or host:port")


def _check_repository(text: str, repository: str) -> None:
    if not repository:
        raise InvalidReference(text, "the repository name is empty")
    if repository.lower() != repository:
        raise InvalidReference(text, "repository name must be lowercase")
    for component in repository.split("/"):
        if not _PATH_COMPONENT_RE.match(component):
            raise InvalidReference(
                text,
                f"repository path component {component!r} must be lower-case letters and "
                "digits separated by '.', '_', '__' or '-'",
            )


def check_digest_format(digest: str, *, where: str = "digest") -> None:
    """Raise InvalidReference unless `digest` is `algorithm:hex` with a known algorithm."""
    if not _DIGEST_RE.match(digest):
        raise InvalidReference(digest, f"{where}: {digest!r} is not algorithm:hex")
    algorithm, _, encoded = digest.partition(":")
    length = _DIGEST_HEX_LENGTHS.get(algorithm)
    if length is None:
        raise InvalidReference(digest, f"{where}: digest algorithm {algorithm!r} is not supported")
    if len(encoded) != length or not all(c in "0123456789abcdef" for c in encoded):
        raise InvalidReference(
            digest, f"{where}: a {algorithm} digest is {length} lower-case hex digits"
        )


def default_pull_policy(image: str) -> str:
    """Kubernetes' default imagePullPolicy: Always for :latest or no tag, else IfNotPresent."""
    try:
        reference = parse_reference(image)
    except InvalidReference:
        return "IfNotPresent"
    if reference.digest:
        return "IfNotPresent"
    return "Always" if reference.tag == DEFAULT_TAG else "IfNotPresent"


def registry_endpoint(registry: str) -> str:
    """The host a registry name is served from: docker.io lives at registry-1.docker.io."""
    return _DOCKER_HUB_ENDPOINT if registry == DOCKER_HUB else registry


def is_loopback_registry(registry: str) -> bool:
    """True for localhost and loopback addresses, which Docker treats as insecure by default."""
    host = urllib.parse.urlsplit(f"//{registry}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------------------
# Digests


def digest_bytes(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def digest_file(path: Path, algorithm: str = "sha256") -> str:
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return f"{algorithm}:{hasher.hexdigest()}"


def new_hasher(digest: str) -> Any:
    """A hashlib object for the algorithm `digest` names (sha256 or sha512)."""
    check_digest_format(digest)
    return hashlib.new(digest.partition(":")[0])


def verify_bytes(data: bytes, expected: str, *, what: str) -> None:
    """Raise DigestMismatch unless `data` has digest `expected`."""
    actual = digest_bytes(data, expected.partition(":")[0])
    if actual != expected:
        raise DigestMismatch(what, expected=expected, actual=actual)


# --------------------------------------------------------------------------------------
# Manifests and platforms


class MediaType(enum.StrEnum):
    OCI_INDEX = "application/vnd.oci.image.index.v1+json"
    OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
    OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
    OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
    OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
    OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
    DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
    DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
    DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
    DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
    DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"


INDEX_TYPES = frozenset({MediaType.OCI_INDEX, MediaType.DOCKER_LIST})
MANIFEST_TYPES = frozenset({MediaType.OCI_MANIFEST, MediaType.DOCKER_MANIFEST})
ACCEPTED_MANIFEST_TYPES = (
    MediaType.OCI_INDEX,
    MediaType.DOCKER_LIST,
    MediaType.OCI_MANIFEST,
    MediaType.DOCKER_MANIFEST,
)
# A manifest is small; the distribution registry refuses more than 4 MiB.
MAX_MANIFEST_BYTES = 4 << 20

_ARCH_ALIASES = {
    "x86_64": "amd64",
    "x86-64": "amd64",
    "aarch64": "arm64",
    "armhf": "arm",
    "armel": "arm",
    "i386": "386",
    "i686": "386",
}
_DEFAULT_VARIANT = {"arm64": "v8"}


@dataclasses.dataclass(frozen=True)
class Platform:
    """os/architecture[/variant] in OCI's vocabulary (linux/amd64, linux/arm/v7)."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def host(cls) -> Platform:
        """The platform of this machine, as an image index would name it."""
        machine = _platform.machine().lower()
        architecture = _ARCH_ALIASES.get(machine, machine)
        variant = ""
        if machine.startswith("armv") and architecture.startswith("armv"):
            architecture, variant = "arm", f"v{machine[4]}"
        return cls("linux", architecture, variant or _DEFAULT_VARIANT.get(architecture, ""))

    def normalized(self) -> Platform:
        architecture = _ARCH_ALIASES.get(self.architecture, self.architecture)
        variant = self.variant or _DEFAULT_VARIANT.get(architecture, "")
        return Platform(self.os.lower(), architecture, variant)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def parse_platform(text: str) -> Platform:
    """linux/amd64 or linux/arm/v7; ValueError names a malformed platform."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"platform {text!r} must be os/architecture[/variant]")
    return Platform(*parts)


@dataclasses.dataclass(frozen=True)
class Descriptor:
    """A pointer to content: media type, digest and size, as manifests carry them."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    annotations: dict[str, str] = dataclasses.field(default_factory=dict, hash=False)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.platform is not None:
            data["platform"] = {"os": self.platform.os, "architecture": self.platform.architecture}
            if self.platform.variant:
                data["platform"]["variant"] = self.platform.variant
        if self.urls:
            data["urls"] = list(self.urls)
        if self.annotations:
            data["annotations"] = dict(self.annotations)
        return data


@dataclasses.dataclass(frozen=True)
class ImageManifest:
    """An OCI image manifest or a Docker v2 schema 2 manifest."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclasses.dataclass(frozen=True)
class ImageIndex:
    """An OCI image index or a Docker manifest list: one manifest per platform."""

    media_type: str
    manifests: tuple[Descriptor, ...]


@dataclasses.dataclass(frozen=True)
class FetchedManifest:
    """A manifest as the registry served it, its digest checked."""

    digest: str
    media_type: str
    body: bytes
    content: ImageManifest | ImageIndex


def parse_manifest(
    body: bytes, media_type: str = "", *, where: str = "manifest"
) -> ImageManifest | ImageIndex:
    """Parse a manifest or index; RegistryError(MANIFEST_INVALID) says what is wrong where."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid_manifest(where, f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _invalid_manifest(where, "not a JSON object")
    kind = _manifest_kind(data, media_type, where)
    if kind in INDEX_TYPES:
        entries = _list_field(data, "manifests", where)
        manifests = tuple(_descriptor(e, f"{where} manifests[{i}]") for i, e in enumerate(entries))
        return ImageIndex(kind, manifests)
    config = _descriptor(data.get("config"), f"{where} config")
    entries = _list_field(data, "layers", where)
    layers = tuple(_descriptor(e, f"{where} layers[{i}]") for i, e in enumerate(entries))
    return ImageManifest(kind, config, layers)


def _manifest_kind(data: dict[str, Any], media_type: str, where: str) -> str:
    declared = data.get("mediaType") or ""
    header = media_type.split(";")[0].strip()
    kind = declared or (header if header in INDEX_TYPES | MANIFEST_TYPES else "")
    if not kind:
        # An OCI manifest may omit mediaType; its shape tells which it is.
        kind = MediaType.OCI_INDEX if "manifests" in data else MediaType.OCI_MANIFEST
    if kind in (MediaType.DOCKER_SCHEMA1, MediaType.DOCKER_SCHEMA1_SIGNED):
        raise RegistryError(
            f"{where}: Docker schema 1 manifests are not supported", code="UNSUPPORTED"
        )
    if kind not in INDEX_TYPES | MANIFEST_TYPES:
        raise RegistryError(f"{where}: media type {kind!r} is not a manifest", code="UNSUPPORTED")
    if data.get("schemaVersion") != 2:
        raise _invalid_manifest(where, f"schemaVersion is {data.get('schemaVersion')!r}, not 2")
    return kind


def _list_field(data: dict[str, Any], name: str, where: str) -> list[Any]:
    value = data.get(name)
    if not isinstance(value, list):
        raise _invalid_manifest(where, f"{name} must be a list")
    return value


def _descriptor(data: Any, where: str) -> Descriptor:
    if not isinstance(data, dict):
        raise _invalid_manifest(where, "must be an object")
    media_type, digest, size = data.get("mediaType"), data.get("digest"), data.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise _invalid_manifest(where, "mediaType must be a non-empty string")
    if not isinstance(digest, str):
        raise _invalid_manifest(where, "digest must be a string")
    try:
        check_digest_format(digest, where=where)
    except InvalidReference as exc:
        raise _invalid_manifest(where, exc.why) from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid_manifest(where, "size must be a non-negative integer")
    annotations = data.get("annotations") or {}
    return Descriptor(
        media_type,
        digest,
        size,
        platform=_descriptor_platform(data.get("platform"), where),
        urls=tuple(data.get("urls") or ()),
        annotations={str(k): str(v) for k, v in annotations.items()},
    )


def _descriptor_platform(data: Any, where: str) -> Platform | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise _invalid_manifest(where, "platform must be an object")
    return Platform(
        str(data.get("os", "")), str(data.get("architecture", "")), str(data.get("variant", ""))
    )


def _invalid_manifest(where: str, why: str) -> RegistryError:
    return RegistryError(f"{where} is invalid: {why}", code="MANIFEST_INVALID")


def select_platform(index: ImageIndex, wanted: Platform) -> Descriptor | None:
    """The index entry that best fits `wanted`, or None.

    os and architecture must match; among those an exact variant wins over
    an entry without one. For arm, a lower variant also runs (v7 runs v6).
    """
    target = wanted.normalized()
    best: tuple[int, Descriptor] | None = None
    for entry in index.manifests:
        if entry.platform is None or entry.media_type not in MANIFEST_TYPES:
            continue
        score = _platform_score(entry.platform.normalized(), target)
        if score > 0 and (best is None or score > best[0]):
            best = (score, entry)
    return best[1] if best else None


def _platform_score(offered: Platform, target: Platform) -> int:
    if (offered.os, offered.architecture) != (target.os, target.architecture):
        return 0
    if offered.variant == target.variant:
        return 100
    if not offered.variant:
        return 50
    if target.architecture == "arm" and offered.variant < target.variant:
        return 10 + int(offered.variant.removeprefix("v") or 0)
    return 0


# --------------------------------------------------------------------------------------
# Authentication


@dataclasses.dataclass(frozen=True)
class Credentials:
    """A user name and password (or token) for a registry or its token endpoint."""

    username: str
    password: str = dataclasses.field(repr=False)

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def read_auth_file(path: str) -> dict[str, Credentials]:
    """Registry credentials from a Docker config file: {"auths": {"host:port": {"auth":
    base64("user:password")}}} (or "username"/"password"); RegistryError names what is wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as err:
        raise RegistryError(f"registry auth file {path}: cannot be read: {err.strerror}") from None
    except ValueError as err:
        raise RegistryError(f"registry auth file {path}: not JSON: {err}") from None
    auths = data.get("auths") if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        raise RegistryError(f'registry auth file {path}: needs an "auths" object')
    found: dict[str, Credentials] = {}
    for registry, entry in auths.items():
        where = f"registry auth file {path}: auths[{registry!r}]"
        if not isinstance(entry, dict):
            raise RegistryError(f"{where}: must be an object")
        if entry.get("auth"):
            try:
                user, sep, password = base64.b64decode(str(entry["auth"])).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise RegistryError(f"{where}.auth: not base64 of user:password") from None
            if not sep:
                raise RegistryError(f"{where}.auth: not base64 of user:password")
        else:
            user, password = str(entry.get("username") or ""), str(entry.get("password") or "")
            if not user:
                raise RegistryError(f"{where}: needs auth, or username and password")
        found[registry] = Credentials(user, password)
    return found


@dataclasses.dataclass(frozen=True)
class Challenge:
    """A parsed WWW-Authenticate header: scheme (bearer, basic) and its parameters."""

    scheme: str
    params: dict[str, str]


_CHALLENGE_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')


def parse_challenge(header: str) -> Challenge:
    """Parse `Bearer realm="https://auth",service="reg",scope="repository:a:pull,push"`."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for match in _CHALLENGE_PARAM_RE.finditer(rest):
        value = match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[match.group(1).lower()] = value
    return Challenge(scheme.lower(), params)


class _TokenCache:
    """Bearer tokens per scope, each kept until shortly before it expires."""

    # Docker's token spec: a token without expires_in lives 60 seconds.
    DEFAULT_LIFETIME = 60.0

    def __init__(self) -> None:
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, scope: str) -> str:
        with self._lock:
            token, expiry = self._tokens.get(scope, ("", 0.0))
        return token if time.monotonic() < expiry else ""

    def put(self, scope: str, token: str, lifetime: float) -> None:
        # Renew a little early so that a token does not expire in flight.
        expiry = time.monotonic() + max(lifetime - 5.0, lifetime / 2)
        with self._lock:
            self._tokens[scope] = (token, expiry)


# --------------------------------------------------------------------------------------
# Transport


_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_STALE_CONNECTION_ERRORS = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
)
_MAX_REDIRECTS = 5
_SEND_BLOCK = 1 << 16
_CHUNK = 1 << 20


class _Exchange:
    """One HTTP response being read; closing it returns the connection to the pool."""

    def __init__(self, pool: _Pool, key: tuple[str, str], conn: Any, response: Any) -> None:
        self._pool, self._key, self._conn = pool, key, conn
        self.response: http.client.HTTPResponse = response
        self.status: int = response.status

    def header(self, name: str) -> str:
        return self.response.getheader(name) or ""

    def read(self, limit: int | None = None) -> bytes:
        if limit is None:
            return self.response.read()
        data = self.response.read(limit + 1)
        if len(data) > limit:
            raise RegistryError(f"response is larger than {limit} bytes", code="SIZE_INVALID")
        return data

    def close(self) -> None:
        response = self.response
        # A small unread remainder (an error body, a HEAD) is drained so that the
        # connection can be reused; anything bigger costs less to reconnect.
        remainder = response.length
        if not response.isclosed() and remainder is not None and remainder <= 64 * 1024:
            try:
                response.read()
            except (OSError, http.client.HTTPException):
                pass
        if response.isclosed() and not response.will_close:
            self._pool.release(self._key, self._conn)
        else:
            self._conn.close()

    def __enter__(self) -> _Exchange:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Pool:
    """Idle HTTP connections by (scheme, host:port); http.client is not thread-safe."""

    def __init__(self, *, timeout: float, ssl_context: ssl.SSLContext) -> None:
        self._timeout = timeout
        self._ssl_context = ssl_context
        self._idle: dict[tuple[str, str], list[Any]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: tuple[str, str]) -> tuple[Any, bool]:
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop(), True
        scheme, netloc = key
        # Larger send blocks than http.client's 8 KiB default: uploads are whole layers.
        if scheme == "https":
            return http.client.HTTPSConnection(
                netloc, timeout=self._timeout, context=self._ssl_context, blocksize=_SEND_BLOCK
            ), False
        return http.client.HTTPConnection(
            netloc, timeout=self._timeout, blocksize=_SEND_BLOCK
        ), False

    def release(self, key: tuple[str, str], conn: Any) -> None:
        with self._lock:
            self._idle.setdefault(key, []).append(conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def send(
        self, method: str, url: str, *, headers: dict[str, str], body: bytes | IO[bytes] | None
    ) -> _Exchange:
        """One request; a stale reused connection is retried once on a fresh one."""
        parts = urllib.parse.urlsplit(url)
        key = (parts.scheme, parts.netloc)
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        for attempt in range(2):
            conn, reused = self.acquire(key)
            try:
                conn.request(method, target, body=body, headers=headers)
                return _Exchange(self, key, conn, conn.getresponse())
            except _STALE_CONNECTION_ERRORS:
                conn.close()
                replayable = body is None or isinstance(body, bytes)
                if not (reused and replayable and attempt == 0):
                    raise
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")


def _connection_error(url: str, exc: Exception) -> RegistryError:
    return RegistryError(
        f"cannot reach {urllib.parse.urlsplit(url).netloc}: {exc}",
        code="CONNECTION_FAILED",
        retryable=True,
    )


def _error_from_response(exchange: _Exchange, what: str) -> RegistryError:
    """A RegistryError from a registry's JSON error body, or from the bare HTTP status."""
    try:
        body = exchange.read(64 * 1024)
    except (RegistryError, OSError, http.client.HTTPException):
        body = b""
    status = exchange.status
    retryable = status in _RETRYABLE_STATUS
    errors = _registry_errors(body)
    if errors:
        code = str(errors[0].get("code", ""))
        message = str(errors[0].get("message", "")) or code.lower().replace("_", " ")
        return RegistryError(message, code=code, status=status, retryable=retryable)
    reason = exchange.response.reason or http.client.responses.get(status, "")
    code = {401: "UNAUTHORIZED", 403: "DENIED", 404: "NOT_FOUND"}.get(status, "")
    return RegistryError(
        f"{what}: HTTP {status} {reason}".strip(), code=code, status=status, retryable=retryable
    )


def _registry_errors(body: bytes) -> list[dict[str, Any]]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return []
    return [e for e in errors if isinstance(e, dict)]


# --------------------------------------------------------------------------------------
# Client


@dataclasses.dataclass(frozen=True)
class RepositoryTags:
    """One repository of a registry and its tags, as `kctl image ls` shows them."""

    repository: str
    tags: tuple[str, ...]


class RegistryClient:
    """A client for one registry, safe to share between threads.

    `registry` is the name references use (`127.0.0.1:5000`, `docker.io`).
    `insecure` speaks plain HTTP (a local registry); otherwise HTTPS,
    verified against the system's CAs or `ca_file`.
    """

    def __init__(
        self,
        registry: str,
        *,
        insecure: bool = False,
        ca_file: str | None = None,
        credentials: Credentials | None = None,
        timeout: float = 60.0,
        user_agent: str = "kubelite",
    ) -> None:
        self.registry = registry
        scheme = "http" if insecure else "https"
        self.base_url = f"{scheme}://{registry_endpoint(registry)}"
        self._credentials = credentials
        self._user_agent = user_agent
        self._tokens = _TokenCache()
        # Set once the registry has asked for Basic auth, so later requests send it unasked.
        self._basic = threading.Event()
        self._pool = _Pool(timeout=timeout, ssl_context=ssl.create_default_context(cafile=ca_file))

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- requests

    def _request(
        self,
        method: str,
        path: str,
        *,
        scope: str,
        headers: dict[str, str] | None = None,
        body: bytes | Path | None = None,
    ) -> _Exchange:
        """Send a request, answering one auth challenge and following redirects."""
        url = path if "://" in path else self.base_url + path
        for attempt in range(2):
            exchange = self._send_following(method, url, scope=scope, headers=headers, body=body)
            if exchange.status != 401 or attempt == 1:
                return exchange
            challenge = exchange.header("WWW-Authenticate")
            if not challenge or not self._answer_challenge(parse_challenge(challenge), scope):
                return exchange
            exchange.close()
        raise AssertionError("unreachable")

    def _send_following(
        self,
        method: str,
        url: str,
        *,
        scope: str,
        headers: dict[str, str] | None,
        body: bytes | Path | None,
    ) -> _Exchange:
        origin = urllib.parse.urlsplit(url).netloc
        for _ in range(_MAX_REDIRECTS + 1):
            same_origin = urllib.parse.urlsplit(url).netloc == origin
            exchange = self._send_once(
                method, url, headers=self._headers(scope, headers, same_origin), body=body
            )
            location = exchange.header("Location")
            if exchange.status not in (301, 302, 303, 307, 308) or method not in ("GET", "HEAD"):
                return exchange
            exchange.close()
            url = urllib.parse.urljoin(url, location)
        raise RegistryError(f"too many redirects for {url}", code="CONNECTION_FAILED")

    def _send_once(
        self, method: str, url: str, *, headers: dict[str, str], body: bytes | Path | None
    ) -> _Exchange:
        try:
            if isinstance(body, Path):
                headers = {**headers, "Content-Length": str(body.stat().st_size)}
                with open(body, "rb") as handle:
                    return self._pool.send(method, url, headers=headers, body=handle)
            if body is not None:
                headers = {**headers, "Content-Length": str(len(body))}
            elif method in ("PUT", "POST", "PATCH"):
                headers = {**headers, "Content-Length": "0"}
            return self._pool.send(method, url, headers=headers, body=body)
        except (OSError, http.client.HTTPException) as exc:
            raise _connection_error(url, exc) from None

    def _headers(
        self, scope: str, extra: dict[str, str] | None, same_origin: bool
    ) -> dict[str, str]:
        headers = {"User-Agent": self._user_agent, **(extra or {})}
        # A redirect to blob storage elsewhere must not carry the registry's token.
        if same_origin:
            token = self._tokens.get(scope)
            if token:
                headers["Authorization"] = f"Bearer {token}"
            elif self._basic.is_set() and self._credentials is not None:
                headers["Authorization"] = self._credentials.basic()
        return headers

    def _answer_challenge(self, challenge: Challenge, scope: str) -> bool:
        if challenge.scheme == "basic":
            if self._credentials is None or self._basic.is_set():
                return False
            self._basic.set()
            return True
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            return False
        token, lifetime = self._fetch_token(challenge, scope)
        self._tokens.put(scope, token, lifetime)
        return True

    def _fetch_token(self, challenge: Challenge, scope: str) -> tuple[str, float]:
        """Ask the challenge's realm for a token for `scope` (anonymous without credentials)."""
        query: list[tuple[str, str]] = []
        if "service" in challenge.params:
            query.append(("service", challenge.params["service"]))
        scopes = [scope] if scope else []
        offered = challenge.params.get("scope", "")
        if offered and offered not in scopes:
            scopes.append(offered)
        query.extend(("scope", s) for s in scopes)
        realm = challenge.params["realm"]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        headers = {"User-Agent": self._user_agent}
        if self._credentials is not None:
            headers["Authorization"] = self._credentials.basic()
        exchange = self._send_once("GET", url, headers=headers, body=None)
        with exchange:
            if exchange.status != 200:
                error = _error_from_response(exchange, f"token endpoint {realm}")
                error.message = f"failed to get a token from {realm}: {error.message}"
                error.code = error.code or "UNAUTHORIZED"
                raise error
            return self._parse_token(exchange.read(1 << 20), realm)

    @staticmethod
    def _parse_token(body: bytes, realm: str) -> tuple[str, float]:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            data = {}
        token = data.get("token") or data.get("access_token")
        if not isinstance(token, str) or not token:
            raise RegistryError(
                f"token endpoint {realm} answered without a token", code="UNAUTHORIZED"
            )
        lifetime = data.get("expires_in")
        if isinstance(lifetime, int | float) and not isinstance(lifetime, bool) and lifetime > 0:
            return token, float(lifetime)
        return token, _TokenCache.DEFAULT_LIFETIME

    @staticmethod
    def _pull_scope(repository: str) -> str:
        return f"repository:{repository}:pull"

    @staticmethod
    def _push_scope(repository: str) -> str:
        return f"repository:{repository}:pull,push"

    # ---- API

    def ping(self) -> None:
        """Check that the registry speaks the distribution API; raise RegistryError if not."""
        with self._request("GET", "/v2/", scope="") as exchange:
            if exchange.status != 200:
                raise _error_from_response(exchange, f"registry {self.registry}")

    def get_manifest(
        self,
        repository: str,
        version: str,
        *,
        accept: tuple[str, ...] = ACCEPTED_MANIFEST_TYPES,
    ) -> FetchedManifest:
        """A manifest by tag or digest; a digest is checked against the body.

        For a tag, the digest is computed from the body and must agree with
        the registry's Docker-Content-Digest header when it sends one.
        """
        path = f"/v2/{repository}/manifests/{version}"
        headers = {"Accept": ", ".join(accept)}
        with self._request("GET", path, scope=self._pull_scope(repository), headers=headers) as ex:
            if ex.status != 200:
                raise _error_from_response(ex, f"manifest {repository}:{version}")
            body = ex.read(MAX_MANIFEST_BYTES)
            media_type = ex.header("Content-Type")
            served_digest = ex.header("Docker-Content-Digest")
        separator = "@" if ":" in version else ":"
        what = f"manifest {repository}{separator}{version}"
        expected = version if ":" in version else served_digest
        if expected:
            verify_bytes(body, expected, what=what)
        digest = expected or digest_bytes(body)
        content = parse_manifest(body, media_type, where=f"manifest {digest}")
        return FetchedManifest(digest, content.media_type, body, content)

    def manifest_digest(self, repository: str, version: str) -> str:
        """The digest a tag points to (HEAD), or "" when the registry does not say."""
        path = f"/v2/{repository}/manifests/{version}"
        headers = {"Accept": ", ".join(ACCEPTED_MANIFEST_TYPES)}
        with self._request("HEAD", path, scope=self._pull_scope(repository), headers=headers) as ex:
            if ex.status != 200:
                raise _error_from_response(ex, f"manifest {repository}:{version}")
            return ex.header("Docker-Content-Digest")

    def read_blob(self, repository: str, digest: str, *, limit: int = 16 << 20) -> bytes:
        """A small blob (an image config) in memory, checked against its digest."""
        with self._open_blob(repository, digest) as exchange:
            data = exchange.read(limit)
        verify_bytes(data, digest, what=f"blob {digest} of {repository}")
        return data

    def fetch_blob(
        self, repository: str, digest: str, dest: Path, *, size: int | None = None
    ) -> int:
        """Stream a blob to `dest`, via a temp file beside it: checked, then renamed.

        Returns the number of bytes written. On any failure nothing is left
        at `dest` or in its directory.
        """
        hasher = new_hasher(digest)
        temp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.partial")
        try:
            with self._open_blob(repository, digest) as exchange, open(temp, "wb") as out:
                written = _copy_hashing(exchange.response, out, hasher, size, what=digest)
            actual = f"{digest.partition(':')[0]}:{hasher.hexdigest()}"
            if actual != digest:
                raise DigestMismatch(
                    f"blob {digest} of {repository}", expected=digest, actual=actual
                )
            if size is not None and written != size:
                raise RegistryError(
                    f"blob {digest} of {repository}: {written} bytes, the manifest says {size}",
                    code="SIZE_INVALID",
                )
            os.replace(temp, dest)
            return written
        finally:
            temp.unlink(missing_ok=True)

    def _open_blob(self, repository: str, digest: str) -> _Exchange:
        path = f"/v2/{repository}/blobs/{digest}"
        exchange = self._request("GET", path, scope=self._pull_scope(repository))
        if exchange.status != 200:
            with exchange:
                raise _error_from_response(exchange, f"blob {digest} of {repository}")
        return exchange

    def blob_exists(self, repository: str, digest: str) -> bool:
        path = f"/v2/{repository}/blobs/{digest}"
        with self._request("HEAD", path, scope=self._pull_scope(repository)) as exchange:
            if exchange.status == 200:
                return True
            if exchange.status == 404:
                return False
            raise _error_from_response(exchange, f"blob {digest} of {repository}")

    def push_blob(
        self,
        repository: str,
        digest: str,
        source: bytes | Path,
        *,
        chunk_size: int | None = None,
    ) -> bool:
        """Upload a blob unless the registry has it; True when it was uploaded.

        Monolithic (POST then one PUT) by default; with `chunk_size`, PATCHes
        of at most that many bytes and a closing PUT.
        """
        if self.blob_exists(repository, digest):
            return False
        scope = self._push_scope(repository)
        location = self._start_upload(repository, scope)
        if chunk_size is None:
            self._finish_upload(repository, digest, location, scope, body=source)
        else:
            for chunk, offset in _chunks(source, chunk_size):
                location = self._upload_chunk(repository, location, scope, chunk, offset)
            self._finish_upload(repository, digest, location, scope, body=None)
        return True

    def _start_upload(self, repository: str, scope: str) -> str:
        path = f"/v2/{repository}/blobs/uploads/"
        with self._request("POST", path, scope=scope) as exchange:
            if exchange.status != 202:
                raise _error_from_response(exchange, f"upload to {repository}")
            return self._location(exchange, f"upload to {repository}")

    def _upload_chunk(
        self, repository: str, location: str, scope: str, chunk: bytes, offset: int
    ) -> str:
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
        }
        with self._request("PATCH", location, scope=scope, headers=headers, body=chunk) as ex:
            if ex.status != 202:
                raise _error_from_response(ex, f"upload to {repository}")
            return self._location(ex, f"upload to {repository}")

    def _finish_upload(
        self, repository: str, digest: str, location: str, scope: str, *, body: bytes | Path | None
    ) -> None:
        separator = "&" if "?" in location else "?"
        url = f"{location}{separator}digest={urllib.parse.quote(digest)}"
        headers = {"Content-Type": "application/octet-stream"}
        with self._request("PUT", url, scope=scope, headers=headers, body=body) as exchange:
            if exchange.status != 201:
                raise _error_from_response(exchange, f"blob {digest} of {repository}")
            stored = exchange.header("Docker-Content-Digest")
        if stored and stored != digest:
            raise DigestMismatch(f"blob pushed to {repository}", expected=digest, actual=stored)

    def _location(self, exchange: _Exchange, what: str) -> str:
        location = exchange.header("Location")
        if not location:
            raise RegistryError(f"{what}: the registry sent no upload location", code="UNKNOWN")
        return urllib.parse.urljoin(self.base_url + "/", location)

    def push_manifest(self, repository: str, version: str, body: bytes, media_type: str) -> str:
        """PUT a manifest under a tag or its digest; returns its digest."""
        digest = digest_bytes(body)
        path = f"/v2/{repository}/manifests/{version}"
        headers = {"Content-Type": media_type}
        scope = self._push_scope(repository)
        with self._request("PUT", path, scope=scope, headers=headers, body=body) as exchange:
            if exchange.status not in (200, 201):
                raise _error_from_response(exchange, f"manifest {repository}:{version}")
            stored = exchange.header("Docker-Content-Digest")
        if stored and stored != digest:
            raise DigestMismatch(f"manifest pushed to {repository}", expected=digest, actual=stored)
        return digest

    def catalog(self, *, page_size: int = 100) -> list[str]:
        """Every repository the registry lists, following its pagination."""
        return list(self._paginate(f"/v2/_catalog?n={page_size}", "repositories", "catalog"))

    def tags(self, repository: str, *, page_size: int = 100) -> list[str]:
        """The tags of a repository, following pagination; [] for an unknown repository."""
        path = f"/v2/{repository}/tags/list?n={page_size}"
        try:
            return list(self._paginate(path, "tags", repository))
        except RegistryError as exc:
            if exc.code == "NAME_UNKNOWN":
                return []
            raise

    def _paginate(self, path: str, field: str, what: str) -> Iterator[str]:
        scope = "registry:catalog:*" if field == "repositories" else self._pull_scope(what)
        next_path: str | None = path
        while next_path:
            with self._request("GET", next_path, scope=scope) as exchange:
                if exchange.status != 200:
                    raise _error_from_response(exchange, f"{what} listing")
                body = exchange.read(16 << 20)
                next_path = _next_link(exchange.header("Link"))
            try:
                items = json.loads(body).get(field) or []
            except (ValueError, AttributeError):
                raise RegistryError(f"{what} listing is not JSON", code="UNKNOWN") from None
            yield from (str(item) for item in items)


def _next_link(header: str) -> str | None:
    """The target of a `Link: </v2/_catalog?last=x&n=100>; rel="next"` header."""
    match = re.search(r'<([^>]+)>\s*;\s*rel="?next"?', header)
    return match.group(1) if match else None


def _chunks(source: bytes | Path, size: int) -> Iterator[tuple[bytes, int]]:
    if size <= 0:
        raise ValueError(f"chunk size {size} must be positive")
    if isinstance(source, bytes):
        for offset in range(0, len(source), size):
            yield source[offset : offset + size], offset
        return
    with open(source, "rb") as handle:
        offset = 0
        for chunk in iter(lambda: handle.read(size), b""):
            yield chunk, offset
            offset += len(chunk)


def _copy_hashing(
    source: IO[bytes], out: IO[bytes], hasher: Any, size: int | None, *, what: str
) -> int:
    written = 0
    while block := source.read(_CHUNK):
        written += len(block)
        # A server that sends more than the manifest promised is cut off, not believed.
        if size is not None and written > size:
            raise RegistryError(f"blob {what} is larger than {size} bytes", code="SIZE_INVALID")
        hasher.update(block)
        out.write(block)
    return written


def list_images(client: RegistryClient) -> list[RepositoryTags]:
    """What a registry holds, repository by repository with sorted tags (`kctl image ls`)."""
    result = []
    for repository in sorted(client.catalog()):
        result.append(RepositoryTags(repository, tuple(sorted(client.tags(repository)))))
    return result


# --------------------------------------------------------------------------------------
# Registry hosts


class RegistryHosts:
    """Clients by registry name, with per-registry settings; one client per registry.

    Registries in `insecure` (and loopback ones, as Docker does, unless given a
    CA) are spoken to over plain HTTP; every other registry over verified HTTPS.
    """

    def __init__(
        self,
        *,
        insecure: frozenset[str] = frozenset(),
        credentials: dict[str, Credentials] | None = None,
        ca_files: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> None:
        self._insecure = insecure
        self._credentials = dict(credentials or {})
        self._ca_files = dict(ca_files or {})
        self._timeout = timeout
        self._clients: dict[str, RegistryClient] = {}
        self._lock = threading.Lock()

    def is_insecure(self, registry: str) -> bool:
        """Plain HTTP: named insecure, or a loopback one without a CA of its own."""
        if registry in self._insecure:
            return True
        return is_loopback_registry(registry) and registry not in self._ca_files

    def client(self, registry: str) -> RegistryClient:
        with self._lock:
            client = self._clients.get(registry)
            if client is None:
                client = RegistryClient(
                    registry,
                    insecure=self.is_insecure(registry),
                    ca_file=self._ca_files.get(registry),
                    credentials=self._credentials.get(registry),
                    timeout=self._timeout,
                )
                self._clients[registry] = client
            return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, {}
        for client in clients.values():
            client.close()
