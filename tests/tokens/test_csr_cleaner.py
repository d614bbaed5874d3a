"""The CSR cleaner: requests are deleted once decided, abandoned, or their certificate expired."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from controllers.certificates import (
    APISERVER_CLIENT_SIGNER,
    DENIED_TTL,
    ISSUED_TTL,
    PENDING_TTL,
    CSRCleaner,
    expires_at,
)
from machinery import pki
from machinery.clock import FakeClock, rfc3339
from machinery.pki import Subject
from tests.controllers.harness import eventually, gone
from tests.tokens.test_controllers import controller_manager, csr_object

T0 = 1_800_000_000.0
CA = pki.new_ca("cleaner-test-ca")


def _csr(conditions: list[tuple[str, float]] = (), *, certificate: bytes = b"") -> dict[str, Any]:
    status: dict[str, Any] = {
        "conditions": [
            {"type": t, "status": "True", "lastUpdateTime": rfc3339(at)} for t, at in conditions
        ]
    }
    if certificate:
        status["certificate"] = base64.b64encode(certificate).decode()
    return {"metadata": {"name": "c", "creationTimestamp": rfc3339(T0)}, "status": status}


def _cert_expiring_in(days: float) -> bytes:
    return pki.issue(CA, Subject("u"), days=days).cert


@pytest.mark.parametrize(
    "csr, deadline",
    [
        (_csr(), T0 + PENDING_TTL),
        (_csr([("Approved", T0 + 10)]), T0 + PENDING_TTL),
        (_csr([("Denied", T0 + 10)]), T0 + 10 + DENIED_TTL),
        (_csr([("Approved", T0 + 10), ("Failed", T0 + 20)]), T0 + 20 + ISSUED_TTL),
        (
            _csr([("Approved", T0 + 10)], certificate=_cert_expiring_in(365)),
            T0 + 10 + ISSUED_TTL,
        ),
        ({"metadata": {"name": "c"}}, None),
    ],
    ids=[
        "pending-a-day",
        "approved-not-issued-a-day",
        "denied-an-hour",
        "failed-an-hour",
        "issued-an-hour",
        "no-creation-time",
    ],
)
def test_deadlines(csr: dict[str, Any], deadline: float | None) -> None:
    assert expires_at(csr) == deadline


def test_a_certificate_shorter_than_the_hour_goes_when_it_expires() -> None:
    short = pki.issue(CA, Subject("u"), days=1 / 48).cert  # half an hour
    csr = _csr([("Approved", time.time())], certificate=short)
    csr["metadata"]["creationTimestamp"] = rfc3339(time.time())
    assert expires_at(csr) == pki.validity(short)[1].timestamp()


async def test_denied_request_is_deleted_after_an_hour(token_server, admin, cluster_pki) -> None:
    clock = FakeClock(start=time.time())
    created = await admin.create(
        "certificatesigningrequests",
        csr_object("denied-one", pki.new_key(), Subject("x"), signer=APISERVER_CLIENT_SIGNER),
    )
    created["status"] = {
        "conditions": [
            {
                "type": "Denied",
                "status": "True",
                "reason": "TestDenied",
                "message": "denied by the test",
                "lastUpdateTime": rfc3339(clock.now()),
            }
        ]
    }
    await admin.update_status("certificatesigningrequests", created)

    def build(client, factory, recorder):
        return [CSRCleaner(client, factory, recorder, clock=clock)]

    async with controller_manager(token_server, cluster_pki, build):
        await eventually(lambda: _true(clock.sleepers >= 1), what="the cleaner to wait")
        await clock.advance(DENIED_TTL - 60)
        assert not await gone(admin, "certificatesigningrequests", "denied-one", "")
        await clock.advance(120)
        await eventually(
            lambda: gone(admin, "certificatesigningrequests", "denied-one", ""),
            what="the denied request deleted",
        )


async def _true(value: bool) -> bool:
    return value
