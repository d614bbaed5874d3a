"""kctl run, scale, set image and rollout end to end.

The real kctl runs as a subprocess against a real API server and etcd, with
the ReplicaSet and Deployment controllers running in the test process and
the test marking Pods ready in place of a kubelet.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from machinery import meta
from machinery.client import ApiClient
from machinery.clock import FakeClock
from tests import objects as o
from tests.controllers.workload_harness import (
    Controllers,
    Readier,
    eventually,
    image_of,
    owned_by,
    wait_for_object,
)


def _argv(kubeconfig: Path, args: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "cli.main", "--config", str(kubeconfig), *args]


async def kctl(kubeconfig: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *_argv(kubeconfig, args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


def _complete(want: int):
    def check(d: dict) -> bool:
        status = d.get("status") or {}
        return (
            status.get("observedGeneration") == d["metadata"]["generation"]
            and status.get("updatedReplicas") == want
            and status.get("replicas") == want
            and status.get("availableReplicas") == want
        )

    return check


async def test_run_builds_the_deployment_from_its_flags(
    admin_kubeconfig, client: ApiClient
) -> None:
    code, out, err = await kctl(
        admin_kubeconfig,
        "run",
        "httpd-app",
        "--image=httpd:2.4",
        "--replicas=2",
        "--port=80",
        "--env",
        "MODE=demo",
        "--env=GREETING=hello world",
        "--labels",
        "app=httpd,tier=web",
        "--requests",
        "cpu=100m,memory=64Mi",
        "--limits=cpu=500m",
        "--",
        "httpd-foreground",
        "-X",
    )
    assert (code, out.strip()) == (0, "deployment.apps/httpd-app created"), err
    d = await client.get("deployments", "httpd-app")
    assert d["spec"]["replicas"] == 2
    assert d["spec"]["selector"] == {"matchLabels": {"app": "httpd", "tier": "web"}}
    assert d["metadata"]["labels"] == d["spec"]["template"]["metadata"]["labels"]
    [container] = d["spec"]["template"]["spec"]["containers"]
    assert (container["name"], container["image"]) == ("httpd-app", "httpd:2.4")
    assert container["ports"][0]["containerPort"] == 80
    assert container["env"] == [
        {"name": "MODE", "value": "demo"},
        {"name": "GREETING", "value": "hello world"},
    ]
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "64Mi"},
        "limits": {"cpu": "500m"},
    }
    assert container["args"] == ["httpd-foreground", "-X"] and "command" not in container

    code, out, err = await kctl(
        admin_kubeconfig, "run", "sleeper", "--image=busybox", "--command", "--", "sleep", "3600"
    )
    assert code == 0, err
    sleeper = await client.get("deployments", "sleeper")
    assert sleeper["spec"]["selector"] == {"matchLabels": {"app": "sleeper"}}
    assert sleeper["spec"]["template"]["spec"]["containers"][0]["command"] == ["sleep", "3600"]


BAD_RUNS = [
    pytest.param(["run", "web"], "--image is required", id="no-image"),
    pytest.param(
        ["run", "web", "--image=x", "--replicas=-1"],
        "--replicas must not be negative",
        id="negative-replicas",
    ),
    pytest.param(
        ["run", "web", "--image=x", "--port=70000"],
        "--port must be between 1 and 65535",
        id="bad-port",
    ),
    pytest.param(
        ["run", "web", "--image=x", "--env", "NOVALUE"],
        "--env: 'NOVALUE' is not KEY=VALUE",
        id="bad-env",
    ),
    pytest.param(
        ["run", "web", "--image=x", "--labels", "app"],
        "--labels: 'app' is not KEY=VALUE",
        id="label-without-value",
    ),
    pytest.param(
        ["run", "web", "--image=x", "--labels", "app=-x-"],
        "invalid label app=-x-",
        id="bad-label-value",
    ),
    pytest.param(
        ["run", "web", "--image=x", "--requests", "cpu=lots"],
        "--requests: cpu=lots: not a quantity",
        id="bad-quantity",
    ),
    pytest.param(
        ["run", "Web_App", "--image=x"], "Error from server (Invalid)", id="bad-name-from-server"
    ),
]


@pytest.mark.parametrize(("args", "message"), BAD_RUNS)
async def test_run_refuses_bad_input(
    admin_kubeconfig, client: ApiClient, args: list[str], message: str
) -> None:
    code, _, err = await kctl(admin_kubeconfig, *args)
    assert code != 0
    assert message in err
    assert (await client.list("deployments", namespace="default")).items == []


async def test_scale_and_set_image_roll_the_deployment(admin_kubeconfig, client: ApiClient) -> None:
    async with Controllers(client), Readier(client):
        code, _, err = await kctl(admin_kubeconfig, "run", "web", "--image=httpd:1")
        assert code == 0, err
        code, out, err = await kctl(admin_kubeconfig, "scale", "deploy/web", "--replicas=3")
        assert (code, out.strip()) == (0, "deployment.apps/web scaled"), err
        await wait_for_object(client, "deployments", "web", _complete(3))

        code, out, err = await kctl(admin_kubeconfig, "set", "image", "deploy/web", "web=httpd:2")
        assert (code, out.strip()) == (0, "deployment.apps/web image updated"), err
        await wait_for_object(client, "deployments", "web", _complete(3))
        pods = await client.list("pods", namespace="default", label_selector="app=web")
        assert {image_of(p) for p in pods.items if not meta.is_deleting(p)} == {"httpd:2"}
        code, out, _ = await kctl(
            admin_kubeconfig, "set", "image", "deployment", "web", "web=httpd:2"
        )
        assert (code, out.strip()) == (0, "deployment.apps/web image unchanged")

    code, _, err = await kctl(admin_kubeconfig, "set", "image", "deploy/web", "sidecar=envoy")
    assert code == 1 and 'unable to find container named "sidecar"' in err and "web" in err
    code, _, err = await kctl(admin_kubeconfig, "scale", "pod/web", "--replicas=2")
    assert code == 1 and "scale works on deployments and replicasets, not on pods" in err
    code, _, err = await kctl(
        admin_kubeconfig, "scale", "deploy/web", "--replicas=1", "--current-replicas=5"
    )
    assert code == 1 and "expected 5 replicas of deployment.apps/web, found 3" in err
    code, _, err = await kctl(admin_kubeconfig, "scale", "deploy/ghost", "--replicas=1")
    assert code == 1 and 'Error from server (NotFound): deployments "ghost" not found' in err


async def test_scale_a_replicaset(admin_kubeconfig, client: ApiClient) -> None:
    async with Controllers(client, deployments=False):
        rs = await client.create("replicasets", o.replicaset("batch", replicas=1))
        code, out, err = await kctl(admin_kubeconfig, "scale", "rs", "batch", "--replicas=4")
        assert (code, out.strip()) == (0, "replicaset.apps/batch scaled"), err
        await eventually(lambda: _has_pods(client, rs, 4))


async def _has_pods(client: ApiClient, owner: dict, want: int) -> bool:
    return len(await owned_by(client, "pods", owner)) == want


async def test_rollout_status_follows_until_complete(admin_kubeconfig, client: ApiClient) -> None:
    allowed = {"httpd:1"}
    readier = Readier(client, wanted=lambda pod: image_of(pod) in allowed)
    async with Controllers(client), readier:
        await kctl(admin_kubeconfig, "run", "web", "--image=httpd:1", "--replicas=3")
        await wait_for_object(client, "deployments", "web", _complete(3))
        await kctl(admin_kubeconfig, "set", "image", "deploy/web", "web=httpd:2")
        await wait_for_object(
            client,
            "deployments",
            "web",
            lambda d: (
                d["status"]["observedGeneration"] == d["metadata"]["generation"]
                and d["status"].get("updatedReplicas", 0) >= 1
            ),
        )
        process = await asyncio.create_subprocess_exec(
            *_argv(admin_kubeconfig, ("rollout", "status", "deploy/web")),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            first = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
            assert first.startswith('Waiting for deployment "web" rollout to finish: '), first
            allowed.add("httpd:2")
            await readier.ready_all()
            out, err = await asyncio.wait_for(process.communicate(), 60)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    lines = [first.strip(), *out.decode().splitlines()]
    assert process.returncode == 0, err
    assert lines[-1] == 'deployment "web" successfully rolled out'
    assert all(line.startswith("Waiting for deployment") for line in lines[:-1])
    assert all(a != b for a, b in zip(lines, lines[1:], strict=False))  # per change, not event

    code, out, _ = await kctl(admin_kubeconfig, "rollout", "status", "deploy/web")
    assert (code, out.strip()) == (0, 'deployment "web" successfully rolled out')


async def test_rollout_status_fails_when_the_deadline_passes(
    admin_kubeconfig, client: ApiClient
) -> None:
    clock = FakeClock()
    async with Controllers(client, clock=clock):
        spec = o.deployment("stuck", replicas=1)
        spec["spec"]["progressDeadlineSeconds"] = 30
        await client.create("deployments", spec)
        await wait_for_object(
            client, "deployments", "stuck", lambda d: d["status"].get("replicas") == 1, clock=clock
        )
        code, _, err = await kctl(
            admin_kubeconfig, "rollout", "status", "deploy/stuck", "--timeout=0.5"
        )
        assert code == 1 and 'timed out after 0.5s waiting for deployment "stuck"' in err
        await clock.advance(31)
        await wait_for_object(
            client,
            "deployments",
            "stuck",
            lambda d: any(
                c.get("reason") == "ProgressDeadlineExceeded" for c in d["status"]["conditions"]
            ),
            clock=clock,
        )
    code, out, err = await kctl(admin_kubeconfig, "rollout", "status", "deploy/stuck")
    assert code == 1
    assert err.strip() == 'error: deployment "stuck" exceeded its progress deadline'


async def test_rollout_history_and_undo(admin_kubeconfig, client: ApiClient) -> None:
    async with Controllers(client), Readier(client):
        await kctl(admin_kubeconfig, "run", "web", "--image=httpd:1")
        await wait_for_object(client, "deployments", "web", _complete(1))
        await kctl(admin_kubeconfig, "set", "image", "deploy/web", "web=httpd:2")
        await wait_for_object(client, "deployments", "web", _revision("2"))

        code, out, err = await kctl(admin_kubeconfig, "rollout", "history", "deploy/web")
        assert code == 0, err
        assert [line.split() for line in out.splitlines()] == [
            ["deployment.apps/web"],
            ["REVISION", "CHANGE-CAUSE"],
            ["1", "<none>"],
            ["2", "<none>"],
        ]
        code, out, _ = await kctl(
            admin_kubeconfig, "rollout", "history", "deploy/web", "--revision=1"
        )
        assert code == 0 and "with revision #1" in out and "image: httpd:1" in out

        code, out, err = await kctl(admin_kubeconfig, "rollout", "undo", "deploy/web")
        assert (code, out.strip()) == (0, "deployment.apps/web rolled back"), err
        d = await wait_for_object(client, "deployments", "web", _revision("3"))
        assert d["spec"]["template"]["spec"]["containers"][0]["image"] == "httpd:1"
        code, out, _ = await kctl(admin_kubeconfig, "rollout", "history", "deploy/web")
        assert [line.split()[0] for line in out.splitlines()[2:]] == ["2", "3"]

        code, out, _ = await kctl(
            admin_kubeconfig, "rollout", "undo", "deploy/web", "--to-revision=3"
        )
        assert code == 0 and "skipped rollback (current template already matches revision 3)" in out
        code, _, err = await kctl(
            admin_kubeconfig, "rollout", "undo", "deploy/web", "--to-revision=99"
        )
        assert code == 1 and "unable to find specified revision 99 in history" in err
        code, out, err = await kctl(
            admin_kubeconfig, "rollout", "undo", "deploy/web", "--to-revision=2"
        )
        assert code == 0, err
        d = await wait_for_object(client, "deployments", "web", _revision("4"))
        assert d["spec"]["template"]["spec"]["containers"][0]["image"] == "httpd:2"
    code, _, err = await kctl(admin_kubeconfig, "rollout", "history", "rs/web")
    assert code == 1 and "rollout works on deployments, not on replicasets" in err


def _revision(revision: str):
    def check(d: dict) -> bool:
        return _complete(d["spec"]["replicas"])(d) and (
            meta.annotations_of(d).get("deployment.kubernetes.io/revision") == revision
        )

    return check


async def test_rollout_pause_and_resume(admin_kubeconfig, client: ApiClient) -> None:
    async with Controllers(client), Readier(client):
        await kctl(admin_kubeconfig, "run", "web", "--image=httpd:1", "--replicas=2")
        await wait_for_object(client, "deployments", "web", _complete(2))
        code, out, err = await kctl(admin_kubeconfig, "rollout", "pause", "deploy/web")
        assert (code, out.strip()) == (0, "deployment.apps/web paused"), err
        code, _, err = await kctl(admin_kubeconfig, "rollout", "pause", "deploy/web")
        assert code == 1 and "deployment.apps/web is already paused" in err

        await kctl(admin_kubeconfig, "set", "image", "deploy/web", "web=httpd:2")
        code, _, err = await kctl(admin_kubeconfig, "rollout", "undo", "deploy/web")
        assert code == 1 and "cannot roll back the paused deployment.apps/web" in err
        d = await wait_for_object(
            client,
            "deployments",
            "web",
            lambda d: d["status"]["observedGeneration"] == d["metadata"]["generation"],
        )
        assert len(await owned_by(client, "replicasets", d)) == 1  # nothing rolled out

        code, out, err = await kctl(admin_kubeconfig, "rollout", "resume", "deploy/web")
        assert (code, out.strip()) == (0, "deployment.apps/web resumed"), err
        code, out, err = await kctl(
            admin_kubeconfig, "rollout", "status", "deploy/web", "--timeout=60"
        )
        assert code == 0 and out.splitlines()[-1] == 'deployment "web" successfully rolled out', err
        code, _, err = await kctl(admin_kubeconfig, "rollout", "resume", "deploy/web")
        assert code == 1 and "deployment.apps/web is not paused" in err
