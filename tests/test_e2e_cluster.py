"""A fresh three-node testbed on this host, end to end, through deploy/up.sh and kctl.

One cluster is brought up for the module (unique name, private state root and
client config) and taken down at the end with deploy/down.sh, which must leave
nothing behind. The steps follow what a user does: run, expose, reach the
page by ClusterIP, DNS name and NodePort, scale, apply a Kubernetes manifest,
roll out under load, lose a node, kill components; then who may talk to it:
no credential, a certificate from another CA and an unknown token are
refused, a revoked join token joins no node, and a Pod cannot call its
kubelet's endpoint.
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


# -- who may talk to the cluster -----------------------------------------------------------


def write_config(path: pathlib.Path, cluster: dict, user: dict | None) -> pathlib.Path:
    import yaml

    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "probe",
        "clusters": [{"name": "probe", "cluster": cluster}],
        "contexts": [
            {"name": "probe", "context": {"cluster": "probe", **({"user": "u"} if user else {})}}
        ],
        "users": [{"name": "u", "user": user}] if user else [],
    }
    path.write_text(yaml.safe_dump(document))
    return path


def kctl_as(c: Cluster, config_path: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / ".venv/bin/kctl"), *args],
        cwd=ROOT,
        env={**c.env, "KUBELITE_CONFIG": str(config_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("case", "refusal"),
    [
        pytest.param("plaintext", "unreachable", id="no-tls-no-credential"),
        pytest.param("no-certificate", "unreachable", id="tls-without-client-certificate"),
        pytest.param("other-ca", "unreachable", id="certificate-from-another-ca"),
        pytest.param("bad-token", "Unauthorized", id="unknown-bearer-token"),
    ],
)
def test_7_clients_without_a_valid_credential_are_refused(
    cluster: Cluster, tmp_path: pathlib.Path, case: str, refusal: str
) -> None:
    from machinery import pki

    ports = cluster.layout["ports"]
    ca = str(cluster.state / "pki" / "ca.crt")
    mtls = [f"127.0.0.1:{ports['apiserver']}"]
    tokens = [f"127.0.0.1:{ports['apiserver_token']}"]
    stranger = pki.issue(
        pki.new_ca("another-ca"), pki.Subject("kubernetes-admin", ("system:masters",))
    )
    cert, key = stranger.write(tmp_path, "stranger")
    clusters = {
        "plaintext": ({"servers": mtls}, None),
        # A token user with no token-servers would not even dial: dial the mTLS port as one.
        "no-certificate": (
            {"servers": mtls, "token-servers": mtls, "certificate-authority": ca},
            {"token": "abcdef.0123456789abcdef"},
        ),
        "other-ca": (
            {"servers": mtls, "certificate-authority": ca},
            {"client-certificate": str(cert), "client-key": str(key)},
        ),
        "bad-token": (
            {"servers": mtls, "token-servers": tokens, "certificate-authority": ca},
            {"token": "abcdef.0123456789abcdef"},
        ),
    }
    body, user = clusters[case]
    result = kctl_as(cluster, write_config(tmp_path / "config", body, user), "get", "pods")
    assert result.returncode != 0 and refusal in result.stderr, result.stdout + result.stderr
    # The admin's own context still works, on both counts.
    assert "NAME" in cluster.kctl("get", "nodes")


def test_8_a_revoked_join_token_cannot_join_a_new_node(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    import asyncio

    from deploy import hostnet, layout
    from machinery import config, errors
    from machinery.client import ApiClient

    bootstrap = layout.bootstrap_kubeconfig(cluster.state, "node-1")
    ctx = config.load_context(bootstrap)
    token = ctx.credentials.token
    token_id = token.split(".")[0]

    async def as_bootstrapper():
        async with ApiClient(ctx.servers, timeout=10, credentials=ctx.credentials) as api:
            return await api.get("certificatesigningrequests", "no-such-request")

    # While the token is valid the server knows who asks (a missing CSR, not a refusal).
    with pytest.raises(errors.NotFound):
        asyncio.run(as_bootstrapper())
    assert f'bootstrap token "{token_id}" deleted' in cluster.kctl("token", "delete", token_id)
    with pytest.raises(errors.Unauthenticated):
        asyncio.run(as_bootstrapper())

    # A new machine with the revoked token: its kubelet is refused and never registers.
    index = 9
    net = layout.cluster_net(cluster.layout)
    hostnet.ensure_node(net, index)
    node = layout.node_name(index)
    node_state = layout.node_state(cluster.state, node)
    node_state.mkdir(parents=True)
    layout.bootstrap_kubeconfig(cluster.state, node).write_bytes(bootstrap.read_bytes())
    kubelet = layout.node_components(cluster.state, cluster.layout, index)[0]
    log_path = tmp_path / "kubelet.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{kubelet.netns}", "--", *kubelet.argv],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        eventually(
            lambda: "Unauthenticated" in log_path.read_text(errors="replace"),
            timeout=60,
            what="the kubelet refused with the revoked token",
        )
        assert not (node_state / "kubelet.conf").exists()
        assert node not in cluster.kctl("get", "nodes", "-o", "name")
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:  # still bootstrapping: it is ours, by PID
            process.kill()
            process.wait()
        hostnet.delete_node(net, index)

    # The bring-up does not bring the revoked token back: it makes a new one.
    again = subprocess.run(
        [str(ROOT / "deploy/up.sh"), "--nodes", "3", "--name", cluster.name],
        cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert "was revoked" in again.stdout
    listed = cluster.kctl("token", "list")
    assert token_id not in listed
    fresh = config.load_context(bootstrap).credentials.token
    assert fresh != token and fresh.split(".")[0] in listed


def test_9_a_pod_cannot_reach_the_kubelet_endpoint(cluster: Cluster) -> None:
    client = running_pods(cluster, "app=client")[0]["metadata"]["name"]
    kubelet = f"{cluster.node_ip(1)}:10250"

    def in_pod(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(ROOT / ".venv/bin/kctl"), "exec", client, "--", *argv],
            cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    # The port is open to the Pod (TCP connects)...
    reach = in_pod("sh", "-c", f"echo | timeout 5 nc {kubelet.replace(':', ' ')}")
    assert reach.returncode == 0, reach.stdout + reach.stderr
    # ...but without the API server's client certificate the TLS handshake is refused.
    # (No -T: this busybox's wget crashes on it.)
    fetch = in_pod("timeout", "5", "wget", "-q", "-O", "-", f"https://{kubelet}/")
    assert fetch.returncode != 0, fetch.stdout
    assert "TLS" in fetch.stderr and "error getting response" in fetch.stderr, fetch.stderr
    # The API server, which holds that certificate, still reaches it: exec goes through it.
    assert in_pod("echo", "through-the-api-server").stdout.strip() == "through-the-api-server"


def test_10_the_registry_answers_only_its_user(cluster: Cluster) -> None:
    """A Pod on the cluster network can neither pull from nor push to the image registry
    every node pulls from; the nodes, which hold its user, pull as before (tests 1-9)."""
    from deploy import layout
    from machinery.registry import RegistryError, RegistryHosts, list_images, read_auth_file

    address = layout.registry_address(cluster.layout)
    client = running_pods(cluster, "app=client")[0]["metadata"]["name"]
    for argv in (
        ("wget", "-q", "-O", "-", f"https://{address}/v2/_catalog"),
        ("wget", "-q", "-O", "-", "--post-data=", f"https://{address}/v2/evil/blobs/uploads/"),
    ):
        attempt = subprocess.run(
            [str(ROOT / ".venv/bin/kctl"), "exec", client, "--", "timeout", "10", *argv],
            cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert attempt.returncode != 0 and "401" in attempt.stderr, attempt.stdout + attempt.stderr
    ca_file = str(layout.pki_dir(cluster.state) / "ca.crt")
    with pytest.raises(RegistryError):
        list_images(RegistryHosts(ca_files={address: ca_file}).client(address))
    user = read_auth_file(str(layout.registry_auth_dir(cluster.state) / "auth.json"))
    hosts = RegistryHosts(ca_files={address: ca_file}, credentials=user)
    assert {"library/busybox", "library/httpd"} <= {
        r.repository for r in list_images(hosts.client(address))
    }
