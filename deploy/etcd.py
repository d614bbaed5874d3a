"""Start a single-member etcd for a test run, a benchmark or a one-host cluster.

The member listens on loopback only, on ports the caller chooses (free ports
for tests), with its data in a directory the caller owns. stop() ends the
process it started, by PID, and nothing else.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class EtcdProcess:
    process: subprocess.Popen[bytes]
    client_port: int
    data_dir: pathlib.Path
    log_path: pathlib.Path

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_etcd(
    data_dir: pathlib.Path,
    *,
    client_port: int | None = None,
    peer_port: int | None = None,
    name: str = "kubelite",
    log_path: pathlib.Path | None = None,
    ready_timeout: float = 30.0,
) -> EtcdProcess:
    """Start etcd and wait until it serves requests; raise with its log tail if it does not."""
    binary = shutil.which("etcd") or "/usr/bin/etcd"
    client_port = client_port or free_port()
    peer_port = peer_port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_path or data_dir.parent / f"{data_dir.name}.log"
    client_url = f"http://127.0.0.1:{client_port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    args = [
        binary,
        f"--name={name}",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster={name}={peer_url}",
        "--initial-cluster-state=new",
        "--log-level=warn",
        "--logger=zap",
        # Keep the whole revision history unless the API server compacts it.
        "--auto-compaction-retention=0",
        "--quota-backend-bytes=4294967296",
    ]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    etcd = EtcdProcess(process, client_port, data_dir, log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", client_port), timeout=0.5):
                return etcd
        except OSError:
            time.sleep(0.05)
    etcd.stop()
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"etcd did not start on {client_url} within {ready_timeout}s: {tail}")
