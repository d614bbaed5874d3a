"""How many scheduling decisions per second the scheduler core makes, without the API.

    .venv/bin/python bench/scheduler_decisions.py --nodes 5000 --placed 1000 --pods 2000

Builds a cache of N hollow-shaped Nodes with `--placed` Pods already bound,
then schedules `--pods` new Pods (of one ReplicaSet, or cycling through
`--owners` of them), each as the loop does it:
update the snapshot, schedule_one, assume. Parsing each Pod (PodInfo.of) is
timed too, since the informer does it once per Pod. `--profile` prints the
hottest functions. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import sys
import time

from machinery.clock import FakeClock
from scheduler.algorithm import Algorithm
from scheduler.cache import Cache, Snapshot
from scheduler.framework import Framework
from scheduler.plugins import default_plugins
from scheduler.podinfo import PodInfo


def node(i: int) -> dict:
    name = f"hollow-{i:05d}"
    resources = {"cpu": "4", "memory": "16Gi", "pods": 110}
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
        "status": {
            "allocatable": resources,
            "capacity": resources,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def pod(name: str, owner: str, node_name: str = "") -> dict:
    spec = {
        "containers": [
            {
                "name": "main",
                "image": "registry.k8s.io/pause:3.9",
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            }
        ]
    }
    if node_name:
        spec["nodeName"] = node_name
    meta = {
        "name": name,
        "namespace": "default",
        "uid": f"uid-{name}",
        "ownerReferences": [
            {"kind": "ReplicaSet", "name": owner, "uid": f"uid-{owner}", "controller": True}
        ],
    }
    return {"metadata": meta, "spec": spec, "status": {"phase": "Pending"}}


def build(nodes: int, placed: int) -> Cache:
    cache = Cache(clock=FakeClock())
    for i in range(nodes):
        cache.add_node(node(i))
    for i in range(placed):
        cache.add_pod(PodInfo.of(pod(f"old-{i}", "old", node_name=f"hollow-{i % nodes:05d}")))
    return cache


def run(args: argparse.Namespace) -> dict:
    cache = build(args.nodes, args.placed)
    algorithm = Algorithm(
        Framework(default_plugins()),
        rng=random.Random(1),
        percentage_of_nodes_to_score=args.percentage,
        memoize=not args.no_memo,
    )
    snapshot = cache.update_snapshot(Snapshot())
    raw = [pod(f"new-{i}", f"web-{i % args.owners}") for i in range(args.pods)]

    started = time.perf_counter()
    infos = [PodInfo.of(p) for p in raw]
    parse_s = time.perf_counter() - started

    latencies = []
    placed = 0
    cpu_started = time.process_time()
    started = time.perf_counter()
    for info in infos:
        t0 = time.perf_counter()
        cache.update_snapshot(snapshot)
        result = algorithm.schedule_one(info, snapshot)
        if result.node_name is not None:
            cache.assume_pod(info, result.node_name)
            placed += 1
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    latencies.sort()
    return {
        "nodes": args.nodes,
        "placed_before": args.placed,
        "pods": args.pods,
        "scheduled": placed,
        "percentage_of_nodes_to_score": args.percentage,
        "owners": args.owners,
        "memoize": not args.no_memo,
        "decisions_per_s": round(args.pods / elapsed, 1),
        "mean_ms": round(1000 * elapsed / args.pods, 3),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 3),
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 3),
        "cpu_ms_per_decision": round(1000 * cpu / args.pods, 3),
        "parse_us_per_pod": round(1e6 * parse_s / args.pods, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--placed", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=2000)
    parser.add_argument("--percentage", type=int, default=0, help="0 = adaptive")
    parser.add_argument("--owners", type=int, default=1, help="ReplicaSets the Pods cycle through")
    parser.add_argument("--no-memo", action="store_true", help="re-run every plugin every time")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        result = run(args)
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(15)
    else:
        result = run(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
