"""Container logs in the CRI line format, written by the shim and read for `kctl logs`.

Each line is `<timestamp> <stream> <tag> <text>\\n`: an RFC 3339 UTC timestamp with nine
fractional digits, `stdout` or `stderr`, `F` for a line that ended with a newline in the
container's output or `P` for a fragment (a line longer than MAX_LINE, or output that
ended without a newline), then the text without its newline. Readers join P fragments to
the next line of the same stream, so reading gives back exactly the bytes written.

Rotation is by size: when the file would pass max_bytes it becomes `<path>.1` (older files
shift up to `<path>.<max_files - 1>` and the oldest is dropped) and writing continues in a
new file. Readers read rotated files too, oldest first.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

MAX_LINE = 16 * 1024
STREAMS = ("stdout", "stderr")


def timestamp(ns: int) -> bytes:
    seconds, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)).encode() + b".%09dZ" % frac


class LogWriter:
    """Turns the container's raw output into CRI log lines, one buffer per stream."""

    def __init__(self, path: str, *, max_bytes: int, max_files: int) -> None:
        if max_files < 1:
            raise ValueError(f"log max_files must be at least 1, got {max_files}")
        self._path = path
        self._max_bytes = max_bytes
        self._max_files = max_files
        self._pending = {name: b"" for name in STREAMS}
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self._size = os.fstat(self._fd).st_size

    def write(self, stream: str, data: bytes) -> None:
        buffer = self._pending[stream] + data
        lines = []
        stamp = timestamp(time.time_ns())
        tag = stream.encode()
        while True:
            newline = buffer.find(b"\n", 0, MAX_LINE + 1)
            if newline >= 0:
                lines.append(b"%s %s F %s\n" % (stamp, tag, buffer[:newline]))
                buffer = buffer[newline + 1 :]
            elif len(buffer) > MAX_LINE:
                lines.append(b"%s %s P %s\n" % (stamp, tag, buffer[:MAX_LINE]))
                buffer = buffer[MAX_LINE:]
            else:
                break
        self._pending[stream] = buffer
        self._emit(lines)

    def flush(self) -> None:
        """Write what is left without a newline as fragments (at the end of the output)."""
        stamp = timestamp(time.time_ns())
        for stream in STREAMS:
            if self._pending[stream]:
                self._emit([b"%s %s P %s\n" % (stamp, stream.encode(), self._pending[stream])])
                self._pending[stream] = b""

    def _emit(self, lines: list[bytes]) -> None:
        """Write whole lines, rotating between two lines when the next would not fit."""
        batch: list[bytes] = []
        batch_size = 0
        for line in lines:
            if self._size + batch_size and self._size + batch_size + len(line) > self._max_bytes:
                self._write(batch)
                batch, batch_size = [], 0
                self._rotate()
            batch.append(line)
            batch_size += len(line)
        self._write(batch)

    def _write(self, batch: list[bytes]) -> None:
        if batch:
            data = b"".join(batch)
            os.write(self._fd, data)
            self._size += len(data)

    def _rotate(self) -> None:
        os.close(self._fd)
        if self._max_files == 1:
            os.unlink(self._path)
        else:
            for index in range(self._max_files - 1, 0, -1):
                older = f"{self._path}.{index - 1}" if index > 1 else self._path
                if os.path.exists(older):
                    os.replace(older, f"{self._path}.{index}")
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self._size = 0

    def close(self) -> None:
        self.flush()
        os.close(self._fd)


@dataclasses.dataclass(frozen=True)
class LogRecord:
    timestamp: str
    stream: str
    partial: bool
    text: bytes


def parse_line(line: bytes) -> LogRecord | None:
    """One CRI log line (with or without its newline); None if it is malformed."""
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 3 or parts[1].decode(errors="replace") not in STREAMS:
        return None
    if parts[2] not in (b"F", b"P"):
        return None
    text = parts[3] if len(parts) == 4 else b""
    return LogRecord(parts[0].decode(), parts[1].decode(), parts[2] == b"P", text)


def log_files(path: str | Path) -> list[Path]:
    """The rotated files and then the current one, oldest first."""
    base = Path(path)
    rotated = []
    index = 1
    while (candidate := Path(f"{base}.{index}")).exists():
        rotated.append(candidate)
        index += 1
    files = list(reversed(rotated))
    if base.exists():
        files.append(base)
    return files


