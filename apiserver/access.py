"""Answers to `whoami` and `can-i`: the caller's identity, and whether it may do a thing.

Both concern the calling identity only (Kubernetes' SelfSubjectReview and
SelfSubjectAccessReview), so they need nothing beyond authentication: whoever
can connect may learn what they are and what they may do, never what someone
else may. A review runs the same authorizers as a real request, so its answer
is the answer that request would get, reason included.
"""

from __future__ import annotations

from typing import Any

import grpc

from apiserver.auth import Gate
from apiserver.service import REQUESTS, _abort
from machinery import errors, kinds
from machinery.api import access_pb2, access_pb2_grpc
from machinery.auth import Attributes

# What a server without TLS says: it asks no one who they are.
_NO_AUTH = "the server runs without TLS and authorizes every request"


class AccessService(access_pb2_grpc.AccessServicer):
    def __init__(self, gate: Gate | None) -> None:
        self._gate = gate

    async def WhoAmI(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if self._gate is None:
            REQUESTS.labels("whoami", "", "OK").inc()
            return access_pb2.WhoAmIResponse(method="none")
        try:
            user = self._gate.authenticate(context)
        except errors.ApiError as err:
            REQUESTS.labels("whoami", "", err.grpc_code.name).inc()
            await _abort(context, err)
            return None
        REQUESTS.labels("whoami", "", "OK").inc()
        return access_pb2.WhoAmIResponse(
            user=user.name, groups=list(user.groups), uid=user.uid, method=user.method
        )

    async def Review(
        self, request: access_pb2.AccessReviewRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        try:
            attrs = _attributes(request)
            if self._gate is None:
                REQUESTS.labels("review", attrs.resource, "OK").inc()
                return access_pb2.AccessReviewResponse(allowed=True, reason=_NO_AUTH)
            user = self._gate.authenticate(context)
        except errors.ApiError as err:
            REQUESTS.labels("review", request.resource, err.grpc_code.name).inc()
            await _abort(context, err)
            return None
        decision = self._gate.authorize(user, attrs)
        REQUESTS.labels("review", attrs.resource, "OK").inc()
        return access_pb2.AccessReviewResponse(allowed=decision.allowed, reason=decision.reason)


def _attributes(request: access_pb2.AccessReviewRequest) -> Attributes:
    if not request.verb:
        raise errors.BadRequest("verb: required (get, list, watch, create, update, patch, delete)")
    kind = kinds.lookup(request.resource)
    if kind is None:
        raise errors.BadRequest(
            f'resource: the server doesn\'t have a resource type "{request.resource}"'
        )
    return Attributes.of(
        request.verb,
        kind,
        namespace=request.namespace,
        name=request.name,
        subresource=request.subresource,
    )
