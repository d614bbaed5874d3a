"""The kubelet's identity: joining with a bootstrap token, refused tokens, rotation.

Real pieces throughout: the test's API server (mutual TLS and a token listener, RBAC and
the node authorizer), the controller manager's CSR approver and signer in-process signing
with the session's cluster CA, and bootstrap token Secrets created through the API. The
certificate manager is driven alone (no root needed) for the bootstrap, the refusals and
a rotation on a FakeClock; one root test runs a whole kubelet that joins with a token and
keeps renewing its Lease through a rotation of 30-second certificates.

Nothing waits on time as an assertion: every wait is on a condition, with a generous bound.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import random
import shutil
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from controllers.manager import ControllerManager, Settings
from kubelet import certificates as kc
from kubelet import main as kmain
from kubelet.config import Backoff, ConfigError, KubeletConfig
from machinery import auth, config, errors, pki
from machinery.client import ApiClient
from machinery.clock import FakeClock, rfc3339
from machinery.informer import Informer
from machinery.streams import StreamsClient
from tests.kubelet.conftest import Nodes, pod, running, sh, unique, wait_pod
from tests.tls import ClusterPKI

pytestmark = pytest.mark.timeout(240)

Obj = dict[str, Any]


# -- builders ----------------------------------------------------------------------------------


def token_secret(token_id: str, secret: str, *, expiration: str = "") -> Obj:
    data = {"token-id": token_id, "token-secret": secret, "usage-bootstrap-authentication": "true"}
    if expiration:
        data["expiration"] = expiration
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"bootstrap-token-{token_id}", "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def new_token() -> tuple[str, str]:
    rng = random.Random()
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(rng.choices(alphabet, k=6)), "".join(rng.choices(alphabet, k=16))


def write_bootstrap_kubeconfig(
    directory: Path, cluster_pki: ClusterPKI, apiserver: Any, token: str
) -> Path:
    """A bootstrap kubeconfig as a bring-up writes it: both address sets, the CA beside it
    by a relative path, and the token."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(cluster_pki.ca_file, directory / "ca.crt")
    path = directory / "bootstrap.kubeconfig"
    cluster = {
        "servers": [f"127.0.0.1:{apiserver.port}"],
        "token-servers": [f"127.0.0.1:{apiserver.token_port}"],
        "certificate-authority": "ca.crt",
    }
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "bootstrap",
                "clusters": [{"name": "bootstrap", "cluster": cluster}],
                "users": [{"name": "bootstrap", "user": {"token": token}}],
                "contexts": [
                    {"name": "bootstrap", "context": {"cluster": "bootstrap", "user": "bootstrap"}}
                ],
            }
        )
    )
    return path


def identity_config(tmp: Path, node: str, *, bootstrap: Path | None, **overrides: Any) -> Obj:
    """KubeletConfig fields for a kubelet (or its certificate manager alone) of node."""
    values: Obj = {
        "node_name": node,
        "servers": (),
        "kubeconfig": tmp / node / "kubeconfig",
        "bootstrap_kubeconfig": bootstrap,
        "certificate_backoff": Backoff(initial_s=0.1, maximum_s=0.5),
        "certificate_wait_s": 60.0,
    }
    values.update(overrides)
    return values


def manager_config(tmp: Path, node: str, **fields: Any) -> KubeletConfig:
    return KubeletConfig(
        node_ip="127.0.0.1",
        state_dir=tmp / node / "state",
        root_dir=tmp / node / "root",
        cgroup_root="unused",  # the manager alone creates nothing on the host
        **identity_config(tmp, node, **fields),
    )


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60) -> None:
    async def loop() -> None:
        while not await check():
            await asyncio.sleep(0.1)

    try:
        await asyncio.wait_for(loop(), timeout)
    except TimeoutError:
        pytest.fail(f"never happened: {what}")


# -- fixtures ----------------------------------------------------------------------------------


class Signer:
    """The controller manager's approver and signer, running in-process as the controller
    manager's own identity."""

    def __init__(self, client: ApiClient, manager: ControllerManager) -> None:
        self.client = client
        self.manager = manager
        self.task = asyncio.create_task(manager.run())

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.client.close()


