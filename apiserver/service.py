"""The gRPC face of the API server: requests in, registry calls, statuses out.

Each handler resolves the resource name, decodes the JSON body, calls the
registry, and turns an ApiError into its gRPC status code with a serialized
Status (reason, message, failing fields) in the trailing metadata. Anything
else that escapes is a server fault and is reported as INTERNAL with the
error logged; a client's mistake never reaches that path.

Watch responses are pre-serialized WatchEvent messages shared between all
watchers of an event, so the Watch method is registered with an identity
serializer instead of the generated servicer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram

from apiserver.auth import Gate
from apiserver.authz.escalation import RBAC_GROUP, EscalationCheck
from apiserver.registry import MAX_OBJECT_BYTES, Registry, merge_patch
from apiserver.watchcache import WatchCache, WatchFilter
from machinery import errors, kinds
from machinery.api import api_pb2
from machinery.auth import Attributes, UserInfo
from machinery.fields import FieldSelector
from machinery.kinds import Kind
from machinery.labels import Selector
from machinery.log import get_logger

log = get_logger("apiserver")

SERVICE_NAME = "kubelite.api.v1.Objects"
# Kubernetes objects nest a dozen levels; a document nested deeper is refused up front.
MAX_JSON_DEPTH = 100

REQUESTS = Counter(
    "kubelite_apiserver_requests_total",
    "API requests by verb, resource and gRPC code.",
    ["verb", "resource", "code"],
)
LATENCY = Histogram(
    "kubelite_apiserver_request_duration_seconds",
    "API request latency by verb and resource (watch: time to set up).",
    ["verb", "resource"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
WATCHERS = Gauge("kubelite_apiserver_watchers", "Open watch streams by resource.", ["resource"])
WATCH_EVENTS = Counter(
    "kubelite_apiserver_watch_events_sent_total", "Watch events sent to clients.", ["resource"]
)


def _wire(text: str) -> str:
    """Text that protobuf can carry: a message may quote a client's JSON string, and JSON
    allows lone surrogates, which UTF-8 does not; they travel as \\udXXX escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _status_of(err: errors.ApiError) -> api_pb2.Status:
    return api_pb2.Status(
        reason=err.reason,
        message=_wire(err.message),
        code=err.code,
        kind=_wire(err.kind),
        name=_wire(err.name),
        causes=[
            api_pb2.StatusCause(
                field=_wire(c.field), reason=_wire(c.reason), message=_wire(c.message)
            )
            for c in err.causes
        ],
        retry_after_seconds=err.retry_after_seconds,
    )


async def _abort(context: grpc.aio.ServicerContext, err: errors.ApiError) -> None:
    context.set_trailing_metadata(
        ((errors.STATUS_METADATA_KEY, _status_of(err).SerializeToString()),)
    )
    await context.abort(err.grpc_code, _wire(err.message))


