"""cgroups behind one small interface, for the legacy v1 layout and the unified v2 hierarchy.

The runtime names cgroups by a relative path ("kubelite-c1-n1/pod<uid>/<container>") and
the driver maps that onto the mounted hierarchies: on v1 one directory per controller
hierarchy (plus, on a hybrid host, the same path in the unified hierarchy, used to track and
kill processes with cgroup.kill), on v2 one directory. detect() reads /proc/self/mountinfo
once at start.

Device access of containers that are not privileged is limited to ALLOWED_DEVICES: on v1
through devices.deny/devices.allow, on v2 through a BPF program attached to the container's
cgroup (devices_bpf.py).

Invariants: a path is created with every level below the root; processes join only leaves
(so v2's rule against processes in inner cgroups holds); remove() removes the whole subtree
below a path, children first, and tolerates a path that is already gone. Limits follow the
kubelet's conversions: shares = millis * 1024 / 1000 (at least 2), quota = millis * period /
1000 (at least 1 ms) with a 100 ms period, v2 weight = 1 + (shares - 2) * 9999 / 262142.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from kubelet.runtime import devices_bpf
from kubelet.runtime.interface import InvalidConfigError, Resources, RuntimeFailure

CPU_PERIOD_US = 100_000
MIN_QUOTA_US = 1_000

# Devices a container may use without being privileged: (type, major, minor); -1 is any.
ALLOWED_DEVICES: tuple[tuple[str, int, int], ...] = (
    ("c", 1, 3),  # null
    ("c", 1, 5),  # zero
    ("c", 1, 7),  # full
    ("c", 1, 8),  # random
    ("c", 1, 9),  # urandom
    ("c", 5, 0),  # tty
    ("c", 5, 1),  # console
    ("c", 5, 2),  # ptmx
    ("c", 136, -1),  # pts/*
)


@dataclasses.dataclass(frozen=True)
class CgroupUsage:
    cpu_usage_ns: int
    memory_usage_bytes: int
    memory_working_set_bytes: int
    pids: int


class CgroupDriver(Protocol):
    version: int

    def create(self, path: str, resources: Resources | None, *, restrict_devices: bool) -> None:
        """Create path (and its parents) and apply limits to it."""

    def procs_files(self, path: str) -> tuple[str, ...]:
        """The cgroup.procs files a process writes "0" into to join path."""

    def pids(self, path: str) -> list[int]: ...

    def kill_all(self, path: str) -> None:
        """SIGKILL every process in path and below."""

    def usage(self, path: str) -> CgroupUsage: ...

    def oom_kills(self, path: str) -> int: ...

    def oom_file(self, path: str) -> str:
        """The file whose "oom_kill N" line counts OOM kills in path."""

    def kill_file(self, path: str) -> str | None:
        """The cgroup.kill file that kills path's processes, where the layout has one."""

    def exists(self, path: str) -> bool: ...

    def remove(self, path: str) -> None: ...


def device_rules() -> list[tuple[int, int, int, int]]:
    """ALLOWED_DEVICES as BPF device rules, after mknod of any node (opening is what counts)."""
    rules = [devices_bpf.rule_from_v1("c", -1, -1, "m"), devices_bpf.rule_from_v1("b", -1, -1, "m")]
    rules += [devices_bpf.rule_from_v1(k, major, minor) for k, major, minor in ALLOWED_DEVICES]
    return rules


