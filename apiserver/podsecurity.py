"""Pod Security admission: the Pod Security Standards, enforced per namespace on Pods.

A namespace's level is its label pod-security.kubernetes.io/enforce: privileged (nothing is
checked), baseline (no known way to the node: host namespaces, privileged containers, host
paths and ports, extra capabilities, unmasked /proc, unsafe sysctls, switched-off seccomp,
AppArmor or SELinux) or restricted (baseline plus current hardening: non-root, no privilege
escalation, every capability dropped, a seccomp profile, ordinary volume types only). A
namespace without the label gets the server's default level (baseline unless configured).
The checks are those of the standards' latest version; the enforce-version label is
accepted but evaluated as latest, and the message says "latest".

Only Pods are refused. Kubernetes only warns about a Deployment or ReplicaSet whose template
would be refused, and this API has no warnings: they are admitted, and their controller's
Pod creations fail with the refusal (an Event), as in Kubernetes. A Pod update is judged
only when it changes the spec, so metadata, status and deletion never get stuck on a policy
that changed after the Pod was admitted. The warn and audit labels are not acted on.

A refusal names every failing check, ordered by the check's identifier as Kubernetes
orders them, in Kubernetes' words: `pods "x" is forbidden: violates PodSecurity
"baseline:latest": hostPath volumes (volume "v"), privileged (container "c" must not set
securityContext.privileged=true)`. A restricted check that replaces a baseline one (the
capability, seccomp and volume checks) is reported in its restricted form only.

Checks read the Pod after defaulting and schema validation, so every field has its
schema type; they are pure functions of the Pod.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from machinery import errors

PRIVILEGED = "privileged"
BASELINE = "baseline"
RESTRICTED = "restricted"
LEVELS = (PRIVILEGED, BASELINE, RESTRICTED)
LABEL_PREFIX = "pod-security.kubernetes.io/"
ENFORCE_LABEL = LABEL_PREFIX + "enforce"
MODES = ("enforce", "audit", "warn")
APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"

BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
RESTRICTED_ADDABLE_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
RESTRICTED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)


@dataclasses.dataclass(frozen=True)
class Violation:
    check: str  # the check's identifier, which orders a refusal's parts
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.reason} ({self.detail})" if self.detail else self.reason


@dataclasses.dataclass(frozen=True)
class Container:
    name: str
    security: dict[str, Any]  # its securityContext, {} when unset
    spec: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class PodView:
    """What the checks read of a Pod, with absent objects as empty ones."""

    annotations: dict[str, Any]
    spec: dict[str, Any]
    security: dict[str, Any]  # spec.securityContext
    containers: tuple[Container, ...]  # init containers first, as Kubernetes visits them

    @classmethod
    def of(cls, metadata: dict[str, Any], spec: dict[str, Any]) -> PodView:
        containers = tuple(
            Container(str(c.get("name", "")), c.get("securityContext") or {}, c)
            for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
        )
        return cls(
            annotations=metadata.get("annotations") or {},
            spec=spec,
            security=spec.get("securityContext") or {},
            containers=containers,
        )


Check = Callable[[PodView], Violation | None]


@dataclasses.dataclass(frozen=True)
class Policy:
    """A check, the lowest level it belongs to, and the checks it replaces there."""

    check_id: str
    level: str
    run: Check
    replaces: tuple[str, ...] = ()


# -- wording -----------------------------------------------------------------------------


def _quoted(values: Iterable[object]) -> str:
    return ", ".join(f'"{v}"' for v in values)


def _containers(names: list[str]) -> str:
    word = "container" if len(names) == 1 else "containers"
    return f"{word} {_quoted(names)}"


def _verb(names: list[str], one: str, many: str) -> str:
    return one if len(names) == 1 else many


def _unique(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


# -- baseline ----------------------------------------------------------------------------


def _host_namespaces(pod: PodView) -> Violation | None:
    used = [f"{f}=true" for f in ("hostNetwork", "hostPID", "hostIPC") if pod.spec.get(f)]
    return Violation("hostNamespaces", "host namespaces", ", ".join(used)) if used else None


def _privileged(pod: PodView) -> Violation | None:
    names = [c.name for c in pod.containers if c.security.get("privileged")]
    if not names:
        return None
    detail = f"{_containers(names)} must not set securityContext.privileged=true"
    return Violation("privileged", "privileged", detail)


def _added(container: Container) -> list[str]:
    return [str(cap) for cap in (container.security.get("capabilities") or {}).get("add") or []]


def _extra_capabilities(pod: PodView, allowed: frozenset[str]) -> tuple[list[str], list[str]]:
    names, caps = [], []
    for c in pod.containers:
        bad = [cap for cap in _added(c) if cap not in allowed]
        if bad:
            names.append(c.name)
            caps.extend(bad)
    return names, sorted(set(caps))


def _capabilities_baseline(pod: PodView) -> Violation | None:
    names, caps = _extra_capabilities(pod, BASELINE_CAPABILITIES)
    if not names:
        return None
    detail = (
        f"{_containers(names)} must not include {_quoted(caps)} in securityContext.capabilities.add"
    )
    return Violation("capabilities_baseline", "non-default capabilities", detail)


def _host_path_volumes(pod: PodView) -> Violation | None:
    names = [str(v.get("name", "")) for v in pod.spec.get("volumes") or [] if "hostPath" in v]
    if not names:
        return None
    word = "volume" if len(names) == 1 else "volumes"
    return Violation("hostPathVolumes", "hostPath volumes", f"{word} {_quoted(names)}")


def _host_ports(pod: PodView) -> Violation | None:
    names, ports = [], []
    for c in pod.containers:
        used = [p["hostPort"] for p in c.spec.get("ports") or [] if p.get("hostPort")]
        if used:
            names.append(c.name)
            ports.extend(used)
    if not names:
        return None
    ports = sorted(set(ports))
    noun = "hostPort" if len(ports) == 1 else "hostPorts"
    detail = f"{_containers(names)} {_verb(names, 'uses', 'use')} {noun} " + ", ".join(
        str(p) for p in ports
    )
    return Violation("hostPorts", "hostPort", detail)


def _app_armor(pod: PodView) -> Violation | None:
    details = []
    for where, ctx in [
        ("pod", pod.security),
        *((f'container "{c.name}"', c.security) for c in pod.containers),
    ]:
        kind = (ctx.get("appArmorProfile") or {}).get("type")
        if kind not in (None, "RuntimeDefault", "Localhost"):
            details.append(f'{where} must not set securityContext.appArmorProfile.type to "{kind}"')
    for key, value in sorted(pod.annotations.items()):
        if key.startswith(APPARMOR_ANNOTATION_PREFIX) and not _allowed_app_armor_value(value):
            details.append(f'{key}="{value}"')
    if not details:
        return None
    reason = "forbidden AppArmor profile" if len(details) == 1 else "forbidden AppArmor profiles"
    return Violation("appArmorProfile", reason, "; ".join(details))


def _allowed_app_armor_value(value: Any) -> bool:
    return value in ("", "runtime/default") or str(value).startswith("localhost/")


def _se_linux(pod: PodView) -> Violation | None:
    details = []
    for where, ctx in [
        ("pod", pod.security),
        *((f'container "{c.name}"', c.security) for c in pod.containers),
    ]:
        options = ctx.get("seLinuxOptions") or {}
        bad = []
        if options.get("type", "") not in SELINUX_TYPES:
            bad.append(f'type "{options["type"]}"')
        for field in ("user", "role"):
            if options.get(field):
                bad.append(f'{field} "{options[field]}"')
        if bad:
            details.append(
                f"{where} set forbidden securityContext.seLinuxOptions: {', '.join(bad)}"
            )
    return Violation("seLinuxOptions", "seLinuxOptions", "; ".join(details)) if details else None


def _proc_mount(pod: PodView) -> Violation | None:
    names, values = [], []
    for c in pod.containers:
        value = c.security.get("procMount")
        if value not in (None, "Default"):
            names.append(c.name)
            values.append(value)
    if not names:
        return None
    detail = (
        f"{_containers(names)} must not set securityContext.procMount to {_quoted(_unique(values))}"
    )
    return Violation("procMount", "procMount", detail)


def _seccomp_type(ctx: dict[str, Any]) -> str | None:
    return (ctx.get("seccompProfile") or {}).get("type")


def _unconfined_seccomp(pod: PodView) -> list[str]:
    details = []
    if _seccomp_type(pod.security) == "Unconfined":
        details.append('pod must not set securityContext.seccompProfile.type to "Unconfined"')
    names = [c.name for c in pod.containers if _seccomp_type(c.security) == "Unconfined"]
    if names:
        details.append(
            f'{_containers(names)} must not set securityContext.seccompProfile.type to "Unconfined"'
        )
    return details


def _seccomp_baseline(pod: PodView) -> Violation | None:
    details = _unconfined_seccomp(pod)
    return (
        Violation("seccompProfile_baseline", "seccompProfile", "; ".join(details))
        if details
        else None
    )


def _sysctls(pod: PodView) -> Violation | None:
    names = [
        str(s.get("name"))
        for s in pod.security.get("sysctls") or []
        if s.get("name") not in SAFE_SYSCTLS
    ]
    return Violation("sysctls", "forbidden sysctls", ", ".join(names)) if names else None


# -- restricted --------------------------------------------------------------------------


def _restricted_volumes(pod: PodView) -> Violation | None:
    names, kinds = [], []
    for volume in pod.spec.get("volumes") or []:
        bad = [k for k in volume if k != "name" and k not in RESTRICTED_VOLUME_TYPES]
        if bad:
            names.append(str(volume.get("name", "")))
            kinds.extend(bad)
    if not names:
        return None
    kinds = _unique(kinds)
    word = "volume" if len(names) == 1 else "volumes"
    detail = (
        f"{word} {_quoted(names)} {_verb(names, 'uses', 'use')} restricted volume "
        f"{_verb(kinds, 'type', 'types')} {_quoted(kinds)}"
    )
    return Violation("restrictedVolumes", "restricted volume types", detail)


def _privilege_escalation(pod: PodView) -> Violation | None:
    names = [
        c.name for c in pod.containers if c.security.get("allowPrivilegeEscalation") is not False
    ]
    if not names:
        return None
    detail = f"{_containers(names)} must set securityContext.allowPrivilegeEscalation=false"
    return Violation("allowPrivilegeEscalation", "allowPrivilegeEscalation != false", detail)


def _run_as_non_root(pod: PodView) -> Violation | None:
    details = []
    pod_value = pod.security.get("runAsNonRoot")
    if pod_value is False:
        details.append("pod must not set securityContext.runAsNonRoot=false")
    explicit = [c.name for c in pod.containers if c.security.get("runAsNonRoot") is False]
    implicit = [
        c.name
        for c in pod.containers
        if c.security.get("runAsNonRoot") is None and pod_value is not True
    ]
    if explicit:
        details.append(f"{_containers(explicit)} must not set securityContext.runAsNonRoot=false")
    if implicit:
        details.append(f"pod or {_containers(implicit)} must set securityContext.runAsNonRoot=true")
    return (
        Violation("runAsNonRoot", "runAsNonRoot != true", "; ".join(details)) if details else None
    )


def _run_as_user(pod: PodView) -> Violation | None:
    details = []
    if pod.security.get("runAsUser") == 0:
        details.append("pod must not set runAsUser=0")
    names = [c.name for c in pod.containers if c.security.get("runAsUser") == 0]
    if names:
        details.append(f"{_containers(names)} must not set runAsUser=0")
    return Violation("runAsUser", "runAsUser=0", "; ".join(details)) if details else None


def _seccomp_restricted(pod: PodView) -> Violation | None:
    details = _unconfined_seccomp(pod)
    pod_ok = _seccomp_type(pod.security) in ("RuntimeDefault", "Localhost")
    unset = [c.name for c in pod.containers if _seccomp_type(c.security) is None and not pod_ok]
    if unset:
        details.append(
            f"pod or {_containers(unset)} must set securityContext.seccompProfile.type to "
            '"RuntimeDefault" or "Localhost"'
        )
    return (
        Violation("seccompProfile_restricted", "seccompProfile", "; ".join(details))
        if details
        else None
    )


def _capabilities_restricted(pod: PodView) -> Violation | None:
    details = []
    keep = [
        c.name
        for c in pod.containers
        if "ALL" not in ((c.security.get("capabilities") or {}).get("drop") or [])
    ]
    if keep:
        details.append(f'{_containers(keep)} must set securityContext.capabilities.drop=["ALL"]')
    names, caps = _extra_capabilities(pod, RESTRICTED_ADDABLE_CAPABILITIES)
    if names:
        details.append(
            f"{_containers(names)} must not include {_quoted(caps)} in "
            "securityContext.capabilities.add"
        )
    if not details:
        return None
    return Violation("capabilities_restricted", "unrestricted capabilities", "; ".join(details))


POLICIES: tuple[Policy, ...] = (
    Policy("appArmorProfile", BASELINE, _app_armor),
    Policy("capabilities_baseline", BASELINE, _capabilities_baseline),
    Policy("hostNamespaces", BASELINE, _host_namespaces),
    Policy("hostPathVolumes", BASELINE, _host_path_volumes),
    Policy("hostPorts", BASELINE, _host_ports),
    Policy("privileged", BASELINE, _privileged),
    Policy("procMount", BASELINE, _proc_mount),
    Policy("seLinuxOptions", BASELINE, _se_linux),
    Policy("seccompProfile_baseline", BASELINE, _seccomp_baseline),
    Policy("sysctls", BASELINE, _sysctls),
    Policy("allowPrivilegeEscalation", RESTRICTED, _privilege_escalation),
    Policy(
        "capabilities_restricted",
        RESTRICTED,
        _capabilities_restricted,
        replaces=("capabilities_baseline",),
    ),
    Policy("restrictedVolumes", RESTRICTED, _restricted_volumes, replaces=("hostPathVolumes",)),
    Policy("runAsNonRoot", RESTRICTED, _run_as_non_root),
    Policy("runAsUser", RESTRICTED, _run_as_user),
    Policy(
        "seccompProfile_restricted",
        RESTRICTED,
        _seccomp_restricted,
        replaces=("seccompProfile_baseline",),
    ),
)


def policies_for(level: str) -> list[Policy]:
    """The checks of `level`, ordered by identifier."""
    rank = LEVELS.index(level)
    chosen = [p for p in POLICIES if LEVELS.index(p.level) <= rank]
    replaced = {r for p in chosen for r in p.replaces}
    return sorted((p for p in chosen if p.check_id not in replaced), key=lambda p: p.check_id)


def evaluate(level: str, metadata: dict[str, Any], spec: dict[str, Any]) -> list[Violation]:
    """Every check of `level` that the Pod (metadata and spec) fails, in reporting order."""
    pod = PodView.of(metadata, spec)
    return [v for p in policies_for(level) if (v := p.run(pod)) is not None]


def refusal_message(resource: str, name: str, level: str, violations: list[Violation]) -> str:
    parts = ", ".join(str(v) for v in violations)
    return f'{resource} "{name}" is forbidden: violates PodSecurity "{level}:latest": {parts}'


def label_causes(labels: dict[str, Any]) -> list[errors.Cause]:
    """What is wrong with a namespace's pod-security labels (empty when nothing is)."""
    causes = []
    for mode in MODES:
        key = LABEL_PREFIX + mode
        if key in labels and labels[key] not in LEVELS:
            causes.append(
                errors.Cause(
                    f"metadata.labels[{key}]",
                    "FieldValueNotSupported",
                    f'Unsupported value: "{labels[key]}": supported values: ' + _quoted(LEVELS),
                )
            )
        version_key = f"{key}-version"
        if version_key in labels and not _valid_version(str(labels[version_key])):
            causes.append(
                errors.Cause(
                    f"metadata.labels[{version_key}]",
                    "FieldValueInvalid",
                    f'Invalid value: "{labels[version_key]}": must be "latest" or "v1.<minor>"',
                )
            )
    return causes


