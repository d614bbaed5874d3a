"""Merging a container spec with its image config, as Kubernetes defines it.

merge_process: `command` replaces the image's Entrypoint and drops its Cmd; `args` alone
replaces Cmd; neither keeps Entrypoint + Cmd. The container's env overrides the image's
by name, keeping the image's order first. workingDir falls back to the image's, then "/".

resolve_user turns runAsUser/runAsGroup and the image's User ("1000", "app", "app:staff",
"1000:50") into numbers, reading /etc/passwd and /etc/group from the top-most image layer
that has them (resolved inside that layer, so a symlink in an image cannot point the lookup
at the node's files), and adds the user's supplementary groups as container runtimes do.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from kubelet.runtime.interface import InvalidConfigError
from kubelet.runtime.paths import secure_join


@dataclasses.dataclass(frozen=True)
class ImageProcess:
    """The process part of an image config (OCI config.Entrypoint/Cmd/Env/WorkingDir/User)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()  # "KEY=value"
    working_dir: str = ""
    user: str = ""


@dataclasses.dataclass(frozen=True)
class MergedProcess:
    argv: tuple[str, ...]
    env: dict[str, str]
    working_dir: str
    user: str


def merge_process(
    image: ImageProcess,
    *,
    command: Sequence[str] = (),
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    working_dir: str = "",
) -> MergedProcess:
    if command:
        argv = (*command, *args)
    elif args:
        argv = (*image.entrypoint, *args)
    else:
        argv = (*image.entrypoint, *image.cmd)
    merged: dict[str, str] = {}
    for item in image.env:
        key, _, value = item.partition("=")
        merged[key] = value
    merged.update(env or {})
    return MergedProcess(
        argv=argv,
        env=merged,
        working_dir=working_dir or image.working_dir or "/",
        user=image.user,
    )


def _layer_file(layers: Sequence[Path], name: str) -> list[str] | None:
    """Lines of /etc/<name> from the top-most layer that has (or deletes) it."""
    for layer in reversed(layers):
        path = secure_join(str(layer), f"/etc/{name}")
        try:
            info = os.stat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
            return None  # an overlay whiteout: an upper layer deleted the file
        if not stat.S_ISREG(info.st_mode):
            return None
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()
    return None


def _entries(lines: list[str] | None) -> list[list[str]]:
    return [line.split(":") for line in lines or [] if line and not line.startswith("#")]


def resolve_user(
    layers: Sequence[Path],
    *,
    image_user: str,
    run_as_user: int | None,
    run_as_group: int | None,
    supplemental_groups: Sequence[int] = (),
    where: str = "container",
) -> tuple[int, int, tuple[int, ...]]:
    """(uid, gid, supplementary gids) the container's process runs as."""
    passwd = _entries(_layer_file(layers, "passwd"))
    groups = _entries(_layer_file(layers, "group"))
    user_part, _, group_part = image_user.partition(":")
    name = None
    passwd_gid = 0
    if run_as_user is not None:
        uid = run_as_user
    elif user_part.isdigit():
        uid = int(user_part)
    elif user_part:
        match = next((e for e in passwd if e[0] == user_part and len(e) > 3), None)
        if match is None:
            raise InvalidConfigError(
                f"{where}: image user {user_part!r} is not in the image's /etc/passwd"
            )
        uid = int(match[2])
    else:
        uid = 0
    entry = next((e for e in passwd if len(e) > 3 and e[2] == str(uid)), None)
    if entry is not None:
        name, passwd_gid = entry[0], int(entry[3])
    if run_as_group is not None:
        gid = run_as_group
    elif group_part.isdigit():
        gid = int(group_part)
    elif group_part:
        match = next((e for e in groups if e[0] == group_part and len(e) > 2), None)
        if match is None:
            raise InvalidConfigError(
                f"{where}: image group {group_part!r} is not in the image's /etc/group"
            )
        gid = int(match[2])
    else:
        gid = passwd_gid
    extra = [int(e[2]) for e in groups if len(e) > 3 and name and name in e[3].split(",")]
    ordered = dict.fromkeys([*extra, *supplemental_groups])
    ordered.pop(gid, None)
    return uid, gid, (gid, *ordered)
