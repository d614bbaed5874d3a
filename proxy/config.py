"""The proxy's settings, validated once when the process starts.

Everything the rule renderer and the sync runner need to know about the node
and the cluster lives here, so that rendering stays a pure function of
(services, endpoints, config).
"""

from __future__ import annotations

import dataclasses
import ipaddress

# kube-proxy's default: bit 14, i.e. 0x4000/0x4000. Other software on the node
# (CNI plugins, firewalls) may use other bits of the packet mark; we only ever
# test and set this one bit.
DEFAULT_MASQUERADE_BIT = 14


@dataclasses.dataclass(frozen=True)
class ProxyConfig:
    """How the proxy programs this node.

    cluster_cidr: the Pod network; traffic to a ClusterIP from outside it is
        masqueraded so that replies come back through this node. None turns that
        rule off (traffic from the node itself then keeps its source address).
    min_sync_interval: seconds between the starts of two syncs, however many
        changes arrive in between; changes inside the window are batched.
    resync_interval: seconds between re-applies of every rule, which repair
        chains, rules or jumps that someone else removed.
    resync_batch_rules: rules per iptables-restore during a resync (a batch
        is whole chains, at least one). A resync is cut into batches so that a
        change arriving meanwhile waits for one batch, not for a rewrite of the
        whole table (seconds at a thousand Services); counted in rules because
        iptables-nft's restore time grows with rules more than with chains.
    """

    cluster_cidr: str | None = None
    masquerade_bit: int = DEFAULT_MASQUERADE_BIT
    min_sync_interval: float = 0.1
    resync_interval: float = 30.0
    resync_batch_rules: int = 1000
    max_retry_interval: float = 30.0

    def __post_init__(self) -> None:
        if self.cluster_cidr is not None:
            try:
                net = ipaddress.ip_network(self.cluster_cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"proxy config cluster_cidr: {exc}") from None
            if net.version != 4:
                raise ValueError(
                    f"proxy config cluster_cidr: only IPv4 is supported, got {self.cluster_cidr}"
                )
            object.__setattr__(self, "cluster_cidr", str(net))
        if not 0 <= self.masquerade_bit <= 31:
            raise ValueError(
                f"proxy config masquerade_bit: must be 0-31, got {self.masquerade_bit}"
            )
        if self.resync_interval <= 0:
            raise ValueError(
                f"proxy config resync_interval: must be positive, got {self.resync_interval}"
            )
        if self.resync_batch_rules < 1:
            raise ValueError(
                "proxy config resync_batch_rules: must be at least 1, "
                f"got {self.resync_batch_rules}"
            )
        for field in ("min_sync_interval", "resync_interval", "max_retry_interval"):
            value = getattr(self, field)
            if value < 0:
                raise ValueError(f"proxy config {field}: must not be negative, got {value}")

    @property
    def masquerade_mark(self) -> str:
        """The mark/mask pair as iptables writes it, e.g. 0x4000/0x4000."""
        bit = 1 << self.masquerade_bit
        return f"{bit:#x}/{bit:#x}"

    @property
    def masquerade_bit_value(self) -> str:
        return f"{1 << self.masquerade_bit:#x}"
