"""The DNS server's Prometheus metrics, registered on a registry handed in (tests use their own).

kubelite_dns_queries_total{qtype, rcode, source}   answered queries; source is
                                                   cluster (our zone) or forward
kubelite_dns_forward_failures_total{upstream}      upstream attempts that failed
kubelite_dns_request_duration_seconds{source}      receipt to reply, per query
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class DnsMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.queries = Counter(
            "kubelite_dns_queries_total",
            "DNS queries answered, by question type, response code and who answered.",
            ["qtype", "rcode", "source"],
            registry=registry,
        )
        self.forward_failures = Counter(
            "kubelite_dns_forward_failures_total",
            "Forwarded queries that an upstream server did not answer.",
            ["upstream"],
            registry=registry,
        )
        self.duration = Histogram(
            "kubelite_dns_request_duration_seconds",
            "Time from receiving a query to sending its reply.",
            ["source"],
            buckets=_BUCKETS,
            registry=registry,
        )
