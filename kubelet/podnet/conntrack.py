"""Forgetting UDP flows when a hostPort's rules change, so that the next datagram sees them.

NAT is decided on a flow's first packet. A UDP client that sent to node:port
before its DNAT existed (or while it pointed at a Pod now gone) keeps a
conntrack entry, refreshed by every datagram it sends, that bypasses the new
rule for as long as it keeps talking: a DNS client behind a hostPort would
never reach its Pod. Deleting the entries for the port makes the next datagram
a new flow. TCP needs nothing: a new connection is a new flow.

Runs the conntrack tool (Debian's conntrack); where it is missing this is
skipped, and such clients recover once they go quiet for the UDP timeout.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable

from kubelet.podnet.config import RetryableError


def forget_udp_flows(ports: Iterable[int], *, binary: str = "conntrack") -> None:
    """Delete the calling thread's namespace's UDP flows to each of these destination ports."""
    for port in sorted(set(ports)):
        argv = [binary, "-D", "-p", "udp", "--orig-port-dst", str(port)]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            return
        # Exit status 1 with "0 flow entries" means there was nothing to delete.
        if proc.returncode not in (0, 1) or (
            proc.returncode == 1 and "0 flow entries" not in proc.stderr
        ):
            detail = " ".join(proc.stderr.split())
            raise RetryableError(f"failed to delete UDP flows to port {port}: {detail}")
