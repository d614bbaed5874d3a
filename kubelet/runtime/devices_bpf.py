"""Device access on cgroup v2: a BPF_PROG_TYPE_CGROUP_DEVICE program per container cgroup.

cgroup v2 has no devices.allow file; the kernel asks a BPF program attached to the cgroup
instead, once per open or mknod of a device node, with (type, access, major, minor) in its
context. The program built here returns 1 (allow) for the first rule that matches and 0
(deny) when none does, which is the v1 semantics of `devices.deny a` followed by
`devices.allow` lines. It is attached with BPF_F_ALLOW_MULTI, so programs of parent cgroups
(systemd's, for one) still run: access needs every program's consent.

There is no Python binding for this program type in Debian, and the program is a fixed
shape of at most a few dozen instructions (loads, compares, exit), so it is assembled here;
the instruction encoding is the kernel's struct bpf_insn. Its layout per rule:

    if type != rule.type            goto next
    if access & ~rule.access != 0   goto next   (only when the rule is not rwm)
    if major != rule.major          goto next   (only when not a wildcard)
    if minor != rule.minor          goto next   (only when not a wildcard)
    return 1
  next: ...
    return 0
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from collections.abc import Iterable

from kubelet.runtime import _libc

BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
_BPF_NR = {"x86_64": 321, "aarch64": 280}

DEV_BLOCK, DEV_CHAR = 1, 2
ACC_MKNOD, ACC_READ, ACC_WRITE = 1, 2, 4
ACC_ALL = ACC_MKNOD | ACC_READ | ACC_WRITE

# Opcodes (linux/bpf.h, linux/bpf_common.h).
LDX_MEM_W = 0x61
ALU32_AND_K = 0x54
ALU32_RSH_K = 0x74
ALU32_MOV_X = 0xBC
ALU32_MOV_K = 0xB4
JMP_JNE_K = 0x55
JMP_JNE_X = 0x5D
JMP_EXIT = 0x95

# Registers: r1 is the context on entry, then scratch; r2..r5 hold the request.
R0, R1, R2, R3, R4, R5 = range(6)


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _access_mask(letters: str) -> int:
    return sum({"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}[c] for c in letters)


def rule_from_v1(kind: str, major: int, minor: int, access: str = "rwm") -> tuple:
    """(type, access mask, major, minor) from the v1 notation; -1 is a wildcard."""
    return ({"c": DEV_CHAR, "b": DEV_BLOCK}[kind], _access_mask(access), major, minor)


def build_program(rules: Iterable[tuple[int, int, int, int]]) -> bytes:
    """The program's instructions for the allow rules, in order."""
    prologue = [
        _insn(LDX_MEM_W, R2, R1, 0),  # access_type = (access << 16) | type
        _insn(ALU32_AND_K, R2, imm=0xFFFF),  # r2: type
        _insn(LDX_MEM_W, R3, R1, 0),
        _insn(ALU32_RSH_K, R3, imm=16),  # r3: access
        _insn(LDX_MEM_W, R4, R1, 4),  # r4: major
        _insn(LDX_MEM_W, R5, R1, 8),  # r5: minor
    ]
    body: list[bytes] = []
    for kind, access, major, minor in rules:
        checks: list[tuple[int, int, int, int]] = [(JMP_JNE_K, R2, 0, kind)]
        block_prefix: list[bytes] = []
        if access != ACC_ALL:
            # r1 = r3 & access; if r1 != r3 the request asks for more than allowed.
            block_prefix = [_insn(ALU32_MOV_X, R1, R3), _insn(ALU32_AND_K, R1, imm=access)]
            checks.append((JMP_JNE_X, R1, R3, 0))
        if major >= 0:
            checks.append((JMP_JNE_K, R4, 0, major))
        if minor >= 0:
            checks.append((JMP_JNE_K, R5, 0, minor))
        # Layout: type check, prefix, remaining checks, mov r0 1, exit.
        block = [checks[0], *block_prefix, *checks[1:]]
        length = len(block) + 2
        for index, item in enumerate(block):
            if isinstance(item, bytes):
                body.append(item)
                continue
            code, dst, src, imm = item
            body.append(_insn(code, dst, src, off=length - index - 1, imm=imm))
        body += [_insn(ALU32_MOV_K, R0, imm=1), _insn(JMP_EXIT)]
    epilogue = [_insn(ALU32_MOV_K, R0, imm=0), _insn(JMP_EXIT)]
    return b"".join(prologue + body + epilogue)


def _bpf(command: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    number = _BPF_NR.get(platform.machine())
    if number is None:
        raise OSError(f"bpf(2) number unknown for {platform.machine()}")
    result = _libc._libc.syscall(number, ctypes.c_int(command), attr, ctypes.c_uint(len(attr)))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({command}): {os.strerror(err)}")
    return result


def load(program: bytes) -> int:
    """Load the program; its file descriptor."""
    insns = ctypes.create_string_buffer(program, len(program))
    license_text = ctypes.create_string_buffer(b"Apache-2.0")
    log = ctypes.create_string_buffer(65536)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into(
        "<IIQQIIQ",
        attr,
        0,
        BPF_PROG_TYPE_CGROUP_DEVICE,
        len(program) // 8,
        ctypes.addressof(insns),
        ctypes.addressof(license_text),
        1,
        len(log),
        ctypes.addressof(log),
    )
    struct.pack_into("<I", attr, 68, BPF_CGROUP_DEVICE)  # expected_attach_type
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        verifier = log.value.decode(errors="replace").strip()
        raise OSError(exc.errno, f"loading the device filter failed: {exc}: {verifier}") from exc


def attach(cgroup_dir: str, program_fd: int) -> None:
    fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        attr = ctypes.create_string_buffer(32)
        struct.pack_into("<IIII", attr, 0, fd, program_fd, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI)
        _bpf(BPF_PROG_ATTACH, attr)
    finally:
        os.close(fd)


def restrict(cgroup_dir: str, rules: Iterable[tuple[int, int, int, int]]) -> None:
    """Allow only `rules` for processes in cgroup_dir (and below)."""
    program_fd = load(build_program(rules))
    try:
        attach(cgroup_dir, program_fd)
    finally:
        os.close(program_fd)  # the cgroup keeps the program alive
