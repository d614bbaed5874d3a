"""Writing files that may hold secrets: keys, tokens, client configs, cached code."""

from __future__ import annotations

import os
import pathlib


def write_private(path: pathlib.Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace path with data atomically, never readable by others even for a moment.

    The temporary file carries the writer's PID, so two processes writing the same
    path at once (API servers filling one cache) never write into each other's file.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with open(fd, "wb") as f:
        f.write(data)
    tmp.chmod(mode)
    tmp.replace(path)
