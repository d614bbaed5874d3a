"""Applying rules to a real iptables in a scratch network namespace and reading them back."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from machinery.clock import FakeClock
from proxy import chains as c
from proxy.cleanup import cleanup
from proxy.config import ProxyConfig
from proxy.iptables import IptablesCommand, parse_save
from proxy.metrics import ProxyMetrics
from proxy.state import ProxyState
from proxy.sync import SyncResult, SyncRunner
from tests.proxy.builders import endpoints, port, service
from tests.proxy.conftest import ns_run

pytestmark = pytest.mark.root

CONFIG = ProxyConfig(cluster_cidr="10.244.0.0/16", min_sync_interval=1.0, resync_interval=30.0)

# Rules "the host" owns: they must survive every sync and the cleanup.
HOST_RULES = """*nat
:HOST-CHAIN - [0:0]
-A PREROUTING -s 192.0.2.0/24 -m comment --comment "host rule" -j RETURN
-A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -m comment --comment "pod egress" -j MASQUERADE
-A HOST-CHAIN -p tcp -m tcp --dport 22 -j RETURN
COMMIT
*filter
:FORWARD DROP [0:0]
-A FORWARD -i eth9 -m comment --comment "host forward" -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
COMMIT
"""


class Recording:
    """The real IptablesCommand, with a log of which calls were made."""

    def __init__(self, inner: IptablesCommand) -> None:
        self.inner = inner
        self.calls: list[str] = []

    async def restore(self, text: str) -> None:
        self.calls.append("restore")
        await self.inner.restore(text)

    async def save(self, table: str) -> str:
        self.calls.append(f"save {table}")
        return await self.inner.save(table)

    async def check(self, table, chain, args) -> bool:
        self.calls.append(f"check {table}/{chain}")
        return await self.inner.check(table, chain, args)

    async def insert(self, table, chain, args) -> None:
        self.calls.append(f"insert {table}/{chain}")
        await self.inner.insert(table, chain, args)

    async def delete(self, table, chain, args) -> None:
        self.calls.append(f"delete {table}/{chain}")
        await self.inner.delete(table, chain, args)


def tables(netns: str) -> dict[str, dict[str, list[str]]]:
    return parse_save(ns_run(netns, "iptables-save"))


def foreign(netns: str) -> dict[str, dict[str, list[str]]]:
    """Everything in the tables that is not ours: our chains and our jump rules removed."""
    out: dict[str, dict[str, list[str]]] = {}
    for table, chains in tables(netns).items():
        out[table] = {
            chain: [r for r in rules if "-j KUBELITE-" not in r]
            for chain, rules in chains.items()
            if not c.is_owned(chain)
        }
    return out


def policies(netns: str) -> list[str]:
    return [
        line
        for line in ns_run(netns, "iptables-save").splitlines()
        if line.startswith(":") and not line.startswith(":KUBELITE-")
    ]


def owned_chains(netns: str) -> set[tuple[str, str]]:
    return {(t, ch) for t, chains in tables(netns).items() for ch in chains if c.is_owned(ch)}


def make_state(clock, services, eps) -> ProxyState:
    state = ProxyState(clock=clock)
    for obj in services:
        state.upsert_service(obj)
    for obj in eps:
        state.upsert_endpoints(obj)
    state.mark_listed("Service")
    state.mark_listed("Endpoints")
    return state


WEB = service(
    "web", cluster_ip="10.96.0.10", ports=[port(80, name="http", node_port=30080)], node_port=True
)
WEB_EPS = endpoints(
    "web", ips=["10.244.1.5", "10.244.1.6", "10.244.1.7"], ports=[{"name": "http", "port": 8080}]
)
DB = service("db", cluster_ip="10.96.0.20", ports=[port(5432)])


@pytest.fixture
def host_netns(netns: str) -> str:
    ns_run(netns, "iptables-restore", "--noflush", stdin=HOST_RULES)
    return netns


async def test_sync_programs_our_chains_and_only_jumps_into_host_chains(host_netns):
    before, before_policies = foreign(host_netns), policies(host_netns)
    clock = FakeClock()
    state = make_state(clock, [WEB, DB], [WEB_EPS])
    runner = SyncRunner(state, IptablesCommand(netns=host_netns), config=CONFIG, clock=clock)

    result = await runner.sync()

    assert result.ok and result.kind == "full" and result.jumps_inserted == len(c.JUMPS)
    assert owned_chains(host_netns) == set(runner.applied.chains)
    saved = tables(host_netns)
    for key, rules in runner.applied.chains.items():
        assert len(saved[key[0]][key[1]]) == len(rules), key
    dnat = [
        r
        for ch, rs in saved["nat"].items()
        if ch.startswith(c.SEP_PREFIX)
        for r in rs
        if "DNAT" in r
    ]
    assert sorted(r.split()[-1] for r in dnat) == [
        "10.244.1.5:8080",
        "10.244.1.6:8080",
        "10.244.1.7:8080",
    ]
    assert any("10.96.0.20/32" in r and "REJECT" in r for r in saved["filter"][c.SERVICES])
    for jump in c.JUMPS:
        assert (
            sum(
                f"-j {jump.args[-1]}" in r and jump.args[-3].strip('"') in r
                for r in saved[jump.table][jump.chain]
            )
            == 1
        ), jump
    # The host's rules, chains and policies are exactly as they were.
    assert foreign(host_netns) == before
    assert policies(host_netns) == before_policies


async def test_second_sync_without_change_runs_nothing(netns):
    clock = FakeClock()
    state = make_state(clock, [WEB], [WEB_EPS])
    recording = Recording(IptablesCommand(netns=netns))
    runner = SyncRunner(state, recording, config=CONFIG, clock=clock)
    assert (await runner.sync()).ok
    saved = tables(netns)
    recording.calls.clear()

    state.upsert_service(WEB)  # the same object again: no change
    result = await runner.sync()

    assert result.kind == "unchanged"
    assert recording.calls == []
    assert tables(netns) == saved


async def test_endpoint_change_rewrites_only_what_changed(netns):
    clock = FakeClock()
    state = make_state(clock, [WEB, DB], [WEB_EPS])
    runner = SyncRunner(state, IptablesCommand(netns=netns), config=CONFIG, clock=clock)
    assert (await runner.sync()).ok
    first = owned_chains(netns)

    smaller = endpoints(
        "web", ips=["10.244.1.5", "10.244.1.7"], ports=[{"name": "http", "port": 8080}]
    )
    state.upsert_endpoints(smaller)
    result = await runner.sync()

    assert result.kind == "partial" and result.ok
    assert result.chains_written == 1 and result.chains_deleted == 1
    assert len(first - owned_chains(netns)) == 1
    saved = tables(netns)
    assert not any("10.244.1.6" in r for rs in saved["nat"].values() for r in rs)

    # The last endpoint goes: the Service's chains go and a REJECT comes.
    state.upsert_endpoints(endpoints("web"))
    result = await runner.sync()
    assert result.ok
    saved = tables(netns)
    assert not any(ch.startswith((c.SVC_PREFIX, c.SEP_PREFIX)) for ch in saved["nat"])
    assert any("10.96.0.10/32" in r and "REJECT" in r for r in saved["filter"][c.SERVICES])
    assert any("--dport 30080" in r and "REJECT" in r for r in saved["filter"][c.EXTERNAL_SERVICES])


async def test_restart_deletes_chains_left_by_the_previous_run(netns):
    clock = FakeClock()
    db_eps = endpoints("db", ips=["10.244.2.2"])
    old = SyncRunner(
        make_state(clock, [WEB, DB], [WEB_EPS, db_eps]),
        IptablesCommand(netns=netns),
        config=CONFIG,
        clock=clock,
    )
    assert (await old.sync()).ok

    # A new process whose view no longer has the db Service.
    fresh = SyncRunner(
        make_state(clock, [WEB], [WEB_EPS]),
        IptablesCommand(netns=netns),
        config=CONFIG,
        clock=clock,
    )
    result = await fresh.sync()

    gone = set(old.applied.chains) - set(fresh.applied.chains)
    assert len(gone) == 2  # db's service chain and its one endpoint chain
    assert result.ok and result.chains_deleted == 2
    assert owned_chains(netns) == set(fresh.applied.chains)
    assert result.jumps_inserted == 0


async def test_resync_repairs_what_someone_else_removed(netns):
    clock = FakeClock()
    state = make_state(clock, [WEB], [WEB_EPS])
    results: list[SyncResult] = []
    synced = asyncio.Event()

    def observe(result: SyncResult) -> None:
        results.append(result)
        synced.set()

    runner = SyncRunner(
        state, IptablesCommand(netns=netns), config=CONFIG, clock=clock, observer=observe
    )
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(synced.wait(), 60)
        expected = tables(netns)
        sep = next(ch for ch in expected["nat"] if ch.startswith(c.SEP_PREFIX))
        ns_run(netns, "iptables", "-t", "nat", "-D", sep, "2")
        ns_run(netns, "iptables", "-t", "nat", "-D", "PREROUTING", "1")
        ns_run(netns, "iptables", "-t", "filter", "-F", c.SERVICES)
        assert tables(netns) != expected

        synced.clear()
        await clock.advance(CONFIG.resync_interval - 1)
        assert len(results) == 1  # nothing changed in the view: no sync before the resync
        await clock.advance(1)
        await asyncio.wait_for(synced.wait(), 60)

        assert results[-1].kind == "resync" and results[-1].jumps_inserted == 1
        assert tables(netns) == expected
    finally:
        task.cancel()


async def test_changes_inside_the_min_interval_are_batched_into_one_sync(netns):
    clock = FakeClock()
    registry = CollectorRegistry()
    state = make_state(clock, [WEB], [WEB_EPS])
    results: list[SyncResult] = []
    synced = asyncio.Event()

    def observe(result: SyncResult) -> None:
        results.append(result)
        synced.set()

    runner = SyncRunner(
        state,
        IptablesCommand(netns=netns),
        config=CONFIG,
        clock=clock,
        metrics=ProxyMetrics(registry),
        observer=observe,
    )
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(synced.wait(), 60)
        synced.clear()
        observed = []
        for last in ("10.244.1.8", "10.244.1.9", "10.244.1.10"):
            await clock.advance(0.1)
            observed.append(clock.now())
            state.upsert_endpoints(
                endpoints("web", ips=["10.244.1.5", last], ports=[{"name": "http", "port": 8080}])
            )
        await clock.advance(0.5)
        assert len(results) == 1  # still inside the 1 s window after the first sync
        await clock.advance(0.5)
        await asyncio.wait_for(synced.wait(), 60)

        batched = results[-1]
        assert batched.kind == "partial" and len(results) == 2
        # The fake clock does not move while iptables runs: each change waited
        # from when it was observed to now.
        assert batched.change_latencies == pytest.approx(tuple(clock.now() - t for t in observed))
        dnat = [r for rs in tables(netns)["nat"].values() for r in rs if "DNAT" in r]
        assert sorted(r.split()[-1] for r in dnat) == ["10.244.1.10:8080", "10.244.1.5:8080"]
        assert (
            registry.get_sample_value("kubelite_proxy_endpoints_change_latency_seconds_count") == 3
        )
        assert registry.get_sample_value(
            "kubelite_proxy_rules_programmed", {"table": "nat"}
        ) == runner.applied.rule_count("nat")
        assert registry.get_sample_value("kubelite_proxy_last_sync_timestamp_seconds") == (
            clock.now()
        )
        assert (
            registry.get_sample_value(
                "kubelite_proxy_sync_duration_seconds_count", {"kind": "partial"}
            )
            == 1
        )
    finally:
        task.cancel()


async def test_nothing_is_programmed_before_both_kinds_are_listed(netns):
    clock = FakeClock()
    state = ProxyState(clock=clock)
    state.upsert_service(WEB)
    results: list[SyncResult] = []
    runner = SyncRunner(
        state, IptablesCommand(netns=netns), config=CONFIG, clock=clock, observer=results.append
    )
    task = asyncio.create_task(runner.run())
    try:
        state.mark_listed("Service")
        await clock.advance(CONFIG.resync_interval * 2)
        assert results == [] and owned_chains(netns) == set()
    finally:
        task.cancel()


async def test_failed_apply_is_reported_and_retried_after_back_off(netns):
    clock = FakeClock()
    state = make_state(clock, [WEB], [WEB_EPS])
    results: list[SyncResult] = []
    synced = asyncio.Event()

    def observe(result: SyncResult) -> None:
        results.append(result)
        synced.set()

    runner = SyncRunner(
        state, IptablesCommand(netns=netns), config=CONFIG, clock=clock, observer=observe
    )
    assert (await runner.sync()).ok
    results.clear()
    synced.clear()
    # Someone else jumps into one of our endpoint chains: deleting it must fail.
    sep = next(ch for ch in runner.applied.chain_names("nat") if ch.startswith(c.SEP_PREFIX))
    ns_run(netns, "iptables", "-t", "nat", "-N", "HOST-REF")
    ns_run(netns, "iptables", "-t", "nat", "-A", "HOST-REF", "-j", sep)
    state.upsert_endpoints(endpoints("web"))

    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(synced.wait(), 60)
        failed = results[-1]
        assert not failed.ok and "failed to restore rules" in failed.error
        assert runner.applied is None

        ns_run(netns, "iptables", "-t", "nat", "-F", "HOST-REF")
        synced.clear()
        await clock.advance(1.0)  # the first back-off: max(min_sync_interval, 1 s)
        await asyncio.wait_for(synced.wait(), 60)
        assert results[-1].ok and results[-1].kind == "full"
        assert sep not in tables(netns)["nat"]
    finally:
        task.cancel()


async def test_cleanup_removes_every_chain_and_jump_and_nothing_else(host_netns):
    before, before_policies = foreign(host_netns), policies(host_netns)
    clock = FakeClock()
    iptables = IptablesCommand(netns=host_netns)
    runner = SyncRunner(
        make_state(clock, [WEB, DB], [WEB_EPS]), iptables, config=CONFIG, clock=clock
    )
    assert (await runner.sync()).ok
    # A jump twice over (an old run crashed between check and insert): both go.
    ns_run(host_netns, "iptables", "-t", "nat", "-I", "OUTPUT", *c.JUMPS[1].args)

    result = await cleanup(iptables)

    assert result.jumps_removed == len(c.JUMPS) + 1
    assert result.chains_deleted == len(runner.applied.chains)
    assert owned_chains(host_netns) == set()
    assert "KUBELITE" not in ns_run(host_netns, "iptables-save")
    assert foreign(host_netns) == before and policies(host_netns) == before_policies
    assert await cleanup(iptables) == type(result)(jumps_removed=0, chains_deleted=0)


async def test_resync_runs_in_batches_and_a_change_goes_between_them(netns):
    clock = FakeClock()
    config = ProxyConfig(
        cluster_cidr="10.244.0.0/16",
        min_sync_interval=0.0,
        resync_interval=30.0,
        resync_batch_rules=4,
    )
    state = make_state(clock, [WEB, DB], [WEB_EPS, endpoints("db", ips=["10.244.2.2"])])
    results: list[SyncResult] = []
    done = asyncio.Event()
    moved = endpoints("db", ips=["10.244.2.3"])

    def observe(result: SyncResult) -> None:
        results.append(result)
        if result.kind == "resync" and len([r for r in results if r.kind == "resync"]) == 1:
            state.upsert_endpoints(moved)  # arrives while the resync is under way
        if result.kind == "resync" and (result.jumps_inserted or not result.ok):
            done.set()

    runner = SyncRunner(
        state, IptablesCommand(netns=netns), config=config, clock=clock, observer=observe
    )
    task = asyncio.create_task(runner.run())
    try:
        while not results:
            await asyncio.sleep(0.05)
        ns_run(netns, "iptables", "-t", "nat", "-D", "OUTPUT", "1")  # so the last batch shows
        await clock.advance(30)
        await asyncio.wait_for(done.wait(), 60)
    finally:
        task.cancel()

    kinds = [r.kind for r in results]
    assert kinds[0] == "full"
    assert kinds[1] == "resync" and kinds[2] == "partial"  # the change did not wait for the rest
    assert kinds[3:] == ["resync"] * (len(kinds) - 3) and len(kinds) > 4
    assert all(r.ok for r in results)
    resyncs = [r for r in results if r.kind == "resync"]
    assert len(resyncs) >= 3 and all(r.chains_written >= 1 for r in resyncs)
    # A batch stops once it holds resync_batch_rules rules: no batch wrote everything.
    assert all(r.chains_written < len(runner.applied.chains) - 1 for r in resyncs)
    assert (
        sum(r.chains_written for r in results if r.kind == "resync")
        >= len(runner.applied.chains) - 3
    )
    assert owned_chains(netns) == set(runner.applied.chains)
    saved = tables(netns)
    dnat = sorted(r.split()[-1] for rs in saved["nat"].values() for r in rs if "DNAT" in r)
    assert "10.244.2.3:8080" in dnat and "10.244.2.2:8080" not in dnat
    assert any("KUBELITE-SERVICES" in r for r in saved["nat"]["OUTPUT"])
