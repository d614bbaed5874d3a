"""kctl run, scale, set image and rollout: the commands that drive Deployments.

They only write specs (a new Deployment, spec.replicas, an image, a pod
template copied back from an old ReplicaSet, spec.paused); the Deployment
controller does the rolling. `rollout status` follows the Deployment through
a watch and reads the same status fields and conditions the controller
writes, so it ends when the controller says the rollout is complete, or
fails when the controller says the progress deadline passed.

Revisions are read from the annotations the controller puts on each
ReplicaSet it owns (deployment.kubernetes.io/revision).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
from typing import Any

import yaml

from cli import printers
from cli.errors import CliError, duration
from cli.get import split_kind_name
from cli.session import Session
from machinery import errors, labels, quantity
from machinery.kinds import Kind

Obj = dict[str, Any]

REVISION = "deployment.kubernetes.io/revision"
CHANGE_CAUSE = "kubernetes.io/change-cause"
HASH_LABEL = "pod-template-hash"
TIMED_OUT = "ProgressDeadlineExceeded"


def register(commands: argparse._SubParsersAction) -> None:
    _register_run(commands)
    _register_scale(commands)
    _register_set(commands)
    _register_rollout(commands)


# -- argument parsing ---------------------------------------------------------------------------


def _register_run(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "run",
        help="create a Deployment running one image",
        description="Create a Deployment NAME whose Pods run IMAGE. Words after -- become "
        "the container's args (its command with --command). Example: "
        "kctl run httpd-app --image=httpd --replicas=2 --port=80",
    )
    p.add_argument("name", metavar="NAME")
    _add_run_options(p)
    # argparse cannot mix options and a trailing list after a sub-command's positional,
    # so everything after NAME is taken whole here and parsed again by run_run.
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(handler=run_run)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", help="container image, e.g. httpd:2.4 (required)")
    p.add_argument("--replicas", type=int, default=1, help="Pods to run (default: %(default)s)")
    p.add_argument("--port", type=int, help="port the container listens on")
    p.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable"
    )
    p.add_argument(
        "--labels", "-l", default="", metavar="K=V,...", help="labels (default: app=NAME)"
    )
    p.add_argument("--requests", default="", metavar="cpu=..,memory=..", help="resource requests")
    p.add_argument("--limits", default="", metavar="cpu=..,memory=..", help="resource limits")
    p.add_argument(
        "--command",
        dest="as_command",
        action="store_true",
        help="the words after -- are the command, not args",
    )
    p.add_argument("--dry-run", action="store_true", help="validate on the server without saving")


def parse_run_rest(args: argparse.Namespace) -> None:
    """Parse what followed NAME (options, then -- CMD ARGS) into args."""
    rest = argparse.ArgumentParser(prog="kctl run NAME", add_help=False)
    _add_run_options(rest)
    rest.add_argument("argv", nargs="*")
    rest.parse_args(args.rest, namespace=args)
    if not args.image:
        raise CliError("error: kctl run: --image is required, e.g. --image=httpd")


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="KIND/NAME", help="e.g. deploy/web (or: deploy web)")
    p.add_argument("names", nargs="*", metavar="NAME", help=argparse.SUPPRESS)


def _register_scale(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "scale",
        help="set the replicas of a Deployment or ReplicaSet",
        description="Set spec.replicas of a Deployment or ReplicaSet: kctl scale deploy/web "
        "--replicas=3",
    )
    _add_target(p)
    p.add_argument("--replicas", type=int, required=True, help="the new number of replicas")
    p.add_argument(
        "--current-replicas",
        type=int,
        default=-1,
        help="only scale if the object has this many replicas now",
    )
    p.set_defaults(handler=run_scale)


def _register_set(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("set", help="change a field of objects (image)")
    what = p.add_subparsers(dest="what", metavar="image")
    what.required = True
    image = what.add_parser(
        "image",
        help="change container images",
        description="Change container images of a Deployment, ReplicaSet or Pod: "
        "kctl set image deploy/web web=httpd:2.4 (CONTAINER may be * for every container)",
    )
    image.add_argument("target", metavar="KIND/NAME")
    image.add_argument("pairs", nargs="+", metavar="CONTAINER=IMAGE")
    image.set_defaults(handler=run_set_image)


def _register_rollout(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "rollout",
        help="follow, inspect, undo, pause or resume the rollout of a Deployment",
        description="Manage the rollout of a Deployment.",
    )
    actions = p.add_subparsers(dest="action", metavar="status|history|undo|pause|resume")
    actions.required = True
    status = actions.add_parser(
        "status",
        help="follow a rollout until it completes",
        description="Print the rollout's progress until it completes (exit 0), or fail when "
        "its progress deadline is exceeded or --timeout passes.",
    )
    _add_target(status)
    status.add_argument(
        "--timeout",
        type=duration,
        default=0.0,
        help="how long to wait, e.g. 90s or 2m; 0 for no limit (default)",
    )
    status.add_argument(
        "-w",
        "--watch",
        default="true",
        choices=("true", "false"),
        help="follow until done (default), or print the state once",
    )
    status.set_defaults(handler=run_rollout_status)
    history = actions.add_parser("history", help="list the revisions of a Deployment")
    _add_target(history)
    history.add_argument("--revision", type=int, default=0, help="show this revision's template")
    history.set_defaults(handler=run_rollout_history)
    undo = actions.add_parser("undo", help="roll back to an earlier revision")
    _add_target(undo)
    undo.add_argument(
        "--to-revision", type=int, default=0, help="revision to return to (default: the previous)"
    )
    undo.set_defaults(handler=run_rollout_undo)
    pause = actions.add_parser("pause", help="stop rolling out template changes")
    _add_target(pause)
    pause.set_defaults(handler=run_rollout_pause)
    resume = actions.add_parser("resume", help="carry on rolling out")
    _add_target(resume)
    resume.set_defaults(handler=run_rollout_resume)


def _target(
    args: argparse.Namespace, session: Session, allowed: tuple[str, ...], verb: str
) -> tuple[Kind, str, str]:
    """The kind, namespace and name of the one object a command works on."""
    kind_name, names = split_kind_name(args.target, list(getattr(args, "names", [])))
    kind = session.kind(kind_name)
    if kind.resource not in allowed:
        raise CliError(f"error: {verb} works on {' and '.join(allowed)}, not on {kind.resource}")
    if len(names) != 1:
        raise CliError(f"error: {verb} takes exactly one {kind.singular} name, got {len(names)}")
    return kind, session.namespace_for(kind, args.namespace), names[0]


# -- run ----------------------------------------------------------------------------------------


def parse_pairs(text: str, flag: str) -> dict[str, str]:
    """k=v,k2=v2 as a dict; CliError names the flag and the bad item."""
    result: dict[str, str] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"error: {flag}: {item!r} is not KEY=VALUE")
        result[key] = value
    return result


def parse_labels(text: str) -> dict[str, str]:
    result = parse_pairs(text, "--labels")
    for key, value in result.items():
        problem = labels.validate_label_key(key) or labels.validate_label_value(value)
        if problem:
            raise CliError(f"error: --labels: invalid label {key}={value}: {problem}")
    return result


def parse_resources(text: str, flag: str) -> dict[str, str]:
    result = parse_pairs(text, flag)
    for name, value in result.items():
        if not quantity.is_quantity(value):
            raise CliError(
                f"error: {flag}: {name}={value}: not a quantity (e.g. cpu=250m, memory=64Mi)"
            )
    return result


def parse_env(items: list[str]) -> list[dict[str, str]]:
    env = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"error: --env: {item!r} is not KEY=VALUE")
        env.append({"name": key, "value": value})
    return env


def deployment_for_run(args: argparse.Namespace, namespace: str) -> Obj:
    """The Deployment `kctl run` creates, from its flags; CliError names a bad flag."""
    if args.replicas < 0:
        raise CliError(f"error: --replicas must not be negative, got {args.replicas}")
    if args.port is not None and not 1 <= args.port <= 65535:
        raise CliError(f"error: --port must be between 1 and 65535, got {args.port}")
    if not args.image.strip():
        raise CliError("error: --image must not be empty")
    selected = parse_labels(args.labels) or {"app": args.name}
    container: Obj = {"name": args.name, "image": args.image}
    if args.port is not None:
        container["ports"] = [{"containerPort": args.port}]
    env = parse_env(args.env)
    if env:
        container["env"] = env
    resources = {
        field: parsed
        for field, parsed in (
            ("requests", parse_resources(args.requests, "--requests")),
            ("limits", parse_resources(args.limits, "--limits")),
        )
        if parsed
    }
    if resources:
        container["resources"] = resources
    if args.argv:
        container["command" if args.as_command else "args"] = list(args.argv)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": args.name, "namespace": namespace, "labels": dict(selected)},
        "spec": {
            "replicas": args.replicas,
            "selector": {"matchLabels": dict(selected)},
            "template": {
                "metadata": {"labels": dict(selected)},
                "spec": {"containers": [container]},
            },
        },
    }


async def run_run(args: argparse.Namespace, session: Session) -> int:
    parse_run_rest(args)
    kind = session.kind("deployments")
    namespace = session.namespace_for(kind, args.namespace)
    deployment = deployment_for_run(args, namespace)
    await session.api.create(kind, deployment, namespace=namespace, dry_run=args.dry_run)
    suffix = " (server dry run)" if args.dry_run else ""
    print(f"{printers.name_of(kind, deployment)} created{suffix}")
    return 0


# -- scale --------------------------------------------------------------------------------------


async def run_scale(args: argparse.Namespace, session: Session) -> int:
    kind, namespace, name = _target(args, session, ("deployments", "replicasets"), "scale")
    if args.replicas < 0:
        raise CliError(f"error: --replicas must not be negative, got {args.replicas}")
    patch: Obj = {"spec": {"replicas": args.replicas}}
    if args.current_replicas >= 0:
        live = await session.api.get(kind, name, namespace=namespace)
        have = live["spec"].get("replicas", 1)
        if have != args.current_replicas:
            raise CliError(
                f"error: expected {args.current_replicas} replicas of "
                f"{printers.name_of(kind, live)}, found {have}: not scaled"
            )
        patch["metadata"] = {"resourceVersion": live["metadata"]["resourceVersion"]}
    scaled = await session.api.patch(kind, name, patch, namespace=namespace)
    print(f"{printers.name_of(kind, scaled)} scaled")
    return 0


# -- set image ----------------------------------------------------------------------------------


def _pod_spec(kind: Kind, obj: Obj) -> Obj:
    if kind.kind == "Pod":
        return obj["spec"]
    return obj["spec"]["template"]["spec"]


def set_images(kind: Kind, obj: Obj, images: dict[str, str]) -> bool:
    """Put the images into obj's containers; True when one changed. CliError for a bad name."""
    spec = _pod_spec(kind, obj)
    containers = [*spec.get("initContainers", []), *spec.get("containers", [])]
    known = {c["name"] for c in containers}
    for name in images:
        if name != "*" and name not in known:
            raise CliError(
                f'error: unable to find container named "{name}" in '
                f"{printers.name_of(kind, obj)} (containers: {', '.join(sorted(known))})"
            )
    changed = False
    for container in containers:
        image = images.get(container["name"], images.get("*"))
        if image is not None and container.get("image") != image:
            container["image"] = image
            changed = True
    return changed


