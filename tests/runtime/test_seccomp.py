"""Seccomp: what RuntimeDefault refuses, what it lets through, and which profiles are refused.

Two kinds of evidence. The call table runs every refused system call twice in a host
process (root, every capability): once without a filter, where the arguments are chosen so
that the kernel answers something other than EPERM (a bad pointer, a bad flag, a success
that changes nothing outside the forked child), and once with the filter, where the answer
must be EPERM. So a pass shows the filter refused the call, not a missing capability. The
container cases then run real containers through NativeRuntime (and runc): busybox for
ordinary programs and for the user-namespace route round the mount refusal, and Debian's
python3 (the host's /usr mounted read-only into a busybox image) for calls busybox cannot
make.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubelet.runtime import caps, oci, seccomp
from kubelet.runtime.interface import InvalidConfigError, Mount, Security
from kubelet.runtime.native import NativeRuntime, RuntimeOptions
from tests.runtime.conftest import cleanup_runtime, container, pod, run_to_exit, sh

REPO = Path(__file__).resolve().parents[2]
HOST_PYTHON = Path("/usr/bin/python3")
BAD_POINTER = 1  # the first page is never mapped: the kernel answers EFAULT
CLONE_SIGHAND = 0x800  # without CLONE_VM: clone fails EINVAL before it creates anything
CLONE_VFORK = 0x4000  # not a flag unshare knows: EINVAL before it changes anything
CLONE_NEWUSER = 0x10000000

needs_bindings = pytest.mark.skipif(
    seccomp.BINDINGS is None, reason=seccomp.BINDINGS_PROBLEM or "no seccomp bindings"
)
pytestmark = [pytest.mark.root, pytest.mark.timeout(180), needs_bindings]

# Run in a forked child each (some change the caller: personality, unshare), after setsid
# (vhangup then has no terminal to hang up). Prints {probe id: errno, 0 for success}.
PROBE_SCRIPT = r"""
import ctypes, json, os, sys
req = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
if req.get("load") is not None:
    sys.path.insert(0, req["repo"])
    from kubelet.runtime import seccomp
    libc.prctl(38, 1, 0, 0, 0)
    seccomp.load(req["load"])

def arg(a):
    if isinstance(a, str):
        return ctypes.c_long(os.getpid()) if a == "$pid" else ctypes.c_char_p(a.encode())
    return ctypes.c_long(a)

def probe(nr, args):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.setsid()
        res = libc.syscall(ctypes.c_long(nr), *[arg(a) for a in args])
        os.write(w, str(0 if res >= 0 else ctypes.get_errno()).encode())
        os._exit(0)
    os.close(w)
    out = os.read(r, 64)
    os.close(r)
    os.waitpid(pid, 0)
    return int(out) if out else -1

