"""kctl end to end: the real command line against a real API server and etcd."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from deploy.etcd import free_port
from machinery import errors
from tests import objects as o

MANIFEST = textwrap.dedent(
    """\
    apiVersion: v1
    kind: Namespace
    metadata:
      name: shop
    ---
    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: shop-config
      namespace: shop
    data:
      greeting: hello
      colour: blue
    ---
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: shop-web
      namespace: shop
      labels: {app: shop-web}
    spec:
      replicas: 2
      selector:
        matchLabels: {app: shop-web}
      template:
        metadata:
          labels: {app: shop-web}
        spec:
          containers:
          - name: web
            image: httpd:2.4
            ports:
            - containerPort: 80
            envFrom:
            - configMapRef: {name: shop-config}
            readinessProbe:
              httpGet: {path: /, port: 80}
    ---
    apiVersion: v1
    kind: Service
    metadata:
      name: shop-web
      namespace: shop
    spec:
      selector: {app: shop-web}
      ports:
      - port: 80
        targetPort: 80
    """
)


async def kctl(
    kubeconfig: Path,
    *args: str,
    stdin: str | None = None,
    env: dict | None = None,
    server: str | None = None,
) -> tuple[int, str, str]:
    """kctl as its user runs it: servers and the admin's certificate from the client config."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        "--config",
        str(kubeconfig),
        *(["--server", server] if server else []),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), 60)
    return process.returncode, out.decode(), err.decode()


async def test_apply_creates_then_reports_unchanged_then_configures(
    admin_kubeconfig, client, tmp_path
) -> None:
    path = tmp_path / "shop.yaml"
    path.write_text(MANIFEST)
    code, out, err = await kctl(admin_kubeconfig, "apply", "-f", str(path))
    assert code == 0, err
    assert out.splitlines() == [
        "namespace/shop created",
        "configmap/shop-config created",
        "deployment.apps/shop-web created",
        "service/shop-web created",
    ]
    code, out, _ = await kctl(admin_kubeconfig, "apply", "-f", str(path))
    assert code == 0 and all(line.endswith(" unchanged") for line in out.splitlines())

    changed = MANIFEST.replace("  colour: blue\n", "").replace("replicas: 2", "replicas: 3")
    path.write_text(changed)
    code, out, err = await kctl(admin_kubeconfig, "apply", "-f", str(path))
    assert code == 0, err
    assert (
        "configmap/shop-config configured" in out and "deployment.apps/shop-web configured" in out
    )
    cm = await client.get("configmaps", "shop-config", namespace="shop")
    assert cm["data"] == {"greeting": "hello"}  # a field removed from the manifest is removed
    deploy = await client.get("deployments", "shop-web", namespace="shop")
    assert deploy["spec"]["replicas"] == 3


async def test_apply_from_stdin_and_directory(admin_kubeconfig, tmp_path) -> None:
    code, out, err = await kctl(
        admin_kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump(o.configmap("from-stdin"))
    )
    assert (code, out.strip()) == (0, "configmap/from-stdin created"), err
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(o.configmap("dir-a")))
    (tmp_path / "b.json").write_text(json.dumps(o.configmap("dir-b")))
    (tmp_path / "notes.txt").write_text("not a manifest")
    code, out, err = await kctl(admin_kubeconfig, "apply", "-f", str(tmp_path))
    assert code == 0, err
    assert out.splitlines() == ["configmap/dir-a created", "configmap/dir-b created"]


BAD_INPUT = [
    pytest.param("a: b\n  c: d: e\n", "bad.yaml:2:", id="malformed-yaml-names-line-and-column"),
    pytest.param(
        "kind: ConfigMap\nmetadata: {name: x}\n", "apiVersion not set", id="missing-apiversion"
    ),
    pytest.param("- just\n- a list\n", "expected an object", id="not-an-object"),
]


