"""The container's file system view, built inside its fresh mount namespace.

Runs in the container's init process after unshare(CLONE_NEWNS), as root, before the
process drops privileges. Order matters and is fixed: the host's mounts become slaves (no
mount made here ever reaches the host), the overlay is mounted (image layers read-only
below, the container's writable layer on top), the kernel file systems and the small /dev
come next, then the Pod's /etc files and the volumes (targets resolved with secure_join and
mounted through O_PATH descriptors checked to lie inside the root), then pivot_root and the
old root is detached. Masks and read-only paths are applied after pivot_root, the root is
made read-only last when asked. Nothing is mounted in the host's namespace, so the
container's mounts vanish with its last process and need no clean-up. Image layers go to
overlayfs in one mount(2) call while their paths fit its page of options, and one layer per
call through the new mount API (fsconfig lowerdir+) beyond that.
"""

from __future__ import annotations

import os
import stat

from kubelet.runtime import _libc as libc
from kubelet.runtime.paths import ensure_beneath, open_beneath, secure_join
from kubelet.runtime.spec import LaunchSpec, MountSpec

NOSUID_NODEV_NOEXEC = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
OVERLAY_OPTIONS_MAX = 4000  # the kernel takes at most a page of mount data

# (name, major, minor) of the character devices every container gets.
DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9))
TTY_DEVICE = ("tty", 5, 0)
DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
)

# The usual container defaults: files hidden behind /dev/null, directories behind an empty
# read-only tmpfs, and kernel knobs that stay readable but not writable.
MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
)
READ_ONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


def build(spec: LaunchSpec) -> None:
    """Set up the whole file system view; the process ends with / as the container root."""
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_SLAVE)
    root = spec.rootfs_dir
    mount_overlay(spec)
    mount_kernel_filesystems(spec, root)
    mount_dev(spec, root)
    for destination, host_file in spec.etc_files:
        bind_into(root, MountSpec(host_file, destination, read_only=False))
    for volume in sorted(spec.mounts, key=lambda m: m.destination.rstrip("/").count("/")):
        bind_into(root, volume)
    enter_root(root)
    if not spec.privileged:
        mask_paths()
    if spec.read_only_rootfs:
        libc.mount(None, "/", None, libc.MS_REMOUNT | libc.MS_BIND | libc.MS_RDONLY)


def overlay_options(layers: tuple[str, ...], upper: str, work: str) -> str:
    # overlayfs lists the top-most lower layer first; the image store lists bottom first.
    lower = ":".join(reversed(layers))
    return f"lowerdir={lower},upperdir={upper},workdir={work}"


def mount_overlay(spec: LaunchSpec) -> None:
    options = overlay_options(spec.layers, spec.upper_dir, spec.work_dir)
    if len(options) <= OVERLAY_OPTIONS_MAX:
        libc.mount("overlay", spec.rootfs_dir, "overlay", 0, options)
    else:
        mount_overlay_by_layer(spec)


def mount_overlay_by_layer(spec: LaunchSpec) -> None:
    """Many layers overflow the page of mount(2) options; the new mount API takes one layer
    per call ("lowerdir+", Linux 6.8), top-most first as in the lowerdir= list."""
    fs = libc.fsopen("overlay")
    try:
        try:
            for layer in reversed(spec.layers):
                libc.fsconfig_string(fs, "lowerdir+", layer)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"{len(spec.layers)} image layers need overlayfs' lowerdir+ (Linux 6.8): {exc}",
            ) from exc
        libc.fsconfig_string(fs, "upperdir", spec.upper_dir)
        libc.fsconfig_string(fs, "workdir", spec.work_dir)
        libc.fsconfig_create(fs)
        mounted = libc.fsmount(fs)
    finally:
        os.close(fs)
    try:
        libc.move_mount(mounted, spec.rootfs_dir)
    finally:
        os.close(mounted)


def mount_kernel_filesystems(spec: LaunchSpec, root: str) -> None:
    proc = ensure_beneath(root, "/proc", directory=True)
    libc.mount("proc", proc, "proc", NOSUID_NODEV_NOEXEC)
    sys_flags = NOSUID_NODEV_NOEXEC | (0 if spec.privileged else libc.MS_RDONLY)
    sys = ensure_beneath(root, "/sys", directory=True)
    libc.mount("sysfs", sys, "sysfs", sys_flags)
    cgroup_dir = sys + "/fs/cgroup"
    if not os.path.isdir(cgroup_dir):
        return
    if spec.cgroup_version == 2:
        libc.mount("cgroup2", cgroup_dir, "cgroup2", sys_flags)
        return
    libc.mount("cgroup", cgroup_dir, "tmpfs", NOSUID_NODEV_NOEXEC, "mode=755,size=64k")
    for name, options in spec.cgroup_mounts:
        target = f"{cgroup_dir}/{name}"
        os.mkdir(target, 0o755)
        libc.mount("cgroup", target, "cgroup", sys_flags, options)
    libc.mount(None, cgroup_dir, None, libc.MS_REMOUNT | sys_flags, "mode=755,size=64k")


