"""The command lines of a multi-machine install, rendered in one place.

A server runs an etcd member, the API server, the controller manager, the
scheduler, cluster DNS, optionally the image registry, and a one-shot
bootstrap that publishes the kube-dns Service; an agent runs the kubelet and
the proxy. install.py writes these argv lists into systemd units and
tests/test_ha.py starts the very same lists as processes, so the two cannot
drift.

Invariants: every server derives the etcd initial cluster from the same
ordered --servers list, so the three members agree on it without talking
first; each member is named after its address. Each server component lists
its own server first among the endpoints it fails over between (its local
etcd member, its local API server), the others after it in the list's order;
agents list the servers rotated by a hash of their node name, so their first
choices spread over the servers. Ports are fixed, as on separate machines; a
one-host test keeps them apart with one network namespace per machine.

Every connection is TLS with a certificate naming its end (deploy/pki.py
issues them into <state>/pki at install): the API server requires client
certificates on APISERVER_PORT and takes bearer tokens on APISERVER_TOKEN_PORT;
etcd listens on the machine's address, so it requires client and peer
certificates from the etcd CA, which only the servers hold. A server's
components find their certificates in <state>/kubeconfig/<component>.conf.
An agent's kubelet joins with the bootstrap config the install wrote (the
join token and the cluster CA) and keeps the certificate it is issued; the
agent's proxy reads Services and Endpoints with that node identity, since an
agent holds no CA key to issue a proxy certificate with.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import zlib

from deploy.layout import CLUSTER_CIDR, CLUSTER_DOMAIN, DNS_SERVICE_IP, SERVICE_CIDR

ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
APISERVER_PORT = 6443
APISERVER_TOKEN_PORT = 6444
REGISTRY_PORT = 5000
DNS_PORT = 53
APISERVER_METRICS_PORT = 9443
CONTROLLER_MANAGER_METRICS_PORT = 10257
SCHEDULER_METRICS_PORT = 10259
DNS_METRICS_PORT = 9153
KUBELET_METRICS_PORT = 10255
PROXY_METRICS_PORT = 10249


@dataclasses.dataclass(frozen=True)
class LeaderElection:
    """The lease timings of the scheduler and controller manager (seconds)."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def flags(self) -> list[str]:
        return [
            "--leader-elect=true",
            f"--leader-elect-lease-duration={self.lease_duration:g}",
            f"--leader-elect-renew-deadline={self.renew_deadline:g}",
            f"--leader-elect-retry-period={self.retry_period:g}",
        ]


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    node_ip: str
    servers: tuple[str, ...]  # every server's address, this one's included, same order everywhere
    state_dir: pathlib.Path
    python: str
    cluster_name: str = "kubelite"
    leader_election: LeaderElection = LeaderElection()
    registry: bool = False

    @property
    def pki_dir(self) -> pathlib.Path:
        return self.state_dir / "pki"

    def kubeconfig(self, component: str) -> pathlib.Path:
        return self.state_dir / "kubeconfig" / f"{component}.conf"


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    node_ip: str
    node_name: str
    servers: tuple[str, ...]
    state_dir: pathlib.Path
    python: str
    registry: str  # host:port of the registry short image names resolve to
    # The registry serves HTTPS with the cluster CA and wants its user (registry_auth_file).
    registry_auth: bool = False

    @property
    def registry_auth_file(self) -> pathlib.Path:
        return self.state_dir / "registry-auth.json"

    @property
    def node_dir(self) -> pathlib.Path:
        return self.state_dir / "node"

    @property
    def bootstrap_kubeconfig(self) -> pathlib.Path:
        return self.state_dir / "bootstrap-kubelet.conf"

    @property
    def kubeconfig(self) -> pathlib.Path:
        """Written by the kubelet once it holds its node certificate."""
        return self.node_dir / "kubelet.conf"

    @property
    def ca_file(self) -> pathlib.Path:
        return self.state_dir / "pki" / "ca.crt"


@dataclasses.dataclass(frozen=True)
class Command:
    """One component: its systemd unit (deploy/systemd/<unit>.service) and its argv."""

    unit: str
    argv: tuple[str, ...]


