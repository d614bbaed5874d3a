"""A fresh three-node testbed on this host, end to end, through deploy/up.sh and kctl.

One cluster is brought up for the module (unique name, private state root and
client config) and taken down at the end with deploy/down.sh, which must leave
nothing behind. The steps follow what a user does: run, expose, reach the
page by ClusterIP, DNS name and NodePort, scale, apply a Kubernetes manifest,
roll out under load, lose a node, kill components.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import textwrap
import threading
import time
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.root


class Cluster:
    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.env = env
        self.state = pathlib.Path(env["KUBELITE_STATE_ROOT"]) / name

    @property
    def layout(self) -> dict:
        return json.loads((self.state / "cluster.json").read_text())

    def kctl(
        self, *args: str, check: bool = True, stdin: str | None = None, timeout: float = 120
    ) -> str:
        result = subprocess.run(
            [str(ROOT / ".venv/bin/kctl"), *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            input=stdin,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kctl {' '.join(args)} failed: {result.stdout}{result.stderr}")
        return result.stdout

    def json(self, *args: str) -> dict:
        return json.loads(self.kctl(*args, "-o", "json"))

    def netns(self, index: int) -> str:
        return f"{self.name}-node-{index}"

    def node_ip(self, index: int) -> str:
        import ipaddress

        return str(ipaddress.ip_network(self.layout["node_subnet"]).network_address + 10 + index)

    def fetch_from_node(self, index: int, url: str, timeout: float = 3) -> str | None:
        result = subprocess.run(
            # No -T: this busybox's wget crashes on it; `timeout` bounds the attempt instead.
            [
                "timeout",
                str(int(timeout)),
                "ip",
                "netns",
                "exec",
                self.netns(index),
                "busybox",
                "wget",
                "-q",
                "-O",
                "-",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=timeout + 5,
        )
        return result.stdout if result.returncode == 0 else None

    def status(self) -> dict:
        return json.loads((self.state / "status.json").read_text())


def eventually(check, timeout: float = 60.0, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except AssertionError as err:
            last = err
        time.sleep(interval)
    raise AssertionError(f"{what} not reached in {timeout:.0f}s; last: {last}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    name = f"e{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "KUBELITE_STATE_ROOT": str(tmp / "state"),
        "KUBELITE_CONFIG": str(tmp / "config"),
    }
    up = subprocess.run(
        [
            str(ROOT / "deploy/up.sh"),
            "--nodes",
            "3",
            "--name",
            name,
            "--node-grace-period",
            "15",
            "--pod-eviction-timeout",
            "5",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    c = Cluster(name, env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield c
    finally:
        down = subprocess.run(
            [str(ROOT / "deploy/down.sh"), "--name", name, "--purge"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert down.returncode == 0, down.stdout + down.stderr
        leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert name not in leftovers
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert f"{name}-" not in links


def running_pods(c: Cluster, selector: str) -> list[dict]:
    pods = c.json("get", "pods", "-l", selector)["items"]
    return [
        p
        for p in pods
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]


def test_1_run_gives_two_running_pods_on_two_nodes(cluster: Cluster) -> None:
    assert len(cluster.json("get", "nodes")["items"]) == 3
    cluster.kctl("run", "httpd-app", "--image=httpd", "--replicas=2", "--port=80")
    pods = eventually(
        lambda: (p := running_pods(cluster, "app=httpd-app")) and len(p) == 2 and p,
        timeout=60,
        what="two Running httpd Pods",
    )
    assert len({p["spec"]["nodeName"] for p in pods}) == 2
    wide = cluster.kctl("get", "pods", "-o", "wide")
    for p in pods:
        assert p["status"]["podIP"] in wide and p["spec"]["nodeName"] in wide


def test_2_expose_reaches_the_page_by_cluster_ip_dns_and_node_port(cluster: Cluster) -> None:
    cluster.kctl("expose", "deployment", "httpd-app", "--port=80", "--type=NodePort")
    svc = cluster.json("get", "svc", "httpd-app")
    cluster_ip, node_port = svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["nodePort"]
    pods = running_pods(cluster, "app=httpd-app")
    third = next(i for i in (1, 2, 3) if f"node-{i}" not in {p["spec"]["nodeName"] for p in pods})
    cluster.kctl(
        "run",
        "client",
        "--image=busybox",
        "--replicas=1",
        "--",
        "sleep",
        "3600",
    )
    cluster.kctl("rollout", "status", "deploy/client", "--timeout=60s")
    client = running_pods(cluster, "app=client")[0]["metadata"]["name"]
    page = eventually(
        lambda: cluster.fetch_from_node(third, f"http://{cluster_ip}/"), what="ClusterIP page"
    )
    assert "kubelite" in page.lower()
    by_name = eventually(
        lambda: cluster.kctl(
            "exec",
            client,
            "--",
            "timeout",
            "3",
            "wget",
            "-q",
            "-O",
            "-",
            "http://httpd-app",
            check=False,
        ),
        what="page by DNS name from a Pod",
    )
    assert "kubelite" in by_name.lower()
    import urllib.request

    def node_port_page() -> str | None:
        try:
            with urllib.request.urlopen(
                f"http://{cluster.node_ip(1)}:{node_port}/", timeout=3
            ) as r:
                return r.read().decode()
        except OSError:
            return None

    assert "kubelite" in eventually(node_port_page, what="NodePort page from the host").lower()


def test_3_scale_and_apply_a_kubernetes_manifest(cluster: Cluster) -> None:
    cluster.kctl("scale", "deploy/httpd-app", "--replicas=5")
    eventually(lambda: len(running_pods(cluster, "app=httpd-app")) == 5, what="5 replicas")
    cluster.kctl("scale", "deploy/httpd-app", "--replicas=1")
    eventually(
        lambda: len(cluster.json("get", "pods", "-l", "app=httpd-app")["items"]) == 1,
        what="1 replica",
    )
    manifest = textwrap.dedent(
        """\
        apiVersion: v1
        kind: Namespace
        metadata:
          name: shop
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: web-config
          namespace: shop
        data:
          GREETING: hello
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: web
          namespace: shop
        spec:
          replicas: 2
          selector:
            matchLabels: {app: web}
          template:
            metadata:
              labels: {app: web}
            spec:
              containers:
              - name: web
                image: httpd
                ports:
                - containerPort: 80
                envFrom:
                - configMapRef: {name: web-config}
                readinessProbe:
                  httpGet: {path: /, port: 80}
                  periodSeconds: 2
        ---
        apiVersion: v1
        kind: Service
        metadata:
          name: web
          namespace: shop
        spec:
          selector: {app: web}
          ports:
          - port: 8080
            targetPort: 80
        """
    )
    out = cluster.kctl("apply", "-f", "-", stdin=manifest)
    assert "deployment.apps/web created" in out
    eventually(lambda: len(running_pods_ns(cluster, "shop", "app=web")) == 2, what="shop/web ready")


def running_pods_ns(c: Cluster, ns: str, selector: str) -> list[dict]:
    pods = c.json("-n", ns, "get", "pods", "-l", selector)["items"]
    return [
        p
        for p in pods
        if any(
            cond.get("type") == "Ready" and cond.get("status") == "True"
            for cond in p["status"].get("conditions") or []
        )
    ]


def test_4_rolling_update_under_load_loses_no_request(cluster: Cluster) -> None:
    cluster.kctl("scale", "deploy/httpd-app", "--replicas=3")
    eventually(lambda: len(running_pods(cluster, "app=httpd-app")) == 3, what="3 replicas")
    cluster_ip = cluster.json("get", "svc", "httpd-app")["spec"]["clusterIP"]
    failures, successes = [], []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            page = cluster.fetch_from_node(1, f"http://{cluster_ip}/", timeout=3)
            (successes if page else failures).append(time.monotonic())

    thread = threading.Thread(target=load)
    thread.start()
    try:
        cluster.kctl("set", "image", "deploy/httpd-app", "httpd-app=httpd:1.35.0")
        cluster.kctl("rollout", "status", "deploy/httpd-app", "--timeout=120s", timeout=180)
        time.sleep(2)
    finally:
        stop.set()
        thread.join()
    assert successes and not failures, (
        f"{len(failures)} of {len(failures) + len(successes)} requests failed"
    )


def test_5_a_stopped_node_loses_its_pods_to_the_others(cluster: Cluster) -> None:
    pods = running_pods(cluster, "app=httpd-app")
    victim_node = pods[0]["spec"]["nodeName"]
    index = int(victim_node.rsplit("-", 1)[1])
    subprocess.run(
        [
            str(ROOT / ".venv/bin/python"),
            "-m",
            "deploy.fault",
            "--name",
            cluster.name,
            "stop-node",
            str(index),
        ],
        cwd=ROOT,
        env=cluster.env,
        check=True,
        capture_output=True,
    )
    try:

        def replaced() -> bool:
            now = running_pods(cluster, "app=httpd-app")
            return len(now) == 3 and victim_node not in {p["spec"]["nodeName"] for p in now}

        eventually(
            replaced, timeout=180, interval=1, what="Pods replaced away from the stopped node"
        )
        cluster_ip = cluster.json("get", "svc", "httpd-app")["spec"]["clusterIP"]
        other = next(i for i in (1, 2, 3) if i != index)
        assert eventually(
            lambda: cluster.fetch_from_node(other, f"http://{cluster_ip}/"), what="service"
        )
    finally:
        subprocess.run(
            [
                str(ROOT / ".venv/bin/python"),
                "-m",
                "deploy.fault",
                "--name",
                cluster.name,
                "start-node",
                str(index),
            ],
            cwd=ROOT,
            env=cluster.env,
            check=False,
            capture_output=True,
        )


def test_6_killing_components_during_a_scale_up_loses_nothing(cluster: Cluster) -> None:
    before = {p["metadata"]["uid"]: p for p in running_pods(cluster, "app=httpd-app")}
    restarts_before = {
        uid: sum(c.get("restartCount", 0) for c in p["status"].get("containerStatuses") or [])
        for uid, p in before.items()
    }
    cluster.kctl("scale", "deploy/httpd-app", "--replicas=6")
    for component in ("apiserver", "controller-manager", "scheduler", "node-1/kubelet"):
        pid = cluster.status()[component]["pid"]
        if pid:
            os.kill(pid, signal.SIGKILL)
        time.sleep(1.5)
    eventually(
        lambda: len(running_pods(cluster, "app=httpd-app")) == 6,
        timeout=180,
        interval=1,
        what="6 replicas after the kills",
    )
    time.sleep(3)
    after = {p["metadata"]["uid"]: p for p in running_pods(cluster, "app=httpd-app")}
    assert len(after) == 6
    live = [
        p
        for p in cluster.json("get", "pods", "-l", "app=httpd-app")["items"]
        if not p["metadata"].get("deletionTimestamp")
    ]
    states = [
        (p["metadata"]["name"], p["status"].get("phase"), p["spec"].get("nodeName")) for p in live
    ]
    assert len(live) == 6, f"not exactly 6 live Pods: {states}"
    for uid, p in after.items():
        if uid in restarts_before:
            restarts = sum(
                c.get("restartCount", 0) for c in p["status"].get("containerStatuses") or []
            )
            assert restarts == restarts_before[uid], f"{p['metadata']['name']} restarted"
    assert cluster.json("-n", "shop", "get", "cm", "web-config")["data"] == {"GREETING": "hello"}
