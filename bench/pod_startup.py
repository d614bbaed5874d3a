"""Pod startup latency: N Pods created at once on one node, creation to Running.

    sudo .venv/bin/python bench/pod_startup.py [--pods 20] [--runs 1]

Starts its own etcd and API server (bench/common.py), a docker-registry with the default
images (deploy/images), and a kubelet process on the real runtime, all on loopback and in a
temporary directory. A warm-up Pod pulls the image first, so the measured Pods find it
present (imagePullPolicy IfNotPresent), as the issue's setup says. Then N Pods bound to
the node are created concurrently; each Pod's latency runs from just before its create
call to the first watch event showing it Running, as a user watching would see it.
Everything is removed afterwards, also on failure.

The last line is one JSON object: p50_ms, p99_ms, max_ms, pods, runs (target: p99 under
1 s; Kubernetes' SLO is 5 s at the 99th percentile).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench.common import ROOT, ControlPlane, control_plane, percentile  # noqa: E402
from deploy import pki  # noqa: E402
from deploy.etcd import free_port  # noqa: E402
from deploy.images.build import (  # noqa: E402
    build_default_images,
    inspect_busybox,
    push_default_images,
)
from deploy.registry import start_registry  # noqa: E402
from machinery import errors  # noqa: E402
from machinery.client import ApiClient  # noqa: E402
from machinery.registry import RegistryHosts  # noqa: E402


def pod(name: str, node: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"bench": "startup"}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "main",
                    "image": "busybox",
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sleep", "3600"],
                }
            ],
        },
    }


async def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def node_ready(client: ApiClient, node: str) -> bool:
    try:
        obj = await client.get("nodes", node)
    except errors.NotFound:
        return False
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


async def phase(client: ApiClient, name: str) -> str:
    try:
        return ((await client.get("pods", name, namespace="default")).get("status") or {}).get(
            "phase", ""
        )
    except errors.NotFound:
        return "gone"


async def delete_all(client: ApiClient, names: list[str]) -> None:
    for name in names:
        try:
            await client.delete("pods", name, namespace="default")
        except errors.NotFound:
            pass

    async def all_gone() -> bool:
        return (await client.list("pods", namespace="default")).items == []

    await wait_for(all_gone, 120, "the Pods to be deleted")


_BUSY: list[float] = []


def busy_during(window: float) -> float:
    return machine_busy() - _BUSY[-1] if _BUSY else float("nan")


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine since boot."""
    values = [int(v) for v in pathlib.Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


async def one_run(
    client: ApiClient, node: str, count: int, run: int, *, measured: bool = False
) -> list[float]:
    names = [f"start-{run}-{i}" for i in range(count)]
    listing = await client.list("pods", namespace="default")
    created: dict[str, float] = {}
    running: dict[str, float] = {}
    done = asyncio.Event()

    async def watch() -> None:
        async for event in client.watch(
            "pods", namespace="default", resource_version=listing.resource_version
        ):
            name = event.object.get("metadata", {}).get("name", "")
            status = event.object.get("status") or {}
            if name in names and name not in running and status.get("phase") == "Running":
                running[name] = time.monotonic()
                if len(running) == count:
                    done.set()
                    return

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.2)  # the watch is established before the first create

    async def create(name: str) -> None:
        created[name] = time.monotonic()
        await client.create("pods", pod(name, node))

    _BUSY.append(machine_busy())
    await asyncio.gather(*(create(name) for name in names))
    try:
        await asyncio.wait_for(done.wait(), 120)
    finally:
        watcher.cancel()
    latencies = [(running[n] - created[n]) * 1000 for n in names]
    if measured:
        window = max(running.values()) - min(created.values())
        print(
            f"  machine busy during the run: {busy_during(window):.2f} CPU-s in {window:.2f} s",
            file=sys.stderr,
        )
    await delete_all(client, names)
    return latencies


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process and its reaped children."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(v) for v in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def print_breakdown(port: int) -> None:
    """Mean runtime call latencies from the kubelet's metrics, to see where time goes."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("kubelite_kubelet_runtime_operations_duration_seconds_"):
            name, value = line.rsplit(" ", 1)
            operation = name.split('operation_type="')[1].split('"')[0]
            if "_sum{" in name:
                sums[operation] = float(value)
            elif "_count{" in name:
                counts[operation] = float(value)
    for operation in sorted(sums, key=lambda o: -sums[o]):
        mean = 1000 * sums[operation] / max(counts[operation], 1)
        print(
            f"  {operation:24} calls={counts[operation]:5.0f} mean_ms={mean:8.1f}", file=sys.stderr
        )


def clean_runtime(state_dir: pathlib.Path, cgroup_root: str) -> None:
    from kubelet.runtime.cgroups import detect
    from kubelet.runtime.native import NativeRuntime, RuntimeOptions

    runtime_dir = state_dir / "runtime"
    if runtime_dir.exists():
        runtime = NativeRuntime(RuntimeOptions(state_dir=runtime_dir, cgroup_root=cgroup_root))
        try:
            for sandbox in runtime.list_sandboxes():
                runtime.remove_sandbox(sandbox.id)
        finally:
            runtime.close()
    detect().remove(cgroup_root)


async def bench(
    args: argparse.Namespace, plane: ControlPlane, registry: str, tmp: pathlib.Path
) -> dict:
    node = f"bench-{uuid.uuid4().hex[:6]}"
    # The kubelet holds its own node certificate, as in a cluster; no controller manager
    # runs to sign a serving certificate, so that one is issued here too.
    kubeconfig = plane.kubeconfig(f"node-{node}", pki.node_subject(node))
    serving_cert, serving_key = plane.serving_pair(
        f"kubelet-{node}", pki.node_subject(node), alt_names=("127.0.0.1",)
    )
    cgroup_root = f"kubelite-bench-{os.getpid()}"
    state = tmp / "node"
    log = open(tmp / "kubelet.log", "wb")
    metrics_port = free_port()
    kubelet = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kubelet.main",
            "--kubeconfig",
            str(kubeconfig),
            "--tls-cert-file",
            str(serving_cert),
            "--tls-private-key-file",
            str(serving_key),
            "--node-name",
            node,
            "--node-ip",
            "127.0.0.1",
            "--address",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--state-dir",
            str(state),
            "--cgroup-root",
            cgroup_root,
            "--registry",
            registry,
            "--log-level",
            "WARNING",
            "--metrics-port",
            str(metrics_port),
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = ApiClient([plane.address], timeout=30, credentials=plane.admin)
    try:
        await wait_for(lambda: node_ready(client, node), 60, "the node to be Ready")
        # Warm up: pull the image and start the runtime's helpers once.
        await client.create("pods", pod("warmup", node))

        async def warm() -> bool:
            return await phase(client, "warmup") == "Running"

        await wait_for(warm, 120, "the warm-up Pod")
        await delete_all(client, ["warmup"])
        latencies: list[float] = []
        cpu_before = {pid: cpu_seconds(pid) for pid in (kubelet.pid, *args.watch_pids)}
        for run in range(args.runs):
            latencies += await one_run(client, node, args.pods, run, measured=args.breakdown)
        if args.breakdown:
            print_breakdown(metrics_port)
            for pid, before in cpu_before.items():
                print(f"  cpu pid={pid} s={cpu_seconds(pid) - before:.2f}", file=sys.stderr)
        return {
            "p50_ms": round(percentile(latencies, 0.50), 1),
            "p99_ms": round(percentile(latencies, 0.99), 1),
            "max_ms": round(max(latencies), 1),
            "pods": args.pods,
            "runs": args.runs,
        }
    finally:
        await client.close()
        if kubelet.poll() is None:
            kubelet.send_signal(signal.SIGTERM)
            try:
                kubelet.wait(20)
            except subprocess.TimeoutExpired:
                kubelet.kill()
                kubelet.wait()
        log.close()
        clean_runtime(state, cgroup_root)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=20, help="Pods created at once")
    parser.add_argument("--runs", type=int, default=1, help="rounds of --pods Pods")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="print the kubelet's mean runtime call latencies to stderr",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("pod_startup: needs root (the kubelet runs containers)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="kubelite-podstart-") as name:
        tmp = pathlib.Path(name)
        registry = start_registry(storage=tmp / "registry", workdir=tmp / "registry-work")
        hosts = RegistryHosts()
        try:
            push_default_images(
                hosts, registry.address, build_default_images(inspect_busybox()), tags=("latest",)
            )
            with control_plane() as plane:
                pids = (plane.process.pid, plane.etcd.process.pid)
                args.watch_pids = pids if args.breakdown else ()
                result = asyncio.run(bench(args, plane, registry.address, tmp))
        finally:
            hosts.close()
            registry.stop()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
