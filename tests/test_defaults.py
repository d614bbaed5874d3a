"""Server-side defaults: each default by the path it fills, idempotency, and robustness.

A row names the object it starts from and the field it expects afterwards;
the objects are minimal so that every default shows, and client-given values
must survive untouched.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from machinery import defaults, validation
from tests.test_validation import MANIFESTS, manifest


def pod(**spec: Any) -> dict[str, Any]:
    body = {"containers": [{"name": "app", "image": "busybox:1.36"}], **spec}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": body}


def container(**fields: Any) -> dict[str, Any]:
    return pod(containers=[{"name": "app", "image": "busybox:1.36", **fields}])


def deployment(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "httpd"}]},
            },
            **spec,
        },
    }


def replicaset() -> dict[str, Any]:
    obj = deployment()
    obj["kind"] = "ReplicaSet"
    return obj


def service(**spec: Any) -> dict[str, Any]:
    body = {"selector": {"app": "web"}, "ports": [{"port": 80}], **spec}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": body}


def simple(kind: str, api_version: str = "v1", **body: Any) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}, **body}


def get(obj: Any, path: str) -> Any:
    for step in path.replace("[", ".[").split("."):
        obj = obj[int(step[1:-1])] if step.startswith("[") else obj[step]
    return obj


C0 = "spec.containers[0]"
TS = "spec.template.spec"

CASES: list[tuple[str, dict[str, Any], str, Any]] = [
    # metadata
    ("namespace-defaults-to-default", pod(), "metadata.namespace", "default"),
    (
        "namespace-kept",
        {**pod(), "metadata": {"name": "w", "namespace": "shop"}},
        "metadata.namespace",
        "shop",
    ),
    (
        "empty-namespace-defaults",
        {**pod(), "metadata": {"name": "w", "namespace": ""}},
        "metadata.namespace",
        "default",
    ),
    ("event-gets-a-namespace", simple("Event", involvedObject={}), "metadata.namespace", "default"),
    # pod spec
    ("restart-policy-always", pod(), "spec.restartPolicy", "Always"),
    ("restart-policy-kept", pod(restartPolicy="Never"), "spec.restartPolicy", "Never"),
    ("dns-policy-cluster-first", pod(), "spec.dnsPolicy", "ClusterFirst"),
    ("grace-period-30", pod(), "spec.terminationGracePeriodSeconds", 30),
    (
        "grace-period-zero-kept",
        pod(terminationGracePeriodSeconds=0),
        "spec.terminationGracePeriodSeconds",
        0,
    ),
    ("scheduler-name", pod(), "spec.schedulerName", "default-scheduler"),
    ("security-context-empty", pod(), "spec.securityContext", {}),
    ("service-links-enabled", pod(), "spec.enableServiceLinks", True),
    ("service-links-kept", pod(enableServiceLinks=False), "spec.enableServiceLinks", False),
    # containers
    ("pull-always-for-latest", container(image="httpd:latest"), f"{C0}.imagePullPolicy", "Always"),
    ("pull-always-untagged", container(image="httpd"), f"{C0}.imagePullPolicy", "Always"),
    (
        "pull-always-untagged-on-registry-port",
        container(image="registry.local:5000/web"),
        f"{C0}.imagePullPolicy",
        "Always",
    ),
    (
        "pull-if-not-present-tagged",
        container(image="httpd:2.4"),
        f"{C0}.imagePullPolicy",
        "IfNotPresent",
    ),
    (
        "pull-if-not-present-tagged-on-registry-port",
        container(image="registry.local:5000/web:1.0"),
        f"{C0}.imagePullPolicy",
        "IfNotPresent",
    ),
    (
        "pull-if-not-present-by-digest",
        container(image="httpd@sha256:" + "ab" * 32),
        f"{C0}.imagePullPolicy",
        "IfNotPresent",
    ),
    (
        "pull-always-latest-with-digest",
        container(image="httpd:latest@sha256:" + "ab" * 32),
        f"{C0}.imagePullPolicy",
        "Always",
    ),
    (
        "pull-policy-kept",
        container(image="httpd", imagePullPolicy="Never"),
        f"{C0}.imagePullPolicy",
        "Never",
    ),
    (
        "init-container-defaults-too",
        pod(initContainers=[{"name": "i", "image": "busybox"}]),
        "spec.initContainers[0].imagePullPolicy",
        "Always",
    ),
    (
        "termination-message-path",
        container(),
        f"{C0}.terminationMessagePath",
        "/dev/termination-log",
    ),
    ("termination-message-policy", container(), f"{C0}.terminationMessagePolicy", "File"),
    (
        "container-port-tcp",
        container(ports=[{"containerPort": 80}]),
        f"{C0}.ports[0].protocol",
        "TCP",
    ),
    (
        "container-port-udp-kept",
        container(ports=[{"containerPort": 53, "protocol": "UDP"}]),
        f"{C0}.ports[0].protocol",
        "UDP",
    ),
    (
        "host-network-host-port",
        pod(
            hostNetwork=True,
            containers=[{"name": "a", "image": "x", "ports": [{"containerPort": 80}]}],
        ),
        f"{C0}.ports[0].hostPort",
        80,
    ),
    (
        "requests-from-limits",
        container(resources={"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}}),
        f"{C0}.resources.requests",
        {"cpu": "500m", "memory": "1Gi"},
    ),
    (
        "requests-created-from-limits",
        container(resources={"limits": {"cpu": "1"}}),
        f"{C0}.resources.requests",
        {"cpu": "1"},
    ),
    (
        "field-ref-api-version",
        container(env=[{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]),
        f"{C0}.env[0].valueFrom.fieldRef.apiVersion",
        "v1",
    ),
    # probes and hooks
    (
        "probe-timeout",
        container(livenessProbe={"tcpSocket": {"port": 80}}),
        f"{C0}.livenessProbe.timeoutSeconds",
        1,
    ),
    (
        "probe-period",
        container(readinessProbe={"tcpSocket": {"port": 80}}),
        f"{C0}.readinessProbe.periodSeconds",
        10,
    ),
    (
        "probe-success-threshold",
        container(startupProbe={"tcpSocket": {"port": 80}}),
        f"{C0}.startupProbe.successThreshold",
        1,
    ),
    (
        "probe-failure-threshold",
        container(livenessProbe={"tcpSocket": {"port": 80}}),
        f"{C0}.livenessProbe.failureThreshold",
        3,
    ),
    (
        "probe-period-kept",
        container(livenessProbe={"tcpSocket": {"port": 80}, "periodSeconds": 3}),
        f"{C0}.livenessProbe.periodSeconds",
        3,
    ),
    (
        "probe-no-initial-delay",
        container(livenessProbe={"tcpSocket": {"port": 80}}),
        f"{C0}.livenessProbe",
        {
            "tcpSocket": {"port": 80},
            "timeoutSeconds": 1,
            "periodSeconds": 10,
            "successThreshold": 1,
            "failureThreshold": 3,
        },
    ),
    (
        "http-get-path",
        container(readinessProbe={"httpGet": {"port": 80}}),
        f"{C0}.readinessProbe.httpGet.path",
        "/",
    ),
    (
        "http-get-scheme",
        container(readinessProbe={"httpGet": {"port": 80}}),
        f"{C0}.readinessProbe.httpGet.scheme",
        "HTTP",
    ),
    (
        "grpc-service-empty",
        container(livenessProbe={"grpc": {"port": 9000}}),
        f"{C0}.livenessProbe.grpc.service",
        "",
    ),
    (
        "pre-stop-http-get",
        container(lifecycle={"preStop": {"httpGet": {"port": 80}}}),
        f"{C0}.lifecycle.preStop.httpGet",
        {"port": 80, "path": "/", "scheme": "HTTP"},
    ),
    # volumes
    (
        "volume-without-source-is-empty-dir",
        pod(volumes=[{"name": "d"}]),
        "spec.volumes[0].emptyDir",
        {},
    ),
    (
        "empty-dir-kept",
        pod(volumes=[{"name": "d", "emptyDir": {"medium": "Memory"}}]),
        "spec.volumes[0].emptyDir",
        {"medium": "Memory"},
    ),
    (
        "config-map-default-mode",
        pod(volumes=[{"name": "c", "configMap": {"name": "c"}}]),
        "spec.volumes[0].configMap.defaultMode",
        420,
    ),
    (
        "config-map-mode-kept",
        pod(volumes=[{"name": "c", "configMap": {"name": "c", "defaultMode": 256}}]),
        "spec.volumes[0].configMap.defaultMode",
        256,
    ),
    (
        "secret-default-mode",
        pod(volumes=[{"name": "s", "secret": {"secretName": "s"}}]),
        "spec.volumes[0].secret.defaultMode",
        420,
    ),
    (
        "projected-default-mode",
        pod(volumes=[{"name": "p", "projected": {"sources": []}}]),
        "spec.volumes[0].projected.defaultMode",
        420,
    ),
    (
        "host-path-type-empty",
        pod(volumes=[{"name": "h", "hostPath": {"path": "/srv"}}]),
        "spec.volumes[0].hostPath.type",
        "",
    ),
    # workloads
    ("replicaset-replicas-1", replicaset(), "spec.replicas", 1),
    ("replicaset-template-defaults", replicaset(), f"{TS}.restartPolicy", "Always"),
    ("deployment-replicas-1", deployment(), "spec.replicas", 1),
    ("deployment-replicas-zero-kept", deployment(replicas=0), "spec.replicas", 0),
    (
        "deployment-strategy",
        deployment(),
        "spec.strategy",
        {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
    ),
    (
        "deployment-partial-rolling-update",
        deployment(strategy={"rollingUpdate": {"maxSurge": 2}}),
        "spec.strategy.rollingUpdate",
        {"maxSurge": 2, "maxUnavailable": "25%"},
    ),
    (
        "deployment-recreate-has-no-rolling-update",
        deployment(strategy={"type": "Recreate"}),
        "spec.strategy",
        {"type": "Recreate"},
    ),
    ("deployment-revision-history", deployment(), "spec.revisionHistoryLimit", 10),
    ("deployment-progress-deadline", deployment(), "spec.progressDeadlineSeconds", 600),
    ("deployment-min-ready", deployment(), "spec.minReadySeconds", 0),
    (
        "deployment-template-pull-policy",
        deployment(),
        f"{TS}.containers[0].imagePullPolicy",
        "Always",
    ),
    ("deployment-template-dns-policy", deployment(), f"{TS}.dnsPolicy", "ClusterFirst"),
    ("deployment-template-grace-period", deployment(), f"{TS}.terminationGracePeriodSeconds", 30),
    # services and endpoints
    ("service-type-cluster-ip", service(), "spec.type", "ClusterIP"),
    ("service-session-affinity-none", service(), "spec.sessionAffinity", "None"),
    ("service-port-tcp", service(), "spec.ports[0].protocol", "TCP"),
    ("service-target-port-is-port", service(), "spec.ports[0].targetPort", 80),
    (
        "service-target-port-kept",
        service(ports=[{"port": 80, "targetPort": "http"}]),
        "spec.ports[0].targetPort",
        "http",
    ),
    (
        "service-target-port-zero-is-port",
        service(ports=[{"port": 80, "targetPort": 0}]),
        "spec.ports[0].targetPort",
        80,
    ),
    ("service-internal-traffic-cluster", service(), "spec.internalTrafficPolicy", "Cluster"),
    (
        "service-node-port-external-traffic",
        service(type="NodePort"),
        "spec.externalTrafficPolicy",
        "Cluster",
    ),
    (
        "service-load-balancer-node-ports",
        service(type="LoadBalancer"),
        "spec.allocateLoadBalancerNodePorts",
        True,
    ),
    (
        "service-client-ip-timeout",
        service(sessionAffinity="ClientIP"),
        "spec.sessionAffinityConfig",
        {"clientIP": {"timeoutSeconds": 10800}},
    ),
    (
        "endpoints-port-tcp",
        simple("Endpoints", subsets=[{"ports": [{"port": 80}]}]),
        "subsets[0].ports[0].protocol",
        "TCP",
    ),
    # cluster objects
    ("namespace-finalizer", simple("Namespace"), "spec.finalizers", ["kubernetes"]),
    (
        "namespace-finalizers-emptied-stay-empty",
        simple("Namespace", spec={"finalizers": []}),
        "spec.finalizers",
        [],
    ),
    ("namespace-phase-active", simple("Namespace"), "status.phase", "Active"),
    (
        "namespace-name-label",
        simple("Namespace"),
        "metadata.labels",
        {"kubernetes.io/metadata.name": "x"},
    ),
    (
        "node-allocatable-from-capacity",
        simple("Node", status={"capacity": {"cpu": "2", "pods": "20"}}),
        "status.allocatable",
        {"cpu": "2", "pods": "20"},
    ),
    (
        "node-allocatable-kept",
        simple("Node", status={"capacity": {"cpu": "2"}, "allocatable": {"cpu": "1"}}),
        "status.allocatable",
        {"cpu": "1"},
    ),
    # nulls read as absent
    (
        "null-timestamp-dropped",
        {**pod(), "metadata": {"name": "w", "creationTimestamp": None}},
        "metadata",
        {"name": "w", "namespace": "default"},
    ),
    ("null-field-then-defaulted", pod(restartPolicy=None), "spec.restartPolicy", "Always"),
]


@pytest.mark.parametrize(
    ("obj", "path", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_default(obj: dict[str, Any], path: str, expected: Any) -> None:
    obj = copy.deepcopy(obj)
    defaults.apply_defaults(obj)
    assert get(obj, path) == expected


ABSENT_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("cluster-scoped-node-gets-no-namespace", simple("Node"), "namespace"),
    ("template-gets-no-service-links", deployment(), "enableServiceLinks"),
    ("empty-dir-gets-no-medium", pod(volumes=[{"name": "d"}]), "medium"),
    (
        "probe-gets-no-initial-delay",
        container(livenessProbe={"tcpSocket": {"port": 80}}),
        "initialDelaySeconds",
    ),
    ("event-gets-no-type", simple("Event", involvedObject={}), "type"),
    ("configmap-gets-no-immutable", simple("ConfigMap", data={}), "immutable"),
    (
        "service-external-name-no-internal-policy",
        service(type="ExternalName", externalName="a.b"),
        "internalTrafficPolicy",
    ),
    ("cluster-ip-service-no-external-policy", service(), "externalTrafficPolicy"),
    ("no-host-port-without-host-network", container(ports=[{"containerPort": 80}]), "hostPort"),
    (
        "template-gets-no-requests-from-limits",
        deployment(
            template={
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {"name": "a", "image": "x", "resources": {"limits": {"cpu": "1"}}}
                    ]
                },
            }
        ),
        "requests",
    ),
]


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | set().union(*(_keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_keys(v) for v in value))
    return set()


@pytest.mark.parametrize(
    ("obj", "key"), [c[1:] for c in ABSENT_CASES], ids=[c[0] for c in ABSENT_CASES]
)
def test_not_defaulted(obj: dict[str, Any], key: str) -> None:
    obj = copy.deepcopy(obj)
    defaults.apply_defaults(obj)
    assert key not in _keys(obj)


IDEMPOTENCY_OBJECTS = {
    **{name: manifest(name) for name in MANIFESTS},
    **{c[0]: c[1] for c in CASES},
}


@pytest.mark.parametrize("obj", IDEMPOTENCY_OBJECTS.values(), ids=IDEMPOTENCY_OBJECTS.keys())
def test_defaults_are_idempotent(obj: dict[str, Any]) -> None:
    once = copy.deepcopy(obj)
    defaults.apply_defaults(once)
    twice = copy.deepcopy(once)
    defaults.apply_defaults(twice)
    assert twice == once


@pytest.mark.parametrize("name", MANIFESTS)
def test_client_values_survive(name: str) -> None:
    """Defaults only add: every leaf the client wrote is still there, unchanged."""
    written = manifest(name)
    defaulted = copy.deepcopy(written)
    defaults.apply_defaults(defaulted)

    def leaves(value: Any, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
        if isinstance(value, dict) and value:
            return {
                k: v for key, child in value.items() for k, v in leaves(child, (*path, key)).items()
            }
        if isinstance(value, list) and value:
            return {
                k: v for i, child in enumerate(value) for k, v in leaves(child, (*path, i)).items()
            }
        return {path: value}

    after = leaves(defaulted)
    for path, value in leaves(written).items():
        if value is None or value == {}:
            continue  # nulls are dropped; an empty map may gain defaults
        assert after.get(path, "<missing>") == value, path


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_defaulted_objects_validate(case: tuple[str, dict[str, Any], str, Any]) -> None:
    obj = copy.deepcopy(case[1])
    defaults.apply_defaults(obj)
    assert [str(c) for c in validation.validate(obj)] == []


MALFORMED = [
    ("not-an-object", "pod"),
    ("unknown-kind", {"kind": "Widget", "spec": {"x": 1}}),
    ("kind-not-a-string", {"kind": ["Pod"]}),
    ("metadata-a-string", {"apiVersion": "v1", "kind": "Pod", "metadata": "web"}),
    ("spec-a-list", {"apiVersion": "v1", "kind": "Pod", "spec": []}),
    ("containers-a-string", {"kind": "Pod", "spec": {"containers": "app"}}),
    ("container-not-an-object", {"kind": "Pod", "spec": {"containers": ["app", 3]}}),
    ("image-not-a-string", {"kind": "Pod", "spec": {"containers": [{"image": 3}]}}),
    (
        "ports-an-object",
        {"kind": "Pod", "spec": {"containers": [{"ports": {"containerPort": 80}}]}},
    ),
    ("probe-a-string", {"kind": "Pod", "spec": {"containers": [{"livenessProbe": "tcp"}]}}),
    (
        "limits-a-list",
        {"kind": "Pod", "spec": {"containers": [{"resources": {"limits": ["cpu"]}}]}},
    ),
    (
        "requests-a-list",
        {
            "kind": "Pod",
            "spec": {"containers": [{"resources": {"limits": {"cpu": "1"}, "requests": []}}]},
        },
    ),
    ("volume-a-number", {"kind": "Pod", "spec": {"volumes": [7, {"configMap": "c"}]}}),
    ("strategy-a-string", {"kind": "Deployment", "spec": {"strategy": "Recreate"}}),
    ("rolling-update-a-number", {"kind": "Deployment", "spec": {"strategy": {"rollingUpdate": 1}}}),
    ("template-a-list", {"kind": "Deployment", "spec": {"template": []}}),
    ("service-ports-a-string", {"kind": "Service", "spec": {"ports": "80"}}),
    (
        "session-config-a-list",
        {"kind": "Service", "spec": {"sessionAffinity": "ClientIP", "sessionAffinityConfig": []}},
    ),
    ("subsets-an-object", {"kind": "Endpoints", "subsets": {"ports": []}}),
    (
        "namespace-labels-a-list",
        {"kind": "Namespace", "metadata": {"name": "a", "labels": []}, "spec": [], "status": 1},
    ),
    ("node-capacity-a-list", {"kind": "Node", "status": {"capacity": []}}),
]


@pytest.mark.parametrize("obj", [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_objects_are_left_for_validation(obj: Any) -> None:
    once = copy.deepcopy(obj)
    defaults.apply_defaults(once)  # must not raise
    twice = copy.deepcopy(once)
    defaults.apply_defaults(twice)
    assert twice == once
