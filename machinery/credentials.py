"""What a client shows the API server: the CA it trusts and its own credential.

A client holds either a certificate and key signed by the cluster CA (the
components, nodes and administrators) or a bearer token (bootstrap tokens,
ServiceAccounts, scripts); both travel over TLS checked against the CA.
"""

from __future__ import annotations

import dataclasses

import grpc


@dataclasses.dataclass(frozen=True)
class Credentials:
    ca: bytes  # PEM of the CA the server's certificate must chain to
    cert: bytes = b""  # PEM client certificate
    key: bytes = b""  # PEM private key of cert
    token: str = ""

    def channel_credentials(self) -> grpc.ChannelCredentials:
        tls = grpc.ssl_channel_credentials(
            root_certificates=self.ca,
            private_key=self.key or None,
            certificate_chain=self.cert or None,
        )
        if self.token and not self.cert:
            return grpc.composite_channel_credentials(
                tls, grpc.access_token_call_credentials(self.token)
            )
        return tls

    def __repr__(self) -> str:  # never print a key or token by accident
        return (
            f"Credentials(cert={'yes' if self.cert else 'no'}, "
            f"token={'yes' if self.token else 'no'})"
        )
