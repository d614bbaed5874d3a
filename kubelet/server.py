"""The node side of `kctl logs` and `kctl exec`: the Kubelet gRPC service.

The API server's Streams service relays a client's request to this service at the node's
InternalIP and status.daemonEndpoints.kubeletEndpoint.Port (see
proto/kubelite/api/v1/streams.proto). Errors leave as the project's ApiErrors (a Status in
the trailing metadata), so the relay and kctl show "Error from server (BadRequest): ...".

Logs: read from the container's CRI log files through kubelet/runtime/logs.py (rotated files
included): tail N, --previous (the instance before the latest), --timestamps, --since,
and follow, which ends when the container stops and its file is read to the end. The
blocking reader runs on a thread and hands lines to the stream through a bounded queue,
so a slow client slows the reader instead of filling memory.

Exec: the runtime's exec_stream enters the container's namespaces and cgroup. With a tty
the session has one pty master (stdout and stderr merged, resize supported); without,
pipes. One reader thread per output descriptor; stdin, resizes and stdin_close come from
the request stream; the last message is the process's exit code.

Security: with TLS material (the kubelet has a kubeconfig) the endpoint serves TLS with
the node's serving certificate and requires a client certificate from the cluster CA, so a
caller without one, or with one from another CA, fails the handshake. Every handler then
admits only the peer whose certificate names `allowed_peer`, the API server's
kube-apiserver-kubelet-client: a node's or an administrator's certificate from the same CA
gets PERMISSION_DENIED naming the identity. Without TLS (a kubelet embedded with a server
that asks for no credentials) nothing is checked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from kubelet.cri import AsyncRuntime
from kubelet.runtime import logs as crilogs
from kubelet.runtime.interface import ContainerState, ContainerStatus, ExecSession, RuntimeFailure
from machinery import errors
from machinery.api import api_pb2, streams_pb2, streams_pb2_grpc
from machinery.clock import parse_rfc3339
from machinery.log import get_logger

log = get_logger("kubelet.server")

CHUNK_BYTES = 32 * 1024
QUEUE_LINES = 1024
_END = object()

PodLookup = Callable[[str, str], dict[str, Any] | None]


async def abort(context: grpc.aio.ServicerContext, err: errors.ApiError) -> None:
    status = api_pb2.Status(
        reason=err.reason, message=err.message, code=err.code, kind=err.kind, name=err.name
    )
    context.set_trailing_metadata(((errors.STATUS_METADATA_KEY, status.SerializeToString()),))
    await context.abort(err.grpc_code, err.message)


def pick_container(pod: dict[str, Any], requested: str) -> str:
    """The container a request means; BadRequest says which names are valid."""
    name = pod["metadata"]["name"]
    spec = pod.get("spec", {})
    app = [c["name"] for c in spec.get("containers") or []]
    init = [c["name"] for c in spec.get("initContainers") or []]
    if not requested:
        if len(app) == 1:
            return app[0]
        message = (
            f"a container name must be specified for pod {name}, choose one of: [{' '.join(app)}]"
        )
        if init:
            message += f" or one of the init containers: [{' '.join(init)}]"
        raise errors.BadRequest(message)
    if requested not in app and requested not in init:
        raise errors.BadRequest(f"container {requested} is not valid for pod {name}")
    return requested


class _Handoff:
    """A bounded hand-off from a reader thread to a stream's task; put() gives up once
    the stream went away, so no reader thread is left blocked."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE_LINES)
        self.cancelled = threading.Event()

    def put(self, item: Any) -> bool:
        """From the thread; False once the consumer went away."""
        while not self.cancelled.is_set():
            future = asyncio.run_coroutine_threadsafe(self.queue.put(item), self._loop)
            try:
                future.result(timeout=0.5)
                return True
            except concurrent.futures.TimeoutError:
                if not future.cancel():
                    return True
        return False

    async def chunks(self) -> AsyncIterator[bytes]:
        """What the thread put, batched into chunks, until it put _END."""
        while True:
            item = await self.queue.get()
            if item is _END:
                return
            batch = [item]
            size = len(item)
            while size < CHUNK_BYTES and not self.queue.empty():
                more = self.queue.get_nowait()
                if more is _END:
                    yield b"".join(batch)
                    return
                batch.append(more)
                size += len(more)
            yield b"".join(batch)


