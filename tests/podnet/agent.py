"""A Pod network agent for tests: BridgeNetwork and RouteSyncer driven over JSON lines.

The tests run it inside a node's network namespace (`ip netns exec NODE python
-m tests.podnet.agent`), where a kubelet would run, and send one request per
line on stdin; each answer is one line on stdout: {"ok": true, ...} or
{"ok": false, "error": "...", "type": "...", "retryable": bool}.

    {"op": "init", "config": {...PodNetConfig fields...}}
    {"op": "setup", "sandbox": {"id", "uid", "name", "namespace", "netns"}, "pod": {...},
     "pod_cidrs": [...]}         (the request is built from these as the kubelet builds it)
    {"op": "teardown", "sandbox": {...}, "pod": {...}}
    {"op": "status"}
    {"op": "routes", "node_name": "n1", "nodes": [Node objects]}
    {"op": "resync"} | {"op": "cleanup", "prefix": "...", "state_dir": "..."}
"""

from __future__ import annotations

import json
import sys
from typing import Any

from kubelet.network import PodNetworkRequest, PortMapping
from kubelet.podnet import BridgeNetwork, PodNetConfig, RouteSyncer, cleanup


def network_request(message: dict[str, Any]) -> PodNetworkRequest:
    """What the kubelet's Pod worker would hand the plugin for this sandbox and Pod."""
    sandbox, pod = message["sandbox"], message.get("pod") or {}
    mappings = [
        PortMapping(
            host_port=port["hostPort"],
            container_port=port.get("containerPort", 0),
            protocol=port.get("protocol", "TCP"),
            host_ip=port.get("hostIP", ""),
        )
        for container in pod.get("spec", {}).get("containers") or []
        for port in container.get("ports") or []
        if port.get("hostPort")
    ]
    return PodNetworkRequest(
        namespace=sandbox.get("namespace", "default"),
        name=sandbox.get("name", sandbox["id"]),
        uid=sandbox.get("uid", sandbox["id"]),
        sandbox_id=sandbox["id"],
        netns_path=sandbox.get("netns") or "",
        pod_cidrs=tuple(message.get("pod_cidrs", ())),
        port_mappings=tuple(mappings),
    )


class Agent:
    def __init__(self) -> None:
        self.network: BridgeNetwork | None = None

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "init":
            self.network = BridgeNetwork(PodNetConfig(**request["config"]))
            return {}
        if op == "setup":
            return {"ips": list(self._network().setup(network_request(request)).ips)}
        if op == "teardown":
            self._network().teardown(network_request(request))
            return {}
        if op == "status":
            status = self._network().status()
            return {"ready": status.ready, "message": status.message}
        if op == "resync":
            self._network().resync()
            return {}
        if op == "routes":
            result = RouteSyncer(node_name=request["node_name"]).apply(request["nodes"])
            return {
                "added": [str(r.destination) for r in result.added],
                "removed": [str(d) for d in result.removed],
                "failed": [f.reason for f in result.failed],
                "skipped": {s.node: s.reason for s in result.skipped},
            }
        if op == "cleanup":
            done = cleanup(request["prefix"], state_dir=request.get("state_dir"))
            return {"links": done.links, "routes": done.routes, "chains": done.chains}
        raise ValueError(f"unknown op {op!r}")

    def _network(self) -> BridgeNetwork:
        if self.network is None:
            raise RuntimeError("send init first")
        return self.network


def main() -> None:
    agent = Agent()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = {"ok": True, **agent.handle(json.loads(line))}
        except Exception as err:  # every failure goes back to the test, which asserts on it
            answer = {
                "ok": False,
                "error": str(err),
                "type": type(err).__name__,
                "retryable": bool(getattr(err, "retryable", False)),
            }
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
