"""Pods on a real kubelet: status fields, restart policies and back-off, init containers,
graceful stop with preStop and SIGKILL, image pull failures, spec changes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kubelet.config import Backoff
from machinery.clock import parse_rfc3339
from tests.kubelet.conftest import (
    condition,
    container,
    container_status,
    events_for,
    phase_is,
    pod,
    running,
    sh,
    wait_event,
    wait_gone,
    wait_pod,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]


async def test_pod_runs_and_reports_status_as_kubernetes_does(client, kubelet):
    node = kubelet.config.node_name
    await client.create("pods", pod("web", node, sh("main", "echo started; sleep 3600")))
    current = await wait_pod(client, "web", running, what="Running")
    status = current["status"]
    assert status["hostIP"] == "127.0.0.1" and status["hostIPs"] == [{"ip": "127.0.0.1"}]
    assert "podIP" not in status  # loopback-only sandbox: no address to report (network.py)
    assert status["qosClass"] == "BestEffort"
    assert parse_rfc3339(status["startTime"]) > 0
    for kind in (
        "PodScheduled",
        "Initialized",
        "ContainersReady",
        "Ready",
        "PodReadyToStartContainers",
    ):
        assert condition(current, kind)["status"] == "True", kind
        assert condition(current, kind)["lastTransitionTime"]
    entry = container_status(current, "main")
    assert set(entry["state"]) == {"running"}
    assert entry["state"]["running"]["startedAt"]
    assert entry["ready"] is True and entry["started"] is True
    assert entry["restartCount"] == 0
    assert entry["containerID"].startswith("kubelite://")
    assert entry["image"].endswith("/library/busybox:latest")
    assert "@sha256:" in entry["imageID"]
    reasons = [e["reason"] for e in await events_for(client, "web")]
    for reason in ("Pulled", "Created", "Started"):
        assert reason in reasons


POLICIES = [
    # (restartPolicy, exit code, expected phase, expect restarts, terminated reason)
    ("Never", 0, "Succeeded", False, "Completed"),
    ("Never", 3, "Failed", False, "Error"),
    ("OnFailure", 0, "Succeeded", False, "Completed"),
    ("OnFailure", 3, "Running", True, "Error"),
    ("Always", 0, "Running", True, "Completed"),
]


@pytest.mark.parametrize(
    "policy,code,phase,restarts,reason",
    POLICIES,
    ids=[f"{p}-exit-{c}" for p, c, *_ in POLICIES],
)
async def test_restart_policy(client, kubelet, policy, code, phase, restarts, reason):
    node = kubelet.config.node_name
    await client.create("pods", pod("job", node, sh("main", f"exit {code}"), restartPolicy=policy))
    if restarts:
        current = await wait_pod(
            client,
            "job",
            lambda p: container_status(p, "main").get("restartCount", 0) >= 2,
            what="restarted twice",
        )
        entry = container_status(current, "main")
        assert entry["lastState"]["terminated"]["exitCode"] == code
        assert entry["lastState"]["terminated"]["reason"] == reason
        assert current["status"]["phase"] == phase
        await wait_event(client, "job", "BackOff")
        crash = await wait_pod(
            client,
            "job",
            lambda p: (
                container_status(p, "main").get("state", {}).get("waiting", {}).get("reason")
                == "CrashLoopBackOff"
            ),
            what="CrashLoopBackOff",
        )
        assert "back-off" in container_status(crash, "main")["state"]["waiting"]["message"]
    else:
        current = await wait_pod(client, "job", phase_is(phase), what=phase)
        entry = container_status(current, "main")
        assert entry["restartCount"] == 0
        assert entry["state"]["terminated"]["exitCode"] == code
        assert entry["state"]["terminated"]["reason"] == reason
        assert entry["state"]["terminated"]["finishedAt"]
        assert condition(current, "Ready")["reason"] == "PodCompleted"


async def test_init_containers_run_in_order_before_the_app(client, kubelet):
    node = kubelet.config.node_name
    shared = [{"name": "work", "mountPath": "/work"}]
    spec = pod(
        "ordered",
        node,
        sh("app", "cat /work/order; sleep 3600", volumeMounts=shared),
        initContainers=[
            sh("first", "echo first >> /work/order", volumeMounts=shared),
            sh("second", "echo second >> /work/order", volumeMounts=shared),
        ],
        volumes=[{"name": "work", "emptyDir": {}}],
    )
    await client.create("pods", spec)
    current = await wait_pod(client, "ordered", running, what="Running")
    for name in ("first", "second"):
        entry = container_status(current, name, init=True)
        assert entry["state"]["terminated"]["exitCode"] == 0, entry
    assert condition(current, "Initialized")["status"] == "True"
    uid = current["metadata"]["uid"]
    log = kubelet.config.log_dir / f"default_ordered_{uid}" / "app" / "0.log"
    await _wait_file_text(log, "second")
    assert _log_text(log) == ["first", "second"]


async def test_failing_init_container_fails_the_pod_under_never(client, kubelet):
    node = kubelet.config.node_name
    spec = pod(
        "badinit",
        node,
        sh("app", "echo never"),
        restartPolicy="Never",
        initContainers=[sh("setup", "exit 7")],
    )
    await client.create("pods", spec)
    current = await wait_pod(client, "badinit", phase_is("Failed"), what="Failed")
    assert container_status(current, "setup", init=True)["state"]["terminated"]["exitCode"] == 7
    assert "running" not in container_status(current, "app").get("state", {})
    assert condition(current, "Initialized")["status"] == "False"


async def test_failing_init_container_restarts_under_always(client, kubelet):
    node = kubelet.config.node_name
    spec = pod("retryinit", node, sh("app", "sleep 3600"), initContainers=[sh("setup", "exit 1")])
    await client.create("pods", spec)
    current = await wait_pod(
        client,
        "retryinit",
        lambda p: container_status(p, "setup", init=True).get("restartCount", 0) >= 2,
        what="init restarted",
    )
    assert current["status"]["phase"] == "Pending"
    assert container_status(current, "app")["state"]["waiting"]["reason"] == "PodInitializing"


async def test_graceful_stop_runs_prestop_then_sigterm_then_sigkill(client, kubelet, tmp_path):
    node = kubelet.config.node_name
    trace = tmp_path / "trace"
    trace.mkdir()
    script = (
        "trap 'echo term >> /trace/log' TERM; echo up >> /trace/log; while true; do sleep 0.1; done"
    )
    spec = pod(
        "stubborn",
        node,
        sh(
            "main",
            script,
            volumeMounts=[{"name": "trace", "mountPath": "/trace"}],
            lifecycle={
                "preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /trace/log"]}}
            },
        ),
        volumes=[{"name": "trace", "hostPath": {"path": str(trace), "type": "Directory"}}],
        terminationGracePeriodSeconds=3,
    )
    created = await client.create("pods", spec)
    await wait_pod(client, "stubborn", running, what="Running")
    await _wait_file_text(trace / "log", "up")

    final: dict = {}

    async def watch_final() -> None:
        async for event in client.watch(
            "pods",
            namespace="default",
            field_selector="metadata.name=stubborn",
            resource_version=created["metadata"]["resourceVersion"],
        ):
            if event.type == "DELETED":
                return
            final["pod"] = event.object

    watcher = asyncio.create_task(watch_final())
    await client.delete("pods", "stubborn", namespace="default")
    await wait_gone(client, "stubborn")
    await asyncio.wait_for(watcher, 30)
    assert (trace / "log").read_text().split() == ["up", "prestop", "term"]
    terminated = container_status(final["pod"], "main")["state"]["terminated"]
    assert terminated["exitCode"] == 137  # SIGKILL after the grace period: the trap kept it alive
    reasons = [e["reason"] for e in await events_for(client, "stubborn")]
    assert "Killing" in reasons


async def test_missing_image_reports_errimagepull_then_backoff(client, nodes):
    # A longer pull back-off than the suite's, so that ErrImagePull is written before the
    # back-off turns it into ImagePullBackOff even on a busy machine.
    kubelet = await nodes.start(image_backoff=Backoff(initial_s=2.0, maximum_s=4.0))
    node = kubelet.config.node_name
    spec = pod("noimage", node, container("main", image="kubelite-test/does-not-exist:1"))
    await client.create("pods", spec)

    def waiting(p):
        return container_status(p, "main").get("state", {}).get("waiting", {}).get("reason")

    await wait_pod(client, "noimage", lambda p: waiting(p) == "ErrImagePull", what="ErrImagePull")
    current = await wait_pod(
        client, "noimage", lambda p: waiting(p) == "ImagePullBackOff", what="ImagePullBackOff"
    )
    assert current["status"]["phase"] == "Pending"
    reasons = {e["reason"] for e in await events_for(client, "noimage")}
    assert {"Pulling", "Failed", "BackOff"} <= reasons


async def test_changed_image_restarts_the_container(client, kubelet):
    node = kubelet.config.node_name
    await client.create(
        "pods", pod("swap", node, container("main", image="busybox", command=["sleep", "3600"]))
    )
    before = await wait_pod(client, "swap", running, what="Running")
    old_id = container_status(before, "main")["containerID"]
    before["spec"]["containers"][0]["image"] = "httpd"
    await client.update("pods", before)
    after = await wait_pod(
        client,
        "swap",
        lambda p: (
            container_status(p, "main").get("containerID") not in (None, old_id)
            and running(p)
            and container_status(p, "main").get("ready")
        ),
        what="restarted with the new image",
    )
    assert container_status(after, "main")["image"].endswith("/library/httpd:latest")
    assert container_status(after, "main")["restartCount"] == 1


def _log_text(path: Path) -> list[str]:
    from kubelet.runtime.logs import read_log

    return [line.decode().strip() for line in read_log(path)]


async def _wait_file_text(path: Path, text: str, timeout: float = 30) -> None:
    async def poll() -> None:
        while True:
            if path.exists():
                content = "\n".join(_log_text(path)) if path.suffix == ".log" else path.read_text()
                if text in content:
                    return
            await asyncio.sleep(0.1)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        pytest.fail(f"{path} never contained {text!r}")


@pytest.mark.parametrize(
    "policy,expected", [("Always", "Running"), ("Never", "Failed")], ids=["always", "never"]
)
async def test_lost_sandbox_is_replaced_or_ends_the_pod(client, kubelet, policy, expected):
    node = kubelet.config.node_name
    created = await client.create(
        "pods", pod("boxed", node, sh("main", "sleep 3600"), restartPolicy=policy)
    )
    await wait_pod(client, "boxed", running, what="Running")
    held = (await kubelet.runtime.fresh()).pod(created["metadata"]["uid"])
    old_sandbox = held.ready_sandbox()
    assert old_sandbox is not None
    # What a node reboot does to a sandbox: its namespaces and processes are gone.
    await asyncio.to_thread(kubelet.runtime.runtime.stop_sandbox, old_sandbox.id)
    if expected == "Running":
        current = await wait_pod(
            client,
            "boxed",
            lambda p: (
                running(p)
                and container_status(p, "main").get("restartCount") == 1
                and "running" in container_status(p, "main").get("state", {})
            ),
            what="running again in a new sandbox",
        )
        held = (await kubelet.runtime.fresh()).pod(created["metadata"]["uid"])
        assert [s.id for s in held.sandboxes] != [old_sandbox.id]
        last = container_status(current, "main")["lastState"]["terminated"]
        assert last["exitCode"] == 137  # killed with its sandbox, and still reported
    else:
        current = await wait_pod(client, "boxed", phase_is("Failed"), what="Failed")
        assert container_status(current, "main")["restartCount"] == 0


MESSAGES = [
    ("file", "echo -n 'disk full' > /dev/termination-log; exit 2", {}, "disk full"),
    (
        "custom-path",
        "echo -n done > /tmp/why; exit 0",
        {"terminationMessagePath": "/tmp/why"},
        "done",
    ),
    (
        "fallback-to-logs",
        "echo first; echo 'last words'; exit 1",
        {"terminationMessagePolicy": "FallbackToLogsOnError"},
        "first\nlast words\n",
    ),
]


@pytest.mark.parametrize(
    "script,fields,message", [m[1:] for m in MESSAGES], ids=[m[0] for m in MESSAGES]
)
async def test_termination_message(client, kubelet, script, fields, message):
    spec = pod(
        "ending", kubelet.config.node_name, sh("main", script, **fields), restartPolicy="Never"
    )
    await client.create("pods", spec)
    done = await wait_pod(client, "ending", phase_is("Succeeded", "Failed"), what="finished")
    assert container_status(done, "main")["state"]["terminated"]["message"] == message


async def test_active_deadline_fails_the_pod(client, kubelet):
    spec = pod(
        "bounded", kubelet.config.node_name, sh("main", "sleep 3600"), activeDeadlineSeconds=2
    )
    await client.create("pods", spec)
    done = await wait_pod(client, "bounded", phase_is("Failed"), what="Failed")
    assert done["status"]["reason"] == "DeadlineExceeded"
    assert "deadline" in done["status"]["message"]
    assert "terminated" in container_status(done, "main")["state"]


async def test_memory_limit_oom_kill_is_reported(client, kubelet):
    hog = sh(
        "main",
        "x=$(head -c 100000000 /dev/zero | tr '\\000' a); echo ${#x}",
        resources={"limits": {"memory": "32Mi"}},
    )
    await client.create("pods", pod("hog", kubelet.config.node_name, hog, restartPolicy="Never"))
    done = await wait_pod(client, "hog", phase_is("Failed"), what="Failed")
    terminated = container_status(done, "main")["state"]["terminated"]
    assert terminated["reason"] == "OOMKilled"
    assert terminated["exitCode"] == 137
    assert done["status"]["qosClass"] == "Burstable"  # a memory limit alone, no cpu