print(json.dumps({name: probe(nr, args) for name, nr, args in req["probes"]}))
"""

# syscall -> arguments that are harmless for root without a filter and not answered EPERM.
PROBES: dict[str, tuple[object, ...]] = {
    "keyctl": (0, -3, 0),  # KEYCTL_GET_KEYRING_ID of the session keyring
    "add_key": (BAD_POINTER, BAD_POINTER, 0, 0, -3),
    "request_key": (BAD_POINTER, BAD_POINTER, 0, 0),
    "kexec_load": (0, 1000, 0, 0x80),  # a bad flag: EINVAL (ENOSYS without kexec)
    "kexec_file_load": (-1, -1, 0, 0, 0x80),
    "userfaultfd": (1,),  # UFFD_USER_MODE_ONLY
    "create_module": (BAD_POINTER, 0),
    "get_kernel_syms": (0,),
    "query_module": (BAD_POINTER, 0, 0, 0, 0),
    "nfsservctl": (0, 0, 0),
    "uselib": (BAD_POINTER,),
    "ustat": (0, BAD_POINTER),
    "sysfs": (99,),
    "_sysctl": (BAD_POINTER,),
    "personality": (0x0040000,),  # ADDR_NO_RANDOMIZE
    "init_module": (BAD_POINTER, 0, "x"),  # too short for a module: ENOEXEC
    "finit_module": (-1, "", 0),
    "delete_module": ("kltest_no_such_module", 0o4000),
    "mount": (0, "/kltest-none", BAD_POINTER, 0, 0),
    "umount2": ("/", 0x100),  # an unknown flag: EINVAL
    "pivot_root": (BAD_POINTER, BAD_POINTER),
    "move_mount": (-1, BAD_POINTER, -1, BAD_POINTER, 0),
    "open_tree": (-1, BAD_POINTER, 0),
    "fsopen": (BAD_POINTER, 0),
    "fsconfig": (-1, 0, 0, 0, 0),
    "fsmount": (-1, 0, 0),
    "fspick": (-1, BAD_POINTER, 0),
    "mount_setattr": (-1, BAD_POINTER, 0, 0, 0),
    "swapon": (BAD_POINTER, 0),
    "swapoff": (BAD_POINTER,),
    "quotactl": (0, 0, 0, 0),
    "quotactl_fd": (-1, 0, 0, 0),
    "lookup_dcookie": (0, 0, 0),
    "name_to_handle_at": (-100, BAD_POINTER, BAD_POINTER, BAD_POINTER, 0),
    "fanotify_init": (0, 0),
    "sethostname": (BAD_POINTER, 100000),  # too long: EINVAL
    "setdomainname": (BAD_POINTER, 100000),
    "clone": (CLONE_NEWUSER | CLONE_SIGHAND, 0, 0, 0, 0),
    "unshare": (CLONE_NEWUSER | CLONE_VFORK,),
    "clone3": (0, 0),
    "setns": (-1, 0),
    "bpf": (9999, 0, 0),
    "perf_event_open": (BAD_POINTER, 0, -1, -1, 0),
    "syslog": (10, 0, 0),  # SYSLOG_ACTION_SIZE_BUFFER
    "settimeofday": (BAD_POINTER, 0),
    "clock_settime": (0, BAD_POINTER),
    "clock_adjtime": (0, BAD_POINTER),
    "adjtimex": (BAD_POINTER,),
    "reboot": (0, 0, 0, 0),  # bad magic: EINVAL
    "acct": (BAD_POINTER,),  # never 0: that would switch accounting off
    "iopl": (4,),
    "ioperm": (0, 0x100000, 0),
    "kcmp": ("$pid", "$pid", 0, 0, 0),
    "process_vm_readv": ("$pid", 0, 0, 0, 0, 0),
    "process_vm_writev": ("$pid", 0, 0, 0, 0, 0),
    "pidfd_getfd": (-1, 0, 0),
    "process_madvise": (-1, 0, 0, 0, 0),
    "open_by_handle_at": (-1, BAD_POINTER, 0),
    "get_mempolicy": (0, 0, 0, 0, 0),
    "mbind": (0, 0, 0, 0, 0, 0),
    "set_mempolicy": (0, 0, 0),
    "set_mempolicy_home_node": (0, 0, 0, 0),
    "move_pages": (0, 0, 0, 0, 0, 0),
    "migrate_pages": (0, 0, 0, 0),
    "vhangup": (),
    "ptrace": (0x4206, -1, 0, 0),  # PTRACE_SEIZE of no process: ESRCH
}
ORDINARY = {"getpid": (), "uname": (BAD_POINTER,), "getcwd": (BAD_POINTER, 0)}


def syscall_number(name: str) -> int:
    return seccomp.BINDINGS.resolve_syscall(seccomp.BINDINGS.Arch.NATIVE, name)


def native_refused_calls(capabilities: frozenset[str] = caps.DEFAULT) -> set[str]:
    return {r.syscall for r in seccomp.refusals(capabilities) if syscall_number(r.syscall) >= 0}


def run_probes(
    probes: dict[str, tuple[object, ...]],
    *,
    load: tuple[str, ...] | None,
    python: str = sys.executable,
) -> dict[str, int]:
    request = {
        "repo": str(REPO),
        "load": list(load) if load is not None else None,
        "probes": [(name, syscall_number(name), list(args)) for name, args in probes.items()],
    }
    done = subprocess.run(
        [python, "-c", PROBE_SCRIPT, json.dumps(request)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


def probe_request(probes: dict[str, tuple[object, ...]]) -> str:
    return json.dumps(
        {"probes": [(n, syscall_number(n), list(a)) for n, a in probes.items()], "load": None}
    )


# -- the rule set, in a host process -------------------------------------------------------


def test_every_refused_call_has_a_probe():
    assert native_refused_calls() - set(PROBES) == set()


def test_every_listed_call_is_known_to_libseccomp():
    for group in seccomp.groups():
        for refusal in group.refusals:
            # Negative numbers are calls of other architectures (vm86 on x86_64): still known.
            syscall_number(refusal.syscall)


@pytest.fixture(scope="module")
def unfiltered() -> dict[str, int]:
    return run_probes({**PROBES, **ORDINARY}, load=None)


@pytest.fixture(scope="module")
def filtered() -> dict[str, int]:
    return run_probes({**PROBES, **ORDINARY}, load=tuple(sorted(caps.DEFAULT)))


@pytest.mark.parametrize("name", sorted(PROBES))
def test_runtime_default_refuses_with_eperm(name: str, unfiltered, filtered):
    if name not in native_refused_calls():
        pytest.skip(f"{name} is not refused on this architecture or kernel")
    expected = errno.ENOSYS if name == "clone3" else errno.EPERM
    assert unfiltered[name] not in (errno.EPERM, -1), f"{name} without a filter proves nothing"
    assert filtered[name] == expected, f"{name}: {os.strerror(filtered[name])}"


@pytest.mark.parametrize("name", sorted(ORDINARY))
def test_ordinary_calls_pass(name: str, unfiltered, filtered):
    assert filtered[name] == unfiltered[name]


@pytest.mark.parametrize(
    ("capability", "call", "open_"),
    [
        pytest.param("SYS_TIME", "clock_settime", True, id="sys-time-opens-the-clock"),
        pytest.param("SYS_ADMIN", "umount2", True, id="sys-admin-opens-mounts"),
        pytest.param("SYS_ADMIN", "unshare", True, id="sys-admin-opens-namespaces"),
        pytest.param("SYS_ADMIN", "clone3", True, id="sys-admin-opens-clone3"),
        pytest.param("BPF", "bpf", True, id="bpf-opens-bpf"),
        pytest.param("SYS_PTRACE", "kcmp", True, id="sys-ptrace-opens-kcmp"),
        pytest.param("SYS_BOOT", "kexec_load", False, id="sys-boot-never-opens-kexec"),
        pytest.param("SYS_ADMIN", "keyctl", False, id="sys-admin-never-opens-keyrings"),
        pytest.param("SYS_ADMIN", "personality", False, id="nothing-opens-personality"),
    ],
)
def test_capabilities_unlock_their_group_only(capability: str, call: str, open_: bool, unfiltered):
    got = run_probes({call: PROBES[call]}, load=tuple(sorted(caps.DEFAULT | {capability})))
    if open_:
        assert got[call] == unfiltered[call]
    else:
        assert got[call] == errno.EPERM


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        pytest.param(0, True, id="linux"),
        pytest.param(0x0008, True, id="linux32"),
        pytest.param(0x20000, True, id="uname26"),
        pytest.param(0x20008, True, id="linux32-uname26"),
        pytest.param(0xFFFFFFFF, True, id="query"),
        pytest.param(0x1_0000_0000, True, id="upper-half-ignored-like-the-kernel"),
        pytest.param(0x0040000, False, id="addr-no-randomize"),
        pytest.param(0x0400000, False, id="read-implies-exec"),
        pytest.param(0x0006, False, id="bsd"),
        pytest.param(0x80000000, False, id="top-bit-alone"),
        pytest.param(0xFFFFFFFE, False, id="almost-the-query"),
        pytest.param(0x1_0004_0000, False, id="upper-half-cannot-hide-a-flag"),
    ],
)
def test_personality_values(value: int, allowed: bool):
    got = run_probes({"personality": (value,)}, load=tuple(sorted(caps.DEFAULT)))
    assert (got["personality"] == 0) is allowed, os.strerror(got["personality"])


def test_ptrace_is_refused_on_kernels_before_4_8_only():
    old = {r.syscall for r in seccomp.refusals(caps.DEFAULT, kernel=(4, 4))}
    new = {r.syscall for r in seccomp.refusals(caps.DEFAULT, kernel=(6, 1))}
    assert "ptrace" in old and "ptrace" not in new
    assert "ptrace" not in {r.syscall for r in seccomp.refusals({"SYS_PTRACE"}, kernel=(4, 4))}


@pytest.mark.parametrize(
    ("profile", "problem"),
    [
        pytest.param(None, None, id="unset-is-runtime-default"),
        pytest.param("RuntimeDefault", None, id="runtime-default"),
        pytest.param("Unconfined", None, id="unconfined"),
        pytest.param(
            "localhost/profiles/audit.json",
            "seccomp profile 'localhost/profiles/audit.json': Localhost profiles are not "
            "supported by this runtime (use RuntimeDefault or Unconfined)",
            id="localhost",
        ),
        pytest.param(
            "runtime/default",
            "unknown seccomp profile 'runtime/default' (expected RuntimeDefault, Unconfined "
            "or localhost/<file>)",
            id="annotation-spelling",
        ),
        pytest.param("", "unknown seccomp profile ''", id="empty"),
    ],
)
def test_check_profile(profile, problem):
    got = seccomp.check_profile(profile)
    if problem is None:
        assert got is None
    else:
        assert got is not None and got.startswith(problem)


@pytest.mark.parametrize(
    ("profile", "privileged", "resolved"),
    [
        pytest.param(None, False, "RuntimeDefault", id="default-filters"),
        pytest.param("RuntimeDefault", False, "RuntimeDefault", id="asked"),
        pytest.param("Unconfined", False, "Unconfined", id="unconfined"),
        pytest.param(None, True, "Unconfined", id="privileged-is-never-filtered"),
        pytest.param("RuntimeDefault", True, "Unconfined", id="privileged-wins"),
    ],
)
def test_resolve(profile, privileged, resolved):
    assert seccomp.resolve(profile, privileged=privileged) == resolved


def test_oci_section_mirrors_the_rules():
    section = seccomp.oci_section(caps.DEFAULT)
    assert section["defaultAction"] == "SCMP_ACT_ALLOW"
    named = [entry["names"][0] for entry in section["syscalls"]]
    assert named == [r.syscall for r in seccomp.refusals(caps.DEFAULT)]
    clone3 = next(e for e in section["syscalls"] if e["names"] == ["clone3"])
    assert clone3["errnoRet"] == errno.ENOSYS
    assert "mount" not in {e["names"][0] for e in seccomp.oci_section({"SYS_ADMIN"})["syscalls"]}


# -- real containers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def python_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A layer over busybox in which the host's /usr (mounted read-only) resolves."""
    if not HOST_PYTHON.exists():
        pytest.skip("needs Debian's python3 on the host")
    layer = tmp_path_factory.mktemp("python-layer")
    (layer / "usr").mkdir()
    for name in ("lib", "lib64"):
        (layer / name).symlink_to(f"usr/{name}")
    return layer


