"""hostPort: which node ports a Pod asks for, and the per-sandbox records the rules come from.

A Pod's hostPorts come in the kubelet's request as PortMappings (from
spec.containers[*].ports[*] with a hostPort; protocol TCP or UDP, hostIP
optional, 0.0.0.0 meaning any). Each sandbox with any
has one record file under the state directory, written atomically (temp file
and rename), holding its Pod and mappings; the nat chains are rendered from
all records at once, so the rules of every Pod survive a kubelet restart and
one sandbox's teardown removes exactly its own. Two Pods asking for the same
protocol and port on overlapping host addresses conflict: the later setup is
refused, naming the holder.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from collections.abc import Sequence
from pathlib import Path

from kubelet.network import PortMapping
from kubelet.podnet.config import PodNetworkError, RetryableError
from kubelet.podnet.iptables import HostPort

PROTOCOLS = {"TCP": "tcp", "UDP": "udp"}


class HostPortConflict(RetryableError):
    """Another Pod on the node holds the port; it may go away."""


@dataclasses.dataclass(frozen=True)
class PortRequest:
    protocol: str  # tcp | udp
    host_port: int
    container_port: int
    host_ip: str = ""

    def overlaps(self, other: PortRequest) -> bool:
        same_port = (self.protocol, self.host_port) == (other.protocol, other.host_port)
        return same_port and (
            not self.host_ip or not other.host_ip or self.host_ip == other.host_ip
        )

    def describe(self) -> str:
        return f"{self.host_ip or '*'}:{self.host_port}/{self.protocol}"


def port_requests(mappings: Sequence[PortMapping], *, pod: str) -> list[PortRequest]:
    """The kubelet's port mappings as requests; PodNetworkError names the first bad one."""
    return [_port_request(m, f"hostPort mapping {i} of Pod {pod}") for i, m in enumerate(mappings)]


def _port_request(mapping: PortMapping, where: str) -> PortRequest:
    protocol = PROTOCOLS.get(str(mapping.protocol or "TCP").upper())
    if protocol is None:
        raise PodNetworkError(
            f"unsupported protocol {mapping.protocol!r} in {where}: want TCP or UDP"
        )
    for name, value in (("hostPort", mapping.host_port), ("containerPort", mapping.container_port)):
        if not isinstance(value, int) or not 1 <= value <= 65535:
            raise PodNetworkError(f"invalid {name} {value!r} in {where}: want 1-65535")
    host_ip = mapping.host_ip if mapping.host_ip != "0.0.0.0" else ""
    if host_ip:
        try:
            ipaddress.IPv4Address(host_ip)
        except ValueError:
            raise PodNetworkError(f"invalid hostIP {host_ip!r} in {where}: want IPv4") from None
    return PortRequest(protocol, mapping.host_port, mapping.container_port, host_ip)


@dataclasses.dataclass(frozen=True)
class HostPortRecord:
    sandbox_id: str
    pod: str  # namespace/name, for conflict messages
    pod_ip: str
    ports: tuple[PortRequest, ...]

    def udp_host_ports(self) -> list[int]:
        return [p.host_port for p in self.ports if p.protocol == "udp"]

    def hostports(self) -> list[HostPort]:
        return [
            HostPort(p.protocol, p.host_port, self.pod_ip, p.container_port, p.host_ip)
            for p in self.ports
        ]


class HostPortStore:
    """One JSON record per sandbox with hostPorts under `directory`."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def all(self) -> list[HostPortRecord]:
        records = []
        for path in sorted(self.dir.glob("*.json")):
            record = self._read(path)
            if record is not None:
                records.append(record)
        return records

    def conflict(self, record: HostPortRecord) -> str | None:
        """Why the record cannot be added, or None."""
        for other in self.all():
            if other.sandbox_id == record.sandbox_id:
                continue
            for mine in record.ports:
                for theirs in other.ports:
                    if mine.overlaps(theirs):
                        return f"hostPort {mine.describe()} is held by Pod {other.pod}"
        return None

    def put(self, record: HostPortRecord) -> None:
        data = {
            "sandboxId": record.sandbox_id,
            "pod": record.pod,
            "podIP": record.pod_ip,
            "ports": [dataclasses.asdict(p) for p in record.ports],
        }
        path = self._path(record.sandbox_id)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    def remove(self, sandbox_id: str) -> HostPortRecord | None:
        """Drop the sandbox's record; the record dropped, None if it had none."""
        path = self._path(sandbox_id)
        record = self._read(path)
        path.unlink(missing_ok=True)
        return record

    def _path(self, sandbox_id: str) -> Path:
        if "/" in sandbox_id or sandbox_id.startswith("."):
            raise PodNetworkError(f"invalid sandbox id {sandbox_id!r}: not a file name")
        return self.dir / f"{sandbox_id}.json"

    def _read(self, path: Path) -> HostPortRecord | None:
        try:
            data = json.loads(path.read_text())
            return HostPortRecord(
                sandbox_id=data["sandboxId"],
                pod=data["pod"],
                pod_ip=data["podIP"],
                ports=tuple(PortRequest(**p) for p in data["ports"]),
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as err:
            raise PodNetworkError(f"failed to read hostPort record {path}: {err}") from None
