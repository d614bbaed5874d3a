"""NativeRuntime: containers from Linux namespaces, cgroups and overlayfs, done here.

The runtime object holds no state of its own that matters: everything is in the state
directory (see state.py) and in the kernel (namespace mounts, cgroups, shim processes), so a
new NativeRuntime on the same directory, after the old one was restarted or killed, sees
the same sandboxes and containers (it adopts them by reading, nothing to re-attach).

Process model: run_sandbox forks (through the fork server) a child that makes and pins the
Pod's namespaces, plus a pause process only for a shared PID namespace; start_container
forks a shim (shim.py) that forks the container's init (launch.py) and supervises it;
exec_sync and exec_stream fork an exec helper (nsenter.py). Waiting is on pidfds, never on
child status, because after a restart the shims are not our children.

cgroups: <cgroup_root>/pod<uid>/<container id> per container and <...>/pause for the pause
process; cgroup_root (e.g. kubelite-<cluster>-<node>) keeps kubelets on one host apart.
"""

from __future__ import annotations

import dataclasses
import os
import re
import select
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from kubelet.runtime import _libc as libc
from kubelet.runtime import caps, channel, imageconfig, paths, seccomp, state
from kubelet.runtime.cgroups import CgroupDriver, CgroupV1, detect
from kubelet.runtime.forkserver import ForkServer
from kubelet.runtime.interface import (
    ContainerConfig,
    ContainerId,
    ContainerState,
    ContainerStats,
    ContainerStatus,
    ExecResult,
    ExecSession,
    InvalidConfigError,
    NamespaceMode,
    NotFoundError,
    RuntimeFailure,
    RuntimeInfo,
    SandboxConfig,
    SandboxId,
    SandboxState,
    SandboxStats,
    SandboxStatus,
    StartError,
    StateError,
    Usage,
)
from kubelet.runtime.session import NativeExecSession
from kubelet.runtime.spec import LaunchSpec, MountSpec, ProcessSpec
from machinery.clock import Clock, RealClock
from machinery.log import get_logger

log = get_logger("runtime")

VERSION = "0.1.0"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REPORT_TIMEOUT_S = 60.0
KILL_WAIT_S = 10.0


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
    state_dir: Path
    cgroup_root: str  # e.g. "kubelite-c1-node1"; unique per kubelet on a host
    default_pids_limit: int = 1024  # per container when its config sets none; 0: unlimited
    log_max_bytes: int = 10 * 1024 * 1024
    log_max_files: int = 5


def new_id() -> str:
    return uuid.uuid4().hex