async def run_set_image(args: argparse.Namespace, session: Session) -> int:
    pairs = list(args.pairs)
    if "/" not in args.target:
        if not pairs:
            raise CliError("error: give KIND/NAME CONTAINER=IMAGE ...")
        args.names, pairs = [pairs[0]], pairs[1:]
    kind, namespace, name = _target(
        args, session, ("deployments", "replicasets", "pods"), "set image"
    )
    images = parse_pairs(",".join(pairs), "set image")
    if not images:
        raise CliError("error: give at least one CONTAINER=IMAGE")
    if any(not image for image in images.values()):
        raise CliError("error: set image: an image must not be empty")
    for _ in range(5):
        live = await session.api.get(kind, name, namespace=namespace)
        if not set_images(kind, live, images):
            print(f"{printers.name_of(kind, live)} image unchanged")
            return 0
        try:
            await session.api.update(kind, live)
        except errors.Conflict:
            continue  # changed meanwhile: apply the images to the new version
        print(f"{printers.name_of(kind, live)} image updated")
        return 0
    raise CliError(f"error: {printers.name_of(kind, live)} kept changing; image not updated")


# -- rollout status -----------------------------------------------------------------------------


def rollout_message(d: Obj) -> tuple[str, bool]:
    """What a rollout is waiting for, and whether it is done; CliError when it failed."""
    name = d["metadata"]["name"]
    spec, status = d.get("spec", {}), d.get("status") or {}
    if d["metadata"].get("generation", 1) > status.get("observedGeneration", 0):
        return "Waiting for deployment spec update to be observed...", False
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == TIMED_OUT:
            raise CliError(f'error: deployment "{name}" exceeded its progress deadline')
    want = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    total = status.get("replicas", 0)
    available = status.get("availableReplicas", 0)
    waiting = f'Waiting for deployment "{name}" rollout to finish: '
    paused = " (the deployment is paused)" if spec.get("paused") else ""
    if updated < want:
        return f"{waiting}{updated} out of {want} new replicas have been updated...{paused}", False
    if total > updated:
        return f"{waiting}{total - updated} old replicas are pending termination...{paused}", False
    if available < updated:
        return f"{waiting}{available} of {updated} updated replicas are available...", False
    return f'deployment "{name}" successfully rolled out', True


