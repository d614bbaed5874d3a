"""Bring a one-host cluster up, report it, take it down.

Everything a cluster owns on the host is named after it: its state
directory /var/lib/kubelite/<name> (override with KUBELITE_STATE_ROOT), its
etcd key prefix /registry/<name>, its bridge and node namespaces, its cgroup
roots, and its ports, chosen free at the first bring-up and kept in
<state>/cluster.json so a second run finds the same cluster. `up` on a
running cluster reports it (its supervisor already restarts what died) and
repairs the host plumbing; on a stopped one it starts the supervisor again.

Security: the first bring-up creates the cluster's CA and certificates in
<state>/pki (deploy/pki.py; later runs reuse them), a client config per
component, and a join token whose bootstrap config each node's kubelet
presents once to be issued its node certificate. The token's Secret is
created through the API once the API server answers. A token whose Secret is
gone (revoked with `kctl delete secret -n kube-system bootstrap-token-<id>`)
is never brought back: the next run makes a new one for nodes still to join.
Every call the bring-up makes to the API server is made as the admin
(kubernetes-admin, system:masters), whose context becomes kctl's current one.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

from deploy import hostnet, layout, pki
from deploy.etcd import free_port
from machinery import config, errors
from machinery import pki as machinery_pki
from machinery.client import ApiClient
from machinery.credentials import Credentials

ROOT = pathlib.Path(__file__).resolve().parent.parent
PORTS = (
    "etcd",
    "etcd_peer",
    "apiserver",
    "apiserver_token",
    "apiserver_metrics",
    "scheduler_metrics",
    "controller_manager_metrics",
    "registry",
    "dns_metrics",
)
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,10}$")


def check_name(name: str) -> str:
    """Cluster names become prefixes of interface and namespace names (15 bytes at most)."""
    if not NAME_RE.match(name):
        raise SystemExit(
            f"error: invalid cluster name {name!r}: use 1-11 lowercase letters, digits or '-', "
            "starting with a letter"
        )
    return name


def state_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("KUBELITE_STATE_ROOT", "/var/lib/kubelite"))


def state_dir(name: str) -> pathlib.Path:
    return state_root() / name


def _say(text: str) -> None:
    print(text, flush=True)


def load_or_create_layout(name: str, nodes: int, extra: dict | None = None) -> tuple[dict, bool]:
    """The cluster's layout, and whether this call changed it."""
    state = state_dir(name)
    path = state / "cluster.json"
    if path.exists():
        current = json.loads(path.read_text())
    else:
        state.mkdir(parents=True, exist_ok=True)
        current = {"name": name, "root": str(ROOT), "ports": {}}
    before = json.dumps(current, sort_keys=True)
    current["nodes"] = nodes
    current.update(extra or {})
    for port in PORTS:
        if port == "apiserver_token" and port not in current["ports"]:
            current["ports"][port] = _next_port(current["ports"]["apiserver"])
        current["ports"].setdefault(port, free_port())
    current.setdefault("node_subnet", str(hostnet.pick_subnet()))
    changed = json.dumps(current, sort_keys=True) != before
    if changed:
        path.write_text(json.dumps(current, indent=2))
    return current, changed


def _next_port(port: int) -> int:
    """The port after port if it is free (the token listener sits next to mTLS), else any."""
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port + 1))
        except OSError:
            return free_port()
    return port + 1


def supervisor_pid(name: str) -> int:
    """The PID of the cluster's running supervisor, or 0. The PID is checked to be ours."""
    path = state_dir(name) / "supervisor.pid"
    try:
        pid = int(path.read_text())
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return 0
    return pid if str(state_dir(name)).encode() in cmdline else 0


def start_supervisor(name: str) -> int:
    state = state_dir(name)
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "supervisor.log", "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "deploy.supervisor", "--state", str(state)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            start_new_session=True,
        )
    return process.pid


