"""Property-based: whatever a client sends, the API server answers cleanly and its store
stays sound.

Two generators drive a real API server (on the session's etcd, in a thread of its own):
manifests of every kind, built valid and then mutated (fields dropped, values of the wrong
type, huge strings, unusual unicode, deep nesting, nulls, unknown fields, invalid names,
bad quantities), sent as create, dry-run create, update, status update and merge patch;
and raw API requests (every verb, random resources, names, namespaces, selectors,
resourceVersions, continue tokens, patches, bodies that are not JSON). Every answer must be
a success or an ApiError of a client-error class, as machinery.client rebuilds it from the
wire: never InternalError, and never a gRPC status without the server's Status (UNKNOWN).
Afterwards every stored object can be listed, read back by name, parses, and passes
machinery.validation; the objects made before the fuzzing (namespace "pristine", node
"pristine-node") are unchanged, down to their resourceVersion.

Runs are reproducible: the "ci" Hypothesis profile (the default) is derandomized, with no
example database, and sized so the whole module stays well under a minute on 2 cores.
KUBELITE_FUZZ_PROFILE=explore runs many more random examples, for a developer's machine.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from machinery import errors, kinds, pki, validation
from machinery.api import api_pb2, api_pb2_grpc
from machinery.client import ApiClient, error_from_rpc
from tests import objects
from tests.tls import ClusterPKI

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=600,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "explore",
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = os.environ.get("KUBELITE_FUZZ_PROFILE", "ci")

pytestmark = pytest.mark.timeout(300)

CLEAN = (
    errors.BadRequest,
    errors.Invalid,
    errors.NotFound,
    errors.AlreadyExists,
    errors.Conflict,
    errors.Expired,
    errors.TooLarge,
    errors.Forbidden,
    errors.MethodNotAllowed,
)
PRISTINE = "pristine"
PINNED = "pinned"  # where the regression cases below run; the fuzzer keeps out too
PRISTINE_NODE = "pristine-node"
FUZZ_NS = "fuzz"
TARGET = "target"


# -- valid objects of every kind ----------------------------------------------------------


def secret(name: str, *, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "data": {"password": base64.b64encode(b"hunter2").decode()},
    }


RBAC = "rbac.authorization.k8s.io/v1"


def role(kind: str, name: str, namespace: str) -> dict[str, Any]:
    rule = {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]}
    return {"apiVersion": RBAC, "kind": kind, "metadata": meta(name, namespace), "rules": [rule]}


def binding(kind: str, name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": RBAC,
        "kind": kind,
        "metadata": meta(name, namespace),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "jane"}],
    }


def csr(name: str) -> dict[str, Any]:
    """A node's client certificate request, as a kubelet's bootstrap sends it."""
    subject = pki.Subject(f"system:node:{name}", ("system:nodes",))
    request = pki.new_csr(pki.new_key(), subject)
    return {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": base64.b64encode(request).decode(),
            "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
            "usages": ["digital signature", "client auth"],
        },
    }


def meta(name: str, namespace: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace} if namespace else {"name": name}


def valid(kind: str, name: str, namespace: str) -> dict[str, Any]:
    """A valid object of `kind`; cluster-scoped kinds ignore `namespace`."""
    builders: dict[str, Callable[[], dict[str, Any]]] = {
        "Namespace": lambda: objects.namespace(name),
        "Node": lambda: objects.node(name),
        "Pod": lambda: objects.pod(name, namespace=namespace),
        "ReplicaSet": lambda: objects.replicaset(name, namespace=namespace),
        "Deployment": lambda: objects.deployment(name, namespace=namespace),
        "Service": lambda: objects.service(name, namespace=namespace),
        "Endpoints": lambda: objects.endpoints(name, namespace=namespace),
        "ConfigMap": lambda: objects.configmap(name, namespace=namespace),
        "Secret": lambda: secret(name, namespace=namespace),
        "Event": lambda: objects.event(name, namespace=namespace),
        "Lease": lambda: objects.lease(name, namespace=namespace),
        "ServiceAccount": lambda: {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta(name, namespace),
        },
        "Role": lambda: role("Role", name, namespace),
        "ClusterRole": lambda: role("ClusterRole", name, ""),
        "RoleBinding": lambda: binding("RoleBinding", name, namespace),
        "ClusterRoleBinding": lambda: binding("ClusterRoleBinding", name, ""),
        "CertificateSigningRequest": lambda: csr(name),
    }
    obj = builders[kind]()
    if kind == "Pod":
        # Resources give the quantity mutations something to break.
        obj["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "500m", "memory": "64Mi"}}
    return obj


KIND_NAMES = sorted(k.kind for k in kinds.KINDS)
NAMESPACED = {k.kind for k in kinds.KINDS if k.namespaced}
RESOURCES = sorted(k.resource for k in kinds.KINDS)


# -- the server, in a thread with its own event loop ------------------------------------------


class FuzzTarget:
    """An API server, a client and a raw stub on a loop in a background thread, so that
    Hypothesis (synchronous) can drive them one request at a time."""

    def __init__(self, etcd_endpoint: str, pki: ClusterPKI) -> None:
        self.pki = pki
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self.thread.start()
        self.prefix = f"/kubelite-fuzz-{uuid.uuid4().hex[:10]}"
        self.run(self._start(etcd_endpoint), timeout=60)
        self.pristine = self.run(self._seed())

    def run(self, coro: Awaitable[Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    async def _start(self, etcd_endpoint: str) -> None:
        from apiserver.server import ApiServer, ServerConfig

        self.server = ApiServer(
            ServerConfig(
                etcd_endpoints=[etcd_endpoint],
                listen="127.0.0.1:0",
                prefix=self.prefix,
                compaction_interval=0,
                **self.pki.server_settings(),
            )
        )
        await self.server.start()
        await asyncio.wait_for(self.server.ready.wait(), 30)
        self.address = f"127.0.0.1:{self.server.port}"
        admin = self.pki.admin_credentials
        self.client = ApiClient([self.address], timeout=15, credentials=admin)
        # The raw stub goes through authentication too: the fuzzer is the admin.
        self.channel = grpc.aio.secure_channel(
            self.address,
            admin.channel_credentials(),
            options=[("grpc.max_send_message_length", 8 * 1024 * 1024)],
        )
        self.stub = api_pb2_grpc.ObjectsStub(self.channel)

    async def _seed(self) -> dict[tuple[str, str, str], dict[str, Any]]:
        """The pristine objects (never touched by the fuzzer) and the fuzzer's targets."""
        for ns in (PRISTINE, FUZZ_NS, PINNED):
            await self.client.create("namespaces", objects.namespace(ns))
        for node in (PRISTINE_NODE, "fuzz-node"):
            await self.client.create("nodes", objects.node(node))
        for kind in sorted(NAMESPACED):
            for ns in (PRISTINE, FUZZ_NS):
                await self.client.create(kind_of(kind).resource, valid(kind, TARGET, ns))
        snapshot = {}
        for kind in KIND_NAMES:
            k = kind_of(kind)
            for item in (await self.client.list(k.resource)).items:
                meta = item["metadata"]
                if meta.get("namespace") == PRISTINE or meta["name"] in (PRISTINE, PRISTINE_NODE):
                    snapshot[(k.resource, meta.get("namespace", ""), meta["name"])] = item
        return snapshot

    async def raw(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self.stub, method)(request, timeout=15)
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err, self.address) from None

    async def watch_once(self, request: api_pb2.WatchRequest) -> None:
        call = self.stub.Watch(request, timeout=15)
        try:
            await asyncio.wait_for(call.read(), 0.3)
        except TimeoutError:
            pass  # nothing to say yet: a clean, open stream
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err, self.address) from None
        finally:
            call.cancel()

    async def _stop(self) -> None:
        await self.channel.close()
        await self.client.close()
        await self.server.stop(grace=0)

    def close(self) -> None:
        try:
            self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


