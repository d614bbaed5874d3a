"""Scheduler throughput end to end: hollow nodes, real API server and etcd.

    .venv/bin/python bench/scheduler_throughput.py --nodes 5000 --pods 10000

It starts etcd, an API server, a hollow-node process registering --nodes
Nodes (renewing their Leases and marking bound Pods Running, as kubelets
would), and a scheduler process. It first places --running Pods (1,000 by
default) so the cluster is not empty, then creates --pods new Pods owned
by --replicasets ReplicaSets as fast as the API server takes them, and
watches each one until it is bound. pods_per_s is the measured Pods divided
by the time from the first create to the last binding; p99_ms is the 99th
percentile of create-to-bound. The yardstick is Kubernetes' scheduler_perf
requirement for kube-scheduler at this size: 680 pods/s.

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench.common import ROOT, control_plane, percentile  # noqa: E402
from machinery.credentials import Credentials  # noqa: E402
from machinery.pki import Subject  # noqa: E402

# The group the built-in RBAC policy gives a kubelet's rights for every node at once.
HOLLOW_GROUP = "kubelite:hollow-nodes"

YARDSTICK_PODS_PER_S = 680


def pod(name: str, owner: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"app": owner["name"]},
            "ownerReferences": [owner],
        },
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "busybox",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                }
            ]
        },
    }


async def make_owners(api, count: int, tag: str) -> list[dict]:
    owners = []
    for i in range(count):
        rs = await api.create(
            "replicasets",
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {"name": f"{tag}-{i}", "namespace": "default"},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": f"{tag}-{i}"}},
                    "template": {
                        "metadata": {"labels": {"app": f"{tag}-{i}"}},
                        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
                    },
                },
            },
        )
        owners.append(
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": rs["metadata"]["name"],
                "uid": rs["metadata"]["uid"],
                "controller": True,
            }
        )
    return owners


async def wait_nodes(api, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page = await api.list_all("nodes", page_size=1000)
        if len(page.items) >= count:
            return
        await asyncio.sleep(0.5)
    raise SystemExit(f"only {len(page.items)} of {count} hollow nodes registered in {timeout}s")


async def create_and_watch(
    api, names: list[str], owners: list[dict], concurrency: int
) -> tuple[float, dict, dict]:
    """Create the Pods, watching for their bindings; (first create time, created at, bound at)."""
    created: dict[str, float] = {}
    bound: dict[str, float] = {}
    wanted = set(names)
    start_rv = (await api.list("pods", limit=1)).resource_version
    done = asyncio.Event()

    async def watch() -> None:
        async for event in api.watch("pods", resource_version=start_rv):
            obj = event.object
            name = obj.get("metadata", {}).get("name", "")
            if name in wanted and name not in bound and obj.get("spec", {}).get("nodeName"):
                bound[name] = time.perf_counter()
                if len(bound) == len(wanted):
                    done.set()
                    return

    watcher = asyncio.create_task(watch())
    queue = list(enumerate(names))
    first = time.perf_counter()

    async def worker() -> None:
        while queue:
            i, name = queue.pop()
            await api.create("pods", pod(name, owners[i % len(owners)]))
            created[name] = time.perf_counter()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await asyncio.wait_for(done.wait(), timeout=max(120.0, len(names) / 20))
    watcher.cancel()
    return first, created, bound


async def measure(address: str, args: argparse.Namespace, credentials: Credentials) -> dict:
    from machinery.client import ApiClient

    async with ApiClient([address], timeout=60, credentials=credentials) as api:
        await wait_nodes(api, args.nodes, timeout=max(120.0, args.nodes / 20))
        print(f"{args.nodes} hollow nodes registered", file=sys.stderr)
        owners = await make_owners(api, args.replicasets, "measured")
        warm_owner = await make_owners(api, 1, "running")
        if args.running:
            await create_and_watch(
                api, [f"running-{i}" for i in range(args.running)], warm_owner, 32
            )
            print(f"{args.running} Pods already running", file=sys.stderr)
        first, created, bound = await create_and_watch(
            api, [f"measured-{i}" for i in range(args.pods)], owners, args.concurrency
        )
    last = max(bound.values())
    latencies = [bound[n] - created[n] for n in bound if n in created]
    return {
        "pods_per_s": round(args.pods / (last - first), 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
        "nodes": args.nodes,
        "pods": args.pods,
        "running_before": args.running,
        "yardstick_pods_per_s": YARDSTICK_PODS_PER_S,
        "ratio_to_yardstick": round(args.pods / (last - first) / YARDSTICK_PODS_PER_S, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods", type=int, default=10000, help="Pods measured")
    parser.add_argument("--running", type=int, default=1000, help="Pods placed before measuring")
    parser.add_argument(
        "--replicasets", type=int, default=1, help="owners the measured Pods spread over"
    )
    parser.add_argument("--concurrency", type=int, default=64, help="creates in flight")
    args = parser.parse_args()
    with (
        control_plane(extra_args=["--watch-cache-size=50000"]) as plane,
        tempfile.TemporaryDirectory(prefix="kubelite-bench-sched-") as tmp,
    ):
        logs = [open(os.path.join(tmp, n), "wb") for n in ("hollow.log", "scheduler.log")]
        # The hollow nodes act for thousands of nodes at once, which no one node identity
        # may: they hold the simulator's identity (the built-in policy's system:node role).
        # The scheduler runs as itself, as in a cluster.
        hollow = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hollow",
                "--nodes",
                str(args.nodes),
                "--kubeconfig",
                str(plane.kubeconfig("hollow", Subject("kubelite:hollow", (HOLLOW_GROUP,)))),
                "--log-level",
                "WARNING",
            ],
            cwd=ROOT,
            stdout=logs[0],
            stderr=subprocess.STDOUT,
        )
        scheduler = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scheduler.main",
                f"--kubeconfig={plane.kubeconfig('scheduler')}",
                "--leader-elect=false",
                "--log-level=WARNING",
            ],
            cwd=ROOT,
            stdout=logs[1],
            stderr=subprocess.STDOUT,
        )
        try:
            result = asyncio.run(measure(plane.address, args, plane.admin))
        finally:
            for process in (scheduler, hollow):
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
            for log in logs:
                log.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