class NativeRuntime:
    """The ContainerRuntime of this project (see interface.py)."""

    name = "kubelite-native"

    def __init__(
        self,
        options: RuntimeOptions,
        *,
        cgroups: CgroupDriver | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not options.cgroup_root or options.cgroup_root.startswith("/"):
            raise InvalidConfigError(
                f"cgroup_root must be a relative cgroup name, got {options.cgroup_root!r}"
            )
        self._opts = options
        self._root = Path(options.state_dir).resolve()
        for sub in ("sandboxes", "containers"):
            # Specs hold environment values (secrets among them): root only.
            (self._root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        self._cgroups = cgroups or detect()
        self._clock = clock or RealClock()
        self._forks = ForkServer(str(self._root / "forkserver.log"))
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._samples: dict[str, tuple[float, int]] = {}
        self._nsfs_dev = os.stat("/proc/self/ns/net").st_dev
        self._adopt()

    # -- helpers shared by every operation -------------------------------------------------

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def _sandbox_dir(self, sandbox_id: str) -> Path:
        return self._root / "sandboxes" / sandbox_id

    def _container_dir(self, container_id: str) -> Path:
        return self._root / "containers" / container_id

    def _sandbox_record(self, sandbox_id: str) -> dict[str, Any]:
        record = state.read_json(str(self._sandbox_dir(sandbox_id) / "sandbox.json"))
        if record is None:
            raise NotFoundError(f"sandbox {sandbox_id} not found")
        return record

    def _container_record(self, container_id: str) -> dict[str, Any]:
        record = state.read_json(str(self._container_dir(container_id) / "container.json"))
        if record is None:
            raise NotFoundError(f"container {container_id} not found")
        return record

    def _spec(self, container_id: str) -> LaunchSpec:
        path = self._container_dir(container_id) / "spec.json"
        try:
            return LaunchSpec.from_json(path.read_text())
        except FileNotFoundError:
            raise NotFoundError(f"container {container_id} not found") from None

    def _call(self, op: str, args: dict[str, Any], fds: tuple[int, ...] = ()) -> Any:
        """Run a helper through the fork server and wait for its one report."""
        ours, theirs = channel.pair()
        try:
            self._forks.spawn(op, args, (theirs.fileno(), *fds))
            theirs.close()
            reply, _ = channel.recv(ours, timeout_s=REPORT_TIMEOUT_S)
        except TimeoutError:
            raise RuntimeFailure(
                f"{op} helper did not report within {REPORT_TIMEOUT_S} s"
            ) from None
        finally:
            theirs.close()
            ours.close()
        if reply is None:
            raise RuntimeFailure(f"{op} helper exited without reporting (see forkserver.log)")
        if "error" in reply:
            raise RuntimeFailure(reply["error"])
        return reply

    def _adopt(self) -> None:
        sandboxes = len(list((self._root / "sandboxes").iterdir()))
        containers = len(list((self._root / "containers").iterdir()))
        if sandboxes or containers:
            log.info(
                "adopted runtime state",
                state_dir=self._root,
                sandboxes=sandboxes,
                containers=containers,
            )

    def info(self) -> RuntimeInfo:
        return RuntimeInfo(self.name, VERSION, self._cgroups.version)

    def close(self) -> None:
        self._forks.close()

    # -- sandboxes --------------------------------------------------------------------------

    def run_sandbox(self, config: SandboxConfig) -> SandboxId:
        _validate_sandbox(config)
        sandbox_id = SandboxId(new_id())
        directory = self._sandbox_dir(sandbox_id)
        (directory / "ns").mkdir(parents=True)
        record = self._sandbox_record_for(sandbox_id, config)
        # Written first, marked stopped, so that a failure (or a crash) half-way leaves a
        # record that teardown and remove_sandbox can follow.
        state.write_json(str(directory / "sandbox.json"), record)
        try:
            self._make_sandbox(record, config, directory)
        except BaseException:
            self._teardown_sandbox(sandbox_id, directory)
            raise
        record["stopped"] = False
        state.write_json(str(directory / "sandbox.json"), record)
        log.info("started sandbox", pod=f"{config.namespace}/{config.name}", sandbox=sandbox_id)
        return sandbox_id

    def _sandbox_record_for(self, sandbox_id: str, config: SandboxConfig) -> dict[str, Any]:
        ns = config.namespaces
        return {
            "id": sandbox_id,
            "name": config.name,
            "namespace": config.namespace,
            "uid": config.uid,
            "hostname": config.hostname or config.name,
            "created_at": self._clock.now(),
            "namespaces": {},
            "pid_mode": ns.pid.value,
            "host_network": ns.network == NamespaceMode.NODE,
            "shm_dir": None,
            "pause": None,
            "cgroup": f"{self._opts.cgroup_root}/pod{config.uid}",
            "log_directory": config.log_directory,
            "dns": dataclasses.asdict(config.dns),
            "host_aliases": [dataclasses.asdict(a) for a in config.host_aliases],
            "ips": [],
            "stopped": True,
            "labels": dict(config.labels),
            "annotations": dict(config.annotations),
        }

    def _make_sandbox(self, record: dict[str, Any], config: SandboxConfig, directory: Path) -> None:
        """Make the Pod's files, cgroup, namespaces and pause process, recording each."""
        path = str(directory / "sandbox.json")
        ns = config.namespaces
        for name, content in render_etc_files(config, hostname=record["hostname"], ips=()).items():
            (directory / name).write_text(content)
        self._cgroups.create(record["cgroup"], config.resources, restrict_devices=False)
        kinds = [] if ns.ipc == NamespaceMode.NODE else ["ipc"]
        if ns.network != NamespaceMode.NODE:
            kinds += ["net", "uts"]
        if ns.ipc != NamespaceMode.NODE:
            record["shm_dir"] = str(directory / "shm")
            os.mkdir(record["shm_dir"])
        reply = self._call(
            "sandbox",
            {
                "kinds": tuple(kinds),
                "hostname": record["hostname"],
                "ns_dir": str(directory / "ns"),
                "shm_dir": record["shm_dir"],
            },
        )
        record["namespaces"] = reply["paths"]
        state.write_json(path, record)
        if ns.pid == NamespaceMode.POD:
            record["pause"] = self._start_pause(record["cgroup"], record["namespaces"], directory)
            record["namespaces"]["pid"] = str(directory / "ns" / "pid")
            state.write_json(path, record)

    def _start_pause(self, pod_cgroup: str, namespaces: dict[str, str], directory: Path) -> dict:
        cgroup = f"{pod_cgroup}/pause-{directory.name[:12]}"
        self._cgroups.create(cgroup, None, restrict_devices=False)
        join = tuple((k, namespaces[k]) for k in ("ipc", "uts", "net") if k in namespaces)
        reply = self._call(
            "pause",
            {
                "join": join,
                "cgroup_procs": self._cgroups.procs_files(cgroup),
                "ns_dir": str(directory / "ns"),
            },
        )
        pid = reply["pid"]
        return {"pid": pid, "start": state.start_time(pid), "cgroup": cgroup}

    def stop_sandbox(self, sandbox_id: SandboxId) -> None:
        with self._lock(sandbox_id):
            record = self._sandbox_record(sandbox_id)
            for status in self.list_containers(sandbox_id):
                self.stop_container(status.id, 0)
            pause = record.get("pause")
            if pause:
                _kill_and_wait(pause["pid"], pause["start"])
                self._cgroups.kill_all(pause["cgroup"])
            if not record["stopped"]:
                record["stopped"] = True
                state.write_json(str(self._sandbox_dir(sandbox_id) / "sandbox.json"), record)
                log.info("stopped sandbox", sandbox=sandbox_id)

    def remove_sandbox(self, sandbox_id: SandboxId) -> None:
        directory = self._sandbox_dir(sandbox_id)
        if not directory.exists():
            return
        self.stop_sandbox(sandbox_id)
        for status in self.list_containers(sandbox_id):
            self.remove_container(status.id)
        with self._lock(sandbox_id):
            self._teardown_sandbox(sandbox_id, directory)
        log.info("removed sandbox", sandbox=sandbox_id)

    def _teardown_sandbox(self, sandbox_id: str, directory: Path) -> None:
        record = state.read_json(str(directory / "sandbox.json")) or {}
        pause = record.get("pause")
        if pause:
            _kill_and_wait(pause["pid"], pause["start"])
        for name in ("net", "uts", "ipc", "pid"):
            _unmount_if_mounted(str(directory / "ns" / name))
        _unmount_if_mounted(str(directory / "shm"))
        if pause:
            self._cgroups.remove(pause["cgroup"])
        cgroup = record.get("cgroup")
        if cgroup and not self._other_sandboxes_use(cgroup, sandbox_id):
            self._cgroups.remove(cgroup)
        shutil.rmtree(directory, ignore_errors=True)

    def _other_sandboxes_use(self, cgroup: str, sandbox_id: str) -> bool:
        for entry in (self._root / "sandboxes").iterdir():
            if entry.name == sandbox_id:
                continue
            other = state.read_json(str(entry / "sandbox.json"))
            if other and other.get("cgroup") == cgroup:
                return True
        return False

    def sandbox_status(self, sandbox_id: SandboxId) -> SandboxStatus:
        record = self._sandbox_record(sandbox_id)
        ready = not record["stopped"] and all(
            self._is_pinned(path) for path in record["namespaces"].values()
        )
        pause = record.get("pause")
        if pause and not state.is_alive(pause["pid"], pause["start"]):
            ready = False
        netns = record["namespaces"].get("net")
        return SandboxStatus(
            id=SandboxId(record["id"]),
            name=record["name"],
            namespace=record["namespace"],
            uid=record["uid"],
            state=SandboxState.READY if ready else SandboxState.NOT_READY,
            created_at=record["created_at"],
            hostname=record["hostname"],
            network_namespace_path=netns,
            ips=tuple(record["ips"]),
            cgroup_path=record["cgroup"],
            labels=record["labels"],
            annotations=record["annotations"],
        )

    def _is_pinned(self, path: str) -> bool:
        """Whether an nsfs file is still mounted at path (not after a node reboot)."""
        try:
            return os.stat(path).st_dev == self._nsfs_dev
        except OSError:
            return False

    def list_sandboxes(self) -> list[SandboxStatus]:
        out = []
        for entry in sorted((self._root / "sandboxes").iterdir()):
            try:
                out.append(self.sandbox_status(SandboxId(entry.name)))
            except NotFoundError:
                continue  # being created or removed right now
        return out

    def set_sandbox_ips(self, sandbox_id: SandboxId, ips: tuple[str, ...]) -> None:
        with self._lock(sandbox_id):
            record = self._sandbox_record(sandbox_id)
            record["ips"] = list(ips)
            directory = self._sandbox_dir(sandbox_id)
            config = _sandbox_config_from_record(record)
            hosts = render_etc_files(config, hostname=record["hostname"], ips=ips)["hosts"]
            # Rewrite in place: containers see the file through a bind mount of this inode.
            with open(directory / "hosts", "r+") as f:
                f.truncate(0)
                f.write(hosts)
            state.write_json(str(directory / "sandbox.json"), record)

    # -- containers -------------------------------------------------------------------------

    def create_container(self, sandbox_id: SandboxId, config: ContainerConfig) -> ContainerId:
        sandbox = self._sandbox_record(sandbox_id)
        if sandbox["stopped"]:
            raise StateError(f"sandbox {sandbox_id} is stopped: cannot create {config.name}")
        container_id = ContainerId(new_id())
        directory = self._container_dir(container_id)
        spec = self._launch_spec(container_id, sandbox, config, directory)
        directory.mkdir()
        try:
            for sub in ("upper", "work", "rootfs"):
                (directory / sub).mkdir()
            resources = dataclasses.replace(
                config.resources,
                pids_limit=config.resources.pids_limit
                if config.resources.pids_limit is not None
                else self._opts.default_pids_limit,
            )
            self._cgroups.create(
                spec.cgroup_path, resources, restrict_devices=not config.security.privileged
            )
            self._prepare_engine(spec, config)
            (directory / "spec.json").write_text(spec.to_json())
            state.write_json(
                str(directory / "container.json"),
                {
                    "id": container_id,
                    "sandbox_id": sandbox_id,
                    "name": config.name,
                    "created_at": self._clock.now(),
                    "attempt": config.attempt,
                    "log_path": spec.log_path,
                    "labels": dict(config.labels),
                    "annotations": dict(config.annotations),
                },
            )
        except BaseException:
            self._cgroups.remove(spec.cgroup_path)
            shutil.rmtree(directory, ignore_errors=True)
            raise
        log.debug("created container", container=config.name, id=container_id)
        return container_id

    def _prepare_engine(self, spec: LaunchSpec, config: ContainerConfig) -> None:
        """Hook for RuncRuntime, which writes its OCI bundle here."""

    def _launch_spec(
        self, container_id: str, sandbox: dict[str, Any], config: ContainerConfig, directory: Path
    ) -> LaunchSpec:
        where = f"container {config.name!r}"
        _validate_container(config, where=where)
        sec = config.security
        uid, gid, groups = imageconfig.resolve_user(
            config.layers,
            image_user=config.image_user,
            run_as_user=config.run_as_user,
            run_as_group=config.run_as_group,
            supplemental_groups=config.supplemental_groups,
            where=where,
        )
        capabilities = caps.effective_set(
            privileged=sec.privileged,
            add=sec.add_capabilities,
            drop=sec.drop_capabilities,
            where=f"{where} securityContext.capabilities",
        )
        env = dict(config.env)
        env.setdefault("PATH", DEFAULT_PATH)
        env.setdefault("HOSTNAME", sandbox["hostname"])
        process = ProcessSpec(
            argv=tuple(config.argv),
            env=tuple(f"{k}={v}" for k, v in env.items()),
            cwd=config.working_dir or "/",
            uid=uid,
            gid=gid,
            groups=groups,
            capabilities=tuple(sorted(capabilities)),
            no_new_privs=not (sec.allow_privilege_escalation or sec.privileged),
            seccomp_profile=seccomp.resolve(sec.seccomp_profile, privileged=sec.privileged),
        )
        cgroup_path = f"{sandbox['cgroup']}/{container_id}"
        namespaces = sandbox["namespaces"]
        sandbox_dir = self._sandbox_dir(sandbox["id"])
        etc = tuple(
            (f"/etc/{name}", str(sandbox_dir / name))
            for name in ("hosts", "hostname", "resolv.conf")
        )
        pid_mode = sandbox["pid_mode"]
        return LaunchSpec(
            container_id=container_id,
            sandbox_id=sandbox["id"],
            container_dir=str(directory),
            process=process,
            layers=tuple(str(Path(layer).resolve()) for layer in config.layers),
            upper_dir=str(directory / "upper"),
            work_dir=str(directory / "work"),
            rootfs_dir=str(directory / "rootfs"),
            read_only_rootfs=sec.read_only_root_filesystem,
            privileged=sec.privileged,
            mounts=tuple(
                MountSpec(os.path.realpath(m.host_path), m.container_path, m.read_only, m.sub_path)
                for m in config.mounts
            ),
            etc_files=etc,
            shm_dir=sandbox["shm_dir"] or "/dev/shm",  # hostIPC: the node's
            join_namespaces=tuple(namespaces.items()),
            new_pid_namespace=pid_mode == NamespaceMode.CONTAINER.value,
            cgroup_path=cgroup_path,
            cgroup_procs=self._cgroups.procs_files(cgroup_path),
            cgroup_version=self._cgroups.version,
            cgroup_mounts=(
                self._cgroups.container_mounts() if isinstance(self._cgroups, CgroupV1) else ()
            ),
            oom_file=self._cgroups.oom_file(cgroup_path),
            kill_file=self._cgroups.kill_file(cgroup_path),
            tty=config.tty,
            oom_score_adj=config.oom_score_adj,
            stop_signal=int(config.stop_signal),
            log_path=self._log_path(sandbox, config, directory),
            log_max_bytes=self._opts.log_max_bytes,
            log_max_files=self._opts.log_max_files,
        )

    @staticmethod
    def _log_path(sandbox: dict[str, Any], config: ContainerConfig, directory: Path) -> str:
        relative = config.log_path or f"{config.name}/{config.attempt}.log"
        if not sandbox["log_directory"]:
            return str(directory / "logs" / relative)
        base = sandbox["log_directory"]
        path = paths.secure_join(base, relative)
        return path

    def start_container(self, container_id: ContainerId) -> None:
        with self._lock(container_id):
            status = self.container_status(container_id)
            if status.state != ContainerState.CREATED:
                raise StateError(
                    f"container {status.name} ({container_id}) is {status.state.value}, "
                    "only a created container can be started"
                )
            spec = self._spec(container_id)
            ours, theirs = channel.pair()
            try:
                self._forks.spawn("shim", self._shim_args(spec), (theirs.fileno(),))
                theirs.close()
                reply, _ = channel.recv(ours, timeout_s=REPORT_TIMEOUT_S)
            except TimeoutError:
                # The shim carries on; whether the container runs shows in its status.
                raise StartError(
                    f"failed to start container {status.name}: no word from its shim within "
                    f"{REPORT_TIMEOUT_S} s"
                ) from None
            finally:
                theirs.close()
                ours.close()
        if reply is None:
            raise StartError(f"failed to start container {status.name}: the shim died")
        if not reply["ok"]:
            raise StartError(f"failed to start container {status.name}: {reply['error']}")
        log.debug("started container", container=status.name, id=container_id)

    def _shim_args(self, spec: LaunchSpec) -> dict[str, Any]:
        return {"spec": spec}

    def stop_container(self, container_id: ContainerId, timeout_s: float) -> None:
        running = state.read_json(str(self._container_dir(container_id) / "running.json"))
        if running is None or self._exited(container_id):
            self._container_record(container_id)  # NotFoundError for an unknown id
            return
        spec = self._spec(container_id)
        shim = state.open_pidfd(running["shim_pid"], running["shim_start"])
        if timeout_s > 0:
            _signal(running["pid"], running["pid_start"], spec.stop_signal)
            if shim is not None and _wait_fd(shim, timeout_s):
                os.close(shim)
                return
        self._cgroups.kill_all(spec.cgroup_path)
        _kill_process(running["pid"], running["pid_start"])
        if shim is not None:
            if not _wait_fd(shim, KILL_WAIT_S):
                os.close(shim)
                raise RuntimeFailure(
                    f"container {container_id} did not exit within {KILL_WAIT_S} s of SIGKILL"
                )
            os.close(shim)

    def _exited(self, container_id: str) -> bool:
        return (self._container_dir(container_id) / "exit.json").exists()

    def remove_container(self, container_id: ContainerId) -> None:
        directory = self._container_dir(container_id)
        if not directory.exists():
            return
        self.stop_container(container_id, 0)
        with self._lock(container_id):
            spec = self._spec(container_id)
            self._cgroups.kill_all(spec.cgroup_path)
            self._cgroups.remove(spec.cgroup_path)
            self._cleanup_engine(spec)
            shutil.rmtree(directory, ignore_errors=True)
            self._samples.pop(spec.cgroup_path, None)
        with self._locks_guard:
            self._locks.pop(container_id, None)

    def _cleanup_engine(self, spec: LaunchSpec) -> None:
        """Hook for RuncRuntime (runc delete)."""

    def container_status(self, container_id: ContainerId) -> ContainerStatus:
        record = self._container_record(container_id)
        directory = self._container_dir(container_id)
        running = state.read_json(str(directory / "running.json"))
        exited = state.read_json(str(directory / "exit.json"))
        current = ContainerState.CREATED
        pid = None
        reason = message = ""
        if exited is None and running is not None:
            this_boot = running.get("boot_id") == state.boot_id()
            if this_boot and (
                state.is_alive(running["shim_pid"], running["shim_start"])
                or state.is_alive(running["pid"], running["pid_start"])
            ):
                current, pid = ContainerState.RUNNING, running["pid"]
            else:
                # The shim writes exit.json before it exits: look again before giving up.
                exited = state.read_json(str(directory / "exit.json")) or {
                    "exit_code": 255,
                    "reason": "Unknown",
                    "message": "the shim exited without recording the container's exit",
                    "finished_at": None,
                }
        if exited is not None:
            current = ContainerState.EXITED
            reason, message = exited["reason"], exited["message"]
        return ContainerStatus(
            id=ContainerId(record["id"]),
            sandbox_id=SandboxId(record["sandbox_id"]),
            name=record["name"],
            state=current,
            created_at=record["created_at"],
            started_at=running["started_at"] if running else None,
            finished_at=exited["finished_at"] if exited else None,
            exit_code=exited["exit_code"] if exited else None,
            reason=reason,
            message=message,
            pid=pid,
            log_path=record["log_path"],
            attempt=record["attempt"],
            labels=record["labels"],
            annotations=record["annotations"],
        )

    def list_containers(self, sandbox_id: SandboxId | None = None) -> list[ContainerStatus]:
        out = []
        for entry in sorted((self._root / "containers").iterdir()):
            try:
                status = self.container_status(ContainerId(entry.name))
            except NotFoundError:
                continue
            if sandbox_id is None or status.sandbox_id == sandbox_id:
                out.append(status)
        return out

    def wait_container(self, container_id: ContainerId, timeout_s: float) -> ContainerStatus:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.container_status(container_id)
            if status.state != ContainerState.RUNNING:
                return status
            running = state.read_json(str(self._container_dir(container_id) / "running.json"))
            assert running is not None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return status
            shim = state.open_pidfd(running["shim_pid"], running["shim_start"])
            if shim is None:
                # Shim gone but the process lives on (the shim was killed): poll the process.
                process = state.open_pidfd(running["pid"], running["pid_start"])
                if process is None:
                    continue
                shim = process
            _wait_fd(shim, remaining)
            os.close(shim)

    # -- exec -------------------------------------------------------------------------------

    def _exec_target(self, container_id: str) -> tuple[dict[str, Any], LaunchSpec]:
        status = self.container_status(ContainerId(container_id))
        if status.state != ContainerState.RUNNING:
            raise StateError(
                f"container {status.name} ({container_id}) is {status.state.value}: cannot exec"
            )
        running = state.read_json(str(self._container_dir(container_id) / "running.json"))
        assert running is not None
        return running, self._spec(container_id)

    def _exec_args(
        self,
        container_id: str,
        argv: tuple[str, ...],
        *,
        tty: bool,
        rows: int,
        cols: int,
        timeout_s: float | None,
    ) -> dict[str, Any]:
        if not argv:
            raise InvalidConfigError(f"exec in container {container_id}: empty command")
        running, spec = self._exec_target(container_id)
        return {
            "target_pid": running["pid"],
            "target_start": running["pid_start"],
            "process": dataclasses.replace(spec.process, argv=tuple(argv)),
            "cgroup_procs": spec.cgroup_procs,
            "tty": tty,
            "rows": rows,
            "cols": cols,
            "timeout_s": timeout_s,
        }

    def exec_sync(
        self, container_id: ContainerId, argv: tuple[str, ...], timeout_s: float
    ) -> ExecResult:
        args = self._exec_args(container_id, argv, tty=False, rows=0, cols=0, timeout_s=timeout_s)
        session = self._start_exec(args, stdin=False)
        try:
            return session.collect(timeout_s + KILL_WAIT_S)
        finally:
            session.close()

    def exec_stream(
        self,
        container_id: ContainerId,
        argv: tuple[str, ...],
        *,
        tty: bool,
        stdin: bool,
        rows: int = 24,
        cols: int = 80,
    ) -> ExecSession:
        args = self._exec_args(container_id, argv, tty=tty, rows=rows, cols=cols, timeout_s=None)
        return self._start_exec(args, stdin=stdin)

    def _start_exec(self, args: dict[str, Any], *, stdin: bool) -> NativeExecSession:
        ours, theirs = channel.pair()
        local: list[int] = []
        remote: list[int] = [theirs.fileno()]
        if not args["tty"]:
            if stdin:
                stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
                local.append(stdin_w)
            else:
                stdin_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
                local.append(-1)
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            local += [out_r, err_r]
            remote += [stdin_r, out_w, err_w]
        try:
            self._forks.spawn("exec", args, tuple(remote))
        except BaseException:
            for fd in local:
                if fd >= 0:
                    os.close(fd)
            ours.close()
            raise
        finally:
            theirs.close()
            for fd in remote[1:]:
                os.close(fd)
        return NativeExecSession.begin(ours, tty=args["tty"], pipes=local or None)

    # -- stats ------------------------------------------------------------------------------

    def _usage(self, cgroup_path: str) -> Usage:
        raw = self._cgroups.usage(cgroup_path)
        now = self._clock.now()
        previous = self._samples.get(cgroup_path)
        rate = None
        if previous is not None and now > previous[0]:
            rate = int((raw.cpu_usage_ns - previous[1]) / (now - previous[0]))
        self._samples[cgroup_path] = (now, raw.cpu_usage_ns)
        return Usage(
            timestamp=now,
            cpu_usage_ns=raw.cpu_usage_ns,
            cpu_nano_cores=rate,
            memory_usage_bytes=raw.memory_usage_bytes,
            memory_working_set_bytes=raw.memory_working_set_bytes,
            pids=raw.pids,
        )

    def container_stats(self, container_id: ContainerId) -> ContainerStats:
        record = self._container_record(container_id)
        spec = self._spec(container_id)
        return ContainerStats(container_id, record["name"], self._usage(spec.cgroup_path))

    def sandbox_stats(self, sandbox_id: SandboxId) -> SandboxStats:
        record = self._sandbox_record(sandbox_id)
        containers = tuple(
            self.container_stats(status.id)
            for status in self.list_containers(sandbox_id)
            if status.state == ContainerState.RUNNING
        )
        return SandboxStats(sandbox_id, self._usage(record["cgroup"]), containers)


# -- module helpers ---------------------------------------------------------------------------


def _wait_fd(fd: int, timeout_s: float) -> bool:
    ready, _, _ = select.select([fd], [], [], max(0.0, timeout_s))
    return bool(ready)


def _signal(pid: int, started: int, signum: int) -> None:
    fd = state.open_pidfd(pid, started)
    if fd is None:
        return
    try:
        signal.pidfd_send_signal(fd, signum)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)


def _kill_process(pid: int, started: int) -> None:
    _signal(pid, started, signal.SIGKILL)


def _kill_and_wait(pid: int, started: int) -> None:
    fd = state.open_pidfd(pid, started)
    if fd is None:
        return
    try:
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        if not _wait_fd(fd, KILL_WAIT_S):
            raise RuntimeFailure(f"process {pid} did not exit within {KILL_WAIT_S} s of SIGKILL")
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)


