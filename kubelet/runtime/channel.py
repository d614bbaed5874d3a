"""A private message channel between the runtime and the helper processes it forks.

A SOCK_SEQPACKET socketpair keeps message boundaries, carries file descriptors (SCM_RIGHTS)
and reports end-of-file once the other side has closed, which is how a helper that died
without answering is noticed. Messages are pickled: both ends are this package, and the
socket is never reachable by anyone else (no path, inherited only by our own children).
"""

from __future__ import annotations

import pickle
import select
import socket
from typing import Any

MAX_MESSAGE = 1 << 20


def pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send(sock: socket.socket, message: Any, fds: tuple[int, ...] = ()) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.sendall(data)


def recv(sock: socket.socket, *, timeout_s: float | None = None) -> tuple[Any, list[int]]:
    """(message, fds); message is None at end-of-file. TimeoutError when nothing came."""
    if timeout_s is not None:
        ready, _, _ = select.select([sock], [], [], max(0.0, timeout_s))
        if not ready:
            raise TimeoutError("no message from the helper process")
    data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 8)
    if not data:
        return None, fds
    return pickle.loads(data), fds
