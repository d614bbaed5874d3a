"""The default image recipes and archive loading (`kctl image load`), with a real registry."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploy.images.build import HTTPD_CMD, Busybox, build_default_images
from deploy.images.load import LoadError, list_registry_images, load_image_archive
from deploy.images.oci import Image, write_oci_layout
from deploy.registry import RunningRegistry
from kubelet.images import ImagePuller, ImageStore
from machinery.registry import MediaType, Platform, RegistryClient, RegistryHosts

ROOT = Path(__file__).resolve().parents[2]
needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")


def _layer_members(image: Image, index: int) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(image.layers[index].read()), mode="r:gz") as archive:
        return archive.getmembers()


def test_default_images_are_reproducible(busybox: Busybox, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = build_default_images(busybox, epoch=0), build_default_images(busybox, epoch=0)
    assert {n: i.digest for n, i in first.items()} == {n: i.digest for n, i in second.items()}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    later = build_default_images(busybox)
    assert later["busybox"].digest != first["busybox"].digest
    assert all(m.mtime == 1_700_000_000 for m in _layer_members(later["busybox"], 0))


def test_default_image_contents(default_images: dict[str, Image], busybox: Busybox) -> None:
    members = _layer_members(default_images["busybox"], 0)
    names = [m.name for m in members]
    assert names == sorted(names)
    assert all((m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 0) for m in members)
    by_name = {m.name: m for m in members}
    assert by_name["tmp"].mode == 0o1777 and by_name["tmp"].isdir()
    assert by_name["bin/busybox"].mode == 0o755 and by_name["bin/busybox"].size == len(busybox.data)
    links = {m.name.removeprefix("bin/") for m in members if m.issym()}
    assert links == set(busybox.applets) and "sh" in links
    assert all(m.linkname == "busybox" for m in members if m.issym())

    config = json.loads(default_images["httpd"].config.read())
    assert config["architecture"] == Platform.host().architecture and config["os"] == "linux"
    assert config["config"]["Cmd"] == HTTPD_CMD
    assert config["config"]["ExposedPorts"] == {"80/tcp": {}}
    assert config["rootfs"]["diff_ids"] == list(default_images["httpd"].diff_ids)
    # httpd is busybox's base layer plus one: the same blob, not a copy.
    assert default_images["httpd"].layers[0] == default_images["busybox"].layers[0]
    assert b"kubelite's httpd works" in _page(default_images["httpd"])


def _page(image: Image) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(image.layers[1].read()), mode="r:gz") as archive:
        handle = archive.extractfile("var/www/index.html")
        assert handle is not None
        return handle.read()


def test_build_command_pushes_to_a_registry(
    fresh_registry: RunningRegistry, busybox: Busybox, default_images: dict[str, Image]
) -> None:
    env = {**os.environ, "SOURCE_DATE_EPOCH": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "deploy.images.build", "--registry", fresh_registry.address],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    pushed = [json.loads(line) for line in done.stdout.splitlines()]
    assert {(p["repository"], p["digest"]) for p in pushed} == {
        ("library/busybox", default_images["busybox"].digest),
        ("library/httpd", default_images["httpd"].digest),
    }
    client = RegistryClient(fresh_registry.address, insecure=True)
    listed = {(i.repository, i.tag) for i in list_registry_images(client)}
    assert listed == {
        (f"library/{name}", tag)
        for name in ("busybox", "httpd")
        for tag in ("latest", busybox.version)
    }


@needs_skopeo
def test_skopeo_reads_what_was_pushed(
    registry: RunningRegistry, pushed_defaults: dict[str, Image]
) -> None:
    done = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{registry.address}/library/httpd"],
        capture_output=True,
        text=True,
        check=True,
    )
    inspected = json.loads(done.stdout)
    httpd = pushed_defaults["httpd"]
    assert inspected["Digest"] == httpd.digest
    assert inspected["Layers"] == [layer.digest for layer in httpd.layers]
    assert inspected["Architecture"] == Platform.host().architecture


@pytest.fixture
def puller(
    tmp_path: Path, hosts: RegistryHosts, registry: RunningRegistry
) -> Iterator[ImagePuller]:
    """A puller into a store of the test's own, to check that loaded images pull back whole."""
    made = ImagePuller(ImageStore(tmp_path / "store"), hosts, default_registry=registry.address)
    yield made
    made.close()


def _docker_save(image: Image, tags: list[str], path: Path, *, compress: bool = False) -> Path:
    """An archive in `docker save`'s layout: manifest.json, <config>.json, <id>/layer.tar."""
    config_name = image.config.digest.partition(":")[2] + ".json"
    members: dict[str, bytes] = {config_name: image.config.read()}
    layer_names = []
    for index, layer in enumerate(image.layers):
        name = f"{index:02d}{'a' * 62}/layer.tar"
        members[name] = gzip.decompress(layer.read())
        members[name.replace("layer.tar", "VERSION")] = b"1.0"
        layer_names.append(name)
    manifest = [{"Config": config_name, "RepoTags": tags, "Layers": layer_names}]
    members["manifest.json"] = json.dumps(manifest).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buffer.getvalue()) if compress else buffer.getvalue())
    return path


