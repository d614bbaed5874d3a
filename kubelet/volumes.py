"""Pod volumes on the node, and the container mounts of them.

Kinds: emptyDir (medium Memory: a tmpfs of sizeLimit), hostPath (checked against its
`type`), configMap, secret, downwardAPI, and projected (any mix of configMap, secret and
downwardAPI sources in one directory). serviceAccountToken projections are refused:
this cluster issues no tokens.

Layout: every Pod has `<root>/pods/<uid>/volumes/<plugin>/<volume>` for the volumes the
kubelet makes (kubernetes.io~empty-dir, ~configmap, ~secret, ~downward-api, ~projected);
hostPath volumes are the node's own paths. The runtime bind-mounts these into each
container (Mount with sub_path and read_only); the kubelet itself mounts only tmpfs: for
emptyDir medium Memory, and under every secret volume, so that Secret values never reach
the node's disk (as Kubernetes does).

File volumes (all but emptyDir and hostPath) are written atomically the way Kubernetes
writes them: the files go into a fresh hidden directory `..<timestamp>`, a symlink `..data`
is swapped onto it by rename(2), and each top-level name is a symlink into `..data`. A
container therefore sees either the old set of files or the new one, never a mix, and an
update is one rename. setup() is idempotent and rewrites such a volume only when its
content or modes changed, so the kubelet calls it on every sync of a Pod and on every
change of a ConfigMap or Secret the Pod uses (and labels in a downwardAPI volume follow
the Pod's own changes).

Invariant: teardown() leaves nothing under the Pod directory and no mount below it.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

from kubelet import mounts
from kubelet.envvars import EnvContext, EnvError, expand, field_value, resource_value
from kubelet.runtime.interface import Mount
from kubelet.runtime.paths import ensure_beneath
from machinery import quantity

EMPTY_DIR = "kubernetes.io~empty-dir"
CONFIG_MAP = "kubernetes.io~configmap"
SECRET = "kubernetes.io~secret"
DOWNWARD_API = "kubernetes.io~downward-api"
PROJECTED = "kubernetes.io~projected"
DATA_LINK = "..data"
DEFAULT_MODE = 0o644
SUPPORTED = ("emptyDir", "hostPath", "configMap", "secret", "downwardAPI", "projected")
SECRET_TMPFS_BYTES = 16 * 1024 * 1024

Payload = dict[str, tuple[bytes, int]]  # relative path -> (content, mode)


class VolumeError(Exception):
    """A volume could not be set up (FailedMount) or a mount of it is invalid."""


class Sources(Protocol):
    def configmap(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...


@dataclasses.dataclass(frozen=True)
class Volume:
    name: str
    kind: str  # emptyDir, hostPath, configMap
    host_path: str
    read_only: bool = False  # forced for every mount (configMap)
    creates_sub_paths: bool = True  # subPath directories are made on demand


class VolumeManager:
    def __init__(self, pods_dir: Path, sources: Sources) -> None:
        self._pods_dir = Path(pods_dir)
        self._sources = sources
        self._pods_dir.mkdir(parents=True, exist_ok=True)

    def pod_dir(self, uid: str) -> Path:
        return self._pods_dir / uid

    def pod_uids_on_disk(self) -> list[str]:
        return sorted(entry.name for entry in self._pods_dir.iterdir() if entry.is_dir())

    # -- setup ------------------------------------------------------------------------------

    def setup(self, pod: dict[str, Any], context: EnvContext | None = None) -> dict[str, Volume]:
        """Make every volume of the Pod present and current; VolumeError names every one
        that cannot be (after trying all of them, so one bad volume does not hide the
        others' progress). context gives downwardAPI resource fields the node's figures."""
        uid = pod["metadata"]["uid"]
        volumes: dict[str, Volume] = {}
        problems = []
        for spec in pod.get("spec", {}).get("volumes") or []:
            try:
                volumes[spec["name"]] = self._setup_one(pod, uid, spec, context or EnvContext())
            except (VolumeError, OSError) as err:
                problems.append(f'volume "{spec.get("name")}": {err}')
        if problems:
            raise VolumeError("; ".join(problems))
        return volumes

    def _setup_one(
        self, pod: dict[str, Any], uid: str, spec: dict[str, Any], context: EnvContext
    ) -> Volume:
        name = spec["name"]
        if "emptyDir" in spec:
            return self._empty_dir(pod, uid, name, spec["emptyDir"] or {})
        if "hostPath" in spec:
            return host_path_volume(name, spec["hostPath"])
        for field, plugin in (
            ("configMap", CONFIG_MAP),
            ("secret", SECRET),
            ("downwardAPI", DOWNWARD_API),
            ("projected", PROJECTED),
        ):
            if field in spec:
                source = spec[field] or {}
                payload = self._payload(pod, field, source, context)
                path = self.pod_dir(uid) / "volumes" / plugin / name
                if field == "secret" or _has_secret(field, source):
                    path.mkdir(parents=True, exist_ok=True)
                    if not mounts.is_mountpoint(path):
                        mounts.mount_tmpfs(path, size_bytes=SECRET_TMPFS_BYTES, mode=0o755)
                write_atomic(path, payload)
                return Volume(name, field, str(path), read_only=True, creates_sub_paths=False)
        kind = next((k for k in spec if k != "name"), "unknown")
        raise VolumeError(
            f"volume type {kind} is not supported by this kubelet (supported: "
            f"{', '.join(SUPPORTED)})"
        )

    def _empty_dir(self, pod: dict[str, Any], uid: str, name: str, spec: dict) -> Volume:
        path = self.pod_dir(uid) / "volumes" / EMPTY_DIR / name
        path.mkdir(parents=True, exist_ok=True)
        if spec.get("medium") == "Memory":
            if not mounts.is_mountpoint(path):
                mounts.mount_tmpfs(path, size_bytes=_tmpfs_size(pod, spec))
        else:
            path.chmod(0o777)  # Kubernetes' emptyDir is world-writable, for non-root users
        return Volume(name, "emptyDir", str(path))

    def _payload(
        self, pod: dict[str, Any], field: str, spec: dict[str, Any], context: EnvContext
    ) -> Payload:
        namespace = pod["metadata"].get("namespace", "default")
        default_mode = spec.get("defaultMode", DEFAULT_MODE)
        if field == "downwardAPI":
            return downward_payload(pod, spec.get("items") or [], default_mode, context)
        if field in ("configMap", "secret"):
            return self._object_payload(namespace, field, spec, default_mode)
        payload: Payload = {}
        for index, projection in enumerate(spec.get("sources") or []):
            if "serviceAccountToken" in projection:
                raise VolumeError(
                    f"sources[{index}]: serviceAccountToken is not supported (this cluster "
                    "issues no service account tokens)"
                )
            for kind in ("configMap", "secret"):
                if kind in projection:
                    payload.update(
                        self._object_payload(namespace, kind, projection[kind], default_mode)
                    )
            if "downwardAPI" in projection:
                items = projection["downwardAPI"].get("items") or []
                payload.update(downward_payload(pod, items, default_mode, context))
        return payload

    def _object_payload(
        self, namespace: str, field: str, spec: dict[str, Any], default_mode: int
    ) -> Payload:
        kind = "secret" if field == "secret" else "configmap"
        name = spec.get("secretName" if "secretName" in spec else "name", "")
        obj = (
            self._sources.secret(namespace, name)
            if kind == "secret"
            else self._sources.configmap(namespace, name)
        )
        if obj is None:
            if spec.get("optional"):
                return {}
            raise VolumeError(f'{kind} "{name}" not found')
        return object_payload(obj, spec, kind=kind, default_mode=default_mode)

    # -- container mounts -----------------------------------------------------------------------

    def mounts_for(
        self, container: dict[str, Any], volumes: dict[str, Volume], env: dict[str, str]
    ) -> tuple[Mount, ...]:
        out = []
        for index, spec in enumerate(container.get("volumeMounts") or []):
            where = f"volumeMounts[{index}] ({spec.get('name')})"
            volume = volumes.get(spec.get("name", ""))
            if volume is None:
                raise VolumeError(f"{where}: no volume named {spec.get('name')!r} in the Pod")
            sub_path = spec.get("subPath", "")
            if spec.get("subPathExpr"):
                sub_path = expand(spec["subPathExpr"], env)
            if sub_path:
                _check_sub_path(sub_path, where)
                if volume.creates_sub_paths:
                    _make_sub_path(volume, sub_path, where)
            out.append(
                Mount(
                    host_path=volume.host_path,
                    container_path=spec["mountPath"],
                    read_only=bool(spec.get("readOnly")) or volume.read_only,
                    sub_path=sub_path,
                )
            )
        return tuple(out)

    # -- teardown -------------------------------------------------------------------------------

    def teardown(self, uid: str) -> None:
        directory = self.pod_dir(uid)
        if not directory.exists():
            return
        mounts.unmount_all_under(directory)
        left = mounts.mountpoints_under(directory)
        if left:
            raise VolumeError(f"mounts still present under {directory}: {', '.join(left)}")
        shutil.rmtree(directory)


# -- hostPath ----------------------------------------------------------------------------------

_TYPE_CHECKS = {
    "Directory": (stat.S_ISDIR, "a directory"),
    "File": (stat.S_ISREG, "a file"),
    "Socket": (stat.S_ISSOCK, "a socket"),
    "CharDevice": (stat.S_ISCHR, "a character device"),
    "BlockDevice": (stat.S_ISBLK, "a block device"),
}


def host_path_volume(name: str, spec: dict[str, Any]) -> Volume:
    """Check (and for the *OrCreate types make) a hostPath volume's path."""
    path = spec.get("path", "")
    kind = spec.get("type") or ""
    if not os.path.isabs(path):
        raise VolumeError(f"hostPath {path!r} is not an absolute path")
    if kind == "DirectoryOrCreate":
        if not os.path.exists(path):
            os.makedirs(path, mode=0o755)
        kind = "Directory"
    elif kind == "FileOrCreate":
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            with open(path, "a"):
                pass
            os.chmod(path, 0o644)
        kind = "File"
    if kind:
        if kind not in _TYPE_CHECKS:
            raise VolumeError(f"hostPath type {kind!r} is not supported")
        check, what = _TYPE_CHECKS[kind]
        try:
            info = os.stat(path)
        except FileNotFoundError:
            raise VolumeError(f"hostPath type check failed: {path} does not exist") from None
        if not check(info.st_mode):
            raise VolumeError(f"hostPath type check failed: {path} is not {what}")
    elif not os.path.exists(path):
        # An unchecked hostPath that is missing is made as a directory, as Kubernetes does.
        os.makedirs(path, mode=0o755)
    return Volume(name, "hostPath", path)


# -- configMap -----------------------------------------------------------------------------------


def object_payload(
    obj: dict[str, Any],
    spec: dict[str, Any],
    *,
    kind: str = "configmap",
    default_mode: int | None = None,
) -> Payload:
    """The files of a configMap or secret volume source (items choose keys and paths)."""
    name = obj.get("metadata", {}).get("name", "")
    values: dict[str, bytes] = {}
    if kind == "secret":
        for key, encoded in (obj.get("data") or {}).items():
            values[key] = base64.b64decode(encoded)
    else:
        values = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        for key, encoded in (obj.get("binaryData") or {}).items():
            values[key] = base64.b64decode(encoded)
    mode = spec.get("defaultMode", DEFAULT_MODE) if default_mode is None else default_mode
    items = spec.get("items")
    if not items:
        return {key: (value, mode) for key, value in values.items()}
    payload = {}
    for item in items:
        key = item.get("key", "")
        if key not in values:
            if spec.get("optional"):
                continue
            raise VolumeError(f'{kind} "{name}" has no key {key!r}')
        path = item.get("path") or key
        _check_payload_path(path)
        payload[path] = (values[key], item.get("mode", mode))
    return payload


def configmap_payload(configmap: dict[str, Any], spec: dict[str, Any]) -> Payload:
    return object_payload(configmap, spec, kind="configmap")


def downward_payload(
    pod: dict[str, Any], items: list[dict[str, Any]], default_mode: int, context: EnvContext
) -> Payload:
    """Files of a downwardAPI volume: the Pod's own fields and its containers' resources."""
    payload = {}
    containers = {c["name"]: c for c in pod.get("spec", {}).get("containers") or []}
    for item in items:
        path = item.get("path", "")
        _check_payload_path(path)
        try:
            if "fieldRef" in item:
                value = field_value(pod, item["fieldRef"].get("fieldPath", ""), context)
            else:
                ref = item.get("resourceFieldRef") or {}
                container = containers.get(ref.get("containerName", ""), {})
                value = resource_value(pod, container, ref, context)
        except EnvError as err:
            raise VolumeError(f"item {path!r}: {err}") from None
        payload[path] = (value.encode(), item.get("mode", default_mode))
    return payload


def _has_secret(field: str, spec: dict[str, Any]) -> bool:
    return field == "projected" and any("secret" in s for s in spec.get("sources") or [])


def _check_payload_path(path: str) -> None:
    parts = path.split("/")
    if os.path.isabs(path) or ".." in parts or path.startswith(".."):
        raise VolumeError(f"item path {path!r} must be relative and must not contain '..'")


def _check_sub_path(sub_path: str, where: str) -> None:
    if os.path.isabs(sub_path) or ".." in sub_path.split("/"):
        raise VolumeError(f"{where}: subPath {sub_path!r} must be relative without '..'")


def _make_sub_path(volume: Volume, sub_path: str, where: str) -> None:
    """Create a missing subPath directory inside the volume. NB: a container of the Pod may
    be changing the volume meanwhile (symlinks in an emptyDir); ensure_beneath neither leaves
    the volume nor follows a component swapped for a symlink after resolution."""
    try:
        ensure_beneath(volume.host_path, sub_path, directory=True, mode=0o777)
    except OSError as err:
        raise VolumeError(f"{where}: subPath {sub_path!r}: {err.strerror or err}") from None


def _current_payload(directory: Path) -> Payload | None:
    data = directory / DATA_LINK
    if not data.is_symlink():
        return None
    root = directory / os.readlink(data)
    found = {}
    for dirpath, _, files in os.walk(root):
        for file in files:
            full = Path(dirpath) / file
            relative = str(full.relative_to(root))
            found[relative] = (full.read_bytes(), stat.S_IMODE(full.stat().st_mode))
    return found


def write_atomic(directory: Path, payload: Payload) -> bool:
    """Make directory hold exactly payload, by one symlink swap; False when it already did."""
    directory.mkdir(parents=True, exist_ok=True)
    if _current_payload(directory) == payload:
        return False
    data = directory / DATA_LINK
    old = os.readlink(data) if data.is_symlink() else None
    stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
    fresh = Path(tempfile.mkdtemp(prefix=f"..{stamp}.", dir=directory))
    fresh.chmod(0o755)
    for relative, (content, mode) in payload.items():
        target = fresh / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(mode)
    staging = directory / "..data_tmp"
    if staging.is_symlink():
        staging.unlink()
    staging.symlink_to(fresh.name)
    os.rename(staging, data)
    tops = {relative.split("/", 1)[0] for relative in payload}
    for top in tops:
        link = directory / top
        if not link.is_symlink():
            link.symlink_to(f"{DATA_LINK}/{top}")
    for entry in directory.iterdir():
        if entry.name.startswith("..") or entry.name in tops:
            continue
        if entry.is_symlink():
            entry.unlink()
    if old and old != fresh.name:
        shutil.rmtree(directory / old, ignore_errors=True)
    return True


def _tmpfs_size(pod: dict[str, Any], spec: dict[str, Any]) -> int | None:
    """sizeLimit, else the sum of the containers' memory limits when all have one."""
    if spec.get("sizeLimit"):
        return quantity.to_bytes(spec["sizeLimit"])
    total = 0
    for container in pod.get("spec", {}).get("containers") or []:
        limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
        if not limit:
            return None  # the tmpfs default: half the node's memory
        total += quantity.to_bytes(limit)
    return total or None
