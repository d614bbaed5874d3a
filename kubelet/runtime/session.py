"""The caller's side of an exec: the streams, the exit code, window size and kill.

An exec helper (nsenter.py) reports on a private channel, in order: the pty master (with
a terminal), {"pid"} of the process it started, and at the end {"exit_code", "timed_out",
"error"}. A session turns that into the ExecSession of interface.py, and collect() reads a
non-interactive exec to its end for exec_sync. The process is signalled through a pidfd
taken as soon as its pid is known, so a kill never reaches a recycled pid.
"""

from __future__ import annotations

import fcntl
import os
import selectors
import signal
import socket
import struct
import termios
import time

from kubelet.runtime import channel
from kubelet.runtime.interface import ExecResult, RuntimeFailure

MAX_OUTPUT = 16 * 1024 * 1024
DRAIN_S = 1.0
BEGIN_TIMEOUT_S = 30.0


class NativeExecSession:
    def __init__(
        self,
        report: socket.socket,
        *,
        pid: int,
        terminal: int | None,
        pipes: list[int] | None,
    ) -> None:
        self._report = report
        self.pid = pid
        self.terminal = terminal
        stdin, stdout, stderr = pipes if pipes else (-1, None, None)
        self.stdin = stdin if stdin is not None and stdin >= 0 else None
        self.stdout = stdout
        self.stderr = stderr
        self._exit: dict | None = None
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            self._pidfd = None  # already gone; its exit code is on the report channel

    @classmethod
    def begin(
        cls, report: socket.socket, *, tty: bool, pipes: list[int] | None
    ) -> NativeExecSession:
        try:
            terminal = None
            if tty:
                message, fds = channel.recv(report, timeout_s=BEGIN_TIMEOUT_S)
                _raise_if_failed(message)
                terminal = fds[0]
            message, _ = channel.recv(report, timeout_s=BEGIN_TIMEOUT_S)
            _raise_if_failed(message)
        except TimeoutError:
            report.close()
            _close_all(pipes)
            raise RuntimeFailure(f"exec did not start within {BEGIN_TIMEOUT_S} s") from None
        except BaseException:
            report.close()
            _close_all(pipes)
            raise
        return cls(report, pid=message["pid"], terminal=terminal, pipes=pipes)

    def resize(self, rows: int, cols: int) -> None:
        if self.terminal is None:
            raise RuntimeFailure("resize: this exec has no terminal")
        fcntl.ioctl(self.terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def wait(self, timeout_s: float | None = None) -> int | None:
        if self._exit is None:
            try:
                message, _ = channel.recv(self._report, timeout_s=timeout_s)
            except TimeoutError:
                return None
            if message is None:
                raise RuntimeFailure(f"exec helper for process {self.pid} died")
            self._exit = message
        return int(self._exit["exit_code"])

    @property
    def error(self) -> str:
        """Why the command did not start, once wait() returned (empty when it ran)."""
        return self._exit.get("error", "") if self._exit else ""

    def kill(self) -> None:
        if self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def collect(self, timeout_s: float) -> ExecResult:
        """Read stdout and stderr to their end and wait for the exit code."""
        assert self.stdout is not None and self.stderr is not None
        out: dict[int, bytearray] = {self.stdout: bytearray(), self.stderr: bytearray()}
        selector = selectors.DefaultSelector()
        for fd in out:
            selector.register(fd, selectors.EVENT_READ)
        selector.register(self._report, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        while len(selector.get_map()) > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in selector.select(remaining):
                if key.fileobj is self._report:
                    selector.unregister(self._report)
                    self.wait(0)
                    deadline = min(deadline, time.monotonic() + DRAIN_S)
                    continue
                data = os.read(key.fd, 65536)
                if not data:
                    selector.unregister(key.fd)
                elif len(out[key.fd]) < MAX_OUTPUT:
                    out[key.fd] += data
        if self._exit is None:
            self.kill()
            self.wait(timeout_s=5.0)
        assert self._exit is not None
        stderr = bytes(out[self.stderr])
        if self.error:
            stderr += self.error.encode() + b"\n"
        return ExecResult(
            exit_code=int(self._exit["exit_code"]),
            stdout=bytes(out[self.stdout]),
            stderr=stderr,
            timed_out=bool(self._exit.get("timed_out")),
        )

    def close(self) -> None:
        if self._exit is None:
            self.kill()
        for fd in (self.terminal, self.stdin, self.stdout, self.stderr, self._pidfd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.terminal = self.stdin = self.stdout = self.stderr = self._pidfd = None
        self._report.close()


def _close_all(fds: list[int] | None) -> None:
    for fd in fds or []:
        if fd >= 0:
            os.close(fd)


def _raise_if_failed(message: dict | None) -> None:
    if message is None:
        raise RuntimeFailure("exec helper exited before starting the command")
    if "error" in message and "pid" not in message:
        raise RuntimeFailure(message["error"])
