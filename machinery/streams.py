"""Client helpers for logs and exec, through the API server's Streams service.

The API server relays both to the kubelet of the Pod's node (apiserver/streams.py), so a
client needs nothing but the API server's address:

    streams = StreamsClient(["10.0.0.1:6443"])
    async for chunk in streams.logs("default", "web", follow=True):
        ...
    async with streams.exec("default", "web", ["sh"], stdin=True, tty=True) as session:
        await session.send(b"ls\\n")
        async for output in session:      # ExecOutput(stream, data)
            ...
        session.exit_code                 # set once the output ended

Failures are machinery.errors types rebuilt from the server's status (NotFound for a
missing Pod, BadRequest for a container that is not running, Unavailable when the API
server or the kubelet cannot be reached).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from machinery import errors
from machinery.api import streams_pb2, streams_pb2_grpc
from machinery.client import error_from_rpc
from machinery.credentials import Credentials

_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


@dataclasses.dataclass(frozen=True)
class ExecOutput:
    stream: str  # "stdout" or "stderr"
    data: bytes


class StreamsClient:
    def __init__(self, servers: Sequence[str], *, credentials: Credentials | None = None) -> None:
        if not servers:
            raise ValueError("at least one API server address is required")
        self.server = servers[0]
        if credentials is not None:
            self._channel = grpc.aio.secure_channel(
                self.server, credentials.channel_credentials(), _OPTIONS
            )
        else:
            self._channel = grpc.aio.insecure_channel(self.server, _OPTIONS)
        self._stub = streams_pb2_grpc.StreamsStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> StreamsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def logs(
        self,
        namespace: str,
        name: str,
        *,
        container: str = "",
        follow: bool = False,
        previous: bool = False,
        tail_lines: int = -1,
        timestamps: bool = False,
        since_seconds: int = 0,
    ) -> AsyncIterator[bytes]:
        """The container's output in chunks; with follow, until the container stops."""
        request = streams_pb2.LogsRequest(
            namespace=namespace,
            name=name,
            container=container,
            follow=follow,
            previous=previous,
            tail_lines=tail_lines,
            timestamps=timestamps,
            since_seconds=since_seconds,
        )
        call = self._stub.Logs(request)
        try:
            async for chunk in call:
                yield chunk.data
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err, self.server) from None
        finally:
            call.cancel()

    def exec(
        self,
        namespace: str,
        name: str,
        command: Sequence[str],
        *,
        container: str = "",
        stdin: bool = False,
        tty: bool = False,
        width: int = 0,
        height: int = 0,
    ) -> ExecSession:
        start = streams_pb2.ExecStart(
            namespace=namespace,
            name=name,
            container=container,
            command=list(command),
            stdin=stdin,
            tty=tty,
            size=streams_pb2.TerminalSize(width=width, height=height),
        )
        return ExecSession(self._stub, start, self.server)


class ExecSession:
    """One exec: send input and resizes, iterate output; exit_code once output ended."""

    def __init__(
        self, stub: streams_pb2_grpc.StreamsStub, start: streams_pb2.ExecStart, server: str
    ) -> None:
        self._stub = stub
        self._start = start
        self._server = server
        self._requests: asyncio.Queue[Any] = asyncio.Queue()
        self._call: Any = None
        self.exit_code: int | None = None
        self.error = ""

    async def __aenter__(self) -> ExecSession:
        await self._requests.put(streams_pb2.ExecRequest(start=self._start))
        self._call = self._stub.Exec(self._outgoing())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._requests.put(None)
        if self._call is not None:
            self._call.cancel()

    async def _outgoing(self) -> AsyncIterator[streams_pb2.ExecRequest]:
        while (request := await self._requests.get()) is not None:
            yield request

    async def send(self, data: bytes) -> None:
        await self._requests.put(streams_pb2.ExecRequest(stdin=data))

    async def resize(self, width: int, height: int) -> None:
        size = streams_pb2.TerminalSize(width=width, height=height)
        await self._requests.put(streams_pb2.ExecRequest(resize=size))

    async def close_stdin(self) -> None:
        await self._requests.put(streams_pb2.ExecRequest(stdin_close=True))

    async def __aiter__(self) -> AsyncIterator[ExecOutput]:
        if self._call is None:
            raise RuntimeError("use the exec session as `async with` first")
        try:
            async for response in self._call:
                kind = response.WhichOneof("message")
                if kind == "stdout":
                    yield ExecOutput("stdout", response.stdout)
                elif kind == "stderr":
                    yield ExecOutput("stderr", response.stderr)
                elif kind == "exit_code":
                    self.exit_code = response.exit_code
                elif kind == "error":
                    self.error = response.error
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err, self._server) from None
        if self.exit_code is None and not self.error:
            raise errors.Unavailable(f"the exec stream through {self._server} ended early")

    async def collect(self) -> tuple[bytes, bytes, int]:
        """Read the whole output (for non-interactive use): stdout, stderr, exit code."""
        out, err = bytearray(), bytearray()
        async for output in self:
            (out if output.stream == "stdout" else err).extend(output.data)
        if self.error:
            raise errors.BadRequest(f"exec failed: {self.error}")
        return bytes(out), bytes(err), self.exit_code if self.exit_code is not None else -1
