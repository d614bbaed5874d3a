"""Service clusterIP and nodePort allocation, through real API servers on a real etcd.

The ranges are made small (a /28, five node ports) so that exhaustion, reuse
after release and the reserved addresses are all reachable in a few calls.
"""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from apiserver.server import ApiServer, ServerConfig
from apiserver.serviceip import IPS, Owner, ServiceAllocator
from machinery import errors
from machinery.client import ApiClient
from tests import objects as o
from tests.tls import ClusterPKI

CIDR = "10.96.0.0/28"  # 14 addresses: .1 (kubernetes) and .10 (DNS) kept, 12 to hand out
PORTS = "30000-30004"


async def _server(etcd, prefix: str, pki: ClusterPKI) -> ApiServer:
    server = ApiServer(
        ServerConfig(
            etcd_endpoints=[etcd.endpoint],
            listen="127.0.0.1:0",
            prefix=prefix,
            compaction_interval=0,
            service_cidr=CIDR,
            node_port_range=PORTS,
            service_ip_repair_interval=0,
            **pki.server_settings(),
        )
    )
    await server.start()
    await asyncio.wait_for(server.ready.wait(), 30)
    return server


def _client(server: ApiServer, pki: ClusterPKI) -> ApiClient:
    return ApiClient([f"127.0.0.1:{server.port}"], timeout=10, credentials=pki.admin_credentials)


@pytest.fixture
async def small(etcd, etcd_prefix, cluster_pki):
    server = await _server(etcd, etcd_prefix, cluster_pki)
    api = _client(server, cluster_pki)
    yield server, api
    await api.close()
    await server.stop(grace=0)


def svc(name: str, *, cluster_ip: str = "", svc_type: str = "", node_ports=()) -> dict:
    obj = o.service(name)
    spec = obj["spec"]
    if cluster_ip:
        spec["clusterIP"] = cluster_ip
    if svc_type:
        spec["type"] = svc_type
    if node_ports:
        spec["ports"] = [
            {"name": f"p{i}", "port": 80 + i, **({"nodePort": n} if n else {})}
            for i, n in enumerate(node_ports)
        ]
    return obj


async def test_every_service_gets_a_distinct_ip_and_the_reserved_ones_are_never_handed_out(
    small,
) -> None:
    _, api = small
    ips = [(await api.create("services", svc(f"s{i}")))["spec"]["clusterIP"] for i in range(12)]
    assert len(set(ips)) == 12
    network = ipaddress.ip_network(CIDR)
    assert all(ipaddress.ip_address(ip) in network for ip in ips)
    assert not {"10.96.0.0", "10.96.0.1", "10.96.0.10", "10.96.0.15"} & set(ips)
    got = await api.get("services", "s0", namespace="default")
    assert got["spec"]["clusterIPs"] == [got["spec"]["clusterIP"]]

    with pytest.raises(errors.InternalError, match=r"range 10\.96\.0\.0/28 is full"):
        await api.create("services", svc("one-too-many"))

    await api.delete("services", "s3", namespace="default")
    again = await api.create("services", svc("after-release"))
    assert again["spec"]["clusterIP"] == ips[3]


REQUESTED = [
    pytest.param("10.96.0.10", None, id="dns-address-on-request"),
    pytest.param("10.96.0.1", None, id="kubernetes-address-on-request"),
    pytest.param("10.96.0.7", None, id="free-address-honoured"),
    pytest.param(
        "10.97.0.7", r"provided IP \(10\.97\.0\.7\) is not in the valid range", id="off-range"
    ),
    pytest.param("10.96.0.15", "is not in the valid range", id="broadcast-address-refused"),
]


@pytest.mark.parametrize(("ip", "error"), REQUESTED)
async def test_a_requested_cluster_ip_is_honoured_or_refused_clearly(small, ip, error) -> None:
    _, api = small
    if error is None:
        created = await api.create("services", svc("asked", cluster_ip=ip))
        assert created["spec"]["clusterIP"] == ip
        with pytest.raises(errors.Invalid) as taken:
            await api.create("services", svc("asked-again", cluster_ip=ip))
        assert "provided IP is already allocated" in str(taken.value)
        assert taken.value.causes[0].field == "spec.clusterIP"
        return
    with pytest.raises(errors.Invalid, match=error) as refused:
        await api.create("services", svc("asked", cluster_ip=ip))
    assert "The range of valid IPs is 10.96.0.0/28" in str(refused.value)


async def test_headless_service_gets_no_ip_and_takes_none(small) -> None:
    server, api = small
    created = await api.create("services", svc("headless", cluster_ip="None"))
    assert created["spec"]["clusterIP"] == "None"
    page = await server.store.list(f"{server.config.prefix}/ranges/")
    assert page.items == []


async def test_a_failed_create_gives_its_values_back(small) -> None:
    _, api = small
    await api.create("services", svc("dup", cluster_ip="10.96.0.5"))
    with pytest.raises(errors.AlreadyExists):
        await api.create("services", svc("dup", cluster_ip="10.96.0.6"))
    with pytest.raises(errors.Invalid):
        bad = svc("bad-port", cluster_ip="10.96.0.7")
        bad["spec"]["ports"][0]["port"] = 70000
        await api.create("services", bad)
    for name, ip in (("other-a", "10.96.0.6"), ("other-b", "10.96.0.7")):
        assert (await api.create("services", svc(name, cluster_ip=ip)))["spec"]["clusterIP"] == ip


async def test_dry_run_takes_nothing(small) -> None:
    _, api = small
    await api.create("services", svc("dry", cluster_ip="10.96.0.4"), dry_run=True)
    created = await api.create("services", svc("wet", cluster_ip="10.96.0.4"))
    assert created["spec"]["clusterIP"] == "10.96.0.4"
    with pytest.raises(errors.Invalid, match="already allocated"):
        await api.create("services", svc("dry2", cluster_ip="10.96.0.4"), dry_run=True)


