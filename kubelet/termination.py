"""Termination messages: what a container says about why it ended, as Kubernetes reports it.

Each container instance gets an empty file under its Pod's directory,
`containers/<name>/<attempt>.termination-log`, bind-mounted writable at its
terminationMessagePath (default /dev/termination-log). When the instance has exited, the
file's first 4096 bytes become state.terminated.message; with terminationMessagePolicy
FallbackToLogsOnError and an empty file, a failed container's last 80 log lines (at most
2048 bytes) are used instead. Messages are read once per exited instance and cached: an
exited container's file does not change. The files go with the Pod's directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubelet.runtime import logs
from kubelet.runtime.interface import ContainerState, ContainerStatus, Mount

MAX_MESSAGE = 4096
FALLBACK_LINES = 80
FALLBACK_BYTES = 2048
DEFAULT_PATH = "/dev/termination-log"


def message_file(pod_dir: Path, name: str, attempt: int) -> Path:
    return pod_dir / "containers" / name / f"{attempt}.termination-log"


def prepare(pod_dir: Path, container: dict[str, Any], attempt: int) -> Mount:
    """Make the instance's empty message file and the mount that exposes it."""
    path = message_file(pod_dir, container["name"], attempt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    path.chmod(0o666)  # writable whatever user the container runs as
    target = container.get("terminationMessagePath") or DEFAULT_PATH
    return Mount(host_path=str(path), container_path=target)


def read_message(pod_dir: Path, container: dict[str, Any], status: ContainerStatus) -> str:
    """The message of an exited instance ("" when it left none)."""
    path = message_file(pod_dir, container["name"], status.attempt)
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_MESSAGE).decode(errors="replace")
    except OSError:
        text = ""
    failed = status.exit_code not in (0, None)
    if text or not failed or container.get("terminationMessagePolicy") != "FallbackToLogsOnError":
        return text
    lines = logs.read_log(status.log_path, tail=FALLBACK_LINES)
    return b"".join(lines)[-FALLBACK_BYTES:].decode(errors="replace")


class Messages:
    """Messages of exited instances, read once."""

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}

    def of(self, pod_dir: Path, container: dict[str, Any], status: ContainerStatus | None) -> str:
        if status is None or status.state != ContainerState.EXITED:
            return ""
        if status.id not in self._cache:
            self._cache[status.id] = read_message(pod_dir, container, status)
        return self._cache[status.id]