async def run_rollout_status(args: argparse.Namespace, session: Session) -> int:
    kind, namespace, name = _target(args, session, ("deployments",), "rollout")
    follow = _follow_rollout(session, kind, namespace, name, watch=args.watch == "true")
    if args.timeout <= 0:
        return await follow
    try:
        return await asyncio.wait_for(follow, args.timeout)
    except TimeoutError:
        raise CliError(
            f'error: timed out after {args.timeout:g}s waiting for deployment "{name}" to roll out'
        ) from None


async def _follow_rollout(
    session: Session, kind: Kind, namespace: str, name: str, *, watch: bool
) -> int:
    deployment = await session.api.get(kind, name, namespace=namespace)
    last = ""

    def report(d: Obj) -> bool:
        nonlocal last
        message, done = rollout_message(d)
        if message != last:
            print(message, flush=True)
            last = message
        return done

    if report(deployment) or not watch:
        return 0
    version = deployment["metadata"]["resourceVersion"]
    while True:
        try:
            async for event in session.api.watch(
                kind,
                namespace=namespace,
                field_selector=f"metadata.name={name}",
                resource_version=version,
            ):
                version = event.resource_version or version
                if event.type == "BOOKMARK":
                    continue
                if event.type == "DELETED":
                    raise CliError(f'error: deployment "{name}" was deleted')
                if report(event.object):
                    return 0
        except errors.Expired:
            deployment = await session.api.get(kind, name, namespace=namespace)
            version = deployment["metadata"]["resourceVersion"]
            if report(deployment):
                return 0


