"""Parsing Service and Endpoints objects into the proxy's values, and refusing bad ones."""

from __future__ import annotations

import pytest

from proxy.config import ProxyConfig
from proxy.model import InvalidObject, parse_endpoints, parse_service
from tests.proxy.builders import endpoints, port, service


def _with_spec(**fields):
    obj = service()
    obj["spec"].update(fields)
    return obj


BAD_SERVICES = [
    pytest.param(_with_spec(type="ExternalName"), "spec.type", id="unsupported-type"),
    pytest.param(_with_spec(clusterIP="10.96.0.300"), "spec.clusterIP", id="bad-cluster-ip"),
    pytest.param(_with_spec(clusterIP="fd00::1"), "spec.clusterIP", id="ipv6-cluster-ip"),
    pytest.param(service(ports=[port(0)]), "spec.ports[0].port", id="port-zero"),
    pytest.param(service(ports=[port(80), {"port": "http"}]), "spec.ports[1].port", id="port-text"),
    pytest.param(service(ports=[port(80, protocol="ICMP")]), "spec.ports[0].protocol", id="proto"),
    pytest.param(
        service(ports=[port(80, node_port=70000)]), "spec.ports[0].nodePort", id="node-port-range"
    ),
    pytest.param(
        service(ports=[port(80, name="a"), port(81, name="a")]), "spec.ports[1].name", id="dup-name"
    ),
    pytest.param(_with_spec(sessionAffinity="Cookie"), "spec.sessionAffinity", id="affinity-kind"),
    pytest.param(
        service(affinity_seconds=0), "clientIP.timeoutSeconds", id="affinity-timeout-zero"
    ),
    pytest.param({"metadata": {"namespace": "x"}}, "metadata.name", id="no-name"),
    pytest.param(_with_spec(ports={"port": 80}), "ports: must be a list", id="ports-not-list"),
]


@pytest.mark.parametrize(("obj", "field"), BAD_SERVICES)
def test_bad_service_is_refused_naming_the_field(obj, field):
    with pytest.raises(InvalidObject) as err:
        parse_service(obj)
    assert field in str(err.value)
    if "name" in obj.get("metadata", {}):
        assert "default/web" in str(err.value)


BAD_ENDPOINTS = [
    pytest.param(endpoints(ips=["10.1.1"]), "subsets[0].addresses[0].ip", id="bad-ip"),
    pytest.param(
        endpoints(ips=["10.1.1.1"], ports=[{"port": -1}]), "subsets[0].ports[0].port", id="bad-port"
    ),
    pytest.param({"metadata": {"name": "web"}, "subsets": {"a": 1}}, "subsets", id="not-a-list"),
]


@pytest.mark.parametrize(("obj", "field"), BAD_ENDPOINTS)
def test_bad_endpoints_are_refused_naming_the_field(obj, field):
    with pytest.raises(InvalidObject) as err:
        parse_endpoints(obj)
    assert field in str(err.value)


def test_service_defaults():
    svc = parse_service(service(ports=[{"port": 53}]))
    assert svc.ports[0].protocol == "TCP"
    assert svc.ports[0].name == ""
    assert svc.affinity_timeout is None
    assert svc.cluster_ip == "10.96.0.10"


@pytest.mark.parametrize(
    ("cluster_ip", "expected"),
    [
        pytest.param("None", None, id="headless"),
        pytest.param("", None, id="not-allocated"),
        pytest.param(None, None, id="absent"),
        pytest.param("10.96.0.1", "10.96.0.1", id="allocated"),
    ],
)
def test_cluster_ip(cluster_ip, expected):
    assert parse_service(service(cluster_ip=cluster_ip)).cluster_ip == expected


def test_affinity_default_timeout_is_three_hours():
    obj = _with_spec(sessionAffinity="ClientIP")
    assert parse_service(obj).affinity_timeout == 10800


def test_endpoints_merge_subsets_sorted_and_ignore_not_ready():
    obj = endpoints(ips=["10.244.0.12", "10.244.0.9"], not_ready=["10.244.0.5"])
    obj["subsets"].append(
        {"addresses": [{"ip": "10.244.0.10"}, {"ip": "10.244.0.9"}], "ports": [{"port": 8080}]}
    )
    eps = parse_endpoints(obj)
    assert eps.ready("", "TCP") == (
        ("10.244.0.9", 8080),
        ("10.244.0.10", 8080),
        ("10.244.0.12", 8080),
    )
    assert eps.ready("", "UDP") == ()
    assert eps.ready("http", "TCP") == ()


def test_endpoints_equal_whatever_the_subset_order():
    one = endpoints(ips=["10.0.0.2", "10.0.0.1"])
    two = endpoints(ips=["10.0.0.1", "10.0.0.2"])
    assert parse_endpoints(one) == parse_endpoints(two)


def test_node_port_only_for_type_node_port():
    obj = service(ports=[port(80, node_port=30080)])
    assert parse_service(obj).ports[0].node_port is None
    obj["spec"]["type"] = "NodePort"
    assert parse_service(obj).ports[0].node_port == 30080


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"cluster_cidr": "10.244.0.0/33"}, "cluster_cidr", id="cidr"),
        pytest.param({"cluster_cidr": "fd00::/64"}, "only IPv4", id="cidr-v6"),
        pytest.param({"masquerade_bit": 32}, "masquerade_bit", id="mark-bit"),
        pytest.param({"resync_interval": 0}, "resync_interval", id="resync-zero"),
        pytest.param({"resync_batch_rules": 0}, "resync_batch_rules", id="batch-zero"),
        pytest.param({"min_sync_interval": -1}, "min_sync_interval", id="interval-negative"),
    ],
)
def test_bad_config_is_refused_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        ProxyConfig(**fields)


def test_config_normalises_the_cluster_cidr():
    assert ProxyConfig(cluster_cidr="10.244.3.7/16").cluster_cidr == "10.244.0.0/16"