def stop_supervisor(name: str, timeout: float) -> bool:
    pid = supervisor_pid(name)
    if not pid:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while supervisor_pid(name) and time.monotonic() < deadline:
        time.sleep(0.1)
    if supervisor_pid(name):
        os.kill(pid, signal.SIGKILL)
    return True


def prepare_host(cluster: dict) -> None:
    """The bridge, the node namespaces, and the registry's config, before anything starts."""
    net = layout.cluster_net(cluster)
    hostnet.ensure_bridge(net)
    for index in range(1, cluster["nodes"] + 1):
        hostnet.ensure_node(net, index)
    for ns in hostnet.cluster_netns(cluster["name"]):
        index = int(ns.rsplit("-", 1)[1])
        if index > cluster["nodes"]:
            hostnet.delete_node(net, index)
    from apiserver.encryption import main as encryption_main
    from deploy.registry import ensure_registry_auth, write_registry_config

    # The key that seals Secrets in etcd; kept across bring-ups, since losing it loses them.
    key = state_dir(cluster["name"]) / "encryption-key"
    if not key.exists() and encryption_main(["new-key", "--keep-existing", str(key)]) != 0:
        raise SystemExit(f"error: failed to create the Secret encryption key {key}")

    ensure_pki(cluster)

    state = state_dir(cluster["name"])
    registry = state / "registry"
    (registry / "data").mkdir(parents=True, exist_ok=True)
    address = layout.registry_address(cluster)
    # HTTPS with one user: Pods reach the bridge too, and must not replace the images
    # every node pulls. Rewritten on every bring-up, so an older open config is closed.
    pki.ensure_registry(layout.pki_dir(state), addresses=[address.rpartition(":")[0]])
    registry_auth = ensure_registry_auth(layout.registry_auth_dir(state), address)
    write_registry_config(
        registry / "config.json",
        address=address,
        storage=registry / "data",
        tls_cert=layout.pki_dir(state) / f"{pki.REGISTRY}.crt",
        tls_key=layout.pki_dir(state) / f"{pki.REGISTRY}.key",
        htpasswd=registry_auth.htpasswd,
    )


def ensure_pki(cluster: dict) -> None:
    """The CA and every certificate and client config the components are started with."""
    state = state_dir(cluster["name"])
    directory, name = layout.pki_dir(state), cluster["name"]
    gateway = layout.cluster_net(cluster).gateway
    names = pki.apiserver_names(["127.0.0.1", gateway], service_cidr=layout.SERVICE_CIDR)
    try:
        steps = pki.ensure_control_plane(directory, cluster=name, server_names=names)
    except pki.PKIError as err:
        raise SystemExit(f"error: {err}") from None
    issued = pki.reissued(steps)
    if steps[0].reason == "missing":
        _say(f"created the cluster CA and {len(steps) - 1} certificates in {directory}")
    else:
        for line in issued:
            _say(f"issued certificate {line}")
    local = [layout.local_api_address(cluster)]
    for component in ("scheduler", "controller-manager", "dns"):
        pki.component_kubeconfig(directory, component, cluster=name, servers=local).write(
            layout.kubeconfig(state, component)
        )
    pki.component_kubeconfig(
        directory, "proxy", cluster=name, servers=[layout.api_address(cluster)]
    ).write(layout.kubeconfig(state, "proxy"))
    pki.component_kubeconfig(directory, pki.ADMIN, cluster=name, servers=local).write(
        layout.kubeconfig(state, pki.ADMIN)
    )
    write_bootstrap_kubeconfigs(cluster, join_token(cluster))


TOKEN_TTL = datetime.timedelta(hours=24)
# A token this close to expiring is replaced rather than handed to a node.
TOKEN_MIN_LEFT = datetime.timedelta(hours=1)


def _token_path(cluster: dict) -> pathlib.Path:
    return layout.pki_dir(state_dir(cluster["name"])) / "join-token.json"


