"""Image references, platforms, challenges and manifests: parsing, table-driven."""

from __future__ import annotations

import json

import pytest

from machinery.registry import (
    Descriptor,
    ImageIndex,
    ImageManifest,
    InvalidReference,
    MediaType,
    Platform,
    RegistryError,
    default_pull_policy,
    is_loopback_registry,
    parse_challenge,
    parse_manifest,
    parse_platform,
    parse_reference,
    select_platform,
)

CLUSTER = "10.0.0.1:5000"
DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        pytest.param("httpd", CLUSTER, "library/httpd", "latest", "", id="short-name"),
        pytest.param("library/httpd:2.4", CLUSTER, "library/httpd", "2.4", "", id="library-tag"),
        pytest.param("team/app", CLUSTER, "team/app", "latest", "", id="two-components"),
        pytest.param("a/b/c:v1", CLUSTER, "a/b/c", "v1", "", id="three-components"),
        pytest.param(
            f"registry:5000/x/y@{DIGEST}", "registry:5000", "x/y", "", DIGEST, id="port-digest"
        ),
        pytest.param(
            "registry:5000/httpd", "registry:5000", "httpd", "latest", "", id="no-library"
        ),
        pytest.param("localhost/foo", "localhost", "foo", "latest", "", id="localhost"),
        pytest.param("localhost:5000/foo:1", "localhost:5000", "foo", "1", "", id="localhost-port"),
        pytest.param("docker.io/httpd", "docker.io", "library/httpd", "latest", "", id="hub"),
        pytest.param(
            "index.docker.io/library/httpd",
            "docker.io",
            "library/httpd",
            "latest",
            "",
            id="hub-alias",
        ),
        pytest.param("quay.io/coreos/etcd:v3.5", "quay.io", "coreos/etcd", "v3.5", "", id="quay"),
        pytest.param(
            f"busybox:1.36@{DIGEST}",
            CLUSTER,
            "library/busybox",
            "1.36",
            DIGEST,
            id="tag-and-digest",
        ),
        pytest.param("[::1]:5000/foo", "[::1]:5000", "foo", "latest", "", id="ipv6"),
        pytest.param("Foo/bar", "Foo", "bar", "latest", "", id="uppercase-first-is-registry"),
        pytest.param("a.b/c__d/e-f.g:t_1.0-x", "a.b", "c__d/e-f.g", "t_1.0-x", "", id="separators"),
        pytest.param(
            "127.0.0.1:5000/library/busybox",
            "127.0.0.1:5000",
            "library/busybox",
            "latest",
            "",
            id="loopback",
        ),
    ],
)
def test_parse_reference(text: str, registry: str, repository: str, tag: str, digest: str) -> None:
    reference = parse_reference(text, default_registry=CLUSTER)
    assert (reference.registry, reference.repository, reference.tag, reference.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    # The printed form parses back to the same reference.
    assert parse_reference(str(reference), default_registry="elsewhere:1") == reference


def test_default_registry_is_docker_hub() -> None:
    assert str(parse_reference("busybox")) == "docker.io/library/busybox:latest"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("HTTPD", "must be lowercase", id="uppercase"),
        pytest.param("httpd:", "tag ''", id="empty-tag"),
        pytest.param("httpd:-x", "tag '-x'", id="tag-leading-dash"),
        pytest.param("httpd:" + "t" * 129, "1-128", id="tag-too-long"),
        pytest.param("httpd@sha256:abc", "64 lower-case hex", id="short-digest"),
        pytest.param("httpd@md5:" + "a" * 32, "'md5' is not supported", id="unknown-algorithm"),
        pytest.param("httpd@" + DIGEST + "@" + DIGEST, "more than one", id="two-digests"),
        pytest.param("a b", "white space", id="space"),
        pytest.param(" httpd", "white space", id="leading-space"),
        pytest.param("x/../y", "path component '..'", id="dot-dot"),
        pytest.param("x//y", "path component ''", id="empty-component"),
        pytest.param("-x/y", "path component '-x'", id="leading-dash"),
        pytest.param("ab" * 32, "image id", id="hex-id"),
        pytest.param("registry:5000/", "empty", id="registry-only"),
        pytest.param(":tag", "empty", id="tag-only"),
        pytest.param("reg_bad:5000/x", "not a host name", id="bad-registry"),
        pytest.param("x/" + "y" * 300, "longer than 255", id="too-long"),
    ],
)
def test_parse_reference_refuses(text: str, why: str) -> None:
    with pytest.raises(InvalidReference) as caught:
        parse_reference(text, default_registry=CLUSTER)
    message = str(caught.value)
    assert why in message
    assert repr(text) in message or text == ""


@pytest.mark.parametrize(
    ("image", "policy"),
    [
        pytest.param("busybox", "Always", id="no-tag"),
        pytest.param("busybox:latest", "Always", id="latest"),
        pytest.param("busybox:1.36", "IfNotPresent", id="tag"),
        pytest.param(f"busybox@{DIGEST}", "IfNotPresent", id="digest"),
        pytest.param(f"busybox:latest@{DIGEST}", "IfNotPresent", id="latest-with-digest"),
    ],
)
def test_default_pull_policy(image: str, policy: str) -> None:
    assert default_pull_policy(image) == policy


@pytest.mark.parametrize(
    ("registry", "loopback"),
    [
        ("127.0.0.1:5000", True),
        ("localhost:5000", True),
        ("[::1]:5000", True),
        ("127.3.4.5", True),
        ("10.0.0.1:5000", False),
        ("registry.example.com", False),
    ],
)
def test_loopback_registries(registry: str, loopback: bool) -> None:
    assert is_loopback_registry(registry) is loopback


