"""The Pod network's iptables rules: rendered from values, applied as one restore of our chains.

    nat POSTROUTING -> PODNET-<P>-MASQ
        -s <podCIDR> ! -d <clusterCIDR> -j MASQUERADE      (Pods reaching outside)
        -s <podIP> -d <podIP> -p <proto> --dport <port> -j MASQUERADE   (hostPort hairpin)
    nat PREROUTING, OUTPUT (local destinations) -> PODNET-<P>-HOSTPORTS
        [-d <hostIP>] -p <proto> --dport <hostPort> -j DNAT --to-destination <podIP>:<port>
    filter FORWARD -> PODNET-<P>-FORWARD   only when FORWARD's policy is DROP
        -i <bridge> -j ACCEPT, -o <bridge> -j ACCEPT

Both nat chains are rendered together from the config and every Pod's hostPort
record and restored with `iptables-restore --noflush`: declaring a chain
flushes it and the rules that follow refill it, in one transaction, and no
other chain is named. The jumps out of the built-in chains are checked once
against iptables-save and only the missing ones are added, so applying is
idempotent. Pod-to-Pod traffic matches no rule here and is never NATed.

A hairpin (a Pod reaching its own hostPort through the node's address) needs
the masquerade: without it the reply would come from the Pod's own address to
itself and never reach the conntrack entry that undoes the DNAT.
"""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
from collections.abc import Iterable, Sequence

from kubelet.podnet.config import PodNetConfig, PodNetworkError, RetryableError

LOCAL_ONLY = ("-m", "addrtype", "--dst-type", "LOCAL")


class IptablesError(RetryableError):
    """An iptables command failed; its stderr is in the message."""


@dataclasses.dataclass(frozen=True)
class HostPort:
    """One hostPort of a Pod, already resolved to the Pod's address."""

    protocol: str  # "tcp" or "udp"
    host_port: int
    pod_ip: str
    container_port: int
    host_ip: str = ""  # empty: any local address of the node but loopback


@dataclasses.dataclass(frozen=True)
class Jump:
    table: str
    chain: str
    args: tuple[str, ...]
    insert: bool = False  # at the top rather than appended

    @property
    def target(self) -> str:
        return self.args[-1]


def jumps(config: PodNetConfig, *, forward: bool) -> list[Jump]:
    chains = config.chains
    comment = ("-m", "comment", "--comment", f"kubelite pod network {config.prefix}")
    wanted = [
        Jump("nat", "POSTROUTING", (*comment, "-j", chains.masquerade)),
        Jump("nat", "PREROUTING", (*comment, *LOCAL_ONLY, "-j", chains.hostports)),
        Jump("nat", "OUTPUT", (*comment, *LOCAL_ONLY, "-j", chains.hostports)),
    ]
    if forward:
        # First, so that a DROP or REJECT someone appended does not catch Pod traffic.
        wanted.append(Jump("filter", "FORWARD", (*comment, "-j", chains.forward), insert=True))
    return wanted


def render_nat(config: PodNetConfig, hostports: Iterable[HostPort]) -> list[str]:
    """The nat table's part: both chains, declared (so flushed) and refilled."""
    chains = config.chains
    ordered = sorted(set(hostports), key=lambda h: (h.protocol, h.host_port, h.host_ip))
    lines = [f":{chains.masquerade} - [0:0]", f":{chains.hostports} - [0:0]"]
    lines.append(
        f"-A {chains.masquerade} -s {config.pod_cidr} ! -d {config.cluster_cidr} "
        '-m comment --comment "pod traffic leaving the cluster" -j MASQUERADE'
    )
    for h in ordered:
        lines.append(
            f"-A {chains.masquerade} -s {h.pod_ip}/32 -d {h.pod_ip}/32 -p {h.protocol} "
            f"-m {h.protocol} --dport {h.container_port} -j MASQUERADE"
        )
    for h in ordered:
        destination = f"-d {h.host_ip}/32" if h.host_ip else "! -d 127.0.0.0/8"
        lines.append(
            f"-A {chains.hostports} {destination} -p {h.protocol} -m {h.protocol} "
            f"--dport {h.host_port} -j DNAT --to-destination {h.pod_ip}:{h.container_port}"
        )
    return lines


def render_forward(config: PodNetConfig) -> list[str]:
    chain = config.chains.forward
    return [
        f":{chain} - [0:0]",
        f"-A {chain} -i {config.bridge} -j ACCEPT",
        f"-A {chain} -o {config.bridge} -j ACCEPT",
    ]


def restore_text(tables: dict[str, list[str]]) -> str:
    out: list[str] = []
    for table, lines in tables.items():
        if lines:
            out.extend([f"*{table}", *lines, "COMMIT"])
    return "\n".join(out) + "\n"


def jump_lines(missing: Sequence[Jump]) -> dict[str, list[str]]:
    by_table: dict[str, list[str]] = {}
    for jump in missing:
        op = "-I" if jump.insert else "-A"
        by_table.setdefault(jump.table, []).append(f"{op} {jump.chain} {_quote(jump.args)}")
    return by_table


def _quote(args: Sequence[str]) -> str:
    return " ".join(f'"{a}"' if " " in a else a for a in args)


# -- reading iptables-save ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TableView:
    """What iptables-save shows of one table: chain policies, user chains, rule lines."""

    policies: dict[str, str]
    chains: set[str]
    rules: list[str]

    def has_jump(self, jump: Jump) -> bool:
        head = f"-A {jump.chain} "
        return any(r.startswith(head) and r.split()[-1] == jump.target for r in self.rules)

    def jump_rules(self, targets: set[str]) -> list[str]:
        """Rules of any chain that jump to one of targets, as -A lines."""
        return [r for r in self.rules if r.split()[-1] in targets and _is_jump(r)]


def _is_jump(rule: str) -> bool:
    parts = rule.split()
    return len(parts) >= 2 and parts[-2] in ("-j", "-g")


def parse_table(text: str) -> TableView:
    policies: dict[str, str] = {}
    chains: set[str] = set()
    rules: list[str] = []
    for line in text.splitlines():
        if line.startswith(":"):
            name, policy = line[1:].split()[:2]
            if policy == "-":
                chains.add(name)
            else:
                policies[name] = policy
        elif line.startswith("-A "):
            rules.append(line)
    return TableView(policies, chains, rules)


# -- running the commands -----------------------------------------------------------------


class IptablesRunner:
    """iptables-save and iptables-restore --noflush of the calling thread's namespace."""

    def __init__(self, binary: str = "iptables", *, lock_wait_s: int = 5) -> None:
        self.binary = binary
        self._wait = ["-w", str(lock_wait_s)]

    def save(self, table: str) -> TableView:
        out = self._run([f"{self.binary}-save", "-t", table], None, f"read table {table}")
        return parse_table(out)

    def restore(self, text: str) -> None:
        self._run([f"{self.binary}-restore", *self._wait, "--noflush"], text, "restore rules")

    def delete_rule(self, table: str, rule: str) -> None:
        """Delete one rule given as an iptables-save -A line."""
        args = _split_save_line(rule)
        args[0] = "-D"
        self._run([self.binary, *self._wait, "-t", table, *args], None, f"delete {rule}")

    def _run(self, argv: list[str], stdin: str | None, what: str) -> str:
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise PodNetworkError(f"failed to {what}: {argv[0]} is not installed") from None
        if proc.returncode != 0:
            raise IptablesError(f"failed to {what}: {' '.join(proc.stderr.split())}")
        return proc.stdout


def _split_save_line(rule: str) -> list[str]:
    """Split an iptables-save line into argv, honouring its double quotes."""
    return shlex.split(rule)
