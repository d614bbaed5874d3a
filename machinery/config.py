"""The client configuration file: clusters, contexts, and which one is current.

Its shape follows kubeconfig so it reads familiar:

    apiVersion: v1
    kind: Config
    current-context: kubelite
    clusters:
    - name: kubelite
      cluster: {servers: ["127.0.0.1:6443"]}
    contexts:
    - name: kubelite
      context: {cluster: kubelite, namespace: default}

The file lives at $KUBELITE_CONFIG, else ~/.kubelite/config. A cluster
bring-up adds its own context and makes it current; other contexts stay.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import yaml


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
    servers = (cluster.get("cluster") or {}).get("servers") or []
    if not servers:
        raise ConfigError(f'cluster "{cluster_name}" in {path} names no servers')
    return Context(
        name, [str(s) for s in servers], (ctx.get("context") or {}).get("namespace") or "default"
    )


def save_context(
    ctx: Context, path: pathlib.Path | None = None, *, make_current: bool = True
) -> None:
    """Add or replace ctx (and its cluster) in the config file, atomically."""
    path = path or default_path()
    data = _load(path)
    for section, entry in (
        ("clusters", {"name": ctx.name, "cluster": {"servers": list(ctx.servers)}}),
        (
            "contexts",
            {"name": ctx.name, "context": {"cluster": ctx.name, "namespace": ctx.namespace}},
        ),
    ):
        items = [
            i
            for i in data.get(section) or []
            if not (isinstance(i, dict) and i.get("name") == ctx.name)
        ]
        items.append(entry)
        data[section] = items
    if make_current:
        data["current-context"] = ctx.name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)


def remove_context(name: str, path: pathlib.Path | None = None) -> None:
    path = path or default_path()
    if not path.exists():
        return
    data = _load(path)
    for section in ("clusters", "contexts"):
        data[section] = [
            i
            for i in data.get(section) or []
            if not (isinstance(i, dict) and i.get("name") == name)
        ]
    if data.get("current-context") == name:
        data["current-context"] = ""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)