def _index(*platforms: str) -> ImageIndex:
    entries = []
    for i, text in enumerate(platforms):
        entries.append(
            Descriptor(
                MediaType.OCI_MANIFEST, f"sha256:{i:064x}", 100, platform=parse_platform(text)
            )
        )
    return ImageIndex(MediaType.OCI_INDEX, tuple(entries))


@pytest.mark.parametrize(
    ("offered", "wanted", "chosen"),
    [
        pytest.param(("linux/arm64", "linux/amd64"), "linux/amd64", "linux/amd64", id="amd64"),
        pytest.param(("linux/amd64", "linux/arm64"), "linux/arm64/v8", "linux/arm64", id="arm64"),
        pytest.param(
            ("linux/arm/v6", "linux/arm/v7"), "linux/arm/v7", "linux/arm/v7", id="exact-variant"
        ),
        pytest.param(("linux/arm/v6",), "linux/arm/v7", "linux/arm/v6", id="older-arm-runs"),
        pytest.param(("linux/arm/v7",), "linux/arm/v6", None, id="newer-arm-does-not"),
        pytest.param(("linux/arm64",), "linux/amd64", None, id="no-match"),
        pytest.param(("windows/amd64", "linux/amd64"), "linux/amd64", "linux/amd64", id="os"),
        pytest.param(("unknown/unknown", "linux/amd64"), "linux/x86_64", "linux/amd64", id="alias"),
    ],
)
def test_select_platform(offered: tuple[str, ...], wanted: str, chosen: str | None) -> None:
    entry = select_platform(_index(*offered), parse_platform(wanted))
    assert (str(entry.platform) if entry else None) == chosen


def test_host_platform_is_normalized() -> None:
    host = Platform.host()
    assert host.os == "linux"
    assert host.architecture in {"amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64"}


@pytest.mark.parametrize(
    ("header", "scheme", "params"),
    [
        pytest.param(
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/busybox:pull"',
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/busybox:pull",
            },
            id="hub",
        ),
        pytest.param(
            'Bearer realm="http://a/t", scope="repository:x:pull,push"',
            "bearer",
            {"realm": "http://a/t", "scope": "repository:x:pull,push"},
            id="comma-in-quotes",
        ),
        pytest.param('Basic realm="basic-realm"', "basic", {"realm": "basic-realm"}, id="basic"),
        pytest.param(
            'Bearer realm="http://a/t",error="insufficient_scope"',
            "bearer",
            {"realm": "http://a/t", "error": "insufficient_scope"},
            id="error",
        ),
    ],
)
def test_parse_challenge(header: str, scheme: str, params: dict[str, str]) -> None:
    challenge = parse_challenge(header)
    assert (challenge.scheme, challenge.params) == (scheme, params)


def _manifest(**override: object) -> bytes:
    data: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": MediaType.OCI_MANIFEST,
        "config": {"mediaType": MediaType.OCI_CONFIG, "digest": DIGEST, "size": 10},
        "layers": [{"mediaType": MediaType.OCI_LAYER_GZIP, "digest": DIGEST, "size": 20}],
    }
    data.update(override)
    return json.dumps({k: v for k, v in data.items() if v is not None}).encode()


@pytest.mark.parametrize(
    ("body", "why"),
    [
        pytest.param(b"{", "not JSON", id="not-json"),
        pytest.param(b"[]", "not a JSON object", id="not-object"),
        pytest.param(_manifest(schemaVersion=1), "schemaVersion is 1", id="schema-version"),
        pytest.param(
            _manifest(mediaType=MediaType.DOCKER_SCHEMA1_SIGNED), "schema 1", id="schema1"
        ),
        pytest.param(_manifest(layers=None), "layers must be a list", id="no-layers"),
        pytest.param(
            _manifest(layers=[{"mediaType": "x", "digest": "sha256:1", "size": 1}]),
            "layers[0]",
            id="bad-layer-digest",
        ),
        pytest.param(
            _manifest(config={"mediaType": "x", "digest": DIGEST, "size": -1}),
            "size must be a non-negative integer",
            id="negative-size",
        ),
        pytest.param(_manifest(mediaType="text/plain"), "not a manifest", id="wrong-type"),
    ],
)
def test_parse_manifest_refuses(body: bytes, why: str) -> None:
    with pytest.raises(RegistryError) as caught:
        parse_manifest(body, where="manifest m1")
    assert why in str(caught.value)
    assert "manifest m1" in str(caught.value)


@pytest.mark.parametrize(
    ("body", "header", "kind"),
    [
        pytest.param(_manifest(), "", ImageManifest, id="oci-manifest"),
        pytest.param(_manifest(mediaType=None), "", ImageManifest, id="untyped-manifest"),
        pytest.param(
            _manifest(mediaType=MediaType.DOCKER_MANIFEST), "", ImageManifest, id="docker"
        ),
        pytest.param(
            json.dumps({"schemaVersion": 2, "manifests": []}).encode(),
            "",
            ImageIndex,
            id="untyped-index",
        ),
        pytest.param(
            json.dumps({"schemaVersion": 2, "manifests": []}).encode(),
            MediaType.DOCKER_LIST,
            ImageIndex,
            id="list-by-header",
        ),
    ],
)
def test_parse_manifest_kinds(body: bytes, header: str, kind: type) -> None:
    assert isinstance(parse_manifest(body, header), kind)
