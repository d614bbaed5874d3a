"""The registry client against a real docker-registry: blobs, manifests, listing, auth, TLS."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from deploy.images.load import list_registry_images
from deploy.registry import RunningRegistry, start_registry
from machinery.registry import (
    Credentials,
    DigestMismatch,
    MediaType,
    RegistryClient,
    RegistryError,
    digest_bytes,
    list_images,
)

from .conftest import AuthProxy, registry_blob_file


def _payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _manifest_for(config: bytes, layer: bytes) -> bytes:
    import json

    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MediaType.OCI_MANIFEST,
            "config": {
                "mediaType": MediaType.OCI_CONFIG,
                "digest": digest_bytes(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": MediaType.OCI_LAYER_GZIP,
                    "digest": digest_bytes(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()


def _push_small_image(client: RegistryClient, repository: str, tag: str, seed: int) -> bytes:
    config = b'{"rootfs":{"type":"layers","diff_ids":[]},"seed":%d}' % seed
    layer = _payload(1000, seed)
    for blob in (config, layer):
        client.push_blob(repository, digest_bytes(blob), blob)
    manifest = _manifest_for(config, layer)
    client.push_manifest(repository, tag, manifest, MediaType.OCI_MANIFEST)
    return manifest


@pytest.mark.parametrize(
    ("chunk_size", "source_kind"),
    [
        pytest.param(None, "bytes", id="monolithic-bytes"),
        pytest.param(None, "file", id="monolithic-file"),
        pytest.param(64 * 1024, "bytes", id="chunked-bytes"),
        pytest.param(100_000, "file", id="chunked-file-uneven"),
    ],
)
def test_push_then_fetch_blob(
    registry_client: RegistryClient,
    unique_repo: str,
    tmp_path: Path,
    chunk_size: int | None,
    source_kind: str,
) -> None:
    data = _payload(300_000, seed=len(unique_repo) + (chunk_size or 0))
    digest = digest_bytes(data)
    source: bytes | Path = data
    if source_kind == "file":
        source = tmp_path / "blob"
        source.write_bytes(data)

    assert registry_client.push_blob(unique_repo, digest, source, chunk_size=chunk_size) is True
    # The registry has it now: a second push is a HEAD and nothing more.
    assert registry_client.push_blob(unique_repo, digest, source, chunk_size=chunk_size) is False
    assert registry_client.blob_exists(unique_repo, digest)

    dest = tmp_path / "fetched"
    assert registry_client.fetch_blob(unique_repo, digest, dest, size=len(data)) == len(data)
    assert dest.read_bytes() == data
    assert registry_client.read_blob(unique_repo, digest) == data


def test_manifest_by_tag_and_digest(registry_client: RegistryClient, unique_repo: str) -> None:
    manifest = _push_small_image(registry_client, unique_repo, "v1", seed=1)
    digest = digest_bytes(manifest)

    by_tag = registry_client.get_manifest(unique_repo, "v1")
    by_digest = registry_client.get_manifest(unique_repo, digest)
    assert by_tag.digest == by_digest.digest == digest
    assert by_tag.body == manifest
    assert by_tag.media_type == MediaType.OCI_MANIFEST
    assert registry_client.manifest_digest(unique_repo, "v1") == digest


@pytest.mark.parametrize(
    ("call", "code", "text"),
    [
        pytest.param(
            lambda c, r: c.get_manifest(r, "no-such-tag"),
            "MANIFEST_UNKNOWN",
            "manifest unknown (MANIFEST_UNKNOWN)",
            id="manifest-unknown",
        ),
        pytest.param(
            lambda c, r: c.read_blob(r, "sha256:" + "0" * 64),
            "BLOB_UNKNOWN",
            "blob unknown to registry (BLOB_UNKNOWN)",
            id="blob-unknown",
        ),
        pytest.param(
            lambda c, r: c.push_manifest(
                r, "t", _manifest_for(b"never pushed", b"nor this"), MediaType.OCI_MANIFEST
            ),
            "MANIFEST_BLOB_UNKNOWN",
            "(MANIFEST_BLOB_UNKNOWN)",
            id="manifest-blob-unknown",
        ),
    ],
)
def test_registry_errors_carry_the_registry_code(
    registry_client: RegistryClient, unique_repo: str, call: object, code: str, text: str
) -> None:
    _push_small_image(registry_client, unique_repo, "v1", seed=2)
    with pytest.raises(RegistryError) as caught:
        call(registry_client, unique_repo)  # type: ignore[operator]
    assert caught.value.code == code
    assert text in str(caught.value)
    assert not caught.value.retryable


def test_tags_and_catalog_follow_pagination(
    registry_client: RegistryClient, unique_repo: str
) -> None:
    for index, tag in enumerate(("a", "b", "c")):
        _push_small_image(registry_client, unique_repo, tag, seed=10 + index)
    other = unique_repo + "-other"
    _push_small_image(registry_client, other, "only", seed=20)

    assert sorted(registry_client.tags(unique_repo, page_size=1)) == ["a", "b", "c"]
    assert registry_client.tags(unique_repo + "-never-pushed") == []
    catalog = registry_client.catalog(page_size=1)
    assert {unique_repo, other} <= set(catalog)

    listed = {entry.repository: entry.tags for entry in list_images(registry_client)}
    assert listed[unique_repo] == ("a", "b", "c")
    images = [i for i in list_registry_images(registry_client) if i.repository == other]
    assert [(i.tag, i.digest) for i in images] == [
        ("only", registry_client.manifest_digest(other, "only"))
    ]


def test_unreachable_registry_is_retryable(tmp_path: Path) -> None:
    from deploy.registry import free_port

    client = RegistryClient(f"127.0.0.1:{free_port()}", insecure=True, timeout=5)
    with pytest.raises(RegistryError) as caught:
        client.ping()
    assert caught.value.code == "CONNECTION_FAILED"
    assert caught.value.retryable


def test_corrupt_blob_is_refused_and_nothing_is_kept(
    fresh_registry: RunningRegistry, tmp_path: Path
) -> None:
    client = RegistryClient(fresh_registry.address, insecure=True)
    data = _payload(50_000, seed=3)
    digest = digest_bytes(data)
    client.push_blob("corrupt/me", digest, data)

    # Flip one byte in the registry's own storage: same size, different content.
    stored = registry_blob_file(fresh_registry, digest)
    damaged = bytearray(stored.read_bytes())
    damaged[100] ^= 0xFF
    stored.write_bytes(bytes(damaged))
    actual = digest_bytes(bytes(damaged))

    dest_dir = tmp_path / "dest"
    dest_dir.mkdir()
    with pytest.raises(DigestMismatch) as caught:
        client.fetch_blob("corrupt/me", digest, dest_dir / "blob", size=len(data))
    assert caught.value.expected == digest and caught.value.actual == actual
    assert f"expected {digest}, got {actual}" in str(caught.value)
    assert list(dest_dir.iterdir()) == []
    with pytest.raises(DigestMismatch):
        client.read_blob("corrupt/me", digest)


def test_bearer_token_auth_anonymous(
    registry_client: RegistryClient, unique_repo: str, auth_proxy: type[AuthProxy]
) -> None:
    manifest = _push_small_image(registry_client, unique_repo, "v1", seed=4)
    proxy = auth_proxy(require_token=True)
    client = RegistryClient(proxy.address, insecure=True)

    fetched = client.get_manifest(unique_repo, "v1")
    config_digest = fetched.content.config.digest  # type: ignore[union-attr]
    client.read_blob(unique_repo, config_digest)
    assert fetched.body == manifest

    # One token for the repository's pull scope, asked anonymously, reused for the blob.
    assert proxy.count(r"^GET /token$") == 1
    assert proxy.token_requests[0]["scope"] == [f"repository:{unique_repo}:pull"]
    assert proxy.token_requests[0]["service"] == ["kubelite-test"]


def test_bearer_token_auth_with_credentials_and_push(
    unique_repo: str, auth_proxy: type[AuthProxy]
) -> None:
    proxy = auth_proxy(require_token=True, users={"alice": "s3cret"})
    client = RegistryClient(
        proxy.address, insecure=True, credentials=Credentials("alice", "s3cret")
    )
    _push_small_image(client, unique_repo, "v1", seed=5)
    assert client.get_manifest(unique_repo, "v1").digest
    assert any(
        f"repository:{unique_repo}:pull,push" in q.get("scope", []) for q in proxy.token_requests
    )

    wrong = RegistryClient(proxy.address, insecure=True, credentials=Credentials("alice", "nope"))
    with pytest.raises(RegistryError) as caught:
        wrong.get_manifest(unique_repo, "v1")
    assert caught.value.code == "UNAUTHORIZED"
    assert "failed to get a token from http://" in str(caught.value)
    assert "bad credentials" in str(caught.value)


def _self_signed_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_https_registry_verified_with_a_ca_file(tmp_path: Path) -> None:
    cert, key = _self_signed_cert(tmp_path)
    with start_registry(
        storage=tmp_path / "storage", workdir=tmp_path, tls_cert=cert, tls_key=key
    ) as running:
        client = RegistryClient(running.address, ca_file=str(cert))
        assert client.base_url.startswith("https://")
        _push_small_image(client, "tls/image", "v1", seed=6)
        assert client.get_manifest("tls/image", "v1").digest

        untrusting = RegistryClient(running.address)
        with pytest.raises(RegistryError) as caught:
            untrusting.ping()
        assert caught.value.code == "CONNECTION_FAILED"
        assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
