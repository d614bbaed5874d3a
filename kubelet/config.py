"""The kubelet's configuration: one frozen value built from the command line (main.py).

Every knob that a test needs to turn (back-off, intervals, ports) is here, so a test builds
a KubeletConfig with short periods instead of patching code. Parsers for the list-valued
flags (--node-labels, --register-with-taints, --system-reserved) raise ConfigError naming
the flag and the bad item; nothing is guessed: --node-ip is required and must be an IP.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from pathlib import Path

from machinery import quantity

TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
RESERVABLE = ("cpu", "memory", "ephemeral-storage", "pid")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


class ConfigError(ValueError):
    """A flag value that cannot be used; the message names the flag and the value."""


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Restart and image pull back-off: initial doubling to maximum, forgotten after a run
    of reset_after seconds (Kubernetes: 10 s, 300 s, 10 minutes)."""

    initial_s: float = 10.0
    maximum_s: float = 300.0
    reset_after_s: float = 600.0


@dataclasses.dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str

    def to_api(self) -> dict[str, str]:
        out = {"key": self.key, "effect": self.effect}
        if self.value:
            out["value"] = self.value
        return out


@dataclasses.dataclass(frozen=True)
class KubeletConfig:
    node_name: str
    node_ip: str
    servers: tuple[str, ...]
    state_dir: Path  # runtime state and the image store
    root_dir: Path  # Pod directories (volumes) and container logs
    cgroup_root: str  # a name prefix unique per kubelet on the host
    port: int = 10250  # the Kubelet gRPC service; 0 picks a free port (tests)
    bind_address: str = "0.0.0.0"
    metrics_port: int = 0  # 0: no metrics endpoint
    registry: str = "127.0.0.1:5000"  # where short image names resolve
    insecure_registries: tuple[str, ...] = ()
    # Credentials per registry (Docker config JSON) and the CA their HTTPS is checked with.
    registry_auth_file: Path | None = None
    registry_ca_file: Path | None = None
    cluster_dns: tuple[str, ...] = ()
    cluster_domain: str = "cluster.local"
    resolv_conf: Path = Path("/etc/resolv.conf")
    max_pods: int = 110
    system_reserved: dict[str, str] = dataclasses.field(default_factory=dict)
    eviction_memory_available: str = "100Mi"
    eviction_nodefs_available_percent: int = 10
    register_with_taints: tuple[Taint, ...] = ()
    node_labels: dict[str, str] = dataclasses.field(default_factory=dict)
    image_gc_high_percent: int = 85
    image_gc_low_percent: int = 80
    restart_backoff: Backoff = Backoff()
    image_backoff: Backoff = Backoff()
    status_update_interval_s: float = 10.0
    status_report_interval_s: float = 60.0  # write an unchanged Node status this often
    lease_duration_s: int = 40
    lease_renew_interval_s: float = 10.0
    relist_interval_s: float = 1.0
    usage_interval_s: float = 15.0
    housekeeping_interval_s: float = 30.0
    log_retention_s: float = 3600.0  # logs of deleted Pods are kept this long
    runtime: str = "native"  # or "runc"
    runtime_threads: int = 16
    status_writers: int = 4
    # Identity (kubelet/certificates.py). Without a kubeconfig the kubelet speaks plaintext
    # to the API server and serves its endpoint without TLS: only for a server without TLS.
    kubeconfig: Path | None = None  # read, or written by the bootstrap
    bootstrap_kubeconfig: Path | None = None  # a bootstrap token user, for the first certificate
    cert_dir: Path | None = None  # default: root_dir/pki
    rotate_certificates: bool = True
    tls_cert_file: Path | None = None  # a serving pair issued beforehand; default: by request
    tls_private_key_file: Path | None = None
    client_ca_file: Path | None = None  # who may call the endpoint; default: the kubeconfig's CA
    certificate_backoff: Backoff = Backoff(initial_s=1.0, maximum_s=60.0)
    certificate_wait_s: float = 300.0  # one wait for a request to be signed, then ask again

    def __post_init__(self) -> None:
        check_node_ip(self.node_ip)
        if not self.node_name:
            raise ConfigError("--node-name: must not be empty")
        if not self.servers and self.kubeconfig is None:
            raise ConfigError(
                "--server or --kubeconfig: at least one API server address is required"
            )
        if self.bootstrap_kubeconfig is not None and self.kubeconfig is None:
            raise ConfigError("--bootstrap-kubeconfig needs --kubeconfig, the file it writes")
        if (self.tls_cert_file is None) != (self.tls_private_key_file is None):
            raise ConfigError("--tls-cert-file and --tls-private-key-file go together")
        if self.tls_cert_file is not None and self.kubeconfig is None:
            raise ConfigError("--tls-cert-file needs --kubeconfig: TLS is for a cluster with TLS")
        if self.max_pods < 1:
            raise ConfigError(f"--pods: must be at least 1, got {self.max_pods}")
        if not 0 <= self.image_gc_low_percent <= self.image_gc_high_percent <= 100:
            raise ConfigError(
                "--image-gc-low/--image-gc-high: need 0 <= low <= high <= 100, got "
                f"low={self.image_gc_low_percent} high={self.image_gc_high_percent}"
            )
        if not self.cgroup_root or self.cgroup_root.startswith("/") or "/" in self.cgroup_root:
            raise ConfigError(
                f"--cgroup-root: must be a single relative name such as kubelite-node1, "
                f"got {self.cgroup_root!r}"
            )
        for server in self.cluster_dns:
            try:
                ipaddress.ip_address(server)
            except ValueError:
                raise ConfigError(f"--cluster-dns: {server!r} is not an IP address") from None

    @property
    def secure(self) -> bool:
        """Whether the kubelet uses certificates: towards the API server and on its endpoint."""
        return self.kubeconfig is not None

    @property
    def pki_dir(self) -> Path:
        return self.cert_dir or self.root_dir / "pki"

    @property
    def log_dir(self) -> Path:
        return self.root_dir / "logs"

    @property
    def pods_dir(self) -> Path:
        return self.root_dir / "pods"