def local_first(addresses: tuple[str, ...], own: str) -> tuple[str, ...]:
    return (own, *(a for a in addresses if a != own))


def spread(addresses: tuple[str, ...], key: str) -> tuple[str, ...]:
    """The addresses rotated by a stable hash of key, so agents start on different servers."""
    start = zlib.crc32(key.encode()) % len(addresses)
    return addresses[start:] + addresses[:start]


def member_name(address: str) -> str:
    return "server-" + address.replace(".", "-").replace(":", "-")


def initial_cluster(servers: tuple[str, ...]) -> str:
    return ",".join(f"{member_name(s)}=https://{s}:{ETCD_PEER_PORT}" for s in servers)


def api_servers(servers: tuple[str, ...]) -> str:
    return ",".join(f"{s}:{APISERVER_PORT}" for s in servers)


def token_servers(servers: tuple[str, ...]) -> str:
    return ",".join(f"{s}:{APISERVER_TOKEN_PORT}" for s in servers)


def etcd_tls_flags(cfg: ServerConfig) -> tuple[str, ...]:
    """etcd's TLS: clients and peers both show a certificate from the etcd CA."""
    pki, member = cfg.pki_dir, member_name(cfg.node_ip)
    cert, key, ca = pki / f"etcd-{member}.crt", pki / f"etcd-{member}.key", pki / "etcd-ca.crt"
    return (
        f"--cert-file={cert}",
        f"--key-file={key}",
        f"--trusted-ca-file={ca}",
        "--client-cert-auth",
        f"--peer-cert-file={cert}",
        f"--peer-key-file={key}",
        f"--peer-trusted-ca-file={ca}",
        "--peer-client-cert-auth",
    )


def apiserver_tls_flags(cfg: ServerConfig) -> tuple[str, ...]:
    pki = cfg.pki_dir
    return (
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        f"--etcd-cafile={pki / 'etcd-ca.crt'}",
        f"--etcd-certfile={pki / 'apiserver-etcd-client.crt'}",
        f"--etcd-keyfile={pki / 'apiserver-etcd-client.key'}",
    )


def server_commands(cfg: ServerConfig) -> list[Command]:
    """A server's components, in start order."""
    ip = cfg.node_ip
    mine = local_first(cfg.servers, ip)
    python = cfg.python
    commands = [
        Command(
            "kubelite-etcd",
            (
                shutil.which("etcd") or "/usr/bin/etcd",
                f"--name={member_name(ip)}",
                f"--data-dir={cfg.state_dir / 'etcd'}",
                f"--listen-client-urls=https://{ip}:{ETCD_CLIENT_PORT},"
                f"https://127.0.0.1:{ETCD_CLIENT_PORT}",
                f"--advertise-client-urls=https://{ip}:{ETCD_CLIENT_PORT}",
                f"--listen-peer-urls=https://{ip}:{ETCD_PEER_PORT}",
                f"--initial-advertise-peer-urls=https://{ip}:{ETCD_PEER_PORT}",
                *etcd_tls_flags(cfg),
                f"--initial-cluster={initial_cluster(cfg.servers)}",
                "--initial-cluster-state=new",
                f"--initial-cluster-token={cfg.cluster_name}",
                # The API servers compact; etcd keeps history until they do.
                "--auto-compaction-retention=0",
                "--logger=zap",
                "--log-level=warn",
            ),
        ),
        Command(
            "kubelite-apiserver",
            (
                python,
                "-m",
                "apiserver.main",
                "--etcd-servers=" + ",".join(f"{s}:{ETCD_CLIENT_PORT}" for s in mine),
                f"--listen={ip}:{APISERVER_PORT},127.0.0.1:{APISERVER_PORT}",
                f"--token-listen={ip}:{APISERVER_TOKEN_PORT},127.0.0.1:{APISERVER_TOKEN_PORT}",
                *apiserver_tls_flags(cfg),
                "--etcd-prefix=/registry",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--metrics-port={APISERVER_METRICS_PORT}",
            ),
        ),
        Command(
            "kubelite-controller-manager",
            (
                python,
                "-m",
                "controllers.manager",
                f"--kubeconfig={cfg.kubeconfig('controller-manager')}",
                f"--cluster-signing-cert-file={cfg.pki_dir / 'ca.crt'}",
                f"--cluster-signing-key-file={cfg.pki_dir / 'ca.key'}",
                f"--cluster-cidr={CLUSTER_CIDR}",
                *cfg.leader_election.flags(),
                f"--metrics-port={CONTROLLER_MANAGER_METRICS_PORT}",
            ),
        ),
        Command(
            "kubelite-scheduler",
            (
                python,
                "-m",
                "scheduler.main",
                f"--kubeconfig={cfg.kubeconfig('scheduler')}",
                *cfg.leader_election.flags(),
                f"--metrics-port={SCHEDULER_METRICS_PORT}",
            ),
        ),
        Command(
            "kubelite-dns",
            (
                python,
                "-m",
                "dns.main",
                f"--kubeconfig={cfg.kubeconfig('dns')}",
                f"--listen={ip}:{DNS_PORT}",
                f"--cluster-domain={CLUSTER_DOMAIN}",
                f"--metrics-port={DNS_METRICS_PORT}",
            ),
        ),
    ]
    if cfg.registry:
        commands.append(
            Command(
                "kubelite-registry",
                ("/usr/bin/docker-registry", "serve", str(registry_config(cfg.state_dir))),
            )
        )
    commands.append(Command("kubelite-bootstrap", bootstrap_argv(cfg)))
    return commands


