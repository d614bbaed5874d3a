"""Pod sandboxes: what the containers of one Pod share, and what the node keeps apart."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kubelet.runtime import logs
from kubelet.runtime.interface import (
    DnsConfig,
    HostAlias,
    Mount,
    NamespaceMode,
    NamespaceOptions,
    SandboxState,
)
from kubelet.runtime.native import NativeRuntime
from tests.runtime.conftest import pod, run_to_exit, sh

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


HTTP_GET = "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc 127.0.0.1 8080"


def retry(command: str, times: int = 200) -> str:
    return f"for i in $(seq {times}); do {command} && exit 0; sleep 0.05; done; exit 1"


def test_two_containers_share_a_volume_and_the_network_namespace(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path, tmp_path: Path
):
    volume = tmp_path / "shared"
    volume.mkdir()
    mounts = (Mount(str(volume), "/shared"),)
    server = runtime.create_container(
        sandbox,
        sh(
            busybox_rootfs,
            "mkdir -p /shared/www; exec httpd -f -p 8080 -h /shared/www",
            name="server",
            mounts=mounts,
        ),
    )
    runtime.start_container(server)
    # The client writes the page into the volume; the server serves it over loopback.
    client = "mkdir -p /shared/www; echo written-by-client > /shared/www/index.html; " + retry(
        f"{HTTP_GET} 2>/dev/null | grep written-by-client"
    )
    status, output = run_to_exit(
        runtime, sandbox, sh(busybox_rootfs, client, name="client", mounts=mounts)
    )
    assert status.exit_code == 0, output
    assert output.strip() == "written-by-client"
    assert (volume / "www" / "index.html").read_text() == "written-by-client\n"


def test_containers_have_their_own_pid_namespace_by_default(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path
):
    sleeper = runtime.create_container(sandbox, sh(busybox_rootfs, "sleep 30", name="sleeper"))
    runtime.start_container(sleeper)
    _, output = run_to_exit(runtime, sandbox, sh(busybox_rootfs, "ps -o comm", name="looker"))
    assert "sleep" not in output


def test_shared_process_namespace(runtime: NativeRuntime, busybox_rootfs: Path):
    sandbox = runtime.run_sandbox(pod(namespaces=NamespaceOptions(pid=NamespaceMode.POD)))
    sleeper = runtime.create_container(sandbox, sh(busybox_rootfs, "exec sleep 30", name="sleeper"))
    runtime.start_container(sleeper)
    _, output = run_to_exit(runtime, sandbox, sh(busybox_rootfs, "ps -o pid,comm", name="looker"))
    rows = [line.split() for line in output.splitlines()[1:]]
    comms = {comm for _, comm in rows}
    assert "sleep" in comms
    assert ["1", "kubelite-pause"] in rows
    runtime.stop_container(sleeper, 0)
    assert runtime.container_status(sleeper).exit_code == 137


def test_network_namespace_is_a_path_with_loopback_up(runtime: NativeRuntime, sandbox):
    if shutil.which("nsenter") is None or shutil.which("ip") is None:
        pytest.skip("needs nsenter (util-linux) and ip (iproute2)")
    status = runtime.sandbox_status(sandbox)
    assert status.state == SandboxState.READY
    path = status.network_namespace_path
    assert path is not None and os.path.exists(path)
    links = subprocess.run(
        ["nsenter", f"--net={path}", "ip", "-o", "link", "show"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    assert len(links.splitlines()) == 1
    assert "lo:" in links and "UP" in links
    assert os.stat(path).st_ino != os.stat("/proc/self/ns/net").st_ino


def test_host_network_uses_the_nodes_namespaces(runtime: NativeRuntime, busybox_rootfs: Path):
    sandbox = runtime.run_sandbox(pod(namespaces=NamespaceOptions(network=NamespaceMode.NODE)))
    assert runtime.sandbox_status(sandbox).network_namespace_path is None
    _, output = run_to_exit(runtime, sandbox, sh(busybox_rootfs, "hostname; ls /sys/class/net"))
    lines = output.split()
    assert lines[0] == os.uname().nodename
    assert sorted(lines[1:]) == sorted(os.listdir("/sys/class/net"))


def test_pod_files_carry_dns_and_host_aliases(runtime: NativeRuntime, busybox_rootfs: Path):
    sandbox = runtime.run_sandbox(
        pod(
            "dns-pod",
            dns=DnsConfig(
                servers=("10.96.0.10",),
                searches=("default.svc.cluster.local",),
                options=("ndots:5",),
            ),
            host_aliases=(HostAlias("10.1.2.3", ("foo.local", "bar.local")),),
        )
    )
    runtime.set_sandbox_ips(sandbox, ("10.244.1.7",))
    _, output = run_to_exit(runtime, sandbox, sh(busybox_rootfs, "cat /etc/resolv.conf /etc/hosts"))
    assert "nameserver 10.96.0.10" in output
    assert "search default.svc.cluster.local" in output
    assert "options ndots:5" in output
    assert "10.1.2.3\tfoo.local bar.local" in output
    assert "10.244.1.7\tdns-pod" in output
    assert runtime.sandbox_status(sandbox).ips == ("10.244.1.7",)


def test_containers_of_two_pods_do_not_share_the_network(
    runtime: NativeRuntime, busybox_rootfs: Path
):
    first = runtime.run_sandbox(pod("first"))
    second = runtime.run_sandbox(pod("second"))
    server = "mkdir /www; echo served > /www/index.html; exec httpd -f -p 8080 -h /www"
    runtime.start_container(runtime.create_container(first, sh(busybox_rootfs, server)))
    _, output = run_to_exit(
        runtime,
        first,
        sh(busybox_rootfs, retry(f"{HTTP_GET} 2>/dev/null | grep served"), name="same-pod"),
    )
    assert output.strip() == "served"
    _, output = run_to_exit(
        runtime, second, sh(busybox_rootfs, f"{HTTP_GET} 2>&1", name="other-pod")
    )
    assert "refused" in output


def test_stop_sandbox_kills_its_containers(runtime: NativeRuntime, sandbox, busybox_rootfs: Path):
    container_id = runtime.create_container(sandbox, sh(busybox_rootfs, "sleep 60"))
    runtime.start_container(container_id)
    runtime.stop_sandbox(sandbox)
    assert runtime.sandbox_status(sandbox).state == SandboxState.NOT_READY
    assert runtime.container_status(container_id).exit_code == 137
    assert b"".join(logs.read_log(runtime.container_status(container_id).log_path)) == b""
