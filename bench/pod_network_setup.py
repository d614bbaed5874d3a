"""Benchmark: how long the bridge plugin takes to wire a Pod into the node's network.

    sudo .venv/bin/python bench/pod_network_setup.py --pods 50

Makes a node network namespace of its own (a veth as the uplink, holding the node IP)
and one empty namespace per Pod, all named klpnb-<pid>-*, removed on exit even
on failure; the script re-executes itself inside the node namespace with `ip
netns exec`, where a kubelet would run the plugin.

Measured inside the node:
  prepare_ms           the node's one-time part: sysctls, bridge, chains, jumps
  setup_ms_*           BridgeNetwork.setup for --pods sandboxes, one after another
  hostport_setup_ms_*  the same with one hostPort each (adds one iptables-restore)
  teardown_ms_median   BridgeNetwork.teardown of each
  concurrent_ms        --concurrent setups started at once from a thread pool (the
                       kubelet's Pod workers), first start to last finish
  ip_commands_ms_median  the same wiring done the usual shell way, one `ip`
                       process per step, as a yardstick, alternating with the
                       plugin's setups; ratio = setup_ms_median / that

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import percentile  # noqa: E402
from kubelet.network import PodNetworkRequest, PortMapping  # noqa: E402
from kubelet.podnet import BridgeNetwork, PodNetConfig, cleanup  # noqa: E402

NODE_IP = "172.31.255.10"
POD_CIDR = "10.244.1.0/24"


def request(netns: str, mappings: tuple[PortMapping, ...] = ()) -> PodNetworkRequest:
    return PodNetworkRequest(
        namespace="bench",
        name=netns,
        uid=f"uid-{netns}",
        sandbox_id=netns,
        netns_path=f"/var/run/netns/{netns}",
        pod_cidrs=(POD_CIDR,),
        port_mappings=mappings,
    )


def hostport(index: int) -> tuple[PortMapping, ...]:
    return (PortMapping(host_port=20000 + index, container_port=80),)


def timed(call, *args) -> float:
    start = time.perf_counter()
    call(*args)
    return (time.perf_counter() - start) * 1000


def ip_commands(netns: str, index: int) -> None:
    """The wiring as a shell script would do it: one ip process per step."""
    veth, address = f"ipc{index}", f"10.244.1.{128 + index % 120}/24"
    steps = [
        ["ip", "link", "add", veth, "mtu", "1450", "type", "veth", "peer", "name", "eth0",
         "mtu", "1450", "netns", netns],
        ["ip", "link", "set", veth, "master", "klpnb0", "up"],
        ["ip", "-n", netns, "link", "set", "lo", "up"],
        ["ip", "-n", netns, "addr", "add", address, "dev", "eth0"],
        ["ip", "-n", netns, "link", "set", "eth0", "up"],
        ["ip", "-n", netns, "route", "add", "default", "via", "10.244.1.1"],
    ]  # fmt: skip
    for argv in steps:
        subprocess.run(argv, check=True, capture_output=True)


def inner(args: argparse.Namespace) -> dict:
    names = args.names.split(",")
    with tempfile.TemporaryDirectory(prefix="klpnb-") as tmp:
        config = PodNetConfig(
            pod_cidr=POD_CIDR,
            cluster_cidr="10.244.0.0/16",
            node_ip=NODE_IP,
            state_dir=Path(tmp),
            prefix="klpnb",
        )
        network = BridgeNetwork(config)
        try:
            prepare = timed(network.prepare, (POD_CIDR,))
            plain, ported, teardown, yardstick = [], [], [], []
            # The plugin and the ip-process wiring alternate, so both see the same noise.
            spares = names[args.pods : 2 * args.pods]
            for i, (name, spare) in enumerate(zip(names[: args.pods], spares, strict=True)):
                plain.append(timed(network.setup, request(name)))
                yardstick.append(timed(ip_commands, spare, i))
            for i in range(args.pods):
                subprocess.run(["ip", "link", "del", f"ipc{i}"], check=False)
            for name in names[: args.pods]:
                teardown.append(timed(network.teardown, request(name)))
            for i, name in enumerate(names[: args.pods]):
                ported.append(timed(network.setup, request(name, hostport(i))))
            for name in names[: args.pods]:
                network.teardown(request(name))
            concurrent_ms = run_concurrent(network, names[: args.concurrent])
        finally:
            cleanup("klpnb", state_dir=None)
    median = statistics.median(plain)
    return {
        "pods": args.pods,
        "prepare_ms": round(prepare, 2),
        "setup_ms_median": round(median, 2),
        "setup_ms_p99": round(percentile(plain, 0.99), 2),
        "hostport_setup_ms_median": round(statistics.median(ported), 2),
        "hostport_setup_ms_p99": round(percentile(ported, 0.99), 2),
        "teardown_ms_median": round(statistics.median(teardown), 2),
        "concurrent": args.concurrent,
        "concurrent_ms": round(concurrent_ms, 2),
        "ip_commands_ms_median": round(statistics.median(yardstick), 2),
        "ratio": round(median / statistics.median(yardstick), 3),
    }


def run_concurrent(network: BridgeNetwork, names: list[str]) -> float:
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(names)) as pool:
        list(pool.map(lambda n: network.setup(request(n)), names))
    elapsed = (time.perf_counter() - start) * 1000
    for name in names:
        network.teardown(request(name))
    return elapsed


def outer(args: argparse.Namespace) -> int:
    prefix = f"klpnb-{os.getpid()}"
    node = f"{prefix}-node"
    count = max(2 * args.pods, args.concurrent)
    names = [f"{prefix}-p{i}" for i in range(count)]
    made: list[str] = []
    try:
        for name in [node, *names]:
            subprocess.run(["ip", "netns", "add", name], check=True)
            made.append(name)
        for argv in (
            ["link", "add", "uplink", "mtu", "1450", "type", "veth", "peer", "name", "uplink1"],
            ["link", "set", "uplink1", "up"],
            ["addr", "add", f"{NODE_IP}/24", "dev", "uplink"],
            ["link", "set", "uplink", "up"],
        ):
            subprocess.run(["ip", "-n", node, *argv], check=True)
        argv = [sys.executable, os.path.abspath(__file__), "--inner", "--names", ",".join(names)]
        argv += ["--pods", str(args.pods), "--concurrent", str(args.concurrent)]
        return subprocess.run(["ip", "netns", "exec", node, *argv]).returncode
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=50, help="sandboxes set up one by one")
    parser.add_argument("--concurrent", type=int, default=20, help="sandboxes set up at once")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--names", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pods < 1 or args.concurrent < 1 or args.pods > 200:
        parser.error("--pods wants 1-200 and --concurrent at least 1")
    if not args.inner:
        return outer(args)
    print(json.dumps(inner(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
