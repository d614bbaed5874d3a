"""API server throughput and watch fan-out, against raw etcd in the same run.

    .venv/bin/python bench/api_throughput.py [--pods N] [--watchers W] [--events E]

1. Pod creates through the API server at concurrency 1 and 64: rate, p50, p99,
   over mutual TLS as the admin, as clients of a cluster talk to it.
2. The yardstick: raw etcd puts of values of the same size, through the same
   client library (aetcd's stubs) on the same etcd, at the same concurrency.
3. Watch fan-out: W watchers (spread over several client processes so the
   clients are not the bottleneck) each receive E events; delivery latency is
   the time from the create call returning to a watcher reading the event,
   and the API server's resident memory growth is divided by W.

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench.common import control_plane, percentile, rss_bytes  # noqa: E402
from machinery.credentials import Credentials  # noqa: E402


def pod(i: int, tag: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{tag}-{i}", "namespace": "default", "labels": {"app": tag}},
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "image": "httpd",
                    "ports": [{"containerPort": 80}],
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                }
            ]
        },
    }


async def run_concurrent(count: int, concurrency: int, make_call) -> tuple[float, list[float]]:
    latencies: list[float] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            i = next_index
            next_index += 1
            started = time.perf_counter()
            await make_call(i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - started), latencies


async def api_creates(
    address: str, count: int, concurrency: int, tag: str, *, credentials: Credentials
) -> tuple[float, list[float]]:
    from machinery.client import ApiClient

    async with ApiClient([address], credentials=credentials) as api:
        await api.create("pods", pod(0, f"{tag}-warm"))

        async def call(i: int) -> None:
            await api.create("pods", pod(i, tag))

        return await run_concurrent(count, concurrency, call)


async def etcd_puts(
    endpoint: str, count: int, concurrency: int, size: int, tag: str
) -> tuple[float, list[float]]:
    from apiserver.store import EtcdStore

    store = EtcdStore([endpoint])
    value = b"x" * size
    try:
        await store.create(f"/bench/{tag}/warm", value)

        async def call(i: int) -> None:
            await store.create(f"/bench/{tag}/{i}", value)

        return await run_concurrent(count, concurrency, call)
    finally:
        await store.close()


# -- watch fan-out ----------------------------------------------------------------------------


def watcher_process(
    address: str, credentials: Credentials, watchers: int, events: int, ready, results
) -> None:
    asyncio.run(_watchers(address, credentials, watchers, events, ready, results))


async def _watchers(
    address: str, credentials: Credentials, watchers: int, events: int, ready, results
) -> None:
    import grpc

    from machinery.api import api_pb2, api_pb2_grpc

    channel = grpc.aio.secure_channel(address, credentials.channel_credentials())
    stub = api_pb2_grpc.ObjectsStub(channel)
    latencies: list[float] = []
    opened = 0

    async def one() -> None:
        nonlocal opened
        call = stub.Watch(
            api_pb2.WatchRequest(resource="configmaps", namespace="fanout", resource_version="0")
        )
        seen = 0
        opened += 1
        if opened == watchers:
            ready.set()
        async for event in call:
            if event.type != "ADDED":
                continue
            # The creator stamps the wall time into the object; read it without a full decode.
            raw = event.object
            at = raw.find(b'"sent":')
            if at < 0:
                continue
            start = raw.index(b'"', at + 7) + 1
            sent = float(raw[start : raw.index(b'"', start)])
            latencies.append(time.time() - sent)
            seen += 1
            if seen == events:
                break
        call.cancel()

    await asyncio.gather(*(one() for _ in range(watchers)))
    await channel.close()
    results.put(latencies)


async def produce(address: str, events: int, rate: float, credentials: Credentials) -> None:
    from machinery.client import ApiClient

    async with ApiClient([address], credentials=credentials) as api:
        interval = 1.0 / rate
        start = time.perf_counter()
        for i in range(events):
            target = start + i * interval
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            cm = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"event-{i}", "namespace": "fanout"},
                "data": {"sent": "0"},
            }
            # Stamp as late as possible: the time the request leaves.
            cm["data"]["sent"] = repr(time.time())
            await api.create("configmaps", cm)


async def ensure_namespace(address: str, credentials: Credentials) -> None:
    from machinery.client import ApiClient

    async with ApiClient([address], credentials=credentials) as api:
        await api.create(
            "namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fanout"}}
        )


def fan_out(
    address: str,
    api_pid: int,
    *,
    credentials: Credentials,
    watchers: int,
    events: int,
    rate: float,
    processes: int,
) -> dict:
    asyncio.run(ensure_namespace(address, credentials))
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    per = [watchers // processes + (1 if i < watchers % processes else 0) for i in range(processes)]
    before = rss_bytes(api_pid)
    readies = []
    children = []
    for count in per:
        ready = ctx.Event()
        readies.append(ready)
        child = ctx.Process(
            target=watcher_process, args=(address, credentials, count, events, ready, results)
        )
        child.start()
        children.append(child)
    for ready in readies:
        ready.wait(120)
    time.sleep(1.0)
    after_open = rss_bytes(api_pid)
    started = time.perf_counter()
    asyncio.run(produce(address, events, rate, credentials))
    latencies: list[float] = []
    for _ in children:
        latencies += results.get(timeout=600)
    elapsed = time.perf_counter() - started
    for child in children:
        child.join(30)
    return {
        "watchers": watchers,
        "events_per_watcher": events,
        "event_rate_per_s": rate,
        "deliveries": len(latencies),
        "deliveries_per_s": round(len(latencies) / elapsed),
        "watch_p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "watch_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "memory_per_watcher_kib": round((after_open - before) / watchers / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=5000, help="creates at concurrency 64")
    parser.add_argument("--serial", type=int, default=500, help="creates at concurrency 1")
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--event-rate", type=float, default=25.0, help="events created per second")
    parser.add_argument("--watch-processes", type=int, default=2)
    args = parser.parse_args()
    size = len(json.dumps(pod(0, "sizing")).encode()) + 200  # the server adds metadata
    with control_plane() as plane:
        etcd, address, admin = plane.etcd, plane.address, plane.admin
        c1_rate, c1 = asyncio.run(api_creates(address, args.serial, 1, "serial", credentials=admin))
        c64_rate, c64 = asyncio.run(
            api_creates(address, args.pods, 64, "parallel", credentials=admin)
        )
        e1_rate, _ = asyncio.run(etcd_puts(etcd.endpoint, args.serial, 1, size, "serial"))
        e64_rate, e64 = asyncio.run(etcd_puts(etcd.endpoint, args.pods, 64, size, "parallel"))
        print(
            f"api creates: c=1 {c1_rate:.0f}/s p50 {percentile(c1, 0.5) * 1000:.2f} ms; "
            f"c=64 {c64_rate:.0f}/s p99 {percentile(c64, 0.99) * 1000:.2f} ms",
            file=sys.stderr,
        )
        print(f"etcd puts:   c=1 {e1_rate:.0f}/s; c=64 {e64_rate:.0f}/s", file=sys.stderr)
        watch = {}
        if args.watchers:
            watch = fan_out(
                address,
                plane.process.pid,
                credentials=admin,
                watchers=args.watchers,
                events=args.events,
                rate=args.event_rate,
                processes=args.watch_processes,
            )
            print(f"watch: {watch}", file=sys.stderr)
    result = {
        "api_creates_per_s": round(c64_rate),
        "etcd_puts_per_s": round(e64_rate),
        "ratio": round(c64_rate / e64_rate, 3),
        "p50_ms": round(percentile(c64, 0.50) * 1000, 2),
        "p99_ms": round(percentile(c64, 0.99) * 1000, 2),
        "c1_api_creates_per_s": round(c1_rate),
        "c1_etcd_puts_per_s": round(e1_rate),
        "c1_p50_ms": round(percentile(c1, 0.50) * 1000, 2),
        "c1_p99_ms": round(percentile(c1, 0.99) * 1000, 2),
        **watch,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
