"""The fork server: a small single-threaded process that forks every helper the runtime needs.

Starting a container must not cost a Python interpreter start (tens of milliseconds), and
forking the runtime's own process is unsafe once it runs threads (gRPC, asyncio executors:
a lock held by another thread at fork time stays held forever in the child). So the
runtime starts this server once, with its modules already imported, and asks it over a
private channel to fork a shim, a sandbox's namespace maker, a pause process or an exec
helper; a fork of this small process costs well under a millisecond.

The server ignores SIGCHLD, so its children are reaped by the kernel; each child restores
the default at once (its own children must be waitable). It exits when the runtime closes
the channel (a runtime that died included); helpers already forked carry on, each in its
own session. Replies are {"pid"} or {"error"}; what a helper has to say comes back on the
report channel the request carried.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

from kubelet.runtime import caps, channel, nsenter, sandboxns, shim, state
from kubelet.runtime.interface import RuntimeFailure
from kubelet.runtime.runc_launcher import RuncLauncher

REPLY_TIMEOUT_S = 30.0


def _op_shim(args: dict[str, Any], fds: list[int]) -> NoReturn:
    report = socket.socket(fileno=fds[0])
    launcher = RuncLauncher(**args["runc"]) if args.get("runc") else shim.NativeLauncher()
    shim.run(args["spec"], report, launcher)


def _op_sandbox(args: dict[str, Any], fds: list[int]) -> NoReturn:
    report = socket.socket(fileno=fds[0])
    try:
        paths = sandboxns.make_namespaces(**args)
        channel.send(report, {"paths": paths})
    except OSError as exc:
        channel.send(report, {"error": str(exc)})
    os._exit(0)


def _op_pause(args: dict[str, Any], fds: list[int]) -> NoReturn:
    report = socket.socket(fileno=fds[0])
    os.setsid()
    try:
        pid = sandboxns.run_pause(**args)
        channel.send(report, {"pid": pid})
    except OSError as exc:
        channel.send(report, {"error": str(exc)})
    os._exit(0)


def _op_exec(args: dict[str, Any], fds: list[int]) -> NoReturn:
    report = socket.socket(fileno=fds[0])
    stdio = tuple(fds[1:4]) if len(fds) == 4 else None
    nsenter.run_exec(**args, report=report, stdio=stdio)  # type: ignore[arg-type]


OPS = {"shim": _op_shim, "sandbox": _op_sandbox, "pause": _op_pause, "exec": _op_exec}


def serve(fd: int) -> NoReturn:
    server = socket.socket(fileno=fd)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    caps.last_cap()  # cached here once, inherited by every child
    state.boot_id()
    gc.freeze()  # keep the garbage collector from touching (and copying) inherited pages
    while True:
        message, fds = channel.recv(server)
        if message is None:
            os._exit(0)
        op, args = message
        for received in fds:
            # SCM_RIGHTS hands descriptors over inheritable; none may reach a container.
            os.set_inheritable(received, False)
        pid = os.fork()
        if pid == 0:
            server.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            try:
                OPS[op](args, fds)
            except BaseException as exc:  # noqa: BLE001 - a helper must never return here
                print(f"kubelite fork server: {op} failed: {exc!r}", file=sys.stderr)
            os._exit(1)
        for received in fds:
            os.close(received)
        channel.send(server, {"pid": pid})


class ForkServer:
    """The runtime's handle on its fork server, started on first use, thread-safe."""

    def __init__(self, log_path: str) -> None:
        self._log_path = log_path
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def spawn(self, op: str, args: dict[str, Any], fds: tuple[int, ...]) -> int:
        """Fork a helper running `op`; its pid. The caller keeps (and closes) its fds."""
        with self._lock:
            sock = self._ensure()
            try:
                channel.send(sock, (op, args), fds)
                reply, _ = channel.recv(sock, timeout_s=REPLY_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                self._discard()
                raise RuntimeFailure(f"fork server failed to start {op}: {exc}") from exc
            if reply is None:
                self._discard()
                raise RuntimeFailure(f"fork server exited while starting {op}")
        return int(reply["pid"])

    def _ensure(self) -> socket.socket:
        if self._sock is not None and self._proc is not None and self._proc.poll() is None:
            return self._sock
        self._discard()
        ours, theirs = channel.pair()
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        with open(self._log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "kubelet.runtime.forkserver", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        theirs.close()
        self._sock = ours
        return ours

    def _discard(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def close(self) -> None:
        with self._lock:
            self._discard()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
