"""Answers from the cluster zone, name by name, without sockets."""

from __future__ import annotations

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from dns.records import ClusterRecords, InvalidObject
from dns.zone import ClusterZone
from tests.proxy.builders import endpoints, port, service

DOMAIN = "cluster.local"


def headless_endpoints(
    name: str = "db", *, ready: list[tuple[str, str | None]], not_ready: list[str] = ()
) -> dict:
    return {
        "kind": "Endpoints",
        "metadata": {"name": name, "namespace": "default"},
        "subsets": [
            {
                "addresses": [
                    {"ip": ip, **({"hostname": host} if host else {})} for ip, host in ready
                ],
                "notReadyAddresses": [{"ip": ip} for ip in not_ready],
                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            }
        ],
    }


def external(name: str, target: str) -> dict:
    return {
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": target},
    }


@pytest.fixture
def records() -> ClusterRecords:
    r = ClusterRecords()
    r.upsert_service(
        service("web", ports=[port(80, name="http"), port(53, name="dns", protocol="UDP")])
    )
    r.upsert_endpoints(endpoints("web", ips=["10.244.0.5"]))
    r.upsert_service(service("db", cluster_ip="None", ports=[port(5432, name="pg")]))
    r.upsert_endpoints(
        headless_endpoints(
            ready=[("10.244.0.12", None), ("10.244.0.11", "db-0")], not_ready=["10.244.0.13"]
        )
    )
    r.upsert_service(service("empty", cluster_ip="None", ports=[port(80, name="http")]))
    r.upsert_service(external("ext", "example.org"))
    r.upsert_service(service("api", namespace="prod", cluster_ip="10.96.0.40"))
    return r


def ask(records: ClusterRecords, name: str, qtype: str, domain: str = DOMAIN) -> DNSRecord:
    zone = ClusterZone(records, domain=domain, ttl=5)
    return zone.answer(DNSRecord.question(name, qtype))


def records_of(reply: DNSRecord, section: str = "rr") -> set[tuple[str, str, str]]:
    return {(str(rr.rname), QTYPE[rr.rtype], str(rr.rdata)) for rr in getattr(reply, section)}


WEB = "web.default.svc.cluster.local."
DB = "db.default.svc.cluster.local."

CASES = [
    pytest.param(WEB, "A", "NOERROR", {(WEB, "A", "10.96.0.10")}, id="service-a"),
    pytest.param(
        "WEB.Default.SVC.Cluster.Local",
        "A",
        "NOERROR",
        {("WEB.Default.SVC.Cluster.Local.", "A", "10.96.0.10")},
        id="case-insensitive",
    ),
    pytest.param(WEB, "AAAA", "NOERROR", set(), id="service-aaaa-nodata"),
    pytest.param(
        "api.prod.svc.cluster.local",
        "A",
        "NOERROR",
        {("api.prod.svc.cluster.local.", "A", "10.96.0.40")},
        id="other-namespace",
    ),
    pytest.param(
        DB,
        "A",
        "NOERROR",
        {(DB, "A", "10.244.0.11"), (DB, "A", "10.244.0.12")},
        id="headless-ready-ips",
    ),
    pytest.param(
        "empty.default.svc.cluster.local",
        "A",
        "NOERROR",
        set(),
        id="headless-without-endpoints-nodata",
    ),
    pytest.param(
        "db-0." + DB, "A", "NOERROR", {("db-0." + DB, "A", "10.244.0.11")}, id="headless-hostname"
    ),
    pytest.param(
        "10-244-0-12." + DB,
        "A",
        "NOERROR",
        {("10-244-0-12." + DB, "A", "10.244.0.12")},
        id="headless-dashed-ip",
    ),
    pytest.param("10-244-0-13." + DB, "A", "NXDOMAIN", set(), id="not-ready-endpoint-absent"),
    pytest.param("db-0." + WEB, "A", "NXDOMAIN", set(), id="endpoint-name-only-if-headless"),
    pytest.param(
        "_http._tcp." + WEB,
        "SRV",
        "NOERROR",
        {("_http._tcp." + WEB, "SRV", "0 100 80 web.default.svc.cluster.local.")},
        id="srv-cluster-ip",
    ),
    pytest.param(
        "_dns._udp." + WEB,
        "SRV",
        "NOERROR",
        {("_dns._udp." + WEB, "SRV", "0 100 53 web.default.svc.cluster.local.")},
        id="srv-udp",
    ),
    pytest.param("_dns._tcp." + WEB, "SRV", "NXDOMAIN", set(), id="srv-wrong-protocol"),
    pytest.param(
        "_pg._tcp." + DB,
        "SRV",
        "NOERROR",
        {
            ("_pg._tcp." + DB, "SRV", "0 50 5432 db-0.db.default.svc.cluster.local."),
            ("_pg._tcp." + DB, "SRV", "0 50 5432 10-244-0-12.db.default.svc.cluster.local."),
        },
        id="srv-headless-per-endpoint",
    ),
    pytest.param("_nope._tcp." + WEB, "SRV", "NXDOMAIN", set(), id="srv-unknown-port"),
    pytest.param(
        WEB,
        "SRV",
        "NOERROR",
        {
            (WEB, "SRV", "0 100 80 web.default.svc.cluster.local."),
            (WEB, "SRV", "0 100 53 web.default.svc.cluster.local."),
        },
        id="srv-on-service-name-lists-named-ports",
    ),
    pytest.param("nothere.default.svc.cluster.local", "A", "NXDOMAIN", set(), id="unknown-svc"),
    pytest.param("web.prod.svc.cluster.local", "A", "NXDOMAIN", set(), id="wrong-namespace"),
    pytest.param(
        "example.com.default.svc.cluster.local", "A", "NXDOMAIN", set(), id="search-path-probe"
    ),
    pytest.param("default.svc.cluster.local", "A", "NOERROR", set(), id="namespace-exists"),
    pytest.param("ghost.svc.cluster.local", "A", "NXDOMAIN", set(), id="namespace-unknown"),
    pytest.param("svc.cluster.local", "A", "NOERROR", set(), id="svc-label"),
    pytest.param("pod.cluster.local", "A", "NXDOMAIN", set(), id="outside-svc"),
    pytest.param(
        "ext.default.svc.cluster.local",
        "A",
        "NOERROR",
        {("ext.default.svc.cluster.local.", "CNAME", "example.org.")},
        id="external-name",
    ),
]


