"""The DNS server on loopback: real UDP and TCP queries, forwarding to an upstream the test runs."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, A, DNSRecord
from prometheus_client import CollectorRegistry

from dns.config import DnsConfig
from dns.metrics import DnsMetrics
from dns.records import ClusterRecords
from dns.server import DnsServer
from tests.proxy.builders import endpoints, port, service

UPSTREAM_ANSWERS = {"example.test.": "192.0.2.1", "www.example.test.": "192.0.2.2"}


class Upstream:
    """A tiny DNS server on loopback, UDP and TCP on one port, answering UPSTREAM_ANSWERS."""

    def __init__(self) -> None:
        self.port = 0
        self.queries: list[str] = []
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    def reply(self, data: bytes) -> bytes:
        request = DNSRecord.parse(data)
        name = str(request.q.qname).lower()
        self.queries.append(name)
        reply = request.reply(aa=0)
        if name in UPSTREAM_ANSWERS:
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(UPSTREAM_ANSWERS[name]), ttl=60))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply.pack()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        upstream = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                self.transport.sendto(upstream.reply(data), addr)

        self._udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
        self.port = self._udp.get_extra_info("sockname")[1]
        self._tcp = await asyncio.start_server(self._serve_tcp, "127.0.0.1", self.port)

    async def _serve_tcp(self, reader, writer) -> None:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        reply = self.reply(await reader.readexactly(length))
        writer.write(struct.pack("!H", len(reply)) + reply)
        await writer.drain()
        writer.close()

    def stop(self) -> None:
        self._udp.close()
        self._tcp.close()


@pytest.fixture
async def upstream():
    up = Upstream()
    await up.start()
    yield up
    up.stop()


@pytest.fixture
def silent_port():
    """A loopback UDP and TCP port that never answers: a dead upstream."""
    for _ in range(20):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        tcp = socket.socket()
        try:
            tcp.bind(("127.0.0.1", udp.getsockname()[1]))
            break
        except OSError:  # that number is taken for TCP: try another
            udp.close()
            tcp.close()
    tcp.listen(8)  # accepts, reads nothing, never replies
    yield udp.getsockname()[1]
    udp.close()
    tcp.close()


def cluster_records() -> ClusterRecords:
    records = ClusterRecords()
    records.upsert_service(service("web", ports=[port(80, name="http")]))
    records.upsert_service(service("db", cluster_ip="None", ports=[port(5432, name="pg")]))
    db_ips = [f"10.244.1.{i}" for i in range(1, 4)]
    records.upsert_endpoints(
        endpoints("db", ips=db_ips, ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}])
    )
    records.upsert_service(service("big", cluster_ip="None", ports=[port(80, name="http")]))
    big_ips = [f"10.244.{2 + i // 250}.{i % 250 + 1}" for i in range(400)]  # > 4096 bytes of A
    records.upsert_endpoints(endpoints("big", ips=big_ips))
    records.upsert_service(service("mid", cluster_ip="None", ports=[port(80, name="http")]))
    records.upsert_endpoints(endpoints("mid", ips=[f"10.244.9.{i}" for i in range(1, 61)]))
    return records


async def start_server(upstreams, *, registry=None, timeout=2.0) -> DnsServer:
    config = DnsConfig(
        listen_host="127.0.0.1",
        listen_port=0,
        upstreams=tuple(upstreams),
        forward_timeout=timeout,
    )
    server = DnsServer(
        cluster_records(), config=config, metrics=DnsMetrics(registry or CollectorRegistry())
    )
    await server.start()
    return server


@pytest.fixture
async def registry():
    return CollectorRegistry()


@pytest.fixture
async def server(upstream, registry):
    srv = await start_server([("127.0.0.1", upstream.port)], registry=registry)
    yield srv
    await srv.stop()


async def query(srv: DnsServer, name: str, qtype: str = "A", *, tcp: bool = False) -> DNSRecord:
    request = DNSRecord.question(name, qtype)
    # dnslib's client blocks: keep it off the loop the server runs on.
    raw = await asyncio.to_thread(request.send, "127.0.0.1", srv.port, tcp=tcp, timeout=10)
    reply = DNSRecord.parse(raw)
    assert reply.header.id == request.header.id
    return reply


def answers(reply: DNSRecord) -> set[str]:
    return {str(rr.rdata) for rr in reply.rr}


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_cluster_names_over_both_transports(server, upstream, tcp):
    assert answers(await query(server, "web.default.svc.cluster.local", tcp=tcp)) == {"10.96.0.10"}
    assert answers(await query(server, "db.default.svc.cluster.local", tcp=tcp)) == {
        "10.244.1.1",
        "10.244.1.2",
        "10.244.1.3",
    }
    srv = await query(server, "_http._tcp.web.default.svc.cluster.local", "SRV", tcp=tcp)
    assert answers(srv) == {"0 100 80 web.default.svc.cluster.local."}
    missing = await query(server, "nope.default.svc.cluster.local", tcp=tcp)
    assert missing.header.rcode == RCODE.NXDOMAIN and QTYPE[missing.auth[0].rtype] == "SOA"
    assert upstream.queries == []  # the cluster zone is never forwarded


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_other_names_are_forwarded(server, upstream, registry, tcp):
    reply = await query(server, "www.example.test", tcp=tcp)
    assert answers(reply) == {"192.0.2.2"}
    assert (await query(server, "unknown.example.test", tcp=tcp)).header.rcode == RCODE.NXDOMAIN
    assert upstream.queries == ["www.example.test.", "unknown.example.test."]
    assert (
        registry.get_sample_value(
            "kubelite_dns_queries_total", {"qtype": "A", "rcode": "NXDOMAIN", "source": "forward"}
        )
        == 1
    )


async def test_dead_upstream_gives_servfail_and_is_counted(silent_port):
    registry = CollectorRegistry()
    srv = await start_server([("127.0.0.1", silent_port)], registry=registry, timeout=0.3)
    try:
        for tcp in (False, True):
            reply = await query(srv, "example.test", tcp=tcp)
            assert reply.header.rcode == RCODE.SERVFAIL
        assert (
            registry.get_sample_value(
                "kubelite_dns_forward_failures_total", {"upstream": f"127.0.0.1:{silent_port}"}
            )
            == 2
        )
        assert (
            registry.get_sample_value(
                "kubelite_dns_queries_total",
                {"qtype": "A", "rcode": "SERVFAIL", "source": "forward"},
            )
            == 2
        )
    finally:
        await srv.stop()


async def test_next_upstream_is_tried_when_the_first_is_dead(silent_port, upstream):
    srv = await start_server(
        [("127.0.0.1", silent_port), ("127.0.0.1", upstream.port)], timeout=0.3
    )
    try:
        assert answers(await query(srv, "example.test")) == {"192.0.2.1"}
    finally:
        await srv.stop()


async def test_no_upstream_gives_servfail():
    srv = await start_server([])
    try:
        assert (await query(srv, "example.test")).header.rcode == RCODE.SERVFAIL
    finally:
        await srv.stop()


async def test_large_answer_is_truncated_over_udp_and_whole_over_tcp(server):
    name = "big.default.svc.cluster.local"
    udp = await query(server, name)
    assert udp.header.tc == 1 and udp.rr == []
    tcp = await query(server, name, tcp=True)
    assert tcp.header.tc == 0 and len(tcp.rr) == 400


async def test_edns_client_gets_a_larger_udp_answer(server):
    name = "mid.default.svc.cluster.local"  # 60 addresses: past 512 bytes, within 4096
    assert (await query(server, name)).header.tc == 1
    request = DNSRecord.question(name, "A")
    request.add_ar(EDNS0(udp_len=4096))
    raw = await asyncio.to_thread(request.send, "127.0.0.1", server.port, timeout=10)
    reply = DNSRecord.parse(raw)
    assert reply.header.tc == 0 and len(reply.rr) == 60
    assert any(rr.rtype == 41 for rr in reply.ar)
    # Past even the EDNS size, UDP is truncated.
    request = DNSRecord.question("big.default.svc.cluster.local", "A")
    request.add_ar(EDNS0(udp_len=4096))
    raw = await asyncio.to_thread(request.send, "127.0.0.1", server.port, timeout=10)
    assert DNSRecord.parse(raw).header.tc == 1


async def test_malformed_packet_gets_formerr_and_the_server_keeps_answering(server):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(10)
    try:
        garbage = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\xff\xff\xff"
        await asyncio.to_thread(sock.sendto, garbage, ("127.0.0.1", server.port))
        data, _ = await asyncio.to_thread(sock.recvfrom, 512)
    finally:
        sock.close()
    reply = DNSRecord.parse(data)
    assert reply.header.id == 0x1234 and reply.header.rcode == RCODE.FORMERR
    assert answers(await query(server, "web.default.svc.cluster.local")) == {"10.96.0.10"}


async def test_cluster_queries_are_counted(server, registry):
    await query(server, "web.default.svc.cluster.local")
    await query(server, "_http._tcp.web.default.svc.cluster.local", "SRV")
    assert (
        registry.get_sample_value(
            "kubelite_dns_queries_total", {"qtype": "A", "rcode": "NOERROR", "source": "cluster"}
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "kubelite_dns_queries_total", {"qtype": "SRV", "rcode": "NOERROR", "source": "cluster"}
        )
        == 1
    )


def test_config_refuses_forwarding_to_itself():
    with pytest.raises(ValueError, match="loop"):
        DnsConfig(listen_host="127.0.0.1", listen_port=5353, upstreams=(("127.0.0.1", 5353),))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"listen_host": "localhost"}, "listen_host", id="host-not-ip"),
        pytest.param({"listen_port": 70000}, "listen_port", id="port-range"),
        pytest.param({"cluster_domain": "bad_domain"}, "cluster_domain", id="domain"),
        pytest.param({"upstreams": (("8.8.8.8", 0),)}, r"upstreams\[0\] port", id="upstream-port"),
        pytest.param({"forward_timeout": 0}, "forward_timeout", id="timeout"),
    ],
)
def test_bad_config_is_refused_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        DnsConfig(**fields)
