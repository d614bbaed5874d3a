"""Node IPAM: every Node gets its own slice of the cluster's Pod network.

The cluster CIDR (10.244.0.0/16 by default) is cut into subnets of the node
mask (/24 by default); a Node without spec.podCIDR gets the next free one,
written as spec.podCIDR and spec.podCIDRs, and a deleted Node's subnet is free
again.

Invariant: a subnet is never held by two live Nodes. The allocator's state
lives in this process only, so before allocating anything `run()` marks every
subnet already written on a Node as used (the Node informer has listed by
then); afterwards, only this controller writes podCIDR, one sync per Node at
a time. A subnet stays held until the Node is gone from the cache, and the
next allocation starts after the last one handed out (round robin), so a
subnet just released is the last to be given again, when routes to its old
node may still linger.

When the range is exhausted the Node gets a CIDRNotAvailable Event and waits;
it is retried as soon as a Node is deleted.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from controllers.base import QueueController
from machinery import errors, meta
from machinery.client import ApiClient
from machinery.clock import Clock
from machinery.events import WARNING, EventRecorder
from machinery.informer import Handlers, InformerFactory

Obj = dict[str, Any]

DEFAULT_CLUSTER_CIDR = "10.244.0.0/16"
DEFAULT_NODE_MASK = 24


class CidrSet:
    """The node-sized subnets of a cluster CIDR, each free or held by one Node."""

    def __init__(self, cluster_cidr: str = DEFAULT_CLUSTER_CIDR, mask: int = DEFAULT_NODE_MASK):
        try:
            network = ipaddress.ip_network(cluster_cidr, strict=True)
        except ValueError as err:
            raise ValueError(f"invalid cluster CIDR {cluster_cidr!r}: {err}") from None
        if not isinstance(network, ipaddress.IPv4Network):
            raise ValueError(f"invalid cluster CIDR {cluster_cidr!r}: only IPv4 is supported")
        if not network.prefixlen <= mask <= 30:
            raise ValueError(
                f"invalid node CIDR mask size {mask}: must be between the cluster CIDR's "
                f"prefix length ({network.prefixlen}) and 30"
            )
        if mask - network.prefixlen > 24:
            raise ValueError(
                f"node CIDR mask size {mask} cuts {cluster_cidr} into more than 2^24 subnets"
            )
        self.network = network
        self.mask = mask
        self.size = 1 << (mask - network.prefixlen)
        self._step = 1 << (32 - mask)
        self._base = int(network.network_address)
        self._holder: dict[int, str] = {}
        self._held: dict[str, int] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._held)

    def _cidr(self, index: int) -> str:
        return f"{ipaddress.IPv4Address(self._base + index * self._step)}/{self.mask}"

    def _index(self, cidr: str) -> int | None:
        """The subnet's index, or None when it is not one of this set's subnets."""
        try:
            subnet = ipaddress.ip_network(cidr, strict=True)
        except ValueError:
            return None
        if subnet.prefixlen != self.mask or not subnet.subnet_of(self.network):  # type: ignore[arg-type]
            return None
        return (int(subnet.network_address) - self._base) // self._step

    def holder(self, cidr: str) -> str | None:
        index = self._index(cidr)
        return self._holder.get(index) if index is not None else None

    def held_by(self, node: str) -> str | None:
        index = self._held.get(node)
        return self._cidr(index) if index is not None else None

    def occupy(self, cidr: str, node: str) -> str | None:
        """Record that node holds cidr; the problem, if any, as a sentence."""
        index = self._index(cidr)
        if index is None:
            return f"{cidr} is not a /{self.mask} subnet of the cluster CIDR {self.network}"
        holder = self._holder.get(index)
        if holder is not None and holder != node:
            return f"{cidr} is already held by node {holder}"
        previous = self._held.get(node)
        if previous is not None and previous != index:
            del self._holder[previous]
        self._holder[index] = node
        self._held[node] = index
        return None

    def allocate(self, node: str) -> str | None:
        """A subnet for node (the one it holds already, if any); None when none is free."""
        if node in self._held:
            return self._cidr(self._held[node])
        for offset in range(self.size):
            index = (self._next + offset) % self.size
            if index not in self._holder:
                self._holder[index] = node
                self._held[node] = index
                self._next = (index + 1) % self.size
                return self._cidr(index)
        return None

    def release(self, node: str) -> str | None:
        """Free what node held; the subnet, or None when it held nothing."""
        index = self._held.pop(node, None)
        if index is None:
            return None
        del self._holder[index]
        return self._cidr(index)


class NodeIpamController(QueueController):
    name = "nodeipam"

    def __init__(
        self,
        client: ApiClient,
        factory: InformerFactory,
        recorder: EventRecorder,
        *,
        clock: Clock | None = None,
        workers: int = 1,
        cluster_cidr: str = DEFAULT_CLUSTER_CIDR,
        node_mask: int = DEFAULT_NODE_MASK,
    ) -> None:
        super().__init__(clock=clock, workers=workers)
        self.client = client
        self.recorder = recorder
        self.cidrs = CidrSet(cluster_cidr, node_mask)
        self._waiting: set[str] = set()  # Nodes that found the range full
        self.nodes = factory.informer("nodes")
        self.nodes.add_handlers(
            Handlers(on_add=self.enqueue, on_update=self._node_updated, on_delete=self.enqueue)
        )

    async def run(self) -> None:
        await self.nodes.synced.wait()
        self._occupy_existing()
        await super().run()

    def _occupy_existing(self) -> None:
        """Mark every subnet a Node already has, before the first allocation."""
        for node in sorted(self.nodes.list(), key=meta.name):
            cidr = _pod_cidr(node)
            if cidr:
                self._record(node, cidr)
        self.log.info(
            "marked pod CIDRs in use",
            used=len(self.cidrs),
            capacity=self.cidrs.size,
            cluster_cidr=str(self.cidrs.network),
        )

    def _node_updated(self, old: Obj, cur: Obj) -> None:
        if _pod_cidr(old) != _pod_cidr(cur) or not _pod_cidr(cur):
            self.enqueue(cur)

    def _record(self, node: Obj, cidr: str) -> None:
        problem = self.cidrs.occupy(cidr, meta.name(node))
        if problem is None:
            return
        if self.cidrs.holder(cidr) is None:
            return  # outside our range: set by hand or by another allocator, not ours to track
        self.log.warning("node has a pod CIDR held by another", node=meta.name(node), err=problem)
        self.recorder.event(
            node,
            WARNING,
            "CIDRAssignmentFailed",
            f"Node {meta.name(node)} has pod CIDR {cidr}, but {problem}",
        )

    async def sync(self, key: str) -> None:
        node = self.nodes.get_by_key(key)
        if node is None:
            released = self.cidrs.release(key)
            if released:
                self.log.info("released pod CIDR", node=key, cidr=released)
                self._wake_waiting()
            return
        cidr = _pod_cidr(node)
        if cidr:
            self._record(node, cidr)
            return
        await self._allocate(node)

    async def _allocate(self, node: Obj) -> None:
        name = meta.name(node)
        cidr = self.cidrs.allocate(name)
        if cidr is None:
            self._waiting.add(name)
            self.log.warning("no pod CIDR left", node=name, cluster_cidr=str(self.cidrs.network))
            self.recorder.event(
                node, WARNING, "CIDRNotAvailable", f"Node {name} status is now: CIDRNotAvailable"
            )
            return
        self._waiting.discard(name)
        try:
            await self.client.patch("nodes", name, {"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})
        except errors.NotFound:
            self.cidrs.release(name)
            return
        # Any other failure propagates with the subnet still held: whether the patch
        # landed is unknown, and the retry writes the same subnet.
        self.log.info("assigned pod CIDR", node=name, cidr=cidr)

    def _wake_waiting(self) -> None:
        for name in sorted(self._waiting):
            self.queue.add(name)
        self._waiting.clear()


def _pod_cidr(node: Obj) -> str:
    spec = node.get("spec") or {}
    return spec.get("podCIDR") or next(iter(spec.get("podCIDRs") or []), "")
