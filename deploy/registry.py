"""Run Debian's docker-registry (the CNCF distribution registry, v2.8) for a cluster or a test.

`start_registry` writes a config file, starts `docker-registry serve CONFIG`
on a loopback (or given) address with its own storage directory, and waits
until it accepts connections; `RunningRegistry.stop` ends that one process
by its PID (SIGTERM, then SIGKILL after a grace period). The bring-up keeps
the registry running for the cluster's life; the test fixture in
tests/images/conftest.py starts one per test session on a free port.

The config is written as JSON, which the registry's YAML loader reads; the
format is distribution's `version: 0.1` config: storage.filesystem, with
deletes enabled (so `kctl` can remove images), http.addr, optional http.tls,
and the access log off (every blob request would otherwise be a line).

    python -m deploy.registry --storage /var/lib/kubelite/registry --address 0.0.0.0:5000
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from machinery.files import write_private

DEFAULT_BINARY = "/usr/bin/docker-registry"


class RegistryStartError(RuntimeError):
    """The registry process did not come up; the message carries its log's tail."""


@dataclasses.dataclass
class RunningRegistry:
    """A docker-registry process this program started."""

    address: str
    pid: int
    storage: Path
    config_path: Path
    log_path: Path
    tls: bool
    process: subprocess.Popen[bytes] = dataclasses.field(repr=False)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}"

    def stop(self, *, grace_s: float = 10.0) -> None:
        """Stop this process by PID: SIGTERM, then SIGKILL if it lingers."""
        if self.process.poll() is not None:
            return
        os.kill(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> RunningRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_registry_config(
    path: Path,
    *,
    address: str,
    storage: Path,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    htpasswd: Path | None = None,
    log_level: str = "warn",
) -> Path:
    """Write a distribution v2.8 config file serving `storage` on `address`.

    With htpasswd, every request (pull and push) needs a user of that file."""
    http: dict[str, object] = {
        "addr": address,
        # Signs upload state; set so the registry does not warn that it made one up.
        "secret": secrets.token_hex(16),
        "headers": {"X-Content-Type-Options": ["nosniff"]},
    }
    if tls_cert is not None and tls_key is not None:
        http["tls"] = {"certificate": str(tls_cert), "key": str(tls_key)}
    config = {
        "version": "0.1",
        "log": {"level": log_level, "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http,
    }
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": "kubelite", "path": str(htpasswd)}}
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


REGISTRY_USER = "kubelite"


@dataclasses.dataclass(frozen=True)
class RegistryAuth:
    """The registry's one user: its htpasswd entry, and the client-side file naming it."""

    htpasswd: Path  # what the registry checks (bcrypt)
    auth_file: Path  # docker config JSON: {"auths": {"<address>": {"auth": ...}}}


def ensure_registry_auth(directory: Path, address: str) -> RegistryAuth:
    """The registry's credentials under directory, made once (0600), for `address`.

    A registry anyone on the cluster network can write to lets a Pod replace the
    images every node runs; so the registry asks every client for this user, and
    only the bring-up, the kubelets and administrators hold the password.
    """
    import bcrypt

    directory.mkdir(parents=True, exist_ok=True)
    password_file = directory / "password"
    if not password_file.exists():
        write_private(password_file, secrets.token_urlsafe(24).encode())
    password = password_file.read_text().strip()
    htpasswd = directory / "htpasswd"
    current = htpasswd.read_bytes() if htpasswd.exists() else b""
    user, _, hashed = current.strip().partition(b":")
    matches = user == REGISTRY_USER.encode() and hashed
    if not matches or not bcrypt.checkpw(password.encode(), hashed):
        # The registry checks the hash on every request. The password is 24 random bytes,
        # not a human's, so a low cost (htpasswd -B's default, 5) gives nothing away.
        digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5))
        write_private(htpasswd, REGISTRY_USER.encode() + b":" + digest + b"\n")
    auth_file = directory / "auth.json"
    token = base64.b64encode(f"{REGISTRY_USER}:{password}".encode()).decode()
    wanted = json.dumps({"auths": {address: {"auth": token}}}, indent=2) + "\n"
    if not auth_file.exists() or auth_file.read_text() != wanted:
        write_private(auth_file, wanted.encode())
    return RegistryAuth(htpasswd, auth_file)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (another process may still take it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start_registry(
    *,
    storage: Path,
    workdir: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    binary: str = DEFAULT_BINARY,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    htpasswd: Path | None = None,
    ready_timeout_s: float = 20.0,
    new_session: bool = False,
) -> RunningRegistry:
    """Start docker-registry and wait until it listens.

    With port 0 a free port is picked, and picked again if another process
    takes it between the pick and the registry's bind. `new_session` detaches
    the registry from the caller's terminal (for the bring-up).
    """
    if not Path(binary).exists():
        raise RegistryStartError(f"{binary} not found: install Debian's docker-registry package")
    storage.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    attempts = 5 if port == 0 else 1
    for attempt in range(attempts):
        address = f"{host}:{port or free_port(host)}"
        try:
            return _start_once(
                address=address,
                storage=storage,
                workdir=workdir,
                binary=binary,
                tls=(tls_cert, tls_key),
                htpasswd=htpasswd,
                ready_timeout_s=ready_timeout_s,
                new_session=new_session,
            )
        except RegistryStartError as exc:
            if "address already in use" not in str(exc) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _start_once(
    *,
    address: str,
    storage: Path,
    workdir: Path,
    binary: str,
    tls: tuple[Path | None, Path | None],
    htpasswd: Path | None,
    ready_timeout_s: float,
    new_session: bool,
) -> RunningRegistry:
    config_path = write_registry_config(
        workdir / "registry-config.json",
        address=address,
        storage=storage,
        tls_cert=tls[0],
        tls_key=tls[1],
        htpasswd=htpasswd,
    )
    log_path = workdir / "registry.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [binary, "serve", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )
    running = RunningRegistry(
        address=address,
        pid=process.pid,
        storage=storage,
        config_path=config_path,
        log_path=log_path,
        tls=tls[0] is not None,
        process=process,
    )
    try:
        _wait_listening(running, ready_timeout_s)
    except BaseException:
        running.stop(grace_s=2.0)
        raise
    return running


def _wait_listening(running: RunningRegistry, timeout_s: float) -> None:
    host, _, port = running.address.rpartition(":")
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else host.strip("[]")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise RegistryStartError(
                f"docker-registry on {running.address} exited with code "
                f"{running.process.returncode}: {_log_tail(running.log_path)}"
            )
        with contextlib.suppress(OSError):
            socket.create_connection((probe_host, int(port)), timeout=0.5).close()
            return
        time.sleep(0.05)
    raise RegistryStartError(
        f"docker-registry on {running.address} did not listen within {timeout_s}s: "
        f"{_log_tail(running.log_path)}"
    )


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.registry",
        description="Start the cluster's image registry (Debian's docker-registry) in the "
        "background and print its address and PID.",
    )
    parser.add_argument("--storage", type=Path, required=True, help="directory for image data")
    parser.add_argument(
        "--address", default="127.0.0.1:5000", help="host:port to listen on (default %(default)s)"
    )
    parser.add_argument("--workdir", type=Path, help="where config and log go (default: storage)")
    parser.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate")
    parser.add_argument("--tls-key", type=Path, help="the certificate's private key")
    parser.add_argument("--binary", default=DEFAULT_BINARY, help="docker-registry executable")
    args = parser.parse_args(argv)
    host, _, port = args.address.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--address {args.address!r} must be host:port")
    running = start_registry(
        storage=args.storage,
        workdir=args.workdir or args.storage,
        host=host,
        port=int(port),
        binary=args.binary,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        new_session=True,
    )
    print(
        json.dumps({"address": running.address, "pid": running.pid, "log": str(running.log_path)})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
