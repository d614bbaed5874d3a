"""`python -m kubelet.main`: the node agent, as root on every node.

    python -m kubelet.main --node-name node-1 --node-ip 10.0.0.11 \\
        --bootstrap-kubeconfig /etc/kubelite/bootstrap.kubeconfig \\
        --kubeconfig /var/lib/kubelite/node-1/kubeconfig \\
        --state-dir /var/lib/kubelite/node-1 --cgroup-root kubelite-node-1 \\
        --registry 10.0.0.1:5000 --cluster-dns 10.96.0.10

Identity: the first start finds no usable --kubeconfig, presents the bootstrap token of
--bootstrap-kubeconfig once to ask for a node certificate, and writes --kubeconfig (its key
and certificate under --cert-dir); later starts use --kubeconfig, and the certificates are
renewed before they expire. A --kubeconfig issued beforehand works without a bootstrap
kubeconfig. Without either the kubelet speaks plaintext, which only a server started
without TLS accepts.

SIGTERM or SIGINT stops the kubelet and leaves its containers running; the next kubelet
started with the same --state-dir and --cgroup-root adopts them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from prometheus_client import start_http_server

from kubelet.agent import Kubelet
from kubelet.certificates import CertificateError, configured_servers
from kubelet.config import (
    Backoff,
    ConfigError,
    KubeletConfig,
    parse_labels,
    parse_reserved,
    parse_taints,
)
from machinery import log as kubelog
from machinery.registry import RegistryError, read_auth_file

log = kubelog.get_logger("kubelet")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kubelet.main",
        description="The kubelite node agent: registers this node and runs the Pods bound "
        "to it in containers of its own runtime.",
    )
    p.add_argument(
        "--server",
        default="",
        help="API server addresses HOST:PORT, comma-separated for several (default: the "
        "kubeconfig's, or the bootstrap kubeconfig cluster's `servers`)",
    )
    p.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        help="client config with the node's certificate; written by the bootstrap "
        "(default with --bootstrap-kubeconfig: ROOT_DIR/kubeconfig)",
    )
    p.add_argument(
        "--bootstrap-kubeconfig",
        type=Path,
        default=None,
        help="client config with a bootstrap token, used to ask for the node's certificate "
        "when --kubeconfig has no usable one",
    )
    p.add_argument(
        "--cert-dir",
        type=Path,
        default=None,
        help="where the node's keys and certificates are kept (default: ROOT_DIR/pki)",
    )
    p.add_argument(
        "--rotate-certificates",
        type=_boolean,
        nargs="?",
        const=True,
        default=True,
        metavar="true|false",
        help="renew the client and serving certificates before they expire (default: %(default)s)",
    )
    p.add_argument(
        "--tls-cert-file",
        type=Path,
        default=None,
        help="serving certificate of the logs/exec endpoint, issued beforehand (default: "
        "requested from the cluster's kubelet-serving signer)",
    )
    p.add_argument("--tls-private-key-file", type=Path, default=None, help="its key")
    p.add_argument(
        "--client-ca-file",
        type=Path,
        default=None,
        help="CA whose client certificates may call the endpoint (default: the kubeconfig's)",
    )
    p.add_argument("--node-name", required=True, help="name of this node's Node object")
    p.add_argument(
        "--node-ip",
        required=True,
        help="this node's address as the cluster reaches it (never guessed)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=10250,
        help="port of the Kubelet service for logs and exec (default: %(default)s)",
    )
    p.add_argument(
        "--address",
        default="0.0.0.0",
        help="address the Kubelet service listens on (default: %(default)s)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path("/var/lib/kubelite/node"),
        help="runtime state and image store (default: %(default)s)",
    )
    p.add_argument(
        "--root-dir",
        type=Path,
        default=None,
        help="Pod volumes and container logs (default: STATE_DIR/kubelet)",
    )
    p.add_argument(
        "--cgroup-root",
        default="",
        help="cgroup name prefix unique on this host (default: kubelite-NODE_NAME)",
    )
    p.add_argument(
        "--registry",
        default="127.0.0.1:5000",
        help="registry that short image names resolve to (default: %(default)s)",
    )
    p.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        help="registry spoken to over plain HTTP (repeatable; loopback always is)",
    )
    p.add_argument(
        "--registry-auth-file",
        type=Path,
        default=None,
        help='registry credentials, Docker config format ({"auths": {"HOST:PORT": ...}})',
    )
    p.add_argument(
        "--registry-ca-file",
        type=Path,
        default=None,
        help="CA that the HTTPS registries of --registry and --registry-auth-file are "
        "checked against (default: the system's)",
    )
    p.add_argument(
        "--cluster-dns", default="", help="comma-separated DNS server IPs for ClusterFirst Pods"
    )
    p.add_argument(
        "--cluster-domain",
        default="cluster.local",
        help="the cluster's DNS domain (default: %(default)s)",
    )
    p.add_argument(
        "--resolv-conf",
        type=Path,
        default=Path("/etc/resolv.conf"),
        help="the node's resolver config, for dnsPolicy Default",
    )
    p.add_argument(
        "--pods", type=int, default=110, help="most Pods this node runs (default: %(default)s)"
    )
    p.add_argument(
        "--system-reserved", default="", help="resources kept from Pods, e.g. cpu=100m,memory=256Mi"
    )
    p.add_argument(
        "--register-with-taints",
        default="",
        help="taints the Node is created with, e.g. role=edge:NoSchedule",
    )
    p.add_argument(
        "--node-labels", default="", help="extra labels for the Node, e.g. zone=a,tier=edge"
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="port serving Prometheus metrics (default: none)",
    )
    p.add_argument(
        "--image-gc-high",
        type=int,
        default=85,
        help="disk use %% above which unused images are removed (default: %(default)s)",
    )
    p.add_argument(
        "--image-gc-low",
        type=int,
        default=80,
        help="disk use %% image GC brings usage down to (default: %(default)s)",
    )
    p.add_argument(
        "--network",
        choices=("loopback", "bridge"),
        default="loopback",
        help="Pod network: loopback only, or a bridge with a veth and an IP per Pod and routes "
        "to other nodes' Pod ranges (default: %(default)s)",
    )
    p.add_argument(
        "--cluster-cidr",
        default="10.244.0.0/16",
        help="the cluster's Pod network, for --network bridge (default: %(default)s)",
    )
    p.add_argument(
        "--network-prefix",
        default="kubelite",
        help="name prefix of the Pod bridge and veths, 1-8 letters (default: %(default)s)",
    )
    p.add_argument(
        "--runtime",
        choices=("native", "runc"),
        default="native",
        help="container runtime: this project's own, or runc (default: %(default)s)",
    )
    p.add_argument(
        "--backoff-initial",
        type=float,
        default=10.0,
        help="first restart/pull back-off in seconds (default: %(default)s)",
    )
    p.add_argument(
        "--backoff-max",
        type=float,
        default=300.0,
        help="longest restart/pull back-off in seconds (default: %(default)s)",
    )
    p.add_argument(
        "--log-retention",
        type=float,
        default=3600.0,
        help="seconds logs of deleted Pods are kept (default: %(default)s)",
    )
    p.add_argument(
        "--log-level",
        default=os.environ.get("KUBELITE_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING or ERROR (default: %(default)s)",
    )
    return p


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def config_from(args: argparse.Namespace) -> KubeletConfig:
    backoff = Backoff(initial_s=args.backoff_initial, maximum_s=args.backoff_max)
    if backoff.initial_s <= 0 or backoff.maximum_s < backoff.initial_s:
        raise ConfigError("--backoff-initial must be positive and at most --backoff-max")
    root_dir = args.root_dir or args.state_dir / "kubelet"
    kubeconfig = args.kubeconfig
    if kubeconfig is None and args.bootstrap_kubeconfig is not None:
        kubeconfig = root_dir / "kubeconfig"
    config = KubeletConfig(
        node_name=args.node_name,
        node_ip=args.node_ip,
        servers=tuple(s.strip() for s in args.server.split(",") if s.strip()),
        kubeconfig=kubeconfig,
        bootstrap_kubeconfig=args.bootstrap_kubeconfig,
        cert_dir=args.cert_dir,
        rotate_certificates=args.rotate_certificates,
        tls_cert_file=args.tls_cert_file,
        tls_private_key_file=args.tls_private_key_file,
        client_ca_file=args.client_ca_file,
        state_dir=args.state_dir,
        root_dir=root_dir,
        cgroup_root=args.cgroup_root or f"kubelite-{args.node_name}",
        port=args.port,
        bind_address=args.address,
        metrics_port=args.metrics_port,
        registry=args.registry,
        insecure_registries=tuple(args.insecure_registry),
        registry_auth_file=args.registry_auth_file,
        registry_ca_file=args.registry_ca_file,
        cluster_dns=tuple(s.strip() for s in args.cluster_dns.split(",") if s.strip()),
        cluster_domain=args.cluster_domain,
        resolv_conf=args.resolv_conf,
        max_pods=args.pods,
        system_reserved=parse_reserved(args.system_reserved),
        register_with_taints=parse_taints(args.register_with_taints),
        node_labels=parse_labels(args.node_labels),
        image_gc_high_percent=args.image_gc_high,
        image_gc_low_percent=args.image_gc_low,
        restart_backoff=backoff,
        image_backoff=backoff,
        log_retention_s=args.log_retention,
        runtime=args.runtime,
    )
    try:
        configured_servers(config)  # a kubeconfig that names no server is refused now
    except CertificateError as err:
        raise ConfigError(str(err)) from None
    if config.registry_auth_file is not None:
        try:
            read_auth_file(str(config.registry_auth_file))
        except RegistryError as err:
            raise ConfigError(f"--registry-auth-file: {err}") from None
    return config


def bridge_network(args: argparse.Namespace, config: KubeletConfig, node_pod_cidrs) -> object:
    """The bridge Pod network (kubelet/podnet) for --network bridge."""
    from kubelet.podnet import BridgeNetwork, PodNetConfig

    return BridgeNetwork(
        PodNetConfig(
            cluster_cidr=args.cluster_cidr,
            node_ip=config.node_ip,
            state_dir=config.state_dir / "podnet",
            prefix=args.network_prefix,
        ),
        pod_cidrs=node_pod_cidrs,
    )


async def serve(config: KubeletConfig, args: argparse.Namespace | None = None) -> None:
    holder: dict[str, Kubelet] = {}
    network = None
    if args is not None and args.network == "bridge":
        network = bridge_network(args, config, lambda: holder["kubelet"].node.pod_cidrs)
    kubelet = Kubelet(config, network=network)  # type: ignore[arg-type]
    holder["kubelet"] = kubelet
    if config.metrics_port:
        start_http_server(config.metrics_port, registry=kubelet.metrics.registry)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    # Starting may wait long (a node certificate nobody has approved yet): a stop
    # request must not have to wait for it.
    starting = asyncio.create_task(kubelet.start(), name="kubelet-start")
    stop_requested = asyncio.create_task(stopping.wait(), name="kubelet-stop")
    await asyncio.wait({starting, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        log.info("stopping kubelet before it finished starting")
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await kubelet.stop()
        return
    stop_requested.cancel()
    starting.result()  # a start that failed ends the kubelet with its error
    routes: asyncio.Task[None] | None = None
    if network is not None:
        # Routes to every other node's Pod range, kept in step with the Node objects;
        # started once the kubelet holds its node identity, which the informer uses.
        from kubelet.podnet import RouteController, RouteSyncer
        from machinery.informer import Informer

        nodes = Informer(kubelet.client, "nodes")
        routes_controller = RouteController(nodes, RouteSyncer(node_name=config.node_name))
        nodes.start()
        routes = asyncio.create_task(routes_controller.run(), name="pod-routes")
    await stopping.wait()
    log.info("stopping kubelet; containers keep running")
    if routes is not None:
        routes.cancel()
    await kubelet.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kubelog.setup(args.log_level)
    if os.geteuid() != 0:
        print("kubelet: must run as root (namespaces, cgroups, mounts)", file=sys.stderr)
        return 1
    try:
        config = config_from(args)
    except ConfigError as err:
        print(f"kubelet: {err}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config, args))
    except CertificateError as err:
        print(f"kubelet: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
