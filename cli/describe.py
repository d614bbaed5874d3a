"""kctl describe: one object in words, with the Events about it.

The layout follows kubectl describe: "Field:  value" lines, indented
sections, and an Events table at the end (Type, Reason, Age, From, Message),
so the reasons the scheduler or the kubelet recorded (FailedScheduling,
BackOff, ...) are where a user looks for them.
"""

from __future__ import annotations

import argparse
import base64
import binascii
from typing import Any

import yaml

from cli import printers
from cli.errors import CliError
from cli.get import split_kind_name
from cli.session import Session
from machinery import pki
from machinery.kinds import Kind

Obj = dict[str, Any]


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("describe", help="show details of an object and its events")
    p.add_argument("kind", metavar="KIND[/NAME]")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument(
        "-l", "--selector", default="", help="describe every object matching this label selector"
    )
    p.set_defaults(handler=run)


async def run(args: argparse.Namespace, session: Session) -> int:
    kind_name, names = split_kind_name(args.kind, args.names)
    kind = session.kind(kind_name)
    ns = session.namespace_for(kind, args.namespace)
    if names:
        objects = [await session.api.get(kind, n, namespace=ns) for n in names]
    else:
        objects = (
            await session.api.list_all(kind, namespace=ns, label_selector=args.selector)
        ).items
        if not objects:
            raise CliError(f"No resources found in {ns or 'the cluster'}.")
    texts = []
    for obj in objects:
        events = await events_about(session, kind, obj)
        extra = await _related(session, kind, obj)
        texts.append(describe(kind, obj, events, extra))
    print("\n\n".join(texts))
    return 0


