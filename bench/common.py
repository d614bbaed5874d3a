"""What the benchmarks share: a private etcd and API server, and percentiles.

Every benchmark starts its own etcd (temporary data directory, free ports) and
its own API server process, so it measures the same shape a cluster runs, and
removes both when it ends, also on failure. The API server runs as a bring-up
starts it: TLS with certificates from a CA made for the run (deploy/pki.py),
client certificates required; benchmarks connect as the admin, or hand a
component the client config of its own identity (ControlPlane.kubeconfig).
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy import pki  # noqa: E402
from deploy.etcd import EtcdProcess, free_port, start_etcd  # noqa: E402
from machinery.credentials import Credentials  # noqa: E402
from machinery.pki import KeyPair, Subject  # noqa: E402


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def rss_bytes(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclasses.dataclass
class ControlPlane:
    etcd: EtcdProcess
    address: str  # the API server's mTLS address
    process: subprocess.Popen[bytes]
    pki_dir: pathlib.Path

    @property
    def admin(self) -> Credentials:
        return self.credentials(pki.ADMIN)

    def credentials(self, name: str) -> Credentials:
        pair = KeyPair.read(self.pki_dir, name)
        return Credentials(ca=(self.pki_dir / "ca.crt").read_bytes(), cert=pair.cert, key=pair.key)

    def kubeconfig(self, name: str, subject: Subject | None = None) -> pathlib.Path:
        """A client config for a component (deploy.pki.COMPONENTS) or, given subject,
        for another identity (a node) issued now under name."""
        if subject is not None:
            pki.ensure_pair(self.pki_dir, name, pki.Want(subject), KeyPair.read(self.pki_dir, "ca"))
        config = pki.component_kubeconfig(
            self.pki_dir, name, cluster="bench", servers=[self.address]
        )
        return config.write(self.pki_dir / f"{name}.conf")

    def serving_pair(
        self, name: str, subject: Subject, *, alt_names: tuple[str, ...]
    ) -> tuple[pathlib.Path, pathlib.Path]:
        """A serving certificate issued now (a kubelet's, when no signer runs); its files."""
        want = pki.Want(subject, client=False, server=True, alt_names=alt_names)
        pki.ensure_pair(self.pki_dir, name, want, KeyPair.read(self.pki_dir, "ca"))
        return self.pki_dir / f"{name}.crt", self.pki_dir / f"{name}.key"


@contextlib.contextmanager
def control_plane(*, extra_args: list[str] | None = None) -> Iterator[ControlPlane]:
    """An etcd and an API server process serving TLS as in a cluster."""
    with tempfile.TemporaryDirectory(prefix="kubelite-bench-") as tmp:
        directory = pathlib.Path(tmp) / "pki"
        names = pki.apiserver_names(["127.0.0.1"], service_cidr="10.96.0.0/12")
        pki.ensure_control_plane(directory, cluster="bench", server_names=names)
        etcd = start_etcd(pathlib.Path(tmp) / "etcd")
        port = free_port()
        log = open(pathlib.Path(tmp) / "apiserver.log", "wb")
        api = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "apiserver.main",
                f"--etcd-servers={etcd.endpoint}",
                f"--listen=127.0.0.1:{port}",
                f"--tls-cert-file={directory / 'apiserver.crt'}",
                f"--tls-private-key-file={directory / 'apiserver.key'}",
                f"--client-ca-file={directory / 'ca.crt'}",
                f"--kubelet-client-certificate={directory / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={directory / 'apiserver-kubelet-client.key'}",
                "--compaction-interval=0",
                "--log-level=WARNING",
                *(extra_args or []),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        plane = ControlPlane(etcd, f"127.0.0.1:{port}", api, directory)
        try:
            wait_ready(plane.address, api, plane.admin)
            yield plane
        finally:
            api.terminate()
            try:
                api.wait(10)
            except subprocess.TimeoutExpired:
                api.kill()
            log.close()
            etcd.stop()


def wait_ready(
    address: str, process: subprocess.Popen, credentials: Credentials, timeout: float = 30.0
) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    tls = grpc.ssl_channel_credentials(credentials.ca, credentials.key, credentials.cert)
    with grpc.secure_channel(address, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the API server exited with status {process.returncode}")
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"the API server at {address} did not become ready in {timeout}s")