def join_token(cluster: dict) -> pki.JoinToken:
    """The token nodes join with: the stored one while it has time left, else a new one."""
    path = _token_path(cluster)
    now = datetime.datetime.now(datetime.UTC)
    try:
        saved = json.loads(path.read_text())
        token = pki.parse_join_token(saved["token"])
        expires = datetime.datetime.fromisoformat(saved["expires"])
    except (OSError, ValueError, KeyError, TypeError):
        token = None
    if token is not None and expires - now > TOKEN_MIN_LEFT:
        return dataclasses.replace(token, expires=expires)
    return _save_token(cluster, pki.new_join_token(ttl=TOKEN_TTL), published=False)


def _save_token(cluster: dict, token: pki.JoinToken, *, published: bool) -> pki.JoinToken:
    assert token.expires is not None
    record = {"token": str(token), "expires": token.expires.isoformat(), "published": published}
    machinery_pki.write_private(_token_path(cluster), json.dumps(record).encode())
    return token


def write_bootstrap_kubeconfigs(cluster: dict, token: pki.JoinToken) -> None:
    state = state_dir(cluster["name"])
    for index in range(1, cluster["nodes"] + 1):
        node = layout.node_name(index)
        pki.Kubeconfig(
            cluster=cluster["name"],
            servers=(layout.api_address(cluster),),
            token_servers=(layout.token_address(cluster),),
            ca_file=layout.pki_dir(state) / "ca.crt",
            user=f"bootstrap-{node}",
            token=str(token),
        ).write(layout.bootstrap_kubeconfig(state, node))


async def publish_join_token(api: ApiClient, cluster: dict) -> pki.JoinToken:
    """Create the token's Secret; a token whose published Secret is gone is replaced."""
    token = join_token(cluster)
    saved = json.loads(_token_path(cluster).read_text())
    try:
        await api.get("secrets", token.secret_name, namespace=pki.TOKEN_NAMESPACE)
        return token
    except errors.NotFound:
        pass
    if saved.get("published"):
        # Revoked (or removed by the token cleaner): never resurrect it.
        _say(f"join token {token.id} was revoked; making a new one for nodes still to join")
        token = _save_token(cluster, pki.new_join_token(ttl=TOKEN_TTL), published=False)
        write_bootstrap_kubeconfigs(cluster, token)
    secret = pki.bootstrap_token_secret(
        token, description=f"joins nodes of cluster {cluster['name']}"
    )
    try:
        await api.create("secrets", secret, namespace=pki.TOKEN_NAMESPACE)
    except errors.AlreadyExists:
        pass
    _save_token(cluster, token, published=True)
    return token


def admin_credentials(name: str) -> Credentials:
    directory = layout.pki_dir(state_dir(name))
    admin = pki.KeyPair.read(directory, pki.ADMIN)
    return Credentials(ca=(directory / "ca.crt").read_bytes(), cert=admin.cert, key=admin.key)


def admin_context(name: str, server: str) -> config.Context:
    """kctl's context for the cluster: the admin, its CA and certificate by path."""
    directory = layout.pki_dir(state_dir(name))
    files = {
        "certificate-authority": str(directory / "ca.crt"),
        "client-certificate": str(directory / f"{pki.ADMIN}.crt"),
        "client-key": str(directory / f"{pki.ADMIN}.key"),
    }
    return config.Context(name, [server], "default", admin_credentials(name), files)


