"""The headline example, run by `deploy/up.sh --demo` on a fresh cluster.

It runs httpd on two replicas, exposes them as a NodePort Service, fetches
the page through the Service's ClusterIP from inside a node and through the
NodePort from the host, and shows where the Pods run: what a newcomer would
type, with kctl's own output.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time
import urllib.request

from deploy import layout

ROOT = pathlib.Path(__file__).resolve().parent.parent
KCTL = [sys.executable, "-m", "cli.main"]


def kctl(*args: str, check: bool = True) -> str:
    print(f"$ kctl {' '.join(args)}", flush=True)
    result = subprocess.run([*KCTL, *args], cwd=ROOT, capture_output=True, text=True, check=False)
    output = (result.stdout + result.stderr).rstrip()
    if output:
        print(output, flush=True)
    if check and result.returncode != 0:
        raise SystemExit(f"demo failed: kctl {' '.join(args)} exited with {result.returncode}")
    return result.stdout


def _quiet(*args: str) -> str:
    result = subprocess.run([*KCTL, *args], cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"demo failed: kctl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def fetch(url: str, *, netns: str = "", timeout: float = 30.0) -> str:
    """GET url (from inside netns when given), retrying until the Service answers."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if netns:
            result = subprocess.run(
                # No -T: this busybox's wget crashes on it; `timeout` bounds the attempt instead.
                [
                    "timeout",
                    "3",
                    "ip",
                    "netns",
                    "exec",
                    netns,
                    "busybox",
                    "wget",
                    "-q",
                    "-O",
                    "-",
                    url,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode == 0:
                return result.stdout
            last = result.stderr.strip()
        else:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    return response.read().decode()
            except OSError as err:
                last = str(err)
        time.sleep(0.3)
    raise SystemExit(f"demo failed: {url} did not answer in {timeout:.0f}s: {last}")


def run_demo(name: str) -> int:
    cluster = json.loads((_state(name) / "cluster.json").read_text())
    print("\n== the demo: two httpd replicas behind a Service\n", flush=True)
    existing = subprocess.run(
        [*KCTL, "get", "deploy", "httpd-app"], cwd=ROOT, capture_output=True, check=False
    )
    if existing.returncode != 0:
        kctl("run", "httpd-app", "--image=httpd", "--replicas=2", "--port=80")
    kctl("rollout", "status", "deploy/httpd-app", "--timeout=2m")
    existing = subprocess.run(
        [*KCTL, "get", "svc", "httpd-app"], cwd=ROOT, capture_output=True, check=False
    )
    if existing.returncode != 0:
        kctl("expose", "deployment", "httpd-app", "--port=80", "--type=NodePort")
    kctl("get", "pods", "-o", "wide", "-l", "app=httpd-app")
    service = json.loads(_quiet("get", "svc", "httpd-app", "-o", "json"))
    cluster_ip = service["spec"]["clusterIP"]
    node_port = service["spec"]["ports"][0]["nodePort"]
    net = layout.cluster_net(cluster)
    node_ns = net.netns(1)
    print(f"\n$ wget -qO- http://{cluster_ip}/   (ClusterIP, from inside {node_ns})", flush=True)
    print(fetch(f"http://{cluster_ip}/", netns=node_ns).strip(), flush=True)
    url = f"http://{net.node_ip(1)}:{node_port}/"
    print(f"\n$ curl {url}   (NodePort, from the host)", flush=True)
    print(fetch(url).strip(), flush=True)
    print("\nthe demo worked: next: .venv/bin/kctl scale deploy/httpd-app --replicas=5")
    return 0


def _state(name: str) -> pathlib.Path:
    from deploy.cluster import state_dir

    return state_dir(name)
