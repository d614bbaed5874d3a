"""Secrets: the kind's rules, encryption at rest in a real etcd, key rotation, and kctl.

Servers here run against the session's etcd under a prefix of their own; a raw
read through apiserver.store.EtcdStore shows exactly what etcd holds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import logging
import os
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from apiserver import encryption
from apiserver.encryption import AesGcmTransformer, EncryptionKey, KeyFileError
from apiserver.server import ApiServer, ServerConfig
from apiserver.store import EtcdStore, KeyNotFound
from machinery import defaults, errors, validation
from machinery.client import ApiClient
from tests import objects as o
from tests.tls import ClusterPKI

PLAINTEXT = "correct-horse-battery-staple"
KEY1 = EncryptionKey("key1", b"\x01" * 32)
KEY2 = EncryptionKey("key2", b"\x02" * 32)


def secret(
    name: str,
    *,
    namespace: str = "default",
    data: dict[str, str] | None = None,
    string_data: dict[str, str] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A Secret; data values are given in plaintext and encoded here."""
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        **fields,
    }
    if data is not None:
        obj["data"] = {k: b64(v) for k, v in data.items()}
    if string_data is not None:
        obj["stringData"] = string_data
    return obj


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def causes(obj: dict[str, Any]) -> list[str]:
    obj = copy.deepcopy(obj)
    defaults.apply_defaults(obj)
    return [str(c) for c in validation.validate(obj)]


# -- defaults: stringData and type -------------------------------------------------------------


DEFAULTS = [
    pytest.param(
        secret("s", data={"a": "1"}),
        {"type": "Opaque", "data": {"a": b64("1")}},
        id="type-defaults-to-opaque",
    ),
    pytest.param(
        secret("s", string_data={"user": "bob"}),
        {"type": "Opaque", "data": {"user": b64("bob")}},
        id="string-data-becomes-data",
    ),
    pytest.param(
        secret("s", data={"user": "alice", "keep": "k"}, string_data={"user": "bob"}),
        {"type": "Opaque", "data": {"user": b64("bob"), "keep": b64("k")}},
        id="string-data-wins-over-data",
    ),
    pytest.param(
        {**secret("s", string_data={}), "type": ""},
        {"type": "Opaque"},
        id="empty-string-data-and-type",
    ),
    pytest.param(
        {**secret("s"), "data": {"a": "eA\n=="}},
        {"type": "Opaque", "data": {"a": "eA=="}},
        id="line-breaks-in-data-dropped",
    ),
]


@pytest.mark.parametrize(("obj", "expected"), DEFAULTS)
def test_defaults(obj: dict[str, Any], expected: dict[str, Any]) -> None:
    defaults.apply_defaults(obj)
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    assert body == expected
    again = copy.deepcopy(obj)
    defaults.apply_defaults(again)
    assert again == obj, "defaults must be idempotent"


# -- validation --------------------------------------------------------------------------------

VALID = [
    pytest.param(secret("s", data={"a.b_c-1": "x"}), id="opaque"),
    pytest.param(secret("s", type="example.com/custom"), id="custom-type-no-data"),
    pytest.param(
        secret("s", type="kubernetes.io/tls", data={"tls.crt": "c", "tls.key": "k"}), id="tls"
    ),
    pytest.param(secret("s", type="kubernetes.io/basic-auth", data={"password": ""}), id="basic"),
    pytest.param(
        secret(
            "s",
            type="kubernetes.io/dockerconfigjson",
            data={".dockerconfigjson": json.dumps({"auths": {}})},
        ),
        id="dockerconfigjson",
    ),
    pytest.param(
        secret("s", type="kubernetes.io/ssh-auth", data={"ssh-privatekey": "k"}), id="ssh-auth"
    ),
    pytest.param(
        {
            **secret("s", type="kubernetes.io/service-account-token"),
            "metadata": {
                "name": "s",
                "annotations": {"kubernetes.io/service-account.name": "default"},
            },
        },
        id="service-account-token",
    ),
    pytest.param(secret("s", data={"big": "x" * (1024 * 1024 - 3)}), id="exactly-1MiB"),
]


