"""kctl cordon, uncordon, drain and taint: the commands that take care of nodes.

drain cordons the node, then deletes its Pods (kubelite has no eviction
subresource and no PodDisruptionBudgets, so a drain is kubectl's
--disable-eviction: a plain graceful delete) and waits until they are gone.
As kubectl does, it refuses to delete Pods nothing would recreate (no
controller) without --force, Pods with emptyDir data without
--delete-emptydir-data, and DaemonSet Pods unless --ignore-daemonsets, in
which case they stay. A refused drain leaves the node cordoned.

taint takes Kubernetes' syntax: key=value:Effect or key:Effect adds (with
--overwrite to change the value of an existing key and effect); key:Effect-
removes that taint and key- every taint with that key.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
from typing import Any

from cli.errors import CliError, duration
from cli.session import Session
from machinery import errors, labels, meta
from machinery.clock import rfc3339

Obj = dict[str, Any]

EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


def register(commands: argparse._SubParsersAction) -> None:
    for verb, doc in (("cordon", "mark a node unschedulable"), ("uncordon", "mark it schedulable")):
        p = commands.add_parser(verb, help=doc, description=f"{doc.capitalize()}.")
        p.add_argument("node", metavar="NODE")
        p.set_defaults(handler=run_cordon if verb == "cordon" else run_uncordon)

    p = commands.add_parser(
        "drain",
        help="cordon a node and delete its Pods",
        description="Cordon NODE, delete its Pods (gracefully) and wait until they are gone.",
    )
    p.add_argument("node", metavar="NODE")
    p.add_argument(
        "--ignore-daemonsets", action="store_true", help="leave DaemonSet-managed Pods in place"
    )
    p.add_argument(
        "--force", action="store_true", help="also delete Pods that no controller manages"
    )
    p.add_argument(
        "--delete-emptydir-data", action="store_true", help="also delete Pods with emptyDir volumes"
    )
    p.add_argument(
        "--grace-period",
        type=int,
        default=-1,
        help="seconds each Pod gets to stop (default: the Pod's own)",
    )
    p.add_argument(
        "--timeout",
        type=duration,
        default=0.0,
        help="how long to wait for the Pods to go, e.g. 90s or 2m; 0 for no limit (default: 0)",
    )
    p.set_defaults(handler=run_drain)

    p = commands.add_parser(
        "taint",
        help="add or remove node taints",
        description="Add taints (key=value:Effect, key:Effect) or remove them "
        "(key:Effect-, key-) on a node. Effects: " + ", ".join(EFFECTS) + ".",
    )
    p.add_argument("kind", metavar="node", help="node (or nodes, no)")
    p.add_argument("node", metavar="NODE")
    p.add_argument("specs", nargs="+", metavar="TAINT")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the value of an existing taint"
    )
    p.set_defaults(handler=run_taint)


# -- cordon --------------------------------------------------------------------------------------


async def run_cordon(args: argparse.Namespace, session: Session) -> int:
    print(await set_unschedulable(session, args.node, True))
    return 0


async def run_uncordon(args: argparse.Namespace, session: Session) -> int:
    print(await set_unschedulable(session, args.node, False))
    return 0


async def set_unschedulable(session: Session, node: str, value: bool) -> str:
    """Cordon or uncordon; the line kubectl prints for it."""
    current = await session.api.get("nodes", node)
    verb = "cordoned" if value else "uncordoned"
    if bool((current.get("spec") or {}).get("unschedulable")) == value:
        return f"node/{node} already {verb}"
    await session.api.patch("nodes", node, {"spec": {"unschedulable": value or None}})
    return f"node/{node} {verb}"


# -- drain ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class DrainPlan:
    delete: list[Obj] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)  # DaemonSet Pods left alone
    unmanaged: list[str] = dataclasses.field(default_factory=list)  # deleted under --force
    refused: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # why -> pods


def plan_drain(pods: list[Obj], args: argparse.Namespace) -> DrainPlan:
    """Sort a node's Pods into those to delete, to leave, and those that block the drain."""
    plan = DrainPlan()
    for pod in pods:
        ref = meta.ref(pod)
        if MIRROR_ANNOTATION in meta.annotations_of(pod):
            continue  # a static Pod's mirror: its kubelet owns it
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            plan.delete.append(pod)
            continue
        owner = meta.controller_of(pod)
        if owner is not None and owner.get("kind") == "DaemonSet":
            if args.ignore_daemonsets:
                plan.ignored.append(ref)
            else:
                _refuse(
                    plan,
                    "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore)",
                    ref,
                )
            continue
        if owner is None:
            if not args.force:
                _refuse(
                    plan,
                    "cannot delete Pods that declare no controller (use --force to override)",
                    ref,
                )
                continue
            plan.unmanaged.append(ref)
        if _has_empty_dir(pod) and not args.delete_emptydir_data:
            _refuse(
                plan,
                "cannot delete Pods with local storage (use --delete-emptydir-data to override)",
                ref,
            )
            continue
        plan.delete.append(pod)
    return plan


def _refuse(plan: DrainPlan, why: str, ref: str) -> None:
    plan.refused.setdefault(why, []).append(ref)


def _has_empty_dir(pod: Obj) -> bool:
    return any("emptyDir" in v for v in (pod.get("spec") or {}).get("volumes") or [])