def cpu_shares(millis: int) -> int:
    return max(2, millis * 1024 // 1000)


def cpu_quota_us(millis: int) -> int:
    return max(MIN_QUOTA_US, millis * CPU_PERIOD_US // 1000)


def cpu_weight(shares: int) -> int:
    return 1 + ((shares - 2) * 9999) // 262142


def write(path: str, value: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise RuntimeFailure(f"failed to open {path}: {exc.strerror}") from exc
    try:
        os.write(fd, value.encode())
    except OSError as exc:
        raise RuntimeFailure(f"failed to write {value!r} to {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _read_int(path: str, default: int = 0) -> int:
    try:
        text = _read(path).strip()
    except OSError:
        return default
    return default if text in ("", "max") else int(text.split()[0])


def _keyed(path: str) -> dict[str, int]:
    """A flat keyed file ("key value" per line) such as memory.stat or memory.events."""
    try:
        text = _read(path)
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


def _read_pids(procs_file: str) -> list[int]:
    try:
        return [int(p) for p in _read(procs_file).split()]
    except OSError:
        return []


def _makedirs(root: str, path: str) -> None:
    try:
        os.makedirs(os.path.join(root, path), exist_ok=True)
    except OSError as exc:
        raise RuntimeFailure(f"failed to create cgroup {path} under {root}: {exc}") from exc


def _remove_tree(directory: str) -> None:
    """rmdir a cgroup directory and its child cgroups, deepest first."""
    if not os.path.isdir(directory):
        return
    for entry in os.scandir(directory):
        if entry.is_dir(follow_symlinks=False):
            _remove_tree(entry.path)
    for _ in range(100):
        try:
            os.rmdir(directory)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            # A process that was just killed may still be leaving; give it a moment.
            if exc.errno != errno.EBUSY:
                raise RuntimeFailure(f"failed to remove cgroup {directory}: {exc}") from exc
            time.sleep(0.01)
    raise RuntimeFailure(f"failed to remove cgroup {directory}: still busy after 1 s")


def _kill_listed(procs_files: Iterable[str]) -> None:
    for procs in procs_files:
        for pid in _read_pids(procs):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class CgroupV1:
    """The legacy layout: one hierarchy per controller (this machine, older distributions)."""

    version = 1
    CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "devices", "freezer")

    def __init__(
        self,
        mounts: dict[str, str],
        unified: str | None,
        options: dict[str, str] | None = None,
    ) -> None:
        self._mounts = {c: mounts[c] for c in self.CONTROLLERS if c in mounts}
        self._options = options or {point: c for c, point in self._mounts.items()}
        missing = {"memory", "pids", "cpu", "cpuacct"} - set(self._mounts)
        if missing:
            raise RuntimeFailure(f"cgroup v1 controllers not mounted: {sorted(missing)}")
        self._roots = sorted(set(self._mounts.values()))
        if unified is not None:
            self._roots.append(unified)
        self._unified = unified

    def _dir(self, controller: str, path: str) -> str:
        return os.path.join(self._mounts[controller], path)

    def container_mounts(self) -> tuple[tuple[str, str], ...]:
        """(directory under /sys/fs/cgroup, mount options) of each hierarchy we use."""
        points = sorted(set(self._mounts.values()))
        return tuple((os.path.basename(p), self._options[p]) for p in points)

    def create(self, path: str, resources: Resources | None, *, restrict_devices: bool) -> None:
        for root in self._roots:
            _makedirs(root, path)
        if restrict_devices and "devices" in self._mounts:
            self._restrict_devices(self._dir("devices", path))
        if resources is not None:
            self._apply(path, resources)

    def _apply(self, path: str, res: Resources) -> None:
        if res.memory_limit_bytes is not None:
            write(self._dir("memory", path) + "/memory.limit_in_bytes", str(res.memory_limit_bytes))
        if res.cpu_limit_millis is not None:
            cpu = self._dir("cpu", path)
            write(cpu + "/cpu.cfs_period_us", str(CPU_PERIOD_US))
            write(cpu + "/cpu.cfs_quota_us", str(cpu_quota_us(res.cpu_limit_millis)))
        if res.cpu_request_millis is not None:
            shares = cpu_shares(res.cpu_request_millis)
            write(self._dir("cpu", path) + "/cpu.shares", str(shares))
        if res.pids_limit:
            write(self._dir("pids", path) + "/pids.max", str(res.pids_limit))

    @staticmethod
    def _restrict_devices(directory: str) -> None:
        write(directory + "/devices.deny", "a")
        rules = ["c *:* m", "b *:* m"]  # mknod is allowed, opening is not
        for kind, major, minor in ALLOWED_DEVICES:
            rules.append(f"{kind} {major}:{'*' if minor < 0 else minor} rwm")
        for rule in rules:
            write(directory + "/devices.allow", rule)

    def procs_files(self, path: str) -> tuple[str, ...]:
        return tuple(os.path.join(root, path, "cgroup.procs") for root in self._roots)

    def pids(self, path: str) -> list[int]:
        found: set[int] = set()
        for directory, _, _ in os.walk(self._dir("pids", path)):
            found.update(_read_pids(directory + "/cgroup.procs"))
        return sorted(found)

    def kill_all(self, path: str) -> None:
        if self._unified and os.path.exists(os.path.join(self._unified, path, "cgroup.kill")):
            write(os.path.join(self._unified, path, "cgroup.kill"), "1")
            return
        freezer = self._dir("freezer", path) if "freezer" in self._mounts else None
        for _ in range(50):
            if not self.pids(path):
                return
            # Frozen processes cannot fork while we kill them one by one.
            if freezer:
                write(freezer + "/freezer.state", "FROZEN")
            _kill_listed(d + "/cgroup.procs" for d, _, _ in os.walk(self._dir("pids", path)))
            if freezer:
                write(freezer + "/freezer.state", "THAWED")
            time.sleep(0.01)

    def usage(self, path: str) -> CgroupUsage:
        memory = self._dir("memory", path)
        used = _read_int(memory + "/memory.usage_in_bytes")
        inactive = _keyed(memory + "/memory.stat").get("total_inactive_file", 0)
        return CgroupUsage(
            cpu_usage_ns=_read_int(self._dir("cpuacct", path) + "/cpuacct.usage"),
            memory_usage_bytes=used,
            memory_working_set_bytes=max(0, used - inactive),
            pids=_read_int(self._dir("pids", path) + "/pids.current"),
        )

    def oom_kills(self, path: str) -> int:
        return _keyed(self.oom_file(path)).get("oom_kill", 0)

    def oom_file(self, path: str) -> str:
        return self._dir("memory", path) + "/memory.oom_control"

    def kill_file(self, path: str) -> str | None:
        # The hybrid layout's unified hierarchy tracks the same processes and can kill them.
        return os.path.join(self._unified, path, "cgroup.kill") if self._unified else None

    def exists(self, path: str) -> bool:
        return os.path.isdir(self._dir("memory", path))

    def remove(self, path: str) -> None:
        # Every hierarchy, not only ours: runc (the OCI driver) makes the same path in
        # cpuset, blkio and name=systemd too, and those must not outlive the container.
        base = os.path.dirname(self._roots[0])
        others = [os.path.join(base, d) for d in sorted(os.listdir(base))] if base else []
        for root in dict.fromkeys([*self._roots, *others]):
            if os.path.isdir(os.path.join(root, path)):
                _remove_tree(os.path.join(root, path))


class CgroupV2:
    """The unified hierarchy (most current distributions)."""

    version = 2
    CONTROLLERS = ("cpu", "memory", "pids")

    def __init__(self, mountpoint: str) -> None:
        self._root = mountpoint

    def _dir(self, path: str) -> str:
        return os.path.join(self._root, path)

    def create(self, path: str, resources: Resources | None, *, restrict_devices: bool) -> None:
        parts = Path(path).parts
        for depth in range(len(parts)):
            parent = os.path.join(self._root, *parts[:depth])
            self._delegate(parent)
            _makedirs(self._root, os.path.join(*parts[: depth + 1]))
        if resources is not None:
            self._apply(path, resources)
        if restrict_devices:
            devices_bpf.restrict(self._dir(path), device_rules())

    def _delegate(self, directory: str) -> None:
        """Enable our controllers for the children of directory where they are available."""
        try:
            available = set(_read(directory + "/cgroup.controllers").split())
            enabled = set(_read(directory + "/cgroup.subtree_control").split())
        except OSError as exc:
            raise RuntimeFailure(f"failed to read cgroup {directory}: {exc}") from exc
        wanted = [c for c in self.CONTROLLERS if c in available and c not in enabled]
        if wanted:
            write(directory + "/cgroup.subtree_control", " ".join("+" + c for c in wanted))

    def _require(self, directory: str, name: str, field: str) -> str:
        file = f"{directory}/{name}"
        if not os.path.exists(file):
            raise InvalidConfigError(
                f"{field} is set but {file} does not exist: the controller is not available"
            )
        return file

    def _apply(self, path: str, res: Resources) -> None:
        directory = self._dir(path)
        if res.memory_limit_bytes is not None:
            file = self._require(directory, "memory.max", "limits.memory")
            write(file, str(res.memory_limit_bytes))
            # As the kubelet does on v2: an OOM kill takes the whole container, not one child.
            if os.path.exists(directory + "/memory.oom.group"):
                write(directory + "/memory.oom.group", "1")
        if res.cpu_limit_millis is not None:
            file = self._require(directory, "cpu.max", "limits.cpu")
            write(file, f"{cpu_quota_us(res.cpu_limit_millis)} {CPU_PERIOD_US}")
        if res.cpu_request_millis is not None:
            file = self._require(directory, "cpu.weight", "requests.cpu")
            write(file, str(cpu_weight(cpu_shares(res.cpu_request_millis))))
        if res.pids_limit:
            write(self._require(directory, "pids.max", "pids limit"), str(res.pids_limit))

    def procs_files(self, path: str) -> tuple[str, ...]:
        return (self._dir(path) + "/cgroup.procs",)

    def pids(self, path: str) -> list[int]:
        found: set[int] = set()
        for directory, _, _ in os.walk(self._dir(path)):
            found.update(_read_pids(directory + "/cgroup.procs"))
        return sorted(found)

    def kill_all(self, path: str) -> None:
        if os.path.exists(self._dir(path) + "/cgroup.kill"):
            write(self._dir(path) + "/cgroup.kill", "1")
            return
        for _ in range(50):
            if not self.pids(path):
                return
            _kill_listed(d + "/cgroup.procs" for d, _, _ in os.walk(self._dir(path)))
            time.sleep(0.01)

    def usage(self, path: str) -> CgroupUsage:
        directory = self._dir(path)
        used = _read_int(directory + "/memory.current")
        inactive = _keyed(directory + "/memory.stat").get("inactive_file", 0)
        return CgroupUsage(
            cpu_usage_ns=_keyed(directory + "/cpu.stat").get("usage_usec", 0) * 1000,
            memory_usage_bytes=used,
            memory_working_set_bytes=max(0, used - inactive),
            pids=_read_int(directory + "/pids.current", len(self.pids(path))),
        )

    def oom_kills(self, path: str) -> int:
        return _keyed(self.oom_file(path)).get("oom_kill", 0)

    def oom_file(self, path: str) -> str:
        return self._dir(path) + "/memory.events"

    def kill_file(self, path: str) -> str | None:
        return self._dir(path) + "/cgroup.kill"

    def exists(self, path: str) -> bool:
        return os.path.isdir(self._dir(path))

    def remove(self, path: str) -> None:
        _remove_tree(self._dir(path))


@dataclasses.dataclass(frozen=True)
class _MountEntry:
    point: str
    fstype: str
    options: frozenset[str]


def _cgroup_mounts(mountinfo: str) -> list[_MountEntry]:
    entries = []
    for line in Path(mountinfo).read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        fstype, super_options = fields[sep + 1], fields[sep + 3]
        if fstype in ("cgroup", "cgroup2"):
            point = fields[4].replace("\\040", " ")
            entries.append(_MountEntry(point, fstype, frozenset(super_options.split(","))))
    return entries


def detect(mountinfo: str = "/proc/self/mountinfo") -> CgroupDriver:
    """The driver for this host: v2 when /sys/fs/cgroup is the unified hierarchy, else v1."""
    entries = _cgroup_mounts(mountinfo)
    for entry in entries:
        if entry.fstype == "cgroup2" and entry.point == "/sys/fs/cgroup":
            return CgroupV2(entry.point)
    v1: dict[str, str] = {}
    options: dict[str, str] = {}
    unified = None
    for entry in entries:
        if entry.fstype == "cgroup2":
            unified = unified or entry.point
            continue
        for controller in CgroupV1.CONTROLLERS:
            if controller in entry.options:
                v1.setdefault(controller, entry.point)
                named = sorted(o for o in entry.options if o in CgroupV1.CONTROLLERS)
                options[entry.point] = ",".join(named)
    if v1:
        return CgroupV1(v1, unified, options)
    if unified:
        return CgroupV2(unified)
    raise RuntimeFailure("no cgroup hierarchy is mounted (looked in /proc/self/mountinfo)")
