"""UDP flows to removed endpoints are forgotten after the sync that removed them."""

from __future__ import annotations

import sys

import pytest

from machinery.clock import FakeClock
from proxy.config import ProxyConfig
from proxy.conntrack import ConntrackCommand, UdpPort, stale_flow_filters
from proxy.iptables import IptablesCommand
from proxy.state import ProxyState
from proxy.sync import SyncRunner
from tests.proxy.builders import endpoints, port, service
from tests.proxy.conftest import ns_run

DNS = UdpPort("10.96.0.53", 53, None)
NODE = UdpPort("10.96.0.54", 53, 30053)


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        pytest.param(
            {DNS: frozenset({"10.0.0.1"})}, {DNS: frozenset({"10.0.0.1"})}, [], id="unchanged"
        ),
        pytest.param({DNS: frozenset()}, {DNS: frozenset({"10.0.0.1"})}, [], id="added"),
        pytest.param(
            {DNS: frozenset({"10.0.0.1", "10.0.0.2"})},
            {DNS: frozenset({"10.0.0.2"})},
            [
                [
                    "-p",
                    "udp",
                    "--orig-dst",
                    "10.96.0.53",
                    "--orig-port-dst",
                    "53",
                    "--dst-nat",
                    "10.0.0.1",
                ]
            ],
            id="removed",
        ),
        pytest.param(
            {NODE: frozenset({"10.0.0.1"})},
            {},
            [
                [
                    "-p",
                    "udp",
                    "--orig-dst",
                    "10.96.0.54",
                    "--orig-port-dst",
                    "53",
                    "--dst-nat",
                    "10.0.0.1",
                ],
                ["-p", "udp", "--orig-port-dst", "30053", "--dst-nat", "10.0.0.1"],
            ],
            id="service-deleted-with-node-port",
        ),
    ],
)
def test_stale_flow_filters(before, after, expected):
    assert stale_flow_filters(before, after) == expected


SEND = """
import socket
for _ in range(30):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"q", ("10.96.0.53", 53))
    s.close()
"""


def flows_to(netns: str) -> dict[str, int]:
    """Conntrack entries for the DNS ClusterIP, counted by the address they were DNATed to."""
    out = ns_run(netns, "sh", "-c", "conntrack -L -p udp --orig-dst 10.96.0.53 2>/dev/null || true")
    counts: dict[str, int] = {}
    for line in out.splitlines():
        # the reply direction's src= is the endpoint the flow was DNATed to
        sources = [f[4:] for f in line.split() if f.startswith("src=")]
        if len(sources) == 2:
            counts[sources[1]] = counts.get(sources[1], 0) + 1
    return counts


@pytest.mark.root
async def test_udp_flows_to_a_removed_endpoint_are_deleted(netns):
    ns_run(netns, "ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
    ns_run(netns, "ip", "addr", "add", "10.244.0.1/24", "dev", "veth0")
    ns_run(netns, "ip", "link", "set", "veth0", "up")
    ns_run(netns, "ip", "link", "set", "veth1", "up")
    ns_run(netns, "ip", "route", "add", "10.96.0.0/12", "dev", "veth0")
    clock = FakeClock()
    state = ProxyState(clock=clock)
    dns_ports = [{"name": "dns", "port": 5353, "protocol": "UDP"}]
    state.upsert_service(
        service("dns", cluster_ip="10.96.0.53", ports=[port(53, name="dns", protocol="UDP")])
    )
    state.upsert_endpoints(endpoints("dns", ips=["10.244.0.11", "10.244.0.12"], ports=dns_ports))
    state.mark_listed("Service")
    state.mark_listed("Endpoints")
    runner = SyncRunner(
        state,
        IptablesCommand(netns=netns),
        config=ProxyConfig(),
        clock=clock,
        conntrack=ConntrackCommand(netns=netns),
    )
    assert (await runner.sync()).ok
    ns_run(netns, sys.executable, "-c", SEND)
    before = flows_to(netns)
    assert set(before) == {"10.244.0.11", "10.244.0.12"}, before

    state.upsert_endpoints(endpoints("dns", ips=["10.244.0.12"], ports=dns_ports))
    assert (await runner.sync()).ok

    assert flows_to(netns) == {"10.244.0.12": before["10.244.0.12"]}
