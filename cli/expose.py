"""kctl expose: a Service in front of a Deployment, ReplicaSet, Pod or Service.

The Service selects what the exposed object selects (a Deployment's or
ReplicaSet's spec.selector.matchLabels, a Pod's labels, a Service's
selector); its targetPort defaults to the first container port of the
exposed workload, else to --port, as kubectl does.
"""

from __future__ import annotations

import argparse
from typing import Any

from cli.errors import CliError
from cli.get import split_kind_name
from cli.session import Session

EXPOSABLE = {"Deployment", "ReplicaSet", "Pod", "Service"}


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "expose",
        help="create a Service for a deployment, replica set, pod or service",
        description="Create a Service that load-balances over what KIND/NAME selects.",
    )
    p.add_argument("kind", metavar="KIND[/NAME]", help="deployment, rs, pod or service")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument(
        "--port", type=int, help="the Service's port (default: the first container port)"
    )
    p.add_argument(
        "--target-port", default="", help="container port number or name (default: --port)"
    )
    p.add_argument(
        "--type", default="ClusterIP", choices=("ClusterIP", "NodePort"), help="Service type"
    )
    p.add_argument("--protocol", default="TCP", choices=("TCP", "UDP", "SCTP"))
    p.add_argument("--name", default="", help="the Service's name (default: the exposed object's)")
    p.add_argument("--node-port", type=int, default=0, help="a fixed node port for type NodePort")
    p.add_argument("--cluster-ip", default="", help='a fixed cluster IP, or "None" for headless')
    p.set_defaults(handler=run)


def _selector_of(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    if kind in ("Deployment", "ReplicaSet"):
        selector = obj.get("spec", {}).get("selector") or {}
        if selector.get("matchExpressions"):
            raise CliError(
                f"error: the {kind} selects with matchExpressions, which a Service selector "
                "cannot express; write the Service yourself"
            )
        return dict(selector.get("matchLabels") or {})
    if kind == "Pod":
        return dict(obj.get("metadata", {}).get("labels") or {})
    return dict(obj.get("spec", {}).get("selector") or {})


def _first_port(kind: str, obj: dict[str, Any]) -> int | None:
    if kind == "Service":
        ports = obj.get("spec", {}).get("ports") or []
        return ports[0]["port"] if ports else None
    spec = obj.get("spec", {})
    pod_spec = spec if kind == "Pod" else spec.get("template", {}).get("spec", {})
    for container in pod_spec.get("containers") or []:
        for port in container.get("ports") or []:
            return int(port["containerPort"])
    return None


async def run(args: argparse.Namespace, session: Session) -> int:
    kind_name, names = split_kind_name(args.kind, args.names)
    if len(names) != 1:
        raise CliError("error: expose takes exactly one object: KIND NAME or KIND/NAME")
    kind = session.kind(kind_name)
    if kind.kind not in EXPOSABLE:
        raise CliError(
            f"error: cannot expose a {kind.kind}: only deployments, replica sets, pods and services"
        )
    namespace = session.namespace_for(kind, args.namespace)
    obj = await session.api.get(kind, names[0], namespace=namespace)
    selector = _selector_of(kind.kind, obj)
    if not selector:
        raise CliError(f"error: {kind.resource}/{names[0]} has no labels to select its Pods by")
    port = args.port or _first_port(kind.kind, obj)
    if port is None:
        raise CliError(f"error: {kind.resource}/{names[0]} declares no container port: pass --port")
    target: int | str = port
    if args.target_port:
        target = int(args.target_port) if args.target_port.isdigit() else args.target_port
    service_port: dict[str, Any] = {"port": port, "targetPort": target, "protocol": args.protocol}
    if args.node_port:
        if args.type != "NodePort":
            raise CliError("error: --node-port needs --type=NodePort")
        service_port["nodePort"] = args.node_port
    spec: dict[str, Any] = {"type": args.type, "selector": selector, "ports": [service_port]}
    if args.cluster_ip:
        spec["clusterIP"] = args.cluster_ip
    name = args.name or names[0]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": dict(obj["metadata"].get("labels") or selector),
        },
        "spec": spec,
    }
    await session.api.create("services", service, namespace=namespace)
    print(f"service/{name} exposed")
    return 0