def _since_filter(lines: Iterator[bytes], since: float, timestamps: bool) -> Iterator[bytes]:
    """Lines read with timestamps, kept from `since` on, timestamps stripped unless asked."""
    for line in lines:
        stamp, _, text = line.partition(b" ")
        if since:
            try:
                if parse_rfc3339(stamp.decode()[:26] + "Z") < since:
                    continue
            except ValueError:
                pass
        yield line if timestamps else text


def peer_name(context: grpc.aio.ServicerContext) -> str:
    """The common name of the caller's client certificate; "" without one."""
    names = (context.auth_context() or {}).get("x509_common_name") or []
    return names[0].decode(errors="replace") if names else ""


def refusal(context: grpc.aio.ServicerContext, allowed: str) -> errors.ApiError | None:
    """Forbidden for a caller other than allowed; None when allowed is "" (no TLS)."""
    if not allowed:
        return None
    peer = peer_name(context)
    if peer == allowed:
        return None
    who = f'user "{peer}"' if peer else "a caller without a client certificate"
    return errors.Forbidden(
        f"{who} is not allowed to use the kubelet API: only {allowed} may (logs, exec)"
    )


class KubeletService(streams_pb2_grpc.KubeletServicer):
    def __init__(self, *, pods: PodLookup, runtime: AsyncRuntime, allowed_peer: str = "") -> None:
        self._pods = pods
        self._runtime = runtime
        # The one client certificate name served (auth.APISERVER_KUBELET_CLIENT); "": anyone.
        self._allowed_peer = allowed_peer

    async def _refused(self, context: grpc.aio.ServicerContext, method: str) -> bool:
        err = refusal(context, self._allowed_peer)
        if err is None:
            return False
        log.warning("refused kubelet API call", method=method, user=peer_name(context) or "-")
        await abort(context, err)
        return True

    async def _instances(
        self, namespace: str, name: str, container: str
    ) -> tuple[dict[str, Any], str, list[ContainerStatus]]:
        pod = self._pods(namespace or "default", name)
        if pod is None:
            raise errors.NotFound(f'pods "{name}" not found on this node', kind="pods", name=name)
        chosen = pick_container(pod, container)
        snapshot = await self._runtime.fresh()
        return pod, chosen, snapshot.pod(pod["metadata"]["uid"]).instances(chosen)

    # -- logs ---------------------------------------------------------------------------------

    async def Logs(
        self, request: streams_pb2.LogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[streams_pb2.LogChunk]:
        if await self._refused(context, "Logs"):
            return
        try:
            path, latest = await self._log_path(request)
        except errors.ApiError as err:
            await abort(context, err)
            return
        loop = asyncio.get_running_loop()
        lines = _Handoff(loop)
        follow = request.follow and not request.previous and latest.state == ContainerState.RUNNING
        thread = threading.Thread(
            target=self._read_logs,
            args=(lines, path, request, latest.id if follow else None),
            name="logs-reader",
            daemon=True,
        )
        thread.start()
        try:
            async for chunk in lines.chunks():
                yield streams_pb2.LogChunk(data=chunk)
        finally:
            lines.cancelled.set()

    async def _log_path(self, request: streams_pb2.LogsRequest) -> tuple[Path, ContainerStatus]:
        pod, name, instances = await self._instances(
            request.namespace, request.name, request.container
        )
        pod_name = pod["metadata"]["name"]
        if not instances:
            raise errors.BadRequest(
                f'container "{name}" in pod "{pod_name}" is waiting to start: '
                f"{_waiting_reason(pod, name) or 'ContainerCreating'}"
            )
        latest = instances[0]
        if not request.previous:
            return Path(latest.log_path), latest
        if len(instances) > 1 and crilogs.log_files(instances[1].log_path):
            return Path(instances[1].log_path), instances[1]
        directory = Path(latest.log_path).parent.parent
        previous = crilogs.previous_log_path(directory, name, latest.attempt)
        if previous is None:
            raise errors.BadRequest(
                f'previous terminated container "{name}" in pod "{pod_name}" not found'
            )
        return previous, latest

    def _read_logs(
        self,
        lines: _Handoff,
        path: Path,
        request: streams_pb2.LogsRequest,
        follow_id: str | None,
    ) -> None:
        tail = request.tail_lines if request.tail_lines >= 0 else None
        since = time.time() - request.since_seconds if request.since_seconds > 0 else 0.0
        try:
            if follow_id is None:
                source: Iterator[bytes] = iter(crilogs.read_log(path, tail=tail, timestamps=True))
            else:
                source = crilogs.follow_log(
                    path, done=self._done(follow_id, lines), tail=tail, timestamps=True
                )
            for line in _since_filter(source, since, request.timestamps):
                if not lines.put(line):
                    return
        except OSError as err:
            lines.put(f"error reading log {path}: {err}\n".encode())
        finally:
            lines.put(_END)

    def _done(self, container_id: str, lines: _Handoff) -> Callable[[], bool]:
        last = [0.0, False]

        def done() -> bool:
            if lines.cancelled.is_set():
                return True
            now = time.monotonic()
            if now - last[0] >= 0.5:
                last[0] = now
                try:
                    status = self._runtime.runtime.container_status(container_id)  # type: ignore[arg-type]
                    last[1] = status.state != ContainerState.RUNNING
                except RuntimeFailure:
                    last[1] = True
            return bool(last[1])

        return done

    # -- exec ---------------------------------------------------------------------------------

    async def Exec(
        self,
        request_iterator: AsyncIterator[streams_pb2.ExecRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[streams_pb2.ExecResponse]:
        if await self._refused(context, "Exec"):
            return
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("message") != "start":
            await abort(
                context, errors.BadRequest("an exec stream must begin with a start message")
            )
            return
        start = first.start
        try:
            session = await self._open_exec(start)
        except errors.ApiError as err:
            await abort(context, err)
            return
        except RuntimeFailure as err:
            yield streams_pb2.ExecResponse(error=str(err))
            return
        async for response in _ExecPump(session, self._runtime).run(request_iterator):
            yield response

    async def _open_exec(self, start: streams_pb2.ExecStart) -> ExecSession:
        if not start.command:
            raise errors.BadRequest("exec: a command is required")
        _, name, instances = await self._instances(start.namespace, start.name, start.container)
        running = [c for c in instances if c.state == ContainerState.RUNNING]
        if not running:
            raise errors.BadRequest(
                f'container "{name}" in pod "{start.name}" is not running, cannot exec'
            )
        rows = start.size.height if start.HasField("size") and start.size.height else 24
        cols = start.size.width if start.HasField("size") and start.size.width else 80
        log.debug(
            "exec",
            pod=f"{start.namespace}/{start.name}",
            container=name,
            tty=start.tty,
            command=" ".join(start.command),
        )
        return await self._runtime.exec_stream(
            running[0].id,
            tuple(start.command),
            tty=start.tty,
            stdin=start.stdin,
            rows=rows,
            cols=cols,
        )


class _ExecPump:
    """Moves bytes between one exec session and its gRPC stream."""

    def __init__(self, session: ExecSession, runtime: AsyncRuntime) -> None:
        self._session = session
        self._runtime = runtime
        self._out = _Handoff(asyncio.get_running_loop())
        self._stdin_fd = session.terminal if session.terminal is not None else session.stdin
        self._stdin_open = self._stdin_fd is not None

    def _reader(self, fd: int, stream: str) -> None:
        try:
            while True:
                try:
                    data = os.read(fd, 65536)
                except OSError as err:
                    if err.errno == errno.EINTR:
                        continue
                    break  # EIO: the pty's other side is closed
                if not data or not self._out.put((stream, data)):
                    break
        finally:
            self._out.put((stream, None))

    async def _pump_input(self, requests: AsyncIterator[streams_pb2.ExecRequest]) -> None:
        async for request in requests:
            kind = request.WhichOneof("message")
            if kind == "stdin" and self._stdin_open:
                await asyncio.to_thread(_write_all, self._stdin_fd, request.stdin)
            elif kind == "resize" and self._session.terminal is not None:
                self._session.resize(request.resize.height, request.resize.width)
            elif kind == "stdin_close" and self._stdin_open:
                self._close_stdin()

    def _close_stdin(self) -> None:
        self._stdin_open = False
        if self._session.terminal is not None:
            _write_all(self._session.terminal, b"\x04")  # end of input, as a terminal says it
        elif self._session.stdin is not None:
            os.close(self._session.stdin)
            self._session.stdin = None

    async def run(
        self, requests: AsyncIterator[streams_pb2.ExecRequest]
    ) -> AsyncIterator[streams_pb2.ExecResponse]:
        session = self._session
        outputs = (
            [(session.terminal, "stdout")]
            if session.terminal is not None
            else [(session.stdout, "stdout"), (session.stderr, "stderr")]
        )
        readers = [
            threading.Thread(target=self._reader, args=(fd, name), daemon=True, name="exec-out")
            for fd, name in outputs
            if fd is not None
        ]
        for thread in readers:
            thread.start()
        feeding = asyncio.create_task(self._pump_input(requests))
        exit_code: int | None = None
        try:
            open_streams = len(readers)
            while open_streams:
                stream, data = await self._out.queue.get()
                if data is None:
                    open_streams -= 1
                elif stream == "stdout":
                    yield streams_pb2.ExecResponse(stdout=data)
                else:
                    yield streams_pb2.ExecResponse(stderr=data)
            exit_code = await self._runtime.blocking(session.wait, 30.0)
            if exit_code is None:
                session.kill()
                exit_code = await self._runtime.blocking(session.wait, 10.0)
            yield streams_pb2.ExecResponse(exit_code=exit_code if exit_code is not None else 137)
        finally:
            feeding.cancel()
            self._out.cancelled.set()
            if exit_code is None:
                session.kill()
            await self._runtime.blocking(_join_then_close, readers, session)


def _write_all(fd: int | None, data: bytes) -> None:
    if fd is None:
        return
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BrokenPipeError:
            return
        view = view[written:]


def _join_then_close(readers: list[threading.Thread], session: ExecSession) -> None:
    for thread in readers:
        thread.join(timeout=10)
    session.close()


def _waiting_reason(pod: dict[str, Any], name: str) -> str:
    status = pod.get("status") or {}
    for entry in (status.get("containerStatuses") or []) + (
        status.get("initContainerStatuses") or []
    ):
        if entry.get("name") == name:
            return ((entry.get("state") or {}).get("waiting") or {}).get("reason", "")
    return ""


class KubeletServer:
    """The gRPC server for the Kubelet service on --port; TLS when start() gets credentials
    (kubelet/certificates.py: they require a client certificate and follow rotation)."""

    def __init__(self, service: KubeletService, *, address: str, port: int) -> None:
        self._service = service
        self._address = address
        self._port = port
        self._server: grpc.aio.Server | None = None
        self.port = port

    async def start(self, credentials: grpc.ServerCredentials | None = None) -> int:
        server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", 16 * 1024 * 1024),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        )
        streams_pb2_grpc.add_KubeletServicer_to_server(self._service, server)
        address = f"{self._address}:{self._port}"
        if credentials is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {self._address}:{self._port}")
        await server.start()
        self._server = server
        return self.port

    async def stop(self, grace: float = 1.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
