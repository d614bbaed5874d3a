"""Forwarding names outside the cluster domain to upstream servers.

The query goes out unchanged (same id, same flags) over the transport the
client used: UDP to UDP, so that a truncated upstream answer reaches the
client with its TC bit and the client retries over TCP, which is then
forwarded over TCP. Upstreams are tried in order, each for `timeout` seconds;
a reply whose id does not match is ignored (it is not ours). forward() returns
the reply bytes, or None when every upstream failed, together with the
failures, so that the server can answer SERVFAIL and count them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct

from dns.config import Upstream


@dataclasses.dataclass(frozen=True)
class ForwardResult:
    reply: bytes | None
    failures: tuple[tuple[Upstream, str], ...] = ()  # (upstream, reason) for each that failed


class Forwarder:
    def __init__(self, upstreams: tuple[Upstream, ...], *, timeout: float) -> None:
        self._upstreams = upstreams
        self._timeout = timeout

    async def forward(self, query: bytes, *, tcp: bool) -> ForwardResult:
        failures: list[tuple[Upstream, str]] = []
        for upstream in self._upstreams:
            try:
                ask = _ask_tcp if tcp else _ask_udp
                reply = await asyncio.wait_for(ask(upstream, query), self._timeout)
                return ForwardResult(reply, tuple(failures))
            except TimeoutError:
                failures.append((upstream, f"no reply within {self._timeout}s"))
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                failures.append((upstream, str(exc) or type(exc).__name__))
        return ForwardResult(None, tuple(failures))


class _OneReply(asyncio.DatagramProtocol):
    def __init__(self, query_id: bytes) -> None:
        self._id = query_id
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if data[:2] == self._id and not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


async def _ask_udp(upstream: Upstream, query: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _OneReply(query[:2]), remote_addr=upstream
    )
    try:
        transport.sendto(query)
        return await protocol.reply
    finally:
        transport.close()


async def _ask_tcp(upstream: Upstream, query: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*upstream)
    try:
        writer.write(struct.pack("!H", len(query)) + query)
        await writer.drain()
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        reply = await reader.readexactly(length)
        if reply[:2] != query[:2]:
            raise ValueError("reply id does not match the query")
        return reply
    finally:
        writer.close()
