"""The door of the API server: who is asking (authentication), may they (authorization).

Every request passes the Gate before the registry sees it. Authentication
takes the first credential that proves an identity:

- a client certificate, verified by gRPC's TLS against the cluster CA before
  the request reaches Python; its common name is the user and each
  organization a group;
- a bearer token in the `authorization` metadata, offered to each token
  authenticator in turn (bootstrap tokens, ServiceAccount tokens, a static
  token file).

A request with neither fails UNAUTHENTICATED. Authorization asks the
authorizers in order; the first that allows or denies decides, and a request
nobody allows fails PERMISSION_DENIED naming the user, verb and resource.
Members of system:masters are allowed everything without asking, as in
Kubernetes, so a broken policy can always be repaired by an administrator.

Failures are counted by reason and logged with the identity and the request,
never with the credential.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Protocol

import grpc
from prometheus_client import Counter

from machinery import auth, errors, pki
from machinery.auth import Attributes, Decision, UserInfo
from machinery.log import get_logger

log = get_logger("apiserver.auth")

AUTHENTICATIONS = Counter(
    "kubelite_apiserver_authentication_attempts_total",
    "Requests by how they authenticated (x509, token kinds) or why they failed.",
    ["result"],
)
DENIALS = Counter(
    "kubelite_apiserver_authorization_denials_total",
    "Authenticated requests refused by authorization, by verb and resource.",
    ["verb", "resource"],
)

_CERT_CACHE_SIZE = 4096


class TokenAuthenticator(Protocol):
    """Turns a bearer token into a user, or None if the token is not one it knows."""

    def authenticate_token(self, token: str) -> UserInfo | None: ...


class Authorizer(Protocol):
    def authorize(self, user: UserInfo, attrs: Attributes) -> Decision: ...


class Authenticator:
    def __init__(self, tokens: Sequence[TokenAuthenticator] = ()) -> None:
        self._tokens = list(tokens)
        # Parsing a certificate costs more than the rest of a small request; peers
        # reuse their connections, so the same few PEMs arrive again and again.
        self._by_pem: collections.OrderedDict[bytes, UserInfo] = collections.OrderedDict()

    def authenticate(self, context: grpc.aio.ServicerContext) -> UserInfo:
        pems = context.auth_context().get("x509_pem_cert")
        if pems:
            return self._from_certificate(pems[0])
        token = _bearer_token(context)
        if token is None:
            AUTHENTICATIONS.labels("no-credential").inc()
            raise errors.Unauthenticated(
                "no credential: present a client certificate signed by the cluster CA "
                "or a bearer token"
            )
        for authenticator in self._tokens:
            user = authenticator.authenticate_token(token)
            if user is not None:
                AUTHENTICATIONS.labels(user.method or "token").inc()
                return _authenticated(user)
        AUTHENTICATIONS.labels("invalid-token").inc()
        raise errors.Unauthenticated("the bearer token is not valid: unknown, expired or revoked")

    def _from_certificate(self, pem: bytes) -> UserInfo:
        user = self._by_pem.get(pem)
        if user is None:
            subject = pki.subject_of(pem)
            if not subject.user:
                AUTHENTICATIONS.labels("certificate-without-name").inc()
                raise errors.Unauthenticated("the client certificate has no common name")
            user = _authenticated(UserInfo(subject.user, subject.groups, method="x509"))
            self._by_pem[pem] = user
            if len(self._by_pem) > _CERT_CACHE_SIZE:
                self._by_pem.popitem(last=False)
        else:
            self._by_pem.move_to_end(pem)
        AUTHENTICATIONS.labels("x509").inc()
        return user


def _bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _authenticated(user: UserInfo) -> UserInfo:
    if auth.AUTHENTICATED in user.groups:
        return user
    return UserInfo(user.name, (*user.groups, auth.AUTHENTICATED), user.uid, user.method)


class Gate:
    def __init__(self, authenticator: Authenticator, authorizers: Sequence[Authorizer]) -> None:
        self._authenticator = authenticator
        self._authorizers = list(authorizers)

    def authenticate(self, context: grpc.aio.ServicerContext) -> UserInfo:
        """The request's user; Unauthenticated (logged) if it proves no identity."""
        try:
            return self._authenticator.authenticate(context)
        except errors.Unauthenticated as err:
            log.info("refused unauthenticated request", peer=context.peer(), reason=err.message)
            raise

    def admit(self, context: grpc.aio.ServicerContext, attrs: Attributes) -> UserInfo:
        """The request's user if it may do attrs; Unauthenticated or Forbidden otherwise."""
        user = self.authenticate(context)
        decision = self.authorize(user, attrs)
        if not decision.allowed:
            DENIALS.labels(attrs.verb, attrs.resource).inc()
            log.info(
                "forbidden",
                user=user.name,
                groups=",".join(user.groups),
                request=attrs.describe(),
                reason=decision.reason,
            )
            message = f'user "{user.name}" cannot {attrs.describe()}'
            if decision.reason:
                message += f": {decision.reason}"
            raise errors.Forbidden(message, kind=attrs.resource, name=attrs.name)
        return user

    def authorize(self, user: UserInfo, attrs: Attributes) -> Decision:
        if auth.MASTERS in user.groups:
            return auth.ALLOW
        reasons = []
        for authorizer in self._authorizers:
            decision = authorizer.authorize(user, attrs)
            if decision.allowed or decision.denied:
                return decision
            if decision.reason:
                reasons.append(decision.reason)
        return auth.deny("; ".join(reasons) or "no policy allows it")