def check_node_ip(text: str) -> None:
    if not text:
        raise ConfigError(
            "--node-ip is required: the address other nodes and the API server reach this "
            "node at (it is never guessed from the first interface)"
        )
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"--node-ip: {text!r} is not an IP address") from None


def parse_labels(text: str, *, flag: str = "--node-labels") -> dict[str, str]:
    """`a=b,kubernetes.io/role=x` as a dict; each key and value checked as a label."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{flag}: {item!r} is not key=value")
        if not _LABEL_KEY.match(key) or len(key.rpartition("/")[2]) > 63:
            raise ConfigError(f"{flag}: {key!r} is not a valid label key")
        if not _LABEL_VALUE.match(value) or len(value) > 63:
            raise ConfigError(f"{flag}: {value!r} (for {key}) is not a valid label value")
        labels[key] = value
    return labels


def parse_taints(text: str) -> tuple[Taint, ...]:
    """`key=value:Effect,key:Effect` as Taints."""
    taints = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        head, sep, effect = item.rpartition(":")
        if not sep or effect not in TAINT_EFFECTS:
            raise ConfigError(
                f"--register-with-taints: {item!r} must be key[=value]:Effect with Effect one "
                f"of {', '.join(TAINT_EFFECTS)}"
            )
        key, _, value = head.partition("=")
        if not key or not _LABEL_KEY.match(key):
            raise ConfigError(f"--register-with-taints: {key!r} is not a valid taint key")
        taints.append(Taint(key, value, effect))
    return tuple(taints)


def parse_reserved(text: str, *, flag: str = "--system-reserved") -> dict[str, str]:
    """`cpu=100m,memory=256Mi` as a dict of checked quantities."""
    reserved: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, amount = item.partition("=")
        if not sep or name not in RESERVABLE:
            raise ConfigError(
                f"{flag}: {item!r} must be NAME=QUANTITY with NAME one of {', '.join(RESERVABLE)}"
            )
        if not quantity.is_quantity(amount) or quantity.parse_quantity(amount) < 0:
            raise ConfigError(f"{flag}: {amount!r} (for {name}) is not a non-negative quantity")
        reserved[name] = amount
    return reserved
