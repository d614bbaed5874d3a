"""The Pod network's pure parts: config checks, route planning, rule rendering, hostPort
parsing, and the IP allocator on a temp directory (real files, real processes)."""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest

from kubelet.network import NetworkError, PortMapping
from kubelet.podnet.config import ConfigError, PodNetConfig, PodNetworkError, veth_name
from kubelet.podnet.hostports import HostPortRecord, HostPortStore, PortRequest, port_requests
from kubelet.podnet.ipam import IpAllocator, Owner, RangeExhausted
from kubelet.podnet.iptables import HostPort, jumps, parse_table, render_nat
from kubelet.podnet.routes import plan_routes


def config(**overrides: Any) -> PodNetConfig:
    fields: dict[str, Any] = {
        "pod_cidr": "10.244.1.0/24",
        "cluster_cidr": "10.244.0.0/16",
        "node_ip": "172.31.0.11",
        "state_dir": Path("/nonexistent"),
        **overrides,
    }
    return PodNetConfig(**fields)


def node(name: str, cidr: str | None = None, ip: str | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": name}, "spec": {}, "status": {}}
    if cidr:
        obj["spec"]["podCIDR"] = cidr
    if ip:
        obj["status"]["addresses"] = [
            {"type": "Hostname", "address": name},
            {"type": "InternalIP", "address": ip},
        ]
    return obj


# -- config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param({"prefix": "Kube"}, "invalid Pod network prefix 'Kube'", id="upper-prefix"),
        pytest.param({"prefix": "kubelite9"}, "1-8 lower-case", id="prefix-too-long"),
        pytest.param({"pod_cidr": "10.244.1.7/24"}, "did you mean 10.244.1.0/24", id="host-bits"),
        pytest.param({"pod_cidr": "10.245.1.0/24"}, "not inside cluster_cidr", id="outside"),
        pytest.param({"pod_cidr": "10.244.1.0/31"}, "too small", id="slash-31"),
        pytest.param({"pod_cidr": "banana"}, "invalid pod_cidr 'banana'", id="not-a-cidr"),
        pytest.param({"node_ip": "node-1"}, "invalid node_ip 'node-1'", id="node-ip"),
        pytest.param({"mtu": 100}, "invalid mtu 100", id="mtu"),
    ],
)
def test_bad_config_is_refused_naming_the_field(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        config(**overrides)


def test_config_errors_are_the_kubelets_network_errors() -> None:
    assert issubclass(ConfigError, NetworkError) and issubclass(RangeExhausted, NetworkError)
    assert config(pod_cidr="").pod_cidr == ""  # learnt later
    with pytest.raises(ConfigError, match="not known yet"):
        _ = config(pod_cidr="").network


def test_config_names_come_from_the_prefix() -> None:
    made = config(prefix="kt1")
    assert made.bridge == "kt10" and str(made.gateway) == "10.244.1.1"
    assert made.chains.all() == ("PODNET-KT1-MASQ", "PODNET-KT1-HOSTPORTS", "PODNET-KT1-FORWARD")
    assert not any(c.startswith("KUBELITE-") for c in config().chains.all())


def test_veth_names_are_stable_distinct_and_fit_ifnamsiz() -> None:
    names = {veth_name("kubelite", f"sandbox-{i}") for i in range(1000)}
    assert len(names) == 1000 and all(len(n) == 15 for n in names)
    assert veth_name("kubelite", "sandbox-1") == veth_name("kubelite", "sandbox-1")


# -- routes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nodes", "routes", "skipped"),
    [
        pytest.param(
            [
                node("n1", "10.244.1.0/24", "172.31.0.11"),
                node("n2", "10.244.2.0/24", "172.31.0.12"),
            ],
            {"10.244.2.0/24": "172.31.0.12"},
            {},
            id="other-node-routed-self-not",
        ),
        pytest.param(
            [node("n2", None, "172.31.0.12")], {}, {"n2": "no spec.podCIDR yet"}, id="no-cidr"
        ),
        pytest.param(
            [node("n2", "10.244.2.0/24")], {}, {"n2": "no InternalIP address"}, id="no-address"
        ),
        pytest.param(
            [
                node("n1", "10.244.1.0/24", "172.31.0.11"),
                node("a", "10.244.1.0/25", "172.31.0.12"),
            ],
            {},
            {"a": "spec.podCIDR 10.244.1.0/25 overlaps node n1's 10.244.1.0/24"},
            id="overlaps-this-node",
        ),
        pytest.param(
            [node("n3", "10.244.3.0/24", "172.31.0.13"), node("n2", "10.244.3.0/24", "1.1.1.2")],
            {"10.244.3.0/24": "1.1.1.2"},
            {"n3": "spec.podCIDR 10.244.3.0/24 overlaps node n2's 10.244.3.0/24"},
            id="first-by-name-wins",
        ),
        pytest.param(
            [
                {
                    "metadata": {"name": "n2"},
                    "spec": {"podCIDRs": ["fd00::/64", "10.244.2.0/24"]},
                    "status": {"addresses": [{"type": "InternalIP", "address": "172.31.0.12"}]},
                }
            ],
            {"10.244.2.0/24": "172.31.0.12"},
            {},
            id="ipv4-of-pod-cidrs",
        ),
        pytest.param(
            [node("n2", "10.244.2.0/24", "not-an-ip")],
            {},
            {"n2": "invalid InternalIP 'not-an-ip'"},
            id="bad-address",
        ),
    ],
)
def test_route_plan(nodes: list[dict], routes: dict[str, str], skipped: dict[str, str]) -> None:
    plan = plan_routes(nodes, node_name="n1")
    assert {str(r.destination): str(r.gateway) for r in plan.routes} == routes
    assert {s.node: s.reason for s in plan.skipped} == skipped


