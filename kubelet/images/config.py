"""The image config: what a container runs by default, and the layers' diff ids.

Parsed from the OCI image config or the Docker image config (the same JSON
shape for everything used here). Kubernetes merges a container's
command/args/env/workingDir with Entrypoint/Cmd/Env/WorkingDir; the runtime
does that merge, this module only reads the image's side faithfully:
Entrypoint and Cmd stay None when the image leaves them unset, which is not
the same as an empty list.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from machinery.registry import InvalidReference, check_digest_format


class ImageConfigError(ValueError):
    """An image config that cannot be used; the message names the image and the field."""


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """The runtime-relevant part of an image config.

    env holds "NAME=value" strings in the image's order; exposed_ports holds
    "80/tcp" keys; diff_ids are the sha256 of each uncompressed layer tar,
    bottom first, as the config's rootfs lists them.
    """

    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()
    labels: dict[str, str] = dataclasses.field(default_factory=dict, hash=False)
    stop_signal: str = ""
    volumes: tuple[str, ...] = ()
    diff_ids: tuple[str, ...] = ()
    os: str = ""
    architecture: str = ""
    variant: str = ""


def parse_image_config(body: bytes, *, where: str = "image config") -> ImageConfig:
    """Parse and check a config blob; ImageConfigError says which field is wrong where."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageConfigError(f"{where} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ImageConfigError(f"{where} is not a JSON object")
    runtime = data.get("config") or {}
    if not isinstance(runtime, dict):
        raise ImageConfigError(f"{where}: config must be an object")
    return ImageConfig(
        entrypoint=_optional_strings(runtime, "Entrypoint", where),
        cmd=_optional_strings(runtime, "Cmd", where),
        env=_optional_strings(runtime, "Env", where) or (),
        working_dir=_string(runtime, "WorkingDir", where),
        user=_string(runtime, "User", where),
        exposed_ports=_keys(runtime, "ExposedPorts", where),
        labels=_labels(runtime, where),
        stop_signal=_string(runtime, "StopSignal", where),
        volumes=_keys(runtime, "Volumes", where),
        diff_ids=_diff_ids(data, where),
        os=_string(data, "os", where),
        architecture=_string(data, "architecture", where),
        variant=_string(data, "variant", where),
    )


def _optional_strings(data: dict[str, Any], name: str, where: str) -> tuple[str, ...] | None:
    value = data.get(name)
    if value is None:
        return None
    # Docker once wrote Entrypoint/Cmd as a plain string meaning a one-word list.
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageConfigError(f"{where}: config.{name} must be a list of strings")
    return tuple(value)


def _string(data: dict[str, Any], name: str, where: str) -> str:
    value = data.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ImageConfigError(f"{where}: {name} must be a string")
    return value


def _keys(data: dict[str, Any], name: str, where: str) -> tuple[str, ...]:
    value = data.get(name)
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ImageConfigError(f"{where}: config.{name} must be an object")
    return tuple(sorted(str(k) for k in value))


def _labels(data: dict[str, Any], where: str) -> dict[str, str]:
    value = data.get("Labels")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ImageConfigError(f"{where}: config.Labels must map strings to strings")
    return {str(k): v for k, v in value.items()}


def _diff_ids(data: dict[str, Any], where: str) -> tuple[str, ...]:
    rootfs = data.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise ImageConfigError(f"{where}: rootfs must be an object of type 'layers'")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list):
        raise ImageConfigError(f"{where}: rootfs.diff_ids must be a list")
    for index, diff_id in enumerate(diff_ids):
        try:
            check_digest_format(str(diff_id), where=f"rootfs.diff_ids[{index}]")
        except InvalidReference as exc:
            raise ImageConfigError(f"{where}: {exc.why}") from None
    return tuple(str(d) for d in diff_ids)


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
    """What a container runs: argv, environment ("NAME=value"), cwd and the image's user."""

    argv: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    user: str


def resolve_process(
    config: ImageConfig,
    *,
    command: list[str] | None = None,
    args: list[str] | None = None,
    env: list[tuple[str, str]] | None = None,
    working_dir: str = "",
) -> ProcessSpec:
    """Merge a container spec with its image config the way Kubernetes defines it.

    - neither command nor args: the image's Entrypoint + Cmd;
    - command only: command (the image's Entrypoint and Cmd are both ignored);
    - args only: the image's Entrypoint + args;
    - both: command + args.
    An empty list counts as unset, as in the API. Environment: the image's
    variables, then the container's, a container variable replacing an image
    one of the same name in place. `user` is the image's User ("name",
    "uid", "uid:gid"); runAsUser/runAsGroup, and resolving names in the
    image's /etc/passwd, are the runtime's. $(VAR) references in command and
    args are expanded by the kubelet before this, as Kubernetes does.
    Raises ImageConfigError when there is nothing to run.
    """
    if command:
        argv = (*command, *(args or ()))
    elif args:
        argv = (*(config.entrypoint or ()), *args)
    else:
        argv = (*(config.entrypoint or ()), *(config.cmd or ()))
    if not argv:
        raise ImageConfigError(
            "no command to run: the container sets no command or args and the image has no "
            "Entrypoint or Cmd"
        )
    return ProcessSpec(
        argv,
        _merge_env(config.env, env or []),
        working_dir or config.working_dir or "/",
        config.user,
    )


def _merge_env(image_env: tuple[str, ...], container_env: list[tuple[str, str]]) -> tuple[str, ...]:
    merged: dict[str, str] = {}
    for item in image_env:
        name, _, value = item.partition("=")
        merged[name] = value
    for name, value in container_env:
        merged[name] = value
    return tuple(f"{name}={value}" for name, value in merged.items())