def registry_config(state_dir: pathlib.Path) -> pathlib.Path:
    return state_dir / "registry" / "config.json"


def registry_auth_dir(state_dir: pathlib.Path) -> pathlib.Path:
    return state_dir / "registry" / "auth"


def bootstrap_argv(cfg: ServerConfig) -> tuple[str, ...]:
    """The one-shot that publishes kube-dns and the join token (and seeds the registry) once
    the API answers."""
    argv = [
        cfg.python,
        "-m",
        "deploy.roles.bootstrap",
        f"--kubeconfig={cfg.kubeconfig('admin')}",
        f"--dns-servers={','.join(cfg.servers)}",
        f"--join-token-file={cfg.state_dir / 'join-token'}",
    ]
    if cfg.registry:
        argv += [
            f"--registry={cfg.node_ip}:{REGISTRY_PORT}",
            f"--registry-auth-file={registry_auth_dir(cfg.state_dir) / 'auth.json'}",
            f"--registry-ca-file={cfg.pki_dir / 'ca.crt'}",
        ]
    return tuple(argv)


def agent_commands(cfg: AgentConfig) -> list[Command]:
    return [
        Command(
            "kubelite-kubelet",
            (
                cfg.python,
                "-m",
                "kubelet.main",
                f"--bootstrap-kubeconfig={cfg.bootstrap_kubeconfig}",
                f"--kubeconfig={cfg.kubeconfig}",
                f"--cert-dir={cfg.node_dir / 'pki'}",
                f"--node-name={cfg.node_name}",
                f"--node-ip={cfg.node_ip}",
                f"--address={cfg.node_ip}",
                f"--state-dir={cfg.node_dir}",
                f"--cgroup-root=kubelite-{cfg.node_name}",
                f"--registry={cfg.registry}",
                *(
                    (
                        f"--registry-ca-file={cfg.ca_file}",
                        f"--registry-auth-file={cfg.registry_auth_file}",
                    )
                    if cfg.registry_auth
                    else (f"--insecure-registry={cfg.registry}",)
                ),
                f"--cluster-dns={DNS_SERVICE_IP}",
                f"--cluster-domain={CLUSTER_DOMAIN}",
                "--network=bridge",
                f"--cluster-cidr={CLUSTER_CIDR}",
                f"--metrics-port={KUBELET_METRICS_PORT}",
            ),
        ),
        Command(
            "kubelite-proxy",
            (
                cfg.python,
                "-m",
                "proxy.main",
                # The node's own identity, from the config its kubelet writes once it has
                # joined: until then the proxy exits and its unit starts it again.
                f"--kubeconfig={cfg.kubeconfig}",
                f"--node-name={cfg.node_name}",
                f"--node-ip={cfg.node_ip}",
                f"--cluster-cidr={CLUSTER_CIDR}",
                f"--metrics-port={PROXY_METRICS_PORT}",
            ),
        ),
    ]
