"""Linux capabilities: names, the container default set, and the set a config asks for.

Default set: containerd still grants NET_RAW by default (its issue #10434 to drop it is
open, and the pull request that would have done so was withdrawn); CRI-O drops NET_RAW,
MKNOD, SETFCAP and AUDIT_WRITE. kubelite takes exactly the capabilities that the Pod
Security "baseline" level allows, which is containerd's set without NET_RAW: raw and packet
sockets are refused unless a Pod adds NET_RAW, while ping still works through the ICMP
sockets that net.ipv4.ping_group_range opens (the sandbox sets it).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from kubelet.runtime.interface import InvalidConfigError

NUMBERS: dict[str, int] = {
    name: number
    for number, name in enumerate(
        [
            "CHOWN",
            "DAC_OVERRIDE",
            "DAC_READ_SEARCH",
            "FOWNER",
            "FSETID",
            "KILL",
            "SETGID",
            "SETUID",
            "SETPCAP",
            "LINUX_IMMUTABLE",
            "NET_BIND_SERVICE",
            "NET_BROADCAST",
            "NET_ADMIN",
            "NET_RAW",
            "IPC_LOCK",
            "IPC_OWNER",
            "SYS_MODULE",
            "SYS_RAWIO",
            "SYS_CHROOT",
            "SYS_PTRACE",
            "SYS_PACCT",
            "SYS_ADMIN",
            "SYS_BOOT",
            "SYS_NICE",
            "SYS_RESOURCE",
            "SYS_TIME",
            "SYS_TTY_CONFIG",
            "MKNOD",
            "LEASE",
            "AUDIT_WRITE",
            "AUDIT_CONTROL",
            "SETFCAP",
            "MAC_OVERRIDE",
            "MAC_ADMIN",
            "SYSLOG",
            "WAKE_ALARM",
            "BLOCK_SUSPEND",
            "AUDIT_READ",
            "PERFMON",
            "BPF",
            "CHECKPOINT_RESTORE",
        ]
    )
}

DEFAULT: frozenset[str] = frozenset(
    [
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
    ]
)


@cache
def last_cap() -> int:
    """The highest capability number this kernel knows."""
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except OSError:
        return max(NUMBERS.values())


def normalize(name: str, *, where: str) -> str:
    """'cap_net_raw', 'NET_RAW' and 'CAP_NET_RAW' all name NET_RAW; unknown names fail."""
    bare = name.strip().upper().removeprefix("CAP_")
    if bare != "ALL" and bare not in NUMBERS:
        raise InvalidConfigError(f"{where}: unknown capability {name!r}")
    return bare


def effective_set(
    *, privileged: bool, add: tuple[str, ...], drop: tuple[str, ...], where: str
) -> frozenset[str]:
    """The bounding set for a container: all when privileged, else default - drop + add."""
    every = frozenset(n for n, v in NUMBERS.items() if v <= last_cap())
    if privileged:
        return every
    added = {normalize(n, where=f"{where}.add") for n in add}
    dropped = {normalize(n, where=f"{where}.drop") for n in drop}
    base = set() if "ALL" in dropped else set(DEFAULT) - dropped
    base |= every if "ALL" in added else added
    return frozenset(base & every)


def mask(names: frozenset[str]) -> int:
    value = 0
    for name in names:
        value |= 1 << NUMBERS[name]
    return value
