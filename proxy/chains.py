"""Names of the chains the proxy owns, and the jumps into them from the built-in chains.

Every chain the proxy creates starts with KUBELITE-, so that cleanup and the
first sync after a restart can find them in iptables-save output, and no chain
of anyone else's is ever flushed or deleted. Per-Service-port and per-endpoint
chains carry a hash of what they stand for: the name stays within iptables'
28-character limit, is stable across restarts (so an unchanged Service keeps
its chain and a partial sync need not touch it) and changes whenever the
identity changes (so a renamed port never inherits an old chain's rules).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib

PREFIX = "KUBELITE-"
SERVICES = "KUBELITE-SERVICES"  # in nat: ClusterIP DNAT; in filter: REJECT without endpoints
NODEPORTS = "KUBELITE-NODEPORTS"
POSTROUTING = "KUBELITE-POSTROUTING"
MARK_MASQ = "KUBELITE-MARK-MASQ"
EXTERNAL_SERVICES = "KUBELITE-EXTERNAL-SERVICES"  # filter: REJECT NodePorts without endpoints
FORWARD = "KUBELITE-FORWARD"
SVC_PREFIX = "KUBELITE-SVC-"
SEP_PREFIX = "KUBELITE-SEP-"

MAX_CHAIN_NAME = 28  # XT_EXTENSION_MAXNAMELEN less the terminating NUL
_HASH_CHARS = MAX_CHAIN_NAME - len(SVC_PREFIX)

# The chains every sync declares, per table, whatever Services exist.
FIXED_CHAINS: dict[str, tuple[str, ...]] = {
    "filter": (SERVICES, EXTERNAL_SERVICES, FORWARD),
    "nat": (SERVICES, NODEPORTS, POSTROUTING, MARK_MASQ),
}
TABLES = ("filter", "nat")


@dataclasses.dataclass(frozen=True)
class Jump:
    """One rule the proxy inserts into a built-in chain that it does not own."""

    table: str
    chain: str
    args: tuple[str, ...]


def _jump(table: str, chain: str, target: str, comment: str, *, new_only: bool) -> Jump:
    # Filter-table jumps look at new connections only: established flows were
    # already decided, and this keeps the per-packet cost off long transfers.
    state = ("-m", "conntrack", "--ctstate", "NEW") if new_only else ()
    return Jump(table, chain, (*state, "-m", "comment", "--comment", comment, "-j", target))


JUMPS: tuple[Jump, ...] = (
    _jump("nat", "PREROUTING", SERVICES, "kubelite service portals", new_only=False),
    _jump("nat", "OUTPUT", SERVICES, "kubelite service portals", new_only=False),
    _jump("nat", "POSTROUTING", POSTROUTING, "kubelite postrouting rules", new_only=False),
    _jump("filter", "INPUT", EXTERNAL_SERVICES, "kubelite external services", new_only=True),
    _jump("filter", "FORWARD", SERVICES, "kubelite service portals", new_only=True),
    _jump("filter", "FORWARD", EXTERNAL_SERVICES, "kubelite external services", new_only=True),
    _jump("filter", "FORWARD", FORWARD, "kubelite forwarding rules", new_only=False),
    _jump("filter", "OUTPUT", SERVICES, "kubelite service portals", new_only=True),
)


def _hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return base64.b32encode(digest).decode()[:_HASH_CHARS]


@functools.lru_cache(maxsize=65536)
def service_chain(port_name: str, protocol: str) -> str:
    """KUBELITE-SVC-<hash> for one Service port, e.g. port_name 'default/web:http'."""
    return SVC_PREFIX + _hash(port_name + protocol.lower())


@functools.lru_cache(maxsize=262144)
def endpoint_chain(port_name: str, protocol: str, endpoint: str) -> str:
    """KUBELITE-SEP-<hash> for one endpoint 'ip:port' of one Service port."""
    return SEP_PREFIX + _hash(port_name + protocol.lower() + endpoint)


def is_owned(chain: str) -> bool:
    return chain.startswith(PREFIX)
