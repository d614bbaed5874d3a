"""The scheduler cache: assume, confirm, forget, expire, and incremental snapshots."""

from __future__ import annotations

import pytest

from machinery.clock import FakeClock
from scheduler.cache import Cache, CacheError, Snapshot
from scheduler.podinfo import PodInfo
from tests.scheduler.builders import make_node, make_pod


def cache_with_nodes(*names: str, ttl: float = 30.0) -> tuple[Cache, FakeClock]:
    clock = FakeClock()
    cache = Cache(clock=clock, assumed_ttl=ttl)
    for name in names:
        cache.add_node(make_node(name))
    return cache, clock


def pending(name: str, cpu: str = "1") -> PodInfo:
    return PodInfo.of(make_pod(name, cpu=cpu))


def bound(name: str, node: str, cpu: str = "1") -> PodInfo:
    return PodInfo.of(make_pod(name, cpu=cpu, node_name=node))


def requested_cpu(cache: Cache, node: str) -> int:
    return cache.update_snapshot(Snapshot()).get(node).req_cpu


def test_assumed_pod_counts_at_once() -> None:
    cache, _ = cache_with_nodes("a", "b")
    cache.assume_pod(pending("web-1"), "a")
    assert requested_cpu(cache, "a") == 1000
    assert requested_cpu(cache, "b") == 0
    assert cache.is_assumed(pending("web-1").uid)


def test_forget_rolls_the_assumption_back() -> None:
    cache, _ = cache_with_nodes("a")
    pod = pending("web-1")
    cache.assume_pod(pod, "a")
    cache.forget_pod(pod.uid)
    assert requested_cpu(cache, "a") == 0
    assert cache.pod_count() == 0


async def test_watch_confirms_the_assumption_without_double_counting() -> None:
    cache, clock = cache_with_nodes("a")
    cache.assume_pod(pending("web-1"), "a")
    cache.finish_binding(pending("web-1").uid)
    cache.add_pod(bound("web-1", "a"))
    assert not cache.is_assumed(pending("web-1").uid)
    assert requested_cpu(cache, "a") == 1000
    await clock.advance(3600)  # long past the ttl: a confirmed Pod never expires
    assert cache.cleanup_expired() == []
    assert requested_cpu(cache, "a") == 1000


def test_watch_showing_another_node_moves_the_pod() -> None:
    cache, _ = cache_with_nodes("a", "b")
    cache.assume_pod(pending("web-1"), "a")
    cache.add_pod(bound("web-1", "b"))
    assert (requested_cpu(cache, "a"), requested_cpu(cache, "b")) == (0, 1000)


@pytest.mark.parametrize(
    ("binding_finished", "elapsed", "expired"),
    [
        pytest.param(True, 29.9, False, id="within-ttl-kept"),
        pytest.param(True, 30.0, True, id="ttl-passed-expires"),
        pytest.param(False, 3600.0, False, id="bind-in-progress-never-expires"),
    ],
)
async def test_unconfirmed_assumption_expires_after_ttl(
    binding_finished: bool, elapsed: float, expired: bool
) -> None:
    cache, clock = cache_with_nodes("a", ttl=30.0)
    pod = pending("web-1")
    cache.assume_pod(pod, "a")
    if binding_finished:
        cache.finish_binding(pod.uid)
    await clock.advance(elapsed)
    assert [p.uid for p in cache.cleanup_expired()] == ([pod.uid] if expired else [])
    assert requested_cpu(cache, "a") == (0 if expired else 1000)


def test_assuming_twice_or_forgetting_a_bound_pod_is_refused() -> None:
    cache, _ = cache_with_nodes("a")
    cache.assume_pod(pending("web-1"), "a")
    with pytest.raises(CacheError, match="already in the scheduler cache"):
        cache.assume_pod(pending("web-1"), "a")
    cache.add_pod(bound("web-2", "a"))
    with pytest.raises(CacheError, match="is bound, not assumed"):
        cache.forget_pod(bound("web-2", "a").uid)


def test_terminal_pod_frees_its_room() -> None:
    cache, _ = cache_with_nodes("a")
    cache.add_pod(bound("job-1", "a"))
    cache.update_pod(PodInfo.of(make_pod("job-1", cpu="1", node_name="a", phase="Succeeded")))
    assert requested_cpu(cache, "a") == 0


def test_pods_of_an_unknown_node_count_once_it_appears() -> None:
    cache, _ = cache_with_nodes()
    cache.add_pod(bound("web-1", "late"))
    snapshot = cache.update_snapshot(Snapshot())
    assert snapshot.list() == [] and snapshot.get("late") is None
    cache.add_node(make_node("late"))
    cache.update_snapshot(snapshot)
    assert [n.name for n in snapshot.list()] == ["late"]
    assert snapshot.get("late").req_cpu == 1000


def test_removed_node_leaves_the_snapshot_but_its_pods_stay_counted() -> None:
    cache, _ = cache_with_nodes("a", "b")
    cache.add_pod(bound("web-1", "a"))
    snapshot = cache.update_snapshot(Snapshot())
    cache.remove_node("a")
    cache.update_snapshot(snapshot)
    assert [n.name for n in snapshot.list()] == ["b"]
    cache.add_node(make_node("a"))  # it comes back, and its Pod was never forgotten
    cache.update_snapshot(snapshot)
    assert snapshot.get("a").req_cpu == 1000


def test_snapshot_copies_only_changed_nodes_and_is_isolated() -> None:
    cache, _ = cache_with_nodes(*(f"n{i}" for i in range(50)))
    snapshot = cache.update_snapshot(Snapshot())
    before = {n.name: n for n in snapshot.list()}
    gen_before = {name: info.generation for name, info in before.items()}

    cache.assume_pod(pending("web-1"), "n7")
    assert snapshot.get("n7").req_cpu == 0  # not visible until the next update
    cache.update_snapshot(snapshot)

    changed = [n.name for n in snapshot.list() if n.generation != gen_before[n.name]]
    assert changed == ["n7"]
    assert snapshot.get("n7").req_cpu == 1000
    # The same objects, updated in place, so the node list stays valid.
    assert all(before[n.name] is n for n in snapshot.list())
    # Mutating the cache's node does not reach the snapshot's copy.
    cache.node_info("n7").pods.clear()
    assert len(snapshot.get("n7").pods) == 1


def test_heartbeat_only_node_update_keeps_the_snapshot_and_remembered_answers() -> None:
    cache, _ = cache_with_nodes("a")
    snapshot = cache.update_snapshot(Snapshot())
    info = snapshot.get("a")
    info.filter_memo[1] = object()  # as the algorithm would leave it
    heartbeat = make_node("a")
    heartbeat["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-01-01T00:00:00Z"
    cache.update_node(heartbeat)
    cache.update_snapshot(snapshot)
    assert info.filter_memo, "an irrelevant change must not invalidate the node"
    cache.update_node(make_node("a", labels={"disk": "ssd"}))
    cache.update_snapshot(snapshot)
    assert info.filter_memo == {} and info.labels["disk"] == "ssd"