def kind_of(name: str) -> kinds.Kind:
    kind = kinds.by_kind(name)
    assert kind is not None
    return kind


@pytest.fixture(scope="module")
def target(etcd, cluster_pki) -> FuzzTarget:
    fuzz = FuzzTarget(etcd.endpoint, cluster_pki)
    yield fuzz
    fuzz.close()


def answer(fuzz: FuzzTarget, coro: Awaitable[Any], what: str) -> str:
    """ "ok" or the clean error's reason; anything else fails the example."""
    try:
        fuzz.run(coro)
    except CLEAN as err:
        return err.reason
    except errors.ApiError as err:
        raise AssertionError(f"{what}: {type(err).__name__}: {err}") from None
    return "ok"


# -- strategies: values, names, mutations ---------------------------------------------------

NASTY_STRINGS = [
    "",
    " ",
    "\x00",
    "\ud800",  # a lone surrogate: legal in a JSON string, not in UTF-8
    "名前",
    "😀" * 10,
    "A" * 300,
    "../etc",
    "a/b",
    "a b",
    "-leading",
    "UPPER",
    "x" * 64,
    "\u202e",
    "\n",
    "%00",
    "${x}",
]
BAD_QUANTITIES = ["1.2.3", "-1", "1e1000", "Ki", "", " 1", "9" * 400, "1ki", "0x10", "1.5Q", "∞"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NASTY_STRINGS),
    st.text(alphabet=st.characters(blacklist_categories=()), max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
# Request fields are proto strings: a client cannot send a lone surrogate in them.
proto_text = st.one_of(
    st.sampled_from([s for s in NASTY_STRINGS if s != "\ud800"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20),
)


DEEP_MARK = "__kltest_deep_%d__"


def deep_json(depth: int) -> str:
    """JSON nested `depth` levels (lists and objects alternating), as text: built as an
    object it would overflow the client's own recursion before the server saw it."""
    opens = "".join('{"n":' if i % 2 else "[" for i in range(depth))
    closes = "".join("}" if i % 2 else "]" for i in reversed(range(depth)))
    return opens + '"bottom"' + closes


def all_paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = []
    if isinstance(obj, dict):
        items = list(obj.items())
    elif isinstance(obj, list):
        items = list(enumerate(obj))
    else:
        return out
    for key, value in items:
        out.append((*prefix, key))
        out.extend(all_paths(value, (*prefix, key)))
    return out


def set_at(obj: Any, path: tuple[Any, ...], value: Any, *, drop: bool = False) -> Any:
    if not path:
        return value
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    if drop:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return obj


@st.composite
def mutation(draw: st.DrawFn, obj: dict[str, Any]) -> Any:
    paths = all_paths(obj)
    path = draw(st.sampled_from(paths)) if paths else ()
    how = draw(
        st.sampled_from(
            [
                "drop",
                "junk",
                "null",
                "unknown-field",
                "deep",
                "huge",
                "name",
                "quantity",
                "swap",
                "root",
                "host-access",
            ]
        )
    )
    if how == "drop" and path:
        return set_at(obj, path, None, drop=True)
    if how == "null" and path:
        return set_at(obj, path, None)
    if how == "junk":
        return set_at(obj, path, draw(json_values))
    if how == "unknown-field":
        dicts = [p for p in [(), *paths] if isinstance(_get(obj, p), dict)]
        where = _get(obj, draw(st.sampled_from(dicts)))
        where[draw(st.sampled_from(["bogus", "Spec", "x-extra", "😀", ""]))] = draw(json_values)
        return obj
    if how == "deep":
        # A marker that encode_body replaces with the nested text.
        return set_at(obj, path, DEEP_MARK % draw(st.sampled_from([20, 200, 1000, 3000])))
    if how == "huge":
        size = draw(st.sampled_from([70_000, 300_000, 1_100_000]))
        return set_at(obj, path, draw(st.sampled_from(["x", "é", "😀"])) * size)
    if how == "name" and isinstance(obj.get("metadata"), dict):
        obj["metadata"][draw(st.sampled_from(["name", "generateName", "namespace"]))] = draw(
            proto_text
        )
        return obj
    if how == "quantity":
        quantity_paths = [p for p in paths if p and p[-1] in ("cpu", "memory", "pods")]
        if quantity_paths:
            value = draw(st.sampled_from(BAD_QUANTITIES) | scalars)
            return set_at(obj, draw(st.sampled_from(quantity_paths)), value)
        return obj
    if how == "swap" and path:
        return set_at(obj, path, _swapped(_get(obj, path)))
    if how == "root":
        return draw(json_values)
    if how == "host-access" and isinstance(obj.get("spec"), dict):
        # What Pod Security refuses (in Pods; in templates it only looks like it).
        template = obj["spec"].get("template")
        spec = template.get("spec") if isinstance(template, dict) else obj["spec"]
        if not isinstance(spec, dict):
            return obj
        field, value = draw(
            st.sampled_from(
                [
                    ("hostNetwork", True),
                    ("hostPID", True),
                    ("volumes", [{"name": "h", "hostPath": {"path": "/"}}]),
                    ("securityContext", {"seccompProfile": {"type": "Unconfined"}}),
                ]
            )
        )
        spec[field] = value
        return obj
    return obj


def _swapped(value: Any) -> Any:
    """An object becomes a list, a list an object, anything else a list of itself."""
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    return [value]


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


@st.composite
def manifests(draw: st.DrawFn) -> tuple[str, Any]:
    kind = draw(st.sampled_from(KIND_NAMES))
    name = draw(st.sampled_from([TARGET, "fresh", "fuzz-node", "other-" + kind.lower()]))
    if kind == "Namespace":
        name = draw(st.sampled_from([FUZZ_NS, "fresh-ns", "default"]))
    obj: Any = valid(kind, name, FUZZ_NS)
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        if not isinstance(obj, dict):
            break
        obj = draw(mutation(obj))
    return kind, obj


def touches_pristine(namespace: str, name: str, resource: str) -> bool:
    return namespace in (PRISTINE, PINNED) or (
        resource in ("namespaces", "nodes") and name in (PRISTINE, PRISTINE_NODE, PINNED)
    )


def manifest_scope(obj: Any) -> tuple[str, str]:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict):
        return FUZZ_NS, ""
    namespace, name = meta.get("namespace", FUZZ_NS), meta.get("name", "")
    return (namespace if isinstance(namespace, str) else FUZZ_NS), (
        name if isinstance(name, str) else ""
    )


# -- the manifest property ----------------------------------------------------------------------


def encode_body(obj: Any) -> bytes:
    text = json.dumps(obj)  # NaN and Infinity go as JSON's common extension
    for depth in (20, 200, 1000, 3000):
        text = text.replace(json.dumps(DEEP_MARK % depth), deep_json(depth))
    return text.encode()


MANIFEST_VERBS = ["create", "dry-run", "update", "update-status", "patch"]


def send_manifest(fuzz: FuzzTarget, verb: str, kind: str, obj: Any) -> Awaitable[Any]:
    resource = kind_of(kind).resource
    namespace, name = manifest_scope(obj)
    if kind not in NAMESPACED:
        namespace = ""
    body = encode_body(obj)
    if verb in ("create", "dry-run"):
        request = api_pb2.CreateRequest(
            resource=resource, namespace=namespace, object=body, dry_run=verb == "dry-run"
        )
        return fuzz.raw("Create", request)
    if verb == "patch":
        request = api_pb2.PatchRequest(
            resource=resource, namespace=namespace, name=name or TARGET, patch=body
        )
        return fuzz.raw("Patch", request)
    request = api_pb2.UpdateRequest(
        resource=resource, namespace=namespace, name=name or TARGET, object=body
    )
    return fuzz.raw("UpdateStatus" if verb == "update-status" else "Update", request)


def test_mutated_manifests(target: FuzzTarget):
    seen: dict[str, int] = {}

    @settings(settings.get_profile(PROFILE))
    @given(case=manifests(), verb=st.sampled_from(MANIFEST_VERBS))
    def run(case: tuple[str, Any], verb: str) -> None:
        kind, obj = case
        namespace, name = manifest_scope(obj)
        assume(not touches_pristine(namespace, name, kind_of(kind).resource))
        reason = answer(target, send_manifest(target, verb, kind, obj), f"{verb} {kind}")
        seen[reason] = seen.get(reason, 0) + 1

    run()
    assert_store_intact(target)
    # The generator reaches both sides: some mutations are still valid, most are refused.
    assert seen.get("ok") and seen.get("Invalid"), seen


# -- the request property -------------------------------------------------------------------------


def mostly(common: list[str]) -> st.SearchStrategy[str]:
    """Usually one of the names that exist, so requests reach the objects; else junk."""
    return st.one_of(st.sampled_from(common), st.sampled_from(common), proto_text)


resources = mostly(RESOURCES)
namespaces = mostly([FUZZ_NS, FUZZ_NS, "default", "", "absent", "kube-system"])
names = mostly([TARGET, TARGET, "fuzz-node", FUZZ_NS, "absent", ""])
selectors = (
    st.sampled_from(
        [
            "",
            "app=web",
            "app in (a,b)",
            "!app",
            "app notin (x)",
            "a=b,c!=d",
            "app==",
            "=",
            "in (",
            ",,",
        ]
    )
    | proto_text
)
field_selectors = (
    st.sampled_from(
        ["", "metadata.name=target", "spec.nodeName=", "status.phase!=Running", "bogus=1", "a", "="]
    )
    | proto_text
)
versions = st.sampled_from(["", "0", "1", "-1", "abc", "9" * 30, "18446744073709551616"]) | (
    st.integers(min_value=0, max_value=10**6).map(str)
)
tokens = st.one_of(
    st.sampled_from(["", "abc", "e30", "bnVsbA", "W10", "eyJyZXYiOiAiYSJ9"]),
    json_values.map(lambda v: base64.urlsafe_b64encode(json.dumps(v).encode()).decode()),
    proto_text,
)
int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)
patches = st.sampled_from(
    [
        {"metadata": {"labels": {"tier": "x"}}},
        {"metadata": {"labels": {"bad key!": "x"}}},
        {"metadata": None},
        {"metadata": {"resourceVersion": "1"}},
        {"metadata": {"finalizers": ["example.com/hold"]}},
        {"metadata": {"deletionTimestamp": "2020-01-01T00:00:00Z"}},
        {"spec": {"replicas": "three"}},
        {"spec": None},
        {"spec": {"nodeName": "elsewhere"}},
        {"status": {"phase": "Running"}},
        {"status": {"phase": ["Running"]}},
        {"kind": "Node"},
        {"apiVersion": None},
    ]
)
bodies = st.one_of(
    json_values.map(encode_body),
    patches.map(encode_body),
    st.binary(max_size=40),
    st.sampled_from([b"", b"{", b"null", b"[]", b'{"kind":', b"\xff\xfe", b"{}" * 3]),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, Any]:
    verb = draw(
        st.sampled_from(
            ["Get", "List", "Create", "Update", "UpdateStatus", "Patch", "Delete", "Bind", "Watch"]
        )
    )
    resource, namespace, name = draw(resources), draw(namespaces), draw(names)
    assume(not touches_pristine(namespace, name, resource))
    if verb == "Get":
        return verb, api_pb2.GetRequest(resource=resource, namespace=namespace, name=name)
    if verb in ("List", "Watch"):
        fields = {
            "resource": resource,
            "namespace": namespace,
            "label_selector": draw(selectors),
            "field_selector": draw(field_selectors),
            "resource_version": draw(versions),
        }
        if verb == "Watch":
            return verb, api_pb2.WatchRequest(**fields, allow_bookmarks=draw(st.booleans()))
        return verb, api_pb2.ListRequest(
            **fields, limit=draw(int64s | st.integers(0, 3)), continue_token=draw(tokens)
        )
    if verb == "Create":
        return verb, api_pb2.CreateRequest(
            resource=resource, namespace=namespace, object=draw(bodies), dry_run=draw(st.booleans())
        )
    if verb in ("Update", "UpdateStatus"):
        return verb, api_pb2.UpdateRequest(
            resource=resource, namespace=namespace, name=name, object=draw(bodies)
        )
    if verb == "Patch":
        return verb, api_pb2.PatchRequest(
            resource=resource,
            namespace=namespace,
            name=name,
            patch=draw(bodies),
            patch_type=draw(st.sampled_from(["", "merge", "json", "strategic"]) | proto_text),
            status=draw(st.booleans()),
        )
    if verb == "Delete":
        return verb, api_pb2.DeleteRequest(
            resource=resource,
            namespace=namespace,
            name=name,
            propagation_policy=draw(
                st.sampled_from(["", "Background", "Foreground", "Orphan"]) | proto_text
            ),
            preconditions=api_pb2.Preconditions(
                uid=draw(proto_text), resource_version=draw(versions)
            )
            if draw(st.booleans())
            else None,
            grace_period_seconds=draw(st.sampled_from([-1, 0, 30]) | int64s),
        )
    return verb, api_pb2.BindRequest(
        namespace=namespace, name=name, node_name=draw(names), uid=draw(proto_text)
    )


