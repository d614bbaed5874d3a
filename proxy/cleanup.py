"""Removing everything the proxy made: its jumps from the built-in chains, then its chains.

What is ours is read from the kernel, not from memory, so cleanup works from
a fresh process (`--cleanup`) after a crash: every KUBELITE-* chain in the
nat and filter tables, and every copy of each jump in JUMPS. The jumps go
first, one `-D` at a time; then one iptables-restore per table flushes all our
chains and deletes them in the same transaction (they refer to one another,
so they cannot be deleted one by one). Chains of anyone else are never named.
"""

from __future__ import annotations

import dataclasses

from proxy import chains as c
from proxy.iptables import Iptables, parse_save


@dataclasses.dataclass(frozen=True)
class CleanupResult:
    jumps_removed: int
    chains_deleted: int


async def cleanup(iptables: Iptables) -> CleanupResult:
    """Delete every jump and chain of the proxy's; raises IptablesError if iptables fails."""
    jumps = 0
    for jump in c.JUMPS:
        # A jump may be there more than once (a crash between check and insert
        # in an old run); -D removes one copy per call.
        while await iptables.check(jump.table, jump.chain, jump.args):
            await iptables.delete(jump.table, jump.chain, jump.args)
            jumps += 1
    lines: list[str] = []
    deleted = 0
    for table in c.TABLES:
        owned = [
            chain
            for chain in parse_save(await iptables.save(table)).get(table, {})
            if c.is_owned(chain)
        ]
        if owned:
            lines.append(f"*{table}")
            lines.extend(f":{chain} - [0:0]" for chain in sorted(owned, reverse=True))
            lines.extend(f"-X {chain}" for chain in owned)
            lines.append("COMMIT")
            deleted += len(owned)
    if lines:
        await iptables.restore("\n".join(lines) + "\n")
    return CleanupResult(jumps_removed=jumps, chains_deleted=deleted)