async def wait_api(server: str, timeout: float, credentials: Credentials) -> None:
    """Wait until the API server answers, with the last error if it never does."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    async with ApiClient([server], timeout=2, credentials=credentials) as api:
        while time.monotonic() < deadline:
            try:
                await api.get("namespaces", "default")
                return
            except errors.ApiError as err:
                last = err
            await asyncio.sleep(0.1)
    raise SystemExit(
        f"error: the API server at {server} did not become ready in {timeout:.0f}s: {last}"
    )


def seed_images(cluster: dict) -> list[str]:
    """Push the default images unless the registry has them; the names it holds."""
    from deploy.roles.bootstrap import seed_images as seed

    address = layout.registry_address(cluster)
    state = state_dir(cluster["name"])
    try:
        return seed(
            address,
            timeout=30,
            auth_file=layout.registry_auth_dir(state) / "auth.json",
            ca_file=layout.pki_dir(state) / "ca.crt",
        )
    except RuntimeError as err:
        raise SystemExit(f"error: {err}") from err


async def ensure_dns_service(server: str, cluster: dict, credentials: Credentials) -> None:
    """kube-dns at the fixed cluster IP, its endpoint the DNS server on the bridge."""
    net = layout.cluster_net(cluster)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "kube-dns",
            "namespace": "kube-system",
            "labels": {"k8s-app": "kube-dns"},
        },
        "spec": {
            "clusterIP": layout.DNS_SERVICE_IP,
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            ],
        },
    }
    endpoints = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {
            "name": "kube-dns",
            "namespace": "kube-system",
            "labels": {"k8s-app": "kube-dns"},
        },
        "subsets": [
            {
                "addresses": [{"ip": net.gateway}],
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                ],
            }
        ],
    }
    async with ApiClient([server], credentials=credentials) as api:
        for resource, obj in (("services", service), ("endpoints", endpoints)):
            try:
                await api.get(resource, "kube-dns", namespace="kube-system")
            except errors.NotFound:
                await api.create(resource, obj, namespace="kube-system")


async def wait_nodes_ready(
    server: str, count: int, timeout: float, credentials: Credentials
) -> list[str]:
    deadline = time.monotonic() + timeout
    ready: list[str] = []
    async with ApiClient([server], credentials=credentials) as api:
        while time.monotonic() < deadline:
            nodes = (await api.list("nodes")).items
            ready = sorted(
                n["metadata"]["name"]
                for n in nodes
                if any(
                    c.get("type") == "Ready" and c.get("status") == "True"
                    for c in n.get("status", {}).get("conditions") or []
                )
            )
            if len(ready) >= count:
                return ready
            await asyncio.sleep(0.2)
    raise SystemExit(
        f"error: only {len(ready)} of {count} nodes became Ready in {timeout:.0f}s "
        f"({', '.join(ready) or 'none'}); see the kubelet logs (deploy/up.sh prints where)"
    )


def up(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    started = time.monotonic()
    extra = {
        key: value
        for key, value in (
            ("node_grace_period", args.node_grace_period),
            ("pod_eviction_timeout", args.pod_eviction_timeout),
        )
        if value is not None
    }
    cluster, changed = load_or_create_layout(name, args.nodes, extra)
    local = f"127.0.0.1:{cluster['ports']['apiserver']}"
    prepare_host(cluster)
    pid = supervisor_pid(name)
    if pid and changed:
        _say(f"cluster {name}: layout changed, restarting its components")
        stop_supervisor(name, 30)
        pid = 0
    if pid:
        _say(f"cluster {name} is already running (supervisor PID {pid}); checking it")
    else:
        pid = start_supervisor(name)
        _say(f"starting cluster {name} with {cluster['nodes']} node(s) (supervisor PID {pid})")
    _say(f"waiting for the API server at {local} ...")
    admin = admin_credentials(name)
    asyncio.run(wait_api(local, args.timeout, admin))
    config.save_context(admin_context(name, local))
    _say(f"control plane ready after {time.monotonic() - started:.1f}s")
    token = asyncio.run(_publish(local, cluster, admin))
    images = seed_images(cluster)
    _say(f"registry {layout.registry_address(cluster)} holds: {', '.join(images)}")
    asyncio.run(ensure_dns_service(local, cluster, admin))
    if cluster["nodes"]:
        _say(f"waiting for {cluster['nodes']} node(s) to be Ready (join token {token.id}) ...")
        ready = asyncio.run(wait_nodes_ready(local, cluster["nodes"], args.timeout, admin))
        _say(f"nodes ready after {time.monotonic() - started:.1f}s: {', '.join(ready)}")
    report(name, cluster)
    if args.demo:
        from deploy.demo import run_demo

        return run_demo(name)
    return 0


async def _publish(server: str, cluster: dict, credentials: Credentials) -> pki.JoinToken:
    async with ApiClient([server], timeout=10, credentials=credentials) as api:
        return await publish_join_token(api, cluster)


def report(name: str, cluster: dict) -> None:
    state = state_dir(name)
    status_path = state / "status.json"
    status = json.loads(status_path.read_text()) if status_path.exists() else {}
    ports = cluster["ports"]
    _say("")
    _say(f"cluster {name}:")
    for component, info in status.items():
        restarts = f", restarted {info['restarts']}x" if info.get("restarts") else ""
        _say(f"  {component:<22} pid {info.get('pid') or '-':<8}{restarts}")
    api = f"127.0.0.1:{ports['apiserver']}"
    _say(f"  API server             {api} (nodes use {layout.api_address(cluster)})")
    _say(f"  token port             127.0.0.1:{ports['apiserver_token']} (bearer tokens)")
    _say(f"  certificates           {layout.pki_dir(state)} (CA ca.crt)")
    _say(f"  registry               {layout.registry_address(cluster)}")
    _say(f"  node network           {cluster['node_subnet']} on bridge {name}-br")
    metrics = f"http://127.0.0.1:{ports['apiserver_metrics']}/metrics"
    _say(f"  metrics                {metrics} (API server)")
    _say(f"  logs                   {state / 'logs'}")
    _say(f"  client config          {config.default_path()} (context {name})")
    _say("")
    _say("try: .venv/bin/kctl get nodes -o wide")


def clean_nodes(name: str) -> None:
    """Stop every container the cluster's kubelets left, and remove what they made."""
    from deploy.nodeclean import clean_node

    nodes = state_dir(name) / "nodes"
    if not nodes.exists():
        return
    for node_state in sorted(nodes.iterdir()):
        clean_node(node_state, f"kubelite-{name}-{node_state.name}")


