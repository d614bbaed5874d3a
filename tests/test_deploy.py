"""The one-host bring-up end to end: up, kctl with no flags, repair, idempotency, down.

Also what the bring-up issues: the CA and every certificate in <state>/pki
(keys readable by root alone), kctl's context as the admin with its files by
path, the same certificates reused on a second run, and --purge removing them.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import stat
import subprocess
import time
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.root


def run(*args: str, env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def cluster_env(tmp_path: pathlib.Path):
    name = f"t{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "KUBELITE_STATE_ROOT": str(tmp_path / "state"),
        "KUBELITE_CONFIG": str(tmp_path / "kctl-config"),
    }
    yield name, env
    # Leave nothing behind even when the test failed half way.
    run("deploy/down.sh", "--name", name, "--purge", env=env)


def test_control_plane_up_repair_and_down(cluster_env) -> None:
    name, env = cluster_env
    up = run("deploy/up.sh", "--nodes", "0", "--name", name, env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "control plane ready" in up.stdout

    kctl = run(".venv/bin/kctl", "get", "namespaces", env=env)
    assert kctl.returncode == 0, kctl.stderr
    assert "kube-system" in kctl.stdout

    state = pathlib.Path(env["KUBELITE_STATE_ROOT"]) / name
    issued = check_pki(state / "pki", pathlib.Path(env["KUBELITE_CONFIG"]), name)
    status = json.loads((state / "status.json").read_text())
    pids = {component: info["pid"] for component, info in status.items()}
    assert set(pids) >= {"etcd", "apiserver", "scheduler"}

    # A component that dies is restarted by the supervisor.
    os.kill(pids["apiserver"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = json.loads((state / "status.json").read_text())
        if (
            status["apiserver"]["pid"] not in (0, pids["apiserver"])
            and status["apiserver"]["restarts"] >= 1
        ):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"the API server was not restarted: {status}")

    again = run("deploy/up.sh", "--nodes", "0", "--name", name, env=env)
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout
    assert run(".venv/bin/kctl", "get", "ns", "default", env=env).returncode == 0
    assert {p.name: p.read_bytes() for p in (state / "pki").glob("*.crt")} == issued

    status = json.loads((state / "status.json").read_text())
    down = run("deploy/down.sh", "--name", name, "--purge", env=env)
    assert down.returncode == 0, down.stderr
    for component, info in status.items():
        assert not alive(info["pid"]), f"{component} (pid {info['pid']}) still runs"
    assert not state.exists()


def check_pki(pki: pathlib.Path, kctl_config: pathlib.Path, name: str) -> dict[str, bytes]:
    """The certificates a bring-up issues, as deploy/pki.py lays them out; their bytes."""
    from deploy import pki as deploy_pki
    from machinery import config
    from machinery import pki as machinery_pki

    ca = (pki / "ca.crt").read_bytes()
    subjects = {
        "apiserver": machinery_pki.Subject("kube-apiserver"),
        "apiserver-kubelet-client": machinery_pki.Subject("kube-apiserver-kubelet-client"),
        **deploy_pki.COMPONENTS,
    }
    for file, subject in subjects.items():
        cert = (pki / f"{file}.crt").read_bytes()
        assert machinery_pki.signed_by(cert, ca), file
        assert machinery_pki.subject_of(cert) == subject, file
    for key in pki.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    ctx = config.load_context(kctl_config)
    assert ctx.name == name and ctx.credentials is not None
    assert ctx.files["client-certificate"] == str(pki / "admin.crt")
    assert ctx.files["certificate-authority"] == str(pki / "ca.crt")
    return {p.name: p.read_bytes() for p in pki.glob("*.crt")}


def test_bad_arguments_are_refused(cluster_env) -> None:
    _, env = cluster_env
    for args, message in (
        (("--nodes", "many"), "--nodes must be a whole number"),
        (("--frobnicate",), "unknown argument"),
        (("--name", "Bad_Name", "--nodes", "0"), "invalid cluster name"),
    ):
        result = run("deploy/up.sh", *args, env=env)
        assert result.returncode != 0
        assert message in result.stderr + result.stdout