def _valid_version(value: str) -> bool:
    major, _, minor = value.removeprefix("v").partition(".")
    return value == "latest" or (value.startswith("v") and major == "1" and minor.isdigit())


class PodSecurity:
    """The admission policy: a namespace's level, and the verdict on a Pod there."""

    def __init__(self, *, default_level: str = BASELINE) -> None:
        if default_level not in LEVELS:
            raise ValueError(
                f"unknown Pod Security level {default_level!r} (expected one of "
                f"{', '.join(LEVELS)})"
            )
        self.default_level = default_level

    def level_of(self, namespace: dict[str, Any] | None) -> str:
        labels = ((namespace or {}).get("metadata") or {}).get("labels") or {}
        level = labels.get(ENFORCE_LABEL, self.default_level)
        # Labels are checked when written; one that is not a level anyway fails closed.
        return level if level in LEVELS else RESTRICTED

    def admit(
        self, namespace: dict[str, Any] | None, pod: dict[str, Any]
    ) -> errors.Forbidden | None:
        """None when the Pod may be stored in `namespace`, else the refusal to raise."""
        level = self.level_of(namespace)
        if level == PRIVILEGED:
            return None
        meta = pod.get("metadata") or {}
        violations = evaluate(level, meta, pod.get("spec") or {})
        if not violations:
            return None
        name = str(meta.get("name", ""))
        return errors.Forbidden(
            refusal_message("pods", name, level, violations), kind="Pod", name=name
        )