class _Assembler:
    """Joins P fragments into whole lines per stream and renders them for the reader."""

    def __init__(self, *, timestamps: bool, streams: tuple[str, ...]) -> None:
        self._timestamps = timestamps
        self._streams = streams
        self._pending: dict[str, tuple[str, bytes]] = {}

    def feed(self, record: LogRecord) -> bytes | None:
        if record.stream not in self._streams:
            return None
        stamp, text = self._pending.pop(record.stream, (record.timestamp, b""))
        text += record.text
        if record.partial:
            self._pending[record.stream] = (stamp, text)
            return None
        return self._render(stamp, text + b"\n")

    def drain(self) -> list[bytes]:
        """Fragments at the end of the log: output that never got its newline."""
        out = [self._render(stamp, text) for stamp, text in self._pending.values()]
        self._pending.clear()
        return out

    def _render(self, stamp: str, text: bytes) -> bytes:
        return (stamp.encode() + b" " + text) if self._timestamps else text


def read_log(
    path: str | Path,
    *,
    tail: int | None = None,
    timestamps: bool = False,
    streams: tuple[str, ...] = STREAMS,
) -> list[bytes]:
    """The container's output as lines (each ending in a newline unless it never had one)."""
    assembler = _Assembler(timestamps=timestamps, streams=streams)
    lines: deque[bytes] = deque(maxlen=tail if tail is not None and tail >= 0 else None)
    for file in log_files(path):
        with open(file, "rb") as f:
            for raw in f:
                record = parse_line(raw)
                if record is not None and (line := assembler.feed(record)) is not None:
                    lines.append(line)
    lines.extend(assembler.drain())
    return list(lines)


def follow_log(
    path: str | Path,
    *,
    done: Callable[[], bool],
    tail: int | None = None,
    timestamps: bool = False,
    poll_s: float = 0.1,
    streams: tuple[str, ...] = STREAMS,
) -> Iterator[bytes]:
    """Lines as read_log gives them, then new lines as they are written, until done() is
    true and the file has been read to its end. A rotation is noticed by the current file
    changing identity; the rest of the old file has been read by then."""
    assembler = _Assembler(timestamps=timestamps, streams=streams)
    handle, identity = _open(path)
    backlog: deque[bytes] = deque(maxlen=tail if tail is not None and tail >= 0 else None)
    for file in log_files(path):
        if handle is not None and _identity(file) == identity:
            break
        with open(file, "rb") as f:
            backlog.extend(_feed_all(assembler, f.read()))
    carry = b""
    try:
        while True:
            finished = done()
            chunk = handle.read() if handle else b""
            if chunk:
                complete, _, carry = (carry + chunk).rpartition(b"\n")
                backlog.extend(_feed_all(assembler, complete + b"\n" if complete else b""))
                yield from backlog
                backlog = deque()  # the tail applies to the backlog only
                continue
            yield from backlog
            backlog = deque()
            current = _identity(path)
            if current is not None and current != identity:
                if handle:
                    handle.close()
                handle, identity = _open(path)
                carry = b""
                continue
            if finished:
                yield from assembler.drain()
                return
            time.sleep(poll_s)
    finally:
        if handle:
            handle.close()


def _feed_all(assembler: _Assembler, data: bytes) -> list[bytes]:
    out = []
    for raw in data.splitlines():
        record = parse_line(raw)
        if record is not None and (line := assembler.feed(record)) is not None:
            out.append(line)
    return out


def _identity(path: str | Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return (info.st_dev, info.st_ino)


def _open(path: str | Path) -> tuple[BinaryIO | None, tuple[int, int] | None]:
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by follow_log
    except FileNotFoundError:
        return None, None
    info = os.fstat(handle.fileno())
    return handle, (info.st_dev, info.st_ino)


def container_log_path(log_directory: str | Path, container_name: str, attempt: int) -> Path:
    """Where the kubelet keeps a container's log: <dir>/<container>/<attempt>.log."""
    return Path(log_directory) / container_name / f"{attempt}.log"


def previous_log_path(log_directory: str | Path, container_name: str, attempt: int) -> Path | None:
    """The log of the instance before `attempt` (kctl logs --previous), if one is kept."""
    for earlier in range(attempt - 1, -1, -1):
        candidate = container_log_path(log_directory, container_name, earlier)
        if candidate.exists():
            return candidate
    return None
