"""Pulling into the image store from a real registry: content, platforms, policies, dedup."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from deploy.images.build import HTTPD_CMD, INDEX_HTML, Busybox
from deploy.images.oci import (
    Blob,
    Entry,
    Image,
    as_docker,
    build_image,
    build_index,
    gzip_layer,
    layer_tar,
    push_image,
)
from deploy.registry import RunningRegistry
from kubelet.images import (
    GCPolicy,
    ImagePuller,
    ImageStore,
    PrometheusImageMetrics,
    PullPolicy,
    collect_garbage,
)
from machinery.clock import FakeClock
from machinery.registry import MediaType, Platform, RegistryClient, RegistryHosts

from .conftest import AuthProxy, registry_blob_file

pytestmark = pytest.mark.root

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")


@pytest.fixture
def make_puller(hosts: RegistryHosts) -> Iterator[Callable[..., ImagePuller]]:
    made: list[ImagePuller] = []

    def make(store: ImageStore, registry: str, **kwargs: object) -> ImagePuller:
        puller = ImagePuller(store, hosts, default_registry=registry, **kwargs)  # type: ignore[arg-type]
        made.append(puller)
        return puller

    yield make
    for puller in made:
        puller.close()


def _arch_image(platform: Platform, *, marker: bytes | None = None) -> Image:
    tar = layer_tar([Entry("arch", data=marker or str(platform).encode())])
    return build_image(
        [gzip_layer(tar)],
        platform=platform,
        runtime={"Cmd": ["cat", "/arch"]},
        created="1970-01-01T00:00:00Z",
    )


async def test_pull_default_images(
    registry: RunningRegistry,
    pushed_defaults: dict[str, Image],
    busybox: Busybox,
    store: ImageStore,
    make_puller: Callable[..., ImagePuller],
) -> None:
    puller = make_puller(store, registry.address)

    result = await puller.ensure_image("busybox", policy=PullPolicy.IF_NOT_PRESENT)
    assert result.ok and result.pulled, result.message
    image = pushed_defaults["busybox"]
    record = result.image
    assert record is not None and record.id == image.config.digest
    assert record.names == (f"{registry.address}/library/busybox:latest",)
    assert result.image_ref == f"{registry.address}/library/busybox@{image.digest}"
    assert record.layers == image.diff_ids

    # The base layer, unpacked: busybox itself, its applets, users, a sticky /tmp.
    [base] = store.layers(record)
    assert base == store.layer_path(image.diff_ids[0])
    assert (base / "bin/busybox").read_bytes() == busybox.data
    assert os.readlink(base / "bin/sh") == "busybox"
    assert {p.name for p in (base / "bin").iterdir()} == {"busybox", *busybox.applets}
    assert stat.S_IMODE(os.lstat(base / "tmp").st_mode) == 0o1777
    assert b"nobody:x:65534" in (base / "etc/passwd").read_bytes()
    config = store.config(record)
    assert config.cmd == ("sh",) and config.entrypoint is None
    assert any(e.startswith("PATH=") for e in config.env)

    # httpd: the same base layer directory, shared, plus the page.
    httpd = await puller.ensure_image("library/httpd:latest", policy="IfNotPresent")
    assert httpd.ok and httpd.image is not None
    layers = store.layers(httpd.image)
    assert layers[0] == base and len(layers) == 2
    assert (layers[1] / "var/www/index.html").read_bytes() == INDEX_HTML
    httpd_config = store.config(httpd.image)
    assert httpd_config.cmd == tuple(HTTPD_CMD)
    assert httpd_config.exposed_ports == ("80/tcp",)

    # Present now: IfNotPresent does not pull again.
    again = await puller.ensure_image("busybox:latest", policy=PullPolicy.IF_NOT_PRESENT)
    assert again.ok and not again.pulled and again.image.id == record.id  # type: ignore[union-attr]


@pytest.mark.parametrize("index_type", [MediaType.OCI_INDEX, MediaType.DOCKER_LIST])
@pytest.mark.parametrize("platform", [AMD64, ARM64], ids=str)
async def test_index_picks_the_node_platform(
    registry_client: RegistryClient,
    registry: RunningRegistry,
    unique_repo: str,
    store: ImageStore,
    make_puller: Callable[..., ImagePuller],
    index_type: str,
    platform: Platform,
) -> None:
    images = [(_arch_image(p), p) for p in (AMD64, ARM64)]
    if index_type == MediaType.DOCKER_LIST:
        images = [(as_docker(image), p) for image, p in images]
    index = build_index(images, media_type=index_type)
    push_image(registry_client, index, repository=unique_repo, tags=["multi"])

    puller = make_puller(store, registry.address, platform=platform)
    result = await puller.ensure_image(f"{unique_repo}:multi", policy="Always")
    assert result.ok, result.message
    chosen = next(image for image, p in images if p == platform)
    assert result.image.manifest_digest == chosen.digest  # type: ignore[union-attr]
    # imageID is the digest the tag resolved to: the index's.
    assert result.image_ref == f"{registry.address}/{unique_repo}@{index.digest}"
    [layer] = store.layers(result.image)  # type: ignore[arg-type]
    assert (layer / "arch").read_bytes() == str(platform).encode()


async def test_no_manifest_for_the_platform(
    registry_client: RegistryClient,
    registry: RunningRegistry,
    unique_repo: str,
    store: ImageStore,
    make_puller: Callable[..., ImagePuller],
) -> None:
    index = build_index([(_arch_image(p), p) for p in (AMD64, ARM64)])
    push_image(registry_client, index, repository=unique_repo, tags=["multi"])
    puller = make_puller(store, registry.address, platform=Platform("linux", "s390x"))
    result = await puller.ensure_image(f"{unique_repo}:multi", policy="Always")
    assert result.reason == "ErrImagePull"
    assert result.message == (
        f"failed to pull image {unique_repo}:multi: no manifest for platform linux/s390x "
        "(the image has: linux/amd64, linux/arm64/v8) (PLATFORM_MISMATCH)"
    )


async def test_single_image_for_another_architecture_is_refused(
    registry_client: RegistryClient,
    registry: RunningRegistry,
    unique_repo: str,
    store: ImageStore,
    make_puller: Callable[..., ImagePuller],
) -> None:
    image = _arch_image(ARM64)
    push_image(registry_client, image, repository=unique_repo, tags=["arm"])
    puller = make_puller(store, registry.address, platform=AMD64)
    result = await puller.ensure_image(f"{unique_repo}:arm", policy="Always")
    assert result.reason == "ErrImagePull"
    assert "is for linux/arm64/v8, this node is linux/amd64 (PLATFORM_MISMATCH)" in result.message
    assert store.images() == []


@pytest.mark.parametrize("damaged", ["layer", "config", "manifest"])
async def test_corrupt_blob_in_the_registry_is_refused(
    fresh_registry: RunningRegistry,
    hosts: RegistryHosts,
    default_images: dict[str, Image],
    store: ImageStore,
    make_puller: Callable[..., ImagePuller],
    damaged: str,
) -> None:
    image = default_images["busybox"]
    push_image(
        hosts.client(fresh_registry.address), image, repository="library/busybox", tags=["x"]
    )
    digest = {
        "layer": image.layers[0].digest,
        "config": image.config.digest,
        "manifest": image.digest,
    }[damaged]
    stored = registry_blob_file(fresh_registry, digest)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))

    puller = make_puller(store, fresh_registry.address)
    result = await puller.ensure_image("busybox:x", policy="IfNotPresent")
    assert result.reason == "ErrImagePull"
    assert result.message.startswith("failed to pull image busybox:x: ")
    assert f"digest mismatch: expected {digest}, got sha256:" in result.message
    assert "(DIGEST_INVALID)" in result.message and not result.retryable
    # Nothing of it is kept: no record, no layer, no blob, no temporary file.
    assert store.images() == []
    assert list((store.root / "layers").iterdir()) == []
    assert list((store.root / "tmp").iterdir()) == []


@pytest.mark.parametrize(
    ("image", "policy", "present", "reason", "manifest_gets", "blob_gets"),
    [
        pytest.param("busybox", "Never", False, "ErrImageNeverPull", 0, 0, id="never-absent"),
        pytest.param("busybox", "Never", True, "", 0, 0, id="never-present"),
        pytest.param("busybox", "IfNotPresent", True, "", 0, 0, id="if-not-present-hit"),
        pytest.param("busybox", "IfNotPresent", False, "", 1, 2, id="if-not-present-miss"),
        pytest.param("busybox", "Always", True, "", 1, 0, id="always-present-no-blobs"),
        pytest.param("busybox", "", True, "", 1, 0, id="unset-latest-means-always"),
        pytest.param("busybox:nope", "Always", False, "ErrImagePull", 1, 0, id="unknown-tag"),
        pytest.param("Busy Box", "Always", False, "InvalidImageName", 0, 0, id="invalid-name"),
    ],
)
async def test_pull_policy(
    pushed_defaults: dict[str, Image],
    auth_proxy: type[AuthProxy],
    tmp_path: Path,
    make_puller: Callable[..., ImagePuller],
    image: str,
    policy: str,
    present: bool,
    reason: str,
    manifest_gets: int,
    blob_gets: int,
) -> None:
    proxy = auth_proxy()
    store = ImageStore(tmp_path / "store")
    puller = make_puller(store, proxy.address)
    if present:
        assert (await puller.ensure_image("busybox", policy="Always")).ok
    proxy.requests.clear()

    result = await puller.ensure_image(image, policy=policy)
    assert result.reason == reason, result.message
    assert proxy.count(r"/manifests/") == manifest_gets
    assert proxy.count(r"/blobs/") == blob_gets
    if reason == "ErrImageNeverPull":
        assert (
            result.message == 'Container image "busybox" is not present with pull policy of Never'
        )
    if reason == "ErrImagePull":
        assert result.message == (
            "failed to pull image busybox:nope: manifest unknown (MANIFEST_UNKNOWN)"
        )
    if reason == "InvalidImageName":
        assert "'Busy Box'" in result.message


async def test_concurrent_pulls_of_one_image_download_once(
    pushed_defaults: dict[str, Image],
    auth_proxy: type[AuthProxy],
    store: ImageStore,
    make_puller: Callable[..., ImagePuller],
) -> None:
    proxy = auth_proxy()
    metrics = PrometheusImageMetrics(CollectorRegistry())
    puller = make_puller(store, proxy.address, metrics=metrics)
    proxy.manifest_gate.clear()
    pulling: list[str] = []
    names = ["httpd"] * 4 + [
        "library/httpd",
        "library/httpd:latest",
        f"{proxy.address}/library/httpd",
    ]

    tasks = [
        asyncio.create_task(
            puller.ensure_image(name, policy="Always", on_pulling=lambda n=name: pulling.append(n))
        )
        for name in names
    ]
    # The first manifest request is held at the gate; every task has joined by then.
    assert await asyncio.to_thread(proxy.manifest_waiting.acquire, timeout=30)
    for _ in range(10):
        await asyncio.sleep(0)
    assert puller.inflight() == 1
    proxy.manifest_gate.set()
    results = await asyncio.gather(*tasks)

    assert all(r.ok for r in results), [r.message for r in results]
    assert {r.image.id for r in results} == {pushed_defaults["httpd"].config.digest}  # type: ignore[union-attr]
    assert len(pulling) == len(names)
    assert proxy.count(r"/manifests/") == 1
    for blob in pushed_defaults["httpd"].blobs():
        assert proxy.count(f"/blobs/{blob.digest}$") == 1, blob.digest
    assert metrics.pulls.labels(result="success")._value.get() == 1


async def test_images_sharing_a_layer_download_it_once(
    pushed_defaults: dict[str, Image],
    auth_proxy: type[AuthProxy],
    store: ImageStore,
    make_puller: Callable[..., ImagePuller],
) -> None:
    proxy = auth_proxy()
    puller = make_puller(store, proxy.address, max_parallel_pulls=2)
    proxy.manifest_gate.clear()
    tasks = [
        asyncio.create_task(puller.ensure_image(n, policy="Always")) for n in ("busybox", "httpd")
    ]
    for _ in range(2):
        assert await asyncio.to_thread(proxy.manifest_waiting.acquire, timeout=30)
    proxy.manifest_gate.set()
    results = await asyncio.gather(*tasks)
    assert all(r.ok for r in results)
    base = pushed_defaults["busybox"].layers[0].digest
    assert pushed_defaults["httpd"].layers[0].digest == base
    assert proxy.count(f"/blobs/{base}$") == 1


async def test_tag_moves_and_store_survives_restart(
    registry_client: RegistryClient,
    registry: RunningRegistry,
    unique_repo: str,
    tmp_path: Path,
    make_puller: Callable[..., ImagePuller],
) -> None:
    root = tmp_path / "store"
    store = ImageStore(root)
    puller = make_puller(store, registry.address)
    first, second = _arch_image(AMD64, marker=b"one"), _arch_image(AMD64, marker=b"two")
    name = f"{registry.address}/{unique_repo}:moving"

    push_image(registry_client, first, repository=unique_repo, tags=["moving"])
    one = (await puller.ensure_image(name, policy="Always")).image
    push_image(registry_client, second, repository=unique_repo, tags=["moving"])
    two = (await puller.ensure_image(name, policy="Always")).image
    assert one is not None and two is not None and one.id != two.id
    assert store.get(name).id == two.id  # type: ignore[union-attr]
    assert store.get(one.id).names == ()  # type: ignore[union-attr]

    # A crash left an unpacked layer no image records: the next start removes it.
    orphan = store.layer_path("sha256:" + "e" * 64)
    orphan.mkdir()
    reopened = ImageStore(root)
    assert [r.id for r in reopened.images()] == sorted([one.id, two.id])
    assert reopened.get(name).id == two.id  # type: ignore[union-attr]
    assert reopened.layers(two.id) == store.layers(two.id)
    assert not orphan.exists()


async def test_remove_keeps_shared_layers(
    pushed_defaults: dict[str, Image],
    registry: RunningRegistry,
    store: ImageStore,
    make_puller: Callable[..., ImagePuller],
) -> None:
    puller = make_puller(store, registry.address)
    busybox = (await puller.ensure_image("busybox", policy="Always")).image
    httpd = (await puller.ensure_image("httpd", policy="Always")).image
    assert busybox is not None and httpd is not None
    base, page = store.layers(httpd)

    assert store.remove(busybox) > 0
    assert base.is_dir() and page.is_dir()
    assert store.remove(httpd) > 0
    assert not base.exists() and not page.exists()
    assert list((store.root / "blobs/sha256").iterdir()) == []


def _random_image(seed: int, size: int) -> Image:
    data = random.Random(seed).randbytes(size)
    return build_image(
        [gzip_layer(layer_tar([Entry(f"data-{seed}", data=data)]))],
        platform=Platform.host(),
        runtime={"Cmd": ["true"]},
        created="1970-01-01T00:00:00Z",
    )


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs of this test's own, so disk usage is real and small."""
    mount = tmp_path / "fs"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "kubelite-test-gc", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize(
    ("fill_percent", "min_age_s", "removed_count", "short"),
    [
        pytest.param(86, 0, 2, False, id="frees-down-to-low-threshold"),
        pytest.param(95, 0, 2, True, id="falls-short-but-keeps-used"),
        pytest.param(86, 3600, 0, True, id="young-images-are-kept"),
        pytest.param(70, 0, 0, False, id="below-high-threshold"),
    ],
)
async def test_garbage_collection(
    small_fs: Path,
    registry_client: RegistryClient,
    registry: RunningRegistry,
    unique_repo: str,
    make_puller: Callable[..., ImagePuller],
    fill_percent: int,
    min_age_s: float,
    removed_count: int,
    short: bool,
) -> None:
    clock = FakeClock()
    store = ImageStore(small_fs / "store", clock=clock)
    puller = make_puller(store, registry.address, clock=clock)
    records = []
    for index in range(3):
        push_image(
            registry_client,
            _random_image(index, 1_500_000),
            repository=unique_repo,
            tags=[f"i{index}"],
        )
        result = await puller.ensure_image(f"{unique_repo}:i{index}", policy="Always")
        assert result.ok, result.message
        records.append(result.image)
        await clock.advance(60)
    oldest, used, newest = records

    # Fill the filesystem to the wanted share with a file of the test's own.
    usage = store.disk_usage()
    target_used = usage.capacity * fill_percent // 100
    filler = small_fs / "filler"
    with open(filler, "wb") as handle:
        os.posix_fallocate(
            handle.fileno(), 0, max(1, target_used - (usage.capacity - usage.available))
        )
    metrics = PrometheusImageMetrics(CollectorRegistry())

    result = collect_garbage(
        store,
        in_use={used.id},  # type: ignore[union-attr]
        policy=GCPolicy(min_age_s=min_age_s),
        clock=clock,
        metrics=metrics,
    )

    expected = [oldest.id, newest.id][:removed_count]  # type: ignore[union-attr]
    assert list(result.removed) == expected
    assert store.get(used.id) is not None and all(p.is_dir() for p in store.layers(used))  # type: ignore[union-attr,arg-type]
    for record in (oldest, newest):
        gone = record.id in expected  # type: ignore[union-attr]
        assert (store.get(record.id) is None) == gone  # type: ignore[union-attr]
        assert store.layer_path(record.layers[0]).exists() != gone  # type: ignore[union-attr]
    assert bool(result.message) == short
    if removed_count:
        assert result.freed_bytes >= 2 * 1_500_000
        assert result.usage_after.available > result.usage_before.available
        assert metrics.gc_removed._value.get() == removed_count
    if not short and fill_percent >= 85:
        assert result.usage_after.used_percent <= 80


