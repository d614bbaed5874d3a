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


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    node_ip: str
    node_name: str
    servers: tuple[str, ...]
    state_dir: pathlib.Path
    python: str
    registry: str  # host:port of the registry short image names resolve to


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
    return ",".join(f"{member_name(s)}=http://{s}:{ETCD_PEER_PORT}" for s in servers)


def api_servers(servers: tuple[str, ...]) -> str:
    return ",".join(f"{s}:{APISERVER_PORT}" for s in servers)


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
                f"--listen-client-urls=http://{ip}:{ETCD_CLIENT_PORT},"
                f"http://127.0.0.1:{ETCD_CLIENT_PORT}",
                f"--advertise-client-urls=http://{ip}:{ETCD_CLIENT_PORT}",
                f"--listen-peer-urls=http://{ip}:{ETCD_PEER_PORT}",
                f"--initial-advertise-peer-urls=http://{ip}:{ETCD_PEER_PORT}",
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
                f"--server={api_servers(mine)}",
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
                f"--server={api_servers(mine)}",
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
                f"--server={api_servers(mine)}",
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


def bootstrap_argv(cfg: ServerConfig) -> tuple[str, ...]:
    """The one-shot that publishes kube-dns (and seeds the registry) once the API answers."""
    argv = [
        cfg.python,
        "-m",
        "deploy.roles.bootstrap",
        f"--server={api_servers(local_first(cfg.servers, cfg.node_ip))}",
        f"--dns-servers={','.join(cfg.servers)}",
    ]
    if cfg.registry:
        argv.append(f"--registry={cfg.node_ip}:{REGISTRY_PORT}")
    return tuple(argv)


def agent_commands(cfg: AgentConfig) -> list[Command]:
    servers = api_servers(spread(cfg.servers, cfg.node_name))
    return [
        Command(
            "kubelite-kubelet",
            (
                cfg.python,
                "-m",
                "kubelet.main",
                f"--server={servers}",
                f"--node-name={cfg.node_name}",
                f"--node-ip={cfg.node_ip}",
                f"--address={cfg.node_ip}",
                f"--state-dir={cfg.state_dir / 'node'}",
                f"--cgroup-root=kubelite-{cfg.node_name}",
                f"--registry={cfg.registry}",
                f"--insecure-registry={cfg.registry}",
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
                f"--server={servers}",
                f"--node-name={cfg.node_name}",
                f"--node-ip={cfg.node_ip}",
                f"--cluster-cidr={CLUSTER_CIDR}",
                f"--metrics-port={PROXY_METRICS_PORT}",
            ),
        ),
    ]