def send_request(fuzz: FuzzTarget, verb: str, request: Any) -> Awaitable[Any]:
    if verb == "Watch":
        return fuzz.watch_once(request)
    return fuzz.raw(verb, request)


def test_random_requests(target: FuzzTarget):
    @settings(settings.get_profile(PROFILE))
    @given(case=requests())
    def run(case: tuple[str, Any]) -> None:
        verb, request = case
        answer(target, send_request(target, verb, request), f"{verb} {request}")

    run()
    assert_store_intact(target)


# -- the store afterwards -----------------------------------------------------------------------


def assert_store_intact(fuzz: FuzzTarget) -> None:
    fuzz.run(_check_store(fuzz), timeout=120)


async def _check_store(fuzz: FuzzTarget) -> None:
    client = fuzz.client
    for kind in kinds.KINDS:
        listed = await client.list_all(kind.resource, page_size=50)
        for item in listed.items:
            meta = item["metadata"]
            where = f"{kind.resource} {meta.get('namespace', '')}/{meta['name']}"
            try:
                again = await client.get(
                    kind.resource, meta["name"], namespace=meta.get("namespace", "")
                )
            except errors.NotFound:
                # Gone since the list (the garbage collector at work), not lost.
                names_now = {
                    (i["metadata"].get("namespace", ""), i["metadata"]["name"])
                    for i in (await client.list_all(kind.resource)).items
                }
                assert (meta.get("namespace", ""), meta["name"]) not in names_now, where
                continue
            if again["metadata"]["resourceVersion"] == meta["resourceVersion"]:
                assert again == item, where
            assert validation.validate(again) == [], where
    # The raw keys too: every value under the prefix is a JSON object of its resource.
    page = await fuzz.server.store.list(fuzz.prefix + "/", revision=0, limit=0, start="")
    for kv in page.items:
        resource = kv.key.removeprefix(fuzz.prefix + "/").split("/", 1)[0]
        if kinds.by_resource(resource) is None:
            continue  # the Service allocator's own records
        if resource != "secrets":  # sealed when an encryption key is set
            assert isinstance(json.loads(kv.value), dict), kv.key
    for (resource, namespace, name), before in fuzz.pristine.items():
        assert await client.get(resource, name, namespace=namespace) == before, name