@pytest.mark.parametrize("obj", VALID)
def test_valid_secrets(obj: dict[str, Any]) -> None:
    assert causes(obj) == []


INVALID = [
    pytest.param(
        {**secret("s"), "data": {"token": "not base64!"}},
        'data[token]: Invalid value: "<secret contents redacted>": must be base64-encoded',
        id="data-not-base64",
    ),
    pytest.param(
        secret("s", data={"bad/key": "x"}),
        'data[bad/key]: Invalid value: "bad/key": must consist of letters, digits',
        id="key-with-slash",
    ),
    pytest.param(
        secret("s", string_data={"..x": "v"}),
        "data[..x]: Invalid value: \"..x\": must not be '.' or '..' nor start with '..'",
        id="string-data-key-checked-as-data-key",
    ),
    pytest.param(
        secret("s", data={"big": "x" * (1024 * 1024)}),
        "data: Too long: may not be more than 1048576 bytes",
        id="over-1MiB",
    ),
    pytest.param(
        {**secret("s"), "stringData": {"n": 5}},
        "stringData[n]: Invalid value: 5: must be a string",
        id="string-data-not-a-string",
    ),
    pytest.param(
        secret("s", type="kubernetes.io/tls", data={"tls.crt": "c"}),
        "data[tls.key]: Required value: a Secret of type kubernetes.io/tls must have it",
        id="tls-without-key",
    ),
    pytest.param(
        secret("s", type="kubernetes.io/tls", data={"tls.key": "k"}),
        "data[tls.crt]: Required value",
        id="tls-without-cert",
    ),
    pytest.param(
        secret("s", type="kubernetes.io/dockerconfigjson", data={"config.json": "{}"}),
        "data[.dockerconfigjson]: Required value",
        id="dockerconfigjson-without-its-key",
    ),
    pytest.param(
        secret("s", type="kubernetes.io/dockerconfigjson", data={".dockerconfigjson": "[1]"}),
        'data[.dockerconfigjson]: Invalid value: "<secret contents redacted>": must be a JSON '
        "object",
        id="dockerconfigjson-not-an-object",
    ),
    pytest.param(
        secret("s", type="kubernetes.io/dockercfg", data={".dockercfg": "{"}),
        "data[.dockercfg]: Invalid value",
        id="dockercfg-not-json",
    ),
    pytest.param(
        secret("s", type="kubernetes.io/basic-auth", data={"user": "x"}),
        "data[username]: Required value: a basic-auth Secret needs username or password",
        id="basic-auth-without-either",
    ),
    pytest.param(
        secret("s", type="kubernetes.io/ssh-auth", data={"ssh-privatekey": ""}),
        "data[ssh-privatekey]: Required value: must not be empty",
        id="ssh-auth-empty-key",
    ),
    pytest.param(
        secret("s", type="kubernetes.io/service-account-token"),
        "metadata.annotations[kubernetes.io/service-account.name]: Required value",
        id="service-account-token-without-annotation",
    ),
    pytest.param(
        {**secret("s"), "type": 3},
        "type: Invalid value: 3: must be a string",
        id="type-not-a-string",
    ),
    pytest.param(
        {**secret("s"), "immutable": "yes"},
        'immutable: Invalid value: "yes": must be a boolean',
        id="immutable-not-a-boolean",
    ),
    pytest.param(
        {**secret("s"), "spec": {}},
        "spec: unknown field",
        id="unknown-field",
    ),
]


@pytest.mark.parametrize(("obj", "expected"), INVALID)
def test_invalid_secrets(obj: dict[str, Any], expected: str) -> None:
    found = causes(obj)
    assert any(c.startswith(expected) for c in found), found


