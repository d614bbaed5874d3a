"""Each filter and score plugin on its own, table-driven: Pod, node (and Pods on it) -> answer."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler.framework import SKIP, Code, CycleState, NodeInfo, Status
from scheduler.plugins import (
    BalancedAllocation,
    LeastAllocated,
    NodeAffinity,
    NodeName,
    NodePorts,
    NodeReady,
    NodeResourcesFit,
    NodeUnschedulable,
    OwnerSpread,
    TaintToleration,
)
from scheduler.podinfo import PodInfo
from tests.scheduler.builders import (
    expr,
    make_node,
    make_pod,
    preferred_affinity,
    required_affinity,
    toleration,
)


def node_info(node: dict[str, Any], *pods: dict[str, Any]) -> NodeInfo:
    info = NodeInfo(node)
    for pod in pods:
        info.add_pod(PodInfo.of(pod).with_node(info.name))
    return info


def run_filter(plugin: Any, pod: dict[str, Any], info: NodeInfo) -> Status:
    """PreFilter then Filter, as the framework runs them (a Skip means the filter passes)."""
    state, pod_info = CycleState(), PodInfo.of(pod)
    assert not pod_info.errors, pod_info.errors
    if hasattr(plugin, "pre_filter"):
        pre = plugin.pre_filter(state, pod_info, None)
        if pre.code is Code.SKIP:
            return Status(Code.SUCCESS)
        assert pre.ok
    return plugin.filter(state, pod_info, info)


def verdict(status: Status) -> str:
    return "ok" if status.ok else status.message


# Filters --------------------------------------------------------------------------------------

NOT_READY = "node(s) were not ready"
UNSCHEDULABLE = "node(s) were unschedulable"
AFFINITY = "node(s) didn't match Pod's node affinity/selector"
PORTS = "node(s) didn't have free ports for the requested pod ports"

FILTER_CASES = [
    # NodeReady
    pytest.param(NodeReady(), make_pod("p"), node_info(make_node("n")), "ok", id="ready-node-fits"),
    pytest.param(
        NodeReady(),
        make_pod("p"),
        node_info(make_node("n", ready=False)),
        NOT_READY,
        id="not-ready-node-refused",
    ),
    pytest.param(
        NodeReady(),
        make_pod("p"),
        node_info(make_node("n", ready="Unknown")),
        NOT_READY,
        id="unknown-readiness-refused",
    ),
    pytest.param(
        NodeReady(),
        make_pod("p", tolerations=[toleration("node.kubernetes.io/not-ready", operator="Exists")]),
        node_info(make_node("n", ready=False)),
        "ok",
        id="not-ready-tolerated",
    ),
    pytest.param(
        NodeReady(),
        make_pod("p", tolerations=[toleration("node.kubernetes.io/not-ready", operator="Exists")]),
        node_info(make_node("n", ready="Unknown")),
        NOT_READY,
        id="not-ready-toleration-does-not-cover-unreachable",
    ),
    pytest.param(
        NodeReady(),
        make_pod("p"),
        node_info(make_node("n", allocatable={"cpu": "lots"})),
        "node(s) had an unreadable spec or status",
        id="unparsable-allocatable-refused",
    ),
    # NodeUnschedulable
    pytest.param(
        NodeUnschedulable(),
        make_pod("p"),
        node_info(make_node("n", unschedulable=True)),
        UNSCHEDULABLE,
        id="cordoned-node-refused",
    ),
    pytest.param(
        NodeUnschedulable(),
        make_pod(
            "p",
            tolerations=[
                toleration(
                    "node.kubernetes.io/unschedulable", operator="Exists", effect="NoSchedule"
                )
            ],
        ),
        node_info(make_node("n", unschedulable=True)),
        "ok",
        id="cordon-tolerated",
    ),
    pytest.param(
        NodeUnschedulable(),
        make_pod("p"),
        node_info(make_node("n")),
        "ok",
        id="uncordoned-node-fits",
    ),
    # NodeName
    pytest.param(
        NodeName(),
        make_pod("p", node_name="a"),
        node_info(make_node("a")),
        "ok",
        id="named-node-fits",
    ),
    pytest.param(
        NodeName(),
        make_pod("p", node_name="a"),
        node_info(make_node("b")),
        "node(s) didn't match the requested node name",
        id="other-node-refused",
    ),
    pytest.param(NodeName(), make_pod("p"), node_info(make_node("b")), "ok", id="no-name-skips"),
    # NodeAffinity: nodeSelector
    pytest.param(
        NodeAffinity(),
        make_pod("p", node_selector={"disk": "ssd"}),
        node_info(make_node("n", labels={"disk": "ssd"})),
        "ok",
        id="selector-matches",
    ),
    pytest.param(
        NodeAffinity(),
        make_pod("p", node_selector={"disk": "ssd"}),
        node_info(make_node("n", labels={"disk": "hdd"})),
        AFFINITY,
        id="selector-wrong-value",
    ),
    pytest.param(
        NodeAffinity(),
        make_pod("p", node_selector={"disk": "ssd", "zone": "a"}),
        node_info(make_node("n", labels={"disk": "ssd"})),
        AFFINITY,
        id="selector-needs-every-label",
    ),
    # NodeAffinity: required terms
    pytest.param(
        NodeAffinity(),
        make_pod("p", affinity=required_affinity([expr("zone", "In", "a", "b")])),
        node_info(make_node("n", labels={"zone": "b"})),
        "ok",
        id="in-matches",
    ),
    pytest.param(
        NodeAffinity(),
        make_pod("p", affinity=required_affinity([expr("zone", "In", "a")])),
        node_info(make_node("n")),
        AFFINITY,
        id="in-missing-label",
    ),
    pytest.param(
        NodeAffinity(),
        make_pod("p", affinity=required_affinity([expr("zone", "NotIn", "a")])),
        node_info(make_node("n")),
        "ok",
        id="notin-missing-label-matches",
    ),
    pytest.param(
        NodeAffinity(),
        make_pod("p", affinity=required_affinity([expr("zone", "NotIn", "a")])),
        node_info(make_node("n", labels={"zone": "a"})),
        AFFINITY,
        id="notin-refuses",
    ),
    pytest.param(
        NodeAffinity(),
        make_pod("p", affinity=required_affinity([expr("gpu", "Exists")])),
        node_info(make_node("n", labels={"gpu": ""})),
        "ok",
        id="exists-empty-value",
    ),
    pytest.param(
        NodeAffinity(),
        make_pod("p", affinity=required_affinity([expr("gpu", "DoesNotExist")])),
        node_info(make_node("n", labels={"gpu": "1"})),
        AFFINITY,
        id="doesnotexist-refuses",
    ),
    pytest.param(
        NodeAffinity(),
        make_pod("p", affinity=required_affinity([expr("cores", "Gt", "8")])),
        node_info(make_node("n", labels={"cores": "16"})),
        "ok",
        id="gt-matches",
    ),
    pytest.param(
        NodeAffinity(),
        make_pod("p", affinity=required_affinity([expr("cores", "Lt", "8")])),
        node_info(make_node("n", labels={"cores": "16"})),
        AFFINITY,
        id="lt-refuses",
    ),
    pytest.param(
        NodeAffinity(),
        make_pod("p", affinity=required_affinity([expr("cores", "Gt", "8")])),
        node_info(make_node("n", labels={"cores": "many"})),
        AFFINITY,
        id="gt-non-integer-label-refuses",
    ),
    pytest.param(
        NodeAffinity(),
        make_pod(
            "p", affinity=required_affinity([expr("zone", "In", "a"), expr("disk", "In", "ssd")])
        ),
        node_info(make_node("n", labels={"zone": "a", "disk": "hdd"})),
        AFFINITY,
        id="expressions-are-anded",
    ),
    pytest.param(
        NodeAffinity(),
        make_pod(
            "p", affinity=required_affinity([expr("zone", "In", "x")], [expr("disk", "In", "ssd")])
        ),
        node_info(make_node("n", labels={"zone": "a", "disk": "ssd"})),
        "ok",
        id="terms-are-ored",
    ),
    pytest.param(
        NodeAffinity(),
        make_pod(
            "p",
            affinity={
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchFields": [expr("metadata.name", "In", "n")]}]
                    }
                }
            },
        ),
        node_info(make_node("n")),
        "ok",
        id="match-fields-node-name",
    ),
    pytest.param(
        NodeAffinity(),
        make_pod(
            "p",
            affinity={
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchFields": [expr("metadata.name", "NotIn", "n")]}
                        ]
                    }
                }
            },
        ),
        node_info(make_node("n")),
        AFFINITY,
        id="match-fields-notin-refuses",
    ),
    pytest.param(
        NodeAffinity(),
        make_pod(
            "p",
            affinity={
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{}]}
                }
            },
        ),
        node_info(make_node("n")),
        AFFINITY,
        id="empty-term-matches-nothing",
    ),
    # TaintToleration
    pytest.param(
        TaintToleration(),
        make_pod("p"),
        node_info(make_node("n", taints=["node-role=control-plane:NoSchedule"])),
        "node(s) had untolerated taint {node-role: control-plane}",
        id="noschedule-refuses",
    ),
    pytest.param(
        TaintToleration(),
        make_pod("p"),
        node_info(make_node("n", taints=["node.kubernetes.io/unreachable:NoExecute"])),
        "node(s) had untolerated taint {node.kubernetes.io/unreachable: }",
        id="noexecute-refuses",
    ),
    pytest.param(
        TaintToleration(),
        make_pod("p"),
        node_info(make_node("n", taints=["spot=true:PreferNoSchedule"])),
        "ok",
        id="prefernoschedule-does-not-filter",
    ),
    pytest.param(
        TaintToleration(),
        make_pod("p", tolerations=[toleration("node-role", value="control-plane")]),
        node_info(make_node("n", taints=["node-role=control-plane:NoSchedule"])),
        "ok",
        id="equal-toleration",
    ),
    pytest.param(
        TaintToleration(),
        make_pod("p", tolerations=[toleration("node-role", value="worker")]),
        node_info(make_node("n", taints=["node-role=control-plane:NoSchedule"])),
        "node(s) had untolerated taint {node-role: control-plane}",
        id="equal-wrong-value",
    ),
    pytest.param(
        TaintToleration(),
        make_pod("p", tolerations=[toleration("node-role", operator="Exists")]),
        node_info(make_node("n", taints=["node-role=control-plane:NoSchedule"])),
        "ok",
        id="exists-toleration-any-value",
    ),
    pytest.param(
        TaintToleration(),
        make_pod("p", tolerations=[toleration(operator="Exists")]),
        node_info(make_node("n", taints=["a=b:NoSchedule", "c=d:NoExecute"])),
        "ok",
        id="empty-key-exists-tolerates-all",
    ),
    pytest.param(
        TaintToleration(),
        make_pod("p", tolerations=[toleration("a", operator="Exists", effect="NoExecute")]),
        node_info(make_node("n", taints=["a=b:NoSchedule"])),
        "node(s) had untolerated taint {a: b}",
        id="effect-must-match",
    ),
    pytest.param(
        TaintToleration(),
        make_pod("p", tolerations=[toleration("a", operator="Exists")]),
        node_info(make_node("n", taints=["a=b:NoSchedule", "c=d:NoSchedule"])),
        "node(s) had untolerated taint {c: d}",
        id="names-first-untolerated-taint",
    ),
    # NodePorts
    pytest.param(
        NodePorts(),
        make_pod("p", host_ports=[8080]),
        node_info(make_node("n"), make_pod("q", host_ports=[8080])),
        PORTS,
        id="same-port-conflicts",
    ),
    pytest.param(
        NodePorts(),
        make_pod("p", host_ports=[8080]),
        node_info(make_node("n"), make_pod("q", host_ports=[8081])),
        "ok",
        id="other-port-fits",
    ),
    pytest.param(
        NodePorts(),
        make_pod("p", host_ports=[(53, "UDP", "0.0.0.0")]),
        node_info(make_node("n"), make_pod("q", host_ports=[(53, "TCP", "0.0.0.0")])),
        "ok",
        id="other-protocol-fits",
    ),
    pytest.param(
        NodePorts(),
        make_pod("p", host_ports=[(80, "TCP", "10.0.0.1")]),
        node_info(make_node("n"), make_pod("q", host_ports=[(80, "TCP", "10.0.0.2")])),
        "ok",
        id="distinct-host-ips-fit",
    ),
    pytest.param(
        NodePorts(),
        make_pod("p", host_ports=[(80, "TCP", "10.0.0.1")]),
        node_info(make_node("n"), make_pod("q", host_ports=[(80, "TCP", "0.0.0.0")])),
        PORTS,
        id="wildcard-taken-conflicts-with-specific",
    ),
    pytest.param(
        NodePorts(),
        make_pod("p", host_ports=[(80, "TCP", "0.0.0.0")]),
        node_info(make_node("n"), make_pod("q", host_ports=[(80, "TCP", "10.0.0.2")])),
        PORTS,
        id="wildcard-wanted-conflicts-with-specific",
    ),
    # NodeResourcesFit
    pytest.param(
        NodeResourcesFit(),
        make_pod("p", cpu="1"),
        node_info(make_node("n", cpu="2"), make_pod("q", cpu="1")),
        "ok",
        id="exactly-full-fits",
    ),
    pytest.param(
        NodeResourcesFit(),
        make_pod("p", cpu="1001m"),
        node_info(make_node("n", cpu="2"), make_pod("q", cpu="1")),
        "Insufficient cpu",
        id="cpu-short-by-one-milli",
    ),
    pytest.param(
        NodeResourcesFit(),
        make_pod("p", memory="1Gi"),
        node_info(make_node("n", memory="1Gi"), make_pod("q", memory="1")),
        "Insufficient memory",
        id="memory-short-by-one-byte",
    ),
    pytest.param(
        NodeResourcesFit(),
        make_pod("p", cpu="5", memory="9Gi"),
        node_info(make_node("n")),
        "Insufficient cpu, Insufficient memory",
        id="every-shortfall-reported",
    ),
    pytest.param(
        NodeResourcesFit(),
        make_pod("p"),
        node_info(make_node("n", pods=1), make_pod("q")),
        "Too many pods",
        id="pod-count-limit",
    ),
    pytest.param(
        NodeResourcesFit(),
        make_pod("p", limits={"cpu": "5"}),
        node_info(make_node("n")),
        "Insufficient cpu",
        id="limit-only-counts-as-request",
    ),
    pytest.param(
        NodeResourcesFit(),
        make_pod("p", requests={"ephemeral-storage": "2Gi"}),
        node_info(make_node("n", allocatable={"ephemeral-storage": "1Gi"})),
        "Insufficient ephemeral-storage",
        id="ephemeral-storage-when-requested",
    ),
    pytest.param(
        NodeResourcesFit(),
        make_pod("p", requests={"example.com/gpu": "1"}),
        node_info(make_node("n")),
        "Insufficient example.com/gpu",
        id="extended-resource-node-lacks",
    ),
    pytest.param(
        NodeResourcesFit(),
        make_pod(
            "p",
            cpu="1",
            init_containers=[{"name": "init", "resources": {"requests": {"cpu": "3"}}}],
        ),
        node_info(make_node("n", cpu="2")),
        "Insufficient cpu",
        id="init-container-peak-counts",
    ),
    pytest.param(
        NodeResourcesFit(),
        make_pod("p"),
        node_info(make_node("n", cpu="0", memory="0")),
        "ok",
        id="request-less-pod-fits-anywhere-with-room-for-a-pod",
    ),
]


@pytest.mark.parametrize(("plugin", "pod", "info", "expected"), FILTER_CASES)
def test_filter(plugin: Any, pod: dict[str, Any], info: NodeInfo, expected: str) -> None:
    assert verdict(run_filter(plugin, pod, info)) == expected


def test_rejections_name_their_plugin_and_resolvability() -> None:
    tainted = node_info(make_node("n", taints=["a=b:NoSchedule"]))
    status = run_filter(TaintToleration(), make_pod("p"), tainted)
    assert status.plugin == "TaintToleration"
    assert status.code is Code.UNSCHEDULABLE_AND_UNRESOLVABLE
    full = node_info(make_node("n", cpu="1"), make_pod("q", cpu="1"))
    status = run_filter(NodeResourcesFit(), make_pod("p", cpu="1"), full)
    assert (status.plugin, status.code) == ("NodeResourcesFit", Code.UNSCHEDULABLE)


# Scores ---------------------------------------------------------------------------------------


def scores(plugin: Any, pod: dict[str, Any], infos: list[NodeInfo]) -> list[int]:
    """PreScore, Score and normalize over `infos`, as the framework runs them."""
    state, pod_info = CycleState(), PodInfo.of(pod)
    if hasattr(plugin, "pre_score") and plugin.pre_score(state, pod_info, infos) is SKIP:
        return [0] * len(infos)
    raw = [plugin.score(state, pod_info, info) for info in infos]
    if hasattr(plugin, "normalize"):
        plugin.normalize(state, pod_info, raw)
    return raw


SCORE_CASES = [
    pytest.param(
        LeastAllocated(),
        make_pod("p", cpu="1", memory="1Gi"),
        [
            node_info(make_node("empty")),
            node_info(
                make_node("half", cpu="4", memory="8Gi"), make_pod("q", cpu="1", memory="3Gi")
            ),
        ],
        [(75 + 87) // 2, (50 + 50) // 2],
        id="least-allocated-prefers-free-room",
    ),
    pytest.param(
        LeastAllocated(),
        make_pod("p"),
        [node_info(make_node("a", cpu="1", memory="1Gi"))],
        [(90 + 80) // 2],
        id="least-allocated-counts-request-less-pods-as-100m-200Mi",
    ),
    pytest.param(
        LeastAllocated(),
        make_pod("p", cpu="2"),
        [node_info(make_node("a", cpu="1"))],
        [(0 + 97) // 2],
        id="least-allocated-over-allocatable-scores-zero",
    ),
    pytest.param(
        BalancedAllocation(),
        make_pod("p", cpu="1", memory="2Gi"),
        [
            node_info(make_node("even", cpu="4", memory="8Gi")),
            node_info(make_node("skewed", cpu="4", memory="64Gi")),
        ],
        [100, int((1 - abs(0.25 - 2 / 64) / 2) * 100)],
        id="balanced-prefers-even-use",
    ),
    pytest.param(
        OwnerSpread(),
        make_pod("p", owner="web"),
        [
            node_info(make_node("a"), make_pod("w1", owner="web"), make_pod("w2", owner="web")),
            node_info(make_node("b"), make_pod("w3", owner="web")),
            node_info(make_node("c"), make_pod("x", owner="other")),
        ],
        [0, 50, 100],
        id="spread-prefers-nodes-with-fewer-siblings",
    ),
    pytest.param(
        OwnerSpread(),
        make_pod("p"),
        [node_info(make_node("a"), make_pod("w1", owner="web"))],
        [0],
        id="spread-skips-ownerless-pod",
    ),
    pytest.param(
        NodeAffinity(),
        make_pod(
            "p",
            affinity=preferred_affinity(
                (10, [expr("zone", "In", "a")]), (30, [expr("disk", "In", "ssd")])
            ),
        ),
        [
            node_info(make_node("both", labels={"zone": "a", "disk": "ssd"})),
            node_info(make_node("zone", labels={"zone": "a"})),
            node_info(make_node("none")),
        ],
        [100, 25, 0],
        id="preferred-affinity-sums-weights-then-normalizes",
    ),
    pytest.param(
        TaintToleration(),
        make_pod("p"),
        [
            node_info(make_node("clean")),
            node_info(make_node("one", taints=["spot=true:PreferNoSchedule"])),
            node_info(
                make_node("two", taints=["spot=true:PreferNoSchedule", "old=x:PreferNoSchedule"])
            ),
        ],
        [100, 50, 0],
        id="prefer-no-schedule-fewer-is-better",
    ),
    pytest.param(
        TaintToleration(),
        make_pod("p", tolerations=[toleration("spot", operator="Exists")]),
        [
            node_info(make_node("clean")),
            node_info(make_node("spot", taints=["spot=true:PreferNoSchedule"])),
        ],
        [100, 100],
        id="tolerated-prefer-no-schedule-costs-nothing",
    ),
]


@pytest.mark.parametrize(("plugin", "pod", "infos", "expected"), SCORE_CASES)
def test_score(
    plugin: Any, pod: dict[str, Any], infos: list[NodeInfo], expected: list[int]
) -> None:
    assert scores(plugin, pod, infos) == expected