# -- iptables ------------------------------------------------------------------------------


def test_nat_rules_masquerade_the_edge_and_dnat_host_ports() -> None:
    lines = render_nat(
        config(prefix="kt"),
        [
            HostPort("udp", 5353, "10.244.1.2", 53),
            HostPort("tcp", 8080, "10.244.1.2", 80, host_ip="172.31.0.11"),
        ],
    )
    assert lines == [
        ":PODNET-KT-MASQ - [0:0]",
        ":PODNET-KT-HOSTPORTS - [0:0]",
        '-A PODNET-KT-MASQ -s 10.244.1.0/24 ! -d 10.244.0.0/16 -m comment --comment "pod '
        'traffic leaving the cluster" -j MASQUERADE',
        "-A PODNET-KT-MASQ -s 10.244.1.2/32 -d 10.244.1.2/32 -p tcp -m tcp --dport 80 "
        "-j MASQUERADE",
        "-A PODNET-KT-MASQ -s 10.244.1.2/32 -d 10.244.1.2/32 -p udp -m udp --dport 53 "
        "-j MASQUERADE",
        "-A PODNET-KT-HOSTPORTS -d 172.31.0.11/32 -p tcp -m tcp --dport 8080 "
        "-j DNAT --to-destination 10.244.1.2:80",
        "-A PODNET-KT-HOSTPORTS ! -d 127.0.0.0/8 -p udp -m udp --dport 5353 "
        "-j DNAT --to-destination 10.244.1.2:53",
    ]


def test_jumps_already_in_place_are_recognised() -> None:
    wanted = jumps(config(prefix="kt"), forward=True)
    saved = parse_table(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:PODNET-KT-MASQ - [0:0]\n"
        '-A POSTROUTING -m comment --comment "kubelite pod network kt" -j PODNET-KT-MASQ\n'
        "-A PREROUTING -j PODNET-KT-MASQ-OTHER\nCOMMIT\n"
    )
    assert [j.chain for j in wanted if saved.has_jump(j)] == ["POSTROUTING"]
    assert saved.chains == {"PODNET-KT-MASQ"} and saved.policies == {"PREROUTING": "ACCEPT"}
    assert [j.insert for j in wanted] == [False, False, False, True]


# -- hostPorts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mapping", "expected"),
    [
        pytest.param(PortMapping(8080, 80), PortRequest("tcp", 8080, 80), id="tcp"),
        pytest.param(
            PortMapping(53, 53, "UDP", "0.0.0.0"), PortRequest("udp", 53, 53), id="udp-any-address"
        ),
        pytest.param(
            PortMapping(80, 80, "tcp", "172.31.0.11"),
            PortRequest("tcp", 80, 80, "172.31.0.11"),
            id="host-ip",
        ),
    ],
)
def test_port_requests(mapping: PortMapping, expected: PortRequest) -> None:
    assert port_requests([mapping], pod="default/a") == [expected]


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        pytest.param(
            PortMapping(80, 80, "SCTP"),
            "unsupported protocol 'SCTP' in hostPort mapping 0 of Pod default/a",
            id="sctp",
        ),
        pytest.param(
            PortMapping(70000, 80),
            "invalid hostPort 70000 in hostPort mapping 0 of Pod default/a",
            id="port-range",
        ),
        pytest.param(
            PortMapping(80, 0), "invalid containerPort 0 in hostPort mapping 0", id="missing"
        ),
        pytest.param(
            PortMapping(80, 80, host_ip="node-1"), "invalid hostIP 'node-1'", id="host-ip"
        ),
    ],
)
def test_bad_host_ports_are_refused_naming_the_mapping(mapping: PortMapping, message: str) -> None:
    with pytest.raises(PodNetworkError) as err:
        port_requests([mapping], pod="default/a")
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("mine", "theirs", "conflict"),
    [
        pytest.param(PortRequest("tcp", 80, 80), PortRequest("tcp", 80, 81), True, id="same"),
        pytest.param(PortRequest("tcp", 80, 80), PortRequest("udp", 80, 80), False, id="proto"),
        pytest.param(
            PortRequest("tcp", 80, 80, "10.0.0.1"), PortRequest("tcp", 80, 80), True, id="any-ip"
        ),
        pytest.param(
            PortRequest("tcp", 80, 80, "10.0.0.1"),
            PortRequest("tcp", 80, 80, "10.0.0.2"),
            False,
            id="other-ip",
        ),
    ],
)
def test_host_port_conflicts(
    tmp_path: Path, mine: PortRequest, theirs: PortRequest, conflict: bool
) -> None:
    store = HostPortStore(tmp_path)
    store.put(HostPortRecord("sb-a", "default/a", "10.244.1.2", (theirs,)))
    reason = store.conflict(HostPortRecord("sb-b", "default/b", "10.244.1.3", (mine,)))
    assert (reason is not None) == conflict
    if conflict:
        assert "held by Pod default/a" in reason


