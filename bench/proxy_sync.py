"""Benchmark: how long the proxy takes to program many Services, and to follow a change.

    sudo .venv/bin/python bench/proxy_sync.py --services 1000 --endpoints 10

Runs in a network namespace of its own (created here, removed on exit, even on
failure): the script re-executes itself inside it with `ip netns exec`, so
every iptables command it times is the bare binary, exactly as the proxy runs
it on a node.

Measured, each --repeat times from an empty namespace (median reported):
  full_sync_ms        SyncRunner.sync() with nothing applied before: render the
                      whole ruleset, list existing KUBELITE chains, one
                      iptables-restore, check and insert the jumps
  iptables_restore_ms a bare `iptables-restore --noflush` of the same text
  ratio               full_sync_ms / iptables_restore_ms
  *_cpu_ms, cpu_ratio the same in CPU time (this process and its children),
                      which a busy machine disturbs far less than wall time
Then, with the runner's loop running (RealClock, min_sync_interval
--min-interval, 100 ms by default: small enough for a cluster of this size,
large enough to batch bursts and keep iptables from using a whole core),
--changes Endpoints changes arrive at random (exponential gaps, mean --gap
seconds, 0.1 s by default: ten changes a second, as in a rolling update across
many Deployments; seeded), each replacing one address of one Service;
change_p99_ms is the 99th percentile of the time from a change being handed to
the proxy to the restore carrying it having returned. Resyncs run every
--resync-interval seconds (the proxy's default, 30 s; the 400 changes take
about 40 s, so that a resync falls inside the measurement: a change that
arrives during one waits for the resync batch under way).

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from machinery.clock import RealClock  # noqa: E402
from proxy.cleanup import cleanup  # noqa: E402
from proxy.config import ProxyConfig  # noqa: E402
from proxy.iptables import IptablesCommand  # noqa: E402
from proxy.rules import render, restore_text  # noqa: E402
from proxy.state import ProxyState  # noqa: E402
from proxy.sync import SyncResult, SyncRunner  # noqa: E402

CLUSTER_CIDR = "10.128.0.0/9"


def service(i: int) -> dict:
    return {
        "kind": "Service",
        "metadata": {"name": f"svc-{i}", "namespace": "bench"},
        "spec": {
            "clusterIP": f"10.96.{i // 250}.{i % 250 + 1}",
            "type": "ClusterIP",
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
        },
    }


def pod_ip(n: int) -> str:
    return f"10.{128 + n // 62500}.{n // 250 % 250}.{n % 250 + 1}"


def endpoints(i: int, ips: list[str]) -> dict:
    return {
        "kind": "Endpoints",
        "metadata": {"name": f"svc-{i}", "namespace": "bench"},
        "subsets": [
            {
                "addresses": [{"ip": ip, "nodeName": "node-1"} for ip in ips],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            }
        ],
    }


def build_state(args: argparse.Namespace, clock: RealClock) -> tuple[ProxyState, list[list[str]]]:
    state = ProxyState(clock=clock)
    ips = [
        [pod_ip(i * args.endpoints + j) for j in range(args.endpoints)]
        for i in range(args.services)
    ]
    for i in range(args.services):
        state.upsert_service(service(i))
        state.upsert_endpoints(endpoints(i, ips[i]))
    state.mark_listed("Service")
    state.mark_listed("Endpoints")
    return state, ips


class Stopwatch:
    """Wall time, and CPU time of this process plus its finished children, across a block.

    CPU time hardly moves when other work shares the machine; wall time does.
    Both are reported so that a run on a busy machine can still be read.
    """

    def __enter__(self) -> Stopwatch:
        self._wall = time.perf_counter()
        self._cpu = _cpu_seconds()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall_ms = (time.perf_counter() - self._wall) * 1000
        self.cpu_ms = (_cpu_seconds() - self._cpu) * 1000


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def median(values: list[float]) -> float:
    return round(statistics.median(values), 1)


async def measure_full(args: argparse.Namespace) -> dict:
    clock = RealClock()
    config = ProxyConfig(cluster_cidr=CLUSTER_CIDR, min_sync_interval=args.min_interval)
    iptables = IptablesCommand(binary=args.binary)
    full: list[Stopwatch] = []
    bare: list[Stopwatch] = []
    render_ms = []
    for _ in range(args.repeat):
        state, _ = build_state(args, clock)
        snap = state.snapshot()
        started = time.perf_counter()
        text = restore_text(render(snap.services, snap.endpoints, config))
        render_ms.append((time.perf_counter() - started) * 1000)
        with Stopwatch() as watch:
            subprocess.run(
                [f"{args.binary}-restore", "-w", "5", "--noflush"], input=text.encode(), check=True
            )
        bare.append(watch)
        await cleanup(iptables)

        runner = SyncRunner(state, iptables, config=config, clock=clock)
        with Stopwatch() as watch:
            result = await runner.sync()
        full.append(watch)
        if not result.ok:
            raise SystemExit(f"full sync failed: {result.error}")
        await cleanup(iptables)
    return {
        "full_sync_ms": median([w.wall_ms for w in full]),
        "iptables_restore_ms": median([w.wall_ms for w in bare]),
        "full_sync_cpu_ms": median([w.cpu_ms for w in full]),
        "iptables_restore_cpu_ms": median([w.cpu_ms for w in bare]),
        "render_ms": median(render_ms),
        "full_sync_samples_ms": [round(w.wall_ms) for w in full],
        "iptables_restore_samples_ms": [round(w.wall_ms) for w in bare],
        "rules": result.rules,
    }


async def measure_changes(args: argparse.Namespace) -> dict:
    clock = RealClock()
    config = ProxyConfig(
        cluster_cidr=CLUSTER_CIDR,
        min_sync_interval=args.min_interval,
        resync_interval=args.resync_interval,
        resync_batch_rules=args.resync_batch_rules,
    )
    state, ips = build_state(args, clock)
    latencies: list[float] = []
    syncs: list[SyncResult] = []

    def observe(result: SyncResult) -> None:
        syncs.append(result)
        latencies.extend(result.change_latencies)

    runner = SyncRunner(
        state, IptablesCommand(binary=args.binary), config=config, clock=clock, observer=observe
    )
    task = asyncio.create_task(runner.run())
    try:
        while not syncs:
            await asyncio.sleep(0.05)
        rng = random.Random(args.seed)
        next_ip = args.services * args.endpoints
        for _ in range(args.changes):
            await asyncio.sleep(rng.expovariate(1 / args.gap))
            i = rng.randrange(args.services)
            ips[i][rng.randrange(args.endpoints)] = pod_ip(next_ip)
            next_ip += 1
            state.upsert_endpoints(endpoints(i, ips[i]))
        while len(latencies) < args.changes:
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
    await cleanup(IptablesCommand(binary=args.binary))
    partial = [s for s in syncs if s.kind == "partial"]
    resync_batches = [s for s in syncs if s.kind == "resync"]
    ordered = sorted(latencies)
    return {
        "change_p50_ms": round(ordered[len(ordered) // 2] * 1000, 1),
        "change_p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
        "partial_syncs": len(partial),
        "resync_batches": len(resync_batches),
    }


async def inner(args: argparse.Namespace) -> dict:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    report = await measure_full(args)
    report["ratio"] = round(report["full_sync_ms"] / report["iptables_restore_ms"], 3)
    report["cpu_ratio"] = round(report["full_sync_cpu_ms"] / report["iptables_restore_cpu_ms"], 3)
    report.update(await measure_changes(args))
    report.update(
        services=args.services,
        endpoints=args.endpoints,
        min_interval_s=args.min_interval,
        resync_interval_s=args.resync_interval,
        resync_batch_rules=args.resync_batch_rules,
        changes=args.changes,
        binary=args.binary,
    )
    return report


def outer(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("bench/proxy_sync.py: needs root (it creates a network namespace)", file=sys.stderr)
        return 2
    netns = f"klbench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        argv = [sys.executable, os.path.abspath(__file__), "--inner", *sys.argv[1:]]
        return subprocess.run(["ip", "netns", "exec", netns, *argv]).returncode
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=10, help="ready endpoints per Service")
    parser.add_argument("--repeat", type=int, default=5, help="full-sync measurements (median)")
    parser.add_argument("--changes", type=int, default=400, help="Endpoints changes to time")
    parser.add_argument("--gap", type=float, default=0.1, help="mean seconds between changes")
    parser.add_argument("--min-interval", type=float, default=0.1, help="min_sync_interval (s)")
    parser.add_argument(
        "--resync-interval",
        type=float,
        default=ProxyConfig.resync_interval,
        help="resync_interval during the changes (s)",
    )
    parser.add_argument(
        "--resync-batch-rules",
        type=int,
        default=ProxyConfig.resync_batch_rules,
        help="resync_batch_rules during the changes",
    )
    parser.add_argument("--binary", default="iptables", help="iptables or iptables-legacy")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.inner:
        return outer(args)
    report = asyncio.run(inner(args))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
