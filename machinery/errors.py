"""The project's error types, one per API reason, and their gRPC mapping.

Every component raises and catches these, never etcd or gRPC exceptions: the
store translates etcd errors once, the API server turns an ApiError into a
gRPC status with a serialized Status in the trailing metadata, and the client
turns that back into the same ApiError subclass. `retryable` says whether the
same request may succeed later without being changed (a lost peer, a timeout)
as opposed to a client mistake that will fail again.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import grpc

STATUS_METADATA_KEY = "kubelite-status-bin"


@dataclasses.dataclass(frozen=True)
class Cause:
    """One failing field of a rejected object, e.g. spec.containers[0].image."""

    field: str
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class ApiError(Exception):
    """A failed API request, with the Kubernetes reason and HTTP-style code."""

    reason: ClassVar[str] = "InternalError"
    code: ClassVar[int] = 500
    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        kind: str = "",
        name: str = "",
        causes: list[Cause] | None = None,
        retry_after_seconds: int = 0,
    ) -> None:
        super().__init__(message)
        self.message = message
        # Both often come from the object a client sent: one that is not a string (a
        # metadata.name of [1], say) names nothing, and validation reports it.
        self.kind = kind if isinstance(kind, str) else ""
        self.name = name if isinstance(name, str) else ""
        self.causes = list(causes or [])
        self.retry_after_seconds = retry_after_seconds

    def __str__(self) -> str:
        return self.message


class BadRequest(ApiError):
    reason = "BadRequest"
    code = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class Invalid(ApiError):
    """An object failed validation; `causes` lists every failing field."""

    reason = "Invalid"
    code = 422
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT

    @classmethod
    def for_causes(cls, kind: str, name: str, causes: list[Cause]) -> Invalid:
        name = name if isinstance(name, str) else ""
        detail = "; ".join(str(c) for c in causes)
        label = f'{kind} "{name}"' if name else kind
        return cls(f"{label} is invalid: {detail}", kind=kind, name=name, causes=causes)


class NotFound(ApiError):
    reason = "NotFound"
    code = 404
    grpc_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ApiError):
    reason = "AlreadyExists"
    code = 409
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class Conflict(ApiError):
    """A stale resourceVersion or a violated precondition; re-read and retry."""

    reason = "Conflict"
    code = 409
    grpc_code = grpc.StatusCode.ABORTED


class Expired(ApiError):
    """A resourceVersion older than what the server or etcd still holds: relist."""

    reason = "Expired"
    code = 410
    grpc_code = grpc.StatusCode.OUT_OF_RANGE


class TooLarge(ApiError):
    reason = "RequestEntityTooLarge"
    code = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(ApiError):
    reason = "Unauthorized"
    code = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class Forbidden(ApiError):
    reason = "Forbidden"
    code = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class MethodNotAllowed(ApiError):
    reason = "MethodNotAllowed"
    code = 405
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class Unavailable(ApiError):
    """The server or its store cannot be reached now; worth a retry."""

    reason = "ServiceUnavailable"
    code = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class Timeout(ApiError):
    reason = "Timeout"
    code = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    retryable = True


class InternalError(ApiError):
    """A server-side fault that is not the client's doing."""

    reason = "InternalError"
    code = 500
    grpc_code = grpc.StatusCode.INTERNAL
    retryable = True


_BY_REASON: dict[str, type[ApiError]] = {
    cls.reason: cls
    for cls in (
        BadRequest,
        Invalid,
        NotFound,
        AlreadyExists,
        Conflict,
        Expired,
        TooLarge,
        Unauthenticated,
        Forbidden,
        MethodNotAllowed,
        Unavailable,
        Timeout,
        InternalError,
    )
}

_BY_GRPC_CODE: dict[grpc.StatusCode, type[ApiError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: BadRequest,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.ABORTED: Conflict,
    grpc.StatusCode.OUT_OF_RANGE: Expired,
    grpc.StatusCode.RESOURCE_EXHAUSTED: TooLarge,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: Forbidden,
    grpc.StatusCode.UNIMPLEMENTED: MethodNotAllowed,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Timeout,
    grpc.StatusCode.CANCELLED: Unavailable,
}


def error_for_reason(reason: str) -> type[ApiError]:
    return _BY_REASON.get(reason, InternalError)


def error_for_grpc_code(code: grpc.StatusCode) -> type[ApiError]:
    return _BY_GRPC_CODE.get(code, InternalError)