def test_seeded_objects_are_valid_to_begin_with(target: FuzzTarget):
    """The property starts from objects the server accepts: a sanity check on the base."""
    assert len(target.pristine) == len(NAMESPACED) + 2
    for obj in target.pristine.values():
        assert validation.validate(copy.deepcopy(obj)) == []


# -- what the fuzzing found, pinned ---------------------------------------------------------


def configmap_body(**metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"namespace": PINNED, **metadata},
        "data": {"k": "v"},
    }


@pytest.mark.parametrize(
    ("method", "request_", "error", "message"),
    [
        pytest.param(
            "Create",
            api_pb2.CreateRequest(
                resource="configmaps",
                namespace=PINNED,
                object=encode_body(configmap_body(name=["target"])),
            ),
            errors.Invalid,
            'ConfigMap is invalid: metadata.name: Invalid value: ["target"]: must be a string',
            id="non-string-name-is-invalid-not-internal",
        ),
        pytest.param(
            "Create",
            api_pb2.CreateRequest(
                resource="configmaps",
                namespace=PINNED,
                object=b'{"data": ' + deep_json(3000).encode() + b"}",
            ),
            errors.BadRequest,
            "the ConfigMap is nested more than 100 levels deep",
            id="nesting-beyond-the-parser",
        ),
        pytest.param(
            "Patch",
            api_pb2.PatchRequest(
                resource="configmaps",
                namespace=PINNED,
                name=TARGET,
                patch=b'{"data": ' + deep_json(150).encode() + b"}",
            ),
            errors.BadRequest,
            "the patch is nested more than 100 levels deep",
            id="nesting-within-the-parser-but-too-deep",
        ),
        pytest.param(
            "UpdateStatus",
            api_pb2.UpdateRequest(
                resource="deployments",
                namespace=PINNED,
                name=TARGET,
                object=encode_body({**valid("Deployment", TARGET, PINNED), "metadata": [TARGET]}),
            ),
            errors.BadRequest,
            "metadata: must be an object",
            id="status-update-with-metadata-not-an-object",
        ),
        pytest.param(
            "Create",
            api_pb2.CreateRequest(
                resource="nodes",
                object=b'{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "nan-node"}, '
                b'"status": {"capacity": {"cpu": NaN}}}',
            ),
            errors.Invalid,
            'Node "nan-node" is invalid: status.allocatable[cpu]: Invalid value: NaN: must be a '
            "quantity such as 500m, 1.5, 128Mi or 1G; status.capacity[cpu]: Invalid value: "
            "NaN: must be a quantity such as 500m, 1.5, 128Mi or 1G",
            id="nan-quantity",
        ),
        pytest.param(
            "Create",
            api_pb2.CreateRequest(
                resource="services",
                namespace=PINNED,
                object=encode_body(
                    {**valid("Service", "ports", PINNED), "spec": {"ports": [{"port": [80]}]}}
                ),
            ),
            errors.Invalid,
            'Service "ports" is invalid: spec.ports[0].port: Invalid value: [80]: must be an '
            "integer; spec.ports[0].targetPort: Invalid value: [80]: must be an integer or a "
            "string",
            id="unhashable-service-port",
        ),
        pytest.param(
            "Update",
            api_pb2.UpdateRequest(
                resource="services",
                namespace=PINNED,
                name="svc",
                object=encode_body({**valid("Service", "svc", PINNED), "spec": []}),
            ),
            errors.Invalid,
            'Service "svc" is invalid: spec: Invalid value: []: must be an object',
            id="service-update-with-spec-not-an-object",
        ),
        pytest.param(
            "Create",
            api_pb2.CreateRequest(
                resource="pods",
                namespace=PINNED,
                object=encode_body({**valid("Pod", "qos", PINNED), "spec": {"containers": [[1]]}}),
            ),
            errors.Invalid,
            'Pod "qos" is invalid: spec.containers[0]: Invalid value: [1]: must be an object',
            id="pod-container-not-an-object",
        ),
        pytest.param(
            "Create",
            api_pb2.CreateRequest(
                resource="configmaps",
                namespace=PINNED,
                object=encode_body(configmap_body(name="a\ud800")),
            ),
            errors.Invalid,
            'ConfigMap "a\\ud800" is invalid: metadata.name: Invalid value: "a\\ud800": must '
            "be a lowercase RFC 1123 subdomain: lowercase letters, digits, '-' and '.', "
            "beginning and ending with a letter or digit (e.g. 'example.com')",
            id="lone-surrogate-travels-escaped",
        ),
        pytest.param(
            "List",
            api_pb2.ListRequest(resource="configmaps", resource_version="999999999"),
            errors.BadRequest,
            "the resourceVersion 999999999 of this list is newer than any the server has written",
            id="list-at-a-future-version",
        ),
    ],
)
def test_found_by_fuzzing(target: FuzzTarget, method: str, request_: Any, error, message: str):
    with pytest.raises(error) as caught:
        target.run(target.raw(method, request_))
    assert type(caught.value) is error
    assert caught.value.message == message


def test_nesting_at_the_limit_is_judged_by_the_schema(target: FuzzTarget):
    body = b'{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "deep"}, "data": '
    request_ = api_pb2.CreateRequest(
        resource="configmaps", namespace=PINNED, object=body + deep_json(98).encode() + b"}"
    )
    with pytest.raises(errors.Invalid, match="data"):
        target.run(target.raw("Create", request_))