def python_probes(
    runtime: NativeRuntime,
    sandbox,
    rootfs: Path,
    layer: Path,
    probes: dict[str, tuple[object, ...]],
    **security: object,
) -> dict[str, int]:
    config = container(
        rootfs,
        str(HOST_PYTHON),
        "-c",
        PROBE_SCRIPT,
        probe_request(probes),
        layers=(rootfs, layer),
        mounts=(Mount("/usr", "/usr", read_only=True),),
        security=Security(**security),  # type: ignore[arg-type]
    )
    status, output = run_to_exit(runtime, sandbox, config)
    assert status.exit_code == 0, output
    return json.loads(output.strip().splitlines()[-1])


CONTAINER_PROBES = {
    name: PROBES[name]
    for name in (
        "keyctl",
        "kexec_load",
        "finit_module",
        "mount",
        "clock_settime",
        "unshare",
        "userfaultfd",
        "personality",
    )
}
EPERM = errno.EPERM


@pytest.mark.parametrize(
    ("security", "expected"),
    [
        pytest.param(
            {},
            dict.fromkeys(CONTAINER_PROBES, EPERM),
            id="default-refuses",
        ),
        pytest.param(
            {"seccomp_profile": "Unconfined"},
            {
                # What only the filter refused now reaches the kernel; the rest the missing
                # capabilities still refuse.
                "keyctl": 0,
                "mount": errno.EFAULT,
                "clock_settime": errno.EFAULT,
                "unshare": errno.EINVAL,
                "userfaultfd": 0,
                "personality": 0,
            },
            id="unconfined-lets-through",
        ),
        pytest.param(
            {"add_capabilities": ("SYS_BOOT", "SYS_MODULE", "SYS_TIME")},
            {"kexec_load": EPERM, "keyctl": EPERM, "clock_settime": errno.EFAULT},
            id="capabilities-open-their-calls-only",
        ),
    ],
)
def test_container_system_calls(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path, python_layer: Path, security, expected
):
    got = python_probes(
        runtime, sandbox, busybox_rootfs, python_layer, CONTAINER_PROBES, **security
    )
    assert {name: got[name] for name in expected} == expected