async def events_about(session: Session, kind: Kind, obj: Obj) -> list[Obj]:
    meta = obj["metadata"]
    selector = f"involvedObject.kind={kind.kind},involvedObject.name={meta['name']}"
    if meta.get("uid"):
        selector += f",involvedObject.uid={meta['uid']}"
    ns = meta.get("namespace") or "default"
    page = await session.api.list_all("events", namespace=ns, field_selector=selector)
    return sorted(page.items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")


async def _related(session: Session, kind: Kind, obj: Obj) -> list[tuple[str, Any]]:
    """Sections that need other objects: a Node's Pods, a Service's endpoints."""
    if kind.kind == "Node":
        pods = await session.api.list_all(
            "pods", field_selector=f"spec.nodeName={obj['metadata']['name']}"
        )
        rows = [["Namespace", "Name", "CPU Requests", "Memory Requests"]]
        for p in pods.items:
            req = [
                c.get("resources", {}).get("requests", {}) for c in p["spec"].get("containers", [])
            ]
            rows.append(
                [
                    p["metadata"]["namespace"],
                    p["metadata"]["name"],
                    ",".join(r.get("cpu", "0") for r in req),
                    ",".join(r.get("memory", "0") for r in req),
                ]
            )
        return [(f"Non-terminated Pods ({len(pods.items)} in total)", printers.align(rows))]
    if kind.kind == "Service":
        try:
            ep = await session.api.get(
                "endpoints", obj["metadata"]["name"], namespace=obj["metadata"]["namespace"]
            )
        except Exception:  # noqa: BLE001 - a Service without endpoints yet
            return [("Endpoints", "<none>")]
        return [("Endpoints", printers._endpoints_row(ep, False)[1])]
    return []


def _kv(value: Any) -> str:
    if isinstance(value, dict):
        return "\n".join(f"{k}={v}" for k, v in value.items()) or "<none>"
    return "<none>" if value in (None, "", []) else str(value)


def describe(kind: Kind, obj: Obj, events: list[Obj], extra: list[tuple[str, Any]]) -> str:
    meta = obj["metadata"]
    lines: list[tuple[str, Any]] = [("Name", meta["name"])]
    if kind.namespaced:
        lines.append(("Namespace", meta.get("namespace", "")))
    lines += [
        ("Labels", _kv(meta.get("labels"))),
        ("Annotations", _kv(_visible(meta.get("annotations")))),
    ]
    lines.append(("CreationTimestamp", meta.get("creationTimestamp")))
    if meta.get("deletionTimestamp"):
        lines.append(("DeletionTimestamp", meta["deletionTimestamp"]))
    owner = next((o for o in meta.get("ownerReferences") or [] if o.get("controller")), None)
    if owner:
        lines.append(("Controlled By", f"{owner['kind']}/{owner['name']}"))
    lines += SECTIONS.get(kind.kind, _generic)(obj)
    lines += extra
    lines.append(("Events", _events(events)))
    return _render(lines)


def _visible(annotations: dict[str, str] | None) -> dict[str, str]:
    return {
        k: v
        for k, v in (annotations or {}).items()
        if k != "kubectl.kubernetes.io/last-applied-configuration"
    }


def _render(lines: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, v in lines if "\n" not in str(v)) + 2
    out = []
    for key, value in lines:
        text = "<none>" if value in (None, "") else str(value)
        if (
            "\n" in text
            or key in ("Events", "Containers", "Conditions", "Data")
            or key.startswith("Non-terminated")
        ):
            first, *rest = text.split("\n")
            if key in ("Labels", "Annotations"):
                out.append(f"{key + ':':<{width}}{first}")
                out += [" " * width + r for r in rest]
            else:
                out.append(f"{key}:")
                out += ["  " + r for r in text.split("\n")]
        else:
            out.append(f"{key + ':':<{width}}{text}")
    return "\n".join(out)


def _events(events: list[Obj]) -> str:
    if not events:
        return "<none>"
    rows = [
        ["Type", "Reason", "Age", "From", "Message"],
        ["----", "------", "----", "----", "-------"],
    ]
    for e in events:
        count = e.get("count", 1)
        when = printers.age(
            e.get("lastTimestamp") or e.get("eventTime") or e["metadata"].get("creationTimestamp")
        )
        if count and count > 1:
            when = f"{when} (x{count})"
        source = e.get("source", {}).get("component") or e.get("reportingComponent", "")
        rows.append([e.get("type", ""), e.get("reason", ""), when, source, e.get("message", "")])
    return printers.align(rows)


def _conditions(obj: Obj) -> str:
    conds = obj.get("status", {}).get("conditions") or []
    if not conds:
        return "<none>"
    rows = [["Type", "Status", "Reason", "Message"]]
    rows += [
        [c.get("type", ""), c.get("status", ""), c.get("reason", ""), c.get("message", "")]
        for c in conds
    ]
    return printers.align(rows)


def _containers(pod: Obj) -> str:
    statuses = {c["name"]: c for c in pod.get("status", {}).get("containerStatuses") or []}
    parts = []
    for c in pod.get("spec", {}).get("containers") or []:
        st = statuses.get(c["name"], {})
        state = st.get("state", {})
        state_name = next(iter(state), "Waiting").capitalize()
        detail = state.get(state_name.lower(), {})
        block = [f"{c['name']}:", f"  Image:          {c.get('image')}"]
        if st.get("imageID"):
            block.append(f"  Image ID:       {st['imageID']}")
        ports = ",".join(
            f"{p['containerPort']}/{p.get('protocol', 'TCP')}" for p in c.get("ports") or []
        )
        block.append(f"  Port:           {ports or '<none>'}")
        block.append(f"  State:          {state_name}")
        for field in ("reason", "message", "exitCode", "startedAt", "finishedAt"):
            if field in detail:
                block.append(f"    {field[0].upper() + field[1:] + ':':<14}{detail[field]}")
        block.append(f"  Ready:          {st.get('ready', False)}")
        block.append(f"  Restart Count:  {st.get('restartCount', 0)}")
        res = c.get("resources") or {}
        for section in ("limits", "requests"):
            if res.get(section):
                block.append(f"  {section.capitalize()}:")
                block += [f"    {k}:  {v}" for k, v in res[section].items()]
        parts.append("\n".join(block))
    return "\n".join(parts)


def _pod(pod: Obj) -> list[tuple[str, Any]]:
    spec, status = pod.get("spec", {}), pod.get("status", {})
    return [
        ("Node", spec.get("nodeName") or "<none>"),
        ("Start Time", status.get("startTime")),
        ("Status", printers.pod_status(pod)),
        ("IP", status.get("podIP")),
        ("QoS Class", status.get("qosClass")),
        ("Containers", _containers(pod)),
        ("Conditions", _conditions(pod)),
        ("Node-Selectors", _kv(spec.get("nodeSelector"))),
        (
            "Tolerations",
            "\n".join(_toleration(t) for t in spec.get("tolerations") or []) or "<none>",
        ),
    ]


def _toleration(t: Obj) -> str:
    text = t.get("key", "")
    if t.get("operator") == "Exists":
        text += " op=Exists" if text else "op=Exists"
    elif t.get("value"):
        text += f"={t['value']}"
    if t.get("effect"):
        text += f":{t['effect']}"
    if t.get("tolerationSeconds") is not None:
        text += f" for {t['tolerationSeconds']}s"
    return text


def _deployment(d: Obj) -> list[tuple[str, Any]]:
    spec, status = d.get("spec", {}), d.get("status", {})
    strategy = spec.get("strategy", {})
    replicas = (
        f"{spec.get('replicas', 0)} desired | {status.get('updatedReplicas', 0)} updated | "
        f"{status.get('replicas', 0)} total | {status.get('availableReplicas', 0)} available | "
        f"{status.get('unavailableReplicas', 0)} unavailable"
    )
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    lines = [
        ("Selector", ",".join(f"{k}={v}" for k, v in selector.items())),
        ("Replicas", replicas),
        ("StrategyType", strategy.get("type")),
        ("MinReadySeconds", spec.get("minReadySeconds", 0)),
    ]
    if strategy.get("rollingUpdate"):
        ru = strategy["rollingUpdate"]
        lines.append(
            (
                "RollingUpdateStrategy",
                f"{ru.get('maxUnavailable')} max unavailable, {ru.get('maxSurge')} max surge",
            )
        )
    containers = spec.get("template", {}).get("spec", {}).get("containers") or []
    lines.append(("Pod Template", "\n".join(f"{c['name']}: {c.get('image')}" for c in containers)))
    lines.append(("Conditions", _conditions(d)))
    return lines


def _node(node: Obj) -> list[tuple[str, Any]]:
    spec, status = node.get("spec", {}), node.get("status", {})
    taints = [
        f"{t['key']}={t.get('value', '')}:{t['effect']}"
        if t.get("value")
        else f"{t['key']}:{t['effect']}"
        for t in spec.get("taints") or []
    ]
    addresses = "\n".join(f"{a['type']}: {a['address']}" for a in status.get("addresses") or [])
    return [
        ("Taints", "\n".join(taints) or "<none>"),
        ("Unschedulable", spec.get("unschedulable", False)),
        ("PodCIDR", spec.get("podCIDR")),
        ("Conditions", _conditions(node)),
        ("Addresses", addresses or "<none>"),
        ("Capacity", _kv(status.get("capacity"))),
        ("Allocatable", _kv(status.get("allocatable"))),
    ]


def _service(svc: Obj) -> list[tuple[str, Any]]:
    spec = svc.get("spec", {})
    ports = "\n".join(
        f"{p.get('name') or '<unset>'}  {p['port']}/{p.get('protocol', 'TCP')}"
        f" -> {p.get('targetPort')}" + (f" (NodePort {p['nodePort']})" if p.get("nodePort") else "")
        for p in spec.get("ports") or []
    )
    return [
        ("Selector", ",".join(f"{k}={v}" for k, v in (spec.get("selector") or {}).items())),
        ("Type", spec.get("type")),
        ("IP", spec.get("clusterIP")),
        ("Port", ports or "<none>"),
        ("Session Affinity", spec.get("sessionAffinity")),
    ]


def _generic(obj: Obj) -> list[tuple[str, Any]]:
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    if not body:
        return []
    return [
        (k[0].upper() + k[1:], yaml.safe_dump(v, sort_keys=False).rstrip()) for k, v in body.items()
    ]


def _secret(secret: Obj) -> list[tuple[str, Any]]:
    """Type and each key's size, as kubectl shows them: the values are never printed."""
    sizes = []
    for key, value in sorted((secret.get("data") or {}).items()):
        try:
            size = len(base64.b64decode(value))
        except (binascii.Error, ValueError, TypeError):
            size = len(value) if isinstance(value, str) else 0
        sizes.append(f"{key}:  {size} bytes")
    return [("Type", secret.get("type") or "Opaque"), ("Data", "\n".join(sizes) or "<none>")]


def _serviceaccount(sa: Obj) -> list[tuple[str, Any]]:
    pulls = ", ".join(r.get("name", "") for r in sa.get("imagePullSecrets") or []) or "<none>"
    mounts = ", ".join(r.get("name", "") for r in sa.get("secrets") or []) or "<none>"
    return [("Image pull secrets", pulls), ("Mountable secrets", mounts)]


def _csr(csr: Obj) -> list[tuple[str, Any]]:
    """Who asked, for what (the subject and names in the PEM), and where it stands."""
    spec = csr.get("spec") or {}
    lines: list[tuple[str, Any]] = [
        ("Requesting User", spec.get("username") or "<none>"),
        ("Groups", ", ".join(spec.get("groups") or []) or "<none>"),
        ("Signer", spec.get("signerName") or "<none>"),
        ("Usages", ", ".join(spec.get("usages") or []) or "<none>"),
    ]
    if spec.get("expirationSeconds"):
        lines.append(("Requested Duration", f"{spec['expirationSeconds']}s"))
    lines.append(("Status", printers.csr_condition(csr)))
    try:
        request = pki.read_csr(base64.b64decode(spec.get("request", "")))
    except (binascii.Error, ValueError, TypeError, pki.PKIError) as err:
        lines.append(("Subject", f"<unreadable request: {err}>"))
    else:
        subject = f"CN={request.subject.user}"
        subject += "".join(f", O={g}" for g in request.subject.groups)
        lines.append(("Subject", subject))
        lines.append(("Subject Alternative Names", ", ".join(request.alt_names) or "<none>"))
    lines.append(("Conditions", _conditions(csr)))
    return lines


def _role(role: Obj) -> list[tuple[str, Any]]:
    """The rules as kubectl lays them out: one row per resource of each rule."""
    rows = [
        ["Resources", "Non-Resource URLs", "Resource Names", "Verbs"],
        ["---------", "-----------------", "--------------", "-----"],
    ]
    for rule in role.get("rules") or []:
        if not isinstance(rule, dict):
            continue
        names, verbs = _listed(rule.get("resourceNames")), _listed(rule.get("verbs"))
        groups = [g for g in rule.get("apiGroups") or [] if isinstance(g, str)] or [""]
        for resource in rule.get("resources") or []:
            for group in groups:
                shown = f"{resource}.{group}" if group else resource
                rows.append([shown, "[]", names, verbs])
        for url in rule.get("nonResourceURLs") or []:
            rows.append(["", f"[{url}]", "[]", verbs])
    return [("PolicyRule", printers.align(rows) if len(rows) > 2 else "<none>")]


def _listed(value: Any) -> str:
    return "[" + " ".join(str(v) for v in value or []) + "]"


def _binding(binding: Obj) -> list[tuple[str, Any]]:
    ref = binding.get("roleRef") or {}
    rows = [["Kind", "Name", "Namespace"], ["----", "----", "---------"]]
    for s in binding.get("subjects") or []:
        if isinstance(s, dict):
            rows.append([s.get("kind", ""), s.get("name", ""), s.get("namespace", "")])
    return [
        ("Role", f"Kind:  {ref.get('kind', '')}\nName:  {ref.get('name', '')}"),
        ("Subjects", printers.align(rows) if len(rows) > 2 else "<none>"),
    ]


SECTIONS = {
    "Pod": _pod,
    "Deployment": _deployment,
    "Node": _node,
    "Service": _service,
    "Secret": _secret,
    "ServiceAccount": _serviceaccount,
    "CertificateSigningRequest": _csr,
    "Role": _role,
    "ClusterRole": _role,
    "RoleBinding": _binding,
    "ClusterRoleBinding": _binding,
}