NODE_PORTS = [
    pytest.param((0, 0), None, id="allocated-for-each-port"),
    pytest.param((30002,), None, id="requested-honoured"),
    pytest.param((31000,), "provided port is not in the valid range", id="off-range"),
    pytest.param((30001, 30001), "Duplicate value", id="twice-in-one-service"),
]


@pytest.mark.parametrize(("ports", "error"), NODE_PORTS)
async def test_node_ports_come_from_the_range(small, ports, error) -> None:
    _, api = small
    obj = svc("np", svc_type="NodePort", node_ports=ports)
    if error:
        with pytest.raises(errors.Invalid, match=error):
            await api.create("services", obj)
        return
    created = await api.create("services", obj)
    got = [p["nodePort"] for p in created["spec"]["ports"]]
    assert len(set(got)) == len(got) and all(30000 <= n <= 30004 for n in got)
    assert all(want in (0, n) for want, n in zip(ports, got, strict=True))


async def test_node_ports_are_unique_across_services_and_released_on_delete(small) -> None:
    _, api = small
    first = await api.create("services", svc("np-a", svc_type="NodePort", node_ports=(30003,)))
    with pytest.raises(errors.Invalid, match="provided port is already allocated") as taken:
        await api.create("services", svc("np-b", svc_type="NodePort", node_ports=(30003,)))
    assert taken.value.causes[0].field == "spec.ports[0].nodePort"
    others = await api.create("services", svc("np-c", svc_type="NodePort", node_ports=(0,) * 4))
    used = {p["nodePort"] for p in others["spec"]["ports"]} | {30003}
    assert used == set(range(30000, 30005))
    with pytest.raises(errors.InternalError, match="range 30000-30004 is full"):
        await api.create("services", svc("np-d", svc_type="NodePort", node_ports=(0,)))
    await api.delete("services", "np-a", namespace="default")
    again = await api.create("services", svc("np-b", svc_type="NodePort", node_ports=(30003,)))
    assert again["spec"]["ports"][0]["nodePort"] == first["spec"]["ports"][0]["nodePort"]


async def test_updates_keep_take_and_free_values(small) -> None:
    _, api = small
    created = await api.create("services", svc("web"))
    ip = created["spec"]["clusterIP"]

    # An update that leaves out the allocated fields keeps them, as kubectl apply expects.
    plain = svc("web")
    plain["metadata"]["labels"] = {"tier": "front"}
    updated = await api.update("services", plain)
    assert updated["spec"]["clusterIP"] == ip

    # ClusterIP -> NodePort takes a node port; NodePort -> ClusterIP gives it back.
    as_node_port = svc("web", svc_type="NodePort")
    port = (await api.update("services", as_node_port))["spec"]["ports"][0]["nodePort"]
    kept = await api.update("services", svc("web", svc_type="NodePort"))
    assert kept["spec"]["ports"][0]["nodePort"] == port
    back = await api.get("services", "web", namespace="default")
    back["spec"]["type"] = "ClusterIP"
    back = await api.update("services", back)
    assert "nodePort" not in back["spec"]["ports"][0] and back["spec"]["clusterIP"] == ip
    other = await api.create("services", svc("other", svc_type="NodePort", node_ports=(port,)))
    assert other["spec"]["ports"][0]["nodePort"] == port

    # The clusterIP stays immutable.
    moved = svc("web", cluster_ip="10.96.0.12" if ip != "10.96.0.12" else "10.96.0.13")
    with pytest.raises(errors.Invalid, match="immutable"):
        await api.update("services", moved)


async def test_two_api_servers_never_hand_out_one_ip_twice(etcd, etcd_prefix, cluster_pki) -> None:
    servers = [await _server(etcd, etcd_prefix, cluster_pki) for _ in range(2)]
    clients = [_client(s, cluster_pki) for s in servers]
    try:
        results = await asyncio.gather(
            *(clients[i % 2].create("services", svc(f"race-{i}")) for i in range(12)),
            return_exceptions=True,
        )
        ips = [r["spec"]["clusterIP"] for r in results if isinstance(r, dict)]
        failures = [r for r in results if not isinstance(r, dict)]
        assert not failures and len(ips) == 12 and len(set(ips)) == 12
    finally:
        for api in clients:
            await api.close()
        for server in servers:
            await server.stop(grace=0)


async def test_repair_frees_leaks_after_two_passes_and_restores_missing_keys(small) -> None:
    server, api = small
    allocator: ServiceAllocator = server.service_ips
    kept = await api.create("services", svc("kept"))
    ip = kept["spec"]["clusterIP"]
    prefix = f"{server.config.prefix}/ranges/{IPS}"
    # A leak: an address taken for a Service that never got stored.
    leaked = "10.96.0.9" if ip != "10.96.0.9" else "10.96.0.8"
    await server.store.create(f"{prefix}/{leaked}", Owner("default", "ghost", "u-1").encode())
    # A loss: the key of a live Service's address went missing.
    await server.store.delete(f"{prefix}/{ip}")

    def services():
        return [c.obj for c in server.caches["services"].objects()]

    while not services():  # the watch cache follows etcd a moment behind
        await asyncio.sleep(0.01)

    assert await allocator.repair(services()) == (0, 1)  # suspect only, on the first pass
    assert await allocator.repair(services()) == (1, 0)
    with pytest.raises(errors.Invalid, match="already allocated"):
        await api.create("services", svc("steal", cluster_ip=ip))
    reused = await api.create("services", svc("gets-leaked", cluster_ip=leaked))
    assert reused["spec"]["clusterIP"] == leaked