def test_unconfined_with_sys_boot_reaches_kexec(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path, python_layer: Path
):
    got = python_probes(
        runtime,
        sandbox,
        busybox_rootfs,
        python_layer,
        {"kexec_load": PROBES["kexec_load"]},
        seccomp_profile="Unconfined",
        add_capabilities=("SYS_BOOT",),
    )
    assert got["kexec_load"] in (errno.EINVAL, errno.ENOSYS)


def seccomp_status_line(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("Seccomp:")).split()[1]


@pytest.mark.parametrize(
    ("security", "mode"),
    [
        pytest.param(Security(), "2", id="unset-filters"),
        pytest.param(Security(seccomp_profile="RuntimeDefault"), "2", id="runtime-default"),
        pytest.param(Security(seccomp_profile="Unconfined"), "0", id="unconfined"),
        pytest.param(Security(privileged=True), "0", id="privileged"),
        pytest.param(Security(allow_privilege_escalation=True), "2", id="without-no-new-privs-too"),
    ],
)
def test_seccomp_mode_of_the_container(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path, security: Security, mode: str
):
    status, output = run_to_exit(
        runtime, sandbox, sh(busybox_rootfs, "cat /proc/self/status", security=security)
    )
    assert status.exit_code == 0, output
    assert seccomp_status_line(output) == mode
    no_new_privs = "0" if security.allow_privilege_escalation or security.privileged else "1"
    assert f"NoNewPrivs:\t{no_new_privs}" in output