@pytest.mark.parametrize(
    "media_type",
    [MediaType.OCI_LAYER, MediaType.OCI_LAYER_GZIP, MediaType.DOCKER_LAYER_GZIP],
    ids=["tar", "tar+gzip", "docker-gzip"],
)
async def test_layer_compressions(
    registry_client: RegistryClient,
    registry: RunningRegistry,
    unique_repo: str,
    store: ImageStore,
    make_puller: Callable[..., ImagePuller],
    media_type: str,
) -> None:
    tar = layer_tar([Entry("etc", "dir", 0o755), Entry("etc/motd", data=media_type.encode())])
    blob, diff_id = gzip_layer(tar)
    if media_type == MediaType.OCI_LAYER:
        blob = Blob.of(MediaType.OCI_LAYER, tar)
    else:
        blob = dataclasses.replace(blob, media_type=media_type)
    image = build_image(
        [(blob, diff_id)], platform=Platform.host(), runtime={}, created="1970-01-01T00:00:00Z"
    )
    push_image(registry_client, image, repository=unique_repo, tags=["t"])
    result = await make_puller(store, registry.address).ensure_image(
        f"{unique_repo}:t", policy="Always"
    )
    assert result.ok and result.image is not None, result.message
    [layer] = store.layers(result.image)
    assert (layer / "etc/motd").read_bytes() == media_type.encode()


async def test_unsupported_layer_type_is_refused_before_download(
    registry_client: RegistryClient,
    registry: RunningRegistry,
    unique_repo: str,
    store: ImageStore,
    make_puller: Callable[..., ImagePuller],
) -> None:
    blob = Blob.of(MediaType.OCI_LAYER_ZSTD, b"\x28\xb5\x2f\xfd" + b"\0" * 64)
    image = build_image(
        [(blob, "sha256:" + "0" * 64)],
        platform=Platform.host(),
        runtime={},
        created="1970-01-01T00:00:00Z",
    )
    push_image(registry_client, image, repository=unique_repo, tags=["z"])
    result = await make_puller(store, registry.address).ensure_image(
        f"{unique_repo}:z", policy="Always"
    )
    assert result.reason == "ErrImagePull"
    assert "tar+zstd" in result.message and "(UNSUPPORTED)" in result.message
