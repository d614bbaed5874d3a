"""Answers for names inside the cluster domain, from the ClusterRecords view.

Names (relative to the cluster domain, e.g. cluster.local):

    <svc>.<ns>.svc                A: the ClusterIP; for a headless Service the
                                  ready endpoint addresses; SRV: one per named port
    <label>.<svc>.<ns>.svc        A: one endpoint of a headless Service; label is
                                  its hostname, or its IP with dashes (10-244-0-5)
    _<port>._<proto>.<svc>.<ns>.svc
                                  SRV: port and target (the Service name, or each
                                  endpoint's name for a headless Service), with the
                                  targets' A records in the additional section
    <ns>.svc, svc, and the apex   exist (NOERROR, no data); the apex answers SOA

An ExternalName Service answers every type with a CNAME to its target. A name
that exists but has no record of the asked type gets NOERROR with no answer
(so that a resolver asking for AAAA and A in parallel still uses the A); a
name that does not exist gets NXDOMAIN. Both carry the zone's SOA in the
authority section, whose minimum field is the negative-caching TTL.
"""

from __future__ import annotations

import dataclasses

from dnslib import CNAME, QTYPE, RCODE, RR, SOA, SRV, A, DNSRecord

from dns.records import ClusterRecords, DnsEndpoint, DnsService

_SOA_TIMES = (7200, 1800, 86400)  # refresh, retry, expire: nothing transfers this zone


@dataclasses.dataclass
class _Found:
    """What a name resolved to: exists or not, and the records of the asked type."""

    exists: bool
    answers: list[RR] = dataclasses.field(default_factory=list)
    additional: list[RR] = dataclasses.field(default_factory=list)


_MISSING = _Found(exists=False)


class ClusterZone:
    def __init__(self, records: ClusterRecords, *, domain: str, ttl: int) -> None:
        self._records = records
        self._domain = domain
        self._suffix = "." + domain
        self._ttl = ttl

    def contains(self, qname: str) -> bool:
        name = qname.rstrip(".").lower()
        return name == self._domain or name.endswith(self._suffix)

    def answer(self, request: DNSRecord) -> DNSRecord:
        """The authoritative reply to a query whose name is inside the zone."""
        question = request.q
        owner = str(question.qname)  # answers echo the asked case (0x20-style resolvers check)
        name = owner.rstrip(".").lower()
        relative = name[: -len(self._suffix)] if name != self._domain else ""
        labels = relative.split(".") if relative else []
        found = self._lookup(labels, question.qtype, owner)
        reply = request.reply()
        if not found.exists:
            reply.header.rcode = RCODE.NXDOMAIN
        for rr in found.answers:
            reply.add_answer(rr)
        for rr in found.additional:
            reply.add_ar(rr)
        if not found.answers:
            reply.add_auth(self._soa())
        return reply

    # Lookup by the shape of the name, read from the right: ...<svc>.<ns>.svc

    def _lookup(self, labels: list[str], qtype: int, name: str) -> _Found:
        if not labels:
            return _Found(True, [self._soa()] if qtype in (QTYPE.SOA, QTYPE.ANY) else [])
        if labels[-1] != "svc":
            return _MISSING
        if len(labels) == 1:
            return _Found(True)
        if len(labels) == 2:
            return _Found(self._records.has_namespace(labels[0]))
        svc = self._records.service(labels[-2], labels[-3])
        if svc is None:
            return _MISSING
        if len(labels) == 3:
            return self._service(svc, qtype, name)
        if len(labels) == 4 and not labels[0].startswith("_"):
            return self._endpoint(svc, labels[0], qtype, name)
        if len(labels) == 5 and labels[0].startswith("_") and labels[1].startswith("_"):
            return self._port(svc, labels[0][1:], labels[1][1:].upper(), qtype, name)
        return _MISSING

    def _service(self, svc: DnsService, qtype: int, name: str) -> _Found:
        if svc.external_name is not None:
            return _Found(True, [self._rr(name, QTYPE.CNAME, CNAME(svc.external_name + "."))])
        if qtype in (QTYPE.A, QTYPE.ANY):
            ips = [svc.cluster_ip] if svc.cluster_ip else [e.ip for e in self._ready(svc)]
            return _Found(True, [self._rr(name, QTYPE.A, A(ip)) for ip in ips])
        if qtype == QTYPE.SRV:
            found = _Found(True)
            for port in svc.ports:
                if port.name:
                    self._add_srv(found, svc, port.name, port.protocol, owner=name)
            return found
        return _Found(True)

    def _endpoint(self, svc: DnsService, label: str, qtype: int, name: str) -> _Found:
        if not svc.headless:
            return _MISSING
        matches = [e for e in self._ready(svc) if e.label == label]
        if not matches:
            return _MISSING
        if qtype in (QTYPE.A, QTYPE.ANY):
            return _Found(True, [self._rr(name, QTYPE.A, A(e.ip)) for e in matches])
        return _Found(True)

    def _port(self, svc: DnsService, port: str, protocol: str, qtype: int, name: str) -> _Found:
        if not any(p.name == port and p.protocol == protocol for p in svc.ports):
            return _MISSING
        found = _Found(True)
        if qtype in (QTYPE.SRV, QTYPE.ANY):
            self._add_srv(found, svc, port, protocol, owner=name)
        return found

    def _add_srv(
        self, found: _Found, svc: DnsService, port: str, protocol: str, *, owner: str
    ) -> None:
        """SRV records (and the targets' A records) for one named port of a Service."""
        service_name = f"{svc.name}.{svc.namespace}.svc.{self._domain}"
        if svc.cluster_ip:
            number = next(p.port for p in svc.ports if p.name == port and p.protocol == protocol)
            found.answers.append(self._rr(owner, QTYPE.SRV, SRV(0, 100, number, service_name)))
            found.additional.append(self._rr(service_name, QTYPE.A, A(svc.cluster_ip)))
            return
        targets = [
            (e, p.port)
            for e in self._ready(svc)
            for p in e.ports
            if p.name == port and p.protocol == protocol
        ]
        weight = max(1, 100 // len(targets)) if targets else 0
        for endpoint, number in targets:
            target = f"{endpoint.label}.{service_name}"
            found.answers.append(self._rr(owner, QTYPE.SRV, SRV(0, weight, number, target)))
            found.additional.append(self._rr(target, QTYPE.A, A(endpoint.ip)))

    def _ready(self, svc: DnsService) -> tuple[DnsEndpoint, ...]:
        return self._records.endpoints(svc.namespace, svc.name)

    def _rr(self, name: str, rtype: int, rdata: object) -> RR:
        return RR(name, rtype, rdata=rdata, ttl=self._ttl)

    def _soa(self) -> RR:
        times = (self._records.serial, *_SOA_TIMES, self._ttl)
        soa = SOA(f"ns.dns.{self._domain}", f"hostmaster.{self._domain}", times)
        return RR(self._domain, QTYPE.SOA, rdata=soa, ttl=self._ttl)