def test_exec_gets_the_containers_filter(runtime: NativeRuntime, sandbox, busybox_rootfs: Path):
    filtered = runtime.create_container(sandbox, sh(busybox_rootfs, "sleep 60", name="filtered"))
    open_ = runtime.create_container(
        sandbox,
        sh(
            busybox_rootfs, "sleep 60", name="open", security=Security(seccomp_profile="Unconfined")
        ),
    )
    for container_id in (filtered, open_):
        runtime.start_container(container_id)
    for container_id, mode in ((filtered, "2"), (open_, "0")):
        result = runtime.exec_sync(container_id, ("cat", "/proc/self/status"), timeout_s=30)
        assert result.exit_code == 0, result.stderr
        assert seccomp_status_line(result.stdout.decode()) == mode


USERNS_MOUNT = "unshare -Urm sh -c 'mount -t tmpfs none /tmp && echo mounted'"


@pytest.mark.parametrize(
    ("profile", "exit_ok", "text"),
    [
        pytest.param(None, False, "Operation not permitted", id="default-refuses"),
        pytest.param("Unconfined", True, "mounted", id="unconfined-allows"),
    ],
)
def test_mount_through_a_new_user_namespace(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path, profile, exit_ok: bool, text: str
):
    config = sh(busybox_rootfs, USERNS_MOUNT, security=Security(seccomp_profile=profile))
    status, output = run_to_exit(runtime, sandbox, config)
    assert (status.exit_code == 0) is exit_ok, output
    assert text in output