# -- the allocator -------------------------------------------------------------------------


def test_allocator_skips_network_gateway_and_broadcast(tmp_path: Path) -> None:
    ipam = IpAllocator(ipaddress.IPv4Network("10.244.1.0/29"), tmp_path)
    got = [str(ipam.allocate(Owner(f"sb-{i}"))) for i in range(5)]
    assert got == [f"10.244.1.{i}" for i in range(2, 7)]
    with pytest.raises(RangeExhausted, match="every address of 10.244.1.0/29 is held"):
        ipam.allocate(Owner("sb-full"))


def test_allocation_is_idempotent_persistent_and_does_not_reuse_at_once(tmp_path: Path) -> None:
    ipam = IpAllocator(ipaddress.IPv4Network("10.244.1.0/24"), tmp_path)
    a = ipam.allocate(Owner("sb-a", "uid-a"))
    assert ipam.allocate(Owner("sb-a", "uid-a")) == a
    assert (tmp_path / str(a)).read_text() == "sb-a\nuid-a\n"
    b = ipam.allocate(Owner("sb-b"))
    assert ipam.release("sb-a") == a and ipam.release("sb-a") is None
    c = ipam.allocate(Owner("sb-c"))
    assert c not in (a, b)  # the freed address is not the next one handed out

    restarted = IpAllocator(ipaddress.IPv4Network("10.244.1.0/24"), tmp_path)
    assert restarted.lookup("sb-b") == b and restarted.allocate(Owner("sb-c")) == c
    assert set(restarted.held()) == {b, c}


def test_release_orphans_frees_what_no_live_sandbox_holds(tmp_path: Path) -> None:
    ipam = IpAllocator(ipaddress.IPv4Network("10.244.1.0/24"), tmp_path)
    keep = ipam.allocate(Owner("sb-keep"))
    lost = ipam.allocate(Owner("sb-lost"))
    (tmp_path / "10.244.1.200").write_bytes(b"")  # a crash between create and write
    assert ipam.allocate(Owner("sb-x")) != ipaddress.IPv4Address("10.244.1.200")
    freed = ipam.release_orphans(["sb-keep", "sb-x"])
    assert freed == [lost, ipaddress.IPv4Address("10.244.1.200")]
    assert ipam.lookup("sb-keep") == keep


def _allocate_many(directory: str, tag: str, count: int, start: Any) -> None:
    ipam = IpAllocator(ipaddress.IPv4Network("10.244.0.0/23"), Path(directory))
    start.wait()
    for i in range(count):
        ipam.allocate(Owner(f"{tag}-{i}"))


def test_concurrent_processes_never_get_the_same_address(tmp_path: Path) -> None:
    # Spawned, not forked: a fork inherits the gRPC state earlier tests in this process
    # left behind, and a forked child that collects it can spin forever.
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    workers = [
        ctx.Process(target=_allocate_many, args=(str(tmp_path), f"p{n}", 150, start))
        for n in range(3)
    ]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    held = IpAllocator(ipaddress.IPv4Network("10.244.0.0/23"), tmp_path).held()
    owners = [o.sandbox_id for o in held.values()]
    assert len(held) == 450 and len(set(owners)) == 450
    never = {ipaddress.IPv4Address(a) for a in ("10.244.0.0", "10.244.0.1", "10.244.1.255")}
    assert not held.keys() & never
    assert sorted(os.listdir(tmp_path)) == sorted(map(str, held))
