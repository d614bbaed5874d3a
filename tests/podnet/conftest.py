"""A cluster of network namespaces for the Pod network tests, removed even when a test fails.

    fabric   (netns) bridge "fab" 172.31.0.1/24: the nodes' LAN, and the one
             address outside the cluster (the masquerade test's server)
      |-- n1 (netns) eth0 172.31.0.11/24 mtu 1400, Pods 10.244.1.0/24
      |-- n2 (netns) eth0 172.31.0.12/24 mtu 1400, Pods 10.244.2.0/24
      `-- n3 ...
    pods     (netns) one per sandbox, wired by the plugin running in its node

Every namespace is named `<prefix>-...` with a prefix unique to the test; the
host namespace gets nothing but those namespace files. Each node runs the
plugin in an agent subprocess entered into the node's namespace, as a
kubelet would run (tests/podnet/agent.py). Addresses exist only inside these
namespaces, so no traffic can leave them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import select
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

NETNS_DIR = "/var/run/netns"
CLUSTER_CIDR = "10.244.0.0/16"
FABRIC_IP = "172.31.0.1"
UPLINK_MTU = 1400

SERVER = """
import socket, sys
proto, port = sys.argv[1], int(sys.argv[2])
label = (sys.argv[3] + " ").encode() if len(sys.argv) > 3 else b""
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
sock = socket.socket(socket.AF_INET, kind)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("0.0.0.0", port))
if proto == "tcp":
    sock.listen(64)
print("ready", flush=True)
while True:
    if proto == "tcp":
        conn, peer = sock.accept()
        conn.sendall(label + peer[0].encode() + b"\\n")
        conn.close()
    else:
        _, peer = sock.recvfrom(100)
        sock.sendto(label + peer[0].encode(), peer)
"""

# Prints the address the server saw us come from, or "error: ...".
CLIENT = """
import socket, sys
proto, host, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
try:
    if proto == "tcp":
        with socket.create_connection((host, port), timeout=timeout) as conn:
            print(conn.makefile().readline().strip())
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(timeout)
        sock.sendto(b"hi", (host, port))
        print(sock.recvfrom(100)[0].decode())
except OSError as exc:
    print(f"error: {type(exc).__name__}")
"""


def run(*argv: str, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc.stdout


def ns_run(netns: str, *argv: str, check: bool = True) -> str:
    return run("ip", "netns", "exec", netns, *argv, check=check)


def connect(netns: str, host: str, port: int, *, proto: str = "tcp", timeout: float = 3) -> str:
    """From inside netns: the source address the server saw, or 'error: ...'."""
    return ns_run(netns, sys.executable, "-c", CLIENT, proto, host, str(port), str(timeout)).strip()


class AgentError(AssertionError):
    def __init__(self, answer: dict[str, Any]) -> None:
        super().__init__(f"{answer['type']}: {answer['error']}")
        self.answer = answer


class Agent:
    """The plugin in a node's namespace, behind JSON lines."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "tests.podnet.agent"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        # Answers are read by a thread, so that pipelined requests never hide in a buffer.
        self._answers: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        answer = self.request(op, **fields)
        if not answer["ok"]:
            raise AgentError(answer)
        return answer

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        self.send(op, **fields)
        return self.receive()

    def send(self, op: str, **fields: Any) -> None:
        """Queue a request; the agent works on it while the caller does something else."""
        assert self.proc.stdin
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> dict[str, Any]:
        try:
            line = self._answers.get(timeout=60)
        except queue.Empty:
            raise AssertionError(f"agent in {self.netns} gave no answer within 60 s") from None
        if not line:
            raise AssertionError(f"agent in {self.netns} exited (code {self.proc.poll()})")
        return json.loads(line)

    def _read(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            self._answers.put(line)
        self._answers.put("")

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclasses.dataclass
class Node:
    name: str
    netns: str
    ip: str
    pod_cidr: str
    state_dir: Path
    agent: Agent | None = None

    def config(self, prefix: str, **overrides: Any) -> dict[str, Any]:
        return {
            "pod_cidr": self.pod_cidr,
            "cluster_cidr": CLUSTER_CIDR,
            "node_ip": self.ip,
            "state_dir": str(self.state_dir),
            "prefix": prefix,
            **overrides,
        }

    def object(self) -> dict[str, Any]:
        """This node as the API holds it."""
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name},
            "spec": {"podCIDR": self.pod_cidr},
            "status": {"addresses": [{"type": "InternalIP", "address": self.ip}]},
        }


