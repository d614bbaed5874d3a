"""The iptables seam: a small Protocol and its implementation over the iptables commands.

The proxy talks to the kernel's tables only through `Iptables`: one atomic
restore of its own chains per sync, a save to read back what is there, and
check/insert/delete of single rules for the jumps out of the built-in chains.
IptablesCommand runs the real binaries (iptables, iptables-restore,
iptables-save, or their -legacy / -nft variants) as asyncio subprocesses, so a
sync never blocks the event loop that the informers share; with `netns` set
it runs them inside that named network namespace (what tests and benchmarks
use; the proxy itself runs in the node's namespace and leaves it None).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Protocol


class IptablesError(Exception):
    """An iptables command failed; the message carries the command and its stderr."""


class Iptables(Protocol):
    async def restore(self, text: str) -> None:
        """Apply iptables-restore --noflush input in one transaction per table."""

    async def save(self, table: str) -> str:
        """The table as iptables-save prints it."""

    async def check(self, table: str, chain: str, args: Sequence[str]) -> bool:
        """Whether the chain has this rule."""

    async def insert(self, table: str, chain: str, args: Sequence[str]) -> None:
        """Insert the rule at the top of the chain."""

    async def delete(self, table: str, chain: str, args: Sequence[str]) -> None:
        """Delete one copy of the rule from the chain."""


class IptablesCommand:
    """Iptables through the command-line tools, optionally inside a named network namespace."""

    def __init__(
        self, *, binary: str = "iptables", netns: str | None = None, lock_wait: int = 5
    ) -> None:
        self._binary = binary
        self._prefix = ["ip", "netns", "exec", netns] if netns else []
        self._wait = ["-w", str(lock_wait)]

    async def restore(self, text: str) -> None:
        argv = [*self._prefix, f"{self._binary}-restore", *self._wait, "--noflush"]
        code, _, err = await _run(argv, text)
        if code != 0:
            raise IptablesError(f"failed to restore rules: {_restore_failure(err, text)}")

    async def save(self, table: str) -> str:
        argv = [*self._prefix, f"{self._binary}-save", "-t", table]
        code, out, err = await _run(argv)
        if code != 0:
            raise IptablesError(f"failed to save table {table}: {err.strip()}")
        return out

    async def check(self, table: str, chain: str, args: Sequence[str]) -> bool:
        # Exit status 1 means "no such rule"; anything else (a missing target
        # chain, a lock timeout) is reported as absent too, and the insert that
        # follows will fail loudly if the problem is real.
        code, _, _ = await _run(self._rule_argv("-C", table, chain, args))
        return code == 0

    async def insert(self, table: str, chain: str, args: Sequence[str]) -> None:
        await self._change("-I", table, chain, args)

    async def delete(self, table: str, chain: str, args: Sequence[str]) -> None:
        await self._change("-D", table, chain, args)

    async def _change(self, op: str, table: str, chain: str, args: Sequence[str]) -> None:
        code, _, err = await _run(self._rule_argv(op, table, chain, args))
        if code != 0:
            rule = " ".join(args)
            raise IptablesError(f"failed to {op} rule in {table}/{chain} ({rule}): {err.strip()}")

    def _rule_argv(self, op: str, table: str, chain: str, args: Sequence[str]) -> list[str]:
        return [*self._prefix, self._binary, *self._wait, "-t", table, op, chain, *args]


async def _run(argv: list[str], stdin: str | None = None) -> tuple[int, str, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        raise IptablesError(f"failed to run {argv[0]}: not installed") from None
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


_FAILED_LINE = re.compile(r"(?:line:? ?|line )(\d+)")


def _restore_failure(stderr: str, text: str) -> str:
    """stderr of a failed restore, with the input line it names quoted."""
    detail = " ".join(stderr.split())
    match = _FAILED_LINE.search(stderr)
    if match:
        number = int(match.group(1))
        lines = text.splitlines()
        if 1 <= number <= len(lines):
            detail += f" (input line {number}: {lines[number - 1]})"
    return detail


def parse_save(text: str) -> dict[str, dict[str, list[str]]]:
    """iptables-save output as {table: {chain: [rule lines]}}; built-in chains included."""
    tables: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:].strip(), {})
        elif current is None or not line or line.startswith("#") or line == "COMMIT":
            continue
        elif line.startswith(":"):
            current.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            current.setdefault(line.split()[1], []).append(line)
    return tables
