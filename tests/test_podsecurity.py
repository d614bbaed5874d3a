"""Pod Security admission: every check at every level, with its exact message, and the
admission path through a real API server (Forbidden, namespace labels, kube-system,
workload templates, updates)."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import grpc
import pytest

from apiserver import podsecurity
from machinery import errors
from machinery.api import api_pb2, api_pb2_grpc
from machinery.client import ApiClient
from tests.objects import deployment, namespace

ENFORCE = podsecurity.ENFORCE_LABEL
SAFE_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
    "capabilities": {"drop": ["ALL"]},
}


def make_pod(
    *,
    spec: dict[str, Any] | None = None,
    ctx: dict[str, Any] | None = None,
    pod_ctx: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    safe: bool = False,
    name: str = "x",
) -> dict[str, Any]:
    """Pod "x" with container "c"; safe: the container passes restricted."""
    security = {**(copy.deepcopy(SAFE_CONTEXT) if safe else {}), **(ctx or {})}
    container: dict[str, Any] = {"name": "c", "image": "busybox"}
    if security:
        container["securityContext"] = security
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [container], **(spec or {})},
    }
    if pod_ctx:
        obj["spec"]["securityContext"] = pod_ctx
    if annotations:
        obj["metadata"]["annotations"] = annotations
    return obj


def without(ctx_field: str, *, pod_ctx: dict[str, Any] | None = None) -> dict[str, Any]:
    """A restricted-safe pod whose container lacks one of the safe settings."""
    pod = make_pod(safe=True, pod_ctx=pod_ctx)
    del pod["spec"]["containers"][0]["securityContext"][ctx_field]
    return pod


def second(name: str, **ctx: Any) -> dict[str, Any]:
    return {"name": name, "image": "busybox", "securityContext": ctx}


def refused(level: str, *parts: str) -> str:
    return f'pods "x" is forbidden: violates PodSecurity "{level}:latest": ' + ", ".join(parts)


B, R = podsecurity.BASELINE, podsecurity.RESTRICTED
HOST_PATH = {"name": "v", "hostPath": {"path": "/srv"}}
PRIVILEGED_C = 'privileged (container "c" must not set securityContext.privileged=true)'
PLAIN_RESTRICTED = (
    'allowPrivilegeEscalation != false (container "c" must set '
    "securityContext.allowPrivilegeEscalation=false)",
    'unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"])',
    'runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true)',
    'seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to '
    '"RuntimeDefault" or "Localhost")',
)

CASES = [
    # -- privileged: nothing is checked
    pytest.param(
        "privileged",
        make_pod(ctx={"privileged": True}, spec={"hostNetwork": True, "volumes": [HOST_PATH]}),
        None,
        id="privileged-allows-everything",
    ),
    # -- baseline
    pytest.param(B, make_pod(), None, id="baseline-plain"),
    pytest.param(
        B, make_pod(ctx={"privileged": True}), refused(B, PRIVILEGED_C), id="baseline-privileged"
    ),
    pytest.param(B, make_pod(ctx={"privileged": False}), None, id="baseline-privileged-false"),
    pytest.param(
        B,
        make_pod(
            spec={
                "initContainers": [second("i", privileged=True)],
                "containers": [second("c", privileged=True), second("d", privileged=True)],
            }
        ),
        refused(
            B,
            'privileged (containers "i", "c", "d" must not set securityContext.privileged=true)',
        ),
        id="baseline-privileged-init-containers-first",
    ),
    pytest.param(
        B,
        make_pod(spec={"hostNetwork": True}),
        refused(B, "host namespaces (hostNetwork=true)"),
        id="baseline-host-network",
    ),
    pytest.param(
        B,
        make_pod(spec={"hostIPC": True, "hostPID": True, "hostNetwork": True}),
        refused(B, "host namespaces (hostNetwork=true, hostPID=true, hostIPC=true)"),
        id="baseline-host-namespaces",
    ),
    pytest.param(
        B,
        make_pod(spec={"volumes": [HOST_PATH]}),
        refused(B, 'hostPath volumes (volume "v")'),
        id="baseline-host-path",
    ),
    pytest.param(
        B,
        make_pod(spec={"volumes": [HOST_PATH, {"name": "w", "hostPath": {"path": "/var"}}]}),
        refused(B, 'hostPath volumes (volumes "v", "w")'),
        id="baseline-host-paths",
    ),
    pytest.param(
        B, make_pod(spec={"volumes": [{"name": "e", "emptyDir": {}}]}), None, id="baseline-emptydir"
    ),
    pytest.param(
        B,
        make_pod(
            spec={
                "containers": [
                    {"name": "c", "image": "b", "ports": [{"containerPort": 80, "hostPort": 8080}]}
                ]
            }
        ),
        refused(B, 'hostPort (container "c" uses hostPort 8080)'),
        id="baseline-host-port",
    ),
    pytest.param(
        B,
        make_pod(
            spec={
                "containers": [
                    {"name": "c", "image": "b", "ports": [{"containerPort": 443, "hostPort": 443}]},
                    {"name": "d", "image": "b", "ports": [{"containerPort": 80, "hostPort": 80}]},
                ]
            }
        ),
        refused(B, 'hostPort (containers "c", "d" use hostPorts 80, 443)'),
        id="baseline-host-ports",
    ),
    pytest.param(
        B,
        make_pod(ctx={"capabilities": {"add": ["NET_ADMIN"]}}),
        refused(
            B,
            'non-default capabilities (container "c" must not include "NET_ADMIN" in '
            "securityContext.capabilities.add)",
        ),
        id="baseline-capability",
    ),
    pytest.param(
        B,
        make_pod(ctx={"capabilities": {"add": ["SYS_ADMIN", "CHOWN", "NET_RAW"]}}),
        refused(
            B,
            'non-default capabilities (container "c" must not include "NET_RAW", "SYS_ADMIN" in '
            "securityContext.capabilities.add)",
        ),
        id="baseline-capabilities-sorted",
    ),
    pytest.param(
        B,
        make_pod(ctx={"capabilities": {"add": sorted(podsecurity.BASELINE_CAPABILITIES)}}),
        None,
        id="baseline-default-capabilities",
    ),
    pytest.param(
        B,
        make_pod(ctx={"procMount": "Unmasked"}),
        refused(
            B, 'procMount (container "c" must not set securityContext.procMount to "Unmasked")'
        ),
        id="baseline-proc-mount",
    ),
    pytest.param(B, make_pod(ctx={"procMount": "Default"}), None, id="baseline-proc-mount-default"),
    pytest.param(
        B,
        make_pod(
            pod_ctx={
                "sysctls": [
                    {"name": "net.ipv4.ping_group_range", "value": "0 1"},
                    {"name": "net.core.somaxconn", "value": "1024"},
                    {"name": "kernel.msgmax", "value": "1"},
                ]
            }
        ),
        refused(B, "forbidden sysctls (net.core.somaxconn, kernel.msgmax)"),
        id="baseline-sysctls",
    ),
    pytest.param(
        B,
        make_pod(pod_ctx={"sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]}),
        None,
        id="baseline-safe-sysctl",
    ),
    pytest.param(
        B,
        make_pod(
            pod_ctx={"seccompProfile": {"type": "Unconfined"}},
            ctx={"seccompProfile": {"type": "Unconfined"}},
        ),
        refused(
            B,
            'seccompProfile (pod must not set securityContext.seccompProfile.type to "Unconfined"; '
            'container "c" must not set securityContext.seccompProfile.type to "Unconfined")',
        ),
        id="baseline-seccomp-unconfined",
    ),
    pytest.param(
        B,
        make_pod(ctx={"seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}}),
        None,
        id="baseline-seccomp-localhost",
    ),
    pytest.param(
        B,
        make_pod(ctx={"appArmorProfile": {"type": "Unconfined"}}),
        refused(
            B,
            'forbidden AppArmor profile (container "c" must not set '
            'securityContext.appArmorProfile.type to "Unconfined")',
        ),
        id="baseline-apparmor-field",
    ),
    pytest.param(
        B,
        make_pod(
            pod_ctx={"appArmorProfile": {"type": "Unconfined"}},
            annotations={"container.apparmor.security.beta.kubernetes.io/c": "unconfined"},
        ),
        refused(
            B,
            "forbidden AppArmor profiles (pod must not set securityContext.appArmorProfile.type "
            'to "Unconfined"; container.apparmor.security.beta.kubernetes.io/c="unconfined")',
        ),
        id="baseline-apparmor-annotation",
    ),
    pytest.param(
        B,
        make_pod(
            annotations={"container.apparmor.security.beta.kubernetes.io/c": "runtime/default"}
        ),
        None,
        id="baseline-apparmor-runtime-default",
    ),
    pytest.param(
        B,
        make_pod(
            pod_ctx={"seLinuxOptions": {"type": "spc_t"}},
            ctx={"seLinuxOptions": {"user": "system_u", "role": "system_r"}},
        ),
        refused(
            B,
            'seLinuxOptions (pod set forbidden securityContext.seLinuxOptions: type "spc_t"; '
            'container "c" set forbidden securityContext.seLinuxOptions: user "system_u", '
            'role "system_r")',
        ),
        id="baseline-selinux",
    ),
    pytest.param(
        B,
        make_pod(ctx={"seLinuxOptions": {"type": "container_t", "level": "s0:c1,c2"}}),
        None,
        id="baseline-selinux-container-type",
    ),
    pytest.param(
        B,
        make_pod(ctx={"privileged": True}, spec={"volumes": [HOST_PATH], "hostPID": True}),
        refused(B, "host namespaces (hostPID=true)", 'hostPath volumes (volume "v")', PRIVILEGED_C),
        id="baseline-every-failure-in-check-order",
    ),
    pytest.param(
        B,
        make_pod(ctx={"runAsUser": 0, "allowPrivilegeEscalation": True}),
        None,
        id="baseline-ignores-restricted-checks",
    ),
    # -- restricted
    pytest.param(R, make_pod(safe=True), None, id="restricted-safe"),
    pytest.param(R, make_pod(), refused(R, *PLAIN_RESTRICTED), id="restricted-plain"),
    pytest.param(
        R,
        make_pod(safe=True, ctx={"allowPrivilegeEscalation": True}),
        refused(R, PLAIN_RESTRICTED[0]),
        id="restricted-privilege-escalation",
    ),
    pytest.param(
        R,
        without("allowPrivilegeEscalation"),
        refused(R, PLAIN_RESTRICTED[0]),
        id="restricted-privilege-escalation-unset",
    ),
    pytest.param(
        R,
        make_pod(
            spec={
                "initContainers": [second("i", **SAFE_CONTEXT)],
                "containers": [second("c", **SAFE_CONTEXT), second("d", **SAFE_CONTEXT)],
            },
            pod_ctx={"runAsNonRoot": False},
        ),
        refused(
            R,
            "runAsNonRoot != true (pod must not set securityContext.runAsNonRoot=false)",
        ),
        id="restricted-pod-run-as-root-overridden-by-containers",
    ),
    pytest.param(
        R,
        without("runAsNonRoot", pod_ctx={"runAsNonRoot": True}),
        None,
        id="restricted-run-as-non-root-from-pod",
    ),
    pytest.param(
        R,
        make_pod(safe=True, ctx={"runAsNonRoot": False}),
        refused(
            R,
            'runAsNonRoot != true (container "c" must not set securityContext.runAsNonRoot=false)',
        ),
        id="restricted-container-run-as-root",
    ),
    pytest.param(
        R,
        make_pod(safe=True, ctx={"runAsUser": 0}, pod_ctx={"runAsUser": 0}),
        refused(
            R,
            'runAsUser=0 (pod must not set runAsUser=0; container "c" must not set runAsUser=0)',
        ),
        id="restricted-run-as-user-0",
    ),
    pytest.param(
        R, make_pod(safe=True, ctx={"runAsUser": 1000}), None, id="restricted-run-as-user-1000"
    ),
    pytest.param(
        R,
        make_pod(safe=True, ctx={"seccompProfile": {"type": "Unconfined"}}),
        refused(
            R,
            'seccompProfile (container "c" must not set securityContext.seccompProfile.type to '
            '"Unconfined")',
        ),
        id="restricted-seccomp-unconfined-reported-once",
    ),
    pytest.param(
        R,
        without("seccompProfile", pod_ctx={"seccompProfile": {"type": "Localhost"}}),
        None,
        id="restricted-seccomp-from-pod",
    ),
    pytest.param(
        R,
        make_pod(safe=True, ctx={"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}),
        None,
        id="restricted-net-bind-service",
    ),
    pytest.param(
        R,
        make_pod(safe=True, ctx={"capabilities": {"drop": ["NET_RAW"], "add": ["SYS_ADMIN"]}}),
        refused(
            R,
            'unrestricted capabilities (container "c" must set '
            'securityContext.capabilities.drop=["ALL"]; container "c" must not include '
            '"SYS_ADMIN" in securityContext.capabilities.add)',
        ),
        id="restricted-capabilities-replace-baseline-form",
    ),
    pytest.param(
        R,
        make_pod(safe=True, ctx={"capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}}),
        refused(
            R,
            'unrestricted capabilities (container "c" must not include "CHOWN" in '
            "securityContext.capabilities.add)",
        ),
        id="restricted-baseline-capability",
    ),
    pytest.param(
        R,
        make_pod(
            safe=True, spec={"volumes": [HOST_PATH, {"name": "w", "hostPath": {"path": "/"}}]}
        ),
        refused(
            R,
            'restricted volume types (volumes "v", "w" use restricted volume type "hostPath")',
        ),
        id="restricted-volume-types-replace-host-path",
    ),
    pytest.param(
        R,
        make_pod(
            safe=True,
            spec={
                "volumes": [
                    {"name": "a", "emptyDir": {}},
                    {"name": "b", "configMap": {"name": "cm"}},
                    {"name": "c", "secret": {"secretName": "s"}},
                    {"name": "d", "downwardAPI": {"items": []}},
                    {"name": "e", "projected": {"sources": []}},
                ]
            },
        ),
        None,
        id="restricted-ordinary-volumes",
    ),
    pytest.param(
        R,
        make_pod(safe=True, spec={"hostNetwork": True}),
        refused(R, "host namespaces (hostNetwork=true)"),
        id="restricted-includes-baseline",
    ),
]


@pytest.mark.parametrize(("level", "pod", "message"), CASES)
def test_checks(level: str, pod: dict[str, Any], message: str | None):
    refusal = podsecurity.PodSecurity(default_level=level).admit(None, pod)
    if message is None:
        assert refusal is None
    else:
        assert isinstance(refusal, errors.Forbidden)
        assert refusal.message == message
        assert (refusal.kind, refusal.name) == ("Pod", "x")


@pytest.mark.parametrize(
    ("labels", "level"),
    [
        pytest.param({}, B, id="unlabelled-is-the-default"),
        pytest.param({ENFORCE: "restricted"}, R, id="labelled"),
        pytest.param({ENFORCE: "privileged"}, "privileged", id="privileged"),
        pytest.param({ENFORCE: "strict"}, R, id="unknown-fails-closed"),
    ],
)
def test_level_of_a_namespace(labels, level):
    ns = {"metadata": {"name": "n", "labels": labels}}
    assert podsecurity.PodSecurity().level_of(ns) == level


def test_unknown_default_level_is_refused():
    with pytest.raises(ValueError, match="unknown Pod Security level 'strict'"):
        podsecurity.PodSecurity(default_level="strict")


@pytest.mark.parametrize(
    ("labels", "causes"),
    [
        pytest.param({ENFORCE: "baseline", f"{ENFORCE}-version": "v1.30"}, [], id="valid"),
        pytest.param({f"{ENFORCE}-version": "latest"}, [], id="latest"),
        pytest.param(
            {ENFORCE: "strict"},
            [
                f'metadata.labels[{ENFORCE}]: Unsupported value: "strict": supported values: '
                '"privileged", "baseline", "restricted"'
            ],
            id="unknown-level",
        ),
        pytest.param(
            {"pod-security.kubernetes.io/warn-version": "1.30"},
            [
                "metadata.labels[pod-security.kubernetes.io/warn-version]: Invalid value: "
                '"1.30": must be "latest" or "v1.<minor>"'
            ],
            id="bad-version",
        ),
    ],
)
def test_namespace_label_causes(labels, causes):
    assert [str(c) for c in podsecurity.label_causes(labels)] == causes


# -- through the API server ----------------------------------------------------------------


@pytest.fixture
async def server(etcd, etcd_prefix, cluster_pki):
    """An API server with the product's defaults for Pod Security."""
    from apiserver.server import ApiServer, ServerConfig

    api = ApiServer(
        ServerConfig(
            etcd_endpoints=[etcd.endpoint],
            listen="127.0.0.1:0",
            prefix=etcd_prefix,
            compaction_interval=0,
            **cluster_pki.server_settings(),
        )
    )
    await api.start()
    await asyncio.wait_for(api.ready.wait(), 30)
    yield api
    await api.stop(grace=0)


