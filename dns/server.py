"""The cluster DNS server: UDP and TCP on one address and port, answering or forwarding.

handle() is the whole policy for one query, shared by both transports:
a name inside the cluster domain is answered from the ClusterZone
(authoritative, never forwarded, so that a Pod's search-path probes such as
example.com.default.svc.cluster.local fail fast with NXDOMAIN); anything
else is forwarded upstream, and SERVFAIL is the answer when no upstream
replies in time. A packet that does not parse gets FORMERR when its header
can be read and is dropped otherwise; an opcode other than QUERY gets NOTIMP.
Over UDP an answer larger than the client can take (512 bytes, or what its
EDNS option advertises) is replaced by an empty one with the TC bit set, and
the client retries over TCP.

The server never raises on bad input from the network; faults in answering
are logged and turned into SERVFAIL, so one bad query cannot stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import struct
import time

from dnslib import EDNS0, QTYPE, RCODE, DNSHeader, DNSRecord

from dns.config import DnsConfig
from dns.forward import Forwarder
from dns.metrics import DnsMetrics
from dns.records import ClusterRecords
from dns.zone import ClusterZone
from machinery.log import Logger, get_logger

_UDP_DEFAULT = 512
_UDP_MAX = 4096  # what we advertise and the most we send, whatever the client offers
_TCP_MAX = 65535  # the two-byte length prefix
_OPT = 41


class DnsServer:
    def __init__(
        self,
        records: ClusterRecords,
        *,
        config: DnsConfig,
        metrics: DnsMetrics | None = None,
        log: Logger | None = None,
    ) -> None:
        self._config = config
        self._zone = ClusterZone(records, domain=config.cluster_domain, ttl=config.ttl)
        self._forwarder = Forwarder(config.upstreams, timeout=config.forward_timeout)
        self._metrics = metrics
        self._log = log or get_logger("dns")
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.StreamWriter] = set()
        self.port = config.listen_port

    # Lifecycle.

    async def start(self) -> None:
        """Listen on UDP and TCP; with listen_port 0, on one free port for both."""
        for _ in range(20):
            try:
                await self._bind(self._config.listen_port)
                break
            except OSError as exc:
                # Port 0: the UDP port the kernel chose may be taken for TCP.
                if exc.errno != errno.EADDRINUSE or self._config.listen_port != 0:
                    raise OSError(
                        exc.errno,
                        f"failed to listen on {self._config.listen_host}:"
                        f"{self._config.listen_port}: {exc.strerror}",
                    ) from exc
        self._log.info(
            "dns server listening",
            address=f"{self._config.listen_host}:{self.port}",
            domain=self._config.cluster_domain,
            upstreams=",".join(f"{h}:{p}" for h, p in self._config.upstreams) or "none",
        )

    async def _bind(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        udp, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=(self._config.listen_host, port)
        )
        bound = udp.get_extra_info("sockname")[1]
        try:
            self._tcp = await asyncio.start_server(
                self._serve_tcp, self._config.listen_host, bound, reuse_address=True
            )
        except OSError:
            udp.close()
            raise
        self._udp, self.port = udp, bound

    async def stop(self) -> None:
        if self._udp:
            self._udp.close()
        if self._tcp:
            self._tcp.close()
            for writer in list(self._connections):
                writer.close()
            await self._tcp.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # One query.

    async def handle(self, data: bytes, *, tcp: bool) -> bytes | None:
        """The reply to one query packet; None when it is to be dropped."""
        started = time.perf_counter()
        request = _parse(data)
        if request is None:
            return _bare_reply(data, RCODE.FORMERR)
        if request.header.qr:
            return None  # a response, not a query: never answer those
        if request.header.opcode != 0 or not request.questions:
            return _bare_reply(data, RCODE.NOTIMP if request.header.opcode else RCODE.FORMERR)
        if self._zone.contains(str(request.q.qname)):
            source, reply = "cluster", self._local(request, tcp=tcp)
        else:
            source, reply = "forward", await self._forward(request, data, tcp=tcp)
        if self._metrics:
            self._count(request, reply, source, time.perf_counter() - started)
        return reply

    def _local(self, request: DNSRecord, *, tcp: bool) -> bytes:
        try:
            reply = self._zone.answer(request)
        except Exception as exc:  # noqa: BLE001 - a bug in one answer must not stop the server
            self._log.error(
                "failed to answer query", name=str(request.q.qname), err=exc, exc_info=True
            )
            reply = request.reply()
            reply.header.rcode = RCODE.SERVFAIL
        if _edns_size(request) is not None:
            reply.add_ar(EDNS0(udp_len=_UDP_MAX))
        limit = _TCP_MAX if tcp else min(_UDP_MAX, _edns_size(request) or _UDP_DEFAULT)
        packed = reply.pack()
        if len(packed) > limit:
            packed = _truncated(request).pack()
        return packed

    async def _forward(self, request: DNSRecord, data: bytes, *, tcp: bool) -> bytes:
        result = await self._forwarder.forward(data, tcp=tcp)
        for (host, port), reason in result.failures:
            self._log.debug(
                "upstream failed", upstream=f"{host}:{port}", err=reason, name=str(request.q.qname)
            )
            if self._metrics:
                self._metrics.forward_failures.labels(upstream=f"{host}:{port}").inc()
        if result.reply is not None:
            return result.reply
        reply = request.reply(aa=0)
        reply.header.rcode = RCODE.SERVFAIL
        return reply.pack()

    def _count(self, request: DNSRecord, reply: bytes, source: str, seconds: float) -> None:
        assert self._metrics is not None
        rcode = reply[3] & 0x0F if len(reply) >= 4 else RCODE.SERVFAIL
        self._metrics.queries.labels(
            qtype=str(QTYPE.get(request.q.qtype, request.q.qtype)),
            rcode=str(RCODE.get(rcode, rcode)),
            source=source,
        ).inc()
        self._metrics.duration.labels(source=source).observe(seconds)

    # Transports.

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A client may send several queries on one connection, one after another.
        self._connections.add(writer)
        try:
            while True:
                header = await asyncio.wait_for(
                    reader.readexactly(2), self._config.tcp_idle_timeout
                )
                (length,) = struct.unpack("!H", header)
                data = await asyncio.wait_for(
                    reader.readexactly(length), self._config.tcp_idle_timeout
                )
                reply = await self.handle(data, tcp=True)
                if reply is not None:
                    writer.write(struct.pack("!H", len(reply)) + reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            self._connections.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._server._spawn(self._reply(data, addr))

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self._server.handle(data, tcp=False)
        if reply is not None and self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(reply, addr)


def _parse(data: bytes) -> DNSRecord | None:
    try:
        return DNSRecord.parse(data)
    except Exception:  # noqa: BLE001 - whatever a malformed packet makes the parser raise
        return None


def _bare_reply(data: bytes, rcode: int) -> bytes | None:
    """A reply carrying only the header, for a query we cannot or will not read."""
    if len(data) < 12:
        return None
    (query_id, flags) = struct.unpack("!HH", data[:4])
    if flags & 0x8000:
        return None  # a response: answering it could start a loop between two servers
    opcode = (flags >> 11) & 0x0F
    header = DNSHeader(id=query_id, qr=1, opcode=opcode, rcode=rcode)
    return DNSRecord(header).pack()


def _truncated(request: DNSRecord) -> DNSRecord:
    reply = DNSRecord(
        DNSHeader(id=request.header.id, bitmap=request.header.bitmap, qr=1, aa=1, ra=1, tc=1),
        q=request.q,
    )
    if _edns_size(request) is not None:
        reply.add_ar(EDNS0(udp_len=_UDP_MAX))
    return reply


def _edns_size(request: DNSRecord) -> int | None:
    """The UDP payload size the client's EDNS option advertises; None without EDNS."""
    for rr in request.ar:
        if rr.rtype == _OPT:
            return max(_UDP_DEFAULT, rr.rclass)
    return None