def _unmount_if_mounted(path: str) -> None:
    try:
        libc.umount2(path, libc.MNT_DETACH | libc.UMOUNT_NOFOLLOW)
    except OSError:
        pass  # not mounted (or never created): nothing to release


SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
HOSTNAME = re.compile(
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)


def _validate_sandbox(config: SandboxConfig) -> None:
    problems = []
    if not config.name:
        problems.append("name is empty")
    # The uid names the Pod's cgroup directory: nothing that could climb out of it.
    if not SAFE_NAME.match(config.uid):
        problems.append(f"uid {config.uid!r} must be letters, digits, '.', '_' or '-'")
    hostname = config.hostname or config.name
    if len(hostname) > 63 or not HOSTNAME.match(hostname):
        problems.append(f"hostname {hostname!r} is not a valid host name (RFC 1123, 63 chars)")
    if config.log_directory and not os.path.isabs(config.log_directory):
        problems.append(f"log_directory {config.log_directory!r} is not absolute")
    if problems:
        raise InvalidConfigError(
            f"sandbox {config.namespace}/{config.name}: " + "; ".join(problems)
        )


def _validate_container(config: ContainerConfig, *, where: str) -> None:
    problems = []
    if not SAFE_NAME.match(config.name):
        problems.append("name must be letters, digits, '.', '_' or '-'")
    if not config.argv:
        problems.append("argv is empty (neither command nor image Entrypoint/Cmd)")
    if not config.layers:
        problems.append("no image layers")
    for index, layer in enumerate(config.layers):
        if not Path(layer).is_dir():
            problems.append(f"layers[{index}] {str(layer)!r} is not a directory")
    for index, mount in enumerate(config.mounts):
        label = f"mounts[{index}]"
        if not os.path.isabs(mount.container_path):
            problems.append(f"{label}: container_path {mount.container_path!r} is not absolute")
        if not os.path.exists(mount.host_path):
            problems.append(f"{label}: host_path {mount.host_path!r} does not exist")
        if mount.sub_path and (why := paths.check_sub_path(mount.sub_path, where=label)):
            problems.append(why)
    if why := seccomp.check_profile(config.security.seccomp_profile):
        problems.append(why)
    if problems:
        raise InvalidConfigError(f"{where}: " + "; ".join(problems))


