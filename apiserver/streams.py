"""Logs and exec through the API server, relayed to the Pod's kubelet.

The API server resolves the Pod to its node, and the node to its kubelet's
address (the node's InternalIP and status.daemonEndpoints.kubeletEndpoint),
then relays the request's messages one by one in both directions. It adds no
buffering beyond gRPC's own, so `kctl logs -f` and `kctl exec -it` are
interactive; when either side goes away the other side's stream is cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from apiserver.auth import Gate
from apiserver.registry import Registry
from apiserver.service import REQUESTS, _abort
from machinery import errors, kinds
from machinery.api import streams_pb2, streams_pb2_grpc
from machinery.auth import Attributes
from machinery.log import get_logger

log = get_logger("apiserver.streams")


class StreamService(streams_pb2_grpc.StreamsServicer):
    def __init__(
        self,
        registry: Registry,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        gate: Gate | None = None,
    ) -> None:
        self._registry = registry
        # The API server's client certificate towards kubelets; they accept no other.
        self._credentials = credentials
        self._gate = gate
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _admit(
        self,
        context: grpc.aio.ServicerContext,
        verb: str,
        subresource: str,
        namespace: str,
        name: str,
    ) -> None:
        if self._gate is not None:
            self._gate.admit(
                context,
                Attributes(
                    verb=verb,
                    resource="pods",
                    namespace=namespace or "default",
                    name=name,
                    subresource=subresource,
                ),
            )

    async def _kubelet_for(
        self, namespace: str, name: str
    ) -> tuple[streams_pb2_grpc.KubeletStub, str]:
        pods, nodes = kinds.by_kind("Pod"), kinds.by_kind("Node")
        assert pods is not None and nodes is not None
        pod = await self._registry.get(pods, namespace or "default", name)
        node_name = pod.get("spec", {}).get("nodeName")
        if not node_name:
            raise errors.BadRequest(f'pod "{name}" is not scheduled to a node yet')
        node = await self._registry.get(nodes, "", node_name)
        status = node.get("status", {})
        address = next(
            (a["address"] for a in status.get("addresses") or [] if a.get("type") == "InternalIP"),
            "",
        )
        port = (status.get("daemonEndpoints") or {}).get("kubeletEndpoint", {}).get("Port")
        if not address or not port:
            raise errors.Unavailable(f'node "{node_name}" has not reported its kubelet address yet')
        target = f"{address}:{port}"
        channel = self._channels.get(target)
        if channel is None:
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(target, self._credentials)
            else:
                channel = grpc.aio.insecure_channel(target)
            self._channels[target] = channel
        return streams_pb2_grpc.KubeletStub(channel), target

    async def Logs(
        self, request: streams_pb2.LogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[streams_pb2.LogChunk]:
        try:
            self._admit(context, "get", "log", request.namespace, request.name)
            stub, target = await self._kubelet_for(request.namespace, request.name)
        except errors.ApiError as err:
            REQUESTS.labels("logs", "pods", err.grpc_code.name).inc()
            await _abort(context, err)
            return
        REQUESTS.labels("logs", "pods", "OK").inc()
        call = stub.Logs(request)
        try:
            async for chunk in call:
                yield chunk
        except grpc.aio.AioRpcError as err:
            await _relay_error(context, err, target)
        finally:
            call.cancel()

    async def Exec(
        self,
        request_iterator: AsyncIterator[streams_pb2.ExecRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[streams_pb2.ExecResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("message") != "start":
            await _abort(
                context, errors.BadRequest("an exec stream must begin with a start message")
            )
            return
        start = first.start
        try:
            self._admit(context, "create", "exec", start.namespace, start.name)
            stub, target = await self._kubelet_for(start.namespace, start.name)
        except errors.ApiError as err:
            REQUESTS.labels("exec", "pods", err.grpc_code.name).inc()
            await _abort(context, err)
            return
        REQUESTS.labels("exec", "pods", "OK").inc()
        upstream: asyncio.Queue[Any] = asyncio.Queue()
        await upstream.put(first)

        async def requests() -> AsyncIterator[streams_pb2.ExecRequest]:
            while (item := await upstream.get()) is not None:
                yield item

        async def pump() -> None:
            try:
                async for message in request_iterator:
                    await upstream.put(message)
            finally:
                await upstream.put(None)

        pumping = asyncio.create_task(pump())
        call = stub.Exec(requests())
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as err:
            await _relay_error(context, err, target)
        finally:
            pumping.cancel()
            call.cancel()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


async def _relay_error(
    context: grpc.aio.ServicerContext, err: grpc.aio.AioRpcError, target: str
) -> None:
    """Pass the kubelet's failure on, or say the kubelet could not be reached."""
    from machinery.client import error_from_rpc

    error = error_from_rpc(err, target)
    if err.code() == grpc.StatusCode.UNAVAILABLE and not error.causes:
        error = errors.Unavailable(f"the kubelet at {target} is unreachable: {err.details()}")
    await _abort(context, error)
