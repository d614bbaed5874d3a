"""The object store: keys and JSON values in etcd v3, revisions as versions.

Every write is one etcd transaction that compares the key's revision, so
"create only if absent" and "update only if unchanged since revision R" are
atomic; the mod revision etcd returns becomes the object's resourceVersion.
The API server talks to this module only through the Store protocol, so the
etcd client library (aetcd) and its errors stay inside this file: callers see
the store's own error types below.

Several etcd endpoints may be given (an etcd cluster); on an unreachable
endpoint the store moves to the next one, and the caller's request fails with
StoreUnavailable, which is worth a retry.

The store opens its gRPC channel itself and uses aetcd's generated stubs on
it: aetcd's Client only dials plaintext, and etcd members that listen beyond
loopback require TLS with client certificates (EtcdTLS).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import grpc
from aetcd import rpc
from prometheus_client import Counter, Histogram

from machinery.log import get_logger

log = get_logger("apiserver.store")

ETCD_LATENCY = Histogram(
    "kubelite_apiserver_etcd_request_duration_seconds",
    "etcd round trips by operation.",
    ["operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
ETCD_ERRORS = Counter(
    "kubelite_apiserver_etcd_errors_total", "Failed etcd round trips by operation.", ["operation"]
)


class StoreError(Exception):
    """Base of the store's errors; the registry turns them into API errors."""


class KeyExists(StoreError):
    pass


class KeyNotFound(StoreError):
    pass


class RevisionMismatch(StoreError):
    """The key changed since the revision the caller read."""

    def __init__(self, key: str, expected: int, actual: int) -> None:
        super().__init__(f"{key}: expected revision {expected}, found {actual}")
        self.actual = actual


class Compacted(StoreError):
    """The requested revision is older than etcd's compaction point."""

    def __init__(self, revision: int, compacted: int) -> None:
        super().__init__(f"revision {revision} is compacted (compaction at {compacted})")
        self.revision = revision
        self.compacted = compacted


class FutureRevision(StoreError):
    """The requested revision is newer than any etcd has written."""


class StoreUnavailable(StoreError):
    """etcd could not be reached or did not answer in time."""


@dataclasses.dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int


@dataclasses.dataclass(frozen=True, slots=True)
class ListResult:
    items: list[KeyValue]
    revision: int  # the store revision the list was read at
    more: bool


@dataclasses.dataclass(frozen=True, slots=True)
class StoreEvent:
    kind: str  # "put" or "delete"
    kv: KeyValue  # for a delete: no value, and mod_revision = the delete's revision
    created: bool  # a put that created the key


@dataclasses.dataclass(frozen=True, slots=True)
class WatchBatch:
    """The changes of one etcd watch response; no events means progress up to revision."""

    revision: int
    events: list[StoreEvent]


class Store(Protocol):
    async def create(self, key: str, value: bytes) -> int: ...
    async def get(self, key: str) -> KeyValue: ...
    async def list(
        self, prefix: str, *, revision: int = 0, limit: int = 0, start: str = ""
    ) -> ListResult: ...
    async def update(self, key: str, value: bytes, *, expected_revision: int) -> int: ...
    async def delete(self, key: str, *, expected_revision: int = 0) -> tuple[int, KeyValue]: ...
    def watch(self, prefix: str, *, start_revision: int) -> AsyncIterator[WatchBatch]: ...
    async def current_revision(self) -> int: ...
    async def compact(self, revision: int) -> None: ...
    async def close(self) -> None: ...


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with prefix."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def _kv(kv: rpc.KeyValue) -> KeyValue:
    return KeyValue(kv.key.decode(), kv.value, kv.mod_revision, kv.create_revision)


@dataclasses.dataclass(frozen=True)
class EtcdTLS:
    """TLS towards etcd: the CA of its serving certificates, and our client certificate."""

    ca: bytes  # PEM
    cert: bytes = b""  # PEM; empty: no client certificate
    key: bytes = b""

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca,
            private_key=self.key or None,
            certificate_chain=self.cert or None,
        )

    def __repr__(self) -> str:  # never print a key by accident
        return f"EtcdTLS(cert={'yes' if self.cert else 'no'})"