# -- rollout history and undo -------------------------------------------------------------------


def revision_of(rs: Obj) -> int:
    try:
        return int((rs["metadata"].get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


async def owned_replicasets(session: Session, d: Obj) -> list[Obj]:
    """The ReplicaSets d controls, oldest revision first."""
    page = await session.api.list_all("replicasets", namespace=d["metadata"]["namespace"])
    uid = d["metadata"]["uid"]
    owned = [
        rs
        for rs in page.items
        if any(
            r.get("controller") and r.get("uid") == uid
            for r in rs["metadata"].get("ownerReferences") or []
        )
    ]
    return sorted(owned, key=revision_of)


def template_without_hash(template: Obj) -> Obj:
    result = copy.deepcopy(template)
    tlabels = (result.get("metadata") or {}).get("labels") or {}
    tlabels.pop(HASH_LABEL, None)
    return result


async def run_rollout_history(args: argparse.Namespace, session: Session) -> int:
    kind, namespace, name = _target(args, session, ("deployments",), "rollout")
    d = await session.api.get(kind, name, namespace=namespace)
    history = [rs for rs in await owned_replicasets(session, d) if revision_of(rs) > 0]
    title = printers.name_of(kind, d)
    if args.revision:
        chosen = [rs for rs in history if revision_of(rs) == args.revision]
        if not chosen:
            raise CliError(f"error: unable to find the specified revision {args.revision}")
        print(f"{title} with revision #{args.revision}")
        print("Pod Template:")
        dumped = yaml.safe_dump(chosen[0]["spec"]["template"], sort_keys=False)
        print("  " + dumped.rstrip("\n").replace("\n", "\n  "))
        return 0
    print(title)
    rows = [["REVISION", "CHANGE-CAUSE"]]
    for rs in history:
        cause = (rs["metadata"].get("annotations") or {}).get(CHANGE_CAUSE, "<none>")
        rows.append([str(revision_of(rs)), cause])
    print(printers.align(rows))
    return 0


async def run_rollout_undo(args: argparse.Namespace, session: Session) -> int:
    kind, namespace, name = _target(args, session, ("deployments",), "rollout")
    d = await session.api.get(kind, name, namespace=namespace)
    title = printers.name_of(kind, d)
    if d["spec"].get("paused"):
        raise CliError(
            f"error: cannot roll back the paused {title}: "
            f"resume it first with kctl rollout resume deploy/{name}"
        )
    history = [rs for rs in await owned_replicasets(session, d) if revision_of(rs) > 0]
    target = _undo_target(history, args.to_revision, name)
    template = template_without_hash(target["spec"]["template"])
    if template == template_without_hash(d["spec"]["template"]):
        print(
            f"{title} skipped rollback "
            f"(current template already matches revision {revision_of(target)})"
        )
        return 0
    d["spec"]["template"] = template
    await session.api.update(kind, d)
    print(f"{title} rolled back")
    return 0


def _undo_target(history: list[Obj], to_revision: int, name: str) -> Obj:
    if to_revision < 0:
        raise CliError(f"error: --to-revision must not be negative, got {to_revision}")
    if to_revision:
        for rs in history:
            if revision_of(rs) == to_revision:
                return rs
        raise CliError(f"error: unable to find specified revision {to_revision} in history")
    if len(history) < 2:
        raise CliError(f'error: no earlier revision of deployment "{name}" to roll back to')
    return history[-2]


# -- pause and resume ---------------------------------------------------------------------------


async def run_rollout_pause(args: argparse.Namespace, session: Session) -> int:
    return await _set_paused(args, session, paused=True)


async def run_rollout_resume(args: argparse.Namespace, session: Session) -> int:
    return await _set_paused(args, session, paused=False)


async def _set_paused(args: argparse.Namespace, session: Session, *, paused: bool) -> int:
    kind, namespace, name = _target(args, session, ("deployments",), "rollout")
    d = await session.api.get(kind, name, namespace=namespace)
    title = printers.name_of(kind, d)
    if bool(d["spec"].get("paused")) == paused:
        state = "already paused" if paused else "not paused"
        raise CliError(f"error: {title} is {state}")
    patch = {
        "metadata": {"resourceVersion": d["metadata"]["resourceVersion"]},
        "spec": {"paused": paused},
    }
    await session.api.patch(kind, name, patch, namespace=namespace)
    print(f"{title} {'paused' if paused else 'resumed'}")
    return 0
