"""A Pod network agent for tests: BridgeNetwork and RouteSyncer driven over JSON lines.

The tests run it inside a node's network namespace (`ip netns exec NODE python
-m tests.podnet.agent`), where a kubelet would run, and send one request per
line on stdin; each answer is one line on stdout: {"ok": true, ...} or
{"ok": false, "error": "...", "type": "...", "retryable": bool}.

    {"op": "init", "config": {...PodNetConfig fields...}}
    {"op": "setup", "sandbox": {"id", "uid", "name", "namespace", "netns"}, "pod": {...}}
    {"op": "teardown", "sandbox": {...}, "pod": {...}}
    {"op": "routes", "node_name": "n1", "nodes": [Node objects]}
    {"op": "resync"} | {"op": "cleanup", "prefix": "...", "state_dir": "..."}
"""

from __future__ import annotations

import json
import sys
from typing import Any

from kubelet.podnet import BridgeNetwork, PodNetConfig, RouteSyncer, cleanup
from kubelet.runtime.interface import SandboxId, SandboxState, SandboxStatus


def sandbox_status(spec: dict[str, Any]) -> SandboxStatus:
    return SandboxStatus(
        id=SandboxId(spec["id"]),
        name=spec.get("name", spec["id"]),
        namespace=spec.get("namespace", "default"),
        uid=spec.get("uid", spec["id"]),
        state=SandboxState.READY,
        created_at=0.0,
        hostname=spec.get("name", spec["id"]),
        network_namespace_path=spec.get("netns"),
        ips=(),
        cgroup_path="",
        labels={},
        annotations={},
    )


class Agent:
    def __init__(self) -> None:
        self.network: BridgeNetwork | None = None

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "init":
            self.network = BridgeNetwork(PodNetConfig(**request["config"]))
            self.network.prepare()
            return {}
        if op == "setup":
            ips = self._network().setup(sandbox_status(request["sandbox"]), request.get("pod", {}))
            return {"ips": ips}
        if op == "teardown":
            self._network().teardown(sandbox_status(request["sandbox"]), request.get("pod", {}))
            return {}
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