async def run_drain(args: argparse.Namespace, session: Session) -> int:
    node = args.node
    print(await set_unschedulable(session, node, True), flush=True)
    pods = (await session.api.list_all("pods", field_selector=f"spec.nodeName={node}")).items
    plan = plan_drain(pods, args)
    if plan.refused:
        reasons = "; ".join(f"{why}: {', '.join(refs)}" for why, refs in plan.refused.items())
        raise CliError(f'error: unable to drain node "{node}": {reasons}')
    if plan.ignored:
        print(f"Warning: ignoring DaemonSet-managed Pods: {', '.join(plan.ignored)}", flush=True)
    if plan.unmanaged:
        print(
            f"Warning: deleting Pods that declare no controller: {', '.join(plan.unmanaged)}",
            flush=True,
        )
    for pod in plan.delete:
        print(f"evicting pod {meta.ref(pod)}", flush=True)
        try:
            await session.api.delete(
                "pods",
                meta.name(pod),
                namespace=meta.namespace(pod),
                uid=meta.uid(pod),
                grace_period_seconds=args.grace_period,
            )
        except (errors.NotFound, errors.Conflict):
            pass  # gone already, or replaced by a new Pod of the same name
    await _wait_gone(session, node, plan.delete, args.timeout)
    print(f"node/{node} drained")
    return 0


async def _wait_gone(session: Session, node: str, pods: list[Obj], timeout: float) -> None:
    waiting = {meta.uid(p): p for p in pods}
    started = time.monotonic()
    while waiting:
        listed = await session.api.list_all("pods", field_selector=f"spec.nodeName={node}")
        present = {meta.uid(p) for p in listed.items}
        for uid in [u for u in waiting if u not in present]:
            print(f"pod/{meta.name(waiting.pop(uid))} evicted", flush=True)
        if not waiting:
            return
        if timeout and time.monotonic() - started > timeout:
            left = ", ".join(sorted(meta.ref(p) for p in waiting.values()))
            raise CliError(
                f"error: timed out after {timeout:g}s waiting for Pods to leave node {node}: "
                f"{left} (their kubelet may be unreachable; --grace-period=0 forces them)"
            )
        await asyncio.sleep(0.25)


# -- taint ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaintChange:
    key: str
    value: str
    effect: str  # "" on a removal means every effect of the key
    remove: bool


def parse_taint(spec: str) -> TaintChange:
    """One taint argument in kubectl's syntax; ValueError says what is wrong with it."""
    remove = spec.endswith("-")
    body = spec[:-1] if remove else spec
    rest, sep, effect = body.rpartition(":")
    if not sep:
        if not remove:
            raise ValueError(
                f'invalid taint spec "{spec}": must be key[=value]:Effect to add, '
                "or key[:Effect]- to remove"
            )
        rest, effect = body, ""
    key, has_value, value = rest.partition("=")
    if remove and has_value and not sep:
        raise ValueError(f'invalid taint spec "{spec}": to remove, give key:Effect- or key-')
    problem = labels.validate_label_key(key) if key else "must not be empty"
    if problem:
        raise ValueError(f'invalid taint key "{key}" in "{spec}": {problem}')
    if value:
        problem = labels.validate_label_value(value)
        if problem:
            raise ValueError(f'invalid taint value "{value}" in "{spec}": {problem}')
    if effect and effect not in EFFECTS or (sep and not effect):
        raise ValueError(
            f'invalid taint effect "{effect}" in "{spec}": must be one of {", ".join(EFFECTS)}'
        )
    return TaintChange(key, value, effect, remove)


def apply_taints(
    taints: list[Obj], changes: list[TaintChange], *, overwrite: bool, now: float
) -> list[Obj]:
    """The node's taints after the changes; ValueError for a clash or a missing taint."""
    result = [dict(t) for t in taints]
    for change in changes:
        if change.remove:
            kept = [
                t
                for t in result
                if not (t["key"] == change.key and change.effect in ("", t["effect"]))
            ]
            if len(kept) == len(result):
                shown = f"{change.key}:{change.effect}" if change.effect else change.key
                raise ValueError(f'taint "{shown}" not found')
            result = kept
            continue
        existing = [t for t in result if (t["key"], t["effect"]) == (change.key, change.effect)]
        if existing and not overwrite:
            raise ValueError(
                f"already has a {change.key} taint with effect {change.effect} "
                "and --overwrite is false"
            )
        result = [t for t in result if t not in existing]
        taint: Obj = {"key": change.key, "effect": change.effect}
        if change.value:
            taint["value"] = change.value
        if change.effect == "NoExecute":
            taint["timeAdded"] = rfc3339(now)  # evictions count from here
        result.append(taint)
    return result


async def run_taint(args: argparse.Namespace, session: Session) -> int:
    if session.kind(args.kind).kind != "Node":
        raise CliError(f'error: taint applies to nodes only, not "{args.kind}"')
    try:
        changes = [parse_taint(spec) for spec in args.specs]
    except ValueError as err:
        raise CliError(f"error: {err}") from None
    for _ in range(5):
        node = await session.api.get("nodes", args.node)
        spec = node.setdefault("spec", {})
        try:
            taints = apply_taints(
                spec.get("taints") or [], changes, overwrite=args.overwrite, now=time.time()
            )
        except ValueError as err:
            raise CliError(f"error: node {args.node}: {err}") from None
        if taints:
            spec["taints"] = taints
        else:
            spec.pop("taints", None)
        try:
            await session.api.update("nodes", node)
        except errors.Conflict:
            continue  # someone else changed the node: apply the changes to the new version
        print(f"node/{args.node} {_outcome(changes)}")
        return 0
    raise CliError(f"error: node {args.node} kept changing; try again")


def _outcome(changes: list[TaintChange]) -> str:
    adds, removes = any(not c.remove for c in changes), any(c.remove for c in changes)
    if adds and removes:
        return "modified"
    return "tainted" if adds else "untainted"