@pytest.mark.parametrize(
    ("script", "refusal"),
    [
        pytest.param("mkdir -p /mnt && mount -t tmpfs none /mnt", "permission denied", id="mount"),
        pytest.param("umount /proc", "Operation not permitted", id="umount"),
        pytest.param("date -s 2001-01-01", "can't set date: Operation not permitted", id="clock"),
        pytest.param("unshare -n true", "Operation not permitted", id="new-network-namespace"),
    ],
)
def test_busybox_refusals(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path, script: str, refusal: str
):
    """What a user sees (the missing capabilities refuse these too: see the call table)."""
    status, output = run_to_exit(runtime, sandbox, sh(busybox_rootfs, script))
    assert refusal in output


ORDINARY_SCRIPT = """
set -e
ls / > /dev/null
echo hello > /tmp/f && cat /tmp/f
ps > /dev/null
mkdir -p /tmp/www && echo served > /tmp/www/index.html
httpd -p 127.0.0.1:8080 -h /tmp/www
wget -q -O - http://127.0.0.1:8080/index.html
sleep 0.1 & wait
date > /dev/null
"""


@pytest.mark.parametrize(
    ("security", "run_as_user"),
    [
        pytest.param(Security(), None, id="root"),
        pytest.param(Security(), 1000, id="non-root"),
        pytest.param(Security(allow_privilege_escalation=True), None, id="privilege-escalation"),
    ],
)
def test_ordinary_programs_work(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path, security: Security, run_as_user
):
    config = sh(busybox_rootfs, ORDINARY_SCRIPT, security=security, run_as_user=run_as_user)
    status, output = run_to_exit(runtime, sandbox, config)
    assert status.exit_code == 0, output
    assert output.split() == ["hello", "served"]


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        pytest.param(
            "localhost/audit.json",
            "seccomp profile 'localhost/audit.json': Localhost profiles are not supported",
            id="localhost",
        ),
        pytest.param("docker/default", "unknown seccomp profile 'docker/default'", id="unknown"),
    ],
)
def test_bad_profiles_are_refused_at_create(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path, profile: str, message: str
):
    config = sh(busybox_rootfs, "true", security=Security(seccomp_profile=profile))
    with pytest.raises(InvalidConfigError, match=f"container 'main': .*{message}"):
        runtime.create_container(sandbox, config)
    assert runtime.list_containers() == []


# -- runc ----------------------------------------------------------------------------------


@pytest.fixture
def runc_runtime(tmp_path: Path, cgroup_root: str) -> Iterator[oci.RuncRuntime]:
    if shutil.which("runc") is None:
        pytest.skip("needs runc (Debian package runc)")
    state_dir = tmp_path / "runc-state"
    rt = oci.RuncRuntime(RuntimeOptions(state_dir=state_dir, cgroup_root=cgroup_root))
    try:
        yield rt
    finally:
        cleanup_runtime(rt, state_dir, cgroup_root)


@pytest.mark.parametrize(
    ("profile", "mode", "mounted"),
    [
        pytest.param(None, "2", False, id="default"),
        pytest.param("Unconfined", "0", True, id="unconfined"),
    ],
)
def test_runc_gets_the_same_profile(
    runc_runtime: oci.RuncRuntime, busybox_rootfs: Path, profile, mode: str, mounted: bool
):
    sandbox = runc_runtime.run_sandbox(pod())
    script = f"grep Seccomp: /proc/self/status; {USERNS_MOUNT}"
    config = sh(busybox_rootfs, script, security=Security(seccomp_profile=profile))
    status, output = run_to_exit(runc_runtime, sandbox, config)
    assert seccomp_status_line(output) == mode
    assert ("mounted" in output) is mounted, output