@dataclasses.dataclass
class _Connection:
    """One channel to one etcd member and the stubs the store calls on it."""

    channel: grpc.aio.Channel
    kvstub: rpc.KVStub

    async def close(self) -> None:
        await self.channel.close()


class EtcdStore:
    """Store on an etcd v3 cluster, through aetcd's stubs on a channel of its own."""

    def __init__(
        self, endpoints: Sequence[str], *, timeout: float = 10.0, tls: EtcdTLS | None = None
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is required")
        self._endpoints = [e.removeprefix("http://").removeprefix("https://") for e in endpoints]
        self._index = 0
        self._timeout = timeout
        self._tls = tls
        self._client: _Connection | None = None
        self._lock = asyncio.Lock()

    @property
    def endpoint(self) -> str:
        return self._endpoints[self._index]

    async def _connected(self) -> _Connection:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                if self._tls is None:
                    channel = grpc.aio.insecure_channel(self.endpoint)
                else:
                    channel = grpc.aio.secure_channel(
                        self.endpoint, self._tls.channel_credentials()
                    )
                self._client = _Connection(channel, rpc.KVStub(channel))
        return self._client

    async def _failover(self, err: grpc.aio.AioRpcError) -> StoreUnavailable:
        """Drop the broken connection and move to the next endpoint."""
        old = self.endpoint
        client, self._client = self._client, None
        self._index = (self._index + 1) % len(self._endpoints)
        if client is not None:
            try:
                await client.close()
            except Exception:  # noqa: BLE001 - the connection is already broken
                pass
        log.warning("etcd unreachable", endpoint=old, next=self.endpoint, err=err.details())
        return StoreUnavailable(f"etcd at {old} is unavailable: {err.details()}")

    async def _call(self, method: str, request: object) -> object:
        try:
            client = await self._connected()
        except Exception as err:  # noqa: BLE001 - a channel that cannot even be made
            raise StoreUnavailable(f"failed to connect to etcd at {self.endpoint}: {err}") from err
        started = time.perf_counter()
        try:
            return await getattr(client.kvstub, method)(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            ETCD_ERRORS.labels(method).inc()
            raise await self._translate(err) from err
        finally:
            ETCD_LATENCY.labels(method).observe(time.perf_counter() - started)

    async def _translate(self, err: grpc.aio.AioRpcError) -> StoreError:
        code = err.code()
        if code == grpc.StatusCode.UNAVAILABLE and "leader changed" in (err.details() or ""):
            # The member is fine; the cluster is electing a leader. Retry, same member.
            return StoreUnavailable(
                f"etcd at {self.endpoint} is electing a leader: {err.details()}"
            )
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return await self._failover(err)
        if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in (err.details() or ""):
            return Compacted(0, 0)
        if code == grpc.StatusCode.OUT_OF_RANGE and "future revision" in (err.details() or ""):
            return FutureRevision(err.details())
        return StoreError(f"etcd request failed: {code.name}: {err.details()}")

    async def create(self, key: str, value: bytes) -> int:
        k = key.encode()
        request = rpc.TxnRequest(
            compare=[
                rpc.Compare(
                    key=k,
                    result=rpc.Compare.EQUAL,
                    target=rpc.Compare.CREATE,
                    create_revision=0,
                )
            ],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=value))],
        )
        response = await self._call("Txn", request)
        if not response.succeeded:
            raise KeyExists(key)
        return response.header.revision

    async def get(self, key: str) -> KeyValue:
        response = await self._call("Range", rpc.RangeRequest(key=key.encode()))
        if not response.kvs:
            raise KeyNotFound(key)
        return _kv(response.kvs[0])

    async def list(
        self, prefix: str, *, revision: int = 0, limit: int = 0, start: str = ""
    ) -> ListResult:
        p = prefix.encode()
        request = rpc.RangeRequest(
            key=start.encode() if start else p,
            range_end=prefix_end(p),
            revision=revision,
            limit=limit,
        )
        try:
            response = await self._call("Range", request)
        except Compacted as err:
            raise Compacted(revision, err.compacted) from err
        return ListResult([_kv(kv) for kv in response.kvs], response.header.revision, response.more)

    async def update(self, key: str, value: bytes, *, expected_revision: int) -> int:
        k = key.encode()
        request = rpc.TxnRequest(
            compare=[
                rpc.Compare(
                    key=k,
                    result=rpc.Compare.EQUAL,
                    target=rpc.Compare.MOD,
                    mod_revision=expected_revision,
                )
            ],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=value))],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=k))],
        )
        response = await self._call("Txn", request)
        if not response.succeeded:
            kvs = response.responses[0].response_range.kvs
            if not kvs:
                raise KeyNotFound(key)
            raise RevisionMismatch(key, expected_revision, kvs[0].mod_revision)
        return response.header.revision

    async def delete(self, key: str, *, expected_revision: int = 0) -> tuple[int, KeyValue]:
        """Delete key (only at expected_revision when given); the revision and the old value."""
        k = key.encode()
        compare = []
        if expected_revision:
            compare.append(
                rpc.Compare(
                    key=k,
                    result=rpc.Compare.EQUAL,
                    target=rpc.Compare.MOD,
                    mod_revision=expected_revision,
                )
            )
        request = rpc.TxnRequest(
            compare=compare,
            success=[
                rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k, prev_kv=True))
            ],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=k))],
        )
        response = await self._call("Txn", request)
        if not response.succeeded:
            kvs = response.responses[0].response_range.kvs
            if not kvs:
                raise KeyNotFound(key)
            raise RevisionMismatch(key, expected_revision, kvs[0].mod_revision)
        deleted = response.responses[0].response_delete_range
        if not deleted.prev_kvs:
            raise KeyNotFound(key)
        return response.header.revision, _kv(deleted.prev_kvs[0])

    async def current_revision(self) -> int:
        response = await self._call("Range", rpc.RangeRequest(key=b"\0", limit=1, count_only=True))
        return response.header.revision

    async def compact(self, revision: int) -> None:
        try:
            await self._call("Compact", rpc.CompactionRequest(revision=revision))
        except Compacted:
            pass  # already compacted at or past this revision

    async def watch(self, prefix: str, *, start_revision: int) -> AsyncIterator[WatchBatch]:
        """Every change under prefix from start_revision on, one batch per etcd response.

        Raises Compacted when start_revision is no longer in etcd's history and
        StoreUnavailable when the stream breaks; the caller decides how to resume.
        """
        client = await self._connected()
        p = prefix.encode()
        create = rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(
                key=p,
                range_end=prefix_end(p),
                start_revision=start_revision,
                progress_notify=True,
            )
        )
        requests: asyncio.Queue[rpc.WatchRequest | None] = asyncio.Queue()
        await requests.put(create)

        async def outgoing() -> AsyncIterator[rpc.WatchRequest]:
            while (item := await requests.get()) is not None:
                yield item

        call = rpc.WatchStub(client.channel).Watch(outgoing())
        try:
            async for response in call:
                if response.compact_revision:
                    raise Compacted(start_revision, response.compact_revision)
                if response.canceled:
                    raise StoreUnavailable(
                        f"etcd cancelled the watch on {prefix}: {response.cancel_reason}"
                    )
                if response.created and not response.events:
                    continue
                yield WatchBatch(
                    response.header.revision, [self._event(e) for e in response.events]
                )
        except grpc.aio.AioRpcError as err:
            raise await self._translate(err) from err
        finally:
            await requests.put(None)
            call.cancel()

    @staticmethod
    def _event(event: rpc.Event) -> StoreEvent:
        if event.type == rpc.Event.DELETE:
            # No previous value: the watcher keeps the last state it saw itself.
            kv = KeyValue(event.kv.key.decode(), b"", event.kv.mod_revision, 0)
            return StoreEvent("delete", kv, False)
        kv = _kv(event.kv)
        return StoreEvent("put", kv, kv.create_revision == kv.mod_revision)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
