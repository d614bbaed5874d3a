"""The API client every component and kctl use.

Typed helpers over the gRPC object API: objects go in and come out as dicts
in Kubernetes' shape, and failures come out as machinery.errors types
rebuilt from the server's Status detail, so `except errors.Conflict` works
the same in every component.

Several server addresses may be given (an HA control plane); when the
current one is unreachable the client moves to the next and the failed call
raises Unavailable, which callers treat as worth a retry (see retry()).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc

from machinery import errors, kinds
from machinery.api import access_pb2, access_pb2_grpc, api_pb2, api_pb2_grpc
from machinery.clock import Clock, RealClock
from machinery.credentials import Credentials
from machinery.kinds import Kind

T = TypeVar("T")

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 4 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.enable_retries", 0),
]


_READS = frozenset({"Get", "List", "WhoAmI", "Review"})
# Methods of the Access service; every other unary method is the object API's.
_ACCESS = frozenset({"WhoAmI", "Review"})


def _never_connected(err: grpc.aio.AioRpcError) -> bool:
    """Whether the call failed before any server saw it (no connection was made)."""
    return "failed to connect" in (err.details() or "")


def _cut_by_channel_close() -> bool:
    """Whether a CancelledError out of a call means its channel was closed under it
    (set_credentials, failover) rather than that the calling task is being cancelled.

    NB: grpc.aio ends the calls of a closed channel with CancelledError; let through,
    it would end an informer's or a loop's task as if it had been stopped."""
    task = asyncio.current_task()
    return task is not None and not task.cancelling()


def _cut(target: str) -> errors.Unavailable:
    return errors.Unavailable(f"the call to {target} was cut: the client's connection was replaced")


@dataclasses.dataclass(frozen=True)
class ObjectList:
    items: list[dict[str, Any]]
    resource_version: str
    continue_token: str


@dataclasses.dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: dict[str, Any]

    @property
    def resource_version(self) -> str:
        return self.object.get("metadata", {}).get("resourceVersion", "")


def resolve_kind(resource: str | Kind) -> Kind:
    """The Kind for a resource, kind or short name; BadRequest names an unknown one."""
    if isinstance(resource, Kind):
        return resource
    kind = kinds.lookup(resource)
    if kind is None:
        raise errors.BadRequest(
            f'the server doesn\'t have a resource type "{resource}" '
            f"(known: {', '.join(k.resource for k in kinds.KINDS)})"
        )
    return kind


def error_from_rpc(err: grpc.aio.AioRpcError, target: str) -> errors.ApiError:
    """Rebuild the server's ApiError from the status detail, or classify a transport failure."""
    for key, value in err.trailing_metadata() or ():
        if key == errors.STATUS_METADATA_KEY:
            status = api_pb2.Status.FromString(value)
            cls = errors.error_for_reason(status.reason)
            return cls(
                status.message,
                kind=status.kind,
                name=status.name,
                causes=[errors.Cause(c.field, c.reason, c.message) for c in status.causes],
                retry_after_seconds=status.retry_after_seconds,
            )
    code = err.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return errors.Unavailable(f"the API server at {target} is unreachable: {err.details()}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.Timeout(f"the API server at {target} did not answer in time")
    return errors.error_for_grpc_code(code)(f"{err.details()} (from {target})")


class ApiClient:
    def __init__(
        self,
        servers: Sequence[str],
        *,
        timeout: float = 30.0,
        credentials: Credentials | None = None,
    ) -> None:
        if not servers:
            raise ValueError("at least one API server address is required")
        self.servers = list(servers)
        self._index = 0
        self._timeout = timeout
        self._credentials = credentials
        self._channel: grpc.aio.Channel | None = None
        self._stub: api_pb2_grpc.ObjectsStub | None = None

    @property
    def server(self) -> str:
        return self.servers[self._index]

    @property
    def credentials(self) -> Credentials | None:
        return self._credentials

    async def set_credentials(self, credentials: Credentials) -> None:
        """Use new credentials (a rotated certificate) from the next call on.

        The old channel closes, so open watches and calls in flight end with
        Unavailable and their informers watch again over a connection that presents
        the new certificate.
        """
        self._credentials = credentials
        await self._drop_channel()

    def _objects(self) -> api_pb2_grpc.ObjectsStub:
        if self._stub is None:
            if self._credentials is not None:
                problem = self._credentials.certificate_problem(time.time())
                if problem:
                    raise errors.Unauthenticated(f"{problem}: get a new one")
                self._channel = grpc.aio.secure_channel(
                    self.server, self._credentials.channel_credentials(), _CHANNEL_OPTIONS
                )
            else:
                self._channel = grpc.aio.insecure_channel(self.server, _CHANNEL_OPTIONS)
            self._stub = api_pb2_grpc.ObjectsStub(self._channel)
        return self._stub

    def _access(self) -> access_pb2_grpc.AccessStub:
        self._objects()  # the one channel, made if it is not yet
        return access_pb2_grpc.AccessStub(self._channel)

    async def _failover(self) -> None:
        if len(self.servers) > 1:
            await self._drop_channel()
            self._index = (self._index + 1) % len(self.servers)

    async def _drop_channel(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    async def close(self) -> None:
        await self._drop_channel()

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _unary(self, method: str, request: Any, timeout: float | None = None) -> Any:
        """One call; with several servers, an unreachable one is skipped for the next.

        A read is tried on every server in turn. A write moves on only when the
        connection was never made, so a request a server may have applied before it
        went away is never sent twice; that failure is the caller's to judge.
        """
        for attempt in range(len(self.servers)):
            target = self.server
            try:
                stub = self._access() if method in _ACCESS else self._objects()
                return await getattr(stub, method)(request, timeout=timeout or self._timeout)
            except asyncio.CancelledError:
                if not _cut_by_channel_close():
                    raise
                raise _cut(target) from None
            except grpc.aio.AioRpcError as err:
                error = error_from_rpc(err, target)
                if not isinstance(error, errors.Unavailable):
                    raise error from None
                await self._failover()
                last = attempt == len(self.servers) - 1
                if last or not (method in _READS or _never_connected(err)):
                    raise error from None
        raise AssertionError("unreachable")  # the loop returns or raises

    # -- verbs ------------------------------------------------------------------------

    async def create(
        self,
        resource: str | Kind,
        obj: dict[str, Any],
        *,
        namespace: str = "",
        dry_run: bool = False,
    ) -> dict[str, Any]:
        kind = resolve_kind(resource)
        ns = namespace or obj.get("metadata", {}).get("namespace", "")
        request = api_pb2.CreateRequest(
            resource=kind.resource, namespace=ns, object=json.dumps(obj).encode(), dry_run=dry_run
        )
        return json.loads((await self._unary("Create", request)).object)

    async def get(self, resource: str | Kind, name: str, *, namespace: str = "") -> dict[str, Any]:
        kind = resolve_kind(resource)
        request = api_pb2.GetRequest(resource=kind.resource, namespace=namespace, name=name)
        return json.loads((await self._unary("Get", request)).object)

    async def list(
        self,
        resource: str | Kind,
        *,
        namespace: str = "",
        label_selector: str = "",
        field_selector: str = "",
        limit: int = 0,
        continue_token: str = "",
        resource_version: str = "",
    ) -> ObjectList:
        kind = resolve_kind(resource)
        request = api_pb2.ListRequest(
            resource=kind.resource,
            namespace=namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            limit=limit,
            continue_token=continue_token,
            resource_version=resource_version,
        )
        response = await self._unary("List", request)
        return ObjectList(
            [json.loads(item) for item in response.items],
            response.resource_version,
            response.continue_token,
        )

    async def list_all(
        self, resource: str | Kind, *, page_size: int = 500, **kwargs: Any
    ) -> ObjectList:
        """Every matching object, fetched page by page at one resourceVersion."""
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            page = await self.list(resource, limit=page_size, continue_token=token, **kwargs)
            items.extend(page.items)
            if not page.continue_token:
                return ObjectList(items, page.resource_version, "")
            token = page.continue_token

    async def update(
        self, resource: str | Kind, obj: dict[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]:
        return await self._update("Update", resource, obj, dry_run=dry_run)

    async def update_status(self, resource: str | Kind, obj: dict[str, Any]) -> dict[str, Any]:
        return await self._update("UpdateStatus", resource, obj)

    async def _update(
        self, method: str, resource: str | Kind, obj: dict[str, Any], dry_run: bool = False
    ) -> dict[str, Any]:
        kind = resolve_kind(resource)
        meta = obj.get("metadata", {})
        request = api_pb2.UpdateRequest(
            resource=kind.resource,
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            object=json.dumps(obj).encode(),
            dry_run=dry_run,
        )
        return json.loads((await self._unary(method, request)).object)

    async def patch(
        self,
        resource: str | Kind,
        name: str,
        patch: dict[str, Any],
        *,
        namespace: str = "",
        status: bool = False,
    ) -> dict[str, Any]:
        kind = resolve_kind(resource)
        request = api_pb2.PatchRequest(
            resource=kind.resource,
            namespace=namespace,
            name=name,
            patch=json.dumps(patch).encode(),
            patch_type="merge",
            status=status,
        )
        return json.loads((await self._unary("Patch", request)).object)

    async def delete(
        self,
        resource: str | Kind,
        name: str,
        *,
        namespace: str = "",
        propagation_policy: str = "",
        uid: str = "",
        resource_version: str = "",
        grace_period_seconds: int = -1,
    ) -> dict[str, Any]:
        kind = resolve_kind(resource)
        request = api_pb2.DeleteRequest(
            resource=kind.resource,
            namespace=namespace,
            name=name,
            propagation_policy=propagation_policy,
            preconditions=api_pb2.Preconditions(uid=uid, resource_version=resource_version),
            grace_period_seconds=grace_period_seconds,
        )
        return json.loads((await self._unary("Delete", request)).object)

    async def bind(
        self, name: str, node_name: str, *, namespace: str = "default", uid: str = ""
    ) -> dict[str, Any]:
        request = api_pb2.BindRequest(namespace=namespace, name=name, node_name=node_name, uid=uid)
        return json.loads((await self._unary("Bind", request)).object)

    # -- who am I, may I --------------------------------------------------------------------

    async def whoami(self) -> access_pb2.WhoAmIResponse:
        """The identity the server sees on this client's credentials."""
        return await self._unary("WhoAmI", access_pb2.WhoAmIRequest())

    async def may(
        self,
        verb: str,
        resource: str | Kind,
        *,
        namespace: str = "",
        name: str = "",
        subresource: str = "",
    ) -> access_pb2.AccessReviewResponse:
        """Whether this client's identity may do verb on resource, and if not, why."""
        kind = resolve_kind(resource)
        request = access_pb2.AccessReviewRequest(
            verb=verb,
            resource=kind.resource,
            subresource=subresource,
            namespace=namespace if kind.namespaced else "",
            name=name,
        )
        return await self._unary("Review", request)

    async def watch(
        self,
        resource: str | Kind,
        *,
        namespace: str = "",
        label_selector: str = "",
        field_selector: str = "",
        resource_version: str = "",
        allow_bookmarks: bool = True,
    ) -> AsyncIterator[WatchEvent]:
        """Changes from resource_version on; ends when the server closes the stream.

        Raises Expired when resource_version is too old (relist), Unavailable
        when the server is lost (resume from the last resourceVersion seen).
        """
        kind = resolve_kind(resource)
        request = api_pb2.WatchRequest(
            resource=kind.resource,
            namespace=namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            resource_version=resource_version,
            allow_bookmarks=allow_bookmarks,
        )
        target = self.server
        call = self._objects().Watch(request)
        try:
            async for event in call:
                yield WatchEvent(event.type, json.loads(event.object))
        except asyncio.CancelledError:
            if not _cut_by_channel_close():
                raise
            raise _cut(target) from None
        except grpc.aio.AioRpcError as err:
            error = error_from_rpc(err, target)
            if isinstance(error, errors.Unavailable):
                await self._failover()
            raise error from None
        finally:
            call.cancel()


async def retry(
    operation: Callable[[], Awaitable[T]],
    *,
    attempts: int = 0,
    initial: float = 0.1,
    maximum: float = 5.0,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    retry_on: tuple[type[errors.ApiError], ...] = (),
) -> T:
    """Run operation until it succeeds or fails with an error not worth a retry.

    Retries errors marked retryable (and those in retry_on) with exponential
    back-off and jitter; attempts=0 means without limit.
    """
    clock = clock or RealClock()
    rng = rng or random.Random()
    delay, tried = initial, 0
    while True:
        try:
            return await operation()
        except errors.ApiError as err:
            tried += 1
            if not (err.retryable or isinstance(err, retry_on)) or (attempts and tried >= attempts):
                raise
        await clock.sleep(delay * (0.5 + rng.random()))
        delay = min(delay * 2, maximum)


def is_unavailable(err: BaseException) -> bool:
    return isinstance(err, errors.Unavailable | errors.Timeout | asyncio.TimeoutError)