@pytest.mark.parametrize(("name", "qtype", "rcode", "expected"), CASES)
def test_answer(records, name, qtype, rcode, expected):
    reply = ask(records, name, qtype)
    assert RCODE[reply.header.rcode] == rcode
    assert records_of(reply) == expected
    assert reply.header.aa == 1
    assert all(rr.ttl == 5 for rr in reply.rr)
    if not expected:
        (soa,) = reply.auth
        assert QTYPE[soa.rtype] == "SOA" and str(soa.rname) == "cluster.local."
        assert soa.rdata.times[-1] == 5  # the negative-caching TTL


def test_srv_additional_section_has_the_targets(records):
    reply = ask(records, "_pg._tcp." + DB, "SRV")
    assert records_of(reply, "ar") == {
        ("db-0.db.default.svc.cluster.local.", "A", "10.244.0.11"),
        ("10-244-0-12.db.default.svc.cluster.local.", "A", "10.244.0.12"),
    }


def test_apex_answers_soa_with_serial_counting_changes(records):
    before = ask(records, "cluster.local", "SOA").rr[0].rdata.times[0]
    records.upsert_endpoints(endpoints("web", ips=["10.244.0.6"]))
    after = ask(records, "cluster.local", "SOA").rr[0].rdata.times[0]
    assert after == before + 1


def test_changes_show_in_the_next_answer(records):
    records.upsert_endpoints(
        headless_endpoints(ready=[("10.244.0.11", "db-0")], not_ready=["10.244.0.12"])
    )
    assert records_of(ask(records, DB, "A")) == {(DB, "A", "10.244.0.11")}
    records.delete_service(service("web"))
    assert ask(records, WEB, "A").header.rcode == RCODE.NXDOMAIN
    assert not records.upsert_endpoints(
        headless_endpoints(ready=[("10.244.0.11", "db-0")], not_ready=["10.244.0.12"])
    )


def test_watch_events(records):
    assert records.apply({"type": "DELETED", "object": service("web")})
    assert ask(records, WEB, "A").header.rcode == RCODE.NXDOMAIN
    assert records.apply({"type": "ADDED", "object": service("web", cluster_ip="10.96.0.77")})
    assert records_of(ask(records, WEB, "A")) == {(WEB, "A", "10.96.0.77")}
    assert not records.apply({"type": "BOOKMARK", "object": {"kind": "Service"}})
    with pytest.raises(InvalidObject, match="object.kind"):
        records.apply({"type": "ADDED", "object": {"kind": "Pod", "metadata": {"name": "p"}}})


def test_other_cluster_domain():
    r = ClusterRecords()
    r.upsert_service(service("web"))
    reply = ask(r, "web.default.svc.k8s.example", "A", domain="k8s.example")
    assert records_of(reply) == {("web.default.svc.k8s.example.", "A", "10.96.0.10")}


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        pytest.param(service(cluster_ip="10.96.0"), "spec.clusterIP", id="cluster-ip"),
        pytest.param(service(ports=[port(0)]), "spec.ports[0].port", id="port"),
        pytest.param(external("x", "not a name"), "spec.externalName", id="external-name"),
        pytest.param(
            headless_endpoints(ready=[("10.0.0.1", "Bad_Host")]),
            "subsets[0].addresses[0].hostname",
            id="hostname",
        ),
        pytest.param({"metadata": {}}, "metadata.name", id="no-name"),
    ],
)
def test_bad_objects_are_refused_naming_the_field(obj, field):
    r = ClusterRecords()
    upsert = r.upsert_endpoints if "subsets" in obj else r.upsert_service
    with pytest.raises(InvalidObject) as err:
        upsert(obj)
    assert field in str(err.value)