@pytest.fixture
async def api(server, cluster_pki):
    client = ApiClient(
        [f"127.0.0.1:{server.port}"], timeout=10, credentials=cluster_pki.admin_credentials
    )
    yield client
    await client.close()


def in_namespace(pod: dict[str, Any], ns: str) -> dict[str, Any]:
    pod["metadata"]["namespace"] = ns
    return pod


async def labelled_namespace(api: ApiClient, name: str, level: str) -> None:
    ns = namespace(name)
    ns["metadata"]["labels"] = {ENFORCE: level}
    await api.create("namespaces", ns)


async def test_default_namespace_is_baseline_and_refusal_is_permission_denied(
    server, api, cluster_pki
):
    pod = make_pod(ctx={"privileged": True}, spec={"volumes": [HOST_PATH]})
    with pytest.raises(errors.Forbidden) as caught:
        await api.create("pods", pod)
    assert caught.value.message == refused(B, 'hostPath volumes (volume "v")', PRIVILEGED_C)
    with pytest.raises(errors.NotFound):
        await api.get("pods", "x", namespace="default")
    # The wire status is PERMISSION_DENIED, not INTERNAL or INVALID_ARGUMENT.
    admin = cluster_pki.admin_credentials.channel_credentials()
    async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", admin) as channel:
        stub = api_pb2_grpc.ObjectsStub(channel)
        request = api_pb2.CreateRequest(
            resource="pods", namespace="default", object=json.dumps(pod).encode()
        )
        with pytest.raises(grpc.aio.AioRpcError) as rpc:
            await stub.Create(request, timeout=10)
    assert rpc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await api.create("pods", make_pod(name="plain"))


