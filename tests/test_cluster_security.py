"""What a bring-up relies on to secure a cluster, without bringing one up.

The API server's command line refuses to start without TLS and names the
flag and path of every file it cannot use; deploy/pki.py issues the right
certificates once and reuses them, re-issuing exactly the ones that no longer
fit; its client configs read back through machinery.config as the components
read them; etcd with TLS of its own (a real etcd on loopback, started here)
takes the API server's store with the etcd client certificate and refuses it
without; a join token is published once and, once revoked, stays revoked.
The cluster-level checks (kctl without credentials, a revoked token on a
real kubelet, a Pod calling its kubelet) are in tests/test_e2e_cluster.py.
"""

from __future__ import annotations

import base64
import datetime
import pathlib
import stat
import subprocess
import sys
import uuid

import pytest

from apiserver.main import FlagError, etcd_tls, parse_args, serving_tls
from deploy import pki
from deploy.etcd import free_port
from machinery import config, errors
from machinery import pki as mpki
from machinery.pki import Subject

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A PKI directory as a one-host bring-up makes it."""
    directory = tmp_path_factory.mktemp("pki")
    names = pki.apiserver_names(["127.0.0.1", "10.1.2.1"], service_cidr="10.96.0.0/12")
    pki.ensure_control_plane(directory, cluster="t", server_names=names)
    return directory


# -- the API server's flags --------------------------------------------------------------


def test_the_api_server_refuses_to_start_without_tls() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "apiserver.main"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    for flag in ("--tls-cert-file", "--tls-private-key-file", "--client-ca-file"):
        assert flag in done.stderr, done.stderr


def _flags(directory: pathlib.Path, **override: str) -> list[str]:
    flags = {
        "tls-cert-file": directory / "apiserver.crt",
        "tls-private-key-file": directory / "apiserver.key",
        "client-ca-file": directory / "ca.crt",
        **override,
    }
    return [f"--{k}={v}" for k, v in flags.items() if v != ""]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        pytest.param(
            {"tls-cert-file": "/nonexistent/a.crt"},
            "--tls-cert-file /nonexistent/a.crt: cannot read it",
            id="unreadable-certificate",
        ),
        pytest.param(
            {"client-ca-file": "JUNK"}, "--client-ca-file JUNK: not a PEM certificate", id="junk-ca"
        ),
        pytest.param(
            {"tls-private-key-file": "ADMIN_KEY"},
            "--tls-private-key-file ADMIN_KEY does not fit --tls-cert-file",
            id="key-of-another-certificate",
        ),
        pytest.param(
            {"tls-private-key-file": "JUNK"}, "not an unencrypted PEM private key", id="junk-key"
        ),
        pytest.param({"client-ca-file": ""}, "missing --client-ca-file", id="no-client-ca"),
        pytest.param(
            {"kubelet-client-certificate": "ADMIN_CERT"},
            "--kubelet-client-certificate and --kubelet-client-key go together",
            id="kubelet-certificate-without-key",
        ),
        pytest.param(
            {"token-auth-file": "/nonexistent/tokens.csv"},
            "--token-auth-file /nonexistent/tokens.csv: no such file",
            id="missing-token-file",
        ),
    ],
)
def test_unusable_tls_files_are_named(
    issued: pathlib.Path, tmp_path: pathlib.Path, override: dict[str, str], message: str
) -> None:
    (tmp_path / "junk").write_text("not pem\n")
    files = {
        "JUNK": str(tmp_path / "junk"),
        "ADMIN_KEY": str(issued / "admin.key"),
        "ADMIN_CERT": str(issued / "admin.crt"),
    }
    given = {k: files.get(v, v) for k, v in override.items()}
    message = message.replace("JUNK", files["JUNK"]).replace("ADMIN_KEY", files["ADMIN_KEY"])
    with pytest.raises(FlagError) as refused:
        serving_tls(parse_args(_flags(issued, **given)))
    assert message in str(refused.value)


def test_good_tls_flags_give_the_serving_settings(issued: pathlib.Path) -> None:
    args = parse_args(
        _flags(issued)
        + [
            f"--kubelet-client-certificate={issued / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={issued / 'apiserver-kubelet-client.key'}",
        ]
    )
    tls = serving_tls(args)
    assert tls.serving.cert == (issued / "apiserver.crt").read_bytes()
    assert tls.client_ca == (issued / "ca.crt").read_bytes()
    assert tls.kubelet_client is not None
    assert mpki.subject_of(tls.kubelet_client.cert).user == "kube-apiserver-kubelet-client"
    assert etcd_tls(args) is None
    with pytest.raises(FlagError, match="need --etcd-cafile"):
        etcd_tls(parse_args([f"--etcd-certfile={issued / 'admin.crt'}"]))


def test_a_bad_file_stops_the_server_with_a_non_zero_exit(issued: pathlib.Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "apiserver.main", *_flags(issued, **{"tls-cert-file": "/x.crt"})],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "--tls-cert-file /x.crt" in done.stderr, done.stderr


# -- issuing and reusing -----------------------------------------------------------------

CA1, CA2 = mpki.new_ca("one"), mpki.new_ca("two")
ALICE = Subject("alice", ("team",))
WANT = pki.Want(ALICE, client=True, server=False, alt_names=("10.0.0.1",))


def _pair(ca=CA1, subject=ALICE, *, server=False, names=("10.0.0.1",), days=365.0):
    return mpki.issue(ca, subject, client=True, server=server, alt_names=names, days=days)


@pytest.mark.parametrize(
    ("pair", "reason"),
    [
        pytest.param(None, "missing", id="missing"),
        pytest.param(_pair(), "", id="fits"),
        pytest.param(_pair(names=("10.0.0.1", "extra")), "", id="more-sans-still-fit"),
        pytest.param(_pair(CA2), "signed by another CA", id="other-ca"),
        pytest.param(_pair(subject=Subject("bob")), "names", id="other-identity"),
        pytest.param(_pair(server=True), "has other usages", id="other-usages"),
        pytest.param(_pair(names=()), "lacks 10.0.0.1", id="missing-san"),
        pytest.param(_pair(days=10), "expires soon", id="expires-soon"),
    ],
)
def test_why_a_certificate_is_issued_again(pair, reason: str) -> None:
    got = pki.why_reissue(pair, WANT, CA1, now=NOW)
    assert got.startswith(reason) if reason else got == ""


def test_the_bring_up_issues_once_and_reissues_only_what_changed(tmp_path: pathlib.Path) -> None:
    names = pki.apiserver_names(["127.0.0.1", "10.1.2.1:6443"], service_cidr="10.96.0.0/12")
    assert {"10.96.0.1", "10.1.2.1", "kubernetes.default.svc", "localhost"} <= set(names)
    first = pki.ensure_control_plane(tmp_path, cluster="t", server_names=names)
    assert all(step.reason == "missing" for step in first)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert pki.reissued(pki.ensure_control_plane(tmp_path, cluster="t", server_names=names)) == []
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # The bridge moved: only the serving certificate is issued again, by the same CA.
    moved = pki.apiserver_names(["127.0.0.1", "10.9.9.1"], service_cidr="10.96.0.0/12")
    again = pki.reissued(pki.ensure_control_plane(tmp_path, cluster="t", server_names=moved))
    assert again == ["apiserver: lacks 10.9.9.1"]
    assert (tmp_path / "ca.crt").read_bytes() == before["ca.crt"]
    for key in tmp_path.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    subjects = {n: mpki.subject_of((tmp_path / f"{n}.crt").read_bytes()) for n in pki.COMPONENTS}
    assert subjects["admin"] == Subject("kubernetes-admin", ("system:masters",))
    assert subjects["scheduler"] == Subject("system:kube-scheduler")
    assert subjects["proxy"] == Subject("system:kube-proxy")


def test_a_half_present_or_foreign_ca_is_refused(tmp_path: pathlib.Path) -> None:
    pki.ensure_ca(tmp_path / "a", common_name="a")
    (tmp_path / "a" / "ca.key").unlink()
    with pytest.raises(pki.PKIError, match="ca.crt exists without"):
        pki.ensure_ca(tmp_path / "a", common_name="a")
    pki.ensure_ca(tmp_path / "b", common_name="b")
    pki.ensure_ca(tmp_path / "c", common_name="c")
    with pytest.raises(pki.PKIError, match="holds another CA"):
        pki.install_ca(tmp_path / "c", tmp_path / "b")
    with pytest.raises(pki.PKIError, match="no ca.key there"):
        pki.install_ca(tmp_path / "d", tmp_path / "a")
    copied = pki.install_ca(tmp_path / "e", tmp_path / "b")
    assert copied.cert == (tmp_path / "b" / "ca.crt").read_bytes()


def test_client_configs_read_back_as_components_read_them(
    issued: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    path = pki.component_kubeconfig(issued, "scheduler", cluster="t", servers=["1.2.3.4:6443"])
    ctx = config.load_context(path.write(tmp_path / "scheduler.conf"))
    assert ctx.servers == ["1.2.3.4:6443"] and ctx.credentials is not None
    assert ctx.credentials.cert == (issued / "scheduler.crt").read_bytes()
    assert stat.S_IMODE((tmp_path / "scheduler.conf").stat().st_mode) == 0o600
    bootstrap = pki.Kubeconfig(
        cluster="t",
        servers=("1.2.3.4:6443",),
        token_servers=("1.2.3.4:6444",),
        ca_file=issued / "ca.crt",
        user="bootstrap-n",
        token="abcdef.0123456789abcdef",
    ).write(tmp_path / "bootstrap.conf")
    ctx = config.load_context(bootstrap)
    # A token user dials the token port; the mutual-TLS servers stay for the certificate.
    assert ctx.servers == ["1.2.3.4:6444"] and ctx.credentials.token.startswith("abcdef.")


def test_join_tokens_have_the_bootstrap_shape() -> None:
    token = pki.new_join_token(ttl=datetime.timedelta(hours=1))
    assert pki.parse_join_token(str(token)) == pki.JoinToken(token.id, token.secret)
    for bad in ("", "abcdef", "ABCDEF.0123456789abcdef", "abcdef.0123456789abcde!"):
        assert pki.parse_join_token(bad) is None
    secret = pki.bootstrap_token_secret(token, description="d")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert secret["metadata"] == {"name": f"bootstrap-token-{token.id}", "namespace": "kube-system"}
    assert secret["type"] == "bootstrap.kubernetes.io/token"
    assert data["token-id"] == token.id and data["token-secret"] == token.secret
    assert data["usage-bootstrap-authentication"] == "true"
    assert data["expiration"].endswith("Z")


async def test_a_join_token_is_published_once_and_stays_revoked(
    client, tmp_path: pathlib.Path
) -> None:
    from deploy.roles.bootstrap import publish_join_token

    token = pki.new_join_token(ttl=None)
    path = tmp_path / "join-token"
    path.write_text(f"{token}\n")
    assert await publish_join_token(client, path, ttl=600) == "created"
    assert await publish_join_token(client, path, ttl=600) == "present"
    await client.delete("secrets", token.secret_name, namespace="kube-system")
    assert await publish_join_token(client, path, ttl=600) == "revoked"
    with pytest.raises(errors.NotFound):
        await client.get("secrets", token.secret_name, namespace="kube-system")


# -- etcd with TLS of its own ------------------------------------------------------------


@pytest.fixture
def tls_etcd(tmp_path: pathlib.Path):
    """A real etcd on loopback requiring client certificates from an etcd CA."""
    import shutil
    import socket
    import time

    directory = tmp_path / "pki"
    member = f"m{uuid.uuid4().hex[:6]}"
    pki.ensure_etcd(directory, cluster="t", member=member, addresses=["127.0.0.1"])
    client_port, peer_port = free_port(), free_port()
    cert, key, ca = (directory / f"etcd-{member}.crt", directory / f"etcd-{member}.key",
                     directory / "etcd-ca.crt")  # fmt: skip
    url, peer = f"https://127.0.0.1:{client_port}", f"https://127.0.0.1:{peer_port}"
    argv = [
        shutil.which("etcd") or "/usr/bin/etcd",
        f"--name={member}",
        f"--data-dir={tmp_path / 'data'}",
        f"--listen-client-urls={url}",
        f"--advertise-client-urls={url}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={member}={peer}",
        f"--cert-file={cert}",
        f"--key-file={key}",
        f"--trusted-ca-file={ca}",
        "--client-cert-auth",
        f"--peer-cert-file={cert}",
        f"--peer-key-file={key}",
        f"--peer-trusted-ca-file={ca}",
        "--peer-client-cert-auth",
        "--log-level=warn",
        "--logger=zap",
    ]
    with open(tmp_path / "etcd.log", "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", client_port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"127.0.0.1:{client_port}", directory
    finally:
        process.terminate()
        process.wait(10)


async def test_the_store_speaks_tls_to_an_etcd_that_requires_it(tls_etcd) -> None:
    from apiserver.store import EtcdStore, EtcdTLS, StoreError

    endpoint, directory = tls_etcd
    ca = (directory / "etcd-ca.crt").read_bytes()
    client = mpki.KeyPair.read(directory, "apiserver-etcd-client")
    store = EtcdStore([endpoint], timeout=5, tls=EtcdTLS(ca=ca, cert=client.cert, key=client.key))
    try:
        await store.create("/t/a", b"1")
        assert (await store.get("/t/a")).value == b"1"
    finally:
        await store.close()
    # Without a client certificate, or without TLS at all, etcd does not serve it.
    for tls in (EtcdTLS(ca=ca), None):
        stranger = EtcdStore([endpoint], timeout=3, tls=tls)
        try:
            with pytest.raises(StoreError):
                await stranger.get("/t/a")
        finally:
            await stranger.close()
