"""Bring a one-host cluster up, report it, take it down.

Everything a cluster owns on the host is named after it: its state
directory /var/lib/kubelite/<name> (override with KUBELITE_STATE_ROOT), its
etcd key prefix /registry/<name>, and its ports, chosen free at the first
bring-up and kept in <state>/cluster.json so a second run finds the same
cluster. `up` on a running cluster reports it (its supervisor already
restarts what died); on a stopped one it starts the supervisor again.
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


def load_or_create_layout(name: str, nodes: int) -> dict:
    state = state_dir(name)
    path = state / "cluster.json"
    if path.exists():
        layout = json.loads(path.read_text())
        changed = layout.get("nodes") != nodes
        layout["nodes"] = nodes
        for port in PORTS:
            if port not in layout["ports"]:
                # A cluster made by an older checkout: give new components a port.
                layout["ports"][port] = free_port()
                changed = True
        if changed:
            path.write_text(json.dumps(layout, indent=2))
        return layout
    state.mkdir(parents=True, exist_ok=True)
    layout = {
        "name": name,
        "root": str(ROOT),
        "nodes": nodes,
        "ports": {port: free_port() for port in PORTS},
    }
    path.write_text(json.dumps(layout, indent=2))
    return layout


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


async def wait_api(server: str, timeout: float) -> None:
    """Wait until the API server answers a list, with the last error if it never does."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    async with ApiClient([server], timeout=2) as api:
        while time.monotonic() < deadline:
            try:
                await api.list("namespaces")
                await api.get("namespaces", "default")
                return
            except errors.ApiError as err:
                last = err
            await asyncio.sleep(0.1)
    raise SystemExit(
        f"error: the API server at {server} did not become ready in {timeout:.0f}s: {last}"
    )


def up(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    layout = load_or_create_layout(name, args.nodes)
    server = f"127.0.0.1:{layout['ports']['apiserver']}"
    pid = supervisor_pid(name)
    started = time.monotonic()
    if pid:
        _say(f"cluster {name} is already running (supervisor PID {pid}); checking it")
    else:
        pid = start_supervisor(name)
        _say(f"starting cluster {name} (supervisor PID {pid})")
    _say(f"waiting for the API server at {server} ...")
    asyncio.run(wait_api(server, args.timeout))
    config.save_context(config.Context(name, [server], "default"))
    _say(f"control plane ready in {time.monotonic() - started:.1f}s")
    report(name, layout)
    return 0


def report(name: str, layout: dict) -> None:
    state = state_dir(name)
    status_path = state / "status.json"
    status = json.loads(status_path.read_text()) if status_path.exists() else {}
    _say("")
    _say(f"cluster {name}:")
    for component, info in status.items():
        restarts = f", restarted {info['restarts']}x" if info.get("restarts") else ""
        _say(f"  {component:<20} pid {info.get('pid') or '-':<8}{restarts}")
    _say(f"  API server           127.0.0.1:{layout['ports']['apiserver']}")
    _say(f"  metrics              http://127.0.0.1:{layout['ports']['apiserver_metrics']}/metrics")
    _say(f"  logs                 {state / 'logs'}")
    _say(f"  client config        {config.default_path()} (context {name})")
    _say("")
    _say("try: .venv/bin/kctl get namespaces")


def down(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    pid = supervisor_pid(name)
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + args.timeout
        while supervisor_pid(name) and time.monotonic() < deadline:
            time.sleep(0.1)
        if supervisor_pid(name):
            os.kill(pid, signal.SIGKILL)
        _say(f"stopped cluster {name}")
    else:
        _say(f"cluster {name} is not running")
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
    p.add_argument("--timeout", type=float, default=60.0)
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
