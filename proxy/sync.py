"""The sync runner: keeps the kernel's rules equal to what the current view renders to.

One asyncio task (run()) waits for the view to change and then syncs, with
these rules on timing, all measured on the injected Clock:

- at most one sync starts per min_interval; changes arriving inside the window
  are batched into the next sync, which renders whatever the view is by then;
- every resync_interval a resync rewrites every chain we own, in batches of
  about resync_batch_rules rules (one iptables-restore each, targets before the chains
  that jump to them), then re-checks the jumps from the built-in chains:
  whatever someone else removed is back after one pass. Batches run only
  while no change is waiting, so a change waits for at most one batch;
- a failed sync is retried as a full one after a back-off that doubles from
  max(min_interval, 1 s) up to max_retry_interval.

A sync renders the whole view (cheap next to iptables) and compares it with
the ruleset applied last. Nothing changed: nothing is run. Otherwise a
partial sync restores only the chains whose rules differ, plus deletions of
chains no longer wanted, as one iptables-restore. A full sync (the first of a
process, and any after a failure) knows nothing of the kernel: it lists the
KUBELITE-* chains already there (a previous run's) so that stale ones are
deleted, and writes everything in one iptables-restore. A failed partial sync
or resync batch is followed at once by a full sync, since the kernel's state
is then unknown. After a sync that removed UDP endpoints, their conntrack
flows are deleted (conntrack.py).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Callable

from machinery.clock import Clock
from machinery.log import Logger, get_logger
from proxy import chains as c
from proxy.config import ProxyConfig
from proxy.conntrack import Conntrack, ConntrackError, UdpBackends, stale_flow_filters, udp_backends
from proxy.iptables import Iptables, IptablesError, parse_save
from proxy.metrics import ProxyMetrics
from proxy.rules import (
    ChainKey,
    RenderMemo,
    Ruleset,
    chains_text,
    render,
    repair_order,
    restore_text,
)
from proxy.state import ProxyState, Snapshot


@dataclasses.dataclass(frozen=True)
class SyncResult:
    """What one sync did. kind: full | partial | unchanged | resync (one batch of a resync)."""

    kind: str
    ok: bool
    chains_written: int = 0
    chains_deleted: int = 0
    rules: int = 0
    jumps_inserted: int = 0
    error: str = ""
    # Seconds from each Endpoints change this sync carried being observed to
    # its rules being in place.
    change_latencies: tuple[float, ...] = ()


class SyncRunner:
    def __init__(
        self,
        state: ProxyState,
        iptables: Iptables,
        *,
        config: ProxyConfig,
        clock: Clock,
        metrics: ProxyMetrics | None = None,
        log: Logger | None = None,
        observer: Callable[[SyncResult], None] | None = None,
        conntrack: Conntrack | None = None,
    ) -> None:
        self._state = state
        self._iptables = iptables
        self._config = config
        self._clock = clock
        self._metrics = metrics
        self._log = log or get_logger("proxy")
        self._applied: Ruleset | None = None
        self._memo = RenderMemo()
        self._synced_generation = -1
        self._wake = asyncio.Event()
        self._not_before = 0.0
        self._next_full = 0.0
        self._failures = 0
        self._resync: collections.deque[ChainKey] | None = None  # chains left in this resync
        self._observer = observer
        self._conntrack = conntrack
        self._udp: UdpBackends | None = None  # UDP endpoints as of the last successful sync
        self._lock = asyncio.Lock()  # one sync at a time, whoever calls sync()
        state.subscribe(self._wake.set)

    @property
    def applied(self) -> Ruleset | None:
        """The ruleset the kernel holds after the last successful sync; None when unknown."""
        return self._applied

    # The loop.

    async def run(self) -> None:
        """Sync forever (until cancelled), once both kinds have been listed."""
        while not self._state.listed:
            await self._wait(None)
        self._next_full = self._clock.monotonic() + self._config.resync_interval
        while True:
            await self._step()

    async def _step(self) -> None:
        """One turn of the loop: a full sync, a partial sync, a resync batch, or a wait."""
        now = self._clock.monotonic()
        if self._applied is None:
            if now < self._not_before:
                await self._clock.sleep(self._not_before - now)
            else:
                await self._sync_and_schedule(full=True)
            return
        if self._resync is None and now >= self._next_full:
            self._resync = collections.deque(repair_order(self._applied))
            self._next_full = now + self._config.resync_interval
        if self._state.generation != self._synced_generation:
            if now < self._not_before:
                # The batching window: changes arriving now join the next sync.
                await self._clock.sleep(self._not_before - now)
            else:
                await self._sync_and_schedule(full=False)
            return
        if self._resync:
            await self._resync_batch()
            return
        await self._wait(self._next_full - now)

    async def _sync_and_schedule(self, *, full: bool) -> None:
        started = self._clock.monotonic()
        result = await self.sync(full=full)
        if result.ok:
            self._failures = 0
            self._not_before = started + self._config.min_sync_interval
            return
        self._failed()

    def _failed(self) -> None:
        self._failures += 1
        self._resync = None
        base = max(self._config.min_sync_interval, 1.0)
        backoff = min(self._config.max_retry_interval, base * 2 ** (self._failures - 1))
        self._not_before = self._clock.monotonic() + backoff

    async def _resync_batch(self) -> None:
        """Rewrite the next batch of chains as they were last applied; jumps at the end."""
        assert self._resync is not None and self._applied is not None
        started = self._clock.monotonic()
        applied = self._applied
        batch: list[ChainKey] = []
        rules = 0
        while self._resync and (not batch or rules < self._config.resync_batch_rules):
            key = self._resync.popleft()
            if key in applied.chains:  # a partial sync since may have deleted it
                batch.append(key)
                rules += len(applied.chains[key])
        try:
            async with self._lock:
                if batch:
                    await self._iptables.restore(chains_text(applied, batch))
                inserted = 0 if self._resync else await self._ensure_jumps()
        except IptablesError as exc:
            self._applied = None  # unknown now: the next turn does a full sync
            self._resync = None
            if self._metrics:
                self._metrics.sync_failures.inc()
            self._log.error("failed to resync rules", err=exc)
            self._report(SyncResult(kind="resync", ok=False, error=str(exc)))
            return
        if not self._resync:
            self._resync = None
        if self._metrics:
            elapsed = self._clock.monotonic() - started
            self._metrics.sync_duration.labels(kind="resync").observe(elapsed)
        log = self._log.info if inserted else self._log.debug
        log("resynced rules", chains_written=len(batch), jumps_inserted=inserted)
        self._report(
            SyncResult(kind="resync", ok=True, chains_written=len(batch), jumps_inserted=inserted)
        )

    def _report(self, result: SyncResult) -> None:
        if self._observer:
            self._observer(result)

    async def _wait(self, timeout: float | None) -> None:
        """Until the view changes or `timeout` seconds pass on the clock."""
        self._wake.clear()
        tasks: set[asyncio.Future[object]] = {asyncio.ensure_future(self._wake.wait())}
        if timeout is not None:
            tasks.add(asyncio.ensure_future(self._clock.sleep(max(0.0, timeout))))
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()

    # One sync.

    async def sync(self, *, full: bool = False) -> SyncResult:
        """Bring the kernel to the current view now; `full` rewrites every chain.

        run() calls this on its schedule; calling it directly (a one-shot
        sync, a test) is safe too: syncs never overlap.
        """
        async with self._lock:
            result = await self._sync(full=full)
        self._report(result)
        return result

    async def _sync(self, *, full: bool) -> SyncResult:
        started = self._clock.monotonic()
        snap = self._state.snapshot()
        desired = render(snap.services, snap.endpoints, self._config, memo=self._memo)
        if not full and self._applied is not None and desired.chains == self._applied.chains:
            latencies = self._settle(snap)
            return SyncResult(
                kind="unchanged", ok=True, rules=desired.rule_count(), change_latencies=latencies
            )
        if not full and self._applied is not None:
            result = await self._apply(desired, kind="partial")
            if result.ok:
                await self._forget_stale_flows(snap)
                return self._succeeded(result, snap, desired, started)
        result = await self._apply(desired, kind="full")
        if result.ok:
            await self._forget_stale_flows(snap)
            return self._succeeded(result, snap, desired, started)
        return result

    async def _apply(self, desired: Ruleset, *, kind: str) -> SyncResult:
        previous = self._applied
        try:
            stale = await self._owned_chains() if previous is None else []
            text = restore_text(desired, previous=previous, write_all=kind == "full", stale=stale)
            if text:
                await self._iptables.restore(text)
            inserted = await self._ensure_jumps() if kind == "full" else 0
        except IptablesError as exc:
            self._applied = None
            if self._metrics:
                self._metrics.sync_failures.inc()
            self._log.error("failed to sync rules", kind=kind, err=exc)
            return SyncResult(kind=kind, ok=False, error=str(exc))
        written, deleted = _count_changes(text)
        return SyncResult(
            kind=kind,
            ok=True,
            chains_written=written,
            chains_deleted=deleted,
            rules=desired.rule_count(),
            jumps_inserted=inserted,
        )

    def _succeeded(
        self, result: SyncResult, snap: Snapshot, desired: Ruleset, started: float
    ) -> SyncResult:
        first = self._applied is None and self._synced_generation < 0
        self._applied = desired
        result = dataclasses.replace(result, change_latencies=self._settle(snap))
        elapsed = self._clock.monotonic() - started
        if self._metrics:
            self._metrics.sync_duration.labels(kind=result.kind).observe(elapsed)
            for table in c.TABLES:
                self._metrics.rules_programmed.labels(table=table).set(desired.rule_count(table))
            self._metrics.last_sync.set(self._clock.now())
        log = self._log.info if first or result.jumps_inserted else self._log.debug
        log(
            "synced rules",
            kind=result.kind,
            chains_written=result.chains_written,
            chains_deleted=result.chains_deleted,
            rules=result.rules,
            jumps_inserted=result.jumps_inserted,
            duration_ms=round(elapsed * 1000, 1),
        )
        return result

    def _settle(self, snap: Snapshot) -> tuple[float, ...]:
        self._synced_generation = snap.generation
        self._state.settle(snap)
        now = self._clock.now()
        latencies = tuple(max(0.0, now - observed) for observed in snap.pending_changes)
        if self._metrics:
            for latency in latencies:
                self._metrics.change_latency.observe(latency)
        return latencies

    async def _forget_stale_flows(self, snap: Snapshot) -> None:
        """Delete UDP flows still DNATed to endpoints this sync removed (see conntrack.py)."""
        if self._conntrack is None:
            return
        after = udp_backends(snap.services, snap.endpoints)
        before, self._udp = self._udp, after
        if before is None:
            return
        for filters in stale_flow_filters(before, after):
            try:
                await self._conntrack.delete(filters)
            except ConntrackError as exc:
                # The rules are right already; a leftover flow only lasts until
                # its conntrack timeout, so this is worth a warning, not a retry.
                self._log.warning("failed to delete stale udp flows", err=exc)

    async def _owned_chains(self) -> list[ChainKey]:
        found: list[ChainKey] = []
        for table in c.TABLES:
            chains = parse_save(await self._iptables.save(table)).get(table, {})
            found.extend((table, chain) for chain in chains if c.is_owned(chain))
        return found

    async def _ensure_jumps(self) -> int:
        """Insert each missing jump from a built-in chain; returns how many were missing."""
        present = await asyncio.gather(
            *(self._iptables.check(j.table, j.chain, j.args) for j in c.JUMPS)
        )
        missing = [jump for jump, ok in zip(c.JUMPS, present, strict=True) if not ok]
        # Each insert goes to the top of its chain: inserting in reverse leaves
        # our jumps in JUMPS order, REJECT checks ahead of KUBELITE-FORWARD's ACCEPT.
        for jump in reversed(missing):
            await self._iptables.insert(jump.table, jump.chain, jump.args)
        return len(missing)


def _count_changes(text: str) -> tuple[int, int]:
    declared = deleted = 0
    for line in text.splitlines():
        if line.startswith(":"):
            declared += 1
        elif line.startswith("-X "):
            deleted += 1
    return declared - deleted, deleted
