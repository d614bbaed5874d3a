"""Pod IP allocation from one node's range, held on disk so that it outlives the kubelet.

Each held address is one file in the state directory, named by the address and
holding its owner (sandbox id, then Pod uid, one a line). The file is created
with O_CREAT|O_EXCL, so the kernel decides races: two threads or two processes
offered the same address get it once, and the loser moves on to the next one.
The files are the only truth; the in-memory index (sandbox id -> address) is a
cache, refilled from the directory when it misses, so a restarted kubelet (or
a second process sharing the directory) finds what was allocated before.

Never handed out: the network address, the gateway (the bridge's, the range's
first) and the broadcast address. The search starts after the last address
handed out (in memory; a fresh process starts after the highest address held)
so that a freed address is not reused at once, while stale ARP entries and
conntrack flows for it may still be around elsewhere.

An owner file that is empty (a crash between create and write) still holds its
address; release_orphans() frees it along with every address whose sandbox is
gone.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from kubelet.podnet.config import RetryableError


@dataclasses.dataclass(frozen=True)
class Owner:
    sandbox_id: str
    pod_uid: str = ""

    def encode(self) -> bytes:
        return f"{self.sandbox_id}\n{self.pod_uid}\n".encode()

    @classmethod
    def decode(cls, data: bytes) -> Owner:
        lines = data.decode(errors="replace").splitlines()
        return cls(lines[0] if lines else "", lines[1] if len(lines) > 1 else "")


class RangeExhausted(RetryableError):
    """Every address of the range is held; one may be freed by a Pod's teardown."""


class IpAllocator:
    """Addresses of `network` for sandboxes; thread-safe, and safe across processes."""

    def __init__(self, network: ipaddress.IPv4Network, state_dir: Path) -> None:
        if network.prefixlen > 30:
            raise ValueError(f"{network} has no room for Pods: want a /30 or larger")
        self.network = network
        self.gateway = network.network_address + 1
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._by_sandbox: dict[str, ipaddress.IPv4Address] = {}
        self._last: int | None = None

    # -- queries -------------------------------------------------------------------------

    def held(self) -> dict[ipaddress.IPv4Address, Owner]:
        """Every address held now, as the directory says."""
        result = {}
        for entry in os.scandir(self.dir):
            address = self._address_of(entry.name)
            if address is not None:
                owner = _read_owner(Path(entry.path))
                if owner is not None:
                    result[address] = owner
        return result

    def lookup(self, sandbox_id: str) -> ipaddress.IPv4Address | None:
        """The address held for the sandbox, if any."""
        with self._lock:
            return self._lookup(sandbox_id)

    # -- changes -------------------------------------------------------------------------

    def allocate(self, owner: Owner) -> ipaddress.IPv4Address:
        """The sandbox's address: the one it already holds, else a free one."""
        with self._lock:
            held = self._lookup(owner.sandbox_id)
            if held is not None:
                return held
            for address in self._candidates():
                if self._claim(address, owner):
                    self._by_sandbox[owner.sandbox_id] = address
                    self._last = int(address)
                    return address
        raise RangeExhausted(
            f"failed to allocate a Pod IP for sandbox {owner.sandbox_id}: "
            f"every address of {self.network} is held"
        )

    def release(self, sandbox_id: str) -> ipaddress.IPv4Address | None:
        """Free the sandbox's address; the address freed, None if it held none."""
        with self._lock:
            address = self._lookup(sandbox_id)
            if address is None:
                return None
            self._by_sandbox.pop(sandbox_id, None)
            # Read before unlinking: another process may hold this address for a
            # different sandbox if our cache was stale.
            path = self.dir / str(address)
            owner = _read_owner(path)
            if owner is not None and owner.sandbox_id == sandbox_id:
                path.unlink(missing_ok=True)
            return address

    def release_orphans(self, live_sandbox_ids: Iterable[str]) -> list[ipaddress.IPv4Address]:
        """Free every address whose owner is not a live sandbox (crash leftovers).

        NB: call it when no setup is in flight (at kubelet start, before the Pod
        workers), or an address being set up right now is freed under it."""
        live = set(live_sandbox_ids)
        freed = []
        with self._lock:
            for address, owner in sorted(self.held().items()):
                if owner.sandbox_id not in live:
                    (self.dir / str(address)).unlink(missing_ok=True)
                    self._by_sandbox.pop(owner.sandbox_id, None)
                    freed.append(address)
        return freed

    # -- internals -----------------------------------------------------------------------

    def _lookup(self, sandbox_id: str) -> ipaddress.IPv4Address | None:
        address = self._by_sandbox.get(sandbox_id)
        if address is not None:
            owner = _read_owner(self.dir / str(address))
            if owner is not None and owner.sandbox_id == sandbox_id:
                return address
            del self._by_sandbox[sandbox_id]
        # A miss: the directory may know (a previous process, or a sibling one).
        for held, owner in self.held().items():
            if owner.sandbox_id == sandbox_id:
                self._by_sandbox[sandbox_id] = held
                return held
        return None

    def _candidates(self) -> Iterator[ipaddress.IPv4Address]:
        first = int(self.gateway) + 1
        last = int(self.network.broadcast_address) - 1
        if self._last is None:
            held = self.held()
            self._last = int(max(held)) if held else None
        start = self._last
        start = start + 1 if start is not None and first <= start < last else first
        for value in range(start, last + 1):
            yield ipaddress.IPv4Address(value)
        for value in range(first, start):
            yield ipaddress.IPv4Address(value)

    def _claim(self, address: ipaddress.IPv4Address, owner: Owner) -> bool:
        path = self.dir / str(address)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return False
        # No fsync: the file must outlive the kubelet, not the machine; after a
        # reboot every sandbox, and so every address, is gone anyway.
        try:
            os.write(fd, owner.encode())
        finally:
            os.close(fd)
        return True

    def _address_of(self, name: str) -> ipaddress.IPv4Address | None:
        try:
            address = ipaddress.IPv4Address(name)
        except ValueError:
            return None
        return address if address in self.network else None


def _read_owner(path: Path) -> Owner | None:
    try:
        return Owner.decode(path.read_bytes())
    except FileNotFoundError:
        return None