def render_etc_files(
    config: SandboxConfig, *, hostname: str, ips: tuple[str, ...]
) -> dict[str, str]:
    """/etc/hosts, /etc/hostname and /etc/resolv.conf of a Pod, as the kubelet writes them."""
    hosts = [
        "# Kubernetes-managed hosts file.",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
    ]
    hosts += [f"{ip}\t{hostname}" for ip in ips]
    for alias in config.host_aliases:
        hosts.append(f"{alias.ip}\t" + " ".join(alias.hostnames))
    resolv = [f"nameserver {server}" for server in config.dns.servers]
    if config.dns.searches:
        resolv.append("search " + " ".join(config.dns.searches))
    if config.dns.options:
        resolv.append("options " + " ".join(config.dns.options))
    return {
        "hosts": "\n".join(hosts) + "\n",
        "hostname": hostname + "\n",
        "resolv.conf": "\n".join(resolv) + ("\n" if resolv else ""),
    }


def _sandbox_config_from_record(record: dict[str, Any]) -> SandboxConfig:
    from kubelet.runtime.interface import DnsConfig, HostAlias

    dns = record["dns"]
    return SandboxConfig(
        name=record["name"],
        namespace=record["namespace"],
        uid=record["uid"],
        hostname=record["hostname"],
        dns=DnsConfig(tuple(dns["servers"]), tuple(dns["searches"]), tuple(dns["options"])),
        host_aliases=tuple(
            HostAlias(a["ip"], tuple(a["hostnames"])) for a in record["host_aliases"]
        ),
    )