@pytest.mark.parametrize("compress", [False, True], ids=["tar", "tar.gz"])
async def test_load_docker_save_archive(
    registry_client: RegistryClient,
    registry: RunningRegistry,
    default_images: dict[str, Image],
    unique_repo: str,
    tmp_path: Path,
    puller: ImagePuller,
    compress: bool,
) -> None:
    image = default_images["httpd"]
    tags = [f"{unique_repo}:v1", f"docker.io/{unique_repo}-copy:v2"]
    archive = _docker_save(image, tags, tmp_path / "saved.tar", compress=compress)

    loaded = load_image_archive(archive, registry_client)
    assert [entry.reference for entry in loaded] == [
        f"{registry.address}/{unique_repo}:v1",
        f"{registry.address}/{unique_repo}-copy:v2",
    ]
    fetched = registry_client.get_manifest(unique_repo, "v1")
    assert fetched.media_type == MediaType.DOCKER_MANIFEST
    assert fetched.digest == loaded[0].digest

    # Pulled back, it is the same image: same config, same layer contents.
    result = await puller.ensure_image(f"{unique_repo}-copy:v2", policy="Always")
    assert result.ok, result.message
    assert result.image is not None and result.image.id == image.config.digest
    assert result.image.layers == image.diff_ids


async def test_load_oci_layout_directory_and_tar(
    registry_client: RegistryClient,
    registry: RunningRegistry,
    default_images: dict[str, Image],
    unique_repo: str,
    tmp_path: Path,
    puller: ImagePuller,
) -> None:
    layout = write_oci_layout(
        tmp_path / "layout", [(f"{unique_repo}:dir", default_images["busybox"])]
    )
    [from_dir] = load_image_archive(layout, registry_client)
    assert from_dir.reference == f"{registry.address}/{unique_repo}:dir"
    assert from_dir.digest == default_images["busybox"].digest
    assert from_dir.uploaded_blobs + from_dir.skipped_blobs == 2

    tarball = tmp_path / "layout.tar"
    with tarfile.open(tarball, "w") as archive:
        archive.add(layout, arcname=".")
    [from_tar] = load_image_archive(tarball, registry_client, name=f"{unique_repo}-renamed:tar")
    assert from_tar.reference == f"{registry.address}/{unique_repo}-renamed:tar"
    assert from_tar.uploaded_blobs == 2  # a new repository: the registry has no blob in it yet

    result = await puller.ensure_image(f"{unique_repo}-renamed:tar", policy="Always")
    assert result.ok and result.image is not None
    assert result.image.id == default_images["busybox"].config.digest


def _corrupt_layout(path: Path, image: Image) -> None:
    blob = path / "blobs/sha256" / image.layers[0].digest.partition(":")[2]
    data = bytearray(blob.read_bytes())
    data[10] ^= 0xFF
    blob.write_bytes(bytes(data))


def _tampered_save(image: Image, path: Path) -> None:
    _docker_save(image, ["kubelite-test/tampered:v1"], path)
    with tarfile.open(path) as archive:
        members = {m.name: archive.extractfile(m).read() for m in archive.getmembers()}  # type: ignore[union-attr]
    layer = next(n for n in members if n.endswith("layer.tar"))
    members[layer] = members[layer][:-1024] + b"\x01" + members[layer][-1023:]
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize(
    ("make", "name", "why"),
    [
        pytest.param(
            lambda p, imgs: (p.mkdir(), (p / "README").write_text("hi")),
            None,
            "neither an OCI image layout",
            id="not-an-archive",
        ),
        pytest.param(
            lambda p, imgs: p.write_bytes(b"not a tar at all" * 100),
            None,
            "is not a tar archive",
            id="garbage-file",
        ),
        pytest.param(
            lambda p, imgs: (
                write_oci_layout(p, [("x/y:1", imgs["busybox"])]),
                _corrupt_layout(p, imgs["busybox"]),
            ),
            None,
            "is corrupt: its content is sha256:",
            id="corrupt-oci-blob",
        ),
        pytest.param(
            lambda p, imgs: write_oci_layout(p, [("latest", imgs["busybox"])]),
            None,
            "image 1 of",
            id="bare-tag-needs-a-name",
        ),
        pytest.param(
            lambda p, imgs: write_oci_layout(
                p, [("a/b:1", imgs["busybox"]), ("a/c:1", imgs["httpd"])]
            ),
            "only/one:1",
            "holds 2 images: a name applies to one only",
            id="name-for-many",
        ),
        pytest.param(
            lambda p, imgs: _tampered_save(imgs["busybox"], p),
            None,
            "does not match its image config: diff id sha256:",
            id="tampered-docker-layer",
        ),
    ],
)
def test_load_refuses_bad_archives(
    registry_client: RegistryClient,
    default_images: dict[str, Image],
    tmp_path: Path,
    make: Callable[[Path, dict[str, Image]], object],
    name: str | None,
    why: str,
) -> None:
    path = tmp_path / "archive"
    make(path, default_images)
    with pytest.raises(LoadError) as caught:
        load_image_archive(path, registry_client, name=name)
    assert why in str(caught.value)
    assert str(path) in str(caught.value)


@needs_skopeo
@pytest.mark.parametrize("transport", ["docker-archive", "oci-archive", "oci"])
async def test_load_what_skopeo_writes(
    registry: RunningRegistry,
    registry_client: RegistryClient,
    pushed_defaults: dict[str, Image],
    unique_repo: str,
    tmp_path: Path,
    puller: ImagePuller,
    transport: str,
) -> None:
    target = tmp_path / "out"
    destination = f"{transport}:{target}:{unique_repo}:sk"
    subprocess.run(
        [
            "skopeo", "copy", "--src-tls-verify=false",
            f"docker://{registry.address}/library/busybox:latest", destination,
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    loaded = load_image_archive(target, registry_client)
    assert [entry.reference for entry in loaded] == [f"{registry.address}/{unique_repo}:sk"]
    result = await puller.ensure_image(f"{unique_repo}:sk", policy="Always")
    assert result.ok and result.image is not None, result.message
    assert result.image.layers == pushed_defaults["busybox"].diff_ids
