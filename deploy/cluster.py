"""Bring a one-host cluster up, report it, take it down.

Everything a cluster owns on the host is named after it: its state
directory /var/lib/kubelite/<name> (override with KUBELITE_STATE_ROOT), its
etcd key prefix /registry/<name>, its bridge and node namespaces, its cgroup
roots, and its ports, chosen free at the first bring-up and kept in
<state>/cluster.json so a second run finds the same cluster. `up` on a
running cluster reports it (its supervisor already restarts what died) and
repairs the host plumbing; on a stopped one it starts the supervisor again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

from deploy import hostnet, layout
from deploy.etcd import free_port
from machinery import config, errors
from machinery.client import ApiClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
PORTS = (
    "etcd",
    "etcd_peer",
    "apiserver",
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
        current["ports"].setdefault(port, free_port())
    current.setdefault("node_subnet", str(hostnet.pick_subnet()))
    changed = json.dumps(current, sort_keys=True) != before
    if changed:
        path.write_text(json.dumps(current, indent=2))
    return current, changed


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
    from deploy.registry import write_registry_config

    # The key that seals Secrets in etcd; kept across bring-ups, since losing it loses them.
    key = state_dir(cluster["name"]) / "encryption-key"
    if not key.exists() and encryption_main(["new-key", "--keep-existing", str(key)]) != 0:
        raise SystemExit(f"error: failed to create the Secret encryption key {key}")

    registry = state_dir(cluster["name"]) / "registry"
    (registry / "data").mkdir(parents=True, exist_ok=True)
    config_path = registry / "config.json"
    if not config_path.exists():
        write_registry_config(
            config_path, address=layout.registry_address(cluster), storage=registry / "data"
        )


async def wait_api(server: str, timeout: float) -> None:
    """Wait until the API server answers, with the last error if it never does."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    async with ApiClient([server], timeout=2) as api:
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
    try:
        return seed(address, timeout=30)
    except RuntimeError as err:
        raise SystemExit(f"error: {err}") from err


async def ensure_dns_service(server: str, cluster: dict) -> None:
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
    async with ApiClient([server]) as api:
        for resource, obj in (("services", service), ("endpoints", endpoints)):
            try:
                await api.get(resource, "kube-dns", namespace="kube-system")
            except errors.NotFound:
                await api.create(resource, obj, namespace="kube-system")


async def wait_nodes_ready(server: str, count: int, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    ready: list[str] = []
    async with ApiClient([server]) as api:
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
    asyncio.run(wait_api(local, args.timeout))
    config.save_context(config.Context(name, [local], "default"))
    _say(f"control plane ready after {time.monotonic() - started:.1f}s")
    images = seed_images(cluster)
    _say(f"registry {layout.registry_address(cluster)} holds: {', '.join(images)}")
    asyncio.run(ensure_dns_service(local, cluster))
    if cluster["nodes"]:
        _say(f"waiting for {cluster['nodes']} node(s) to be Ready ...")
        ready = asyncio.run(wait_nodes_ready(local, cluster["nodes"], args.timeout))
        _say(f"nodes ready after {time.monotonic() - started:.1f}s: {', '.join(ready)}")
    report(name, cluster)
    if args.demo:
        from deploy.demo import run_demo

        return run_demo(name)
    return 0


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