def test_errors_never_quote_secret_values() -> None:
    bad = {**secret("s"), "data": {"a": PLAINTEXT + "!"}}
    bad["type"] = "kubernetes.io/dockerconfigjson"
    bad["data"][".dockerconfigjson"] = b64(PLAINTEXT)
    text = "; ".join(causes(bad))
    assert "data[a]" in text and "data[.dockerconfigjson]" in text
    assert PLAINTEXT not in text and b64(PLAINTEXT) not in text


def _stored(obj: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    defaults.apply_defaults(obj)
    assert validation.validate(obj) == []
    return obj


UPDATES = [
    pytest.param(
        secret("s", data={"a": "1"}),
        secret("s", data={"a": "1"}, type="example.com/other"),
        ['type: Invalid value: "example.com/other": field is immutable'],
        id="type-is-immutable",
    ),
    pytest.param(
        secret("s", data={"a": "1"}, immutable=True),
        secret("s", data={"a": "2"}, immutable=True),
        ["data: Forbidden: field is immutable when `immutable` is set"],
        id="immutable-data",
    ),
    pytest.param(
        secret("s", data={"a": "1"}, immutable=True),
        secret("s", data={"a": "1"}, immutable=False),
        ["immutable: Forbidden: field is immutable when `immutable` is set"],
        id="immutable-cannot-be-unset",
    ),
    pytest.param(
        secret("s", data={"a": "1"}),
        secret("s", data={"a": "2"}, immutable=True),
        [],
        id="mutable-may-change-and-freeze",
    ),
]


@pytest.mark.parametrize(("old", "new", "expected"), UPDATES)
def test_update_rules(old: dict[str, Any], new: dict[str, Any], expected: list[str]) -> None:
    found = [str(c) for c in validation.validate_update(_stored(old), _stored(new))]
    assert found == expected


# -- the transformer and key files -------------------------------------------------------------


def test_sealed_value_round_trips_and_carries_the_prefix() -> None:
    sealer = AesGcmTransformer([KEY1])
    sealed = sealer.to_storage(PLAINTEXT.encode(), context=b"/r/secrets/default/s")
    assert sealed.startswith(b"k8s:enc:aesgcm:v1:key1:")
    assert PLAINTEXT.encode() not in sealed
    assert sealer.from_storage(sealed, context=b"/r/secrets/default/s") == PLAINTEXT.encode()
    again = sealer.to_storage(PLAINTEXT.encode(), context=b"/r/secrets/default/s")
    assert again != sealed, "every write has a fresh nonce"


def _sealed_by(key: EncryptionKey) -> bytes:
    return AesGcmTransformer([key]).to_storage(b"{}", context=b"/k")


OPEN_FAILURES = [
    pytest.param([KEY2], _sealed_by(KEY1), b"/k", "key 'key1', which is not in", id="unknown-key"),
    pytest.param(
        [EncryptionKey("key1", b"\x09" * 32)],
        _sealed_by(KEY1),
        b"/k",
        "does not open",
        id="different-key-same-name",
    ),
    pytest.param([KEY1], _sealed_by(KEY1), b"/other", "does not open", id="moved-to-another-key"),
    pytest.param(
        [KEY1], _sealed_by(KEY1)[:-1] + b"\x00", b"/k", "altered", id="altered-ciphertext"
    ),
    pytest.param([KEY1], b"k8s:enc:aesgcm:v1:key1:abc", b"/k", "truncated", id="truncated"),
    pytest.param([KEY1], b"k8s:enc:kms:v2:x:abc", b"/k", "provider kms:v2", id="other-provider"),
]


@pytest.mark.parametrize(("keys", "stored", "context", "message"), OPEN_FAILURES)
def test_values_that_do_not_open(keys, stored: bytes, context: bytes, message: str) -> None:
    with pytest.raises(encryption.DecryptError, match=message):
        AesGcmTransformer(keys).from_storage(stored, context=context)


def test_plaintext_reads_through_and_sealed_needs_a_key() -> None:
    assert AesGcmTransformer([KEY1]).from_storage(b'{"a":1}', context=b"/k") == b'{"a":1}'
    plain = encryption.PlaintextTransformer()
    assert plain.to_storage(b"{}", context=b"/k") == b"{}"
    with pytest.raises(encryption.DecryptError, match="--encryption-key-file"):
        plain.from_storage(_sealed_by(KEY1), context=b"/k")


KEY_A = base64.b64encode(b"a" * 32).decode()
KEY_B = base64.b64encode(b"b" * 32).decode()

KEY_FILES = [
    pytest.param(KEY_A + "\n", [("key1", b"a" * 32)], id="bare-base64"),
    pytest.param(
        f"keys:\n- name: new\n  secret: {KEY_B}\n- name: old\n  secret: {KEY_A}\n",
        [("new", b"b" * 32), ("old", b"a" * 32)],
        id="yaml-list-first-writes",
    ),
    pytest.param(
        json.dumps({"keys": [{"name": "k.1", "secret": base64.b64encode(b"c" * 16).decode()}]}),
        [("k.1", b"c" * 16)],
        id="json-aes128",
    ),
]


@pytest.mark.parametrize(("text", "expected"), KEY_FILES)
def test_key_file_formats(text: str, expected: list[tuple[str, bytes]]) -> None:
    keys = encryption.parse_keys(text, where="keys.yaml")
    assert [(k.name, k.secret) for k in keys] == expected
    assert "secret=" not in repr(keys[0]), "key material stays out of reprs and logs"


BAD_KEY_FILES = [
    pytest.param("", "keys.yaml: is empty", id="empty"),
    pytest.param("not-base64!", "must be base64 of 32 random bytes", id="bare-not-base64"),
    pytest.param(base64.b64encode(b"x" * 31).decode(), "got 31 bytes", id="bare-wrong-size"),
    pytest.param("keys: [", "not valid YAML or JSON", id="bad-yaml"),
    pytest.param("keys: []", "non-empty list `keys`", id="no-keys"),
    pytest.param(f"keys: [{{name: a, secret: {KEY_A}}}]\nextra: 1", "unknown field", id="extra"),
    pytest.param("keys: [{name: a}]", "keys[0].secret: Required value", id="no-secret"),
    pytest.param(f"keys: [{{name: 'a:b', secret: {KEY_A}}}]", "keys[0].name", id="bad-name"),
    pytest.param(
        f"keys: [{{name: a, secret: {KEY_A}}}, {{name: a, secret: {KEY_B}}}]",
        "keys[1].name: duplicate name 'a'",
        id="duplicate-name",
    ),
    pytest.param(
        "keys: [{name: a, secret: AAAA}]", "keys[0].secret: must be base64", id="short-secret"
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_KEY_FILES)
def test_bad_key_files_name_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(KeyFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        encryption.parse_keys(text, where="keys.yaml")


def test_missing_key_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot be read"):
        encryption.load_key_file(tmp_path / "absent")


def test_new_key_and_add_key_commands(tmp_path: Path, capsys) -> None:
    path = tmp_path / "enc" / "key"
    assert encryption.main(["new-key", str(path)]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = encryption.load_key_file(path)
    assert [(k.name, len(k.secret)) for k in first] == [("key1", 32)]

    assert encryption.main(["new-key", str(path)]) == 1, "an existing key is never overwritten"
    assert "already exists" in capsys.readouterr().err
    assert encryption.main(["new-key", str(path), "--keep-existing"]) == 0
    assert encryption.load_key_file(path) == first

    assert encryption.main(["add-key", str(path), "--name", "key2"]) == 0
    rotated = encryption.load_key_file(path)
    assert [k.name for k in rotated] == ["key2", "key1"] and rotated[1] == first[0]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert encryption.main(["add-key", str(path), "--name", "key2"]) == 1


def test_server_refuses_a_bad_key_file(tmp_path: Path) -> None:
    import subprocess

    path = tmp_path / "key"
    path.write_text("short\n")
    done = subprocess.run(
        [sys.executable, "-m", "apiserver.main", "--encryption-key-file", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "encryption key file" in done.stderr and str(path) in done.stderr


# -- the API server with a real etcd -----------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(
    pki: ClusterPKI, etcd, prefix: str, keys: tuple[EncryptionKey, ...]
) -> AsyncIterator[ApiClient]:
    server = ApiServer(
        ServerConfig(
            etcd_endpoints=[etcd.endpoint],
            listen="127.0.0.1:0",
            prefix=prefix,
            bookmark_interval=1.0,
            compaction_interval=0,
            encryption_keys=keys,
            **pki.server_settings(),
        )
    )
    await server.start()
    try:
        await asyncio.wait_for(server.ready.wait(), 30)
        address = f"127.0.0.1:{server.port}"
        async with ApiClient([address], timeout=10, credentials=pki.admin_credentials) as api:
            yield api
    finally:
        await server.stop(grace=0)


@contextlib.asynccontextmanager
async def raw_etcd(etcd) -> AsyncIterator[EtcdStore]:
    store = EtcdStore([etcd.endpoint])
    try:
        yield store
    finally:
        await store.close()


async def raw_value(etcd, key: str) -> bytes:
    async with raw_etcd(etcd) as store:
        return (await store.get(key)).value


async def first_event(api: ApiClient, resource: str, name: str, **kwargs: Any) -> Any:
    async def wait() -> Any:
        async for event in api.watch(resource, **kwargs):
            if event.type != "BOOKMARK" and event.object["metadata"]["name"] == name:
                return event
        raise AssertionError("the watch ended")

    return await asyncio.wait_for(wait(), 30)


async def test_round_trip_and_etcd_holds_only_ciphertext(etcd, etcd_prefix, cluster_pki) -> None:
    async with serving(cluster_pki, etcd, etcd_prefix, (KEY1,)) as api:
        obj = secret("db", data={"password": PLAINTEXT}, string_data={"user": "admin"})
        obj["metadata"]["labels"] = {"app": "db"}
        created = await api.create("secrets", obj)
        assert created["type"] == "Opaque" and "stringData" not in created
        assert created["data"] == {"password": b64(PLAINTEXT), "user": b64("admin")}
        assert await api.get("secrets", "db", namespace="default") == created
        listed = await api.list("secrets", namespace="default", label_selector="app=db")
        assert [i["data"] for i in listed.items] == [created["data"]]
        # resourceVersion "0" reads the watch cache, which may lag the write a moment.
        for _ in range(200):
            cached = await api.list("secrets", resource_version="0")
            if cached.items:
                break
            await asyncio.sleep(0.02)
        assert [i["data"] for i in cached.items] == [created["data"]]
        configmap = await api.create("configmaps", o.configmap("plain"))

    raw = await raw_value(etcd, f"{etcd_prefix}/secrets/default/db")
    assert raw.startswith(b"k8s:enc:aesgcm:v1:key1:")
    for visible in (PLAINTEXT, b64(PLAINTEXT), "admin", b64("admin"), '"app"'):
        assert visible.encode() not in raw
    # Other resources keep the plain encoding.
    cm_raw = await raw_value(etcd, f"{etcd_prefix}/configmaps/default/plain")
    assert (
        cm_raw.startswith(b'{"apiVersion":"v1"') and configmap["metadata"]["uid"].encode() in cm_raw
    )


async def test_watch_update_and_delete_decrypt(etcd, etcd_prefix, cluster_pki) -> None:
    async with serving(cluster_pki, etcd, etcd_prefix, (KEY1,)) as api:
        start = (await api.list("secrets")).resource_version
        created = await api.create("secrets", secret("w", data={"a": "one"}))
        added = await first_event(api, "secrets", "w", resource_version=start)
        assert (added.type, added.object["data"]) == ("ADDED", {"a": b64("one")})

        watch_from = created["metadata"]["resourceVersion"]
        patched = await api.patch("secrets", "w", {"stringData": {"a": "two"}}, namespace="default")
        assert patched["data"] == {"a": b64("two")} and "stringData" not in patched
        modified = await first_event(api, "secrets", "w", resource_version=watch_from)
        assert (modified.type, modified.object["data"]) == ("MODIFIED", {"a": b64("two")})

        await api.delete("secrets", "w", namespace="default")
        deleted = await first_event(
            api, "secrets", "w", resource_version=patched["metadata"]["resourceVersion"]
        )
        assert (deleted.type, deleted.object["data"]) == ("DELETED", {"a": b64("two")})


async def test_api_errors_for_secrets(etcd, etcd_prefix, cluster_pki) -> None:
    async with serving(cluster_pki, etcd, etcd_prefix, (KEY1,)) as api:
        bad = secret("bad", type="kubernetes.io/tls", data={"tls.crt": "c"})
        bad["data"]["x y"] = "!"
        with pytest.raises(errors.Invalid) as caught:
            await api.create("secrets", bad)
        fields = {c.field for c in caught.value.causes}
        assert fields == {"data[tls.key]", "data[x y]"}
        await api.create("secrets", secret("frozen", data={"a": "1"}, immutable=True))
        with pytest.raises(errors.Invalid, match="field is immutable when `immutable` is set"):
            await api.patch("secrets", "frozen", {"stringData": {"a": "2"}}, namespace="default")
        with pytest.raises(errors.TooLarge):
            await api.create("secrets", secret("huge", data={"a": "x" * 900_000}))


async def test_key_rotation(etcd, etcd_prefix, cluster_pki) -> None:
    old_key = f"{etcd_prefix}/secrets/default/old"
    new_key = f"{etcd_prefix}/secrets/default/new"
    async with serving(cluster_pki, etcd, etcd_prefix, (KEY1,)) as api:
        await api.create("secrets", secret("old", data={"v": "from-key1"}))

    # key2 put first: it encrypts new writes, and key1 still opens what it sealed.
    async with serving(cluster_pki, etcd, etcd_prefix, (KEY2, KEY1)) as api:
        assert (await api.get("secrets", "old", namespace="default"))["data"] == {
            "v": b64("from-key1")
        }
        await api.create("secrets", secret("new", data={"v": "from-key2"}))
        assert (await raw_value(etcd, old_key)).startswith(b"k8s:enc:aesgcm:v1:key1:")
        assert (await raw_value(etcd, new_key)).startswith(b"k8s:enc:aesgcm:v1:key2:")
        await api.patch("secrets", "old", {"stringData": {"w": "x"}}, namespace="default")
        assert (await raw_value(etcd, old_key)).startswith(b"k8s:enc:aesgcm:v1:key2:")


async def test_rewrite_seals_everything_with_the_write_key(etcd, etcd_prefix, cluster_pki) -> None:
    async with serving(cluster_pki, etcd, etcd_prefix, (KEY1,)) as api:
        for name in ("a", "b", "c"):
            await api.create("secrets", secret(name, data={"v": name}))
    async with raw_etcd(etcd) as store:
        result = await encryption.rewrite(
            store, prefix=etcd_prefix, transformer=AesGcmTransformer([KEY2, KEY1])
        )
        assert (result.rewritten, result.current) == (3, 0)
        again = await encryption.rewrite(
            store, prefix=etcd_prefix, transformer=AesGcmTransformer([KEY2, KEY1])
        )
        assert (again.rewritten, again.current) == (0, 3)
    # key1 can now be dropped.
    async with serving(cluster_pki, etcd, etcd_prefix, (KEY2,)) as api:
        items = (await api.list("secrets", namespace="default")).items
        assert sorted(base64.b64decode(i["data"]["v"]).decode() for i in items) == ["a", "b", "c"]


async def test_unknown_key_is_a_server_error_not_a_broken_cache(
    etcd, etcd_prefix, cluster_pki, caplog
) -> None:
    async with serving(cluster_pki, etcd, etcd_prefix, (KEY1,)) as api:
        await api.create("secrets", secret("lost", data={"v": "1"}))

    caplog.set_level(logging.ERROR, logger="kubelite")
    async with serving(cluster_pki, etcd, etcd_prefix, (KEY2,)) as api:
        # The cache listed (the server became ready) without the unreadable Secret.
        assert (await api.list("secrets", resource_version="0")).items == []
        with pytest.raises(errors.InternalError, match="key 'key1', which is not in the key file"):
            await api.get("secrets", "lost", namespace="default")
        with pytest.raises(errors.InternalError, match="failed to decrypt secrets/default/lost"):
            await api.list("secrets", namespace="default")

        # A value sealed with key1 arriving through the watch is left out, and the
        # cache keeps serving the changes after it.
        start = (await api.list("configmaps")).resource_version
        async with raw_etcd(etcd) as store:
            key = f"{etcd_prefix}/secrets/default/late"
            sealed = AesGcmTransformer([KEY1]).to_storage(b"{}", context=key.encode())
            await store.create(key, sealed)
        await api.create("secrets", secret("after", data={"v": "2"}))
        event = await first_event(api, "secrets", "after", resource_version=start)
        assert event.type == "ADDED"
        names = [
            i["metadata"]["name"] for i in (await api.list("secrets", resource_version="0")).items
        ]
        assert names == ["after"]
    logged = [r for r in caplog.records if "decrypt" in r.getMessage()]
    keys = {r.kv.get("key") for r in logged}
    assert {f"{etcd_prefix}/secrets/default/lost", f"{etcd_prefix}/secrets/default/late"} <= keys


async def test_a_secret_whose_key_was_lost_can_still_be_deleted(
    etcd, etcd_prefix, cluster_pki
) -> None:
    async with serving(cluster_pki, etcd, etcd_prefix, (KEY1,)) as api:
        made = await api.create("secrets", secret("orphan", data={"v": "1"}))
    async with serving(cluster_pki, etcd, etcd_prefix, (KEY2,)) as api:
        with pytest.raises(errors.Conflict, match="cannot be decrypted to check preconditions"):
            await api.delete("secrets", "orphan", namespace="default", uid=made["metadata"]["uid"])
        gone = await api.delete("secrets", "orphan", namespace="default")
        assert gone["metadata"] == {
            "name": "orphan",
            "namespace": "default",
            "resourceVersion": gone["metadata"]["resourceVersion"],
        }
        with pytest.raises(errors.NotFound):
            await api.get("secrets", "orphan", namespace="default")
        # Deleted, not merely hidden: etcd no longer holds the sealed value.
        async with raw_etcd(etcd) as store:
            with pytest.raises(KeyNotFound):
                await store.get(f"{etcd_prefix}/secrets/default/orphan")


async def test_without_a_key_secrets_are_plaintext_and_sealed_ones_fail(
    etcd, etcd_prefix, cluster_pki, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="kubelite")
    async with serving(cluster_pki, etcd, etcd_prefix, ()) as api:
        await api.create("secrets", secret("plain", data={"v": PLAINTEXT}))
    assert any("plaintext" in r.getMessage() for r in caplog.records)
    raw = await raw_value(etcd, f"{etcd_prefix}/secrets/default/plain")
    assert raw.startswith(b"{") and b64(PLAINTEXT).encode() in raw

    # Turning encryption on: the plaintext Secret still reads, and its next write seals it.
    async with serving(cluster_pki, etcd, etcd_prefix, (KEY1,)) as api:
        assert (await api.get("secrets", "plain", namespace="default"))["data"]["v"] == b64(
            PLAINTEXT
        )
        await api.create("secrets", secret("sealed", data={"v": "x"}))
        await api.patch(
            "secrets", "plain", {"metadata": {"labels": {"a": "b"}}}, namespace="default"
        )
    raw = await raw_value(etcd, f"{etcd_prefix}/secrets/default/plain")
    assert raw.startswith(b"k8s:enc:aesgcm:v1:key1:")

    async with serving(cluster_pki, etcd, etcd_prefix, ()) as api:
        with pytest.raises(errors.InternalError, match="no encryption key"):
            await api.get("secrets", "sealed", namespace="default")


# -- kctl --------------------------------------------------------------------------------------


async def kctl(kubeconfig: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        "--config",
        str(kubeconfig),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


async def test_kctl_create_get_describe_secret(
    admin_kubeconfig: Path, client: ApiClient, tmp_path: Path
) -> None:
    (tmp_path / "tls.crt").write_bytes(b"CERTIFICATE-BYTES")
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "app.ini").write_text("mode=prod\n")
    (conf / "blob.bin").write_bytes(bytes(range(256)))
    (conf / "sub").mkdir()  # directories inside are skipped, as kubectl does
    env = tmp_path / "db.env"
    env.write_text("# database\nDB_USER=admin\n\nDB_PASS=" + PLAINTEXT + "\n")

    code, out, err = await kctl(
        admin_kubeconfig,
        "create",
        "secret",
        "generic",
        "app",
        "--from-literal=token=" + PLAINTEXT,
        f"--from-file=cert.pem={tmp_path / 'tls.crt'}",
        f"--from-file={conf}",
        f"--from-env-file={env}",
    )
    assert (code, out.strip()) == (0, "secret/app created"), err
    stored = await client.get("secrets", "app", namespace="default")
    data = {k: base64.b64decode(v) for k, v in stored["data"].items()}
    assert data == {
        "token": PLAINTEXT.encode(),
        "cert.pem": b"CERTIFICATE-BYTES",
        "app.ini": b"mode=prod\n",
        "blob.bin": bytes(range(256)),
        "DB_USER": b"admin",
        "DB_PASS": PLAINTEXT.encode(),
    }

    code, out, err = await kctl(admin_kubeconfig, "get", "secrets")
    assert code == 0, err
    assert out.split("\n")[0].split() == ["NAME", "TYPE", "DATA", "AGE"]
    assert out.split("\n")[1].split()[:3] == ["app", "Opaque", "6"]

    code, out, err = await kctl(admin_kubeconfig, "describe", "secret", "app")
    assert code == 0, err
    assert "Type:" in out and "Opaque" in out
    assert "token:  28 bytes" in out and "blob.bin:  256 bytes" in out
    for value in (PLAINTEXT, b64(PLAINTEXT), "admin", "mode=prod", "CERTIFICATE"):
        assert value not in out


KCTL_REFUSALS = [
    pytest.param(["--from-literal=novalue"], "invalid literal source 'novalue'", id="no-equals"),
    pytest.param(
        ["--from-literal=a=1", "--from-literal=a=2"], "cannot add key 'a'", id="duplicate-key"
    ),
    pytest.param(["--from-file=/nonexistent/x"], "cannot read /nonexistent/x", id="missing-file"),
    pytest.param(
        ["--from-literal=bad key=1"], "Error from server (Invalid)", id="server-checks-key"
    ),
]


@pytest.mark.parametrize(("args", "message"), KCTL_REFUSALS)
async def test_kctl_create_secret_refusals(
    admin_kubeconfig: Path, args: list[str], message: str
) -> None:
    code, out, err = await kctl(admin_kubeconfig, "create", "secret", "generic", "s", *args)
    assert code == 1 and message in err, (out, err)
    assert PLAINTEXT not in err


async def test_kctl_create_secret_tls(admin_kubeconfig: Path, tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("CERT")
    (tmp_path / "k.pem").write_text("KEY")
    code, out, err = await kctl(
        admin_kubeconfig,
        "create",
        "secret",
        "tls",
        "web-tls",
        "--cert",
        str(tmp_path / "c.pem"),
        "--key",
        str(tmp_path / "k.pem"),
    )
    assert (code, out.strip()) == (0, "secret/web-tls created"), err
    code, out, err = await kctl(admin_kubeconfig, "get", "secret", "web-tls", "-o", "yaml")
    obj = yaml.safe_load(out)
    assert obj["type"] == "kubernetes.io/tls"
    assert obj["data"] == {"tls.crt": b64("CERT"), "tls.key": b64("KEY")}