@pytest.fixture
async def start_signer(
    apiserver: Any, cluster_pki: ClusterPKI, tmp_path: Path
) -> AsyncIterator[Callable[..., Signer]]:
    started: list[Signer] = []
    key_file = tmp_path / "signing" / "ca.key"
    key_file.parent.mkdir()
    pki.write_private(key_file, cluster_pki.ca.key)

    def start(duration: float = 3600.0) -> Signer:
        client = ApiClient(
            [f"127.0.0.1:{apiserver.port}"],
            timeout=10,
            credentials=cluster_pki.credentials_for(auth.CONTROLLER_MANAGER_USER),
        )
        settings = Settings(
            cluster_signing_cert_file=str(cluster_pki.ca_file),
            cluster_signing_key_file=str(key_file),
            cluster_signing_duration=duration,
        )
        manager = ControllerManager(client, names=["csrapproving", "csrsigning"], settings=settings)
        started.append(Signer(client, manager))
        return started[-1]

    yield start
    for signer in started:
        await signer.close()


@pytest.fixture
async def token(client: ApiClient) -> str:
    token_id, secret = new_token()
    await client.create("secrets", token_secret(token_id, secret), namespace="kube-system")
    return f"{token_id}.{secret}"


class Managed:
    """A certificate manager alone with its own ApiClient, stopped at the end."""

    def __init__(self, cfg: KubeletConfig, clock: Any) -> None:
        self.cfg = cfg
        self.client = ApiClient(list(kc.configured_servers(cfg)), timeout=10)
        self.manager = kc.CertificateManager(cfg, client=self.client, clock=clock)
        self.tasks: list[asyncio.Task[Any]] = []

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        self.tasks.append(asyncio.ensure_future(coro))
        return self.tasks[-1]

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.client.close()


@pytest.fixture
async def managers() -> AsyncIterator[Callable[..., Managed]]:
    made: list[Managed] = []

    def make(cfg: KubeletConfig, clock: Any = None) -> Managed:
        from machinery.clock import RealClock

        made.append(Managed(cfg, clock or RealClock()))
        return made[-1]

    yield make
    for managed in made:
        await managed.close()


def node_object(name: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}


# -- pure rules ----------------------------------------------------------------------------------

_CA = pki.new_ca("rules-ca")
_NODE = pki.Subject("system:node:n", ("system:nodes",))


def _expired_pair() -> pki.KeyPair:
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
    return pki.issue(_CA, _NODE, days=1, not_before=start)


def _swapped_key_pair() -> pki.KeyPair:
    return pki.KeyPair(pki.issue(_CA, _NODE).cert, pki.new_key())


@pytest.mark.parametrize(
    ("pair", "reason"),
    [
        pytest.param(lambda: pki.issue(_CA, _NODE), "", id="valid"),
        pytest.param(
            lambda: pki.issue(pki.new_ca("other"), _NODE), "not signed by the cluster CA", id="ca"
        ),
        pytest.param(_expired_pair, "expired", id="expired"),
        pytest.param(_swapped_key_pair, "key does not belong", id="wrong-key"),
    ],
)
def test_unusable_reason(pair: Callable[[], pki.KeyPair], reason: str) -> None:
    found = kc.unusable_reason(pair(), _CA.cert, time.time())
    assert (found == "") if not reason else (reason in found), found


def _csr_status(*conditions: tuple[str, str], certificate: bytes = b"") -> Obj:
    status: Obj = {
        "conditions": [{"type": t, "status": "True", "reason": r} for t, r in conditions]
    }
    if certificate:
        status["certificate"] = base64.b64encode(certificate).decode()
    return {"status": status}


@pytest.mark.parametrize(
    ("csr", "expected"),
    [
        pytest.param({}, kc.Outcome(), id="pending"),
        pytest.param(_csr_status(("Approved", "AutoApproved")), kc.Outcome(approved=True), id="ok"),
        pytest.param(
            _csr_status(("Approved", "AutoApproved"), certificate=b"PEM"),
            kc.Outcome(certificate=b"PEM", approved=True),
            id="issued",
        ),
        pytest.param(
            _csr_status(("Denied", "NotMine")), kc.Outcome(refused="Denied: NotMine"), id="denied"
        ),
        pytest.param(
            _csr_status(("Approved", "A"), ("Failed", "SignerValidationFailure")),
            kc.Outcome(refused="Failed: SignerValidationFailure"),
            id="failed",
        ),
    ],
)
def test_outcome_of_a_request(csr: Obj, expected: kc.Outcome) -> None:
    assert kc.outcome_of(csr) == expected


