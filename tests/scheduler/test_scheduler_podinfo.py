"""What the scheduler reads from a Pod: effective requests, non-zero requests, and errors."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler.podinfo import PodInfo
from tests.scheduler.builders import make_pod

MI = 1024 * 1024


def container(
    name: str, *, cpu: str = "", memory: str = "", always: bool = False, limit_cpu: str = ""
) -> dict[str, Any]:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
    resources: dict[str, Any] = {"requests": requests}
    if limit_cpu:
        resources["limits"] = {"cpu": limit_cpu}
    c: dict[str, Any] = {"name": name, "image": "busybox", "resources": resources}
    if always:
        c["restartPolicy"] = "Always"
    return c


def pod_with(
    containers: list[dict[str, Any]],
    init: list[dict[str, Any]] | None = None,
    overhead: dict[str, str] | None = None,
) -> dict[str, Any]:
    pod = make_pod("p")
    pod["spec"]["containers"] = containers
    if init:
        pod["spec"]["initContainers"] = init
    if overhead:
        pod["spec"]["overhead"] = overhead
    return pod


REQUEST_CASES = [
    pytest.param(
        pod_with([container("a", cpu="250m"), container("b", cpu="0.5")]),
        750,
        id="app-containers-sum",
    ),
    pytest.param(pod_with([container("a", limit_cpu="2")]), 2000, id="limit-alone-is-the-request"),
    pytest.param(
        pod_with([container("a", cpu="1", limit_cpu="2")]), 1000, id="request-wins-over-limit"
    ),
    pytest.param(
        pod_with([container("a", cpu="1")], init=[container("i", cpu="3")]),
        3000,
        id="larger-init-container-wins",
    ),
    pytest.param(
        pod_with(
            [container("a", cpu="2"), container("b", cpu="2")], init=[container("i", cpu="3")]
        ),
        4000,
        id="larger-app-sum-wins",
    ),
    pytest.param(
        pod_with(
            [container("a", cpu="1")],
            init=[container("side", cpu="500m", always=True), container("i", cpu="2")],
        ),
        2500,
        id="sidecar-runs-during-later-init",
    ),
    pytest.param(
        pod_with([container("a", cpu="1")], init=[container("side", cpu="500m", always=True)]),
        1500,
        id="sidecar-adds-to-app-containers",
    ),
    pytest.param(
        pod_with([container("a", cpu="1")], overhead={"cpu": "100m"}), 1100, id="overhead-added"
    ),
    pytest.param(pod_with([container("a", cpu="0.0001")]), 1, id="tiny-cpu-rounds-up"),
]


@pytest.mark.parametrize(("pod", "cpu_millis"), REQUEST_CASES)
def test_effective_cpu_request(pod: dict[str, Any], cpu_millis: int) -> None:
    info = PodInfo.of(pod)
    assert info.errors == ()
    assert info.requests.cpu == cpu_millis


NONZERO_CASES = [
    pytest.param(pod_with([container("a")]), (100, 200 * MI), id="request-less-counts-defaults"),
    pytest.param(
        pod_with([container("a", cpu="0", memory="0")]), (0, 0), id="explicit-zero-stays-zero"
    ),
    pytest.param(
        pod_with([container("a", cpu="1"), container("b")]),
        (1100, 400 * MI),
        id="defaults-per-container",
    ),
]


@pytest.mark.parametrize(("pod", "expected"), NONZERO_CASES)
def test_nonzero_requests_for_scoring(pod: dict[str, Any], expected: tuple[int, int]) -> None:
    info = PodInfo.of(pod)
    assert (info.nonzero_cpu, info.nonzero_memory) == expected


ERROR_CASES = [
    pytest.param(
        lambda p: p["spec"]["containers"][0]["resources"].update(requests={"cpu": "a lot"}),
        "spec.containers[0].resources.requests.cpu: quantity 'a lot'",
        id="bad-quantity-named-by-path",
    ),
    pytest.param(
        lambda p: p["spec"].update(tolerations=[{"key": "a", "operator": "Like"}]),
        "spec.tolerations[0]: operator 'Like' is not one of Exists, Equal",
        id="bad-toleration-operator",
    ),
    pytest.param(
        lambda p: p["spec"].update(
            affinity={
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "cores", "operator": "Gt", "values": ["x"]}
                                ]
                            }
                        ]
                    }
                }
            }
        ),
        "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0]: operator Gt needs an integer value, got 'x'",
        id="gt-needs-integer",
    ),
    pytest.param(
        lambda p: p["spec"].update(
            affinity={
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "zone", "operator": "In", "values": []}]}
                        ]
                    }
                }
            }
        ),
        "operator In needs at least one value",
        id="in-needs-values",
    ),
    pytest.param(
        lambda p: p["spec"]["containers"][0].update(ports=[{"hostPort": 70000}]),
        "spec.containers[0].ports[0].hostPort: must be from 1 to 65535, got 70000",
        id="host-port-range",
    ),
    pytest.param(
        lambda p: p["spec"].update(priority="high"),
        "spec.priority: must be an integer, got 'high'",
        id="priority-type",
    ),
]


@pytest.mark.parametrize(("mutate", "fragment"), ERROR_CASES)
def test_malformed_fields_are_reported_with_their_path(mutate: Any, fragment: str) -> None:
    pod = make_pod("p", cpu="1")
    mutate(pod)
    info = PodInfo.of(pod)
    assert any(fragment in e for e in info.errors), info.errors


def test_controller_owner_and_host_ports() -> None:
    info = PodInfo.of(make_pod("p", owner="web", host_ports=[80, (53, "UDP", "10.0.0.1")]))
    assert info.owner == "uid-rs-web"
    assert [(h.protocol, h.host_ip, h.port) for h in info.host_ports] == [
        ("TCP", "0.0.0.0", 80),
        ("UDP", "10.0.0.1", 53),
    ]