async def test_namespace_label_sets_the_level(api):
    await labelled_namespace(api, "locked", "restricted")
    with pytest.raises(errors.Forbidden) as caught:
        await api.create("pods", in_namespace(make_pod(), "locked"))
    assert caught.value.message == refused(R, *PLAIN_RESTRICTED)
    await api.create("pods", in_namespace(make_pod(safe=True), "locked"))

    await labelled_namespace(api, "open", "privileged")
    await api.create(
        "pods", in_namespace(make_pod(ctx={"privileged": True}, spec={"hostPID": True}), "open")
    )


async def test_kube_system_is_privileged(api):
    ns = await api.get("namespaces", "kube-system")
    assert ns["metadata"]["labels"][ENFORCE] == "privileged"
    await api.create("pods", in_namespace(make_pod(spec={"hostNetwork": True}), "kube-system"))
    default = await api.get("namespaces", "default")
    assert ENFORCE not in (default["metadata"].get("labels") or {})


async def test_workload_templates_are_admitted_and_their_pods_are_not(api):
    deploy = deployment("web")
    deploy["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    await api.create("deployments", deploy)
    with pytest.raises(errors.Forbidden):
        await api.create("pods", make_pod(ctx={"privileged": True}))


async def test_updates_are_judged_when_the_spec_changes(api):
    await api.create("namespaces", namespace("tightened"))
    pod = await api.create("pods", in_namespace(make_pod(), "tightened"))
    await api.patch("namespaces", "tightened", {"metadata": {"labels": {ENFORCE: "restricted"}}})
    # Metadata-only changes (and so finalizers and deletion) still go through.
    pod = await api.patch(
        "pods", "x", {"metadata": {"labels": {"tier": "web"}}}, namespace="tightened"
    )
    assert pod["metadata"]["labels"] == {"tier": "web"}
    pod["spec"]["containers"][0]["image"] = "busybox:2"
    with pytest.raises(errors.Forbidden) as caught:
        await api.update("pods", pod)
    assert caught.value.message == refused(R, *PLAIN_RESTRICTED)
    stored = await api.get("pods", "x", namespace="tightened")
    assert stored["spec"]["containers"][0]["image"] == "busybox"


async def test_bad_namespace_labels_are_invalid(api):
    ns = namespace("typo")
    ns["metadata"]["labels"] = {ENFORCE: "Restricted"}
    with pytest.raises(errors.Invalid) as caught:
        await api.create("namespaces", ns)
    assert [c.field for c in caught.value.causes] == [f"metadata.labels[{ENFORCE}]"]
    await api.create("namespaces", namespace("typo"))
    with pytest.raises(errors.Invalid):
        await api.patch("namespaces", "typo", {"metadata": {"labels": {ENFORCE: "none"}}})


async def test_default_level_is_configurable(etcd, etcd_prefix, cluster_pki):
    from apiserver.server import ApiServer, ServerConfig

    server = ApiServer(
        ServerConfig(
            etcd_endpoints=[etcd.endpoint],
            listen="127.0.0.1:0",
            prefix=etcd_prefix,
            compaction_interval=0,
            pod_security_default_level="restricted",
            **cluster_pki.server_settings(),
        )
    )
    await server.start()
    try:
        await asyncio.wait_for(server.ready.wait(), 30)
        address = f"127.0.0.1:{server.port}"
        admin = cluster_pki.admin_credentials
        async with ApiClient([address], timeout=10, credentials=admin) as client:
            with pytest.raises(errors.Forbidden, match='"restricted:latest"'):
                await client.create("pods", make_pod())
            await client.create("pods", make_pod(safe=True))
    finally:
        await server.stop(grace=0)
