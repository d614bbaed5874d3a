"""What every kctl command works with: the API client and the default namespace."""

from __future__ import annotations

from cli.errors import CliError
from machinery import errors
from machinery.client import ApiClient, resolve_kind
from machinery.credentials import Credentials
from machinery.kinds import Kind


class Session:
    def __init__(
        self,
        servers: list[str],
        namespace: str,
        *,
        timeout: float = 30.0,
        credentials: Credentials | None = None,
    ) -> None:
        self.api = ApiClient(servers, timeout=timeout, credentials=credentials)
        self.namespace = namespace

    def kind(self, name: str) -> Kind:
        try:
            return resolve_kind(name)
        except errors.BadRequest as err:
            raise CliError(f"error: {err.message}") from None

    def namespace_for(self, kind: Kind, explicit: str = "") -> str:
        if not kind.namespaced:
            return ""
        return explicit or self.namespace

    async def close(self) -> None:
        await self.api.close()
