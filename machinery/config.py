"""The client configuration file: clusters, users, contexts, and which one is current.

Its shape follows kubeconfig so it reads familiar:

    apiVersion: v1
    kind: Config
    current-context: kubelite
    clusters:
    - name: kubelite
      cluster:
        servers: ["127.0.0.1:6443"]        # mutual TLS: client certificates
        token-servers: ["127.0.0.1:6444"]  # TLS for bearer-token users
        certificate-authority: /var/lib/kubelite/pki/ca.crt
    users:
    - name: kubelite-admin
      user: {client-certificate: admin.crt, client-key: admin.key}
    contexts:
    - name: kubelite
      context: {cluster: kubelite, user: kubelite-admin, namespace: default}

Each file may be given by path (relative paths are relative to the config
file) or inline as base64 in the `-data` form (`certificate-authority-data`,
`client-certificate-data`, `client-key-data`); a user may hold `token` or
`token-file` instead of a certificate. The same file format configures the
cluster's components (their --kubeconfig).

The file lives at $KUBELITE_CONFIG, else ~/.kubelite/config. A cluster
bring-up adds its own context and makes it current; other contexts stay.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import pathlib
from typing import Any

import yaml

from machinery.credentials import Credentials
from machinery.files import write_private


class ConfigError(Exception):
    pass


def default_path() -> pathlib.Path:
    env = os.environ.get("KUBELITE_CONFIG")
    if env:
        return pathlib.Path(env)
    return pathlib.Path.home() / ".kubelite" / "config"


@dataclasses.dataclass(frozen=True)
class Context:
    name: str
    servers: list[str]
    namespace: str = "default"
    # None: plaintext, for a server that asks for no credentials.
    credentials: Credentials | None = None
    # Paths the credentials were read from, kept so a rewrite keeps them as paths.
    files: dict[str, str] = dataclasses.field(default_factory=dict)


def _load(path: pathlib.Path) -> dict[str, Any]:
    if not path.exists():
        return {"apiVersion": "v1", "kind": "Config", "clusters": [], "contexts": []}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"failed to read client config {path}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"failed to read client config {path}: not a mapping")
    return data


def _named(items: Any, name: str) -> dict[str, Any] | None:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name:
            return item
    return None


def load_context(path: pathlib.Path | None = None, context: str = "") -> Context:
    """The named (or current) context of the config file; ConfigError says what is missing."""
    path = path or default_path()
    data = _load(path)
    name = context or data.get("current-context", "")
    if not name:
        raise ConfigError(
            f"no current context in {path}: bring a cluster up with deploy/up.sh, "
            "or pass --server HOST:PORT"
        )
    ctx = _named(data.get("contexts"), name)
    if ctx is None:
        raise ConfigError(f'context "{name}" is not in {path}')
    cluster_name = (ctx.get("context") or {}).get("cluster", name)
    cluster = _named(data.get("clusters"), cluster_name)
    if cluster is None:
        raise ConfigError(f'cluster "{cluster_name}" of context "{name}" is not in {path}')
    body = cluster.get("cluster") or {}
    user_name = (ctx.get("context") or {}).get("user", "")
    user: dict[str, Any] = {}
    if user_name:
        entry = _named(data.get("users"), user_name)
        if entry is None:
            raise ConfigError(f'user "{user_name}" of context "{name}" is not in {path}')
        user = entry.get("user") or {}
    where = f'context "{name}" of {path}'
    credentials = _credentials(body, user, path.parent, where)
    token_only = credentials is not None and credentials.token and not credentials.cert
    servers = body.get("token-servers" if token_only else "servers") or []
    if not servers:
        field = "token-servers" if token_only else "servers"
        raise ConfigError(f'cluster "{cluster_name}" in {path} names no {field}')
    files = {k: str(v) for k, v in {**body, **user}.items() if k in _FILE_FIELDS}
    return Context(
        name,
        [str(s) for s in servers],
        (ctx.get("context") or {}).get("namespace") or "default",
        credentials,
        files,
    )


_FILE_FIELDS = ("certificate-authority", "client-certificate", "client-key", "token-file")


def _material(section: dict[str, Any], field: str, base: pathlib.Path, where: str) -> bytes:
    """A field's bytes from its inline `-data` form or the file it names; b"" if absent."""
    inline = section.get(f"{field}-data")
    if inline:
        try:
            return base64.b64decode(str(inline), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{field}-data in {where} is not valid base64") from None
    named = section.get(field)
    if not named:
        return b""
    file = base / os.path.expanduser(str(named))
    try:
        return file.read_bytes()
    except OSError as err:
        raise ConfigError(f"{field} of {where}: cannot read {file}: {err.strerror}") from None


def _credentials(
    cluster: dict[str, Any], user: dict[str, Any], base: pathlib.Path, where: str
) -> Credentials | None:
    ca = _material(cluster, "certificate-authority", base, where)
    cert = _material(user, "client-certificate", base, where)
    key = _material(user, "client-key", base, where)
    token = str(user.get("token") or "")
    if not token and user.get("token-file"):
        token = _material(user, "token-file", base, where).decode().strip()
    if not (ca or cert or key or token):
        return None
    if not ca:
        raise ConfigError(f"{where} has credentials but no certificate-authority to check with")
    if bool(cert) != bool(key):
        raise ConfigError(f"{where} needs both client-certificate and client-key, or neither")
    if not cert and not token:
        raise ConfigError(f"{where} has a certificate-authority but no client certificate or token")
    return Credentials(ca=ca, cert=cert, key=key, token=token)


def save_context(
    ctx: Context, path: pathlib.Path | None = None, *, make_current: bool = True
) -> None:
    """Add or replace ctx (and its cluster) in the config file, atomically."""
    path = path or default_path()
    data = _load(path)
    cluster: dict[str, Any] = {"servers": list(ctx.servers)}
    context: dict[str, Any] = {"cluster": ctx.name, "namespace": ctx.namespace}
    entries: list[tuple[str, dict[str, Any]]] = [
        ("clusters", {"name": ctx.name, "cluster": cluster})
    ]
    if ctx.credentials is not None:
        cred = ctx.credentials
        user: dict[str, Any] = {}
        _put(cluster, "certificate-authority", cred.ca, ctx.files)
        _put(user, "client-certificate", cred.cert, ctx.files)
        _put(user, "client-key", cred.key, ctx.files)
        if cred.token:
            user["token"] = cred.token
        if cred.token and not cred.cert:
            cluster["token-servers"] = cluster.pop("servers")
        context["user"] = ctx.name
        entries.append(("users", {"name": ctx.name, "user": user}))
    entries.append(("contexts", {"name": ctx.name, "context": context}))
    for section, entry in entries:
        items = [
            i
            for i in data.get(section) or []
            if not (isinstance(i, dict) and i.get("name") == ctx.name)
        ]
        items.append(entry)
        data[section] = items
    if make_current:
        data["current-context"] = ctx.name
    _write(path, data)


def _put(section: dict[str, Any], field: str, value: bytes, files: dict[str, str]) -> None:
    if not value:
        return
    if field in files:
        section[field] = files[field]
    else:
        section[f"{field}-data"] = base64.b64encode(value).decode()


def _write(path: pathlib.Path, data: dict[str, Any]) -> None:
    """Replace the file atomically; it may hold keys, so only its owner can read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, yaml.safe_dump(data, sort_keys=False).encode())


def remove_context(name: str, path: pathlib.Path | None = None) -> None:
    path = path or default_path()
    if not path.exists():
        return
    data = _load(path)
    for section in ("clusters", "users", "contexts"):
        data[section] = [
            i
            for i in data.get(section) or []
            if not (isinstance(i, dict) and i.get("name") == name)
        ]
    if data.get("current-context") == name:
        data["current-context"] = ""
    _write(path, data)
