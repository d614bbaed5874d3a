"""The kubelet's Prometheus metrics (kubelite_kubelet_*), on a registry of its own.

Each Kubelet gets its own CollectorRegistry so that several kubelets in one process (tests)
never clash over metric names; main.py serves that registry on --metrics-port. Runtime
latencies and errors are observed by the runtime adapter (cri.py) around every call; the
pod start latency is observed by the Pod worker when it first sees all of a Pod's
containers running, measured from when this kubelet first saw the Pod, and again from the
Pod's creationTimestamp (which has whole-second precision, so that figure is up to a
second high).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_RUNTIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300)


class KubeletMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.pod_start = Histogram(
            "kubelite_kubelet_pod_start_duration_seconds",
            "From the kubelet first seeing a Pod to all its containers observed running.",
            buckets=_START_BUCKETS,
            registry=r,
        )
        self.pod_start_since_creation = Histogram(
            "kubelite_kubelet_pod_start_since_creation_seconds",
            "From a Pod's creationTimestamp (whole seconds) to all its containers observed "
            "running on this kubelet.",
            buckets=_START_BUCKETS,
            registry=r,
        )
        self.certificate_expiration = Gauge(
            "kubelite_kubelet_certificate_expiration_timestamp_seconds",
            "When the kubelet's client and server certificates expire (Unix time; 0 while it "
            "holds none). Alert well before: rotation normally replaces them at 70-90% of "
            "their lifetime.",
            ["certificate"],
            registry=r,
        )
        self.running_pods = Gauge(
            "kubelite_kubelet_running_pods", "Pods with a ready sandbox on this node.", registry=r
        )
        self.running_containers = Gauge(
            "kubelite_kubelet_running_containers",
            "Containers by state on this node.",
            ["container_state"],
            registry=r,
        )
        self.runtime_latency = Histogram(
            "kubelite_kubelet_runtime_operations_duration_seconds",
            "Container runtime calls by operation.",
            ["operation_type"],
            buckets=_RUNTIME_BUCKETS,
            registry=r,
        )
        self.runtime_errors = Counter(
            "kubelite_kubelet_runtime_operations_errors_total",
            "Container runtime calls that failed, by operation.",
            ["operation_type"],
            registry=r,
        )
        self.image_pulls = Counter(
            "kubelite_kubelet_image_pulls_total",
            "Image pulls the kubelet asked for, by result (success, failure, backoff).",
            ["result"],
            registry=r,
        )
        self.probes = Counter(
            "kubelite_kubelet_prober_probe_total",
            "Probe runs by probe type and result.",
            ["probe_type", "result"],
            registry=r,
        )
        self.pod_workers = Gauge(
            "kubelite_kubelet_pod_workers", "Pod workers alive on this kubelet.", registry=r
        )
        self.relist_duration = Histogram(
            "kubelite_kubelet_pleg_relist_duration_seconds",
            "Duration of one relist of the runtime's sandboxes and containers.",
            buckets=_RUNTIME_BUCKETS,
            registry=r,
        )