def mount_dev(spec: LaunchSpec, root: str) -> None:
    dev = ensure_beneath(root, "/dev", directory=True)
    libc.mount("tmpfs", dev, "tmpfs", libc.MS_NOSUID | libc.MS_STRICTATIME, "mode=755,size=64k")
    old_umask = os.umask(0)
    try:
        for name, major, minor in (*DEVICES, TTY_DEVICE):
            os.mknod(f"{dev}/{name}", 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.mkdir(f"{dev}/pts", 0o755)
        os.mkdir(f"{dev}/shm", 0o1777)
        os.mkdir(f"{dev}/mqueue", 0o1777)
    finally:
        os.umask(old_umask)
    for name, target in DEV_LINKS:
        os.symlink(target, f"{dev}/{name}")
    if spec.privileged:
        copy_host_devices(dev)
    pts_options = "newinstance,ptmxmode=0666,mode=0620,gid=5"
    libc.mount("devpts", f"{dev}/pts", "devpts", libc.MS_NOSUID | libc.MS_NOEXEC, pts_options)
    if spec.shm_dir:
        libc.mount(spec.shm_dir, f"{dev}/shm", None, libc.MS_BIND | libc.MS_REC)
    else:
        libc.mount("shm", f"{dev}/shm", "tmpfs", NOSUID_NODEV_NOEXEC, "mode=1777,size=65536k")
    libc.mount("mqueue", f"{dev}/mqueue", "mqueue", NOSUID_NODEV_NOEXEC)


def copy_host_devices(dev: str, source: str = "/dev") -> None:
    """A privileged container gets the node's device nodes too, as container runtimes do."""
    for entry in os.scandir(source):
        if entry.name in ("pts", "shm", "mqueue", "fd", "ptmx", "console", "core") or (
            entry.is_symlink()
        ):
            continue
        target = f"{dev}{entry.path[len('/dev') :]}"
        info = entry.stat(follow_symlinks=False)
        if entry.is_dir():
            os.makedirs(target, exist_ok=True)
            copy_host_devices(dev, entry.path)
        elif (stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)) and not os.path.lexists(
            target
        ):
            os.mknod(target, info.st_mode, info.st_rdev)
            os.chown(target, info.st_uid, info.st_gid)


def bind_into(root: str, volume: MountSpec) -> None:
    """Bind a host path (or a subPath inside it) onto a destination resolved inside root."""
    source = volume.source
    if volume.sub_path:
        source = ensure_beneath(volume.source, volume.sub_path, directory=True)
    source_fd = open_beneath(volume.source, source)
    try:
        is_dir = stat.S_ISDIR(os.fstat(source_fd).st_mode)
        target = ensure_beneath(root, volume.destination, directory=is_dir)
        target_fd = open_beneath(root, target)
        try:
            flags = libc.MS_BIND | libc.MS_REC
            libc.mount(f"/proc/self/fd/{source_fd}", f"/proc/self/fd/{target_fd}", None, flags)
        finally:
            os.close(target_fd)
    finally:
        os.close(source_fd)
    # The descriptor names the directory below the new mount; the path names the mount.
    mounted = secure_join(root, volume.destination)
    # Kubernetes' default propagation (None) is private: nothing flows either way.
    libc.mount(None, mounted, None, libc.MS_REC | libc.MS_PRIVATE)
    if volume.read_only:
        flags = libc.MS_REMOUNT | libc.MS_BIND | libc.MS_RDONLY | _locked_flags(mounted)
        libc.mount(None, mounted, None, flags)


def _locked_flags(path: str) -> int:
    """nosuid/nodev/noexec of the mount at path, which a read-only remount must keep."""
    info = os.statvfs(path)
    flags = 0
    if info.f_flag & os.ST_NOSUID:
        flags |= libc.MS_NOSUID
    if info.f_flag & os.ST_NODEV:
        flags |= libc.MS_NODEV
    if info.f_flag & os.ST_NOEXEC:
        flags |= libc.MS_NOEXEC
    return flags


def enter_root(root: str) -> None:
    # pivot_root(".", ".") stacks the old root on the new one; detaching it leaves the new.
    os.chdir(root)
    libc.pivot_root(".", ".")
    libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")


def mask_paths() -> None:
    for path in MASKED_PATHS:
        try:
            info = os.stat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(info.st_mode):
            libc.mount("tmpfs", path, "tmpfs", libc.MS_RDONLY)
        else:
            libc.mount("/dev/null", path, None, libc.MS_BIND)
    for path in READ_ONLY_PATHS:
        if not os.path.exists(path):
            continue
        libc.mount(path, path, None, libc.MS_BIND | libc.MS_REC)
        flags = libc.MS_REMOUNT | libc.MS_BIND | libc.MS_RDONLY | _locked_flags(path)
        libc.mount(None, path, None, flags)
