"""Fixtures for the proxy tests: a scratch network namespace per test, removed even on failure."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest


def unique_name(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def ns_run(netns: str, *argv: str, stdin: str | None = None) -> str:
    """Run a command inside the namespace; raise with its stderr if it fails."""
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, *argv], input=stdin, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} in {netns} failed: {proc.stderr.strip()}")
    return proc.stdout


class Namespaces:
    """Network namespaces a test creates; delete_all() removes every one of them."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.names: list[str] = []

    def create(self, suffix: str) -> str:
        name = f"{self.prefix}-{suffix}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.names.append(name)
        ns_run(name, "ip", "link", "set", "lo", "up")
        return name

    def delete_all(self) -> None:
        for name in reversed(self.names):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    spaces = Namespaces(unique_name("klp"))
    try:
        yield spaces
    finally:
        spaces.delete_all()


@pytest.fixture
def netns(namespaces: Namespaces) -> str:
    return namespaces.create("node")