def down(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    if stop_supervisor(name, args.timeout):
        _say(f"stopped the components of cluster {name}")
    else:
        _say(f"cluster {name} is not running")
    if (state_dir(name) / "cluster.json").exists():
        from deploy import fault

        # Thaw first: a frozen container survives SIGKILL, and would outlive the cluster.
        try:
            fault.reset(fault.load_testbed(name))
        except fault.FaultError as err:
            _say(f"warning: failed to undo faults on cluster {name}: {err}")
        (state_dir(name) / "held").unlink(missing_ok=True)
    clean_nodes(name)
    hostnet.delete_all(name)
    _say(f"removed the node namespaces and links of cluster {name}")
    if args.purge:
        shutil.rmtree(state_dir(name), ignore_errors=True)
        config.remove_context(name)
        _say(f"deleted the state of cluster {name}")
    return 0


def status(args: argparse.Namespace) -> int:
    path = state_dir(args.name) / "cluster.json"
    if not path.exists():
        _say(f"no cluster named {args.name}")
        return 1
    if not supervisor_pid(args.name):
        _say(f"cluster {args.name} is stopped")
        return 1
    report(args.name, json.loads(path.read_text()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="deploy/cluster", description="Manage one-host kubelite clusters."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up")
    p.add_argument("--name", default="kubelite")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--demo", action="store_true")
    p.add_argument(
        "--node-grace-period",
        type=float,
        default=None,
        help="seconds before a silent node is NotReady",
    )
    p.add_argument(
        "--pod-eviction-timeout",
        type=float,
        default=None,
        help="seconds before its Pods are evicted",
    )
    p.set_defaults(handler=up)
    p = sub.add_parser("down")
    p.add_argument("--name", default="kubelite")
    p.add_argument("--purge", action="store_true")
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(handler=down)
    p = sub.add_parser("status")
    p.add_argument("--name", default="kubelite")
    p.set_defaults(handler=status)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
