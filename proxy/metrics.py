"""The proxy's Prometheus metrics, registered on a registry handed in (tests use their own).

kubelite_proxy_sync_duration_seconds{kind}       render + apply of one sync (full|partial)
kubelite_proxy_rules_programmed{table}           rules in our chains after the last sync
kubelite_proxy_last_sync_timestamp_seconds       wall time the last successful sync finished
kubelite_proxy_endpoints_change_latency_seconds  from an Endpoints change being observed
                                                 to its rules being in the kernel
kubelite_proxy_sync_failures_total               syncs whose apply failed
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

# A full sync at a thousand Services takes seconds on iptables-nft; a partial
# one tens of milliseconds: the buckets cover both ends.
_SYNC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60)


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.sync_duration = Histogram(
            "kubelite_proxy_sync_duration_seconds",
            "Time to render and apply one sync of the proxy's rules.",
            ["kind"],
            buckets=_SYNC_BUCKETS,
            registry=registry,
        )
        self.rules_programmed = Gauge(
            "kubelite_proxy_rules_programmed",
            "Rules in the proxy's own chains after the last successful sync.",
            ["table"],
            registry=registry,
        )
        self.last_sync = Gauge(
            "kubelite_proxy_last_sync_timestamp_seconds",
            "Unix time at which the last successful sync finished.",
            registry=registry,
        )
        self.change_latency = Histogram(
            "kubelite_proxy_endpoints_change_latency_seconds",
            "Time from an Endpoints change being observed to its rules being in place.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.sync_failures = Counter(
            "kubelite_proxy_sync_failures_total",
            "Syncs whose iptables apply failed.",
            registry=registry,
        )
