"""kctl cordon, uncordon, drain and taint, end to end against a real API server."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from cli.nodes import apply_taints, parse_taint, plan_drain
from machinery.client import ApiClient
from machinery.meta import owner_reference
from tests import objects as o
from tests.controllers.harness import gone, play_kubelet
from tests.test_kctl import kctl

# -- taint syntax, table-driven ------------------------------------------------------------------

GOOD_SPECS = [
    pytest.param("dedicated=gpu:NoSchedule", ("dedicated", "gpu", "NoSchedule", False), id="add"),
    pytest.param(
        "example.com/k:NoExecute", ("example.com/k", "", "NoExecute", False), id="no-value"
    ),
    pytest.param(
        "dedicated:NoSchedule-", ("dedicated", "", "NoSchedule", True), id="remove-effect"
    ),
    pytest.param("dedicated-", ("dedicated", "", "", True), id="remove-key"),
    pytest.param("k=v:PreferNoSchedule-", ("k", "v", "PreferNoSchedule", True), id="remove-valued"),
]


@pytest.mark.parametrize(("spec", "want"), GOOD_SPECS)
def test_parse_taint(spec, want) -> None:
    change = parse_taint(spec)
    assert (change.key, change.value, change.effect, change.remove) == want


BAD_SPECS = [
    pytest.param("dedicated=gpu", "must be key[=value]:Effect", id="no-effect"),
    pytest.param("k=v:NoRun", 'invalid taint effect "NoRun"', id="unknown-effect"),
    pytest.param("k=v:", 'invalid taint effect ""', id="empty-effect"),
    pytest.param("Bad Key=v:NoSchedule", 'invalid taint key "Bad Key"', id="bad-key"),
    pytest.param("=v:NoSchedule", 'invalid taint key ""', id="empty-key"),
    pytest.param("k=v v:NoSchedule", 'invalid taint value "v v"', id="bad-value"),
    pytest.param("k=v-", "to remove, give key:Effect- or key-", id="remove-without-effect"),
]


@pytest.mark.parametrize(("spec", "error"), BAD_SPECS)
def test_bad_taint_specs_say_what_is_wrong(spec, error) -> None:
    with pytest.raises(ValueError, match=error.replace("[", r"\[").replace("]", r"\]")):
        parse_taint(spec)


def test_apply_taints_clashes_and_missing() -> None:
    taints = [{"key": "a", "value": "1", "effect": "NoSchedule"}]
    with pytest.raises(ValueError, match="--overwrite is false"):
        apply_taints(taints, [parse_taint("a=2:NoSchedule")], overwrite=False, now=0)
    replaced = apply_taints(taints, [parse_taint("a=2:NoSchedule")], overwrite=True, now=0)
    assert replaced == [{"key": "a", "value": "2", "effect": "NoSchedule"}]
    with pytest.raises(ValueError, match='taint "b:NoExecute" not found'):
        apply_taints(taints, [parse_taint("b:NoExecute-")], overwrite=False, now=0)
    both = apply_taints(taints, [parse_taint("a=1:NoExecute")], overwrite=False, now=0)
    assert apply_taints(both, [parse_taint("a-")], overwrite=False, now=0) == []


# -- drain decisions, table-driven ---------------------------------------------------------------


def _pod(name: str, *, owner: str | None = "ReplicaSet", **extra) -> dict:
    pod = o.pod(name, node="n1")
    if owner:
        pod["metadata"]["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": owner, "name": "x", "uid": "u", "controller": True}
        ]
    pod["status"] = {"phase": extra.pop("phase", "Running")}
    pod["metadata"].update(extra.pop("metadata", {}))
    pod["spec"].update(extra)
    return pod


def flags(**kw) -> argparse.Namespace:
    base = {"ignore_daemonsets": False, "force": False, "delete_emptydir_data": False}
    return argparse.Namespace(**{**base, **kw})


EMPTY_DIR = {"volumes": [{"name": "scratch", "emptyDir": {}}]}
DRAINS = [
    pytest.param([_pod("rs")], flags(), (["rs"], [], []), id="managed-pod-deleted"),
    pytest.param([_pod("solo", owner=None)], flags(), ([], [], ["no controller"]), id="unmanaged"),
    pytest.param(
        [_pod("solo", owner=None)], flags(force=True), (["solo"], [], []), id="unmanaged-forced"
    ),
    pytest.param([_pod("ds", owner="DaemonSet")], flags(), ([], [], ["DaemonSet"]), id="daemonset"),
    pytest.param(
        [_pod("ds", owner="DaemonSet")],
        flags(ignore_daemonsets=True),
        ([], ["default/ds"], []),
        id="daemonset-ignored",
    ),
    pytest.param([_pod("tmp", **EMPTY_DIR)], flags(), ([], [], ["local storage"]), id="emptydir"),
    pytest.param(
        [_pod("tmp", **EMPTY_DIR)],
        flags(delete_emptydir_data=True),
        (["tmp"], [], []),
        id="emptydir-allowed",
    ),
    pytest.param(
        [_pod("done", owner=None, phase="Succeeded")], flags(), (["done"], [], []), id="finished"
    ),
    pytest.param(
        [_pod("static", metadata={"annotations": {"kubernetes.io/config.mirror": "x"}})],
        flags(),
        ([], [], []),
        id="mirror-pod-skipped",
    ),
]


@pytest.mark.parametrize(("pods", "args", "want"), DRAINS)
def test_plan_drain(pods, args, want) -> None:
    plan = plan_drain(pods, args)
    deleted, ignored, refused = want
    assert [p["metadata"]["name"] for p in plan.delete] == deleted
    assert plan.ignored == ignored
    assert len(plan.refused) == len(refused)
    for fragment in refused:
        assert any(fragment in why for why in plan.refused)


# -- end to end ----------------------------------------------------------------------------------


async def test_cordon_and_uncordon(admin_kubeconfig, client: ApiClient) -> None:
    await client.create("nodes", o.node("n1"))
    assert (await kctl(admin_kubeconfig, "cordon", "n1"))[:2] == (0, "node/n1 cordoned\n")
    assert (await client.get("nodes", "n1"))["spec"]["unschedulable"] is True
    assert (await kctl(admin_kubeconfig, "cordon", "n1"))[:2] == (0, "node/n1 already cordoned\n")
    assert (await kctl(admin_kubeconfig, "uncordon", "n1"))[:2] == (0, "node/n1 uncordoned\n")
    assert "unschedulable" not in (await client.get("nodes", "n1"))["spec"]
    code, _, err = await kctl(admin_kubeconfig, "cordon", "missing")
    assert code == 1 and 'nodes "missing" not found' in err


async def test_taint_add_overwrite_and_remove(admin_kubeconfig, client: ApiClient) -> None:
    await client.create("nodes", o.node("n1"))

    async def taints():
        return (await client.get("nodes", "n1"))["spec"].get("taints", [])

    code, out, err = await kctl(admin_kubeconfig, "taint", "node", "n1", "dedicated=gpu:NoSchedule")
    assert (code, out) == (0, "node/n1 tainted\n"), err
    code, _, err = await kctl(admin_kubeconfig, "taint", "nodes", "n1", "dedicated=cpu:NoSchedule")
    assert code == 1 and "--overwrite is false" in err
    code, _, err = await kctl(
        admin_kubeconfig, "taint", "no", "n1", "dedicated=cpu:NoSchedule", "--overwrite"
    )
    assert code == 0, err
    assert await taints() == [{"key": "dedicated", "value": "cpu", "effect": "NoSchedule"}]

    code, out, _ = await kctl(admin_kubeconfig, "taint", "node", "n1", "evict-me:NoExecute")
    assert code == 0
    no_execute = [t for t in await taints() if t["effect"] == "NoExecute"]
    assert no_execute[0]["timeAdded"]

    code, out, _ = await kctl(admin_kubeconfig, "taint", "node", "n1", "dedicated:NoSchedule-")
    assert (code, out) == (0, "node/n1 untainted\n")
    code, out, _ = await kctl(
        admin_kubeconfig, "taint", "node", "n1", "evict-me-", "x=y:NoSchedule"
    )
    assert (code, out) == (0, "node/n1 modified\n")
    assert await taints() == [{"key": "x", "value": "y", "effect": "NoSchedule"}]

    code, _, err = await kctl(admin_kubeconfig, "taint", "node", "n1", "absent:NoSchedule-")
    assert code == 1 and 'taint "absent:NoSchedule" not found' in err
    code, _, err = await kctl(admin_kubeconfig, "taint", "node", "n1", "k=v:Sometimes")
    assert code == 1 and 'invalid taint effect "Sometimes"' in err
    code, _, err = await kctl(admin_kubeconfig, "taint", "pods", "n1", "k=v:NoSchedule")
    assert code == 1 and "taint applies to nodes only" in err


async def _owned_pod(client: ApiClient, name: str, node: str, rs: dict) -> None:
    pod = o.pod(name, node=node, owner=owner_reference(rs))
    await client.create("pods", pod)


async def test_drain_refuses_unmanaged_pods_then_forces_them_out(admin_kubeconfig, client) -> None:
    await client.create("nodes", o.node("n1"))
    rs = await client.create("replicasets", o.replicaset("web"))
    await _owned_pod(client, "web-a", "n1", rs)
    await client.create("pods", o.pod("solo", node="n1"))
    await _owned_pod(client, "web-b", "n2", rs)

    code, out, err = await kctl(admin_kubeconfig, "drain", "n1")
    assert code == 1
    assert out == "node/n1 cordoned\n"
    assert "cannot delete Pods that declare no controller" in err and "default/solo" in err
    assert not await gone(client, "pods", "web-a", "default")

    code, out, err = await kctl(admin_kubeconfig, "drain", "n1", "--force", "--grace-period", "0")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "node/n1 already cordoned"
    assert "Warning: deleting Pods that declare no controller: default/solo" in lines
    assert {"evicting pod default/web-a", "evicting pod default/solo"} <= set(lines)
    assert {"pod/web-a evicted", "pod/solo evicted"} <= set(lines)
    assert lines[-1] == "node/n1 drained"
    assert await gone(client, "pods", "solo", "default")
    assert not await gone(client, "pods", "web-b", "default")  # on another node


async def test_drain_waits_for_graceful_deletion_and_times_out_clearly(
    admin_kubeconfig, client
) -> None:
    await client.create("nodes", o.node("n1"))
    rs = await client.create("replicasets", o.replicaset("web"))
    await _owned_pod(client, "slow", "n1", rs)
    code, _, err = await kctl(admin_kubeconfig, "drain", "n1", "--timeout", "1")
    assert code == 1 and "timed out after 1s" in err and "default/slow" in err

    await play_kubelet(client, "default", "slow")

    await _owned_pod(client, "fine", "n1", rs)
    kubelet = asyncio.create_task(play_kubelet(client, "default", "fine"))
    code, out, err = await kctl(admin_kubeconfig, "drain", "n1", "--timeout", "60")
    await kubelet
    assert code == 0, err
    assert out.splitlines() == [
        "node/n1 already cordoned",
        "evicting pod default/fine",
        "pod/fine evicted",
        "node/n1 drained",
    ]