class ObjectService:
    def __init__(
        self,
        registry: Registry,
        caches: dict[str, WatchCache],
        *,
        bookmark_interval: float = 30.0,
        gate: Gate | None = None,
        escalation: EscalationCheck | None = None,
    ) -> None:
        self._registry = registry
        self._escalation = escalation
        self._caches = caches
        self._bookmark_interval = bookmark_interval
        # None only for a server embedded in a trusted process (some tests); every
        # server started from the command line has one.
        self._gate = gate

    def _check_escalation(self, user: UserInfo | None, kind: Kind, obj: Any) -> None:
        if user is not None and self._escalation is not None and kind.group == RBAC_GROUP:
            self._escalation.check(user, obj)

    def admit(
        self,
        context: grpc.aio.ServicerContext,
        verb: str,
        kind: Kind,
        *,
        namespace: str = "",
        name: str = "",
        subresource: str = "",
    ) -> UserInfo | None:
        """The caller, if the gate lets it do this; Unauthenticated or Forbidden if not."""
        if self._gate is None:
            return None
        return self._gate.admit(
            context,
            Attributes.of(verb, kind, namespace=namespace, name=name, subresource=subresource),
        )

    # -- plumbing ----------------------------------------------------------------------

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn: Callable[..., Awaitable[Any]], req: Any, resp: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
            )

        methods = {
            "Create": unary(self.Create, api_pb2.CreateRequest, api_pb2.ObjectResponse),
            "Get": unary(self.Get, api_pb2.GetRequest, api_pb2.ObjectResponse),
            "List": unary(self.List, api_pb2.ListRequest, api_pb2.ListResponse),
            "Update": unary(self.Update, api_pb2.UpdateRequest, api_pb2.ObjectResponse),
            "UpdateStatus": unary(self.UpdateStatus, api_pb2.UpdateRequest, api_pb2.ObjectResponse),
            "Patch": unary(self.Patch, api_pb2.PatchRequest, api_pb2.ObjectResponse),
            "Delete": unary(self.Delete, api_pb2.DeleteRequest, api_pb2.ObjectResponse),
            "Bind": unary(self.Bind, api_pb2.BindRequest, api_pb2.ObjectResponse),
            "Watch": grpc.unary_stream_rpc_method_handler(
                self.Watch,
                request_deserializer=api_pb2.WatchRequest.FromString,
                response_serializer=lambda data: data,
            ),
        }
        return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)

    async def _serve(
        self,
        verb: str,
        resource: str,
        context: grpc.aio.ServicerContext,
        call: Callable[[Kind], Awaitable[Any]],
    ) -> Any:
        started = time.perf_counter()
        code = "OK"
        try:
            return await call(_kind(resource))
        except errors.ApiError as err:
            code = err.grpc_code.name
            await _abort(context, err)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as exc:
            code = "INTERNAL"
            log.error("request failed", verb=verb, resource=resource, err=repr(exc), exc_info=True)
            await _abort(
                context,
                errors.InternalError(f"internal error while serving {verb} {resource}: {exc}"),
            )
        finally:
            REQUESTS.labels(verb, resource, code).inc()
            LATENCY.labels(verb, resource).observe(time.perf_counter() - started)

    # -- verbs ------------------------------------------------------------------------------

    async def Create(
        self, request: api_pb2.CreateRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def call(kind: Kind) -> api_pb2.ObjectResponse:
            body = _body(request.object, kind)
            meta = body.get("metadata") if isinstance(body, dict) else None
            meta = meta if isinstance(meta, dict) else {}
            name = meta.get("name")
            user = self.admit(
                context,
                "create",
                kind,
                namespace=request.namespace or str(meta.get("namespace") or "") or "default",
                name=name if isinstance(name, str) else "",
            )
            if user is not None and kind.kind == "CertificateSigningRequest":
                _stamp_requester(body, user)
            self._check_escalation(user, kind, body)
            obj = await self._registry.create(
                kind, request.namespace, body, dry_run=request.dry_run
            )
            return _response(obj)

        return await self._serve("create", request.resource, context, call)

    async def Get(self, request: api_pb2.GetRequest, context: grpc.aio.ServicerContext) -> Any:
        async def call(kind: Kind) -> api_pb2.ObjectResponse:
            namespace = _namespace(kind, request.namespace)
            self.admit(context, "get", kind, namespace=namespace, name=request.name)
            return _response(await self._registry.get(kind, namespace, request.name))

        return await self._serve("get", request.resource, context, call)

    async def List(self, request: api_pb2.ListRequest, context: grpc.aio.ServicerContext) -> Any:
        async def call(kind: Kind) -> api_pb2.ListResponse:
            self.admit(context, "list", kind, namespace=request.namespace)
            page = await self._registry.list(
                kind,
                request.namespace if kind.namespaced else "",
                labels=_labels(request.label_selector),
                fields=_fields(request.field_selector, kind),
                limit=request.limit,
                continue_token=request.continue_token,
                resource_version=request.resource_version,
            )
            return api_pb2.ListResponse(
                items=page.items,
                resource_version=page.resource_version,
                continue_token=page.continue_token,
            )

        return await self._serve("list", request.resource, context, call)

    async def Update(
        self, request: api_pb2.UpdateRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def call(kind: Kind) -> api_pb2.ObjectResponse:
            namespace = _namespace(kind, request.namespace)
            user = self.admit(context, "update", kind, namespace=namespace, name=request.name)
            body = _body(request.object, kind)
            self._check_escalation(user, kind, body)
            obj = await self._registry.update(
                kind,
                namespace,
                request.name,
                body,
                dry_run=request.dry_run,
            )
            return _response(obj)

        return await self._serve("update", request.resource, context, call)

    async def UpdateStatus(
        self, request: api_pb2.UpdateRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def call(kind: Kind) -> api_pb2.ObjectResponse:
            namespace = _namespace(kind, request.namespace)
            self.admit(
                context,
                "update",
                kind,
                namespace=namespace,
                name=request.name,
                subresource="status",
            )
            obj = await self._registry.update_status(
                kind, namespace, request.name, _body(request.object, kind)
            )
            return _response(obj)

        return await self._serve("update_status", request.resource, context, call)

    async def Patch(self, request: api_pb2.PatchRequest, context: grpc.aio.ServicerContext) -> Any:
        async def call(kind: Kind) -> api_pb2.ObjectResponse:
            user = self.admit(
                context,
                "patch",
                kind,
                namespace=_namespace(kind, request.namespace),
                name=request.name,
                subresource="status" if request.status else "",
            )
            if request.patch_type not in ("", "merge"):
                raise errors.BadRequest(
                    f'unsupported patch type "{request.patch_type}": only "merge" is supported'
                )
            patch = _json(request.patch, "patch")
            if user is not None and self._escalation is not None and kind.group == RBAC_GROUP:
                # Judged on the object as the patch would leave it.
                current = await self._registry.get(
                    kind, _namespace(kind, request.namespace), request.name
                )
                self._check_escalation(user, kind, merge_patch(current, patch))
            obj = await self._registry.patch(
                kind,
                _namespace(kind, request.namespace),
                request.name,
                patch,
                status=request.status,
            )
            return _response(obj)

        return await self._serve("patch", request.resource, context, call)

    async def Delete(
        self, request: api_pb2.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def call(kind: Kind) -> api_pb2.ObjectResponse:
            namespace = _namespace(kind, request.namespace)
            self.admit(context, "delete", kind, namespace=namespace, name=request.name)
            obj = await self._registry.delete(
                kind,
                namespace,
                request.name,
                propagation=request.propagation_policy,
                uid=request.preconditions.uid,
                resource_version=request.preconditions.resource_version,
                grace_period_seconds=request.grace_period_seconds,
            )
            return _response(obj)

        return await self._serve("delete", request.resource, context, call)

    async def Bind(self, request: api_pb2.BindRequest, context: grpc.aio.ServicerContext) -> Any:
        async def call(kind: Kind) -> api_pb2.ObjectResponse:
            namespace = request.namespace or "default"
            self.admit(
                context,
                "create",
                kind,
                namespace=namespace,
                name=request.name,
                subresource="binding",
            )
            obj = await self._registry.bind(namespace, request.name, request.node_name, request.uid)
            return _response(obj)

        return await self._serve("bind", "pods", context, call)

    async def Watch(
        self, request: api_pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        resource = request.resource
        try:
            kind = _kind(resource)
            self.admit(context, "watch", kind, namespace=request.namespace)
            cache = self._caches[kind.resource]
            await cache.wait_ready(10.0)
            watcher = cache.subscribe(
                WatchFilter(
                    namespace=request.namespace if kind.namespaced else "",
                    labels=_labels(request.label_selector),
                    fields=_fields(request.field_selector, kind),
                ),
                request.resource_version,
            )
        except errors.ApiError as err:
            REQUESTS.labels("watch", resource, err.grpc_code.name).inc()
            await _abort(context, err)
            return
        REQUESTS.labels("watch", resource, "OK").inc()
        WATCHERS.labels(kind.resource).inc()
        sent = WATCH_EVENTS.labels(kind.resource)
        try:
            for wire in watcher.initial:
                yield wire
            sent.inc(len(watcher.initial))
            watcher.initial = []
            async for wire in self._stream(watcher, cache, request.allow_bookmarks):
                yield wire
                sent.inc()
        except errors.ApiError as err:
            await _abort(context, err)
        finally:
            watcher.stop()
            WATCHERS.labels(kind.resource).dec()

    async def _stream(
        self, watcher: Any, cache: WatchCache, bookmarks: bool
    ) -> AsyncIterator[bytes]:
        while True:
            try:
                wire = await watcher.next(self._bookmark_interval)
            except StopAsyncIteration:
                return
            if wire is not None:
                yield wire
            elif bookmarks:
                mark = {
                    "kind": cache.resource,
                    "metadata": {"resourceVersion": str(cache.revision)},
                }
                yield api_pb2.WatchEvent(
                    type="BOOKMARK", object=json.dumps(mark).encode()
                ).SerializeToString()


def _stamp_requester(csr: dict[str, Any], user: UserInfo) -> None:
    """A signing request records who sent it, whatever the sender wrote there: approvers
    decide on the requester, so it must come from authentication."""
    spec = csr.get("spec") if isinstance(csr, dict) else None
    if isinstance(spec, dict):
        spec["username"] = user.name
        spec["groups"] = list(user.groups)
        spec["uid"] = user.uid
        spec.pop("extra", None)


def _kind(resource: str) -> Kind:
    kind = kinds.by_resource(resource)
    if kind is None:
        known = ", ".join(k.resource for k in kinds.KINDS)
        raise errors.NotFound(
            f'the server does not serve the resource "{resource}" (it serves: {known})'
        )
    return kind


def _namespace(kind: Kind, namespace: str) -> str:
    if not kind.namespaced:
        return ""
    return namespace or "default"


def _json(data: bytes, what: str) -> Any:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise errors.BadRequest(f"the {what} is not valid JSON: {err}") from None
    except RecursionError:
        raise _too_deep(what) from None
    # Every later step (copies, schemas, merge patches) recurses through the document.
    if _depth(value) > MAX_JSON_DEPTH:
        raise _too_deep(what)
    return value


def _too_deep(what: str) -> errors.BadRequest:
    return errors.BadRequest(f"the {what} is nested more than {MAX_JSON_DEPTH} levels deep")


def _depth(value: Any) -> int:
    """How deeply objects and arrays nest in a parsed JSON document, without recursing."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in node)
    return deepest


def _body(data: bytes, kind: Kind) -> Any:
    if len(data) > MAX_OBJECT_BYTES:
        raise errors.TooLarge(
            f"the {kind.kind} is too large: {len(data)} bytes exceeds the limit of "
            f"{MAX_OBJECT_BYTES} bytes"
        )
    return _json(data, kind.kind)


def _response(obj: dict[str, Any]) -> api_pb2.ObjectResponse:
    return api_pb2.ObjectResponse(object=json.dumps(obj).encode())


def _labels(text: str) -> Selector | None:
    if not text:
        return None
    try:
        return Selector.parse(text)
    except ValueError as err:
        raise errors.BadRequest(f"invalid label selector {text!r}: {err}") from None


def _fields(text: str, kind: Kind) -> FieldSelector | None:
    if not text:
        return None
    try:
        return FieldSelector.parse(text, resource=kind.resource)
    except ValueError as err:
        raise errors.BadRequest(f"invalid field selector {text!r}: {err}") from None