@dataclasses.dataclass
class Pod:
    name: str
    netns: str
    node: Node
    ip: str = ""

    @property
    def path(self) -> str:
        return f"{NETNS_DIR}/{self.netns}"

    def sandbox(self) -> dict[str, Any]:
        return {
            "id": f"sb-{self.name}",
            "uid": f"uid-{self.name}",
            "name": self.name,
            "namespace": "default",
            "netns": self.path,
        }


class Topology:
    def __init__(self, prefix: str, tmp: Path) -> None:
        self.prefix = prefix  # also the plugin's prefix: 8 characters at most
        self.tmp = tmp
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[str]] = []
        self.agents: list[Agent] = []
        self.nodes: list[Node] = []
        self.fabric = ""

    def start(self) -> None:
        self.fabric = self._namespace("fabric")
        ns_run(self.fabric, "ip", "link", "add", "fab", "type", "bridge")
        ns_run(self.fabric, "ip", "addr", "add", f"{FABRIC_IP}/24", "dev", "fab")
        ns_run(self.fabric, "ip", "link", "set", "fab", "up")

    def _namespace(self, suffix: str) -> str:
        name = f"{self.prefix}-{suffix}"
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        ns_run(name, "ip", "link", "set", "lo", "up")
        return name

    def add_node(self, index: int, *, start_agent: bool = True, **config: Any) -> Node:
        netns = self._namespace(f"n{index}")
        ip = f"172.31.0.{10 + index}"
        # The node's uplink is made inside the node and its peer sent to the fabric.
        ns_run(
            netns,
            "ip",
            "link",
            "add",
            "eth0",
            "mtu",
            str(UPLINK_MTU),
            "type",
            "veth",
            "peer",
            "name",
            f"n{index}",
            "mtu",
            str(UPLINK_MTU),
            "netns",
            self.fabric,
        )
        ns_run(self.fabric, "ip", "link", "set", f"n{index}", "master", "fab", "up")
        ns_run(netns, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        ns_run(netns, "ip", "link", "set", "eth0", "up")
        node = Node(f"node-{index}", netns, ip, f"10.244.{index}.0/24", self.tmp / f"n{index}")
        self.nodes.append(node)
        if start_agent:
            self.start_agent(node, **config)
        return node

    def start_agent(self, node: Node, **config: Any) -> Agent:
        agent = Agent(node.netns)
        self.agents.append(agent)
        agent.call("init", config=node.config(self.prefix, **config))
        node.agent = agent
        return agent

    def add_pod(self, node: Node, name: str, **pod: Any) -> Pod:
        """A sandbox stand-in (an empty network namespace) set up by the node's plugin."""
        made = self.add_pod_namespace(node, name)
        assert node.agent is not None
        answer = node.agent.call("setup", sandbox=made.sandbox(), pod=pod)
        made.ip = answer["ips"][0]
        return made

    def add_pod_namespace(self, node: Node, name: str) -> Pod:
        """A sandbox stand-in the test sets up itself."""
        return Pod(name, self._namespace(f"p-{name}"), node)

    def delete_namespace(self, name: str) -> None:
        run("ip", "netns", "del", name)
        self.namespaces.remove(name)

    def serve(self, netns: str, port: int, *, proto: str = "tcp", label: str = "") -> None:
        """A server answering with the client's address as it sees it (after "label ")."""
        argv = [sys.executable, "-c", SERVER, proto, str(port), *([label] if label else [])]
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, *argv],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.processes.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready and proc.stdout.readline().strip() == "ready", f"server in {netns} failed"

    def close(self) -> None:
        for agent in self.agents:
            agent.close()
        for proc in self.processes:
            proc.kill()
            proc.wait()
        for name in reversed(self.namespaces):
            run("ip", "netns", "del", name, check=False)


def pod_spec(*ports: dict[str, Any]) -> dict[str, Any]:
    return {"spec": {"containers": [{"name": "c", "image": "busybox", "ports": list(ports)}]}}


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    prefix = "kt" + uuid.uuid4().hex[:6]
    topo = Topology(prefix, tmp_path)
    try:
        topo.start()
        yield topo
    finally:
        topo.close()
        leftovers = [n for n in os.listdir(NETNS_DIR) if n.startswith(prefix)]
        assert not leftovers, f"namespaces left behind: {leftovers}"
