"""What the benchmarks share: a private etcd and API server, and percentiles.

Every benchmark starts its own etcd (temporary data directory, free ports) and
its own API server process, so it measures the same shape a cluster runs, and
removes both when it ends, also on failure.
"""

from __future__ import annotations

import contextlib
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy.etcd import EtcdProcess, free_port, start_etcd  # noqa: E402


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


@contextlib.contextmanager
def control_plane(
    *, extra_args: list[str] | None = None
) -> Iterator[tuple[EtcdProcess, str, subprocess.Popen]]:
    """An etcd and an API server process; yields (etcd, API address, API process)."""
    with tempfile.TemporaryDirectory(prefix="kubelite-bench-") as tmp:
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
                "--compaction-interval=0",
                "--log-level=WARNING",
                *(extra_args or []),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(f"127.0.0.1:{port}", api)
            yield etcd, f"127.0.0.1:{port}", api
        finally:
            api.terminate()
            try:
                api.wait(10)
            except subprocess.TimeoutExpired:
                api.kill()
            log.close()
            etcd.stop()


def wait_ready(address: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
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
