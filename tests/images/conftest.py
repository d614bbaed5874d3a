"""Fixtures for the image tests: a real registry, the default images, a token-auth front.

The session starts one Debian docker-registry on a free loopback port with a
temp storage dir (deploy.registry), and pushes the default images to it
once. Tests that push more use repositories of their own (unique_repo), so
they never see each other's content. Tests that corrupt storage start a
registry of their own (fresh_registry).

AuthProxy is a small HTTP front on loopback that forwards to the real
registry and, when asked, demands Bearer tokens from its own token endpoint
(the way Docker Hub does), counts requests per path, and can hold manifest
requests at a gate so that a test can line up concurrent pulls.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import re
import sys
import threading
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.images.build import Busybox, build_default_images, inspect_busybox, push_default_images
from deploy.images.oci import Image
from deploy.registry import RunningRegistry, start_registry
from kubelet.images import ImageStore
from machinery.registry import RegistryClient, RegistryHosts

_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    if not Path("/usr/bin/docker-registry").exists():
        pytest.fail("docker-registry is not installed (Debian package docker-registry)")
    work = tmp_path_factory.mktemp("registry")
    running = start_registry(storage=work / "storage", workdir=work)
    yield running
    running.stop()


@pytest.fixture
def fresh_registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    running = start_registry(storage=tmp_path / "registry-storage", workdir=tmp_path)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def hosts() -> Iterator[RegistryHosts]:
    registries = RegistryHosts()
    yield registries
    registries.close()


@pytest.fixture(scope="session")
def registry_client(registry: RunningRegistry, hosts: RegistryHosts) -> RegistryClient:
    return hosts.client(registry.address)


@pytest.fixture(scope="session")
def busybox() -> Busybox:
    return inspect_busybox()


@pytest.fixture(scope="session")
def default_images(busybox: Busybox) -> dict[str, Image]:
    return build_default_images(busybox, epoch=0)


@pytest.fixture(scope="session")
def pushed_defaults(
    registry: RunningRegistry, hosts: RegistryHosts, default_images: dict[str, Image]
) -> dict[str, Image]:
    push_default_images(hosts, registry.address, default_images, tags=("latest",))
    return default_images


@pytest.fixture
def unique_repo() -> str:
    return f"kubelite-test/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


def registry_blob_file(running: RunningRegistry, digest: str) -> Path:
    """Where distribution's filesystem driver keeps a blob's bytes."""
    encoded = digest.partition(":")[2]
    return running.storage / "docker/registry/v2/blobs/sha256" / encoded[:2] / encoded / "data"


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # A client closing a kept-alive connection (a pool at the end of a test) is normal.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class AuthProxy:
    """A loopback HTTP front for a registry: token auth, request counts, a manifest gate."""

    def __init__(
        self,
        upstream: str,
        *,
        require_token: bool = False,
        users: dict[str, str] | None = None,
    ) -> None:
        self.upstream = upstream
        self.require_token = require_token
        self.users = users or {}
        self.requests: Counter[str] = Counter()
        self.token_requests: list[dict[str, list[str]]] = []
        self.manifest_gate = threading.Event()
        self.manifest_gate.set()
        self.manifest_waiting = threading.Semaphore(0)
        self._tokens: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.manifest_gate.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def count(self, pattern: str, method: str = "GET") -> int:
        regex = re.compile(pattern)
        with self._lock:
            return sum(
                n
                for key, n in self.requests.items()
                if key.startswith(method + " ") and regex.search(key)
            )

    # ---- auth decisions

    def issue_token(self, query: dict[str, list[str]], authorization: str) -> tuple[int, dict]:
        with self._lock:
            self.token_requests.append(query)
        if self.users:
            user, password = _basic(authorization)
            if self.users.get(user) != password:
                return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}
        token = uuid.uuid4().hex
        with self._lock:
            self._tokens[token] = set(query.get("scope", []))
        return 200, {"token": token, "expires_in": 300}

    def allowed(self, method: str, path: str, authorization: str) -> tuple[bool, str]:
        """Whether the token grants this request, and the scope it would need."""
        needed = _needed_scope(method, path)
        if not authorization.startswith("Bearer "):
            return False, needed
        with self._lock:
            scopes = self._tokens.get(authorization.removeprefix("Bearer "))
        if scopes is None:
            return False, needed
        return (not needed or _grants(scopes, needed)), needed

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                with proxy._lock:
                    proxy.requests[f"{self.command} {path}"] += 1
                if path == "/token":
                    self._token()
                    return
                if proxy.require_token:
                    ok, needed = proxy.allowed(
                        self.command, path, self.headers.get("Authorization", "")
                    )
                    if not ok:
                        self._challenge(needed)
                        return
                if self.command == "GET" and "/manifests/" in path:
                    proxy.manifest_waiting.release()
                    proxy.manifest_gate.wait(timeout=60)
                self._forward()

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _any

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _token(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                status, body = proxy.issue_token(query, self.headers.get("Authorization", ""))
                self._json(status, body)

            def _challenge(self, scope: str) -> None:
                realm = f"http://{proxy.address}/token"
                header = f'Bearer realm="{realm}",service="kubelite-test"'
                if scope:
                    header += f',scope="{scope}"'
                self._json(
                    401,
                    {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                    {"WWW-Authenticate": header},
                )

            def _json(self, status: int, body: dict, extra: dict | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _forward(self) -> None:
                body = self._body()
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in _HOP_HEADERS and k.lower() != "authorization"
                }
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                finally:
                    conn.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in _HOP_HEADERS and key.lower() != "content-length":
                        self.send_header(key, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

        return Handler


def _basic(authorization: str) -> tuple[str, str]:
    if not authorization.startswith("Basic "):
        return "", ""
    user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
    return user, password


def _needed_scope(method: str, path: str) -> str:
    if path in ("/v2/", "/v2"):
        return ""
    if path.startswith("/v2/_catalog"):
        return "registry:catalog:*"
    match = re.match(r"^/v2/(.+?)/(manifests|blobs|tags)/", path)
    if not match:
        return "?"
    action = "pull" if method in ("GET", "HEAD") else "push"
    return f"repository:{match.group(1)}:{action}"


def _grants(scopes: set[str], needed: str) -> bool:
    kind, _, rest = needed.partition(":")
    name, _, action = rest.rpartition(":")
    for scope in scopes:
        s_kind, _, s_rest = scope.partition(":")
        s_name, _, s_actions = s_rest.rpartition(":")
        if (
            s_kind == kind
            and s_name == name
            and (action in s_actions.split(",") or s_actions == "*")
        ):
            return True
    return False


@pytest.fixture
def auth_proxy(registry: RunningRegistry) -> Iterator[type[AuthProxy]]:
    """A factory for AuthProxy fronts on the session registry, all closed afterwards."""
    made: list[AuthProxy] = []

    def make(**kwargs: object) -> AuthProxy:
        proxy = AuthProxy(registry.address, **kwargs)  # type: ignore[arg-type]
        made.append(proxy)
        return proxy

    yield make  # type: ignore[misc]
    for proxy in made:
        proxy.close()
