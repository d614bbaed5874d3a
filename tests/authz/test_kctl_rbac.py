"""kctl create role|clusterrole|rolebinding|clusterrolebinding, and what they grant."""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

import pytest

from cli.errors import CliError
from cli.rbac import rules_from, subjects_from
from tests.authz.kctl import run_kctl


@pytest.mark.parametrize(
    "verbs, resources, names, rules",
    [
        (
            ["get,list"],
            ["pods", "po/log"],
            [],
            [{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]}],
        ),
        (
            ["*"],
            ["deployments.apps", "pods"],
            ["web"],
            [
                {
                    "apiGroups": ["apps"],
                    "resources": ["deployments"],
                    "verbs": ["*"],
                    "resourceNames": ["web"],
                },
                {
                    "apiGroups": [""],
                    "resources": ["pods"],
                    "verbs": ["*"],
                    "resourceNames": ["web"],
                },
            ],
        ),
    ],
    ids=["core-with-subresource", "one-rule-per-group"],
)
def test_rules_from_flags(verbs, resources, names, rules) -> None:
    assert rules_from(verbs, resources, names) == rules


@pytest.mark.parametrize(
    "resources, fragment",
    [(["widgets"], 'resource type "widgets"'), (["pods.apps"], 'in the "core" group')],
    ids=["unknown", "wrong-group"],
)
def test_bad_resources_are_named(resources, fragment) -> None:
    with pytest.raises(CliError, match=fragment):
        rules_from(["get"], resources, [])


def test_subjects_need_one_and_a_namespaced_serviceaccount() -> None:
    with pytest.raises(CliError, match="at least one"):
        subjects_from([], [], [])
    with pytest.raises(CliError, match="NAMESPACE:NAME"):
        subjects_from([], [], ["ci"])
    assert subjects_from(["jane"], [], ["team:ci"])[1] == {
        "kind": "ServiceAccount",
        "namespace": "team",
        "name": "ci",
    }


async def test_created_role_and_binding_grant_what_they_say(
    client: Any, connect: Any, admin_kubeconfig: pathlib.Path
) -> None:
    await client.create(
        "namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}
    )
    code, out, err = await run_kctl(
        admin_kubeconfig, "-n", "team", "create", "role", "reader", "--verb=get,list",
        "--resource=pods",
    )  # fmt: skip
    assert code == 0, err
    assert "role.rbac.authorization.k8s.io/reader created" in out
    code, _, err = await run_kctl(
        admin_kubeconfig, "-n", "team", "create", "rolebinding", "jane-reads", "--role=reader",
        "--user=jane",
    )  # fmt: skip
    assert code == 0, err
    jane = connect("jane")
    for _ in range(200):
        if (await jane.may("list", "pods", namespace="team")).allowed:
            break
        await asyncio.sleep(0.02)
    assert (await jane.may("list", "pods", namespace="team")).allowed
    assert not (await jane.may("delete", "pods", namespace="team")).allowed
    code, _, err = await run_kctl(
        admin_kubeconfig, "create", "rolebinding", "both", "--role=a", "--clusterrole=b",
        "--user=x",
    )  # fmt: skip
    assert code == 1 and "exactly one of --role and --clusterrole" in err