def test_rotation_counts_a_fresh_certificates_lifetime_from_its_arrival() -> None:
    # Signers backdate by minutes: a 30 s certificate must not be due the moment it arrives.
    pair = pki.issue(_CA, _NODE, days=30 / 86400)
    not_before, not_after = (t.timestamp() for t in pki.validity(pair.cert))
    arrived = not_after - 30
    assert kc.rotation_deadline(pair.cert, fraction=0.8, received_at=arrived) == pytest.approx(
        arrived + 24
    )
    loaded = kc.rotation_deadline(pair.cert, fraction=0.8)
    assert loaded == pytest.approx(not_before + 0.8 * (not_after - not_before))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"kubeconfig": None, "servers": ()}, "--server or --kubeconfig", id="none"),
        pytest.param(
            {"kubeconfig": None, "servers": ("a:1",), "bootstrap_kubeconfig": Path("/b")},
            "--bootstrap-kubeconfig needs --kubeconfig",
            id="bootstrap-alone",
        ),
        pytest.param({"tls_cert_file": Path("/c")}, "go together", id="cert-without-key"),
    ],
)
def test_identity_flags_refused(tmp_path: Path, fields: Obj, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        manager_config(tmp_path, "n", bootstrap=None, **fields)


def test_command_line_identity_flags(tmp_path: Path) -> None:
    boot = tmp_path / "boot.kubeconfig"
    boot.write_text(
        yaml.safe_dump(
            {
                "current-context": "b",
                "clusters": [{"name": "b", "cluster": {"servers": ["10.0.0.1:6443"]}}],
                "contexts": [{"name": "b", "context": {"cluster": "b"}}],
            }
        )
    )
    base = ["--node-name", "n", "--node-ip", "10.0.0.2", "--state-dir", str(tmp_path / "s")]
    args = kmain.build_parser().parse_args(
        [*base, "--bootstrap-kubeconfig", str(boot), "--rotate-certificates=false"]
    )
    cfg = kmain.config_from(args)
    assert cfg.kubeconfig == tmp_path / "s" / "kubelet" / "kubeconfig"
    assert cfg.pki_dir == tmp_path / "s" / "kubelet" / "pki"
    assert cfg.rotate_certificates is False
    assert kc.configured_servers(cfg) == ("10.0.0.1:6443",)
    override = kmain.config_from(
        kmain.build_parser().parse_args(
            [*base, "--bootstrap-kubeconfig", str(boot), "--server", "10.0.0.9:6443"]
        )
    )
    assert kc.configured_servers(override) == ("10.0.0.9:6443",)


# -- bootstrap -----------------------------------------------------------------------------------


async def test_bootstrap_with_a_token_yields_the_node_identity(
    apiserver: Any,
    client: ApiClient,
    cluster_pki: ClusterPKI,
    start_signer: Callable[..., Signer],
    managers: Callable[..., Managed],
    token: str,
    tmp_path: Path,
) -> None:
    start_signer()
    node = unique("boot")
    bootstrap = write_bootstrap_kubeconfig(tmp_path / "etc", cluster_pki, apiserver, token)
    cfg = manager_config(tmp_path, node, bootstrap=bootstrap)
    first = managers(cfg)
    await asyncio.wait_for(first.manager.start(), 90)

    # The certificate names the node and comes from the cluster CA.
    pair = first.manager.client_pair
    assert pki.subject_of(pair.cert) == pki.Subject(auth.node_user(node), (auth.NODES_GROUP,))
    assert pki.signed_by(pair.cert, cluster_pki.ca.cert)
    serving = first.manager.serving_pair
    assert pki.signed_by(serving.cert, cluster_pki.ca.cert)
    assert pki.subject_of(serving.cert).user == auth.node_user(node)

    # The kubeconfig names the mutual-TLS servers and the pair by path; keys are private.
    ctx = config.load_context(cfg.kubeconfig)
    assert ctx.servers == [f"127.0.0.1:{apiserver.port}"]
    assert ctx.credentials is not None and ctx.credentials.cert == pair.cert
    assert Path(ctx.files["client-key"]).parent == cfg.pki_dir
    for key in cfg.pki_dir.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert not list(cfg.pki_dir.glob("*.pending.key"))

    # The client now acts as the node: its own Node, and only its own.
    await first.client.create("nodes", node_object(node))
    with pytest.raises(errors.Forbidden, match=auth.node_user(node)):
        await first.client.create("nodes", node_object(f"{node}-other"))

    # A restart uses the kubeconfig: the token, revoked meanwhile, is not needed again.
    await client.delete(
        "secrets", f"bootstrap-token-{token.split('.')[0]}", namespace="kube-system"
    )
    await first.close()
    again = managers(manager_config(tmp_path, node, bootstrap=bootstrap))
    await asyncio.wait_for(again.manager.start(), 30)
    assert again.manager.client_pair == pair
    assert again.manager.bootstrap_failures == 0
    assert (await again.client.get("nodes", node))["metadata"]["name"] == node


def _expired_token(token_id: str, secret: str) -> Obj:
    return token_secret(token_id, secret, expiration=rfc3339(time.time() - 3600))


async def _revoked_token(client: ApiClient, token_id: str, secret: str) -> None:
    await client.create("secrets", token_secret(token_id, secret), namespace="kube-system")
    await client.delete("secrets", f"bootstrap-token-{token_id}", namespace="kube-system")


@pytest.mark.parametrize("refusal", ["revoked", "expired"])
async def test_a_refused_token_is_retried_without_giving_up(
    apiserver: Any,
    client: ApiClient,
    cluster_pki: ClusterPKI,
    start_signer: Callable[..., Signer],
    managers: Callable[..., Managed],
    tmp_path: Path,
    refusal: str,
) -> None:
    start_signer()
    token_id, secret = new_token()
    if refusal == "revoked":
        await _revoked_token(client, token_id, secret)
    else:
        await client.create("secrets", _expired_token(token_id, secret), namespace="kube-system")
    node = unique("refused")
    bootstrap = write_bootstrap_kubeconfig(
        tmp_path / "etc", cluster_pki, apiserver, f"{token_id}.{secret}"
    )
    managed = managers(manager_config(tmp_path, node, bootstrap=bootstrap))
    starting = managed.spawn(managed.manager.start())

    async def refused_twice() -> bool:
        return managed.manager.bootstrap_failures >= 2

    await eventually(refused_twice, "the bootstrap was refused and tried again")
    assert "Unauthenticated" in managed.manager.last_error
    assert not starting.done()
    assert not (await client.list("certificatesigningrequests")).items

    # A valid token under the same name: the next attempt joins.
    name = f"bootstrap-token-{token_id}"
    try:
        await client.delete("secrets", name, namespace="kube-system")
    except errors.NotFound:
        pass
    await client.create("secrets", token_secret(token_id, secret), namespace="kube-system")
    await asyncio.wait_for(starting, 90)
    assert pki.subject_of(managed.manager.client_pair.cert).user == auth.node_user(node)


async def test_a_denied_request_fails_with_its_reason_and_a_new_key_asks_again(
    apiserver: Any,
    client: ApiClient,
    cluster_pki: ClusterPKI,
    start_signer: Callable[..., Signer],
    managers: Callable[..., Managed],
    token: str,
    tmp_path: Path,
) -> None:
    # No approver yet: an administrator denies the first request by hand.
    node = unique("denied")
    bootstrap = write_bootstrap_kubeconfig(tmp_path / "etc", cluster_pki, apiserver, token)
    managed = managers(manager_config(tmp_path, node, bootstrap=bootstrap))
    starting = managed.spawn(managed.manager.start())

    async def filed() -> bool:
        return bool((await client.list("certificatesigningrequests")).items)

    await eventually(filed, "the kubelet filed its request")
    first = (await client.list("certificatesigningrequests")).items[0]
    status = {
        "conditions": [
            {"type": "Denied", "status": "True", "reason": "NotThisNode", "message": "go away"}
        ]
    }
    await client.update_status("certificatesigningrequests", {**first, "status": status})

    async def refused() -> bool:
        return "NotThisNode: go away" in managed.manager.last_error

    await eventually(refused, "the denial reached the kubelet with its reason")
    assert not starting.done()

    # The next attempt files a request for a new key, which the approver then takes.
    start_signer()
    await asyncio.wait_for(starting, 90)
    names = {c["metadata"]["name"] for c in (await client.list("certificatesigningrequests")).items}
    # The denied request stays; beside it the second client request and the serving one.
    assert first["metadata"]["name"] in names and len(names) == 3
    assert pki.subject_of(managed.manager.client_pair.cert).user == auth.node_user(node)


# -- rotation ------------------------------------------------------------------------------------


def _serial(pem: bytes) -> int:
    return pki.load_cert(pem).serial_number


async def test_rotation_on_a_fake_clock_replaces_both_certificates(
    apiserver: Any,
    client: ApiClient,
    cluster_pki: ClusterPKI,
    start_signer: Callable[..., Signer],
    managers: Callable[..., Managed],
    token: str,
    tmp_path: Path,
) -> None:
    start_signer(duration=30.0)
    node = unique("rotate")
    bootstrap = write_bootstrap_kubeconfig(tmp_path / "etc", cluster_pki, apiserver, token)
    cfg = manager_config(tmp_path, node, bootstrap=bootstrap)
    clock = FakeClock(start=time.time())
    managed = managers(cfg, clock)
    manager = managed.manager
    await asyncio.wait_for(manager.start(), 90)
    old_client, old_serving = manager.client_pair, manager.serving_pair
    await managed.client.create("nodes", node_object(node))
    # A watch open across the rotation: the swap cuts it, and it must come back.
    watched = Informer(managed.client, "nodes", field_selector=f"metadata.name={node}")
    managed.spawn(watched.run())
    await watched.wait_synced(30)
    managed.spawn(manager.run_rotation())

    # Past the latest rotation point (90%) of both, but before either expires.
    expires = min(pki.validity(p.cert)[1].timestamp() for p in (old_client, old_serving))
    await clock.advance(kc.ROTATE_TO * (expires - clock.now()) + 0.5)

    async def rotated() -> bool:
        return manager.rotations["client"] >= 1 and manager.rotations["server"] >= 1

    await eventually(rotated, "both certificates were renewed", timeout=90)
    assert _serial(manager.client_pair.cert) != _serial(old_client.cert)
    assert _serial(manager.serving_pair.cert) != _serial(old_serving.cert)
    assert pki.subject_of(manager.client_pair.cert).user == auth.node_user(node)

    # The client presents the new certificate and still works; the files follow.
    assert managed.client.credentials is not None
    assert managed.client.credentials.cert == manager.client_pair.cert
    assert (await managed.client.get("nodes", node))["metadata"]["name"] == node
    assert config.load_context(cfg.kubeconfig).credentials.cert == manager.client_pair.cert
    assert len(list(cfg.pki_dir.glob("kubelet-client-*.crt"))) == 1
    assert manager.bootstrap_failures == 0

    await client.patch("nodes", node, {"metadata": {"labels": {"seen": "after"}}})

    async def watch_resumed() -> bool:
        found = watched.get(node)
        return found is not None and found["metadata"].get("labels", {}).get("seen") == "after"

    await eventually(watch_resumed, "the node's watch saw a change made after the rotation")


@pytest.mark.root
async def test_kubelet_joins_with_a_token_and_works_through_rotation(
    apiserver: Any,
    client: ApiClient,
    nodes: Nodes,
    cluster_pki: ClusterPKI,
    start_signer: Callable[..., Signer],
    token: str,
    tmp_path: Path,
) -> None:
    start_signer(duration=30.0)
    name = unique("joiner")
    bootstrap = write_bootstrap_kubeconfig(tmp_path / "etc", cluster_pki, apiserver, token)
    kubelet = await nodes.start(
        **identity_config(tmp_path, name, bootstrap=bootstrap, lease_renew_interval_s=0.5)
    )
    assert kubelet.certificates is not None
    first = kubelet.certificates.client_pair
    assert pki.subject_of(first.cert).user == auth.node_user(name)
    assert pki.signed_by(first.cert, cluster_pki.ca.cert)
    registered = await client.get("nodes", name)
    assert registered["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == kubelet.port

    # A 30 s certificate is renewed at 21-27 s; wait for that, then for proof of work after.
    async def rotated() -> bool:
        return kubelet.certificates.rotations["client"] >= 1  # type: ignore[union-attr]

    await eventually(rotated, "the kubelet renewed its client certificate", timeout=120)
    assert _serial(kubelet.certificates.client_pair.cert) != _serial(first.cert)
    for certificate in ("client", "server"):
        exposed = kubelet.metrics.registry.get_sample_value(
            "kubelite_kubelet_certificate_expiration_timestamp_seconds",
            {"certificate": certificate},
        )
        assert exposed == kubelet.certificates.expires_at(certificate) > time.time()
    after = time.time()

    async def lease_renewed() -> bool:
        lease = await client.get("leases", name, namespace="kube-node-lease")
        renew = lease["spec"].get("renewTime", "")
        stamp = datetime.datetime.fromisoformat(renew.replace("Z", "+00:00")).timestamp()
        return stamp > after

    await eventually(lease_renewed, "the Lease was renewed with the new certificate", 60)
    await client.create(
        "pods", pod("after-rotation", name, sh("main", "echo still-here; sleep 3600"))
    )
    await wait_pod(
        client,
        "after-rotation",
        lambda p: running(p) or (p.get("status") or {}).get("phase") == "Succeeded",
        what="started",
    )
    streams = StreamsClient(
        [f"127.0.0.1:{apiserver.port}"], credentials=cluster_pki.admin_credentials
    )
    try:

        async def logs_through_relay() -> bool:
            out = b"".join([c async for c in streams.logs("default", "after-rotation")])
            return b"still-here" in out

        await eventually(logs_through_relay, "logs through the API server after rotation")
    finally:
        await streams.close()