@pytest.mark.parametrize(("text", "message"), BAD_INPUT)
async def test_bad_manifest_is_a_clear_error(
    admin_kubeconfig, tmp_path, text: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, out, err = await kctl(admin_kubeconfig, "apply", "-f", str(path))
    assert code != 0
    assert message in err and "bad.yaml" in err
    assert len(err.strip().splitlines()) == 1


async def test_invalid_object_error_lists_fields_and_fails(admin_kubeconfig) -> None:
    bad = o.deployment("Web_App")
    del bad["spec"]["template"]["spec"]["containers"][0]["image"]
    code, _, err = await kctl(admin_kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump(bad))
    assert code == 1
    assert "Error from server (Invalid)" in err
    assert "spec.template.spec.containers[0].image: Required value" in err
    assert "(from - (document 1))" in err


async def test_get_prints_kubectl_columns_and_formats(admin_kubeconfig, client) -> None:
    await client.create("pods", o.pod("web-1", node="node-1"))
    await client.create("pods", o.pod("web-2"))
    code, out, _ = await kctl(admin_kubeconfig, "get", "pods")
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert lines[1].split()[:4] == ["web-1", "0/1", "Pending", "0"]
    code, out, _ = await kctl(admin_kubeconfig, "get", "po", "-o", "wide")
    assert out.splitlines()[0].split() == [
        "NAME",
        "READY",
        "STATUS",
        "RESTARTS",
        "AGE",
        "IP",
        "NODE",
    ]
    assert out.splitlines()[1].split()[-1] == "node-1"
    code, out, _ = await kctl(admin_kubeconfig, "get", "pods", "-o", "json")
    listed = json.loads(out)
    assert listed["kind"] == "List" and len(listed["items"]) == 2
    code, out, _ = await kctl(admin_kubeconfig, "get", "pod", "web-1", "-o", "yaml")
    assert yaml.safe_load(out)["metadata"]["name"] == "web-1"
    code, out, _ = await kctl(admin_kubeconfig, "get", "pods", "-o", "name")
    assert out.split() == ["pod/web-1", "pod/web-2"]
    code, out, _ = await kctl(
        admin_kubeconfig, "get", "pods", "-A", "--field-selector", "spec.nodeName=node-1"
    )
    assert out.splitlines()[0].split()[0] == "NAMESPACE" and "web-1" in out and "web-2" not in out
    code, out, _ = await kctl(admin_kubeconfig, "get", "ns")
    assert {"default", "kube-system"} <= {line.split()[0] for line in out.splitlines()[1:]}


async def test_get_missing_object_and_unknown_kind_fail(admin_kubeconfig) -> None:
    code, _, err = await kctl(admin_kubeconfig, "get", "pod", "ghost")
    assert code == 1 and err.strip() == 'Error from server (NotFound): pods "ghost" not found'
    code, _, err = await kctl(admin_kubeconfig, "get", "widgets")
    assert code == 1 and 'doesn\'t have a resource type "widgets"' in err


async def test_unreachable_server_error_names_the_address(admin_kubeconfig) -> None:
    dead = f"127.0.0.1:{free_port()}"
    code, _, err = await kctl(admin_kubeconfig, "get", "pods", server=dead)
    assert code == 1
    assert dead in err and "unreachable" in err


async def test_describe_shows_events(admin_kubeconfig, client) -> None:
    pod = await client.create("pods", o.pod("described"))
    event = o.event("described.1", about="described")
    event["involvedObject"]["uid"] = pod["metadata"]["uid"]
    event["reason"] = "FailedScheduling"
    event["type"] = "Warning"
    event["message"] = "0/3 nodes are available: 3 Insufficient cpu."
    await client.create("events", event)
    code, out, err = await kctl(admin_kubeconfig, "describe", "pod", "described")
    assert code == 0, err
    assert "Name:" in out and "described" in out
    assert "FailedScheduling" in out and "0/3 nodes are available: 3 Insufficient cpu." in out


async def test_delete_cascades_and_waits(admin_kubeconfig, client) -> None:
    from machinery.meta import owner_reference

    rs = await client.create("replicasets", o.replicaset("cascade"))
    await client.create("pods", o.pod("cascade-a", owner=owner_reference(rs)))
    code, out, err = await kctl(admin_kubeconfig, "delete", "rs", "cascade", "--cascade=foreground")
    assert code == 0, err
    assert out.strip() == "replicaset.apps/cascade deleted"
    for resource, name in (("replicasets", "cascade"), ("pods", "cascade-a")):
        with pytest.raises(errors.NotFound):
            await client.get(resource, name)
    code, _, err = await kctl(admin_kubeconfig, "delete", "rs", "cascade")
    assert code == 1 and "NotFound" in err
    code, _, _ = await kctl(admin_kubeconfig, "delete", "rs", "cascade", "--ignore-not-found")
    assert code == 0


async def test_create_namespace_and_edit(admin_kubeconfig, client, tmp_path) -> None:
    code, out, _ = await kctl(admin_kubeconfig, "create", "namespace", "team-b")
    assert (code, out.strip()) == (0, "namespace/team-b created")
    await client.create(
        "configmaps", o.configmap("editable", namespace="team-b", data={"k": "old"})
    )
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\nsed -i 's/k: old/k: new/' \"$1\"\n")
    editor.chmod(0o755)
    code, out, err = await kctl(
        admin_kubeconfig, "-n", "team-b", "edit", "cm/editable", env={"EDITOR": str(editor)}
    )
    assert code == 0, err
    assert out.strip() == "configmap/editable edited"
    assert (await client.get("configmaps", "editable", namespace="team-b"))["data"] == {"k": "new"}


async def test_get_watch_prints_changes(admin_kubeconfig, client) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        "--config",
        str(admin_kubeconfig),
        "get",
        "cm",
        "-w",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.sleep(0.5)
        await client.create("configmaps", o.configmap("watched"))
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        while b"watched" not in line:
            line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line.split()[0] == b"watched"
    finally:
        process.terminate()
        await process.wait()
